"""The safety guard: the only path from a policy to a stimulator.

Every request goes through :meth:`SafetyGuard.process`, called once per bin
with the source-clock time. The guard keeps the last accepted request as the
*standing request* and re-evaluates it on every call (``request=None`` means
"no change"), because time-dependent limits (amplitude slew, duty cycle,
continuous-on time, thermal budget) must act even when the policy is silent.

Outcome statuses:

* ``sent``     - a new command, exactly as requested;
* ``clamped``  - a new command, changed by the limits (``reasons`` say how);
* ``refused``  - the request was rejected (disarmed, wrong modality, invalid);
* ``safe``     - a safe-state command (watchdog, disarm, or ramp to fallback);
* ``hold``     - nothing new: the stimulator keeps its present state.

Whatever the status, the runtime sends ``outcome.command`` when it is not
``None``. The guard never raises into the loop: an unexpected error becomes
the safe state. ``docs/stimulation.md`` states the rules and their bounds.
"""

from __future__ import annotations

import hmac
import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Literal

from .commands import DBSCommand, OptoCommand, StimCommand
from .limits import SafetyLimits

Status = Literal["sent", "clamped", "refused", "safe", "hold"]

MS = 1_000_000
S = 1_000_000_000


@dataclass(slots=True)
class Outcome:
    status: Status
    t_ns: int
    request: StimCommand | None
    command: StimCommand | None  # what the stimulator is told; None if nothing is sent
    reasons: list[str] = field(default_factory=list)


def is_on(cmd: StimCommand | None) -> bool:
    return cmd is not None and not cmd.is_off


def light_avg_power_mw(cmd: OptoCommand) -> float:
    """Time-averaged optical power: peak power times the pulse duty."""
    if cmd.is_off:
        return 0.0
    return cmd.power_mw * min(1.0, cmd.pulse_width_ms * cmd.frequency_hz / 1000.0)


