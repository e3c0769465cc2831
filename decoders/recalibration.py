"""Online recalibration of the SNN readout by recursive least squares (RLS).

Recordings drift within a session (units die, tuning shifts), so the decoder
must follow a target signal (cursor intention, ground truth in simulation)
without ever running BPTT in the loop. Only the leaky readout is updated: it
is linear in its weights, and its exact eligibility trace per output is the
presynaptic activity (hidden spikes and membrane potentials, plus a constant
for the bias) low-passed with that output's own leak ``kappa`` -- the e-prop
trace of a leaky readout. RLS on these traces converges in a few hundred bins
and forgets old data with factor ``lam`` (memory ~ 1 / (1 - lam) bins).

Membrane potentials are (filtered) random projections of the inputs, so a
new linear readout of them can undo rotated tuning and silenced units.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.blas import dger


class ReadoutRLS:
    """RLS on the readout of an :class:`~decoders.snn.SNNKernel`; ``enabled`` switches it."""

    def __init__(self, kernel, lam: float = 0.999, delta: float = 10.0, enabled: bool = True):
        self.lam, self.delta, self.enabled = float(lam), float(delta), enabled
        H, K = kernel.H, kernel.n_out
        self.trace = getattr(kernel, "w_a", None) is not None  # readout of a as well
        self.d = (3 if self.trace else 2) * H + 1
        self.kappa = kernel.kappa.numpy().astype(np.float64)
        # float64 master copy of [w_s | w_v (| w_a) | b_out]; written back to the kernel
        parts = [kernel.w_s.numpy(), kernel.w_v.numpy()]
        if self.trace:
            parts.append(kernel.w_a.numpy())
        self.W = np.concatenate(parts + [kernel.b_out.numpy()[:, None]], 1).astype(np.float64)
        self.P = np.stack([np.eye(self.d) / self.delta for _ in range(K)])
        self.z = np.zeros((K, self.d))  # eligibility traces, one per output
        self.f = np.zeros(self.d)
        self.f[-1] = 1.0
        self._Pz = np.zeros(self.d)
        self.n_updates = 0

    def reset(self) -> None:
        """New run: clear the traces (the learned weights and P are kept)."""
        self.z[:] = 0.0

    def after_step(self, kernel, y: np.ndarray) -> None:
        """Update the eligibility traces with this bin's hidden activity."""
        if not self.enabled:
            return
        H = kernel.H
        self.f[:H] = kernel.s.numpy()
        self.f[H:2 * H] = kernel.v.numpy()
        if self.trace:
            self.f[2 * H:3 * H] = kernel.a.numpy()
        self.z *= self.kappa[:, None]
        self.z += (1.0 - self.kappa)[:, None] * self.f

    def adapt(self, kernel, target: np.ndarray) -> None:
        """One RLS step per output towards ``target`` for the last stepped bin."""
        if not self.enabled:
            return
        y = kernel.y.numpy()
        H = kernel.H
        self.n_updates += 1
        for k in range(len(self.W)):
            z, P = self.z[k], self.P[k]
            err = float(target[k]) - float(y[k])
            if not np.isfinite(err):
                continue  # missing target: skip this output
            np.dot(P, z, out=self._Pz)
            denom = self.lam + float(z @ self._Pz)
            gain = self._Pz / denom
            self.W[k] += gain * err
            P -= np.outer(gain, self._Pz)
            P /= self.lam
            y[k] += err * (1.0 - self.lam / denom)  # keep the output state consistent
        kernel.w_s.numpy()[:] = self.W[:, :H]
        kernel.w_v.numpy()[:] = self.W[:, H:2 * H]
        if self.trace:
            kernel.w_a.numpy()[:] = self.W[:, 2 * H:3 * H]
        kernel.b_out.numpy()[:] = self.W[:, -1]


