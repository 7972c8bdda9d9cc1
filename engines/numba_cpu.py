"""The ``numba`` engine (CPU): the whole sequence in one custom autograd Function with a
hand-written BPTT, event-driven numba kernels.

Same semantics as ``engines.reference`` (the specification), much faster:

* The recurrent weights are gathered once per forward into sparse form, CSC by presynaptic
  column (each neuron's outgoing connections). Each neuron's connections are split at the population
  boundary that separates "this step's spikes" (presynaptic population before the
  postsynaptic one) from "previous step's spikes", so the Gauss-Seidel order is exact.
  Structurally empty blocks (L2/3 -> L4) simply have no entries.
* CPU forward: numba, parallel over batch blocks (one per thread). Per step the thalamic and
  recurrent input currents are accumulated from the outgoing connections of *active*
  neurons only (scatter; cheap while a few per cent spike). When the previous chunk fired
  more (``GATHER_RATE``, by block width), the recurrent input is instead gathered over each
  neuron's incoming connections for all lanes of a block at once (``_fwd_chunk_gather``,
  blocks of up to 128 lanes, spikes kept as bytes), whose cost does not grow with the rate;
  its connections are ordered as the scatter adds them, so the two are bit-identical
  (``EngineOptions.recurrent_input`` forces either).
* CPU backward, chunk by chunk in reverse time:
  - membrane and adaptation of the chunk are recomputed from the checkpoint (numba, the
    forward's operations, so bit-identical), and the surrogate derivatives exponentiated by
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
"""
from __future__ import annotations

import math
import os
import sys
import weakref

import llvmlite.binding as llvm
import llvmlite.ir
import numba
import numpy as np
import torch
from numba import get_num_threads, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from engines import EngineOptions, Network
from neuron import SURROGATE_SCALE, SURROGATE_SIGMA, decay_factors

CHUNK = 32   # default steps per chunk (the backward's checkpoint interval; EngineOptions.chunk)
# lanes per batch block of the backward: at most 64 (the accumulators live in registers)
BWD_LANES = 64
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
# lanes per batch block of the gathering forward: at most 128 (eight AVX-512 registers of
# float32 accumulators; the bytes of 128 lanes of 4218 neurons' spikes fit the L2 cache)
GATHER_LANES = 128


