"""Per-bin cost of each stage of the live loop, measured inside one real session runner.

What runs: a real :class:`service.session.runner.SessionRunner` (its ZeroMQ sockets on
ipc:// in a temp dir, a real recorder and audit log on disk, a fitted decoder), fed one
counts frame per bin through ``core.accept`` exactly as its poll loop does. Each stage
is timed where the live path calls it, by wrapping the real callable:

* ``decode``  - ``Decoder.step`` (Kalman or SNN);
* ``policy``  - ``Policy.step``;
* ``guard``   - ``SafetyGuard.process`` / ``safe_state``;
* ``monitor`` - the physical monitor (``SessionRunner.physical``);
* ``emit``    - building and sending the ``stim`` message and the ``decoded`` vector;
* ``audit``   - ``AuditLog.record``;
* ``record``  - ``Recorder.bin``;
* ``bin``     - the whole per-bin work (``core.accept``: parse, bin, all of the above).

The baseline measured in the same run is the cost of the timer itself (two
``perf_counter_ns`` calls around a no-op): every figure's ratio to it is printed.
Scenarios: ``disarmed`` (the policy asks every bin, the guard refuses) and ``armed``
(a new clamped command every bin, through the physical monitor). Bins are paced at
1 kHz in wall time, as a live source delivers them. The target of #17 is
``guard + audit <= 10 us`` per bin at 1 kHz.

    .venv/bin/python bench/bin_stages.py --channels 1024 --decoder snn --json results/stages.json
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import percentiles, report, sleep_until  # noqa: E402

now_ns = time.perf_counter_ns
STAGES = ("decode", "policy", "guard", "monitor", "emit", "audit", "record", "bin")


class Timed:
    """Wraps a callable; each call's duration goes into a preallocated array."""

    def __init__(self, fn, n: int):
        self.fn = fn
        self.ns = np.zeros(n, np.int64)
        self.i = 0

    def __call__(self, *a, **k):
        t0 = now_ns()
        out = self.fn(*a, **k)
        if self.i < len(self.ns):
            self.ns[self.i] = now_ns() - t0
            self.i += 1
        return out

    def samples(self) -> np.ndarray:
        return self.ns[:self.i]


def _runner(tmp: Path, channels: int, decoder: str, record: bool):
    from service.session.config import SessionConfig
    from service.session.runner import SessionRunner

    cfg = SessionConfig.model_validate({
        "name": "stages", "bin_ms": 1, "record": record,
        "source": {"endpoint": f"ipc://{tmp}/src", "channels": channels},
        "decoder": {"type": decoder, "calibration_s": 1,
                    "params": {"epochs": 1, "patience": 1} if decoder == "snn" else {}},
        "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}},
        "output": {"endpoint": f"ipc://{tmp}/out"},
        "gc_freeze": True,
    })
    r = SessionRunner("stages", cfg, f"ipc://{tmp}/ctl", tmp, recordings_dir=tmp / "rec")
    if record:
        r._open_recorder()
    return r


def _fitted(channels: int, decoder: str, seed: int):
    from decoders.base import build_decoder

    rng = np.random.default_rng(seed)
    counts = rng.poisson(0.05, (1500, channels)).astype(np.float32)
    truth = np.cumsum(rng.normal(0, 1, (1500, 4)), axis=0)
    dec = build_decoder(decoder, **({"epochs": 1, "patience": 1} if decoder == "snn" else {}))
    dec.fit(counts, truth, bin_ms=1, output_names=["x", "y", "vx", "vy"])
    return dec


