"""One test per finding. Each asserts the SAFE behaviour; a failing test = the finding reproduces.

Copied from ../shared/safety (imports adapted; no assertion changed). The F9 harness the
audit imported (p09_pipeline_ops) was not shipped: tests/p09_pipeline_ops.py drives the
session core the live process runs. Run: .venv/bin/python -m pytest -q tests/test_guard_findings.py
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import pytest

from stim.audit import AuditLog, read_audit
from stim.commands import DBSCommand, OptoCommand
from stim.guard import Outcome, SafetyGuard
from stim.limits import SafetyLimits
from tests.guard_audit_common import MS, S, pavg, tissue

HOT = dict(max_power_mw=20, max_irradiance_mw_mm2=100, heat_c_per_mw=0.2)  # 20 mW avg -> 4 C steady
LIGHT20 = OptoCommand(targets=[0], power_mw=20.0, pulse_width_ms=50, frequency_hz=20)


def _armed(lim, modality="dbs"):
    g = SafetyGuard(lim, modality)
    g.arm()
    return g


# F1 ------------------------------------------------------------------ clock restart
def test_F1_restarted_source_clock_keeps_dbs_on_past_continuous_on_limit():
    lim = SafetyLimits(max_continuous_on_s=30.0)
    g = _armed(lim)
    stim = None
    for k in range(0, 2001):                                  # 20 s on the old clock
        out = g.process(DBSCommand(amplitude_ma=2.0, contacts=[1]), k * 10 * MS)
        stim = out.command or stim
    on_since_true = 10 * MS
    true0 = 2000 * 10 * MS
    for k in range(1, 2001):  # restart: clock from 0, policy asks OFF
        out = g.process(DBSCommand(amplitude_ma=0.0, contacts=[1]), k * 10 * MS)
        stim = out.command or stim
        true = true0 + k * 10 * MS
        if true - on_since_true > 30 * S + 10 * MS:           # limit + one bin
            assert stim.amplitude_ma == 0.0, (true / S, stim.amplitude_ma, out.status, out.reasons)
            break


def test_F1_restarted_source_clock_exceeds_thermal_budget():
    lim = SafetyLimits(**HOT)
    g = _armed(lim, "opto")
    for k in range(0, 6000):
        g.process(OptoCommand() if k == 0 else None, k * 10 * MS)
    ev = []
    for k in range(6000, 6021):
        out = g.process(LIGHT20 if k == 6000 else None, k * 10 * MS)
        if out.command is not None:
            ev.append((k * 10 * MS, pavg(out.command)))
    t0 = 6020 * 10 * MS
    for j in range(1, 3001):                                  # 30 s after the restart
        out = g.process(None, j * 10 * MS)
        if out.command is not None:
            ev.append((t0 + j * 10 * MS, pavg(out.command)))
    _, tmax = tissue(ev, t0 + 3000 * 10 * MS, lim)
    assert tmax <= lim.max_temp_rise_c + 1e-6, tmax


# F2 ------------------------------------------------------------------ negative time
def test_F2_negative_source_time_disables_thermal_model():
    lim = SafetyLimits(**HOT)
    g = _armed(lim, "opto")
    ev = []
    for k in range(-6000, 1):
        out = g.process(LIGHT20 if k == -6000 else None, k * 10 * MS)
        if out.command is not None:
            ev.append((k * 10 * MS, pavg(out.command)))
    _, tmax = tissue(ev, 0, lim)
    assert tmax <= lim.max_temp_rise_c + 1e-6, (tmax, g.temperature_rise_c)


# F3 ------------------------------------------------------------------ forward leap
def test_F3_forward_leap_of_source_clock_resets_thermal_state():
    lim = SafetyLimits(**HOT)
    g = _armed(lim, "opto")
    ev = []
    for k in range(100, 6101):
        out = g.process(LIGHT20 if k == 100 else None, k * 10 * MS)
        if out.command is not None:
            ev.append((k * 10 * MS, pavg(out.command)))
    true = src = 6100 * 10 * MS
    out = g.process(OptoCommand(), src + 10 * MS)
    true += 10 * MS
    ev.append((true, pavg(out.command)))
    src += 10 * MS + 3600 * S  # +1 h on the source clock, +10 ms real
    for j in range(1, 301):
        out = g.process(LIGHT20 if j == 1 else None, src + j * 10 * MS)
        true += 10 * MS
        if out.command is not None:
            ev.append((true, pavg(out.command)))
    _, tmax = tissue(ev, true, lim)
    assert tmax <= lim.max_temp_rise_c + 1e-6, tmax


# F4 ------------------------------------------------------------------ tiny continuous-on cap
def test_F4_subnanosecond_continuous_on_cap_sends_continuous_light():
    lim = SafetyLimits(max_continuous_on_s=1e-10)             # accepted by validation (ge=0)
    g = _armed(lim, "opto")
    out = g.process(OptoCommand(targets=[0], power_mw=5.0), 0)
    c = out.command
    assert c.is_off or c.train_ms > 0, c                      # train_ms 0.0 means "continuous"


# F5 ------------------------------------------------------------------ duty window growth
def test_F5_enlarging_duty_window_forgets_pruned_history():
    lim1 = SafetyLimits(duty_window_s=0.1, max_slew_ma_per_s=1000, min_ramp_ms=0)
    lim2 = SafetyLimits(duty_window_s=10.0, max_duty_cycle=0.5, max_slew_ma_per_s=1000,
                        min_ramp_ms=0)
    g = _armed(lim1)
    periods = []

    def step(t, amp):
        out = g.process(DBSCommand(amplitude_ma=amp), t)
        if out.command is not None:
            on = out.command.amplitude_ma > 0
            if on and (not periods or periods[-1][1] is not None):
                periods.append([t, None])
            if not on and periods and periods[-1][1] is None:
                periods[-1][1] = t

    for k in range(0, 501):
        step(k * 10 * MS, 1.0)
    for k in range(501, 521):
        step(k * 10 * MS, 0.0)
    g.set_limits(lim2)
    worst = 0.0
    for k in range(521, 1501):
        t = k * 10 * MS
        step(t, 1.0)
        on = sum(max(0, min(t if b is None else b, t) - max(a, t - 10 * S)) for a, b in periods)
        worst = max(worst, on / (10 * S))
    assert worst <= 0.5 + 0.01 / 10, worst


# F6 ------------------------------------------------------------------ iterator contacts
def test_F6_iterator_contacts_send_dbs_with_no_contact():
    g = _armed(SafetyLimits(max_slew_ma_per_s=1000, min_ramp_ms=0))
    g.process(None, 0)
    out = g.process(DBSCommand(amplitude_ma=2.0, contacts=map(int, ["1", "2"])), 20 * MS)
    c = out.command
    assert c is None or c.amplitude_ma == 0 or c.contacts, c


# F7 ------------------------------------------------------------------ modality field spoof
@pytest.mark.parametrize("modality,req", [
    ("dbs", OptoCommand(targets=[0], power_mw=5.0, modality="dbs")),
    ("opto", DBSCommand(amplitude_ma=3.0, modality="opto")),
])
def test_F7_request_class_must_match_guard_modality(modality, req):
    g = _armed(SafetyLimits(max_slew_ma_per_s=1000, min_ramp_ms=0), modality)
    g.process(None, 0)
    out = g.process(req, 20 * MS)
    want = DBSCommand if modality == "dbs" else OptoCommand
    assert out.command is None or type(out.command) is want, out


# F8 ------------------------------------------------------------------ unvalidated limits
@pytest.mark.parametrize("how", ["model_copy", "assign"])
def test_F8_limits_that_bypass_validation_are_obeyed(how):
    base = SafetyLimits()
    g = _armed(base)
    g.process(None, 0)
    if how == "model_copy":
        g.set_limits(base.model_copy(update={"max_amplitude_ma": float("nan")}))
    else:
        base.max_amplitude_ma = 50.0
        base.max_charge_per_phase_uc = 500.0
        base.max_charge_density_uc_cm2 = 1e5
        base.shannon_k_max = 9
    for k in range(1, 400):
        g.process(DBSCommand(amplitude_ma=40.0, pulse_width_us=450), k * 20 * MS)
    q = g.current.charge_per_phase_uc()
    assert g.current.amplitude_ma <= 25 and q <= 2.0, (g.current, q)


# F9 ------------------------------------------------------------------ pipeline disarm/safe
def test_F9_pipeline_queued_disarm_never_reaches_the_stimulator():
    from tests.p09_pipeline_ops import run_op
    stim_amp, guard_amp = run_op("disarm")
    assert stim_amp == 0.0, (stim_amp, guard_amp)


def test_F9_pipeline_queued_safe_is_overridden_in_the_same_bin():
    from tests.p09_pipeline_ops import run_op
    stim_amp, guard_amp = run_op("safe")
    assert stim_amp == 0.0, (stim_amp, guard_amp)


# F10 ----------------------------------------------------------------- non-int time
@pytest.mark.parametrize("call", ["process", "safe_state", "disarm"])
def test_F10_bad_time_raises_after_silently_turning_off(call):
    g = _armed(SafetyLimits(max_slew_ma_per_s=1000, min_ramp_ms=0))
    g.process(None, 0)
    g.process(DBSCommand(amplitude_ma=3.0), 20 * MS)
    fn = {"process": lambda: g.process(DBSCommand(amplitude_ma=3.0), float("nan")),
          "safe_state": lambda: g.safe_state(float("nan"), "watchdog"),
          "disarm": lambda: g.disarm(float("nan"))}[call]
    out = fn()                                                 # documented: never raises
    assert isinstance(out, Outcome) and out.command is not None and out.command.amplitude_ma == 0


# F11 ----------------------------------------------------------------- audit race
def test_F11_audit_log_loses_urgent_lines_under_thread_switching():
    sys.setswitchinterval(1e-5)
    try:
        path = os.path.join(tempfile.mkdtemp(), "a.jsonl")
        log = AuditLog(path, flush_interval_s=0.2, fsync=False)
        n = 50_000
        for i in range(n):
            log.record(Outcome("safe", i, None, DBSCommand(amplitude_ma=i * 1e-6), [f"s{i}"]))
        log.close()
        assert len(read_audit(path)) == n
    finally:
        sys.setswitchinterval(0.005)


# F12 ----------------------------------------------------------------- audit/publish crash
def test_F12_numpy_wavelength_reaches_command_and_breaks_audit_and_publish():
    g = _armed(SafetyLimits(), "opto")
    out = g.process(OptoCommand(targets=[0], power_mw=2.0, wavelength_nm=np.float32(470.0)), 0)
    log = AuditLog(os.path.join(tempfile.mkdtemp(), "a.jsonl"))
    try:
        log.record(out)
    finally:
        log.close()


def test_F12b_iterator_in_request_breaks_audit_record():
    g = _armed(SafetyLimits(max_slew_ma_per_s=1000, min_ramp_ms=0))
    g.process(None, 0)
    out = g.process(DBSCommand(amplitude_ma=2.0, contacts=iter([1])), 20 * MS)
    log = AuditLog(os.path.join(tempfile.mkdtemp(), "a.jsonl"))
    try:
        log.record(out)
    finally:
        log.close()


# F13 ----------------------------------------------------------------- runner tick vs horizon
def test_F13_heartbeat_period_not_validated_against_thermal_horizon():
    from service.session.config import SessionConfig
    from stim.watchdog import Watchdog
    cfg = SessionConfig(output={"heartbeat_ms": 10_000},
                        stim={"modality": "opto", "policy": {"type": "opto_rate_clamp"},
                              "limits": {"max_power_mw": 50, "max_irradiance_mw_mm2": 100,
                                         "heat_c_per_mw": 0.2}})
    lim = cfg.stim.limits
    g = _armed(lim, "opto")
    wd = Watchdog(int(lim.watchdog_ms * 1e6))
    out = g.process(OptoCommand(targets=[0], power_mw=50.0, pulse_width_ms=50, frequency_hz=20), 0)
    ev = [(0, pavg(out.command))]
    wd.feed(0)
    tick = 37 * MS
    while not wd.check(tick):
        tick += int(cfg.output.heartbeat_ms * MS)
    out = g.safe_state(tick, "watchdog")
    ev.append((tick, pavg(out.command)))
    _, tmax = tissue(ev, tick, lim)
    assert tmax <= lim.max_temp_rise_c + 1e-6, tmax


# F14 ----------------------------------------------------------------- light on from "off" request
def test_F14_power_zero_request_with_irradiance_turns_light_on():
    g = _armed(SafetyLimits(), "opto")
    r = OptoCommand(targets=[0], power_mw=0.0, irradiance_mw_mm2=5.0)
    assert r.is_off
    out = g.process(r, 0)
    assert out.command is None or out.command.is_off, out
