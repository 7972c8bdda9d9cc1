"""Fast engine: the whole sequence in one custom autograd Function with a hand-written BPTT.

Same semantics as ``engine_reference`` (the specification), much faster:

* The recurrent weights are gathered once per forward into sparse form: CSC by presynaptic
  column for the event-driven forward, and CSR blocks of W^T (torch sparse, MKL) for the
  backward's ``dL/ds = W^T dL/dI``. Each neuron's connections are split at the population
  boundary that separates "this step's spikes" (presynaptic population before the
  postsynaptic one) from "previous step's spikes", so the Gauss-Seidel order is exact.
  Structurally empty blocks (L2/3 -> L4) simply have no entries.
* CPU forward: numba, parallel over batch blocks (one per thread). Per step the thalamic and
  recurrent input currents are accumulated from the outgoing connections of *active*
  neurons only (a few per cent spike).
* CPU backward, chunk by chunk in reverse time:
  - membrane and adaptation of the chunk are recomputed from the checkpoint (numba, the
    forward's operations, so bit-identical), and the surrogate derivatives exponentiated by
    torch's vectorised exp;
  - per step, populations in reverse order: one fused numba kernel per population (neuron
    gradient, carries, reset and adaptation paths, tau gradients), then one sparse product
    of its dL/dI with W^T into this step's spikes of the earlier populations; after the
    last population one sparse product into the previous step's spikes;
  - the weight gradients at connected entries are accumulated event-driven, only where the
    presynaptic neuron spiked.
* Saved for the backward: spikes (uint8) and input currents for all steps, plus the
  membrane / adaptation state every ``CHUNK`` steps.
* The readout is part of the Function. It has no nonlinearity between its two layers, so
  logits = M x + c with M = w2 w1 (3 x 3606) and c = w2 b1 + b2: the forward kernel adds the
  rows of M^T of the readout neurons that spiked (event-driven, spikes are binary for
  t >= 1); the backward adds the spike gradient M^T dL/dlogits and accumulates
  G = sum_t,b dL/dlogits x^T event-driven, from which gw1 = w2^T G, gw2 = G w1^T + gb2 b1^T,
  gb1 = w2^T gb2. No (T, 128, B) hidden layer is formed or stored.
* The VPM layer (200 units, no recurrence) is a second Function, parallel over the batch.
* Subnormal adaptation values are flushed to zero: float32 ``b`` of a silent neuron decays
  below the smallest normal float after ~430 steps, and arithmetic on subnormals is many
  times slower on the CPU. The threshold ``b0 + beta * b`` absorbs such a ``b`` entirely, so
  spikes and membranes are unchanged (float64 never gets there in practice).
* Inference (no grad): the forward runs in chunks of steps and keeps nothing per step
  except what the caller asks to record.
* Other devices (CUDA): the same algorithm with dense torch ops, in ``engine_torch``.

Internal layout is (T, N, B): batch innermost, so kernels vectorise over the batch.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch
from numba import get_num_threads, njit, prange

import engine_reference
import engine_torch
from neuron import SURROGATE_SCALE, SURROGATE_SIGMA, decay_factors

CHUNK = int(os.environ.get("ENGINE_FAST_CHUNK", 32))   # steps per chunk (checkpoint interval)
# "numba" (CPU kernels below) or "torch" (engine_torch, dense torch ops); default: numba on
# the CPU, torch on every other device (CUDA)
BACKEND = os.environ.get("ENGINE_FAST_BACKEND") or None
# Backward gradients smaller than GRAD_FLOOR times the smallest normal float are dropped
# (2^-100 in float32, against typical gradients of 1e-7), so that their products with
# weights, decay factors and surrogate derivatives of 2^-26 or more stay normal numbers.
# The sparse products run on torch's worker threads, which do not flush subnormals; the
# subnormal products of fading gradients made them 1.5 times slower on a trained network.
GRAD_FLOOR = 2.0 ** 26


# ---------------------------------------------------------------------------- numba kernels
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
def _gather_edges(e0, e1, rows, g, lo, lanes, xs, cnt, out):
    """Event-driven weight gradient: for the connections e0:e1 of one presynaptic neuron,
    ``out[e] += sum_q xs[q] * g[rows[e], lo + lanes[q]]`` over its ``cnt`` active lanes
    (one, two or three lanes unrolled, as in ``_scatter_edges``)."""
    if cnt == 0:
        return
    if cnt == 1:
        l0, x0 = lo + lanes[0], xs[0]
        for e in range(e0, e1):
            out[e] += x0 * g[rows[e], l0]
    elif cnt == 2:
        l0, x0, l1, x1 = lo + lanes[0], xs[0], lo + lanes[1], xs[1]
        for e in range(e0, e1):
            g_r = g[rows[e]]
            out[e] += x0 * g_r[l0] + x1 * g_r[l1]
    elif cnt == 3:
        l0, x0, l1, x1, l2, x2 = lo + lanes[0], xs[0], lo + lanes[1], xs[1], lo + lanes[2], xs[2]
        for e in range(e0, e1):
            g_r = g[rows[e]]
            out[e] += x0 * g_r[l0] + x1 * g_r[l1] + x2 * g_r[l2]
    else:
        for e in range(e0, e1):
            g_r = g[rows[e]]
            acc = xs[0] * g_r[lo + lanes[0]]
            for q in range(1, cnt):
                acc += xs[q] * g_r[lo + lanes[q]]
            out[e] += acc


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
    b0, beta, tiny = consts[0], consts[1], consts[2]
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
                for u in range(off[i], off[i + 1]):
                    a, om_a, r_, om_r = alpha[u], oma[u], rho[u], omr[u]
                    acc_r, sp_r, bb_r, v_r = acc[u], sp[u, lo:hi], bb[u, lo:hi], v[u, lo:hi]
                    so_r = s_out[tt, u, lo:hi]
                    for j in range(nbl):
                        cur = acc_r[j]
                        s_prev = sp_r[j]
                        bn = r_ * bb_r[j] + om_r * s_prev
                        bn = _flush(bn, tiny)     # flush subnormals (see docstring)
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


@njit(parallel=True, cache=True, fastmath=True)
def _bwd_population(lo, hi, gs, sg, s_prev, v_prev, b_prev, i_t, b_t, alpha, oma, rho, omr,
                    consts, gv_carry, gb_carry, gi, gs_prev, galpha, grho):
    """One BPTT step of the neurons ``lo:hi`` (one population); (N, B) arrays.

    In: gs = dL/ds of this step (complete: later steps, the readout and the later
    populations of this step), sg the surrogate derivative, the carried
    gv_carry = alpha * dL/dv and gb_carry = rho * dL/db of the next step. Out: gi = dL/dI;
    gs_prev = dL/ds of the previous step through this step's reset and adaptation (its
    current through W_prev is added by the caller); the new carries; galpha, grho (N,)
    accumulate the time-constant gradients. Outputs of magnitude below ``consts[7]``
    (``GRAD_FLOOR`` times the smallest normal float) are written as zero: gradients fade
    through time, and once they or their products with the weights turn subnormal, every
    operation on them (here, in the sparse products and the weight gradients) runs many
    times slower.
    """
    b0, beta, one, floor = consts[0], consts[1], consts[5], consts[7]
    batch = gs.shape[1]
    for u in prange(lo, hi):
        a, om_a, r_, om_r = alpha[u], oma[u], rho[u], omr[u]
        ga = 0.0
        gr = 0.0
        for j in range(batch):
            s_p = s_prev[u, j] * one
            gx = gs[u, j] * sg[u, j]
            g_v = gx + gv_carry[u, j]
            g_i = g_v * om_a
            gi[u, j] = _flush(g_i, floor)    # no subnormals (see docstring)
            thr = b0 + beta * b_t[u, j]
            gthr = -gx - g_v * s_p
            gb = beta * gthr + gb_carry[u, j]
            ga += g_v * (v_prev[u, j] - i_t[u, j])
            gr += gb * (b_prev[u, j] - s_p)
            g_s = -g_v * thr + gb * om_r
            gs_prev[u, j] = _flush(g_s, floor)
            g_v = a * g_v
            gv_carry[u, j] = _flush(g_v, floor)
            gb = r_ * gb
            gb_carry[u, j] = _flush(gb, floor)
        galpha[u] += ga
        grho[u] += gr


@njit(parallel=True, cache=True)
def _weight_grads_chunk(gi_c, s_c, s_prev0, thal_c, gl_c, ro_pos, colptr, crow, csplit,
                        tcolptr, trow, gw, gwth, g_ro, nblocks):
    """Weight gradients of a chunk, event-driven over the presynaptic spikes.

    gi_c (k, N, B) dL/dI; s_c (k, N, B) spikes (uint8), s_prev0 (N, B) the spikes before the
    chunk; thal_c (k, 200, B). gw (blocks, nnz) in CSC order: entry e of column p
    (presynaptic) gets the sum over steps and lanes of gi[post] x presynaptic spike (this
    step's spike if the postsynaptic population comes later, else the previous step's).
    gwth (blocks, tnnz) likewise for the thalamic weights; g_ro (blocks, 3606, n_classes)
    accumulates the readout's sum_t,b x gl^T. Parallel over batch blocks, each with its own
    accumulators, so that a block's dL/dI of one step stays in cache.
    """
    n_steps, n, batch = gi_c.shape
    n_thal = thal_c.shape[1]
    ncls = gl_c.shape[2]
    for blk in prange(nblocks):
        lo = blk * batch // nblocks
        hi = (blk + 1) * batch // nblocks
        lanes = np.empty(hi - lo, dtype=np.int64)
        xs = np.empty(hi - lo, dtype=gi_c.dtype)
        for tt in range(n_steps):
            g = gi_c[tt]
            for p in range(n):
                cnt = _active_lanes(s_c[tt, p, lo:hi], lanes, xs)   # binary: xs are 1
                if cnt > 0:
                    _gather_edges(csplit[p], colptr[p + 1], crow, g, lo, lanes, xs, cnt,
                                  gw[blk])
                    pos = ro_pos[p]
                    if pos >= 0:
                        for q in range(cnt):
                            for m in range(ncls):
                                g_ro[blk, pos, m] += gl_c[tt, lo + lanes[q], m]
                if tt > 0:
                    cnt = _active_lanes(s_c[tt - 1, p, lo:hi], lanes, xs)
                else:
                    cnt = _active_lanes(s_prev0[p, lo:hi], lanes, xs)
                _gather_edges(colptr[p], csplit[p], crow, g, lo, lanes, xs, cnt, gw[blk])
            for k in range(n_thal):
                cnt = _active_lanes(thal_c[tt, k, lo:hi], lanes, xs)
                _gather_edges(tcolptr[k], tcolptr[k + 1], trow, g, lo, lanes, xs, cnt,
                              gwth[blk])


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
    """Sparse index structures of the recurrent and thalamocortical masks (cached per model)."""

    def __init__(self, model):
        off = np.asarray(model.population_offsets, dtype=np.int64)
        n = int(off[-1])
        pop = np.repeat(np.arange(len(off) - 1), np.diff(off))
        mask = model.recurrent.mask.detach().cpu().numpy().astype(bool)
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

        tmask = model.thalamocortical.mask.detach().cpu().numpy().astype(bool)
        n_thal = tmask.shape[1]
        trows, tcols = np.nonzero(tmask)
        torder = np.lexsort((trows, tcols))
        trows, tcols = trows[torder].astype(np.int64), tcols[torder].astype(np.int64)
        self.th_flat = torch.from_numpy(trows * n_thal + tcols)
        self.trow = trows.astype(np.int32)
        self.tcolptr = np.concatenate([[0], np.cumsum(np.bincount(tcols, minlength=n_thal))]).astype(np.int64)
        self.tcolptr_t = torch.from_numpy(self.tcolptr.astype(np.int32))
        self.trow_t = torch.from_numpy(self.trow)
        self.n_thal = n_thal

        # CSR blocks of W^T for the backward's dL/ds = W^T dL/dI (torch sparse, MKL):
        # block i (i >= 1): this step's spikes of the populations before i <- population i,
        # shape (off[i], size_i); "prev": the previous step's spikes <- every population
        # (presynaptic population not before the postsynaptic one), shape (N, N).
        # Each is (crow_indices, col_indices, positions of its values in CSR order, shape).
        def transposed_csr(edges, n_rows, row_of, col_of):
            order = np.lexsort((col_of, row_of))
            crow = np.concatenate([[0], np.cumsum(np.bincount(row_of, minlength=n_rows))])
            # int32 indices: MKL's, so torch does not convert them at every product
            return (torch.from_numpy(crow.astype(np.int32)),
                    torch.from_numpy(col_of[order].astype(np.int32)),
                    torch.from_numpy(edges[order].astype(np.int64)))

        edge = np.arange(len(rows))
        # the postsynaptic neuron sees this step's spike: presynaptic population before its own
        this_step = pop[cols] < pop[rows]
        self.blocks = [None]
        for i in range(1, len(off) - 1):
            lo, hi = off[i], off[i + 1]
            sel = this_step & (rows >= lo) & (rows < hi)
            self.blocks.append(transposed_csr(edge[sel], lo, cols[sel], rows[sel] - lo)
                               + ((int(lo), int(hi - lo)),))
        sel = ~this_step
        self.prev_block = transposed_csr(edge[sel], n, cols[sel], rows[sel]) + ((n, n),)
        self.readout_index = model.readout_index.detach().cpu().long()
        # position of each neuron in the readout vector, -1 for neurons not read out
        self.ro_pos = np.full(n, -1, dtype=np.int64)
        self.ro_pos[self.readout_index.numpy()] = np.arange(len(self.readout_index))


def _structure(model) -> _Structure:
    m, tm = model.recurrent.mask, model.thalamocortical.mask
    key = (m.data_ptr(), m._version, tm.data_ptr(), tm._version, tuple(model.population_offsets))
    cached = model.__dict__.get("_engine_fast_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    st = _Structure(model)
    model.__dict__["_engine_fast_cache"] = (key, st)
    return st


def _fresh(x):
    """A new C-contiguous copy (``contiguous()`` may return a view for size-1 dims)."""
    return torch.empty(x.shape, dtype=x.dtype).copy_(x)


def _csr(crow, col, values, shape):
    """A torch sparse CSR matrix (its products run on MKL); indices are built valid."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class _FlushDenormal:
    """Flush-to-zero / denormals-are-zero on this thread for the duration of the block
    (torch's CPU kernels and MKL, e.g. the sparse products of the backward); restores the
    previous setting. Subnormal numbers only arise as gradients fade through time; treating
    them as zero changes nothing measurable and avoids a many-fold slowdown."""

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


