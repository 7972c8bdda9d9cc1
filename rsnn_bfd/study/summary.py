"""Cross-validation results summarised: per model the mean test accuracy over the folds with
a 95 % t-interval, paired differences and tests between models, and the learning curve over
dataset sizes. Folds share training data, so these intervals are optimistic; the
Nadeau-Bengio corrected interval (variance x (1/k + n_test/n_train)) is given beside them.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from rsnn_bfd.writing import (atomic_write_json, atomic_write_text, claim_results_dir,
                              removed_if_unused, together)
from rsnn_bfd.study.cv_setup import (FOLDS_FILE, FORMAT, RESULT_FILE, SETTINGS_FILE, fold_dir,
                                     read_json, same_folds)


# ============================================================================ statistics
def t_interval(values, confidence: float = 0.95, correction: float = 0.0) -> dict:
    """Mean of ``values`` (k,) with its t-interval: ``mean +- t_{k-1} * s * sqrt(1/k +
    correction)`` (``correction`` = n_test / n_train gives the Nadeau-Bengio interval of
    cross-validation). Returns ``{"mean", "std" (ddof 1), "low", "high", "n"}``; the
    interval is NaN for fewer than two values."""
    from scipy import stats
    v = np.asarray(values, dtype=np.float64)
    k = len(v)
    mean = float(v.mean()) if k else math.nan
    if k < 2:
        return {"mean": mean, "std": math.nan, "low": math.nan, "high": math.nan, "n": k}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, k - 1)) * std * math.sqrt(1 / k + correction)
    return {"mean": mean, "std": std, "low": mean - half, "high": mean + half, "n": k}


def paired_test(a, b, correction: float = 0.0) -> dict:
    """Paired comparison of ``a`` and ``b`` over the same folds: differences ``a - b``, their
    mean with a 95 % t-interval, the paired t-test (two-sided; ``t``, ``p``) and the
    Nadeau-Bengio corrected interval and p (``correction`` = n_test / n_train)."""
    from scipy import stats
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    out = {"differences": d.tolist(), **t_interval(d)}
    k = len(d)
    if k >= 2 and out["std"] > 0:
        t = out["mean"] / (out["std"] * math.sqrt(1 / k))
        t_c = out["mean"] / (out["std"] * math.sqrt(1 / k + correction))
        out.update(t=float(t), p=float(2 * stats.t.sf(abs(t), k - 1)),
                   p_corrected=float(2 * stats.t.sf(abs(t_c), k - 1)))
    else:   # identical results on every fold (or one fold): no test
        out.update(t=math.nan, p=1.0 if k >= 2 and out["mean"] == 0 else math.nan,
                   p_corrected=math.nan)
    c = t_interval(d, correction=correction)
    out.update(low_corrected=c["low"], high_corrected=c["high"])
    return out


# ============================================================================= summary
def parse_folds(text: str) -> list[int] | None:
    """The folds of ``--only-folds``: ``"0,1,2"`` -> [0, 1, 2]; ``""`` -> None (all)."""
    if not text.strip():
        return None
    try:
        return sorted({int(f) for f in text.split(",")})
    except ValueError:
        raise ValueError(f"--only-folds must be comma-separated fold numbers such as '0,1,2', "
                         f"got {text!r}") from None


def load_results(out, wanted: list[int] | None = None) -> tuple[dict, dict, list[dict]]:
    """(settings, folds record, results of the folds ``wanted`` (default: all)) of a
    cross-validation whose folds are finished."""
    out = Path(out)
    settings, record = read_json(out / SETTINGS_FILE), read_json(out / FOLDS_FILE)
    if settings is None or record is None:
        raise FileNotFoundError(f"{out} holds no cross-validation ({SETTINGS_FILE}, {FOLDS_FILE})")
    k = record["k"]
    if wanted is not None and (wanted[0] < 0 or wanted[-1] >= k):
        raise ValueError(f"--only-folds {','.join(map(str, wanted))}: the folds of {out} are "
                         f"0..{k - 1}")
    results = {K: read_json(fold_dir(out, K) / RESULT_FILE) for K in (wanted or range(k))}
    missing = [K for K, r in results.items() if r is None]
    if missing:
        raise ValueError(f"{out}: fold(s) {', '.join(map(str, missing))} of {k} not "
                         f"finished; run them (python crossval.py --out {out} ...) first, or "
                         "compare the finished ones (summarize --only-folds)")
    return settings, record, list(results.values())


def _datasets(dirs, loaded) -> tuple[list[str], list[list[int]]]:
    """The model labels and, per model, the indices into ``dirs`` of its cross-validation on
    each dataset, in the order the datasets first appear. One dataset: each folder is a model
    (named by its folder; full paths where names repeat). Several: folders of the same name
    are one model on several datasets (e.g. seed0/cnn, seed1/cnn), one folder per dataset."""
    names = [Path(d).name or str(d) for d in dirs]
    records, where = [], []
    for _, record, _ in loaded:
        i = next((j for j, r in enumerate(records) if same_folds(r, record)), None)
        if i is None:
            records.append(record)
            i = len(records) - 1
        where.append(i)
    if len(records) == 1:
        labels = names if len(set(names)) == len(names) else [str(d) for d in dirs]
        return labels, [[i] for i in range(len(dirs))]
    labels = list(dict.fromkeys(names))
    groups = [[next((i for i, (n, w) in enumerate(zip(names, where)) if n == label and w == j),
                    None) for j in range(len(records))] for label in labels]
    if any(None in g for g in groups) or len(dirs) != len(labels) * len(records):
        other = next(d for d, w in zip(dirs, where) if w)
        raise ValueError(f"{other} was run on other folds or data than {dirs[0]} (folds seed "
                         f"{loaded[dirs.index(other)][1]['seed']} / {records[0]['seed']}, k "
                         f"{loaded[dirs.index(other)][1]['k']} / {records[0]['k']}); paired "
                         "results need the same folds (to pool several datasets, give one "
                         "folder of each model per dataset, folders of a model named alike)")
    if len({r["k"] for r in records}) > 1:
        raise ValueError("the datasets were cross-validated with different numbers of folds "
                         f"({', '.join(str(r['k']) for r in records)}); pool equal k only")
    return labels, groups


def summarize(dirs, out, overwrite: bool = False, log=print, only_folds: str = "") -> dict:
    """Compare the cross-validations in ``dirs`` (the first against each other) on their
    folds (``only_folds``, e.g. ``"0,1,2"``: those only, as for the screens of model
    changes). Folders of the same name on different datasets (``seed0/cnn seed1/cnn ...``)
    are one model pooled over the datasets: its folds are every (dataset, fold), paired with
    the other models' on the same dataset and fold. Writes into ``out``:

        crossval_folds.csv    one row per model, dataset and fold
        crossval_paired.csv   per other model: the first model minus it, per dataset and fold
        crossval_summary.json per model: mean test accuracy, 95 % t-interval (and the
                              corrected one), pooled accuracy; per pair: paired t-test
        crossval_summary.png  test accuracy per fold and model, means and intervals
    """
    if not dirs:
        raise ValueError("give at least one cross-validation folder")
    dirs = [str(d) for d in dirs]
    wanted = parse_folds(only_folds)        # a typo is reported before any folder is read
    loaded = [load_results(d, wanted) for d in dirs]
    labels, groups = _datasets(dirs, loaded)
    first = loaded[0][1]
    # a dataset is named by the folder holding its first model's cross-validation (seed0/...)
    tags = [Path(dirs[i]).parent.name or f"dataset {j}" for j, i in enumerate(groups[0])]
    if len(set(tags)) < len(tags):      # e.g. runs1/cv/cnn and runs2/cv/cnn
        tags = [str(Path(dirs[i]).parent) for i in groups[0]]
    out = Path(out)
    names = ("crossval_folds.csv", "crossval_paired.csv", "crossval_summary.json",
             "crossval_summary.png")
    # the writer's lock, before the first look at --out, to the end
    with removed_if_unused(out), claim_results_dir(out, names, overwrite,
                                                   "a cross-validation summary",
                                                   "crossval.py summarize"), \
            together(*(out / n for n in names)):
        k = first["k"]
        correction = 1 / (k - 1)     # n_test / n_train of k-fold cross-validation
        models, fold_rows = {}, []
        for label, group in zip(labels, groups):
            results = [dict(r, dataset=tag) for tag, i in zip(tags, group) for r in loaded[i][2]]
            settings = loaded[group[0]][0]
            accs = [r["test_acc"] for r in results]
            n_test = sum(r["n_test"] for r in results)
            models[label] = {
                "dir": dirs[group[0]] if len(group) == 1 else [dirs[i] for i in group],
                "model": settings["model"], "model_args": settings["model_args"],
                "test_acc": accs, "ci95": t_interval(accs),
                "ci95_corrected": t_interval(accs, correction=correction),
                "pooled_acc": sum(r["n_correct"] for r in results) / n_test,
                "val_acc": [r["val_acc"] for r in results],
                "best_epoch": [r["best_epoch"] for r in results],
                "train_acc": [r["train_acc"] for r in results]}
            for r in results:
                fold_rows.append({"model": label, "dataset": r["dataset"], "fold": r["fold"],
                                  "n_train": r["n_train"], "n_val": r["n_val"],
                                  "n_test": r["n_test"], "best_epoch": r["best_epoch"],
                                  "val_acc": r["val_acc"], "test_acc": r["test_acc"],
                                  "train_acc": r["train_acc"]})
        ref = labels[0]
        folds = [(row["dataset"], row["fold"]) for row in fold_rows if row["model"] == ref]
        paired, paired_rows = {}, []
        for label in labels[1:]:
            p = paired_test(models[ref]["test_acc"], models[label]["test_acc"], correction)
            paired[f"{ref} - {label}"] = p
            for (tag, K), dk in zip(folds, p["differences"]):
                paired_rows.append({"comparison": f"{ref} - {label}", "dataset": tag,
                                    "fold": K, "difference": dk})
        summary = {"format": FORMAT + "-summary", "k": k, "seed": first["seed"],
                   "folds": [r["fold"] for r in loaded[0][2]],
                   "n_objects": first["n_objects"], "dataset": first.get("dataset"),
                   "datasets": [{"name": tag, "n_objects": loaded[i][1]["n_objects"],
                                 "dataset": loaded[i][1].get("dataset")}
                                for tag, i in zip(tags, groups[0])],
                   "reference": ref, "models": models, "paired": paired,
                   "note": "t-intervals over folds; folds share training data, so the corrected "
                           "(Nadeau-Bengio, variance x (1/k + 1/(k-1))) intervals are the fairer ones"}
        _write_csv(out / "crossval_folds.csv", fold_rows)
        _write_csv(out / "crossval_paired.csv", paired_rows,
                   ["comparison", "dataset", "fold", "difference"])
        atomic_write_json(_finite(summary), out / "crossval_summary.json")
        _plot(models, out / "crossval_summary.png")
        over = f"of {k} folds" if len(tags) == 1 else f"folds ({len(tags)} datasets of {k})"
        for label, m in models.items():
            ci = m["ci95"]
            log(f"{label}: test acc {ci['mean']:.3f} (95 % CI {ci['low']:.3f} to {ci['high']:.3f}) "
                f"over {ci['n']} {over}")
        for name, p in paired.items():
            log(f"{name}: {p['mean']:+.3f} (95 % CI {p['low']:+.3f} to {p['high']:+.3f}), paired t "
                f"p = {p['p']:.3g} (corrected p = {p['p_corrected']:.3g})")
        return summary


def _finite(obj):
    """NaN as None for JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_csv(path, rows, fields=None) -> None:
    fields = fields or (list(rows[0]) if rows else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), path)