# ---------------------------------------------------------------------------- numba kernels
@intrinsic
def _stack_ptr(typingctx, size, dtype):
    """A pointer to ``size`` (a compile-time constant) elements of ``dtype`` on the stack.
    Wrapped by ``numba.carray``, small accumulators live there, which LLVM keeps in
    registers; a heap array would be reloaded and stored at every addition."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    n_ = size.literal_value

    def impl(context, builder, sig, args):
        ty = context.get_value_type(dtype.dtype)
        arr = cgutils.alloca_once(builder, llvmlite.ir.ArrayType(ty, n_))
        return builder.bitcast(arr, ty.as_pointer())
    return types.CPointer(dtype.dtype)(size, dtype), impl


@njit(inline="always")
def _flush(x, floor):
    """``x``, or zero where ``|x| < floor``. The zero is of x's type (``x - x``): a float64
    literal would turn the float32 arithmetic that follows into float64, unlike the
    reference, and stop it from vectorising."""
    return x if abs(x) >= floor else x - x


@njit(inline="always")
def _active_lanes(row, lanes, xs):
    """Collect the batch lanes where ``row`` (one neuron's values over a batch block) is
    nonzero: their positions into ``lanes`` and values into ``xs``; returns their count."""
    cnt = 0
    for j in range(row.shape[0]):
        x = row[j]
        if x != 0:
            lanes[cnt] = j
            xs[cnt] = x
            cnt += 1
    return cnt


@njit(inline="always")
def _scatter_edges(e0, e1, rows, vals, lanes, xs, cnt, acc):
    """Event-driven input current: for the connections e0:e1 of one presynaptic neuron,
    ``acc[rows[e], lanes[q]] += vals[e] * xs[q]`` over its ``cnt`` active lanes.

    One, two or three active lanes (most of them, at a few per cent firing and 64 lanes
    per block) get loops of their own, without the inner loop's overhead; every element
    of ``acc`` receives the same additions in the same order either way."""
    if cnt == 0:
        return
    if cnt == 1:
        l0, x0 = lanes[0], xs[0]
        for e in range(e0, e1):
            acc[rows[e], l0] += vals[e] * x0
    elif cnt == 2:
        l0, x0, l1, x1 = lanes[0], xs[0], lanes[1], xs[1]
        for e in range(e0, e1):
            acc_r = acc[rows[e]]
            w = vals[e]
            acc_r[l0] += w * x0
            acc_r[l1] += w * x1
    elif cnt == 3:
        l0, x0, l1, x1, l2, x2 = lanes[0], xs[0], lanes[1], xs[1], lanes[2], xs[2]
        for e in range(e0, e1):
            acc_r = acc[rows[e]]
            w = vals[e]
            acc_r[l0] += w * x0
            acc_r[l1] += w * x1
            acc_r[l2] += w * x2
    else:
        for e in range(e0, e1):
            acc_r = acc[rows[e]]
            w = vals[e]
            for q in range(cnt):
                acc_r[lanes[q]] += w * xs[q]


@njit(inline="always")
def _update_population(u0, u1, tt, lo, hi, acc, alpha, oma, rho, omr, consts, v, bb, sp,
                       s_out, i_out, m_out, save_i, save_m):
    """One step of the neurons u0:u1 (one population) in the batch lanes lo:hi, from their
    input currents ``acc[u, j]`` (lane ``lo + j``); updates v, bb, sp (N, B) in place and
    writes the step's spikes (and, if asked, currents and membranes). The operations of
    ``neuron.alif_step``; the previous "spike" may be non-binary (step 0)."""
    b0, beta, tiny = consts[0], consts[1], consts[2]
    nbl = hi - lo
    for u in range(u0, u1):
        a, om_a, r_, om_r = alpha[u], oma[u], rho[u], omr[u]
        acc_r, sp_r, bb_r, v_r = acc[u], sp[u, lo:hi], bb[u, lo:hi], v[u, lo:hi]
        so_r = s_out[tt, u, lo:hi]
        for j in range(nbl):
            cur = acc_r[j]
            s_prev = sp_r[j]
            bn = r_ * bb_r[j] + om_r * s_prev
            bn = _flush(bn, tiny)     # flush subnormals (see _fwd_chunk's docstring)
            thr = b0 + beta * bn
            vn = v_r[j] * a + om_a * cur - thr * s_prev
            v_r[j] = vn
            bb_r[j] = bn
            spk = vn - thr > 0
            sp_r[j] = spk
            so_r[j] = spk
        if save_i:
            io_r = i_out[tt, u, lo:hi]
            for j in range(nbl):
                io_r[j] = acc_r[j]
        if save_m:
            mo_r = m_out[tt, u, lo:hi]
            for j in range(nbl):
                mo_r[j] = v_r[j]


@njit(parallel=True, cache=True)
def _fwd_chunk(thal, tcolptr, trow, tval, colptr, crow, cval, csplit, off, alpha, oma, rho,
               omr, consts, ro_pos, m_ro_t, c_ro, v, bb, sp, i_out, s_out, m_out, logits,
               save_i, save_m, nblocks):
    """Advance the state (v, bb, sp: (N, B), updated in place) over ``thal.shape[0]`` steps.

    Also computes the readout logits (k, B, n_classes) event-driven: ``c_ro`` plus the rows
    of ``m_ro_t`` of the readout neurons (``ro_pos[u] >= 0``) that spiked this step. Spikes
    made here are binary, so only the value 1 ever enters the readout (the non-binary
    initial state is the previous step of step 0 and is never read out).
    """
    n_steps, n_thal = thal.shape[0], thal.shape[1]
    n, batch = v.shape
    npop = off.shape[0] - 1
    ncls = c_ro.shape[0]
    for blk in prange(nblocks):
        lo = blk * batch // nblocks
        hi = (blk + 1) * batch // nblocks
        nbl = hi - lo
        acc = np.empty((n, nbl), dtype=v.dtype)
        lanes = np.empty(nbl, dtype=np.int64)
        xs = np.empty(nbl, dtype=v.dtype)
        for tt in range(n_steps):
            acc[:] = 0
            for j in range(nbl):
                for m in range(ncls):
                    logits[tt, lo + j, m] = c_ro[m]
            # thalamic input of this step
            for k in range(n_thal):
                cnt = _active_lanes(thal[tt, k, lo:hi], lanes, xs)
                _scatter_edges(tcolptr[k], tcolptr[k + 1], trow, tval, lanes, xs, cnt, acc)
            # previous step's spikes -> their own and later populations
            for p in range(n):
                cnt = _active_lanes(sp[p, lo:hi], lanes, xs)
                _scatter_edges(colptr[p], csplit[p], crow, cval, lanes, xs, cnt, acc)
            for i in range(npop):
                _update_population(off[i], off[i + 1], tt, lo, hi, acc, alpha, oma, rho, omr,
                                   consts, v, bb, sp, s_out, i_out, m_out, save_i, save_m)
                # this step's spikes of population i -> later populations
                for p in range(off[i], off[i + 1]):
                    cnt = _active_lanes(sp[p, lo:hi], lanes, xs)    # binary: xs are 1
                    if cnt > 0:
                        _scatter_edges(csplit[p], colptr[p + 1], crow, cval, lanes, xs, cnt,
                                       acc)
                        pos = ro_pos[p]
                        if pos >= 0:
                            for q in range(cnt):
                                lg = logits[tt, lo + lanes[q]]
                                for m in range(ncls):
                                    lg[m] += m_ro_t[pos, m]


def _make_fwd_gather(width):
    """``_fwd_chunk_gather`` compiled for batch blocks of at most ``width`` lanes (its lane
    loops have a fixed length, so that each neuron's accumulator stays in registers)."""

    @njit(parallel=True, cache=True)
    def _fwd_chunk_gather(thal, tcolptr, trow, tval, rowptr, gcol, gval, off, alpha, oma,
                          rho, omr, consts, ro_pos, m_ro_t, c_ro, v, bb, sp, i_out, s_out,
                          m_out, logits, save_i, save_m, nblocks):
        """:func:`_fwd_chunk` with the recurrent input gathered over each neuron's incoming
        connections (CSR: ``_Structure.rowptr``, ``gcol``, values ``gval``) for all lanes of
        a block at once, instead of scattered from the neurons that spiked. Its cost does not
        depend on the firing rate, so it is the faster one when many neurons fire.

        The spikes entering the chunk (``sp``) must be binary, as they are from step 1 on:
        the block keeps them as bytes (64 lanes in one cache line), and a connection adds
        its weight in the lanes where its neuron spiked. The forward runs step 0, whose
        previous state is the non-binary initial one, with :func:`_fwd_chunk`.

        Bit-identical to :func:`_fwd_chunk` (no fast-math, so no fused multiply-adds): each
        neuron's incoming connections are ordered as the scatter adds them (presynaptic
        populations from its own on, which still hold the previous step's spikes, then the
        earlier ones, which hold this step's; ascending within each part); ``w * 1`` is
        ``w``, and a silent lane adds 0, which leaves a float sum unchanged. A population's
        inputs are all gathered before any of its neurons is updated, as the scatter adds
        the previous step's spikes of a population before updating it.
        """
        n_steps, n_thal = thal.shape[0], thal.shape[1]
        n, batch = v.shape
        npop = off.shape[0] - 1
        ncls = c_ro.shape[0]
        zero = consts[2] - consts[2]              # 0 of the state's float type
        for blk in prange(nblocks):
            lo = blk * batch // nblocks
            hi = (blk + 1) * batch // nblocks
            nbl = hi - lo
            acc = np.empty((n, nbl), dtype=v.dtype)
            # this block's spikes (binary) as bytes, padded to ``width`` lanes with zeros
            spb = np.zeros((n, width), dtype=np.uint8)
            for u in range(n):
                for j in range(nbl):
                    spb[u, j] = sp[u, lo + j] != 0
            lanes = np.empty(nbl, dtype=np.int64)
            xs = np.empty(nbl, dtype=v.dtype)
            g = numba.carray(_stack_ptr(width, v.dtype), width)
            lg = np.empty((ncls, width), dtype=v.dtype)     # this step's logits, by class
            for tt in range(n_steps):
                acc[:] = 0
                for m in range(ncls):
                    for j in range(width):
                        lg[m, j] = c_ro[m]
                # thalamic input of this step (few units: scattered from the active ones)
                for k in range(n_thal):
                    cnt = _active_lanes(thal[tt, k, lo:hi], lanes, xs)
                    _scatter_edges(tcolptr[k], tcolptr[k + 1], trow, tval, lanes, xs, cnt,
                                   acc)
                for i in range(npop):
                    for u in range(off[i], off[i + 1]):
                        for j in range(width):
                            g[j] = 0
                        for j in range(nbl):
                            g[j] = acc[u, j]
                        for e in range(rowptr[u], rowptr[u + 1]):
                            w = gval[e]
                            src = gcol[e]
                            for j in range(width):
                                g[j] += w if spb[src, j] else zero
                        for j in range(nbl):
                            acc[u, j] = g[j]
                    _update_population(off[i], off[i + 1], tt, lo, hi, acc, alpha, oma, rho,
                                       omr, consts, v, bb, sp, s_out, i_out, m_out, save_i,
                                       save_m)
                    for u in range(off[i], off[i + 1]):
                        for j in range(nbl):
                            spb[u, j] = sp[u, lo + j] != 0
                    # the readout neurons of population i that spiked, in the scatter's order
                    for p in range(off[i], off[i + 1]):
                        pos = ro_pos[p]
                        if pos >= 0:
                            for m in range(ncls):
                                w = m_ro_t[pos, m]
                                lg_m = lg[m]
                                for j in range(width):
                                    lg_m[j] += w if spb[p, j] else zero
                for m in range(ncls):
                    for j in range(nbl):
                        logits[tt, lo + j, m] = lg[m, j]

    return _fwd_chunk_gather


_FWD_GATHER = {}


def _fwd_chunk_gather(*args, width):
    """The gathering forward kernel for blocks of at most ``width`` (8, 16, 32, 64 or 128)
    lanes."""
    if width not in _FWD_GATHER:
        _FWD_GATHER[width] = _make_fwd_gather(width)
    with _NoFullUnroll():
        return _FWD_GATHER[width](*args)


@njit(parallel=True, cache=True)
def _recompute_chunk(i_c, s_c, s_prev0, vck, bck, alpha, oma, rho, omr, consts, vbuf, bbuf,
                     ybuf):
    """Membrane and adaptation of a chunk's steps from its checkpoint (the forward's ops, so
    bit-identical), and ``y = -(x^2) / (2 sigma^2)`` with ``x = v - threshold``, the exponent
    of the surrogate derivative (exponentiated afterwards by torch's vectorised exp).

    (k, N, B) arrays; the recursion is per neuron, so neurons run in parallel.
    """
    n_steps, n, batch = i_c.shape
    b0, beta, two_var, one, tiny = consts[0], consts[1], consts[2], consts[5], consts[6]
    for u in prange(n):
        a, om_a, r_, om_r = alpha[u], oma[u], rho[u], omr[u]
        for tt in range(n_steps):
            i_r, vb, bbr, yb = i_c[tt, u], vbuf[tt, u], bbuf[tt, u], ybuf[tt, u]
            for j in range(batch):
                if tt == 0:
                    s_prev, v_prev, b_prev = s_prev0[u, j], vck[u, j], bck[u, j]
                else:
                    s_prev = s_c[tt - 1, u, j] * one
                    v_prev, b_prev = vbuf[tt - 1, u, j], bbuf[tt - 1, u, j]
                bn = r_ * b_prev + om_r * s_prev
                bn = _flush(bn, tiny)
                thr = b0 + beta * bn
                vn = v_prev * a + om_a * i_r[j] - thr * s_prev
                vb[j] = vn
                bbr[j] = bn
                x = vn - thr
                yb[j] = -(x * x) / two_var


@njit(inline="always")
def _spike_lanes(arr, p, lo, nbl, lanes, xs, cnt):
    """The batch lanes where neuron ``p`` spiked, ``arr[p, lo:lo + nbl]`` (any numeric type):
    positions into ``lanes[p]``, values into ``xs[p]`` (1 for binary spikes; the initial
    state and the thalamic input may hold others), count into ``cnt[p]``."""
    c = 0
    for j in range(nbl):
        x = arr[p, lo + j]
        if x != 0:
            lanes[p, c] = j
            xs[p, c] = x
            c += 1
    cnt[p] = c


@njit(inline="always")
def _edges_backward(e0, e1, rows, vals, g, lanes, xs, p, cnt, gw, acc, width):
    """Backward through the connections e0:e1 of presynaptic neuron ``p``, on one batch
    block of ``width`` lanes (a compile-time constant).

    g (N, width) is the block's dL/dI. Sets ``acc[j] = sum_e vals[e] * g[rows[e], j]``, p's
    spike gradient through these connections (all lanes, dense), and adds the weight
    gradients ``gw[e] += sum_q xs[p, q] * g[rows[e], lanes[p, q]]`` over the ``cnt`` lanes
    where p spiked, with their spike values ``xs[p, q]`` (event-driven; one, two and three
    lanes unrolled).
    """
    for j in range(width):
        acc[j] = 0
    if cnt == 0:
        for e in range(e0, e1):
            r, w = rows[e], vals[e]
            for j in range(width):
                acc[j] += w * g[r, j]
    elif cnt == 1:
        l0, x0 = lanes[p, 0], xs[p, 0]
        for e in range(e0, e1):
            r, w = rows[e], vals[e]
            for j in range(width):
                acc[j] += w * g[r, j]
            gw[e] += x0 * g[r, l0]
    elif cnt == 2:
        l0, x0, l1, x1 = lanes[p, 0], xs[p, 0], lanes[p, 1], xs[p, 1]
        for e in range(e0, e1):
            r, w = rows[e], vals[e]
            for j in range(width):
                acc[j] += w * g[r, j]
            gw[e] += x0 * g[r, l0] + x1 * g[r, l1]
    elif cnt == 3:
        l0, x0, l1, x1 = lanes[p, 0], xs[p, 0], lanes[p, 1], xs[p, 1]
        l2, x2 = lanes[p, 2], xs[p, 2]
        for e in range(e0, e1):
            r, w = rows[e], vals[e]
            for j in range(width):
                acc[j] += w * g[r, j]
            gw[e] += x0 * g[r, l0] + x1 * g[r, l1] + x2 * g[r, l2]
    else:
        for e in range(e0, e1):
            r, w = rows[e], vals[e]
            for j in range(width):
                acc[j] += w * g[r, j]
            s = xs[p, 0] * g[r, lanes[p, 0]]
            for q in range(1, cnt):
                s += xs[p, q] * g[r, lanes[p, q]]
            gw[e] += s


@njit(inline="always")
def _neurons_backward(u0, u1, lo, nbl, gs, sg, s_prev, v_prev, b_prev, i_t, b_t, alpha, oma,
                      rho, omr, consts, gv, gb, gi, gtail, galpha, grho):
    """One BPTT step of the neurons u0:u1 (one population) on one batch block.

    Block arrays (N, width), lanes 0:nbl: gs = dL/ds of this step (complete: later steps, the
    readout and the later populations of this step), gv = alpha * dL/dv and gb = rho * dL/db
    carried from the next step (updated). Shared arrays (N, B), lanes lo:lo + nbl: sg the
    surrogate derivative, s_prev, v_prev, b_prev the previous step's state, i_t, b_t this
    step's input current and adaptation. Out: gi = dL/dI; gtail = dL/ds of the previous
    step through this step's reset and adaptation (its current through the recurrent
    weights is added by the caller); galpha, grho (N,) accumulate the time-constant
    gradients. Outputs of magnitude below ``consts[7]`` (``GRAD_FLOOR`` times the smallest
    normal float) are written as zero: gradients fade through time, and once they or their
    products with the weights turn subnormal every operation on them runs many times slower.
    """
    b0, beta, one, floor = consts[0], consts[1], consts[5], consts[7]
    for u in range(u0, u1):
        a, om_a, r_, om_r = alpha[u], oma[u], rho[u], omr[u]
        ga = 0.0
        gr = 0.0
        for j in range(nbl):
            jb = lo + j
            s_p = s_prev[u, jb] * one
            gx = gs[u, j] * sg[u, jb]
            g_v = gx + gv[u, j]
            g_i = g_v * om_a
            gi[u, j] = _flush(g_i, floor)    # no subnormals (see docstring)
            thr = b0 + beta * b_t[u, jb]
            gthr = -gx - g_v * s_p
            g_b = beta * gthr + gb[u, j]
            ga += g_v * (v_prev[u, jb] - i_t[u, jb])
            gr += g_b * (b_prev[u, jb] - s_p)
            g_s = -g_v * thr + g_b * om_r
            gtail[u, j] = _flush(g_s, floor)
            gv[u, j] = _flush(a * g_v, floor)
            gb[u, j] = _flush(r_ * g_b, floor)
        galpha[u] += ga
        grho[u] += gr


def _make_bwd_chunk(width):
    """``_bwd_chunk`` compiled for batch blocks of at most ``width`` lanes: its lane loops
    have a fixed length, so that the accumulators stay in registers."""

    @njit(parallel=True, cache=True, fastmath=True)
    def _bwd_chunk(t0, gl_c, gsp_c, has_gsp, sg, s_c, s_prev0, vbuf, bbuf, vck, bck, i_c,
                   thal_c, off, colptr, crow, cval, csplit, tcolptr, trow, tval, ro, m_ro_t,
                   alpha, oma, rho, omr, consts, gs_b, gv_b, gb_b, gi_b, gt_b, gw, gwth, g_ro,
                   galpha_b, grho_b, gthal_c, nblocks):
        """BPTT through the steps of one chunk, in reverse, parallel over batch blocks of at
        most ``width`` lanes.

        Shared (k, N, B) arrays of the chunk: sg surrogate derivatives, s_c spikes (uint8), vbuf
        / bbuf recomputed membrane and adaptation, i_c input currents; s_prev0, vck, bck (N, B)
        the state before the chunk; thal_c (k, 200, B) thalamic spikes; gl_c (k, B, 3)
        dL/dlogits; gsp_c (k, N, B) the loss's own gradient of the spikes (a firing-rate
        regulariser reads them), used when ``has_gsp``. Connections in CSC order
        (``_Structure``): colptr, crow, cval, csplit; tcolptr, trow, tval the thalamic ones. Per
        block b, its own lanes (so no two threads write the same memory): gs_b, gv_b, gb_b
        (blocks, N, width) the carried gradients (dL/ds, alpha dL/dv, rho dL/db), gi_b, gt_b
        scratch; gw (blocks, nnz) and gwth (blocks, tnnz) weight gradients in CSC order, g_ro
        (blocks, 3606, 3), galpha_b, grho_b (blocks, N) accumulate. gthal_c (k, 200, B) receives
        dL/d(thalamic spikes).

        Per step: the readout's gradient reaches the readout neurons' spikes; populations in
        reverse order: each neuron's this-step spike gradient through its connections to later
        populations (whose dL/dI is known now), with the weight gradients of those connections
        where it spiked, then the population's neuron backward; finally the previous step's
        spike gradient through the other connections (weight gradients where the neuron spiked
        at the previous step), and the thalamic gradients.
        """
        k, n, batch = sg.shape
        npop = off.shape[0] - 1
        n_thal = thal_c.shape[1]
        ncls = gl_c.shape[2]
        nro = ro.shape[0]
        for blk in prange(nblocks):
            lo = blk * batch // nblocks
            hi = (blk + 1) * batch // nblocks
            nbl = hi - lo
            gs, gv, gb, gi, gt = gs_b[blk], gv_b[blk], gb_b[blk], gi_b[blk], gt_b[blk]
            gwb, gwthb, g_rob = gw[blk], gwth[blk], g_ro[blk]
            galpha, grho = galpha_b[blk], grho_b[blk]
            acc = numba.carray(_stack_ptr(width, sg.dtype), width)
            # the lanes where each neuron spiked, their spike values and count: this step's
            # (cur) and the previous step's (prv)
            cur_l = np.empty((n, width), dtype=np.uint8)
            prv_l = np.empty((n, width), dtype=np.uint8)
            cur_x = np.empty((n, width), dtype=sg.dtype)
            prv_x = np.empty((n, width), dtype=sg.dtype)
            cur_c = np.empty(n, dtype=np.int64)
            prv_c = np.empty(n, dtype=np.int64)
            th_l = np.empty((n_thal, width), dtype=np.uint8)
            th_c = np.empty(n_thal, dtype=np.int64)
            th_x = np.empty((n_thal, width), dtype=sg.dtype)
            for p in range(n):
                _spike_lanes(s_c[k - 1], p, lo, nbl, cur_l, cur_x, cur_c)
            for kk in range(k - 1, -1, -1):
                if kk > 0:
                    for p in range(n):
                        _spike_lanes(s_c[kk - 1], p, lo, nbl, prv_l, prv_x, prv_c)
                else:
                    for p in range(n):
                        _spike_lanes(s_prev0, p, lo, nbl, prv_l, prv_x, prv_c)
                if has_gsp:         # the loss's own gradient of this step's spikes
                    for p in range(n):
                        for j in range(nbl):
                            gs[p, j] += gsp_c[kk, p, lo + j]
                if t0 + kk >= 1:    # the readout's gradient reaching the readout neurons' spikes
                    for q in range(nro):
                        u = ro[q]
                        for j in range(nbl):
                            s = m_ro_t[q, 0] * gl_c[kk, lo + j, 0]
                            for m in range(1, ncls):
                                s += m_ro_t[q, m] * gl_c[kk, lo + j, m]
                            gs[u, j] += s
                        for c in range(cur_c[u]):     # G = sum_t,b dL/dlogits x^T
                            for m in range(ncls):
                                g_rob[q, m] += gl_c[kk, lo + cur_l[u, c], m]
                for i in range(npop - 1, -1, -1):
                    # this step's spikes of population i -> later populations
                    for p in range(off[i], off[i + 1]):
                        _edges_backward(csplit[p], colptr[p + 1], crow, cval, gi, cur_l, cur_x,
                                        p, cur_c[p], gwb, acc, width)
                        for j in range(width):
                            gs[p, j] += acc[j]
                    if kk > 0:
                        _neurons_backward(off[i], off[i + 1], lo, nbl, gs, sg[kk], s_c[kk - 1],
                                          vbuf[kk - 1], bbuf[kk - 1], i_c[kk], bbuf[kk], alpha,
                                          oma, rho, omr, consts, gv, gb, gi, gt, galpha, grho)
                    else:
                        _neurons_backward(off[i], off[i + 1], lo, nbl, gs, sg[kk], s_prev0, vck,
                                          bck, i_c[kk], bbuf[kk], alpha, oma, rho, omr, consts,
                                          gv, gb, gi, gt, galpha, grho)
                # dL/ds of the previous step: reset and adaptation, and the previous step's
                # spikes -> their own and earlier populations
                for p in range(n):
                    for j in range(width):
                        gs[p, j] = gt[p, j]
                for p in range(n):
                    _edges_backward(colptr[p], csplit[p], crow, cval, gi, prv_l, prv_x, p,
                                    prv_c[p], gwb, acc, width)
                    for j in range(width):
                        gs[p, j] += acc[j]
                # thalamic spikes
                for kt in range(n_thal):
                    _spike_lanes(thal_c[kk], kt, lo, nbl, th_l, th_x, th_c)
                    _edges_backward(tcolptr[kt], tcolptr[kt + 1], trow, tval, gi, th_l, th_x, kt,
                                    th_c[kt], gwthb, acc, width)
                    for j in range(nbl):
                        gthal_c[kk, kt, lo + j] = acc[j]
                cur_l, prv_l = prv_l, cur_l
                cur_x, prv_x = prv_x, cur_x
                cur_c, prv_c = prv_c, cur_c

    return _bwd_chunk


_BWD_CHUNK = {}


def _bwd_chunk(*args, width):
    """The backward kernel for blocks of at most ``width`` (8, 16, 32 or 64) lanes."""
    if width not in _BWD_CHUNK:
        _BWD_CHUNK[width] = _make_bwd_chunk(width)
    with _NoFullUnroll():
        return _BWD_CHUNK[width](*args)


class _NoFullUnroll:
    """While numba compiles a kernel in this block, LLVM does not fully unroll loops of
    more than two iterations. Fully unrolled, the lane loops of 8 to 32 lanes were left to
    the SLP vectoriser, which kept them scalar: two to three times slower than what the
    loop vectoriser makes of them. The compiled code (and numba's cache of it) keeps the
    result; LLVM's option is process-wide, so it is restored on leaving."""

    def __enter__(self):
        llvm.set_option("", "-unroll-full-max-count=2")

    def __exit__(self, *exc):
        llvm.set_option("", f"-unroll-full-max-count={2 ** 32 - 1}")   # LLVM's default


@njit(parallel=True, cache=True)
def _thalamus_forward(cur, v0, s0, alpha, oma, rho, omr, consts, s_out, v_out, b_out):
    """The VPM units over the sequence; each batch lane runs in parallel.

    cur (T, B, 200) input current; v0, s0 (B, 200) initial state; writes spikes, membranes
    and adaptations (T, B, 200). Same operations as ``neuron.alif_step``.
    """
    n_steps, batch, n = cur.shape
    b0, beta, tiny = consts[0], consts[1], consts[2]
    for j in prange(batch):
        for tt in range(n_steps):
            for u in range(n):
                if tt == 0:
                    s_prev, v_prev, b_prev = s0[j, u], v0[j, u], b0
                else:
                    s_prev, v_prev, b_prev = s_out[tt - 1, j, u], v_out[tt - 1, j, u], b_out[tt - 1, j, u]
                bn = rho[u] * b_prev + omr[u] * s_prev
                bn = _flush(bn, tiny)     # flush subnormals, as in the cortex
                thr = b0 + beta * bn
                vn = v_prev * alpha[u] + oma[u] * cur[tt, j, u] - thr * s_prev
                v_out[tt, j, u] = vn
                b_out[tt, j, u] = bn
                s_out[tt, j, u] = 1.0 if vn - thr > 0 else 0.0


@njit(parallel=True, cache=True)
def _thalamus_backward(g_out, cur, s_out, v_out, b_out, v0, s0, alpha, oma, rho, omr, consts,
                       g_cur, gv0, gs0, galpha, grho):
    """BPTT of ``_thalamus_forward``; each batch lane in parallel.

    g_out (T, B, 200) dL/dspikes. Writes g_cur (T, B, 200) dL/dcurrent, gv0 / gs0 (B, 200)
    for the initial state, and galpha / grho (B, 200) per lane (summed by the caller).
    """
    n_steps, batch, n = cur.shape
    b0, beta, two_var, norm, scale = consts[0], consts[1], consts[2], consts[3], consts[4]
    for j in prange(batch):
        gs = np.zeros(n, dtype=cur.dtype)
        gvc = np.zeros(n, dtype=cur.dtype)
        gbc = np.zeros(n, dtype=cur.dtype)
        for tt in range(n_steps - 1, -1, -1):
            for u in range(n):
                if tt == 0:
                    s_prev, v_prev, b_prev = s0[j, u], v0[j, u], b0
                else:
                    s_prev, v_prev, b_prev = s_out[tt - 1, j, u], v_out[tt - 1, j, u], b_out[tt - 1, j, u]
                thr = b0 + beta * b_out[tt, j, u]
                x = v_out[tt, j, u] - thr
                sg = math.exp(-(x * x) / two_var) / norm * scale
                gx = (gs[u] + g_out[tt, j, u]) * sg
                gv = gx + gvc[u]
                g_cur[tt, j, u] = gv * oma[u]
                gthr = -gx - gv * s_prev
                gb = beta * gthr + gbc[u]
                galpha[j, u] += gv * (v_prev - cur[tt, j, u])
                grho[j, u] += gb * (b_prev - s_prev)
                gs[u] = -gv * thr + gb * omr[u]
                gvc[u] = alpha[u] * gv
                gbc[u] = rho[u] * gb
        for u in range(n):
            gv0[j, u] = gvc[u]
            gs0[j, u] = gs[u]


# ---------------------------------------------------------------------------- structure
class _Structure:
    """Sparse index structures of the recurrent and thalamocortical masks (cached per mask)."""

    def __init__(self, net: Network):
        off = np.asarray(net.offsets, dtype=np.int64)
        n = int(off[-1])
        pop = np.repeat(np.arange(len(off) - 1), np.diff(off))
        mask = net.recurrent_mask.detach().cpu().numpy().astype(bool)
        rows, cols = np.nonzero(mask)                       # CSR (post-major) order
        rows, cols = rows.astype(np.int64), cols.astype(np.int64)
        self.n, self.off, self.nnz = n, off, len(rows)
        self.rec_flat = torch.from_numpy(rows * n + cols)
        self.col_t = torch.from_numpy(cols)
        order = np.lexsort((rows, cols))                    # CSC (pre-major) order
        self.cperm = torch.from_numpy(order)
        self.crow = rows[order].astype(np.int32)
        self.colptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n))]).astype(np.int64)
        ckey = cols[order] * n + rows[order]
        # first entry of column p whose postsynaptic population is > pop(p)
        self.csplit = np.searchsorted(ckey, np.arange(n) * n + off[pop + 1]).astype(np.int64)
        # CSR (post-major) for the gathering forward: each neuron's incoming connections
        # from its own population on first, then from the earlier ones (the order in which
        # the scatter adds them), ascending within each part
        earlier = cols < off[pop[rows]]
        gorder = np.lexsort((cols, earlier, rows))
        self.gperm = torch.from_numpy(gorder)
        self.gcol = cols[gorder].astype(np.int32)
        self.rowptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)

        tmask = net.thalamic_mask.detach().cpu().numpy().astype(bool)
        n_thal = tmask.shape[1]
        trows, tcols = np.nonzero(tmask)
        torder = np.lexsort((trows, tcols))
        trows, tcols = trows[torder].astype(np.int64), tcols[torder].astype(np.int64)
        self.th_flat = torch.from_numpy(trows * n_thal + tcols)
        self.trow = trows.astype(np.int32)
        self.tcolptr = np.concatenate([[0], np.cumsum(np.bincount(tcols, minlength=n_thal))]).astype(np.int64)
        self.n_thal = n_thal

        self.readout_index = net.readout_index.detach().cpu().long()
        # position of each neuron in the readout vector, -1 for neurons not read out
        self.ro_pos = np.full(n, -1, dtype=np.int64)
        self.ro_pos[self.readout_index.numpy()] = np.arange(len(self.readout_index))
        self.ro_index = self.readout_index.numpy()


