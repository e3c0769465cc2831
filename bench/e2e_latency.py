"""End-to-end closed-loop latency, against the raw ZeroMQ round trip measured in the same run.

What runs: the real control plane (uvicorn subprocess), a real session process
created over REST, and this process as both the acquisition system (PUB, one
frame of simulated spike events per bin, paced in real time) and the
stimulator (SUB on the session's stim topic). Each frame is answered by the
stim command of the bin it closes, so we measure, per bin:

* ``p50_us``... - service-internal: frame received -> stim command sent (session clock);
* ``client_p50_us``... - as a client sees it: frame sent -> stim command received;
* ``floor_p50_us`` - a raw ZeroMQ round trip (PUB -> echo process -> PUB) of the
  same frame size on the same transport, measured in the same run.

``missed_bins`` counts bins whose stim command did not arrive within one bin
width. ``--api-load RPS`` adds a separate process polling the session's status
over REST at that rate.

    .venv/bin/python bench/e2e_latency.py --channels 1024 --decoder snn --bin-ms 1 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service import protocol as P  # noqa: E402
from sources.motor import MotorCortexSim  # noqa: E402

now_ns = time.perf_counter_ns


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(samples_ns: np.ndarray) -> dict[str, float]:
    if samples_ns.size == 0:
        return {"p50_us": float("nan"), "p99_us": float("nan"), "p999_us": float("nan"),
                "max_us": float("nan")}
    p = np.percentile(samples_ns, [50, 99, 99.9]) / 1e3
    return {"p50_us": round(float(p[0]), 1), "p99_us": round(float(p[1]), 1),
            "p999_us": round(float(p[2]), 1), "max_us": round(float(samples_ns.max()) / 1e3, 1)}


# ---------------------------------------------------------------------------- floor
def _echo(in_ep: str, out_ep: str) -> None:
    """Echo process for the floor: SUB everything on ``in_ep``, PUB it back on ``out_ep``."""
    ctx = zmq.Context()
    sub, pub = ctx.socket(zmq.SUB), ctx.socket(zmq.PUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(in_ep)
    pub.bind(out_ep)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        pub.send_multipart(sub.recv_multipart(copy=False), copy=False)


def measure_floor(frames: list[bytes], n: int = 3000) -> np.ndarray:
    ctx = zmq.Context.instance()
    a, b = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    pub = ctx.socket(zmq.PUB)
    pub.bind(a)
    proc = subprocess.Popen([sys.executable, __file__, "--echo", a, b])
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(b)
    try:
        # Wait until the echo path is up (slow-joiner), then ping-pong.
        deadline = time.monotonic() + 20
        while not sub.poll(0):
            if time.monotonic() > deadline:
                raise RuntimeError("echo process did not come up")
            pub.send_multipart(frames)
            time.sleep(0.05)
        while sub.poll(100):
            sub.recv_multipart()
        out = np.empty(n, np.int64)
        for i in range(n):
            t0 = now_ns()
            pub.send_multipart(frames)
            sub.recv_multipart()
            out[i] = now_ns() - t0
            time.sleep(0.0002)
        return out
    finally:
        proc.terminate()
        proc.wait(5)
        pub.close(0)
        sub.close(0)


# ---------------------------------------------------------------------------- load
def _api_load(url: str, rps: float, seconds: float) -> None:
    """A separate process polling ``url`` at ``rps`` for ``seconds`` (bounded)."""
    import httpx

    n_ok = n_err = 0
    period = 1.0 / rps
    with httpx.Client(timeout=5) as c:
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < seconds:
            try:
                n_ok += c.get(url).status_code == 200
            except httpx.HTTPError:
                n_err += 1
            k += 1
            delay = t0 + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    print(json.dumps({"requests": n_ok + n_err, "ok": n_ok,
                      "rps": (n_ok + n_err) / max(time.monotonic() - t0, 1e-9)}))


# ---------------------------------------------------------------------------- main run
def run(channels: int, decoder: str, bin_ms: float, seconds: float, api_load: float,
        warmup_s: float = 3.0) -> dict:
    from clients.control import ControlClient

    tmp = Path(tempfile.mkdtemp(prefix="spikeloop-bench-"))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "clients.cli", "serve", "--port", str(port), "--data-dir",
         str(tmp)], cwd=REPO, start_new_session=True, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 100_000)
    src = f"tcp://127.0.0.1:{_free_port()}"
    pub.bind(src)
    sim = MotorCortexSim(units=channels, seed=1)
    bin_ns = int(bin_ms * 1e6)
    load = None
    try:
        c = ControlClient(url)
        _wait(lambda: c.health(), 60)
        c = ControlClient(url, (tmp / "admin.token").read_text().strip())
        params = {"epochs": 2, "patience": 1} if decoder == "snn" else {}
        cal_s = 4.0 if bin_ms >= 5 else 2.0
        s = c.create_session({
            "name": f"bench-{channels}-{decoder}", "bin_ms": bin_ms, "record": False,
            "source": {"endpoint": src, "channels": channels},
            "decoder": {"type": decoder, "calibration_s": cal_s, "params": params},
            "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}},
            "output": {"heartbeat_ms": 100},
        })
        sid = s["id"]
        s = c.start(sid)
        stim = ctx.socket(zmq.SUB)
        stim.setsockopt(zmq.SUBSCRIBE, b"stim")
        stim.connect(s["output_endpoint"])
        seq = 0
        names = ["x", "y", "vx", "vy"]

        def send_bin() -> int:
            nonlocal seq
            step = sim.advance(bin_ns)
            pub.send_multipart(P.encode_array(b"behavior", P.KIND_BEHAVIOR, "bench", seq,
                                              step.t_ns, step.truth, extra={"names": names}))
            frames = P.encode_events(b"spikes", "bench", seq, step.t_ns, channels, step.ids,
                                     step.times)
            t0 = now_ns()
            pub.send_multipart(frames, copy=False)
            seq += 1
            return t0

        def await_stim(for_seq: int, timeout_ns: int) -> int | None:
            deadline = now_ns() + timeout_ns
            while True:
                # poll() takes whole ms but returns as soon as a message is there
                left_ms = max(1, -(-(deadline - now_ns()) // 1_000_000))
                if not stim.poll(left_ms):
                    return None
                msg = P.decode(stim.recv_multipart())
                if msg.header.extra.get("in_seq") == for_seq:
                    return now_ns()
                if now_ns() > deadline:
                    return None

        # Calibration + warm-up: keep the source flowing until the decoder runs.
        t_next = time.perf_counter()
        state_check = time.monotonic()
        while True:
            send_bin()
            await_stim(seq - 1, bin_ns)
            t_next += bin_ms / 1000
            _sleep_until(t_next)
            if time.monotonic() - state_check > 0.5:
                state_check = time.monotonic()
                st = c.session(sid)
                if st["state"] == "failed":
                    raise RuntimeError(f"session failed: {st['error']}")
                if st["state"] == "running":
                    break
        warm_end = time.perf_counter() + warmup_s
        while time.perf_counter() < warm_end:
            send_bin()
            await_stim(seq - 1, bin_ns)
            t_next += bin_ms / 1000
            _sleep_until(t_next)
        base = c.metrics(sid)["counters"].get("bins", 0)
        if api_load:
            load = subprocess.Popen(
                [sys.executable, __file__, "--load", f"{url}/sessions/{sid}", str(api_load),
                 str(seconds + 2)], stdout=subprocess.PIPE, text=True)
            time.sleep(1.0)
        n_bins = int(seconds * 1000 / bin_ms)
        client = np.full(n_bins, -1, np.int64)
        t_next = time.perf_counter()
        for i in range(n_bins):
            t0 = send_bin()
            t1 = await_stim(seq - 1, 2 * bin_ns)
            if t1 is not None:
                client[i] = t1 - t0
            t_next += bin_ms / 1000
            _sleep_until(t_next)
        load_report = None
        if load is not None:
            load_report = json.loads(load.communicate(timeout=30)[0].strip().splitlines()[-1])
        internal = np.asarray(c.http.get(f"/sessions/{sid}/latency").json()["e2e_ns"],
                              np.int64)[-n_bins:]
        metrics = c.metrics(sid)
        frame_example = [bytes(f) for f in P.encode_events(
            b"spikes", "bench", 0, 0, channels, *_typical(sim, bin_ns))]
        floor = measure_floor(frame_example)
        got = client[client >= 0]
        missed = int(np.count_nonzero((client < 0) | (client > bin_ns)))
        res = {
            "channels": channels, "bin_ms": bin_ms, "decoder": decoder, "bins": n_bins,
            "missed_bins": missed,
            **percentiles(internal),
            **{f"client_{k}": v for k, v in percentiles(got).items()},
            **{f"floor_{k}": v for k, v in percentiles(floor).items()},
            "session_bins_total": metrics["counters"].get("bins", 0) - base,
            "session_missed_bins": metrics["counters"].get("missed_bins", 0),
            "api_load_rps": api_load, "api_load": load_report,
            "stage_mean_us": {k: round(v["sum_us"] / max(v["count"], 1), 2)
                              for k, v in metrics["stages"].items()},
            "events_per_bin_mean": float(channels * 12 * bin_ms / 1000),
        }
        res["ratio_internal_p50_to_floor"] = round(res["p50_us"] / res["floor_p50_us"], 2)
        res["ratio_client_p50_to_floor"] = round(res["client_p50_us"] / res["floor_p50_us"], 2)
        c.stop(sid)
        return res
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        pub.close(0)
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _typical(sim: MotorCortexSim, bin_ns: int):
    step = sim.advance(bin_ns)
    return step.ids, step.times


def _sleep_until(t: float) -> None:
    d = t - time.perf_counter()
    if d > 0.0003:
        time.sleep(d - 0.0002)
    while time.perf_counter() < t:
        pass


def _wait(fn, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return fn()
        except Exception:
            time.sleep(0.2)
    raise RuntimeError("timed out")


# ---------------------------------------------------------------------------- CLI
def print_table(res: dict) -> None:
    rows = [("service-internal (recv -> stim sent)", ""), ("client (send -> stim received)",
                                                          "client_"),
            ("raw ZeroMQ round trip (floor)", "floor_")]
    print(f"\n{res['channels']} channels, {res['bin_ms']} ms bins, {res['decoder']} decoder, "
          f"{res['bins']} bins, missed {res['missed_bins']}"
          + (f", API load {res['api_load_rps']} req/s" if res["api_load_rps"] else ""))
    print(f"{'':40s} {'p50 us':>9s} {'p99 us':>9s} {'p99.9 us':>9s} {'max us':>9s}")
    for name, k in rows:
        print(f"{name:40s} {res[k + 'p50_us']:9.1f} {res[k + 'p99_us']:9.1f} "
              f"{res[k + 'p999_us']:9.1f} {res[k + 'max_us']:9.1f}")
    print("mean per stage (us): " + ", ".join(f"{k} {v}" for k, v in res["stage_mean_us"].items()))
    print(f"ratios to floor p50: internal {res['ratio_internal_p50_to_floor']}x, "
          f"client {res['ratio_client_p50_to_floor']}x")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--echo"]:
        _echo(argv[1], argv[2])
        return 0
    if argv[:1] == ["--load"]:
        _api_load(argv[1], float(argv[2]), float(argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channels", type=int, default=96)
    ap.add_argument("--decoder", choices=["kalman", "snn"], default="kalman")
    ap.add_argument("--bin-ms", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--api-load", type=float, default=0.0, help="REST requests/s from another "
                                                                 "process")
    ap.add_argument("--quick", action="store_true", help="10 s of measurement")
    ap.add_argument("--json", type=Path, help="write the figures here")
    a = ap.parse_args(argv)
    seconds = min(a.seconds, 10.0) if a.quick else a.seconds
    res = run(a.channels, a.decoder, a.bin_ms, seconds, a.api_load)
    print_table(res)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
