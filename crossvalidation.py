"""Stratified k-fold cross-validation of the RSNN and the baselines (``crossval.py``).

All objects of a dataset (the training and test files pooled, training samples first) are
dealt into ``k`` stratified folds fixed by a seed (:func:`folds.stratified_folds`). For each
fold a model is trained on the other folds, its epoch is chosen on a stratified validation
split of those training folds, and it is tested on the held-out fold, which chooses nothing.
The output folder of one model's cross-validation:

    crossval.json       the settings: model, its configuration, folds, seed, validation fraction
    folds.json          the folds: pooled object indices of each fold and of each fold's
                        validation split, the labels, the data files and their identity
    fold_K/result.json  fold K's result (K = 0..k-1): the chosen epoch, its validation, test
                        and training accuracy, sample counts, seconds, the machine
                        (``common.machine``)
    fold_K/...          an RSNN fold's run folder (checkpoint.pth, best.pth, metrics.csv, ...)

A fold with a ``result.json`` is done and skipped on a rerun; an RSNN fold that was stopped
mid-way continues from its ``checkpoint.pth`` (exactly, as ``--resume`` does). Each fold
dir is locked while a process works in it, so folds can run in parallel processes.

:func:`summarize` pairs the results of several models on the same folds: per model the mean
test accuracy over the folds with a 95 % t-interval; per other model the paired differences
(first model minus it) with a paired t-test. Folds share training data, so these intervals
are optimistic; the Nadeau-Bengio corrected interval (variance x (1/k + n_test/n_train)) is
given beside them.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli import flag, parse_config, require
from common import (DirectoryLock, atomic_write_json, atomic_write_text, check_writable_dir,
                    machine)
from folds import check_partition, stratified_folds, stratified_holdout

RSNN_MODELS = {"rsnn-spiking": "SpikingConfig", "rsnn-realvalued": "RealValuedConfig"}
BASELINE_MODELS = ("cnn", "rnn", "lstm", "gru", "vote", "rate")   # baselines.MODELS
MODELS = tuple(RSNN_MODELS) + BASELINE_MODELS
SETTINGS_FILE, FOLDS_FILE, RESULT_FILE = "crossval.json", "folds.json", "result.json"
FORMAT = "barrel-rsnn-crossval"
# flags that cross-validation sets itself, refused after "--"
OWNED = {"rsnn": ("data_dir", "out", "resume", "overwrite", "max_train_samples",
                  "max_test_samples", "val_fraction", "val_seed", "progress"),
         "baseline": ("model", "data_dir", "out", "progress", "threads")}
# settings of the model configuration that do not change its results (not compared on reruns)
RUNTIME = ("device", "progress", "loader_workers", "workers", "data_dir", "out", "resume",
           "overwrite", "threads")


@dataclass
class CrossValConfig:
    """Settings of ``crossval.py`` (each is a flag); the model's own flags follow ``--``."""
    model: str = flag("rsnn-spiking", "the model: rsnn-spiking / rsnn-realvalued (the training "
                                      "scripts' configuration, flags after --) or a baseline "
                                      "of baselines.py (its flags after --)", MODELS)
    data_dir: str = flag("data", "folder with snn_train3.h5 / snn_test3.h5 (pooled)")
    out: str = flag("", "output folder (default runs/cv/MODEL)")
    folds: int = flag(5, "number of folds")
    seed: int = flag(0, "seed of the folds and of each fold's validation split")
    val_fraction: float = flag(0.2, "fraction of each fold's training objects held out "
                                    "(stratified) to choose the epoch")
    fold: int = flag(-1, "run only fold K (0..folds-1), e.g. one fold per process; -1: every "
                         "unfinished fold in turn")
    threads: int = flag(0, "torch and numba threads of this process (0: their defaults; 1 "
                           "for one fold per core)")
    progress: bool = flag(True, "progress bars")
    overwrite: bool = flag(False, "replace what --out holds: other settings, or the results of "
                                  "the folds run now")

    def validate(self) -> "CrossValConfig":
        require([
            (self.model in MODELS, f"--model must be one of {MODELS}, got {self.model!r}"),
            (self.folds >= 2, f"--folds must be >= 2, got {self.folds}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (math.isfinite(self.val_fraction) and 0 < self.val_fraction < 1,
             f"--val-fraction must be in (0, 1), got {self.val_fraction}"),
            (-1 <= self.fold < self.folds,
             f"--fold must be in 0..{self.folds - 1} (or -1: all), got {self.fold}"),
            (self.threads >= 0, f"--threads must be >= 0, got {self.threads}"),
        ])
        if not self.out:
            self.out = str(Path("runs") / "cv" / self.model)
        return self