def _nblocks(batch):
    return max(1, min(get_num_threads(), batch))


# ---------------------------------------------------------------------------- autograd Function
class _CortexFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, st, opts, vals, tvals, alpha, rho, w1, b1, w2, b2, thal, v0, s0):
        record_spikes, record_mem, need_grad, b0, beta = opts
        dtype = vals.dtype
        T, B = thal.shape[0], thal.shape[1]
        n, K = st.n, CHUNK
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
        for c in range(nck):
            t0, t1 = c * K, min(T, (c + 1) * K)
            if need_grad:
                vck[c].copy_(v)
                bck[c].copy_(bb)
            s_c = s_all[t0:t1] if keep_s else s_all[:t1 - t0]
            i_c = i_all[t0:t1] if need_grad else i_all
            m_c = m_all[t0:t1] if record_mem else m_all
            _fwd_chunk(thal_t[t0:t1].numpy(), st.tcolptr, st.trow, tv_np, st.colptr, st.crow,
                       cv_np, st.csplit, st.off, a_np, oma_np, r_np, omr_np, consts.numpy(),
                       st.ro_pos, m_ro_t.numpy(), c_ro.numpy(), v.numpy(), bb.numpy(),
                       sp.numpy(), i_c.numpy(), s_c.numpy(), m_c.numpy(), logits[t0:t1].numpy(),
                       need_grad, record_mem, nblk)
        # readout for t >= 1
        if T > 1:
            p_all = torch.softmax(logits[1:], dim=2)                  # (T-1, B, 3)
            out = p_all.sum(0)
        else:
            p_all = torch.empty((0, B, n_cls), dtype=dtype)
            out = torch.zeros(B, n_cls, dtype=dtype)
        if need_grad:
            ctx.st, ctx.T, ctx.B, ctx.b0, ctx.beta = st, T, B, b0, beta
            ctx.save_for_backward(vals, tvals, alpha, rho, w1, b1, w2, thal_t, s0, s_all, i_all,
                                  vck, bck, p_all)
        spikes = s_all.permute(0, 2, 1).to(dtype, memory_format=torch.contiguous_format) if record_spikes else torch.empty(0, dtype=dtype)
        mem = m_all.permute(0, 2, 1).contiguous() if record_mem else torch.empty(0, dtype=dtype)
        ctx.mark_non_differentiable(spikes, mem)
        return out, spikes, mem

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout, _gs, _gm):
        with _FlushDenormal():
            return _CortexFunction._backward(ctx, gout)

    @staticmethod
    def _backward(ctx, gout):
        (vals, tvals, alpha, rho, w1, b1, w2, thal_t, s0, s_all, i_all, vck, bck,
         p_all) = (t.detach() for t in ctx.saved_tensors)
        st, T, B = ctx.st, ctx.T, ctx.B
        dtype, n, K = vals.dtype, st.n, CHUNK
        off = [int(o) for o in st.off]
        ro = st.readout_index
        # readout backward. With gl = dL/dlogits, x the readout spikes, h = w1 x + b1:
        #   dL/dx = M^T gl (M = w2 w1),  gw1 = w2^T G,  gw2 = G w1^T + gb2 b1^T,
        #   gb1 = w2^T gb2,  where G = sum_{t,b} gl x^T (3 x 3606) and gb2 = sum gl.
        gp = gout.to(dtype)                                             # (B, 3)
        gl_all = torch.zeros((T, B, w2.shape[0]), dtype=dtype)
        if T > 1:
            p = p_all
            gl_all[1:] = p * (gp - (p * gp).sum(2, keepdim=True))      # (T-1, B, 3)
        m_ro_t = torch.matmul(w2, w1).t().contiguous()                 # (3606, 3)
        nblk = _nblocks(B)
        g_ro = torch.zeros((nblk, len(ro), w2.shape[0]), dtype=dtype)  # G^T per block

        def csr(block, values):
            crow, col, pos, shape = block
            return _csr(crow, col, values[pos], shape)

        w_blocks = [None] + [csr(b, vals) for b in st.blocks[1:]]      # W[pop i, :lo]^T
        w_prev_t = csr(st.prev_block, vals)                            # W_prev^T
        w_th_t = _csr(st.tcolptr_t, st.trow_t, tvals, (st.n_thal, n))
        oma, omr = 1 - alpha, 1 - rho
        a_np, oma_np, r_np, omr_np = (x.contiguous().numpy() for x in (alpha, oma, rho, omr))
        tiny = torch.finfo(dtype).tiny
        consts = _backward_consts(ctx.b0, ctx.beta, dtype, 1.0, tiny, GRAD_FLOOR * tiny)
        consts_np = consts.numpy()
        gs = torch.zeros((n, B), dtype=dtype)        # dL/ds of the step being processed
        gv_c = torch.zeros((n, B), dtype=dtype)      # alpha * dL/dv of the next step
        gb_c = torch.zeros((n, B), dtype=dtype)      # rho * dL/db of the next step
        gs_tail = torch.empty((n, B), dtype=dtype)
        galpha = torch.zeros(n, dtype=dtype)
        grho = torch.zeros(n, dtype=dtype)
        gs_np, gv_np, gb_np, gs_tail_np, galpha_np, grho_np = (
            x.numpy() for x in (gs, gv_c, gb_c, gs_tail, galpha, grho))
        gw = torch.zeros((nblk, st.nnz), dtype=dtype)                   # CSC order
        gwth = torch.zeros((nblk, len(st.trow)), dtype=dtype)
        gthal = torch.empty_like(thal_t)
        kb = min(K, T)
        vbuf, bbuf, sg, gi_c = (torch.empty((kb, n, B), dtype=dtype) for _ in range(4))
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
            for kk in range(k - 1, -1, -1):
                t = t0 + kk
                if t >= 1:     # the readout's gradient reaching the readout neurons' spikes
                    gs.index_add_(0, ro, torch.mm(m_ro_t, gl_all[t].t()))
                gi = gi_c[kk]
                if kk > 0:
                    s_prev, v_prev, b_prev = s_c[kk - 1], vbuf[kk - 1], bbuf[kk - 1]
                else:
                    s_prev, v_prev, b_prev = s_prev0, vck[c], bck[c]
                step = (gs_np, sg_k[kk].numpy(), s_prev.numpy(), v_prev.numpy(),
                        b_prev.numpy(), i_c[kk].numpy(), bbuf[kk].numpy(), a_np, oma_np,
                        r_np, omr_np, consts_np, gv_np, gb_np, gi.numpy(), gs_tail_np,
                        galpha_np, grho_np)
                # populations in reverse order: population i's dL/dI reaches this step's
                # spikes of the populations before it
                for i in range(len(off) - 2, -1, -1):
                    lo, hi = off[i], off[i + 1]
                    _bwd_population(lo, hi, *step)
                    if i > 0:
                        gs[:lo].addmm_(w_blocks[i], gi[lo:hi])
                # dL/ds of the previous step: reset, adaptation, and the current via W_prev
                torch.addmm(gs_tail, w_prev_t, gi, out=gs)
                gthal[t] = torch.mm(w_th_t, gi)
            _weight_grads_chunk(gi_c[:k].numpy(), s_c.numpy(), s_prev0.numpy(),
                                thal_t[t0:t1].numpy(), gl_all[t0:t1].numpy(), st.ro_pos,
                                st.colptr, st.crow, st.csplit, st.tcolptr, st.trow,
                                gw.numpy(), gwth.numpy(), g_ro.numpy(), nblk)
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
def run_thalamus(model, current: torch.Tensor, state) -> torch.Tensor:
    """The 200 VPM units over the sequence: current (T, batch, 200) -> spikes (T, batch, 200).

    CPU: one numba Function; other devices: the reference's per-step loop (200 units are
    too few to be worth a custom kernel there).
    """
    if _backend(current.device) == "torch":
        return engine_reference.run_thalamus(model, current, state)
    cfg = model.config
    dtype = current.dtype
    alpha, rho = decay_factors(model.thal_tau_m, model.thal_tau_adp)
    return _ThalamusFunction.apply(float(cfg.init_b), float(cfg.beta), current, alpha, rho,
                                   state.mem_thal.to(dtype), state.spk_thal.to(dtype))


