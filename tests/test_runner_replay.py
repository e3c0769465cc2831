"""A real session process records a live run; verify replays it identically.

The session runs ``python -m service.session.runner`` (its own process, as in
production) on simulated motor cortex published over ZeroMQ at ~4x real time,
for 14 s of source time with calibration, arm, disarm and a limits change.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from service.recording.verify import verify
from service.session.config import SessionConfig
from service.session.simsession import sim_frames
from sources.motor import MotorCortexSim

REPO = Path(__file__).resolve().parents[1]


def test_live_session_replays_bit_for_bit(tmp_path):
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    cfg = SessionConfig(name="live", bin_ms=20, gc_freeze=False,
                        source={"channels": 96, "endpoint": f"tcp://127.0.0.1:{port}"},
                        decoder={"type": "kalman", "calibration_s": 5},
                        stim={"policy": {"type": "speed_to_dbs", "gain_ma_per_cm_s": 0.2}},
                        output={"endpoint": "tcp://127.0.0.1:0"})
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "rec").mkdir()
    control = f"ipc://{tmp_path}/ctl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.session.runner", "--id", "s1", "--config",
         str(tmp_path / "cfg.json"), "--control", control, "--run-dir", str(tmp_path),
         "--recordings-dir", str(tmp_path / "rec")], cwd=REPO)
    ctl = ctx.socket(zmq.DEALER)
    ctl.setsockopt(zmq.RCVTIMEO, 60_000)  # the first answer waits for torch's import
    ctl.connect(control)

    def call(req: dict) -> dict:
        ctl.send_multipart([json.dumps(req).encode()])
        return json.loads(ctl.recv_multipart()[0])

    try:
        assert call({"cmd": "status"})["ok"]  # also: the session is subscribed by now
        time.sleep(0.3)
        controls = {1600: {"cmd": "arm"}, 3000: {"cmd": "disarm"}, 3400: {"cmd": "arm"},
                    4000: {"cmd": "limits", "limits": {"max_amplitude_ma": 1.0}}}
        for i, frames in enumerate(sim_frames(MotorCortexSim(units=96, seed=1), 14.0, 5.0)):
            pub.send_multipart(frames)
            if i % 4 == 3:
                time.sleep(0.0025)
            if i in controls:
                assert call(controls[i])["ok"]
        time.sleep(0.5)
        status = call({"cmd": "status"})["status"]
        assert status["state"] == "running" and status["bins"] >= 690
        call({"cmd": "stop"})
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
        ctl.close(0)
        pub.close(0)
    (log,) = (tmp_path / "rec").glob("*.splog")
    report = verify(log)
    assert report.identical, report.first_divergence
    assert report.bins_compared == status["bins"] and report.models == 1
    assert report.source_seconds >= 10


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