# ================================================================== model configurations
def is_rsnn(model: str) -> bool:
    return model in RSNN_MODELS


def model_config(model: str, model_args: list[str], val_fraction: float = 0.2):
    """The configuration of ``model`` from the flags after ``--``: a ``training`` config for
    the RSNN (the defaults of its script, with the cross-validation's ``val_fraction``), a
    ``baselines.BaselineConfig`` for a baseline (one seed, ``--seeds`` default 0). Flags that
    cross-validation sets are refused."""
    if is_rsnn(model):
        import training
        cls, owned = getattr(training, RSNN_MODELS[model]), OWNED["rsnn"]
    else:
        import baselines
        cls, owned = baselines.BaselineConfig, OWNED["baseline"]
    prog = f"crossval.py --model {model} --"
    cfg, given = parse_config(cls, model_args, prog=prog)
    refused = sorted(given & set(owned))
    if refused:
        raise ValueError(f"{', '.join('--' + n.replace('_', '-') for n in refused)} after -- "
                         "is set by crossval.py (use its own flags, before --)")
    if is_rsnn(model):
        cfg.val_fraction = val_fraction
        return cfg.validate()
    import baselines
    if "seeds" not in given:
        cfg.seeds = "0"
    if len(baselines.parse_seeds(cfg.seeds)) != 1:
        raise ValueError(f"--seeds after -- must be one seed for cross-validation, got "
                         f"{cfg.seeds!r}")
    cfg.model = model
    return cfg.validate()


def comparable(config) -> dict:
    """The settings of a model configuration that change its results."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in RUNTIME}


def same_config(stored: dict, current: dict, cls) -> bool:
    """Whether a stored ``comparable`` configuration is the ``current`` one. A setting the
    stored one lacks (added to the code since) counts as the same while ``current`` holds its
    default, so that runs started before a new opt-in option keep going."""
    defaults = comparable(cls())
    return all(stored[k] == v if k in stored else v == defaults.get(k)
               for k, v in current.items()) and set(stored) <= set(current)


# ================================================================================ folds
def make_folds(data_dir, k: int, seed: int, val_fraction: float) -> dict:
    """The content of ``folds.json`` for the pooled files of ``data_dir`` (see the module
    docstring). Fold K's validation split is drawn with :func:`validation_seed`."""
    from whisker_dataset import TEST_FILE, TRAIN_FILE, dataset_identity, read_labels
    data_dir = Path(data_dir)
    for name in (TRAIN_FILE, TEST_FILE):
        if not (data_dir / name).is_file():
            raise FileNotFoundError(f"{data_dir / name} not found; generate the data with "
                                    f"`python whisker_sim.py --out {data_dir}` or pass --data-dir")
    parts = [read_labels(data_dir / name) for name in (TRAIN_FILE, TEST_FILE)]
    labels = np.concatenate(parts)
    folds = stratified_folds(labels, k, seed)
    check_partition(folds, len(labels))
    validation = []
    for K, test in enumerate(folds):
        rest = np.asarray(training_objects(folds, K))
        _, held = stratified_holdout(labels[rest], val_fraction, validation_seed(seed, K))
        validation.append(rest[held].tolist())
    return {"format": FORMAT, "k": k, "seed": seed, "val_fraction": val_fraction,
            "n_objects": int(len(labels)),
            "class_counts": np.bincount(labels, minlength=3).tolist(),
            "files": [{"name": TRAIN_FILE, "first": 0, "n": int(len(parts[0]))},
                      {"name": TEST_FILE, "first": int(len(parts[0])), "n": int(len(parts[1]))}],
            "dataset": dataset_identity(data_dir), "data_dir": str(data_dir),
            "folds": folds, "validation": validation, "labels": labels.tolist()}


