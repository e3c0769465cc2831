"""The physical monitor: limits held in wall-clock time, whatever the source clock did."""

from __future__ import annotations

from stim.commands import DBSCommand, OptoCommand
from stim.guard import SafetyGuard
from stim.limits import SafetyLimits
from stim.monitor import PhysicalMonitor

MS = 1_000_000
S = 1_000_000_000


def test_backlog_ramp_is_slew_limited_in_wall_time():
    """300 source bins (0 -> 3 mA at 10 mA/s) delivered within 13 ms of wall time."""
    lim = SafetyLimits()
    g, mon = SafetyGuard(lim, "dbs"), PhysicalMonitor(lim, "dbs")
    g.arm()
    wall = 0
    mon.admit(g.off_command(), wall)
    peak = 0.0
    for k in range(0, 301):
        out = g.process(DBSCommand(amplitude_ma=3.0) if k == 0 else None, k * MS)
        wall = k * 13 * MS // 300
        if out.command is not None:
            sent, _ = mon.admit(out.command, wall)
            peak = max(peak, sent.amplitude_ma)
    assert g.current.amplitude_ma > 2.9  # the guard ramped on its source clock
    assert peak <= 10.0 * 0.013 + 1e-9  # the stimulator at most slew x wall time
    assert mon.by_limit["slew"] > 0


def test_the_same_command_is_returned_when_within_bounds():
    mon = PhysicalMonitor(SafetyLimits(), "opto")
    c = OptoCommand(targets=[0], power_mw=2.0)
    assert mon.admit(c, 0) == (c, None) and mon.admit(c, 0)[0] is c


def test_restart_keeps_light_within_continuous_on_duty_and_thermal():
    lim = SafetyLimits(max_continuous_on_s=5.0, max_duty_cycle=0.5, duty_window_s=10,
                       max_power_mw=20, max_irradiance_mw_mm2=100, heat_c_per_mw=0.2)
    mon = PhysicalMonitor(lim, "opto")
    sent, why = mon.admit(OptoCommand(targets=[0], power_mw=5.0), 0)
    assert why is None
    for k in range(1, 100):  # nothing new sent: only ticks every 100 ms
        hit = mon.tick(k * 100 * MS)
        if hit is not None:
            assert hit[0].is_off and hit[1].startswith("continuous-on")
            assert k * 100 * MS >= 5 * S and k * 100 * MS <= 5 * S + 100 * MS
            break
    else:
        raise AssertionError("continuous-on not enforced")
    assert mon.temperature_rise_c <= lim.max_temp_rise_c + 1e-9


def test_min_interval_and_hot_light_and_wrong_modality():
    lim = SafetyLimits(min_interval_ms=250, max_power_mw=20, max_irradiance_mw_mm2=100,
                       heat_c_per_mw=0.2)
    mon = PhysicalMonitor(lim, "opto")
    on = OptoCommand(targets=[0], power_mw=4.0)
    mon.admit(on, 0)
    mon.admit(OptoCommand(), 100 * MS)
    sent, why = mon.admit(on, 129 * MS)
    assert sent.is_off and why.startswith("min interval")
    hot = OptoCommand(targets=[0], power_mw=20.0, pulse_width_ms=50)  # 4 C steady state
    sent, why = mon.admit(hot, 400 * MS)
    assert why is None  # in budget for the thermal horizon (1 s): ticks must follow
    for k in range(5, 100):
        hit = mon.tick(k * 100 * MS)
        assert mon.temperature_rise_c <= lim.max_temp_rise_c
        if hit is not None:
            assert hit[0].is_off and hit[1].startswith("thermal")
            break
    else:
        raise AssertionError("thermal budget not enforced")
    sent, why = mon.admit(hot, (k + 3) * 100 * MS)
    assert sent.is_off and why.startswith("thermal")  # still warm: 1 s more would overheat
    sent, why = mon.admit(DBSCommand(amplitude_ma=1.0, modality="opto"), 21 * S)
    assert sent.is_off and why.startswith("modality")


def test_limits_change_keeps_history():
    mon = PhysicalMonitor(SafetyLimits(duty_window_s=0.1), "dbs")
    mon.admit(DBSCommand(amplitude_ma=0.0), 0)
    for k in range(1, 600):
        mon.admit(DBSCommand(amplitude_ma=min(3.0, k * 0.01)), k * 10 * MS)
    mon.admit(DBSCommand(amplitude_ma=0.0), 6 * S)
    mon.set_limits(SafetyLimits(duty_window_s=10, max_duty_cycle=0.5))
    sent, why = mon.admit(DBSCommand(amplitude_ma=0.1), 6 * S + 10 * MS)
    assert sent.amplitude_ma == 0.0 and why.startswith("duty")


def test_charge_and_contacts_are_checked_on_their_own():
    mon = PhysicalMonitor(SafetyLimits(max_slew_ma_per_s=1000, min_ramp_ms=0), "dbs")
    mon.admit(DBSCommand(amplitude_ma=0.0), 0)
    sent, why = mon.admit(DBSCommand(amplitude_ma=3.4, pulse_width_us=450), S)
    assert sent.amplitude_ma == 0.0 and why.startswith("charge")
    sent, why = mon.admit(DBSCommand(amplitude_ma=1.0, contacts=[]), 2 * S)
    assert sent.amplitude_ma == 0.0 and why.startswith("contacts")
