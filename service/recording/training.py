"""Training data from recordings: the project's own session logs, and any lab's NWB files.

A recording's frames go through the same session core a live session runs, so the
counts and behaviour a decoder is trained on are, bin for bin, what a session
would see; replaying the recording into a session that uses the trained model
decodes the same bins, and :func:`score_bins` scores both the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from decoders.base import Decoder
from decoders.metrics import cc_per_output, r2_per_output
from service.loop.core import BinResult, OnBin, SessionCore
from service.recording.replay import Recording, open_recording, run_in_process
from service.session.config import SessionConfig, recorded_config

#: fraction of the bins with behaviour (or of the trials) that trains; the rest tests
TRAIN_FRACTION = 0.8


@dataclass
class Bins:
    """Every bin a session core made of a recording (truth is NaN where there was none)."""

    index: np.ndarray  # (T,)
    start_ns: np.ndarray  # (T,) on the session clock (= the source clock of the first epoch)
    counts: np.ndarray  # (T, N)
    truth: np.ndarray  # (T, K)
    names: list[str]
    bin_ms: float
    behavior_frames: int
    decoded: np.ndarray | None = None  # (T, outputs) when run with a decoder

    @property
    def has_truth(self) -> np.ndarray:
        return ~np.isnan(self.truth).any(1)


def recording_bins(rec: Recording, cfg: SessionConfig, decoder: Decoder | None = None) -> Bins:
    """Run ``rec`` through a session core built from ``cfg``; with ``decoder`` the core
    starts from it as a session started from a stored model does, and ``decoded`` holds
    its output for every bin."""
    index: list[int] = []
    start: list[int] = []
    counts: list[np.ndarray] = []
    truth: list[np.ndarray | None] = []
    decoded: list[np.ndarray] = []

    def keep(r: BinResult) -> None:
        index.append(r.index)
        start.append(r.start_ns)
        counts.append(np.array(r.counts, float))
        truth.append(None if r.truth is None else np.array(r.truth, float))
        if decoder is not None:
            decoded.append(np.full(decoder.n_outputs, np.nan) if r.decoded is None
                           else np.array(r.decoded, float))

    core = SessionCore(cfg, OnBin(keep))
    if decoder is not None:
        core.begin(decoder)
    run_in_process(rec, core)
    k = max((len(t) for t in truth if t is not None), default=0)
    gap = np.full(k, np.nan)
    names = core.truth_names or [f"x{i}" for i in range(k)]
    return Bins(np.asarray(index, np.int64), np.asarray(start, np.int64),
                np.asarray(counts).reshape(len(counts), cfg.source.channels),
                np.asarray([gap if t is None else t for t in truth]).reshape(len(truth), k),
                names, cfg.bin_ms, core.counters["behavior_frames"],
                np.asarray(decoded) if decoder is not None else None)


def recording_arrays(path: str | Path, bin_ms: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    """(counts (T, N), behaviour (T, K), behaviour names, bin_ms) from a recording,
    keeping only the bins with behaviour.

    The frames go through a session core built as the session was (a session log's own
    config) or for this recording, so the bins are exactly those a live session bins.
    """
    from service.recording.recorder import RecordType, read_log

    rec = open_recording(path)
    cfg: SessionConfig | None = None
    if rec.kind == "log":
        for r in read_log(path, {RecordType.CONFIG}):
            cfg = recorded_config(r.value)
            break
    if cfg is not None and bin_ms is not None and bin_ms != cfg.bin_ms:
        cfg = cfg.model_copy(update={"bin_ms": bin_ms})
    if cfg is None:
        if bin_ms is None:
            raise ValueError(f"{path}: give the bin width (--bin-ms) for this recording")
        cfg = SessionConfig(bin_ms=bin_ms, source={"channels": rec.channels})
    bins = recording_bins(rec, cfg)
    ok = bins.has_truth
    if not ok.any():
        raise ValueError(
            f"{path}: no bins with behaviour to train on ({bins.behavior_frames} "
            "behaviour frames in the recording): training needs the behaviour the decoder "
            "should output, on the source's behaviour topic")
    return bins.counts[ok], bins.truth[ok], bins.names, cfg.bin_ms


# --------------------------------------------------------------------------- NWB files


def nwb_config(channels: int, bin_ms: float) -> SessionConfig:
    """The session config an NWB replay is decoded with (offline here, live the same)."""
    return SessionConfig(name="nwb-training", bin_ms=bin_ms, source={"channels": channels},
                         stim={"policy": {}})


def _test_intervals(bins: Bins, ok: np.ndarray, split: str, trials: np.ndarray | None
                    ) -> tuple[np.ndarray, list[list[float]]]:
    """(is-train mask over all bins, test intervals in s) for a split by time or trials."""
    bin_ns = int(round(bins.bin_ms * 1e6))
    train = np.zeros(len(ok), bool)
    kept = np.flatnonzero(ok)
    if split == "time":
        cut = int(round(TRAIN_FRACTION * len(kept)))
        train[kept[:cut]] = True
        if cut == len(kept):
            return train, []
        return train, [[bins.start_ns[kept[cut]] / 1e9,
                        (bins.start_ns[kept[-1]] + bin_ns) / 1e9]]
    assert trials is not None
    trials = trials[np.argsort(trials[:, 0])]
    n_train = int(round(TRAIN_FRACTION * len(trials)))
    cut_s = trials[n_train, 0] if n_train < len(trials) else np.inf
    train[kept] = bins.start_ns[kept] / 1e9 < cut_s
    return train, [[float(a), float(b)] for a, b in trials[n_train:]]


def in_intervals(start_ns: np.ndarray, intervals: list[list[float]]) -> np.ndarray:
    """Bins whose start lies in one of ``intervals`` (s)."""
    t = np.asarray(start_ns, np.int64) / 1e9
    hit = np.zeros(len(t), bool)
    for a, b in intervals:
        hit |= (t >= a) & (t < b)
    return hit


def score_bins(truth: np.ndarray, decoded: np.ndarray, angular: bool) -> dict[str, Any]:
    """R² and correlation per output (and the angle error for a cos/sin pair)."""
    r2, cc = r2_per_output(truth, decoded), cc_per_output(truth, decoded)
    out: dict[str, Any] = {"r2": r2.tolist(), "r2_mean": float(r2.mean()), "cc": cc.tolist(),
                           "cc_mean": float(cc.mean()), "test_bins": len(truth)}
    if angular:
        from sources.nwb import angle_error_deg

        out["angle_error_deg"] = angle_error_deg(truth, decoded)
    return out


def score_on_test(bins: Bins, decoded: np.ndarray, nwb_meta: dict[str, Any]) -> dict[str, Any]:
    """Score ``decoded`` (one row per bin of ``bins``) on the test bins a model names."""
    test = in_intervals(bins.start_ns, nwb_meta["test_intervals_s"]) & bins.has_truth
    if not test.any():
        raise ValueError("no test bins with behaviour: record more, or change the split")
    return score_bins(bins.truth[test], decoded[test], bool(nwb_meta.get("angular")))


def train_nwb(path: str | Path, behavior: str, kind: str = "wiener", bin_ms: float = 20.0,
              interval: tuple[float, float] | None = None, split: str = "time", seed: int = 0,
              params: dict[str, Any] | None = None, progress: Any = None
              ) -> tuple[Decoder, dict[str, Any]]:
    """Train ``kind`` on an NWB file's units and one behaviour series, ridge beside it.

    The file is replayed through a session core with its behaviour as behaviour
    frames; bins with behaviour (inside ``interval``, and inside trials for a split by
    trials) train and test. Test scores come from stepping the decoder through *every*
    bin from the first, as a session started from the stored model does, so replaying
    the file into such a session gives the same R² on the same bins (``meta['nwb']``
    names them). ``meta['metrics']`` holds the decoder's scores, ``meta['ridge']`` those
    of a ridge regression on 5 bins of history (the Wiener decoder) on the same bins.
    """
    from decoders.train import train_model
    from decoders.wiener import WienerDecoder
    from sources.datasets import Dataset
    from sources.nwb import load_behavior, load_intervals

    if split not in ("time", "trials"):
        raise ValueError(f"split must be time or trials, got {split!r}")
    trials = load_intervals(path, "trials") if split == "trials" else None
    rec = open_recording(path, bin_ms=bin_ms, behavior=behavior, interval=interval,
                         within="trials" if split == "trials" else None)
    bins = recording_bins(rec, nwb_config(rec.channels, bin_ms))
    ok = bins.has_truth
    if ok.sum() < 10:
        raise ValueError(f"{path}: only {int(ok.sum())} bins of {bin_ms:g} ms have behaviour "
                         f"{behavior!r} (inside the interval, trials and obs_intervals): "
                         "too few to train on")
    train, test_iv = _test_intervals(bins, ok, split, trials)
    kept = np.flatnonzero(ok)
    # A decoder is reset where the kept bins are not contiguous, and at the split.
    brk = np.flatnonzero(np.diff(bins.index[kept]) != 1) + 1
    n_train = int(train[kept].sum())
    segments = np.unique(np.concatenate([[0], brk, [n_train]])).astype(np.int64)
    segments = segments[segments < len(kept)]
    ds = Dataset(f"nwb:{Path(path).name}:{behavior}", bins.counts[kept], bins.truth[kept],
                 bin_ms, bins.names, segments, n_train)
    angular = load_behavior(path, behavior).angular
    nwb_meta = {"path": str(path), "behavior": behavior, "bin_ms": bin_ms,
                "interval": list(interval) if interval else None, "split": split,
                "angular": angular, "test_intervals_s": test_iv,
                "channels": rec.channels, "metadata": rec.info.get("nwb", {})}
    dec, meta = train_model(ds, kind, params, seed, progress=progress, bin_ms=bin_ms,
                            output_names=bins.names)
    ridge = WienerDecoder().fit(ds.train().counts, ds.train().behavior, bin_ms=bin_ms,
                                output_names=bins.names)
    meta["metrics"] = score_on_test(bins, dec.predict(bins.counts), nwb_meta)
    meta["ridge"] = score_on_test(bins, ridge.predict(bins.counts), nwb_meta)
    meta["nwb"] = nwb_meta
    meta["train_bins"] = n_train
    return dec, meta
