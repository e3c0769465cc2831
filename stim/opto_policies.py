"""Optogenetic policies: rate clamp, event-triggered trains, state-to-target mapping."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .commands import OptoCommand
from .policies import Policy

NS = 1_000_000_000


class _OptoPolicy(Policy):
    modality = "opto"

    def __init__(self, targets: Sequence[int] = (0,), wavelength_nm: float = 470.0,
                 pulse_width_ms: float = 5.0, frequency_hz: float = 20.0):
        self.targets = [int(i) for i in targets]
        self.wavelength_nm = float(wavelength_nm)
        self.pulse_width_ms = float(pulse_width_ms)
        self.frequency_hz = float(frequency_hz)

    def _cmd(self, power_mw: float, targets: list[int] | None = None,
             train_ms: float = 0.0) -> OptoCommand:
        return OptoCommand(targets=list(self.targets if targets is None else targets),
                           wavelength_nm=self.wavelength_nm, power_mw=float(power_mw),
                           pulse_width_ms=self.pulse_width_ms, frequency_hz=self.frequency_hz,
                           train_ms=float(train_ms))


class OptoRateClamp(_OptoPolicy):
    """Hold an ensemble's firing rate at a target with PI control of light power.

    ``target_hz`` is a number, or a schedule ``[[t_s, hz], ...]`` (source-clock
    seconds) so a replay asks for the same steps. The default light is
    continuous (pulse width = period): the clamp modulates intensity, as in
    closed-loop optogenetic clamps, rather than pulse timing. A feed-forward
    term ``ff_mw_per_hz`` gives the controller a first guess of the plant gain.
    """

    kind = "opto_rate_clamp"

    def __init__(self, target_hz: float | Sequence[Sequence[float]] = 15.0, kp: float = 0.02,
                 ki: float = 0.1, max_power_mw: float = 5.0, index: int = 1,
                 ff_mw_per_hz: float = 0.0, baseline_hz: float = 0.0, **light):
        light.setdefault("frequency_hz", 40.0)
        light.setdefault("pulse_width_ms", 1000.0 / light["frequency_hz"])
        super().__init__(**light)
        if isinstance(target_hz, int | float):
            target_hz = [[0.0, float(target_hz)]]
        self.schedule = sorted((float(t), float(hz)) for t, hz in target_hz)
        self.kp, self.ki = float(kp), float(ki)
        self.max_power_mw = float(max_power_mw)
        self.index = int(index)
        self.ff, self.baseline = float(ff_mw_per_hz), float(baseline_hz)
        self.reset()

    def reset(self) -> None:
        self.integral = 0.0
        self._t: int | None = None

    def target(self, t_ns: int) -> float:
        hz = self.schedule[0][1]
        for t_s, v in self.schedule:
            if t_ns >= t_s * NS:
                hz = v
        return hz

    def step(self, decoded: np.ndarray, t_ns: int) -> OptoCommand:
        dt = 0.0 if self._t is None else max(0, t_ns - self._t) / NS
        self._t = t_ns
        target = self.target(t_ns)
        err = target - float(decoded[self.index])
        ff = self.ff * max(0.0, target - self.baseline)
        p = ff + self.kp * err + self.ki * self.integral
        saturated = (p >= self.max_power_mw and err > 0) or (p <= 0 and err < 0)
        if not saturated:
            self.integral += err * dt
        return self._cmd(float(np.clip(p, 0.0, self.max_power_mw)))


class EventTriggeredLight(_OptoPolicy):
    """A light train each time ``decoded[index]`` crosses ``threshold`` upward."""

    kind = "event_light"

    def __init__(self, threshold: float = 1.0, index: int = 0, power_mw: float = 2.0,
                 train_ms: float = 200.0, refractory_ms: float = 500.0, **light):
        super().__init__(**light)
        self.threshold, self.index = float(threshold), int(index)
        self.power_mw, self.train_ms = float(power_mw), float(train_ms)
        self.refractory_ns = int(refractory_ms * 1e6)
        self.reset()

    def reset(self) -> None:
        self._above = False
        self._last: int | None = None

    def step(self, decoded: np.ndarray, t_ns: int) -> OptoCommand | None:
        above = float(decoded[self.index]) > self.threshold
        rising, self._above = above and not self._above, above
        if not rising or (self._last is not None and t_ns - self._last < self.refractory_ns):
            return None
        self._last = t_ns
        return self._cmd(self.power_mw, train_ms=self.train_ms)


class StateToTargets(_OptoPolicy):
    """Light the target group of the decoded state (argmax over ``indices``).

    ``groups`` maps a state number (position in ``indices``) to target ids. Below
    ``threshold`` no state is active and the light is off. Requests are made
    only when the active group changes.
    """

    kind = "state_targets"

    def __init__(self, groups: dict[int | str, Sequence[int]], indices: Sequence[int] = (0,),
                 threshold: float = 0.5, power_mw: float = 2.0, **light):
        super().__init__(**light)
        self.groups = {int(k): [int(i) for i in v] for k, v in groups.items()}
        self.indices = [int(i) for i in indices]
        self.threshold, self.power_mw = float(threshold), float(power_mw)
        self.reset()

    def reset(self) -> None:
        self._state: int | None = -1  # -1: nothing requested yet

    def step(self, decoded: np.ndarray, t_ns: int) -> OptoCommand | None:
        vals = np.asarray(decoded)[self.indices]
        k = int(np.argmax(vals))
        state = k if vals[k] > self.threshold and k in self.groups else None
        if state == self._state:
            return None
        self._state = state
        if state is None:
            return self._cmd(0.0, targets=[])
        return self._cmd(self.power_mw, targets=self.groups[state])