def validation_seed(seed: int, K: int) -> int:
    """The seed of fold ``K``'s validation split (as ``--val-seed`` in its run's config)."""
    return (int(seed) * 1000 + K + 1) % 2 ** 63


def training_objects(folds: list[list[int]], K: int) -> list[int]:
    """The pooled indices of every fold but ``K``, sorted."""
    return sorted(i for j, f in enumerate(folds) if j != K for i in f)


def fold_split(record: dict, K: int) -> tuple[list[int], list[int], list[int]]:
    """(train, validation, test) pooled indices of fold ``K`` of a ``folds.json`` record."""
    val = record["validation"][K]
    held = set(val)
    train = [i for i in training_objects(record["folds"], K) if i not in held]
    return train, list(val), list(record["folds"][K])


def same_folds(a: dict, b: dict) -> bool:
    """Whether two ``folds.json`` records test on the same objects of the same data."""
    return (a["folds"] == b["folds"] and a["labels"] == b["labels"]
            and a.get("dataset") == b.get("dataset"))


# ========================================================================= the output dir
def fold_dir(out, K: int) -> Path:
    return Path(out) / f"fold_{K}"


def read_json(path) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} cannot be read ({err}); delete it or use --overwrite") from None


def _acquire(folder, what: str, wait: float = 60.0) -> DirectoryLock:
    """Hold ``folder/.lock``, waiting up to ``wait`` seconds for another process's short hold."""
    t0 = time.time()
    while True:
        try:
            return DirectoryLock(folder, what).acquire()
        except ValueError:
            if time.time() - t0 > wait:
                raise
            time.sleep(0.5)


def prepare(cfg: CrossValConfig, model_args: list[str], log=print) -> tuple[dict, dict]:
    """Create or check ``crossval.json`` and ``folds.json`` in ``cfg.out``; returns (settings,
    folds record). Other settings in ``cfg.out`` are an error unless ``--overwrite``, which
    deletes the folds' results (no fold may be running)."""
    out = check_writable_dir(cfg.out)
    config = model_config(cfg.model, model_args, cfg.val_fraction)
    settings = {"format": FORMAT, "model": cfg.model, "model_args": list(model_args),
                "model_config": comparable(config), "folds": cfg.folds, "seed": cfg.seed,
                "val_fraction": cfg.val_fraction, "data_dir": str(cfg.data_dir)}
    record = make_folds(cfg.data_dir, cfg.folds, cfg.seed, cfg.val_fraction)
    lock = _acquire(out, "crossval set-up")
    try:
        old, old_record = read_json(out / SETTINGS_FILE), read_json(out / FOLDS_FILE)
        keys = ("model", "model_config", "folds", "seed", "val_fraction")
        differs = [k for k in keys if old is not None and k != "model_config"
                   and old.get(k) != settings[k]]
        if old is not None and not same_config(old.get("model_config") or {},
                                               settings["model_config"], type(config)):
            differs.insert(1, "model_config")
        if old_record is not None and not same_folds(old_record, record):
            differs.append("data")
        stray = old is None and any(out.glob("fold_*"))
        if differs or stray:
            what = (f"a cross-validation with other settings ({', '.join(differs)})" if differs
                    else "fold folders without crossval.json")
            if not cfg.overwrite:
                raise ValueError(f"{out} holds {what}; use another --out, or --overwrite to "
                                 "delete its results")
            for d in sorted(out.glob("fold_*")):
                remove_fold(d)
            log(f"--overwrite: deleted the fold results in {out}")
        atomic_write_json(settings, out / SETTINGS_FILE)
        atomic_write_json(record, out / FOLDS_FILE)
    finally:
        lock.release()
    return settings, record


