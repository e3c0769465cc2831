"""NeuroBench's own metrics for the SNN and the GRU, next to the project's counts.

Usage: python bench/neurobench_metrics.py [--datasets ...] [--epochs N] [--json PATH]

Needs the optional extra ``neurobench`` (``pip install -e '.[neurobench]'``,
neurobench 2.3 with the pinned torch 2.13.0); without it the script exits
with one line saying so. For each dataset the SNN and the GRU are trained as
``bench/decoders.py --quick`` trains them (same code, seed and epochs, unless
``--epochs`` overrides both), then NeuroBench's metric classes (Footprint,
ParameterCount, ConnectionSparsity, ActivationSparsity, SynapticOperations)
run through ``neurobench.benchmarks.Benchmark`` on the test split, one trial
(segment) per sample, and ``decoders.ops.count_ops`` gives the project's own
counts for the same trained decoder.

NeuroBench only sees ``nn.Linear``/conv layers, ``nn.RNNCellBase`` cells and
activation modules, and its op count raises (and ``Benchmark`` then reports
0) for a whole ``nn.GRU``. Neither decoder's inference kernel is an
``nn.Module`` (both are numpy), so each is evaluated through a wrapper built
for this script only, holding the kernel's own float32 weights (input
normalisation folded in, so it reads raw counts exactly as the kernel does):

* :class:`SNNEval` -- ``nn.Linear`` input, recurrent and readout layers and
  an :class:`ALIFLayer` (registered as an activation module) that repeats
  ``SNNKernel.step_``'s neuron arithmetic op for op;
* :class:`GRUEval` -- ``nn.GRUCell`` stepped bin by bin, a
  :class:`HiddenState` probe (so NeuroBench's activation sparsity sees the
  hidden state ``h``) and an ``nn.Linear`` readout.

Before measuring, each wrapper is checked against the decoder it wraps on the
whole test split (spikes and outputs; the run stops if they disagree).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.decoders import RNN_QUICK_EPOCHS, SNN_PARAMS  # noqa: E402
from decoders import build_decoder  # noqa: E402
from decoders.metrics import predict_segments, r2_per_output  # noqa: E402
from decoders.ops import PJ_PER_AC, PJ_PER_MAC, count_ops  # noqa: E402
from decoders.rnn import GRUDecoder  # noqa: E402
from decoders.snn import SNNDecoder  # noqa: E402
from sources.datasets import DATASETS, DataMissingError, load_dataset  # noqa: E402

INSTALL_HINT = ("neurobench is not installed: pip install -e '.[neurobench]' "
                "(neurobench>=2.3,<3, beside torch 2.13.0) and run this script again")

# the wrapper must reproduce the kernel: at least this fraction of hidden spikes
# equal, and outputs within this fraction of each output's standard deviation
MIN_SPIKE_AGREEMENT = 0.999
MAX_OUTPUT_DEV = 1e-3


def _f32(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, np.float32))


def _linear(w: np.ndarray, b: np.ndarray | None) -> nn.Linear:
    """An ``nn.Linear`` holding ``w`` (out, in) and ``b`` as float32 (frozen)."""
    layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        layer.weight.copy_(_f32(w))
        if b is not None:
            layer.bias.copy_(_f32(b))
    layer.requires_grad_(False)
    return layer


class ALIFLayer(nn.Module):
    """The SNN's adaptive LIF neurons, as ``SNNKernel.step_`` computes them.

    ``forward(current) -> spikes``; the membrane ``v`` and adaptation trace
    ``a`` are kept on the module between calls (``reset`` clears them). The
    per-neuron decays and adaptation strengths are the kernel's own values.
    """

    def __init__(self, alpha: np.ndarray, rho: np.ndarray, beta: np.ndarray):
        super().__init__()
        self.alpha = nn.Parameter(_f32(alpha), requires_grad=False)
        self.rho = nn.Parameter(_f32(rho), requires_grad=False)
        self.beta = nn.Parameter(_f32(beta), requires_grad=False)
        self.v = self.a = torch.zeros(0)

    def reset(self, batch: int) -> None:
        self.v = torch.zeros(batch, self.alpha.numel())
        self.a = torch.zeros(batch, self.alpha.numel())

    def forward(self, current: Tensor) -> Tensor:
        thr = self.beta * self.a + 1.0  # threshold 1, raised by recent spikes
        v = self.v * self.alpha + (1.0 - self.alpha) * current
        s = (v > thr).to(current.dtype)
        self.v = v - s * thr  # soft reset
        self.a = self.a * self.rho + (1.0 - self.rho) * s
        return s


class SNNEval(nn.Module):
    """NeuroBench-visible form of a trained :class:`SNNDecoder` (raw counts in).

    Per bin: ``fc_in(x) + fc_rec(s_prev)`` -> :class:`ALIFLayer` -> spikes
    ``s``; readout ``fc_s(s) + fc_v(v)`` (``+ fc_a(a)`` with
    ``readout_trace``) into the leaky output integrator. ``fc_s`` carries the
    readout bias. The dendritic variant (``branches > 1``) is not wrapped.
    """

    def __init__(self, dec: SNNDecoder):
        super().__init__()
        kp = dec.kparams
        if "alpha_d" in kp:
            raise NotImplementedError("the dendritic SNN (branches > 1) has no wrapper")
        self.fc_in = _linear(kp["w_in"], kp["b_in"])
        self.fc_rec = _linear(kp["w_rec"], None) if "w_rec" in kp else None
        self.neurons = ALIFLayer(kp["alpha"], kp["rho"], kp["beta"])
        self.fc_s = _linear(kp["w_s"], kp["b_out"])
        self.fc_v = _linear(kp["w_v"], None)
        self.fc_a = _linear(kp["w_a"], None) if "w_a" in kp else None
        self.kappa = nn.Parameter(_f32(kp["kappa"]), requires_grad=False)
        self.register_buffer("y0", _f32(kp["y0"]))  # initial output (target mean)
        self.last_spikes = torch.zeros(0)

    def forward(self, x: Tensor) -> Tensor:
        """x: raw counts (B, T, N) -> outputs (B, T, K); spikes kept in ``last_spikes``."""
        B, T, _ = x.shape
        x = x.to(torch.float32)
        self.neurons.reset(B)
        s = x.new_zeros(B, self.neurons.alpha.numel())
        y = self.y0.expand(B, -1)
        ys, ss = [], []
        for t in range(T):
            cur = self.fc_in(x[:, t])
            if self.fc_rec is not None:
                cur = cur + self.fc_rec(s)
            s = self.neurons(cur)
            ro = self.fc_s(s) + self.fc_v(self.neurons.v)
            if self.fc_a is not None:
                ro = ro + self.fc_a(self.neurons.a)
            y = y * self.kappa + (1.0 - self.kappa) * ro
            ys.append(y)
            ss.append(s)
        self.last_spikes = torch.stack(ss, 1)
        return torch.stack(ys, 1)


class HiddenState(nn.Identity):
    """Marks the GRU's hidden state so NeuroBench's activation hooks record it."""


class GRUEval(nn.Module):
    """NeuroBench-visible form of a trained :class:`GRUDecoder`: ``nn.GRUCell`` + readout."""

    def __init__(self, dec: GRUDecoder):
        super().__init__()
        kp = dec.kparams
        n_in, H = kp["w_ih"].shape[1], kp["w_hh"].shape[1]
        self.cell = nn.GRUCell(n_in, H)
        with torch.no_grad():
            for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
                attr = name.replace("w_", "weight_").replace("b_", "bias_")
                getattr(self.cell, attr).copy_(_f32(kp[name]))
        self.cell.requires_grad_(False)
        self.hidden = HiddenState()
        self.readout = _linear(kp["w_out"], kp["b_out"])

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        x = x.to(torch.float32)
        h = x.new_zeros(B, self.cell.hidden_size)
        ys = []
        for t in range(T):
            h = self.cell(x[:, t], h)  # h passed explicitly: NeuroBench counts its products
            ys.append(self.readout(self.hidden(h)))
        return torch.stack(ys, 1)


def _segments(counts: np.ndarray, segments: np.ndarray) -> list[tuple[int, int]]:
    bounds = [int(s) for s in segments] + [len(counts)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def verify(kind: str, dec: Any, net: nn.Module, counts: np.ndarray, behavior: np.ndarray,
           segments: np.ndarray) -> dict[str, float]:
    """Run the wrapper and the decoder on every test segment; raise if they differ."""
    ref = predict_segments(dec, counts, segments)
    outs, spk_agree, spk_n = [], 0, 0
    with torch.no_grad():
        for a, b in _segments(counts, segments):
            outs.append(net(torch.from_numpy(counts[a:b])[None])[0].double().numpy())
            if kind == "snn":
                mine = net.last_spikes[0].numpy()
                theirs = dec.kernel.run(counts[a:b])[1]
                spk_agree += int((mine == theirs).sum())
                spk_n += mine.size
    out = np.concatenate(outs)
    dev = float((np.abs(out - ref).max(0) / np.maximum(ref.std(0), 1e-12)).max())
    res = {"max_output_dev_over_sd": dev,
           "r2_decoder": float(r2_per_output(behavior, ref).mean()),
           "r2_wrapper": float(r2_per_output(behavior, out).mean())}
    if kind == "snn":
        res["spike_agreement"] = spk_agree / spk_n
        if res["spike_agreement"] < MIN_SPIKE_AGREEMENT:
            raise AssertionError(f"SNN wrapper spikes differ from the kernel's: {res}")
    if dev > MAX_OUTPUT_DEV:
        raise AssertionError(f"{kind} wrapper outputs differ from the decoder's: {res}")
    return res


def project_counts(dec: Any, counts: np.ndarray) -> dict[str, float]:
    """The project's own figures for ``dec`` (``decoders.ops``), plus weight-zero fractions."""
    ops = count_ops(dec, counts)
    kp = dec.kparams
    names = (("w_in", "w_rec", "w_s", "w_v", "w_a") if dec.kind == "snn"
             else ("w_ih", "w_hh", "b_ih", "b_hh", "w_out"))
    ws = [np.asarray(kp[n]) for n in names if n in kp]
    zeros = sum(int((w.astype(np.float32) == 0).sum()) for w in ws)
    return ops | {"params": int(dec.n_params()), "float32_bytes": 4 * int(dec.n_params()),
                  "weight_zero_fraction": zeros / sum(w.size for w in ws)}


