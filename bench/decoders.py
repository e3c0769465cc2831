"""Decoders on real recordings: accuracy, latency, synaptic ops and energy.

Usage: .venv/bin/python bench/decoders.py [--quick] [--json PATH]

For each dataset (contdata95, mc_maze_small, peyrache_hd) every decoder is
fitted on the first 80 % (contiguous; by trial for MC_Maze) and scored on the
last 20 %, decoded bin by bin from a fresh state per segment. Step latency is
timed on the test recording with one thread. The SNN's step latency is also
measured at 1024 inputs (``snn_step_1024``, and the GRU's as ``gru_step_1024``).
The GRU and LSTM decoders get the SNN's hidden size and training settings
(same epochs, batch, patience) per dataset. ``--quick`` trains the SNN and the
GRU/LSTM for fewer epochs; its figures are what that budget gives.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

# one BLAS thread, as for torch: the GRU/LSTM step is numpy mat-vecs, and a
# second OpenBLAS thread on this shared 2-core machine only adds tail latency
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decoders import build_decoder  # noqa: E402
from decoders.metrics import cc_per_output, predict_segments, r2_per_output  # noqa: E402
from decoders.ops import PJ_PER_AC, PJ_PER_MAC, count_ops, gru_equivalent  # noqa: E402
from decoders.rnn import GRUDecoder  # noqa: E402
from decoders.snn import SNNDecoder  # noqa: E402
from sources.datasets import DATASETS, DataMissingError, load_dataset  # noqa: E402

# SNN settings per dataset (epochs: quick, full). MC_Maze_Small is tiny, so it
# gets small batches and many cheap epochs; the rest share the defaults.
SNN_PARAMS = {
    "contdata95": ({"epochs": 25}, {"epochs": 60}),
    "mc_maze_small": ({"epochs": 100, "batch": 8, "patience": 30},
                      {"epochs": 200, "batch": 8, "patience": 40}),
    "peyrache_hd": ({"epochs": 15}, {"epochs": 40}),
}
# GRU/LSTM: the SNN's settings in the full run ("trained the same way"); in
# --quick fewer epochs (they converge in far fewer) to keep it near 4 minutes
RNN_QUICK_EPOCHS = {"contdata95": 8, "mc_maze_small": 40, "peyrache_hd": 6}


def time_steps(dec, counts: np.ndarray, n: int, warmup: int = 200) -> np.ndarray:
    """Wall-clock of ``dec.step`` per bin (µs), cycling through ``counts``."""
    dec.reset()
    x = np.ascontiguousarray(counts, dtype=np.float64)
    for i in range(warmup):
        dec.step(x[i % len(x)])
    out = np.empty(n)
    clock = time.perf_counter_ns
    gc.collect()
    for i in range(n):
        row = x[i % len(x)]
        t0 = clock()
        dec.step(row)
        out[i] = clock() - t0
    dec.reset()
    return out / 1e3


def evaluate(name: str, kind: str, params: dict, quick: bool) -> dict:
    ds = load_dataset(name)
    tr, te = ds.train(), ds.test()
    t0 = time.perf_counter()
    torch.set_num_threads(1)  # the small per-step matmuls gain nothing from a second thread
    dec = build_decoder(kind, **params).fit(tr.counts, tr.behavior, bin_ms=ds.bin_ms,
                                            output_names=ds.output_names,
                                            segments=tr.segments)
    fit_s = time.perf_counter() - t0
    pred = predict_segments(dec, te.counts, te.segments)
    r2 = r2_per_output(te.behavior, pred)
    cc = cc_per_output(te.behavior, pred)
    lat = time_steps(dec, te.counts, 2000 if quick else 10000)
    ops = count_ops(dec, te.counts)
    n_params = dec.n_params() if hasattr(dec, "n_params") else int(
        sum(np.asarray(v).size for v in dec.state_dict().values()))
    res = {
        "r2": [float(v) for v in r2], "r2_mean": float(r2.mean()),
        "cc": [float(v) for v in cc], "cc_mean": float(cc.mean()),
        "step_p50_us": float(np.percentile(lat, 50)),
        "step_p99_us": float(np.percentile(lat, 99)),
        "params": int(n_params), "fit_s": fit_s,
        "outputs": ds.output_names, "bin_ms": ds.bin_ms,
        "n_train_bins": len(tr.counts), "n_test_bins": len(te.counts),
    } | ops
    if kind == "snn":
        H = int(dec.params["hidden"])
        gru = gru_equivalent(dec.n_inputs, H, dec.n_outputs, te.counts)
        res |= {"epochs_run": len(dec.history), "snn_params": dec.params,
                "ann_gru": gru, "energy_ratio_vs_gru": res["energy_pj"] / gru["energy_pj"]}
    elif kind in ("gru", "lstm"):
        res |= {"epochs_run": len(dec.history), "rnn_params": dec.params}
    return res


def compare_to_gru(res: dict) -> None:
    """The DESIGN targets for every SNN variant: R² gap to the GRU, ≥ Wiener, energy ratio."""
    if "gru" not in res:
        return
    g = res["gru"]
    for label, r in res.items():
        if label.startswith("snn"):
            r["r2_gap_to_gru"] = g["r2_mean"] - r["r2_mean"]
            r["energy_ratio_vs_gru_decoder"] = r["energy_pj"] / g["energy_pj"]
            if "wiener" in res:
                r["r2_minus_wiener"] = r["r2_mean"] - res["wiener"]["r2_mean"]


def latency_1024(quick: bool, cls=SNNDecoder, extra: dict | None = None) -> dict:
    """Step latency with 1024 inputs (256 hidden units, 1 ms bins), untrained weights."""
    torch.set_num_threads(1)
    arch = {k: v for k, v in (extra or {}).items() if k not in (
        "epochs", "batch", "patience", "lr", "window", "burn_in", "weight_decay",
        "rate_reg", "input_dropout", "val_frac", "threads")}
    dec = cls.untrained(1024, 4, bin_ms=1.0, **({"hidden": 256} | arch))
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.02, (5000, 1024)).astype(np.float64)  # ~20 Hz at 1 ms bins
    lat = time_steps(dec, counts, 20000 if quick else 100000, warmup=2000)
    floor = busy_floor(float(np.percentile(lat, 50)), 20000)
    return {"inputs": 1024, "hidden": 256, "steps": len(lat),
            "p50_us": float(np.percentile(lat, 50)), "p99_us": float(np.percentile(lat, 99)),
            "p999_us": float(np.percentile(lat, 99.9)), "max_us": float(lat.max()),
            "params": dec.n_params(),
            "floor_p99_us": float(np.percentile(floor, 99)),
            "floor_p999_us": float(np.percentile(floor, 99.9))}


def busy_floor(us: float, n: int) -> np.ndarray:
    """Latency of a pure busy-wait as long as the median step, timed the same way.

    Its tail is what the OS scheduler and other processes add on this machine
    at the time of the run: a step p99 far above ``us`` with a floor p99 just as
    high means the machine was busy, not that the decoder was slow.
    """
    clock = time.perf_counter_ns
    out = np.empty(n)
    wait = int(us * 1e3)
    for i in range(n):
        t0 = clock()
        while clock() - t0 < wait:
            pass
        out[i] = clock() - t0
    return out / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--decoders", nargs="*", help="only these labels (e.g. snn gru)")
    ap.add_argument("--snn-params", type=json.loads, default={},
                    help="JSON merged into the SNN's parameters (ablations)")
    ap.add_argument("--rnn-params", type=json.loads, default={},
                    help="JSON merged into the GRU's and LSTM's parameters (ablations)")
    ap.add_argument("--no-latency-1024", action="store_true")
    args = ap.parse_args()
    t_start = time.perf_counter()
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for name in args.datasets:
        base = SNN_PARAMS[name][0 if args.quick else 1]
        snn = base | args.snn_params
        rnn = base | ({"epochs": RNN_QUICK_EPOCHS[name]} if args.quick else {}) | args.rnn_params
        decs = {"kalman": ("kalman", {"lag": "auto"}), "wiener": ("wiener", {}),
                "snn": ("snn", snn), "gru": ("gru", rnn), "lstm": ("lstm", rnn)}
        if not args.quick:  # dendritic variant: reported, kept only if it helps
            decs["snn_dendritic"] = ("snn", snn | {"branches": 2})
        if args.decoders:
            decs = {k: v for k, v in decs.items() if k in args.decoders}
        try:
            results[name] = {}
            for label, (kind, params) in decs.items():
                print(f"[{name}] {label} ...", file=sys.stderr, flush=True)
                results[name][label] = evaluate(name, kind, params, args.quick)
            compare_to_gru(results[name])
        except DataMissingError as e:
            skipped[name] = str(e)
            results.pop(name, None)
            print(f"skip {name}: {e}", file=sys.stderr)
    if args.no_latency_1024:
        lat = lat_gru = {"hidden": 0, "steps": 0, "p50_us": float("nan"),
                         "p99_us": float("nan"), "p999_us": float("nan"),
                         "max_us": float("nan"), "floor_p99_us": float("nan"),
                         "floor_p999_us": float("nan")}
    else:
        lat = latency_1024(args.quick, SNNDecoder, args.snn_params)
        lat_gru = latency_1024(args.quick, GRUDecoder)
    out = {"quick": args.quick, "results": results, "skipped": skipped,
           "snn_step_1024": lat, "gru_step_1024": lat_gru,
           "energy_per_op_pj": {"ac": PJ_PER_AC, "mac": PJ_PER_MAC, "node": "45 nm"},
           "split": "first 80% train (last 10% of it for early stopping), last 20% test",
           "machine": {"cpu": platform.processor() or platform.machine(),
                       "torch": torch.__version__, "threads_step": 1},
           "wall_s": time.perf_counter() - t_start}
    hdr = (f"{'dataset':14} {'decoder':14} {'R2 per output':30} {'R2':>6} {'cc':>6} "
           f"{'p50us':>7} {'p99us':>7} {'params':>8} {'AC/step':>9} {'MAC/step':>9} "
           f"{'sparse':>6} {'nJ/step':>8}")
    print(hdr)
    print("-" * len(hdr))
    for name, decs in results.items():
        for label, r in decs.items():
            per = "/".join(f"{v:.2f}" for v in r["r2"])
            print(f"{name:14} {label:14} {per:30} {r['r2_mean']:6.3f} {r['cc_mean']:6.3f} "
                  f"{r['step_p50_us']:7.1f} {r['step_p99_us']:7.1f} {r['params']:8d} "
                  f"{r['synops_ac']:9.0f} {r['synops_mac']:9.0f} {r['sparsity']:6.3f} "
                  f"{r['energy_pj'] / 1e3:8.2f}")
        if "r2_gap_to_gru" in decs.get("snn", {}):
            r = decs["snn"]
            print(f"{name:14} snn vs gru: R2 gap {r['r2_gap_to_gru']:+.3f} (target <= 0.01), "
                  f"vs wiener {r.get('r2_minus_wiener', float('nan')):+.3f} (target >= 0), "
                  f"energy ratio "
                  f"{r['energy_ratio_vs_gru_decoder']:.3f} (target <= 0.2)")
        if "snn" in decs:
            g = decs["snn"]["ann_gru"]
            print(f"{name:14} {'(GRU equiv.)':14} {'':30} {'':6} {'':6} {'':7} {'':7} "
                  f"{g['params']:8d} {0:9.0f} {g['synops_mac']:9.0f} {0:6.3f} "
                  f"{g['energy_pj'] / 1e3:8.2f}")
    print(f"\nSNN step, 1024 inputs x {lat['hidden']} neurons, {lat['steps']} steps: "
          f"p50 {lat['p50_us']:.1f} us, p99 {lat['p99_us']:.1f} us, "
          f"p99.9 {lat['p999_us']:.1f} us, max {lat['max_us']:.1f} us; same-length busy-wait "
          f"p99 {lat['floor_p99_us']:.1f} us, p99.9 {lat['floor_p999_us']:.1f} us "
          f"(scheduler floor at the time of the run)")
    print(f"GRU step, 1024 inputs x {lat_gru['hidden']} units: p50 {lat_gru['p50_us']:.1f} us, "
          f"p99 {lat_gru['p99_us']:.1f} us, p99.9 {lat_gru['p999_us']:.1f} us")
    print(f"energy per op: {PJ_PER_AC} pJ/AC, {PJ_PER_MAC} pJ/MAC (45 nm); "
          f"wall {out['wall_s']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
