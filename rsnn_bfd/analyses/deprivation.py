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
import torch

from rsnn_bfd.cli import data_dir_check, flag, require, seed_check
from rsnn_bfd.common import select_device
from rsnn_bfd.writing import (atomic_path, atomic_write_json, atomic_write_text, claim_results_dir,
                              removed_if_unused, together)
from rsnn_bfd.data.files import N_WHISKERS
from rsnn_bfd.io.checkpoint import load_checkpoint
from rsnn_bfd.network.model import ENGINES, InitialState
from rsnn_bfd.network.readout import class_scores

OUTPUT_FILES = ("deprivation.csv", "deprivation.json", "deprivation.png")


@dataclass
class DeprivationConfig:
    """Settings of ``RSNN_bfd_whisker_deprivation.py`` (each is a ``--flag``)."""
    checkpoint: str = flag("", "checkpoint of either training script (e.g. runs/spiking/best.pth)")
    data_dir: str = flag(None, "folder with snn_test3.h5 (default: the training run's "
                               "--data-dir)", type=str)
    out: str = flag(None, "output folder (default: the checkpoint's folder)", type=str)
    overwrite: bool = flag(False, "replace the deprivation results already in --out")
    trials: int = flag(50, "random whisker sets per number removed (2..max-removed)")
    max_removed: int = flag(8, "largest number of whiskers removed")
    seed: int = flag(515, "seed of the random whisker sets")
    device: str = flag("auto", "auto, cpu, cuda or cuda:N")
    batch_size: int = flag(-1, "evaluation batch size (-1: the training run's), which sets "
                               "each sample's row of the initial state, so the intact accuracy "
                               "is the run's test accuracy")
    lanes: int = flag(256, "samples per forward pass: the trials' samples are stacked up to "
                           "this")
    n_steps: int = flag(-1, "truncate sequences to T steps (-1: as in training, 0: full)")
    max_test_samples: int = flag(0, "use only the first N test samples (0: all)")
    engine: str = flag("auto", "simulation engine: auto (numba on the CPU, torch on CUDA), "
                               "reference, numba or torch", ENGINES)
    progress: bool = flag(True, "tqdm progress bar over trials")


def whisker_sets(trials: int, seed: int, max_removed: int = 8) -> list[tuple[int, ...]]:
    """The removed-whisker sets in trial order: (), (0,), ..., (30,), then ``trials`` random
    sorted sets of each size 2..``max_removed`` drawn without replacement from all 31."""
    rng = np.random.default_rng(seed)
    sets = [()] + [(w,) for w in range(N_WHISKERS)]
    for k in range(2, max_removed + 1):
        for _ in range(trials):
            sets.append(tuple(sorted(int(w) for w in rng.choice(N_WHISKERS, k, replace=False))))
    return sets


