"""The ``torch`` engine: the whole sequence in one autograd Function, dense torch operations.

``auto`` picks it on CUDA (on the CPU the ``numba`` engine is faster; here it runs eagerly,
which the tests use). It has the semantics of ``engines.reference`` and the structure of the
numba kernels, written with dense torch ops instead of event-driven loops, because on a GPU a
dense matmul over the whole population is cheaper than launching many small sparse kernels:

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
* The VPM layer (200 units, no recurrence) runs through the same loops as one population
  without recurrent weights (``_ThalamusFunction``).
* CUDA graphs: a step is about 70 small kernels in each direction, whose launches cost more
  than their work (docs/performance.md has the measurements). Both loops therefore run in chunks
  of ``options.chunk`` steps (default 16) on fixed buffers (``_Chunks``); on CUDA (with
  ``options.cuda_graphs``) the chunk is captured once per
  call into a CUDA graph and replayed for every later chunk. The first step of the forward,
  the last (t = 0) of the backward and a remainder of fewer than a chunk run
  eagerly. The same chunked code runs eagerly on the CPU, where the tests check it.

Saved for the backward: spikes, input currents, membranes and adaptation of all steps
(T x batch x 4218 each; GPU memory is not the constraint the CPU engine works around).
Inference (no grad) keeps nothing per step except what the caller records: the readout is
applied per chunk.

Internal layout is (T, batch, N), as in the model.
"""
from __future__ import annotations

import gc
import warnings
from types import SimpleNamespace
from typing import NamedTuple

import torch

from rsnn_bfd.network.engines import (EngineOptions, Network, readout_logits, signed_recurrent,
                                      thalamic_effective)
from rsnn_bfd.network.neuron import decay_factors, surrogate_derivative

CHUNK = 16          # default steps per chunk (per replay of a CUDA graph)
_PREV_MASKS = {}    # this engine's cache: (offsets, device) -> previous-step mask


class _Run(NamedTuple):
    """This call's options: steps per chunk, and whether chunks replay from CUDA graphs."""
    chunk: int
    graphs: bool


def _run_options(options) -> _Run:
    options = options or EngineOptions()
    return _Run(int(options.chunk or CHUNK), bool(options.cuda_graphs))


def _prev_mask(offsets, device) -> torch.Tensor:
    """(N, N) bool [post, pre]: the presynaptic population is not before the postsynaptic
    one, so the postsynaptic neuron sees the *previous* step's spike of that neuron."""
    key = (tuple(offsets), str(device))
    cached = _PREV_MASKS.get(key)
    if cached is None:
        off = offsets
        sizes = torch.as_tensor([off[i + 1] - off[i] for i in range(len(off) - 1)])
        pop = torch.repeat_interleave(torch.arange(len(sizes)), sizes).to(device)
        cached = _PREV_MASKS[key] = pop[None, :] >= pop[:, None]
    return cached


def _capture(fn, *args):
    """A CUDA graph of ``fn(*args)``, or None (with a warning) if the capture fails.

    Captured on a side stream, like ``torch.cuda.graph``, but without its synchronisation,
    garbage collection and emptying of the allocator's cache, which would cost every call;
    "thread_local" lets other threads (data loading) use CUDA meanwhile. Python's garbage
    collector is paused during the capture: destroying a CUDA graph is not permitted while
    a stream captures, and a collection may free one (say, a graph kept in a reference
    cycle elsewhere).
    """
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    collecting = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.stream(stream):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                fn(*args)
            finally:
                graph.capture_end()
    except RuntimeError as err:
        warnings.warn(f"capturing a CUDA graph failed, the engine runs eagerly instead: {err}",
                      RuntimeWarning, stacklevel=2)
        graph = None
    finally:
        if collecting:
            gc.enable()
        torch.cuda.current_stream().wait_stream(stream)
    return graph


