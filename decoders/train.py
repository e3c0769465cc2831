"""Offline training entry point shared by the CLI and the REST API.

``train_model`` fits any registered decoder on a recording (a dataset name,
a :class:`~sources.datasets.Dataset`, or arrays), scores it on the held-out
part of the fixed split and returns the decoder with the metadata a model
file needs (training-data hash, metrics, seed). Seeds are fixed, so the same
call gives the same model.

Command line: ``python -m decoders.train DATASET --kind snn --name NAME --store DIR``.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .base import Decoder, build_decoder
from .metrics import cc_per_output, predict_segments, r2_per_output

Progress = Callable[[int, int, dict[str, float]], None]


def _as_dataset(data: Any, bin_ms: float | None, output_names: list[str] | None):
    from sources.datasets import Dataset, load_dataset

    if isinstance(data, str):
        return load_dataset(data)
    if isinstance(data, Dataset):
        return data
    counts, behavior = (np.asarray(a, np.float64) for a in data)
    k = behavior.shape[1]
    return Dataset("arrays", counts, behavior, float(bin_ms or 0.0),
                   output_names or [f"x{i}" for i in range(k)], np.zeros(1, np.int64),
                   int(round(0.8 * len(counts))))


def train_model(data: Any, kind: str = "snn", params: dict[str, Any] | None = None,
                seed: int = 0, progress: Progress | None = None, bin_ms: float | None = None,
                output_names: list[str] | None = None) -> tuple[Decoder, dict[str, Any]]:
    """Fit ``kind`` on the training part of ``data`` and score it on the test part.

    Returns ``(decoder, meta)``; ``meta`` holds ``metrics`` (R² and correlation
    per output on the test part) and what :class:`~decoders.store.ModelStore`
    writes next to the weights.
    """
    ds = _as_dataset(data, bin_ms, output_names)
    params = dict(params or {})
    if kind in ("snn", "gru", "lstm"):  # trained by BPTT: the seed sets init and windows
        params.setdefault("seed", seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tr, te = ds.train(), ds.test()
    dec = build_decoder(kind, **params)
    dec.fit(tr.counts, tr.behavior, bin_ms=ds.bin_ms, output_names=ds.output_names,
            segments=tr.segments, progress=progress)
    if progress is not None and kind not in ("snn", "gru", "lstm"):
        progress(1, 1, {})
    metrics: dict[str, Any] = {}
    if len(te.counts):
        pred = predict_segments(dec, te.counts, te.segments)
        r2, cc = r2_per_output(te.behavior, pred), cc_per_output(te.behavior, pred)
        metrics = {"r2": r2.tolist(), "r2_mean": float(r2.mean()), "cc": cc.tolist(),
                   "cc_mean": float(cc.mean()), "test_bins": len(te.counts)}
    meta = {"dataset": ds.name, "training_data_sha256": ds.sha256(), "seed": seed,
            "train_bins": len(tr.counts), "metrics": metrics}
    return dec, meta


def main(argv: list[str] | None = None) -> None:
    from .bptt import text_progress
    from .store import ModelStore

    ap = argparse.ArgumentParser(description="Train a decoder and put it in a model store.")
    ap.add_argument("dataset", help="contdata95 | mc_maze_small | peyrache_hd")
    ap.add_argument("--kind", default="snn")
    ap.add_argument("--name", required=True)
    ap.add_argument("--store", default="models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int)
    args = ap.parse_args(argv)
    bptt = args.kind in ("snn", "gru", "lstm")
    params = {"epochs": args.epochs} if args.epochs and bptt else {}
    dec, meta = train_model(args.dataset, args.kind, params, args.seed, progress=text_progress)
    path = ModelStore(args.store).save(args.name, dec, meta)
    print(f"{path}: R² {meta['metrics'].get('r2_mean', float('nan')):.3f}")


if __name__ == "__main__":
    main()
