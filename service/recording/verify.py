"""Re-run a recorded session offline and prove it makes the same decisions.

The recorded input frames are fed, in log order, through the same session core
the live session ran (:mod:`service.loop.core`), built from the recorded config;
recorded controls and model installs are applied before the bin they name. Every
replayed bin is then compared bit for bit with the recorded one (decoded vector
bytes and the msgpack encoding of the guard outcome), and the first divergence is
reported.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.loop.core import BinResult, Control, CoreSink, SessionCore
from service.loop.outcome import outcome_record
from service.recording.recorder import BinRecord, RecordType, pack, read_log
from service.session.config import recorded_config

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
Scheduled = Control | tuple[dict[str, Any], dict[str, np.ndarray]]


def recorded_controls(log_path: str | Path) -> tuple[dict[int, list[Scheduled]], list[str]]:
    """Controls and model installs by the bin before which they took effect, in log order.

    Every control is recorded with ``bin``: the boundary where the session core applied
    it. Returns the schedule and notes on records that could not be read.
    """
    out: dict[int, list[Scheduled]] = {}
    notes: list[str] = []
    for rec in read_log(log_path, {RecordType.EVENT, RecordType.MODEL}, check_skipped=False):
        if rec.type == RecordType.MODEL:
            meta, state = rec.value
            out.setdefault(int(meta.get("bin") or 0), []).append((meta, state))
        elif "op" in rec.value and rec.value.get("bin") is not None:
            try:
                c = Control.from_record(rec.value)
            except (ValueError, KeyError) as exc:
                notes.append(f"unreadable control record {rec.value!r}: {exc}")
                continue
            out.setdefault(int(rec.value["bin"]), []).append(c)
    return out, notes


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
    rejected_inputs: int = 0  # recorded as accepted but refused by the core now
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


class _Replayer(CoreSink):
    """The session core's bins, queued until their recorded twin is read."""

    def __init__(self, report: VerifyReport):
        self.report = report
        self.replayed: deque[tuple[int, np.ndarray | None, bytes, dict[str, Any]]] = deque()

    def model(self, meta: dict[str, Any], state: dict[str, np.ndarray]) -> None:
        self.report.models += 1

    def bin(self, r: BinResult, recv_ns: int, in_seq: int) -> None:
        assert r.outcome is not None
        dec = None if r.decoded is None else np.array(r.decoded, copy=True)
        od = outcome_record(r.outcome)
        self.replayed.append((r.index, dec, pack(od), od))

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
    """Replay ``log_path`` through a session core and diff every bin against the recording."""
    path = Path(log_path)
    total = path.stat().st_size
    report = VerifyReport()
    rp = _Replayer(report)
    schedule, report.notes = recorded_controls(path)
    models = sum(1 for items in schedule.values() for i in items if not isinstance(i, Control))
    reader = read_log(path, {RecordType.CONFIG, RecordType.INPUT, RecordType.REJECTED,
                             RecordType.BIN, RecordType.EVENT})
    core: SessionCore | None = None
    t0 = time.perf_counter()
    first_bin: int | None = None
    last_bin = 0
    next_progress = 0
    for rec in reader:
        t = rec.type
        if t == RecordType.INPUT:
            report.inputs += 1
            if core is None:
                raise ValueError(f"{path}: input record before the config record")
            refused = sum(core.rejected.values())
            core.accept(rec.value.frames, rec.value.recv_ns)
            report.rejected_inputs += sum(core.rejected.values()) - refused
        elif t == RecordType.REJECTED and core is not None and \
                rec.value.reason != "internal_error":
            # Refused frames count too: a run of refused frames can itself be an event
            # (a source clock reset without a new epoch), and the core must see the same run.
            core.accept(rec.value.frames, rec.value.recv_ns)
        elif t == RecordType.BIN:
            rp.compare(rec.value)
            first_bin = rec.value.start_ns if first_bin is None else first_bin
            last_bin = rec.value.start_ns
        elif t == RecordType.EVENT:
            report.events += 1
        elif t == RecordType.CONFIG and core is None:
            core = SessionCore(recorded_config(rec.value), rp)
            core.schedule = schedule
            core.begin()
        if progress is not None and rec.offset >= next_progress:
            progress(rec.offset, total)
            next_progress = rec.offset + total // 200
    report.wall_seconds = time.perf_counter() - t0
    if rp.replayed:
        report.notes.append(f"{len(rp.replayed)} replayed bin(s) after the last recorded bin "
                            "(session stopped or log torn before they were written)")
    if core is not None and report.models < models:
        report.notes.append(f"{models - report.models} recorded model install(s) after the "
                            "last bin were not needed")
    if first_bin is not None and core is not None:
        report.source_seconds = (last_bin - first_bin + core.bin_ns) / 1e9
    report.log_clean = reader.clean
    report.discarded_bytes = reader.discarded_bytes
    if core is None:
        report.notes.append("no config record: nothing to verify")
    report.identical = (core is not None and report.bins_compared > 0
                        and report.divergent_bins == 0)
    if progress is not None:
        progress(total, total)
    return report