def _plot(models: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rsnn_bfd.writing import atomic_path
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(models), 3.5))
    for i, (label, m) in enumerate(models.items()):
        accs = m["test_acc"]
        ax.plot(np.full(len(accs), i) + np.linspace(-0.12, 0.12, len(accs)), accs, "o",
                color="0.6", ms=4)
        ci = m["ci95"]
        if math.isfinite(ci["low"]):
            ax.errorbar(i + 0.25, ci["mean"], yerr=[[ci["mean"] - ci["low"]],
                                                    [ci["high"] - ci["mean"]]],
                        fmt="s", color="C0", capsize=3)
    ax.set_xticks(range(len(models)), list(models), rotation=20)
    ax.set(ylabel="test accuracy (held-out fold)", ylim=(0, 1.02),
           title="cross-validation: folds (grey), mean and 95 % CI")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ======================================================================= learning curve
def learning_curve(summaries, out, overwrite: bool = False, log=print) -> dict:
    """Test accuracy against dataset size: the ``crossval_summary.json`` of each folder in
    ``summaries`` (one :func:`summarize` per dataset, models named alike, e.g. cnn / rsnn at
    91, 182 and 364 objects per class). Writes ``learning_curve.csv`` (model, objects per
    class, mean, interval, corrected interval), ``.json`` and ``.png`` into ``out``."""
    points = []
    for d in summaries:
        s = read_json(Path(d) / "crossval_summary.json")
        if s is None:
            raise FileNotFoundError(f"{d} holds no crossval_summary.json (python crossval.py "
                                    "summarize ... --out DIR makes one)")
        per_class = s["n_objects"] / 3
        for label, m in s["models"].items():
            ci, cc = m["ci95"], m["ci95_corrected"]
            points.append({"model": label, "objects_per_class": per_class,
                           "n_objects": s["n_objects"], "mean": ci["mean"], "low": ci["low"],
                           "high": ci["high"], "low_corrected": cc["low"],
                           "high_corrected": cc["high"], "k": s["k"], "summary": str(d)})
    out = Path(out)
    names = ("learning_curve.csv", "learning_curve.json", "learning_curve.png")
    # the writer's lock, before the first look at --out, to the end
    with removed_if_unused(out), claim_results_dir(out, names, overwrite, "a learning curve",
                                                   "crossval.py curve"), \
            together(*(out / n for n in names)):
        points.sort(key=lambda p: (p["model"], p["objects_per_class"]))
        _write_csv(out / "learning_curve.csv", points)
        atomic_write_json({"format": FORMAT + "-learning-curve", "points": points},
                          out / "learning_curve.json")
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from rsnn_bfd.writing import atomic_path
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for i, model in enumerate(dict.fromkeys(p["model"] for p in points)):
            ps = [p for p in points if p["model"] == model]
            x = np.array([p["objects_per_class"] for p in ps]) * (1 + 0.015 * i)   # no overlap
            mean = np.array([p["mean"] for p in ps])
            err = np.array([[p["mean"] - (p["low"] if p["low"] is not None else p["mean"]),
                             (p["high"] if p["high"] is not None else p["mean"]) - p["mean"]]
                            for p in ps]).T
            ax.errorbar(x, mean, yerr=err, fmt="o-", capsize=3, label=model)
        ax.set_xscale("log", base=2)
        sizes = sorted({p["objects_per_class"] for p in points})
        ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
        ax.set(xlabel="objects per class", ylabel="cross-validated test accuracy",
               title="learning curve (mean, 95 % CI over folds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(out / "learning_curve.png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        for p in points:
            log(f"{p['model']} at {p['objects_per_class']:g} objects per class: {p['mean']:.3f}")
        return {"points": points}
