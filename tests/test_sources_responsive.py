"""Responsive sources and the beta biomarker: the loop they close is physical."""

from __future__ import annotations

import numpy as np
import pytest

from decoders.base import Decoder, build_decoder
from decoders.biomarker import BetaPowerDecoder
from sources.opsin import OpsinSim
from sources.parkinson import ParkinsonSim
from stim.commands import DBSCommand, OptoCommand, command_to_dict
from stim.guard import SafetyGuard
from stim.limits import SafetyLimits

pytestmark = pytest.mark.unit

MS = 1_000_000
DBS3 = command_to_dict(DBSCommand(amplitude_ma=3.0, pulse_width_us=60, frequency_hz=130))


def test_parkinson_dbs_reduces_synchrony_with_lag():
    off = ParkinsonSim(seed=3)
    _, t_off = off.counts(8000, MS)
    on = ParkinsonSim(seed=3)
    on.apply_stim(DBS3)
    _, t_on = on.counts(8000, MS)
    assert np.mean(t_on[2000:, 0] ** 2) < 0.3 * np.mean(t_off[2000:, 0] ** 2)
    # first-order lag: 63% of the steady effect after tau_on (150 ms), not at once
    steady = 23.4 / on.cfg.full_effect_uc_s
    assert t_on[0, 2] < 0.02 * steady
    assert t_on[149, 2] == pytest.approx(0.63 * steady, rel=0.03)
    assert t_on[-1, 3] == 3.0 and on.truth_names[3] == "dbs_ma"


def test_parkinson_events_match_the_rates():
    src = ParkinsonSim(seed=1, units=16)
    steps = [src.advance(10 * MS) for _ in range(200)]  # 2 s
    ids = np.concatenate([s.ids for s in steps])
    times = np.concatenate([s.times for s in steps])
    assert np.all(np.diff(times) >= 0) and times.max() < 2000 * MS
    assert ids.max() < 16
    assert len(ids) / 16 / 2.0 == pytest.approx(20.0, rel=0.2)  # base rate, Hz
    assert steps[-1].t_ns == 2000 * MS and len(steps[-1].truth) == 5


def test_beta_decoder_sees_beta_and_steps_like_predict():
    counts, _ = ParkinsonSim(seed=2).counts(6000, MS)
    dec = BetaPowerDecoder().fit(counts[:3000])
    batch = dec.predict(counts)
    dec.reset()
    stepped = np.array([dec.step(c).copy() for c in counts])
    np.testing.assert_array_equal(batch, stepped)
    assert np.median(dec.predict(counts[:3000])[200:, 0]) == pytest.approx(1.0, rel=0.05)
    assert batch[1000:, 1].mean() == pytest.approx(20.0, rel=0.1)
    # a 60 Hz rhythm of the same strength is not beta
    t = np.arange(6000) / 1000
    rng = np.random.default_rng(0)
    beta = rng.poisson(20 * (1 + np.sin(2 * np.pi * 20 * t)))[:, None].astype(float)
    gamma = rng.poisson(20 * (1 + np.sin(2 * np.pi * 60 * t)))[:, None].astype(float)
    d = BetaPowerDecoder(n_inputs=1)
    assert d.predict(beta)[500:, 0].mean() > 20 * d.predict(gamma)[500:, 0].mean()


def test_beta_decoder_registry_and_save_load(tmp_path):
    dec = build_decoder("beta_power", n_inputs=4, rate_channels=[0, 1])
    counts = np.random.default_rng(0).poisson(0.02, (500, 4)).astype(float)
    dec.fit(counts)
    back = Decoder.load(dec.save(tmp_path / "beta"))
    np.testing.assert_array_equal(back.predict(counts), dec.predict(counts))
    assert back.output_names == ["beta_power", "rate_hz"]


def _light(power_mw: float, **kw) -> dict:
    return command_to_dict(OptoCommand(targets=list(range(32)), power_mw=power_mw,
                                       irradiance_mw_mm2=power_mw / 0.785, **kw))


def test_opsin_light_drives_only_the_ensemble_and_saturates():
    rates = {}
    for p in (0.0, 0.4, 0.8, 4.0, 8.0):
        src = OpsinSim(seed=0, drift_sd=0.0)
        src.apply_stim(_light(p, pulse_width_ms=25, frequency_hz=40))
        counts, truth = src.counts(2000, MS)
        rates[p] = truth[500:, 0].mean()
        other = counts[500:, 32:].sum(0).mean() / 1.5
        assert other == pytest.approx(5.0, rel=0.25)  # non-expressing units ignore light
    assert rates[0.0] == pytest.approx(5.0, rel=0.2)
    assert rates[0.0] < rates[0.4] < rates[0.8] < rates[4.0] < rates[8.0] < 5 + 40
    assert rates[8.0] - rates[4.0] < 0.5 * (rates[0.8] - rates[0.0])  # saturation


def test_opsin_kinetics_and_train_end():
    src = OpsinSim(seed=0, drift_sd=0.0)
    src.apply_stim(_light(4.0, pulse_width_ms=25, frequency_hz=40, train_ms=100))
    _, truth = src.counts(200, MS)
    peak = truth[99, 1]
    assert truth[2, 1] > 0.5 * peak  # opens within a few ms (tau_on 1.5 ms)
    assert truth[99 + 15, 1] == pytest.approx(peak / np.e, rel=0.1)  # closes with tau_off
    assert truth[150, 2] == 0.0  # the train is over


def test_dbs_loop_through_the_guard_suppresses_beta():
    src = ParkinsonSim(seed=4)
    guard = SafetyGuard(SafetyLimits(), "dbs")
    guard.arm()
    dec = BetaPowerDecoder()
    beta = []
    for b in range(6000):
        counts, _ = src.counts(1, MS)
        d = dec.step(counts[0])
        req = DBSCommand(amplitude_ma=3.0) if b == 3000 else None
        out = guard.process(req, src.t_ns)
        if out.command is not None:
            src.apply_stim(command_to_dict(out.command))
        beta.append(d[0])
    assert np.mean(beta[4500:]) < 0.5 * np.mean(beta[1000:3000])
    assert src.amplitude_ma == 3.0