def _backend(device) -> str:
    backend = BACKEND or ("numba" if device.type == "cpu" else "torch")
    if backend not in ("numba", "torch"):
        raise ValueError(f"ENGINE_FAST_BACKEND must be 'numba' or 'torch', got {backend!r}")
    if backend == "numba" and device.type != "cpu":
        raise ValueError("the numba backend of the fast engine runs on the CPU only; "
                         f"unset ENGINE_FAST_BACKEND to use the torch backend on {device}")
    return backend


def run_cortex(model, thal_spikes: torch.Tensor, state, record_spikes: bool = False,
               record_mem: bool = False):
    """Simulate the 13 cortical populations over the sequence (same contract as the reference).

    thal_spikes: (T, batch, 200) VPM spikes; state: the model's InitialState.
    Returns ``(output (batch, 3), spikes (T, batch, 4218) or None, mem (T, batch, 4218) or None)``.
    """
    backend = _backend(thal_spikes.device)
    if backend == "torch":
        return engine_torch.run_cortex(model, thal_spikes, state, record_spikes, record_mem)
    cfg = model.config
    st = _structure(model)
    dtype = model.tau_m.dtype
    # signed, masked weights at the connected entries only: weight * mask * sign[pre]
    w = model.recurrent.weight
    vals = w.reshape(-1)[st.rec_flat] * model.pre_sign.to(dtype)[st.col_t]
    tvals = model.thalamocortical.weight.reshape(-1)[st.th_flat]
    alpha, rho = decay_factors(model.tau_m, model.tau_adp)
    ro1, ro2 = model.readout[0], model.readout[1]
    inputs = (vals, tvals, alpha, rho, ro1.weight, ro1.bias, ro2.weight, ro2.bias,
              thal_spikes.to(dtype), state.mem.to(dtype), state.spk.to(dtype))
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    opts = (record_spikes, record_mem, need_grad, float(cfg.init_b), float(cfg.beta))
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
