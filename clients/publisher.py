"""A spike publisher a lab can wrap around its acquisition system.

It binds a PUB socket and sends wire-protocol v1 frames with consecutive
sequence numbers. Timestamps are the acquisition clock in nanoseconds.

    pub = SpikePublisher("tcp://127.0.0.1:5555", channels=96)
    pub.send_events(ids, times_ns, t_ns=now_ns)   # every few ms
    pub.send_behavior([x, y, vx, vy], t_ns=now_ns, names=["x", "y", "vx", "vy"])

With ``sink=RedisStreamSink(url, name)`` (``clients.redis_publisher``) the same frames
go to a Redis stream instead, for sessions on other hosts (``source.redis_stream``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from service.wire import protocol as P
from service.wire.curve import serve_curve
from service.wire.net import prepare_bind


class SpikePublisher:
    def __init__(self, endpoint: str | None, channels: int, stream: str = "sim",
                 spikes_topic: bytes = b"spikes", behavior_topic: bytes = b"behavior",
                 high_water_mark: int = 100_000, bind: bool = True,
                 context: zmq.Context | None = None, curve_secret_file: str | None = None,
                 curve_allowed_dir: str | None = None, sink: Any = None):
        self.channels = channels
        self.stream = stream
        self.spikes_topic = spikes_topic
        self.behavior_topic = behavior_topic
        self.seq = 0
        self._behavior_seq = 0
        # A new epoch per publisher instance lets sessions tell a restart from a replay.
        self.epoch = int.from_bytes(os.urandom(4), "little") | 1
        self._auth = None
        if sink is not None:  # anything with a PUB's send_multipart, e.g. a RedisStreamSink
            if curve_secret_file:
                raise ValueError("CurveZMQ encrypts ZeroMQ links only; protect Redis "
                                 "instead (a password, rediss://)")
            self.socket = sink
            self.endpoint = sink.endpoint
            return
        if endpoint is None:
            raise ValueError("SpikePublisher needs a ZeroMQ endpoint or a sink")
        self.socket = (context or zmq.Context.instance()).socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, high_water_mark)
        self.socket.setsockopt(zmq.LINGER, 500)
        if curve_secret_file:  # encrypted; with a directory, only those sessions may listen
            self._auth = serve_curve(self.socket, curve_secret_file, curve_allowed_dir)
        if bind:
            prepare_bind(endpoint)
            self.socket.bind(endpoint)
            self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self.socket.connect(endpoint)
            self.endpoint = endpoint

    def send_events(self, ids: np.ndarray, times_ns: np.ndarray, t_ns: int,
                    extra: dict | None = None) -> None:
        """Spikes whose times are all <= ``t_ns``, the clock at sending."""
        self.socket.send_multipart(P.encode_events(
            self.spikes_topic, self.stream, self.seq, t_ns, self.channels, ids, times_ns,
            extra, epoch=self.epoch), copy=False)
        self.seq += 1

    def send_counts(self, counts: np.ndarray, t_ns: int, bin_ns: int) -> None:
        """One bin of counts covering [t_ns, t_ns + bin_ns)."""
        self.socket.send_multipart(P.encode_array(
            self.spikes_topic, P.KIND_COUNTS, self.stream, self.seq, t_ns, counts, bin_ns,
            epoch=self.epoch), copy=False)
        self.seq += 1

    def send_behavior(self, values: Sequence[float] | np.ndarray, t_ns: int,
                      names: Sequence[str] | None = None) -> None:
        """Ground truth / behaviour at ``t_ns`` (calibration targets, scoring)."""
        extra = {"names": list(names)} if names else None
        self.socket.send_multipart(P.encode_array(
            self.behavior_topic, P.KIND_BEHAVIOR, self.stream, self._behavior_seq, t_ns,
            np.asarray(values, np.float64), extra=extra), copy=False)
        self._behavior_seq += 1

    def close(self) -> None:
        self.socket.close()
        if self._auth is not None:
            self._auth.stop()