class _Simulation:
    """The forward recursion over steps of ALIF populations updated one after another.

    ``w`` (N, N) [post, pre] and ``w_prev_t`` (see ``_prev_mask``) are the recurrent
    weights; None for a layer without recurrence (the thalamus, one population).
    """

    def __init__(self, off, w, w_prev_t, alpha, rho, b0, beta, run: _Run):
        self.off, self.w_prev_t, self.run = off, w_prev_t, run
        self.w_t = None if w is None else w.t()
        self.alpha, self.oma = alpha, 1 - alpha
        self.rho, self.omr = rho, 1 - rho
        self.b0, self.beta = b0, beta

    def step(self, thal_current, s_prev, v, b, cur, v_new, s_new, b_new):
        """One step. (batch, N) tensors; ``b`` may be the scalar b0 at t = 0.

        Writes the input current into ``cur``, the membrane into ``v_new``, the spikes into
        ``s_new`` and the adaptation into ``b_new`` (``neuron.alif_step``'s operations).
        """
        off = self.off
        torch.add(self.rho * b, self.omr * s_prev, out=b_new)
        thr = self.b0 + self.beta * b_new
        leak = v * self.alpha
        reset = thr * s_prev
        if self.w_t is None:
            cur.copy_(thal_current)
        else:
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


class _Chunks:
    """Fixed buffers of up to ``k`` steps, ``(k, batch, N)`` each, named ``names``, and the
    state carried from chunk to chunk (``carry``, (batch, N) each, zeros at first).
    Subclasses define ``steps(n)``, the step function on the first ``n`` steps."""

    def __init__(self, k, shape, like, names, n_carry, graphs: bool):
        self.k = k
        for name in names:
            setattr(self, name, torch.empty((k,) + shape, **like))
        self.carry = [torch.zeros(shape, **like) for _ in range(n_carry)]
        self.capture = graphs and torch.device(like["device"]).type == "cuda"
        self.graph, self.full_runs = None, 0

    def run(self, n):
        """``steps(n)``. On CUDA (with ``graphs``) a full chunk (``n = k``) runs eagerly the
        first time, which is also the warm-up a capture needs (cuBLAS workspaces, the
        allocator), is captured into a CUDA graph the second time and replayed from then
        on; a chunk run once is never captured. Nothing here refers back to ``self``, so
        the graph is freed with this object, by reference counting, when the call ends."""
        if n < self.k:
            return self.steps(n)
        if self.graph is None and self.capture and self.full_runs:
            self.graph = _capture(self.steps, self.k)
            self.capture = self.graph is not None
        self.full_runs += 1
        if self.graph is None:
            self.steps(self.k)
        else:
            self.graph.replay()


class _ForwardChunks(_Chunks):
    """Forward steps t0 .. t0+n-1. In: ``thal`` (input current). Out: ``cur``, ``v``, ``s``,
    ``b``. Carried: the spikes, membrane and adaptation of the step before."""

    def __init__(self, sim, k, shape, like):
        super().__init__(k, shape, like, ("thal", "cur", "v", "s", "b"), 3, sim.run.graphs)
        self.sim = sim

    def steps(self, n):
        s, v, b = self.carry
        for j in range(n):
            self.sim.step(self.thal[j], s, v, b, self.cur[j], self.v[j], self.s[j], self.b[j])
            s, v, b = self.s[j], self.v[j], self.b[j]
        for c, last in zip(self.carry, (s, v, b)):
            c.copy_(last)


def _simulate(sim, thal_current, s0, v0, b0, emit):
    """All T steps; ``emit(t0, n, chunks)`` receives the outputs of steps t0 .. t0+n-1 in
    ``chunks.cur[:n]``, ``.v[:n]``, ``.s[:n]``, ``.b[:n]`` (overwritten by the next chunk)."""
    T = thal_current.shape[0]
    ch = _ForwardChunks(sim, max(1, min(sim.run.chunk, T - 1)), tuple(s0.shape),
                        dict(dtype=s0.dtype, device=s0.device))
    # step 0 starts from the scalar b0 (published), so it runs on its own
    sim.step(thal_current[0], s0, v0, b0, ch.cur[0], ch.v[0], ch.s[0], ch.b[0])
    for c, first in zip(ch.carry, (ch.s[0], ch.v[0], ch.b[0])):
        c.copy_(first)
    emit(0, 1, ch)
    for t0 in range(1, T, ch.k):
        n = min(ch.k, T - t0)
        ch.thal[:n] = thal_current[t0:t0 + n]
        ch.run(n)
        emit(t0, n, ch)


