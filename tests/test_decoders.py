"""Decoder interface contracts: batch == step-by-step, save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest

from decoders import Decoder, build_decoder
from decoders.metrics import r2_per_output
from sources.motor import MotorCortexSim

KINDS = {
    "kalman": ("kalman", {}),
    "kalman_lag": ("kalman", {"lag": 2}),
    "kalman_full": ("kalman", {"steady_state": False, "lag": "auto"}),
    "wiener": ("wiener", {"history": 4}),
    "snn": ("snn", {"hidden": 32, "epochs": 3, "window": 32, "seed": 0}),
    "snn_dendritic": ("snn", {"hidden": 16, "branches": 3, "epochs": 2, "window": 32}),
}


pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def sim_data() -> tuple[np.ndarray, np.ndarray]:
    counts, truth = MotorCortexSim(units=24, seed=1).counts(1200, 50_000_000)
    return counts, truth


def _fit(kind: str, counts: np.ndarray, truth: np.ndarray) -> Decoder:
    name, params = KINDS[kind]
    return build_decoder(name, **params).fit(
        counts[:900], truth[:900], bin_ms=50.0, output_names=["x", "y", "vx", "vy"])


@pytest.mark.parametrize("kind", list(KINDS))
def test_batch_equals_step(kind, sim_data):
    counts, truth = sim_data
    dec = _fit(kind, counts, truth)
    test = counts[900:]
    batch = dec.predict(test)
    dec.reset()
    stepped = np.stack([dec.step(c).copy() for c in test])
    np.testing.assert_allclose(batch, stepped, atol=1e-5, rtol=0)
    # a second reset gives the same run again (no hidden state survives reset)
    dec.reset()
    np.testing.assert_allclose(dec.step(test[0]), stepped[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_save_load_roundtrip(kind, sim_data, tmp_path):
    counts, truth = sim_data
    dec = _fit(kind, counts, truth)
    path = dec.save(tmp_path / f"m_{kind}", extra_meta={"note": "x"})
    back = Decoder.load(path)
    assert type(back) is type(dec)
    assert back.metadata() == dec.metadata()
    assert back.metadata()["output_names"] == ["x", "y", "vx", "vy"]
    np.testing.assert_allclose(back.predict(counts[900:]), dec.predict(counts[900:]), atol=1e-6)


@pytest.mark.parametrize("kind", ["kalman", "wiener"])
def test_linear_baselines_decode_velocity(kind, sim_data):
    counts, truth = sim_data
    dec = _fit(kind, counts, truth)
    r2 = r2_per_output(truth[900:], dec.predict(counts[900:]))
    assert r2[2:].mean() > 0.5


def test_snn_training_is_reproducible(sim_data):
    counts, truth = sim_data
    a, b = (_fit("snn", counts, truth).state_dict() for _ in range(2))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_snn_step_reuses_its_buffers(sim_data):
    counts, truth = sim_data
    dec = _fit("snn", counts, truth)
    k = dec.kernel
    ptrs = [t.data_ptr() for t in (k.x, k.cur, k.v, k.a, k.s, k.y)]
    for c in counts[:20]:
        dec.step(c)
    assert ptrs == [t.data_ptr() for t in (k.x, k.cur, k.v, k.a, k.s, k.y)]
