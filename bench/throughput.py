"""Ingest throughput of one session, and how many 1 kHz sessions fit on this machine.

Both parts run the real thing: the control plane (uvicorn subprocess), session
processes started over REST (``record: false`` unless ``--record``: this
measures the loop, not the disk), and this process as the acquisition system
(PUB, paced in real time) and the stimulator (SUB on each session's stim topic).

**Ingest** (``events_per_s``): one 1024-channel, 1 ms-bin session (Kalman by
default) is fed 1 kHz frames carrying more and more uniformly random spike
events. A rate is *sustained* when the session counted every event sent (no
gaps, no rejected frames, no late or out-of-window events), closed one bin per
frame, and had drained its input within 0.5 s of the last frame (it kept up:
a session even 5 % slower than the source is >= 0.5 s behind after 10 s).
``events_per_s`` is the highest sustained rate; the first rate that is not
sustained, even when run a second time (one retry absorbs a stall caused by
other processes on the machine), ends the sweep. The baseline is the raw rate
at which this process pushes the same frames through a ZeroMQ PUB -> SUB pair
to another process with no session, measured in the same run.

**Concurrency** (``sessions_at_p99_1ms``): N = 1, 2, 3, 4, 6, ... Kalman
sessions at 256 channels and 1 ms bins all subscribe to **one shared source**
(the simulated motor cortex). Sharing is deliberate: every session receives
each frame at the same instant, the worst case for contention on two cores,
and one publisher cannot itself become the bottleneck (N paced publishers in
one Python process would serialise and skew the client-side timing). Sessions
are added one at a time and all are measured together at each N, from the
service-internal frame received -> stim sent samples (``/sessions/{id}/latency``)
and as a client sees them (frame sent -> stim received). ``sessions_at_p99_1ms``
is the largest N at which every session's *client* p99 is <= 1 ms and at most 0.1 %
of all bins reached the client later than 1 ms (or never); the first N that fails
twice ends the sweep. The sweep runs at 256 channels and again at 1024
(``sessions_at_p99_1ms_1024``). Sessions apply the real-time layout the host permits
(the control plane spreads and pins them over the cores) and this process runs
SCHED_FIFO just below them when permitted; ``--no-realtime`` measures the opt-out.

Every latency is also given as a ratio to the raw ZeroMQ round trip (PUB ->
echo process -> PUB) of the same frame on the same transport, in the same run.

    .venv/bin/python bench/throughput.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
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
    raw_pubsub_rate,
    report,
    set_fifo,
    sleep_until,
    stage_means,
    wait_running,
)

from service.session.realtime import DEFAULT_RT_PRIORITY  # noqa: E402
from service.wire import protocol as P  # noqa: E402
from sources.motor import MotorCortexSim  # noqa: E402

BIN_NS = 1_000_000  # 1 kHz frames and bins throughout
MAX_MISSED_FRAC = 0.001  # a level holds when <= 0.1 % of the bins reach the client late
REALTIME = True  # sessions apply the real-time layout (--no-realtime: the opt-out)
BENCH_SCHEDULING = "SCHED_OTHER"
NAMES = ["x", "y", "vx", "vy"]


def _session_cfg(name: str, src: str, channels: int, decoder: str, record: bool,
                 output: str, cal_s: float) -> dict:
    params = {"epochs": 2, "patience": 1} if decoder == "snn" else {}
    return {"name": name, "bin_ms": BIN_NS / 1e6, "record": record,
            "source": {"endpoint": src, "channels": channels},
            "decoder": {"type": decoder, "calibration_s": cal_s, "params": params},
            "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}},
            "output": {"heartbeat_ms": 100, "endpoint": output}, "realtime": REALTIME}


def _latency(c, sid: str, n: int) -> np.ndarray:
    return np.asarray(c.http.get(f"/sessions/{sid}/latency").json()["e2e_ns"], np.int64)[-n:]


def _counts(c, sid: str, patience_s: float = 15.0) -> dict[str, int]:
    """The session's own counters. A session swamped by a rate it cannot sustain may not
    answer a status call within its timeout while it works through the backlog: ask
    again for ``patience_s`` before giving up (the level then fails on its drain time)."""
    deadline = time.monotonic() + patience_s
    while True:
        st = c.session(sid)["live"]  # the running process's own status
        if st and "counters" in st:
            break
        if not (st or {}).get("unresponsive") or time.monotonic() > deadline:
            raise RuntimeError(f"session {sid} is not live: {st}")
        time.sleep(0.2)
    ctr = st["counters"]
    return {"events": ctr.get("events", 0), "frames": st["frames"], "bins": st["bins"],
            "gaps": st["gaps"], "rejected": sum(st["rejected"].values()),
            "late": st["late_events"], "missed_bins": ctr.get("missed_bins", 0)}


# ============================================================================ ingest
class EventSource:
    """Paced 1 kHz spike frames of ``per_frame`` random events over ``channels``.

    Frames are cut from a pre-generated pool so that the source costs almost nothing
    per frame: the session, not the generator, must be what limits the rate.
    """

    def __init__(self, pub: zmq.Socket, channels: int, seed: int = 1):
        self.pub, self.channels = pub, channels
        self.rng = np.random.default_rng(seed)
        self.seq = 0
        self.t_ns = 1_000 * BIN_NS  # source clock, on the bin grid
        self.truth = np.zeros(4)

    def pool(self, per_frame: int, size: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
        dt = "<u4" if self.channels > 65535 else "<u2"
        return [(self.rng.integers(0, self.channels, per_frame).astype(dt),
                 np.sort(self.rng.integers(0, BIN_NS, per_frame)).astype("<i8"))
                for _ in range(size)]

    def send(self, ids: np.ndarray, offsets: np.ndarray, behavior: bool = False) -> int:
        """Send one frame closing the bin [t, t + 1 ms); returns its send time (ns)."""
        start = self.t_ns
        self.t_ns += BIN_NS
        if behavior:  # calibration targets: a slow random walk
            self.truth[2:] = 0.99 * self.truth[2:] + self.rng.normal(0, 1, 2)
            self.truth[:2] += self.truth[2:] * 1e-3
            self.pub.send_multipart(P.encode_array(b"behavior", P.KIND_BEHAVIOR, "bench",
                                                   self.seq, self.t_ns, self.truth,
                                                   extra={"names": NAMES}))
        frames = P.encode_events(b"spikes", "bench", self.seq, self.t_ns, self.channels, ids,
                                 offsets + start)
        t0 = now_ns()
        self.pub.send_multipart(frames, copy=False)
        self.seq += 1
        return t0


def ingest(server: Server, c, eps: Endpoints, channels: int, decoder: str, record: bool,
           rates: list[int], seconds: float, cal_s: float) -> dict:
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 1_000_000)
    src = eps.new("src")
    pub.bind(src)
    try:
        return ingest_from(server, c, EventSource(pub, channels), _session_cfg(
            f"ingest-{channels}", src, channels, decoder, record, eps.output(), cal_s),
            rates, seconds)
    finally:
        pub.close(0)


def ingest_from(server: Server, c, source: EventSource, cfg: dict, rates: list[int],
                seconds: float) -> dict:
    """The ingest sweep for a session made from ``cfg``, fed by ``source`` (whose ``pub``
    is a PUB socket, or anything with its ``send_multipart``, e.g. a Redis stream sink)."""
    ctx = zmq.Context.instance()
    channels = cfg["source"]["channels"]
    stim = None
    try:
        s = server.start_session(c, cfg)
        sid = s["id"]
        stim = ctx.socket(zmq.SUB)
        stim.setsockopt(zmq.SUBSCRIBE, b"stim")
        stim.setsockopt(zmq.RCVHWM, 1_000_000)
        stim.connect(s["output_endpoint"])
        cal_pool = source.pool(channels * 20 // 1000 + 1)
        t_next = time.perf_counter()

        def calib_bin() -> None:
            nonlocal t_next
            ids, off = cal_pool[source.seq % len(cal_pool)]
            source.send(ids, off, behavior=True)
            t_next += BIN_NS / 1e9
            sleep_until(t_next)

        wait_running(c, sid, calib_bin)
        levels = []
        for rate in rates:
            lv = _ingest_level(c, sid, source, stim, rate, seconds)
            if not lv["sustained"]:  # once more: was it the machine or the session?
                lv = _ingest_level(c, sid, source, stim, rate, seconds) | {"retried": True}
            levels.append(lv)
            print(f"  ingest {rate:>10,} ev/s: sustained={lv['sustained']} "
                  f"p99={lv['p99_us']} us drain={lv['drain_s']} s", file=sys.stderr, flush=True)
            if not lv["sustained"]:
                break
        metrics = c.metrics(sid)
        live = c.session(sid)["live"] or {}
        c.stop(sid)
    finally:
        if stim is not None:
            stim.close(0)
    ok = [lv for lv in levels if lv["sustained"]]
    rt = [lv for lv in ok if lv["p99_us"] <= 1000]
    return {"channels": channels, "bin_ms": BIN_NS / 1e6, "decoder": cfg["decoder"]["type"],
            "record": cfg["record"], **({"redis": live["redis"]} if live.get("redis") else {}),
            "seconds_per_rate": seconds, "levels": levels,
            "events_per_s": max((lv["rate"] for lv in ok), default=0),
            "events_per_s_at_p99_1ms": max((lv["rate"] for lv in rt), default=0),
            "stage_mean_us": stage_means(metrics)}


def _ingest_level(c, sid: str, source: EventSource, stim: zmq.Socket, rate: int,
                  seconds: float) -> dict:
    per_frame = max(1, rate // 1000)
    pool = source.pool(per_frame)
    n = int(seconds * 1e9 / BIN_NS)
    before = _counts(c, sid)
    stages0 = c.metrics(sid)["stages"]
    base = source.seq
    t_send = np.zeros(n, np.int64)
    client = np.full(n, -1, np.int64)

    def drain(block_ms: int = 0) -> None:
        while stim.poll(block_ms):
            block_ms = 0
            msg = P.decode(stim.recv_multipart())
            k = msg.header.extra.get("in_seq", -1) - base
            if 0 <= k < n and client[k] < 0:
                client[k] = now_ns() - t_send[k]

    t0 = time.perf_counter()
    t_next = t0
    for i in range(n):
        ids, off = pool[i % len(pool)]
        t_send[i] = source.send(ids, off)
        drain(1)  # returns as soon as a command is there (or after 1 ms)
        t_next += BIN_NS / 1e9
        sleep_until(t_next)
    send_s = time.perf_counter() - t0
    # Drain: a session that kept up has processed everything almost at once.
    t_end = time.perf_counter()
    while True:
        after = _counts(c, sid)
        if after["bins"] - before["bins"] >= n or time.perf_counter() - t_end > 5:
            break
        time.sleep(0.02)
    drain_s = round(time.perf_counter() - t_end, 3)
    drain(0)
    stages1 = c.metrics(sid)["stages"]
    stage_us = {k: round((v["sum_us"] - stages0[k]["sum_us"])
                         / max(v["count"] - stages0[k]["count"], 1), 2)
                for k, v in stages1.items()}
    d = {k: after[k] - before[k] for k in after}
    sent = n * per_frame
    zero_loss = (d["events"] == sent and d["frames"] == n and d["gaps"] == 0
                 and d["rejected"] == 0 and d["late"] == 0)
    keeps_up = d["bins"] == n and drain_s <= 0.5
    got = client[client >= 0]
    return {"rate": per_frame * 1000, "events_per_frame": per_frame, "frames": n,
            "events_sent": sent, "events_counted": d["events"], "frames_counted": d["frames"],
            "bins": d["bins"], "gaps": d["gaps"], "rejected": d["rejected"],
            "late_events": d["late"], "missed_bins": d["missed_bins"],
            "send_rate": round(sent / send_s), "drain_s": drain_s,
            "zero_loss": zero_loss, "keeps_up": keeps_up, "sustained": zero_loss and keeps_up,
            "stage_mean_us": stage_us,
            **percentiles(_latency(c, sid, min(n, d["bins"]))),
            **percentiles(got, "client_"), "client_missing": int(n - got.size)}


# ============================================================================ concurrency
def concurrency(server: Server, c, eps: Endpoints, channels: int, decoder: str,
                counts: list[int], seconds: float, cal_s: float) -> dict:
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 100_000)
    src = eps.new("shared")
    pub.bind(src)
    sessions: list[str] = []
    socks: list[zmq.Socket] = []
    poller = zmq.Poller()
    t_next = time.perf_counter()

    feeder = SimFeeder(pub, channels, BIN_NS, seed=2)
    send = feeder.send

    def one_bin(record: np.ndarray | None = None, row: int = 0) -> None:
        """Send a frame, wait (up to 2 bins) for every session's stim command, pace."""
        nonlocal t_next
        t0 = send()
        want = feeder.seq - 1
        left = set(range(len(socks)))
        deadline = t0 + 2 * BIN_NS
        while left and now_ns() < deadline:
            for sock, _ in poller.poll(1):
                j = socks.index(sock)
                while sock.poll(0):
                    msg = P.decode(sock.recv_multipart())
                    if msg.header.extra.get("in_seq") == want and j in left:
                        left.discard(j)
                        if record is not None:
                            record[j, row] = now_ns() - t0
        t_next += BIN_NS / 1e9
        sleep_until(t_next)

    def measure(n_sessions: int) -> dict:
        """All sessions together: 1 s of warm-up, then ``seconds`` of measured bins."""
        nonlocal t_next
        warm_end = time.perf_counter() + 1.0
        while time.perf_counter() < warm_end:
            one_bin()
        before = {sid: _counts(c, sid) for sid in sessions}
        n = int(seconds * 1e9 / BIN_NS)
        client = np.full((len(sessions), n), -1, np.int64)
        t_next = time.perf_counter()
        for i in range(n):
            one_bin(client, i)
        per = []
        for j, sid in enumerate(sessions):
            after = _counts(c, sid)
            got = client[j][client[j] >= 0]
            per.append({"id": sid, **percentiles(_latency(c, sid, n)),
                        **percentiles(got, "client_"),
                        "client_missed": int(np.count_nonzero((client[j] < 0)
                                                              | (client[j] > BIN_NS))),
                        "missed_bins": after["missed_bins"] - before[sid]["missed_bins"],
                        "bins": after["bins"] - before[sid]["bins"],
                        "gaps": after["gaps"] - before[sid]["gaps"]})
        worst = max(p["p99_us"] for p in per)
        client_missed = sum(p["client_missed"] for p in per)
        worst_client = max(p["client_p99_us"] for p in per)
        missed_frac = client_missed / max(1, n * len(per))
        return {"sessions": n_sessions, "bins_each": n, "worst_p99_us": worst,
                "worst_p50_us": max(p["p50_us"] for p in per),
                "worst_p999_us": max(p["p999_us"] for p in per),
                "worst_max_us": max(p["max_us"] for p in per),
                "worst_client_p99_us": max(p["client_p99_us"] for p in per),
                "missed_bins": sum(p["missed_bins"] for p in per),
                "client_missed": client_missed, "client_missed_pct": round(100 * missed_frac, 3),
                "internal_p99_ok": bool(worst <= 1000),
                "ok": bool(worst_client <= 1000 and missed_frac <= MAX_MISSED_FRAC),
                "per_session": per}

    levels = []
    try:
        for n_sessions in counts:
            while len(sessions) < n_sessions:  # add sessions, feeding the running ones
                s = server.start_session(c, _session_cfg(
                    f"conc-{len(sessions)}", src, channels, decoder, False, eps.output(), cal_s))
                sock = ctx.socket(zmq.SUB)
                sock.setsockopt(zmq.SUBSCRIBE, b"stim")
                sock.connect(s["output_endpoint"])
                socks.append(sock)
                poller.register(sock, zmq.POLLIN)
                sessions.append(s["id"])
                wait_running(c, s["id"], one_bin)
            lv = measure(n_sessions)
            if not lv["ok"]:  # once more: was it the machine or the sessions?
                lv = measure(n_sessions) | {"retried": True}
            levels.append(lv)
            print(f"  {n_sessions} sessions at {channels} ch: worst client p99 "
                  f"{lv['worst_client_p99_us']} us, client missed {lv['client_missed_pct']} % "
                  f"ok={lv['ok']}", file=sys.stderr, flush=True)
            if not lv["ok"]:
                break
        metrics = c.metrics(sessions[0]) if sessions else {"stages": {}}
        for sid in sessions:
            c.stop(sid)
    finally:
        pub.close(0)
        for sock in socks:
            sock.close(0)
    ok = 0
    for lv in levels:
        if not lv["ok"]:
            break
        ok = lv["sessions"]
    return {"channels": channels, "bin_ms": BIN_NS / 1e6, "decoder": decoder,
            "source": "shared", "seconds_per_point": seconds, "levels": levels,
            "sessions_at_p99_1ms": ok, "stage_mean_us_first_session": stage_means(metrics)}


