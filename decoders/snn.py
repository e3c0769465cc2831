"""Spiking neural network decoder (kind ``snn``).

One hidden layer of adaptive LIF neurons with learnable, heterogeneous
membrane and adaptation time constants (optionally recurrent, optionally with
dendritic branches that each have their own time constant), read out by
non-spiking leaky integrators from the hidden spikes and membrane potentials.
Trained with surrogate gradients through time (:mod:`decoders.bptt`).

Three thin layers over the math in :mod:`decoders.neurons`:

* :class:`SNNNet` -- the trainable ``torch.nn.Module`` (batched, differentiable);
* :class:`SNNKernel` -- the frozen inference form: normalisation folded into
  the weights so the input layer sees raw counts; ``run`` (batch) and
  ``step_`` (online, preallocated, in place) execute identical float32 ops;
* :class:`SNNDecoder` -- the :class:`~decoders.base.Decoder` wrapper.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import neurons as nr
from .base import Decoder
from .recalibration import InputCentering, ReadoutRLS


def _log_uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> Tensor:
    return torch.exp(math.log(lo) + torch.rand(n, generator=gen) * math.log(hi / lo))


class SNNNet(nn.Module):
    """Trainable network; inputs and targets are standardised (z-scored)."""

    mask: Tensor  # buffer registered in __init__ (nn.Module.__getattr__ is typed loosely)

    def __init__(self, n_in: int, n_out: int, hidden: int = 256, branches: int = 1,
                 recurrent: bool = True, tau_mem: tuple[float, float] = (1.0, 20.0),
                 tau_adapt: tuple[float, float] = (5.0, 100.0), tau_out: float = 2.0,
                 adapt_frac: float = 0.5, seed: int = 0, readout_trace: bool = False,
                 surrogate_scale: float = 5.0):
        super().__init__()
        self.surrogate_scale = float(surrogate_scale)
        g = torch.Generator().manual_seed(seed)
        self.n_in, self.n_out, self.hidden, self.branches = n_in, n_out, hidden, branches
        bh = branches * hidden
        w = torch.randn(bh, n_in, generator=g) * (1.0 / math.sqrt(n_in))
        self.w_in = nn.Parameter(w * math.sqrt(branches))
        self.b_in = nn.Parameter(torch.zeros(bh))
        if branches > 1:
            # each input reaches each neuron through exactly one branch
            pick = torch.randint(branches, (hidden, n_in), generator=g)
            mask = (pick.unsqueeze(0) == torch.arange(branches).view(-1, 1, 1)).float()
            self.register_buffer("mask", mask.reshape(bh, n_in))
            self.log_tau_d: nn.Parameter | None = nn.Parameter(torch.log(
                _log_uniform(bh, 1.0, tau_mem[1], g)).view(branches, hidden))
        else:
            self.register_buffer("mask", torch.ones(1, 1))
            self.log_tau_d = None
        self.w_rec = (nn.Parameter(torch.randn(hidden, hidden, generator=g) * 0.1
                                   / math.sqrt(hidden)) if recurrent else None)
        self.log_tau_m = nn.Parameter(torch.log(_log_uniform(hidden, *tau_mem, g)))
        self.log_tau_a = nn.Parameter(torch.log(_log_uniform(hidden, *tau_adapt, g)))
        beta = (torch.rand(hidden, generator=g) < adapt_frac).float() * 1.0
        self.beta = nn.Parameter(beta)
        self.w_s = nn.Parameter(torch.zeros(n_out, hidden))
        self.w_v = nn.Parameter(torch.randn(n_out, hidden, generator=g) * 0.01)
        # optional readout of the adaptation traces a (spike rates over 5-100 bins)
        self.w_a = nn.Parameter(torch.zeros(n_out, hidden)) if readout_trace else None
        self.b_out = nn.Parameter(torch.zeros(n_out))
        self.log_tau_o = nn.Parameter(torch.full((n_out,), math.log(tau_out)))

    def input_weight(self) -> Tensor:
        return self.w_in * self.mask if self.branches > 1 else self.w_in

    def w_recurrent(self) -> Tensor | None:
        if self.w_rec is None:
            return None
        return self.w_rec * (1.0 - torch.eye(self.hidden))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, T, n_in) standardised -> (outputs (B, T, n_out), spikes (B, T, H))."""
        B, T, _ = x.shape
        H = self.hidden
        cur_all = x @ self.input_weight().T + self.b_in
        alpha, rho = nr.decay(self.log_tau_m.exp()), nr.decay(self.log_tau_a.exp())
        beta = self.beta.clamp(min=0.0)
        kappa = nr.decay(self.log_tau_o.exp())
        w_rec = self.w_recurrent()
        st = nr.ALIFState(x.new_zeros(B, H), x.new_zeros(B, H), x.new_zeros(B, H))
        d = x.new_zeros(B, self.branches, H) if self.branches > 1 else None
        alpha_d = nr.decay(self.log_tau_d.exp()) if self.log_tau_d is not None else None
        y = x.new_zeros(B, self.n_out)
        ys, ss = [], []
        for t in range(T):
            cur = cur_all[:, t]
            if d is not None:
                assert alpha_d is not None, "branches > 1 always creates log_tau_d"
                d = nr.dendrite_step(cur.view(B, self.branches, H), d, alpha_d)
                cur = d.sum(1)
            if w_rec is not None:  # recurrent input lands on the soma
                cur = cur + st.s @ w_rec.T
            st = nr.alif_step(cur, st, alpha, rho, beta, scale=self.surrogate_scale)
            ro = st.s @ self.w_s.T + st.v @ self.w_v.T
            if self.w_a is not None:
                ro = ro + st.a @ self.w_a.T
            y = nr.leaky_readout(ro + self.b_out, y, kappa)
            ys.append(y)
            ss.append(st.s)
        return torch.stack(ys, 1), torch.stack(ss, 1)


