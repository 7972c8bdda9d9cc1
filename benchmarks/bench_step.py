"""Time the reference engine and the fast one (``auto``: numba on the CPU, torch on CUDA) on
the same input (ms per time step).

    python benchmarks/bench_step.py [--batch 128] [--steps 50] [--device cpu] [--memory]

Runs a warm-up, then reports the median of several repeats of the forward pass (no grad) and
of forward + backward (loss on the summed output) for each engine, in the same process on
the same input (spiking encoder, random whisker spikes, the published initial state).
``--memory`` also measures, in a fresh subprocess, the peak RSS (and on CUDA the peak GPU
memory) of one full-length training step of the fast engine (``auto``) (T = 550, batch 128: forward,
backward, Adam step, constraint) on ``--device``, and times the steps of one epoch of the
paper's training (batches of 128 and 90, evaluation of 55) for the 100-epoch estimate.
The last line printed is one JSON object with the results.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rsnn_bfd.network.model import ModelConfig, build_model  # noqa: E402


def make_input(batch, steps, rate, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, 2, 1, steps, 93, generator=g) < rate).float()
    return x.to(device)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_once(model, x, engine, backward, device):
    """Seconds for one forward (no grad) or forward + backward pass."""
    model.zero_grad(set_to_none=True)
    sync(device)
    t0 = time.perf_counter()
    if backward:
        out = model(x, engine=engine).output
        labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        torch.nn.functional.cross_entropy(out / x.shape[3], labels).backward()
    else:
        with torch.no_grad():
            model(x, engine=engine)
    sync(device)
    return time.perf_counter() - t0


def time_engines(model, x, engines, repeats, backward, device):
    """Median ms per time step of each engine; the repeats of the engines are interleaved
    (fast, reference, fast, ...) so that load from other processes hits both alike."""
    for engine in engines:                               # warm-up (compilation, caches)
        run_once(model, x, engine, backward, device)
    times = {engine: [] for engine in engines}
    for _ in range(repeats):
        for engine in engines:
            times[engine].append(run_once(model, x, engine, backward, device))
    return {e: statistics.median(t) / x.shape[3] * 1e3 for e, t in times.items()}


def training_step_memory(batch=128, steps=550, rate=0.05, device="cpu"):
    """Full-length fast-engine training steps in this (fresh) process; prints JSON.

    One step at ``batch`` (peak memory, time), then, for the epoch estimate, one step at the
    paper's last batch of 90 and the no-grad evaluation of the 55 test samples.
    """
    torch.manual_seed(0)
    model = build_model(ModelConfig(), device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    # the dataset's full sample shape: 12 sweeps, of which sweep 0 drives the network
    x = (torch.rand(batch, 2, 12, steps, 93, generator=g) < rate).to(torch.uint8).to(device)
    labels = torch.randint(0, 3, (batch,), generator=g).to(device)
    # warm-up on a short sequence (numba cache load, thread pools), not in the timing
    model(x[:, :, :, :10]).output.sum().backward()
    model.zero_grad(set_to_none=True)
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20

    def train_step(n):
        sync(device)
        t0 = time.perf_counter()
        out = model(x[:n]).output
        sync(device)
        t1 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(out / steps, labels[:n])
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.constrain_()
        sync(device)
        return t1 - t0, time.perf_counter() - t0

    forward_s, step_s = train_step(batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB -> GiB
    gpu = torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else None
    _, step90_s = train_step(min(90, batch))
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        model(x[:55], record_spikes=True)
    sync(device)
    eval_s = time.perf_counter() - t0
    print(json.dumps({"peak_rss_gb": peak, "rss_before_step_gb": rss0, "peak_gpu_gb": gpu,
                      "forward_s": forward_s, "train_step_s": step_s,
                      "train_step_90_s": step90_s, "eval_55_s": eval_s}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50, help="sequence length T of timed runs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0.05, help="input spike probability")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--memory", action="store_true",
                    help="also measure peak RSS of a T=550, batch-128 training step")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--_memory-child", dest="memory_child", action="store_true",
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        training_step_memory(args.batch, args.steps, args.rate, args.device)
        return

    # the full-length training step first, in a fresh process, before this process's own
    # runs (the reference's autograd graphs) have taken memory that the child would compete for
    peak = peak_gpu = epoch_min = None
    if args.memory:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child",
               "--batch", "128", "--steps", "550", "--rate", str(args.rate),
               "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        mem = json.loads(proc.stdout.strip().splitlines()[-1])
        peak, peak_gpu = mem["peak_rss_gb"], mem["peak_gpu_gb"]
        gpu_note = f", peak GPU memory {peak_gpu:.2f} GiB" if peak_gpu is not None else ""
        print(f"training step T=550 B=128: peak RSS {peak:.2f} GiB{gpu_note}, forward "
              f"{mem['forward_s']:.1f} s, forward+backward+step {mem['train_step_s']:.1f} s")
        # one epoch of the paper's spiking training: 218 training samples in batches of 128
        # and 90, and the 55 test samples evaluated without grad, all at T = 550 (measured
        # on random input spikes: the firing rate, and so the time, differs on real data)
        epoch_s = mem["train_step_s"] + mem["train_step_90_s"] + mem["eval_55_s"]
        epoch_min = 100 * epoch_s / 60
        print(f"epoch estimate: steps of 128 and 90 samples {mem['train_step_s']:.1f} + "
              f"{mem['train_step_90_s']:.1f} s, evaluation of 55 {mem['eval_55_s']:.1f} s = "
              f"{epoch_s:.1f} s -> 100 epochs {epoch_min:.1f} min")
    dtype = getattr(torch, args.dtype)
    model = build_model(ModelConfig(), device=args.device, dtype=dtype)
    x = make_input(args.batch, args.steps, args.rate, device=args.device).to(dtype)
    with torch.no_grad():
        res = model(x, record_spikes=True, engine="auto")
    rate = res.spikes.float().mean().item()
    print(f"device={args.device} batch={args.batch} T={args.steps} dtype={args.dtype} "
          f"torch_threads={torch.get_num_threads()} cortical spike rate={rate:.4f}")
    engines = ["auto"] + ([] if args.skip_reference else ["reference"])
    fwd = time_engines(model, x, engines, args.repeats, False, args.device)
    fb = time_engines(model, x, engines, args.repeats, True, args.device)
    results = {e: (fwd[e], fb[e]) for e in engines}
    for engine in engines:
        print(f"{engine:>9}: forward {fwd[engine]:9.2f} ms/step   "
              f"forward+backward {fb[engine]:9.2f} ms/step")
    fast, ref = results["auto"], results.get("reference")
    print(json.dumps({
        "reference_ms_per_step": ref[1] if ref else None,
        "fast_ms_per_step": fast[1],
        "speedup": ref[1] / fast[1] if ref else None,
        "forward_speedup": ref[0] / fast[0] if ref else None,
        "reference_forward_ms_per_step": ref[0] if ref else None,
        "fast_forward_ms_per_step": fast[0],
        "peak_rss_gb_T550_B128": peak,
        "peak_gpu_gb_T550_B128": peak_gpu,
        "extrapolated_100_epochs_min": epoch_min,
        "batch": args.batch,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
