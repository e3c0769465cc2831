"""DBS policies on a biomarker (beta band power): open loop, threshold, Percept-style, PI.

Each reads one decoded value (``index``, default 0: the biomarker decoder's
``beta_power``) and asks for an amplitude. Ramps here shape the *request*;
the guard enforces its own slew limit on top, so a policy that ramps faster
than the limits allow is simply slowed down, never obeyed.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .commands import DBSCommand
from .policies import Policy

NS = 1_000_000_000


class _DBSPolicy(Policy):
    """Shared pulse shape and the time bookkeeping every DBS policy needs."""

    def __init__(self, pulse_width_us: float = 60.0, frequency_hz: float = 130.0,
                 contacts: tuple[int, ...] | list[int] = (1,), index: int = 0):
        self.pulse_width_us = float(pulse_width_us)
        self.frequency_hz = float(frequency_hz)
        self.contacts = [int(c) for c in contacts]
        self.index = int(index)
        self._t: int | None = None

    def _dt(self, t_ns: int) -> float:
        dt = 0.0 if self._t is None else max(0, t_ns - self._t) / NS
        self._t = t_ns
        return dt

    def _cmd(self, amplitude_ma: float) -> DBSCommand:
        return DBSCommand(amplitude_ma=float(amplitude_ma), pulse_width_us=self.pulse_width_us,
                          frequency_hz=self.frequency_hz, contacts=list(self.contacts))

    def reset(self) -> None:
        self._t = None


def _toward(x: float, target: float, rate: float, dt: float) -> float:
    step = rate * dt
    return min(target, x + step) if target > x else max(target, x - step)


class ContinuousDBS(_DBSPolicy):
    """Conventional open-loop DBS: the baseline adaptive policies are judged against."""

    kind = "continuous_dbs"

    def __init__(self, amplitude_ma: float = 3.0, **shape):
        super().__init__(**shape)
        self.amplitude_ma = float(amplitude_ma)

    def step(self, decoded: np.ndarray, t_ns: int) -> DBSCommand:
        return self._cmd(self.amplitude_ma)


class SingleThresholdDBS(_DBSPolicy):
    """On/off aDBS (Little et al. 2013): stimulate while the biomarker is above threshold.

    The biomarker must stay above ``threshold`` for ``onset_ms`` to switch on,
    and below it for ``termination_ms`` to switch off, so brief crossings do
    not toggle stimulation. The requested amplitude ramps at ``ramp_ma_per_s``.
    """

    kind = "single_threshold_dbs"

    def __init__(self, threshold: float = 1.0, amplitude_ma: float = 3.0,
                 onset_ms: float = 50.0, termination_ms: float = 200.0,
                 ramp_ma_per_s: float = 5.0, **shape):
        super().__init__(**shape)
        self.threshold = float(threshold)
        self.amplitude_ma = float(amplitude_ma)
        self.onset_s = onset_ms / 1000
        self.termination_s = termination_ms / 1000
        self.ramp = float(ramp_ma_per_s)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.on = False
        self._pending = 0.0  # how long the biomarker has argued for a switch
        self.amp = 0.0

    def step(self, decoded: np.ndarray, t_ns: int) -> DBSCommand:
        dt = self._dt(t_ns)
        above = float(decoded[self.index]) > self.threshold
        if above != self.on:
            self._pending += dt
            if self._pending >= (self.onset_s if above else self.termination_s):
                self.on, self._pending = above, 0.0
        else:
            self._pending = 0.0
        self.amp = _toward(self.amp, self.amplitude_ma if self.on else 0.0, self.ramp, dt)
        return self._cmd(self.amp)


class DualThresholdDBS(_DBSPolicy):
    """Percept-style aDBS: band power averaged over a window, two thresholds.

    Above ``upper`` (for ``onset_ms``) the amplitude ramps up to ``max_ma``;
    below ``lower`` (for ``termination_ms``) it ramps down to ``min_ma``;
    in between it holds, so the amplitude settles where the biomarker sits
    inside the band: the least stimulation that keeps beta in check.
    """

    kind = "dual_threshold_dbs"

    def __init__(self, lower: float = 0.5, upper: float = 1.0, min_ma: float = 0.0,
                 max_ma: float = 3.0, average_ms: float = 200.0, onset_ms: float = 0.0,
                 termination_ms: float = 0.0, ramp_up_ma_per_s: float = 2.5,
                 ramp_down_ma_per_s: float = 2.5, bin_ms: float = 1.0, **shape):
        super().__init__(**shape)
        if not lower <= upper or not min_ma <= max_ma:
            raise ValueError("need lower <= upper and min_ma <= max_ma")
        self.lower, self.upper = float(lower), float(upper)
        self.min_ma, self.max_ma = float(min_ma), float(max_ma)
        self.n_avg = max(1, round(average_ms / bin_ms))
        self.onset_s, self.termination_s = onset_ms / 1000, termination_ms / 1000
        self.up, self.down = float(ramp_up_ma_per_s), float(ramp_down_ma_per_s)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._buf: deque[float] = deque(maxlen=self.n_avg)
        self._sum = 0.0
        self._state = 0  # +1 ramping up, -1 ramping down, 0 hold
        self._pending = (0, 0.0)
        self.amp = self.min_ma

    def average(self, x: float) -> float:
        if len(self._buf) == self._buf.maxlen:
            self._sum -= self._buf[0]
        self._buf.append(x)
        self._sum += x
        return self._sum / len(self._buf)

    def step(self, decoded: np.ndarray, t_ns: int) -> DBSCommand:
        dt = self._dt(t_ns)
        b = self.average(float(decoded[self.index]))
        zone = 1 if b > self.upper else (-1 if b < self.lower else 0)
        if zone == 0:
            self._state, self._pending = 0, (0, 0.0)
        elif zone != self._state:
            waited = self._pending[1] + dt if self._pending[0] == zone else 0.0
            self._pending = (zone, waited)
            if waited >= (self.onset_s if zone > 0 else self.termination_s):
                self._state, self._pending = zone, (0, 0.0)
        if self._state > 0:
            self.amp = _toward(self.amp, self.max_ma, self.up, dt)
        elif self._state < 0:
            self.amp = _toward(self.amp, self.min_ma, self.down, dt)
        return self._cmd(self.amp)


class ProportionalDBS(_DBSPolicy):
    """PI control of the biomarker toward ``target`` (amplitude rises with excess beta).

    Conditional integration (no integration while saturated) prevents windup.
    """

    kind = "pi_dbs"

    def __init__(self, target: float = 0.5, kp: float = 1.0, ki: float = 1.0,
                 min_ma: float = 0.0, max_ma: float = 3.0, **shape):
        super().__init__(**shape)
        self.target, self.kp, self.ki = float(target), float(kp), float(ki)
        self.min_ma, self.max_ma = float(min_ma), float(max_ma)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.integral = 0.0

    def step(self, decoded: np.ndarray, t_ns: int) -> DBSCommand:
        dt = self._dt(t_ns)
        err = float(decoded[self.index]) - self.target
        amp = self.kp * err + self.ki * self.integral
        saturated = (amp >= self.max_ma and err > 0) or (amp <= self.min_ma and err < 0)
        if not saturated:
            self.integral += err * dt
        return self._cmd(float(np.clip(amp, self.min_ma, self.max_ma)))
