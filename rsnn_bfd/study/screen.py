"""A screen of training set-ups judged on validation data only (``crossval.py screen``).

Each candidate set-up is cross-validated on one or more datasets (``crossval.py --out
SCREEN/DATASET/CANDIDATE``, e.g. by ``tools/screen.sh``). A fold chooses its epoch on its
validation fifth; the screen pools the validation decisions at the chosen epochs over every
finished fold of every dataset (about 218 decisions per dataset, where one fold's 44 cannot
tell set-ups apart) and never reads the held-out folds' test accuracies, which are kept for
the final comparison (``crossval.py summarize``).

Per candidate it reports: pooled validation accuracy at the chosen epochs (with a Wilson 95 %
interval) per dataset and over all, the same at the last epoch (choosing among epochs
inflates the first a little, more with more epochs to choose from), training accuracy at the
chosen epoch (mean and lowest fold), firing rate, how far training moved the recurrent and
thalamocortical weights (relative Frobenius change of the chosen epoch's weights from the
fold's initial ones), the minutes per fold (the larger of its epochs' seconds summed, which
count every epoch once when a fold was resumed from its checkpoint, and its last process's
wall clock, which counts the set-up and a readout-only run's pass over the data), and the
paired difference from a control candidate over the folds both finished (:func:`paired`).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from rsnn_bfd.study.cv_setup import FOLDS_FILE, RESULT_FILE, SETTINGS_FILE, read_json
from rsnn_bfd.writing import (atomic_write_json, atomic_write_text, claim_results_dir,
                              removed_if_unused, together)

NAMES = ("screen.csv", "screen_folds.csv", "screen.json")


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` / ``n`` (95 % by default)."""
    if n == 0:
        return (math.nan, math.nan)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def weight_change(fold: Path, initial_networks: dict | None = None) -> dict:
    """Relative change ``|W - W0| / |W0|`` (Frobenius) of the recurrent and thalamocortical
    weights of ``fold/best.pth`` from the network its run started from (rebuilt from the
    stored configuration: the initial weights depend on it and the seed only, so
    ``initial_networks`` keeps each one built, by configuration, for the next fold)."""
    import torch

    from rsnn_bfd.io.checkpoint import load_checkpoint
    from rsnn_bfd.network.model import build_model
    model, _ = load_checkpoint(fold / "best.pth")
    cache = {} if initial_networks is None else initial_networks
    key = (repr(model.config), model.tau_m.dtype)
    if key not in cache:
        cache[key] = build_model(model.config, dtype=model.tau_m.dtype)
    initial = cache[key]
    out = {}
    for name in ("recurrent", "thalamocortical"):
        w = getattr(model, name).weight.detach()
        w0 = getattr(initial, name).weight.detach().to(w.dtype)
        out[name] = float(torch.linalg.norm(w - w0) / torch.linalg.norm(w0))
    return out


def _fold_row(dataset: str, candidate: str, fold_path: Path, result: dict,
              moved: bool, initial_networks: dict) -> dict:
    from rsnn_bfd.training.rundir import read_metrics
    rows = read_metrics(fold_path / "metrics.csv")
    n_val = int(result["n_val"])
    row = {"dataset": dataset, "candidate": candidate, "fold": int(result["fold"]),
           "n_val": n_val, "best_epoch": int(result["best_epoch"]),
           "val_correct": int(round(result["val_acc"] * n_val)),
           "last_val_correct": int(round(rows[-1]["val_acc"] * n_val)),
           "train_acc": float(result["train_acc"]),
           "firing_rate": float(result["firing_rate"]),
           "seconds": max(float(result.get("train_seconds", 0)),
                          float(result.get("wall_seconds", 0)))}
    if moved:   # records (docs/cv) keep no checkpoint: the change is then not known
        change = (weight_change(fold_path, initial_networks)
                  if (fold_path / "best.pth").exists() else
                  {"recurrent": math.nan, "thalamocortical": math.nan})
        row.update(recurrent_change=change["recurrent"],
                   thalamocortical_change=change["thalamocortical"])
    return row


def collect(dirs) -> list[dict]:
    """One row per finished fold of the cross-validation folders ``dirs`` (each
    ``.../DATASET/CANDIDATE``), validation only: the test accuracies are not read out."""
    rows, initial_networks = [], {}
    for d in map(Path, dirs):
        settings, record = read_json(d / SETTINGS_FILE), read_json(d / FOLDS_FILE)
        if settings is None or record is None:
            raise FileNotFoundError(f"{d} holds no cross-validation ({SETTINGS_FILE}, "
                                    f"{FOLDS_FILE}); give the folders crossval.py --out wrote")
        if not str(settings["model"]).startswith("rsnn"):
            raise ValueError(f"{d}: the screen compares RSNN training set-ups, not "
                             f"{settings['model']}")
        for K in range(record["k"]):
            fold_path = d / f"fold_{K}"
            result = read_json(fold_path / RESULT_FILE)
            if result is not None:
                trained = (settings.get("model_config") or {}).get("readout_epochs", 0) != -1
                rows.append(_fold_row(d.parent.name, d.name, fold_path, result, trained,
                                      initial_networks))
    return rows


