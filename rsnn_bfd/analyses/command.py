"""The analyses of a trained network as one command (``utils.py``): its settings, loading the
network and its data, and running the selected analyses into one output folder.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from rsnn_bfd import cli
from rsnn_bfd.analyses import (ANALYSES, ANALYSIS_FILES, _Concat, parse_floats, run_anova, run_cv,
                               run_degree, run_dynamics, run_raster, untrained_like)
from rsnn_bfd.cli import data_dir_check, flag, seed_check
from rsnn_bfd.common import cap_workers, select_device
from rsnn_bfd.network.model import ENGINES
from rsnn_bfd.writing import claim_results_dir, removed_if_unused, together

DESCRIPTION = "The paper's analyses of a trained barrel-cortex RSNN, as functions and as a command."


@dataclass
class AnalysisConfig:
    """Command-line options of ``utils.py`` (one field, one flag; None: the checkpoint's)."""
    checkpoint: str = flag(None, "checkpoint of a trained run (e.g. RUN/best.pth)", type=str,
                           required=True)
    out: str = flag(None, "output folder for figures, CSV and JSON", type=str, required=True)
    data_dir: Optional[str] = flag(None, "folder of snn_train3.h5 / snn_test3.h5 (default: "
                                         "the training run's --data-dir, as deprivation reads; "
                                         "generated if it holds neither)", type=str)
    analysis: str = flag("all", "which analysis", ("all",) + ANALYSES)
    device: str = flag("auto", "auto, cpu, cuda or cuda:N")
    engine: str = flag("auto", "simulation engine: auto (numba on the CPU, torch on CUDA), "
                               "reference, numba or torch", ENGINES)
    batch_size: int = flag(16, "samples per forward pass")
    max_samples: Optional[int] = flag(None, "ANOVA: at most this many samples, class-balanced "
                                            "(default: all train + test samples)", type=int)
    n_steps: Optional[int] = flag(None, "time steps of the input (default: the checkpoint's "
                                        "train_config n_steps, else the full sequence)", type=int)
    data_seed: Optional[int] = flag(None, "seed of the input spike draws (default: the "
                                          "checkpoint's train_config spike_seed, else 0)", type=int)
    sample: int = flag(0, "raster: index of the test-set sample")
    alpha: float = flag(0.001, "ANOVA significance threshold")
    const_steps: int = flag(550, "dynamics: steps of constant input")
    const_current: float = flag(1.0, "dynamics: the constant input current")
    cv_w: str = flag("0.01:0.04:4", "CV grid: init_w values, 'a,b,c' or 'start:stop:count'")
    cv_b: str = flag("0.01,0.1,0.2,0.3,0.4,0.5,0.6",
                     "CV grid: init_b values, 'a,b,c' or 'start:stop:count'")
    cv_samples: int = flag(8, "CV grid: samples per grid point (class-balanced, test set)")
    workers: int = flag(1, "CV grid: processes over grid points")
    objects_per_class: int = flag(91, "objects per class if the data must be generated")
    progress: bool = flag(True, "progress bars")
    overwrite: bool = flag(False, "replace the files of these analyses already in --out")


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser(AnalysisConfig, description=DESCRIPTION, prog="utils.py")


def parse_config(argv=None) -> AnalysisConfig:
    ap = build_parser()
    args = ap.parse_args(argv)
    checks = [(args.batch_size >= 1, "--batch-size must be >= 1"),
              (args.workers >= 1, "--workers must be >= 1"),
              (args.cv_samples >= 1, "--cv-samples must be >= 1"),
              (args.max_samples is None or args.max_samples >= 4,
               "--max-samples must be >= 4 (the ANOVA needs more samples than classes)"),
              (args.n_steps is None or args.n_steps >= 2, "--n-steps must be >= 2"),
              (args.const_steps >= 1, "--const-steps must be >= 1"),
              (math.isfinite(args.const_current), "--const-current must be a finite number"),
              (0 < args.alpha < 1, "--alpha must lie in (0, 1)"),
              (args.sample >= 0, "--sample must be >= 0"),
              (args.data_seed is None or seed_check(args.data_seed, "--data-seed")[0],
               seed_check(args.data_seed, "--data-seed")[1]),
              (bool(args.out.strip()), "--out must name a folder, got ''"),
              data_dir_check(args.data_dir, "leave it out for the training run's"),
              (args.objects_per_class >= 1, "--objects-per-class must be >= 1")]
    for ok, msg in checks:
        if not ok:
            ap.error(msg)
    # the grid's values are initial weight bounds U[0, init_w] in (0, 1] and thresholds b0 > 0
    for name, ok, what in (("cv_w", lambda v: 0 < v <= 1, "init_w values in (0, 1]"),
                           ("cv_b", lambda v: 0 < v < math.inf, "positive init_b values")):
        try:
            values = parse_floats(getattr(args, name))
            if not values:
                raise ValueError
        except ValueError:
            ap.error(f"--{name.replace('_', '-')}: give numbers 'a,b,c' or 'start:stop:count', "
                     f"got {getattr(args, name)!r}")
        if not all(ok(v) for v in values):
            ap.error(f"--{name.replace('_', '-')}: give {what}, got {getattr(args, name)!r}")
    args.workers = cap_workers(args.workers, "--workers")
    return AnalysisConfig(**vars(args))


def _load(cfg: AnalysisConfig, device, encoder: str | None = None, fix: str = ""):
    """The model and checkpoint of ``--checkpoint``, its stored training configuration checked
    (and the network's encoder, when ``encoder`` is given)."""
    from rsnn_bfd.io.checkpoint import load_checkpoint
    from rsnn_bfd.training.resume import stored_train_config
    model, ckpt = load_checkpoint(cfg.checkpoint, device=device)
    stored_train_config(ckpt, cfg.checkpoint, encoder, fix)
    model.use_engine(cfg.engine)
    return model.eval(), ckpt


def _datasets(cfg: AnalysisConfig, model, ckpt):
    from rsnn_bfd.data.datasets import data_dir_of_run, datasets_of_run
    from rsnn_bfd.data.ensure import ensure_dataset, ensure_run_dataset
    tc = ckpt.get("train_config") or {}
    tc = tc if isinstance(tc, dict) else vars(tc)
    # the run's own data folder unless --data-dir names one (as deprivation reads it); the
    # dataset the network was trained on when it records one (generated with its seed), else
    # a default generated one when the folder holds neither file
    data_dir = data_dir_of_run(tc, cfg.data_dir, cfg.checkpoint)
    ensure_run_dataset(ckpt.get("dataset"), data_dir, progress=cfg.progress)
    ensure_dataset(data_dir, objects_per_class=cfg.objects_per_class, progress=cfg.progress)
    return datasets_of_run(model.config.encoder, tc, data_dir=data_dir, n_steps=cfg.n_steps,
                           spike_seed=cfg.data_seed)


def run(cfg: AnalysisConfig, encoder: str | None = None, fix: str = "") -> dict:
    """Run the analyses selected by ``cfg.analysis``; returns {analysis: result}.

    ``encoder``: refuse a network of another encoder (``fix`` says what to do instead).
    Files of the same analyses already in ``--out`` are refused unless ``--overwrite``; an
    ``--out`` made here is removed again when the run fails before writing anything.
    """
    device = select_device(cfg.device)
    todo = ANALYSES if cfg.analysis == "all" else (cfg.analysis,)
    out = Path(cfg.out)
    model, ckpt = _load(cfg, device, encoder, fix)
    # locked before the long work and to its end
    with removed_if_unused(out), claim_results_dir(
            out, [f for a in todo for f in ANALYSIS_FILES[a]], cfg.overwrite,
            "results of these analyses", f"utils.py {cfg.analysis}"):
        return _run(cfg, todo, out, device, model, ckpt)


def _run(cfg: AnalysisConfig, todo, out: Path, device, model, ckpt) -> dict:
    progress = cfg.progress
    data = None
    if any(a in todo for a in ("anova", "raster", "cv")):
        data = _datasets(cfg, model, ckpt)
    if "raster" in todo and not 0 <= cfg.sample < len(data[1]):
        raise ValueError(f"--sample {cfg.sample} is not in the test set (0..{len(data[1]) - 1})")
    initial = untrained_like(model)
    results = {}
    print(f"[utils] {model.engine} engine on {device}", file=sys.stderr, flush=True)
    for i, a in enumerate(todo):
        print(f"[utils] {a} ...", file=sys.stderr, flush=True)
        # each analysis's files appear together; finished ones are kept
        try:
            with together(*(out / f for f in ANALYSIS_FILES[a])):
                results[a] = _one(a, cfg, out, device, model, data, initial, progress)
        except KeyboardInterrupt:
            kept = (f"the finished analyses ({', '.join(results)}) are kept in {out}"
                    if results else f"nothing was written to {out}")
            rest = " ".join(f"--analysis {b}" for b in todo[i:])
            raise KeyboardInterrupt(
                f"{a} stopped, its files not written; {kept}; go on with python utils.py "
                f"--checkpoint {cfg.checkpoint} --out {out} and each of: {rest}") from None
        for f in results[a]["files"]:
            print(f"  wrote {f}", file=sys.stderr)
    return results


def _one(a: str, cfg: AnalysisConfig, out: Path, device, model, data, initial, progress) -> dict:
    """Run analysis ``a``; returns its result (with ``files``)."""
    if a == "anova":
        return run_anova(model, _Concat(*data), out, cfg.alpha, cfg.batch_size, device,
                         cfg.max_samples, cfg.engine, initial, progress)
    if a == "raster":
        return run_raster(model, data[1], out, cfg.sample, device, cfg.engine, progress)
    if a == "dynamics":
        return run_dynamics(model, out, initial, cfg.const_steps, cfg.const_current)
    if a == "degree":
        return run_degree(model, out, initial)
    if a == "cv":
        mc = model.config.to_dict()
        return run_cv(mc, data[1], out, parse_floats(cfg.cv_w), parse_floats(cfg.cv_b),
                      cfg.cv_samples, cfg.batch_size, cfg.engine, cfg.workers, progress)
    raise ValueError(f"unknown analysis {a!r}")


def anova_main(argv_or_args=None, encoder: str | None = None) -> int:
    """Entry point of ``RSNN_bfd_SpikingBased.py --anova --checkpoint X --out DIR``.

    Accepts an argv list (``--anova`` is ignored), an ``argparse.Namespace`` with at least
    ``checkpoint`` and ``out`` (other :class:`AnalysisConfig` fields are taken when present),
    or an :class:`AnalysisConfig`. Runs the selectivity analysis only; returns 0. With
    ``encoder`` (the calling script's), a network of another encoder is refused.
    """
    a = argv_or_args
    if isinstance(a, AnalysisConfig):
        cfg = a
    elif isinstance(a, argparse.Namespace):
        given = {f.name: getattr(a, f.name) for f in fields(AnalysisConfig)
                 if getattr(a, f.name, None) is not None}
        cfg = parse_config(["--checkpoint", str(given.pop("checkpoint")),
                            "--out", str(given.pop("out"))])
        for k, v in given.items():
            setattr(cfg, k, v)
    else:
        argv = list(sys.argv[1:] if a is None else a)
        cfg = parse_config([v for v in argv if v != "--anova"])
    cfg.analysis = "anova"
    run(cfg, encoder, f"analyse it with python utils.py --analysis anova --checkpoint "
                      f"{cfg.checkpoint} --out {cfg.out}")
    return 0