class _BackwardChunks(_Chunks):
    """Backward steps t0+n-1 down to t0 (t0 >= 1). In: ``g_spikes``, ``sg`` (surrogate),
    ``cur``, ``b`` of those steps and ``s_prev``, ``v_prev``, ``b_prev`` of the steps before.
    Out: ``g_cur`` (dL/dI). Carried: dL/ds, alpha dL/dv and rho dL/db from the step after,
    and the tau gradients' sums (see ``_Backward.step``)."""

    def __init__(self, bwd, k, shape, like):
        super().__init__(k, shape, like, ("g_spikes", "sg", "cur", "b", "s_prev", "v_prev",
                                          "b_prev", "g_cur"), 5, bwd.run.graphs)
        self.bwd = bwd

    def steps(self, n):
        g = _carried(self.carry)
        for j in range(n - 1, -1, -1):
            self.bwd.step(g, self.g_spikes[j], self.sg[j], self.cur[j], self.b[j],
                          self.s_prev[j], self.v_prev[j], self.b_prev[j], self.g_cur[j])
        for c, name in zip(self.carry, _CARRIED):
            last = getattr(g, name)
            if c is not last:
                c.copy_(last)


# what the backward carries from step t+1 to step t (see ``_Backward.step``)
_CARRIED = ("s", "v_r", "b_r", "alpha", "rho")


def _carried(tensors):
    """The carried gradients as the namespace ``_Backward.step`` updates."""
    return SimpleNamespace(**dict(zip(_CARRIED, tensors)))


class _Backward:
    """BPTT through one step, populations in reverse (shared by the chunks and t = 0).
    ``w``, ``w_prev`` (N, N) [post, pre]: None without recurrence (see ``_Simulation``)."""

    def __init__(self, off, w, w_prev, alpha, rho, b0, beta, run: _Run):
        self.off, self.w, self.w_prev, self.run = off, w, w_prev, run
        self.alpha, self.oma, self.rho, self.omr = alpha, 1 - alpha, rho, 1 - rho
        self.b0, self.beta = b0, beta

    def step(self, g, g_spikes, sg, cur, b, s_prev, v_prev, b_prev, g_cur):
        """(batch, N) tensors of step t; ``b_prev`` may be the scalar b0 (t = 0).

        ``g`` carries, from step t+1 to step t: ``s`` (dL/ds_t), ``v_r`` (alpha dL/dv_{t+1}),
        ``b_r`` (rho dL/db_{t+1}) and the sums of the tau gradients ``alpha``, ``rho``.
        Writes dL/dI_t into ``g_cur``.
        """
        off = self.off
        gs = g.s
        gs.add_(g_spikes)
        gx = torch.empty_like(gs)
        gv = torch.empty_like(gs)
        for i in range(len(off) - 2, -1, -1):
            lo, hi = off[i], off[i + 1]
            gx_i, gv_i, gi_i = gx[:, lo:hi], gv[:, lo:hi], g_cur[:, lo:hi]
            torch.mul(gs[:, lo:hi], sg[:, lo:hi], out=gx_i)
            torch.add(gx_i, g.v_r[:, lo:hi], out=gv_i)
            torch.mul(gv_i, self.oma[lo:hi], out=gi_i)
            if i > 0:   # to this step's spikes of the populations before i
                gs[:, :lo].addmm_(gi_i, self.w[lo:hi, :lo])
        thr = self.b0 + self.beta * b
        gthr = -gx - gv * s_prev
        gb = self.beta * gthr + g.b_r
        g.alpha.add_(gv * (v_prev - cur))
        g.rho.add_(gb * (b_prev - s_prev))
        # dL/ds_{t-1}: reset and adaptation of this step, and its current via W_prev
        g.s = -gv * thr + gb * self.omr
        if self.w_prev is not None:
            g.s = torch.addmm(g.s, g_cur, self.w_prev)
        g.v_r = self.alpha * gv
        g.b_r = self.rho * gb


def _forward_saved(sim, thal_current, s0, v0, b0):
    """All T steps, keeping what the backward needs: spikes, input currents, membranes and
    adaptations, (T, batch, N) each."""
    like = dict(dtype=thal_current.dtype, device=thal_current.device)
    saved = [torch.empty(thal_current.shape, **like) for _ in range(4)]

    def emit(t0, k, ch):
        for out, buf in zip(saved, (ch.s, ch.cur, ch.v, ch.b)):
            out[t0:t0 + k] = buf[:k]

    _simulate(sim, thal_current, s0, v0, b0, emit)
    return saved


