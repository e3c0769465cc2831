"""Long fuzz run of the frame parser and the loop behind it (the CI runs a short one).

Cases are valid frames of every kind, then mutated: bytes flipped, frames
truncated, duplicated, dropped or swapped, header fields replaced with
hostile values. Every case goes through ``protocol.decode`` and, when
accepted, through the sequence tracker and a live pipeline (binner, Kalman
decoder, policy, guard). A *crash* is any exception other than
``ProtocolError``, or a stimulation command outside the limits.

    .venv/bin/python bench/fuzz.py --cases 2000000 --json results/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decoders import build_decoder  # noqa: E402
from service.loop.core import BinResult, CoreSink, SessionCore  # noqa: E402
from service.session.config import SessionConfig  # noqa: E402
from service.wire import protocol as P  # noqa: E402

CH = 32
HOSTILE = [-1, 0, 2**63 - 1, 2**64 - 1, -(2**63), 1e308, float("nan"), "", "x" * 300, None,
           [], {}, b"\x00", True]


def valid_frames(rng: random.Random, seq: int, t_ns: int) -> list[bytes]:
    kind = rng.choice(["events", "counts", "behavior", "decoded", "stim", "heartbeat"])
    if kind == "events":
        n = rng.randint(0, 40)
        ids = np.array([rng.randrange(CH) for _ in range(n)])
        times = np.sort(np.array([t_ns - rng.randrange(2_000_000) for _ in range(n)], np.int64))
        f = P.encode_events(b"spikes", "fz", seq, t_ns, CH, ids, times)
    elif kind == "counts":
        f = P.encode_array(b"spikes", P.KIND_COUNTS, "fz", seq, t_ns,
                           np.array([rng.randrange(5) for _ in range(CH)], np.uint16),
                           bin_ns=1_000_000)
    elif kind in ("behavior", "decoded"):
        f = P.encode_array(b"behavior", P.KIND_BEHAVIOR if kind == "behavior" else
                           P.KIND_DECODED, "fz", seq, t_ns,
                           np.array([rng.uniform(-50, 50) for _ in range(4)]))
    else:
        f = P.encode_control(b"x", P.KIND_STIM if kind == "stim" else P.KIND_HEARTBEAT, "fz",
                             seq, t_ns, {"status": "sent"})
    return [bytes(x) for x in f]


def mutate(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    frames = list(frames)
    for _ in range(rng.randint(0, 3)):
        op = rng.randrange(7)
        i = rng.randrange(len(frames))
        if op == 0 and frames[i]:  # flip a byte
            b = bytearray(frames[i])
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            frames[i] = bytes(b)
        elif op == 1:  # truncate
            frames[i] = frames[i][: rng.randrange(len(frames[i]) + 1)]
        elif op == 2:  # drop a frame
            frames.pop(i)
            if not frames:
                return frames
        elif op == 3:  # duplicate a frame
            frames.insert(i, frames[i])
        elif op == 4 and len(frames) > 1:  # swap
            j = rng.randrange(len(frames))
            frames[i], frames[j] = frames[j], frames[i]
        elif op == 5 and len(frames) > 1:  # hostile header field
            try:
                h = msgpack.unpackb(frames[1])
                if isinstance(h, dict):
                    h[rng.choice(["v", "kind", "seq", "t_ns", "ch", "dtype", "n", "bin_ns", "x",
                                  "ep"])] = rng.choice(HOSTILE)
                    frames[1] = msgpack.packb(h)
            except Exception:
                pass
        elif op == 6:  # random bytes
            frames[i] = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    return frames


class _Watch(CoreSink):
    """Counts bins and flags any sent command over the amplitude limit."""

    def __init__(self, limit_ma: float):
        self.limit_ma = limit_ma
        self.bins = 0
        self.over: list[str] = []

    def bin(self, r: BinResult, recv_ns: int, in_seq: int) -> None:
        self.bins += 1
        cmd = r.outcome.command if r.outcome is not None else None
        if cmd is not None and cmd.amplitude_ma > self.limit_ma:
            self.over.append(f"bin {r.index}: amplitude {cmd.amplitude_ma} over limit")


def make_core() -> SessionCore:
    cfg = SessionConfig.model_validate({"bin_ms": 1, "source": {"channels": CH},
                                        "stim": {"policy": {"type": "speed_to_dbs",
                                                            "gain_ma_per_cm_s": 10.0}}})
    rng = np.random.default_rng(0)
    dec = build_decoder("kalman").fit(rng.poisson(2, (500, CH)), rng.normal(size=(500, 4)),
                                      output_names=["x", "y", "vx", "vy"])
    core = SessionCore(cfg, _Watch(cfg.stim.limits.max_amplitude_ma))
    core.begin(dec)
    core.guard.arm()
    return core


def run(cases: int, seed: int) -> dict:
    """Every case goes through the session core's frame acceptance, as live frames do."""
    rng = random.Random(seed)
    core = make_core()
    watch = core.sink
    assert isinstance(watch, _Watch)
    crashes: list[str] = []
    t_ns, seq = 0, 0
    t0 = time.perf_counter()
    for k in range(cases):
        t_ns += rng.choice([1_000_000, 1_000_000, 0, -5_000_000, 3_000_000_000])
        seq += rng.choice([1, 1, 1, 0, 2, -3])
        frames = valid_frames(rng, max(seq, 0), max(t_ns, 0))
        if rng.random() < 0.7:
            frames = mutate(rng, frames)
        try:
            core.accept(frames)
        except Exception:
            crashes.append(f"case {k}: {traceback.format_exc(limit=3)}")
            if len(crashes) > 20:
                break
        if k and k % 200_000 == 0:
            print(f"  {k:,} cases, {len(crashes)} crashes", file=sys.stderr)
    wall = time.perf_counter() - t0
    crashes += watch.over
    accepted = core.counters["frames"] + core.counters["behavior_frames"]
    return {"cases": k + 1, "seed": seed, "accepted": accepted, "bins": watch.bins,
            "rejected": dict(core.rejected), "crashes": len(crashes),
            "crash_examples": crashes[:5],
            "wall_s": round(wall, 1), "cases_per_s": round((k + 1) / wall)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=2_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="100,000 cases")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    res = run(100_000 if a.quick else a.cases, a.seed)
    print(f"{res['cases']:,} cases in {res['wall_s']} s ({res['cases_per_s']:,}/s): "
          f"{res['accepted']:,} accepted, {res['bins']:,} bins decoded, "
          f"{sum(res['rejected'].values()):,} rejected, {res['crashes']} crashes")
    for reason, n in sorted(res["rejected"].items(), key=lambda x: -x[1]):
        print(f"  {reason:22s} {n:>10,}")
    for ex in res["crash_examples"]:
        print(ex)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2))
    return 1 if res["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
