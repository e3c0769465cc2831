"""Surrogate-gradient training through time (BPTT over windows, as in STBP).

Continuous recordings are cut into random windows; each starts from a fresh
state, runs ``burn_in`` bins without loss (so the neurons and readout are in
their operating regime, as they are online) and is scored on the next
``window`` bins. Trial-structured data uses whole trials from a fresh state,
exactly as they are decoded. The last ``val_frac`` of the training data
(contiguous, or the last trials) is held out for early stopping; the best
epoch's weights are kept. Everything is seeded, so a run is reproducible.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

Progress = Callable[[int, int, dict[str, float]], None]


def text_progress(epoch: int, total: int, info: dict[str, float]) -> None:
    """Default progress bar on stderr (one line, rewritten each epoch)."""
    done = int(30 * epoch / max(total, 1))
    msg = " ".join(f"{k}={v:.4f}" for k, v in info.items())
    sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {epoch}/{total} {msg}   ")
    if epoch >= total or info.get("stopped"):
        sys.stderr.write("\n")
    sys.stderr.flush()


def _segments(n: int, segments: np.ndarray | None) -> list[tuple[int, int]]:
    starts = [0] if segments is None or len(segments) == 0 else [int(s) for s in segments]
    ends = starts[1:] + [n]
    return list(zip(starts, ends, strict=True))


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(1 - ((y - p) ** 2).sum(0) / np.maximum(((y - y.mean(0)) ** 2).sum(0),
                                                                  1e-12)))


def _evaluate(net: nn.Module, X: np.ndarray, Y: np.ndarray, segs: list[tuple[int, int]]) -> float:
    """R² over segments, each decoded from a fresh state (as online)."""
    with torch.no_grad():
        preds = [net(torch.from_numpy(X[a:b]).float()[None])[0][0].numpy() for a, b in segs]
    return _r2(Y[segs[0][0]:segs[-1][1]], np.concatenate(preds))


def train_snn(net: nn.Module, X: np.ndarray, Y: np.ndarray, segments: np.ndarray | None,
              p: dict[str, Any], progress: Progress | None = None) -> list[dict[str, float]]:
    """Train ``net`` in place on standardised X (T, N) and Y (T, K); returns the history.

    ``net(x)`` maps (B, T, N) to ``(outputs (B, T, K), hidden activity (B, T, H))``;
    the same protocol trains the SNN and the GRU/LSTM baselines (which pass
    ``rate_reg = 0``: the firing-rate penalty is for spikes only).

    Runs with ``p["threads"]`` torch threads (default 1): the per-step matrices
    are small, and extra OpenMP threads spin and slow everything down on a
    shared machine. The caller's thread count is restored afterwards.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(int(p.get("threads", 1)))
    try:
        return _train(net, X, Y, segments, p, progress)
    finally:
        torch.set_num_threads(before)


def _train(net: nn.Module, X: np.ndarray, Y: np.ndarray, segments: np.ndarray | None,
           p: dict[str, Any], progress: Progress | None) -> list[dict[str, float]]:
    torch.manual_seed(int(p["seed"]))
    rng = np.random.default_rng(int(p["seed"]))
    segs = _segments(len(X), segments)
    if len(segs) > 1:  # trials: hold out the last ones, train on whole trials
        n_val = max(1, int(round(p["val_frac"] * len(segs))))
        train_segs, val_segs = segs[:-n_val], segs[-n_val:]
        length = min(b - a for a, b in train_segs)
        starts_all = np.array([a for a, _ in train_segs])
        burn = 0
    else:  # continuous: hold out the tail, random windows with burn-in
        cut = int(len(X) * (1 - p["val_frac"]))
        val_segs = [(cut, len(X))]
        burn, length = int(p["burn_in"]), int(p["window"]) + int(p["burn_in"])
        starts_all = None
        n_windows = max(1, (cut - length) // int(p["window"]))
    Xt, Yt = torch.from_numpy(X).float(), torch.from_numpy(Y).float()
    opt = torch.optim.AdamW(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    epochs = int(p["epochs"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    best, best_state, bad, history = -np.inf, copy.deepcopy(net.state_dict()), 0, []
    offsets = torch.arange(length)
    for epoch in range(1, epochs + 1):
        net.train()
        if starts_all is None:
            starts = rng.integers(0, cut - length + 1, n_windows)
        else:
            starts = rng.permutation(starts_all)
        losses = []
        for i in range(0, len(starts), int(p["batch"])):
            idx = torch.from_numpy(starts[i:i + int(p["batch"])]).long()[:, None] + offsets
            xb, yb = Xt[idx], Yt[idx]
            if p["input_dropout"] > 0:
                xb = xb * (torch.rand_like(xb) > p["input_dropout"]) / (1 - p["input_dropout"])
            out, spikes = net(xb)
            loss = ((out[:, burn:] - yb[:, burn:]) ** 2).mean()
            if p.get("rate_reg", 0.0):
                loss = loss + p["rate_reg"] * (spikes.mean((0, 1)) ** 2).sum() / net.hidden * 100
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
        sched.step()
        net.eval()
        val = _evaluate(net, X, Y, val_segs)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_r2": val})
        if val > best:
            best, best_state, bad = val, copy.deepcopy(net.state_dict()), 0
        else:
            bad += 1
        stop = bad >= int(p["patience"])
        if progress is not None:
            progress(epoch, epochs, {"loss": history[-1]["loss"], "val_r2": val,
                                     "best": best, "stopped": float(stop)})
        if stop:
            break
    net.load_state_dict(best_state)
    return history


#: the training loop is not SNN-specific: the GRU/LSTM decoders use it unchanged
train_net = train_snn
