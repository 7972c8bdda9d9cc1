"""A/B of the torch engine's options on CUDA in one process, on the same input (ms per step).

    python benchmarks/ab_cuda.py [--batch 128] [--steps 100] [--repeats 5] [--device cuda]

Variants of the torch engine, their repeats interleaved: ``graphs`` (the default: CUDA
graphs, the torch engine's VPM layer), ``eager`` (``EngineOptions(cuda_graphs=False)``) and
``reference_vpm`` (graphs, but the reference engine's per-step VPM layer). Reports the
median forward (no grad) and forward + backward ms per step of each, and checks that
``eager`` gives the same spikes and gradients bit for bit, and ``reference_vpm`` the same
spikes. The last line printed is one JSON object with the results.
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
from bench_step import make_input, sync  # noqa: E402

from rsnn_bfd.network.engines import EngineOptions  # noqa: E402
from rsnn_bfd.network.engines import reference as engine_reference  # noqa: E402
from rsnn_bfd.network.engines import torch_dense as engine_torch  # noqa: E402
from rsnn_bfd.network.model import ModelConfig, build_model  # noqa: E402

TORCH_VPM = engine_torch.run_thalamus
VARIANTS = {  # name: (options, VPM layer)
    "graphs": (EngineOptions(cuda_graphs=True), TORCH_VPM),
    "eager": (EngineOptions(cuda_graphs=False), TORCH_VPM),
    "reference_vpm": (EngineOptions(cuda_graphs=True), engine_reference.run_thalamus),
}
MODEL = None


def use(variant):
    """The variant's options on the model, and its VPM layer in the torch engine (a
    benchmark-only swap of the module's function)."""
    MODEL.engine_options, engine_torch.run_thalamus = VARIANTS[variant]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100, help="sequence length T")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    torch.manual_seed(0)
    global MODEL
    model = MODEL = build_model(ModelConfig(), device=args.device, engine="torch")
    x = make_input(args.batch, args.steps, rate=0.05, seed=1, device=args.device)

    def forward():
        with torch.no_grad():
            model(x)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(x).output.sum().backward()

    res = {}
    try:
        for name, fn in (("fwd", forward), ("fwd_bwd", forward_backward)):
            times = {v: [] for v in VARIANTS}
            for rep in range(args.repeats + 1):          # the first round is the warm-up
                for variant in VARIANTS:
                    use(variant)
                    sync(args.device)
                    t0 = time.perf_counter()
                    fn()
                    sync(args.device)
                    if rep:
                        times[variant].append((time.perf_counter() - t0) / args.steps * 1e3)
            for variant, t in times.items():
                res[f"{name}_{variant}_ms_per_step"] = statistics.median(t)
        outs = {}
        for variant in VARIANTS:
            use(variant)
            model.zero_grad(set_to_none=True)
            r = model(x, record_spikes=True)
            r.output.sum().backward()
            grads = [p.grad.clone() for p in model.parameters()]
            outs[variant] = [r.spikes.detach().clone()] + grads
    finally:
        use("graphs")
    res["eager_identical"] = all(torch.equal(a, b) for a, b in zip(outs["graphs"], outs["eager"]))
    res["reference_vpm_same_spikes"] = torch.equal(outs["graphs"][0], outs["reference_vpm"][0])
    res["reference_vpm_max_rel_grad_diff"] = max(
        float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        for a, b in zip(outs["graphs"][1:], outs["reference_vpm"][1:]))
    for variant in VARIANTS:
        print(f"{variant:>14}: forward {res[f'fwd_{variant}_ms_per_step']:7.3f} ms/step   "
              f"forward+backward {res[f'fwd_bwd_{variant}_ms_per_step']:7.3f} ms/step")
    res.update(batch=args.batch, steps=args.steps, device=args.device)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