class SafetyGuard:
    """Clamp or refuse requests against :class:`SafetyLimits`; disarmed at start."""

    def __init__(self, limits: SafetyLimits | None = None, modality: str = "dbs",
                 arm_key: str | None = None):
        if modality not in ("dbs", "opto"):
            raise ValueError(f"modality must be 'dbs' or 'opto', got {modality!r}")
        self.limits = limits or SafetyLimits()
        self.modality = modality
        self._arm_key = arm_key
        self.armed = False
        self.current: StimCommand = self.off_command()
        self._request: StimCommand | None = None  # standing request
        self._request_end: int | None = None  # end of a requested light train
        self._current_end: int | None = None  # when the stimulator stops the present train
        self._safe = False
        self._t_last: int | None = None  # last evaluation time
        self._on_since: int | None = None
        self._off_since: int | None = None  # None: never been on
        self._on_log: list[list[int]] = []  # [start, end] of past on-periods (duty window)
        self._temp_c = 0.0  # modelled tissue temperature rise under the light
        self._t_temp = 0

    # ------------------------------------------------------------------ state
    def off_command(self) -> StimCommand:
        if self.modality == "dbs":
            return DBSCommand(amplitude_ma=0.0)
        return OptoCommand()

    def safe_command(self) -> StimCommand:
        """Light off; DBS at the fallback amplitude with the present pulse shape."""
        if self.modality == "opto":
            return OptoCommand()
        base = self.current if isinstance(self.current, DBSCommand) else DBSCommand()
        contacts = [c for c in base.contacts if _int_in(c, self.limits.n_contacts)]
        return replace(base, amplitude_ma=self.limits.fallback_amplitude_ma,
                       contacts=contacts or [0])

    @property
    def temperature_rise_c(self) -> float:
        return self._temp_c

    def set_limits(self, limits: SafetyLimits, t_ns: int | None = None) -> Outcome | None:
        """New limits apply from the next evaluation; with ``t_ns`` they apply now."""
        self.limits = limits
        if t_ns is None:
            return None
        return self.process(None, t_ns)

    def arm(self, key: str | None = None) -> None:
        """Allow stimulation. With an ``arm_key`` configured, only the right key arms."""
        if self._arm_key is not None and not hmac.compare_digest(
                str(key or "").encode(), self._arm_key.encode()):
            raise PermissionError("arming refused: bad key")
        self.armed = True

    def disarm(self, t_ns: int) -> Outcome:
        """Stop at once (DBS off, not fallback; light off) and refuse until re-armed."""
        self.armed = False
        self._request, self._request_end, self._safe = None, None, False
        try:
            t = self._clock(t_ns)
            self._advance(t)
            self._set_current(self.off_command(), None, t)
            self._t_last = t
        except Exception:  # noqa: BLE001 - disarm must always leave the stimulator off
            self.current = self.off_command()
        return Outcome("safe", int(t_ns), None, self.current, ["disarmed"])

    def safe_state(self, t_ns: int, reason: str) -> Outcome:
        """Watchdog entry: light off, DBS to fallback (down at once, up by the slew).

        Idempotent; call it on every tick while the watchdog is expired. The
        next real request from a policy leaves the safe state.
        """
        try:
            if not self.armed:
                t = self._clock(t_ns)
                self._advance(t)
                self._t_last = t
                return Outcome("safe", t, None, self.current, [reason, "disarmed"])
            self._safe = True
            self._request, self._request_end = None, None
            out = self._evaluate(self._clock(t_ns), None, [reason])
            out.status = "safe"
            out.command = self.current
            return out
        except Exception as exc:  # noqa: BLE001
            self.current = self.off_command()
            return Outcome("safe", int(t_ns), None, self.current,
                           [reason, f"guard error: {type(exc).__name__}: {exc}"])

    # ------------------------------------------------------------------ requests
    def process(self, request: StimCommand | None, t_ns: int) -> Outcome:
        try:
            return self._process(request, int(t_ns))
        except Exception as exc:  # the guard must never raise into the loop
            self.armed = False
            self._request, self._request_end, self._safe = None, None, False
            self.current = self.off_command()
            return Outcome("refused", int(t_ns), request, self.current,
                           [f"guard error (disarmed): {type(exc).__name__}: {exc}"])

    def _clock(self, t: int) -> int:
        t = int(t)
        return t if self._t_last is None else max(t, self._t_last)

    def _process(self, request: StimCommand | None, t: int) -> Outcome:
        if self._t_last is not None and t < self._t_last:
            return Outcome("refused", t, request, None, ["time went backwards"])
        if not self.armed:
            self._advance(t)
            self._t_last = t
            if request is None:
                return Outcome("hold", t, None, None, ["disarmed"])
            return Outcome("refused", t, request, None, ["disarmed"])
        refusal = self._validate(request) if request is not None else None
        if request is not None and refusal is None:
            self._request = request
            self._safe = False
            train = getattr(request, "train_ms", 0.0)
            self._request_end = t + int(train * MS) if train > 0 else None
        out = self._evaluate(t, request, [refusal] if refusal else [])
        if refusal:
            out.status = "refused"
        return out

    def _validate(self, r: StimCommand) -> str | None:
        """Reasons to refuse a request outright (it then never becomes standing)."""
        lim = self.limits
        if r.modality != self.modality:
            return f"modality {r.modality} but guard is {self.modality}"
        if isinstance(r, DBSCommand):
            values = (r.amplitude_ma, r.pulse_width_us, r.frequency_hz)
            if not all(_finite(v) for v in values):
                return "non-finite parameter"
            if not r.contacts or not all(_int_in(c, lim.n_contacts) for c in r.contacts):
                return f"contacts must be ids in 0..{lim.n_contacts - 1}"
            return None
        assert isinstance(r, OptoCommand)
        values = (r.power_mw, r.irradiance_mw_mm2, r.pulse_width_ms, r.frequency_hz,
                  r.train_ms, r.wavelength_nm)
        if not all(_finite(v) for v in values):
            return "non-finite parameter"
        if r.train_ms < 0:
            return "negative train duration"
        if not lim.min_wavelength_nm <= r.wavelength_nm <= lim.max_wavelength_nm:
            return f"wavelength {r.wavelength_nm:g} nm outside the configured range"
        if not all(_int_in(i, lim.max_targets) for i in r.targets):
            return f"targets must be ids in 0..{lim.max_targets - 1}"
        return None

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, t: int, request: StimCommand | None, reasons: list[str]) -> Outcome:
        """Apply every limit to the standing request at time ``t`` and emit changes."""
        gap = 0 if self._t_last is None else t - self._t_last
        self._advance(t)
        if self._request_end is not None and self._request_end <= t:
            self._request, self._request_end = None, None  # the requested train is over
        if self._request is not None:
            stale = self._validate(self._request)  # limits may have changed since
            if stale:
                reasons.append(f"cut: standing request no longer valid: {stale}")
                self._request, self._request_end = None, None
        if self._safe:
            target: StimCommand = self.safe_command()
        elif self._request is None:
            target = self.off_command()
        else:
            target = self._request
        if isinstance(target, DBSCommand):
            cmd, end = self._limit_dbs(target, t, gap, reasons)
        else:
            cmd, end = self._limit_opto(target, t, gap, reasons)
        self._t_last = t
        if self._same(cmd, end):
            return Outcome("hold", t, request, None, reasons)
        self._set_current(cmd, end, t)
        status: Status = "safe" if self._safe else ("clamped" if reasons else "sent")
        return Outcome(status, t, request, cmd, reasons)

    def _same(self, cmd: StimCommand, end: int | None) -> bool:
        if is_on(cmd) != is_on(self.current):
            return False
        if not is_on(cmd):
            return True
        if isinstance(cmd, OptoCommand):
            return end == self._current_end and replace(cmd, train_ms=0.0) == replace(
                self.current, train_ms=0.0)
        return cmd == self.current

    def _time_limits(self, t: int, gap: int, want_on: bool, reasons: list[str]) -> bool:
        """Whether the stimulator may be on from ``t`` until (about) the next call."""
        lim = self.limits
        if not want_on:
            return False
        on_now = is_on(self.current)
        if (not on_now and self._off_since is not None
                and t - self._off_since < lim.min_interval_ms * MS):
            reasons.append("cut: minimum interval between trains")
            return False
        if (on_now and lim.max_continuous_on_s > 0 and self._on_since is not None
                and t - self._on_since + gap >= lim.max_continuous_on_s * S):
            reasons.append("cut: maximum continuous-on time")
            return False
        if lim.max_duty_cycle < 1.0:
            window = int(lim.duty_window_s * S)
            if self._on_time(t, window) + gap > lim.max_duty_cycle * window:
                reasons.append("cut: duty cycle")
                return False
        return True

    def _limit_dbs(self, r: DBSCommand, t: int, gap: int,
                   reasons: list[str]) -> tuple[DBSCommand, None]:
        lim = self.limits
        pw = _clamp(r.pulse_width_us, lim.min_pulse_width_us, lim.max_pulse_width_us,
                    "pulse_width_us", reasons)
        f = _clamp(r.frequency_hz, lim.min_frequency_hz, lim.max_frequency_hz,
                   "frequency_hz", reasons)
        want = _clamp(r.amplitude_ma, 0.0, lim.max_amplitude_ma, "amplitude_ma", reasons)
        hard = lim.max_safe_amplitude_ma(pw)  # amplitude cap from the charge limits
        if want > hard:
            reasons.append(f"amplitude {want:g} mA limited to {hard:.4g} mA by charge "
                           f"per phase / density / Shannon k")
            want = hard
        if not self._time_limits(t, gap, want > 0, reasons):
            want = hard = 0.0
        if self._safe:
            hard = min(hard, want)  # the safe state reduces at once
        prev = self.current.amplitude_ma if isinstance(self.current, DBSCommand) else 0.0
        step = lim.slew_ma_per_s() * min(gap, int(lim.ramp_step_ms * MS)) / S
        if want > prev:
            amp = min(want, prev + step)
        else:
            amp = max(want, prev - step)
        if amp > hard:
            if prev > hard:
                reasons.append(f"cut: amplitude {prev:g} -> {hard:.4g} mA at once")
            amp = hard
        if amp != want:
            reasons.append(f"slew: amplitude {amp:.4g} mA on the way to {want:.4g} mA")
        if amp <= 0.0:
            amp = 0.0
        if not r.biphasic:
            reasons.append("biphasic forced (charge balance)")
        contacts = sorted({int(c) for c in r.contacts})
        return replace(r, amplitude_ma=float(amp), pulse_width_us=pw, frequency_hz=f,
                       biphasic=True, contacts=contacts), None

    def _limit_opto(self, r: OptoCommand, t: int, gap: int,
                    reasons: list[str]) -> tuple[OptoCommand, int | None]:
        lim = self.limits
        f_max = min(lim.max_light_frequency_hz, 1000.0 / lim.min_light_pulse_ms)
        f = _clamp(r.frequency_hz, lim.min_light_frequency_hz, f_max, "frequency_hz", reasons)
        pw = _clamp(r.pulse_width_ms, lim.min_light_pulse_ms,
                    min(lim.max_light_pulse_ms, 1000.0 / f), "pulse_width_ms", reasons)
        power = r.power_mw if r.power_mw > 0 else r.irradiance_mw_mm2 * lim.spot_area_mm2
        power = _clamp(power, 0.0, lim.max_power_mw, "power_mw", reasons)
        irr_cap = lim.max_irradiance_mw_mm2 * lim.spot_area_mm2
        if power > irr_cap:
            reasons.append(f"power {power:g} mW limited to {irr_cap:.4g} mW by irradiance")
            power = irr_cap
        duty = min(1.0, pw * f / 1000.0)
        p_avg_cap = self._thermal_cap_mw()
        if power * duty > p_avg_cap:
            reasons.append(f"cut: thermal budget allows {p_avg_cap:.4g} mW average")
            power = max(0.0, p_avg_cap / duty)
        end = self._request_end if not self._safe else None
        want_on = power > 0 and bool(r.targets) and not self._safe
        if not self._time_limits(t, gap, want_on, reasons):
            power = 0.0
        on = power > 0 and bool(r.targets) and not self._safe
        if on and lim.max_continuous_on_s > 0:
            on_since = self._on_since if is_on(self.current) else t
            cap_end = on_since + int(lim.max_continuous_on_s * S)
            end = cap_end if end is None else min(end, cap_end)
        if not on:
            return OptoCommand(), None
        targets = sorted({int(i) for i in r.targets})
        cmd = replace(r, targets=targets, power_mw=float(power), pulse_width_ms=pw,
                      frequency_hz=f, irradiance_mw_mm2=float(power / lim.spot_area_mm2),
                      train_ms=0.0 if end is None else (end - t) / MS)
        return cmd, end

    # ------------------------------------------------------------------ bookkeeping
    def _set_current(self, cmd: StimCommand, end: int | None, t: int) -> None:
        was, now = is_on(self.current), is_on(cmd)
        if now and not was:
            self._on_since = t
            self._on_log.append([t, -1])
        elif was and not now:
            self._close_on_period(t)
        self.current = cmd
        self._current_end = end if now else None

    def _close_on_period(self, t: int) -> None:
        self._off_since = t
        self._on_since = None
        if self._on_log and self._on_log[-1][1] < 0:
            self._on_log[-1][1] = t

    def _advance(self, t: int) -> None:
        """Bring time-integrated state (train ends, heat, duty log) up to ``t``."""
        end = self._current_end
        if end is not None and is_on(self.current) and end <= t:
            self._heat_until(end)
            self._close_on_period(end)
            self.current = self.off_command()
            self._current_end = None
            if self._request_end is not None and self._request_end <= end:
                self._request, self._request_end = None, None  # a finished train is spent
        self._heat_until(t)
        keep_from = t - int(self.limits.duty_window_s * S)
        while self._on_log and 0 <= self._on_log[0][1] < keep_from:
            self._on_log.pop(0)

    def _heat_until(self, t: int) -> None:
        if t <= self._t_temp:
            return
        if isinstance(self.current, OptoCommand):
            lim = self.limits
            steady = lim.heat_c_per_mw * light_avg_power_mw(self.current)
            decay = math.exp(-(t - self._t_temp) / S / lim.thermal_tau_s)
            self._temp_c = steady + (self._temp_c - steady) * decay
        self._t_temp = t

    def _thermal_cap_mw(self) -> float:
        """Average power that keeps the temperature in budget for the whole horizon."""
        lim = self.limits
        e = math.exp(-lim.thermal_horizon_s / lim.thermal_tau_s)
        cap = (lim.max_temp_rise_c - self._temp_c * e) / (lim.heat_c_per_mw * (1.0 - e))
        return max(0.0, cap)

    def _on_time(self, t: int, window: int) -> int:
        start = t - window
        total = 0
        for a, b in self._on_log:
            b = t if b < 0 else b
            total += max(0, min(b, t) - max(a, start))
        return total


def _finite(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _int_in(v: object, n: int) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= int(v) < n


def _clamp(v: float, lo: float, hi: float, name: str, reasons: list[str]) -> float:
    if v < lo:
        reasons.append(f"{name} {v:g} raised to {lo:g}")
        return float(lo)
    if v > hi:
        reasons.append(f"{name} {v:g} clamped to {hi:g}")
        return float(hi)
    return float(v)
