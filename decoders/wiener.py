"""Wiener filter: ridge regression on a short window of spike history.

The simplest decoder that uses time: the output is a linear function of the
last ``history`` bins of (standardised) counts. It is the reference the shared
data README quotes, so every other decoder is measured against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Decoder


def _lagged(z: np.ndarray, history: int) -> np.ndarray:
    """(T, N) -> (T, history*N), oldest lag first, zero-padded before the start."""
    T, N = z.shape
    X = np.zeros((T, history * N))
    for k in range(history):  # block k holds z[t - (history-1-k)]
        lag = history - 1 - k
        X[lag:, k * N:(k + 1) * N] = z[: T - lag]
    return X


class WienerDecoder(Decoder):
    """Ridge on ``history`` bins; ``alpha`` is chosen on a held-out tail when given a list."""

    kind = "wiener"

    def __init__(self, history: int = 5, alpha: float | list[float] = (1.0, 10.0, 100.0, 1e3,
                                                                             1e4)):
        self.history = int(history)
        self.alpha = alpha
        self.output_names = []

    # --------------------------------------------------------------- fitting
    def fit(self, counts: np.ndarray, targets: np.ndarray, bin_ms: float = 0.0,
            output_names: list[str] | None = None, **_: Any) -> WienerDecoder:
        C = np.asarray(counts, float)
        Y = np.asarray(targets, float)
        self.n_inputs, self.n_outputs = C.shape[1], Y.shape[1]
        self.bin_ms = bin_ms
        self.output_names = output_names or [f"x{i}" for i in range(self.n_outputs)]
        self.mu = C.mean(0)
        self.sd = C.std(0) + 1e-3
        X = _lagged((C - self.mu) / self.sd, self.history)
        alphas = [self.alpha] if np.isscalar(self.alpha) else list(self.alpha)
        if len(alphas) > 1:  # pick alpha on the last 20 % (contiguous, no leakage forward)
            cut = int(0.8 * len(X))
            scores = [self._score(X[:cut], Y[:cut], X[cut:], Y[cut:], a) for a in alphas]
            self.alpha_ = float(alphas[int(np.argmax(scores))])
        else:
            self.alpha_ = float(alphas[0])
        self.W, self.b = self._solve(X, Y, self.alpha_)
        self._prepare()
        return self

    @staticmethod
    def _solve(X: np.ndarray, Y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        xm, ym = X.mean(0), Y.mean(0)
        Xc = X - xm
        G = Xc.T @ Xc
        G[np.diag_indices_from(G)] += alpha
        W = np.linalg.solve(G, Xc.T @ (Y - ym)).T  # (K, L*N)
        return W, ym - W @ xm

    def _score(self, Xa, Ya, Xb, Yb, alpha) -> float:
        W, b = self._solve(Xa, Ya, alpha)
        P = Xb @ W.T + b
        return float(np.mean(1 - ((Yb - P) ** 2).sum(0) / ((Yb - Yb.mean(0)) ** 2).sum(0)))

    def _prepare(self) -> None:
        L, N = self.history, self.n_inputs
        # Fold the standardisation into the weights so a step works on raw counts.
        Wl = self.W.reshape(self.n_outputs, L, N) / self.sd
        self._Wraw = np.ascontiguousarray(Wl.reshape(self.n_outputs, L * N))
        self._braw = self.b - Wl.sum(1) @ self.mu
        self._buf = np.zeros((2 * L, N))  # doubled ring buffer: history is always contiguous
        self._out = np.zeros(self.n_outputs)
        self.reset()

    # --------------------------------------------------------------- online
    def reset(self) -> None:
        self._buf[:] = self.mu  # "no history" = mean activity (zero after standardising)
        self._pos = 0

    def step(self, counts: np.ndarray) -> np.ndarray:
        L = self.history
        self._pos = (self._pos + 1) % L
        self._buf[self._pos] = counts
        self._buf[self._pos + L] = counts
        window = self._buf[self._pos + 1: self._pos + 1 + L].reshape(-1)
        np.dot(self._Wraw, window, out=self._out)
        self._out += self._braw
        return self._out

    def predict(self, counts: np.ndarray) -> np.ndarray:
        """Vectorised equivalent of stepping from a fresh state."""
        X = _lagged((np.asarray(counts, float) - self.mu) / self.sd, self.history)
        return X @ self.W.T + self.b

    # --------------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        return super().metadata() | {"history": self.history, "alpha": self.alpha_}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"W": self.W, "b": self.b, "mu": self.mu, "sd": self.sd}

    def load_state_dict(self, state: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.__init__(int(meta["history"]), float(meta["alpha"]))
        self.alpha_ = float(meta["alpha"])
        for k, v in state.items():
            setattr(self, k, np.asarray(v, float))
        self._restore_metadata(meta)
        self._prepare()
