# spikeloop image: built in one stage, run in another (no compiler, pip cache or sources in
# the image that runs), as a non-root user, from exactly the versions CI ran.
#
#   docker build -t spikeloop .
#   docker run -p 127.0.0.1:8000:8000 -v spikeloop-data:/data spikeloop
#
# The default command binds 0.0.0.0 inside the container with --insecure (plain http):
# publish the port on the host's loopback only, as docker-compose.yml does, or serve https
# with --tls-cert/--tls-key from a mounted secret (docs/security.md).

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/spikeloop \
    && /opt/spikeloop/bin/python -m pip install --no-cache-dir "pip==26.3"
# torch first and pinned, so no other package can pull in another build of it
RUN /opt/spikeloop/bin/python -m pip install --no-cache-dir "torch==2.13.0"
COPY pyproject.toml README.md MANIFEST.in requirements.lock ./
COPY service service
COPY decoders decoders
COPY stim stim
COPY sources sources
COPY clients clients
# A regular (non-editable) install, constrained to requirements.lock
RUN /opt/spikeloop/bin/python -m pip install --no-cache-dir -c requirements.lock ".[nwb]" \
    && /opt/spikeloop/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0')"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin \
        spikeloop \
    && mkdir -p /data /central && chown spikeloop:spikeloop /data /central \
    && chmod 0700 /data /central
COPY --from=build /opt/spikeloop /opt/spikeloop
ENV PATH=/opt/spikeloop/bin:$PATH \
    SPIKELOOP_DATA_DIR=/data \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER spikeloop
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000 5555
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
CMD ["spikeloop", "serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data", "--insecure"]
