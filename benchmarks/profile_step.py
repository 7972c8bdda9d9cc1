"""Where one training pass of the numba engine spends its time, on real data (CPU), and how
much work and memory traffic each kernel has.

    python benchmarks/profile_step.py [--checkpoint data/RSNN_bfd_spiking_generated.pth]
        [--data-dir data] [--batches 16,32,128] [--repeats 2] [--loss log-mean-prob]
        [--sigma S --scale A --cutoff C]

Loads a checkpoint (default: a fresh network, which fires far less than a trained one: the
event-driven kernels' cost grows with the firing rate), stacks the first B training samples
for each batch size B, and times forward and backward of the full sequence ``--repeats``
times after an untimed pass (numba's compilation or cache loading). Every numba kernel is
wrapped in a timer; "other" is the rest of the pass: torch's element-wise ops (the
surrogate's exponential, the readout, the gradients' scatter into the dense weight matrices)
and Python. ``--sigma``/``--scale``/``--cutoff`` set the surrogate (e.g. a narrow one:
``--sigma 0.02 --scale 0.015``).

Next to each kernel's time: the work it has, counted from the batch's recorded spikes, and
the bytes it moves by the engine's layout (connection indices uint16, values float32, one
batch block of W lanes per thread):
* ``_bwd_chunk``: per step and block, every connection gathers its target's W-lane gradient
  row (the dense product W^T dL/dI: connections x lanes multiply-adds) and streams its index
  and value; where its presynaptic neuron spiked in the block, it adds to its weight
  gradient (read and write, 8 bytes) one product per spike;
* ``_fwd_chunk``: each spike adds its weight to each target's current (read and write,
  8 bytes, plus the 6-byte connection) when scattering; gathering reads every connection
  for the block's lanes;
* ``_recompute_chunk``: reads currents and spikes, writes membrane, adaptation and exponent.
The last line printed is one JSON object with the figures of every batch size.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rsnn_bfd.config import SpikingConfig  # noqa: E402
from rsnn_bfd.io.checkpoint import load_checkpoint  # noqa: E402
from rsnn_bfd.network.engines import numba_cpu as engine_fast  # noqa: E402
from rsnn_bfd.network.model import build_model  # noqa: E402
from rsnn_bfd.network.readout import readout_loss  # noqa: E402
from rsnn_bfd.training.batches import stack_batch  # noqa: E402
from rsnn_bfd.training.data import load_datasets  # noqa: E402

KERNELS = ("_thalamus_forward", "_fwd_chunk", "_fwd_chunk_gather", "_recompute_chunk",
           "_bwd_chunk", "_thalamus_backward")
FORWARD_KERNELS = ("_thalamus_forward", "_fwd_chunk", "_fwd_chunk_gather")
INDEX, VALUE = 2, 4     # bytes of a connection's index (uint16) and value (float32)


def _timed(name, fn, seconds):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
    return wrapper


def work_model(model, spikes: torch.Tensor) -> dict:
    """Multiply-adds and bytes of the backward's and the forward's recurrent kernels for one
    pass, from the recorded spikes (T, B, N) of the batch, the connectivity and the blocks
    the engine uses (see the module docstring)."""
    net = model.network()
    fan_out = net.recurrent_mask.sum(0).to(torch.float64)           # (N,) per presynaptic
    nnz = float(fan_out.sum())
    T, B, N = spikes.shape
    nblk = engine_fast._nblocks(B)
    lanes = -(-B // nblk)
    s = spikes.to(torch.float64)
    spike_edges = float((s.sum((0, 1)) * fan_out).sum())            # sum over spikes of fan-out
    # connections whose neuron spiked in at least one lane of a block, per step
    bounds = [(b * B // nblk, (b + 1) * B // nblk) for b in range(nblk)]
    active_edges = sum(float(((s[:, lo:hi].amax(1)) * fan_out).sum()) for lo, hi in bounds)
    bwd = {"multiply_adds": nnz * B * T + spike_edges,
           "bytes_gathered": nnz * T * nblk * lanes * 4,
           "bytes_streamed": nnz * T * nblk * (INDEX + VALUE) + active_edges * 8,
           "lanes_per_block": lanes, "blocks": nblk}
    fwd = {"scatter_adds": spike_edges,
           "bytes_scatter": spike_edges * (8 + INDEX + VALUE)}
    rec = {"bytes": 4.0 * T * N * B * (1 + 3) + T * N * B}
    return {"_bwd_chunk": bwd, "_fwd_chunk": fwd, "_recompute_chunk": rec,
            "firing_rate": float(s.mean()), "connections": nnz}


def timed_pass(model, x, y, loss_name) -> tuple[float, float]:
    """Seconds of the forward (with the loss) and of the backward of one training pass; the
    gradients are left in the parameters."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    loss = readout_loss(model(x), y, loss_name)
    t1 = time.perf_counter()
    loss.backward()
    return t1 - t0, time.perf_counter() - t1


