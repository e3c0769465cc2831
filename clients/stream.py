"""Streaming client: decoded outputs, stimulation commands and heartbeats of a session.

Subscribes to the session's output PUB socket (the session status gives its
``output_endpoint``). ``RunningR2`` scores decoded against true values online.
``clients.redis_stream`` reads the same updates from the session's Redis stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from service.wire import protocol as P
from service.wire.curve import connect_curve


@dataclass
class Update:
    kind: str  # "decoded" | "stim.command" | "heartbeat"
    t_ns: int
    seq: int
    decoded: np.ndarray | None = None
    truth: np.ndarray | None = None
    fields: dict[str, Any] | None = None
    entry_id: str | None = None  # the Redis stream entry, when read from Redis


def to_update(frames: list) -> Update:
    """One output message (decoded, stim.command or heartbeat); ProtocolError if malformed."""
    msg = P.decode(frames)
    h = msg.header
    if h.kind == P.KIND_DECODED:
        truth = h.extra.get("truth")
        return Update(h.kind, h.t_ns, h.seq, np.array(msg.values),
                      np.asarray(truth, float) if truth is not None else None)
    return Update(h.kind, h.t_ns, h.seq, fields=dict(h.extra))


class StreamClient:
    def __init__(self, endpoint: str, topics: tuple[bytes, ...] = (b"decoded", b"stim",
                                                                    b"heartbeat"),
                 server_public_key: str | None = None, secret_file: str | None = None):
        self.socket: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        if server_public_key:  # a session whose output is CURVE-encrypted
            connect_curve(self.socket, server_public_key, secret_file)
        self.socket.setsockopt(zmq.RCVHWM, 100_000)
        for t in topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, t)
        self.socket.connect(endpoint)

    def recv(self, timeout_ms: int = 1000) -> Update | None:
        if not self.socket.poll(timeout_ms):
            return None
        return to_update(self.socket.recv_multipart())

    def __iter__(self) -> Iterator[Update]:
        while True:
            u = self.recv(timeout_ms=-1)
            if u is not None:
                yield u

    def close(self) -> None:
        self.socket.close(0)


class RunningR2:
    """Coefficient of determination over a sliding window of the last ``window`` bins.

    Over a handful of bins the truth barely varies, so R² is meaningless (it reads like
    -1e34 right after calibration): it is NaN until ``min_bins`` bins are in the window.
    The dashboard applies the same rule (service/api/dashboard/app.js, ``r2Text``).
    """

    def __init__(self, window: int = 1500, min_bins: int = 100):
        self.window = window
        self.min_bins = min_bins
        self.pred: list[np.ndarray] = []
        self.true: list[np.ndarray] = []

    def add(self, pred: np.ndarray, true: np.ndarray) -> None:
        self.pred.append(np.asarray(pred, float))
        self.true.append(np.asarray(true, float))
        if len(self.pred) > self.window:
            del self.pred[0], self.true[0]

    def r2(self) -> np.ndarray:
        if len(self.true) < max(3, self.min_bins):
            return np.full(len(self.true[0]) if self.true else 0, np.nan)
        p, t = np.asarray(self.pred), np.asarray(self.true)
        ss_res = ((t - p) ** 2).sum(0)
        ss_tot = ((t - t.mean(0)) ** 2).sum(0)
        return 1 - ss_res / np.where(ss_tot > 0, ss_tot, np.nan)
