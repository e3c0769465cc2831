"""Training data from the project's own recordings.

A session log holds the raw input frames; running them through the same
binner a live session uses gives the counts and behaviour a decoder is
trained on, bin for bin what a session would have seen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .binner import Binner
from .pipeline import LoopPipeline
from .protocol import KIND_BEHAVIOR, decode
from .replay import open_recording, run_in_process
from .verify import session_config


def recording_arrays(path: str | Path, bin_ms: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    """(counts (T, N), behaviour (T, K), behaviour names, bin_ms) from a recording."""
    from stim.guard import SafetyGuard

    from .recorder import RecordType, read_log

    rec = open_recording(path)
    if rec.kind == "log" and bin_ms is None:
        for r in read_log(path, {RecordType.CONFIG}):
            bin_ms = session_config(r.value["config"]).bin_ms
            break
    if bin_ms is None:
        raise ValueError(f"{path}: give the bin width (--bin-ms) for this recording")
    pipe = LoopPipeline(Binner(rec.channels, int(round(bin_ms * 1e6))), None, None,
                        SafetyGuard())
    counts: list[np.ndarray] = []
    truth: list[np.ndarray] = []

    def keep(r) -> None:
        if r.truth is not None:
            counts.append(r.counts.copy())
            truth.append(np.array(r.truth, float))

    run_in_process(rec, pipe, on_bin=keep)
    if not counts:
        raise ValueError(f"{path}: no bins with behaviour to train on")
    names = _behavior_names(rec) or [f"x{i}" for i in range(len(truth[0]))]
    return np.asarray(counts), np.asarray(truth), names, bin_ms


def _behavior_names(rec) -> list[str]:
    """Names carried by the first behaviour frame (``x.names``), if any."""
    for _, frames in rec.frames():
        msg = decode(frames)
        if msg.header.kind == KIND_BEHAVIOR:
            return list(msg.header.extra.get("names") or [])
    return []
