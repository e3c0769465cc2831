"""A closed loop in two clocks, and an independent checker of what is in force.

Written from ``docs/stimulation.md`` alone: it imports the public guard and
monitor APIs to *drive* them, never their helpers. :class:`World` runs
guard (source clock) -> monitor (wall clock) -> a model stimulator, through
source restarts, clock leaps, backlogs (many bins in little wall time),
stalls, arm/disarm, safe states and limit changes. :class:`Physics` is the
checker: it replays what the stimulator was told in wall time (train ends,
on-periods, tissue heating, amplitude in force) and counts every violation of
the documented bounds in ``violations`` by limit.

Used by ``tests/test_guard_states.py`` (hypothesis state machine, short) and
``bench/guard_states.py`` (random walk, long).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from typing import Any

import numpy as np

from stim.audit import outcome_to_dict
from stim.commands import DBSCommand, OptoCommand
from stim.guard import SafetyGuard
from stim.limits import SafetyLimits
from stim.monitor import PhysicalMonitor

MS = 1_000_000
S = 1_000_000_000
REL = 1e-9


# ------------------------------------------------------------------ random inputs
def random_limits(rng: random.Random) -> SafetyLimits:
    """Valid limits across their ranges (tight and loose), fallback 0 or not."""
    def pair(lo: float, hi: float) -> tuple[float, float]:
        a, b = rng.uniform(lo, hi), rng.uniform(lo, hi)
        return min(a, b), max(a, b)

    pw, f = pair(10, 600), pair(1, 400)
    lpw, lf = pair(0.5, 60), pair(0.5, 150)
    lf = (min(lf[0], 999 / lpw[0]), lf[1])
    wd = rng.uniform(10, 300)
    d: dict[str, Any] = dict(
        max_amplitude_ma=rng.uniform(0.5, 8),
        min_pulse_width_us=pw[0], max_pulse_width_us=pw[1],
        min_frequency_hz=f[0], max_frequency_hz=f[1],
        n_contacts=rng.randint(1, 6),
        electrode_area_cm2=rng.uniform(0.01, 0.5),
        max_charge_per_phase_uc=rng.uniform(0.1, 5),
        max_charge_density_uc_cm2=rng.uniform(5, 60),
        shannon_k_max=rng.uniform(1.0, 2.2),
        max_slew_ma_per_s=rng.choice([rng.uniform(1, 50), 1000.0]),
        min_ramp_ms=rng.choice([0.0, rng.uniform(0, 1000)]),
        ramp_step_ms=rng.uniform(1, 50),
        max_duty_cycle=rng.choice([1.0, 0.5, rng.uniform(0.1, 1)]),
        duty_window_s=rng.choice([0.5, 2.0, rng.uniform(0.2, 5)]),
        max_continuous_on_s=rng.choice([0.0, 0.3, rng.uniform(0.05, 2)]),
        min_interval_ms=rng.choice([0.0, 250.0, rng.uniform(0, 400)]),
        max_power_mw=rng.uniform(1, 40),
        max_irradiance_mw_mm2=rng.uniform(1, 40),
        spot_area_mm2=rng.uniform(0.1, 2),
        min_light_pulse_ms=lpw[0], max_light_pulse_ms=lpw[1],
        min_light_frequency_hz=lf[0], max_light_frequency_hz=lf[1],
        max_targets=rng.randint(1, 8),
        max_temp_rise_c=rng.uniform(0.2, 1.5),
        heat_c_per_mw=rng.uniform(0.02, 0.5),
        thermal_tau_s=rng.uniform(0.5, 8),
        thermal_horizon_s=wd / 1000 + rng.uniform(0, 2),
        watchdog_ms=wd,
        max_clock_jump_ms=rng.choice([1000.0, rng.uniform(50, 3000)]),
    )
    lim = SafetyLimits(**d)
    cap = lim.max_safe_amplitude_ma(lim.min_pulse_width_us)
    d["fallback_amplitude_ma"] = rng.choice([0.0, 0.0, 0.5, 1.0]) * cap
    return SafetyLimits(**d)


def random_request(rng: random.Random, modality: str) -> Any:
    """A policy's request: mostly sane, sometimes odd (wrong type, NaN, numpy, iterators)."""
    if rng.random() < 0.05:  # the other modality
        modality = "opto" if modality == "dbs" else "dbs"
    r = rng.random()
    num = (lambda x: np.float32(x)) if r < 0.1 else float
    if modality == "dbs":
        contacts: Any = rng.sample(range(4), rng.randint(1, 3))
        if r > 0.97:
            contacts = iter(contacts)
        elif r > 0.95:
            contacts = []
        amp = rng.choice([0.0, rng.uniform(0, 12), rng.uniform(0, 4), rng.uniform(0, 4)])
        if r > 0.99:
            amp = float("nan")
        return DBSCommand(amplitude_ma=num(amp), pulse_width_us=num(rng.uniform(10, 600)),
                          frequency_hz=num(rng.uniform(1, 300)), contacts=contacts,
                          biphasic=rng.random() < 0.95,
                          modality="opto" if r > 0.985 else "dbs")
    targets: Any = rng.sample(range(10), rng.randint(0, 3))
    if r > 0.97:
        targets = map(int, targets)
    power = rng.choice([0.0, rng.uniform(0, 50), rng.uniform(0, 10)])
    return OptoCommand(targets=targets, wavelength_nm=rng.choice([470.0, 470.0, 590.0, 900.0]),
                       power_mw=num(power), irradiance_mw_mm2=rng.choice([0.0, 5.0]),
                       pulse_width_ms=num(rng.uniform(0.5, 80)),
                       frequency_hz=num(rng.uniform(0.5, 120)),
                       train_ms=rng.choice([0.0, 0.0, rng.uniform(1, 400), rng.uniform(0, 3000)]),
                       modality="dbs" if r > 0.985 else "opto")


