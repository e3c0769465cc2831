"""The Redis stream path against ZeroMQ, in the same run: added latency, and ingest throughput.

What runs: a redis-server (our own on 127.0.0.1, or ``--redis URL``), the real
control plane (uvicorn subprocess) and session processes created over REST.

**Latency**: the same session config (96 channels, Kalman, 1 ms bins, no recording)
fed three ways: (a) over ZeroMQ (a PUB in this process); (b) over a Redis stream (an
XADD per frame from this process; the session's reader thread XREADs it and hands it
to the loop); (c) as (b) with ``redis.mirror_output`` on (what copying the output to
Redis costs the loop). The three sessions run side by side and are measured in turn,
1 s each per round (after 100 unmeasured bins), so that load from other processes
falls on each path alike. Per bin, as a client sees it:
source send (just before the PUB send / the XADD) -> the bin's stim command received
here (SUB on the session's output). ``added_p50_us`` / ``added_p99_us`` = Redis - ZeroMQ
at that percentile, also given as ratios. ``missed`` counts bins whose command did
not arrive within one bin width.

**Throughput** (``redis_events_per_s``): one 1024-channel, 1 ms-bin Kalman session fed
only through Redis at rising event rates, with bench/throughput.py's sweep and its
definition of sustained (every event counted, no gap, no rejection, one bin per frame,
drained within 0.5 s of the last frame), doubling from 100 k events/s; the highest
rate sustained, and actually sent at >= 95 % of its nominal rate by this process, is the
throughput of one worker (one session process).

    .venv/bin/python bench/redis_path.py --quick --json results/redis_path.json
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Endpoints,
    RedisProcess,
    Server,
    SimFeeder,
    StimWaiter,
    helper_main,
    percentiles,
    report,
    sleep_until,
    stage_means,
    wait_running,
)
from throughput import EventSource, _session_cfg, ingest_from  # noqa: E402

from clients.redis_publisher import RedisStreamSink  # noqa: E402

CHANNELS, BIN_MS = 96, 1.0


# ---------------------------------------------------------------------------- latency
class LatencyPath:
    """One session fed one way (``zmq`` | ``redis`` | ``redis+mirror``), measured in blocks.

    All paths' sessions stay up and are measured in turn, one block each per round, so
    that load from other processes on the machine falls on every path alike.
    """

    def __init__(self, server: Server, c, eps: Endpoints, redis_url: str, feed: str):
        self.c, self.feed = c, feed
        self.bin_ns = int(BIN_MS * 1e6)
        src = eps.new("src")
        cfg = {"name": f"redis-path-{feed.replace('+', '-')}", "bin_ms": BIN_MS,
               "record": False, "source": {"endpoint": src, "channels": CHANNELS},
               "decoder": {"type": "kalman", "calibration_s": 2.0},
               "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}},
               "output": {"heartbeat_ms": 100, "endpoint": eps.output()}}
        if feed == "zmq":
            self.pub = zmq.Context.instance().socket(zmq.PUB)
            self.pub.setsockopt(zmq.SNDHWM, 100_000)
            self.pub.bind(src)
        else:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            # No holding back: the behaviour XADD goes out before the timed spike frame,
            # as the ZeroMQ feeder's behaviour send does.
            self.pub = RedisStreamSink(redis_url, name, hold_topics=())
            cfg["source"]["redis_stream"] = name
            cfg["redis"] = {"url": redis_url, "mirror_output": feed == "redis+mirror",
                            "mirror_recording": False}
        self.sid = server.start_session(c, cfg)["id"]
        self.stim = StimWaiter(c.session(self.sid)["output_endpoint"])
        self.feeder = SimFeeder(self.pub, CHANNELS, self.bin_ns, seed=1)
        self.samples: list[np.ndarray] = []
        self.t_next = time.perf_counter()

    def one_bin(self) -> int:
        """Send a bin, wait for its stim command (up to 2 bins), pace; -1 if none came."""
        t0 = self.feeder.send()
        t1 = self.stim.wait(self.feeder.seq - 1, 2 * self.bin_ns)
        self.t_next += BIN_MS / 1000
        sleep_until(self.t_next)
        return -1 if t1 is None else t1 - t0

    def calibrate(self, warmup_s: float) -> None:
        self.t_next = time.perf_counter()
        wait_running(self.c, self.sid, self.one_bin)
        self.run_for(warmup_s)

    def run_for(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.one_bin()

    def block(self, n: int, rewarm: int = 100) -> None:
        """``rewarm`` unmeasured bins (the session was idle), then ``n`` measured ones."""
        self.t_next = time.perf_counter()
        for _ in range(rewarm):
            self.one_bin()
        out = np.empty(n, np.int64)
        for i in range(n):
            out[i] = self.one_bin()
        self.samples.append(out)

    def finish(self) -> dict:
        client = np.concatenate(self.samples)
        n = client.size
        try:
            internal = np.asarray(self.c.http.get(f"/sessions/{self.sid}/latency")
                                  .json()["e2e_ns"], np.int64)[-n:]
            metrics = self.c.metrics(self.sid)
            live = self.c.session(self.sid)["live"] or {}
            self.c.stop(self.sid)
        finally:
            self.stim.close()
            self.pub.close(0)
        got = client[client >= 0]
        return {"feed": self.feed, "bins": n,
                "missed": int(np.count_nonzero((client < 0) | (client > self.bin_ns))),
                "lost": int(n - got.size), **percentiles(got),
                **percentiles(internal, "internal_"), "stage_mean_us": stage_means(metrics),
                "redis": live.get("redis")}


def latency(server: Server, c, eps: Endpoints, redis_url: str, seconds: float,
            block_s: float = 1.0, warmup_s: float = 3.0) -> dict[str, dict]:
    paths = [LatencyPath(server, c, eps, redis_url, feed)
             for feed in ("zmq", "redis", "redis+mirror")]
    for p in paths:
        p.calibrate(warmup_s)
    n = int(block_s * 1000 / BIN_MS)
    gc.collect()
    gc.freeze()
    gc.disable()  # this process's own collections are not the path's latency
    for _ in range(max(1, round(seconds / block_s))):
        for p in paths:
            p.block(n)
    gc.enable()
    return {p.feed: p.finish() for p in paths}


# ---------------------------------------------------------------------------- run
def run(quick: bool, redis_url: str | None) -> dict:
    t0 = time.perf_counter()
    seconds = 10.0 if quick else 60.0
    rates = [100_000 * 2 ** k for k in range(11)]  # 100 k ... 102.4 M events/s
    per_rate_s = 3.0 if quick else 10.0
    eps = Endpoints("tcp")
    res: dict = {"quick": quick, "channels": CHANNELS, "bin_ms": BIN_MS, "seconds": seconds}
    try:
        with RedisProcess(redis_url) as redis, Server() as server:
            c = server.client()
            lat = latency(server, c, eps, redis.url, seconds)
            name = f"bench-thr-{uuid.uuid4().hex[:8]}"
            # 2 s of frames: a reader that far behind has failed the 0.5 s drain anyway, and
            # a 100 M events/s frame is 1 MB.
            source = EventSource(RedisStreamSink(redis.url, name, maxlen=2_000), 1024)
            cfg = _session_cfg("redis-ingest-1024", eps.new("unused"), 1024, "kalman", False,
                               eps.output(), 2.0)
            cfg["source"]["redis_stream"] = name
            cfg["redis"] = {"url": redis.url, "mirror_output": False, "mirror_recording": False}
            try:
                thr = ingest_from(server, c, source, cfg, rates, per_rate_s)
            finally:
                source.pub.close()
    finally:
        eps.close()
    z, r, m = lat["zmq"], lat["redis"], lat["redis+mirror"]
    res.update({
        "zmq_p50_us": z["p50_us"], "zmq_p99_us": z["p99_us"],
        "redis_p50_us": r["p50_us"], "redis_p99_us": r["p99_us"],
        "added_p50_us": round(r["p50_us"] - z["p50_us"], 1),
        "added_p99_us": round(r["p99_us"] - z["p99_us"], 1),
        "ratio_p50": round(r["p50_us"] / z["p50_us"], 2),
        "ratio_p99": round(r["p99_us"] / z["p99_us"], 2),
        "redis_mirror_p50_us": m["p50_us"], "redis_mirror_p99_us": m["p99_us"],
        "redis_events_per_s": max((lv["rate"] for lv in thr["levels"] if lv["sustained"]
                                   and lv["send_rate"] >= 0.95 * lv["rate"]), default=0),
        "latency": lat, "throughput": thr,
        "elapsed_s": round(time.perf_counter() - t0, 1)})
    return res


def print_table(res: dict) -> None:
    print(f"\nClient view (source send -> stim command received), {res['channels']} channels, "
          f"Kalman, {res['bin_ms']} ms bins, {res['seconds']:g} s per path")
    print(f"{'path':28s} {'p50 us':>9s} {'p99 us':>9s} {'p99.9 us':>9s} {'max us':>9s} "
          f"{'missed':>7s} {'lost':>5s}")
    names = {"zmq": "ZeroMQ", "redis": "Redis stream", "redis+mirror": "Redis stream + mirror"}
    for feed, lv in res["latency"].items():
        print(f"{names[feed]:28s} {lv['p50_us']:9.1f} {lv['p99_us']:9.1f} {lv['p999_us']:9.1f} "
              f"{lv['max_us']:9.1f} {lv['missed']:7d} {lv['lost']:5d}")
    print(f"{'added by Redis':28s} {res['added_p50_us']:9.1f} {res['added_p99_us']:9.1f}"
          f"   (ratio Redis/ZeroMQ: p50 {res['ratio_p50']}x, p99 {res['ratio_p99']}x)")
    thr = res["throughput"]
    print(f"\nRedis ingest, one session ({thr['channels']} channels, {thr['bin_ms']} ms bins, "
          f"{thr['seconds_per_rate']:g} s per rate)")
    print(f"{'events/s':>10s} {'lost':>6s} {'bins':>7s} {'drain s':>7s} {'p50 us':>8s} "
          f"{'p99 us':>8s} {'p99.9 us':>9s} {'max us':>8s} sustained")
    for lv in thr["levels"]:
        print(f"{lv['rate']:>10,} {lv['events_sent'] - lv['events_counted']:>6d} "
              f"{lv['bins']:>7d} {lv['drain_s']:>7.3f} {lv['client_p50_us']:8.1f} "
              f"{lv['client_p99_us']:8.1f} {lv['client_p999_us']:9.1f} "
              f"{lv['client_max_us']:8.1f} {lv['sustained']}")
    print(f"redis_events_per_s (sustained, zero loss): {res['redis_events_per_s']:,}   "
          f"({res['elapsed_s']} s)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if helper_main(argv):
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 s per latency path, 3 s per "
                                                         "rate (under 3 minutes)")
    ap.add_argument("--redis", help="use this Redis server instead of starting one")
    ap.add_argument("--json", type=Path, help="write the figures here")
    a = ap.parse_args(argv)
    res = run(a.quick, a.redis)
    return report(res, print_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
