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
over REST at that rate. ``--transport ipc`` puts the source, the session's
output and the floor on ipc:// instead of tcp://127.0.0.1; ``--rt-priority N``
runs the session process under SCHED_FIFO (needs root) to show how much of the
tail is other processes on the machine.

    .venv/bin/python bench/e2e_latency.py --channels 1024 --decoder snn --bin-ms 1 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Endpoints,
    Server,
    SimFeeder,
    helper_main,
    measure_floor,
    now_ns,
    percentiles,
    set_fifo,
    sleep_until,
    stage_means,
    start_api_load,
    wait_running,
)

from service import protocol as P  # noqa: E402
from sources.motor import MotorCortexSim  # noqa: E402


# ---------------------------------------------------------------------------- main run
def run(channels: int, decoder: str, bin_ms: float, seconds: float, api_load: float,
        warmup_s: float = 3.0, transport: str = "tcp", rt_priority: int = 0) -> dict:
    eps = Endpoints(transport)
    server = Server()
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 100_000)
    src = eps.new("src")
    pub.bind(src)
    bin_ns = int(bin_ms * 1e6)
    load = None
    try:
        server.start()
        c = server.client()
        params = {"epochs": 2, "patience": 1} if decoder == "snn" else {}
        cal_s = 4.0 if bin_ms >= 5 else 2.0
        s = server.start_session(c, {
            "name": f"bench-{channels}-{decoder}", "bin_ms": bin_ms, "record": False,
            "source": {"endpoint": src, "channels": channels},
            "decoder": {"type": decoder, "calibration_s": cal_s, "params": params},
            "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}},
            "output": {"heartbeat_ms": 100, "endpoint": eps.output()},
            "rt_priority": rt_priority or None,
        })
        sid = s["id"]
        stim = ctx.socket(zmq.SUB)
        stim.setsockopt(zmq.SUBSCRIBE, b"stim")
        stim.connect(s["output_endpoint"])
        feeder = SimFeeder(pub, channels, bin_ns, seed=1)
        send_bin = feeder.send

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

        t_next = time.perf_counter()

        def one_bin() -> None:
            nonlocal t_next
            send_bin()
            await_stim(feeder.seq - 1, bin_ns)
            t_next += bin_ms / 1000
            sleep_until(t_next)

        # Calibration + warm-up: keep the source flowing until the decoder runs.
        wait_running(c, sid, one_bin)
        warm_end = time.perf_counter() + warmup_s
        while time.perf_counter() < warm_end:
            one_bin()
        base = c.metrics(sid)["counters"].get("bins", 0)
        if api_load:
            load = start_api_load(f"{server.url}/sessions/{sid}", api_load, seconds + 2)
            time.sleep(1.0)
        n_bins = int(seconds * 1000 / bin_ms)
        client = np.full(n_bins, -1, np.int64)
        t_next = time.perf_counter()
        for i in range(n_bins):
            t0 = send_bin()
            t1 = await_stim(feeder.seq - 1, 2 * bin_ns)
            if t1 is not None:
                client[i] = t1 - t0
            t_next += bin_ms / 1000
            sleep_until(t_next)
        load_report = None
        if load is not None:
            load_report = json.loads(load.communicate(timeout=30)[0].strip().splitlines()[-1])
        internal = np.asarray(c.http.get(f"/sessions/{sid}/latency").json()["e2e_ns"],
                              np.int64)[-n_bins:]
        metrics = c.metrics(sid)
        frame_example = [bytes(f) for f in P.encode_events(
            b"spikes", "bench", 0, 0, channels, *_typical(feeder.sim, bin_ns))]
        floor = measure_floor(frame_example, transport=transport, rt_priority=rt_priority)
        got = client[client >= 0]
        missed = int(np.count_nonzero((client < 0) | (client > bin_ns)))
        res = {
            "channels": channels, "bin_ms": bin_ms, "decoder": decoder, "bins": n_bins,
            "missed_bins": missed, "transport": transport, "rt_priority": rt_priority,
            "scheduling": (c.session(sid)["live"] or {}).get("scheduling"),
            **percentiles(internal),
            **percentiles(got, "client_"),
            **percentiles(floor, "floor_"),
            "session_bins_total": metrics["counters"].get("bins", 0) - base,
            "session_missed_bins": metrics["counters"].get("missed_bins", 0),
            "api_load_rps": api_load, "api_load": load_report,
            "stage_mean_us": stage_means(metrics),
            "events_per_bin_mean": float(channels * 12 * bin_ms / 1000),
        }
        res["ratio_internal_p50_to_floor"] = round(res["p50_us"] / res["floor_p50_us"], 2)
        res["ratio_client_p50_to_floor"] = round(res["client_p50_us"] / res["floor_p50_us"], 2)
        c.stop(sid)
        return res
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait(5)
        pub.close(0)
        server.stop()
        eps.close()


def _typical(sim: MotorCortexSim, bin_ns: int):
    step = sim.advance(bin_ns)
    return step.ids, step.times


# ---------------------------------------------------------------------------- CLI
def print_table(res: dict) -> None:
    rows = [("service-internal (recv -> stim sent)", ""), ("client (send -> stim received)",
                                                          "client_"),
            ("raw ZeroMQ round trip (floor)", "floor_")]
    print(f"\n{res['channels']} channels, {res['bin_ms']} ms bins, {res['decoder']} decoder, "
          f"{res['bins']} bins, missed {res['missed_bins']}"
          + (f", API load {res['api_load_rps']} req/s" if res["api_load_rps"] else "")
          + f", {res['transport']}" + (f", SCHED_FIFO {res['rt_priority']}"
                                       if res["rt_priority"] else ""))
    print(f"{'':40s} {'p50 us':>9s} {'p99 us':>9s} {'p99.9 us':>9s} {'max us':>9s}")
    for name, k in rows:
        print(f"{name:40s} {res[k + 'p50_us']:9.1f} {res[k + 'p99_us']:9.1f} "
              f"{res[k + 'p999_us']:9.1f} {res[k + 'max_us']:9.1f}")
    print("mean per stage (us): " + ", ".join(f"{k} {v}" for k, v in res["stage_mean_us"].items()))
    print(f"ratios to floor p50: internal {res['ratio_internal_p50_to_floor']}x, "
          f"client {res['ratio_client_p50_to_floor']}x")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if helper_main(argv):  # older invocations of the helper processes still work
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channels", type=int, default=96)
    ap.add_argument("--decoder", choices=["kalman", "snn"], default="kalman")
    ap.add_argument("--bin-ms", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--api-load", type=float, default=0.0, help="REST requests/s from another "
                                                                 "process")
    ap.add_argument("--transport", choices=["tcp", "ipc"], default="tcp",
                    help="source, output and floor on tcp://127.0.0.1 or ipc:// (same run)")
    ap.add_argument("--rt-priority", type=int, default=0,
                    help="put the session process under SCHED_FIFO at this priority (root)")
    ap.add_argument("--quick", action="store_true", help="10 s of measurement")
    ap.add_argument("--json", type=Path, help="write the figures here")
    a = ap.parse_args(argv)
    seconds = min(a.seconds, 10.0) if a.quick else a.seconds
    if a.rt_priority:
        # The acquisition/stimulator side (this process) and the floor's echo process run
        # real-time too, as in a real rig; the server and its sessions are not made RT by
        # inheritance (only the session's own rt_priority setting does that).
        set_fifo(max(1, a.rt_priority - 1), children_too=False)
    res = run(a.channels, a.decoder, a.bin_ms, seconds, a.api_load, transport=a.transport,
              rt_priority=a.rt_priority)
    print_table(res)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