# ------------------------------------------------------------------ the checker
def _on(c: Any) -> bool:
    if isinstance(c, DBSCommand):
        return c.amplitude_ma > 0
    return c.power_mw > 0 and len(c.targets) > 0


def _p_avg(c: Any) -> float:
    if not isinstance(c, OptoCommand) or not _on(c):
        return 0.0
    return c.power_mw * min(1.0, c.pulse_width_ms * c.frequency_hz / 1000)


def static_violation(c: Any, lim: SafetyLimits, modality: str) -> str | None:
    """The per-command limits of docs/stimulation.md, computed here from the fields."""
    want = DBSCommand if modality == "dbs" else OptoCommand
    if type(c) is not want or c.modality != modality:
        return "modality"
    if not _on(c):
        return None
    if isinstance(c, DBSCommand):
        if not (isinstance(c.contacts, list) and c.contacts
                and all(type(k) is int and 0 <= k < lim.n_contacts for k in c.contacts)):
            return "contacts"
        if not c.biphasic:
            return "biphasic"
        if c.amplitude_ma > lim.max_amplitude_ma * (1 + REL):
            return "amplitude"
        if not lim.min_pulse_width_us * (1 - REL) <= c.pulse_width_us <= \
                lim.max_pulse_width_us * (1 + REL):
            return "pulse_width"
        if not lim.min_frequency_hz * (1 - REL) <= c.frequency_hz <= \
                lim.max_frequency_hz * (1 + REL):
            return "frequency"
        q = c.amplitude_ma * c.pulse_width_us / 1000
        dens = q / lim.electrode_area_cm2
        if q > lim.max_charge_per_phase_uc * (1 + REL):
            return "charge"
        if dens > lim.max_charge_density_uc_cm2 * (1 + REL):
            return "charge_density"
        if q > 0 and math.log10(q) + math.log10(dens) > lim.shannon_k_max + 1e-9:
            return "shannon"
        return None
    if not (isinstance(c.targets, list)
            and all(type(i) is int and 0 <= i < lim.max_targets for i in c.targets)):
        return "targets"
    if c.power_mw > lim.max_power_mw * (1 + REL):
        return "power"
    if c.power_mw / lim.spot_area_mm2 > lim.max_irradiance_mw_mm2 * (1 + REL):
        return "irradiance"
    if not lim.min_wavelength_nm <= c.wavelength_nm <= lim.max_wavelength_nm:
        return "wavelength"
    if not lim.min_light_pulse_ms * (1 - REL) <= c.pulse_width_ms <= \
            lim.max_light_pulse_ms * (1 + REL):
        return "light_pulse"
    if not lim.min_light_frequency_hz * (1 - REL) <= c.frequency_hz <= \
            lim.max_light_frequency_hz * (1 + REL):
        return "light_frequency"
    if c.pulse_width_ms * c.frequency_hz > 1000 * (1 + REL):
        return "light_pulse"
    if not (math.isfinite(c.train_ms) and c.train_ms >= 0):
        return "train"
    return None


