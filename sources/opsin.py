"""An opsin-expressing population whose firing follows light.

``units`` neurons fire as Poisson processes; the first ``expressing`` of
them carry ChR2 (the *ensemble*). Light reaching a unit (a holographic target
list: target ids are unit ids; irradiance scaled by each unit's expression
level) opens its channels with ChR2-like kinetics: the open fraction relaxes
to ``I^n / (I^n + EC50^n)`` with ``tau_on_ms`` (~1.5 ms) while rising and
``tau_off_ms`` (~15 ms) while closing, so it saturates at high irradiance.
A unit's rate is ``base * excitability + max_drive_hz * open``, capped at
``max_rate_hz``; excitability drifts slowly (Ornstein-Uhlenbeck, +-~15%) so a
fixed light level does not hold a fixed rate and a clamp has work to do.

Light commands are pulse trains (pulse width, frequency, optional train
duration) that start at the command's arrival; the fraction of each substep
the light is on is computed exactly. Ground truth: ensemble mean rate (Hz),
mean open fraction, irradiance in force.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import EventDraws, SimSource, Step

NS = 1_000_000_000
MS = 1_000_000


@dataclass
class OpsinConfig:
    units: int = 48
    expressing: int = 32
    base_hz: float = 5.0
    max_drive_hz: float = 40.0  # rate added at full opsin activation
    max_rate_hz: float = 60.0
    ec50_mw_mm2: float = 1.0  # ChR2 half activation irradiance
    hill: float = 1.0
    tau_on_ms: float = 1.5
    tau_off_ms: float = 15.0
    expression_sd: float = 0.3  # log-normal spread of light sensitivity
    drift_sd: float = 0.15  # slow excitability drift
    drift_tau_s: float = 5.0
    spot_area_mm2: float = 0.785  # used when a command gives power but no irradiance
    substep_ns: int = 1_000_000
    seed: int = 0


class OpsinSim(SimSource):
    truth_names = ["ensemble_rate_hz", "open_fraction", "irradiance_mw_mm2"]

    def __init__(self, config: OpsinConfig | None = None, **overrides: Any):
        cfg = config or OpsinConfig()
        for k, v in overrides.items():
            setattr(cfg, k, v)
        if not 1 <= cfg.expressing <= cfg.units <= 65535:
            raise ValueError("need 1 <= expressing <= units <= 65535")
        self.cfg = cfg
        self.channels = cfg.units
        self.rng = np.random.default_rng(cfg.seed)
        self._draws = EventDraws(self.rng, cfg.units)
        n = cfg.units
        self.ensemble = list(range(cfg.expressing))
        self.base = cfg.base_hz * self.rng.uniform(0.6, 1.4, n)
        self.gain = np.zeros(n)
        self.gain[: cfg.expressing] = self.rng.lognormal(0.0, cfg.expression_sd, cfg.expressing)
        self.open = np.zeros(n)
        self.lit = np.zeros(n, bool)
        self.t_ns = 0
        self._drift = 0.0
        self._irr = 0.0
        self._pw_ns, self._period_ns, self._t0 = 0, 1, 0
        self._end: int | None = None
        self._rates = self.base.copy()

    # ------------------------------------------------------------ light
    def apply_stim(self, command: dict[str, Any]) -> None:
        if command.get("modality") != "opto":
            return
        targets = [int(i) for i in command.get("targets", []) if 0 <= int(i) < self.channels]
        power = float(command.get("power_mw", 0.0))
        irr = float(command.get("irradiance_mw_mm2", 0.0)) or power / self.cfg.spot_area_mm2
        self.lit[:] = False
        if power <= 0 or not targets:
            self._irr = 0.0
            return
        self.lit[targets] = True
        self._irr = irr
        f = max(float(command.get("frequency_hz", 1.0)), 1e-6)
        self._period_ns = int(NS / f)
        self._pw_ns = min(self._period_ns, int(float(command.get("pulse_width_ms", 0.0)) * MS))
        self._t0 = self.t_ns
        train = float(command.get("train_ms", 0.0))
        self._end = self.t_ns + int(train * MS) if train > 0 else None

    def _on_time(self, t: int) -> int:
        """Cumulative light-on time of the present train from its start to ``t``."""
        if self._end is not None:
            t = min(t, self._end)
        x = t - self._t0
        if x <= 0:
            return 0
        k, r = divmod(x, self._period_ns)
        return k * self._pw_ns + min(r, self._pw_ns)

    # ------------------------------------------------------------ dynamics
    def _substep(self, width: int) -> np.ndarray:
        cfg = self.cfg
        dt_s = width / NS
        a = np.exp(-dt_s / cfg.drift_tau_s)
        self._drift = a * self._drift + np.sqrt(1 - a * a) * self.rng.standard_normal()
        on_frac = 0.0
        if self._irr > 0:
            on_frac = (self._on_time(self.t_ns + width) - self._on_time(self.t_ns)) / width
        irr = self._irr * self.gain * self.lit * on_frac  # mean irradiance per unit
        ih = irr**cfg.hill
        o_inf = ih / (ih + cfg.ec50_mw_mm2**cfg.hill)
        tau = np.where(o_inf > self.open, cfg.tau_on_ms, cfg.tau_off_ms) / 1000
        self.open = o_inf + (self.open - o_inf) * np.exp(-dt_s / tau)
        excit = max(0.0, 1.0 + cfg.drift_sd * self._drift)
        self._rates = np.minimum(self.base * excit + cfg.max_drive_hz * self.open,
                                 cfg.max_rate_hz)
        self.t_ns += width
        return self._rates

    def _truth(self) -> np.ndarray:
        e = self.cfg.expressing
        lit_now = self._irr > 0 and (self._end is None or self.t_ns < self._end)
        return np.array([self._rates[:e].mean(), self.open[:e].mean(),
                         self._irr if lit_now else 0.0])

    def advance(self, dt_ns: int) -> Step:
        t0, end = self.t_ns, self.t_ns + dt_ns
        while self.t_ns < end:
            t = self.t_ns
            width = min(self.cfg.substep_ns, end - t)
            self._draws.draw(self._substep(width), t, width)  # _substep moves the clock
        self.t_ns = t0 + dt_ns
        ids, times = self._draws.take()
        return Step(ids, times, self._truth(), self.t_ns)

    def counts(self, n_bins: int, bin_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Fast batch mode: Poisson counts per bin from the integrated rates."""
        counts = np.empty((n_bins, self.channels))
        truth = np.empty((n_bins, len(self.truth_names)))
        for b in range(n_bins):
            lam = np.zeros(self.channels)
            end = self.t_ns + bin_ns
            while self.t_ns < end:
                width = min(self.cfg.substep_ns, end - self.t_ns)
                lam += self._substep(width) * (width / NS)
            counts[b] = self.rng.poisson(lam)
            truth[b] = self._truth()
        return counts, truth
