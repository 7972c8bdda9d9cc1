"""A training run: ``RSNN_bfd_SpikingBased.py`` and ``RSNN_bfd_RealValued.py`` call :func:`train`.

    cfg = SpikingConfig(epochs=2, n_steps=8, max_train_samples=4)   # or RealValuedConfig
    summary = train(cfg)                                            # writes cfg.out/...

A run writes into its run directory (:mod:`rsnn_bfd.training.rundir`: checkpoints,
metrics.csv, learning curves, config; all writes atomic). A folder that already holds a run is
never overwritten: a new run there is refused unless ``--resume`` continues it or
``--overwrite`` replaces it (:func:`rsnn_bfd.training.rundir.claim_run_dir`). A run stops with
a one-line message, keeping its last good checkpoint, when the loss or a parameter becomes NaN
or infinite (:class:`rsnn_bfd.training.step.TrainingDiverged`).

Paper set-up (the defaults): Adam, lr 0.008 (x5 for ``tau_adp``, x2 for ``tau_m``, thalamic
and cortical), StepLR(20, 0.8) spiking / StepLR(10, 0.5) real-valued, 100 epochs, batch 128,
cross-entropy on ``output / T`` (T = 550 spiking, 110 real-valued). ``loss="log-mean-prob"``
and ``loss="mean-logit"`` are the opt-in alternatives of :mod:`rsnn_bfd.network.readout`.

Reproducibility: the model is built from its own generator (``seed``); the data order of
epoch ``e`` is a permutation drawn from a generator seeded with ``(seed, e)``; spikes are drawn
per sample from ``(spike_seed, index)``. Nothing uses the global RNG, so ``--resume`` gives the
same weights as an uninterrupted run.

Multi-process (``torchrun``, :mod:`rsnn_bfd.training.distributed`): DistributedDataParallel.
Each rank's loss is ``K * sum(CE over its shard) / global_batch``, so DDP's gradient average
equals the gradient of the mean loss over the global batch (shards may differ in size).
Evaluation sums are all-reduced; only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from pathlib import Path

import torch

from rsnn_bfd.cli import parse_config
from rsnn_bfd.common import cap_workers
from rsnn_bfd.writing import DiskFullError, atomic_write_json, removed_if_unused
from rsnn_bfd.config import SCRIPTS, TrainConfig
from rsnn_bfd.data.encoding import parse_sweeps
from rsnn_bfd.data.files import dataset_identity, describe_identity
from rsnn_bfd.io.checkpoint import load_checkpoint, save_checkpoint
from rsnn_bfd.network.model import DTYPES, build_model
from rsnn_bfd.training.batches import epoch_batches
from rsnn_bfd.training.data import RunData, require_classes, run_data
from rsnn_bfd.training.distributed import Dist, setup_distributed
from rsnn_bfd.training.frozen import FrozenRates, frozen_rates_apply
from rsnn_bfd.training.init import fit_readout_norm_
from rsnn_bfd.training.resume import resolve_resume
from rsnn_bfd.training.rundir import (claim_run_dir, plot_learning_curves, read_metrics, same_dir,
                                      write_metrics)
from rsnn_bfd.training.selection import LearningStall, selection
from rsnn_bfd.training.step import (Regularisers, TrainingDiverged, evaluate, make_optimizer,
                                    restore_optimizer, train_one_epoch)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def train(cfg: TrainConfig, log=print, data: RunData | None = None) -> dict:
    """Train (or resume) a run as described in the module docstring.

    ``data``: the datasets and index lists to use (default :func:`run_data` of ``cfg``).
    Returns ``{"rows": metrics rows, "best_test_acc", "out": run dir, "epoch": the last
    epoch run, "selected_on": "test" or "validation", "best_epoch": the epoch of best.pth,
    "best_val_acc" (None without a validation set), "stopped_early"}``.
    """
    cfg.validate()
    dist, device = setup_distributed(cfg.device)
    log = log if dist.main else (lambda *a, **k: None)
    # a run folder made by this run is removed again when it fails before its first epoch
    with removed_if_unused(cfg.out) if dist.main else contextlib.nullcontext():
        lock = claim_run_dir(cfg.out, cfg.resume, cfg.overwrite) if dist.main else None
        try:
            return _train(cfg, dist, device, log, data)
        finally:
            if lock is not None:
                lock.release()
            if dist.active and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, dist: Dist, device, log, data: RunData | None = None) -> dict:
    out = Path(cfg.out)
    dtype = DTYPES[cfg.dtype]
    data = data or run_data(cfg, dist, log)
    require_classes(data)
    workers = cfg.loader_workers if cfg.loader_workers >= 0 else (4 if device.type == "cuda" else 0)
    workers = cap_workers(workers, "--loader-workers", log) if workers else 0

    start_epoch, best, rows = 0, -1.0, []
    for notice in cfg.ineffective():
        log(f"note: {notice}")
    if cfg.resume:
        model, ckpt = load_checkpoint(cfg.resume, device)
        model = model.to(dtype=dtype)
        optimizer, scheduler, changed = restore_optimizer(model, cfg, ckpt)
        if changed:
            log(f"the learning rates follow the changed {', '.join(changed)} from now on: "
                f"{optimizer.param_groups[0]['lr']:.3g} in the next epoch")
        start_epoch = int(ckpt.get("epoch", 0))
        if cfg.epochs <= start_epoch:
            raise ValueError(f"{cfg.resume} has already trained {start_epoch} epochs; give "
                             f"--epochs larger than {start_epoch} to continue")
        best = float(ckpt.get("best_test_acc") if ckpt.get("best_test_acc") is not None else -1.0)
        stored_split = ckpt.get("split") or {}
        if (stored_split or data.val_idx) and {k: stored_split.get(k) for k in ("train_idx", "val_idx")} \
                != {k: v for k, v in data.split().items() if k != "test_idx"}:
            raise ValueError(f"{cfg.resume} was trained with "
                             + (f"another validation split ({len(stored_split.get('val_idx', []))} "
                                "samples)" if stored_split else "no validation set")
                             + "; resume it with the settings it was started with (--val-fraction, "
                             "--val-seed, --max-train-samples)")
        trained_on, here = ckpt.get("dataset") or {}, dataset_identity(cfg.data_dir)
        if trained_on and here and trained_on != here:
            raise ValueError(f"{cfg.resume} was trained on {describe_identity(trained_on)}, but "
                             f"--data-dir {cfg.data_dir} holds {describe_identity(here)}; resume "
                             "it with its own data, or start a new run with --out NEW_DIR")
        # the history up to this checkpoint, from the run it belongs to
        rows = [r for r in read_metrics(Path(cfg.resume).parent / "metrics.csv")
                if r["epoch"] <= start_epoch]
        log(f"resumed from {cfg.resume} after epoch {start_epoch}")
    else:
        model = build_model(cfg.model_config(), device=device, dtype=dtype)
        optimizer, scheduler = make_optimizer(model, cfg)
    model.use_engine(cfg.engine)   # a named engine is never swapped; options from ENGINE_*
    model.decision = cfg.loss      # the network decides as it is trained
    # readout-only epochs that may read each sample's rates once (rsnn_bfd.training.frozen)
    rates = FrozenRates(model, device) if frozen_rates_apply(cfg, model, dist.world) else None
    if not cfg.resume and model.config.readout_norm:
        norm = fit_readout_norm_(model, data.train_set, data.train_idx, cfg.batch_size, device,
                                 cfg.progress and dist.main, rates)
        log(f"readout norm: mean rate {norm['mean_rate']:.4f} of the read-out neurons over "
            f"{norm['n']} training samples")
    model.train()

    ddp_model = model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel as DDP
        with warnings.catch_warnings():   # buffers (masks, signs) are fixed: no syncing
            warnings.simplefilter("ignore", FutureWarning)
            ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                            broadcast_buffers=False)

    config_dict = dataclasses.asdict(cfg)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        log(f"training {cfg.encoder} RSNN on {device} with the {model.engine} engine"
            f"{' (auto)' if cfg.engine == 'auto' else ''} ({dist.world} process(es)): "
            f"{len(data.train_idx)} train / "
            + (f"{len(data.val_idx)} validation / " if data.val_idx else "")
            + f"{len(data.test_idx)} test samples, T = {data.train_set[0][0].shape[2]}, epochs "
            f"{start_epoch + 1}..{cfg.epochs}, best.pth by "
            f"{'validation' if data.val_idx else 'test'} accuracy; run dir {out}")

    saved = {"epoch": start_epoch if cfg.resume and same_dir(Path(cfg.resume).parent, out)
             else 0}   # the epoch checkpoint.pth holds, as _epochs writes it
    try:
        stopped = _epochs(cfg, model, ddp_model, optimizer, scheduler, data, workers,
                          start_epoch, best, rows, config_dict, dist, device, log, saved, rates)
    except (TrainingDiverged, KeyboardInterrupt, DiskFullError) as err:
        if not dist.main:
            raise
        done = saved["epoch"]
        kept = (f"kept {out / 'checkpoint.pth'} (epoch {done})"
                if done and (out / "checkpoint.pth").is_file() else "nothing was saved")
        if isinstance(err, TrainingDiverged):
            failed = (rows[-1]["epoch"] if rows else start_epoch) + 1
            raise TrainingDiverged(f"training diverged in epoch {failed}: {err}; {kept}, and "
                                   f"best.pth holds no diverged state. {err.lever}",
                                   err.lever) from None
        resume = (f"continue with: python {SCRIPTS.get(cfg.encoder, SCRIPTS['spiking'])} "
                  f"--resume {out}" if "kept" in kept else "start it again")
        if isinstance(err, DiskFullError):
            raise DiskFullError(err.path, message=f"{err}; {kept}: free some space, then "
                                f"{resume}") from None
        raise KeyboardInterrupt(f"{kept}; {resume}") from None
    key = "val_acc" if data.val_idx else "test_acc"
    best_epoch, best_value, _ = selection(rows, key)
    return {"rows": rows, "best_test_acc": max([r["test_acc"] for r in rows], default=best),
            "out": str(out), "epoch": rows[-1]["epoch"] if rows else start_epoch,
            "selected_on": "validation" if data.val_idx else "test", "best_epoch": best_epoch,
            "best_val_acc": best_value if data.val_idx else None, "stopped_early": stopped}


def _epochs(cfg, model, ddp_model, optimizer, scheduler, data: RunData, workers, start_epoch,
            best, rows, config_dict, dist, device, log, saved: dict | None = None,
            rates: FrozenRates | None = None) -> bool:
    """The epoch loop of :func:`_train`; appends to ``rows`` as epochs finish. Returns whether
    it stopped early (``patience`` epochs without a better validation accuracy).

    Without a validation set ``best.pth`` is the epoch of the best test accuracy (published);
    with one, of the best validation accuracy, and the test set is only reported. ``rates``:
    the store of readout-only epochs (:class:`rsnn_bfd.training.frozen.FrozenRates`).
    """
    out = Path(cfg.out)
    t_start = time.time()
    train_set, test_set, train_idx, test_idx = (data.train_set, data.test_set, data.train_idx,
                                                data.test_idx)
    validating = bool(data.val_idx)
    # the validation samples as a test set reads them (spikes drawn once)
    val_set = getattr(train_set, "without_resampling", lambda: train_set)()
    if validating:
        _, best, _ = selection(rows, "val_acc")
    # recorded in every checkpoint, so that a network used on other data can say so
    dataset = dataset_identity(cfg.data_dir) if dist.main else {}
    stall = LearningStall(cfg.loss)
    for epoch in range(start_epoch, cfg.epochs):
        best_epoch, _, since = selection(rows, "val_acc") if validating else (0, 0.0, 0)
        if cfg.patience and since >= cfg.patience:
            log(f"stopped early after epoch {epoch}: no better validation accuracy in the "
                f"last {since} epochs (--patience {cfg.patience}); best.pth is epoch {best_epoch}")
            return True
        t0 = time.time()
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        if cfg.readout_switch(epoch):
            # --readout-last: the network has trained until now, so the stored rates are
            # stale, and the readout goes on with the rates of the network as it now is
            if rates is not None:
                rates.clear()
            if model.config.readout_norm:
                fit_readout_norm_(model, train_set, train_idx, cfg.batch_size, device,
                                  rates=rates)
        frozen = rates if cfg.readout_only(epoch) else None    # valid while nothing trains
        batches = epoch_batches(train_idx, cfg.batch_size, cfg.seed, epoch)
        tr = train_one_epoch(ddp_model, model, optimizer, train_set, batches, device, dist,
                             cfg.progress, workers, f"epoch {epoch + 1}/{cfg.epochs}", cfg.loss,
                             cfg.whisker_dropout, cfg.seed, epoch,
                             parse_sweeps(cfg.train_sweeps), Regularisers.of(cfg),
                             readout_only=cfg.readout_only(epoch), rates=frozen)
        scheduler.step()
        if cfg.readout_follow and not cfg.readout_only(epoch):
            # the readout's standardisation of the network as it now is (what is evaluated
            # and saved); the readout's weights are kept, so it reads the moved rates in the
            # coordinates it was trained in
            fit_readout_norm_(model, train_set, train_idx, cfg.batch_size, device)
        te = evaluate(model, test_set, test_idx, cfg.batch_size, device, dist, cfg.progress,
                      workers, loss_kind=cfg.loss, rates=frozen)
        va = (evaluate(model, val_set, data.val_idx, cfg.batch_size, device, dist, cfg.progress,
                       workers, desc="validation", loss_kind=cfg.loss, rates=frozen)
              if validating else None)
        if not (math.isfinite(tr["loss"]) and math.isfinite(te["loss"])
                and (va is None or math.isfinite(va["loss"]))):
            raise TrainingDiverged(f"the loss became {tr['loss']:.4g} (train) / "
                                   f"{te['loss']:.4g} (test)")
        seconds = time.time() - t0
        row = {"epoch": epoch + 1, "loss": tr["loss"], "train_acc": tr["acc"],
               "test_loss": te["loss"], "test_acc": te["acc"], "lr": lr,
               "firing_rate": te["firing_rate"], "seconds": seconds}
        if validating:
            row.update(val_loss=va["loss"], val_acc=va["acc"])
        rows.append(row)
        # what selects best.pth: validation accuracy (ties: lower validation loss), else test
        if validating:
            improved = selection(rows, "val_acc")[0] == epoch + 1
        else:
            improved = te["acc"] > best
        best = max(best, va["acc"] if validating else te["acc"])
        if dist.main:
            best_test = max(r["test_acc"] for r in rows) if validating else best
            extra = {"best_test_acc": best_test, "test_acc": te["acc"], "metrics": rows[-1],
                     "dataset": dataset, "selected_on": "validation" if validating else "test"}
            if validating:
                extra.update(best_val_acc=best, val_acc=va["acc"], split=data.split())
            if improved:
                save_checkpoint(out / "best.pth", model, optimizer, scheduler, epoch + 1,
                                config_dict, extra)
            save_checkpoint(out / "checkpoint.pth", model, optimizer, scheduler, epoch + 1,
                            config_dict, extra)
            if saved is not None:
                saved["epoch"] = epoch + 1
            if epoch == start_epoch:   # with the first checkpoint: a failed start changes nothing
                atomic_write_json(config_dict, out / "config.json")
            write_metrics(rows, out / "metrics.csv")
            plot_learning_curves(rows, out / "learning_curves.png",
                                 f"{cfg.encoder} RSNN")
            left = (time.time() - t_start) / (epoch + 1 - start_epoch) * (cfg.epochs - epoch - 1)
            scores = (f"val acc {va['acc']:.3f} (best {best:.3f}), test acc {te['acc']:.3f}"
                      if validating else f"test acc {te['acc']:.3f} (best {best:.3f})")
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {tr['loss']:.4f}, train acc "
                f"{tr['acc']:.3f}, {scores}, lr {lr:.2e}, "
                f"rate {te['firing_rate']:.4f}, {seconds:.1f} s"
                + (" (readout only)" if cfg.readout_only(epoch) else "")
                + (f", about {_duration(left)} left" if epoch + 1 < cfg.epochs else ""))
            notice = stall.notice(epoch + 1, tr["loss"], tr["grad_norm"])
            if notice:
                log(notice)
        dist.barrier()
    return False


def training_main(config_cls, argv=None, defaults=None, description=None) -> int:
    """The body of the training scripts: parse flags, resolve ``--resume``, train."""
    cfg, given = parse_config(config_cls, argv, defaults, description)
    cfg = resolve_resume(cfg, given)
    train(cfg)
    return 0
