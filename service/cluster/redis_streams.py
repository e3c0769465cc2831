"""Redis for scale-out: one place for the connection and for every key spikeloop uses.

Redis is opt-in (a ``redis://`` URL); with none configured nothing here is imported.
All keys live under one prefix so that several deployments can share a server, and
their names are built only here, so that the control plane, the workers, the session
processes and the central recorder agree on them.

Multipart ZeroMQ frames travel in a stream entry as the fields ``f0``, ``f1``, ...
(the topic, the header and the payloads of :mod:`service.wire.protocol`, byte for byte),
so a frame read from Redis is decoded by the same code as one read from a socket.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PREFIX = "spikeloop"

#: The Redis password of this host's processes. It comes from the host's own settings (the
#: password in ``serve --redis``/``worker --redis``, or ``--redis-password-file``), reaches
#: session processes through their environment, and is never written into a session config,
#: a recording or a status: session configs hold Redis URLs without credentials.
PASSWORD_ENV = "SPIKELOOP_REDIS_PASSWORD"


def connect(url: str, *, socket_timeout: float | None, socket_connect_timeout: float = 2.0,
            **kwargs: Any):
    """A client for ``url``, checked with a PING so a wrong URL fails here, clearly.

    The timeouts are required: the Redis client's own default (5 s on current versions)
    is shorter than some of spikeloop's blocking calls, and a blocking call longer than
    ``socket_timeout`` fails with a timeout instead of waiting. Every caller names the
    longest call it makes and passes a timeout above it.
    """
    import redis

    if not has_secret(url) and os.environ.get(PASSWORD_ENV):
        kwargs.setdefault("password", os.environ[PASSWORD_ENV])
    client = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                  socket_connect_timeout=socket_connect_timeout, **kwargs)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConnectionError(f"cannot reach Redis at {redact(url)}: {exc}; start redis-server or "
                              "fix the URL (redis://[:password@]host:port/db)") from exc
    return client


def redact(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``: for every message and
    status that shows a URL (they reach logs and API readers)."""
    scheme, sep, rest = url.partition("://")
    rest = _QUERY_SECRET.sub(r"\1***", rest)  # ?password=... (redis-py reads it too)
    cred, at, host = rest.rpartition("@")
    if not at or ":" not in cred:
        return f"{scheme}{sep}{rest}"
    return f"{scheme}{sep}{cred.split(':', 1)[0]}:***@{host}"


#: a password given as a query parameter of a Redis URL
_QUERY_SECRET = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)


def has_secret(url: str) -> bool:
    """Whether ``url`` carries a password (``redis://[user]:pw@host`` or ``?password=``)."""
    return password_of(url) is not None


def password_of(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.password:
        return parts.password
    found = _QUERY_SECRET.search(url)
    return found.group(2) if found and found.group(2) else None


def without_secret(url: str) -> str:
    """``url`` with its password removed (user name and everything else kept)."""
    scheme, sep, rest = url.partition("://")
    base, _, query = rest.partition("?")
    kept = [q for q in query.split("&") if q and not q.lower().startswith("password=")]
    rest = base + ("?" + "&".join(kept) if kept else "")
    cred, at, host = rest.rpartition("@")
    if not at:
        return f"{scheme}{sep}{rest}"
    user = cred.split(":", 1)[0]
    return f"{scheme}{sep}{user + '@' if user else ''}{host}"


def share_password(url: str | None, password_file: Path | None = None) -> None:
    """Make this host's Redis password (from its own ``url`` or from ``password_file``)
    the one its session processes use (:data:`PASSWORD_ENV`, inherited by children)."""
    secret = password_of(url) if url else None
    if password_file is not None:
        mode = password_file.stat().st_mode
        if mode & 0o077:
            raise PermissionError(f"{password_file} is readable by other users (mode "
                                  f"{mode & 0o777:o}): chmod 600 it")
        secret = password_file.read_text().strip() or None
    if secret:
        os.environ[PASSWORD_ENV] = secret


class Keys:
    """Key names. ``sid``: session id; ``wid``: worker id; ``name``: a source stream name."""

    workers = f"{PREFIX}:workers"  # sorted set: worker id -> last heartbeat (Redis ms)

    @staticmethod
    def worker(wid: str) -> str:  # hash: host, capacity, labels, sessions, pid, started
        return f"{PREFIX}:worker:{wid}"

    @staticmethod
    def worker_requests(wid: str) -> str:  # stream: requests from the control plane
        return f"{PREFIX}:worker:{wid}:requests"

    @staticmethod
    def reply(request_id: str) -> str:  # list: the worker's reply to one request
        return f"{PREFIX}:reply:{request_id}"

    @staticmethod
    def source(name: str) -> str:  # stream: spike frames published by a source
        return f"{PREFIX}:source:{name}"

    @staticmethod
    def output(sid: str) -> str:  # stream: a session's decoded, stim and heartbeat frames
        return f"{PREFIX}:session:{sid}:output"

    @staticmethod
    def recording(sid: str) -> str:  # stream: a session's recording log, record by record
        return f"{PREFIX}:session:{sid}:recording"

    @staticmethod
    def recording_owner(sid: str) -> str:  # string, with a TTL: the central recorder holding it
        return f"{PREFIX}:session:{sid}:recording:owner"

    recordings = f"{PREFIX}:recordings"  # stream: one entry per recording started/ended


def no_retry():
    """A redis-py ``retry`` that never retries.

    redis-py retries a failed command three times with backoff by default: a source would
    stall for that long on every frame during an outage, and a reader could not count its
    errors. Our callers count each failure and back off themselves.
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


class Backoff:
    """Exponential delays between reconnection attempts: ``first`` doubling up to ``cap``."""

    def __init__(self, first_s: float = 0.05, cap_s: float = 2.0):
        self.first_s, self.cap_s = first_s, cap_s
        self.delay_s = first_s

    def next(self) -> float:
        d = self.delay_s
        self.delay_s = min(self.cap_s, d * 2)
        return d

    def reset(self) -> None:
        self.delay_s = self.first_s


def stream_entries(reply: Any) -> list[tuple[bytes, dict]]:
    """The ``(id, fields)`` pairs of an XREAD/XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (e for _, e in reply)
    out: list[tuple[bytes, dict]] = []
    for entries in streams:
        out.extend((eid, fields) for eid, fields in entries)
    return out


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    """``b"1700000000000-3"`` -> ``(1700000000000, 3)``, comparable."""
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq or 0)


def frames_to_fields(frames: list[bytes]) -> dict[str, bytes]:
    return {f"f{i}": bytes(f) for i, f in enumerate(frames)}


def fields_to_frames(fields: dict) -> list[bytes]:
    """Inverse of :func:`frames_to_fields` (keys may come back as bytes)."""
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    frames: list[bytes] = []
    while f"f{len(frames)}" in d:
        frames.append(d[f"f{len(frames)}"])
    return frames


def abandon_recording(r, sid: str, name: str, why: str) -> None:
    """Tell the central recorder that ``name`` will get no end entry (its worker is lost),
    so it closes its copy as it stands instead of waiting for one."""
    r.xadd(Keys.recording(sid), {"name": name, "abandoned": why})