class SNNKernel:
    """Frozen float32 inference form of :class:`SNNNet` (normalisation folded in).

    ``step_`` is the one implementation of a bin: numpy ops in place on buffers
    allocated once (views of the tensors that :mod:`decoders.recalibration`
    reads and writes). It is **event-driven** where the activity is sparse: the
    input current adds the weight rows of the inputs that fired in the bin
    (about 20 of 1024 at 20 Hz and 1 ms bins) instead of a dense mat-vec, and
    the recurrent current adds the rows of the hidden neurons that spiked. A
    bin where more than a quarter of the inputs fired uses the dense product;
    the choice depends only on the counts, so a replay takes the same path.
    ``run`` (batch) calls ``step_`` bin by bin on a fresh state, so offline and
    online decoding agree bit for bit.
    """

    #: a bin with more active inputs than this fraction uses the dense product
    DENSE_FRACTION = 0.25

    def __init__(self, p: dict[str, Tensor], hidden: int, branches: int):
        self.H, self.D = hidden, branches
        f32 = {k: v.detach().to(torch.float32).contiguous() for k, v in p.items()}
        self.w_in, self.b_in = f32["w_in"], f32["b_in"]
        self.w_rec = f32.get("w_rec")
        self.alpha, self.oma = f32["alpha"], 1.0 - f32["alpha"]
        self.rho, self.omr = f32["rho"], 1.0 - f32["rho"]
        self.beta = f32["beta"]
        self.alpha_d = f32.get("alpha_d")
        self.oma_d = None if self.alpha_d is None else 1.0 - self.alpha_d
        # one readout matrix [w_s | w_v] over one state vector [s | v]: one product per bin;
        # w_s, w_v (read and written by recalibration) and s, v are views into them
        self.w_sv = torch.cat([f32["w_s"], f32["w_v"]], 1).contiguous()
        self.b_out = f32["b_out"]
        self.w_a = f32.get("w_a")
        self.kappa, self.omk = f32["kappa"], 1.0 - f32["kappa"]
        self.y0 = f32["y0"]
        H, D = hidden, branches
        self.w_s, self.w_v = self.w_sv[:, :H], self.w_sv[:, H:]
        self.n_in, self.n_out = self.w_in.shape[1], self.w_sv.shape[0]
        z = torch.zeros
        K = self.n_out
        # online state and scratch, allocated once
        self.x = z(self.n_in)
        self.sv = z(2 * H)
        self.s, self.v = self.sv[:H], self.sv[H:]
        self.cur, self.a = z(D * H), z(H)
        self.thr, self.tmp = z(H), z(H)
        self.d = z(D, H) if D > 1 else None
        self.dtmp = z(D, H) if D > 1 else None
        self.soma = z(H)
        self.ro, self.ro2, self.y = z(K), z(K), z(K)
        # row-major copies for the event-driven sums: row i = what input i (or
        # hidden neuron i) adds to every neuron's current when it fires once
        self.w_in_rows = np.ascontiguousarray(self.w_in.numpy().T)
        self.w_rec_rows = (None if self.w_rec is None
                           else np.ascontiguousarray(self.w_rec.numpy().T))
        self._bind()
        self.reset()

    def _bind(self) -> None:
        """numpy views of the tensors (shared memory): the step reads and writes these."""
        n = {name: t.numpy() for name, t in vars(self).items() if isinstance(t, Tensor)}
        self.buf = n
        self.x_np, self.y_np = n["x"], n["y"]
        self._dense_above = int(self.DENSE_FRACTION * self.n_in)
        self._fired = np.zeros(self.n_in, bool)
        self._ones = np.ones(self.H, np.float32)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["buf"]  # views: rebuilt on the copy's own tensors
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # copies (deepcopy, pickle) must re-bind the numpy views to their own tensors
        self.__dict__.update(state)
        self._bind()

    def reset(self) -> None:
        for t in (self.v, self.a, self.s):
            t.zero_()
        if self.d is not None:
            self.d.zero_()
        self.y.copy_(self.y0)

    # ------------------------------------------------------------- online, in place
    def step_(self, counts: np.ndarray) -> np.ndarray:
        """One bin in place; returns a view of the output buffer (float32)."""
        n = self.buf
        x, cur, v, a, s = n["x"], n["cur"], n["v"], n["a"], n["s"]
        thr, tmp = n["thr"], n["tmp"]
        np.copyto(x, counts, casting="same_kind")
        fired = np.not_equal(x, 0, out=self._fired).nonzero()[0]
        if fired.size > self._dense_above:
            np.dot(n["w_in"], x, out=cur)
            cur += n["b_in"]
        else:
            np.copyto(cur, n["b_in"])
            if fired.size:
                cur += x[fired] @ self.w_in_rows[fired]
        if self.d is not None:  # dendritic branches, each its own low-pass
            d, dtmp = n["d"], n["dtmp"]
            d *= n["alpha_d"]
            np.multiply(n["oma_d"], cur.reshape(self.D, self.H), out=dtmp)
            d += dtmp
            np.sum(d, 0, out=n["soma"])
            cur = n["soma"]
        if self.w_rec_rows is not None:
            spiked = s.nonzero()[0]
            if spiked.size:
                cur += self.w_rec_rows[spiked].sum(0)
        # adaptive LIF (same elementwise op order as neurons.alif_step)
        np.multiply(n["beta"], a, out=thr)
        np.add(thr, self._ones, out=thr)  # the threshold, 1
        v *= n["alpha"]
        np.multiply(n["oma"], cur, out=tmp)
        v += tmp
        np.greater(v, thr, out=s)  # v - thr > 0, exactly (IEEE: v - thr == 0 iff v == thr)
        np.multiply(s, thr, out=tmp)
        v -= tmp
        a *= n["rho"]
        np.multiply(n["omr"], s, out=tmp)
        a += tmp
        # leaky readout (same op order as neurons.leaky_readout)
        ro, y = n["ro"], n["y"]
        np.dot(n["w_sv"], n["sv"], out=ro)
        if self.w_a is not None:
            ro2 = n["ro2"]
            np.dot(n["w_a"], a, out=ro2)
            ro += ro2
        ro += n["b_out"]
        y *= n["kappa"]
        ro *= n["omk"]
        y += ro
        return y

    # ------------------------------------------------------------- batch
    def run(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole recording from a fresh state: (outputs (T, K), spikes (T, H)).

        The very ``step_`` of the online path, so the two agree bit for bit; the
        online state is kept and restored around it.
        """
        kept = {name: self.buf[name].copy() for name in ("v", "a", "s", "y", "d")
                if name in self.buf}
        self.reset()
        X = np.asarray(counts)
        ys = np.empty((len(X), self.n_out), np.float64)
        ss = np.empty((len(X), self.H), np.float32)
        s = self.buf["s"]
        for t in range(len(X)):
            ys[t] = self.step_(X[t])
            ss[t] = s
        for name, value in kept.items():
            np.copyto(self.buf[name], value)
        return ys, ss


def export_kernel_params(net: SNNNet, mu: np.ndarray, sd: np.ndarray, ymu: np.ndarray,
                         ysd: np.ndarray) -> dict[str, np.ndarray]:
    """Fold input/target standardisation into the weights (float64 arrays).

    Inputs: w (x - mu)/sd + b = (w/sd) x + (b - (w/sd) mu). Outputs: the
    readout is linear, so scaling its weights and bias by ``ysd`` and adding
    ``ymu`` to the bias and to the initial state gives outputs in real units.
    """
    with torch.no_grad():
        w = net.input_weight().double().numpy() / sd
        p = {"w_in": w, "b_in": net.b_in.double().numpy() - w @ mu,
             "alpha": nr.decay(net.log_tau_m.exp()).double().numpy(),
             "rho": nr.decay(net.log_tau_a.exp()).double().numpy(),
             "beta": net.beta.clamp(min=0).double().numpy(),
             "w_s": net.w_s.double().numpy() * ysd[:, None],
             "w_v": net.w_v.double().numpy() * ysd[:, None],
             "b_out": net.b_out.double().numpy() * ysd + ymu,
             "kappa": nr.decay(net.log_tau_o.exp()).double().numpy(),
             "y0": np.asarray(ymu, float)}
        w_rec = net.w_recurrent()  # None exactly when net.w_rec is None
        if w_rec is not None:
            p["w_rec"] = w_rec.double().numpy()
        if net.w_a is not None:
            p["w_a"] = net.w_a.double().numpy() * ysd[:, None]
        if net.log_tau_d is not None:
            p["alpha_d"] = nr.decay(net.log_tau_d.exp()).double().numpy()
    return p


class SNNDecoder(Decoder):
    """Spiking decoder; ``fit`` trains by BPTT, ``step`` runs the in-place kernel."""

    kind = "snn"
    supports_adapt = True

    DEFAULTS: dict[str, Any] = {
        "hidden": 256, "branches": 1, "recurrent": True, "tau_mem": (1.0, 20.0),
        "tau_adapt": (5.0, 100.0), "tau_out": 2.0, "adapt_frac": 0.5,
        "epochs": 60, "window": 64, "burn_in": 32, "batch": 32, "lr": 1e-2,
        "weight_decay": 1e-2, "rate_reg": 1e-3, "input_dropout": 0.2, "val_frac": 0.1,
        "patience": 20, "seed": 0, "threads": 1, "readout_trace": False,
        "surrogate_scale": 5.0,
        # online recalibration (readout RLS): forgetting factor, and delta = how strongly
        # the readout is held to its trained weights at first (P0 = I / delta). 300, not
        # 10: after a drift (30 deg rotation, 20 % of units silenced; 2 min at 50 ms) the
        # 256-unit SNN recovered 90 % of the lost R2 instead of 70 % (docs/decoders.md)
        "adapt_lam": 0.999, "adapt_delta": 300.0,
        # ... and the inputs re-centred on their running means over this many seconds of
        # adapted bins (0: off), so silenced units stop driving the hidden layer
        "adapt_center_s": 30.0,
    }

    def __init__(self, **params: Any):
        self._init(params)

    def _init(self, params: dict[str, Any]) -> None:
        """Set the hyper-parameters and clear fitted state (``__init__``, ``load_state_dict``)."""
        unknown = set(params) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"unknown SNN parameters {sorted(unknown)}")
        self.params = self.DEFAULTS | params
        self.output_names = []
        self.history: list[dict[str, float]] = []
        self.adapter: ReadoutRLS | None = None
        self.centering: InputCentering | None = None

    # --------------------------------------------------------------- fitting
    def fit(self, counts: np.ndarray, targets: np.ndarray, bin_ms: float = 0.0,
            output_names: list[str] | None = None, segments: np.ndarray | None = None,
            progress: Any = None, **_: Any) -> SNNDecoder:
        from .bptt import train_snn

        C = np.asarray(counts, np.float64)
        Y = np.asarray(targets, np.float64)
        self.n_inputs, self.n_outputs = C.shape[1], Y.shape[1]
        self.bin_ms = bin_ms
        self.output_names = output_names or [f"x{i}" for i in range(self.n_outputs)]
        p = self.params
        net = SNNNet(self.n_inputs, self.n_outputs, hidden=p["hidden"], branches=p["branches"],
                     recurrent=p["recurrent"], tau_mem=tuple(p["tau_mem"]),
                     tau_adapt=tuple(p["tau_adapt"]), tau_out=p["tau_out"],
                     adapt_frac=p["adapt_frac"], seed=p["seed"],
                     readout_trace=bool(p["readout_trace"]),
                     surrogate_scale=float(p["surrogate_scale"]))
        mu, sd = C.mean(0), C.std(0) + 1e-3
        ymu, ysd = Y.mean(0), Y.std(0) + 1e-9
        self.history = train_snn(net, (C - mu) / sd, (Y - ymu) / ysd, segments, p,
                                 progress=progress)
        self.kparams = export_kernel_params(net, mu, sd, ymu, ysd)
        self.kparams["mu_in"] = mu  # the input means b_in is centred on (recalibration)
        self._prepare()
        return self

    @classmethod
    def untrained(cls, n_inputs: int, n_outputs: int, bin_ms: float = 1.0,
                  **params: Any) -> SNNDecoder:
        """A decoder with its initial random weights (latency benchmarks, tests)."""
        dec = cls(**params)
        dec.n_inputs, dec.n_outputs, dec.bin_ms = n_inputs, n_outputs, bin_ms
        dec.output_names = [f"x{i}" for i in range(n_outputs)]
        p = dec.params
        net = SNNNet(n_inputs, n_outputs, hidden=p["hidden"], branches=p["branches"],
                     recurrent=p["recurrent"], seed=p["seed"],
                     readout_trace=bool(p["readout_trace"]))
        dec.kparams = export_kernel_params(net, np.zeros(n_inputs), np.ones(n_inputs),
                                           np.zeros(n_outputs), np.ones(n_outputs))
        dec._prepare()
        return dec

    def _prepare(self) -> None:
        t = {k: torch.from_numpy(np.asarray(v)) for k, v in self.kparams.items()}
        self.kernel = SNNKernel(t, int(self.params["hidden"]), int(self.params["branches"]))
        self._out = np.zeros(self.n_outputs)

    # --------------------------------------------------------------- online
    def reset(self) -> None:
        self.kernel.reset()
        if self.adapter is not None:
            self.adapter.reset()

    def enable_adaptation(self, enabled: bool = True, **rls: Any) -> ReadoutRLS:
        """Switch online recalibration (RLS on the readout) on or off.

        The first call creates the adapter (``rls``: ``lam``, ``delta``; by default the
        decoder's ``adapt_lam`` and ``adapt_delta``); later calls only toggle it, keeping
        what it has learned.
        """
        if self.adapter is None:
            p = self.params
            rls = {"lam": p["adapt_lam"], "delta": p["adapt_delta"]} | rls
            self.adapter = ReadoutRLS(self.kernel, **rls)
            mu = self.kparams.get("mu_in")  # absent from models saved before it existed
            bin_ms = float(getattr(self, "bin_ms", 0.0) or 0.0)
            if p["adapt_center_s"] > 0 and mu is not None and bin_ms > 0:
                self.centering = InputCentering(
                    self.kernel, mu, tau_bins=p["adapt_center_s"] * 1000.0 / bin_ms,
                    every=round(1000.0 / bin_ms))  # the bias moves once a second
        self.adapter.enabled = enabled
        return self.adapter

    def set_adaptation(self, enabled: bool) -> None:
        """Service-facing switch: ``enable_adaptation(enabled)`` with its default RLS."""
        if enabled or self.adapter is not None:
            self.enable_adaptation(bool(enabled))

    @property
    def adapting(self) -> bool:
        return self.adapter is not None and bool(self.adapter.enabled)

    def step(self, counts: np.ndarray) -> np.ndarray:
        y = self.kernel.step_(counts)
        if self.adapter is not None:
            self.adapter.after_step(self.kernel, y)
        np.copyto(self._out, y)
        return self._out

    def predict(self, counts: np.ndarray) -> np.ndarray:
        """Batch run from a fresh state (functional path; equals stepping)."""
        if self.adapter is not None and self.adapter.enabled:
            return super().predict(counts)  # adaptation is sequential by nature
        return self.kernel.run(counts)[0]

    def spikes(self, counts: np.ndarray) -> np.ndarray:
        """Hidden-layer spikes (T, H) for a recording (for sparsity/op counting)."""
        return self.kernel.run(counts)[1]

    def adapt(self, target: np.ndarray) -> None:
        if self.adapter is not None and self.adapter.enabled:
            self.adapter.adapt(self.kernel, target)
            if self.centering is not None:
                self.centering.update(self.kernel)

    # --------------------------------------------------------------- persistence
    def n_params(self) -> int:
        """Trainable parameters (masked-out dendritic weights not counted)."""
        k = self.kparams
        n_w = int(np.count_nonzero(k["w_in"])) if self.params["branches"] > 1 else k[
            "w_in"].size
        rest = sum(np.asarray(v).size for name, v in k.items()
                   if name not in ("w_in", "y0", "mu_in"))
        return n_w + rest

    def metadata(self) -> dict[str, Any]:
        p = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.params.items()}
        return super().metadata() | {"params": p, "n_params": self.n_params()}

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.adapter is not None and self.adapter.n_updates:  # keep what was recalibrated
            H = self.kernel.H
            W = self.adapter.W
            self.kparams |= {"w_s": W[:, :H].copy(), "w_v": W[:, H:2 * H].copy(),
                             "b_out": W[:, -1].copy()}
            if "w_a" in self.kparams:
                self.kparams["w_a"] = W[:, 2 * H:3 * H].copy()
        if self.centering is not None and self.centering.n_updates:
            # the bias in force and the means it is centred on: a reload continues here
            self.kparams |= {"b_in": self.kernel.b_in.numpy().astype(np.float64),
                             "mu_in": self.centering.m.copy()}
        return {k: np.asarray(v) for k, v in self.kparams.items()}

    def load_state_dict(self, state: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self._init(dict(meta.get("params", {})))
        self.kparams = {k: np.asarray(v, np.float64) for k, v in state.items()}
        self._restore_metadata(meta)
        self._prepare()
