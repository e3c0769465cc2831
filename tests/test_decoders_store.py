"""Training entry point and model store."""

from __future__ import annotations

import numpy as np
import pytest

from decoders.store import ModelStore
from decoders.train import train_model
from sources.motor import MotorCortexSim

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def arrays():
    counts, truth = MotorCortexSim(units=16, seed=3).counts(800, 50_000_000)
    return counts, truth


def test_train_store_load_roundtrip(arrays, tmp_path):
    seen = []
    dec, meta = train_model(arrays, "snn", {"hidden": 16, "epochs": 2, "window": 16},
                            seed=1, progress=lambda e, n, info: seen.append(e), bin_ms=50.0,
                            output_names=["x", "y", "vx", "vy"])
    assert seen and seen[-1] <= 2
    store = ModelStore(tmp_path)
    store.save("m1", dec, meta)
    listed = store.list()
    assert [m["name"] for m in listed] == ["m1"]
    m = listed[0]
    assert m["type"] == "snn" and m["bin_ms"] == 50.0 and m["channels"] == 16
    assert len(m["training_data_sha256"]) == 64 and "r2_mean" in m["metrics"]
    back = store.load("m1")
    np.testing.assert_allclose(back.predict(arrays[0][:50]), dec.predict(arrays[0][:50]),
                               atol=1e-6)


def test_training_is_seeded(arrays):
    a, ma = train_model(arrays, "snn", {"hidden": 16, "epochs": 2, "window": 16}, seed=5)
    b, mb = train_model(arrays, "snn", {"hidden": 16, "epochs": 2, "window": 16}, seed=5)
    assert ma["metrics"] == mb["metrics"]
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])


def test_store_rejects_bad_names_and_missing(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(ValueError):
        store.load("../etc/passwd")
    with pytest.raises(KeyError):
        store.load("absent")
    assert store.list() == []


def test_gru_trains_seeded_through_train_model(arrays, tmp_path):
    params = {"hidden": 8, "epochs": 2, "window": 16}
    a, ma = train_model(arrays, "gru", params, seed=2)
    b, mb = train_model(arrays, "gru", params, seed=2)
    c, _ = train_model(arrays, "gru", params, seed=3)
    assert ma["metrics"] == mb["metrics"] and a.params["seed"] == 2
    assert not np.array_equal(a.state_dict()["w_hh"], c.state_dict()["w_hh"])
    ModelStore(tmp_path).save("g", a, ma)
    back = ModelStore(tmp_path).load("g")
    assert back.kind == "gru"
    np.testing.assert_array_equal(back.predict(arrays[0][:50]), a.predict(arrays[0][:50]))
