"""A live-like session without sockets: simulated source -> frames -> session core -> recorder.

The frames are encoded on the wire protocol and go through the same session core
the session process runs, with the same recorder sink; calibration is fitted
synchronously (the session process fits in a thread) and installed at the next
bin boundary. Tests and ``bench/replay.py`` use it to produce recordings whose
replay must be identical.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.loop.core import BinResult, Control, SessionCore, fit_calibration
from service.recording.recorder import Recorder
from service.recording.sink import RecorderSink
from service.session.config import SessionConfig
from service.wire.protocol import KIND_BEHAVIOR, encode_array, encode_events
from sources.base import SimSource


@dataclass
class SimSessionResult:
    bins: int = 0
    decoded: list[np.ndarray | None] = field(default_factory=list)
    truth: list[np.ndarray | None] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    commands: list[dict[str, Any] | None] = field(default_factory=list)
    source_seconds: float = 0.0
    wall_seconds: float = 0.0
    recorder: dict[str, Any] = field(default_factory=dict)
    core: SessionCore | None = None


def sim_frames(sim: SimSource, seconds: float, frame_ms: float, stream: str = "sim"):
    """Wire frames of a simulated source: behaviour then spikes, every ``frame_ms``."""
    frame_ns = int(round(frame_ms * 1e6))
    names = {"names": list(sim.truth_names)}
    for seq in range(int(round(seconds * 1e9 / frame_ns))):
        step = sim.advance(frame_ns)
        yield encode_array(b"behavior", KIND_BEHAVIOR, f"{stream}.behavior", seq, step.t_ns,
                           step.truth, extra=names)
        yield encode_events(b"spikes", stream, seq, step.t_ns, sim.channels, step.ids,
                            step.times)


class _SimSink(RecorderSink):
    def __init__(self, recorder: Recorder | None, res: SimSessionResult):
        super().__init__(recorder)
        self.res = res
        self.fit: tuple[np.ndarray, np.ndarray, list[str]] | None = None

    def bin(self, r: BinResult, recv_ns: int, in_seq: int) -> None:
        super().bin(r, recv_ns, in_seq)
        res = self.res
        assert r.outcome is not None
        res.bins += 1
        res.decoded.append(None if r.decoded is None else r.decoded.copy())
        res.truth.append(None if r.truth is None else np.array(r.truth, float))
        res.statuses.append(r.outcome.status)
        cmd = r.outcome.command
        res.commands.append(None if cmd is None else dict(
            amplitude_ma=getattr(cmd, "amplitude_ma", None),
            power_mw=getattr(cmd, "power_mw", None)))

    def calibration_ready(self, counts: np.ndarray, truth: np.ndarray,
                          names: list[str]) -> None:
        self.fit = (counts, truth, names)  # fitted between frames, as the live thread does


def run_sim_session(config: SessionConfig, sim: SimSource, seconds: float,
                    recording: str | Path | None = None, frame_ms: float = 5.0,
                    events: list[tuple[int, Control | dict[str, Any]]] | None = None,
                    flush_interval_s: float = 0.2, fsync: bool = True) -> SimSessionResult:
    """Run ``seconds`` of a simulated source through a session (see :func:`run_frames`)."""
    res = run_frames(config, sim_frames(sim, seconds, frame_ms), recording, events,
                     flush_interval_s, fsync)
    res.source_seconds = seconds
    return res


def run_frames(config: SessionConfig, frames: Iterable[list[bytes]],
               recording: str | Path | None = None,
               events: list[tuple[int, Control | dict[str, Any]]] | None = None,
               flush_interval_s: float = 0.2, fsync: bool = True,
               core_hook: Callable[[SessionCore], None] | None = None) -> SimSessionResult:
    """Any wire frames through a session core with a recorder, as the session process runs.

    ``events`` are ``(bin, control)`` applied before ``bin`` (between frames, as the live
    session applies an operator's control). ``core_hook(core)`` runs between frames too
    (tests use it to swap models). Calibration is fitted as soon as it is ready.
    """
    rec = Recorder(recording, flush_interval_s, fsync) if recording else None
    if rec:
        rec.config(config.model_dump(mode="json"), "sim")
    res = SimSessionResult()
    sink = _SimSink(rec, res)
    core = SessionCore(config, sink)
    core.begin()
    todo = sorted(events or [], key=lambda e: e[0])
    t0 = time.perf_counter()
    for f in frames:
        while todo and todo[0][0] <= core.next_index:
            c = todo.pop(0)[1]
            core.control(c if isinstance(c, Control) else Control.from_record(c))
        if core_hook is not None:
            core_hook(core)
        core.accept(f, time.time_ns())
        if sink.fit is not None:
            core.install(fit_calibration(config, *sink.fit))
            sink.fit = None
    res.wall_seconds = time.perf_counter() - t0
    res.core = core
    core.stop()
    if rec:
        res.recorder = rec.close()
    return res