def table(rows: list[dict], against: str = "") -> list[dict]:
    """One row per candidate: pooled validation over its folds and datasets, and the rest;
    with ``against``, the paired difference from that candidate (:func:`paired`)."""
    out = []
    for candidate in dict.fromkeys(r["candidate"] for r in rows):
        mine = [r for r in rows if r["candidate"] == candidate]
        n = sum(r["n_val"] for r in mine)
        correct = sum(r["val_correct"] for r in mine)
        low, high = wilson(correct, n)
        row = {"candidate": candidate, "folds": len(mine),
               "val_acc": correct / n, "val_low": low, "val_high": high,
               "last_val_acc": sum(r["last_val_correct"] for r in mine) / n}
        for dataset in dict.fromkeys(r["dataset"] for r in rows):
            theirs = [r for r in mine if r["dataset"] == dataset]
            n_d = sum(r["n_val"] for r in theirs)
            row[f"val_acc_{dataset}"] = (sum(r["val_correct"] for r in theirs) / n_d
                                         if n_d else math.nan)
            row[f"folds_{dataset}"] = len(theirs)
        mean = lambda key: sum(r.get(key, math.nan) for r in mine) / len(mine)  # noqa: E731
        row.update(train_acc=mean("train_acc"), train_acc_min=min(r["train_acc"] for r in mine),
                   firing_rate=mean("firing_rate"), recurrent_change=mean("recurrent_change"),
                   thalamocortical_change=mean("thalamocortical_change"),
                   minutes_per_fold=mean("seconds") / 60)
        if against:
            row.update(paired(mine, [r for r in rows if r["candidate"] == against]))
        out.append(row)
    return sorted(out, key=lambda r: -r["val_acc"])


def paired(mine: list[dict], control: list[dict]) -> dict:
    """The mean difference of validation accuracy from the control's over the folds both
    finished (same dataset and fold: the same validation objects), at the chosen and at the
    last epoch, with 95 % t-intervals over those folds. Folds of one dataset are not
    independent (their training sets overlap), so the interval is a guide for the screen,
    not the final comparison."""
    from rsnn_bfd.study.summary import t_interval
    theirs = {(r["dataset"], r["fold"]): r for r in control}
    pairs = [(r, theirs[(r["dataset"], r["fold"])]) for r in mine
             if (r["dataset"], r["fold"]) in theirs]
    out = {"paired_folds": len(pairs)}
    for key, correct in (("diff", "val_correct"), ("last_diff", "last_val_correct")):
        t = t_interval([(a[correct] - b[correct]) / a["n_val"] for a, b in pairs])
        out.update({key: t["mean"], f"{key}_low": t["low"], f"{key}_high": t["high"]})
    return out


def _csv(rows: list[dict]) -> str:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def screen(dirs, out, overwrite: bool = False, against: str = "fit",
           log=print) -> list[dict]:
    """Write ``screen.csv`` (one row per candidate, best pooled validation first),
    ``screen_folds.csv`` (one row per fold) and ``screen.json`` into ``out``; each candidate
    is compared fold by fold with the candidate ``against`` (the readout-only recipe by
    default; skipped when the screen has none of that name, '' for none)."""
    if not dirs:
        raise ValueError("give at least one cross-validation folder (SCREEN/DATASET/CANDIDATE)")
    names = {Path(d).name for d in dirs}          # a candidate is its folder's name
    if against and against not in names and against != "fit":
        raise ValueError(f"--against {against}: no such candidate among "
                         f"{', '.join(sorted(names))}")
    out = Path(out)
    # the writer's lock and the check of --out before the folds are read (a second of
    # loading per fold), to the end
    with removed_if_unused(out), claim_results_dir(out, NAMES, overwrite, "a screen table",
                                                   "crossval.py screen"), \
            together(*(out / n for n in NAMES)):
        rows = collect(dirs)
        if not rows:
            raise ValueError("no finished fold in " + ", ".join(map(str, dirs)))
        ranked = table(rows, against if against in names else "")
        atomic_write_text(_csv(ranked), out / "screen.csv")
        atomic_write_text(_csv(rows), out / "screen_folds.csv")
        atomic_write_json({"format": "barrel-rsnn-screen", "candidates": ranked, "folds": rows,
                           "note": "validation decisions pooled over the finished folds of "
                                   "every dataset; the held-out folds are not read"},
                          out / "screen.json")
    for r in ranked:
        log(f"{r['candidate']}: validation {r['val_acc']:.3f} ({r['val_low']:.3f}-"
            f"{r['val_high']:.3f}) over {r['folds']} fold{'s' if r['folds'] != 1 else ''}, last "
            f"epoch {r['last_val_acc']:.3f}, "
            f"train {r['train_acc']:.3f} (lowest {r['train_acc_min']:.3f})"
            + (f"; against {against} {r['diff']:+.3f}"
               + (f" ({r['diff_low']:+.3f} to {r['diff_high']:+.3f}) over "
                  f"{r['paired_folds']} folds" if r["paired_folds"] > 1 else " on 1 fold")
               if r.get("paired_folds") and r["candidate"] != against else ""))
    return ranked
