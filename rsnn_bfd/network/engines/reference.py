"""Reference engine: the published semantics, step by step and population by population.

Readable specification of the cortical dynamics, differentiated by plain autograd. It is the
baseline that the other engines are tested and benchmarked against. Runs on any device;
ignores the engine options.
"""
from __future__ import annotations

import torch

from rsnn_bfd.network.engines import (Network, readout_logits, signed_recurrent,
                                      thalamic_effective)
from rsnn_bfd.network.neuron import ALIFState, alif_step


def run_thalamus(net: Network, current: torch.Tensor, state, options=None) -> torch.Tensor:
    """The 200 VPM units over the sequence: current (T, batch, 200) -> spikes (T, batch, 200)."""
    s = ALIFState(state.mem_thal, state.spk_thal, net.init_b)
    spikes = []
    # unbind, not current[t]: indexing would accumulate a (T, batch, 200) gradient at
    # every step in the backward, quadratic in T
    for current_t in current.unbind(0):
        s = alif_step(current_t, s, net.thal_tau_m, net.thal_tau_adp, net.init_b, net.beta,
                      surrogate=net.surrogate)
        spikes.append(s.spike)
    return torch.stack(spikes)


def run_cortex(net: Network, thal_spikes: torch.Tensor, state, record_spikes: bool = False,
               record_mem: bool = False, options=None):
    """Simulate the 13 cortical populations over the sequence.

    thal_spikes: (T, batch, 200) VPM spikes; state: the model's InitialState.
    Returns ``(logits (T-1, batch, 3), spikes (T, batch, 4218) or None,
    mem (T, batch, 4218) or None)``.
    """
    offsets = net.offsets
    w_rec = signed_recurrent(net)                          # (N, N), built once per forward
    # each population's rows, cut once: cut at every step, the backward of each cut would
    # make an (N, N) gradient, 13 per step
    w_pop = [w_rec[offsets[i]:offsets[i + 1]].t() for i in range(len(offsets) - 1)]
    w_th = thalamic_effective(net)                         # (N, 200)
    spk, mem = state.spk, state.mem
    b = [net.init_b] * (len(offsets) - 1)                  # adaptation starts at the scalar b0
    logits, spikes, mems = [], [], []
    for t in range(thal_spikes.shape[0]):
        thal_current = thal_spikes[t] @ w_th.t()
        new_spk, new_mem = [], []
        for i in range(len(offsets) - 1):
            lo, hi = offsets[i], offsets[i + 1]
            # populations before i have already spiked this step (Gauss-Seidel order)
            presyn = torch.cat(new_spk + [spk[:, lo:]], dim=1)
            current = thal_current[:, lo:hi] + presyn @ w_pop[i]
            s = alif_step(current, ALIFState(mem[:, lo:hi], spk[:, lo:hi], b[i]),
                          net.tau_m[lo:hi], net.tau_adp[lo:hi], net.init_b, net.beta,
                          surrogate=net.surrogate)
            new_spk.append(s.spike)
            new_mem.append(s.mem)
            b[i] = s.b
        spk, mem = torch.cat(new_spk, dim=1), torch.cat(new_mem, dim=1)
        if t >= 1:
            logits.append(readout_logits(net, spk[None])[0])
        if record_spikes:
            spikes.append(spk)
        if record_mem:
            mems.append(mem)
    if thal_spikes.shape[0] == 1:   # no readout step: t = 1..T-1 is empty
        logits = torch.zeros((0, spk.shape[0], net.n_classes), dtype=spk.dtype, device=spk.device)
    else:
        logits = torch.stack(logits)
    return (logits, torch.stack(spikes) if record_spikes else None,
            torch.stack(mems) if record_mem else None)