def remove_fold(d: Path) -> None:
    """Delete a fold folder, refusing one that a process is working in."""
    if not d.is_dir():
        return
    lock = DirectoryLock(d, "crossval overwrite").acquire()   # raises if in use
    try:
        for p in sorted(d.iterdir()):
            if p.name == ".lock":
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    finally:
        lock.release()
    shutil.rmtree(d, ignore_errors=True)


# ============================================================================= one fold
def run_fold(cfg: CrossValConfig, settings: dict, record: dict, K: int, log=print,
             cache: dict | None = None) -> dict:
    """Train and test fold ``K`` (skipped when its ``result.json`` exists, unless
    ``--overwrite``); writes and returns the result."""
    d = fold_dir(cfg.out, K)
    if (d / RESULT_FILE).is_file() and cfg.overwrite:
        remove_fold(d)
    done = read_json(d / RESULT_FILE)
    if done is not None:
        log(f"fold {K}: done before (test acc {done['test_acc']:.3f}), skipped")
        return done
    train_idx, val_idx, test_idx = fold_split(record, K)
    config = model_config(settings["model"], settings["model_args"], settings["val_fraction"])
    t0 = time.time()
    if is_rsnn(settings["model"]):
        try:
            result = _rsnn_fold(config, cfg, d, train_idx, val_idx, test_idx, K, log)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"fold {K} stopped; {d} keeps its last checkpoint; rerun "
                                    "the same command to continue") from None
    else:
        d.mkdir(parents=True, exist_ok=True)
        with DirectoryLock(d, f"crossval fold {K}"):
            result = _baseline_fold(config, cfg, train_idx, val_idx, test_idx, K, cache)
    # accuracies as counts over the objects (exact, whatever the float type of the model)
    n_correct = int(round(result["test_acc"] * len(test_idx)))
    result.update(fold=K, model=settings["model"], n_train=len(train_idx), n_val=len(val_idx),
                  n_test=len(test_idx), wall_seconds=time.time() - t0, n_correct=n_correct,
                  test_acc=n_correct / len(test_idx),
                  val_acc=round(result["val_acc"] * len(val_idx)) / len(val_idx),
                  machine=machine())
    atomic_write_json(result, d / RESULT_FILE)
    log(f"fold {K}: epoch {result['best_epoch']} chosen on validation (acc "
        f"{result['val_acc']:.3f}), test acc {result['test_acc']:.3f} on {len(test_idx)} objects")
    return result


def _rsnn_fold(config, cfg: CrossValConfig, d: Path, train_idx, val_idx, test_idx, K: int,
               log) -> dict:
    import training
    from whisker_dataset import pooled_dataset
    tc = dataclasses.replace(config, data_dir=str(cfg.data_dir), out=str(d), overwrite=False,
                             val_fraction=cfg.val_fraction, val_seed=validation_seed(cfg.seed, K),
                             max_train_samples=0, max_test_samples=0, progress=cfg.progress,
                             resume="")
    ckpt_path = d / "checkpoint.pth"
    epoch = 0
    if ckpt_path.is_file():
        ckpt = training.read_checkpoint(ckpt_path)
        epoch = int(ckpt.get("epoch", 0))
        stored = {k: v for k, v in (ckpt.get("train_config") or {}).items() if k not in RUNTIME}
        mine = {k: v for k, v in comparable(tc).items() if k in stored}
        if stored != mine:
            changed = sorted(k for k in mine if stored.get(k) != mine[k])
            raise ValueError(f"{d} holds a run with other settings ({', '.join(changed)}); "
                             "use --overwrite to restart this fold")
        tc.resume = str(ckpt_path)
        log(f"fold {K}: continuing {d} after epoch {epoch}")
    elif d.is_dir() and any(p.name != ".lock" for p in d.iterdir()):
        # a fold killed before its first checkpoint: nothing to keep but its config
        remove_fold(d)
    if epoch < tc.epochs:
        pool = pooled_dataset(tc.encoder, cfg.data_dir, spike_seed=tc.spike_seed,
                              n_steps=tc.n_steps or None,
                              resample_each_epoch=tc.resample_each_epoch, features=tc.features)
        data = training.RunData(pool, pool.without_resampling(), train_idx, test_idx, val_idx)
        training.train(tc, log=log, data=data)
    rows = training.read_metrics(d / "metrics.csv")
    best_epoch, val_acc, _ = training.selection(rows, "val_acc")
    row = next(r for r in rows if r["epoch"] == best_epoch)
    best = training.read_checkpoint(d / "best.pth")
    if int(best["epoch"]) != best_epoch:
        raise ValueError(f"{d / 'best.pth'} is epoch {best['epoch']} but metrics.csv chooses "
                         f"epoch {best_epoch}; use --overwrite to restart this fold")
    return {"best_epoch": best_epoch, "val_acc": val_acc, "test_acc": row["test_acc"],
            "train_acc": row["train_acc"], "firing_rate": row["firing_rate"],
            "last_test_acc": rows[-1]["test_acc"], "epochs_run": int(rows[-1]["epoch"]),
            "stopped_early": int(rows[-1]["epoch"]) < tc.epochs,
            "train_seconds": float(sum(r["seconds"] for r in rows))}


