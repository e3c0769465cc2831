"""Session ingest from a Redis stream: a reader thread that feeds the loop's poller.

The loop keeps one code path for every frame, whatever carried it: this thread XREADs
the source stream and forwards each entry's frames, unchanged, on an inproc PUSH
socket whose PULL end is the loop's ingest socket. Validation, binning, rejection
counting and recording are therefore the same as for a ZeroMQ source.

* Start: at the newest entry when the session starts (like a SUB joining a PUB).
* Topics: an entry whose topic is not the session's spikes or behaviour topic is
  skipped, as a SUB would filter it; an entry with no ``f0`` at all goes to the loop
  as one empty frame, to be rejected (``missing_frames``) and counted there.
* Back-pressure: when the loop is behind, the PUSH blocks and the entries wait in Redis
  (bounded by the publisher's MAXLEN); nothing is dropped here.
* Outage: each Redis error is counted and the reader reconnects with backoff, resuming
  after the last entry it forwarded. While no frame arrives the session's watchdog
  drives stimulation safe.
"""

from __future__ import annotations

import logging
import threading

import zmq

from service.cluster.redis_streams import (
    Backoff,
    connect,
    fields_to_frames,
    no_retry,
    parse_id,
    stream_entries,
)

log = logging.getLogger(__name__)


class StreamReader:
    """Reads ``key`` on ``url`` and PUSHes each entry's frames to ``endpoint`` (inproc)."""

    def __init__(self, url: str, key: str, endpoint: str, topics: tuple[bytes, ...],
                 ctx: zmq.Context, block_ms: int = 100, count: int = 256, hwm: int = 10_000):
        self.url, self.key, self.endpoint = url, key, endpoint
        self.topics = topics
        self.ctx = ctx
        self.block_ms, self.count, self.hwm = block_ms, count, hwm
        self.entries = 0  # forwarded to the loop
        self.skipped = 0  # another topic: what a SUB would have filtered out
        self.errors = 0  # Redis errors (each one followed by a reconnection attempt)
        self.reconnects = 0  # connections re-established after an error
        self.resets = 0  # the stream was recreated behind our position: read it from the start
        self.waits = 0  # the loop was behind: the reader waited for room
        self.connected = False
        self.last_error = ""
        self.last_id: bytes | str = "0-0"
        self._client = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-ingest", daemon=True)

    def start(self) -> None:
        """Connect now (a wrong URL fails the session start, clearly), then read in a thread."""
        client = self._client = self._connect()
        newest = client.xrevrange(self.key, count=1)
        self.last_id = newest[0][0] if newest else "0-0"
        self.connected = True
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def stats(self) -> dict:
        last = self.last_id.decode() if isinstance(self.last_id, bytes) else self.last_id
        return {"key": self.key, "entries": self.entries, "skipped": self.skipped,
                "errors": self.errors, "reconnects": self.reconnects, "resets": self.resets,
                "waits": self.waits, "connected": self.connected, "last_id": last,
                "last_error": self.last_error}

    # ------------------------------------------------------------------ thread
    def _connect(self):
        # The socket timeout outlasts the XREAD block, so only a dead server trips it.
        return connect(self.url, socket_timeout=self.block_ms / 1000 + 2.0,
                       socket_connect_timeout=2.0, retry=no_retry())

    def _run(self) -> None:
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, self.hwm)
        push.setsockopt(zmq.SNDTIMEO, 200)  # a full queue is re-checked against stop()
        push.setsockopt(zmq.LINGER, 0)
        push.connect(self.endpoint)
        backoff = Backoff()
        client = self._client
        try:
            while not self._stop.is_set():
                try:
                    if client is None:
                        client = self._reconnect()
                        backoff.reset()
                    reply = client.xread({self.key: self.last_id}, count=self.count,
                                         block=self.block_ms)
                except Exception as exc:  # RedisError, or OSError from connect()
                    self._failed(exc)
                    if client is not None:
                        client.close()
                    client = None
                    self._stop.wait(backoff.next())
                    continue
                for entry_id, fields in stream_entries(reply):
                    if not self._forward(push, fields):
                        return  # stopping
                    self.last_id = entry_id
        finally:
            push.close(0)
            if client is not None:
                client.close()

    def _reconnect(self):
        client = self._connect()
        newest = client.xrevrange(self.key, count=1)
        if self.last_id != "0-0" and (not newest or parse_id(newest[0][0])
                                      < parse_id(self.last_id)):
            # A restarted server without persistence: the stream is new. Its entries are
            # all after our outage, so read them from the start.
            self.last_id = "0-0"
            self.resets += 1
        self.reconnects += 1
        self.connected = True
        log.warning(f"{self.key}: reconnected after {self.errors} error(s)")
        return client

    def _forward(self, push: zmq.Socket, fields: dict) -> bool:
        """Hand one entry to the loop; False when stopping before it could be handed."""
        frames = fields_to_frames(fields)
        if frames and bytes(frames[0]) not in self.topics:
            self.skipped += 1
            return True
        frames = frames or [b""]  # no f0: the loop rejects it as missing_frames
        while True:
            try:
                push.send_multipart(frames, copy=False)
                self.entries += 1
                return True
            except zmq.Again:
                self.waits += 1
                if self._stop.is_set():
                    return False

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.connected = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.errors <= 10 or self.errors % 100 == 0:
            log.warning(f"{self.key}: {self.last_error} (error {self.errors}); "
                  "retrying with backoff")
