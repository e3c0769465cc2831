"""Loaders for the real recordings in the shared data folder (never copied into the repo).

Every loader returns a :class:`Dataset`: binned spike counts (T, N), behaviour
(T, K), bin width, output names, the start index of every independent segment
(trials), and the fixed train/test split every benchmark uses, so all decoders
are compared on exactly the same bins.

The folder is ``$SPIKELOOP_DATA`` or ``<repo>/../shared/data``. Origins:

* ``contdata95`` -- University of Michigan BME 517 teaching dataset (monkey
  motor cortex, Utah array, centre-out reaching), as committed in the public
  repository nickmatton/NeuralSignalDecoding; internal evaluation only.
* ``mc_maze_small`` -- Neural Latents Benchmark MC_Maze_Small, DANDI archive
  000140, CC-BY-4.0; Pei et al. 2021, "Neural Latents Benchmark '21".
* ``peyrache_hd`` -- Peyrache et al. 2015, Nature Neuroscience 18:569-575
  (CRCNS th-1), as committed in PeyracheLab/Class-Decoding; internal evaluation only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("contdata95", "mc_maze_small", "peyrache_hd")


class DataMissingError(FileNotFoundError):
    """The shared data folder or one of its files is absent (tests skip on this)."""


def data_root() -> Path:
    """Where the shared recordings live: ``$SPIKELOOP_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("SPIKELOOP_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _require(rel: str) -> Path:
    path = data_root() / rel
    if not path.exists():
        raise DataMissingError(
            f"recording not found: {path} (set SPIKELOOP_DATA to the shared data folder)"
        )
    return path


@dataclass
class Dataset:
    """A binned recording with its fixed split.

    ``segments`` holds the start bin of each independent run (trial); decoders
    are reset there. ``n_train`` bins (a segment boundary) form the training part.
    """

    name: str
    counts: np.ndarray  # (T, N) float64
    behavior: np.ndarray  # (T, K) float64
    bin_ms: float
    output_names: list[str]
    segments: np.ndarray  # (S,) int64 start indices, first is 0
    n_train: int

    def _part(self, lo: int, hi: int, suffix: str) -> Dataset:
        seg = self.segments[(self.segments >= lo) & (self.segments < hi)] - lo
        if len(seg) == 0 or seg[0] != 0:
            seg = np.concatenate([[0], seg]).astype(np.int64)
        return Dataset(f"{self.name}{suffix}", self.counts[lo:hi], self.behavior[lo:hi],
                       self.bin_ms, self.output_names, seg, hi - lo)

    def train(self) -> Dataset:
        return self._part(0, self.n_train, ":train")

    def test(self) -> Dataset:
        return self._part(self.n_train, len(self.counts), ":test")

    def sha256(self) -> str:
        """Hash of the binned arrays: identifies the training data in model files."""
        h = hashlib.sha256()
        for a in (self.counts, self.behavior, self.segments):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def _rebin(a: np.ndarray, k: int, how: str) -> np.ndarray:
    """Merge every ``k`` consecutive bins along axis 0 (drop the tail)."""
    n = len(a) // k
    a = a[: n * k].reshape(n, k, *a.shape[1:])
    return a.sum(1) if how == "sum" else a.mean(1)


def _split_at_segment(segments: np.ndarray, total: int, frac: float = 0.8) -> int:
    """First segment boundary at or after ``frac`` of the data (contiguous split)."""
    if len(segments) == 1:
        return int(round(frac * total))
    k = int(round(frac * len(segments)))
    return int(segments[k])


def load_contdata95() -> Dataset:
    """Monkey M1 counts in 50 ms bins; outputs hand x, y, vx, vy."""
    from scipy.io import loadmat

    m = loadmat(_require("contdata95/contdata95.mat"))
    counts = np.asarray(m["Y"], np.float64)
    beh = np.asarray(m["X"], np.float64)
    seg = np.zeros(1, np.int64)
    return Dataset("contdata95", counts, beh, 50.0, ["x", "y", "vx", "vy"], seg,
                   _split_at_segment(seg, len(counts)))


def load_mc_maze_small(bin_ms: float = 20.0) -> Dataset:
    """MC_Maze_Small training trials (held-in + held-out units), hand velocity.

    The 5 ms bins are merged to ``bin_ms``; trials are independent segments and
    the split is by trial (first 80 % of trials train).
    """
    import h5py

    k = int(round(bin_ms / 5.0))
    with h5py.File(_require("mc_maze_small/mc_maze_small_train.h5"), "r") as f:
        spikes = np.concatenate([f["train_spikes_heldin"][:], f["train_spikes_heldout"][:]], -1)
        vel = f["train_behavior"][:]
    trials = [(_rebin(s, k, "sum"), _rebin(v, k, "mean")) for s, v in zip(spikes, vel,
                                                                          strict=True)]
    counts = np.concatenate([t[0] for t in trials]).astype(np.float64)
    beh = np.concatenate([t[1] for t in trials]).astype(np.float64)
    seg = np.cumsum([0] + [len(t[0]) for t in trials[:-1]]).astype(np.int64)
    return Dataset("mc_maze_small", counts, beh, 5.0 * k, ["vx", "vy"], seg,
                   _split_at_segment(seg, len(counts)))


def load_peyrache_hd(bin_ms: float = 100.0) -> Dataset:
    """Head-direction cells while awake (``Qrun``), outputs cos/sin of head angle.

    The 10 ms bins are merged to ``bin_ms``; the target is the bin mean of
    cos/sin of the angle.
    """
    from scipy.io import loadmat

    k = int(round(bin_ms / 10.0))
    m = loadmat(_require("peyrache_hd/dataHD.mat"))
    q = np.asarray(m["Qrun"], np.float64)
    ang = np.asarray(m["angRun"], np.float64)[:, 1]
    counts = _rebin(q, k, "sum")
    beh = _rebin(np.stack([np.cos(ang), np.sin(ang)], 1), k, "mean")
    seg = np.zeros(1, np.int64)
    return Dataset("peyrache_hd", counts, beh, 10.0 * k, ["cos", "sin"], seg,
                   _split_at_segment(seg, len(counts)))


LOADERS: dict[str, Callable[..., Dataset]] = {
    "contdata95": load_contdata95,
    "mc_maze_small": load_mc_maze_small,
    "peyrache_hd": load_peyrache_hd,
}


def load_dataset(name: str) -> Dataset:
    """Load one of :data:`DATASETS` by name."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {list(LOADERS)}")
    return LOADERS[name]()
