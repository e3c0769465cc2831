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
output and the floor on tcp://127.0.0.1 instead of ipc:// (the default: one host).
By default the session applies the real-time layout the host permits (SCHED_FIFO 50,
cpu_dma_latency 0, a core of its own: ``service/session/realtime.py``), and this process
(the rig's side) and the floor's echo run SCHED_FIFO one below it, on the other cores;
``--no-realtime`` measures the opt-out (ordinary processes) for comparison.

    .venv/bin/python bench/e2e_latency.py --channels 1024 --decoder snn --bin-ms 1 --seconds 60
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Endpoints,
    PlatformProbe,
    Server,
    SimFeeder,
    StimWaiter,
    helper_main,
    measure_floor,
    overlaps_stall,
    percentiles,
    report,
    set_fifo,
    sleep_until,
    stage_means,
    start_api_load,
    start_hostile_load,
    wait_running,
)

from service.session.realtime import DEFAULT_RT_PRIORITY, pick_cpu  # noqa: E402
from service.wire import protocol as P  # noqa: E402
from sources.motor import MotorCortexSim  # noqa: E402


# ---------------------------------------------------------------------------- main run
def run(channels: int, decoder: str, bin_ms: float, seconds: float, api_load: float,
        warmup_s: float = 3.0, transport: str = "ipc", rt_priority: int | None = None,
        dump: Path | None = None, cpu_dma_latency_us: int | None = None,
        probe: bool = False, session_cpu: int | None = None,
        hostile_sockets: int = 0, realtime: bool = True, floor_rt: int = 0) -> dict:
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
            "realtime": realtime,
            "cpu_dma_latency_us": cpu_dma_latency_us,
            "cpu": session_cpu,
        })
        sid = s["id"]
        stim = StimWaiter(s["output_endpoint"])
        feeder = SimFeeder(pub, channels, bin_ns, seed=1)
        send_bin = feeder.send
        await_stim = stim.wait
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
            token = (server.data_dir / "admin.token").read_text().strip()
            load = start_api_load(f"{server.url}/sessions/{sid}", api_load, seconds + 2, token)
            time.sleep(1.0)
        hostile = None
        if hostile_sockets:
            hostile = start_hostile_load(server.url, sid, hostile_sockets, seconds + 2,
                                         token=server.token())
        n_bins = int(seconds * 1000 / bin_ms)
        client = np.full(n_bins, -1, np.int64)
        sent = np.zeros(n_bins, np.int64)
        # This process stands in for the rig's acquisition system and stimulator; a
        # collection pass of its own must not be counted as loop latency.
        gc.collect()
        gc.freeze()
        gc.disable()
        platform = PlatformProbe().start() if probe else None
        t_next = time.perf_counter()
        for i in range(n_bins):
            t0 = sent[i] = send_bin()
            t1 = await_stim(feeder.seq - 1, 2 * bin_ns)
            if t1 is not None:
                client[i] = t1 - t0
            t_next += bin_ms / 1000
            sleep_until(t_next)
        gc.enable()
        stalls = platform.stop() if platform is not None else None
        load_report = None
        if load is not None:
            load_report = json.loads(load.communicate(timeout=30)[0].strip().splitlines()[-1])
        hostile_report = None
        if hostile is not None:
            hostile_report = json.loads(
                hostile.communicate(timeout=120)[0].strip().splitlines()[-1])
        internal = np.asarray(c.http.get(f"/sessions/{sid}/latency").json()["e2e_ns"],
                              np.int64)[-n_bins:]
        metrics = c.metrics(sid)
        frame_example = [bytes(f) for f in P.encode_events(
            b"spikes", "bench", 0, 0, channels, *_typical(feeder.sim, bin_ns))]
        floor = measure_floor(frame_example, transport=transport, rt_priority=floor_rt)
        got = client[client >= 0]
        late = (client < 0) | (client > bin_ns)
        missed = int(np.count_nonzero(late))
        res = {
            "channels": channels, "bin_ms": bin_ms, "decoder": decoder, "bins": n_bins,
            "missed_bins": missed, "transport": transport, "rt_priority": rt_priority,
            "scheduling": (c.session(sid)["live"] or {}).get("scheduling"),
            "realtime": realtime,
            "session_missed": (c.session(sid)["live"] or {}).get("missed"),
            **percentiles(internal),
            **percentiles(got, "client_"),
            **percentiles(floor, "floor_"),
            "session_bins_total": metrics["counters"].get("bins", 0) - base,
            "session_missed_bins": metrics["counters"].get("missed_bins", 0),
            "api_load_rps": api_load, "api_load": load_report,
            "hostile_sockets": hostile_sockets, "hostile": hostile_report,
            "stage_mean_us": stage_means(metrics),
            "events_per_bin_mean": float(channels * 12 * bin_ms / 1000),
        }
        if stalls is not None:
            # A missed bin is put down to the platform when a CPU was not given to the
            # guest for at least half a bin while that bin was in flight.
            ends = np.where(client >= 0, sent + client, sent + 2 * bin_ns)
            explained = overlaps_stall(sent[late], ends[late], stalls, bin_ns // 2)
            all_stalls = np.concatenate(stalls) if stalls else np.zeros((0, 2), np.int64)
            res["platform"] = {
                "stalls_over_half_bin": int(np.count_nonzero(all_stalls[:, 1] >= bin_ns // 2)),
                "stalls_over_bin": int(np.count_nonzero(all_stalls[:, 1] >= bin_ns)),
                "max_stall_us": round(float(all_stalls[:, 1].max()) / 1e3, 1)
                if len(all_stalls) else 0.0,
                "missed_bins_during_stall": int(np.count_nonzero(explained)),
                "missed_bins_unexplained": int(missed - np.count_nonzero(explained)),
            }
        res["ratio_internal_p50_to_floor"] = round(res["p50_us"] / res["floor_p50_us"], 2)
        res["ratio_client_p50_to_floor"] = round(res["client_p50_us"] / res["floor_p50_us"], 2)
        if dump is not None:  # per-bin samples, to look at where the tail comes from
            np.savez(dump, client_ns=client, internal_ns=internal, floor_ns=floor,
                     send_ns=sent)
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
          + f", {res['transport']}, session: {res['scheduling']}")
    sm = res.get("session_missed") or {}
    if sm:
        print(f"missed inside the session: {sm.get('missed_bins')} (platform "
              f"{sm.get('platform')}, software {sm.get('software')}, late wakes "
              f"{sm.get('late_wakes')})")
    print(f"{'':40s} {'p50 us':>9s} {'p99 us':>9s} {'p99.9 us':>9s} {'max us':>9s}")
    for name, k in rows:
        print(f"{name:40s} {res[k + 'p50_us']:9.1f} {res[k + 'p99_us']:9.1f} "
              f"{res[k + 'p999_us']:9.1f} {res[k + 'max_us']:9.1f}")
    print("mean per stage (us): " + ", ".join(f"{k} {v}" for k, v in res["stage_mean_us"].items()))
    print(f"ratios to floor p50: internal {res['ratio_internal_p50_to_floor']}x, "
          f"client {res['ratio_client_p50_to_floor']}x")
    if "platform" in res:
        pl = res["platform"]
        print(f"platform stalls (probe above every spikeloop thread): {pl['stalls_over_bin']} "
              f"longer than a bin, max {pl['max_stall_us']} us; missed bins during a stall "
              f"{pl['missed_bins_during_stall']}, unexplained {pl['missed_bins_unexplained']}")


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
    ap.add_argument("--hostile-sockets", type=int, default=0, metavar="N",
                    help="meanwhile, N unauthenticated idle WebSockets held open and "
                         "oversize bodies posted from another process (security probe)")
    ap.add_argument("--transport", choices=["tcp", "ipc"], default="ipc",
                    help="source, output and floor on ipc:// (default: one host) or "
                         "tcp://127.0.0.1 (same run)")
    ap.add_argument("--rt-priority", type=int, default=None,
                    help="the session's SCHED_FIFO priority (default: the session's own "
                         "real-time default, 50, when the host permits it)")
    ap.add_argument("--no-realtime", action="store_true",
                    help="the opt-out: sessions as ordinary processes (realtime: false), "
                         "this process and the floor too")
    ap.add_argument("--quick", action="store_true", help="10 s of measurement")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--dump", type=Path, help="write the per-bin samples (.npz) here")
    ap.add_argument("--session-cpu", type=int, default=None, metavar="N",
                    help="pin the session to CPU N and this process to the others")
    ap.add_argument("--cpu-dma-latency", type=int, default=None, metavar="US",
                    help="the session's cpu_dma_latency_us (0: idle CPUs poll; root)")
    ap.add_argument("--platform-probe", action="store_true",
                    help="measure the platform's own wake-up stalls during the run (one "
                         "SCHED_FIFO 95 probe per CPU) and tell which missed bins they explain")
    a = ap.parse_args(argv)
    realtime = not a.no_realtime
    if a.session_cpu is None and realtime:
        # the core the control plane gives a first session (service.session.realtime)
        a.session_cpu = pick_cpu(os.sched_getaffinity(0), [])
    if a.session_cpu is not None:  # before any thread exists: they inherit it
        others = set(os.sched_getaffinity(0)) - {a.session_cpu}
        os.sched_setaffinity(0, others or {a.session_cpu})
    seconds = min(a.seconds, 10.0) if a.quick else a.seconds
    rt = a.rt_priority if a.rt_priority is not None else (DEFAULT_RT_PRIORITY if realtime
                                                           else 0)
    bench_rt = 0
    if rt:
        # The acquisition/stimulator side (this process) and the floor's echo process run
        # real-time too, as in a real rig, when the host permits it; the server and its
        # sessions are not made RT by inheritance (the session applies its own layout).
        try:
            set_fifo(max(1, rt - 1), children_too=False)
            bench_rt = rt
        except OSError as exc:
            print(f"this process stays SCHED_OTHER: SCHED_FIFO refused ({exc.strerror})")
    res = run(a.channels, a.decoder, a.bin_ms, seconds, a.api_load, transport=a.transport,
              rt_priority=a.rt_priority, dump=a.dump,
              cpu_dma_latency_us=a.cpu_dma_latency, probe=a.platform_probe,
              hostile_sockets=a.hostile_sockets,
              session_cpu=a.session_cpu, realtime=realtime, floor_rt=bench_rt)
    return report(res, print_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
