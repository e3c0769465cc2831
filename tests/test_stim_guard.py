"""Property tests: whatever is requested, the guard only sends what the limits allow.

The checker below re-derives every limit from :class:`SafetyLimits` fields on
its own (it does not call the guard's helpers) and replays the commands the
guard emitted through its own model of the stimulator (train ends, heating,
on-time), so a bug in the guard's bookkeeping cannot hide itself.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stim.commands import DBSCommand, OptoCommand
from stim.guard import Outcome, SafetyGuard
from stim.limits import SafetyLimits
from stim.watchdog import Watchdog

MS = 1_000_000
S = 1_000_000_000
EPS = 1e-9


# ---------------------------------------------------------------- strategies
def _pair(lo: float, hi: float):
    return st.tuples(st.floats(lo, hi), st.floats(lo, hi)).map(sorted)


@st.composite
def limits_st(draw) -> SafetyLimits:
    pw = draw(_pair(10, 1000))
    f = draw(_pair(1, 1000))
    lpw = draw(_pair(0.5, 100))
    lf = draw(_pair(0.5, 200))
    lf = (min(lf[0], 999 / lpw[0]), lf[1])
    wd = draw(st.floats(10, 500))
    d = dict(
        max_amplitude_ma=draw(st.floats(0.1, 10)),
        min_pulse_width_us=pw[0], max_pulse_width_us=pw[1],
        min_frequency_hz=f[0], max_frequency_hz=f[1],
        n_contacts=draw(st.integers(1, 8)),
        electrode_area_cm2=draw(st.floats(0.001, 1)),
        max_charge_per_phase_uc=draw(st.floats(0.05, 10)),
        max_charge_density_uc_cm2=draw(st.floats(1, 100)),
        shannon_k_max=draw(st.floats(0.5, 2.5)),
        max_slew_ma_per_s=draw(st.floats(0.1, 100)),
        min_ramp_ms=draw(st.floats(0, 2000)),
        ramp_step_ms=draw(st.floats(1, 100)),
        max_duty_cycle=draw(st.sampled_from([1.0, 0.5]) | st.floats(0.05, 1)),
        duty_window_s=draw(st.floats(0.1, 5)),
        max_continuous_on_s=draw(st.sampled_from([0.0]) | st.floats(0.01, 2)),
        min_interval_ms=draw(st.sampled_from([0.0]) | st.floats(0, 500)),
        max_power_mw=draw(st.floats(0.5, 50)),
        max_irradiance_mw_mm2=draw(st.floats(0.5, 50)),
        spot_area_mm2=draw(st.floats(0.01, 5)),
        min_light_pulse_ms=lpw[0], max_light_pulse_ms=lpw[1],
        min_light_frequency_hz=lf[0], max_light_frequency_hz=lf[1],
        max_targets=draw(st.integers(1, 16)),
        max_temp_rise_c=draw(st.floats(0.1, 2)),
        heat_c_per_mw=draw(st.floats(0.01, 1)),
        thermal_tau_s=draw(st.floats(0.1, 10)),
        thermal_horizon_s=wd / 999 + draw(st.floats(0, 3)),
        watchdog_ms=wd,
    )
    lim = SafetyLimits(**d)
    cap = lim.max_safe_amplitude_ma(lim.min_pulse_width_us)
    d["fallback_amplitude_ma"] = draw(st.sampled_from([0.0, 0.5, 1.0])) * cap
    return SafetyLimits(**d)


weird = st.floats(allow_nan=True, allow_infinity=True, width=64)
dbs_st = st.builds(
    DBSCommand, amplitude_ma=st.floats(0, 12) | st.floats(-1, 12) | weird,
    pulse_width_us=st.floats(10, 500) | st.floats(0, 1200) | weird,
    frequency_hz=st.floats(1, 300) | st.floats(0, 1200) | weird,
    contacts=st.lists(st.integers(0, 3), min_size=1, max_size=3)
    | st.lists(st.integers(-2, 10), max_size=4),
    biphasic=st.booleans())
opto_st = st.builds(
    OptoCommand, targets=st.lists(st.integers(0, 3), min_size=1, max_size=3)
    | st.lists(st.integers(-1, 20), max_size=5),
    wavelength_nm=st.sampled_from([470.0, 470.0, 590.0, 300.0, 900.0]),
    power_mw=st.floats(0, 30) | st.floats(-1, 100) | weird, irradiance_mw_mm2=st.floats(0, 100),
    pulse_width_ms=st.floats(0.5, 50) | st.floats(0, 200), frequency_hz=st.floats(1, 300),
    train_ms=st.sampled_from([0.0]) | st.floats(0, 500) | st.floats(-10, 3000))
dt_st = st.integers(0, 20 * MS) | st.integers(0, 200 * MS) | st.integers(0, 4 * S)


def ops_st(modality: str):
    req = dbs_st if modality == "dbs" else opto_st
    other = opto_st if modality == "dbs" else dbs_st
    op = st.one_of(
        st.tuples(st.just("request"), dt_st, req),
        st.tuples(st.just("none"), dt_st, st.none()),
        st.tuples(st.just("none"), st.integers(0, 5 * MS), st.none()),
        st.tuples(st.just("request"), dt_st, other),
        st.tuples(st.just("arm"), st.just(0), st.none()),
        st.tuples(st.just("disarm"), dt_st, st.none()),
        st.tuples(st.just("safe"), dt_st, st.none()),
        st.tuples(st.just("limits"), st.just(0), limits_st()),
        # source restarts and leaps: discontinuities of the source clock
        st.tuples(st.just("request"), st.integers(-5 * S, -1), req),
        st.tuples(st.just("none"), st.integers(-5 * S, -1), st.none()),
        st.tuples(st.just("none"), st.sampled_from([2 * S, 3600 * S]), st.none()),
    )
    arm_first = st.sampled_from([[("arm", 0, None)]] * 9 + [[]])
    return st.tuples(arm_first, st.lists(op, max_size=40)).map(lambda p: p[0] + p[1])


# ---------------------------------------------------------------- the checker
def _slew(lim: SafetyLimits) -> float:
    s = lim.max_slew_ma_per_s
    if lim.min_ramp_ms > 0:
        s = min(s, lim.max_amplitude_ma * 1000 / lim.min_ramp_ms)
    return s


def _on(cmd) -> bool:
    if isinstance(cmd, DBSCommand):
        return cmd.amplitude_ma > 0
    return cmd.power_mw > 0 and len(cmd.targets) > 0


class Checker:
    """An independent model of the stimulator and of every limit."""

    def __init__(self, lim: SafetyLimits, modality: str):
        self.lim, self.modality = lim, modality
        self.armed = False
        self.new_limits = False
        self.cmd = DBSCommand(amplitude_ma=0.0) if modality == "dbs" else OptoCommand()
        self.end: int | None = None  # train end of the light command in force
        self.t_prev: int | None = None
        self.on_since: int | None = None
        self.off_since: int | None = None
        self.periods: list[list[int]] = []
        self.temp = 0.0
        self.t_temp: int | None = None
        self.src: int | None = None  # last source time
        self.g: int | None = None  # the checker's clock (docs: "Time")

    def clock(self, t: int, out_of_band: bool = False) -> int:
        """The documented clock: a step back, or forward by more than
        ``max_clock_jump_ms``, is a discontinuity and counts as no time at all;
        ``safe_state``/``disarm`` never set or move the baseline with such a time."""
        if self.src is None:
            if self.g is None:
                self.g = t
            if not out_of_band:
                self.src = t
        else:
            d = t - self.src
            if 0 <= d <= self.lim.max_clock_jump_ms * MS:
                self.g += d
                self.src = t
            elif not out_of_band:
                self.src = t
        if self.t_temp is None:
            self.t_temp = self.g
        return self.g

    # stimulator model
    def _p_avg(self) -> float:
        c = self.cmd
        if not isinstance(c, OptoCommand) or not _on(c):
            return 0.0
        return c.power_mw * min(1.0, c.pulse_width_ms * c.frequency_hz / 1000)

    def _heat(self, t: int) -> None:
        if self.t_temp is None or t <= self.t_temp:
            return
        lim = self.lim
        steady = lim.heat_c_per_mw * self._p_avg()
        self.temp = steady + (self.temp - steady) * math.exp(
            -(t - self.t_temp) / S / lim.thermal_tau_s)
        self.t_temp = t

    def _switch(self, cmd, end, t: int) -> None:
        was, now = _on(self.cmd), _on(cmd)
        if now and not was:
            if self.off_since is not None:
                assert t - self.off_since >= self.lim.min_interval_ms * MS - 1, "min interval"
            self.on_since = t
            self.periods.append([t, -1])
        if was and not now:
            self.off_since, self.on_since = t, None
            self.periods[-1][1] = t
        self.cmd, self.end = cmd, end

    def advance(self, t: int) -> None:
        if self.end is not None and self.end <= t:
            self._heat(self.end)
            self._switch(OptoCommand(), None, self.end)
        self._heat(t)

    def on_time(self, t: int, window: int) -> int:
        return sum(max(0, min(t if b < 0 else b, t) - max(a, t - window))
                   for a, b in self.periods)

    # per call
    def call(self, t: int, out: Outcome) -> None:
        lim = self.lim
        gap = 0 if self.t_prev is None else t - self.t_prev
        # thermal: the guard promised the budget for thermal_horizon_s after the last call
        # limits changed since the last call: the guard applies them from this call on
        judged = not self.new_limits
        self.new_limits = False
        # thermal: in budget for the horizon after each call (or cooling, if a stall
        # longer than the horizon had already pushed it over)
        if judged and self.t_prev is not None and self.modality == "opto":
            start = max(self.temp, lim.max_temp_rise_c)
            horizon = self.t_prev + int(lim.thermal_horizon_s * S)
            self.advance(min(t, horizon))
            assert self.temp <= start + 1e-6, ("thermal", self.temp)
        was_on = _on(self.cmd)
        self.advance(t)
        # time limits on the period just elapsed, if on in it (one-call overshoot at most)
        if judged and self.on_since is not None and lim.max_continuous_on_s > 0:
            bound = lim.max_continuous_on_s * S + (0 if self.modality == "opto" else gap)
            assert t - self.on_since <= bound + 1, "continuous-on"
        if judged and was_on and lim.max_duty_cycle < 1:
            window = int(lim.duty_window_s * S)
            assert self.on_time(t, window) <= lim.max_duty_cycle * window + gap + 1, "duty"
        assert "guard error" not in " ".join(out.reasons), out.reasons
        if out.command is not None:
            if not self.armed:
                assert not _on(out.command), "sent while disarmed"
            self.check_command(out, gap)
            end = None
            if isinstance(out.command, OptoCommand) and out.command.train_ms > 0:
                end = t + round(out.command.train_ms * MS)
            self._switch(out.command, end, t)
        elif not self.armed:
            assert out.status in ("refused", "hold")
        self.t_prev = t

    def check_command(self, out: Outcome, gap: int) -> None:
        c, lim = out.command, self.lim
        assert c.modality == self.modality
        if not _on(c):
            return
        if isinstance(c, DBSCommand):
            assert c.biphasic
            assert 0 < c.amplitude_ma <= lim.max_amplitude_ma + EPS
            assert lim.min_pulse_width_us - EPS <= c.pulse_width_us <= lim.max_pulse_width_us + EPS
            assert lim.min_frequency_hz - EPS <= c.frequency_hz <= lim.max_frequency_hz + EPS
            assert c.contacts and all(0 <= k < lim.n_contacts for k in c.contacts)
            q = c.amplitude_ma * c.pulse_width_us / 1000  # uC per phase
            dens = q / lim.electrode_area_cm2
            assert q <= lim.max_charge_per_phase_uc * (1 + EPS), "charge per phase"
            assert dens <= lim.max_charge_density_uc_cm2 * (1 + EPS), "charge density"
            if q > 0 and dens > 0:  # a subnormal amplitude underflows to 0: k = -inf, fine
                assert math.log10(dens) + math.log10(q) <= lim.shannon_k_max + 1e-9, "shannon"
            prev = self.cmd.amplitude_ma if isinstance(self.cmd, DBSCommand) else 0.0
            step = _slew(lim) * min(gap, lim.ramp_step_ms * MS) / S
            assert c.amplitude_ma - prev <= step + 1e-9, ("slew up", prev, c.amplitude_ma)
            if prev - c.amplitude_ma > step + 1e-9:
                assert out.status == "safe" or any(r.startswith("cut:") for r in out.reasons)
            if out.status == "safe":
                assert c.amplitude_ma <= lim.fallback_amplitude_ma + EPS
        else:
            assert c.targets and all(0 <= i < lim.max_targets for i in c.targets)
            assert out.status != "safe"
            assert c.power_mw <= lim.max_power_mw + EPS
            assert c.power_mw / lim.spot_area_mm2 <= lim.max_irradiance_mw_mm2 * (1 + EPS)
            assert c.irradiance_mw_mm2 <= lim.max_irradiance_mw_mm2 * (1 + EPS)
            assert lim.min_wavelength_nm <= c.wavelength_nm <= lim.max_wavelength_nm
            assert lim.min_light_pulse_ms - EPS <= c.pulse_width_ms <= lim.max_light_pulse_ms + EPS
            assert (lim.min_light_frequency_hz - EPS <= c.frequency_hz
                    <= lim.max_light_frequency_hz + EPS)
            assert c.pulse_width_ms * c.frequency_hz <= 1000 * (1 + EPS)
            assert c.train_ms >= 0


def run_sequence(lim: SafetyLimits, modality: str, ops) -> SafetyGuard:
    guard = SafetyGuard(lim, modality)
    chk = Checker(lim, modality)
    assert not guard.armed
    t = 0
    for kind, dt, arg in ops:
        t += dt
        if kind == "arm":
            guard.arm()
            chk.armed = True
            continue
        if kind == "limits":
            guard.set_limits(arg)
            chk.lim = arg
            chk.new_limits = True
            continue
        if kind == "request":
            out = guard.process(arg, t)
        elif kind == "none":
            out = guard.process(None, t)
        elif kind == "disarm":
            chk.armed = False
            out = guard.disarm(t)
            assert not _on(out.command)
        else:
            out = guard.safe_state(t, "test")
        assert isinstance(out, Outcome)
        chk.call(chk.clock(t, out_of_band=kind in ("disarm", "safe")), out)
    return guard


FAST = settings(max_examples=1000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(limits_st(), ops_st("dbs"))
def test_dbs_guard_never_sends_a_violation(lim, ops):
    run_sequence(lim, "dbs", ops)


@FAST
@given(limits_st(), ops_st("opto"))
def test_opto_guard_never_sends_a_violation(lim, ops):
    run_sequence(lim, "opto", ops)


@settings(max_examples=150, deadline=None)
@given(limits_st(), st.sampled_from(["dbs", "opto"]), st.integers(1, 10),
       st.integers(5, 300), st.floats(0, 10), st.integers(1, 40))
def test_watchdog_reaches_safe_state_within_deadline_plus_one_bin(
        lim, modality, bin_ms, stall_bin, amp, deadline_ms):
    """The runtime ticks once per bin; decoder updates stop at ``stall_bin``."""
    bin_ns, deadline = bin_ms * MS, deadline_ms * MS
    guard, wd = SafetyGuard(lim, modality), Watchdog(deadline)
    guard.arm()
    req = (DBSCommand(amplitude_ma=amp) if modality == "dbs"
           else OptoCommand(targets=[0], power_mw=amp))
    last_feed = 0
    sent = guard.current
    for k in range(stall_bin + (deadline + 3 * bin_ns) // bin_ns + 2):
        t = k * bin_ns
        if k < stall_bin:
            wd.feed(t)
            last_feed = t
            out = guard.process(req, t)
        elif wd.check(t):
            out = guard.safe_state(t, "watchdog")
        else:
            out = guard.process(None, t)
        if out.command is not None:
            sent = out.command
        if t >= last_feed + deadline + bin_ns:
            assert wd.expired(t)
            if modality == "dbs":
                assert sent.amplitude_ma <= lim.fallback_amplitude_ma + EPS
            else:
                assert sent.is_off
    assert wd.trips == 1


# ---------------------------------------------------------------- examples
def test_disarmed_at_start_and_refuses():
    g = SafetyGuard(SafetyLimits(), "dbs")
    out = g.process(DBSCommand(amplitude_ma=1.0), 0)
    assert out.status == "refused" and out.command is None and "disarmed" in out.reasons


def test_arm_key_is_checked():
    g = SafetyGuard(SafetyLimits(), "dbs", arm_key="s3cret")
    with pytest.raises(PermissionError):
        g.arm("wrong")
    assert not g.armed
    g.arm("s3cret")
    assert g.armed


def test_shannon_and_density_caps_for_3389_contact():
    lim = SafetyLimits()  # 0.06 cm^2, k 1.75, 25 uC/cm^2/phase
    # density cap 25 * 0.06 = 1.5 uC; Shannon sqrt(0.06 * 10**1.75) = 1.84 uC
    assert lim.max_charge_uc() == pytest.approx(1.5)
    assert lim.max_safe_amplitude_ma(60) == 3.5  # clinical settings are far inside
    assert lim.max_safe_amplitude_ma(450) == pytest.approx(1500 / 450)


def test_ramp_up_respects_slew_and_reaches_target():
    lim = SafetyLimits()  # effective slew 10 mA/s
    g = SafetyGuard(lim, "dbs")
    g.arm()
    g.process(None, 0)
    amps = []
    for k in range(1, 1001):
        out = g.process(DBSCommand(amplitude_ma=3.0) if k == 1 else None, k * MS)
        amps.append(g.current.amplitude_ma)
        assert out.status in ("clamped", "sent", "hold")
    assert amps[99] == pytest.approx(1.0)  # 100 ms at 10 mA/s
    assert amps[-1] == pytest.approx(3.0)
    assert g.process(None, 1001 * MS).status == "hold"


def test_disarm_stops_at_once_even_with_fallback():
    lim = SafetyLimits(fallback_amplitude_ma=1.0, max_slew_ma_per_s=1000, min_ramp_ms=0)
    g = SafetyGuard(lim, "dbs")
    g.arm()
    g.process(None, 0)
    g.process(DBSCommand(amplitude_ma=3.0), 20 * MS)
    assert g.current.amplitude_ma == 3.0
    out = g.disarm(21 * MS)
    assert out.status == "safe" and out.command.amplitude_ma == 0.0
    out = g.safe_state(22 * MS, "watchdog")
    assert out.command.amplitude_ma == 0.0


def test_light_train_ends_and_is_not_repeated():
    g = SafetyGuard(SafetyLimits(), "opto")
    g.arm()
    g.process(OptoCommand(targets=[1], power_mw=2.0, train_ms=100), 0)
    assert g.current.train_ms == 100
    for k in range(1, 300):
        out = g.process(None, k * MS)
        assert out.command is None
    assert g.current.is_off


def test_thermal_budget_cuts_continuous_light():
    lim = SafetyLimits(max_power_mw=20, max_irradiance_mw_mm2=100, heat_c_per_mw=0.2)
    g = SafetyGuard(lim, "opto")
    g.arm()
    req = OptoCommand(targets=[0], power_mw=20.0, pulse_width_ms=50, frequency_hz=20)
    for k in range(0, 60_000, 10):
        g.process(req if k == 0 else None, k * MS)
        assert g.temperature_rise_c <= lim.max_temp_rise_c + 1e-9
    assert g.current.power_mw == pytest.approx(5.0, rel=1e-3)  # 1 degC / 0.2 degC/mW