class InputCentering:
    """Slow re-centring of an SNN's inputs on their running means.

    The SNN sees standardised inputs ``(x - mu) / sd``, folded into its input
    weights and bias (``b_in = b - W mu``). When a unit falls silent its input
    reads ``-mu / sd`` for ever: a constant current into every hidden neuron
    that no readout can undo. This keeps an exponential running mean ``m`` of
    each input over the adapted bins (time constant ``tau_bins``) and, every
    ``every`` bins, sets ``b_in = b0 + W (mu - m)``: the inputs are centred on
    what they are now, as the network was trained on centred inputs. Pure
    float numpy in place (replays bit for bit); the kernel's bias buffer is
    written, its weights are not.
    """

    def __init__(self, kernel, mu: np.ndarray, tau_bins: float, every: int):
        self.b0 = kernel.b_in.numpy().copy()  # the bias centred on mu
        self.mu = np.asarray(mu, np.float64).copy()
        self.m = self.mu.copy()
        self.a = 1.0 / max(1.0, float(tau_bins))
        self.every = max(1, int(every))
        self._ax = np.zeros_like(self.m)
        self._d = np.zeros(len(self.mu), np.float32)
        self.n_updates = 0

    def update(self, kernel) -> None:
        """One adapted bin: the counts ``kernel`` just stepped join the running means."""
        np.multiply(kernel.x.numpy(), self.a, out=self._ax)
        self.m *= 1.0 - self.a
        self.m += self._ax
        self.n_updates += 1
        if self.n_updates % self.every == 0:
            np.subtract(self.mu, self.m, out=self._d, casting="same_kind")
            b_in = kernel.b_in.numpy()  # the kernel's own bias buffer, written in place
            np.dot(kernel.w_in.numpy(), self._d, out=b_in)
            b_in += self.b0


class LinearRLS:
    """RLS for ``y ≈ W z`` when every row of ``W`` shares the regressor ``z``.

    Used for the readouts of the GRU/LSTM decoders (z = [hidden state, 1]),
    the Wiener filter (z = [standardised count history, 1]) and the Kalman
    observation model (rows = channels, z = [standardised state, 1]). One
    inverse-correlation matrix ``P`` (d x d) serves all rows, so an update
    costs O(d² + K d). Everything runs in place on buffers allocated here;
    the arithmetic is plain float64 numpy, so the same inputs give
    bit-identical weights (recordings replay exactly).

    ``lam`` is the forgetting factor (memory ~ 1 / (1 - lam) updates). With
    ``lam < 1`` directions the data never excites (a silenced unit) would
    make ``P`` grow without bound ("wind-up"); ``P`` is only divided by
    ``lam`` while its trace stays below ``max_trace_factor`` times its
    initial trace.
    """

    def __init__(self, W: np.ndarray, lam: float = 0.999, delta: float = 1.0,
                 max_trace_factor: float = 100.0):
        self.lam, self.delta = float(lam), float(delta)
        self.W = np.array(W, dtype=np.float64, order="C")  # (K, d), updated in place
        K, d = self.W.shape
        self.P = np.eye(d) / self.delta
        self.max_trace = max_trace_factor * d / self.delta
        self._Pz = np.zeros(d)
        self._err = np.zeros(K)
        self.n_updates = 0

    def update(self, z: np.ndarray, err: np.ndarray) -> None:
        """One step: ``err = target - W z`` (K,) for regressor ``z`` (d,).

        Non-finite errors (missing targets) leave their row unchanged.
        """
        np.copyto(self._err, err)
        bad = ~np.isfinite(self._err)
        if bad.all():
            return
        if bad.any():
            self._err[bad] = 0.0
        Pz = self._Pz
        np.dot(self.P, z, out=Pz)
        inv = 1.0 / (self.lam + float(z @ Pz))
        # rank-1 updates in place (BLAS ger on the transposed, Fortran-ordered views):
        # W += err (P z)ᵀ / denom;  P -= (P z)(P z)ᵀ / denom  (P is symmetric)
        dger(inv, Pz, self._err, a=self.W.T, overwrite_a=1)
        dger(-inv, Pz, Pz, a=self.P.T, overwrite_a=1)
        if np.trace(self.P) < self.max_trace:  # anti-wind-up
            self.P *= 1.0 / self.lam
        self.n_updates += 1
