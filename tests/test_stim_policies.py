"""Policies: timing, ramps, bounds, and determinism (a replay asks the same)."""

from __future__ import annotations

import numpy as np
import pytest

from stim.commands import DBSCommand, OptoCommand
from stim.policies import Policy, build_policy

pytestmark = pytest.mark.unit

MS = 1_000_000


def run(policy: Policy, values, bin_ms: float = 1.0) -> list:
    return [policy.step(np.array([v, v]), int(k * bin_ms * MS)) for k, v in enumerate(values)]


def test_registry_and_unknown_policy():
    for kind in ("continuous_dbs", "single_threshold_dbs", "dual_threshold_dbs", "pi_dbs",
                 "opto_rate_clamp", "event_light"):
        assert build_policy({"type": kind}).kind == kind
    with pytest.raises(ValueError, match="unknown policy"):
        build_policy({"type": "nope"})


def test_continuous_dbs_is_constant():
    out = run(build_policy({"type": "continuous_dbs", "amplitude_ma": 2.0}), [0, 5, 0])
    assert all(isinstance(c, DBSCommand) and c.amplitude_ma == 2.0 for c in out)


def test_single_threshold_onset_termination_and_ramp():
    p = build_policy({"type": "single_threshold_dbs", "threshold": 1.0, "amplitude_ma": 2.0,
                      "onset_ms": 50, "termination_ms": 100, "ramp_ma_per_s": 10.0})
    blip = run(p, [2.0] * 30 + [0.0] * 20)  # 30 ms above: shorter than onset
    assert all(c.amplitude_ma == 0 for c in blip)
    p.reset()
    amps = [c.amplitude_ma for c in run(p, [2.0] * 400 + [0.0] * 600)]
    assert amps[49] == 0 and amps[51] > 0  # switched on after 50 ms
    assert amps[50 + 100] == pytest.approx(1.0, abs=0.02)  # 10 mA/s
    assert amps[399] == 2.0
    assert amps[399 + 99] == 2.0 and amps[399 + 150] < 2.0  # off after 100 ms below
    assert amps[-1] == 0.0


def test_dual_threshold_ramps_holds_and_bounds():
    p = build_policy({"type": "dual_threshold_dbs", "lower": 1.0, "upper": 2.0,
                      "min_ma": 0.5, "max_ma": 2.5, "average_ms": 10,
                      "ramp_up_ma_per_s": 5.0, "ramp_down_ma_per_s": 1.0})
    amps = [c.amplitude_ma for c in run(p, [3.0] * 200 + [1.5] * 300 + [0.0] * 3000)]
    assert amps[0] == 0.5
    assert amps[199] == pytest.approx(0.5 + 5.0 * 0.199)
    held = amps[215:500]
    assert max(held) == min(held)  # inside the band: hold
    assert amps[-1] == 0.5  # never below min_ma
    p.reset()
    assert max(c.amplitude_ma for c in run(p, [9.0] * 2000)) == 2.5


def test_pi_dbs_rises_with_excess_beta_and_does_not_wind_up():
    p = build_policy({"type": "pi_dbs", "target": 1.0, "kp": 0.5, "ki": 2.0, "max_ma": 3.0})
    amps = [c.amplitude_ma for c in run(p, [5.0] * 3000)]
    assert amps[-1] == 3.0 and amps[1] < amps[100]
    after = [c.amplitude_ma for c in run(p, [0.0] * 10)]  # saturated: no stored windup
    assert after[-1] < 3.0


def test_opto_rate_clamp_schedule_and_bounds():
    p = build_policy({"type": "opto_rate_clamp", "target_hz": [[0, 10], [1, 20]],
                      "targets": [1, 2], "max_power_mw": 4.0})
    assert p.target(0) == 10 and p.target(999 * MS) == 10 and p.target(1000 * MS) == 20
    out = run(p, [0.0] * 5000)
    assert all(isinstance(c, OptoCommand) and 0 <= c.power_mw <= 4.0 for c in out)
    assert out[-1].power_mw == 4.0 and out[-1].targets == [1, 2]
    assert out[-1].pulse_width_ms * out[-1].frequency_hz == pytest.approx(1000)  # continuous
    assert run(p, [100.0] * 5000)[-1].power_mw == 0.0


def test_event_light_triggers_on_rising_edges_with_refractory():
    p = build_policy({"type": "event_light", "threshold": 1.0, "train_ms": 100,
                      "refractory_ms": 50, "targets": [3]})
    sig = [0, 2, 2, 0, 2, 0] + [0] * 60 + [2]
    out = run(p, sig)
    trains = [k for k, c in enumerate(out) if c is not None]
    assert trains == [1, 66]
    assert out[1].train_ms == 100 and out[1].targets == [3]


def test_state_to_targets_maps_groups():
    p = build_policy({"type": "state_targets", "groups": {"0": [1, 2], "1": [5]},
                      "indices": [0, 1], "threshold": 0.5})
    assert p.step(np.array([0.9, 0.1]), 0).targets == [1, 2]
    assert p.step(np.array([0.9, 0.2]), 1) is None  # unchanged: no new request
    assert p.step(np.array([0.1, 0.8]), 2).targets == [5]
    assert p.step(np.array([0.1, 0.2]), 3).is_off


@pytest.mark.parametrize("spec", [
    {"type": "single_threshold_dbs", "threshold": 0.5},
    {"type": "dual_threshold_dbs"},
    {"type": "opto_rate_clamp"},
])
def test_policies_are_deterministic(spec):
    x = np.random.default_rng(0).gamma(1.0, 1.0, 2000)
    a, b = build_policy(spec), build_policy(spec)
    assert run(a, x) == run(b, x)
    a.reset()
    assert run(a, x) == run(b.__class__(**{k: v for k, v in spec.items() if k != "type"}), x)