def _baseline_inputs(config, data_dir, cache: dict | None):
    """Training sweeps (N, S, T, F), sweep 0 (N, T, F) and labels (N,) of the pooled data."""
    import baselines
    from whisker_dataset import DT_REPEAT, parse_sweeps, pooled_dataset
    key = (str(data_dir), config.encoder, config.spike_seed, config.features, config.train_sweeps)
    if cache is not None and key in cache:
        return cache[key]
    pool = pooled_dataset(config.encoder, data_dir, spike_seed=config.spike_seed,
                          features=config.features)
    x, y = baselines.sweep_inputs(pool, parse_sweeps(config.train_sweeps))
    x0 = baselines.sweep0_inputs(pool)[0]
    value = (x, x0, y, DT_REPEAT if config.encoder == "spiking" else 1)
    if cache is not None:
        cache.clear()
        cache[key] = value
    return value


def _baseline_fold(config, cfg: CrossValConfig, train_idx, val_idx, test_idx, K: int,
                   cache) -> dict:
    import baselines
    x, x0, y, frame = _baseline_inputs(config, cfg.data_dir, cache)
    seed = baselines.parse_seeds(config.seeds)[0]
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=config.epochs, desc=f"fold {K} {config.model}", leave=False)
    try:
        r = baselines.train_baseline_on_split(config.model, x, x0, y, train_idx, val_idx,
                                              test_idx, config, seed, frame, bar)
    finally:
        if bar is not None:
            bar.close()
    return {"best_epoch": r["best_epoch"], "val_acc": r["val_acc"], "test_acc": r["test_acc"],
            "train_acc": r["train_acc"], "last_test_acc": r["epochs"][-1]["test_acc"],
            "epochs_run": len(r["epochs"]), "stopped_early": False,
            "train_seconds": r["seconds"], "epochs": r["epochs"]}


