"""Recordings over REST and CLI: list, download, verify, NWB export, replay into a session."""

from __future__ import annotations

import subprocess

import pytest

from clients.control import ControlError
from tests.helpers import PY, REPO, SimThread, wait_for


def test_record_list_download_verify_and_replay(server):
    c = server.client()
    with SimThread(units=96, seed=8) as sim:
        s = c.start(c.create_session({
            "name": "rec", "bin_ms": 10, "source": {"endpoint": sim.endpoint, "channels": 96},
            "decoder": {"type": "kalman", "calibration_s": 2.0}})["id"])
        sid = s["id"]
        wait_for(lambda: c.session(sid)["live"]["bins"] > 600, 30, "bins")
        c.arm(sid)
        wait_for(lambda: c.session(sid)["live"]["bins"] > 700, 30, "armed bins")
        final = c.stop(sid)
    log_name = final["recording"].rsplit("/", 1)[1]

    recs = c._call("GET", "/recordings")
    assert log_name in [r["name"] for r in recs]
    entry = next(r for r in recs if r["name"] == log_name)
    assert entry["session_id"] == sid and entry["clean"] and entry["channels"] == 96

    data = c.http.get(f"/recordings/{log_name}").content
    assert data[:6] == b"SPKLOG" and len(data) == entry["size_bytes"]
    with pytest.raises(ControlError) as e:
        c._call("GET", "/recordings/..%2Fspikeloop.db")
    assert e.value.status == 404

    out = subprocess.run([PY, "-m", "clients.cli", "verify", final["recording"], "--quiet"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"identical": true' in out.stdout

    nwb = log_name.rsplit(".", 1)[0] + ".nwb"
    wait_for(lambda: nwb in [r["name"] for r in c._call("GET", "/recordings")], 60,
             "the NWB export at session stop")

    r = c._call("POST", f"/recordings/{log_name}/replay", json={"speed": 4.0})
    rid = r["id"]
    assert r["config"]["source"]["endpoint"] != s["config"]["source"]["endpoint"]
    wait_for(lambda: (c.session(rid)["live"] or {}).get("bins", 0) > 200, 60, "replayed bins")
    assert c.stop(rid)["state"] == "stopped"