class Physics:
    """What the stimulator does in wall time, and every bound checked on it."""

    def __init__(self, lim: SafetyLimits, modality: str):
        self.lim, self.modality = lim, modality
        self.cmd: Any = DBSCommand(amplitude_ma=0.0) if modality == "dbs" else OptoCommand()
        self.w = 0
        self.end: int | None = None  # wall time a light train stops by itself
        self.on_start: int | None = None
        self.last_off: int | None = None
        self.amp_t = 0  # wall time the DBS amplitude in force took effect
        self.periods: list[list[int]] = []
        self.temp = 0.0
        self.temp_allow = lim.max_temp_rise_c
        self.violations: Counter[str] = Counter()
        self.first: list[str] = []

    def bad(self, what: str, detail: str = "") -> None:
        self.violations[what] += 1
        if len(self.first) < 5:
            self.first.append(f"{what}: {detail}")

    def set_limits(self, lim: SafetyLimits) -> None:
        self.lim = lim
        self.temp_allow = max(lim.max_temp_rise_c, self.temp)

    def _heat(self, w: int) -> None:
        if w > self.w:
            k = self.lim.heat_c_per_mw * _p_avg(self.cmd)
            self.temp = k + (self.temp - k) * math.exp(-(w - self.w) / S / self.lim.thermal_tau_s)
            self.w = w
        if self.temp <= self.lim.max_temp_rise_c:
            self.temp_allow = self.lim.max_temp_rise_c
        if self.temp > self.temp_allow + 1e-6:
            self.bad("thermal", f"{self.temp:.6g} C > {self.temp_allow:.6g} C")
            self.temp_allow = self.temp  # count each excursion once

    def settle(self, w: int) -> None:
        if self.end is not None and self.end <= w:
            self._heat(self.end)
            self._switch(OptoCommand(), self.end)
        self._heat(w)

    def _switch(self, c: Any, w: int) -> None:
        was, now = _on(self.cmd), _on(c)
        if now and not was:
            if self.last_off is not None and w - self.last_off < self.lim.min_interval_ms * MS - 1:
                self.bad("min_interval", f"on {(w - self.last_off) / MS:.6g} ms after off")
            self.on_start = w
            self.periods.append([w, -1])
        elif was and not now:
            self.last_off, self.on_start = w, None
            self.periods[-1][1] = w
        if isinstance(c, DBSCommand) and isinstance(self.cmd, DBSCommand) and \
                c.amplitude_ma != self.cmd.amplitude_ma:
            self.amp_t = w
        self.cmd = c
        self.end = (w + int(c.train_ms * MS)
                    if isinstance(c, OptoCommand) and now and c.train_ms > 0 else None)

    def apply(self, c: Any, w: int) -> None:
        """The stimulator is told ``c`` at wall time ``w``."""
        self.settle(w)
        why = static_violation(c, self.lim, self.modality)
        if why:
            self.bad(why, repr(c))
            if why == "modality":
                return  # a stimulator of the other kind cannot apply it
        if isinstance(c, DBSCommand) and isinstance(self.cmd, DBSCommand):
            lim = self.lim
            rate = lim.max_slew_ma_per_s
            if lim.min_ramp_ms > 0:
                rate = min(rate, lim.max_amplitude_ma * 1000 / lim.min_ramp_ms)
            step = rate * min(w - self.amp_t, lim.ramp_step_ms * MS) / S
            if c.amplitude_ma - self.cmd.amplitude_ma > step + 1e-9:
                self.bad("slew", f"{self.cmd.amplitude_ma:.6g} -> {c.amplitude_ma:.6g} mA "
                                 f"in {(w - self.amp_t) / MS:.6g} ms wall")
        self._switch(c, w)

    def on_time(self, w: int) -> int:
        lo = w - int(self.lim.duty_window_s * S)
        return sum(max(0, min(w if b < 0 else b, w) - max(a, lo)) for a, b in self.periods
                   if (w if b < 0 else b) > lo)

    def check_in_force(self, w: int) -> None:
        """After the monitor has been called at ``w``: the time bounds hold now."""
        self.settle(w)
        lim = self.lim
        if not _on(self.cmd):
            return
        if lim.max_continuous_on_s > 0 and w - self.on_start >= lim.max_continuous_on_s * S:
            self.bad("continuous_on", f"{(w - self.on_start) / S:.6g} s")
        if lim.max_duty_cycle < 1:
            window = int(lim.duty_window_s * S)
            if self.on_time(w) >= lim.max_duty_cycle * window:
                self.bad("duty", f"{self.on_time(w) / window:.4g}")
        self.periods = [p for p in self.periods
                        if p[1] < 0 or p[1] > w - int(3600 * S)][-10_000:]


