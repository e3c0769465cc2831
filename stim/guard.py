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
* ``safe``     - a safe-state command (watchdog, disarm, clock discontinuity,
  or ramp to fallback);
* ``hold``     - nothing new: the stimulator keeps its present state.

Whatever the status, the runtime sends ``outcome.command`` when it is not
``None``. The guard never raises into the loop: an unexpected error becomes
the safe state. ``docs/stimulation.md`` states the rules and their bounds.

Time. The guard decides on the *source* clock it is given (so a replay is
bit-for-bit deterministic) but keeps all of its history (on-periods, heat,
last on/off) on an internal *guard clock* that never goes backwards: a source
time that goes backwards, or leaps forward by more than
``limits.max_clock_jump_ms``, is a discontinuity. The guard then drives the
stimulator to the safe state at once and re-baselines: the guard clock
continues from where it was, as if no time had passed, so no cooling, duty
window or minimum interval is credited for the unknown gap.
"""

from __future__ import annotations

import hmac
import logging
import math
import numbers
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from pydantic import ConfigDict

from .commands import DBSCommand, OptoCommand, StimCommand
from .limits import SafetyLimits

Status = Literal["sent", "clamped", "refused", "safe", "hold"]

MS = 1_000_000
S = 1_000_000_000
HISTORY_NS = 3600 * S  # duty history is kept this long whatever the present window
MAX_PERIODS = 4096  # beyond this, the oldest on-periods are merged (over-counts: safe side)

log = logging.getLogger(__name__)


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


class FrozenLimits(SafetyLimits):
    """The guard's own copy of its limits: validated, and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def checked_limits(limits: SafetyLimits | Mapping[str, Any]) -> FrozenLimits:
    """A private, re-validated, frozen copy: limits built with ``model_copy(update=...)``
    or changed by attribute assignment bypass pydantic validation."""
    data = limits.model_dump() if isinstance(limits, SafetyLimits) else dict(limits)
    return FrozenLimits.model_validate(data)


