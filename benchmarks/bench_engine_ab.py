"""Time the numba engine's training pass (forward + backward, T = 550) against its version at
another commit, in one process, interleaved, on the same network and samples.

    python benchmarks/bench_engine_ab.py [--base HEAD~1] [--batches 16,32,128] [--repeats 3]
        [--checkpoint data/RSNN_bfd_spiking_generated.pth] [--data-dir data]
        [--loss log-mean-prob] [--sigma S --scale A --cutoff C]

The base version's engine files (``rsnn_bfd/network/engines/numba_{cpu,forward,backward,
structure}.py`` at ``--base``, those it has) are written to a cache folder (``~/.cache/rsnn_bfd/
_engine_<commit>``, so numba's compiled kernels are kept between runs) and imported as a
package of their own; the model's ``numba`` engine is switched between the two per pass. After
a warm-up of each at each batch size (numba compiles per lane width), the two alternate
``--repeats`` times; reported: the median seconds of forward and of backward, microseconds
per sample and step, the speedup of the whole pass, and how far the current version's
gradients are from the base's (largest difference relative to the largest gradient, per
parameter). The last line printed is one JSON object with the results.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rsnn_bfd.config import SpikingConfig  # noqa: E402
from rsnn_bfd.io.checkpoint import load_checkpoint  # noqa: E402
from rsnn_bfd.network import engines  # noqa: E402
from rsnn_bfd.training.batches import stack_batch  # noqa: E402
from rsnn_bfd.training.data import load_datasets  # noqa: E402

from profile_step import add_pass_flags, pass_settings, timed_pass  # noqa: E402  (a sibling)

ENGINE_FILES = ("numba_cpu", "numba_forward", "numba_backward", "numba_structure")


def base_engine(rev: str):
    """The numba engine module as of commit ``rev``, imported from a cache folder."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", rev + "^{commit}"],
                            capture_output=True, text=True)
    if commit.returncode != 0:
        sys.exit(f"error: --base {rev}: not a commit of this repository")
    sha = commit.stdout.strip()
    pkg = f"_engine_{sha[:12]}"
    folder = Path.home() / ".cache" / "rsnn_bfd" / pkg
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text("")
    for name in ENGINE_FILES:
        shown = subprocess.run(["git", "-C", str(ROOT), "show",
                                f"{sha}:rsnn_bfd/network/engines/{name}.py"],
                               capture_output=True, text=True)
        if shown.returncode != 0:        # a file of later versions (numba_structure)
            continue
        src = shown.stdout
        src = src.replace("rsnn_bfd.network.engines.numba_", f"{pkg}.numba_")
        target = folder / f"{name}.py"
        if not target.exists() or target.read_text() != src:
            target.write_text(src)
    if str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))
    import importlib
    return importlib.import_module(f"{pkg}.numba_cpu"), sha


class _Switch:
    """Makes ``engines.get('numba')`` return the chosen module."""

    def __init__(self, modules):
        self.modules, self.current = modules, "current"
        self._get = engines.get
        engines.get = self.get

    def get(self, name):
        if name == "numba":
            return self.modules[self.current]
        return self._get(name)


def one_pass(model, x, y, loss_name):
    """(forward seconds, backward seconds, gradients)."""
    fwd, bwd = timed_pass(model, x, y, loss_name)
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    return fwd, bwd, grads


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="HEAD~1", help="commit of the version to compare with")
    p.add_argument("--checkpoint", default=str(ROOT / "data" / "RSNN_bfd_spiking_generated.pth"))
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    add_pass_flags(p, repeats=3)
    args = p.parse_args(argv)

    model, _ = load_checkpoint(args.checkpoint)
    batches = pass_settings(p, args, model)
    base, sha = base_engine(args.base)
    from rsnn_bfd.network.engines import numba_cpu as current
    train_set, _ = load_datasets(SpikingConfig(data_dir=args.data_dir))
    switch = _Switch({"current": current, "base": base})
    results = {"base": sha, "threads": torch.get_num_threads(), "loss": args.loss,
               "surrogate": list(model.network().surrogate), "batches": {}}
    for batch in batches:
        batch = min(batch, len(train_set))
        x, y = stack_batch(train_set, list(range(batch)), "cpu")
        steps = int(x.shape[3])
        times = {"current": [], "base": []}
        grads = {}
        for rep in range(args.repeats + 1):            # the first: warm-up, not timed
            for version in ("base", "current"):
                switch.current = version
                fwd, bwd, g = one_pass(model, x, y, args.loss)
                if rep:
                    times[version].append((fwd, bwd))
                grads[version] = g
        diff = {k: float((grads["current"][k] - grads["base"][k]).abs().max()
                         / grads["base"][k].abs().max().clamp_min(1e-30))
                for k in grads["base"]}
        row = {}
        for version, ts in times.items():
            fwd = statistics.median(t[0] for t in ts)
            bwd = statistics.median(t[1] for t in ts)
            row[version] = {"forward_s": round(fwd, 3), "backward_s": round(bwd, 3),
                            "us_per_sample_step": round((fwd + bwd) / (batch * steps) * 1e6, 2)}
        row["speedup"] = round(row["base"]["us_per_sample_step"]
                               / row["current"]["us_per_sample_step"], 2)
        row["max_rel_grad_diff"] = max(diff.values())
        results["batches"][batch] = row
        print(f"batch {batch}: base {row['base']}, current {row['current']}, "
              f"speedup {row['speedup']}x, gradients differ by <= {row['max_rel_grad_diff']:.1e} "
              "of the largest", flush=True)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