def run(cfg: CrossValConfig, model_args: list[str], log=print) -> list[dict]:
    """Run the folds of ``cfg`` (all unfinished ones, or ``cfg.fold``); returns their results."""
    cfg.validate()
    if cfg.threads:
        set_threads(cfg.threads)
    settings, record = prepare(cfg, model_args, log)
    todo = [cfg.fold] if cfg.fold >= 0 else list(range(cfg.folds))
    log(f"cross-validation of {cfg.model} in {cfg.out}: {record['n_objects']} objects "
        f"{record['class_counts']} in {cfg.folds} folds (seed {cfg.seed}), "
        f"{cfg.val_fraction:g} of each fold's training objects for validation; "
        f"fold(s) {', '.join(map(str, todo))}")
    results, cache, spent, timed = [], {}, 0.0, 0
    bar = None
    if cfg.progress and len(todo) > 1:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="folds", unit="fold", dynamic_ncols=True)
    try:
        for n, K in enumerate(todo):
            t0 = time.time()
            was_done = (fold_dir(cfg.out, K) / RESULT_FILE).is_file() and not cfg.overwrite
            results.append(run_fold(cfg, settings, record, K, log, cache))
            if not was_done:
                spent, timed = spent + time.time() - t0, timed + 1
            left = [k for k in todo[n + 1:]
                    if not (fold_dir(cfg.out, k) / RESULT_FILE).is_file()]
            if left and timed:
                log(f"about {_duration(spent / timed * len(left))} left for fold(s) "
                    f"{', '.join(map(str, left))} in this process")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    missing = [k for k in range(cfg.folds) if not (fold_dir(cfg.out, k) / RESULT_FILE).is_file()]
    if missing:
        log(f"folds still to run: {', '.join(map(str, missing))}")
    else:
        log(f"all {cfg.folds} folds done; compare with: python crossval.py summarize {cfg.out} ...")
    return results


def set_threads(n: int) -> None:
    """torch's and numba's thread counts of this process."""
    import torch
    torch.set_num_threads(n)
    try:
        import numba
    except ImportError:
        return
    if n > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"--threads {n} is more than numba allows here "
                         f"(NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS})")
    numba.set_num_threads(n)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


# ============================================================================== status
def status(out) -> list[dict]:
    """Per fold of the cross-validation in ``out``: ``state`` (done / started / not started),
    the result or the epochs run so far and an estimate of the time left."""
    from rundir import read_metrics
    out = Path(out)
    settings, record = read_json(out / SETTINGS_FILE), read_json(out / FOLDS_FILE)
    if settings is None or record is None:
        raise FileNotFoundError(f"{out} holds no cross-validation ({SETTINGS_FILE}, {FOLDS_FILE})")
    epochs = settings["model_config"].get("epochs")
    rows = []
    for K in range(record["k"]):
        d = fold_dir(out, K)
        result = read_json(d / RESULT_FILE)
        if result is not None:
            rows.append({"fold": K, "state": "done", "test_acc": result["test_acc"],
                         "best_epoch": result["best_epoch"], "seconds": result.get("wall_seconds")})
            continue
        metrics = read_metrics(d / "metrics.csv")
        if metrics:
            mean = float(np.mean([r["seconds"] for r in metrics]))
            left = mean * max(epochs - metrics[-1]["epoch"], 0) if epochs else None
            rows.append({"fold": K, "state": "started", "epoch": metrics[-1]["epoch"],
                         "epochs": epochs, "seconds_left": left})
        else:
            rows.append({"fold": K, "state": "not started"})
    return rows


def describe_status(out, rows: list[dict]) -> str:
    lines = [f"{out}:"]
    for r in rows:
        if r["state"] == "done":
            lines.append(f"  fold {r['fold']}: done, test acc {r['test_acc']:.3f} (epoch "
                         f"{r['best_epoch']})")
        elif r["state"] == "started":
            left = (f", about {_duration(r['seconds_left'])} left at its pace so far"
                    if r.get("seconds_left") is not None else "")
            lines.append(f"  fold {r['fold']}: epoch {r['epoch']}/{r['epochs']} (running or "
                         f"stopped){left}")
        else:
            lines.append(f"  fold {r['fold']}: not started")
    return "\n".join(lines)


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