class SafetyGuard:
    """Clamp or refuse requests against :class:`SafetyLimits`; disarmed at start."""

    def __init__(self, limits: SafetyLimits | None = None, modality: str = "dbs",
                 arm_key: str | None = None):
        if modality not in ("dbs", "opto"):
            raise ValueError(f"modality must be 'dbs' or 'opto', got {modality!r}")
        self._use_limits(checked_limits(limits if limits is not None else SafetyLimits()))
        self.modality = modality
        self._cls = DBSCommand if modality == "dbs" else OptoCommand
        self._arm_key = arm_key
        self.armed = False
        self.current: StimCommand = self.off_command()
        self._request: StimCommand | None = None  # standing request (normalised)
        self._request_end: int | None = None  # end of a requested light train (guard clock)
        self._current_end: int | None = None  # when the stimulator stops the present train
        self._safe = False
        # (source, guard) time of the last safe-state / disarm entry
        self._safe_at: tuple[int, int] | None = None
        # clocks: guard time = source time + offset; moves forward only
        self._src_last: int | None = None
        self._offset = 0
        self._t_last: int | None = None  # guard time of the last evaluation
        self.discontinuities = 0
        # history on the guard clock (survives limit changes and clock discontinuities)
        self._on_since: int | None = None
        self._off_since: int | None = None  # None: never been on
        self._on_log: deque[list[int]] = deque()  # [start, end] on-periods; end -1 = open
        self._temp_c = 0.0  # modelled tissue temperature rise under the light
        self._t_temp: int | None = None

    # ------------------------------------------------------------------ state
    @property
    def limits(self) -> SafetyLimits:
        """The limits in force: the guard's own frozen copy (assignment raises)."""
        return self._lim

    @limits.setter
    def limits(self, limits: SafetyLimits) -> None:
        self._use_limits(checked_limits(limits))

    def _use_limits(self, lim: FrozenLimits) -> None:
        """Put ``lim`` in force, with the figures derived from it that every bin needs."""
        self._lim = lim
        self._slew = lim.slew_ma_per_s()
        self._max_charge_uc = lim.max_charge_uc()
        self._ramp_step_ns = int(lim.ramp_step_ms * MS)

    def off_command(self) -> StimCommand:
        if self.modality == "dbs":
            return DBSCommand(amplitude_ma=0.0)
        return OptoCommand()

    def safe_command(self) -> StimCommand:
        """Light off; DBS at exactly the fallback amplitude with a valid pulse shape."""
        if self.modality == "opto":
            return OptoCommand()
        lim = self._lim
        base = self.current if isinstance(self.current, DBSCommand) else DBSCommand()
        contacts = sorted({int(c) for c in base.contacts if _int_in(c, lim.n_contacts)})
        pw = min(max(float(base.pulse_width_us), lim.min_pulse_width_us),
                 lim.max_pulse_width_us)
        if lim.fallback_amplitude_ma > lim.max_safe_amplitude_ma(pw):
            pw = float(lim.min_pulse_width_us)  # validated: fallback is charge-safe here
        f = min(max(float(base.frequency_hz), lim.min_frequency_hz), lim.max_frequency_hz)
        return DBSCommand(amplitude_ma=float(lim.fallback_amplitude_ma), pulse_width_us=pw,
                          frequency_hz=f, contacts=contacts or [0], biphasic=True)

    @property
    def temperature_rise_c(self) -> float:
        return self._temp_c

    def set_limits(self, limits: SafetyLimits, t_ns: int | None = None) -> Outcome | None:
        """New limits apply from the next evaluation; with ``t_ns`` they apply now.

        The limits are re-validated (a copy is kept). Invalid limits are refused:
        the previous ones stay in force and a ``refused`` outcome says why.
        History (on-periods, heat, last on/off) is never shortened by a change.
        """
        try:
            new = checked_limits(limits)
        except Exception as exc:  # noqa: BLE001 - never raise into the loop
            log.error("guard: invalid limits refused, previous limits stay: %s", exc)
            t = self._src_last if self._src_last is not None else 0
            return Outcome("refused", t, None, None,
                           [f"invalid limits refused: {type(exc).__name__}: {exc}"])
        self._use_limits(new)
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
        reasons = ["disarmed"]
        t_src = self._src_last if self._src_last is not None else 0
        try:
            t_src, g, _ = self._time(t_ns, reasons, detect=False)
            self._advance(g)
            self._set_current(self.off_command(), None, g)
            self._t_last = g
            self._safe_at = (t_src, g)
        except Exception as exc:  # noqa: BLE001 - disarm must always leave the stimulator off
            reasons.append(f"guard error: {type(exc).__name__}: {exc}")
            self.current = self.off_command()
        return Outcome("safe", t_src, None, self.current, reasons)

    def safe_state(self, t_ns: int, reason: str) -> Outcome:
        """Watchdog entry: light off, DBS to fallback (down at once, up by the slew).

        Idempotent; call it on every tick while the watchdog is expired. A real
        request from a policy at a *later* source time leaves the safe state (a
        request at the same time as the safe state is refused).
        """
        reasons = [str(reason)]
        t_src = self._src_last if self._src_last is not None else 0
        try:
            t_src, g, _ = self._time(t_ns, reasons, detect=False)
            return self._enter_safe(t_src, g, reasons)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return Outcome("safe", t_src, None, self.current,
                           reasons + [f"guard error (disarmed): {type(exc).__name__}: {exc}"])

    # ------------------------------------------------------------------ requests
    def process(self, request: StimCommand | None, t_ns: int) -> Outcome:
        t_src = self._src_last if self._src_last is not None else 0
        try:
            reasons: list[str] = []
            t_src, g, jump = self._time(t_ns, reasons)
            return self._process(request, t_src, g, jump, reasons)
        except Exception as exc:  # the guard must never raise into the loop
            self._fail(exc)
            return Outcome("refused", t_src, _loggable(request), self.current,
                           [f"guard error (disarmed): {type(exc).__name__}: {exc}"])

    def _fail(self, exc: Exception) -> None:
        log.exception("guard: internal error, disarmed and off: %s", exc)
        self.armed = False
        self._request, self._request_end, self._safe = None, None, False
        try:
            g = self._t_last if self._t_last is not None else 0
            self._set_current(self.off_command(), None, g)
        except Exception:  # noqa: BLE001
            self.current = self.off_command()

    # ------------------------------------------------------------------ clocks
    def _time(self, t_ns: object, reasons: list[str],
              detect: bool = True) -> tuple[int, int, bool]:
        """(source time, guard time, discontinuity?) for a source time ``t_ns``.

        An invalid time (NaN, not a number) is a discontinuity at the last known time.
        Out-of-band calls (``safe_state``, ``disarm``: ``detect=False``) go safe anyway;
        a time of theirs that would be a discontinuity is taken as the last time and
        does not move the baseline (a runtime may call them with a nominal time, e.g.
        0 before the first frame, that a replay does not repeat).
        """
        t = _as_time(t_ns)
        if t is None:
            reasons.append(f"invalid source time {t_ns!r}: safe state")
            t_src = self._src_last if self._src_last is not None else 0
            g = self._t_last if self._t_last is not None else 0
            self._start(g)
            return t_src, g, True
        if self._src_last is None:
            if not detect:  # does not anchor the source clock
                g = t if self._t_last is None else self._t_last
                self._start(g)
                return t, g, False
            # the first process() anchors; after out-of-band calls, no time is credited
            self._offset = 0 if self._t_last is None else self._t_last - t
            self._src_last = t
            self._start(t + self._offset)
            return t, t + self._offset, False
        d = t - self._src_last
        jump = d < 0 or d > self._lim.max_clock_jump_ms * MS
        if jump and not detect:
            return t, (self._t_last if self._t_last is not None else t + self._offset), False
        if jump:
            g_last = self._t_last if self._t_last is not None else t
            self._offset = g_last - t  # the guard clock continues as if no time passed
            self._src_last = t
            if not self.armed:
                # nothing is on: re-baseline silently, so the outcomes of a disarmed guard
                # do not depend on out-of-band calls (e.g. a stop before the first frame)
                # that a replay does not repeat
                log.debug("guard (disarmed): source clock re-baselined by %d ns", d)
                return t, t + self._offset, False
            self.discontinuities += 1
            what = "went backwards" if d < 0 else "leapt forward"
            reasons.append(f"source clock {what} by {abs(d) / MS:.6g} ms: safe state, "
                           "re-baselined (no time credited)")
            log.warning("guard: source clock %s by %.6g ms; safe state", what, abs(d) / MS)
        self._src_last = t
        return t, t + self._offset, jump

    def _start(self, g: int) -> None:
        if self._t_temp is None:
            self._t_temp = g

    def _process(self, request: StimCommand | None, t_src: int, g: int, jump: bool,
                 reasons: list[str]) -> Outcome:
        req, refusal = (None, None) if request is None else self._normalise(request)
        shown = req if req is not None else _loggable(request)
        if jump:
            if request is not None:
                reasons.append("request not applied")
            if not self.armed:
                self._advance(g)
                self._t_last = g
                return Outcome("refused" if request is not None else "hold", t_src, shown,
                               None, reasons + ["disarmed"])
            out = self._enter_safe(t_src, g, reasons)
            out.request = shown
            return out
        if not self.armed:
            self._advance(g)
            self._t_last = g
            # a disarm at this very time: its off command is repeated so a caller that
            # keeps only the last outcome of the bin still sends it
            cmd = self.current if self._safe_at == (t_src, g) else None
            status: Status = "refused" if request is not None else (
                "hold" if cmd is None else "safe")
            return Outcome(status, t_src, shown, cmd, reasons + ["disarmed"])
        if (request is not None and refusal is None and self._safe
                and self._safe_at == (t_src, g)):
            refusal = "safe state entered at this time: a request from a later time leaves it"
        if request is not None and refusal is None:
            self._request = req
            self._safe = False
            train = getattr(req, "train_ms", 0.0)
            self._request_end = g + max(1, int(train * MS)) if train > 0 else None
        if refusal:
            reasons.append(refusal)
        out = self._evaluate(t_src, g, shown, reasons)
        if (out.command is None and refusal is None and req is not None and is_on(req)
                and not is_on(self.current)):
            out.status, out.command = "clamped", self.current  # asked for on, held off: say so
        if refusal:
            out.status = "refused"
            if self._safe_at == (t_src, g) and out.command is None:
                out.command = self.current  # see above: the safe command of this bin
        return out

    def _enter_safe(self, t_src: int, g: int, reasons: list[str]) -> Outcome:
        if not self.armed:
            self._advance(g)
            self._set_current(self.off_command(), None, g)
            self._t_last = g
            return Outcome("safe", t_src, None, self.current, reasons + ["disarmed"])
        self._safe = True
        self._safe_at = (t_src, g)
        self._request, self._request_end = None, None
        out = self._evaluate(t_src, g, None, reasons)
        out.status = "safe"
        out.command = self.current
        return out

    # ------------------------------------------------------------------ validation
    def _normalise(self, r: object) -> tuple[StimCommand | None, str | None]:
        """A fresh command of the guard's own type with plain Python values, or a refusal.

        Iterators are read once here (so a check cannot consume what is sent),
        numpy scalars become floats, and the class must be the guard's modality
        whatever its ``modality`` field says.
        """
        if not isinstance(r, DBSCommand | OptoCommand):
            return None, f"not a stimulation command: {type(r).__name__}"
        if type(r) is not self._cls or r.modality != self.modality:
            return None, (f"modality {getattr(r, 'modality', '?')} ({type(r).__name__}) "
                          f"but guard is {self.modality}")
        lim = self._lim
        if isinstance(r, DBSCommand):
            dbs_values = (r.amplitude_ma, r.pulse_width_us, r.frequency_hz)
            if not all(_finite(v) for v in dbs_values):
                return None, "non-finite parameter"
            contacts = _as_list(r.contacts)
            if not contacts or not all(_int_in(c, lim.n_contacts) for c in contacts):
                return None, f"contacts must be ids in 0..{lim.n_contacts - 1}"
            return DBSCommand(amplitude_ma=float(r.amplitude_ma),
                              pulse_width_us=float(r.pulse_width_us),
                              frequency_hz=float(r.frequency_hz),
                              contacts=sorted({int(c) for c in contacts}),
                              biphasic=bool(r.biphasic)), None
        values = (r.power_mw, r.irradiance_mw_mm2, r.pulse_width_ms, r.frequency_hz,
                  r.train_ms, r.wavelength_nm)
        if not all(_finite(v) for v in values):
            return None, "non-finite parameter"
        if r.train_ms < 0:
            return None, "negative train duration"
        if not lim.min_wavelength_nm <= r.wavelength_nm <= lim.max_wavelength_nm:
            return None, f"wavelength {float(r.wavelength_nm):g} nm outside the configured range"
        targets = _as_list(r.targets)
        if targets is None or not all(_int_in(i, lim.max_targets) for i in targets):
            return None, f"targets must be ids in 0..{lim.max_targets - 1}"
        return OptoCommand(targets=sorted({int(i) for i in targets}),
                           wavelength_nm=float(r.wavelength_nm), power_mw=float(r.power_mw),
                           irradiance_mw_mm2=float(r.irradiance_mw_mm2),
                           pulse_width_ms=float(r.pulse_width_ms),
                           frequency_hz=float(r.frequency_hz),
                           train_ms=float(r.train_ms)), None

    def _still_valid(self, r: StimCommand) -> str | None:
        """Whether a (normalised) standing request is valid under the present limits."""
        lim = self._lim
        if isinstance(r, DBSCommand):
            if not all(_int_in(c, lim.n_contacts) for c in r.contacts):
                return f"contacts must be ids in 0..{lim.n_contacts - 1}"
            return None
        if not lim.min_wavelength_nm <= r.wavelength_nm <= lim.max_wavelength_nm:
            return f"wavelength {r.wavelength_nm:g} nm outside the configured range"
        if not all(_int_in(i, lim.max_targets) for i in r.targets):
            return f"targets must be ids in 0..{lim.max_targets - 1}"
        return None

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, t_src: int, g: int, request: StimCommand | None,
                  reasons: list[str]) -> Outcome:
        """Apply every limit to the standing request at guard time ``g``; emit changes."""
        gap = 0 if self._t_last is None else max(0, g - self._t_last)
        self._advance(g)
        if self._request_end is not None and self._request_end <= g:
            self._request, self._request_end = None, None  # the requested train is over
        if self._request is not None:
            stale = self._still_valid(self._request)  # limits may have changed since
            if stale:
                reasons.append(f"cut: standing request no longer valid: {stale}")
                self._request, self._request_end = None, None
        if self._safe:
            target: StimCommand = self.safe_command()
        elif self._request is None:
            target = self.off_command()
        else:
            target = self._request
        cmd: StimCommand
        if isinstance(target, DBSCommand):
            cmd, end = self._limit_dbs(target, g, gap, reasons)
        else:
            cmd, end = self._limit_opto(target, g, gap, reasons)
        self._t_last = g
        if self._same(cmd, end):
            return Outcome("hold", t_src, request, None, reasons)
        self._set_current(cmd, end, g)
        status: Status = "safe" if self._safe else ("clamped" if reasons else "sent")
        return Outcome(status, t_src, request, cmd, reasons)

    def _same(self, cmd: StimCommand, end: int | None) -> bool:
        if is_on(cmd) != is_on(self.current):
            return False
        if not is_on(cmd):
            return True
        if isinstance(cmd, OptoCommand):
            cur = self.current
            assert isinstance(cur, OptoCommand)  # is_on(cur): the guard's own modality
            return end == self._current_end and (
                cmd.targets, cmd.wavelength_nm, cmd.power_mw, cmd.pulse_width_ms,
                cmd.frequency_hz) == (cur.targets, cur.wavelength_nm, cur.power_mw,
                                      cur.pulse_width_ms, cur.frequency_hz)
        return cmd == self.current

    def _time_limits(self, g: int, gap: int, want_on: bool, reasons: list[str]) -> bool:
        """Whether the stimulator may be on from ``g`` until (about) the next call."""
        lim = self._lim
        if not want_on:
            return False
        on_now = is_on(self.current)
        if (not on_now and self._off_since is not None
                and g - self._off_since < lim.min_interval_ms * MS):
            reasons.append("cut: minimum interval between trains")
            return False
        if lim.max_continuous_on_s > 0:
            since = self._on_since if on_now and self._on_since is not None else g
            if g - since + gap >= lim.max_continuous_on_s * S and on_now:
                reasons.append("cut: maximum continuous-on time")
                return False
        if lim.max_duty_cycle < 1.0:
            window = int(lim.duty_window_s * S)
            if self._on_time(g, window) + gap > lim.max_duty_cycle * window:
                reasons.append("cut: duty cycle")
                return False
        return True

    def _limit_dbs(self, r: DBSCommand, g: int, gap: int,
                   reasons: list[str]) -> tuple[DBSCommand, None]:
        lim = self._lim
        pw = _clamp(r.pulse_width_us, lim.min_pulse_width_us, lim.max_pulse_width_us,
                    "pulse_width_us", reasons)
        f = _clamp(r.frequency_hz, lim.min_frequency_hz, lim.max_frequency_hz,
                   "frequency_hz", reasons)
        want = _clamp(r.amplitude_ma, 0.0, lim.max_amplitude_ma, "amplitude_ma", reasons)
        hard = lim.max_safe_amplitude_ma(pw, self._max_charge_uc)  # the charge limits' cap
        if want > hard:
            reasons.append(f"amplitude {want:g} mA limited to {hard:.4g} mA by charge "
                           f"per phase / density / Shannon k")
            want = hard
        if not self._time_limits(g, gap, want > 0, reasons):
            want = hard = 0.0
        if self._safe:
            hard = min(hard, want)  # the safe state reduces at once
        prev = self.current.amplitude_ma if isinstance(self.current, DBSCommand) else 0.0
        step = self._slew * min(gap, self._ramp_step_ns) / S
        amp = min(want, prev + step) if want > prev else max(want, prev - step)
        if amp > hard:
            if prev > hard:
                reasons.append(f"cut: amplitude {prev:g} -> {hard:.4g} mA at once")
            amp = hard
        if amp != want:
            reasons.append(f"slew: amplitude {amp:.4g} mA on the way to {want:.4g} mA")
        if not amp > 0.0:
            amp = 0.0
        if not r.biphasic:
            reasons.append("biphasic forced (charge balance)")
        contacts = sorted({int(c) for c in r.contacts if _int_in(c, lim.n_contacts)})
        if not contacts:  # cannot happen for a validated request; never send none
            contacts, amp = [0], 0.0
            reasons.append("cut: no valid contact")
        return DBSCommand(amplitude_ma=float(amp), pulse_width_us=float(pw),
                          frequency_hz=float(f), contacts=contacts, biphasic=True), None

    def _limit_opto(self, r: OptoCommand, g: int, gap: int,
                    reasons: list[str]) -> tuple[OptoCommand, int | None]:
        lim = self._lim
        if self._safe or r.power_mw <= 0 or not r.targets:
            return OptoCommand(), None  # off (power is what turns the light on)
        f_max = min(lim.max_light_frequency_hz, 1000.0 / lim.min_light_pulse_ms)
        f = _clamp(r.frequency_hz, lim.min_light_frequency_hz, f_max, "frequency_hz", reasons)
        pw = _clamp(r.pulse_width_ms, lim.min_light_pulse_ms,
                    min(lim.max_light_pulse_ms, 1000.0 / f), "pulse_width_ms", reasons)
        power = _clamp(r.power_mw, 0.0, lim.max_power_mw, "power_mw", reasons)
        irr_cap = lim.max_irradiance_mw_mm2 * lim.spot_area_mm2
        if power > irr_cap:
            reasons.append(f"power {power:g} mW limited to {irr_cap:.4g} mW by irradiance")
            power = irr_cap
        # when the light source stops by itself: the requested train, the continuous-on cap
        end = self._request_end
        on_now = is_on(self.current)
        if lim.max_continuous_on_s > 0:
            on_since = self._on_since if on_now and self._on_since is not None else g
            cap_end = on_since + int(lim.max_continuous_on_s * S)
            end = cap_end if end is None else min(end, cap_end)
        if end is not None and end <= g:
            reasons.append("cut: maximum continuous-on time")
            return OptoCommand(), None
        duty = min(1.0, pw * f / 1000.0)
        p_avg_cap = self._thermal_cap_mw(None if end is None else end - g)
        if power * duty > p_avg_cap * (1 + 1e-12):
            reasons.append(f"cut: thermal budget allows {p_avg_cap:.4g} mW average")
            power = max(0.0, p_avg_cap / duty)
            cur = self.current
            if (on_now and isinstance(cur, OptoCommand) and power > 0
                    and abs(cur.power_mw - power) <= 1e-9 * power
                    and cur.power_mw * duty <= p_avg_cap * (1 + 1e-12)):
                power = cur.power_mw  # the same cap up to rounding: not a new command
        if not self._time_limits(g, gap, power > 0, reasons) or not power > 0:
            return OptoCommand(), None
        return OptoCommand(targets=list(r.targets), wavelength_nm=r.wavelength_nm,
                           power_mw=float(power),
                           irradiance_mw_mm2=float(power / lim.spot_area_mm2),
                           pulse_width_ms=float(pw), frequency_hz=float(f),
                           train_ms=0.0 if end is None else (end - g) / MS), end

    # ------------------------------------------------------------------ bookkeeping
    def _set_current(self, cmd: StimCommand, end: int | None, g: int) -> None:
        was, now = is_on(self.current), is_on(cmd)
        if now and not was:
            self._on_since = g
            self._on_log.append([g, -1])
            if len(self._on_log) > MAX_PERIODS:  # merge the two oldest: over-counts on-time
                a = self._on_log.popleft()
                self._on_log[0][0] = a[0]
        elif was and not now:
            self._close_on_period(g)
        self.current = cmd
        self._current_end = end if now else None

    def _close_on_period(self, g: int) -> None:
        self._off_since = g
        self._on_since = None
        if self._on_log and self._on_log[-1][1] < 0:
            self._on_log[-1][1] = g

    def _advance(self, g: int) -> None:
        """Bring time-integrated state (train ends, heat, duty log) up to guard time ``g``."""
        end = self._current_end
        if end is not None and is_on(self.current) and end <= g:
            self._heat_until(end)
            self._close_on_period(end)
            self.current = self.off_command()
            self._current_end = None
            if self._request_end is not None and self._request_end <= end:
                self._request, self._request_end = None, None  # a finished train is spent
        self._heat_until(g)
        keep_from = g - max(HISTORY_NS, int(self._lim.duty_window_s * S))
        while self._on_log and 0 <= self._on_log[0][1] < keep_from:
            self._on_log.popleft()

    def _heat_until(self, g: int) -> None:
        if self._t_temp is None:
            self._t_temp = g
        if g <= self._t_temp:
            return
        if isinstance(self.current, OptoCommand):
            lim = self._lim
            steady = lim.heat_c_per_mw * light_avg_power_mw(self.current)
            decay = math.exp(-(g - self._t_temp) / S / lim.thermal_tau_s)
            self._temp_c = steady + (self._temp_c - steady) * decay
        self._t_temp = g

    def _thermal_cap_mw(self, duration_ns: int | None) -> float:
        """Average power that keeps the temperature in budget while the light is on.

        Continuous light (no end) is held to the steady-state budget, so it can never
        overheat however late the next decision comes. A train that the light source
        ends by itself may use the transient headroom up to its end.
        """
        lim = self._lim
        steady = lim.max_temp_rise_c / lim.heat_c_per_mw
        if duration_ns is None:
            return steady
        e = math.exp(-duration_ns / S / lim.thermal_tau_s)
        if e >= 1.0:
            return steady
        cap = (lim.max_temp_rise_c - self._temp_c * e) / (lim.heat_c_per_mw * (1.0 - e))
        return max(steady, cap)

    def _on_time(self, g: int, window: int) -> int:
        start = g - window
        total = 0
        for a, b in reversed(self._on_log):
            b = g if b < 0 else b
            if b <= start:
                break
            total += max(0, min(b, g) - max(a, start))
        return total