@torch.no_grad()
def evaluate_trials(model, dataset, indices: list[int], sets: list[tuple[int, ...]],
                    batch_size: int, lanes: int, device, progress: bool = False,
                    return_outputs: bool = False, loss: str = "published"):
    """Test accuracy of every whisker set in ``sets``, several trials per forward pass.

    Equals ``rsnn_bfd.training.step.evaluate(model, dataset.deprived(ws), indices, batch_size, device)`` for
    each set ``ws``: every sample keeps the row of the initial state it has in its evaluation
    batch of ``batch_size`` (the published state depends on the row), and its input spikes use
    the same uniforms. The (trial, sample) pairs are evaluated in passes of ``lanes`` (a trial
    may straddle two); the model reads only its driving sweep, so only that sweep is built.
    ``loss``: the training run's loss, which sets the decision
    (:func:`rsnn_bfd.network.readout.predict`). Returns the accuracies, and with
    ``return_outputs`` also each trial's scores (n, 3)
    (:func:`rsnn_bfd.network.readout.class_scores`).
    """
    model.eval()
    n = len(indices)
    sweep = model.config.sweep
    # each sample's row of the initial state of its evaluation batch
    rows = []
    for lo in range(0, n, batch_size):
        m = min(batch_size, n - lo)
        rows.append(model.initial_state(m, device=device))
    state_rows = InitialState(*(torch.cat(parts) for parts in zip(*rows)))
    labels = dataset.labels[torch.as_tensor(indices, dtype=torch.long)].to(device)
    n_total = len(sets) * n
    scores = None                                   # (len(sets) * n, 3), filled pass by pass
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(sets), desc="deprivation trials", leave=False, dynamic_ncols=True)
    # the (trial, sample) pairs in order, cut into passes of ``lanes``: a trial may straddle
    # two passes, so every pass is full and the engine's lane blocks are used to the last
    done = 0
    for start in range(0, n_total, lanes):
        end = min(n_total, start + lanes)
        k0, k1 = start // n, (end - 1) // n + 1                    # trials of this pass
        x = dataset.driving_sweep(indices, sets[k0:k1], sweep)     # (k1 - k0, n, C, T, F)
        x = x.reshape(-1, *x.shape[2:])[start - k0 * n:end - k0 * n]
        full = torch.zeros((end - start, x.shape[1], sweep + 1) + tuple(x.shape[2:]),
                           dtype=x.dtype)
        full[:, :, sweep] = x
        rows = torch.arange(start, end) % n                        # each pair's sample
        state = InitialState(*(t[rows.to(t.device)] for t in state_rows))
        out = class_scores(model(full.to(device), state=state), loss)
        if scores is None:
            scores = torch.empty((n_total, out.shape[1]), dtype=out.dtype, device=out.device)
        scores[start:end] = out
        if bar is not None:
            bar.update(end // n - done)
        done = end // n
    if bar is not None:
        bar.close()
    if scores is None:
        return ([], []) if return_outputs else []
    scores = scores.reshape(len(sets), n, -1)
    accuracies = [float(c) for c in (scores.argmax(2) == labels).double().mean(1)]
    outputs = list(scores.cpu())
    return (accuracies, outputs) if return_outputs else accuracies


def validate(cfg: DeprivationConfig) -> DeprivationConfig:
    """Refuse settings that cannot give a meaningful result (``ValueError`` naming the flag)."""
    checks = [
        (bool(cfg.checkpoint), "--checkpoint is required (e.g. runs/spiking/best.pth)"),
        (cfg.trials >= 1, f"--trials must be >= 1 (random sets per number removed), got "
                          f"{cfg.trials}"),
        (1 <= cfg.max_removed <= N_WHISKERS,
         f"--max-removed must be in 1..{N_WHISKERS}, got {cfg.max_removed}"),
        seed_check(cfg.seed, "--seed"),
        (cfg.out is None or bool(cfg.out.strip()),
         "--out must name a folder, got '' (leave it out for the checkpoint's folder)"),
        data_dir_check(cfg.data_dir, "leave it out for the training run's"),
        (cfg.batch_size == -1 or cfg.batch_size >= 1,
         f"--batch-size must be -1 (the training run's) or >= 1, got {cfg.batch_size}"),
        (cfg.lanes >= 1, f"--lanes must be >= 1, got {cfg.lanes}"),
        (cfg.n_steps == -1 or cfg.n_steps == 0 or cfg.n_steps >= 2,
         f"--n-steps must be -1 (as in training), 0 (full) or >= 2, got {cfg.n_steps}"),
        (cfg.max_test_samples >= 0, f"--max-test-samples must be >= 0 (0: all), got "
                                    f"{cfg.max_test_samples}"),
        (cfg.engine in ENGINES,
         f"--engine must be one of {tuple(ENGINES)}, got {cfg.engine!r}"),
    ]
    require(checks)
    return cfg


def run_deprivation(cfg: DeprivationConfig, log=print) -> dict:
    """Evaluate every trial; write CSV, JSON and plot. Returns the JSON summary.

    Results already in ``--out`` are refused unless ``--overwrite``; an ``--out`` made here is
    removed again when the run fails before writing them."""
    from rsnn_bfd.training.resume import stored_train_config

    validate(cfg)
    device = select_device(cfg.device)
    model, ckpt = load_checkpoint(cfg.checkpoint, device)
    tc = stored_train_config(ckpt, cfg.checkpoint)
    model.use_engine(cfg.engine)
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).parent
    # locked before the long evaluation and to its end: fail now, not after it, if the
    # results cannot be written, would replace earlier ones or another writer works there
    with removed_if_unused(out), claim_results_dir(out, OUTPUT_FILES, cfg.overwrite,
                                                   "deprivation results", "deprivation"), \
            together(*(out / f for f in OUTPUT_FILES)):   # the three appear together, or none
        try:
            return _run(cfg, model, tc, out, device, log, ckpt.get("dataset"))
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"no deprivation results were written to {out} (the three "
                                    "files appear together at the end) and earlier ones are "
                                    "unchanged (a dataset generated on the way is kept); run "
                                    "the same command again") from None


