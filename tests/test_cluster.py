"""Scale-out: one control plane, workers registered in a real Redis, and failover.

Everything is real: redis-server, the uvicorn control plane started with ``--redis``,
``spikeloop worker`` processes, their session processes, a simulated source over
ZeroMQ on 127.0.0.1. A worker "dies" the way a host does: the worker and every
session process it started are SIGKILLed at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.control import ControlError
from clients.stimulator import StimulatorLink
from service.recording.recorder import RecordType, read_log
from service.session.store import Store
from tests.helpers import (
    PY,
    REPO,
    SimThread,
    processes_mentioning,
    start_server,
    stop_process,
    stop_server,
    wait_for,
)

TIMEOUT_S = 3.0  # control plane: a worker silent this long is lost
LEASE_S = 1.5  # worker: no heartbeat this long -> stop own sessions


@dataclass
class WorkerProc:
    name: str
    data_dir: Path
    proc: subprocess.Popen

    def kill_host(self) -> None:
        """SIGKILL the worker and its sessions together, as a host that loses power."""
        pids = [self.proc.pid, *processes_mentioning(str(self.data_dir))]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


def start_worker(redis_url: str, root: Path, name: str, capacity: int = 3,
                 labels: tuple[str, ...] = ()) -> WorkerProc:
    data = root / name
    cmd = [PY, "-m", "clients.cli", "worker", "--redis", redis_url, "--data-dir", str(data),
           "--name", name, "--capacity", str(capacity), "--lease", str(LEASE_S)]
    for lab in labels:
        cmd += ["--label", lab]
    return WorkerProc(name, data, subprocess.Popen(cmd, cwd=REPO, start_new_session=True))


@pytest.fixture
def cluster(tmp_path: Path, redis_server):
    srv = start_server(tmp_path / "cp", extra=("--redis", redis_server.url,
                                               "--worker-timeout", str(TIMEOUT_S)))
    workers = [start_worker(redis_server.url, tmp_path, "wA", labels=("rig=A",)),
               start_worker(redis_server.url, tmp_path, "wB", labels=("rig=B",))]
    # The central recorder: every session's log, written again in one place.
    central_log = open(tmp_path / "central.log", "wb")
    central = subprocess.Popen([PY, "-m", "clients.cli", "recorder", "--redis", redis_server.url,
                                "--out", str(tmp_path / "central"), "--no-nwb"], cwd=REPO,
                               stdout=central_log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    c = srv.client()
    try:
        wait_for(lambda: len([w for w in c._call("GET", "/workers")["workers"]
                              if w["alive"]]) == 2, 60, "both workers to register")
        yield srv, c, workers, redis_server
    finally:
        for w in workers:
            stop_process(w.proc)  # SIGTERM: the worker stops its sessions
        central.terminate()
        central.wait(30)
        central_log.close()
        stop_server(srv)
        leaked = processes_mentioning(str(tmp_path))
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        assert not leaked, f"processes left behind: {leaked}"


def _config(endpoint: str, name: str, **over) -> dict:
    cfg = {"name": name, "bin_ms": 20.0, "source": {"endpoint": endpoint, "channels": 32},
           "decoder": {"type": "kalman", "calibration_s": 2.0},
           "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}}}
    cfg.update(over)
    return cfg


def _running(c, sid: str, min_bins: int = 1):
    s = c.session(sid)
    return s if s["state"] == "running" and (s["live"] or {}).get("bins", 0) >= min_bins else None


def test_sessions_spread_over_workers_and_fail_over_when_one_dies(cluster):
    srv, c, workers, _ = cluster
    wa = workers[0]
    with SimThread(units=32, seed=4) as sim:
        sids = []
        # Least loaded first, ties by name: s0 -> wA, s1 -> wB, s2 -> wA, s3 -> wB.
        for i, failover in enumerate(["restart", "restart", "fail", "fail"]):
            s = c.create_session(_config(sim.endpoint, f"s{i}", failover=failover))
            sids.append(c.start(s["id"])["id"])
        placed = {sid: c.session(sid)["worker"] for sid in sids}
        assert sorted(placed.values()) == ["wA", "wA", "wB", "wB"], placed  # least loaded
        for sid in sids:
            wait_for(lambda sid=sid: _running(c, sid, 10), 60, f"session {sid} to run")
        on_a = [sid for sid in sids if placed[sid] == "wA"]
        listed = {w["id"]: w for w in c._call("GET", "/workers")["workers"]}
        assert sorted(listed["wA"]["sessions"]) == sorted(on_a)

        # Arm the sessions on A and watch their stimulation as a stimulator would.
        links = {}
        for sid in on_a:
            c.arm(sid)
            links[sid] = StimulatorLink(c.session(sid)["output_endpoint"], deadline_ms=300)
        wait_for(lambda: all(lk.poll(50) is None and lk.commands > 0 for lk in links.values()),
                 20, "stim commands on the stimulator links")
        recordings = {sid: Path(c.session(sid)["recording"]) for sid in on_a}

        wa.kill_host()

        # The stimulators of the dead host fail safe on their own (no heartbeats) ...
        wait_for(lambda: all(lk.poll(50) is None and lk.lost for lk in links.values()), 10,
                 "the stimulator links to go safe")
        for lk in links.values():
            lk.close()
        # ... and the control plane fails the host's sessions over, per their config.
        restart = next(sid for sid in on_a if c.session(sid)["config"]["failover"] == "restart")
        fail = next(sid for sid in on_a if sid != restart)
        wait_for(lambda: c.session(fail)["state"] == "failed", 30, "the 'fail' session to fail")
        assert "worker wA lost" in c.session(fail)["error"]
        wait_for(lambda: c.session(restart)["worker"] == "wB" and _running(c, restart, 5), 60,
                 "the 'restart' session to run on wB")
        moved = c.session(restart)
        assert moved["live"]["armed"] is False, "a restarted session must start disarmed"
        events = c._call("GET", "/workers")["failovers"]
        assert {(e["session"], e["action"]) for e in events} == {
            (restart, "restarted"), (fail, "failed")}
        assert [w["id"] for w in c._call("GET", "/workers")["workers"]] == ["wB"]
        # The sessions on B never noticed.
        for sid in sids:
            if placed[sid] == "wB":
                assert _running(c, sid)

        # Nothing recorded on the dead host is lost: each log reads to its last whole
        # record, and the central copy, closed when the control plane marked it abandoned,
        # is a byte prefix of it that reads the same way.
        central_dir = srv.data_dir.parent / "central"
        for path in recordings.values():
            records = list(read_log(path))
            assert records[0].type == RecordType.CONFIG
            assert sum(r.type == RecordType.BIN for r in records) >= 10
            wait_for(lambda path=path: f"{path.name}: abandoned" in (
                srv.data_dir.parent / "central.log").read_text(), 30,
                f"the central recorder to close its copy of {path.name}")
            copy = (central_dir / path.name).read_bytes()
            assert path.read_bytes().startswith(copy)
            assert sum(r.type == RecordType.BIN for r in read_log(central_dir / path.name)) >= 10

        for sid in sids:
            c.stop(sid)
        assert {c.session(sid)["state"] for sid in sids} == {"stopped", "failed"}


def test_placement_labels_and_capacity_are_honoured(cluster):
    srv, c, workers, _ = cluster
    with SimThread(units=32, seed=5) as sim:
        s = c.create_session(_config(sim.endpoint, "on-b", placement={"rig": "B"}))
        assert c.start(s["id"])["worker"] == "wB"
        s2 = c.create_session(_config(sim.endpoint, "nowhere", placement={"rig": "Z"}))
        with pytest.raises(ControlError) as exc:
            c.start(s2["id"])
        assert exc.value.status == 409
        assert "no live worker with labels {'rig': 'Z'} has room" in str(exc.value.detail)
        assert "spikeloop worker" in str(exc.value.detail)
        c.stop(s["id"])


def test_a_worker_that_loses_redis_stops_its_sessions(cluster):
    """The lease: cut off from Redis, a worker drives its sessions safe by stopping them
    (before the control plane could restart them elsewhere)."""
    srv, c, workers, redis_srv = cluster
    with SimThread(units=32, seed=6) as sim:
        s = c.create_session(_config(sim.endpoint, "leased", placement={"rig": "A"}))
        sid = c.start(s["id"])["id"]
        wait_for(lambda: _running(c, sid, 5), 60, "the session to run")
        session_pids = processes_mentioning(sid)
        assert session_pids
        redis_srv.proc.send_signal(signal.SIGSTOP)  # Redis hangs: no heartbeat succeeds
        try:
            wait_for(lambda: not processes_mentioning(sid), 30,
                     "the worker to stop its session after its lease ran out")
        finally:
            redis_srv.proc.send_signal(signal.SIGCONT)
        # The session stopped (not crashed), and its audit log ends disarmed.
        local = Store(workers[0].data_dir / "worker.db")
        wait_for(lambda: local.get_session(sid)["state"] == "stopped", 30,
                 "the worker to record the session as stopped")
        audit = [json.loads(x) for x in
                 (workers[0].data_dir / "audit" / f"{sid}.audit.jsonl").read_text().splitlines()]
        assert [a["state"] for a in audit if a.get("event") == "state"][-1] == "stopped"
        assert [a["status"] for a in audit if "status" in a][-1] == "safe"


def test_placement_without_workers_is_refused_not_guessed(server):
    c = server.client()
    s = c.create_session(_config("tcp://127.0.0.1:5999", "meant-for-rig-2",
                                 placement={"rig": "rig-2"}))
    with pytest.raises(ControlError) as exc:
        c.start(s["id"])
    assert exc.value.status == 409 and "has no workers" in str(exc.value.detail)


def test_sessions_of_a_crashed_worker_process_exit_safe_on_their_own(cluster):
    """The worker process dies but its host lives: its sessions must not run on unmanaged
    (the control plane is about to restart them elsewhere), so each drives its
    stimulation safe and stops when it sees its parent gone."""
    srv, c, workers, _ = cluster
    wa = workers[0]
    with SimThread(units=32, seed=8) as sim:
        s = c.create_session(_config(sim.endpoint, "orphan", placement={"rig": "A"}))
        sid = c.start(s["id"])["id"]
        wait_for(lambda: _running(c, sid, 5), 60, "the session to run")
        c.arm(sid)
        assert processes_mentioning(str(wa.data_dir / "run"))
        wa.proc.kill()  # the worker only; its sessions are in their own process groups
        wa.proc.wait(10)
        wait_for(lambda: not processes_mentioning(str(wa.data_dir / "run")), 30,
                 "the orphaned session to stop on its own")
        status = json.loads((wa.data_dir / "run" / f"{sid}.status.json").read_text())
        assert status["state"] == "failed" and "is gone" in status["error"]
        assert status["armed"] is False
        wait_for(lambda: c.session(sid)["state"] == "failed", 30, "the control plane to fail it")


def test_control_plane_restart_reattaches_to_sessions_on_workers(cluster):
    srv, c, workers, redis_srv = cluster
    with SimThread(units=32, seed=9) as sim:
        s = c.create_session(_config(sim.endpoint, "survivor"))
        sid = c.start(s["id"])["id"]
        wait_for(lambda: _running(c, sid, 5), 60, "the session to run")
        where = c.session(sid)["worker"]
        srv.proc.kill()  # the API dies; workers and their sessions must not notice
        srv.proc.wait(10)
        srv2 = start_server(srv.data_dir, extra=("--redis", redis_srv.url,
                                                 "--worker-timeout", str(TIMEOUT_S)))
        try:
            c2 = srv2.client()
            again = c2.session(sid)
            assert again["worker"] == where and again["state"] == "running"
            bins = again["live"]["bins"]
            wait_for(lambda: c2.session(sid)["live"]["bins"] > bins, 30, "bins to keep coming")
            assert c2.stop(sid)["state"] == "stopped"
        finally:
            stop_server(srv2)


def test_worker_hosted_session_stimulates_again_after_its_source_restarts(cluster):
    """The lifecycle matrix's worker path: the same session core runs under a worker, so a
    source restart (new publisher, new epoch, clock from zero) goes safe, then resumes."""
    from tests.helpers import free_port

    srv, c, workers, redis_srv = cluster
    port = free_port()
    cfg = _config(f"tcp://127.0.0.1:{port}", "restart-on-worker")
    cfg["stim"]["policy"]["gain_ma_per_cm_s"] = 0.2
    with SimThread(units=32, seed=11, port=port):
        sid = c.start(c.create_session(cfg)["id"])["id"]
        wait_for(lambda: _running(c, sid, 5), 60, "the session to run on a worker")
        c.arm(sid)
        on = lambda: (c.session(sid)["live"]["counters"].get("stim_sent", 0)  # noqa: E731
                      + c.session(sid)["live"]["counters"].get("stim_clamped", 0))
        wait_for(lambda: on() > 0, 30, "stimulation before the restart")
    before = on()
    with SimThread(units=32, seed=12, port=port):
        wait_for(lambda: c.session(sid)["live"]["source_restarts"] == 1, 30, "the restart")
        wait_for(lambda: on() > before + 20, 30, "stimulation after the restart")
        live = c.session(sid)["live"]
        assert live["armed"] and live["state"] == "running" and live["segments"] == 2
    assert c.stop(sid)["state"] == "stopped"