def _as_time(t: object) -> int | None:
    if type(t) is int:  # the loop's case; the ABC checks below cost ~1 us each
        return t
    if isinstance(t, bool):
        return None
    if isinstance(t, numbers.Integral):
        return int(t)
    if isinstance(t, numbers.Real) and math.isfinite(float(t)):
        return int(float(t))
    return None


def _as_list(v: object) -> list[Any] | None:
    if type(v) is list:
        return list(v)
    if isinstance(v, str | bytes) or not isinstance(v, Iterable):
        return None
    try:
        return list(v)
    except Exception:  # noqa: BLE001 - a broken iterable is an invalid request
        return None


def _loggable(r: object) -> StimCommand | None:
    """A copy of a request that the audit can serialise (iterables read into lists)."""
    if not isinstance(r, DBSCommand | OptoCommand):
        return None
    vals = {}
    for f in fields(r):
        v = getattr(r, f.name)
        if f.name in ("contacts", "targets"):
            v = _as_list(v) if not isinstance(v, list) else list(v)
        vals[f.name] = v
    try:
        return type(r)(**vals)
    except Exception:  # noqa: BLE001
        return None


def _finite(v: object) -> bool:
    t = type(v)
    if t is float:
        return v - v == 0.0  # type: ignore[operator]  # false for inf and nan
    if t is int:
        return True
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _int_in(v: object, n: int) -> bool:
    if type(v) is int:
        return 0 <= v < n
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= int(v) < n


def _clamp(v: float, lo: float, hi: float, name: str, reasons: list[str]) -> float:
    if v < lo:
        reasons.append(f"{name} {v:g} raised to {lo:g}")
        return float(lo)
    if v > hi:
        reasons.append(f"{name} {v:g} clamped to {hi:g}")
        return float(hi)
    return float(v)