# ============================================================================ main
def run(quick: bool, smoke: bool, transport: str, record: bool, decoder: str) -> dict:
    t_start = time.perf_counter()
    if smoke:
        rates, counts, seconds, cal_s = [100_000], [1], 1.0, 0.5
    elif quick:
        rates, counts, seconds = [250_000, 500_000, 1_000_000, 2_000_000, 4_000_000], \
            [1, 2, 3, 4, 6], 10.0
        cal_s = 2.0
    else:
        rates = [100_000, 250_000, 500_000, 1_000_000, 1_500_000, 2_000_000, 3_000_000,
                 4_000_000, 6_000_000, 8_000_000]
        counts, seconds, cal_s = [1, 2, 3, 4, 5, 6, 8], 60.0, 2.0
    eps = Endpoints(transport)
    try:
        with Server() as server:
            c = server.client()
            ing = ingest(server, c, eps, 1024, decoder, record, rates, seconds, cal_s)
            conc = concurrency(server, c, eps, 256, "kalman", counts, seconds, cal_s)
            conc_1024 = None if smoke else concurrency(server, c, eps, 1024, "kalman", counts,
                                                       seconds, cal_s)
    finally:
        eps.close()
    # Baselines last, with no session running: the same frames, the same transport.
    big = EventSource(None, 1024).pool(max(ing["events_per_s"], rates[0]) // 1000, 1)[0]
    frame = [bytes(f) for f in P.encode_events(b"spikes", "bench", 0, BIN_NS, 1024, *big)]
    raw = raw_pubsub_rate(frame, 0.5 if smoke else 3.0, transport)
    raw["events_per_frame"] = big[0].size
    raw["events_per_s"] = round(raw["frames_per_s"] * big[0].size)
    floor_ing = measure_floor(frame, 500 if smoke else 2000, transport)
    sim = MotorCortexSim(units=256, seed=3)
    step = sim.advance(BIN_NS)
    floor_conc = measure_floor(
        [bytes(f) for f in P.encode_events(b"spikes", "b", 0, step.t_ns, 256, step.ids,
                                           step.times)], 500 if smoke else 2000, transport)
    ing.update(percentiles(floor_ing, "floor_"))
    ing["raw_pubsub"] = raw
    ing["ratio_to_raw"] = round(ing["events_per_s"] / max(raw["events_per_s"], 1), 3)
    conc.update(percentiles(floor_conc, "floor_"))
    for lv in ing["levels"]:
        lv["ratio_p50_to_floor"] = round(lv["p50_us"] / ing["floor_p50_us"], 2)
    for cc in (conc, conc_1024):
        if cc is None:
            continue
        if cc is conc_1024:
            cc.update(percentiles(floor_ing, "floor_"))  # the 1024-channel frame's floor
        for lv in cc["levels"]:
            lv["ratio_worst_p50_to_floor"] = round(lv["worst_p50_us"] / cc["floor_p50_us"], 2)
    return {"events_per_s": ing["events_per_s"],
            "sessions_at_p99_1ms": conc["sessions_at_p99_1ms"],
            "sessions_at_p99_1ms_1024": conc_1024["sessions_at_p99_1ms"] if conc_1024 else None,
            "concurrency_1024": conc_1024, "bench_scheduling": BENCH_SCHEDULING,
            "events_per_s_at_p99_1ms": ing["events_per_s_at_p99_1ms"],
            "transport": transport, "quick": quick, "smoke": smoke,
            "ingest": ing, "concurrency": conc,
            "elapsed_s": round(time.perf_counter() - t_start, 1)}


def print_table(res: dict) -> None:
    ing, conc = res["ingest"], res["concurrency"]
    hdr = f"{'p50 us':>8s} {'p99 us':>8s} {'p99.9 us':>9s} {'max us':>8s}"
    print(f"\nIngest: one session, {ing['channels']} channels, {ing['bin_ms']} ms bins, "
          f"{ing['decoder']}, record={ing['record']}, {ing['seconds_per_rate']} s per rate, "
          f"{res['transport']}")
    print(f"{'events/s':>10s} {'lost':>6s} {'bins':>7s} {'drain s':>7s} {hdr} "
          f"{'client p99':>10s} {'x floor p50':>11s} sustained")
    for lv in ing["levels"]:
        print(f"{lv['rate']:>10,} {lv['events_sent'] - lv['events_counted']:>6d} "
              f"{lv['bins']:>7d} {lv['drain_s']:>7.3f} {lv['p50_us']:8.1f} {lv['p99_us']:8.1f} "
              f"{lv['p999_us']:9.1f} {lv['max_us']:8.1f} {lv['client_p99_us']:10.1f} "
              f"{lv['ratio_p50_to_floor']:11.2f} {lv['sustained']}")
    raw = ing["raw_pubsub"]
    print(f"{'floor':>10s} {'':>6s} {'':>7s} {'':>7s} {ing['floor_p50_us']:8.1f} "
          f"{ing['floor_p99_us']:8.1f} {ing['floor_p999_us']:9.1f} {ing['floor_max_us']:8.1f}"
          "   (raw ZeroMQ round trip, same frame)")
    print(f"events_per_s (sustained, zero loss): {res['events_per_s']:,}; raw PUB->SUB "
          f"baseline {raw['events_per_s']:,} ev/s ({raw['events_per_frame']} events/frame, "
          f"{raw['delivered']}/{raw['sent']} delivered); ratio {ing['ratio_to_raw']}")
    for cc in (conc, res.get("concurrency_1024")):
        if cc is None:
            continue
        print(f"\nConcurrency: {cc['channels']} channels, 1 kHz, {cc['decoder']}, one shared "
              f"source, {cc['seconds_per_point']} s per point (worst session; ok = client p99 "
              f"<= 1 ms and <= {100 * MAX_MISSED_FRAC:g} % of bins missed at the client)")
        print(f"{'sessions':>8s} {hdr} {'client p99':>10s} {'missed':>6s} {'client %':>8s} "
              f"{'x floor p50':>11s} ok")
        for lv in cc["levels"]:
            print(f"{lv['sessions']:>8d} {lv['worst_p50_us']:8.1f} {lv['worst_p99_us']:8.1f} "
                  f"{lv['worst_p999_us']:9.1f} {lv['worst_max_us']:8.1f} "
                  f"{lv['worst_client_p99_us']:10.1f} {lv['missed_bins']:>6d} "
                  f"{lv['client_missed_pct']:8.3f} {lv['ratio_worst_p50_to_floor']:11.2f} "
                  f"{lv['ok']}")
        print(f"{'floor':>8s} {cc['floor_p50_us']:8.1f} {cc['floor_p99_us']:8.1f} "
              f"{cc['floor_p999_us']:9.1f} {cc['floor_max_us']:8.1f}")
    print(f"sessions_at_p99_1ms: {res['sessions_at_p99_1ms']} at 256 ch, "
          f"{res.get('sessions_at_p99_1ms_1024')} at 1024 ch; this process: "
          f"{res.get('bench_scheduling')}   ({res['elapsed_s']} s)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if helper_main(argv):
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 s per point (about 3 minutes)")
    ap.add_argument("--smoke", action="store_true",
                    help="plumbing check only: 1 s, one rate, one session")
    ap.add_argument("--transport", choices=["tcp", "ipc"], default="ipc",
                    help="ipc:// (default: one host) or tcp://127.0.0.1")
    ap.add_argument("--no-realtime", action="store_true",
                    help="sessions as ordinary processes (realtime: false), this one too")
    ap.add_argument("--decoder", choices=["kalman", "snn"], default="kalman",
                    help="decoder of the ingest session")
    ap.add_argument("--record", action="store_true", help="the ingest session records too")
    ap.add_argument("--json", type=Path, help="write the figures here")
    a = ap.parse_args(argv)
    global BENCH_SCHEDULING, REALTIME
    REALTIME = not a.no_realtime
    if REALTIME:  # the rig's side runs real-time too, when the host permits it
        try:
            set_fifo(DEFAULT_RT_PRIORITY - 1, children_too=False)
            BENCH_SCHEDULING = f"SCHED_FIFO {DEFAULT_RT_PRIORITY - 1}"
        except OSError as exc:
            BENCH_SCHEDULING = f"SCHED_OTHER (SCHED_FIFO refused: {exc.strerror})"
    res = run(a.quick, a.smoke, a.transport, a.record, a.decoder)
    return report(res, print_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
