"""The CPU's roofs, measured with numba, and the numba engine's two kernels of work on the real
connectivity in isolation: what bounds a training pass on this machine.

    python benchmarks/roofline.py [--checkpoint data/RSNN_bfd_spiking_generated.pth]
                                  [--steps 30] [--repeats 3]

Measures, each the best of ``--repeats``:
* vector FMA rate: 12 independent 8-lane float32 chains in registers, 1 thread and all;
* read bandwidth: summing float32 arrays of 16 KiB (L1), 256 KiB (L2), 8 MiB (L3) and 512 MiB
  (memory) per thread;
* the backward's dense product ``W^T g`` over the 1,242,810 recurrent connections (CSC by
  presynaptic neuron, the engine's layout): per thread a block of W lanes of its own (the
  engine's layout: each connection gathers its target's W lanes), W = 8, 16, 32, 64; and the
  same with every target row folded into the first 256 (the gathered rows in L1), which
  leaves the loop's own cost;
* the forward's scatter: at 3.85 % firing (the shipped network's rate), each spike adds its
  weight to the input currents of its targets in a 16-lane block (the engine's layout), in
  nanoseconds per (spike, connection).
The last line printed is one JSON object with the results.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from rsnn_bfd.io.checkpoint import load_checkpoint  # noqa: E402
from rsnn_bfd.network.engines.numba_structure import _structure  # noqa: E402
from rsnn_bfd.network.engines.numba_forward import _NoFullUnroll, _stack_ptr  # noqa: E402

CHAINS = 12       # independent accumulators of 8 lanes: enough to cover the FMA latency


@njit(parallel=True, fastmath=True)
def _fma(n_iter, n_threads, c, d, out):
    for t in prange(n_threads):
        acc = numba.carray(_stack_ptr(96, out.dtype), 96)
        for j in range(96):
            acc[j] = j
        for _ in range(n_iter):
            for j in range(96):
                acc[j] = acc[j] * c + d
        s = acc[0]
        for j in range(1, 96):
            s += acc[j]
        out[t] = s


@njit(parallel=True, fastmath=True)
def _read(arrays, reps, out):
    for t in prange(arrays.shape[0]):
        a = arrays[t]
        s = a[0] - a[0]
        for _ in range(reps):
            for i in range(a.shape[0]):
                s += a[i]
        out[t] = s


def _make_product(width):
    @njit(parallel=True, fastmath=True)
    def product(colptr, rows, vals, g, out, steps):
        n = colptr.shape[0] - 1
        for b in prange(g.shape[0]):
            gb, ob = g[b], out[b]
            acc = numba.carray(_stack_ptr(width, g.dtype), width)
            for _ in range(steps):
                for p in range(n):
                    for j in range(width):
                        acc[j] = 0
                    for e in range(colptr[p], colptr[p + 1]):
                        r, w = rows[e], vals[e]
                        for j in range(width):
                            acc[j] += w * gb[r, j]
                    for j in range(width):
                        ob[p, j] += acc[j]
    return product


@njit(parallel=True)
def _scatter(colptr, rows, vals, spikes, acc, steps):
    nb, n, width = acc.shape
    for b in prange(nb):
        a = acc[b]
        for t in range(steps):
            sp = spikes[t % spikes.shape[0], b]
            for p in range(n):
                for lane in range(width):
                    if sp[p, lane]:
                        for e in range(colptr[p], colptr[p + 1]):
                            a[rows[e], lane] += vals[e]


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(ROOT / "data" / "RSNN_bfd_spiking_generated.pth"))
    p.add_argument("--steps", type=int, default=30, help="repetitions of the kernels per timing")
    p.add_argument("--repeats", type=int, default=3, help="timings; the best is kept")
    args = p.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be at least 1")
    threads = numba.get_num_threads()
    model, _ = load_checkpoint(args.checkpoint)
    st = _structure(model.network())
    res = {"threads": threads, "connections": int(st.nnz), "neurons": int(st.n)}
    f32 = np.float32

    with _NoFullUnroll():
        out = np.zeros(threads, f32)
        _fma(1, 1, f32(0.999), f32(1e-3), out)
        n_iter = 2_000_000
        for t in sorted({1, threads}):
            dt = best(lambda: _fma(n_iter, t, f32(0.999), f32(1e-3), out), args.repeats)
            res[f"fma_gflops_{t}thr"] = round(96 * n_iter * t / dt / 1e9, 1)
            print(f"FMA, {t} thread(s): {res[f'fma_gflops_{t}thr']} G multiply-adds/s", flush=True)

        for label, size in (("L1", 16 << 10), ("L2", 256 << 10), ("L3", 8 << 20),
                            ("memory", 512 << 20)):
            for t in sorted({1, threads}):
                arrays = np.ones((t, size // 4), f32)
                reps = max(1, (1 << 30) // size)
                outs = np.zeros(t, f32)
                _read(arrays, 1, outs)
                dt = best(lambda: _read(arrays, reps, outs), args.repeats)
                res[f"read_gbs_{label}_{t}thr"] = round(size * reps * t / dt / 1e9, 1)
                print(f"read {label} ({size >> 10} KiB per thread), {t} thread(s): "
                      f"{res[f'read_gbs_{label}_{t}thr']} GB/s", flush=True)

        rng = np.random.default_rng(0)
        vals = rng.random(st.nnz).astype(f32)
        for width in (8, 16, 32, 64):
            product = _make_product(width)
            for label, rows in (("", st.crow), ("_l1", (st.crow % 256).astype(st.crow.dtype))):
                g = rng.random((threads, st.n, width)).astype(f32)
                o = np.zeros_like(g)
                product(st.colptr, rows, vals, g, o, 1)
                dt = best(lambda: product(st.colptr, rows, vals, g, o, args.steps),
                          args.repeats) / args.steps
                ns = dt / st.nnz * 1e9
                res[f"product_w{width}{label}_ns_per_connection"] = round(ns, 3)
                res[f"product_w{width}{label}_gflops"] = round(
                    st.nnz * width * threads / dt / 1e9, 1)
                res[f"product_w{width}{label}_gbs"] = round(
                    st.nnz * width * 4 * threads / dt / 1e9, 1)
                print(f"W^T g, {width} lanes per thread{' (rows in L1)' if label else ''}: "
                      f"{ns:.2f} ns per connection and thread, "
                      f"{res[f'product_w{width}{label}_gflops']} G multiply-adds/s, "
                      f"{res[f'product_w{width}{label}_gbs']} GB/s of gathered rows", flush=True)

        rate, width = 0.0385, 16
        spikes = rng.random((8, threads, st.n, width)) < rate
        acc = np.zeros((threads, st.n, width), f32)
        _scatter(st.colptr, st.crow, vals, spikes, acc, 1)
        dt = best(lambda: _scatter(st.colptr, st.crow, vals, spikes, acc, args.steps),
                  args.repeats) / args.steps
        events = spikes.sum() / (8 * threads) * st.nnz / st.n      # per thread and step
        res["scatter_ns_per_spike_connection"] = round(dt / events * 1e9, 3)
        print(f"forward scatter, 16 lanes per thread at {rate:.2%} firing: "
              f"{res['scatter_ns_per_spike_connection']} ns per spike and connection", flush=True)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
