"""A session core's actions written to a session log (the live session and simulations)."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.loop.core import BinResult, CoreSink
from service.recording.recorder import Recorder
from service.wire.protocol import Message


class RecorderSink(CoreSink):
    """Accepted and refused frames, bins, events and models, in the order they happen."""

    def __init__(self, recorder: Recorder | None):
        self.recorder = recorder

    def accepted(self, frames: list[Any], msg: Message, recv_ns: int) -> None:
        if self.recorder is not None:
            self.recorder.input(frames, recv_ns)

    def rejected(self, frames: list[Any], reason: str, detail: str, recv_ns: int) -> None:
        if self.recorder is not None:
            self.recorder.rejected(frames, reason, recv_ns)

    def bin(self, r: BinResult, recv_ns: int, in_seq: int) -> None:
        if self.recorder is not None:
            assert r.outcome is not None
            self.recorder.bin(r.index, r.start_ns, r.decoded, r.outcome)

    def event(self, ev: dict[str, Any]) -> None:
        if self.recorder is not None and not self.recorder.error:
            self.recorder.event(ev)

    def model(self, meta: dict[str, Any], state: dict[str, np.ndarray]) -> None:
        if self.recorder is not None:
            self.recorder.model(meta, state)
