"""Scale-out across hosts: each worker in its own network namespace, then a partition.

The namespaces are this test's own private hosts (veth pairs, addresses in a
random 10.x/16 that only this test uses): the control plane, Redis and the
source stay in the test's namespace, and each worker reaches them over its own
link, as a rig computer would over the lab network. Cutting host A's link is a
network partition: A's worker can no longer heartbeat, so it must stop its
sessions itself (its lease) *before* the control plane restarts them on B.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from service.session.store import Store
from tests.helpers import (
    PY,
    REPO,
    SimThread,
    processes_mentioning,
    start_redis,
    start_server,
    stop_redis,
    stop_server,
    wait_for,
)
from tests.test_cluster import LEASE_S, TIMEOUT_S, _config, _running

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2")


@dataclass
class Host:
    ns: str
    veth: str  # our end of the link
    ip: str  # the host's address
    gateway: str  # our address on its link


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def hosts(n: int):
    """``n`` hosts, and our own "lab network" address (on our loopback device, so it
    stays up whatever happens to a host's link) where Redis and the source listen."""
    tag = f"{os.getpid() % 10000}{random.randrange(100)}"
    net = random.randrange(100, 250)
    lab = f"10.{net}.250.1"
    made = []
    _ip("addr", "add", f"{lab}/32", "dev", "lo")
    try:
        for i in range(n):
            h = Host(f"sl{tag}h{i}", f"sl{tag}v{i}", f"10.{net}.{i}.2", f"10.{net}.{i}.1")
            _ip("netns", "add", h.ns)
            made.append(h)
            _ip("link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
            _ip("addr", "add", f"{h.gateway}/24", "dev", h.veth)
            _ip("link", "set", h.veth, "up")
            _ip("-n", h.ns, "addr", "add", f"{h.ip}/24", "dev", "eth0")
            _ip("-n", h.ns, "link", "set", "eth0", "up")
            _ip("-n", h.ns, "link", "set", "lo", "up")
            _ip("-n", h.ns, "route", "add", "default", "via", h.gateway)
        yield lab, made
    finally:
        subprocess.run(["ip", "addr", "del", f"{lab}/32", "dev", "lo"], capture_output=True)
        for h in made:
            pids = subprocess.run(["ip", "netns", "pids", h.ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "link", "del", h.veth], capture_output=True)
            subprocess.run(["ip", "netns", "del", h.ns], capture_output=True)


def test_partitioned_host_fences_itself_before_its_sessions_restart_elsewhere(tmp_path):
    with hosts(2) as (lab, (a, b)):
        secret = f"s{random.getrandbits(64):x}"
        redis = start_redis(tmp_path / "redis", bind=("127.0.0.1", lab), password=secret)
        srv = start_server(tmp_path / "cp", extra=("--redis", redis.url,
                                                   "--worker-timeout", str(TIMEOUT_S)))
        workers = []
        try:
            url = f"redis://:{secret}@{lab}:{redis.port}/0"
            for h, name in ((a, "wA"), (b, "wB")):
                workers.append(subprocess.Popen(
                    ["ip", "netns", "exec", h.ns, PY, "-m", "clients.cli", "worker", "--redis",
                     url, "--data-dir", str(tmp_path / name), "--name", name, "--capacity", "3",
                     "--lease", str(LEASE_S), "--bind-host", h.ip], cwd=REPO,
                    start_new_session=True))
            c = srv.client()
            wait_for(lambda: len(c._call("GET", "/workers")["workers"]) == 2, 60,
                     "both workers to register from their hosts")
            with SimThread(units=32, seed=7, host=lab) as sim:
                sids = {}
                for i, failover in enumerate(["restart", "restart", "fail", "fail"]):
                    cfg = _config(sim.endpoint, f"n{i}", failover=failover)
                    s = c.start(c.create_session(cfg)["id"])
                    sids[s["id"]] = s
                for sid in sids:
                    wait_for(lambda sid=sid: _running(c, sid, 10), 60, f"{sid} to run")
                on_a = [sid for sid in sids if c.session(sid)["worker"] == "wA"]
                assert len(on_a) == 2
                for sid in on_a:  # their output is on host A's address
                    assert c.session(sid)["output_endpoint"].startswith(f"tcp://{a.ip}:")
                    c.arm(sid)

                _ip("link", "set", a.veth, "down")  # partition host A
                t_cut = time.time()

                # A session's loop ends by disarming, then writes its status "stopped"
                # (before it flushes its recording): that file's time is when it stopped.
                status = {sid: tmp_path / "wA" / "run" / f"{sid}.status.json" for sid in on_a}
                wait_for(lambda: all(json.loads(p.read_text())["state"] == "stopped"
                                     for p in status.values()), 30,
                         "host A's worker to stop its sessions when its lease ran out")
                t_fenced = max(p.stat().st_mtime for p in status.values())
                restarted = next(sid for sid in on_a
                                 if sids[sid]["config"]["failover"] == "restart")
                wait_for(lambda: c.session(restarted)["worker"] == "wB"
                         and _running(c, restarted, 5), 60, "the session to restart on wB")
                event = next(e for e in c._call("GET", "/workers")["failovers"]
                             if e["session"] == restarted)
                # Never two copies: A had stopped its copy before B was asked to start one.
                assert t_cut < t_fenced < event["at"], (t_cut, t_fenced, event)
                wait_for(lambda: not processes_mentioning(str(tmp_path / "wA" / "run")), 30,
                         "host A's session processes to exit")
                assert c.session(restarted)["live"]["armed"] is False
                shown = json.dumps([c.session(sid) for sid in sids]) + json.dumps(
                    c._call("GET", "/workers"))
                assert secret not in shown, "the Redis password must never be shown"
                local = Store(tmp_path / "wA" / "worker.db")
                assert {local.get_session(sid)["state"] for sid in on_a} == {"stopped"}
                for sid in sids:
                    c.stop(sid)
                print(json.dumps({"cut_to_fenced_s": round(t_fenced - t_cut, 2),
                                  "cut_to_restart_s": round(event["at"] - t_cut, 2)}))
        finally:
            for w in workers:
                if w.poll() is None:
                    os.killpg(w.pid, signal.SIGTERM)
                    try:
                        w.wait(30)
                    except subprocess.TimeoutExpired:
                        os.killpg(w.pid, signal.SIGKILL)
                        w.wait()
            stop_server(srv)
            stop_redis(redis)
    leaked = processes_mentioning(str(tmp_path))
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    assert not leaked, f"processes left behind: {leaked}"