def profile_batch(model, x, y, loss_name, repeats, seconds) -> dict:
    result = {}
    for rep in range(repeats + 1):          # the first pass compiles or loads the kernels
        seconds.clear()
        fwd, bwd = timed_pass(model, x, y, loss_name)
        if rep == 0:
            continue
        fwd_k = sum(v for k, v in seconds.items() if k in FORWARD_KERNELS)
        bwd_k = sum(v for k, v in seconds.items() if k not in FORWARD_KERNELS)
        result = {"forward_s": round(fwd, 3), "backward_s": round(bwd, 3),
                  "kernels_s": {k: round(v, 3) for k, v in seconds.items()},
                  "forward_other_s": round(fwd - fwd_k, 3),
                  "backward_other_s": round(bwd - bwd_k, 3)}
        print(f"  repeat {rep}: forward {fwd:.2f} s, backward {bwd:.2f} s "
              f"(other {result['forward_other_s']:.2f} / {result['backward_other_s']:.2f} s); "
              f"kernels {result['kernels_s']}", flush=True)
    return result


def add_pass_flags(p: argparse.ArgumentParser, repeats: int) -> None:
    """The flags of a timed training pass (shared with ``bench_engine_ab.py``)."""
    p.add_argument("--batches", default="16,32,128", help="batch sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=repeats, help="timed forward + backward passes")
    p.add_argument("--loss", default="log-mean-prob", help="the readout loss of the pass")
    p.add_argument("--sigma", type=float, default=None, help="surrogate width (default: the network's)")
    p.add_argument("--scale", type=float, default=None, help="surrogate height factor")
    p.add_argument("--cutoff", type=float, default=None, help="surrogate cutoff in sigmas")


def pass_settings(p: argparse.ArgumentParser, args, model) -> list[int]:
    """Checks the flags of :func:`add_pass_flags`, puts the surrogate flags into ``model``'s
    configuration and runs it on the numba engine; returns the batch sizes."""
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        p.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if min(batches) < 1 or args.repeats < 1:
        p.error("--batches and --repeats must be at least 1")
    changes = {k: v for k, v in (("surrogate_sigma", args.sigma), ("surrogate_scale", args.scale),
                                 ("surrogate_cutoff", args.cutoff)) if v is not None}
    model.config = dataclasses.replace(model.config, **changes)
    model.engine = "numba"
    return batches


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="", help="a training checkpoint (default: fresh network)")
    p.add_argument("--data-dir", default="data", help="folder with the whisker data (generated if missing)")
    add_pass_flags(p, repeats=2)
    args = p.parse_args(argv)

    cfg = SpikingConfig(data_dir=args.data_dir)
    train_set, _ = load_datasets(cfg)
    model = load_checkpoint(args.checkpoint)[0] if args.checkpoint else build_model(cfg.model_config())
    batches = pass_settings(p, args, model)

    seconds: dict[str, float] = {}
    for name in KERNELS:
        if hasattr(engine_fast, name):
            setattr(engine_fast, name, _timed(name, getattr(engine_fast, name), seconds))
    results = {"threads": torch.get_num_threads(), "surrogate": list(model.network().surrogate),
               "loss": args.loss, "batches": {}}
    for batch in batches:
        batch = min(batch, len(train_set))
        x, y = stack_batch(train_set, list(range(batch)), "cpu")
        print(f"batch {batch}, T = {x.shape[3]}:", flush=True)
        row = profile_batch(model, x, y, args.loss, args.repeats, seconds)
        with torch.no_grad():        # untimed: recording the spikes costs time of its own
            spikes = model(x, record_spikes=True).spikes
        work = work_model(model, spikes)
        k = row["kernels_s"]
        for name in ("_bwd_chunk", "_fwd_chunk", "_recompute_chunk"):
            if name in k and k[name] > 0:
                w = work[name]
                w["seconds"] = k[name]
                if name == "_bwd_chunk":
                    w["gflops"] = round(w["multiply_adds"] / k[name] / 1e9, 1)
                    w["gbs_gathered"] = round(w["bytes_gathered"] / k[name] / 1e9, 1)
                    w["gbs_streamed"] = round(w["bytes_streamed"] / k[name] / 1e9, 1)
                elif name == "_fwd_chunk":
                    w["ns_per_scatter_add"] = round(k[name] / max(w["scatter_adds"], 1) * 1e9, 2)
                else:
                    w["gbs"] = round(w["bytes"] / k[name] / 1e9, 1)
        row["work"] = work
        row["us_per_sample_step"] = round((row["forward_s"] + row["backward_s"])
                                          / (batch * x.shape[3]) * 1e6, 1)
        b = work["_bwd_chunk"]
        print(f"  firing rate {work['firing_rate']:.4f}; backward kernel: "
              f"{b['multiply_adds'] / 1e9:.1f} G multiply-adds ({b.get('gflops')} G/s), "
              f"{b['bytes_gathered'] / 1e9:.1f} GB of gathered rows ({b.get('gbs_gathered')} GB/s), "
              f"{b['bytes_streamed'] / 1e9:.1f} GB streamed; {row['us_per_sample_step']} us per "
              "sample and step", flush=True)
        results["batches"][batch] = row
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