# ------------------------------------------------------------------ the loop
class World:
    """guard (source clock) -> monitor (wall clock) -> stimulator, and the checks."""

    def __init__(self, lim: SafetyLimits, modality: str, bin_ms: float = 1.0,
                 monitor: bool = True):
        self.lim, self.modality = lim, modality
        self.use_monitor = monitor  # False: the guard alone drives the stimulator
        self.guard = SafetyGuard(lim, modality)
        self.monitor = PhysicalMonitor(lim, modality)
        self.phys = Physics(lim, modality)
        self.src = 0
        self.w = 0
        self.bin = int(bin_ms * MS)
        self.steps = 0
        self.calls = 0

    @property
    def violations(self) -> Counter[str]:
        return self.phys.violations

    def _tick_period(self) -> int:
        return int(min(50 * MS, self.lim.thermal_horizon_s * S))

    def _send(self, out: Any) -> None:
        """The session sends ``out.command``; the stimulator side passes it to the monitor."""
        self.calls += 1
        try:
            json.dumps(outcome_to_dict(out))
        except Exception as exc:  # noqa: BLE001
            self.phys.bad("audit", repr(exc))
        c = out.command
        if c is None:
            return
        why = static_violation(c, self.lim, self.modality)
        if why:
            self.phys.bad("guard_" + why, repr(c))
        if out.status == "safe" and isinstance(c, DBSCommand) and \
                c.amplitude_ma > self.lim.fallback_amplitude_ma + 1e-12:
            self.phys.bad("safe_state", f"{c.amplitude_ma} > fallback")
        sent = self.monitor.admit(c, self.w)[0] if self.use_monitor else c
        self.phys.apply(sent, self.w)

    def _tick(self) -> None:
        hit = self.monitor.tick(self.w) if self.use_monitor else None
        if hit is not None:
            self.phys.apply(hit[0], self.w)
        self.phys.check_in_force(self.w)

    def wall(self, dt: int) -> None:
        """Wall time passes; the stimulator side polls (ticks) at least every tick period."""
        end = self.w + max(0, int(dt))
        period = self._tick_period()
        while self.w < end:
            self.w = min(end, self.w + period)
            self._tick()

    # rules -----------------------------------------------------------------
    def bins(self, n: int, request: Any, wall_per_bin: int, src_per_bin: int | None = None,
             repeat: bool = False) -> None:
        """``n`` bins: the policy asks ``request`` in the first (every one if ``repeat``)."""
        for k in range(n):
            self.steps += 1
            self.src += self.bin if src_per_bin is None else src_per_bin
            self.wall(wall_per_bin)
            out = self.guard.process(request if (k == 0 or repeat) else None, self.src)
            self._send(out)
            self._tick()

    def restart(self, back: int) -> None:
        self.steps += 1
        self.src -= int(back)

    def leap(self, fwd: int) -> None:
        self.steps += 1
        self.src += int(fwd)

    def stall(self, dt: int) -> None:
        """No bins for ``dt`` of wall time; the session's watchdog then calls safe_state."""
        self.steps += 1
        deadline = int(self.lim.watchdog_ms * MS)
        if dt > deadline:
            self.wall(deadline + 1)
            self._send(self.guard.safe_state(self.src, "watchdog"))
            after = self.phys.cmd
            if isinstance(after, DBSCommand):
                if after.amplitude_ma > self.lim.fallback_amplitude_ma + 1e-12:
                    self.phys.bad("safe_state", f"{after.amplitude_ma} mA after watchdog")
            elif _on(after):
                self.phys.bad("safe_state", "light on after watchdog")
            self.wall(dt - deadline - 1)
        else:
            self.wall(dt)

    def arm(self) -> None:
        self.steps += 1
        self.guard.arm()

    def disarm(self) -> None:
        self.steps += 1
        self._send(self.guard.disarm(self.src))
        if _on(self.phys.cmd):
            self.phys.bad("disarm", repr(self.phys.cmd))

    def safe(self) -> None:
        self.steps += 1
        self._send(self.guard.safe_state(self.src, "test"))

    def set_limits(self, lim: SafetyLimits) -> None:
        self.steps += 1
        self.lim = lim
        self.guard.set_limits(lim)
        self.monitor.set_limits(lim)
        self.phys.set_limits(lim)


def random_step(world: World, rng: random.Random) -> None:
    """One random rule with random arguments (the bench's walk)."""
    r = rng.random()
    if r < 0.55:
        n = rng.choice([1, 1, 1, 5, 20])
        world.bins(n, random_request(rng, world.modality) if rng.random() < 0.5 else None,
                   wall_per_bin=rng.choice([world.bin, world.bin, 0, 20_000, 3 * world.bin]),
                   repeat=rng.random() < 0.3)
    elif r < 0.65:  # backlog: many bins in little wall time
        world.bins(rng.randint(10, 300), random_request(rng, world.modality),
                   wall_per_bin=rng.randint(0, 100_000), repeat=rng.random() < 0.5)
    elif r < 0.72:
        world.stall(rng.choice([rng.randint(0, 50 * MS), rng.randint(0, 3 * S)]))
    elif r < 0.76:
        world.restart(rng.randint(0, 60 * S))
    elif r < 0.79:
        world.leap(rng.choice([rng.randint(0, 2 * S), rng.randint(0, 3600 * S)]))
    elif r < 0.86:
        world.arm()
    elif r < 0.89:
        world.disarm()
    elif r < 0.93:
        world.safe()
    else:
        world.set_limits(random_limits(rng))
