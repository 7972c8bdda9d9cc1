"""The adaptive leaky integrate-and-fire (ALIF) neuron: one pure step function.

This is the single home of the neuron update used by the thalamus, the cortex, the
reference and fast engines' specification, and the analyses (constant-input simulation).

Per unit, with ``b0 = init_b``, ``beta = 1.8``, ``R_m = 1`` and ``dt = 1`` (paper, Eq. 1-3)::

    alpha = exp(-dt / tau_m);  rho = exp(-dt / tau_adp)
    b     = rho * b + (1 - rho) * spike_prev        # b starts as the scalar b0
    Bth   = b0 + beta * b                            # adaptive threshold
    mem   = mem * alpha + (1 - alpha) * R_m * I - Bth * spike_prev * dt
    spike = H(mem - Bth)

The Heaviside step has a Gaussian surrogate derivative (published: sigma 0.5, scale 0.5;
a :class:`Surrogate` sets another width and height, e.g. one scaled to the threshold).
:func:`leaky_integrate` is the same membrane without threshold: the opt-in leaky readout.
The expressions keep the published order of floating-point operations, so float64
results match the published implementation bit for bit.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

BETA = 1.8               # threshold adaptation strength
R_M = 1.0                # membrane resistance
DT = 1.0                 # time step
SURROGATE_SIGMA = 0.5    # width of the Gaussian surrogate
SURROGATE_SCALE = 0.5    # height factor of the surrogate


class Surrogate(NamedTuple):
    """The Gaussian pseudo-derivative of the spike: ``scale * N(x; 0, sigma)`` at
    ``x = mem - threshold``, in membrane units (its peak is ``scale / (sqrt(2 pi) sigma)``);
    with ``cutoff`` > 0 it is zero where ``|x| > cutoff * sigma`` (published: 0, untruncated).
    A truncated surrogate lets the numba backward skip the neurons it is zero for (Perez-Nieves
    & Goodman 2021)."""
    sigma: float = SURROGATE_SIGMA
    scale: float = SURROGATE_SCALE
    cutoff: float = 0.0


PUBLISHED_SURROGATE = Surrogate()


def surrogate_derivative(x: torch.Tensor, sigma: float = SURROGATE_SIGMA,
                         scale: float = SURROGATE_SCALE, cutoff: float = 0.0) -> torch.Tensor:
    """d spike / d x of the Gaussian surrogate at ``x = mem - threshold`` (zero beyond
    ``cutoff`` sigmas when ``cutoff`` > 0)."""
    sg = torch.exp(-(x ** 2) / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma) * scale
    if cutoff > 0:
        sg = torch.where(x.abs() <= cutoff * sigma, sg, torch.zeros((), dtype=sg.dtype,
                                                                      device=sg.device))
    return sg


class SpikeFunction(torch.autograd.Function):
    """Heaviside forward, Gaussian surrogate backward."""

    @staticmethod
    def forward(ctx, x, sigma=SURROGATE_SIGMA, scale=SURROGATE_SCALE, cutoff=0.0):
        ctx.save_for_backward(x)
        ctx.surrogate = (sigma, scale, cutoff)
        return x.gt(0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * surrogate_derivative(x, *ctx.surrogate), None, None, None


def spike_fn(x: torch.Tensor, surrogate: Surrogate = PUBLISHED_SURROGATE) -> torch.Tensor:
    """Heaviside step of ``x = mem - threshold`` with the ``surrogate`` derivative."""
    return SpikeFunction.apply(x, *(float(v) for v in surrogate))


class ALIFState(NamedTuple):
    """State of a group of ALIF units, each ``(batch, n)`` (``b`` may be a scalar at start)."""
    mem: torch.Tensor
    spike: torch.Tensor
    b: torch.Tensor | float


def decay_factors(tau_m: torch.Tensor, tau_adp: torch.Tensor, dt: float = DT):
    """``alpha = exp(-dt/tau_m)`` and ``rho = exp(-dt/tau_adp)``."""
    return torch.exp(-1.0 * dt / tau_m), torch.exp(-1.0 * dt / tau_adp)


def alif_step(current: torch.Tensor, state: ALIFState, tau_m: torch.Tensor,
              tau_adp: torch.Tensor, b0: float, beta: float = BETA,
              dt: float = DT, surrogate: Surrogate = PUBLISHED_SURROGATE) -> ALIFState:
    """One time step of ALIF units.

    current: (batch, n) input current; tau_m, tau_adp: (n,); returns the new state.
    The previous "spike" may be non-binary (the published initial state is uniform in [0, 1)).
    """
    alpha, rho = decay_factors(tau_m, tau_adp, dt)
    b = rho * state.b + (1 - rho) * state.spike
    threshold = b0 + beta * b
    mem = state.mem * alpha + (1 - alpha) * R_M * current - threshold * state.spike * dt
    spike = spike_fn(mem - threshold, surrogate)
    return ALIFState(mem, spike, b)


def leaky_integrate(current: torch.Tensor, tau_m: float, dt: float = DT) -> torch.Tensor:
    """Membrane potentials of non-spiking leaky integrators driven by ``current`` (T, ...):
    ``mem_t = alpha * mem_{t-1} + (1 - alpha) * R_m * current_t`` from ``mem = 0``, with
    ``alpha = exp(-dt / tau_m)``; returns (T, ...). The ALIF membrane without threshold or
    reset, as the output neurons of the adaptive SRNN (Yin et al. 2021) read their input."""
    alpha = math.exp(-dt / tau_m)
    mem, mems = 0.0, []
    for current_t in current.unbind(0):       # unbind: a linear-time backward (see engines)
        mem = mem * alpha + (1 - alpha) * R_M * current_t
        mems.append(mem)
    return torch.stack(mems) if mems else current.clone()
