"""Copy a session's recording log to Redis, behind the local file and never in its way.

The recorder reports how much of its file is durable after every flush
(``Recorder(on_durable=mirror.written)``); a thread of the mirror's own reads those
bytes back from the file and XADDs them to ``Keys.recording(sid)``. The loop thread
never touches Redis, and the recorder's writer thread only stores an integer, so a
slow or dead Redis delays nothing local.

The local file is the source of truth and the stream a prefix of it: every entry is
whole records (the first one the 8-byte file header), and writing each entry's
``data`` at its ``off`` reproduces the file byte for byte. Because the bytes are read
back from the file, an outage costs only lag: the mirror retries every ``retry_s``
and catches up. If Redis lost the stream meanwhile (a restart without persistence:
the stream's last id is no longer ours), the mirror sends the file again from byte 0
and announces the recording again; the central recorder skips what it already has.

Entries of ``Keys.recording(sid)``::

    {name, off, data}                              # bytes [off, off+len(data)) of the file
    {name, end: "1", bytes, records, clean}        # the file is complete at ``bytes``

and of ``Keys.recordings``: ``{event: start|end, sid, name, host, ...}``. Nothing here
trims either stream: the central recorder (``service.cluster.central_recorder``) trims what
every consumer group has fsynced and acknowledged.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from service.cluster.redis_streams import Keys, connect, redact
from service.recording.recorder import MAGIC, record_size, whole_records

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # largest entry, unless one record is larger
RETRY_S = 0.5
CLOSE_TIMEOUT_S = 3.0  # how long a stopping session waits for the mirror to catch up
SOCKET_TIMEOUT_S = 2.0


def redis_client(url: str, timeout_s: float):
    """A client that reports every lost connection instead of retrying it silently:
    a reconnect may reach a restarted, empty server, and the caller must check."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return connect(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                   retry=Retry(NoBackoff(), 0))


