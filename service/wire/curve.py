"""CurveZMQ for the ingest and stimulation links: encryption plus key-based access.

Keys are ZeroMQ certificate files (``NAME.key`` public, ``NAME.key_secret``
secret) made by ``spikeloop keys NAME``. A *server* socket (the one that
binds: a source's PUB, a session's output PUB) holds a secret key and, when
given a directory of allowed public keys, admits only those clients. A
*client* socket must know the server's public key, so it also authenticates
the server.
"""

from __future__ import annotations

from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


def ensure_cert(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Create ``name``'s certificate in ``directory`` unless it exists; return its paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    if not secret.exists():
        public, secret = (Path(p) for p in zmq.auth.create_certificates(d, name))
        secret.chmod(0o600)
    return public, secret


def public_key(path: str | Path) -> str:
    """The z85 public key in a certificate file (public or secret)."""
    pub, _ = zmq.auth.load_certificate(str(path))
    return pub.decode()


def serve_curve(sock: zmq.Socket, secret_file: str | Path,
                allowed_clients_dir: str | Path | None = None) -> ThreadAuthenticator | None:
    """Make ``sock`` a CURVE server; with a directory, admit only the keys in it."""
    pub, sec = zmq.auth.load_certificate(str(secret_file))
    if sec is None:
        raise ValueError(f"{secret_file} holds no secret key: pass the .key_secret file")
    auth = None
    if allowed_clients_dir is not None:
        auth = ThreadAuthenticator(zmq.Context.instance())
        auth.start()
        auth.configure_curve(domain="*", location=str(allowed_clients_dir))
    sock.curve_secretkey = sec
    sock.curve_publickey = pub
    sock.curve_server = True
    return auth


def connect_curve(sock: zmq.Socket, server_public_key: str,
                  secret_file: str | Path | None = None) -> str:
    """Make ``sock`` a CURVE client of a server with that public key; returns our public key.

    Without a certificate of its own the client uses a fresh key pair, which only
    servers that admit any client accept.
    """
    if secret_file is not None:
        pub, sec = zmq.auth.load_certificate(str(secret_file))
    else:
        pub, sec = zmq.curve_keypair()
    sock.curve_secretkey = sec
    sock.curve_publickey = pub
    sock.curve_serverkey = server_public_key.encode()
    return pub.decode()
