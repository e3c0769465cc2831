"""GRU and LSTM decoders (kinds ``gru`` and ``lstm``): the ANN reference for the SNN.

Trained with exactly the SNN's protocol (:func:`decoders.bptt.train_net`:
z-scored inputs and targets, random windows of ``window`` bins after
``burn_in`` bins from a fresh state, or whole trials; AdamW, cosine
learning-rate decay, input dropout, early stopping on the last 10 % of the
training data, seeded), with the same default hidden size (256), so "a
same-size GRU trained the same way" is one call away.

Inference is a frozen float32 kernel in plain numpy with the standardisation
folded into the weights. Each ``step`` runs in place on buffers allocated at
load time (ufuncs with ``out=``). For a single bin on one thread this is
faster than the same ops under ``torch.inference_mode`` (measured: numpy
about 2-3x fewer µs at 95-1024 inputs, see ``docs/decoders.md``), because the
per-call overhead of a torch op dominates such small mat-vecs. ``predict``
steps the same kernel, so batch and online outputs are identical.

Online recalibration: recursive least squares on the linear readout
(:class:`decoders.recalibration.LinearRLS`, regressor = [hidden state, 1]).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .base import Decoder
from .recalibration import LinearRLS

log = logging.getLogger(__name__)


class RNNNet(nn.Module):
    """Trainable GRU/LSTM (one layer) + linear readout on standardised data."""

    def __init__(self, cell: str, n_in: int, n_out: int, hidden: int = 256, seed: int = 0):
        super().__init__()
        self.cell, self.hidden = cell, hidden
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
            self.rnn = rnn_cls(n_in, hidden, batch_first=True)
            self.readout = nn.Linear(hidden, n_out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, T, n_in) -> (outputs (B, T, n_out), hidden states (B, T, H))."""
        h, _ = self.rnn(x)
        return self.readout(h), h


def export_rnn_params(net: RNNNet, mu: np.ndarray, sd: np.ndarray, ymu: np.ndarray,
                      ysd: np.ndarray) -> dict[str, np.ndarray]:
    """Standardisation folded into the weights (float64 arrays, torch gate order)."""
    with torch.no_grad():
        w_ih = net.rnn.weight_ih_l0.double().numpy() / sd
        b_ih = net.rnn.bias_ih_l0.double().numpy() - w_ih @ mu
        return {"w_ih": w_ih, "b_ih": b_ih,
                "w_hh": net.rnn.weight_hh_l0.double().numpy().copy(),
                "b_hh": net.rnn.bias_hh_l0.double().numpy().copy(),
                "w_out": net.readout.weight.double().numpy() * ysd[:, None],
                "b_out": net.readout.bias.double().numpy() * ysd + ymu}


def _sigmoid_(x: np.ndarray) -> None:
    """In-place logistic as 0.5 tanh(x/2) + 0.5 (no overflow, no allocation)."""
    x *= 0.5
    np.tanh(x, out=x)
    x *= 0.5
    x += 0.5


