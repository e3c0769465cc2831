"""Wiener filter: ridge regression on a short window of spike history.

The simplest decoder that uses time: the output is a linear function of the
last ``history`` bins of (standardised) counts. It is the reference the shared
data README quotes, so every other decoder is measured against it.

Online recalibration (``set_adaptation(True)``, then ``adapt(target)`` after
each ``step``): recursive least squares with forgetting factor ``adapt_lam``
on the filter weights and bias, in the standardised space they were fitted
in, starting from the fitted filter (:class:`~decoders.recalibration.LinearRLS`,
regressor = [standardised history, 1]); its initial P is the inverse of
the ridge the fit chose (``adapt_delta=None``), so the first few hundred
bins cannot override the fitted filter with noise. A bin costs O(d²) with
d = history x channels + 1 (step + adapt about 0.2 ms median for 5 x 96
channels on this machine, measured under load); above ``adapt_max_dim`` only
the most recent lags that fit (at least the last bin) are recalibrated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .base import Decoder
from .recalibration import LinearRLS


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
    supports_adapt = True

    def __init__(self, history: int = 5,
                 alpha: float | Sequence[float] = (1.0, 10.0, 100.0, 1e3, 1e4),
                 adapt_lam: float = 0.999, adapt_delta: float | None = None,
                 adapt_max_dim: int = 1025):
        self._init(history, alpha, adapt_lam, adapt_delta, adapt_max_dim)

    def _init(self, history: int, alpha: float | Sequence[float], adapt_lam: float,
              adapt_delta: float | None, adapt_max_dim: int) -> None:
        """Set the hyper-parameters and clear fitted state (``__init__``, ``load_state_dict``)."""
        self.history = int(history)
        self.alpha = alpha
        self.adapt_lam = float(adapt_lam)
        # RLS prior strength on the fitted weights; None = the fitted ridge alpha
        self.adapt_delta = None if adapt_delta is None else float(adapt_delta)
        self.adapt_max_dim = int(adapt_max_dim)
        self.output_names: list[str] = []
        self.rls: LinearRLS | None = None
        self._adapt_on = False

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
        alphas = list(self.alpha) if isinstance(self.alpha, Iterable) else [self.alpha]
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
        self._window = self._buf[0:L].reshape(-1)
        self._mu_all = np.tile(self.mu, L)
        self._bk = np.zeros(self.n_outputs)
        self.rls = None
        self._adapt_on = False
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
        self._window = window
        np.dot(self._Wraw, window, out=self._out)
        self._out += self._braw
        return self._out

    # --------------------------------------------------------------- adaptation
    def set_adaptation(self, enabled: bool) -> None:
        if enabled and self.rls is None:
            L, N = self.history, self.n_inputs
            lags = max(1, min(L, (self.adapt_max_dim - 1) // N))  # most recent lags first
            self._a0 = (L - lags) * N  # first adapted column of the lagged window
            self.rls = LinearRLS(np.concatenate([self.W[:, self._a0:], self.b[:, None]], 1),
                                 lam=self.adapt_lam,
                                 delta=self.adapt_delta or self.alpha_)
            self._mu_t = np.tile(self.mu, lags)
            self._isd_t = 1.0 / np.tile(self.sd, lags)
            self._z = np.zeros(lags * N + 1)
            self._z[-1] = 1.0
        self._adapt_on = bool(enabled)

    def adapt(self, target: np.ndarray) -> None:
        """RLS step on the (standardised) weights for the last stepped bin."""
        if not self._adapt_on:
            return
        rls = self.rls
        assert rls is not None, "set_adaptation(True) creates rls before _adapt_on is set"
        a0, d = self._a0, len(self._z) - 1
        z = self._z[:-1]
        np.subtract(self._window[a0:], self._mu_t, out=z)
        z *= self._isd_t
        rls.update(self._z, self._adapt_target(target) - self._out)
        self.W[:, a0:] = rls.W[:, :d]
        self.b[:] = rls.W[:, d]
        # refold the standardisation (as _prepare does) for the adapted columns
        np.multiply(rls.W[:, :d], self._isd_t, out=self._Wraw[:, a0:])
        np.dot(self._Wraw, self._mu_all, out=self._bk)
        np.subtract(self.b, self._bk, out=self._braw)

    def predict(self, counts: np.ndarray) -> np.ndarray:
        """Vectorised equivalent of stepping from a fresh state."""
        X = _lagged((np.asarray(counts, float) - self.mu) / self.sd, self.history)
        return X @ self.W.T + self.b

    # --------------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        return super().metadata() | {"history": self.history, "alpha": self.alpha_,
                                     "adapt_lam": self.adapt_lam,
                                     "adapt_delta": self.adapt_delta,
                                     "adapt_max_dim": self.adapt_max_dim}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Fitted (or, after ``adapt``, recalibrated) weights; copies."""
        return {"W": self.W.copy(), "b": self.b.copy(), "mu": self.mu, "sd": self.sd}

    def load_state_dict(self, state: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        # __init__'s defaults stand in for keys that older model files lack
        opts: dict[str, Any] = {"adapt_lam": 0.999, "adapt_delta": None, "adapt_max_dim": 1025}
        opts |= {k: meta[k] for k in opts if k in meta}
        self._init(int(meta["history"]), float(meta["alpha"]), **opts)
        self.alpha_ = float(meta["alpha"])
        for k, v in state.items():
            setattr(self, k, np.asarray(v, float))
        self._restore_metadata(meta)
        self._prepare()