def neurobench_metrics(net: nn.Module, kind: str, counts: np.ndarray, behavior: np.ndarray,
                       segments: np.ndarray) -> dict[str, Any]:
    """NeuroBench's metric classes on ``net``, one test segment per sample."""
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
    from neurobench.models import TorchModel
    from torch.utils.data import DataLoader

    model = TorchModel(net)
    model.add_activation_module(ALIFLayer if kind == "snn" else HiddenState)
    samples = [(torch.from_numpy(counts[a:b]).float(), torch.from_numpy(behavior[a:b]).float())
               for a, b in _segments(counts, segments)]
    loader = DataLoader(samples, batch_size=1, shuffle=False)  # type: ignore[arg-type]
    bench = Benchmark(model, loader, [], [], [
        [Footprint, ParameterCount, ConnectionSparsity],
        [ActivationSparsity, SynapticOperations]])
    t0 = time.perf_counter()
    with torch.no_grad():
        res = bench.run(quiet=True)
    ops = res["SynapticOperations"]
    # SynapticOperations averages over samples (whole segments): per bin = x samples / bins
    per_bin = len(samples) / len(counts)
    ac, mac = ops["Effective_ACs"] * per_bin, ops["Effective_MACs"] * per_bin
    return {"footprint_bytes": int(res["Footprint"]), "params": int(res["ParameterCount"]),
            "connection_sparsity": float(res["ConnectionSparsity"]),
            "activation_sparsity": float(res["ActivationSparsity"]),
            "synops_ac": ac, "synops_mac": mac, "synops_dense": ops["Dense"] * per_bin,
            "samples": len(samples), "bins": len(counts), "wall_s": time.perf_counter() - t0,
            "raw": {k: v for k, v in res.items()}}