class _RNNDecoder(Decoder):
    """Shared GRU/LSTM decoder; subclasses set ``kind`` and ``gates``."""

    gates: ClassVar[int] = 3
    supports_adapt = True

    DEFAULTS: dict[str, Any] = {
        "hidden": 256, "epochs": 60, "window": 64, "burn_in": 32, "batch": 32, "lr": 3e-3,
        "weight_decay": 1e-2, "input_dropout": 0.2, "val_frac": 0.1, "patience": 20,
        "seed": 0, "threads": 1, "adapt_lam": 0.999, "adapt_delta": 1.0,
    }

    def __init__(self, **params: Any):
        self._init(params)

    def _init(self, params: dict[str, Any]) -> None:
        """Set the hyper-parameters and clear fitted state (``__init__``, ``load_state_dict``)."""
        unknown = set(params) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"unknown {self.kind} parameters {sorted(unknown)}")
        self.params = self.DEFAULTS | params
        self.output_names = []
        self.history: list[dict[str, float]] = []
        self.rls: LinearRLS | None = None
        self._adapt_on = False

    # --------------------------------------------------------------- fitting
    def fit(self, counts: np.ndarray, targets: np.ndarray, bin_ms: float = 0.0,
            output_names: list[str] | None = None, segments: np.ndarray | None = None,
            progress: Any = None, **_: Any) -> _RNNDecoder:
        from .bptt import train_net

        C = np.asarray(counts, np.float64)
        Y = np.asarray(targets, np.float64)
        self.n_inputs, self.n_outputs = C.shape[1], Y.shape[1]
        self.bin_ms = bin_ms
        self.output_names = output_names or [f"x{i}" for i in range(self.n_outputs)]
        p = self.params | {"rate_reg": 0.0}
        net = RNNNet(self.kind, self.n_inputs, self.n_outputs, int(p["hidden"]),
                     int(p["seed"]))
        mu, sd = C.mean(0), C.std(0) + 1e-3
        ymu, ysd = Y.mean(0), Y.std(0) + 1e-9
        self.history = train_net(net, (C - mu) / sd, (Y - ymu) / ysd, segments, p,
                                 progress=progress)
        self.kparams = export_rnn_params(net, mu, sd, ymu, ysd)
        self._prepare()
        return self

    @classmethod
    def untrained(cls, n_inputs: int, n_outputs: int, bin_ms: float = 1.0,
                  **params: Any) -> _RNNDecoder:
        """A decoder with its initial random weights (latency benchmarks, tests)."""
        dec = cls(**params)
        dec.n_inputs, dec.n_outputs, dec.bin_ms = n_inputs, n_outputs, bin_ms
        dec.output_names = [f"x{i}" for i in range(n_outputs)]
        net = RNNNet(cls.kind, n_inputs, n_outputs, int(dec.params["hidden"]),
                     int(dec.params["seed"]))
        dec.kparams = export_rnn_params(net, np.zeros(n_inputs), np.ones(n_inputs),
                                        np.zeros(n_outputs), np.ones(n_outputs))
        dec._prepare()
        return dec

    def _prepare(self) -> None:
        f32 = {k: np.ascontiguousarray(v, np.float32) for k, v in self.kparams.items()}
        self.w_ih, self.b_ih = f32["w_ih"], f32["b_ih"]
        self.w_hh, self.b_hh = f32["w_hh"], f32["b_hh"]
        self.w_out, self.b_out = f32["w_out"], f32["b_out"]
        H, G = self.w_hh.shape[1], self.gates
        self.H = H
        z = np.zeros
        self.x = z(self.n_inputs, np.float32)
        self.gi, self.gh = z(G * H, np.float32), z(G * H, np.float32)
        self.h, self.c, self.tmp = z(H, np.float32), z(H, np.float32), z(H, np.float32)
        self.y = z(self.n_outputs, np.float32)
        self._out = z(self.n_outputs)
        self._z = z(H + 1)  # RLS regressor [h, 1]
        self._z[-1] = 1.0
        self.rls = None
        self._adapt_on = False
        self.reset()

    # --------------------------------------------------------------- online
    def reset(self) -> None:
        self.h[:] = 0.0
        self.c[:] = 0.0

    def step(self, counts: np.ndarray) -> np.ndarray:
        np.copyto(self.x, counts, casting="same_kind")
        np.dot(self.w_ih, self.x, out=self.gi)
        self.gi += self.b_ih
        np.dot(self.w_hh, self.h, out=self.gh)
        self.gh += self.b_hh
        self._cell()
        np.dot(self.w_out, self.h, out=self.y)
        self.y += self.b_out
        np.copyto(self._out, self.y)
        return self._out

    @abstractmethod
    def _cell(self) -> None:
        """The gate arithmetic of one step on the preallocated buffers (GRU or LSTM)."""

    def hidden_states(self, counts: np.ndarray) -> np.ndarray:
        """Hidden state after every bin (T, H) from a fresh state (for op counting)."""
        self.reset()
        out = np.empty((len(counts), self.H), np.float32)
        for t in range(len(counts)):
            self.step(counts[t])
            out[t] = self.h
        self.reset()
        return out

    # --------------------------------------------------------------- adaptation
    def set_adaptation(self, enabled: bool) -> None:
        if enabled and self.rls is None:
            W = np.concatenate([self.w_out, self.b_out[:, None]], 1)
            self.rls = LinearRLS(W, lam=self.params["adapt_lam"],
                                 delta=self.params["adapt_delta"])
        self._adapt_on = bool(enabled)

    def adapt(self, target: np.ndarray) -> None:
        if not self._adapt_on:
            return
        rls = self.rls
        assert rls is not None, "set_adaptation(True) creates rls before _adapt_on is set"
        self._z[:-1] = self.h
        rls.update(self._z, self._adapt_target(target) - self.y)
        self.w_out[:] = rls.W[:, :-1]
        self.b_out[:] = rls.W[:, -1]
        # this bin's output as the recalibrated readout gives it (like the SNN's RLS)
        np.dot(self.w_out, self.h, out=self.y)
        self.y += self.b_out

    # --------------------------------------------------------------- persistence
    def n_params(self) -> int:
        return int(sum(np.asarray(v).size for v in self.kparams.values()))

    def metadata(self) -> dict[str, Any]:
        p = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.params.items()}
        return super().metadata() | {"params": p, "n_params": self.n_params()}

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.rls is not None and self.rls.n_updates:  # keep what was recalibrated
            self.kparams |= {"w_out": self.rls.W[:, :-1].copy(),
                             "b_out": self.rls.W[:, -1].copy()}
        return {k: np.asarray(v) for k, v in self.kparams.items()}

    def load_state_dict(self, state: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self._init(dict(meta.get("params", {})))
        self.kparams = {k: np.asarray(v, np.float64) for k, v in state.items()}
        self._restore_metadata(meta)
        self._prepare()


class GRUDecoder(_RNNDecoder):
    """One GRU layer + linear readout (torch gate order r, z, n)."""

    kind = "gru"
    gates = 3

    def _cell(self) -> None:
        H = self.H
        gi, gh, h, tmp = self.gi, self.gh, self.h, self.tmp
        rz = gi[:2 * H]
        rz += gh[:2 * H]
        _sigmoid_(rz)
        r, zg = rz[:H], rz[H:]
        n = gi[2 * H:]
        np.multiply(r, gh[2 * H:], out=tmp)
        n += tmp
        np.tanh(n, out=n)
        # h' = (1 - z) n + z h = n + z (h - n)
        np.subtract(h, n, out=tmp)
        tmp *= zg
        np.add(n, tmp, out=h)


class LSTMDecoder(_RNNDecoder):
    """One LSTM layer + linear readout (torch gate order i, f, g, o)."""

    kind = "lstm"
    gates = 4

    def _cell(self) -> None:
        H = self.H
        g, h, c, tmp = self.gi, self.h, self.c, self.tmp
        g += self.gh
        _sigmoid_(g[:2 * H])
        np.tanh(g[2 * H:3 * H], out=g[2 * H:3 * H])
        _sigmoid_(g[3 * H:])
        c *= g[H:2 * H]  # f c
        np.multiply(g[:H], g[2 * H:3 * H], out=tmp)  # i g
        c += tmp
        np.tanh(c, out=tmp)
        np.multiply(g[3 * H:], tmp, out=h)
