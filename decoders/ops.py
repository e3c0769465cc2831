"""Synaptic operations, activation sparsity and energy, counted the NeuroBench way.

An operation is counted per weight actually used in a step: a zero activation
costs nothing; a binary one (a spike, or a count of exactly 1) costs an
accumulate (AC, the weight is just added); any other value costs a
multiply-accumulate (MAC). Neuron state updates are not synaptic operations
and are not counted. Energy uses 45 nm figures (Horowitz 2014, as used by
NeuroBench and most SNN papers): 0.9 pJ per AC and 4.6 pJ per MAC (32-bit float).
The equivalent ANN is a GRU with the SNN's hidden size on the same inputs;
the real GRU/LSTM decoders (:mod:`decoders.rnn`) are counted by the same
rules: input counts as for the SNN, the dense hidden state as MACs into the
recurrent gates and the readout.
"""

from __future__ import annotations

import numpy as np

from .base import Decoder
from .rnn import GRUDecoder, LSTMDecoder
from .snn import SNNDecoder
from .wiener import WienerDecoder

PJ_PER_AC = 0.9
PJ_PER_MAC = 4.6


def _split(x: np.ndarray, fan_out: int) -> tuple[float, float]:
    """(ACs, MACs) per step for activations ``x`` (T, n) each feeding ``fan_out`` weights."""
    ones = (x == 1).sum(1)
    other = ((x != 0) & (x != 1)).sum(1)
    return float(ones.mean() * fan_out), float(other.mean() * fan_out)


def count_ops(decoder: Decoder, counts: np.ndarray) -> dict[str, float]:
    """Average synaptic ops per step and sparsity of ``decoder`` on ``counts`` (T, N)."""
    counts = np.asarray(counts, float)
    K = decoder.n_outputs
    input_sparsity = float((counts == 0).mean())
    # dispatch on the concrete classes (each registers exactly one ``kind``)
    if isinstance(decoder, SNNDecoder):
        kp = decoder.kparams
        H = kp["alpha"].shape[0]
        fan_in = int(np.count_nonzero(kp["w_in"][:, 0])) if "alpha_d" in kp else kp[
            "w_in"].shape[0]
        ac, mac = _split(counts, fan_in)
        s = decoder.spikes(counts)
        n_spk = float(s.sum(1).mean())
        if "w_rec" in kp:
            ac += n_spk * (H - 1)
        ac += n_spk * K  # spike readout
        mac += H * K  # membrane readout is dense
        if "w_a" in kp:
            mac += H * K  # so is the readout of the adaptation traces
        sparsity = float(1.0 - s.mean())
    elif isinstance(decoder, (GRUDecoder, LSTMDecoder)):
        # input layer like the SNN's (a count of 1 is an AC); the recurrent and
        # readout layers see the dense hidden state: one MAC per weight
        H, G = decoder.H, decoder.gates
        ac, mac = _split(counts, G * H)
        h = decoder.hidden_states(counts)
        nz_h = float((h != 0).sum(1).mean())
        mac += nz_h * (G * H + K)
        sparsity = float((h == 0).mean())
    elif isinstance(decoder, WienerDecoder):
        ac, mac = _split(counts, decoder.history * K)
        sparsity = 0.0
    else:  # kalman and other dense linear decoders: centred inputs are dense
        N = decoder.n_inputs
        ac, mac = 0.0, float(K * N + K * K)
        sparsity = 0.0
    return {"synops_ac": ac, "synops_mac": mac, "sparsity": sparsity,
            "input_sparsity": input_sparsity, "energy_pj": energy_pj(ac, mac)}


def energy_pj(ac: float, mac: float) -> float:
    return ac * PJ_PER_AC + mac * PJ_PER_MAC


def gru_equivalent(n_in: int, hidden: int, n_out: int, counts: np.ndarray) -> dict[str, float]:
    """MACs per step of a GRU(n_in -> hidden) + linear readout, skipping zero inputs."""
    nz_in = float((np.asarray(counts) != 0).sum(1).mean())
    mac = 3 * (nz_in * hidden + hidden * hidden) + hidden * n_out
    params = 3 * (n_in * hidden + hidden * hidden + 2 * hidden) + hidden * n_out + n_out
    return {"synops_mac": mac, "energy_pj": energy_pj(0.0, mac), "params": params}