def summarize(dirs, out, overwrite: bool = False, log=print, only_folds: str = "") -> dict:
    """Compare the cross-validations in ``dirs`` (the first against each other) on their
    folds (``only_folds``, e.g. ``"0,1,2"``: those only, as for the screens of model
    changes); writes into ``out``:

        crossval_folds.csv    one row per model and fold
        crossval_paired.csv   per other model: the first model minus it, per fold
        crossval_summary.json per model: mean test accuracy, 95 % t-interval (and the
                              corrected one), pooled accuracy; per pair: paired t-test
        crossval_summary.png  test accuracy per fold and model, means and intervals
    """
    if not dirs:
        raise ValueError("give at least one cross-validation folder")
    wanted = parse_folds(only_folds)        # a typo is reported before any folder is read
    loaded = [load_results(d, wanted) for d in dirs]
    labels = [Path(d).name or str(d) for d in dirs]
    if len(set(labels)) < len(labels):
        labels = [str(d) for d in dirs]
    first = loaded[0][1]
    for d, (_, record, _) in zip(dirs[1:], loaded[1:]):
        if not same_folds(first, record):
            raise ValueError(f"{d} was run on other folds or data than {dirs[0]} (folds seed "
                             f"{record['seed']} / {first['seed']}, k {record['k']} / "
                             f"{first['k']}); paired results need the same folds")
    out = check_writable_dir(out)
    names = ("crossval_folds.csv", "crossval_paired.csv", "crossval_summary.json",
             "crossval_summary.png")
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise ValueError(f"{out} already holds {', '.join(existing)}; use --overwrite or "
                         "another --out")
    k = first["k"]
    correction = 1 / (k - 1)     # n_test / n_train of k-fold cross-validation
    models, fold_rows = {}, []
    for label, (settings, record, results), d in zip(labels, loaded, dirs):
        accs = [r["test_acc"] for r in results]
        n_test = sum(r["n_test"] for r in results)
        models[label] = {
            "dir": str(d), "model": settings["model"], "model_args": settings["model_args"],
            "test_acc": accs, "ci95": t_interval(accs),
            "ci95_corrected": t_interval(accs, correction=correction),
            "pooled_acc": sum(r["n_correct"] for r in results) / n_test,
            "val_acc": [r["val_acc"] for r in results],
            "best_epoch": [r["best_epoch"] for r in results],
            "train_acc": [r["train_acc"] for r in results]}
        for r in results:
            fold_rows.append({"model": label, "fold": r["fold"], "n_train": r["n_train"],
                              "n_val": r["n_val"], "n_test": r["n_test"],
                              "best_epoch": r["best_epoch"], "val_acc": r["val_acc"],
                              "test_acc": r["test_acc"], "train_acc": r["train_acc"]})
    ref = labels[0]
    paired, paired_rows = {}, []
    for label in labels[1:]:
        p = paired_test(models[ref]["test_acc"], models[label]["test_acc"], correction)
        paired[f"{ref} - {label}"] = p
        for K, dk in enumerate(p["differences"]):
            paired_rows.append({"comparison": f"{ref} - {label}", "fold": K, "difference": dk})
    summary = {"format": FORMAT + "-summary", "k": k, "seed": first["seed"],
               "folds": [r["fold"] for r in loaded[0][2]],
               "n_objects": first["n_objects"], "dataset": first.get("dataset"),
               "reference": ref, "models": models, "paired": paired,
               "note": "t-intervals over folds; folds share training data, so the corrected "
                       "(Nadeau-Bengio, variance x (1/k + 1/(k-1))) intervals are the fairer ones"}
    _write_csv(out / "crossval_folds.csv", fold_rows)
    _write_csv(out / "crossval_paired.csv", paired_rows,
               ["comparison", "fold", "difference"])
    atomic_write_json(_finite(summary), out / "crossval_summary.json")
    _plot(models, out / "crossval_summary.png")
    for label, m in models.items():
        ci = m["ci95"]
        log(f"{label}: test acc {ci['mean']:.3f} (95 % CI {ci['low']:.3f} to {ci['high']:.3f}) "
            f"over {ci['n']} of {k} folds")
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

    from common import atomic_path
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
    out = check_writable_dir(out)
    names = ("learning_curve.csv", "learning_curve.json", "learning_curve.png")
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise ValueError(f"{out} already holds {', '.join(existing)}; use --overwrite or "
                         "another --out")
    points.sort(key=lambda p: (p["model"], p["objects_per_class"]))
    _write_csv(out / "learning_curve.csv", points)
    atomic_write_json({"format": FORMAT + "-learning-curve", "points": points},
                      out / "learning_curve.json")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common import atomic_path
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
