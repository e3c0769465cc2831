"""An independent physical monitor: the limits, held in wall-clock time.

The :class:`~stim.guard.SafetyGuard` decides on the *source* clock, so a replay
is deterministic. What the tissue sees is the *wall* clock: a backlog of bins
(many bins in little wall time), a restarted source or a stalled loop make the
two differ. This monitor sits on the stimulator side, just before the driver,
and tracks what is physically in force from the commands actually handed to
the stimulator, in wall time passed in by the caller (``wall_ns``, monotonic):

* static limits of each command (amplitude, pulse width, frequency, contacts,
  charge per phase, charge density, Shannon k; light power, irradiance,
  wavelength, pulse shape, targets);
* DBS amplitude slew: a rise is at most ``slew x min(dt, ramp_step_ms)`` with
  ``dt`` the wall time since the amplitude in force took effect (a larger
  rise is cut down to that step: the ramp then proceeds in wall time);
* continuous-on time, duty cycle over the sliding window, minimum interval
  between trains (a light train ends at its ``train_ms`` after it was
  received), and the first-order tissue heating model for light.

It is written from ``docs/stimulation.md`` and shares no code with the guard,
so a bug in one is caught by the other. Pure: no I/O, no threads, no clock
reads. ``docs/stimulation.md`` ("Physical monitor") states the exact rules.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter, deque
from typing import Any

from .commands import DBSCommand, OptoCommand, StimCommand
from .limits import SafetyLimits

_MS = 1_000_000
_S = 1_000_000_000
_KEEP_NS = 3600 * _S  # on-periods remembered at least this long, whatever the window
_EPS = 1e-9


def _num(v: Any) -> bool:
    t = type(v)
    if t is float:  # the common case first: the ABC check below costs ~1 us
        return v - v == 0.0  # false for inf and nan
    if t is int:
        return True
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _ids_ok(ids: Any, n: int) -> bool:
    if type(ids) is list and all(type(i) is int and 0 <= i < n for i in ids):
        return True
    return (isinstance(ids, list) and all(
        isinstance(i, numbers.Integral) and not isinstance(i, bool) and 0 <= int(i) < n
        for i in ids))


class PhysicalMonitor:
    """What is physically in force, checked against ``limits`` in wall time.

    ``admit(cmd, wall_ns)`` before handing a command to the stimulator;
    ``tick(wall_ns)`` periodically (every poll / heartbeat) so that time bounds
    act when nothing new is sent. Both return what must be applied.
    """

    def __init__(self, limits: SafetyLimits, modality: str):
        if modality not in ("dbs", "opto"):
            raise ValueError(f"modality must be 'dbs' or 'opto', got {modality!r}")
        self.modality = modality
        self.lim = SafetyLimits.model_validate(limits.model_dump())
        self.in_force: StimCommand = self._off()
        self._t: int | None = None  # wall time of the last call
        self._amp_t: int | None = None  # when the DBS amplitude in force took effect
        self._train_end: int | None = None  # wall time a light train stops by itself
        self._on_start: int | None = None
        self._last_off: int | None = None
        self._periods: deque[list[int]] = deque()  # wall [start, stop]; stop -1 while on
        self._temp = 0.0
        self._temp_t: int | None = None
        self.interventions = 0
        self.by_limit: Counter[str] = Counter()

    # ---------------------------------------------------------------- public
    def set_limits(self, limits: SafetyLimits) -> None:
        """New limits from now on. Nothing remembered (on-periods, heat, last off,
        start of the present on-period) is forgotten or shortened."""
        self.lim = SafetyLimits.model_validate(limits.model_dump())

    @property
    def temperature_rise_c(self) -> float:
        return self._temp

    def safe_command(self, off: bool = False) -> StimCommand:
        """Light off; DBS at the fallback, never above the amplitude in force
        (the monitor never raises stimulation), or 0 when ``off``."""
        if self.modality == "opto":
            return OptoCommand()
        cur = self.in_force if isinstance(self.in_force, DBSCommand) else DBSCommand()
        amp = 0.0 if off else min(self.lim.fallback_amplitude_ma, max(0.0, cur.amplitude_ma))
        pw = self.lim.min_pulse_width_us  # the fallback is validated charge-safe here
        f = min(max(cur.frequency_hz if _num(cur.frequency_hz) else 130.0,
                    self.lim.min_frequency_hz), self.lim.max_frequency_hz)
        contacts = cur.contacts if _ids_ok(cur.contacts, self.lim.n_contacts) and \
            cur.contacts else [0]
        return DBSCommand(amplitude_ma=float(amp), pulse_width_us=float(pw),
                          frequency_hz=float(f), contacts=list(contacts), biphasic=True)

    def admit(self, cmd: StimCommand, wall_ns: int) -> tuple[StimCommand, str | None]:
        """The command to hand to the stimulator now, and why the monitor changed it.

        Returns ``(cmd, None)`` (the same object) when ``cmd`` is within every
        bound; otherwise a slew-limited command or the safe command and a reason.
        """
        w = self._now(wall_ns)
        reason = self._violation(cmd, w)
        if reason is None:
            self._apply(cmd, w)
            return cmd, None
        if reason.startswith("slew") and isinstance(cmd, DBSCommand):
            limited = self._slew_limited(cmd, w)
            self._apply(limited, w)
            return limited, self._count(reason)
        safe = self.safe_command(off=reason.startswith(("continuous", "duty", "min interval",
                                                        "thermal")))
        self._apply(safe, w)
        return safe, self._count(reason)

    def tick(self, wall_ns: int) -> tuple[StimCommand, str] | None:
        """A safe command when the command in force has crossed a time bound."""
        w = self._now(wall_ns)
        if self._is_on(self.in_force):
            reason = self._time_bound(self.in_force, w, admitting=False)
            if reason is not None:
                safe = self.safe_command(off=True)
                self._apply(safe, w)
                return safe, self._count(reason)
        return None

    # ---------------------------------------------------------------- time
    def _now(self, wall_ns: int) -> int:
        w = int(wall_ns)
        if self._t is not None and w < self._t:
            w = self._t  # a monotonic clock does not go back; never un-count time
        self._settle(w)
        self._t = w
        return w

    def _settle(self, w: int) -> None:
        """Bring the train end, heat and on-periods up to wall time ``w``."""
        end = self._train_end
        if end is not None and end <= w and self._is_on(self.in_force):
            self._heat(end)
            self.in_force = self._off()
            self._mark_off(end)
            self._train_end = None
        self._heat(w)
        keep = w - max(_KEEP_NS, int(self.lim.duty_window_s * _S))
        while self._periods and 0 <= self._periods[0][1] < keep:
            self._periods.popleft()

    def _heat(self, w: int) -> None:
        if self._temp_t is None:
            self._temp_t = w
            return
        dt = w - self._temp_t
        if dt <= 0:
            return
        target = self.lim.heat_c_per_mw * self._avg_mw(self.in_force)
        self._temp = target + (self._temp - target) * math.exp(
            -dt / _S / self.lim.thermal_tau_s)
        self._temp_t = w

    def _mark_on(self, w: int) -> None:
        self._on_start = w
        self._periods.append([w, -1])

    def _mark_off(self, w: int) -> None:
        self._last_off = w
        self._on_start = None
        if self._periods and self._periods[-1][1] == -1:
            self._periods[-1][1] = w

    def _on_ns(self, w: int) -> int:
        lo = w - int(self.lim.duty_window_s * _S)
        total = 0
        for a, b in reversed(self._periods):
            b = w if b == -1 else b
            if b <= lo:
                break
            total += min(b, w) - max(a, lo)
        return total

    # ---------------------------------------------------------------- checks
    def _off(self) -> StimCommand:
        return DBSCommand(amplitude_ma=0.0) if self.modality == "dbs" else OptoCommand()

    @staticmethod
    def _is_on(c: StimCommand) -> bool:
        if isinstance(c, DBSCommand):
            return c.amplitude_ma > 0
        return c.power_mw > 0 and len(c.targets) > 0

    @staticmethod
    def _avg_mw(c: StimCommand) -> float:
        if not isinstance(c, OptoCommand) or not (c.power_mw > 0 and c.targets):
            return 0.0
        return c.power_mw * min(1.0, c.pulse_width_ms * c.frequency_hz / 1000.0)

    def _violation(self, c: Any, w: int) -> str | None:
        want = DBSCommand if self.modality == "dbs" else OptoCommand
        if type(c) is not want or c.modality != self.modality:
            return f"modality: {type(c).__name__} to a {self.modality} stimulator"
        if isinstance(c, DBSCommand):
            if not (_num(c.amplitude_ma) and c.amplitude_ma >= 0):
                return "amplitude: not a finite non-negative number"
            if c.amplitude_ma == 0:
                return None  # off is always allowed
            bad = self._static_dbs(c)
        else:
            if not _num(c.power_mw) or c.power_mw < 0:
                return "power: not a finite non-negative number"
            if c.power_mw == 0 or (isinstance(c.targets, list) and not c.targets):
                return None  # light off is always allowed
            bad = self._static_opto(c)
        if bad:
            return bad
        return self._time_bound(c, w, admitting=True)

    def _static_dbs(self, c: DBSCommand) -> str | None:
        lim = self.lim
        if not all(_num(v) for v in (c.pulse_width_us, c.frequency_hz)):
            return "pulse: non-finite pulse width or frequency"
        if c.amplitude_ma > lim.max_amplitude_ma * (1 + _EPS):
            return f"amplitude: {c.amplitude_ma:g} mA above {lim.max_amplitude_ma:g}"
        if not lim.min_pulse_width_us * (1 - _EPS) <= c.pulse_width_us <= \
                lim.max_pulse_width_us * (1 + _EPS):
            return f"pulse width: {c.pulse_width_us:g} us out of range"
        if not lim.min_frequency_hz * (1 - _EPS) <= c.frequency_hz <= \
                lim.max_frequency_hz * (1 + _EPS):
            return f"frequency: {c.frequency_hz:g} Hz out of range"
        if not c.contacts or not _ids_ok(c.contacts, lim.n_contacts):
            return f"contacts: {c.contacts!r} not ids in 0..{lim.n_contacts - 1}"
        if c.biphasic is not True:
            return "charge balance: monophasic"
        q = c.amplitude_ma * c.pulse_width_us / 1000.0  # uC per phase
        a = lim.electrode_area_cm2
        if q > lim.max_charge_per_phase_uc * (1 + _EPS):
            return f"charge per phase: {q:.4g} uC"
        if q / a > lim.max_charge_density_uc_cm2 * (1 + _EPS):
            return f"charge density: {q / a:.4g} uC/cm2"
        if q > 0 and math.log10(q) + math.log10(q / a) > lim.shannon_k_max + 1e-9:
            return f"Shannon k: {math.log10(q * q / a):.4g}"
        return None

    def _static_opto(self, c: OptoCommand) -> str | None:
        lim = self.lim
        vals = (c.wavelength_nm, c.pulse_width_ms, c.frequency_hz, c.train_ms)
        if not all(_num(v) for v in vals):
            return "light: non-finite parameter"
        if not _ids_ok(c.targets, lim.max_targets):
            return f"targets: {c.targets!r} not ids in 0..{lim.max_targets - 1}"
        if c.power_mw > lim.max_power_mw * (1 + _EPS):
            return f"power: {c.power_mw:g} mW above {lim.max_power_mw:g}"
        if c.power_mw / lim.spot_area_mm2 > lim.max_irradiance_mw_mm2 * (1 + _EPS):
            return f"irradiance: {c.power_mw / lim.spot_area_mm2:.4g} mW/mm2"
        if not lim.min_wavelength_nm <= c.wavelength_nm <= lim.max_wavelength_nm:
            return f"wavelength: {c.wavelength_nm:g} nm"
        if not lim.min_light_pulse_ms * (1 - _EPS) <= c.pulse_width_ms <= \
                lim.max_light_pulse_ms * (1 + _EPS):
            return f"light pulse: {c.pulse_width_ms:g} ms out of range"
        if not lim.min_light_frequency_hz * (1 - _EPS) <= c.frequency_hz <= \
                lim.max_light_frequency_hz * (1 + _EPS):
            return f"light frequency: {c.frequency_hz:g} Hz out of range"
        if c.pulse_width_ms * c.frequency_hz > 1000 * (1 + _EPS):
            return "light pulse: longer than its period"
        if c.train_ms < 0:
            return "train: negative duration"
        return None

    def _time_bound(self, c: StimCommand, w: int, admitting: bool) -> str | None:
        """Which time bound ``c`` crosses if it is (or stays) in force from ``w``."""
        lim = self.lim
        on_now = self._is_on(self.in_force)
        if admitting and not on_now and self._last_off is not None and \
                w - self._last_off < lim.min_interval_ms * _MS:
            return (f"min interval: on again {(w - self._last_off) / _MS:.6g} ms after off "
                    f"(minimum {lim.min_interval_ms:g} ms)")
        start = self._on_start if on_now and self._on_start is not None else w
        if lim.max_continuous_on_s > 0 and w - start >= lim.max_continuous_on_s * _S and (
                on_now or lim.max_continuous_on_s * _S < 1):
            return f"continuous-on: {(w - start) / _S:.6g} s (cap {lim.max_continuous_on_s:g} s)"
        if lim.max_duty_cycle < 1:
            window = int(lim.duty_window_s * _S)
            if self._on_ns(w) >= lim.max_duty_cycle * window:
                return (f"duty: {self._on_ns(w) / window:.4g} of the last "
                        f"{lim.duty_window_s:g} s (max {lim.max_duty_cycle:g})")
        if isinstance(c, OptoCommand):
            p = self._avg_mw(c)
            until = lim.thermal_horizon_s * _S
            if admitting and c.train_ms > 0:
                until = min(until, c.train_ms * _MS)
            elif not admitting and self._train_end is not None:
                until = min(until, self._train_end - w)
            peak = self._peak_temp(p, max(0, until))
            if peak > lim.max_temp_rise_c + 1e-6:
                return (f"thermal: {peak:.4g} C within the next {until / _S:.3g} s "
                        f"(budget {lim.max_temp_rise_c:g} C)")
        if isinstance(c, DBSCommand) and admitting:
            prev = self.in_force.amplitude_ma if isinstance(self.in_force, DBSCommand) else 0.0
            if c.amplitude_ma - prev > self._max_step(w) + 1e-12:
                return (f"slew: {prev:g} -> {c.amplitude_ma:g} mA in "
                        f"{(w - (self._amp_t or w)) / _MS:.6g} ms of wall time")
        return None

    def _peak_temp(self, p_avg: float, dur_ns: float) -> float:
        """Highest modelled temperature in the next ``dur_ns`` at average power ``p_avg``."""
        steady = self.lim.heat_c_per_mw * p_avg
        end = steady + (self._temp - steady) * math.exp(-dur_ns / _S / self.lim.thermal_tau_s)
        return max(self._temp, end)  # first-order: monotonic toward the steady state

    def _max_step(self, w: int) -> float:
        lim = self.lim
        rate = lim.max_slew_ma_per_s
        if lim.min_ramp_ms > 0:
            rate = min(rate, lim.max_amplitude_ma / (lim.min_ramp_ms / 1000.0))
        dt = w - self._amp_t if self._amp_t is not None else 0
        return rate * min(dt, lim.ramp_step_ms * _MS) / _S

    def _slew_limited(self, c: DBSCommand, w: int) -> DBSCommand:
        prev = self.in_force.amplitude_ma if isinstance(self.in_force, DBSCommand) else 0.0
        return DBSCommand(amplitude_ma=float(max(0.0, prev + self._max_step(w))),
                          pulse_width_us=c.pulse_width_us, frequency_hz=c.frequency_hz,
                          contacts=list(c.contacts), biphasic=True)

    # ---------------------------------------------------------------- bookkeeping
    def _apply(self, c: StimCommand, w: int) -> None:
        was, now = self._is_on(self.in_force), self._is_on(c)
        if now and not was:
            self._mark_on(w)
        elif was and not now:
            self._mark_off(w)
        if isinstance(c, DBSCommand):
            prev = self.in_force.amplitude_ma if isinstance(self.in_force, DBSCommand) else 0.0
            if c.amplitude_ma != prev or self._amp_t is None:
                self._amp_t = w
        self._train_end = (w + int(c.train_ms * _MS)
                           if isinstance(c, OptoCommand) and now and c.train_ms > 0 else None)
        self.in_force = c

    def _count(self, reason: str) -> str:
        self.interventions += 1
        self.by_limit[reason.split(":", 1)[0]] += 1
        return reason