def run_dataset(name: str, epochs: int | None) -> dict[str, Any]:
    ds = load_dataset(name)
    tr, te = ds.train(), ds.test()
    snn_p = SNN_PARAMS[name][0] | ({"epochs": epochs} if epochs else {})
    gru_p = snn_p | {"epochs": epochs or RNN_QUICK_EPOCHS[name]}
    out: dict[str, Any] = {}
    for kind, params, wrap in (("snn", snn_p, SNNEval), ("gru", gru_p, GRUEval)):
        print(f"[{name}] {kind}: fit {params} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        dec = build_decoder(kind, **params).fit(tr.counts, tr.behavior, bin_ms=ds.bin_ms,
                                                output_names=ds.output_names,
                                                segments=tr.segments)
        fit_s = time.perf_counter() - t0
        net = wrap(dec).eval()
        check = verify(kind, dec, net, te.counts, te.behavior, te.segments)
        print(f"[{name}] {kind}: wrapper check {check}", file=sys.stderr, flush=True)
        out[kind] = {"params_used": params, "epochs_run": len(dec.history), "fit_s": fit_s,
                     "wrapper_check": check,
                     "project": project_counts(dec, te.counts),
                     "neurobench": neurobench_metrics(net, kind, te.counts, te.behavior,
                                                      te.segments)}
    return out


