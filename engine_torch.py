"""Fast engine, torch-ops backend: the whole sequence in one autograd Function (CUDA).

The fast engine runs this backend on every device but the CPU (where the numba kernels of
``engine_fast`` are faster). It has the same semantics as ``engine_reference.run_cortex``
and the same structure as the CPU kernels, written with dense torch ops instead of
event-driven loops, because on a GPU a dense matmul over the whole population is cheaper
than launching many small sparse kernels:

* forward, per step: the previous step's spikes act through one matmul with the weights
  whose presynaptic population is not before the postsynaptic one (``W_prev``); then each
  population in turn adds one matmul of the spikes the populations before it emitted this
  step, and updates its neurons (the published Gauss-Seidel order). Everything that does
  not depend on this step's current (adaptation, threshold, decay, reset) is computed for
  all 4,218 neurons at once. No autograd graph is built inside the loop.
* backward, per step in reverse time, populations in reverse order: only the chain through
  this step's spikes is sequential (one matmul per population, ``W[pop, :lo]``); the rest
  (threshold, adaptation, tau gradients, the previous step's spikes via ``W_prev``) is done
  for all neurons at once. The surrogate derivatives of all steps are one vectorised op.
* time-parallel outside the loop: the thalamocortical current of all steps, and the
  weight gradients as two products over all T x batch rows (this step's / previous step's
  presynaptic spikes, masked by population order).

Saved for the backward: spikes, input currents, membranes and adaptation of all steps
(T x batch x 4218 each; GPU memory is not the constraint the CPU engine works around).
Inference (no grad) keeps nothing per step except what the caller records: the readout is
accumulated in chunks of ``INFERENCE_CHUNK`` steps.

Internal layout is (T, batch, N), as in the model.
"""
from __future__ import annotations

import torch

from neuron import decay_factors, surrogate_derivative

INFERENCE_CHUNK = 64   # steps whose spikes are held before the readout is applied (no grad)


def _prev_mask(model, device) -> torch.Tensor:
    """(N, N) bool [post, pre]: the presynaptic population is not before the postsynaptic
    one, so the postsynaptic neuron sees the *previous* step's spike of that neuron."""
    key = ("_engine_torch_prev_mask", str(device))
    cached = model.__dict__.get(key)
    if cached is None:
        off = model.population_offsets
        sizes = torch.as_tensor([off[i + 1] - off[i] for i in range(len(off) - 1)])
        pop = torch.repeat_interleave(torch.arange(len(sizes)), sizes).to(device)
        cached = pop[None, :] >= pop[:, None]
        model.__dict__[key] = cached
    return cached


class _Simulation:
    """The forward recursion over steps (shared by the training and the inference path)."""

    def __init__(self, off, w, w_prev_t, alpha, rho, b0, beta):
        self.off, self.w_t, self.w_prev_t = off, w.t(), w_prev_t
        self.alpha, self.oma = alpha, 1 - alpha
        self.rho, self.omr = rho, 1 - rho
        self.b0, self.beta = b0, beta

    def step(self, thal_current, s_prev, v, b, cur, v_new, s_new):
        """One step. (batch, N) tensors; ``b`` may be the scalar b0 at t = 0.

        Writes the input current into ``cur``, the membrane into ``v_new``, the spikes into
        ``s_new``; returns the new adaptation ``b``.
        """
        off = self.off
        b = self.rho * b + self.omr * s_prev
        thr = self.b0 + self.beta * b
        leak = v * self.alpha
        reset = thr * s_prev
        torch.addmm(thal_current, s_prev, self.w_prev_t, out=cur)
        for i in range(len(off) - 1):
            lo, hi = off[i], off[i + 1]
            cur_i, v_i = cur[:, lo:hi], v_new[:, lo:hi]
            if i > 0:   # this step's spikes of the populations before i
                cur_i.addmm_(s_new[:, :lo], self.w_t[:lo, lo:hi])
            # mem = mem * alpha + (1 - alpha) * I - thr * s_prev, in the published order
            torch.mul(cur_i, self.oma[lo:hi], out=v_i)
            torch.add(leak[:, lo:hi], v_i, out=v_i)
            v_i.sub_(reset[:, lo:hi])
            torch.gt(v_i, thr[:, lo:hi], out=s_new[:, lo:hi])
        return b


