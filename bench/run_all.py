"""Every benchmark in one run: one combined JSON, one summary table, the issue's targets checked.

Each sub-benchmark runs in its own subprocess (its own process group, a time
limit, its output in ``<json dir>/logs/NAME.log``), so a crash or a hang in
one is recorded in the JSON as ``{"error": ...}`` and the others still run.
The end-to-end latency grid is 96/256/1024 channels x Kalman/SNN x 1/20 ms
bins with the defaults (ipc://, the real-time layout the host permits), plus 1024
channels/SNN/1 ms under 200 REST requests/s, over tcp:// (the transport comparison,
in the same run), as ordinary processes (``--no-realtime``: how much of the tail other
processes cause) and, as root, with the platform probe (which missed bins were the
VM's own stalls).

    .venv/bin/python bench/run_all.py --quick            # about 15 minutes
    .venv/bin/python bench/run_all.py                    # 60 s per latency point
    .venv/bin/python bench/run_all.py --long             # + the 10-minute headline runs
    .venv/bin/python bench/run_all.py --only e2e throughput
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
HEADLINE = "1024-snn-1ms"


def jobs(quick: bool, long: bool) -> list[tuple[str, str, list[str], float]]:
    """(group, name, argv, time limit in s) for every sub-benchmark, in running order."""
    secs = 10.0 if quick else 60.0
    q = ["--quick"] if quick else []
    out = []
    for ch in (96, 256, 1024):
        for dec in ("kalman", "snn"):
            for bin_ms in (1, 20):
                name = f"{ch}-{dec}-{bin_ms}ms"
                s = 600.0 if long and name == HEADLINE else secs
                out.append(("e2e_latency", name, [
                    "e2e_latency.py", "--channels", str(ch), "--decoder", dec, "--bin-ms",
                    str(bin_ms), "--seconds", str(s)], s + 300))
    head = ["e2e_latency.py", "--channels", "1024", "--decoder", "snn", "--bin-ms", "1",
            "--seconds", str(secs)]
    out.append(("e2e_latency", f"{HEADLINE}-api200", [*head, "--api-load", "200"], secs + 300))
    # The defaults are ipc:// and the real-time layout the host permits: the same config
    # over tcp://, and as ordinary processes (the opt-out), in the same run.
    out.append(("e2e_latency", f"{HEADLINE}-tcp", [*head, "--transport", "tcp"], secs + 300))
    out.append(("e2e_latency", f"{HEADLINE}-no-realtime", [*head, "--no-realtime"],
                secs + 300))
    if os.geteuid() == 0:
        # The real-time configuration: SCHED_FIFO, ipc://, idle CPUs polling, the session
        # on a CPU of its own, and the platform probe that tells which missed bins were
        # the VM's own stalls.
        rt_s = 600.0 if long else secs
        out.append(("e2e_latency", f"{HEADLINE}-rt", [
            *head[:-1], str(rt_s), "--rt-priority", "50", "--transport", "ipc",
            "--cpu-dma-latency", "0", "--session-cpu", "1", "--platform-probe"], rt_s + 300))
    out += [("throughput", "", ["throughput.py", *q], 900 if quick else 3600),
            ("decoders", "", ["decoders.py", *q], 1200 if quick else 7200),
            ("closed_loop", "", ["closed_loop.py", *q], 900 if quick else 3600),
            ("replay", "", ["replay.py", *q], 900 if quick else 3600),
            ("fuzz", "", ["fuzz.py", *q], 900 if quick else 3600),
            ("cluster", "", ["cluster.py", *q], 600 if quick else 1800),
            ("redis_path", "", ["redis_path.py", *q], 600 if quick else 1800)]
    return out


def run_one(argv: list[str], limit_s: float, log: Path) -> dict:
    """Run one benchmark script; its JSON, or {"error": ...} with the end of its output."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        t0 = time.perf_counter()
        with log.open("w") as f:
            proc = subprocess.Popen([sys.executable, str(BENCH / argv[0]), *argv[1:], "--json",
                                     str(out)], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(limit_s)
                err = None if rc == 0 else f"exit code {rc}"
            except subprocess.TimeoutExpired:
                err = f"timed out after {limit_s:.0f} s"
                _stop(proc)
                rc = proc.returncode
            except KeyboardInterrupt:
                _stop(proc)
                raise
        wall = round(time.perf_counter() - t0, 1)
        res = json.loads(out.read_text()) if out.exists() else {}
    if err is not None:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        res = {**res, "error": err, "returncode": rc, "log_tail": tail}
    res["wall_s"] = wall
    return res


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT first, so the script's own clean-up stops its servers and sessions; then kill."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------------------- summary
def _g(d: dict, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def targets(res: dict) -> dict[str, dict]:
    """The figures issue #6 asks for, each with the measured value and whether it is met."""
    e2e = res.get("e2e_latency", {})
    head, api = e2e.get(HEADLINE, {}), e2e.get(f"{HEADLINE}-api200", {})
    thr = res.get("throughput", {})
    t = {}

    def add(name: str, value, ok) -> None:
        t[name] = {"value": value, "met": bool(ok) if value is not None else None}

    p99, p999 = head.get("p99_us"), head.get("p999_us")
    add("1024ch snn 1ms p99 <= 1000 us", p99, p99 is not None and p99 <= 1000)
    add("1024ch snn 1ms p99.9 <= 2000 us", p999, p999 is not None and p999 <= 2000)
    missed = head.get("missed_bins")
    add(f"1024ch snn 1ms zero missed bins ({head.get('bins', '?')} bins)", missed,
        missed == 0)
    rt = e2e.get(f"{HEADLINE}-rt", {})
    if "missed_bins" in rt:
        add(f"same, real-time config ({rt['bins']} bins; session-counted "
            f"{rt.get('session_missed_bins')}; platform stalls > 1 bin "
            f"{_g(rt, 'platform', 'stalls_over_bin')})", rt["missed_bins"],
            rt["missed_bins"] == 0)
    if api.get("p99_us") and p99:
        r = round(api["p99_us"] / p99, 2)
        add("p99 at 200 REST req/s <= 1.5x unloaded", r, r <= 1.5)
    if head.get("p50_us") and head.get("floor_p50_us"):
        r = round(head["p50_us"] / head["floor_p50_us"], 2)
        add("service-internal p50 <= 5x raw ZMQ round trip", r, r <= 5)
    ev = thr.get("events_per_s")
    add(">= 1,000,000 events/s, one session, zero loss", ev, ev is not None and ev >= 1e6)
    n = thr.get("sessions_at_p99_1ms")
    add(">= 4 concurrent 1 kHz sessions at p99 <= 1 ms", n, n is not None and n >= 4)
    return t


def transport_comparison(res: dict) -> dict:
    e2e = res.get("e2e_latency", {})
    out = {}
    for name, key in (("tcp", f"{HEADLINE}-tcp"), ("ipc", HEADLINE)):
        r = e2e.get(key, {})
        if "p50_us" in r:
            out[name] = {k: r.get(k) for k in (
                "floor_p50_us", "floor_p99_us", "p50_us", "p99_us", "client_p50_us",
                "client_p99_us")}
    return out


def _f(v, w: int = 8, nd: int = 1) -> str:
    return f"{v:{w}.{nd}f}" if isinstance(v, int | float) else f"{'-':>{w}s}"


def print_summary(res: dict) -> None:
    print("\nEnd-to-end latency (us): service-internal frame received -> stim sent; client = "
          "frame sent -> stim received; floor = raw ZeroMQ round trip, same run")
    print(f"{'config':22s} {'p50':>7s} {'p99':>8s} {'p99.9':>8s} {'max':>8s} {'missed':>6s} "
          f"{'cl p50':>7s} {'cl p99':>8s} {'floor50':>7s} {'floor99':>8s} {'x fl':>5s} "
          f"{'cl x fl':>7s}")
    for name, r in res.get("e2e_latency", {}).items():
        if "error" in r and "p50_us" not in r:
            print(f"{name:22s} ERROR {r['error']}")
            continue
        print(f"{name:22s} {_f(r.get('p50_us'), 7)} {_f(r.get('p99_us'))} "
              f"{_f(r.get('p999_us'))} {_f(r.get('max_us'))} {r.get('missed_bins', '-'):>6} "
              f"{_f(r.get('client_p50_us'), 7)} {_f(r.get('client_p99_us'))} "
              f"{_f(r.get('floor_p50_us'), 7)} {_f(r.get('floor_p99_us'))} "
              f"{_f(r.get('ratio_internal_p50_to_floor'), 5, 2)} "
              f"{_f(r.get('ratio_client_p50_to_floor'), 7, 2)}")
    tc = res.get("transport", {})
    if tc:
        print("\ntcp vs ipc, 1024 ch SNN 1 ms (us): " + "; ".join(
            f"{k}: floor p50 {v['floor_p50_us']} p99 {v['floor_p99_us']}, internal p50 "
            f"{v['p50_us']} p99 {v['p99_us']}, client p50 {v['client_p50_us']} p99 "
            f"{v['client_p99_us']}" for k, v in tc.items()))
    print()
    if "throughput" in res:
        thr = res["throughput"]
        print(f"throughput: events_per_s {thr.get('events_per_s', thr.get('error'))}, "
              f"sessions_at_p99_1ms {thr.get('sessions_at_p99_1ms', '-')}")
    if "replay" in res:
        rp = res["replay"]
        print(f"replay: speedup {rp.get('speedup', rp.get('error'))}x, identical_to_live "
              f"{rp.get('identical_to_live', '-')}")
    if "closed_loop" in res:
        cl = res["closed_loop"]
        dual = _g(cl, "dbs", "dual_threshold", default={})
        print(f"closed_loop: dual_threshold beta_rel {dual.get('beta_rel', cl.get('error'))}, "
              f"teed_rel {dual.get('teed_rel', '-')}; opto mae_pct "
              f"{_g(cl, 'opto_clamp', 'mae_pct', default='-')}")
    dec = res.get("decoders", {})
    for ds, by in (dec.get("results") or {}).items():
        print(f"decoders {ds}: " + ", ".join(
            f"{d} r2 {_f(v.get('r2_mean'), 0, 3)} p99 {_f(v.get('step_p99_us'), 0)} us"
            for d, v in by.items() if isinstance(v, dict)))
    if "error" in dec:
        print(f"decoders: ERROR {dec['error']}")
    if "cluster" in res:
        cl = res["cluster"]
        print(f"cluster: disarm p50 {cl.get('disarm_local_p50_ms', cl.get('error'))} ms local, "
              f"{cl.get('disarm_worker_p50_ms', '-')} ms via a worker; failover running after "
              f"{cl.get('failover_running_s', '-')} s; Redis {cl.get('redis_mb_per_session', '-')}"
              " MB per session")
    if "redis_path" in res:
        rp = res["redis_path"]
        print(f"redis_path: added p50 {rp.get('added_p50_us', rp.get('error'))} us, p99 "
              f"{rp.get('added_p99_us', '-')} us (ratio p50 {rp.get('ratio_p50', '-')}x); "
              f"redis_events_per_s {rp.get('redis_events_per_s', '-')}")
    if "fuzz" in res:
        fz = res["fuzz"]
        print(f"fuzz: {fz.get('cases', '-')} cases, {fz.get('crashes', '-')} crashes"
              + (f" ({fz['error']})" if "error" in fz else ""))
    print("\nTargets (issue #6):")
    for name, t in res.get("targets", {}).items():
        mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        print(f"  {mark:8s} {name}: {t['value']}")
    m = res["machine"]
    print(f"\n{m['cpus']} CPUs, load average {m['load_start']} at start, {m['load_end']} at "
          f"end; total {res['wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="every script's --quick; 10 s per "
                                                         "latency point")
    ap.add_argument("--long", action="store_true", help=f"{HEADLINE} runs for 10 minutes")
    ap.add_argument("--only", nargs="*", help="groups to run (e2e_latency, throughput, "
                                              "decoders, closed_loop, replay, fuzz, "
                                              "redis_path)")
    ap.add_argument("--json", type=Path, default=REPO / "results" / "bench.json")
    a = ap.parse_args(argv)
    logs = a.json.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res: dict = {"quick": a.quick, "long": a.long, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "python": platform.python_version(),
                             "load_start": [round(x, 2) for x in os.getloadavg()]},
                 "commit": _commit()}
    only = set(a.only or [])
    try:
        for group, name, argv_, limit in jobs(a.quick, a.long):
            if only and group not in only and not (group == "e2e_latency" and "e2e" in only):
                continue
            label = f"{group}/{name}" if name else group
            print(f"[bench] {label} ...", flush=True)
            r = run_one(argv_, limit, logs / f"{group}{'-' + name if name else ''}.log")
            print(f"[bench] {label}: {r.get('error', 'ok')} ({r['wall_s']} s)", flush=True)
            if name:
                res.setdefault(group, {})[name] = r
            else:
                res[group] = r
    except KeyboardInterrupt:
        res["interrupted"] = True
    res["transport"] = transport_comparison(res)
    res["targets"] = targets(res)
    res["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=2, default=str))
    print_summary(res)
    print(f"\nwrote {a.json}")
    return 130 if res.get("interrupted") else 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
