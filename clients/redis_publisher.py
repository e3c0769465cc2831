"""Publish protocol frames to a Redis stream instead of a ZeroMQ PUB socket.

:class:`RedisStreamSink` has the PUB socket's ``send_multipart``, so everything that
publishes through a socket (``SpikePublisher``, ``run_source``, the benchmark feeders)
publishes to Redis unchanged: each message becomes one entry of ``Keys.source(name)``,
frames ``f0, f1, ...`` byte for byte, trimmed to about ``maxlen`` entries.

Behaviour frames are held and go out in the same round trip (one pipeline) as the
spike frame that follows them, which is how every source here sends them; ``flush()``
sends held frames on their own. A source must not stall when Redis is slow or gone:
a failed write is counted (``errors``, ``dropped``) and the next one reconnects. The
session sees the lost frames as a sequence gap.
"""

from __future__ import annotations

import sys

from service.cluster.redis_streams import Keys, connect, frames_to_fields, no_retry


class RedisStreamSink:
    def __init__(self, url: str, name: str, maxlen: int = 100_000,
                 hold_topics: tuple[bytes, ...] = (b"behavior",), timeout_s: float = 1.0):
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, not {maxlen}")
        self.key = Keys.source(name)
        self.endpoint = f"redis stream {self.key}"  # no URL: it may hold a password
        self.maxlen = maxlen
        self.hold_topics = hold_topics
        self.client = connect(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                              retry=no_retry())
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self.last_error = ""
        self._held: list[dict[str, bytes]] = []

    def send_multipart(self, frames: list, flags: int = 0, copy: bool = True,
                       track: bool = False) -> None:
        """XADD one message (the arguments after ``frames`` exist for PUB compatibility)."""
        fields = frames_to_fields(frames)
        self._held.append(fields)
        if fields.get("f0") in self.hold_topics and len(self._held) < 1000:
            return
        self.flush()

    def flush(self) -> None:
        if not self._held:
            return
        batch, self._held = self._held, []
        try:
            if len(batch) == 1:
                self.client.xadd(self.key, batch[0], maxlen=self.maxlen, approximate=True)
            else:
                pipe = self.client.pipeline(transaction=False)
                for fields in batch:
                    pipe.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)
                pipe.execute()
            self.sent += len(batch)
        except Exception as exc:  # RedisError: count, drop, keep the source running
            self.errors += 1
            self.dropped += len(batch)
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.errors <= 10 or self.errors % 1000 == 0:
                print(f"[redis publisher] {self.key}: {self.last_error}; {self.dropped} "
                      "frames dropped so far", file=sys.stderr, flush=True)

    def close(self, linger: int | None = None) -> None:
        self.flush()
        self.client.close()
