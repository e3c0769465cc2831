"""Session log -> NWB 2 file, so any lab's tools can read a closed-loop session.

Layout (times in seconds on the source clock, which starts the file):

* ``units``: spike times per input channel, built from flat arrays
  (``spike_times`` + ``spike_times_index``) in one go -- adding units one by
  one is two orders of magnitude slower for long sessions.
* ``acquisition/input_counts``: pre-binned input frames, if the source sent counts.
* ``processing/behavior/ground_truth``: behaviour frames (the truth used for adaptation).
* ``processing/behavior/decoded``: the decoded vector of every bin.
* ``intervals/stimulation``: one row per bin with the guard's status, reasons,
  every command and request parameter; ``intervals/session_events``: controls.
* metadata: session config, decoder metadata and software versions
  (``notes``, ``was_generated_by``, ``stimulus_notes``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.recording.recorder import RecordType, read_log
from service.session.config import recorded_config, recorded_session_id
from service.wire.protocol import KIND_BEHAVIOR, KIND_COUNTS, KIND_EVENTS, ProtocolError, decode

Progress = Callable[[int, int], None]  # (bytes done, bytes total)

#: used when the caller names no subject: NWB's "U" for unknown sex, and for the age
#: the open interval "P0D/" (no more than "at least zero days old" is known).
UNKNOWN_SUBJECT = {"subject_id": "unknown", "sex": "U", "age": "P0D/",
                   "description": "subject not given to spikeloop at export"}


class _Collected:
    """Everything the export needs, gathered in one pass over the log."""

    def __init__(self) -> None:
        self.cfg: dict[str, Any] = {}
        self.software: dict[str, str] = {}
        self.wall_ns = 0
        self.models: list[dict[str, Any]] = []
        self.ids: list[np.ndarray] = []
        self.times: list[np.ndarray] = []
        self.count_t: list[int] = []
        self.count_rows: list[np.ndarray] = []
        self.truth_t: list[int] = []
        self.truth_rows: list[np.ndarray] = []
        self.truth_names: list[str] | None = None
        self.bin_index: list[int] = []
        self.bin_start: list[int] = []
        self.decoded: list[np.ndarray | None] = []
        self.outcomes: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.clean = False
        self.discarded_bytes = 0

    def add_input(self, frames: list[bytes]) -> None:
        try:
            msg = decode(frames)
        except ProtocolError:
            return
        h = msg.header
        if h.kind == KIND_EVENTS:
            self.ids.append(np.array(msg.ids, np.int64))
            self.times.append(np.array(msg.times, np.int64))
        elif h.kind == KIND_COUNTS:
            self.count_t.append(h.t_ns)
            self.count_rows.append(np.array(msg.values, np.float64))
        elif h.kind == KIND_BEHAVIOR:
            self.truth_t.append(h.t_ns)
            self.truth_rows.append(np.array(msg.values, np.float64))
            if self.truth_names is None and h.extra.get("names"):
                self.truth_names = [str(n) for n in h.extra["names"]]


def _collect(log_path: Path, progress: Progress | None) -> _Collected:
    c = _Collected()
    total = log_path.stat().st_size
    reader = read_log(log_path, {RecordType.CONFIG, RecordType.MODEL, RecordType.INPUT,
                                 RecordType.BIN, RecordType.EVENT})
    nxt = 0
    for rec in reader:
        v = rec.value
        if rec.type == RecordType.INPUT:
            c.add_input(v.frames)
        elif rec.type == RecordType.BIN:
            c.bin_index.append(v.index)
            c.bin_start.append(v.start_ns)
            c.decoded.append(v.decoded)
            c.outcomes.append(v.outcome)
        elif rec.type == RecordType.EVENT:
            c.events.append(v)
        elif rec.type == RecordType.MODEL:
            c.models.append(v[0])
        elif rec.type == RecordType.CONFIG:
            c.cfg = v  # the whole CONFIG record: config, session id, software
            c.software = v.get("software", {})
            c.wall_ns = int(v.get("wall_time_ns", 0))
        if progress is not None and rec.offset >= nxt:
            progress(rec.offset, total)
            nxt = rec.offset + total // 100
    c.clean, c.discarded_bytes = reader.clean, reader.discarded_bytes
    return c


# --------------------------------------------------------------------------- tables


def _units(c: _Collected, channels: int):
    from hdmf.common import VectorData, VectorIndex
    from pynwb.misc import Units

    ids = np.concatenate(c.ids) if c.ids else np.zeros(0, np.int64)
    times = np.concatenate(c.times) if c.times else np.zeros(0, np.int64)
    order = np.lexsort((times, ids))
    flat = times[order] / 1e9
    ends = np.cumsum(np.bincount(ids, minlength=channels))
    spike_times = VectorData(name="spike_times", data=flat,
                             description="spike times (s, source clock) as received")
    index = VectorIndex(name="spike_times_index", data=ends, target=spike_times)
    # Wire timestamps are integer nanoseconds: the finest difference the file can hold.
    return Units(name="units", id=list(range(channels)), columns=[spike_times, index],
                 resolution=1e-9,
                 description="input channels of the session; unit i = channel i on the wire")


def _series(name: str, t_ns: list[int] | np.ndarray, data: np.ndarray, description: str,
            comments: str):
    """A TimeSeries with ``rate`` when samples are regular (NWB best practice), else timestamps."""
    from pynwb import TimeSeries

    t = np.asarray(t_ns, np.int64)
    common = {"name": name, "data": data, "unit": "n.a.", "description": description,
              "comments": comments}
    steps = np.diff(t)
    if len(t) > 1 and steps[0] > 0 and np.all(steps == steps[0]):
        return TimeSeries(starting_time=t[0] / 1e9, rate=1e9 / float(steps[0]), **common)
    return TimeSeries(timestamps=t / 1e9, **common)


def _flatten(prefix: str, rows: list[dict[str, Any] | None]) -> dict[str, np.ndarray]:
    """Columns ``prefix_field`` from command dicts: numbers as float (NaN = none), rest as JSON."""
    keys: list[str] = []
    for r in rows:
        for k in r or ():
            if k not in keys:
                keys.append(k)
    cols: dict[str, np.ndarray] = {}
    for k in keys:
        vals = [None if r is None else r.get(k) for r in rows]
        present = [v for v in vals if v is not None]
        if present and all(isinstance(v, int | float) for v in present):
            cols[f"{prefix}_{k}"] = np.array([np.nan if v is None else float(v) for v in vals])
        else:
            cols[f"{prefix}_{k}"] = np.array(
                ["" if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in vals],
                dtype=object)
    return cols


def _stimulation(c: _Collected, bin_ns: int):
    from hdmf.common import VectorData
    from pynwb.epoch import TimeIntervals

    start = (np.asarray(c.bin_start, np.int64) + bin_ns) / 1e9  # decided at the bin's end
    stop = start + bin_ns / 1e9
    cols: dict[str, tuple[np.ndarray, str]] = {
        "start_time": (start, "time the outcome took effect (end of its bin, s)"),
        "stop_time": (stop, "end of the following bin (s)"),
        "bin": (np.asarray(c.bin_index, np.int64), "bin index"),
        "status": (np.array([o.get("status", "") for o in c.outcomes], dtype=object),
                   "guard outcome: sent, clamped, refused, safe, ..."),
        "reasons": (np.array(["; ".join(o.get("reasons") or []) for o in c.outcomes],
                             dtype=object), "why the request was clamped/refused/made safe"),
    }
    for prefix, key, what in (("command", "command", "sent to the stimulator"),
                              ("request", "request", "asked for by the policy")):
        for name, arr in _flatten(prefix, [o.get(key) for o in c.outcomes]).items():
            cols[name] = (arr, f"{name[len(prefix) + 1:]} {what} (NaN/empty: none)")
    columns = [VectorData(name=k, data=v, description=d) for k, (v, d) in cols.items()]
    return TimeIntervals(name="stimulation", id=list(range(len(start))), columns=columns,
                         description="stimulation outcome of every bin after the safety guard")


def _session_events(c: _Collected, origin_ns: int, bin_ns: int):
    from pynwb.epoch import TimeIntervals

    table = TimeIntervals(name="session_events",
                          description="controls (arm, disarm, limits, ...) and state changes")
    table.add_column("label", "op or state")
    table.add_column("bin", "bin before which it took effect (-1: unknown)")
    table.add_column("reason", "reason or error given with the event")
    table.add_column("params", "other fields, as key=value pairs")
    rows = []
    for ev in c.events:
        k = ev.get("bin")
        t = max((origin_ns + int(k) * bin_ns) / 1e9 if k is not None else origin_ns / 1e9, 0.0)
        rest = {key: v for key, v in ev.items()
                if key not in ("op", "state", "lifecycle", "bin", "reason", "error")}
        params = ", ".join(f"{key}={_flat_text(v)}" for key, v in rest.items())
        label = ev.get("op") or ev.get("state") or ev.get("lifecycle") or ""
        rows.append((t, str(label), -1 if k is None else int(k),
                     str(ev.get("reason") or ev.get("error") or ""), params))
    for t, label, k, reason, params in sorted(rows, key=lambda r: r[0]):
        table.add_row(start_time=t, stop_time=t + bin_ns / 1e9, label=label, bin=k,
                      reason=reason, params=params)
    return table


def _flat_text(v: Any) -> str:
    if isinstance(v, dict):
        return "; ".join(f"{k}:{x}" for k, x in v.items())
    return str(v)


# --------------------------------------------------------------------------- export


def export_nwb(log_path: str | Path, nwb_path: str | Path, progress: Progress | None = None,
               subject: dict[str, Any] | None = None) -> Path:
    """Write the session in ``log_path`` as an NWB file at ``nwb_path``; returns the path.

    ``subject`` holds pynwb ``Subject`` fields (subject_id, species, sex, age...);
    without it the subject is recorded as unknown (:data:`UNKNOWN_SUBJECT`).
    """
    from pynwb import NWBHDF5IO, NWBFile, ProcessingModule
    from pynwb.file import Subject

    log_path, nwb_path = Path(log_path), Path(nwb_path)
    c = _collect(log_path, progress)
    cfg = recorded_config(c.cfg) if c.cfg else None
    if cfg is None:
        raise ValueError(f"{log_path}: no config record, cannot export")
    bin_ns = cfg.bin_ns
    start = datetime.fromtimestamp(c.wall_ns / 1e9, tz=UTC) if c.wall_ns else datetime.now(UTC)
    software = [("spikeloop", c.software.get("spikeloop", "unknown"))] + [
        (k, v) for k, v in c.software.items() if k in ("python", "numpy", "torch")]
    notes = {"config": cfg.model_dump(mode="json"), "recorded": c.cfg, "software": c.software,
             "decoders": c.models, "log": {"path": log_path.name, "clean": c.clean,
                                            "discarded_bytes": c.discarded_bytes}}
    nwb = NWBFile(
        session_description=f"spikeloop closed-loop session {cfg.name!r}",
        identifier=str(uuid.uuid4()),
        session_start_time=start,
        session_id=recorded_session_id(c.cfg) or cfg.name,
        experiment_description=(f"Closed-loop BCI session: {cfg.decoder.type} decoder, "
                                f"{cfg.stim.modality} stimulation, {cfg.bin_ms:g} ms bins"),
        keywords=["brain-computer interface", "closed loop", cfg.stim.modality],
        notes=json.dumps(notes, default=str),
        stimulus_notes=json.dumps(cfg.stim.model_dump(mode="json")),
        data_collection=("Times are seconds on the source clock (frame timestamps); "
                         "session_start_time is the wall clock when recording began."),
        was_generated_by=software,
        subject=Subject(**(subject or UNKNOWN_SUBJECT)),
    )
    nwb.units = _units(c, cfg.source.channels)
    if c.count_rows:
        nwb.add_acquisition(_series(
            "input_counts", c.count_t, np.stack(c.count_rows),
            "pre-binned spike counts as received (rows: frames, columns: channels)",
            "counts per input frame"))
    beh = ProcessingModule(name="behavior", description="behaviour received and decoded")
    if c.truth_rows:
        beh.add(_series("ground_truth", c.truth_t, np.stack(c.truth_rows),
                        "behaviour frames (calibration and adaptation targets)",
                        "columns: " + ", ".join(c.truth_names or [])))
    dec_rows = [(s, d) for s, d in zip(c.bin_start, c.decoded, strict=True) if d is not None]
    if dec_rows:
        names = c.models[-1].get("output_names", []) if c.models else []
        beh.add(_series("decoded", [s + bin_ns for s, _ in dec_rows],
                        np.stack([d for _, d in dec_rows]).astype(np.float64),
                        "online decoder output at the end of each bin",
                        "columns: " + ", ".join(names)))
    if beh.data_interfaces:
        nwb.add_processing_module(beh)
    if c.outcomes:
        nwb.add_time_intervals(_stimulation(c, bin_ns))
    if c.events:
        origin = c.bin_start[0] - c.bin_index[0] * bin_ns if c.bin_start else 0
        nwb.add_time_intervals(_session_events(c, origin, bin_ns))
    nwb_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = nwb_path.with_name(nwb_path.stem + ".partial.nwb")
    with NWBHDF5IO(str(tmp), "w") as io:
        io.write(nwb)
    tmp.replace(nwb_path)
    if progress is not None:
        progress(1, 1)
    return nwb_path


def inspect_nwb(nwb_path: str | Path) -> list[dict[str, str]]:
    """nwbinspector findings as plain dicts (importance, check, message, location)."""
    from nwbinspector import inspect_nwbfile

    return [{"importance": m.importance.name, "check": m.check_function_name,
             "message": m.message, "location": str(m.location)}
            for m in inspect_nwbfile(nwbfile_path=str(nwb_path))]
