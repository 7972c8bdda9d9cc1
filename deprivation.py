"""Whisker deprivation: test accuracy of a trained model with whiskers removed.

Trials: 0 whiskers removed; each single whisker removed (all 31); ``k`` = 2..``max_removed``
whiskers removed, ``trials`` random sets per ``k`` drawn from all 31 whiskers with
``numpy.random.default_rng(seed)`` (the original drew from 30 of the 31 whiskers).

A removed whisker has zero force and torque (spiking: its spike probability drops to the floor
value ``sigmoid(log 1e-5 - c)``; real-valued: its features become 0). Every trial encodes the
test spikes with the same sampling seed (the training run's ``spike_seed``): the Bernoulli
uniforms depend only on (seed, sample), so accuracy differences come from the removed whiskers.

Outputs in ``--out``: ``deprivation.csv`` (n_removed, trial, whiskers, accuracy),
``deprivation.json`` (mean / std / n_trials per number removed) and ``deprivation.png``.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import atomic_path, atomic_write_json, atomic_write_text, select_device
from training import _flag, evaluate, load_checkpoint
from whisker_dataset import N_WHISKERS


@dataclass
class DeprivationConfig:
    """Settings of ``RSNN_bfd_whisker_deprivation.py`` (each is a ``--flag``)."""
    checkpoint: str = _flag("", "checkpoint of either training script (e.g. runs/spiking/best.pth)")
    data_dir: str = _flag("", "folder with snn_test3.h5 (default: the training run's --data-dir)")
    out: str = _flag("", "output folder (default: the checkpoint's folder)")
    trials: int = _flag(50, "random whisker sets per number removed (2..max-removed)")
    max_removed: int = _flag(8, "largest number of whiskers removed")
    seed: int = _flag(515, "seed of the random whisker sets")
    device: str = _flag("auto", "auto, cpu, cuda or cuda:N")
    batch_size: int = _flag(128, "evaluation batch size")
    n_steps: int = _flag(-1, "truncate sequences to T steps (-1: as in training, 0: full)")
    max_test_samples: int = _flag(0, "use only the first N test samples (0: all)")
    engine: str = _flag("", "simulation engine (default: as stored in the checkpoint)")
    progress: bool = _flag(True, "tqdm progress bar over trials")


def whisker_sets(trials: int, seed: int, max_removed: int = 8) -> list[tuple[int, ...]]:
    """The removed-whisker sets in trial order: (), (0,), ..., (30,), then ``trials`` random
    sorted sets of each size 2..``max_removed`` drawn without replacement from all 31."""
    rng = np.random.default_rng(seed)
    sets = [()] + [(w,) for w in range(N_WHISKERS)]
    for k in range(2, max_removed + 1):
        for _ in range(trials):
            sets.append(tuple(sorted(int(w) for w in rng.choice(N_WHISKERS, k, replace=False))))
    return sets


def run_deprivation(cfg: DeprivationConfig, log=print) -> dict:
    """Evaluate every trial; write CSV, JSON and plot. Returns the JSON summary."""
    from whisker_dataset import TEST_FILE, RealValuedWhiskerDataset, SpikingWhiskerDataset

    if not cfg.checkpoint:
        raise ValueError("--checkpoint is required (e.g. runs/spiking/best.pth)")
    if cfg.trials < 0 or not 1 <= cfg.max_removed <= N_WHISKERS:
        raise ValueError(f"--trials must be >= 0 and --max-removed in 1..{N_WHISKERS}")
    device = select_device(cfg.device)
    model, ckpt = load_checkpoint(cfg.checkpoint, device)
    if cfg.engine:
        model.config.engine = cfg.engine
    tc = ckpt.get("train_config") or {}
    data_dir = Path(cfg.data_dir or tc.get("data_dir") or "data")
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).parent
    n_steps = tc.get("n_steps", 0) if cfg.n_steps < 0 else cfg.n_steps
    n_steps = int(n_steps) or None
    test_path = data_dir / TEST_FILE
    if model.config.encoder == "spiking":
        spike_seed = int(tc.get("spike_seed", 0))
        base = SpikingWhiskerDataset(test_path, seed=spike_seed, n_steps=n_steps)
    else:
        spike_seed = None
        base = RealValuedWhiskerDataset(test_path, n_steps=n_steps)
    n = len(base) if not cfg.max_test_samples else min(len(base), cfg.max_test_samples)
    indices = list(range(n))
    sets = whisker_sets(cfg.trials, cfg.seed, cfg.max_removed)
    log(f"deprivation: {len(sets)} trials on {n} test samples ({model.config.encoder}, "
        f"{device}) from {cfg.checkpoint}")

    rows = []
    per_k: dict[int, int] = {}
    iterator = sets
    if cfg.progress:
        from tqdm import tqdm
        iterator = tqdm(sets, desc="deprivation", leave=False, dynamic_ncols=True)
    for ws in iterator:
        res = evaluate(model, base.deprived(ws), indices, cfg.batch_size, device)
        k = len(ws)
        per_k[k] = per_k.get(k, 0) + 1
        rows.append({"n_removed": k, "trial": per_k[k] - 1,
                     "whiskers": " ".join(map(str, ws)), "accuracy": res["acc"]})

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["n_removed", "trial", "whiskers", "accuracy"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), out / "deprivation.csv")

    summary_k = {}
    for k in sorted(per_k):
        acc = np.array([r["accuracy"] for r in rows if r["n_removed"] == k], dtype=np.float64)
        summary_k[str(k)] = {"mean": float(acc.mean()), "std": float(acc.std()),
                             "n_trials": int(acc.size)}
    summary = {"checkpoint": str(cfg.checkpoint), "encoder": model.config.encoder,
               "n_test_samples": n, "n_steps": n_steps or base[0][0].shape[2],
               "spike_seed": spike_seed, "seed": cfg.seed, "trials": cfg.trials,
               "std": "population standard deviation (ddof=0) over trials",
               "by_n_removed": summary_k}
    atomic_write_json(summary, out / "deprivation.json")
    plot_deprivation(summary_k, out / "deprivation.png")
    for k, s in summary_k.items():
        log(f"  {k} removed: accuracy {s['mean']:.3f} +- {s['std']:.3f} ({s['n_trials']} trials)")
    log(f"wrote {out / 'deprivation.csv'}, {out / 'deprivation.json'}, {out / 'deprivation.png'}")
    return summary


def plot_deprivation(summary_k: dict, path) -> None:
    """Mean +- std test accuracy against the number of whiskers removed (PNG, Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(int(k) for k in summary_k)
    mean = [summary_k[str(k)]["mean"] for k in ks]
    std = [summary_k[str(k)]["std"] for k in ks]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(ks, mean, yerr=std, fmt="o-", capsize=3)
    ax.set(xlabel="whiskers removed", ylabel="test accuracy", ylim=(0, 1.02),
           title="whisker deprivation")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
