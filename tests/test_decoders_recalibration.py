"""Online recalibration: recovers drift within 2 minutes, and is inert when off."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from decoders import build_decoder
from decoders.metrics import r2_per_output
from sources.motor import MotorCortexSim

BIN_NS = 50_000_000  # 50 ms bins: 2400 bins = 2 minutes of simulated time


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def drift_session():
    """A decoder trained before drift, and the data before/during/after recalibration."""
    sim = MotorCortexSim(units=96, seed=0)
    c_fit, y_fit = sim.counts(6000, BIN_NS)
    c_pre, y_pre = sim.counts(1200, BIN_NS)
    dec = build_decoder("snn", hidden=64, epochs=15, batch=8, seed=0).fit(
        c_fit, y_fit[:, 2:], bin_ms=50.0, output_names=["vx", "vy"])
    sim.drift(rotate_deg=30, silence_frac=0.2)
    c_adapt, y_adapt = sim.counts(2400, BIN_NS)
    c_post, y_post = sim.counts(1200, BIN_NS)
    return dec, (c_pre, y_pre[:, 2:]), (c_adapt, y_adapt[:, 2:]), (c_post, y_post[:, 2:])


def _run_session(dec, counts, targets):
    dec.reset()
    out = np.empty_like(targets)
    for t in range(len(counts)):
        out[t] = dec.step(counts[t])
        dec.adapt(targets[t])
    return out


def test_recalibration_recovers_lost_r2_within_two_minutes(drift_session):
    dec, pre, adapt, post = drift_session
    r2_pre = r2_per_output(pre[1], dec.predict(pre[0])).mean()
    r2_drift = r2_per_output(post[1], dec.predict(post[0])).mean()
    assert r2_pre - r2_drift > 0.1, "the drift should hurt the fixed decoder"

    live = copy.deepcopy(dec)
    live.enable_adaptation(lam=0.999, delta=10.0)
    _run_session(live, *adapt)  # 2400 bins x 50 ms = 2 min of simulated time
    live.enable_adaptation(False)  # score the recalibrated decoder frozen, on later data
    r2_after = r2_per_output(post[1], live.predict(post[0])).mean()
    recovered = (r2_after - r2_drift) / (r2_pre - r2_drift)
    assert recovered >= 0.8, (r2_pre, r2_drift, r2_after)


def test_set_adaptation_drives_the_snn_rls(drift_session):
    dec = copy.deepcopy(drift_session[0])
    assert not dec.adapting
    dec.set_adaptation(False)  # off before ever on: no adapter is created
    assert dec.adapter is None and not dec.adapting
    dec.set_adaptation(True)
    assert dec.adapting and dec.adapter.enabled
    dec.set_adaptation(False)
    assert not dec.adapting and dec.adapter is not None


def test_recalibration_switched_off_changes_nothing(drift_session):
    dec, _, adapt, post = drift_session
    ref = dec.predict(post[0])
    off = copy.deepcopy(dec)
    off.enable_adaptation(False)
    online = _run_session(off, *adapt)
    np.testing.assert_array_equal(online, dec.predict(adapt[0]))
    np.testing.assert_array_equal(off.predict(post[0]), ref)
    for k in ("w_s", "w_v", "b_out"):
        np.testing.assert_array_equal(off.state_dict()[k], dec.state_dict()[k])


def test_baselines_ignore_adapt_until_switched_on(drift_session):
    _, pre, adapt, _ = drift_session
    dec = build_decoder("wiener").fit(*pre)
    assert dec.supports_adapt and not dec.adapting
    before = dec.predict(adapt[0])
    _run_session(dec, *adapt)
    np.testing.assert_array_equal(dec.predict(adapt[0]), before)


def test_rls_covers_the_adaptation_trace_readout(tmp_path):
    from decoders import Decoder

    counts, truth = MotorCortexSim(units=16, seed=2).counts(600, BIN_NS)
    dec = build_decoder("snn", hidden=16, epochs=2, window=32, readout_trace=True).fit(
        counts[:400], truth[:400, 2:])
    w_a = dec.state_dict()["w_a"].copy()
    dec.set_adaptation(True)
    assert dec.adapter.d == 3 * 16 + 1
    _run_session(dec, counts[400:], truth[400:, 2:])
    dec.set_adaptation(False)
    assert not np.array_equal(dec.state_dict()["w_a"], w_a)
    back = Decoder.load(dec.save(tmp_path / "trace"))
    np.testing.assert_allclose(back.predict(counts[400:]), dec.predict(counts[400:]), atol=1e-6)


def test_input_centering_cancels_a_silenced_units_drive():
    """A unit that falls silent reads -mu/sd to a network trained on centred inputs: a
    constant current no readout can undo. With adaptation on, the input bias follows the
    running input means, so the silent unit's drive returns to what its mean gave."""
    from decoders import Decoder

    counts, truth = MotorCortexSim(units=16, seed=3).counts(800, BIN_NS)
    dec = build_decoder("snn", hidden=16, epochs=2, window=32).fit(
        counts[:600], truth[:600, 2:], bin_ms=50.0, output_names=["vx", "vy"])
    k = dec.kernel
    mu = dec.kparams["mu_in"]
    b0 = k.b_in.numpy().copy()
    dec.set_adaptation(True)
    assert dec.centering is not None
    silent = counts[600:].copy()
    silent[:, 0] = 0.0  # unit 0 dies
    for c, y in zip(np.tile(silent, (6, 1)), np.tile(truth[600:, 2:], (6, 1)), strict=True):
        dec.step(c)
        dec.adapt(y)
    m = dec.centering.m
    assert m[0] < 0.15 * mu[0]  # its running mean follows it to zero (1200 bins, tau 600)
    assert np.all(np.abs(m[1:] - mu[1:]) < 0.5 * mu[1:] + 0.05)  # the living stay near
    expected = b0 + k.w_in.numpy() @ (mu - m).astype(np.float32)
    np.testing.assert_allclose(k.b_in.numpy(), expected, rtol=1e-4, atol=1e-4 * abs(b0).max())
    # saved and reloaded, the model continues from the centred bias
    back = Decoder.__new__(type(dec))
    back.load_state_dict(dec.state_dict(), dec.metadata())
    np.testing.assert_array_equal(back.kernel.b_in.numpy(), k.b_in.numpy())
    np.testing.assert_array_equal(back.kparams["mu_in"], m)
    # off: nothing moves any more
    dec.set_adaptation(False)
    before = k.b_in.numpy().copy()
    for c, y in zip(silent[:40], truth[600:640, 2:], strict=True):
        dec.step(c)
        dec.adapt(y)
    np.testing.assert_array_equal(k.b_in.numpy(), before)
