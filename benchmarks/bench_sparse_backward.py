"""Time the numba backward with a truncated surrogate (the sparse backward: spike gradients
only of neurons near threshold) against the same Gaussian untruncated (today's dense
backward), on a trained network and real samples, in one process.

    python benchmarks/bench_sparse_backward.py [--checkpoint data/RSNN_bfd_spiking_generated.pth]
        [--data-dir data] [--batches 32,128] [--sigma 0.02] [--scale 0.015] [--cutoff 3]
        [--repeats 3]

Both runs use the surrogate of width ``--sigma`` (0.02 = b0 / 2, scaled to the threshold) and
peak 0.3 (``--scale 0.015``: LSNN's and Chen et al. 2022's dampening factor; at the
published scale 0.5 this narrow surrogate's gradient overflows over 550 steps), the
mean-logit loss on the first B training samples; only the cutoff differs. After a warm-up
at each batch size (numba compiles the backward per lane width) the two alternate
``--repeats`` times. Reports the median seconds of ``loss.backward()`` (the forward is the
same and not timed), the fraction of neuron-steps whose truncated surrogate is non-zero,
and how much the truncation changes the gradient (cosine between the two recurrent-weight
gradients). The last line printed is one JSON object with the results.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rsnn_bfd.config import SpikingConfig  # noqa: E402
from rsnn_bfd.io.checkpoint import load_checkpoint  # noqa: E402
from rsnn_bfd.network.readout import readout_loss  # noqa: E402
from rsnn_bfd.training.batches import stack_batch  # noqa: E402
from rsnn_bfd.training.data import run_data  # noqa: E402


def backward_seconds(model, x, labels):
    """(seconds of ``loss.backward()``, the recurrent-weight gradient)."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = readout_loss(out, labels, "mean-logit")
    t0 = time.perf_counter()
    loss.backward()
    seconds = time.perf_counter() - t0
    return seconds, model.recurrent.weight.grad.clone()


def nonzero_fraction(model, x) -> float:
    """Fraction of (step, sample, cortical neuron) of the first 8 samples whose truncated
    surrogate is non-zero: ``|mem - threshold| <= cutoff x sigma`` as the reference engine's
    neuron step forms it (``rsnn_bfd.network.neuron.spike_fn`` read in passing)."""
    from rsnn_bfd.network import neuron
    seen = {"near": 0, "all": 0}
    spike_fn = neuron.spike_fn
    bound = model.config.surrogate_cutoff * model.config.surrogate_sigma

    def reading(v, surrogate=neuron.PUBLISHED_SURROGATE):
        if v.shape[-1] != model.config.n_thalamus:    # a cortical population (none has 200)
            seen["near"] += int((v.abs() <= bound).sum())
            seen["all"] += v.numel()
        return spike_fn(v, surrogate)

    neuron.spike_fn = reading
    try:
        with torch.no_grad():
            model(x[:8], engine="reference")
    finally:
        neuron.spike_fn = spike_fn
    return seen["near"] / max(seen["all"], 1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="data/RSNN_bfd_spiking_generated.pth")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--batches", default="32,128")
    parser.add_argument("--sigma", type=float, default=0.02)
    parser.add_argument("--scale", type=float, default=0.015)
    parser.add_argument("--cutoff", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model, _ = load_checkpoint(args.checkpoint)
    model.use_engine("numba")
    data = run_data(SpikingConfig(data_dir=args.data_dir, progress=False), log=lambda *a: None)
    model.config.surrogate_scale = args.scale
    results = {"checkpoint": args.checkpoint, "sigma": args.sigma, "scale": args.scale,
               "cutoff": args.cutoff,
               "threads": torch.get_num_threads(), "batches": []}
    for batch in (int(b) for b in args.batches.split(",")):
        idx = [data.train_idx[i % len(data.train_idx)] for i in range(batch)]
        x, labels = stack_batch(data.train_set, idx, "cpu")
        row = {"batch": batch}
        grads, times = {}, {"dense": [], "sparse": []}
        modes = {"dense": 0.0, "sparse": args.cutoff}
        # the kernels are compiled per lane width: warm up at this batch size, then alternate
        model.config.surrogate_sigma, model.config.surrogate_cutoff = args.sigma, 0.0
        backward_seconds(model, x, labels)
        for _ in range(args.repeats):
            for name, cutoff in modes.items():
                model.config.surrogate_cutoff = cutoff
                seconds, grads[name] = backward_seconds(model, x, labels)
                times[name].append(seconds)
        for name in modes:
            row[f"{name}_s"] = statistics.median(times[name])
            print(f"B = {batch}: {name} backward {row[f'{name}_s']:.2f} s "
                  f"(runs {', '.join(f'{t:.2f}' for t in times[name])})", flush=True)
        row["speedup"] = row["dense_s"] / row["sparse_s"]
        a, b = grads["dense"].flatten().double(), grads["sparse"].flatten().double()
        row["gradient_cosine"] = float(a @ b / (a.norm() * b.norm()))
        row["nonzero_surrogate"] = nonzero_fraction(model, x)
        print(f"B = {batch}: x{row['speedup']:.2f}, surrogate non-zero at "
              f"{100 * row['nonzero_surrogate']:.1f} % of neuron-steps, gradient cosine "
              f"{row['gradient_cosine']:.4f}", flush=True)
        results["batches"].append(row)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
