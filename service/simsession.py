"""A live-like session without sockets: simulated source -> frames -> pipeline -> recorder.

It does what the session process does with every frame (encode on the wire
protocol, record it, decode, bin, decode, stimulate, record the bin), collects
a calibration block, fits the configured decoder and installs it, and applies
control events between frames. Tests and ``bench/replay.py`` use it to produce
recordings whose replay must be identical.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from decoders.base import build_decoder
from sources.base import SimSource

from .config import SessionConfig
from .pipeline import LoopPipeline, build_pipeline
from .protocol import KIND_BEHAVIOR, decode, encode_array, encode_events
from .recorder import Recorder
from .verify import SPIKE_KINDS


@dataclass
class SimSessionResult:
    bins: int = 0
    decoded: list[np.ndarray | None] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    commands: list[dict[str, Any] | None] = field(default_factory=list)
    source_seconds: float = 0.0
    wall_seconds: float = 0.0
    recorder: dict[str, Any] = field(default_factory=dict)


def sim_frames(sim: SimSource, seconds: float, frame_ms: float, stream: str = "sim"):
    """Wire frames of a simulated source: behaviour then spikes, every ``frame_ms``."""
    frame_ns = int(round(frame_ms * 1e6))
    for seq in range(int(round(seconds * 1e9 / frame_ns))):
        step = sim.advance(frame_ns)
        yield encode_array(b"behavior", KIND_BEHAVIOR, f"{stream}.behavior", seq, step.t_ns,
                           step.truth)
        yield encode_events(b"spikes", stream, seq, step.t_ns, sim.channels, step.ids,
                            step.times)


def run_sim_session(config: SessionConfig, sim: SimSource, seconds: float,
                    recording: str | Path | None = None, frame_ms: float = 5.0,
                    events: list[tuple[int, dict[str, Any]]] | None = None,
                    flush_interval_s: float = 0.2, fsync: bool = True) -> SimSessionResult:
    """Run ``seconds`` of source time; ``events`` are ``(bin, control)`` applied before ``bin``.

    Controls with op ``disarm``/``safe`` go straight to the guard (as the live
    loop does for safety), the others through ``pipeline.control``.
    """
    pipeline = build_pipeline(config, None)
    rec = Recorder(recording, flush_interval_s, fsync) if recording else None
    if rec:
        rec.config(config.model_dump(mode="json"))
        rec.event({"state": "running"})
    todo = sorted(events or [], key=lambda e: e[0])
    calib_counts: list[np.ndarray] = []
    calib_truth: list[np.ndarray] = []
    calib_bins = int(round(config.decoder.calibration_s * 1000 / config.bin_ms))
    res = SimSessionResult()
    t0 = time.perf_counter()
    for frames in sim_frames(sim, seconds, frame_ms):
        while todo and todo[0][0] <= pipeline.binner.next_index:
            _, ev = todo.pop(0)
            _apply(pipeline, ev, rec)
        if rec:
            rec.input(frames, time.time_ns())
        msg = decode(frames)
        pipeline.add(msg)
        if msg.header.kind not in SPIKE_KINDS:
            continue
        for r in pipeline.ready(LoopPipeline.watermark(msg)):
            if rec:
                rec.bin(r.index, r.start_ns, r.decoded, r.outcome)
                for ev in r.controls:  # queued controls: recorded with the bin that applied them
                    rec.event(ev | {"bin": r.index})
            res.bins += 1
            res.decoded.append(None if r.decoded is None else r.decoded.copy())
            res.statuses.append(r.outcome.status)
            cmd = r.outcome.command
            res.commands.append(None if cmd is None else dict(amplitude_ma=getattr(
                cmd, "amplitude_ma", None), power_mw=getattr(cmd, "power_mw", None)))
            if pipeline.decoder is None and r.truth is not None:
                calib_counts.append(r.counts.copy())
                calib_truth.append(r.truth.copy())
                if len(calib_counts) >= calib_bins:
                    pipeline.decoder = _calibrate(config, sim, calib_counts, calib_truth, rec,
                                                  r.index + 1)
    res.wall_seconds = time.perf_counter() - t0
    res.source_seconds = seconds
    if rec:
        rec.event({"state": "stopped"})
        res.recorder = rec.close()
    return res


def _apply(pipeline: LoopPipeline, ev: dict[str, Any], rec: Recorder | None) -> None:
    """As the session process does: disarm/safe at once (recorded now, for the next
    bin), other controls queued for the next bin (recorded with that bin)."""
    k = pipeline.binner.next_index
    if ev["op"] in ("disarm", "safe"):
        if ev["op"] == "disarm":
            pipeline.guard.disarm(0)
        else:
            pipeline.guard.safe_state(0, str(ev.get("reason", "safe state")))
        if rec:
            rec.event(ev | {"bin": k})
        return
    pipeline.control(ev)
    if ev["op"] == "arm":
        pipeline.guard.arm()


def _calibrate(config: SessionConfig, sim: SimSource, counts: list[np.ndarray],
               truth: list[np.ndarray], rec: Recorder | None, next_bin: int):
    """Fit on the calibration block and install the fitted object itself, as the
    session process does; verify rebuilds it from the recorded state."""
    fitted = build_decoder(config.decoder.type, **config.decoder.params).fit(
        np.stack(counts), np.stack(truth), bin_ms=config.bin_ms,
        output_names=list(sim.truth_names))
    if rec:
        rec.model(fitted.metadata() | {"bin": next_bin}, fitted.state_dict())
    return fitted
