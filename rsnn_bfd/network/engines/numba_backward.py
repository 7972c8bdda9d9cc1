"""The ``numba`` engine's backward kernels (CPU): the hand-written BPTT of the cortex, chunk
by chunk in reverse time, and of the VPM layer. Design and layout:
:mod:`rsnn_bfd.network.engines.numba_cpu`.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from rsnn_bfd.network.engines.numba_forward import (_active_lanes, _flush, _NoFullUnroll,
                                                    _stack_ptr)

# lanes per batch block of the backward: at most 64 (the accumulators live in registers)
BWD_LANES = 64


@njit(parallel=True, cache=True)
def _recompute_chunk(i_c, s_c, s_prev0, vck, bck, alpha, oma, rho, omr, consts, vbuf, bbuf,
                     ybuf, parts):
    """Membrane and adaptation of a chunk's steps from its checkpoint (the forward's ops, so
    bit-identical), and ``y = -(x^2) / (2 sigma^2)`` with ``x = v - threshold``, the exponent
    of the surrogate derivative (exponentiated afterwards by torch's vectorised exp).

    (k, N, B) arrays. Each of ``parts`` threads takes a range of neurons and runs them step
    by step, so that it reads and writes its part of each step in memory order (one neuron
    over all steps touched a new page at every row); the previous step's rows are chosen
    before the lane loop, which then vectorises.
    """
    n_steps, n, batch = i_c.shape
    b0, beta, two_var, one, tiny = consts[0], consts[1], consts[2], consts[5], consts[6]
    for part in prange(parts):
        for tt in range(n_steps):
            for u in range(part * n // parts, (part + 1) * n // parts):
                a, om_a, r_, om_r = alpha[u], oma[u], rho[u], omr[u]
                i_r, vb, bbr, yb = i_c[tt, u], vbuf[tt, u], bbuf[tt, u], ybuf[tt, u]
                if tt == 0:
                    _recompute_row(s_prev0[u], vck[u], bck[u], i_r, vb, bbr, yb, a, om_a,
                                   r_, om_r, b0, beta, two_var, one, tiny)
                else:
                    _recompute_row(s_c[tt - 1, u], vbuf[tt - 1, u], bbuf[tt - 1, u], i_r, vb,
                                   bbr, yb, a, om_a, r_, om_r, b0, beta, two_var, one, tiny)


@njit(inline="always")
def _recompute_row(s_prev, v_prev, b_prev, i_r, vb, bbr, yb, a, om_a, r_, om_r, b0, beta,
                   two_var, one, tiny):
    """One step of one neuron over the batch lanes (see :func:`_recompute_chunk`)."""
    for j in range(i_r.shape[0]):
        sp = s_prev[j] * one
        bn = r_ * b_prev[j] + om_r * sp
        bn = _flush(bn, tiny)
        thr = b0 + beta * bn
        vn = v_prev[j] * a + om_a * i_r[j] - thr * sp
        vb[j] = vn
        bbr[j] = bn
        x = vn - thr
        yb[j] = -(x * x) / two_var


@njit(inline="always")
def _spike_lanes(arr, p, lo, nbl, lanes, xs, cnt):
    """The batch lanes where neuron ``p`` spiked, ``arr[p, lo:lo + nbl]`` (any numeric type):
    positions into ``lanes[p]``, values into ``xs[p]`` (1 for binary spikes; the initial
    state and the thalamic input may hold others), count into ``cnt[p]`` (the forward's
    :func:`_active_lanes`, branch-free)."""
    cnt[p] = _active_lanes(arr[p, lo:lo + nbl], lanes[p], xs[p])


@njit(inline="always")
def _edges_backward(e0, e1, rows, vals, g, lanes, xs, p, cnt, gw, acc, acc2, width):
    """Backward through the connections e0:e1 of presynaptic neuron ``p``, on one batch
    block of ``width`` lanes (a compile-time constant).

    g (N, width) is the block's dL/dI; acc2 (width,) scratch. Sets ``acc[j] = sum_e
    vals[e] * g[rows[e], j]``, p's spike gradient through these connections (all lanes,
    dense), and adds the weight gradients ``gw[e] += sum_q xs[p, q] * g[rows[e],
    lanes[p, q]]`` over the ``cnt`` lanes where p spiked, with their spike values
    ``xs[p, q]`` (event-driven; one, two and three lanes unrolled).
    """
    for j in range(width):
        acc[j] = 0
    if cnt == 0 and width <= 16:
        # blocks of 8 or 16 lanes are one or two vectors: with one accumulator every
        # connection waits for the previous one's multiply-add (its latency, not the loads,
        # bounds the loop), so even and odd connections go to two accumulators, summed at
        # the end (a fixed order, so deterministic). The product of 32 or 64 lanes has
        # enough independent vectors; with a spiking lane the weight gradient's loads
        # dominate (neither gained from it, docs/performance.md)
        for j in range(width):
            acc2[j] = 0
        e = e0
        while e + 1 < e1:
            r, w, r2, w2 = rows[e], vals[e], rows[e + 1], vals[e + 1]
            for j in range(width):
                acc[j] += w * g[r, j]
                acc2[j] += w2 * g[r2, j]
            e += 2
        if e < e1:
            r, w = rows[e], vals[e]
            for j in range(width):
                acc[j] += w * g[r, j]
        for j in range(width):
            acc[j] += acc2[j]
    elif cnt == 0:
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
def _edges_weights(e0, e1, rows, g, lanes, xs, p, cnt, gw):
    """The weight-gradient half of :func:`_edges_backward` alone (same sums): for a neuron
    whose spike gradient is not needed because its surrogate derivative is zero on every
    lane of the block (the sparse backward)."""
    if cnt == 0:
        return
    for e in range(e0, e1):
        r = rows[e]
        s = xs[p, 0] * g[r, lanes[p, 0]]
        for q in range(1, cnt):
            s += xs[p, q] * g[r, lanes[p, q]]
        gw[e] += s


@njit(inline="always")
def _silent(sg_t, p, lo, nbl):
    """Whether neuron ``p``'s surrogate derivative is zero on lanes lo:lo + nbl of a step
    (then its spike gradient at that step is multiplied by zero: no need to form it)."""
    for j in range(nbl):
        if sg_t[p, lo + j] != 0:
            return False
    return True


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
    hi = lo + nbl
    for u in range(u0, u1):
        a, om_a, r_, om_r = alpha[u], oma[u], rho[u], omr[u]
        # one neuron's rows, taken once: about twice as fast as indexing the 2-d arrays
        gs_r, gv_r, gb_r, gi_r, gt_r = gs[u], gv[u], gb[u], gi[u], gtail[u]
        sg_r, sp_r, vp_r, bp_r = sg[u, lo:hi], s_prev[u, lo:hi], v_prev[u, lo:hi], b_prev[u, lo:hi]
        it_r, bt_r = i_t[u, lo:hi], b_t[u, lo:hi]
        ga = 0.0
        gr = 0.0
        for j in range(nbl):
            s_p = sp_r[j] * one
            gx = gs_r[j] * sg_r[j]
            g_v = gx + gv_r[j]
            g_i = g_v * om_a
            gi_r[j] = _flush(g_i, floor)    # no subnormals (see docstring)
            thr = b0 + beta * bt_r[j]
            gthr = -gx - g_v * s_p
            g_b = beta * gthr + gb_r[j]
            ga += g_v * (vp_r[j] - it_r[j])
            gr += g_b * (bp_r[j] - s_p)
            g_s = -g_v * thr + g_b * om_r
            gt_r[j] = _flush(g_s, floor)
            gv_r[j] = _flush(a * g_v, floor)
            gb_r[j] = _flush(r_ * g_b, floor)
        galpha[u] += ga
        grho[u] += gr


def _make_bwd_chunk(width):
    """``_bwd_chunk`` compiled for batch blocks of at most ``width`` lanes: its lane loops
    have a fixed length, so that the accumulators stay in registers."""

    @njit(parallel=True, cache=True, fastmath=True)
    def _bwd_chunk(t0, gl_c, gsp_c, has_gsp, sg, s_c, s_prev0, vbuf, bbuf, vck, bck, i_c,
                   thal_c, off, colptr, crow, cval, csplit, tcolptr, trow, tval, ro, m_ro_t,
                   alpha, oma, rho, omr, consts, gs_b, gv_b, gb_b, gi_b, gt_b, gw, gwth, g_ro,
                   galpha_b, grho_b, gthal_c, nblocks, sparse):
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

        ``sparse`` (a truncated surrogate): a neuron's spike gradient at a step is formed only
        if its surrogate derivative is non-zero on some lane of the block at that step, since
        it is used only multiplied by it (the weight gradients of its connections are always
        formed); exact, as the skipped products are zeros (Perez-Nieves & Goodman 2021's
        sparse backward, without approximation; a non-finite gradient times a zero surrogate,
        NaN in the dense backward, is 0 here). Not at a chunk's first step, whose previous
        step lies in the chunk before.
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
            acc2 = numba.carray(_stack_ptr(width, sg.dtype), width)
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
                        if sparse and _silent(sg[kk], p, lo, nbl):
                            _edges_weights(csplit[p], colptr[p + 1], crow, gi, cur_l, cur_x, p,
                                           cur_c[p], gwb)
                            continue
                        _edges_backward(csplit[p], colptr[p + 1], crow, cval, gi, cur_l, cur_x,
                                        p, cur_c[p], gwb, acc, acc2, width)
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
                    if sparse and kk > 0 and _silent(sg[kk - 1], p, lo, nbl):
                        _edges_weights(colptr[p], csplit[p], crow, gi, prv_l, prv_x, p,
                                       prv_c[p], gwb)
                        continue
                    _edges_backward(colptr[p], csplit[p], crow, cval, gi, prv_l, prv_x, p,
                                    prv_c[p], gwb, acc, acc2, width)
                    for j in range(width):
                        gs[p, j] += acc[j]
                # thalamic spikes
                for kt in range(n_thal):
                    _spike_lanes(thal_c[kk], kt, lo, nbl, th_l, th_x, th_c)
                    _edges_backward(tcolptr[kt], tcolptr[kt + 1], trow, tval, gi, th_l, th_x, kt,
                                    th_c[kt], gwthb, acc, acc2, width)
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


@njit(parallel=True, cache=True)
def _thalamus_backward(g_out, cur, s_out, v_out, b_out, v0, s0, alpha, oma, rho, omr, consts,
                       g_cur, gv0, gs0, galpha, grho):
    """BPTT of ``_thalamus_forward``; each batch lane in parallel.

    g_out (T, B, 200) dL/dspikes. Writes g_cur (T, B, 200) dL/dcurrent, gv0 / gs0 (B, 200)
    for the initial state, and galpha / grho (B, 200) per lane (summed by the caller).
    """
    n_steps, batch, n = cur.shape
    b0, beta, two_var, norm, scale = consts[0], consts[1], consts[2], consts[3], consts[4]
    cut2 = consts[5]          # (cutoff x sigma)^2: zero beyond (inf: untruncated)
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
                sg = math.exp(-(x * x) / two_var) / norm * scale if x * x <= cut2 else 0.0
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