def _backward_through(bwd, g_spikes, saved, s0, v0, surrogate):
    """BPTT over all steps (``_forward_saved``'s outputs in ``saved``).

    Returns dL/dI (T, batch, N) and the carries at t = 0: ``g.s``, ``g.v_r`` (dL/ds0,
    dL/dv0) and ``g.alpha``, ``g.rho`` (tau gradients per lane, to be summed over it).
    """
    s_all, i_all, v_all, b_all = saved
    T = s_all.shape[0]
    sg_all = surrogate_derivative(v_all - (bwd.b0 + bwd.beta * b_all), *surrogate)   # (T, B, N)
    g_cur = torch.empty_like(i_all)
    ch = _BackwardChunks(bwd, max(1, min(bwd.run.chunk, T - 1)), tuple(s0.shape),
                         dict(dtype=s0.dtype, device=s0.device))
    for t1 in range(T, 1, -ch.k):             # steps t1-1 down to t0 >= 1, in chunks
        t0 = max(1, t1 - ch.k)
        k = t1 - t0
        for buf, src in ((ch.g_spikes, g_spikes[t0:t1]), (ch.sg, sg_all[t0:t1]),
                         (ch.cur, i_all[t0:t1]), (ch.b, b_all[t0:t1]),
                         (ch.s_prev, s_all[t0 - 1:t1 - 1]), (ch.v_prev, v_all[t0 - 1:t1 - 1]),
                         (ch.b_prev, b_all[t0 - 1:t1 - 1])):
            buf[:k] = src
        ch.run(k)
        g_cur[t0:t1] = ch.g_cur[:k]
    # t = 0 starts from the initial state and the scalar b0
    g = _carried(ch.carry)
    bwd.step(g, g_spikes[0], sg_all[0], i_all[0], b_all[0], s0, v0, bwd.b0, g_cur[0])
    return g_cur, g


class _CortexFunction(torch.autograd.Function):
    """Inputs: prev (N, N) bool (see ``_prev_mask``), w (N, N) signed recurrent weights
    [post, pre], thal_current (T, batch, N), alpha, rho (N,), v0, s0 (batch, N).
    Outputs: spikes (T, batch, N) and the membranes (T, batch, N) if recorded (else empty)."""

    @staticmethod
    def forward(ctx, opts, prev, w, thal_current, alpha, rho, v0, s0):
        off, b0, beta, record_mem, run, surrogate = opts
        w_prev = w * prev
        sim = _Simulation(off, w, w_prev.t(), alpha, rho, b0, beta, run)
        saved = _forward_saved(sim, thal_current, s0, v0, b0)
        ctx.consts = (off, b0, beta, run, surrogate)
        ctx.save_for_backward(prev, w, w_prev, alpha, rho, v0, s0, *saved)
        v_all = saved[2]
        mem = v_all if record_mem else torch.empty(0, dtype=w.dtype, device=w.device)
        ctx.mark_non_differentiable(mem)
        return saved[0], mem

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_spikes, _g_mem):
        prev, w, w_prev, alpha, rho, v0, s0, *saved = ctx.saved_tensors
        off, b0, beta, run, surrogate = ctx.consts
        bwd = _Backward(off, w, w_prev, alpha, rho, b0, beta, run)
        g_cur, g = _backward_through(bwd, g_spikes, saved, s0, v0, surrogate)
        s_all = saved[0]
        T, B, n = s_all.shape
        g_w = torch.mm(g_cur.reshape(T * B, n).t(), s_all.reshape(T * B, n)).masked_fill_(prev, 0)
        g_w_prev = torch.mm(g_cur[0].t(), s0)
        if T > 1:
            g_w_prev.addmm_(g_cur[1:].reshape(-1, n).t(), s_all[:-1].reshape(-1, n))
        g_w.add_(g_w_prev.masked_fill_(~prev, 0))
        return None, None, g_w, g_cur, g.alpha.sum(0), g.rho.sum(0), g.v_r, g.s


