"""Addresses: what counts as this machine only, and where a local source publishes."""

from __future__ import annotations

import ipaddress
import os
import tempfile
from pathlib import Path

#: the environment variable that moves the local source socket (tests, several users)
SOURCE_ENV = "SPIKELOOP_SOURCE"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def runtime_dir() -> Path:
    """This user's own directory for sockets: ``$XDG_RUNTIME_DIR/spikeloop`` or
    ``/tmp/spikeloop-UID`` (created 0700 by :func:`prepare_bind`)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "spikeloop"
    return Path(tempfile.gettempdir()) / f"spikeloop-{os.getuid()}"


def local_source_endpoint() -> str:
    """The default source endpoint of ``sim``, ``replay``, ``lsl source`` and a session's
    ``source.endpoint``: an ipc:// socket in this user's runtime directory. On one host,
    ipc:// is the lower-latency transport, and only this user can reach the socket
    (TCP on 127.0.0.1 is open to every local user). ``$SPIKELOOP_SOURCE`` overrides it;
    a source on another host is named explicitly (tcp://HOST:PORT)."""
    return os.environ.get(SOURCE_ENV) or f"ipc://{runtime_dir() / 'source.sock'}"


def prepare_bind(endpoint: str) -> None:
    """Before binding ``ipc://PATH``: create PATH's directory, private (0700) if it is
    ours to create, so the default endpoint works on a fresh machine."""
    if endpoint.startswith("ipc://"):
        parent = Path(endpoint[len("ipc://"):]).parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