class RecordingMirror:
    """Mirrors the log at ``path`` (session ``sid``) to Redis at ``url`` from a thread."""

    def __init__(self, url: str, sid: str, path: str | Path, summary: dict[str, Any],
                 chunk_bytes: int = CHUNK_BYTES, retry_s: float = RETRY_S):
        self.url = url
        self.sid = sid
        self.path = Path(path)
        self.name = self.path.name
        self.key = Keys.recording(sid)
        self.summary = summary
        self.chunk_bytes = max(chunk_bytes, len(MAGIC))
        self.retry_s = retry_s
        self.mirrored = 0  # bytes of the file in the stream
        self.entries = 0
        self.failures = 0  # Redis errors (each one retried)
        self.resends = 0  # times the stream was lost and the file sent again from byte 0
        self.error: str | None = None  # the last error, None once the mirror is caught up
        self.complete = False  # the end entry is in the stream
        self.max_lag_ms = 0.0  # longest time from durable on disk to in the stream
        self._durable = 0
        self._durable_ns = 0
        self._final: dict[str, Any] = {}
        self._closing = False
        self._close_deadline = 0.0
        self._client: Any = None
        self._last_id: bytes | None = None
        self._announced = False
        self._end_sent = False
        self._fd: int | None = None
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mirror:{self.name}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ recorder side
    def written(self, durable_bytes: int) -> None:
        """``Recorder.on_durable``: the file's first ``durable_bytes`` are on disk."""
        self._durable_ns = time.monotonic_ns()
        self._durable = durable_bytes
        self._wake.set()

    def close(self, final: dict[str, Any], timeout_s: float = CLOSE_TIMEOUT_S) -> dict[str, Any]:
        """After ``Recorder.close()``: send the rest and the end entry, waiting at most
        ``timeout_s``. What could not be sent is ``stats()["unmirrored_bytes"]``."""
        self._final = final
        self._close_deadline = time.monotonic() + timeout_s
        self._closing = True
        self._wake.set()
        self._thread.join(timeout_s + SOCKET_TIMEOUT_S)
        if self._fd is not None and not self._thread.is_alive():
            os.close(self._fd)
            self._fd = None
        return self.stats()

    def stats(self) -> dict[str, Any]:
        return {"stream": self.key, "mirrored_bytes": self.mirrored,
                "unmirrored_bytes": max(0, self._durable - self.mirrored),
                "entries": self.entries, "failures": self.failures, "resends": self.resends,
                "max_lag_ms": round(self.max_lag_ms, 1), "complete": self.complete,
                "error": self.error}

    # ------------------------------------------------------------------ mirror thread
    def _run(self) -> None:
        while True:
            self._wake.clear()
            closing = self._closing  # read first: then this step sees every final byte
            try:
                self._step()
                if closing:
                    self._finish()
                    return
                if self.error is not None:
                    log.info(f"Redis is back: mirrored up to byte "
                          f"{self.mirrored}")
                    self.error = None
                delay = 1.0
            except Exception as exc:  # Redis, the file, or a bug: reported, retried, never fatal
                self._failed(exc)
                if closing and time.monotonic() >= self._close_deadline:
                    return
                delay = self.retry_s
            self._wake.wait(delay)

    def _failed(self, exc: Exception) -> None:
        first = self.error is None
        self.failures += 1
        self.error = (f"cannot mirror to Redis at {redact(self.url)}: {exc}; the local recording "
                      f"goes on, {max(0, self._durable - self.mirrored)} bytes not mirrored yet")
        if first:
            log.warning(f"{self.error}; retrying every {self.retry_s} s")
        if self._client is not None:
            self._client.close()
            self._client = None

    def _redis(self) -> Any:
        if self._client is None:
            client = redis_client(self.url, SOCKET_TIMEOUT_S)
            if self._last_id is not None and _last_id(client, self.key) != self._last_id:
                # Redis lost what we sent (restarted empty) or took an XADD we saw fail:
                # send it all again; the central recorder keeps only bytes it lacks.
                self.mirrored = 0
                self._announced = self._end_sent = False
                self.resends += 1
            self._client = client
        return self._client

    def _step(self) -> None:
        r = self._redis()
        if not self._announced:
            r.xadd(Keys.recordings, {"event": "start", "sid": self.sid, "name": self.name,
                                     "host": socket.gethostname(), "pid": os.getpid(),
                                     "config": json.dumps(self.summary),
                                     "wall_time_ns": time.time_ns()})
            self._announced = True
        target, since_ns = self._durable, self._durable_ns
        while self.mirrored < self._durable:
            off = self.mirrored
            data = self._read(off, self._durable)
            self._last_id = r.xadd(self.key, {"name": self.name, "off": off, "data": data})
            self.mirrored = off + len(data)
            self.entries += 1
        if target and self.mirrored >= target:
            self.max_lag_ms = max(self.max_lag_ms, (time.monotonic_ns() - since_ns) / 1e6)

    def _read(self, off: int, end: int) -> bytes:
        """Whole records from ``off`` (a record boundary), at most ``chunk_bytes`` unless
        the first record alone is larger; the file header alone at byte 0."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        want = len(MAGIC) if off == 0 else min(end - off, self.chunk_bytes)
        data = _pread(self._fd, want, off)
        if off == 0:
            return data
        cut = whole_records(data)
        if cut == 0:
            return _pread(self._fd, record_size(data), off)
        return data[:cut]

    def _finish(self) -> None:
        r = self._redis()
        f = self._final
        end = {"name": self.name, "end": "1", "bytes": self.mirrored,
               "records": f.get("records", 0), "clean": int(f.get("error") is None)}
        if not self._end_sent:  # once: a retry after a failed announcement must not repeat it
            self._last_id = r.xadd(self.key, end)
            self._end_sent = True
        r.xadd(Keys.recordings, {"event": "end", "sid": self.sid, "name": self.name,
                                 "host": socket.gethostname(), "records": end["records"],
                                 "bytes": self.mirrored, "clean": end["clean"],
                                 "wall_time_ns": time.time_ns()})
        self.complete = True
        self.error = None


def _last_id(client: Any, key: str) -> bytes | None:
    """The newest id ever added to stream ``key`` (trimming keeps it); None if no stream."""
    from redis import ResponseError

    try:
        return client.xinfo_stream(key)["last-generated-id"]
    except ResponseError:  # no such key
        return None


def _pread(fd: int, n: int, off: int) -> bytes:
    data = os.pread(fd, n, off)
    if len(data) != n:
        raise OSError(f"short read of the local recording at byte {off}: {len(data)} of {n}")
    return data
