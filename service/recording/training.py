"""Training data from the project's own recordings.

A session log holds the raw input frames; running them through the same
binner a live session uses gives the counts and behaviour a decoder is
trained on, bin for bin what a session would have seen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.loop.core import BinResult, OnBin, SessionCore
from service.recording.replay import open_recording, run_in_process
from service.session.config import SessionConfig, recorded_config


def recording_arrays(path: str | Path, bin_ms: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    """(counts (T, N), behaviour (T, K), behaviour names, bin_ms) from a recording.

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
    counts: list[np.ndarray] = []
    truth: list[np.ndarray] = []

    def keep(r: BinResult) -> None:
        if r.truth is not None and r.counts is not None:
            counts.append(r.counts.copy())
            truth.append(np.array(r.truth, float))

    core = SessionCore(cfg, OnBin(keep))
    run_in_process(rec, core)
    if not counts:
        raise ValueError(
            f"{path}: no bins with behaviour to train on ({core.counters['behavior_frames']} "
            "behaviour frames in the recording): training needs the behaviour the decoder "
            "should output, on the source's behaviour topic")
    names = core.truth_names or [f"x{i}" for i in range(len(truth[0]))]
    return np.asarray(counts), np.asarray(truth), names, cfg.bin_ms