def run(channels: int, decoder: str, bins: int, armed: bool, seed: int = 1) -> dict:
    from service.session import runner as runner_mod
    from service.wire import protocol as P

    tmp = Path(tempfile.mkdtemp(prefix="slstages-"))
    r = _runner(tmp, channels, decoder, record=True)
    core = r.core
    core.begin(_fitted(channels, decoder, seed))
    r._after_install()
    if armed:
        core.guard.arm()
    n = bins
    timers = {
        "decode": Timed(core.decoder.step, n),
        "policy": Timed(core.policy.step, n),
        "guard": Timed(core.guard.process, n),
        "monitor": Timed(r.physical, n),
        "emit": Timed(r.emit, 2 * n),
        "audit": Timed(r.audit.record, n),
        "record": Timed(r.recorder.bin, n),
    }
    core.decoder.step = timers["decode"]
    core.policy.step = timers["policy"]
    core.guard.process = timers["guard"]
    r.physical = timers["monitor"]
    r.emit = timers["emit"]
    r.audit.record = timers["audit"]
    r.recorder.bin = timers["record"]
    floor = np.zeros(n, np.int64)
    whole = np.zeros(n, np.int64)
    rng = np.random.default_rng(seed)
    rates = rng.gamma(2.0, 0.02, channels)
    frames = [P.encode_array(b"spikes", P.KIND_COUNTS, "", k, k * 1_000_000,
                             rng.poisson(rates).astype(np.uint16), 1_000_000)
              for k in range(n)]
    gc.collect()
    gc.freeze()
    t_wall = t_next = time.perf_counter()
    for k in range(n):
        t_next += 0.001  # paced at 1 kHz, as frames arrive: the wall-clock monitor sees real time
        sleep_until(t_next)
        t0 = now_ns()
        t1 = now_ns()
        floor[k] = t1 - t0
        t0 = now_ns()
        core.accept(frames[k], t0)
        whole[k] = now_ns() - t0
        if k % 50 == 0:
            gc.collect(0)  # as the runner does at its heartbeat
    elapsed = time.perf_counter() - t_wall
    emit = timers["emit"].samples()
    # the stim message and the decoded vector: two sends per bin, counted as one stage
    emit = emit[0::2][:n] + emit[1::2][:n] if emit.size >= 2 * n else emit
    samples = {k: t.samples() for k, t in timers.items() if k != "emit"}
    samples["emit"] = emit
    samples["bin"] = whole
    r.stop_requested = True
    r._shutdown()
    stages = {}
    for k in STAGES:
        s = samples[k]
        stages[k] = {**percentiles(s), "mean_us": round(float(s.mean()) / 1e3, 2)
                     if s.size else float("nan"), "calls": int(s.size)}
    ga = samples["guard"][:n] + samples["audit"][:n] if samples["audit"].size >= n else None
    return {
        "channels": channels, "decoder": decoder, "armed": armed, "bins": n,
        "stages": stages,
        "guard_plus_audit": ({**percentiles(ga), "mean_us": round(float(ga.mean()) / 1e3, 2)}
                             if ga is not None else None),
        "baseline_timer": {**percentiles(floor), "mean_us": round(float(floor.mean()) / 1e3, 3)},
        "stim_statuses": {k[5:]: v for k, v in core.counters.items() if k.startswith("stim_")},
        "seconds": round(elapsed, 2),
        "runner_module": runner_mod.__file__,
    }


def print_table(res: dict) -> None:
    for sc in res["scenarios"]:
        base = sc["baseline_timer"]["mean_us"]
        print(f"\n{sc['channels']} ch, {sc['decoder']}, {'armed' if sc['armed'] else 'disarmed'}"
              f", {sc['bins']} bins (stim: {sc['stim_statuses']}); timer baseline "
              f"{base:.3f} us mean")
        print(f"{'stage':<16}{'mean':>8}{'p50':>8}{'p99':>8}{'p99.9':>8}{'max':>9}"
              f"{'x timer':>9}")
        rows = [(k, sc["stages"][k]) for k in STAGES]
        if sc["guard_plus_audit"]:
            rows.append(("guard+audit", sc["guard_plus_audit"]))
        for k, s in rows:
            print(f"{k:<16}{s['mean_us']:>8.2f}{s['p50_us']:>8.1f}{s['p99_us']:>8.1f}"
                  f"{s['p999_us']:>8.1f}{s['max_us']:>9.1f}{s['mean_us'] / max(base, 1e-3):>9.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channels", type=int, nargs="+", default=[1024])
    ap.add_argument("--decoder", choices=("kalman", "snn"), nargs="+", default=["snn"])
    ap.add_argument("--bins", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="5,000 bins per scenario")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    bins = 5000 if a.quick else a.bins
    scenarios = [run(ch, dec, bins, armed)
                 for ch in a.channels for dec in a.decoder for armed in (False, True)]
    return report({"scenarios": scenarios}, print_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