def _run(cfg: DeprivationConfig, model, tc: dict, out: Path, device, log,
         trained_on: dict | None = None) -> dict:
    from rsnn_bfd.data.datasets import data_dir_of_run, datasets_of_run
    from rsnn_bfd.data.ensure import ensure_run_dataset
    from rsnn_bfd.data.files import check_data_folder

    if cfg.data_dir:
        check_data_folder(cfg.data_dir)
    # a network trained on generated data (the one shipped in data/) brings its dataset
    data_dir = data_dir_of_run(tc, cfg.data_dir, cfg.checkpoint)
    ensure_run_dataset(trained_on, data_dir, log, cfg.progress)
    # --n-steps -1: the run's (None); 0: the full sequence
    base, = datasets_of_run(model.config.encoder, tc, data_dir=data_dir,
                            n_steps=None if cfg.n_steps < 0 else cfg.n_steps, splits=("test",))
    spike_seed = base.seed if model.config.encoder == "spiking" else None
    n = len(base) if not cfg.max_test_samples else min(len(base), cfg.max_test_samples)
    indices = list(range(n))
    sets = whisker_sets(cfg.trials, cfg.seed, cfg.max_removed)
    log(f"deprivation: {len(sets)} trials on {n} test samples ({model.config.encoder}, "
        f"{device}, {model.engine} engine) from {cfg.checkpoint}")

    batch_size = cfg.batch_size if cfg.batch_size > 0 else int(tc.get("batch_size") or 128)
    # the run's loss sets the decision: argmax of the summed softmax or of the mean logits
    loss = tc.get("loss", "published")
    accuracies = evaluate_trials(model, base, indices, sets, batch_size, cfg.lanes, device,
                                 cfg.progress, loss=loss)
    rows = []
    per_k: dict[int, int] = {}
    for ws, acc in zip(sets, accuracies):
        k = len(ws)
        per_k[k] = per_k.get(k, 0) + 1
        rows.append({"n_removed": k, "trial": per_k[k] - 1,
                     "whiskers": " ".join(map(str, ws)), "accuracy": acc})

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
               "n_test_samples": n, "n_steps": base.n_steps,
               "batch_size": batch_size, "loss": loss,
               "spike_seed": spike_seed, "seed": cfg.seed, "trials": cfg.trials,
               "std": "population standard deviation (ddof=0) over trials",
               "by_n_removed": summary_k}
    atomic_write_json(summary, out / "deprivation.json")
    plot_deprivation(summary_k, out / "deprivation.png", _network_name(cfg.checkpoint))
    for k, s in summary_k.items():
        log(f"  {k} removed: accuracy {s['mean']:.3f} +- {s['std']:.3f} ({s['n_trials']} trials)")
    log(f"wrote {out / 'deprivation.csv'}, {out / 'deprivation.json'}, {out / 'deprivation.png'}")
    return summary


def _network_name(checkpoint) -> str:
    """The checkpoint as a figure names it: its run folder and file (``runs/fit/best.pth`` ->
    ``fit/best.pth``), the file alone when it lies in ``data/``."""
    path = Path(checkpoint)
    return path.name if path.parent.name in ("", "data", ".") else f"{path.parent.name}/{path.name}"


def plot_deprivation(summary_k: dict, path, network: str = "") -> None:
    """Mean +- std test accuracy against the number of whiskers removed (PNG, Agg), with the
    chance level; ``network`` names the network in the title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ks = sorted(int(k) for k in summary_k)
    mean = [summary_k[str(k)]["mean"] for k in ks]
    std = [summary_k[str(k)]["std"] for k in ks]
    trials = sorted({summary_k[str(k)]["n_trials"] for k in ks if k >= 2})
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(ks, mean, yerr=std, fmt="o-", capsize=3, label="test accuracy (mean +- std)")
    ax.axhline(1 / 3, color="0.5", linestyle="--", linewidth=1, label="chance (1/3)")
    ax.set(xlabel="whiskers removed", ylabel="test accuracy", ylim=(0, 1.02),
           title="whisker deprivation" + (f": {network}" if network else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # whiskers are counted
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    bars = "error bars: std over trials (" + (
        "1 removed: each of the 31 whiskers" if 1 in ks else "") + (
        f"{'; ' if 1 in ks else ''}2+: {', '.join(map(str, trials))} random sets each"
        if trials else "") + ")"
    fig.text(0.5, 0.01, bars, ha="center", va="bottom", fontsize=7, color="0.3")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
