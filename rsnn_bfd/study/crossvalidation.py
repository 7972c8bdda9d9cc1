"""Stratified k-fold cross-validation of the RSNN and the baselines (``crossval.py``).

All objects of a dataset (the training and test files pooled, training samples first) are
dealt into ``k`` stratified folds fixed by a seed (:func:`rsnn_bfd.data.folds.stratified_folds`).
For each fold a model is trained on the other folds, its epoch is chosen on a stratified validation
split of those training folds, and it is tested on the held-out fold, which chooses nothing.
The output folder of one model's cross-validation:

    crossval.json       the settings: model, its configuration, folds, seed, validation fraction
    folds.json          the folds: pooled object indices of each fold and of each fold's
                        validation split, the labels, the data files and their identity
    fold_K/result.json  fold K's result (K = 0..k-1): the chosen epoch, its validation, test
                        and training accuracy, sample counts, seconds, the machine
                        (``rsnn_bfd.common.machine``)
    fold_K/...          an RSNN fold's run folder (checkpoint.pth, best.pth, metrics.csv, ...)

A fold with a ``result.json`` is done and skipped on a rerun; an RSNN fold that was stopped
mid-way continues from its ``checkpoint.pth`` (exactly, as ``--resume`` does). Each fold
dir is locked while a process works in it, so folds can run in parallel processes.

The settings, the folds and this layout: :mod:`rsnn_bfd.study.cv_setup`; the summary of the
results (:func:`rsnn_bfd.study.summary.summarize`): :mod:`rsnn_bfd.study.summary`.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np

from rsnn_bfd.common import cap_workers, machine
from rsnn_bfd.study.cv_setup import (FOLDS_FILE, FORMAT, RESULT_FILE, RUNTIME, SETTINGS_FILE,
                                     CrossValConfig, comparable, fold_dir, fold_split, is_rsnn,
                                     make_folds, model_config, read_json, same_config, same_folds,
                                     validation_seed)
from rsnn_bfd.writing import (DirectoryLock, atomic_write_json, check_writable_dir,
                              removed_if_unused)


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
        try:
            with DirectoryLock(d, f"crossval fold {K}"):
                result = _baseline_fold(config, cfg, train_idx, val_idx, test_idx, K, cache)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"fold {K} stopped (a baseline's fold starts again from its "
                                    "first epoch); the finished folds are kept in "
                                    f"{cfg.out}; rerun the same command to continue") from None
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
    from rsnn_bfd.data.datasets import pooled_dataset
    from rsnn_bfd.io.checkpoint import read_checkpoint
    from rsnn_bfd.training.data import RunData
    from rsnn_bfd.training.run import train
    from rsnn_bfd.training.rundir import read_metrics
    from rsnn_bfd.training.selection import selection
    tc = dataclasses.replace(config, data_dir=str(cfg.data_dir), out=str(d), overwrite=False,
                             val_fraction=cfg.val_fraction, val_seed=validation_seed(cfg.seed, K),
                             max_train_samples=0, max_test_samples=0, progress=cfg.progress,
                             resume="")
    ckpt_path = d / "checkpoint.pth"
    epoch = 0
    if ckpt_path.is_file():
        ckpt = read_checkpoint(ckpt_path)
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
        data = RunData(pool, pool.without_resampling(), train_idx, test_idx, val_idx)
        train(tc, log=log, data=data)
    rows = read_metrics(d / "metrics.csv")
    best_epoch, val_acc, _ = selection(rows, "val_acc")
    row = next(r for r in rows if r["epoch"] == best_epoch)
    best = read_checkpoint(d / "best.pth")
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
    from rsnn_bfd.data.datasets import pooled_dataset
    from rsnn_bfd.data.encoding import parse_sweeps
    from rsnn_bfd.data.files import DT_REPEAT
    from rsnn_bfd.study import baselines
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
    from rsnn_bfd.study import baselines
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
    with removed_if_unused(cfg.out):   # a folder made for a set-up that fails is taken away
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
    """torch's and numba's thread counts of this process (at most the machine's cores)."""
    import torch
    n = cap_workers(n, "--threads")
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
    from rsnn_bfd.training.rundir import read_metrics
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