class _ThalamusFunction(torch.autograd.Function):
    """The VPM layer (no recurrence, one population) through the same chunked loops.
    Inputs: current (T, batch, 200), alpha, rho (200,), v0, s0 (batch, 200); output spikes."""

    @staticmethod
    def forward(ctx, consts, current, alpha, rho, v0, s0):
        b0, beta, run, surrogate = consts
        off = [0, current.shape[2]]
        sim = _Simulation(off, None, None, alpha, rho, b0, beta, run)
        saved = _forward_saved(sim, current, s0, v0, b0)
        ctx.consts = (off, b0, beta, run, surrogate)
        ctx.save_for_backward(alpha, rho, v0, s0, *saved)
        return saved[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_spikes):
        alpha, rho, v0, s0, *saved = ctx.saved_tensors
        off, b0, beta, run, surrogate = ctx.consts
        bwd = _Backward(off, None, None, alpha, rho, b0, beta, run)
        g_cur, g = _backward_through(bwd, g_spikes, saved, s0, v0, surrogate)
        return None, g_cur, g.alpha.sum(0), g.rho.sum(0), g.v_r, g.s


def run_thalamus(net: Network, current: torch.Tensor, state, options=None) -> torch.Tensor:
    """The 200 VPM units over the sequence: current (T, batch, 200) -> spikes (T, batch, 200).

    Without a gradient only the spikes are kept (no currents, membranes, adaptations).
    """
    run = _run_options(options)
    dtype = current.dtype
    b0, beta = net.init_b, net.beta
    alpha, rho = decay_factors(net.thal_tau_m, net.thal_tau_adp)
    v0, s0 = state.mem_thal.to(dtype), state.spk_thal.to(dtype)
    inputs = (current, alpha, rho, v0, s0)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _ThalamusFunction.apply((b0, beta, run, net.surrogate), *inputs)
    with torch.no_grad():
        sim = _Simulation([0, current.shape[2]], None, None, alpha, rho, b0, beta, run)
        spikes = torch.empty(current.shape, dtype=dtype, device=current.device)

        def emit(t0, k, ch):
            spikes[t0:t0 + k] = ch.s[:k]

        _simulate(sim, current, s0, v0, b0, emit)
        return spikes


def run_cortex(net: Network, thal_spikes: torch.Tensor, state, record_spikes: bool = False,
               record_mem: bool = False, options=None):
    """Simulate the 13 cortical populations (the contract of :mod:`rsnn_bfd.network.engines`).

    thal_spikes: (T, batch, 200) VPM spikes; state: the model's InitialState.
    Returns ``(logits (T-1, batch, 3), spikes (T, batch, 4218) or None,
    mem (T, batch, 4218) or None)``.
    """
    run = _run_options(options)
    off = net.offsets
    dtype = net.tau_m.dtype
    w = signed_recurrent(net)
    thal_current = thal_spikes.to(dtype) @ thalamic_effective(net).t()
    alpha, rho = decay_factors(net.tau_m, net.tau_adp)
    v0, s0 = state.mem.to(dtype), state.spk.to(dtype)
    b0, beta = net.init_b, net.beta
    prev = _prev_mask(off, w.device)
    inputs = (w, thal_current, alpha, rho, v0, s0)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        spikes, mem = _CortexFunction.apply((off, b0, beta, record_mem, run, net.surrogate), prev,
                                             *inputs)
        logits = readout_logits(net, spikes[1:])    # T = 1: no readout step, (0, B, 3)
        return logits, (spikes if record_spikes else None), (mem if record_mem else None)
    with torch.no_grad():
        return _infer(net, prev, w, thal_current, alpha, rho, v0, s0, record_spikes,
                      record_mem, run)


def _infer(net, prev, w, thal_current, alpha, rho, v0, s0, record_spikes, record_mem, run):
    """No-grad forward: the readout is applied per chunk, so memory does not grow with T
    beyond what is recorded."""
    T, B, n = thal_current.shape
    b0 = net.init_b
    sim = _Simulation(net.offsets, w, (w * prev).t(), alpha, rho, b0, net.beta, run)
    like = dict(dtype=w.dtype, device=w.device)
    logits = torch.empty((max(T - 1, 0), B, net.n_classes), **like)
    spikes = torch.empty((T, B, n), **like) if record_spikes else None
    mems = torch.empty((T, B, n), **like) if record_mem else None

    def emit(t0, k, ch):
        first = 1 if t0 == 0 else 0          # the readout reads t = 1..T-1
        if k > first:
            logits[t0 + first - 1:t0 + k - 1] = readout_logits(net, ch.s[first:k])
        if record_spikes:
            spikes[t0:t0 + k] = ch.s[:k]
        if record_mem:
            mems[t0:t0 + k] = ch.v[:k]

    _simulate(sim, thal_current, s0, v0, b0, emit)
    return logits, spikes, mems
