"""Real-recording loaders and the reference baseline (skip when the data is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from decoders import build_decoder
from decoders.metrics import predict_segments, r2_per_output
from sources import datasets
from sources.datasets import DataMissingError, load_dataset


def _load(name: str) -> datasets.Dataset:
    try:
        return load_dataset(name)
    except DataMissingError as e:
        pytest.skip(f"shared data missing: {e}")


def test_missing_folder_names_the_path(monkeypatch, tmp_path):
    monkeypatch.setenv("SPIKELOOP_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataMissingError, match="nowhere"):
        load_dataset("contdata95")


@pytest.mark.parametrize("name, n_out, bin_ms", [("contdata95", 4, 50.0),
                                                 ("mc_maze_small", 2, 20.0),
                                                 ("peyrache_hd", 2, 100.0)])
def test_dataset_shapes_and_split(name, n_out, bin_ms):
    ds = _load(name)
    assert ds.counts.shape[0] == ds.behavior.shape[0]
    assert ds.behavior.shape[1] == n_out == len(ds.output_names)
    assert ds.bin_ms == bin_ms
    assert np.isfinite(ds.counts).all() and np.isfinite(ds.behavior).all()
    assert ds.n_train in set(ds.segments.tolist()) or len(ds.segments) == 1
    assert 0.75 < ds.n_train / len(ds.counts) < 0.85
    tr, te = ds.train(), ds.test()
    assert len(tr.counts) + len(te.counts) == len(ds.counts)
    assert te.segments[0] == 0


def test_wiener_reproduces_readme_reference_on_contdata95():
    ds = _load("contdata95")
    tr, te = ds.train(), ds.test()
    dec = build_decoder("wiener", history=5, alpha=1.0).fit(tr.counts, tr.behavior)
    r2 = r2_per_output(te.behavior, predict_segments(dec, te.counts, te.segments))
    np.testing.assert_allclose(r2, [0.81, 0.76, 0.76, 0.71], atol=0.01)
