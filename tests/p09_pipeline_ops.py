"""The F9 harness (the audit's p09_pipeline_ops.py was not shipped with shared/safety):
an operator's disarm or safe state between two bins of an armed, stimulating session,
through the session core the live process runs.

``run_op(op) -> (stim_amp, guard_amp)``: ``stim_amp`` is the amplitude of the first
command the stimulator is handed after the operation (published out of band at once,
or with the next bin), ``guard_amp`` the command the guard holds in force after that bin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from decoders.base import build_decoder
from service.loop.core import BinResult, Control, ControlOp, CoreSink, SessionCore
from service.session.config import SessionConfig
from service.wire import protocol as P
from stim.guard import Outcome

CHANNELS = 8
BIN_NS = 20_000_000


class _Stimulator(CoreSink):
    """Every command handed to the stimulator, in order."""

    def __init__(self) -> None:
        self.commands: list[Any] = []

    def bin(self, r: BinResult, recv_ns: int, in_seq: int) -> None:
        assert r.outcome is not None
        self.commands.append(r.outcome.command)

    def outcome(self, out: Outcome, index: int) -> None:
        self.commands.append(out.command)


def _frames(k: int) -> list[bytes]:
    counts = np.full(CHANNELS, 3, np.uint16)
    return P.encode_array(b"spikes", P.KIND_COUNTS, "rig", k, k * BIN_NS, counts,
                          bin_ns=BIN_NS, epoch=7)


def run_op(op: str) -> tuple[float, float]:
    cfg = SessionConfig.model_validate({
        "bin_ms": 20, "source": {"channels": CHANNELS},
        "stim": {"policy": {"type": "continuous_dbs", "amplitude_ma": 2.0},
                 "limits": {"max_slew_ma_per_s": 1000, "min_ramp_ms": 0}}})
    sink = _Stimulator()
    core = SessionCore(cfg, sink)
    rng = np.random.default_rng(0)
    dec = build_decoder("wiener").fit(rng.poisson(3.0, (200, CHANNELS)),
                                      rng.normal(size=(200, 1)), bin_ms=20,
                                      output_names=["beta"])
    core.begin(dec)
    core.control(Control(ControlOp.ARM))
    k = 0
    while core.guard.current is None or core.guard.current.is_off:  # stimulating
        core.accept(_frames(k))
        k += 1
        assert k < 500, "the session never stimulated"
    before = len(sink.commands)
    core.control(Control(ControlOp(op), reason="operator"))
    core.accept(_frames(k))  # the bin right after the operation
    core.accept(_frames(k + 1))
    after = [c for c in sink.commands[before:] if c is not None]
    stim_amp = float(after[0].amplitude_ma) if after else 0.0
    cur = core.guard.current
    return stim_amp, float(cur.amplitude_ma) if cur is not None else 0.0
