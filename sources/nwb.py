"""What an NWB 2 file written by any lab's tools holds, and its behaviour on a bin grid.

Foreign files differ in where they keep things: behaviour can be a bare
``TimeSeries`` in ``acquisition`` or a series inside a ``Position``,
``CompassDirection`` or ``BehavioralTimeSeries`` container in ``acquisition`` or
any processing module; units may carry ``obs_intervals``; many files have no
``units`` table at all. :func:`inventory` lists what a file holds and what can be
decoded from it; :func:`load_behavior` finds one behaviour series by name and
:func:`behavior_on_bins` resamples it onto bins. The spike times themselves are
read by :class:`sources.readers.NwbUnitsReader`.

Angular series (a ``CompassDirection`` series, or any series whose unit is
radians or degrees) become two outputs, cos and sin of the angle, so that a
linear decoder never meets the wrap from pi to -pi.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: units that mark a series as an angle, and their factor to radians
ANGLE_UNITS = {"radian": 1.0, "radians": 1.0, "rad": 1.0,
               "degree": math.pi / 180, "degrees": math.pi / 180, "deg": math.pi / 180}
#: a behaviour sample further than this many median sample intervals from the next
#: one leaves a gap: bins in it get no behaviour
MAX_GAP_SAMPLES = 5.0


class NwbContentError(ValueError):
    """The file lacks what was asked of it (the message says what is missing)."""


@dataclass
class SeriesInfo:
    """One behaviour series: where it is and what it would decode to."""

    name: str
    path: str  # e.g. processing/behavior/CompassDirection/head_direction
    neurodata_type: str
    container: str  # type of the enclosing container ("" for a bare series)
    unit: str
    samples: int
    columns: list[str]  # decoder outputs it becomes
    angular: bool
    start_s: float
    stop_s: float


@dataclass
class NwbInventory:
    path: str
    identifier: str
    session_description: str
    session_start_time: str
    units: int | None  # None: no units table
    spikes: int = 0
    obs_intervals: bool = False
    spikes_start_s: float = 0.0
    spikes_stop_s: float = 0.0
    electrodes: int = 0
    series: list[SeriesInfo] = field(default_factory=list)
    trials: int = 0
    epochs: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> str:
        """Why nothing can be decoded from this file ("" when something can)."""
        if self.units is None:
            return (f"{self.path}: no Units table (spike times of sorted units): nothing to "
                    "decode from; spikeloop reads spikes only from /units")
        if self.spikes == 0:
            return f"{self.path}: the Units table holds no spike times"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _series_timestamps(ts: Any) -> np.ndarray:
    if ts.timestamps is not None:
        return np.asarray(ts.timestamps[:], np.float64)
    n = len(ts.data)
    return float(ts.starting_time or 0.0) + np.arange(n, dtype=np.float64) / float(ts.rate)


def _walk_series(nwb: Any) -> list[tuple[str, str, Any]]:
    """(path, container type, series) for every TimeSeries in acquisition and processing."""
    from pynwb import TimeSeries

    found: list[tuple[str, str, Any]] = []

    def visit(prefix: str, obj: Any) -> None:
        if isinstance(obj, TimeSeries):
            found.append((f"{prefix}/{obj.name}", "", obj))
            return
        for child in getattr(obj, "children", ()):
            if isinstance(child, TimeSeries):
                found.append((f"{prefix}/{obj.name}/{child.name}", type(obj).__name__, child))

    for obj in nwb.acquisition.values():
        visit("acquisition", obj)
    for mod in nwb.processing.values():
        for obj in mod.data_interfaces.values():
            visit(f"processing/{mod.name}", obj)
    return found


def _is_angular(container: str, unit: str) -> bool:
    return container == "CompassDirection" or unit.strip().lower() in ANGLE_UNITS


def _columns(name: str, width: int, angular: bool, spatial: bool) -> list[str]:
    if angular:
        return [f"{name}_cos", f"{name}_sin"]
    if width == 1:
        return [name]
    if spatial and width <= 3:
        return [f"{name}_{a}" for a in "xyz"[:width]]
    return [f"{name}_{i}" for i in range(width)]


def _info(path: str, container: str, ts: Any) -> SeriesInfo:
    from pynwb.behavior import SpatialSeries

    shape = ts.data.shape
    width = 1 if len(shape) == 1 else int(np.prod(shape[1:]))
    unit = str(getattr(ts, "unit", "") or "")
    angular = _is_angular(container, unit)
    t = _series_timestamps(ts)
    return SeriesInfo(ts.name, path, type(ts).__name__, container, unit, int(shape[0]),
                      _columns(ts.name, width, angular, isinstance(ts, SpatialSeries)),
                      angular, float(t[0]) if len(t) else 0.0, float(t[-1]) if len(t) else 0.0)


def _metadata(nwb: Any) -> dict[str, Any]:
    """The session and subject fields a recording and its export carry on."""
    meta: dict[str, Any] = {
        "identifier": nwb.identifier,
        "session_description": nwb.session_description,
        "session_start_time": nwb.session_start_time.isoformat(),
    }
    for key in ("session_id", "institution", "lab", "experiment_description"):
        v = getattr(nwb, key, None)
        if v:
            meta[key] = str(v)
    if nwb.experimenter:
        meta["experimenter"] = [str(e) for e in nwb.experimenter]
    s = nwb.subject
    if s is not None:
        meta["subject"] = {k: str(getattr(s, k)) for k in
                           ("subject_id", "species", "sex", "age", "description", "strain",
                            "genotype") if getattr(s, k, None)}
    return meta


def _open(path: str | Path):
    from pynwb import NWBHDF5IO

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no NWB file at {p}")
    try:
        return NWBHDF5IO(str(p), "r", load_namespaces=True)
    except Exception as exc:  # h5py/hdmf raise many types for a file that is not NWB
        raise NwbContentError(f"{p}: not a readable NWB 2 file ({type(exc).__name__}: "
                              f"{exc})") from None


def inventory(path: str | Path) -> NwbInventory:
    """What ``path`` holds: units, behaviour series, intervals, metadata."""
    with _open(path) as io:
        nwb = io.read()
        units = nwb.units
        inv = NwbInventory(str(path), nwb.identifier, nwb.session_description,
                           nwb.session_start_time.isoformat(),
                           None if units is None else len(units.id))
        if units is not None and "spike_times" in units.colnames:
            flat = np.asarray(units["spike_times"].target.data[:], np.float64)
            inv.spikes = len(flat)
            if len(flat):
                inv.spikes_start_s, inv.spikes_stop_s = float(flat.min()), float(flat.max())
            inv.obs_intervals = "obs_intervals" in units.colnames
        inv.electrodes = 0 if nwb.electrodes is None else len(nwb.electrodes)
        inv.series = [_info(p, c, ts) for p, c, ts in _walk_series(nwb)]
        inv.trials = 0 if nwb.trials is None else len(nwb.trials)
        inv.epochs = 0 if nwb.epochs is None else len(nwb.epochs)
        inv.metadata = _metadata(nwb)
    return inv


@dataclass
class Behavior:
    """One behaviour series as arrays: sample times (s) and values (samples, outputs)."""

    name: str
    path: str
    t_s: np.ndarray
    values: np.ndarray
    columns: list[str]
    angular: bool


def _pick(found: list[tuple[str, str, Any]], name: str) -> tuple[str, str, Any]:
    hits = [f for f in found if f[2].name == name or f[0] == name or f[0].endswith("/" + name)]
    if len(hits) == 1:
        return hits[0]
    known = ", ".join(p for p, _, _ in found) or "none"
    if not hits:
        raise NwbContentError(f"no behaviour series named {name!r}; the file holds: {known}")
    raise NwbContentError(f"{name!r} matches {len(hits)} series ("
                          f"{', '.join(p for p, _, _ in hits)}): give the full path")


def load_behavior(path: str | Path, name: str) -> Behavior:
    """The series called ``name`` (its name, or its path in the file), angles as cos/sin."""
    with _open(path) as io:
        nwb = io.read()
        spath, container, ts = _pick(_walk_series(nwb), name)
        info = _info(spath, container, ts)
        t = _series_timestamps(ts)
        v = np.asarray(ts.data[:], np.float64).reshape(len(t), -1)
        conv = float(getattr(ts, "conversion", 1.0) or 1.0)
        v = v * conv + float(getattr(ts, "offset", 0.0) or 0.0)
    if info.angular:
        if v.shape[1] != 1:
            raise NwbContentError(f"{spath}: an angle series must have one column, has "
                                  f"{v.shape[1]}")
        ang = v[:, 0] * ANGLE_UNITS.get(info.unit.strip().lower(), 1.0)
        v = np.stack([np.cos(ang), np.sin(ang)], 1)
    order = np.argsort(t, kind="stable")
    return Behavior(ts.name, spath, t[order], v[order], info.columns, info.angular)


def load_intervals(path: str | Path, table: str) -> np.ndarray:
    """(rows, 2) start/stop times (s) of ``trials``, ``epochs`` or another intervals table."""
    with _open(path) as io:
        nwb = io.read()
        t = nwb.intervals.get(table) if nwb.intervals is not None else None
        if t is None or len(t) == 0:
            raise NwbContentError(f"{path}: no {table!r} intervals table (needed for a split by "
                                  f"{table}); use --split time")
        return np.stack([np.asarray(t["start_time"].data[:], np.float64),
                         np.asarray(t["stop_time"].data[:], np.float64)], 1)


def behavior_on_bins(b: Behavior, starts_ns: np.ndarray, bin_ns: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(values (bins, outputs), valid (bins,))``: the behaviour at each bin's centre.

    Linear interpolation between the samples around the centre; a bin is valid only
    when its centre lies between two samples no further apart than
    :data:`MAX_GAP_SAMPLES` median intervals (and no value there is NaN).
    """
    centre = (np.asarray(starts_ns, np.int64) + bin_ns // 2) / 1e9
    t = b.t_s
    out = np.full((len(centre), b.values.shape[1]), np.nan)
    if len(t) < 2:
        return out, np.zeros(len(centre), bool)
    step = float(np.median(np.diff(t)))
    j = np.searchsorted(t, centre, side="right")
    inside = (j > 0) & (j < len(t))
    jj = np.clip(j, 1, len(t) - 1)
    close = (t[jj] - t[jj - 1]) <= MAX_GAP_SAMPLES * step
    for k in range(b.values.shape[1]):
        out[:, k] = np.interp(centre, t, b.values[:, k])
    valid = inside & close & ~np.isnan(out).any(1)
    out[~valid] = np.nan
    return out, valid


def angle_error_deg(truth_cs: np.ndarray, pred_cs: np.ndarray) -> float:
    """Mean absolute angle error (degrees) between two (bins, 2) cos/sin arrays."""
    a = np.arctan2(truth_cs[:, 1], truth_cs[:, 0])
    b = np.arctan2(pred_cs[:, 1], pred_cs[:, 0])
    d = np.angle(np.exp(1j * (b - a)))
    return float(np.degrees(np.abs(d)).mean())
