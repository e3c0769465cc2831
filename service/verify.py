"""Re-run a recorded session offline and prove it makes the same decisions.

The recorded input frames are fed, in log order, through a pipeline built from
the recorded config with the recorded decoder, and recorded control events are
re-applied before the bin they name. Every replayed bin is then compared bit
for bit with the recorded one (decoded vector bytes and the msgpack encoding
of the guard outcome), and the first divergence is reported.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from decoders.base import Decoder

from .config import SessionConfig
from .pipeline import BinResult, LoopPipeline, build_pipeline
from .protocol import KIND_COUNTS, KIND_EVENTS, ProtocolError, decode
from .recorder import BinRecord, RecordType, outcome_dict, pack, read_log

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
#: frames whose watermark completes bins; the session process calls ready() only for these
SPIKE_KINDS = (KIND_EVENTS, KIND_COUNTS)


def rebuild_decoder(meta: dict[str, Any], state: dict[str, np.ndarray]) -> Decoder:
    """A decoder from its metadata and state arrays (the registry's ``Decoder.load`` path).

    Live sessions should install the decoder this returns (not the freshly
    fitted object) so that the live and replayed decoders are built the same way.
    """
    cls = Decoder._registry.get(meta.get("type", ""))
    if cls is None:
        raise ValueError(f"unknown decoder type {meta.get('type')!r}; "
                         f"known: {sorted(Decoder._registry)}")
    dec = cls.__new__(cls)
    dec.load_state_dict(state, meta)
    return dec


def session_config(cfg: dict[str, Any]) -> SessionConfig:
    """The recorded config as a SessionConfig.

    Accepts the config itself or a wrapper holding it under ``"config"`` (the
    session process adds its id and versions); unknown keys are dropped.
    """
    while "bin_ms" not in cfg and isinstance(cfg.get("config"), dict):
        cfg = cfg["config"]
    return SessionConfig(**{k: v for k, v in cfg.items() if k in SessionConfig.model_fields})


def recorded_controls(log_path: str | Path) -> dict[int, list[tuple[str, Any]]]:
    """Controls and model installs by the bin before which they took effect, in log order.

    The session records a control either when it applies it (disarm, safe) or
    with the bin that applied it (arm, limits, adapt), so verify looks ahead
    instead of relying on where the record sits in the log.
    """
    out: dict[int, list[tuple[str, Any]]] = {}
    for rec in read_log(log_path, {RecordType.EVENT, RecordType.MODEL}, check_skipped=False):
        if rec.type == RecordType.MODEL:
            k = rec.value[0].get("bin")
            if k is not None:
                out.setdefault(int(k), []).append(("model", rec.value))
        elif "op" in rec.value and rec.value.get("bin") is not None:
            out.setdefault(int(rec.value["bin"]), []).append(("event", rec.value))
    return out


@dataclass
class Divergence:
    bin: int
    field: str  # "decoded", "outcome", "missing" (recorded, not replayed) or "extra"
    recorded: Any
    replayed: Any


@dataclass
class VerifyReport:
    identical: bool = False
    bins_compared: int = 0
    divergent_bins: int = 0
    first_divergence: Divergence | None = None
    inputs: int = 0
    rejected_inputs: int = 0  # recorded as accepted but refused by the decoder now
    events: int = 0
    models: int = 0
    source_seconds: float = 0.0
    wall_seconds: float = 0.0
    log_clean: bool = False
    discarded_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.source_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"speedup": self.speedup}


def _jsonable(x: Any) -> Any:
    return x.tolist() if isinstance(x, np.ndarray) else x


class _Replayer:
    """Holds the replayed pipeline and the queue of bins awaiting their recorded twin."""

    def __init__(self, report: VerifyReport):
        self.report = report
        self.pipeline: LoopPipeline | None = None
        self.controls: dict[int, list[tuple[str, Any]]] = {}  # by the bin they precede
        self.replayed: deque[tuple[int, np.ndarray | None, bytes, dict[str, Any]]] = deque()
        self.bin_ns = 0

    # ----------------------------------------------------------------- events
    def _apply_due(self, k: int) -> None:
        """Apply what was recorded for bin ``k``, right before it is processed."""
        for what, value in self.controls.pop(k, ()):
            if what == "model":
                self.install(*value)
                continue
            op = value["op"]
            t_ns = int(value.get("t_ns", 0))
            if op == "disarm":
                self.pipeline.guard.disarm(t_ns)
            elif op == "safe":
                self.pipeline.guard.safe_state(t_ns, str(value.get("reason", "safe state")))
            else:
                self.pipeline.control(value)

    def install(self, meta: dict[str, Any], state: dict[str, np.ndarray]) -> None:
        self.pipeline.decoder = rebuild_decoder(meta, state)
        self.report.models += 1

    # ----------------------------------------------------------------- frames
    def feed(self, frames: list[bytes]) -> None:
        try:
            msg = decode(frames)
        except ProtocolError:
            self.report.rejected_inputs += 1
            return
        p = self.pipeline
        if self.controls:
            self._apply_due(p.binner.next_index)
        p.add(msg)
        if msg.header.kind not in SPIKE_KINDS:
            return  # behaviour is truth for the next bins; it completes none (as live)
        for r in p.ready(LoopPipeline.watermark(msg)):
            self._keep(r)
            if self.controls:
                self._apply_due(r.index + 1)

    def _keep(self, r: BinResult) -> None:
        dec = None if r.decoded is None else np.array(r.decoded, copy=True)
        od = outcome_dict(r.outcome)
        self.replayed.append((r.index, dec, pack(od), od))

    # ----------------------------------------------------------------- compare
    def compare(self, rec: BinRecord) -> None:
        rep = self.report
        if not self.replayed:
            self._diverge(Divergence(rec.index, "missing", _bin_view(rec.decoded, rec.outcome),
                                     None))
            return
        index, dec, packed, od = self.replayed.popleft()
        rep.bins_compared += 1
        if index != rec.index:
            self._diverge(Divergence(rec.index, "index", rec.index, index))
        elif not _same_array(rec.decoded, dec):
            self._diverge(Divergence(rec.index, "decoded", _jsonable(rec.decoded),
                                     _jsonable(dec)))
        elif pack(rec.outcome) != packed:
            self._diverge(Divergence(rec.index, "outcome", rec.outcome, od))

    def _diverge(self, d: Divergence) -> None:
        self.report.divergent_bins += 1
        if self.report.first_divergence is None:
            self.report.first_divergence = d


def _same_array(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _bin_view(decoded: np.ndarray | None, outcome: dict[str, Any]) -> dict[str, Any]:
    return {"decoded": _jsonable(decoded), "outcome": outcome}


def verify(log_path: str | Path, progress: Progress | None = None) -> VerifyReport:
    """Replay ``log_path`` offline and diff every bin against the recording."""
    path = Path(log_path)
    total = path.stat().st_size
    report = VerifyReport()
    rp = _Replayer(report)
    rp.controls = recorded_controls(path)
    reader = read_log(path, {RecordType.CONFIG, RecordType.MODEL, RecordType.INPUT,
                             RecordType.BIN, RecordType.EVENT})
    t0 = time.perf_counter()
    first_bin: int | None = None
    last_bin = 0
    next_progress = 0
    for rec in reader:
        t = rec.type
        if t == RecordType.INPUT:
            report.inputs += 1
            if rp.pipeline is None:
                raise ValueError(f"{path}: input record before the config record")
            rp.feed(rec.value.frames)
        elif t == RecordType.BIN:
            rp.compare(rec.value)
            first_bin = rec.value.start_ns if first_bin is None else first_bin
            last_bin = rec.value.start_ns
        elif t == RecordType.EVENT:
            report.events += 1
        elif t == RecordType.MODEL:
            if rp.pipeline is None:
                raise ValueError(f"{path}: model record before the config record")
            if rec.value[0].get("bin") is None:  # no bin recorded: installed here
                rp.install(*rec.value)
        elif t == RecordType.CONFIG:
            cfg = session_config(rec.value["config"])
            rp.pipeline = build_pipeline(cfg, None)
            rp.bin_ns = cfg.bin_ns
        if progress is not None and rec.offset >= next_progress:
            progress(rec.offset, total)
            next_progress = rec.offset + total // 200
    report.wall_seconds = time.perf_counter() - t0
    if rp.replayed:
        report.notes.append(f"{len(rp.replayed)} replayed bin(s) after the last recorded bin "
                            "(session stopped or log torn before they were written)")
    if first_bin is not None:
        report.source_seconds = (last_bin - first_bin + rp.bin_ns) / 1e9
    report.log_clean = reader.clean
    report.discarded_bytes = reader.discarded_bytes
    if rp.pipeline is None:
        report.notes.append("no config record: nothing to verify")
    report.identical = (rp.pipeline is not None and report.bins_compared > 0
                        and report.divergent_bins == 0)
    if progress is not None:
        progress(total, total)
    return report
