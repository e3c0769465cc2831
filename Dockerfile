FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service service
COPY decoders decoders
COPY stim stim
COPY sources sources
COPY clients clients
RUN pip install --no-cache-dir "torch==2.13.0" \
    && pip install --no-cache-dir -e ".[nwb]"
EXPOSE 8000 5555
