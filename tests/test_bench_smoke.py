"""The throughput and NeuroBench benches work end to end (no timing thresholds: shared machine)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sources.datasets import DataMissingError, load_dataset

REPO = Path(__file__).resolve().parents[1]


def test_throughput_smoke_writes_the_contract_keys(tmp_path):
    out = tmp_path / "throughput.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "throughput.py"), "--smoke",
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert isinstance(res["events_per_s"], int)
    assert isinstance(res["sessions_at_p99_1ms"], int)
    level = res["ingest"]["levels"][0]
    assert level["events_counted"] == level["events_sent"]  # nothing lost at a low rate
    assert {"p50_us", "p99_us", "p999_us", "max_us"} <= level.keys()
    assert "floor_p50_us" in res["ingest"] and "floor_p50_us" in res["concurrency"]
    assert res["concurrency"]["levels"][0]["per_session"][0]["bins"] > 0


def test_neurobench_metrics_without_neurobench_says_how_to_install():
    if importlib.util.find_spec("neurobench") is not None:
        pytest.skip("neurobench is installed here")
    r = subprocess.run([sys.executable, str(REPO / "bench" / "neurobench_metrics.py")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install" in lines[0] and "neurobench" in lines[0], r.stderr


def test_neurobench_metrics_smoke(tmp_path):
    pytest.importorskip("neurobench")
    try:
        load_dataset("mc_maze_small")
    except DataMissingError as e:
        pytest.skip(f"shared data missing: {e}")
    out = tmp_path / "nb.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "neurobench_metrics.py"),
                        "--datasets", "mc_maze_small", "--epochs", "1", "--json", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())["results"]["mc_maze_small"]
    for kind in ("snn", "gru"):
        nb, prj = res[kind]["neurobench"], res[kind]["project"]
        assert nb["params"] == prj["params"]
        assert nb["footprint_bytes"] >= 4 * prj["params"]
        assert nb["synops_ac"] + nb["synops_mac"] > 0
    assert res["snn"]["wrapper_check"]["spike_agreement"] >= 0.999
    assert 0.5 < res["snn"]["neurobench"]["activation_sparsity"] < 1.0
