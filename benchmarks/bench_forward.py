"""Time the numba engine's two ways of forming the recurrent input in the forward pass, on
the same input: ``scatter`` (from the neurons that spiked; its cost grows with the firing
rate) and ``gather`` (over every neuron's incoming connections, all lanes of a batch block
at once; its cost grows with the block's width), and ``auto`` (per chunk, by
``engines.numba_cpu.GATHER_RATE``). Checks that the three give the same spikes and logits.

    python benchmarks/bench_forward.py [--batch 16,32,55,220] [--init-w 0.06,0.1,0.14,0.22]
                                       [--steps 96] [--repeats 3] [--out results.json]

Inference (no grad), float32, random input spikes (15 % per line and step) and the
published initial state; the firing rate is set through the initial weight scale
(``--init-w``). Reports the median over repeats in microseconds per sample and time step
(numba's thread count: ``NUMBA_NUM_THREADS``). The last line printed is one JSON object.
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

import numba  # noqa: E402
import torch  # noqa: E402

from rsnn_bfd.writing import atomic_write_json  # noqa: E402
from rsnn_bfd.network.engines import (  # noqa: E402
    RECURRENT_INPUT_MODES,
    EngineOptions,
    numba_cpu,  # noqa: E402
)
from rsnn_bfd.network.model import ModelConfig, build_model  # noqa: E402


def int_list(text):
    return [int(v) for v in text.split(",")]


def float_list(text):
    return [float(v) for v in text.split(",")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int_list, default=[16, 32, 55, 220])
    ap.add_argument("--init-w", type=float_list, default=[0.06, 0.1, 0.14, 0.22],
                    help="initial weight scales (higher: more firing)")
    ap.add_argument("--steps", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if min(args.batch) < 1 or args.steps < 2 or args.repeats < 1:
        ap.error("--batch >= 1, --steps >= 2 and --repeats >= 1 are required")

    rows = []
    for init_w in args.init_w:
        model = build_model(ModelConfig(seed=3, init_w=init_w), dtype=torch.float32)
        model.eval()
        for batch in args.batch:
            g = torch.Generator().manual_seed(batch)
            x = (torch.rand(batch, 2, 1, args.steps, 93, generator=g) < 0.15).float()
            state = model.initial_state(batch)
            times, results = {}, {}
            for mode in RECURRENT_INPUT_MODES:
                opts = EngineOptions(recurrent_input=mode)
                with torch.no_grad():
                    results[mode] = model(x, state=state, record_spikes=True, engine="numba",
                                          options=opts)                    # also a warm-up
                    samples = []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        model(x, state=state, engine="numba", options=opts)
                        samples.append(time.perf_counter() - t0)
                times[mode] = statistics.median(samples) / (batch * args.steps) * 1e6
            ref = results["scatter"]
            same = all(torch.equal(results[m].spikes, ref.spikes)
                       and torch.equal(results[m].output, ref.output) for m in results)
            _, width = numba_cpu._gather_blocks(batch)
            row = {"init_w": init_w, "batch": batch, "gather_width": width,
                   "firing_rate": float(ref.spikes[1:].mean()),
                   **{f"{m}_us_per_sample_step": round(t, 2) for m, t in times.items()},
                   "gather_speedup": round(times["scatter"] / times["gather"], 3),
                   "identical": same}
            rows.append(row)
            print(f"init_w {init_w:<5} batch {batch:<4} width {width:<3} rate "
                  f"{row['firing_rate']:.3f}: scatter {times['scatter']:7.1f}  gather "
                  f"{times['gather']:7.1f}  auto {times['auto']:7.1f} us/sample-step  "
                  f"(gather x{row['gather_speedup']:.2f}){'' if same else '  DIFFERENT'}",
                  flush=True)
            if not same:
                raise SystemExit("scatter and gather gave different results")
    result = {"threads": numba.get_num_threads(), "steps": args.steps,
              "repeats": args.repeats, "torch": torch.__version__, "rows": rows}
    if args.out:
        atomic_write_json(result, Path(args.out))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
