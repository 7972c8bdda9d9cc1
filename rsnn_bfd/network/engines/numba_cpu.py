"""The ``numba`` engine (CPU): the whole sequence in one custom autograd Function with a
hand-written BPTT, event-driven numba kernels.

Same semantics as ``engines.reference`` (the specification), much faster:

* The recurrent weights are gathered once per forward into sparse form, CSC by presynaptic
  column (each neuron's outgoing connections). Each neuron's connections are split at the population
  boundary that separates "this step's spikes" (presynaptic population before the
  postsynaptic one) from "previous step's spikes", so the Gauss-Seidel order is exact.
  Structurally empty blocks (L2/3 -> L4) simply have no entries.
* CPU forward: numba, parallel over batch blocks of at most 16 lanes (at least one per
  thread; a block's currents stay in the L2 cache). Per step the thalamic and recurrent
  input currents are accumulated from the outgoing connections of *active* neurons only
  (scatter; cheap while a few per cent spike). When the previous chunk fired
  more (``GATHER_RATE``, by block width), the recurrent input is instead gathered over each
  neuron's incoming connections for all lanes of a block at once (``_fwd_chunk_gather``,
  blocks of up to 128 lanes, spikes kept as bytes), whose cost does not grow with the rate;
  its connections are ordered as the scatter adds them, so the two are bit-identical
  (``EngineOptions.recurrent_input`` forces either).
* CPU backward, chunk by chunk in reverse time:
  - membrane and adaptation of the chunk are recomputed from the checkpoint (numba, the
    forward's operations, so bit-identical; each thread a range of neurons, step by step,
    so that the arrays are read in memory order), and the surrogate derivatives exponentiated by
    torch's vectorised exp;
  - then one numba kernel runs the chunk's steps in reverse, parallel over batch blocks of
    at most 64 lanes (each thread owns its lanes of every gradient, so the threads never
    wait for each other). Per step, populations in reverse order: each neuron's spike
    gradient ``W^T dL/dI`` through its connections to later populations, gathered over
    its outgoing connections (the lanes of a block in registers), then the population's
    neuron gradient, carries, reset and adaptation paths and tau gradients; after the
    last population the same gather through the other connections gives the previous
    step's spike gradient;
  - in the same pass over a neuron's connections, the weight gradients at connected
    entries are accumulated event-driven, only in the lanes where it spiked.
* Saved for the backward: spikes (uint8) and input currents for all steps, plus the
  membrane / adaptation state every ``options.chunk`` steps (default 32).
* The readout's logits are part of the Function (the model applies the softmax). The
  readout has no nonlinearity between its two layers, so logits = M x + c with M = w2 w1
  (3 x 3606) and c = w2 b1 + b2: the forward kernel adds the rows of M^T of the readout
  neurons that spiked (event-driven, spikes are binary for t >= 1); the backward takes
  dL/dlogits of every step, adds the spike gradient M^T dL/dlogits and accumulates
  G = sum_t,b dL/dlogits x^T event-driven, from which gw1 = w2^T G, gw2 = G w1^T + gb2 b1^T,
  gb1 = w2^T gb2. No (T, 128, B) hidden layer is formed or stored.
* The recorded spikes are an output with a gradient: a loss that reads them (the firing-rate
  regulariser, ``--rate-reg``) passes dL/d(spikes), which the backward adds per step to the
  spike gradient it carries, before the readout's.
* The VPM layer (200 units, no recurrence) is a second Function, parallel over the batch.
* Subnormal adaptation values are flushed to zero: float32 ``b`` of a silent neuron decays
  below the smallest normal float after ~430 steps, and arithmetic on subnormals is many
  times slower on the CPU. The threshold ``b0 + beta * b`` absorbs such a ``b`` entirely, so
  spikes and membranes are unchanged (float64 never gets there in practice).
* Inference (no grad): the forward runs in chunks of steps and keeps nothing per step
  except what the caller asks to record.
* Other devices (CUDA): the same algorithm with dense torch ops is the ``torch`` engine.

Internal layout is (T, N, B): batch innermost, so kernels vectorise over the batch.
Connection indices are uint16 (4218 neurons): the kernels stream every connection's index at
every step. What bounds each kernel on a 2-core CPU is measured in docs/performance.md
(``benchmarks/roofline.py``, ``benchmarks/profile_step.py``).
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch
from numba import get_num_threads

from rsnn_bfd.network.engines import EngineOptions, Network
from rsnn_bfd.network.engines.numba_backward import (BWD_LANES, _bwd_chunk, _recompute_chunk,
                                                     _thalamus_backward)
from rsnn_bfd.network.engines.numba_forward import (GATHER_LANES, _fwd_chunk, _fwd_chunk_gather,
                                                    _thalamus_forward)
from rsnn_bfd.network.engines.numba_structure import _structure
from rsnn_bfd.network.neuron import decay_factors

CHUNK = 32   # default steps per chunk (the backward's checkpoint interval; EngineOptions.chunk)
# Backward gradients smaller than GRAD_FLOOR times the smallest normal float are dropped
# (2^-100 in float32, against typical gradients of 1e-7), so that their products with
# weights, decay factors and surrogate derivatives of 2^-26 or more stay normal numbers.
# The backward's products run on numba's worker threads, which do not flush subnormals; the
# subnormal products of fading gradients made them 1.5 times slower on a trained network.
GRAD_FLOOR = 2.0 ** 26
# Firing rate from which the forward gathers the recurrent input instead of scattering it
# (EngineOptions.recurrent_input 'auto'), by the lane width of the gather's blocks. The
# scatter's cost grows with the rate, the gather's with the block's width; the break-even
# points were measured with benchmarks/bench_forward.py (docs/performance.md).
GATHER_RATE = {8: 0.15, 16: 0.07, 32: 0.03, 64: 0.03, 128: 0.03}
# lanes per batch block of the scattering forward (see _scatter_blocks)
SCATTER_LANES = 16


def _fresh(x):
    """A new C-contiguous copy (``contiguous()`` may return a view for size-1 dims)."""
    return torch.empty(x.shape, dtype=x.dtype).copy_(x)


class _FlushDenormal:
    """Flush-to-zero / denormals-are-zero on this thread for the duration of the block
    (torch's CPU kernels, e.g. the backward's exponentials); restores the previous setting.
    Subnormal numbers only arise as gradients fade through time; treating them as zero
    changes nothing measurable and avoids a many-fold slowdown."""

    def __enter__(self):
        probe = torch.tensor([1e-40], dtype=torch.float32)          # subnormal in float32
        self.was_on = bool((probe * 1.0).item() == 0.0)
        torch.set_flush_denormal(True)

    def __exit__(self, *exc):
        if not self.was_on:
            torch.set_flush_denormal(False)


def _backward_consts(b0, beta, surrogate, dtype, *extra) -> torch.Tensor:
    """The backward kernels' constants: ``[b0, beta, 2 sigma^2, sqrt(2 pi) sigma, scale,
    *extra]`` (the surrogate derivative is ``exp(-x^2 / (2 sigma^2)) / (sqrt(2 pi) sigma) *
    scale``; ``surrogate``: (sigma, scale, cutoff), the cutoff applied by the callers)."""
    sig, scale = surrogate[:2]
    return torch.tensor([b0, beta, 2 * sig ** 2, math.sqrt(2 * math.pi) * sig,
                         scale, *extra], dtype=dtype)


def _gathers(mode: str, rate: float | None, width: int) -> bool:
    """Whether the forward gathers the recurrent input of a chunk (``EngineOptions
    .recurrent_input``); ``auto`` gathers when the previous chunk fired at least at
    ``GATHER_RATE[width]`` (the first chunk, whose previous state is the initial one,
    scatters)."""
    if mode != "auto":
        return mode == "gather"
    return rate is not None and rate >= GATHER_RATE[width]


def _lane_blocks(batch: int, max_lanes: int) -> int:
    """How many batch blocks a kernel runs: at least one per thread (as many as there are
    lanes), and at most ``max_lanes`` lanes each."""
    return max(1, min(get_num_threads(), batch), -(-batch // max_lanes))


def _gather_blocks(batch: int) -> tuple[int, int]:
    """Batch blocks of the gathering forward and their lane width: one block per thread
    and at most GATHER_LANES lanes each; the width is the smallest of 8, 16, 32, 64, 128
    that holds a block."""
    nblocks = _lane_blocks(batch, GATHER_LANES)
    widest = -(-batch // nblocks)
    return nblocks, next(w for w in (8, 16, 32, 64, 128) if w >= widest)


def _nblocks(batch):
    """Batch blocks of the backward: one per thread, and at most BWD_LANES lanes each."""
    return _lane_blocks(batch, BWD_LANES)


def _scatter_blocks(batch):
    """Batch blocks of the scattering forward: at least one per thread, and at most
    SCATTER_LANES lanes each, so that a block's input currents (4218 x 16 float32, 270 KB)
    stay in the L2 cache while spikes add to them at random rows; a thread runs its blocks
    one after the other. Each lane receives the same additions in the same order however
    the lanes are blocked."""
    return _lane_blocks(batch, SCATTER_LANES)


# ---------------------------------------------------------------------------- autograd Function
class _CortexFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, st, opts, vals, tvals, alpha, rho, w1, b1, w2, b2, thal, v0, s0):
        record_spikes, record_mem, need_grad, b0, beta, K, mode, surrogate = opts
        dtype = vals.dtype
        T, B = thal.shape[0], thal.shape[1]
        n = st.n
        nblk = _scatter_blocks(B)
        cval = vals.detach()[st.cperm].contiguous()
        oma, omr = 1 - alpha, 1 - rho
        consts = torch.tensor([b0, beta, torch.finfo(dtype).tiny], dtype=dtype)
        thal_t = _fresh(thal.detach().permute(0, 2, 1))                # (T, 200, B)
        v = _fresh(v0.detach().t())                                   # (N, B) own copies:
        sp = _fresh(s0.detach().t())                                  # updated in place
        bb = torch.full_like(v, b0)
        keep_s = need_grad or record_spikes
        s_all = torch.empty((T if keep_s else min(K, T), n, B), dtype=torch.uint8)
        i_all = torch.empty((T, n, B) if need_grad else (1, 1, 1), dtype=dtype)
        m_all = torch.empty((T, n, B) if record_mem else (1, 1, 1), dtype=dtype)
        nck = (T + K - 1) // K
        vck = torch.empty((nck, n, B) if need_grad else (1, 1, 1), dtype=dtype)
        bck = torch.empty_like(vck)
        n_cls = w2.shape[0]
        logits = torch.empty((T, B, n_cls), dtype=dtype)
        # the readout has no nonlinearity between its two layers: logits = M x + c with
        # M = w2 w1 (3 x 3606), c = w2 b1 + b2; computed event-driven in the kernel
        m_ro_t = torch.matmul(w2.detach(), w1.detach()).t().contiguous()   # (3606, 3)
        c_ro = (torch.matmul(w2.detach(), b1.detach()) + b2.detach()).contiguous()
        a_np, oma_np, r_np, omr_np = (x.detach().contiguous().numpy() for x in (alpha, oma, rho, omr))
        tv_np, cv_np = tvals.detach().numpy(), cval.numpy()
        gblk, gwidth = _gather_blocks(B)
        gv_np = None           # the weights in the gather's order, made when first needed
        rate = None            # the previous chunk's firing rate
        for c in range(nck):
            t0, t1 = c * K, min(T, (c + 1) * K)
            if need_grad:
                vck[c].copy_(v)
                bck[c].copy_(bb)
            s_c = s_all[t0:t1] if keep_s else s_all[:t1 - t0]
            i_c = i_all[t0:t1] if need_grad else i_all
            m_c = m_all[t0:t1] if record_mem else m_all
            # steps [t0, ts) scatter the recurrent input and [ts, t1) gather it; the gather
            # needs binary spikes before its first step, so step 0 always scatters
            ts = max(t0, 1) if _gathers(mode, rate, gwidth) else t1
            for a, b in ((t0, ts), (ts, t1)):
                if a >= b:
                    continue
                part = slice(a - t0, b - t0)
                state_out = (consts.numpy(), st.ro_pos, m_ro_t.numpy(), c_ro.numpy(), v.numpy(),
                             bb.numpy(), sp.numpy(), (i_c[part] if need_grad else i_c).numpy(),
                             s_c[part].numpy(), (m_c[part] if record_mem else m_c).numpy(),
                             logits[a:b].numpy(), need_grad, record_mem)
                if b <= ts:
                    _fwd_chunk(thal_t[a:b].numpy(), st.tcolptr, st.trow, tv_np, st.colptr,
                               st.crow, cv_np, st.csplit, st.off, a_np, oma_np, r_np, omr_np,
                               *state_out, nblk)
                else:
                    if gv_np is None:
                        gv_np = vals.detach()[st.gperm].contiguous().numpy()
                    _fwd_chunk_gather(thal_t[a:b].numpy(), st.tcolptr, st.trow, tv_np,
                                      st.rowptr, st.gcol, gv_np, st.off, a_np, oma_np, r_np,
                                      omr_np, *state_out, gblk, width=gwidth)
            # the chunk's firing rate (spikes are binary from step 1 on); numpy counts the
            # bytes about 30 times faster than torch's int64 sum
            rate = np.count_nonzero(s_c[:t1 - t0].numpy()) / ((t1 - t0) * n * B)
        # the readout reads t >= 1 (the softmax is the model's, outside the Function)
        out = logits[1:]
        if need_grad:
            ctx.st, ctx.T, ctx.B, ctx.b0, ctx.beta, ctx.K = st, T, B, b0, beta, K
            ctx.surrogate = surrogate
            ctx.save_for_backward(vals, tvals, alpha, rho, w1, b1, w2, thal_t, s0, s_all, i_all,
                                  vck, bck)
        spikes = s_all.permute(0, 2, 1).to(dtype, memory_format=torch.contiguous_format) if record_spikes else torch.empty(0, dtype=dtype)
        mem = m_all.permute(0, 2, 1).contiguous() if record_mem else torch.empty(0, dtype=dtype)
        # the recorded spikes are differentiable (a loss may read them: --rate-reg); the
        # membranes are not
        ctx.mark_non_differentiable(mem)
        return out, spikes, mem

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout, gspikes, _gm):
        with _FlushDenormal():
            return _CortexFunction._backward(ctx, gout, gspikes)

    @staticmethod
    def _backward(ctx, gout, gspikes=None):
        (vals, tvals, alpha, rho, w1, b1, w2, thal_t, s0, s_all, i_all, vck,
         bck) = (t.detach() for t in ctx.saved_tensors)
        st, T, B, K = ctx.st, ctx.T, ctx.B, ctx.K
        dtype, n = vals.dtype, st.n
        ro = st.readout_index
        # readout backward. With gl = dL/dlogits, x the readout spikes, h = w1 x + b1:
        #   dL/dx = M^T gl (M = w2 w1),  gw1 = w2^T G,  gw2 = G w1^T + gb2 b1^T,
        #   gb1 = w2^T gb2,  where G = sum_{t,b} gl x^T (3 x 3606) and gb2 = sum gl.
        gl_all = torch.zeros((T, B, w2.shape[0]), dtype=dtype)
        gl_all[1:] = gout                                               # (T-1, B, 3)
        # dL/d(spikes) (T, B, N) when the loss reads the recorded spikes, as (T, N, B)
        has_gsp = gspikes is not None and gspikes.numel() > 0
        gsp_all = (gspikes.to(dtype).permute(0, 2, 1).contiguous() if has_gsp
                   else torch.zeros((1, 1, 1), dtype=dtype))
        m_ro_t = torch.matmul(w2, w1).t().contiguous()                 # (3606, 3)
        # per batch block (one per thread): its lanes of the carried gradients and scratch,
        # and its own accumulators of the parameter gradients, summed at the end
        nblk = _nblocks(B)
        bounds = [(b * B // nblk, (b + 1) * B // nblk) for b in range(nblk)]
        # the backward's lane loops run over a fixed width (compiled per width): the
        # smallest of 8, 16, 32, 64 that holds a block; lanes past the block's stay zero
        width = next(w for w in (8, 16, 32, BWD_LANES) if w >= max(hi - lo for lo, hi in bounds))
        gs_b, gv_b, gb_b, gi_b, gt_b = (torch.zeros((nblk, n, width), dtype=dtype)
                                        for _ in range(5))
        gw = torch.zeros((nblk, st.nnz), dtype=dtype)                   # CSC order
        gwth = torch.zeros((nblk, len(st.trow)), dtype=dtype)
        g_ro = torch.zeros((nblk, len(ro), w2.shape[0]), dtype=dtype)  # G^T per block
        galpha_b = torch.zeros((nblk, n), dtype=dtype)
        grho_b = torch.zeros((nblk, n), dtype=dtype)
        gthal = torch.empty_like(thal_t)
        oma, omr = 1 - alpha, 1 - rho
        a_np, oma_np, r_np, omr_np = (x.contiguous().numpy() for x in (alpha, oma, rho, omr))
        tiny = torch.finfo(dtype).tiny
        consts = _backward_consts(ctx.b0, ctx.beta, ctx.surrogate, dtype, 1.0, tiny,
                                  GRAD_FLOOR * tiny)
        cutoff = ctx.surrogate[2] if len(ctx.surrogate) > 2 else 0.0   # > 0: sparse backward
        consts_np = consts.numpy()
        cval_np = vals[st.cperm].contiguous().numpy()                  # CSC order
        blocks_np = [x.numpy() for x in (gs_b, gv_b, gb_b, gi_b, gt_b, gw, gwth, g_ro,
                                         galpha_b, grho_b)]
        kb = min(K, T)
        vbuf, bbuf, sg = (torch.empty((kb, n, B), dtype=dtype) for _ in range(3))
        s0_t = _fresh(s0.t())
        nck = (T + K - 1) // K
        for c in range(nck - 1, -1, -1):
            t0, t1 = c * K, min(T, (c + 1) * K)
            k = t1 - t0
            s_prev0 = s0_t if t0 == 0 else s_all[t0 - 1].to(dtype)
            s_c, i_c = s_all[t0:t1], i_all[t0:t1]
            _recompute_chunk(i_c.numpy(), s_c.numpy(), s_prev0.numpy(), vck[c].numpy(),
                             bck[c].numpy(), a_np, oma_np, r_np, omr_np, consts_np,
                             vbuf[:k].numpy(), bbuf[:k].numpy(), sg[:k].numpy(),
                             get_num_threads())
            # the surrogate derivative exp(y) * scale / (sqrt(2 pi) sigma), vectorised; a
            # truncated one is zero where |x| > cutoff sigma, i.e. y < -cutoff^2 / 2
            sg_k = sg[:k]
            if cutoff > 0:
                sg_k.masked_fill_(sg_k < -cutoff ** 2 / 2, -math.inf)
            torch.exp(sg_k, out=sg_k)
            sg_k.mul_(consts[4] / consts[3])
            gsp_c = gsp_all[t0:t1] if has_gsp else gsp_all
            _bwd_chunk(t0, gl_all[t0:t1].numpy(), gsp_c.numpy(), has_gsp, sg_k.numpy(),
                       s_c.numpy(), s_prev0.numpy(),
                       vbuf[:k].numpy(), bbuf[:k].numpy(), vck[c].numpy(), bck[c].numpy(),
                       i_c.numpy(), thal_t[t0:t1].numpy(), st.off, st.colptr, st.crow,
                       cval_np, st.csplit, st.tcolptr, st.trow, tvals.contiguous().numpy(),
                       st.ro_index, m_ro_t.numpy(), a_np, oma_np, r_np, omr_np, consts_np,
                       *blocks_np, gthal[t0:t1].numpy(), nblk, cutoff > 0, width=width)
        # the gradients of the initial state, from the blocks' lanes
        gs, gv_c = torch.empty((n, B), dtype=dtype), torch.empty((n, B), dtype=dtype)
        for b, (lo, hi) in enumerate(bounds):
            gs[:, lo:hi] = gs_b[b, :, :hi - lo]
            gv_c[:, lo:hi] = gv_b[b, :, :hi - lo]
        galpha, grho = galpha_b.sum(0), grho_b.sum(0)
        g_ro = g_ro.sum(0).t()                                          # (3, 3606)
        gb2 = gl_all.sum((0, 1))
        gw1 = torch.matmul(w2.t(), g_ro)
        gb1 = torch.matmul(w2.t(), gb2)
        gw2 = torch.matmul(g_ro, w1.t()) + gb2[:, None] * b1[None, :]
        gvals = torch.empty(st.nnz, dtype=dtype)
        gvals[st.cperm] = gw.sum(0)
        return (None, None, gvals, gwth.sum(0), galpha, grho, gw1, gb1, gw2, gb2,
                gthal.permute(0, 2, 1), gv_c.t(), gs.t())


class _ThalamusFunction(torch.autograd.Function):
    """The VPM layer as one autograd Function (numba forward, hand-written BPTT).

    Inputs: current (T, B, 200), alpha, rho (200,), v0, s0 (B, 200); output spikes (T, B, 200).
    """

    @staticmethod
    def forward(ctx, b0, beta, surrogate, current, alpha, rho, v0, s0):
        dtype = current.dtype
        cur = _fresh(current.detach())
        v0, s0 = _fresh(v0.detach()), _fresh(s0.detach())
        alpha, rho = alpha.detach().contiguous(), rho.detach().contiguous()
        oma, omr = 1 - alpha, 1 - rho
        s_out, v_out, b_out = (torch.empty_like(cur) for _ in range(3))
        consts = torch.tensor([b0, beta, torch.finfo(dtype).tiny], dtype=dtype)
        _thalamus_forward(cur.numpy(), v0.numpy(), s0.numpy(), alpha.numpy(), oma.numpy(),
                          rho.numpy(), omr.numpy(), consts.numpy(), s_out.numpy(),
                          v_out.numpy(), b_out.numpy())
        ctx.consts = (b0, beta, surrogate)
        ctx.save_for_backward(cur, s_out, v_out, b_out, v0, s0, alpha, rho)
        return s_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_spikes):
        cur, s_out, v_out, b_out, v0, s0, alpha, rho = ctx.saved_tensors
        b0, beta, surrogate = ctx.consts
        dtype = cur.dtype
        cutoff = surrogate[2] if len(surrogate) > 2 else 0.0
        consts = _backward_consts(b0, beta, surrogate, dtype,   # consts[5]: (cutoff sigma)^2
                                  (cutoff * surrogate[0]) ** 2 if cutoff > 0 else math.inf)
        g_cur = torch.empty_like(cur)
        gv0, gs0 = torch.empty_like(v0), torch.empty_like(s0)
        galpha, grho = torch.zeros_like(v0), torch.zeros_like(v0)
        _thalamus_backward(_fresh(g_spikes.to(dtype)).numpy(), cur.numpy(), s_out.numpy(),
                           v_out.numpy(), b_out.numpy(), v0.numpy(), s0.numpy(),
                           alpha.numpy(), (1 - alpha).numpy(), rho.numpy(),
                           (1 - rho).numpy(), consts.numpy(), g_cur.numpy(), gv0.numpy(),
                           gs0.numpy(), galpha.numpy(), grho.numpy())
        return None, None, None, g_cur, galpha.sum(0), grho.sum(0), gv0, gs0


# ---------------------------------------------------------------------------- entry points
_ANNOUNCED = False


def _announce_compilation() -> None:
    """Say once per process when the CPU kernels are not in numba's on-disk cache yet: their
    first compilation takes a minute or more, which would otherwise look like a hang."""
    global _ANNOUNCED
    if _ANNOUNCED:
        return
    _ANNOUNCED = True
    try:
        cached = all(os.path.exists(k._cache._cache_file._index_path)
                     for k in (_fwd_chunk, _thalamus_forward))   # used by every forward
    except AttributeError:   # another numba version keeps its cache elsewhere: say nothing
        return
    if not cached:
        msg = ("compiling the numba CPU kernels (first run only: a minute or more; numba caches "
               "them on disk)")
        try:   # on a line of its own, above any progress bar
            from tqdm import tqdm
            tqdm.write(msg, file=sys.stderr)
        except ImportError:
            print(msg, file=sys.stderr, flush=True)


def _chunk(options) -> int:
    return int((options or EngineOptions()).chunk or CHUNK)


def run_thalamus(net: Network, current: torch.Tensor, state, options=None) -> torch.Tensor:
    """The 200 VPM units over the sequence: current (T, batch, 200) -> spikes (T, batch, 200),
    one numba Function (CPU tensors)."""
    _announce_compilation()
    dtype = current.dtype
    alpha, rho = decay_factors(net.thal_tau_m, net.thal_tau_adp)
    return _ThalamusFunction.apply(net.init_b, net.beta, net.surrogate, current, alpha, rho,
                                   state.mem_thal.to(dtype), state.spk_thal.to(dtype))


def run_cortex(net: Network, thal_spikes: torch.Tensor, state, record_spikes: bool = False,
               record_mem: bool = False, options=None):
    """Simulate the 13 cortical populations over the sequence (the contract of :mod:`rsnn_bfd.network.engines`).

    thal_spikes: (T, batch, 200) VPM spikes; state: the model's InitialState.
    Returns ``(logits (T-1, batch, 3), spikes (T, batch, 4218) or None,
    mem (T, batch, 4218) or None)``.
    """
    if thal_spikes.device.type != "cpu":
        raise ValueError(f"the numba engine runs on the CPU only, not on {thal_spikes.device}")
    st = _structure(net)
    dtype = net.tau_m.dtype
    # signed, masked weights at the connected entries only: weight * mask * sign[pre]
    vals = net.recurrent.reshape(-1)[st.rec_flat] * net.pre_sign.to(dtype)[st.col_t]
    tvals = net.thalamic.reshape(-1)[st.th_flat]
    alpha, rho = decay_factors(net.tau_m, net.tau_adp)
    inputs = (vals, tvals, alpha, rho, *net.readout,
              thal_spikes.to(dtype), state.mem.to(dtype), state.spk.to(dtype))
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    opts = (record_spikes, record_mem, need_grad, net.init_b, net.beta, _chunk(options),
            (options or EngineOptions()).recurrent_input, tuple(net.surrogate))
    if need_grad:
        out, spikes, mem = _CortexFunction.apply(st, opts, *inputs)
    else:
        with torch.no_grad():
            out, spikes, mem = _CortexFunction.forward(_NoCtx(), st, opts,
                                                       *(t.detach() for t in inputs))
    return out, (spikes if record_spikes else None), (mem if record_mem else None)


class _NoCtx:
    """Stand-in context for the inference path (no autograd graph)."""

    def mark_non_differentiable(self, *args):
        pass
