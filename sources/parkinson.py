"""A Parkinsonian population whose beta synchrony DBS can suppress.

Each unit is locked to one phase oscillator of a noisy Kuramoto population
(natural frequencies around 20 Hz, in the 13-30 Hz beta band) and fires as an
inhomogeneous Poisson process with rate ``base * (1 + depth * cos(theta))``.
When the oscillators synchronise, the population spike count oscillates at
beta; when they desynchronise the rhythms cancel. The coupling strength
wanders slowly (log-normal, Ornstein-Uhlenbeck), crossing the synchronisation
threshold, so beta comes in bursts of a few hundred ms to seconds, as in
Parkinsonian subthalamic recordings.

DBS acts as desynchronisation proportional to delivered charge: the charge
rate I * PW * f (uC/s) drives an effect ``e`` through first-order kinetics
(rise ``tau_on_s``, decay ``tau_off_s``: beta is suppressed within a few
hundred ms of DBS onset and returns with a lag after it stops), and the
effective coupling is ``K * max(0, 1 - e)``. Ground truth: order parameter
(``sync``), coupling, DBS effect, amplitude in force and a beta "LFP".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import EventDraws, SimSource, Step

NS = 1_000_000_000


@dataclass
class ParkinsonConfig:
    units: int = 64
    beta_hz: float = 20.0  # centre of the natural frequencies
    beta_sd_hz: float = 1.5  # their spread
    phase_noise: float = 4.0  # rad^2/s phase diffusion
    coupling: float = 24.0  # median coupling, rad/s (critical coupling is ~ 18)
    coupling_sd: float = 0.45  # log-normal spread of the slow coupling drift
    coupling_tau_s: float = 0.6  # how long a burst-prone episode lasts
    base_hz: float = 20.0  # mean firing rate
    depth: float = 0.9  # phase locking of each unit to its oscillator
    full_effect_uc_s: float = 30.0  # charge rate that would abolish coupling
    tau_on_s: float = 0.15
    tau_off_s: float = 0.4
    substep_ns: int = 1_000_000
    seed: int = 0


class ParkinsonSim(SimSource):
    truth_names = ["sync", "coupling", "dbs_effect", "dbs_ma", "lfp"]

    def __init__(self, config: ParkinsonConfig | None = None, **overrides: Any):
        cfg = config or ParkinsonConfig()
        for k, v in overrides.items():
            setattr(cfg, k, v)
        if not 2 <= cfg.units <= 65535:
            raise ValueError(f"units must be 2..65535, got {cfg.units}")
        self.cfg = cfg
        self.channels = cfg.units
        self.rng = np.random.default_rng(cfg.seed)
        self._draws = EventDraws(self.rng, cfg.units)
        n = cfg.units
        self.omega = 2 * np.pi * self.rng.normal(cfg.beta_hz, cfg.beta_sd_hz, n)
        self.theta = self.rng.uniform(0, 2 * np.pi, n)
        self.base = cfg.base_hz * self.rng.uniform(0.7, 1.3, n)
        self.t_ns = 0
        self._ou = 0.0  # slow coupling drift, unit variance
        self.effect = 0.0
        self.charge_rate_uc_s = 0.0
        self.amplitude_ma = 0.0
        self._sync = 0.0
        self._lfp = 0.0

    # ------------------------------------------------------------ stimulation
    def apply_stim(self, command: dict[str, Any]) -> None:
        if command.get("modality") != "dbs":
            return
        amp = max(0.0, float(command.get("amplitude_ma", 0.0)))
        pw = float(command.get("pulse_width_us", 0.0))
        f = float(command.get("frequency_hz", 0.0))
        self.amplitude_ma = amp
        self.charge_rate_uc_s = amp * pw * f * 1e-3  # mA * us = nC per phase

    # ------------------------------------------------------------ dynamics
    def coupling_now(self) -> float:
        return self.cfg.coupling * float(np.exp(self.cfg.coupling_sd * self._ou))

    def _substep(self, dt_s: float) -> np.ndarray:
        """Advance the oscillators by ``dt_s``; return each unit's mean rate (Hz) over it."""
        cfg, n = self.cfg, self.cfg.units
        a = np.exp(-dt_s / cfg.coupling_tau_s)
        self._ou = a * self._ou + np.sqrt(1 - a * a) * self.rng.standard_normal()
        drive = self.charge_rate_uc_s / cfg.full_effect_uc_s
        tau = cfg.tau_on_s if drive > self.effect else cfg.tau_off_s
        self.effect = drive + (self.effect - drive) * np.exp(-dt_s / tau)
        k = self.coupling_now() * max(0.0, 1.0 - self.effect)
        z = np.exp(1j * self.theta).mean()
        r, psi = abs(z), np.angle(z)
        theta0 = self.theta
        self.theta = (theta0 + dt_s * (self.omega + k * r * np.sin(psi - theta0))
                      + np.sqrt(2 * cfg.phase_noise * dt_s) * self.rng.standard_normal(n))
        self._sync, self._lfp = r, r * np.cos(psi)
        mid = 0.5 * (theta0 + self.theta)
        return self.base * (1 + cfg.depth * np.cos(mid))

    def _truth(self) -> np.ndarray:
        return np.array([self._sync, self.coupling_now(), self.effect, self.amplitude_ma,
                         self._lfp])

    def advance(self, dt_ns: int) -> Step:
        sub = self.cfg.substep_ns
        t0, t = self.t_ns, self.t_ns
        while t < t0 + dt_ns:
            width = min(sub, t0 + dt_ns - t)
            self._draws.draw(self._substep(width / NS), t, width)
            t += width
        self.t_ns = t0 + dt_ns
        ids, times = self._draws.take()
        return Step(ids, times, self._truth(), self.t_ns)

    def counts(self, n_bins: int, bin_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Fast batch mode: Poisson counts per bin from the integrated rates."""
        counts = np.empty((n_bins, self.channels))
        truth = np.empty((n_bins, len(self.truth_names)))
        sub = self.cfg.substep_ns
        for b in range(n_bins):
            lam = np.zeros(self.channels)
            done = 0
            while done < bin_ns:
                width = min(sub, bin_ns - done)
                lam += self._substep(width / NS) * (width / NS)
                done += width
            counts[b] = self.rng.poisson(lam)
            self.t_ns += bin_ns
            truth[b] = self._truth()
        return counts, truth
