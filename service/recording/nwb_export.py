"""Session log -> NWB 2 file, so any lab's tools (and DANDI) can read a closed-loop session.

Time: every time in the file is in seconds from the start of the session's first
bin. ``session_start_time`` and ``timestamps_reference_time`` are the wall clock
when the recording began; the source-clock time (ns) of t = 0 is in ``notes``
(``time_origin_source_ns``). The source's own clock restarts when the source does;
the export maps each frame onto the session clock exactly as the session core did
(the frames are run through a core built from the recorded config), so a source
restart is a new ``segment`` in ``intervals/session_events`` and times never go
backwards.

Layout:

* ``units``: spike times per input channel, each unit linked to its electrode,
  built from flat arrays (``spike_times`` + ``spike_times_index``) in one go --
  adding units one by one is two orders of magnitude slower for long sessions.
* ``electrodes``, one electrode group per probe-map group and the device, from
  the session's ``metadata`` (one electrode per input channel).
* ``acquisition/input_counts``: pre-binned input frames, if the source sent counts.
* ``processing/behavior/ground_truth``: behaviour frames (the truth used for adaptation).
* ``processing/behavior/decoded``: the decoded vector of every bin, columns named
  (with units when ``metadata.output_units`` gives them).
* ``intervals/stimulation``: one row per bin with the guard's status, reasons,
  every command and request parameter; ``intervals/session_events``: controls
  and source segments.
* subject, experimenter, institution, lab, session description: from the
  session's ``metadata`` (a replayed NWB file's own, carried on); session config,
  decoder metadata and software versions in ``notes``, ``was_generated_by``,
  ``stimulus_notes``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.loop.core import SessionCore
from service.recording.recorder import RecordType, read_log
from service.session.config import (
    ElectrodeSite,
    SessionConfig,
    recorded_config,
    recorded_session_id,
)
from service.wire.protocol import KIND_BEHAVIOR, KIND_COUNTS, KIND_EVENTS, decode

Progress = Callable[[int, int], None]  # (bytes done, bytes total)

#: used when the caller names no subject: NWB's "U" for unknown sex, and for the age
#: the open interval "P0D/" (no more than "at least zero days old" is known).
UNKNOWN_SUBJECT = {"subject_id": "unknown", "sex": "U", "age": "P0D/",
                   "description": "subject not given to spikeloop at export"}


class _Collected:
    """Everything the export needs, gathered in one pass over the log.

    Times are on the session clock (ns), as the session core saw them.
    """

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
        self.core: SessionCore | None = None
        self.origin_ns: int | None = None  # session clock at the start of bin 0
        self._pending: list[tuple[int, int, np.ndarray]] = []  # behaviour awaiting a spike frame

    def add_input(self, frames: list[bytes], recv_ns: int, accepted: bool) -> None:
        """Run a frame through the core (as the session did); keep it if it was accepted.

        A behaviour frame is placed on the session clock with the next spike frame: the
        first behaviour frame of a restarted source comes before the spike frame that
        tells the core about the restart, and belongs to the new segment when its epoch
        is the new one.
        """
        assert self.core is not None
        before = sum(self.core.rejected.values())
        off_before = self.core.source_offset_ns()
        self.core.accept(frames, recv_ns)
        if not accepted or sum(self.core.rejected.values()) != before:
            return
        msg = decode(frames)
        h = msg.header
        if h.kind == KIND_BEHAVIOR:
            if self.truth_names is None and h.extra.get("names"):
                self.truth_names = [str(n) for n in h.extra["names"]]
            # an empty frame marks "no behaviour": a gap, not a sample
            if msg.values is not None and msg.values.size:
                self._pending.append((h.t_ns, h.epoch, np.array(msg.values, np.float64)))
            return
        off = self.core.source_offset_ns()
        self.flush_behavior(off, h.epoch, off_before)
        if h.kind == KIND_EVENTS:
            self.ids.append(np.array(msg.ids, np.int64))
            self.times.append(np.array(msg.times, np.int64) + off)
        elif h.kind == KIND_COUNTS:
            self.count_t.append(h.t_ns + off)
            self.count_rows.append(np.array(msg.values, np.float64))

    def flush_behavior(self, off: int, epoch: int | None = None, off_old: int = 0) -> None:
        for t, ep, values in self._pending:
            self.truth_t.append(t + (off if epoch is None or ep == epoch else off_old))
            self.truth_rows.append(values)
        self._pending.clear()

    def rel(self, t_ns: Any) -> Any:
        """Session-clock ns -> seconds in the file (from the start of bin 0)."""
        return (np.asarray(t_ns, np.int64) - (self.origin_ns or 0)) / 1e9


def _collect(log_path: Path, progress: Progress | None) -> _Collected:
    c = _Collected()
    total = log_path.stat().st_size
    reader = read_log(log_path, {RecordType.CONFIG, RecordType.MODEL, RecordType.INPUT,
                                 RecordType.REJECTED, RecordType.BIN, RecordType.EVENT})
    nxt = 0
    for rec in reader:
        v = rec.value
        if rec.type in (RecordType.INPUT, RecordType.REJECTED):
            if c.core is None:
                raise ValueError(f"{log_path}: input record before the config record")
            if rec.type == RecordType.INPUT or v.reason != "internal_error":
                c.add_input(v.frames, v.recv_ns, rec.type == RecordType.INPUT)
        elif rec.type == RecordType.BIN:
            c.bin_index.append(v.index)
            c.bin_start.append(v.start_ns)
            c.decoded.append(v.decoded)
            c.outcomes.append(v.outcome)
            if c.origin_ns is None:
                c.origin_ns = v.start_ns - v.index * recorded_config(c.cfg).bin_ns
        elif rec.type == RecordType.EVENT:
            c.events.append(v)
        elif rec.type == RecordType.MODEL:
            c.models.append(v[0])
        elif rec.type == RecordType.CONFIG and c.core is None:
            c.cfg = v  # the whole CONFIG record: config, session id, software
            c.software = v.get("software", {})
            c.wall_ns = int(v.get("wall_time_ns", 0))
            c.core = SessionCore(recorded_config(v))
        if progress is not None and rec.offset >= nxt:
            progress(rec.offset, total)
            nxt = rec.offset + total // 100
    c.clean, c.discarded_bytes = reader.clean, reader.discarded_bytes
    if c.core is not None:
        c.flush_behavior(c.core.source_offset_ns())
    if c.origin_ns is None:  # no bin completed: the first frame's time is the origin
        firsts = [int(t.min()) for t in c.times if len(t)] + c.count_t[:1] + c.truth_t[:1]
        c.origin_ns = min(firsts) if firsts else 0
    return c


# --------------------------------------------------------------------------- tables


def _electrodes(nwb: Any, cfg: SessionConfig) -> None:
    """Device, electrode groups and one electrode per input channel (the probe map)."""
    meta = cfg.metadata
    device = nwb.create_device(name="source", description=meta.device)
    sites = meta.electrodes or [ElectrodeSite(location=meta.location)] * cfg.source.channels
    groups: dict[str, Any] = {}
    for site in sites:
        if site.group not in groups:
            groups[site.group] = nwb.create_electrode_group(
                name=site.group, description=f"electrodes of {meta.device}",
                location=site.location, device=device)
    for site in sites:
        extra = {k: v for k, v in (("x", site.x), ("y", site.y), ("z", site.z))
                 if v is not None}
        nwb.add_electrode(group=groups[site.group], location=site.location, **extra)


def _units(c: _Collected, channels: int, nwb: Any):
    from hdmf.common import DynamicTableRegion, VectorData, VectorIndex
    from pynwb.misc import Units

    ids = np.concatenate(c.ids) if c.ids else np.zeros(0, np.int64)
    times = np.concatenate(c.times) if c.times else np.zeros(0, np.int64)
    order = np.lexsort((times, ids))
    flat = c.rel(times[order])
    ends = np.cumsum(np.bincount(ids, minlength=channels))
    spike_times = VectorData(name="spike_times", data=flat,
                             description="spike times (s from the start of the session's "
                                         "first bin) as received")
    index = VectorIndex(name="spike_times_index", data=ends, target=spike_times)
    electrodes = DynamicTableRegion(name="electrodes", data=list(range(channels)),
                                    description="the electrode of each input channel",
                                    table=nwb.electrodes)
    electrodes_index = VectorIndex(name="electrodes_index", data=list(range(1, channels + 1)),
                                   target=electrodes)
    # Wire timestamps are integer nanoseconds: the finest difference the file can hold.
    return Units(name="units", id=list(range(channels)),
                 columns=[spike_times, index, electrodes, electrodes_index],
                 resolution=1e-9,
                 description="input channels of the session; unit i = channel i on the wire")


def _series(c: _Collected, name: str, t_ns: list[int] | np.ndarray, data: np.ndarray,
            description: str, comments: str, unit: str = "n.a."):
    """A TimeSeries with ``rate`` when samples are regular (NWB best practice), else timestamps."""
    from pynwb import TimeSeries

    t = np.asarray(t_ns, np.int64)
    common = {"name": name, "data": data, "unit": unit, "description": description,
              "comments": comments}
    steps = np.diff(t)
    if len(t) > 1 and steps[0] > 0 and np.all(steps == steps[0]):
        return TimeSeries(starting_time=float(c.rel(t[0])), rate=1e9 / float(steps[0]),
                          **common)
    return TimeSeries(timestamps=c.rel(t), **common)


def _columns_text(names: list[str], units: dict[str, str]) -> tuple[str, str]:
    """(comments naming each column with its unit, the series unit)."""
    labels = [f"{n} [{units[n]}]" if n in units else n for n in names]
    shared = {units.get(n, "n.a.") for n in names}
    unit = shared.pop() if len(shared) == 1 else "see comments (per column)"
    return "columns: " + ", ".join(labels), unit


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

    start = c.rel(np.asarray(c.bin_start, np.int64) + bin_ns)  # decided at the bin's end
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


def _session_events(c: _Collected, bin_ns: int):
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
        t = int(k) * bin_ns / 1e9 if k is not None else 0.0
        rest = {key: v for key, v in ev.items()
                if key not in ("op", "state", "lifecycle", "bin", "reason", "error")}
        params = ", ".join(f"{key}={_flat_text(v)}" for key, v in rest.items())
        label = (ev.get("op") or ev.get("state") or ev.get("lifecycle")
                 or ("segment" if "segment" in ev else ""))
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

    Subject, experimenter, electrodes... come from the session config's ``metadata``;
    ``subject`` (pynwb ``Subject`` fields) overrides its subject. Without either the
    subject is recorded as unknown (:data:`UNKNOWN_SUBJECT`, which DANDI refuses: no
    species).
    """
    from pynwb import NWBHDF5IO, NWBFile, ProcessingModule
    from pynwb.file import Subject

    log_path, nwb_path = Path(log_path), Path(nwb_path)
    c = _collect(log_path, progress)
    cfg = recorded_config(c.cfg) if c.cfg else None
    if cfg is None:
        raise ValueError(f"{log_path}: no config record, cannot export")
    meta = cfg.metadata
    bin_ns = cfg.bin_ns
    start = datetime.fromtimestamp(c.wall_ns / 1e9, tz=UTC) if c.wall_ns else datetime.now(UTC)
    software = [("spikeloop", c.software.get("spikeloop", "unknown"))] + [
        (k, v) for k, v in c.software.items() if k in ("python", "numpy", "torch")]
    notes = {"config": cfg.model_dump(mode="json"), "recorded": c.cfg, "software": c.software,
             "decoders": c.models, "time_origin_source_ns": c.origin_ns,
             "log": {"path": log_path.name, "clean": c.clean,
                     "discarded_bytes": c.discarded_bytes}}
    if subject is None and meta.subject is not None:
        subject = meta.subject.model_dump(exclude_none=True)
    origin = meta.origin
    described = (f"spikeloop closed-loop session {cfg.name!r}" +
                 (f" replaying {origin.get('identifier') or origin.get('path')}" if origin
                  else ""))
    nwb = NWBFile(
        session_description=meta.session_description or described,
        identifier=str(uuid.uuid4()),
        session_start_time=start,
        timestamps_reference_time=start,
        session_id=recorded_session_id(c.cfg) or cfg.name,
        experimenter=meta.experimenter or None,
        institution=meta.institution,
        lab=meta.lab,
        experiment_description=(f"Closed-loop BCI session: {cfg.decoder.type} decoder, "
                                f"{cfg.stim.modality} stimulation, {cfg.bin_ms:g} ms bins"
                                + (f"; source: a replay of {json.dumps(origin)}" if origin
                                   else "")),
        keywords=["brain-computer interface", "closed loop", cfg.stim.modality],
        notes=json.dumps(notes, default=str),
        stimulus_notes=json.dumps(cfg.stim.model_dump(mode="json")),
        data_collection=(
            "Times are seconds from the start of the session's first bin, on the session "
            "clock: the source's clock (frame timestamps), continued across source restarts "
            f"(each restart is a 'segment' row in intervals/session_events). t = 0 is "
            f"{c.origin_ns} ns on the source clock. session_start_time and "
            "timestamps_reference_time are the wall clock when the recording began."),
        was_generated_by=software,
        subject=Subject(**(subject or UNKNOWN_SUBJECT)),
    )
    _electrodes(nwb, cfg)
    nwb.units = _units(c, cfg.source.channels, nwb)
    if c.count_rows:
        nwb.add_acquisition(_series(
            c, "input_counts", c.count_t, np.stack(c.count_rows),
            "pre-binned spike counts as received (rows: frames, columns: channels)",
            "counts per input frame", unit="spikes"))
    beh = ProcessingModule(name="behavior", description="behaviour received and decoded")
    if c.truth_rows:
        comments, unit = _columns_text(c.truth_names or [], meta.output_units)
        beh.add(_series(c, "ground_truth", c.truth_t, np.stack(c.truth_rows),
                        "behaviour frames (calibration and adaptation targets)", comments,
                        unit))
    dec_rows = [(s, d) for s, d in zip(c.bin_start, c.decoded, strict=True) if d is not None]
    if dec_rows:
        names = c.models[-1].get("output_names", []) if c.models else []
        comments, unit = _columns_text(list(names), meta.output_units)
        beh.add(_series(c, "decoded", [s + bin_ns for s, _ in dec_rows],
                        np.stack([d for _, d in dec_rows]).astype(np.float64),
                        "online decoder output at the end of each bin", comments, unit))
    if beh.data_interfaces:
        nwb.add_processing_module(beh)
    if c.outcomes:
        nwb.add_time_intervals(_stimulation(c, bin_ns))
    if c.events:
        nwb.add_time_intervals(_session_events(c, bin_ns))
    nwb_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = nwb_path.with_name(nwb_path.stem + ".partial.nwb")
    with NWBHDF5IO(str(tmp), "w") as io:
        io.write(nwb)
    tmp.replace(nwb_path)
    if progress is not None:
        progress(1, 1)
    return nwb_path


def inspect_nwb(nwb_path: str | Path, config: str | None = None) -> list[dict[str, str]]:
    """nwbinspector findings as plain dicts (importance, check, message, location);
    ``config="dandi"`` applies DANDI's importance levels (what the archive refuses)."""
    from nwbinspector import inspect_nwbfile, load_config

    cfg = load_config(config) if config else None
    return [{"importance": m.importance.name, "check": m.check_function_name,
             "message": m.message, "location": str(m.location)}
            for m in inspect_nwbfile(nwbfile_path=str(nwb_path), config=cfg) if m is not None]
