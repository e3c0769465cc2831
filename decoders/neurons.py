"""Spiking neuron dynamics as plain functions (one time step each).

Each function takes the inputs and the previous state and returns the new
state, with no hidden module state, so the same math serves BPTT training
(batched, differentiable) and batch inference. The allocation-free online step
in :mod:`decoders.snn` mirrors these functions op for op, which is what makes
batch and step outputs agree.

Time constants enter as decay factors per bin, ``alpha = exp(-1 / tau)`` with
``tau`` in bins; every neuron has its own (heterogeneous, learnable) ``tau``.
Spikes use a soft reset (subtract the threshold) so no input is thrown away.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class SuperSpike(torch.autograd.Function):
    """Heaviside forward, fast-sigmoid surrogate gradient backward (Zenke & Ganguli 2018)."""

    scale = 5.0  # default steepness of the surrogate

    @staticmethod
    def forward(ctx, x: Tensor, scale: float = 5.0) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        ctx.scale = scale
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        (x,) = ctx.saved_tensors
        return grad / (ctx.scale * x.abs() + 1.0) ** 2, None


def spike(x: Tensor, scale: float = SuperSpike.scale) -> Tensor:
    """Spike where ``x > 0``; differentiable through the surrogate when grads are on.

    ``scale`` sets the surrogate's steepness (larger = narrower around threshold).
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return SuperSpike.apply(x, scale)
    return (x > 0).to(x.dtype)


def decay(tau: Tensor) -> Tensor:
    """Per-bin decay factor for time constant ``tau`` (in bins)."""
    return torch.exp(-1.0 / tau)


class ALIFState(NamedTuple):
    v: Tensor  # membrane potential
    a: Tensor  # threshold adaptation trace (0 for plain LIF neurons)
    s: Tensor  # last spikes


def alif_step(current: Tensor, state: ALIFState, alpha: Tensor, rho: Tensor,
              beta: Tensor, threshold: float = 1.0,
              scale: float = SuperSpike.scale) -> ALIFState:
    """Adaptive LIF: leaky membrane, soft reset, threshold raised by recent spikes.

    ``beta = 0`` gives a plain LIF neuron; ``rho`` sets how long adaptation lasts,
    which is what lets one layer hold several timescales of spike history.
    """
    thr = beta * state.a + threshold
    v = alpha * state.v + (1.0 - alpha) * current
    s = spike(v - thr, scale)
    v = v - s * thr
    a = rho * state.a + (1.0 - rho) * s
    return ALIFState(v, a, s)


def lif_step(current: Tensor, state: ALIFState, alpha: Tensor,
             threshold: float = 1.0) -> ALIFState:
    """Plain LIF (an ALIF neuron without adaptation)."""
    zero = torch.zeros_like(alpha)
    return alif_step(current, state, alpha, zero, zero, threshold)


def dendrite_step(branch_current: Tensor, d: Tensor, alpha_d: Tensor) -> Tensor:
    """Low-pass each dendritic branch with its own time constant: (…, B, H) -> (…, B, H).

    A neuron sums its branches at the soma, so it sees the same input through
    several filters (fast and slow) before it integrates and fires.
    """
    return alpha_d * d + (1.0 - alpha_d) * branch_current


def leaky_readout(current: Tensor, y: Tensor, kappa: Tensor) -> Tensor:
    """Non-spiking leaky integrator: the decoded output is a smoothed weighted sum."""
    return kappa * y + (1.0 - kappa) * current