def print_table(results: dict[str, Any]) -> None:
    hdr = (f"{'dataset':14} {'model':4} {'footprint B':>11} {'params nb/prj':>15} "
           f"{'conn.sp nb/np':>13} {'act.sp nb/prj':>13} {'AC/step nb/prj':>17} "
           f"{'MAC/step nb/prj':>17} {'AC+MAC nb/prj':>17} {'dense nb':>8}")
    print(hdr)
    print("-" * len(hdr))
    for name, models in results.items():
        for kind, r in models.items():
            nb, pj = r["neurobench"], r["project"]
            print(f"{name:14} {kind:4} {nb['footprint_bytes']:11d} "
                  f"{nb['params']:>7d}/{pj['params']:<7d} "
                  f"{nb['connection_sparsity']:6.4f}/{pj['weight_zero_fraction']:<6.4f} "
                  f"{nb['activation_sparsity']:6.3f}/{pj['sparsity']:<6.3f} "
                  f"{nb['synops_ac']:8.0f}/{pj['synops_ac']:<8.0f} "
                  f"{nb['synops_mac']:8.0f}/{pj['synops_mac']:<8.0f} "
                  f"{nb['synops_ac'] + nb['synops_mac']:8.0f}/"
                  f"{pj['synops_ac'] + pj['synops_mac']:<8.0f} {nb['synops_dense']:8.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--epochs", type=int, default=None,
                    help="train the SNN and the GRU this many epochs at most "
                         "(default: bench/decoders.py --quick budgets)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    try:
        import neurobench
        import snntorch
    except ImportError:
        sys.exit(INSTALL_HINT)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in args.datasets:
        try:
            results[name] = run_dataset(name, args.epochs)
        except DataMissingError as e:
            skipped[name] = str(e)
            print(f"skip {name}: {e}", file=sys.stderr)
    print_table(results)
    print("per test bin; nb = NeuroBench metric classes on the wrapper, prj = "
          "decoders.ops.count_ops, np = numpy zero fraction of the same weights. NeuroBench "
          "calls a whole layer call AC or MAC from its first input alone (GRUCell: x only)")
    out = {"results": results, "skipped": skipped, "epochs_override": args.epochs,
           "energy_per_op_pj": {"ac": PJ_PER_AC, "mac": PJ_PER_MAC},
           "environment": {"python": platform.python_version(), "torch": torch.__version__,
                           "neurobench": neurobench.__version__,
                           "snntorch": snntorch.__version__, "numpy": np.__version__,
                           "threads": torch.get_num_threads()},
           "wall_s": time.perf_counter() - t_start}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
