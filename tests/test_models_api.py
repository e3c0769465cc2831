"""Model store over REST and CLI: train (dataset or own recording), list, run in a session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from clients.control import ControlError
from clients.stream import StreamClient
from tests.helpers import PY, REPO, SimThread, wait_for

DATA = Path(os.environ.get("SPIKELOOP_DATA", REPO.parent / "shared" / "data"))


def test_train_over_rest_from_a_dataset_and_run_the_model_in_a_session(server):
    if not (DATA / "contdata95" / "contdata95.mat").exists():
        pytest.skip(f"real recordings not found under {DATA} (set SPIKELOOP_DATA)")
    c = server.client()
    job = c._call("POST", "/models", json={"name": "cd95-kalman", "source": "contdata95",
                                            "kind": "kalman"})
    assert job["state"] in ("training", "ready")
    m = wait_for(lambda: (lambda x: x if x["state"] != "training" else None)(
        c._call("GET", "/models/cd95-kalman")), 120, "training to finish")
    assert m["state"] == "ready", m
    assert m["type"] == "kalman" and m["n_inputs"] == 95 and m["bin_ms"] == 50
    assert m["metrics"]["r2_mean"] > 0.5 and len(m["training_data_sha256"]) == 64
    assert "cd95-kalman" in [x["name"] for x in c._call("GET", "/models")]
    with SimThread(units=95, seed=2) as sim:  # any 95-channel source can drive it
        s = c.start(c.create_session({"bin_ms": 50, "source": {"endpoint": sim.endpoint,
                                                               "channels": 95},
                                      "decoder": {"model": "cd95-kalman"}})["id"])
        assert s["state"] == "running"  # a stored model skips calibration
        wait_for(lambda: c.session(s["id"])["live"]["bins"] > 20, 30, "bins")
        assert c.session(s["id"])["live"]["decoder"]["type"] == "kalman"
        c.stop(s["id"])


def test_train_rejects_unknown_sources_and_names(server):
    c = server.client()
    for body in ({"name": "x", "source": "/etc/passwd"}, {"name": "x", "source": "nope"},
                 {"name": "bad.name", "source": "contdata95"}):
        with pytest.raises(ControlError) as e:
            c._call("POST", "/models", json=body)
        assert e.value.status == 422
    with pytest.raises(ControlError) as e:
        c._call("GET", "/models/missing")
    assert e.value.status == 404


def test_train_from_an_own_recording_then_decode_with_it(server):
    """Record a session, train a decoder on its recording, run a new session on the model."""
    c = server.client()
    with SimThread(units=96, seed=21) as sim:
        s = c.start(c.create_session({"bin_ms": 20, "source": {"endpoint": sim.endpoint,
                                                               "channels": 96},
                                      "decoder": {"calibration_s": 1.0}})["id"])
        # 30 s to train on and 750 bins to score: offline this gives velocity R² >= 0.69.
        wait_for(lambda: c.session(s["id"])["live"]["bins"] > 1500, 90, "30 s of recording")
        rec = c.stop(s["id"])["recording"]
        out = subprocess.run([PY, "-m", "clients.cli", "train", rec, "--kind", "kalman",
                              "--name", "from-rec", "--data-dir", str(server.data_dir)],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "from-rec" in out.stdout and "outputs ['x', 'y', 'vx', 'vy']" in out.stderr
        s2 = c.start(c.create_session({"bin_ms": 20, "source": {"endpoint": sim.endpoint,
                                                                "channels": 96},
                                       "decoder": {"model": "from-rec"}})["id"])
        sc = StreamClient(s2["output_endpoint"], (b"decoded",))
        pred, true = [], []
        while len(pred) < 750:
            u = sc.recv(10_000)
            assert u is not None
            if u.truth is not None:
                pred.append(u.decoded[2:]), true.append(u.truth[2:])
        sc.close()
        c.stop(s2["id"])
    p, t = np.array(pred), np.array(true)
    r2 = 1 - ((t - p) ** 2).sum(0) / ((t - t.mean(0)) ** 2).sum(0)
    assert r2.mean() > 0.5, r2
