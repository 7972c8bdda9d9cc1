"""The ``numba`` engine's forward kernels (CPU): the cortex, chunk by chunk, by scattering
the input currents of active neurons or gathering each neuron's incoming connections, and
the VPM layer. Design and layout: :mod:`rsnn_bfd.network.engines.numba_cpu`.
"""
from __future__ import annotations

import llvmlite.binding as llvm
import llvmlite.ir
import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

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
    nonzero: their positions into ``lanes`` and values into ``xs``; returns their count.

    Branch-free: every lane is written to the next free slot, which only an active lane
    keeps (a branch per lane, mispredicted at every spike, cost about 4 ns a lane)."""
    cnt = 0
    for j in range(row.shape[0]):
        x = row[j]
        lanes[cnt] = j
        xs[cnt] = x
        cnt += x != 0
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
