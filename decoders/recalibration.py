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


class ReadoutRLS:
    """RLS on the readout of an :class:`~decoders.snn.SNNKernel`; ``enabled`` switches it."""

    def __init__(self, kernel, lam: float = 0.999, delta: float = 10.0, enabled: bool = True):
        self.lam, self.delta, self.enabled = float(lam), float(delta), enabled
        H, K = kernel.H, kernel.n_out
        self.d = 2 * H + 1
        self.kappa = kernel.kappa.numpy().astype(np.float64)
        # float64 master copy of [w_s | w_v | b_out]; written back to the kernel
        self.W = np.concatenate([kernel.w_s.numpy(), kernel.w_v.numpy(),
                                 kernel.b_out.numpy()[:, None]], 1).astype(np.float64)
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
        kernel.b_out.numpy()[:] = self.W[:, -1]
