"""Soak: several sessions on the real control plane for a long time; memory, missed bins, drift.

What runs: the control plane (``spikeloop serve`` subprocess), one simulated
motor-cortex source per session (``spikeloop sim`` subprocesses, 1 kHz frames,
real time) and one session per source created, started and armed over REST.
This process only samples, once per window (default one minute):

* RSS (``VmRSS`` from ``/proc/PID/status``) of every session process and of the server;
* the session counters (``GET /sessions/{id}/metrics``): bins, ``missed_bins`` (a bin whose
  stim command left more than one bin width after its frame arrived), gaps, decoder errors;
* the raw end-to-end samples (``GET /sessions/{id}/latency``), of which the ones new in
  this window give the window's p50/p99.

Reported: memory growth in % from the end of the warm-up window to the end of the run
(and over the second half only, to tell a bounded fill-up from a leak), missed bins,
and p99 drift (first vs last window after warm-up).

    .venv/bin/python bench/soak.py --minutes 30 --sessions 3 --json /tmp/soak.json
    .venv/bin/python bench/soak.py --quick        # 3 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def pct(a: float, b: float) -> float:
    return round(100.0 * (b - a) / a, 2) if a else float("nan")


def session_config(endpoint: str, i: int, bin_ms: float, units: int, decoder: str,
                   calibration_s: float) -> dict:
    return {"name": f"soak-{i}", "bin_ms": bin_ms,
            "source": {"endpoint": endpoint, "channels": units},
            "decoder": {"type": decoder, "calibration_s": calibration_s},
            "stim": {"modality": "dbs",
                     "policy": {"type": "speed_to_dbs", "gain_ma_per_cm_s": 0.05}}}


class Soak:
    def __init__(self, a: argparse.Namespace, work: Path):
        self.a = a
        self.work = work
        self.procs: list[subprocess.Popen] = []
        self.server: subprocess.Popen | None = None
        self.sids: list[str] = []
        self.pids: dict[str, int] = {}

    # ------------------------------------------------------------------ set-up
    def start(self) -> None:
        a = self.a
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        data = self.work / "data"
        log = open(self.work / "server.log", "ab")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "clients.cli", "serve", "--port", str(port),
             "--data-dir", str(data)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.http = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f"server exited; see {self.work / 'server.log'}")
            try:
                if self.http.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not answer /healthz within 60 s")
            time.sleep(0.2)
        token = (data / "admin.token").read_text().strip()
        self.http.headers["Authorization"] = f"Bearer {token}"
        for i in range(a.sessions):
            ep = f"tcp://127.0.0.1:{_free_port()}"
            slog = open(self.work / f"sim{i}.log", "ab")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "clients.cli", "sim", "--endpoint", ep, "--units",
                 str(a.units), "--seed", str(100 + i), "--step-ms", "1"],
                cwd=REPO, stdout=slog, stderr=subprocess.STDOUT, start_new_session=True))
            cfg = session_config(ep, i, a.bin_ms, a.units, a.decoder, a.calibration_s)
            if a.rt_priority:
                cfg["rt_priority"] = a.rt_priority
            sid = self._ok(self.http.post("/sessions", json=cfg))["id"]
            s = self._ok(self.http.post(f"/sessions/{sid}/start"))
            self.sids.append(sid)
            self.pids[sid] = s["pid"]
        # Wait for calibration, then arm: the guard and the stim path run every bin.
        deadline = time.monotonic() + a.calibration_s * 4 + 120
        for sid in self.sids:
            while self._ok(self.http.get(f"/sessions/{sid}"))["state"] != "running":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"session {sid} did not finish calibrating")
                time.sleep(0.5)
            self._ok(self.http.post(f"/sessions/{sid}/arm"))

    @staticmethod
    def _ok(r: httpx.Response) -> dict:
        if r.status_code >= 400:
            raise RuntimeError(f"{r.request.method} {r.request.url}: {r.status_code} {r.text}")
        return r.json() if r.content else {}

    # ------------------------------------------------------------------ sampling
    def sample(self, prev: dict[str, dict]) -> dict:
        out: dict = {"t_s": None, "server_rss_kb": rss_kb(self.server.pid), "sessions": {}}
        for sid in self.sids:
            m = self._ok(self.http.get(f"/sessions/{sid}/metrics"))
            n_e2e = m["stages"]["e2e"]["count"]
            lat = np.asarray(self._ok(self.http.get(f"/sessions/{sid}/latency"))["e2e_ns"],
                             np.int64)
            p = prev.get(sid, {})
            new = n_e2e - p.get("n_e2e", 0)
            window = lat[-new:] if 0 < new <= lat.size else lat
            c = m["counters"]
            row = {"rss_kb": rss_kb(self.pids[sid]), "n_e2e": n_e2e,
                   "bins": c.get("bins", 0), "missed_bins": c.get("missed_bins", 0),
                   "gaps": c.get("gaps", 0), "missing_frames": c.get("missing_frames", 0),
                   "decoder_errors": c.get("decoder_errors", 0),
                   "watchdog_trips": c.get("watchdog_trips", 0),
                   "rejected": sum(m["rejected"].values()),
                   "window_bins": c.get("bins", 0) - p.get("bins", 0),
                   "window_missed": c.get("missed_bins", 0) - p.get("missed_bins", 0)}
            if window.size:
                q = np.percentile(window, [50, 99, 99.9]) / 1e3
                row |= {"p50_us": round(float(q[0]), 1), "p99_us": round(float(q[1]), 1),
                        "p999_us": round(float(q[2]), 1),
                        "max_us": round(float(window.max()) / 1e3, 1)}
            out["sessions"][sid] = row
        return out

    # ------------------------------------------------------------------ tear-down
    def stop(self) -> None:
        for sid in self.sids:
            try:
                self.http.post(f"/sessions/{sid}/stop")
            except httpx.HTTPError:
                pass
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGINT)
            try:
                self.server.wait(60)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        for pid in self.pids.values():  # a session the server failed to stop
            if rss_kb(pid) is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def summarise(samples: list[dict], sids: list[str], warmup: int) -> dict:
    """Figures over the samples after the first ``warmup`` windows."""
    base, last = samples[warmup], samples[-1]
    mid = samples[warmup + (len(samples) - 1 - warmup) // 2]
    per = {}
    for sid in sids:
        b, m, e = base["sessions"][sid], mid["sessions"][sid], last["sessions"][sid]
        after = [s["sessions"][sid] for s in samples[warmup + 1:]]
        per[sid] = {
            "rss_start_mb": round(b["rss_kb"] / 1024, 1),
            "rss_end_mb": round(e["rss_kb"] / 1024, 1),
            "rss_max_mb": round(max(s["rss_kb"] for s in after) / 1024, 1),
            "memory_growth_pct": pct(b["rss_kb"], e["rss_kb"]),
            "memory_growth_second_half_pct": pct(m["rss_kb"], e["rss_kb"]),
            "bins": e["bins"], "missed_bins": e["missed_bins"],
            "missed_bins_after_warmup": e["missed_bins"] - b["missed_bins"],
            "gaps": e["gaps"], "missing_frames": e["missing_frames"],
            "decoder_errors": e["decoder_errors"], "watchdog_trips": e["watchdog_trips"],
            "rejected": e["rejected"],
            "p99_first_us": after[0].get("p99_us"), "p99_last_us": after[-1].get("p99_us"),
            "p99_windows_us": [s.get("p99_us") for s in after],
        }
    sb, sm, se = base["server_rss_kb"], mid["server_rss_kb"], last["server_rss_kb"]
    firsts = [p["p99_first_us"] for p in per.values()]
    lasts = [p["p99_last_us"] for p in per.values()]
    return {
        "per_session": per,
        "memory_growth_pct": max(p["memory_growth_pct"] for p in per.values()),
        "memory_growth_second_half_pct": max(p["memory_growth_second_half_pct"]
                                             for p in per.values()),
        "server_rss_start_mb": round(sb / 1024, 1), "server_rss_end_mb": round(se / 1024, 1),
        "server_memory_growth_pct": pct(sb, se),
        "server_memory_growth_second_half_pct": pct(sm, se),
        "bins": sum(p["bins"] for p in per.values()),
        "missed_bins": sum(p["missed_bins"] for p in per.values()),
        "missed_bins_after_warmup": sum(p["missed_bins_after_warmup"] for p in per.values()),
        "gaps": sum(p["gaps"] for p in per.values()),
        "p99_first_us": round(float(np.mean(firsts)), 1),
        "p99_last_us": round(float(np.mean(lasts)), 1),
        "p99_drift_pct": pct(float(np.mean(firsts)), float(np.mean(lasts))),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="3 minutes")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--window-s", type=float, default=60.0, help="Sampling window")
    ap.add_argument("--warmup-windows", type=int, default=1)
    ap.add_argument("--bin-ms", type=float, default=10.0,
                    help="Session bin width; frames are 1 ms (1 kHz) whatever this is")
    ap.add_argument("--units", type=int, default=96)
    ap.add_argument("--decoder", default="kalman")
    ap.add_argument("--calibration-s", type=float, default=10.0)
    ap.add_argument("--keep", action="store_true", help="Keep the work dir (recordings, logs)")
    ap.add_argument("--rt-priority", type=int, default=0,
                    help="Run the sessions under SCHED_FIFO at this priority (needs root)")
    a = ap.parse_args(argv)
    if a.quick:
        a.minutes = 3.0
    windows = max(int(round(a.minutes * 60 / a.window_s)), a.warmup_windows + 2)
    work = Path(tempfile.mkdtemp(prefix="spikeloop-soak-"))
    soak = Soak(a, work)
    samples: list[dict] = []
    print(f"soak: {a.sessions} sessions x {a.minutes:g} min, {a.bin_ms:g} ms bins, "
          f"{a.units} units, {a.decoder}; work dir {work}", flush=True)
    print(f"{'min':>5} {'server MB':>9}  " + "  ".join(
        f"{'s' + str(i) + ' MB':>8} {'p99 us':>7} {'missed':>6}" for i in range(a.sessions)),
        flush=True)
    error = ""
    try:
        soak.start()
        t0 = time.monotonic()
        prev: dict[str, dict] = {}
        samples.append(soak.sample(prev) | {"t_s": 0.0})  # baseline for the first window
        prev = samples[-1]["sessions"]
        for k in range(1, windows + 1):
            time.sleep(max(0.0, t0 + k * a.window_s - time.monotonic()))
            s = soak.sample(prev)
            s["t_s"] = round(time.monotonic() - t0, 1)
            samples.append(s)
            prev = s["sessions"]
            print(f"{s['t_s'] / 60:5.1f} {s['server_rss_kb'] / 1024:9.1f}  " + "  ".join(
                f"{r['rss_kb'] / 1024:8.1f} {r.get('p99_us', float('nan')):7.1f} "
                f"{r['window_missed']:6d}" for r in s["sessions"].values()), flush=True)
            for sid in soak.sids:
                if rss_kb(soak.pids[sid]) is None:
                    raise RuntimeError(f"session {sid} process is gone")
    except Exception as exc:  # keep what was measured up to the failure
        error = f"{type(exc).__name__}: {exc}"
        print(f"soak stopped early: {error}", file=sys.stderr)
    finally:
        soak.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {"bench": "soak", "minutes": a.minutes, "sessions": a.sessions, "bin_ms": a.bin_ms,
              "rt_priority": a.rt_priority,
              "units": a.units, "decoder": a.decoder, "window_s": a.window_s,
              "warmup_windows": a.warmup_windows, "error": error, "samples": samples}
    if len(samples) < a.warmup_windows + 2:
        if a.json:
            a.json.write_text(json.dumps(result, indent=1))
        return 1
    summary = summarise(samples, soak.sids, a.warmup_windows)
    result |= summary
    print(f"\nmemory growth after warm-up: sessions max {summary['memory_growth_pct']}% "
          f"(second half {summary['memory_growth_second_half_pct']}%), server "
          f"{summary['server_memory_growth_pct']}%")
    print(f"bins {summary['bins']}, missed {summary['missed_bins']} "
          f"(after warm-up {summary['missed_bins_after_warmup']}), gaps {summary['gaps']}")
    print(f"p99 first window {summary['p99_first_us']} us, last {summary['p99_last_us']} us "
          f"(drift {summary['p99_drift_pct']}%)")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
