"""Simulated motor cortex during centre-out reaching.

N units with cosine tuning to hand velocity (Georgopoulos 1982) fire as
inhomogeneous Poisson processes. The hand reaches from the centre to one of
``n_targets`` targets on a circle with a minimum-jerk profile, holds, returns
and holds again. Ground truth is [x, y, vx, vy] (cm, cm/s).

``drift()`` rotates the preferred directions and silences a fraction of units
mid-run: the non-stationarity that online recalibration must recover from.
``drift_at_s`` schedules it on the source clock (``spikeloop sim --drift-at``), so
every runner of the source (live publisher, in-process session, batch counts)
drifts at the same source time; the drift is logged when it happens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .base import EventDraws, SimSource, Step

NS = 1_000_000_000

log = logging.getLogger(__name__)


@dataclass
class MotorConfig:
    units: int = 96
    baseline_hz: float = 12.0
    modulation_hz: float = 10.0  # rate change per unit of normalised velocity along the PD
    radius_cm: float = 10.0
    reach_s: float = 0.8
    hold_s: float = 0.4
    n_targets: int = 8
    substep_ns: int = 1_000_000  # rate resolution for event generation
    seed: int = 0
    drift_at_s: float | None = None  # source time of a scheduled drift() (None: never)
    drift_deg: float = 30.0  # ... rotating every preferred direction by this much
    drift_silence: float = 0.2  # ... and silencing this fraction of the units


class MotorCortexSim(SimSource):
    truth_names = ["x", "y", "vx", "vy"]

    def __init__(self, config: MotorConfig | None = None, **overrides):
        cfg = config or MotorConfig()
        for k, v in overrides.items():
            setattr(cfg, k, v)
        if not 1 <= cfg.units <= 65535:
            raise ValueError(f"units must be 1..65535, got {cfg.units}")
        if cfg.drift_at_s is not None and not cfg.drift_at_s >= 0:
            raise ValueError(f"drift_at_s must be >= 0 s of source time, got {cfg.drift_at_s}")
        if not 0.0 <= cfg.drift_silence <= 1.0:
            raise ValueError(f"drift_silence is a fraction of the units (0..1), "
                             f"got {cfg.drift_silence}")
        self.cfg = cfg
        self.channels = cfg.units
        self.rng = np.random.default_rng(cfg.seed)
        self._draws = EventDraws(self.rng, cfg.units)
        n = cfg.units
        self.pd = self.rng.uniform(0, 2 * np.pi, n)
        self.base = cfg.baseline_hz * self.rng.uniform(0.5, 1.5, n)
        self.depth = cfg.modulation_hz * self.rng.uniform(0.5, 1.5, n)
        self.gain = np.ones(n)  # 0 for silenced units
        self._vmax = 1.875 * cfg.radius_cm / cfg.reach_s  # peak min-jerk speed
        self._set_tuning()
        self.t_ns = 0
        # the scheduled drift, pending until the source clock reaches it
        self._drift_ns = None if cfg.drift_at_s is None else int(round(cfg.drift_at_s * NS))
        self.drifted_at_ns: int | None = None
        self._segment_start_ns = 0
        self._segments = self._new_trial()

    # ------------------------------------------------------------ trajectory
    def _new_trial(self) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Segments (duration_s, start, end): reach out, hold, reach back, hold."""
        c = self.cfg
        ang = 2 * np.pi * self.rng.integers(c.n_targets) / c.n_targets
        target = c.radius_cm * np.array([np.cos(ang), np.sin(ang)])
        home = np.zeros(2)
        return [(c.reach_s, home, target), (c.hold_s, target, target),
                (c.reach_s, target, home), (c.hold_s, home, home)]

    def _kinematics(self, t_ns: int) -> np.ndarray:
        """Position and velocity at t_ns (advancing through trials as needed)."""
        while True:
            dur, p0, p1 = self._segments[0]
            tau = (t_ns - self._segment_start_ns) / NS / dur
            if tau <= 1.0:
                break
            self._segment_start_ns += int(dur * NS)
            self._segments.pop(0)
            if not self._segments:
                self._segments = self._new_trial()
        tau = max(tau, 0.0)
        s = 10 * tau**3 - 15 * tau**4 + 6 * tau**5
        ds = (30 * tau**2 - 60 * tau**3 + 30 * tau**4) / dur
        return np.concatenate([p0 + (p1 - p0) * s, (p1 - p0) * ds])

    # ------------------------------------------------------------ neurons
    def _set_tuning(self) -> None:
        self._cos = np.cos(self.pd) * self.depth * self.gain / self._vmax
        self._sin = np.sin(self.pd) * self.depth * self.gain / self._vmax
        self._b = self.base * self.gain

    def rates(self, kin: np.ndarray) -> np.ndarray:
        """Firing rates (Hz) of all units for kinematics [x, y, vx, vy]."""
        return np.maximum(self._b + self._cos * kin[2] + self._sin * kin[3], 0.0)

    def drift(self, rotate_deg: float = 30.0, silence_frac: float = 0.2) -> None:
        """Rotate every preferred direction and silence a random fraction of units."""
        self.pd = self.pd + np.deg2rad(rotate_deg)
        k = int(round(silence_frac * self.cfg.units))
        self.gain[self.rng.choice(self.cfg.units, k, replace=False)] = 0.0
        self._set_tuning()

    def _drift_if_due(self, t_ns: int) -> None:
        """Apply the scheduled drift once the source clock reaches ``drift_at_s``."""
        if self._drift_ns is None or t_ns < self._drift_ns:
            return
        c = self.cfg
        self._drift_ns = None
        silent = int((self.gain == 0).sum())
        self.drift(c.drift_deg, c.drift_silence)
        self.drifted_at_ns = t_ns
        log.info("motor source drifted at %.3f s (source clock): preferred directions "
                 "rotated %g deg, %d of %d units silenced", t_ns / NS, c.drift_deg,
                 int((self.gain == 0).sum()) - silent, c.units)

    def advance(self, dt_ns: int) -> Step:
        sub = self.cfg.substep_ns
        t0 = self.t_ns
        t = t0
        while t < t0 + dt_ns:
            self._drift_if_due(t)
            width = min(sub, t0 + dt_ns - t)
            self._draws.draw(self.rates(self._kinematics(t + width // 2)), t, width)
            t += width
        self.t_ns = t0 + dt_ns
        truth = self._kinematics(self.t_ns)
        ids, times = self._draws.take()
        return Step(ids, times, truth, self.t_ns)

    def counts(self, n_bins: int, bin_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Fast batch mode: Poisson counts per bin at the bin's mid-point rate."""
        counts = np.empty((n_bins, self.channels))
        truth = np.empty((n_bins, 4))
        for b in range(n_bins):
            self._drift_if_due(self.t_ns)
            kin = self._kinematics(self.t_ns + bin_ns // 2)
            counts[b] = self.rng.poisson(self.rates(kin) * (bin_ns / NS))
            self.t_ns += bin_ns
            truth[b] = self._kinematics(self.t_ns)
        return counts, truth
