"""LSL round trip on the loopback: LSL outlet -> ``spikeloop lsl source`` -> a real session
-> ``spikeloop lsl outlet`` -> LSL inlet.

Discovery stays on this machine: an LSLAPICFG file with ResolveScope=machine,
KnownPeers={127.0.0.1}, IPv6 off and a SessionID of this test's own, given to
this process and to the bridge processes. Nothing is multicast off the machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sources.motor import MotorCortexSim
from tests.helpers import (
    PY,
    REPO,
    free_port,
    processes_mentioning,
    start_server,
    stop_server,
    wait_for,
)

UNITS, BIN_MS = 32, 10.0


@pytest.fixture(scope="module")
def lsl_cfg(tmp_path_factory) -> Iterator[Path]:
    """Loopback-only LSL for this process and its children; the previous value is restored."""
    path = tmp_path_factory.mktemp("lsl") / "lsl_api.cfg"
    path.write_text("[ports]\nIPv6 = disable\n\n[multicast]\nResolveScope = machine\n"
                    "MachineAddresses = {127.0.0.1}\n\n"
                    f"[lab]\nKnownPeers = {{127.0.0.1}}\nSessionID = spikeloop-test-"
                    f"{uuid.uuid4().hex[:12]}\n\n[log]\nlevel = -2\n")
    old = os.environ.get("LSLAPICFG")
    os.environ["LSLAPICFG"] = str(path)
    yield path
    if old is None:
        os.environ.pop("LSLAPICFG", None)
    else:
        os.environ["LSLAPICFG"] = old


class LslRig(threading.Thread):
    """A simulated rig on LSL: spike counts per 10 ms and hand behaviour, in real time."""

    def __init__(self, pylsl, tag: str):
        super().__init__(daemon=True)
        self.pylsl = pylsl
        self.sim = MotorCortexSim(units=UNITS, seed=7)
        rate = 1000.0 / BIN_MS
        self.spikes_name, self.behavior_name = f"{tag}-spikes", f"{tag}-hand"
        spk = pylsl.StreamInfo(self.spikes_name, "SpikeCounts", UNITS, rate, pylsl.cf_float32,
                               self.spikes_name)
        beh = pylsl.StreamInfo(self.behavior_name, "Behavior", 4, rate, pylsl.cf_double64,
                               self.behavior_name)
        chans = beh.desc().append_child("channels")
        for name in self.sim.truth_names:
            chans.append_child("channel").append_child_value("label", name)
        self.spikes, self.behavior = pylsl.StreamOutlet(spk), pylsl.StreamOutlet(beh)
        self.t0 = pylsl.local_clock()
        self.last_t = self.t0
        self.stop = threading.Event()

    def run(self) -> None:
        step_ns = int(BIN_MS * 1e6)
        clock = self.pylsl.local_clock
        while not self.stop.is_set():
            t_from = self.sim.t_ns
            step = self.sim.advance(step_ns)
            t_end = self.t0 + step.t_ns / 1e9
            delay = t_end - clock()
            if delay > 0:
                self.stop.wait(delay)
            self.behavior.push_sample(list(map(float, step.truth)), t_end)
            counts = np.bincount(step.ids, minlength=UNITS).astype(np.float32)
            self.spikes.push_sample(counts.tolist(), self.t0 + t_from / 1e9)
            self.last_t = t_end


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "clients.cli", "lsl", *args], cwd=REPO, env=env,
                            start_new_session=True)


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_lsl_round_trip_through_a_session(lsl_cfg, tmp_path):
    pylsl = pytest.importorskip("pylsl", reason="pip install -e '.[lsl]'")
    tag = f"slt-{uuid.uuid4().hex[:8]}"
    env = os.environ | {"LSLAPICFG": str(lsl_cfg)}
    rig = LslRig(pylsl, tag)
    rig.start()
    srv = start_server(tmp_path / "data")
    procs: list[subprocess.Popen] = []
    try:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        procs.append(_spawn(["source", rig.spikes_name, "--behavior", rig.behavior_name,
                             "--endpoint", endpoint], env))
        c = srv.client()
        sid = c.start(c.create_session({
            "name": "lsl", "bin_ms": BIN_MS,
            "source": {"endpoint": endpoint, "channels": UNITS},
            "decoder": {"type": "kalman", "calibration_s": 3.0},
            "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}}})["id"])["id"]
        wait_for(lambda: c.session(sid)["live"]["state"] == "running", 60,
                 "the LSL-fed session to calibrate and run")
        procs.append(_spawn(["outlet", sid, "--api", srv.url, "--prefix", tag,
                             "--timestamps", "source", "--data-dir", str(srv.data_dir)], env))

        found = pylsl.resolve_byprop("name", f"{tag}-decoded", 1, 30.0)
        assert found, "the decoded outlet was not found on the loopback"
        decoded = pylsl.StreamInlet(found[0], processing_flags=pylsl.proc_clocksync)
        info = decoded.info(10.0)
        labels, ch = [], info.desc().child("channels").child("channel")
        while not ch.empty():
            labels.append(ch.child_value("label"))
            ch = ch.next_sibling()
        assert labels == ["x", "y", "vx", "vy"]  # names travelled LSL -> session -> LSL
        markers = pylsl.StreamInlet(pylsl.resolve_byprop("name", f"{tag}-stim", 1, 30.0)[0])
        markers.open_stream(10.0)

        samples, stamps = [], []
        deadline_pulls = 600
        while len(samples) < 50 and deadline_pulls:
            s, t = decoded.pull_sample(timeout=0.1)
            deadline_pulls -= 1
            if s is not None:
                samples.append(s)
                stamps.append(t)
        assert len(samples) >= 50, f"only {len(samples)} decoded samples arrived over LSL"
        arr = np.asarray(samples)
        assert arr.shape[1] == 4 and np.isfinite(arr).all()
        # Source timestamps: the bins sit on the rig's own LSL clock, inside what it sent.
        assert rig.t0 <= min(stamps) and max(stamps) <= rig.last_t + 1.0
        assert np.all(np.diff(stamps) > 0)

        c.arm(sid)  # a change of stimulation outcome -> a marker
        marker = None
        for _ in range(200):
            m, _ = markers.pull_sample(timeout=0.1)
            if m is not None and json.loads(m[0])["armed"]:
                marker = json.loads(m[0])
                break
        assert marker is not None, "no stimulation marker after arming"
        assert marker["status"] in ("sent", "clamped", "safe") and "cmd" in marker
        c.disarm(sid)
        for p in reversed(procs):  # the outlet first, while the session still publishes
            _stop(p)
        assert [p.returncode for p in procs] == [0, 0]
        c.stop(sid)
    finally:
        for p in procs:
            _stop(p)
        rig.stop.set()
        rig.join(5)
        stop_server(srv)
        leaked = processes_mentioning(str(tmp_path))
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        assert not leaked, f"processes left behind: {leaked}"
