"""Kalman filter decoder (Wu et al. 2006): the baseline every BCI lab runs.

State x_t (e.g. position and velocity) evolves linearly, x_t = A x_{t-1} + w,
and spike counts are a linear, noisy read-out of it, y_t = H x_t + q. A, W, H and
Q are fitted by least squares on a calibration block. With ``steady_state=True``
the gain is iterated to convergence once at fit time, so each step is two
small matrix-vector products.

Online recalibration (``set_adaptation(True)``, then ``adapt(target)`` after
each ``step``) follows the closed-loop decoder adaptation of Dangi et al.
(2014, "recursive maximum likelihood"): the observation model -- H and the
per-channel baseline -- is re-estimated by recursive least squares with a
forgetting factor (``adapt_lam``), regressing each bin's (lagged) counts on
the target state, standardised (:class:`~decoders.recalibration.LinearRLS`,
one shared d = K + 1 regressor, O(N K + K²) per bin). Every
``adapt_refresh`` bins the steady-state gain is re-solved by
``adapt_riccati`` Riccati iterations warm-started from the previous solution
(O(K N²)). A (state dynamics), W and Q stay as fitted. Pure float64 numpy:
replaying the same bins and targets gives bit-identical outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Decoder
from .recalibration import LinearRLS


def _lstsq(X: np.ndarray, Y: np.ndarray, ridge: float) -> np.ndarray:
    """Solve Y ~ X @ B with a small ridge; returns B (X.shape[1], Y.shape[1])."""
    XtX = X.T @ X
    XtX[np.diag_indices_from(XtX)] += ridge * (np.trace(XtX) / max(len(XtX), 1) + 1e-12)
    return np.linalg.solve(XtX, X.T @ Y)


class KalmanDecoder(Decoder):
    kind = "kalman"
    supports_adapt = True

    def __init__(self, steady_state: bool = True, ridge: float = 1e-3, lag: int | str = 0,
                 adapt_lam: float = 0.999, adapt_delta: float = 1.0, adapt_refresh: int = 1,
                 adapt_riccati: int = 2):
        self._init(steady_state, ridge, lag, adapt_lam, adapt_delta, adapt_refresh, adapt_riccati)

    def _init(self, steady_state: bool, ridge: float, lag: int | str, adapt_lam: float,
              adapt_delta: float, adapt_refresh: int, adapt_riccati: int) -> None:
        """Set the hyper-parameters and clear fitted state (``__init__``, ``load_state_dict``)."""
        self.steady_state = steady_state
        self.ridge = ridge
        self.adapt_lam, self.adapt_delta = float(adapt_lam), float(adapt_delta)
        self.adapt_refresh, self.adapt_riccati = int(adapt_refresh), int(adapt_riccati)
        self.rls: LinearRLS | None = None
        self._adapt_on = False
        # bins by which neural activity leads behaviour; "auto" picks 0..3 on held-out data
        self.lag_choice = lag
        self.lag = 0 if lag == "auto" else int(lag)
        self.output_names: list[str] = []

    # --------------------------------------------------------------- fitting
    def fit(self, counts: np.ndarray, targets: np.ndarray, bin_ms: float = 0.0,
            output_names: list[str] | None = None, **_: Any) -> KalmanDecoder:
        if self.lag_choice == "auto":
            self.lag = self._pick_lag(np.asarray(counts, float), np.asarray(targets, float))
        Y = np.asarray(counts, float)
        X = np.asarray(targets, float)
        if self.lag:  # behaviour at t is observed through the counts of bin t - lag
            Y, X = Y[: -self.lag], X[self.lag:]
        if len(Y) != len(X) or len(X) < 3:
            raise ValueError(f"need >= 3 aligned bins, got counts {Y.shape} targets {X.shape}")
        self.n_inputs, self.n_outputs = Y.shape[1], X.shape[1]
        self.bin_ms = bin_ms
        self.output_names = output_names or [f"x{i}" for i in range(self.n_outputs)]
        # Normalise counts so the ridge is scale-free.
        self.y_mean = Y.mean(0)
        self.x_mean = X.mean(0)
        Yc, Xc = Y - self.y_mean, X - self.x_mean
        X0, X1 = Xc[:-1], Xc[1:]
        self.A = _lstsq(X0, X1, self.ridge).T
        self.W = np.cov((X1 - X0 @ self.A.T).T).reshape(self.n_outputs, self.n_outputs)
        self.H = _lstsq(Xc, Yc, self.ridge).T
        R = Yc - Xc @ self.H.T
        self.Q = (R.T @ R) / len(R)
        self.Q[np.diag_indices_from(self.Q)] += 1e-6
        self.P0 = np.cov(Xc.T).reshape(self.n_outputs, self.n_outputs)
        # Very short bins make the fitted process noise nearly singular; a floor far below
        # the state variance keeps the information-form update invertible.
        self.W[np.diag_indices_from(self.W)] += 1e-6 * np.mean(np.diag(self.P0)) + 1e-12
        self._prepare()
        return self

    def _pick_lag(self, counts: np.ndarray, targets: np.ndarray) -> int:
        """Lag (0..3 bins) with the best R² on the last 20 % of the fitting data."""
        cut = int(0.8 * len(counts))
        scores = []
        for lag in range(4):
            trial = KalmanDecoder(self.steady_state, self.ridge, lag)
            pred = trial.fit(counts[:cut], targets[:cut]).predict(counts[cut:])
            y = targets[cut:]
            scores.append(np.mean(1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))
        return int(np.argmax(scores))

    def _prepare(self) -> None:
        n = self.n_outputs
        self._Qinv = np.linalg.inv(self.Q)
        self._HtQinv = self.H.T @ self._Qinv
        self._HtQinvH = self._HtQinv @ self.H
        self.K_ss = None
        if self.steady_state:
            P = self.P0.copy()
            for _ in range(2000):
                Pp = self.A @ P @ self.A.T + self.W
                # Information form keeps the update stable with many channels
                Pn = np.linalg.inv(np.linalg.inv(Pp) + self._HtQinvH)
                if np.abs(Pn - P).max() < 1e-12 * max(1.0, np.abs(P).max()):
                    P = Pn
                    break
                P = Pn
            self.K_ss = P @ self._HtQinv
            # x_t = (I - K H) A x_{t-1} + K y_t
            self._M = (np.eye(n) - self.K_ss @ self.H) @ self.A
            self._P_ss = P
        self.rls = None
        self._adapt_on = False
        self._x = np.zeros(n)
        self._out = np.zeros(n)
        self._tmp = np.zeros(n)
        self._yc = np.zeros(self.n_inputs)
        self._used = np.zeros(self.n_inputs)
        self._delay = np.zeros((self.lag + 1, self.n_inputs))  # ring of the last lag+1 bins
        self.reset()

    # --------------------------------------------------------------- online
    def reset(self) -> None:
        self._x[:] = 0.0
        self._P = self.P0.copy()
        self._delay[:] = self.y_mean  # before the first bin: mean activity
        self._pos = 0

    def step(self, counts: np.ndarray) -> np.ndarray:
        if self.lag:
            self._delay[self._pos] = counts
            self._pos = (self._pos + 1) % (self.lag + 1)
            counts = self._delay[self._pos]  # the bin from ``lag`` steps ago
        np.copyto(self._used, counts)  # the (lagged) bin this step observed, for adapt
        np.subtract(counts, self.y_mean, out=self._yc)
        if self.K_ss is not None:
            np.dot(self._M, self._x, out=self._tmp)
            self._tmp += self.K_ss @ self._yc
            self._x, self._tmp = self._tmp, self._x
        else:
            xp = self.A @ self._x
            Pp = self.A @ self._P @ self.A.T + self.W
            self._P = np.linalg.inv(np.linalg.inv(Pp) + self._HtQinvH)
            K = self._P @ self._HtQinv
            self._x = xp + K @ (self._yc - self.H @ xp)
        np.add(self._x, self.x_mean, out=self._out)
        return self._out

    # --------------------------------------------------------------- adaptation
    def set_adaptation(self, enabled: bool) -> None:
        if enabled and self.rls is None:
            K, N = self.n_outputs, self.n_inputs
            self._x_sd = np.sqrt(np.maximum(np.diag(self.P0), 1e-12))
            self.rls = LinearRLS(np.concatenate([self.H * self._x_sd, np.zeros((N, 1))], 1),
                                 lam=self.adapt_lam, delta=self.adapt_delta)
            self._y_ref = self.y_mean.copy()
            self._zs = np.zeros(K + 1)
            self._zs[-1] = 1.0
            self._pred_n = np.zeros(N)
            self._err_n = np.zeros(N)
            self._since = 0
        self._adapt_on = bool(enabled)

    def adapt(self, target: np.ndarray) -> None:
        """RLS step on the observation model for the last stepped bin."""
        if not self._adapt_on:
            return
        K = self.n_outputs
        z = self._zs[:K]
        np.subtract(self._adapt_target(target), self.x_mean, out=z)
        if not np.isfinite(z).all():
            return  # the target is the regressor here: no partial update
        z /= self._x_sd
        rls = self.rls
        assert rls is not None, "set_adaptation(True) creates rls before _adapt_on is set"
        W = rls.W
        np.dot(W, self._zs, out=self._pred_n)
        np.subtract(self._used, self._y_ref, out=self._err_n)
        self._err_n -= self._pred_n
        rls.update(self._zs, self._err_n)
        np.divide(W[:, :K], self._x_sd, out=self.H)
        np.add(self._y_ref, W[:, K], out=self.y_mean)
        self._since += 1
        if self._since >= self.adapt_refresh:
            self._since = 0
            self._refresh_gain()

    def _refresh_gain(self) -> None:
        """Gain for the current H: warm-started Riccati iterations (information form)."""
        np.dot(self.H.T, self._Qinv, out=self._HtQinv)
        np.dot(self._HtQinv, self.H, out=self._HtQinvH)
        if self.K_ss is None:
            return
        P = self._P_ss
        for _ in range(self.adapt_riccati):
            Pp = self.A @ P @ self.A.T + self.W
            P = np.linalg.inv(np.linalg.inv(Pp) + self._HtQinvH)
        self._P_ss = P
        np.dot(P, self._HtQinv, out=self.K_ss)
        self._M = (np.eye(self.n_outputs) - self.K_ss @ self.H) @ self.A

    # --------------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        return super().metadata() | {
            "steady_state": self.steady_state, "ridge": self.ridge, "lag": self.lag,
            "adapt_lam": self.adapt_lam, "adapt_delta": self.adapt_delta,
            "adapt_refresh": self.adapt_refresh, "adapt_riccati": self.adapt_riccati,
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """Fitted (or, after ``adapt``, recalibrated H and baseline) model; copies."""
        return {k: getattr(self, k).copy()
                for k in ("A", "W", "H", "Q", "P0", "x_mean", "y_mean")}

    def load_state_dict(self, state: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        # __init__'s defaults stand in for keys that older model files lack
        opts: dict[str, Any] = {"adapt_lam": 0.999, "adapt_delta": 1.0, "adapt_refresh": 1,
                                "adapt_riccati": 2}
        opts |= {k: meta[k] for k in opts if k in meta}
        self._init(meta.get("steady_state", True), meta.get("ridge", 1e-3), meta.get("lag", 0),
                   **opts)
        for k, v in state.items():
            setattr(self, k, np.asarray(v, float))
        self._restore_metadata(meta)
        self._prepare()