# this engine's cache: id(recurrent mask) -> (weak references to both masks, their
# versions, offsets, readout index, structure); a few models at a time
_STRUCTURES: dict = {}


def _structure(net: Network) -> _Structure:
    """The structure of ``net``'s masks, built once per mask (and rebuilt when a mask or the
    readout index is modified in place)."""
    m, tm, ro = net.recurrent_mask, net.thalamic_mask, net.readout_index
    key = (m._version, tm._version, ro._version, tuple(net.offsets))
    hit = _STRUCTURES.get(id(m))
    if hit is not None and hit[0]() is m and hit[1]() is tm and hit[2]() is ro and hit[3] == key:
        return hit[4]
    st = _Structure(net)
    for k in [k for k, v in _STRUCTURES.items() if v[0]() is None]:   # masks freed since
        del _STRUCTURES[k]
    if len(_STRUCTURES) >= 4:
        _STRUCTURES.pop(next(iter(_STRUCTURES)))
    _STRUCTURES[id(m)] = (weakref.ref(m), weakref.ref(tm), weakref.ref(ro), key, st)
    return st


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


def _backward_consts(b0, beta, dtype, *extra) -> torch.Tensor:
    """The backward kernels' constants: ``[b0, beta, 2 sigma^2, sqrt(2 pi) sigma,
    surrogate scale, *extra]`` (the surrogate derivative is
    ``exp(-x^2 / (2 sigma^2)) / (sqrt(2 pi) sigma) * scale``)."""
    sig = SURROGATE_SIGMA
    return torch.tensor([b0, beta, 2 * sig ** 2, math.sqrt(2 * math.pi) * sig,
                         SURROGATE_SCALE, *extra], dtype=dtype)


