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
    "snn_trace": ("snn", {"hidden": 24, "epochs": 2, "window": 32, "readout_trace": True}),
    "gru": ("gru", {"hidden": 32, "epochs": 3, "window": 32, "seed": 0}),
    "lstm": ("lstm", {"hidden": 32, "epochs": 3, "window": 32, "seed": 0}),
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


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_rnn_training_is_reproducible_and_learns(kind, sim_data):
    counts, truth = sim_data
    name, params = KINDS[kind]
    params = params | {"epochs": 15, "batch": 8}
    a, b = (build_decoder(name, **params).fit(counts[:900], truth[:900]) for _ in range(2))
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    assert r2_per_output(truth[900:, 2:], a.predict(counts[900:])[:, 2:]).mean() > 0.3


@pytest.mark.parametrize("branches", [1, 3])
def test_snn_kernel_matches_the_trained_network_on_both_input_paths(branches, sim_data):
    """The event-driven numpy step (rows of the inputs that fired, rows of the neurons
    that spiked) and the dense product compute what the torch network computes."""
    import torch

    from decoders.snn import SNNKernel, SNNNet, export_kernel_params

    counts, _ = sim_data
    counts = counts[:200] * (np.arange(200)[:, None] % 3 == 0)  # sparse bins and dense bins
    net = SNNNet(counts.shape[1], 4, hidden=32, branches=branches, seed=3)
    with torch.no_grad():
        net.w_in.mul_(3.0)  # enough drive that neurons spike and recurrence matters
    mu, sd = counts.mean(0), counts.std(0) + 1e-3
    with torch.no_grad():
        ref, spikes = (t[0].numpy() for t in net(
            torch.from_numpy((counts - mu) / sd).float()[None]))
    assert 0.02 < spikes.mean() < 0.5, spikes.mean()
    p = export_kernel_params(net, mu, sd, np.zeros(4), np.ones(4))
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in p.items()}
    for dense_above in (0, counts.shape[1]):  # always dense, never dense
        k = SNNKernel(tensors, 32, branches)
        k._dense_above = dense_above
        out, s = k.run(counts)
        np.testing.assert_array_equal(s, spikes)
        np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_rnn_kernel_matches_torch_and_reuses_buffers(kind, sim_data):
    import torch

    from decoders.rnn import RNNNet, export_rnn_params

    counts, _ = sim_data
    dec = build_decoder(kind, hidden=16)
    dec.n_inputs, dec.n_outputs, dec.output_names = counts.shape[1], 4, list("abcd")
    net = RNNNet(kind, counts.shape[1], 4, hidden=16, seed=3)
    mu, sd = counts.mean(0), counts.std(0) + 1e-3
    dec.kparams = export_rnn_params(net, mu, sd, np.zeros(4), np.ones(4))
    dec._prepare()
    with torch.no_grad():
        ref = net(torch.from_numpy((counts[:200] - mu) / sd).float()[None])[0][0].numpy()
    np.testing.assert_allclose(dec.predict(counts[:200]), ref, atol=1e-4)
    bufs = (dec.x, dec.gi, dec.gh, dec.h, dec.c, dec.y)
    ptrs = [b.ctypes.data for b in bufs]
    out = dec.step(counts[0])
    for c in counts[1:20]:
        assert dec.step(c) is out
    assert ptrs == [b.ctypes.data for b in bufs]
