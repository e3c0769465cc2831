"""Scores for decoded vs true behaviour, and segment-aware batch prediction."""

from __future__ import annotations

import numpy as np

from .base import Decoder


def r2_per_output(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column (1 - SSE / SST about the column mean)."""
    y, yhat = np.asarray(y, float), np.asarray(yhat, float)
    sse = ((y - yhat) ** 2).sum(0)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    return 1.0 - sse / np.maximum(sst, 1e-12)


def cc_per_output(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    """Pearson correlation per column."""
    y = np.asarray(y, float) - np.mean(y, 0)
    yhat = np.asarray(yhat, float) - np.mean(yhat, 0)
    den = np.sqrt((y**2).sum(0) * (yhat**2).sum(0))
    return (y * yhat).sum(0) / np.maximum(den, 1e-12)


def predict_segments(decoder: Decoder, counts: np.ndarray,
                     segments: np.ndarray | None = None) -> np.ndarray:
    """Batch-predict a recording, starting from a fresh state at each segment (trial)."""
    if segments is None or len(segments) <= 1:
        return decoder.predict(counts)
    bounds = list(segments) + [len(counts)]
    return np.concatenate([decoder.predict(counts[a:b])
                           for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