def _gathers(mode: str, rate: float | None, width: int) -> bool:
    """Whether the forward gathers the recurrent input of a chunk (``EngineOptions
    .recurrent_input``); ``auto`` gathers when the previous chunk fired at least at
    ``GATHER_RATE[width]`` (the first chunk, whose previous state is the initial one,
    scatters)."""
    if mode != "auto":
        return mode == "gather"
    return rate is not None and rate >= GATHER_RATE[width]


def _gather_blocks(batch: int) -> tuple[int, int]:
    """Batch blocks of the gathering forward and their lane width: one block per thread
    and at most GATHER_LANES lanes each; the width is the smallest of 8, 16, 32, 64, 128
    that holds a block."""
    nblocks = max(1, min(get_num_threads(), batch), -(-batch // GATHER_LANES))
    widest = -(-batch // nblocks)
    return nblocks, next(w for w in (8, 16, 32, 64, 128) if w >= widest)


def _nblocks(batch):
    """Batch blocks of the kernels: one per thread, and at most BWD_LANES lanes each."""
    return max(1, min(get_num_threads(), batch), -(-batch // BWD_LANES))


# ---------------------------------------------------------------------------- autograd Function
class _CortexFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, st, opts, vals, tvals, alpha, rho, w1, b1, w2, b2, thal, v0, s0):
        record_spikes, record_mem, need_grad, b0, beta, K, mode = opts
        dtype = vals.dtype
        T, B = thal.shape[0], thal.shape[1]
        n = st.n
        nblk = _nblocks(B)
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
            # the chunk's firing rate (spikes are binary from step 1 on)
            rate = float(s_c[:t1 - t0].sum(dtype=torch.int64)) / ((t1 - t0) * n * B)
        # the readout reads t >= 1 (the softmax is the model's, outside the Function)
        out = logits[1:]
        if need_grad:
            ctx.st, ctx.T, ctx.B, ctx.b0, ctx.beta, ctx.K = st, T, B, b0, beta, K
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
        consts = _backward_consts(ctx.b0, ctx.beta, dtype, 1.0, tiny, GRAD_FLOOR * tiny)
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
                             vbuf[:k].numpy(), bbuf[:k].numpy(), sg[:k].numpy())
            # the surrogate derivative exp(y) * scale / (sqrt(2 pi) sigma), vectorised
            sg_k = sg[:k]
            torch.exp(sg_k, out=sg_k)
            sg_k.mul_(consts[4] / consts[3])
            gsp_c = gsp_all[t0:t1] if has_gsp else gsp_all
            _bwd_chunk(t0, gl_all[t0:t1].numpy(), gsp_c.numpy(), has_gsp, sg_k.numpy(),
                       s_c.numpy(), s_prev0.numpy(),
                       vbuf[:k].numpy(), bbuf[:k].numpy(), vck[c].numpy(), bck[c].numpy(),
                       i_c.numpy(), thal_t[t0:t1].numpy(), st.off, st.colptr, st.crow,
                       cval_np, st.csplit, st.tcolptr, st.trow, tvals.contiguous().numpy(),
                       st.ro_index, m_ro_t.numpy(), a_np, oma_np, r_np, omr_np, consts_np,
                       *blocks_np, gthal[t0:t1].numpy(), nblk, width=width)
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
    def forward(ctx, b0, beta, current, alpha, rho, v0, s0):
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
        ctx.consts = (b0, beta)
        ctx.save_for_backward(cur, s_out, v_out, b_out, v0, s0, alpha, rho)
        return s_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_spikes):
        cur, s_out, v_out, b_out, v0, s0, alpha, rho = ctx.saved_tensors
        b0, beta = ctx.consts
        dtype = cur.dtype
        consts = _backward_consts(b0, beta, dtype)
        g_cur = torch.empty_like(cur)
        gv0, gs0 = torch.empty_like(v0), torch.empty_like(s0)
        galpha, grho = torch.zeros_like(v0), torch.zeros_like(v0)
        _thalamus_backward(_fresh(g_spikes.to(dtype)).numpy(), cur.numpy(), s_out.numpy(),
                           v_out.numpy(), b_out.numpy(), v0.numpy(), s0.numpy(),
                           alpha.numpy(), (1 - alpha).numpy(), rho.numpy(),
                           (1 - rho).numpy(), consts.numpy(), g_cur.numpy(), gv0.numpy(),
                           gs0.numpy(), galpha.numpy(), grho.numpy())
        return None, None, g_cur, galpha.sum(0), grho.sum(0), gv0, gs0


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
    return _ThalamusFunction.apply(net.init_b, net.beta, current, alpha, rho,
                                   state.mem_thal.to(dtype), state.spk_thal.to(dtype))


def run_cortex(net: Network, thal_spikes: torch.Tensor, state, record_spikes: bool = False,
               record_mem: bool = False, options=None):
    """Simulate the 13 cortical populations over the sequence (the contract of :mod:`engines`).

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
            (options or EngineOptions()).recurrent_input)
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
