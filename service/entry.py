"""The server entry points: ``spikeloop serve``, ``worker`` and ``recorder``.

They are commands of the one ``spikeloop`` CLI (``clients/cli.py`` registers them), but
the code that starts servers lives here, in the service, not among the clients.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from service.wire.net import is_loopback

DEFAULT_DATA = Path(os.environ.get("SPIKELOOP_DATA_DIR", "var"))

#: The Redis password kept out of URLs (and out of ``ps``): a file readable by this user only.
REDIS_PASSWORD_FILE = typer.Option(
    None, "--redis-password-file", envvar="SPIKELOOP_REDIS_PASSWORD_FILE",
    help="File holding the Redis password (mode 600); sessions get it from this process, "
         "never from their config")


def _share_redis_password(url: str | None, password_file: Path | None) -> None:
    from service.cluster.redis_streams import share_password

    try:
        share_password(url, password_file)
    except OSError as exc:
        typer.echo(f"--redis-password-file: {exc}", err=True)
        raise typer.Exit(2) from exc


def serve(host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default)"),
          port: int = typer.Option(8000, help="HTTP port"),
          data_dir: Path = typer.Option(DEFAULT_DATA, help="Database, recordings, models"),
          no_auth: bool = typer.Option(False, "--no-auth", help="Disable tokens (loopback only)"),
          public_read: bool = typer.Option(False, "--public-read",
                                           help="Serve reads (GET, streams) without a token; "
                                                "changes still need one (loopback only)"),
          tls_cert: Path | None = typer.Option(None, exists=True, dir_okay=False,
                                               help="TLS certificate chain (PEM): serve https"),
          tls_key: Path | None = typer.Option(None, exists=True, dir_okay=False,
                                              help="The certificate's private key (PEM)"),
          insecure: bool = typer.Option(False, "--insecure",
                                        help="Allow plain http beyond loopback (tokens and "
                                             "neural data in clear text on the network)"),
          keep_sessions: bool = typer.Option(False, help="Leave sessions running on exit"),
          redis: str | None = typer.Option(None, help="Run sessions on workers registered in "
                                                      "this Redis (redis://host:port/db)"),
          worker_timeout: float = typer.Option(5.0, help="Seconds without a heartbeat after "
                                                         "which a worker is lost"),
          public_outputs: bool = typer.Option(False, "--public-outputs",
                                              help="Let sessions bind their output beyond "
                                                   "loopback (tcp://0.0.0.0:PORT)"),
          max_sessions: int = typer.Option(16, min=1, help="Sessions running here at once"),
          redis_password_file: Path | None = REDIS_PASSWORD_FILE):
    """Run the control plane (FastAPI + uvicorn).

    Beyond loopback it serves https only (--tls-cert, --tls-key) unless --insecure.
    Examples: spikeloop serve --port 8000 --data-dir var
              spikeloop serve --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem
    """
    os.umask(0o077)  # data files and sockets: readable by this user only
    import uvicorn

    from service.api.app import Settings, create_app

    _share_redis_password(redis, redis_password_file)
    problem = serve_refusal(host, no_auth, public_read, tls_cert, tls_key, insecure)
    if problem:
        typer.echo(problem, err=True)
        raise typer.Exit(2)
    app_ = create_app(Settings(data_dir=data_dir, auth=not no_auth, public_read=public_read,
                               stop_sessions_on_shutdown=not keep_sessions,
                               redis_url=redis or None,  # "" (compose default): no Redis
                               worker_timeout_s=worker_timeout,
                               public_outputs=public_outputs, max_sessions=max_sessions))
    if app_.state.token_path:
        typer.echo(f"admin token: {app_.state.token_path.resolve()}", err=True)
    scheme = "https" if tls_cert else "http"
    url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
    typer.echo(f"API {url}  dashboard {url}/  API docs {url}/docs", err=True)
    uvicorn.run(app_, host=host, port=port, log_level="warning",
                ssl_certfile=str(tls_cert) if tls_cert else None,
                ssl_keyfile=str(tls_key) if tls_key else None)


def serve_refusal(host: str, no_auth: bool, public_read: bool, tls_cert: Path | None,
                  tls_key: Path | None, insecure: bool) -> str | None:
    """Why ``spikeloop serve`` with these options must not start (None: it may)."""
    if (tls_cert is None) != (tls_key is None):
        return "--tls-cert and --tls-key go together: the certificate and its private key"
    if is_loopback(host):
        return None
    if no_auth:
        return (f"refusing to serve on {host} without authentication: drop --no-auth "
                "or bind to 127.0.0.1")
    if public_read:
        return (f"refusing to serve reads without a token on {host}: --public-read is for "
                "127.0.0.1 only (recordings and streams are health data)")
    if tls_cert is None and not insecure:
        return (f"refusing to serve plain http on {host}: tokens and neural data would cross "
                "the network in clear text; give --tls-cert and --tls-key (or --insecure on "
                "a network you trust)")
    return None


def worker(redis: str = typer.Option(..., help="The control plane's Redis (redis://host:port/db)"),
           data_dir: Path = typer.Option(Path("var/worker"), help="Recordings, logs, models "
                                                                  "of the sessions run here"),
           name: str | None = typer.Option(None, help="Worker id (default host-pid-random)"),
           capacity: int = typer.Option(4, min=1, help="Sessions this worker runs at most"),
           label: list[str] = typer.Option([], help="Placement label KEY=VALUE, repeatable "
                                                    "(e.g. rig=rig-2)"),
           bind_host: str = typer.Option("127.0.0.1", help="Interface sessions bind their "
                                                           "output to (loopback by default)"),
           lease: float = typer.Option(3.0, help="Stop every session if Redis is unreachable "
                                                 "this long (keep below the control plane's "
                                                 "--worker-timeout)"),
           redis_password_file: Path | None = REDIS_PASSWORD_FILE):
    """Run sessions that the control plane (spikeloop serve --redis URL) assigns to this host.

    Example: spikeloop worker --redis redis://10.0.0.5:6379/0 --label rig=rig-2 --capacity 4
    """
    os.umask(0o077)  # data files and sockets: readable by this user only
    from service.cluster.worker import run_worker

    _share_redis_password(redis, redis_password_file)
    labels = {}
    for item in label:
        k, sep, v = item.partition("=")
        if not sep or not k:
            typer.echo(f"--label {item!r}: write KEY=VALUE, e.g. --label rig=rig-2", err=True)
            raise typer.Exit(2)
        labels[k] = v
    try:
        run_worker(redis, data_dir, name=name, capacity=capacity, labels=labels,
                   bind_host=bind_host, lease_s=lease)
    except ConnectionError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


def recorder_cmd(
        redis_url: str = typer.Option(..., "--redis", help="redis://[:password@]host:port/db "
                                                          "that the sessions mirror to"),
        out: Path = typer.Option(..., "--out", help="Directory for the central copies; every "
                                                    "recorder of one group must share it"),
        group: str = typer.Option("central", help="Consumer group: recorders in one group "
                                                  "share the sessions; another group gets "
                                                  "its own copy of everything"),
        consumer: str | None = typer.Option(None, help="This recorder's name in the group "
                                                       "(default: host name); unique among "
                                                       "running recorders, kept on restart"),
        lease_s: float = typer.Option(10.0, help="After this long without renewal, another "
                                                 "recorder of the group takes a session over"),
        nwb: bool = typer.Option(True, "--nwb/--no-nwb", help="Export NWB when a recording "
                                                              "ends"),
        redis_password_file: Path | None = REDIS_PASSWORD_FILE):
    """Write every mirrored session recording again, byte for byte, in one place.

    Sessions with redis.mirror_recording copy their log to Redis; this follows those
    streams, writes DIR/<name>.splog, fsyncs, then acknowledges, and exports NWB at the
    end. Stop with Ctrl-C (or SIGTERM); a restart resumes where it stopped.
    Example: spikeloop recorder --redis redis://10.0.0.5:6379/0 --out /data/central
    """
    os.umask(0o077)  # data files and sockets: readable by this user only
    from service.cluster.central_recorder import main as run_recorder

    _share_redis_password(redis_url, redis_password_file)
    run_recorder(redis_url, out, group, consumer, lease_s, nwb)
