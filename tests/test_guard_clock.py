"""Guard rules of issue #20: clock discontinuities, limit changes, same-bin safe/disarm."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from stim.audit import outcome_to_dict
from stim.commands import DBSCommand, OptoCommand
from stim.guard import SafetyGuard
from stim.limits import SafetyLimits

MS = 1_000_000
S = 1_000_000_000
FAST = dict(max_slew_ma_per_s=1000, min_ramp_ms=0)


def _armed(lim: SafetyLimits, modality: str = "dbs") -> SafetyGuard:
    g = SafetyGuard(lim, modality)
    g.arm()
    return g


def test_clock_backwards_is_safe_at_once_then_resumes():
    g = _armed(SafetyLimits(**FAST))
    g.process(None, 0)
    g.process(DBSCommand(amplitude_ma=2.0), 20 * MS)
    assert g.current.amplitude_ma == 2.0
    out = g.process(DBSCommand(amplitude_ma=2.0), 5 * MS)  # source restarted
    assert out.status == "safe" and out.command.amplitude_ma == 0.0
    assert any("backwards" in r for r in out.reasons) and "request not applied" in out.reasons
    out = g.process(DBSCommand(amplitude_ma=2.0), 25 * MS)  # the next request resumes
    assert out.command is not None and out.command.amplitude_ma == 2.0


def test_forward_leap_beyond_bound_is_a_discontinuity_and_credits_no_time():
    lim = SafetyLimits(min_interval_ms=500, **FAST)
    g = _armed(lim)
    g.process(None, 0)
    g.process(DBSCommand(amplitude_ma=1.0), 20 * MS)
    g.process(DBSCommand(amplitude_ma=0.0), 40 * MS)
    out = g.process(DBSCommand(amplitude_ma=1.0), 40 * MS + 3600 * S)  # +1 h: not credited
    assert out.status == "safe"
    out = g.process(DBSCommand(amplitude_ma=1.0), 60 * MS + 3600 * S)
    assert out.command.amplitude_ma == 0.0 and "cut: minimum interval between trains" in out.reasons
    # a leap within the bound is ordinary time
    out = g.process(DBSCommand(amplitude_ma=1.0), 600 * MS + 3600 * S)
    assert out.command.amplitude_ma == 1.0


def test_invalid_limits_are_refused_and_the_old_ones_stay():
    g = _armed(SafetyLimits())
    bad = SafetyLimits().model_copy(update={"max_amplitude_ma": 40.0})
    out = g.set_limits(bad)
    assert out is not None and out.status == "refused"
    assert g.limits.max_amplitude_ma == 3.5
    with pytest.raises(ValidationError):  # the guard's own copy is frozen
        g.limits.max_amplitude_ma = 20.0
    assert g.limits.max_amplitude_ma == 3.5
    assert SafetyLimits(**g.limits.model_dump()) == SafetyLimits()


def test_limit_change_keeps_duty_thermal_and_off_history():
    lim = SafetyLimits(max_power_mw=20, max_irradiance_mw_mm2=100, heat_c_per_mw=0.2)
    g = _armed(lim, "opto")
    for k in range(0, 2000):
        g.process(OptoCommand(targets=[0], power_mw=5.0) if k == 0 else None, k * 10 * MS)
    temp = g.temperature_rise_c
    g.process(OptoCommand(), 20 * S)
    g.set_limits(SafetyLimits(max_power_mw=20, max_irradiance_mw_mm2=100, heat_c_per_mw=0.2,
                              duty_window_s=100, max_duty_cycle=0.1, min_interval_ms=50),
                 20 * S + 10 * MS)
    assert g.temperature_rise_c > 0.9 * temp > 0
    out = g.process(OptoCommand(targets=[0], power_mw=5.0), 20 * S + 20 * MS)
    assert out.command.is_off  # 20 s on in the last 100 s: duty 0.1 is spent


def test_same_time_request_does_not_undo_disarm_or_safe_state():
    """The pipeline pattern of finding F9: a queued control then the bin's request."""
    g = _armed(SafetyLimits(**FAST), "opto")
    g.process(OptoCommand(targets=[0], power_mw=2.0), 0)
    g.safe_state(10 * MS, "queued safe")
    out = g.process(OptoCommand(targets=[0], power_mw=2.0), 10 * MS)
    assert out.command is not None and out.command.is_off and out.status == "refused"
    out = g.process(OptoCommand(targets=[0], power_mw=2.0), 11 * MS)  # a later bin resumes
    assert not out.command.is_off
    g.disarm(12 * MS)
    out = g.process(OptoCommand(targets=[0], power_mw=2.0), 12 * MS)
    assert out.command is not None and out.command.is_off


def test_train_zero_is_capped_to_the_steady_state_thermal_budget():
    lim = SafetyLimits(max_power_mw=20, max_irradiance_mw_mm2=100, heat_c_per_mw=0.2)
    g = _armed(lim, "opto")
    out = g.process(OptoCommand(targets=[0], power_mw=20.0, pulse_width_ms=50,
                                frequency_hz=20), 0)
    assert out.command.power_mw * 1.0 <= lim.max_temp_rise_c / lim.heat_c_per_mw + 1e-9
    # a train the light source ends by itself may use the transient headroom
    g2 = _armed(lim, "opto")
    out = g2.process(OptoCommand(targets=[0], power_mw=20.0, pulse_width_ms=50,
                                 frequency_hz=20, train_ms=200), 0)
    assert out.command.power_mw == 20.0 and out.command.train_ms == 200


def test_commands_are_plain_and_of_the_guard_modality():
    g = _armed(SafetyLimits(**FAST))
    g.process(None, 0)
    out = g.process(DBSCommand(amplitude_ma=np.float32(1.5), contacts=iter([np.int64(2)])),
                    20 * MS)
    c = out.command
    assert type(c) is DBSCommand and c.modality == "dbs" and c.contacts == [2]
    assert type(c.amplitude_ma) is float
    json.dumps(outcome_to_dict(out))
    out = g.process(OptoCommand(targets=[0], power_mw=1.0), 40 * MS)
    assert out.status == "refused"
