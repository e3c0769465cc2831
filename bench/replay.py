"""Replay speed and live/replay identity for a 96-channel recording, per decoder.

What runs, per decoder (Kalman, and the SNN when ``decoders`` registers it):

1. a live-like session in process (``service.session.simsession``): simulated motor
   cortex (96 units) -> wire frames every ``--frame-ms`` -> pipeline (20 ms
   bins) with a decoder calibrated on the first ``calibration_s`` of the
   session, the speed-to-DBS policy and the safety guard, arm/disarm events,
   and a recorder writing the session log (fsync on);
2. ``service.recording.verify.verify`` on that log: read every record, rebuild the
   pipeline and the decoder from the recording, re-feed the frames as fast as
   possible and compare every bin bit for bit. Its wall time gives the speedup
   (source seconds / wall seconds; median of ``--repeats`` runs).

JSON: ``results[decoder]`` per decoder; the top-level ``speedup``,
``channels`` and ``decoder`` are those of the slowest decoder, and
``identical_to_live`` is true only if every decoder replayed identically.

    .venv/bin/python bench/replay.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from decoders.base import Decoder  # noqa: E402
from service.recording.verify import verify  # noqa: E402
from service.session.config import SessionConfig  # noqa: E402
from service.session.simsession import run_sim_session  # noqa: E402
from sources.motor import MotorCortexSim  # noqa: E402

CHANNELS = 96
BIN_MS = 20.0
PARAMS = {"kalman": {}, "snn": {"epochs": 5, "seed": 0}}


def run_one(kind: str, seconds: float, calibration_s: float, frame_ms: float, repeats: int,
            workdir: Path) -> dict:
    cfg = SessionConfig(
        name=f"bench-replay-{kind}", bin_ms=BIN_MS, source={"channels": CHANNELS},
        decoder={"type": kind, "params": PARAMS[kind], "calibration_s": calibration_s},
        stim={"policy": {"type": "speed_to_dbs", "gain_ma_per_cm_s": 0.2}},
    )
    first = int(calibration_s * 1000 / BIN_MS) + 10
    total = int(seconds * 1000 / BIN_MS)
    events = [(first, {"op": "arm"}), ((first + total) // 2, {"op": "disarm"}),
              ((first + total) // 2 + 50, {"op": "arm"})]
    log = workdir / f"{kind}.splog"
    t0 = time.perf_counter()
    live = run_sim_session(cfg, MotorCortexSim(units=CHANNELS, seed=7), seconds, log,
                           frame_ms=frame_ms, events=events)
    live_wall = time.perf_counter() - t0
    reports = [verify(log) for _ in range(repeats)]
    speeds = [r.speedup for r in reports]
    rep = reports[0]
    identical = all(r.identical for r in reports) and rep.bins_compared == live.bins
    return {
        "decoder": kind, "channels": CHANNELS, "bin_ms": BIN_MS, "frame_ms": frame_ms,
        "source_seconds": rep.source_seconds, "bins": live.bins,
        "bins_compared": rep.bins_compared, "identical_to_live": identical,
        "first_divergence": None if rep.first_divergence is None else vars(rep.first_divergence),
        "speedup": statistics.median(speeds), "speedup_runs": speeds,
        "replay_wall_s": statistics.median(r.wall_seconds for r in reports),
        "live_sim_wall_s": live_wall, "recording_bytes": log.stat().st_size,
        "stim_statuses": {s: live.statuses.count(s) for s in sorted(set(live.statuses))},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 s recordings instead of 300 s")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--frame-ms", type=float, default=10.0,
                    help="source frame interval (events per frame = this much spiking)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    seconds, calibration_s = (60.0, 20.0) if a.quick else (300.0, 30.0)
    kinds = [k for k in ("kalman", "snn") if k in Decoder._registry]
    notes = [] if "snn" in kinds else ["snn decoder not registered: only kalman measured"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        for kind in kinds:
            results[kind] = run_one(kind, seconds, calibration_s, a.frame_ms, a.repeats,
                                    Path(tmp))
    slowest = min(results.values(), key=lambda r: r["speedup"])
    out = {
        "speedup": slowest["speedup"], "identical_to_live":
            all(r["identical_to_live"] for r in results.values()),
        "channels": CHANNELS, "decoder": slowest["decoder"], "bin_ms": BIN_MS,
        "frame_ms": a.frame_ms, "quick": a.quick, "results": results, "notes": notes,
        "load_avg_1m": os.getloadavg()[0],  # other work on this 2-core machine slows replay
    }
    print(f"\nreplay of a {CHANNELS}-channel recording, {BIN_MS:g} ms bins, frames every "
          f"{a.frame_ms:g} ms ({seconds:g} s of source time, verify = replay + bitwise diff)")
    print(f"{'decoder':8s} {'bins':>7s} {'identical':>10s} {'speedup':>9s} {'replay s':>9s} "
          f"{'log MB':>7s}")
    for r in results.values():
        print(f"{r['decoder']:8s} {r['bins']:7d} {str(r['identical_to_live']):>10s} "
              f"{r['speedup']:8.0f}x {r['replay_wall_s']:9.2f} {r['recording_bytes'] / 1e6:7.1f}")
    for n in notes:
        print("note:", n)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2, default=str))
    return 0 if out["identical_to_live"] else 1


if __name__ == "__main__":
    sys.exit(main())
