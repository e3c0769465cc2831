"""Copy a session's output (decoded, stim, heartbeat) to its Redis stream, off the hot path.

The loop sends each output message to its PUB socket as before, then offers the same
frames to an inproc PUSH without blocking (:meth:`OutputMirror.tee`): a few µs, and
when the queue is full (Redis slow or gone) the message is counted as ``dropped``,
as a PUB drops at its high-water mark. A thread drains the queue and XADDs batches
(one pipeline, one round trip) to ``Keys.output(sid)`` with ``MAXLEN ~ maxlen``, at
most every ``interval_s``: the thread needs the GIL to build a batch, and waking it
for every message (two per bin at 1 kHz) delays the loop when a frame arrives during
a write. Batching costs the stream's readers up to ``interval_s`` of delay; the
stimulator reads the PUB, never this stream.
A batch lost to a Redis error is counted as ``failed``; the thread then reconnects
with backoff while the queue absorbs (or drops) what the loop keeps sending.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import zmq

from service.cluster.redis_streams import Backoff, connect, frames_to_fields, no_retry

log = logging.getLogger(__name__)


class OutputMirror:
    def __init__(self, url: str, key: str, maxlen: int, ctx: zmq.Context, endpoint: str,
                 hwm: int = 10_000, batch: int = 256, interval_s: float = 0.01):
        self.url, self.key, self.maxlen = url, key, maxlen
        self.ctx, self.endpoint, self.hwm, self.batch = ctx, endpoint, hwm, batch
        self.interval_s = interval_s
        self.sent = 0  # entries written to Redis
        self.dropped = 0  # queue full: never reached the mirror thread (counted by the loop)
        self.failed = 0  # lost with a batch that Redis refused or a broken connection
        self.errors = 0
        self.reconnects = 0
        self.connected = False
        self.last_error = ""
        # The PUSH end belongs to the loop thread: created (and bound) here, in its thread.
        self._push = ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, hwm)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.bind(endpoint)
        self._client = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-mirror", daemon=True)

    def tee(self, send: Callable[..., object]) -> Callable[..., None]:
        """``send`` (a PUB's ``send_multipart``), then a non-blocking copy to the mirror."""
        offer, again, noblock = self._push.send_multipart, zmq.Again, zmq.NOBLOCK

        def send_and_mirror(frames: list, copy: bool = True) -> None:
            send(frames, copy=copy)
            try:
                offer(frames, noblock, copy=copy)
            except again:
                self.dropped += 1

        return send_and_mirror

    def start(self, timeout_s: float = 5.0) -> None:
        """Connect now (a wrong URL fails the session start), then write from a thread."""
        self._client = connect(self.url, socket_timeout=2.0, socket_connect_timeout=2.0,
                               retry=no_retry())
        self.connected = True
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the Redis output mirror thread did not start")

    def stop(self, timeout_s: float = 3.0) -> None:
        """Write what is queued (the final safe command included), then end the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._push.close(0)

    def stats(self) -> dict:
        return {"key": self.key, "sent": self.sent, "dropped": self.dropped,
                "failed": self.failed, "errors": self.errors, "reconnects": self.reconnects,
                "connected": self.connected, "last_error": self.last_error}

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        pull = self.ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, self.hwm)
        pull.setsockopt(zmq.LINGER, 0)
        pull.connect(self.endpoint)
        self._ready.set()
        backoff = Backoff()
        client = self._client
        try:
            while True:
                stopping = self._stop.is_set()
                if client is None:
                    try:
                        client = connect(self.url, socket_timeout=2.0,
                                         socket_connect_timeout=2.0, retry=no_retry())
                    except Exception as exc:  # OSError from connect()
                        self._failed(exc, 0)
                        if stopping or self._stop.wait(backoff.next()):
                            return
                        continue
                    self.reconnects += 1
                    self.connected = True
                    backoff.reset()
                if not pull.poll(0 if stopping else 200):
                    if stopping:
                        return
                    continue
                batch: list[list[bytes]] = []
                while len(batch) < self.batch:
                    try:
                        batch.append(pull.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                try:
                    pipe = client.pipeline(transaction=False)
                    for frames in batch:
                        pipe.xadd(self.key, frames_to_fields(frames), maxlen=self.maxlen,
                                  approximate=True)
                    pipe.execute()
                    self.sent += len(batch)
                    if not stopping and len(batch) < self.batch:
                        self._stop.wait(self.interval_s)  # let the next batch gather
                except Exception as exc:  # RedisError: the batch is lost, counted
                    self._failed(exc, len(batch))
                    client.close()
                    client = None
                    if not stopping:
                        self._stop.wait(backoff.next())
        finally:
            pull.close(0)
            if client is not None:
                client.close()

    def _failed(self, exc: Exception, lost: int) -> None:
        self.errors += 1
        self.failed += lost
        self.connected = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.errors <= 10 or self.errors % 100 == 0:
            log.warning(f"{self.key}: {self.last_error} ({self.failed} entries lost "
                  "so far); retrying with backoff")
