"""Recorded data as a time-ordered stream of chunks, ready to be replayed as a source.

A reader turns a file into :class:`Chunk` objects in source-clock order: spike
events (unit ids + times) in fixed windows, or one bin of counts with its
behaviour. ``service.recording.replay`` encodes chunks as wire-protocol frames; readers
stay free of sockets and of the service package.

* :class:`NwbUnitsReader` -- any NWB 2 file's ``units`` table (spike times per
  unit), read with h5py from the flat ``spike_times`` / ``spike_times_index``
  arrays, so no per-unit Python work and no pynwb dependency.
* :class:`DatasetReader` -- the binned recordings in the shared data folder, via
  ``sources.datasets`` (origins and licences are listed there and in the data README).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import datasets


@dataclass(slots=True)
class Chunk:
    """One message worth of data. ``t_ns`` is the frame time on the source clock.

    ``events``: ids/times with every time < ``t_ns``. ``counts``: ``values`` for the
    bin [t_ns, t_ns + bin_ns). ``behavior``: ``values`` known at ``t_ns``.
    """

    kind: str
    t_ns: int
    ids: np.ndarray | None = None
    times: np.ndarray | None = None
    values: np.ndarray | None = None
    bin_ns: int = 0


class NwbUnitsReader:
    """Spike times of an NWB ``units`` table as events in ``chunk_ms`` windows.

    Unit ``i`` (row ``i`` of the table) becomes channel ``i``; spikes outside a unit's
    ``obs_intervals`` are dropped. Empty windows are sent too, so a session's bins
    keep completing through silent periods, and a last empty frame ``tail_ms``
    after the final window closes the trailing bins.

    With ``behavior`` (a :class:`sources.nwb.Behavior`) the windows are the bins
    (``chunk_ms`` = the session's bin width, on the grid of multiples of it, which is
    the session binner's grid) and every bin's spikes are preceded by a behaviour
    frame holding the behaviour at that bin's centre. Bins where there is none
    (outside the series, in a gap, outside ``interval`` (s, s), outside the
    intervals in ``within``, or while some unit is not observed) get an empty
    behaviour frame instead: "no behaviour here", so a session never trains on a stale
    value.
    """

    def __init__(self, path: str | Path, chunk_ms: float = 10.0, tail_ms: float = 1000.0,
                 behavior: Any = None, interval: tuple[float, float] | None = None,
                 within: np.ndarray | None = None):
        import h5py

        self.path = Path(path)
        self.chunk_ns = int(round(chunk_ms * 1e6))
        self.tail_ns = int(round(tail_ms * 1e6))
        with h5py.File(self.path, "r") as f:
            if "units" not in f or "spike_times" not in f["units"]:
                raise ValueError(f"{self.path}: no Units table with spike times (/units/"
                                 "spike_times) in this NWB file: nothing to replay or decode; "
                                 "`spikeloop inspect FILE` lists what it holds")
            u = f["units"]
            times_s = np.asarray(u["spike_times"][:], np.float64)
            ends = (np.asarray(u["spike_times_index"][:], np.int64)
                    if "spike_times_index" in u else np.array([len(times_s)]))
            self.unit_ids = np.asarray(u["id"][:]) if "id" in u else np.arange(len(ends))
            obs = None
            if "obs_intervals" in u:
                obs = (np.asarray(u["obs_intervals"][:], np.float64).reshape(-1, 2),
                       np.asarray(u["obs_intervals_index"][:], np.int64)
                       if "obs_intervals_index" in u else np.array([len(u["obs_intervals"])]))
        self.channels = len(ends)
        per_unit = np.diff(np.concatenate([[0], ends]))
        ids = np.repeat(np.arange(self.channels, dtype=np.uint32), per_unit)
        self.obs_intervals: list[np.ndarray] | None = None
        if obs is not None:
            rows, idx = obs
            self.obs_intervals = np.split(rows, idx[:-1])
            keep = np.zeros(len(times_s), bool)
            for unit, iv in enumerate(self.obs_intervals):
                lo, hi = (0 if unit == 0 else ends[unit - 1]), ends[unit]
                t = times_s[lo:hi]
                keep[lo:hi] = ((t[:, None] >= iv[:, 0]) & (t[:, None] < iv[:, 1])).any(1) \
                    if len(iv) else True
            self.dropped_unobserved = int((~keep).sum())
            times_s, ids = times_s[keep], ids[keep]
        else:
            self.dropped_unobserved = 0
        self.spike_counts = np.bincount(ids, minlength=self.channels)
        t_ns = np.round(times_s * 1e9).astype(np.int64)
        order = np.argsort(t_ns, kind="stable")
        self._ids, self._t = ids[order], t_ns[order]
        self.start_ns = int(self._t[0] // self.chunk_ns * self.chunk_ns) if len(self._t) else 0
        last = int(self._t[-1]) if len(self._t) else 0
        self.n_chunks = (last - self.start_ns) // self.chunk_ns + 1
        self.end_ns = self.start_ns + self.n_chunks * self.chunk_ns + self.tail_ns
        self.duration_ns = self.end_ns - self.start_ns
        self.behavior = behavior
        self.behavior_names: list[str] = list(behavior.columns) if behavior is not None else []
        self._beh: np.ndarray | None = None
        self._valid: np.ndarray | None = None
        if behavior is not None:
            self._beh, self._valid = self._behavior_on_bins(interval, within)

    def bin_starts(self) -> np.ndarray:
        """Start (ns) of every window, i.e. of every bin when replaying with behaviour."""
        return self.start_ns + self.chunk_ns * np.arange(self.n_chunks, dtype=np.int64)

    def _observed(self, starts: np.ndarray) -> np.ndarray:
        """Bins lying wholly inside the observation intervals of every unit that has them."""
        ok = np.ones(len(starts), bool)
        for iv in self.obs_intervals or ():
            if not len(iv):
                continue
            lo = np.round(iv[:, 0] * 1e9)
            hi = np.round(iv[:, 1] * 1e9)
            ok &= ((starts[:, None] >= lo) & (starts[:, None] + self.chunk_ns <= hi)).any(1)
        return ok

    def _behavior_on_bins(self, interval: tuple[float, float] | None,
                          within: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        from .nwb import behavior_on_bins

        starts = self.bin_starts()
        values, valid = behavior_on_bins(self.behavior, starts, self.chunk_ns)
        valid &= self._observed(starts)
        if interval is not None:
            a, b = (int(round(x * 1e9)) for x in interval)
            valid &= (starts >= a) & (starts + self.chunk_ns <= b)
        if within is not None:
            lo, hi = np.round(within[:, 0] * 1e9), np.round(within[:, 1] * 1e9)
            valid &= ((starts[:, None] >= lo) & (starts[:, None] + self.chunk_ns <= hi)).any(1)
        return values, valid

    def describe(self) -> dict[str, Any]:
        d = {"format": "nwb", "path": str(self.path), "channels": self.channels,
             "spikes": int(self.spike_counts.sum()), "start_s": self.start_ns / 1e9,
             "duration_s": self.duration_ns / 1e9}
        if self.dropped_unobserved:
            d["spikes_outside_obs_intervals"] = self.dropped_unobserved
        if self._valid is not None:
            d["behavior"] = self.behavior.path
            d["outputs"] = self.behavior_names
            d["bins_with_behavior"] = int(self._valid.sum())
        return d

    def chunks(self) -> Iterator[Chunk]:
        edges = self.start_ns + self.chunk_ns * np.arange(1, self.n_chunks + 1)
        cuts = np.searchsorted(self._t, edges, side="left")
        lo = 0
        beh, valid = self._beh, self._valid
        gap = np.zeros(0)
        was_valid = False
        for i, (edge, hi) in enumerate(zip(edges.tolist(), cuts.tolist(), strict=True)):
            if beh is not None and valid is not None:
                if valid[i]:
                    yield Chunk("behavior", edge - self.chunk_ns, values=beh[i])
                elif was_valid or i == 0:
                    yield Chunk("behavior", edge - self.chunk_ns, values=gap)
                was_valid = bool(valid[i])
            yield Chunk("events", edge, self._ids[lo:hi], self._t[lo:hi])
            lo = hi
        empty_ids, empty_t = self._ids[:0], self._t[:0]
        yield Chunk("events", self.end_ns, empty_ids, empty_t)


class DatasetReader:
    """A binned dataset (``sources.datasets``): per bin, behaviour then counts.

    Bins are laid end to end from t = 0 (trials of segmented datasets follow each
    other). The behaviour frame carries the bin's start time so the session
    pairs it with that bin, and precedes the counts that complete the bin.
    """

    def __init__(self, name: str, bin_ms: float | None = None, part: str = "all"):
        loader = datasets.LOADERS.get(name)
        if loader is None:
            raise ValueError(f"unknown dataset {name!r}; known: {list(datasets.LOADERS)}")
        ds = loader(bin_ms=bin_ms) if bin_ms else loader()
        if part in ("train", "test"):
            ds = getattr(ds, part)()
        elif part != "all":
            raise ValueError(f"part must be all, train or test, got {part!r}")
        self.dataset = ds
        self.channels = ds.counts.shape[1]
        self.bin_ns = int(round(ds.bin_ms * 1e6))
        self.start_ns = 0
        self.duration_ns = len(ds.counts) * self.bin_ns
        self.end_ns = self.duration_ns

    def describe(self) -> dict[str, Any]:
        ds = self.dataset
        return {"format": "dataset", "name": ds.name, "channels": self.channels,
                "bins": len(ds.counts), "bin_ms": ds.bin_ms, "outputs": ds.output_names,
                "duration_s": self.duration_ns / 1e9}

    def chunks(self) -> Iterator[Chunk]:
        ds = self.dataset
        for i in range(len(ds.counts)):
            t = i * self.bin_ns
            yield Chunk("behavior", t, values=ds.behavior[i])
            yield Chunk("counts", t, values=ds.counts[i], bin_ns=self.bin_ns)


#: file names in the shared data folder and the dataset each one holds
DATASET_FILES = {"contdata95.mat": "contdata95", "mc_maze_small_train.h5": "mc_maze_small",
                 "dataHD.mat": "peyrache_hd"}