class _CortexFunction(torch.autograd.Function):
    """Inputs: prev (N, N) bool (see ``_prev_mask``), w (N, N) signed recurrent weights
    [post, pre], thal_current (T, batch, N), alpha, rho (N,), v0, s0 (batch, N).
    Outputs: spikes (T, batch, N) and the membranes (T, batch, N) if recorded (else empty)."""

    @staticmethod
    def forward(ctx, opts, prev, w, thal_current, alpha, rho, v0, s0):
        off, b0, beta, record_mem = opts
        T, B, n = thal_current.shape
        w_prev = w * prev
        sim = _Simulation(off, w, w_prev.t(), alpha, rho, b0, beta)
        like = dict(dtype=w.dtype, device=w.device)
        s_all = torch.empty((T, B, n), **like)
        i_all = torch.empty((T, B, n), **like)
        v_all = torch.empty((T, B, n), **like)
        b_all = torch.empty((T, B, n), **like)
        s, v, b = s0, v0, b0
        for t in range(T):
            b = sim.step(thal_current[t], s, v, b, i_all[t], v_all[t], s_all[t])
            b_all[t] = b
            s, v = s_all[t], v_all[t]
        ctx.consts = (off, b0, beta)
        ctx.save_for_backward(prev, w, w_prev, alpha, rho, v0, s0, s_all, i_all, v_all, b_all)
        mem = v_all if record_mem else torch.empty(0, **like)
        ctx.mark_non_differentiable(mem)
        return s_all, mem

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_spikes, _g_mem):
        prev, w, w_prev, alpha, rho, v0, s0, s_all, i_all, v_all, b_all = ctx.saved_tensors
        off, b0, beta = ctx.consts
        T, B, n = s_all.shape
        oma, omr = 1 - alpha, 1 - rho
        sg_all = surrogate_derivative(v_all - (b0 + beta * b_all))        # (T, B, N)
        g_cur = torch.empty_like(i_all)                                   # dL/dI, all steps
        gs = torch.zeros_like(v0)            # dL/ds_t from later steps
        gv_r = torch.zeros_like(v0)          # alpha * dL/dv_{t+1}
        gb_r = torch.zeros_like(v0)          # rho * dL/db_{t+1}
        ga = torch.zeros_like(v0)
        gr = torch.zeros_like(v0)
        gx = torch.empty_like(v0)
        gv = torch.empty_like(v0)
        for t in range(T - 1, -1, -1):
            gs.add_(g_spikes[t])
            gi, sg = g_cur[t], sg_all[t]
            for i in range(len(off) - 2, -1, -1):
                lo, hi = off[i], off[i + 1]
                gx_i, gv_i, gi_i = gx[:, lo:hi], gv[:, lo:hi], gi[:, lo:hi]
                torch.mul(gs[:, lo:hi], sg[:, lo:hi], out=gx_i)
                torch.add(gx_i, gv_r[:, lo:hi], out=gv_i)
                torch.mul(gv_i, oma[lo:hi], out=gi_i)
                if i > 0:   # to this step's spikes of the populations before i
                    gs[:, :lo].addmm_(gi_i, w[lo:hi, :lo])
            if t > 0:
                s_prev, v_prev, b_prev = s_all[t - 1], v_all[t - 1], b_all[t - 1]
            else:
                s_prev, v_prev, b_prev = s0, v0, b0
            thr = b0 + beta * b_all[t]
            gthr = -gx - gv * s_prev
            gb = beta * gthr + gb_r
            ga.add_(gv * (v_prev - i_all[t]))
            gr.add_(gb * (b_prev - s_prev))
            # dL/ds_{t-1}: reset and adaptation of this step, and its current via W_prev
            gs = torch.addmm(-gv * thr + gb * omr, gi, w_prev)
            gv_r = alpha * gv
            gb_r = rho * gb
        gi_flat = g_cur.reshape(T * B, n)
        g_w = torch.mm(gi_flat.t(), s_all.reshape(T * B, n)).masked_fill_(prev, 0)
        g_w_prev = torch.mm(g_cur[0].t(), s0)
        if T > 1:
            g_w_prev.addmm_(g_cur[1:].reshape(-1, n).t(), s_all[:-1].reshape(-1, n))
        g_w.add_(g_w_prev.masked_fill_(~prev, 0))
        return None, None, g_w, g_cur, ga.sum(0), gr.sum(0), gv_r, gs


