"""Scale-out costs: control calls through a worker vs a local session, failover time, Redis size.

What runs (all real): redis-server on 127.0.0.1, a simulated source (``spikeloop sim``),
then twice the same sessions (Kalman, 32 channels, 20 ms bins):

1. **local** - ``spikeloop serve`` runs the sessions itself (the single-machine default);
2. **workers** - ``spikeloop serve --redis`` places them on ``--workers`` ``spikeloop
   worker`` processes, with the central recorder (``spikeloop recorder``) running.

Measured in the same run, so each is read against the other:

* ``status_*_ms``: ``GET /sessions/{id}`` (a live status call into the session), and
  ``disarm_*_ms``: ``POST /sessions/{id}/disarm`` (the safety call an operator makes),
  each p50/p99 over ``--calls`` sequential requests, local and through a worker;
* ``failover_*_s``: one worker host SIGKILLed (the worker and its sessions): until the
  control plane fails its sessions over (``detect``), and until the restarted session
  is running again on another worker (``running``, includes re-calibration);
* ``redis_used_mb`` and per session, after the sessions ran ``--seconds`` with their
  recording (and, where enabled, output) mirrored.

    .venv/bin/python bench/cluster.py --quick --json results/cluster.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    REPO,
    RedisProcess,
    Server,
    free_port,
    percentiles,
    report,
    wait_for,
)

PY = sys.executable


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("ab") as f:
        return subprocess.Popen([PY, "-m", "clients.cli", *args], cwd=REPO, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 30) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def _pids_mentioning(text: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def _call_ms(fn, n: int) -> dict[str, float]:
    ns = np.empty(n, np.int64)
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn()
        ns[i] = time.perf_counter_ns() - t0
    p = percentiles(ns)  # µs
    return {"p50_ms": round(p["p50_us"] / 1000, 2), "p99_ms": round(p["p99_us"] / 1000, 2)}


def _config(endpoint: str, i: int, failover: str) -> dict:
    return {"name": f"bench-{i}", "bin_ms": 20.0, "source": {"endpoint": endpoint, "channels": 32},
            "decoder": {"type": "kalman", "calibration_s": 2.0}, "failover": failover,
            "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}}}


def _start_all(c, endpoint: str, n: int) -> list[str]:
    sids = [c.start(c.create_session(_config(endpoint, i, "restart"))["id"])["id"]
            for i in range(n)]
    for sid in sids:
        wait_for(lambda sid=sid: c.session(sid)["state"] == "running", 120, f"{sid} to run")
    return sids


def _measure_calls(c, sids: list[str], calls: int) -> dict:
    sid = sids[0]
    status = _call_ms(lambda: c.session(sid), calls)
    disarm = _call_ms(lambda: c.disarm(sid), calls)
    return {"status": status, "disarm": disarm}


def run(workers: int, sessions: int, seconds: float, calls: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="spikeloop-cluster-bench-"))
    procs: list[subprocess.Popen] = []
    res: dict = {"workers": workers, "sessions": sessions, "seconds": seconds, "calls": calls}
    redis = RedisProcess().start()
    url = redis.url
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    try:
        from service.cluster.redis_streams import connect

        r = connect(url, socket_timeout=5)
        procs.append(_spawn(["sim", "--source", "motor", "--units", "32", "--endpoint",
                             endpoint], tmp / "sim.log"))

        # 1. local: the single-machine default, as the baseline.
        with Server(tmp / "local") as srv:
            c = srv.client()
            sids = _start_all(c, endpoint, sessions)
            local = _measure_calls(c, sids, calls)
            for sid in sids:
                c.stop(sid)

        # 2. the same sessions on workers, with the central recorder running.
        procs.append(_spawn(["recorder", "--redis", url, "--out", str(tmp / "central"),
                             "--no-nwb"], tmp / "recorder.log"))
        wprocs = [_spawn(["worker", "--redis", url, "--data-dir", str(tmp / f"w{i}"),
                          "--name", f"w{i}", "--capacity", str(sessions)],
                         tmp / f"w{i}.log") for i in range(workers)]
        procs += wprocs
        with Server(tmp / "cp", extra=("--redis", url, "--worker-timeout", "3")) as srv:
            c = srv.client()
            wait_for(lambda: len(c._call("GET", "/workers")["workers"]) == workers, 60,
                     "the workers to register")
            r.config_resetstat()
            mem0 = int(r.info("memory")["used_memory"])
            sids = _start_all(c, endpoint, sessions)
            remote = _measure_calls(c, sids, calls)
            time.sleep(seconds)
            mem = int(r.info("memory")["used_memory"])
            res["redis_used_mb"] = round(mem / 1e6, 2)
            res["redis_mb_per_session"] = round((mem - mem0) / 1e6 / sessions, 3)
            res["redis_ops_per_s"] = int(r.info("stats")["instantaneous_ops_per_sec"])

            # Failover: the host of the first session dies.
            victim = c.session(sids[0])["worker"]
            on_victim = [sid for sid in sids if c.session(sid)["worker"] == victim]
            host = wprocs[int(victim[1:])]
            t0 = time.monotonic()
            for pid in [host.pid, *_pids_mentioning(str(tmp / victim))]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_for(lambda: c.session(on_victim[0])["worker"] != victim
                     or c.session(on_victim[0])["state"] == "failed", 60, "failover")
            res["failover_detect_s"] = round(time.monotonic() - t0, 2)
            wait_for(lambda: c.session(on_victim[0])["state"] == "running", 120,
                     "the restarted session to run")
            res["failover_running_s"] = round(time.monotonic() - t0, 2)
            res["failed_over_sessions"] = len(on_victim)
            for sid in sids:
                c.stop(sid)
        for kind in ("status", "disarm"):
            for q in ("p50_ms", "p99_ms"):
                res[f"{kind}_local_{q}"] = local[kind][q]
                res[f"{kind}_worker_{q}"] = remote[kind][q]
            res[f"{kind}_ratio_p50"] = round(remote[kind]["p50_ms"] / local[kind]["p50_ms"], 2)
        return res
    finally:
        for p in procs:
            _kill_group(p)
        for pid in _pids_mentioning(str(tmp)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def print_table(res: dict) -> None:
    print(f"\n{res['sessions']} sessions (Kalman, 32 ch, 20 ms) on {res['workers']} workers, "
          f"{res['calls']} calls each")
    print(f"{'call':28s} {'local p50':>10s} {'p99':>8s} {'worker p50':>11s} {'p99':>8s} "
          f"{'ratio':>6s}")
    for kind, name in (("status", "GET /sessions/{id}"), ("disarm", "POST .../disarm")):
        print(f"{name:28s} {res[f'{kind}_local_p50_ms']:9.2f}ms {res[f'{kind}_local_p99_ms']:6.2f}"
              f"ms {res[f'{kind}_worker_p50_ms']:10.2f}ms {res[f'{kind}_worker_p99_ms']:6.2f}ms "
              f"{res[f'{kind}_ratio_p50']:5.2f}x")
    print(f"failover: detected after {res['failover_detect_s']} s, restarted session running "
          f"after {res['failover_running_s']} s ({res['failed_over_sessions']} sessions moved)")
    print(f"Redis: {res['redis_used_mb']} MB used, {res['redis_mb_per_session']} MB per session "
          f"after {res['seconds']} s, {res['redis_ops_per_s']} ops/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0, help="run time before sizing Redis")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="10 s, 100 calls")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.quick:
        a.seconds, a.calls = min(a.seconds, 10.0), min(a.calls, 100)
    res = run(a.workers, a.sessions, a.seconds, a.calls)
    return report(res, print_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
