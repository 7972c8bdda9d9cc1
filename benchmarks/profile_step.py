"""Where one training step of the fast engine spends its time, on real data (CPU).

    python benchmarks/profile_step.py [--checkpoint RUN/checkpoint.pth] [--data-dir data]
                                      [--batch 128] [--repeats 2]

Loads a checkpoint (default: a fresh network, which fires far less than a trained one: the
event-driven kernels' cost grows with the firing rate), stacks the first ``--batch`` training
samples, and times forward and backward of the full sequence ``--repeats`` times (the first
includes numba's compilation or cache loading). Every numba kernel of ``engines.numba_cpu`` is
wrapped in a timer; "other" is the rest of the backward: torch's element-wise ops (the
surrogate's exponential, the readout) and Python. Prints one line per repeat; the last line is one JSON object with
the last repeat's figures.
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

import torch  # noqa: E402

from rsnn_bfd.config import SpikingConfig  # noqa: E402
from rsnn_bfd.io.checkpoint import load_checkpoint  # noqa: E402
from rsnn_bfd.network.engines import numba_cpu as engine_fast  # noqa: E402
from rsnn_bfd.network.model import build_model  # noqa: E402
from rsnn_bfd.training.batches import stack_batch  # noqa: E402
from rsnn_bfd.training.data import load_datasets  # noqa: E402

KERNELS = ("_thalamus_forward", "_fwd_chunk", "_recompute_chunk", "_bwd_chunk",
           "_thalamus_backward")
FORWARD_KERNELS = ("_thalamus_forward", "_fwd_chunk")


def _timed(name, fn, seconds):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
    return wrapper


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="", help="a training checkpoint (default: fresh network)")
    p.add_argument("--data-dir", default="data", help="folder with the whisker data (generated if missing)")
    p.add_argument("--batch", type=int, default=128, help="samples per step")
    p.add_argument("--repeats", type=int, default=2, help="timed forward + backward passes")
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        p.error("--batch and --repeats must be at least 1")

    cfg = SpikingConfig(data_dir=args.data_dir)
    train_set, _ = load_datasets(cfg)
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint)
    else:
        model = build_model(cfg.model_config())
    batch = min(args.batch, len(train_set))
    x, y = stack_batch(train_set, list(range(batch)), "cpu")

    seconds: dict[str, float] = {}
    for name in KERNELS:
        setattr(engine_fast, name, _timed(name, getattr(engine_fast, name), seconds))
    result = {}
    for rep in range(args.repeats):
        seconds.clear()
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model(x)
        t1 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(out.output / x.shape[3], y)
        loss.backward()
        t2 = time.perf_counter()
        backward_kernels = sum(v for k, v in seconds.items() if k not in FORWARD_KERNELS)
        result = {"forward_s": t1 - t0, "backward_s": t2 - t1,
                  "kernels_s": {k: round(v, 3) for k, v in seconds.items()},
                  "backward_other_s": (t2 - t1) - backward_kernels, "batch": batch,
                  "steps": int(x.shape[3]), "torch_threads": torch.get_num_threads()}
        print(f"repeat {rep + 1}: forward {t1 - t0:.2f} s, backward {t2 - t1:.2f} s "
              f"(other {result['backward_other_s']:.2f} s); kernels {result['kernels_s']}",
              flush=True)
    with torch.no_grad():        # untimed: recording the spikes costs time of its own
        result["firing_rate"] = float(model(x, record_spikes=True).spikes.mean())
    print(f"cortical firing rate of the batch: {result['firing_rate']:.4f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