def run_cortex(model, thal_spikes: torch.Tensor, state, record_spikes: bool = False,
               record_mem: bool = False):
    """Simulate the 13 cortical populations (same contract as ``engine_reference``).

    thal_spikes: (T, batch, 200) VPM spikes; state: the model's InitialState.
    Returns ``(output (batch, 3), spikes (T, batch, 4218) or None, mem (T, batch, 4218) or None)``.
    """
    cfg = model.config
    off = model.population_offsets
    dtype = model.tau_m.dtype
    w = model.signed_recurrent_weight()
    thal_current = thal_spikes.to(dtype) @ model.thalamocortical.effective_weight().t()
    alpha, rho = decay_factors(model.tau_m, model.tau_adp)
    v0, s0 = state.mem.to(dtype), state.spk.to(dtype)
    b0, beta = float(cfg.init_b), float(cfg.beta)
    prev = _prev_mask(model, w.device)
    inputs = (w, thal_current, alpha, rho, v0, s0)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        spikes, mem = _CortexFunction.apply((off, b0, beta, record_mem), prev, *inputs)
        out = model.readout_sum(spikes[1:])      # T = 1: an empty sum, zeros
        return out, (spikes if record_spikes else None), (mem if record_mem else None)
    with torch.no_grad():
        return _infer(model, prev, w, thal_current, alpha, rho, v0, s0, b0, beta,
                      record_spikes, record_mem)


def _infer(model, prev, w, thal_current, alpha, rho, v0, s0, b0, beta, record_spikes,
           record_mem):
    """No-grad forward: the readout is applied every ``INFERENCE_CHUNK`` steps, so memory
    does not grow with T beyond what is recorded."""
    T, B, n = thal_current.shape
    sim = _Simulation(model.population_offsets, w, (w * prev).t(), alpha, rho, b0, beta)
    like = dict(dtype=w.dtype, device=w.device)
    out = torch.zeros(B, model.config.n_classes, **like)
    spikes = torch.empty((T, B, n), **like) if record_spikes else None
    mems = torch.empty((T, B, n), **like) if record_mem else None
    k = min(INFERENCE_CHUNK, T)
    s_buf, v_buf = torch.empty((k, B, n), **like), torch.empty((k, B, n), **like)
    cur = torch.empty((B, n), **like)
    s, v, b = s0, v0, b0
    for t0 in range(0, T, k):
        t1 = min(T, t0 + k)
        for t in range(t0, t1):
            j = t - t0
            b = sim.step(thal_current[t], s, v, b, cur, v_buf[j], s_buf[j])
            s, v = s_buf[j], v_buf[j]
        s_c, v_c = s_buf[:t1 - t0], v_buf[:t1 - t0]
        first = 1 if t0 == 0 else 0          # the readout sums over t = 1..T-1
        if t1 - t0 > first:
            out += model.readout_sum(s_c[first:])
        if record_spikes:
            spikes[t0:t1] = s_c
        if record_mem:
            mems[t0:t1] = v_c
        # the last step's state stays valid across the buffer reuse
        s, v = s.clone(), v.clone()
    return out, spikes, mems
