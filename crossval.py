"""Stratified k-fold cross-validation of the RSNN and the baselines over all objects.

    python crossval.py --model rsnn-spiking --out runs/cv/rsnn [--fold K] -- --loss log-mean-prob --lr 0.001 --batch-size 32
    python crossval.py --model cnn --out runs/cv/cnn [-- --encoder spiking --epochs 40]
    python crossval.py status runs/cv/rsnn
    python crossval.py summarize runs/cv/rsnn runs/cv/cnn runs/cv/rnn --out runs/cv/summary
    python crossval.py summarize cv/seed{0,1,2}/rsnn cv/seed{0,1,2}/cnn --out cv/summary  # pooled
    python crossval.py curve runs/cv91/summary runs/cv182/summary runs/cv364/summary --out runs/cv/curve
    python crossval.py screen runs/screen/seed0/* runs/screen/seed1/* --out runs/screen/table

The training and test files of ``--data-dir`` are pooled and dealt into ``--folds``
stratified folds (``--seed``; written to ``OUT/folds.json``). Each fold trains on the others,
chooses its epoch on a stratified ``--val-fraction`` of them and is tested on the held-out
fold (``OUT/fold_K/result.json``). Flags after ``--`` go to the model: the training
script's configuration for ``rsnn-spiking`` / ``rsnn-realvalued`` (``--help`` of
``RSNN_bfd_SpikingBased.py``), ``baselines.py``'s for a baseline. ``--fold K`` runs one fold,
so folds can run in parallel processes (one thread each: ``--threads 1``); a rerun skips
finished folds and continues a stopped RSNN fold from its checkpoint. ``summarize`` writes
the mean test accuracy of each model with a 95 % interval and the paired differences (the
first model minus each other) with a paired t-test (folders named alike on several datasets
are one model over all their folds, paired dataset by dataset); ``curve`` plots the
summaries of datasets of several sizes against objects per class; ``screen`` ranks training
set-ups (folders ``SCREEN/DATASET/CANDIDATE``) by validation accuracy pooled over their
folds and datasets, without reading the test folds. Library: :mod:`rsnn_bfd.study`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from rsnn_bfd.cli import build_parser, flag, run_cli


USAGE = ("Stratified k-fold cross-validation of the RSNN and the baselines over all objects: "
         "crossval.py [flags] [-- MODEL FLAGS] runs folds; the other commands are "
         "'crossval.py status DIR...' (progress), 'crossval.py summarize DIR... --out S' "
         "(mean test accuracies and paired differences), 'crossval.py curve S... --out C' "
         "(accuracy against dataset size) and 'crossval.py screen DIR... --out S' (set-ups "
         "ranked by pooled validation accuracy); each has its own --help.")


@dataclass
class StatusConfig:
    """``crossval.py status DIR [DIR ...]`` (no flags)."""


@dataclass
class SummaryConfig:
    """``crossval.py summarize``, ``curve`` and ``screen DIR [DIR ...]``."""
    out: str = flag("", "output folder (default: summary / curve beside the first DIR; "
                        "screen: SCREEN/table)")
    overwrite: bool = flag(False, "replace summary files already in --out")
    only_folds: str = flag("", "summarize: compare only these folds, e.g. '0,1,2' (screens "
                               "of model changes; default: all)")
    against: str = flag("fit", "screen: the candidate each is compared with fold by fold "
                               "(paired difference of validation accuracy; '' for none)")


def main(argv=None) -> int:
    from pathlib import Path

    from rsnn_bfd.study import crossvalidation, cv_setup, screen, summary
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("summarize", "status", "curve", "screen"):
        command, rest = argv[0], argv[1:]
        if command == "status":
            parser = build_parser(StatusConfig, prog="crossval.py status",
                                  description="progress of cross-validations")
            parser.add_argument("dirs", nargs="+", help="cross-validation folders")
            for d in parser.parse_args(rest).dirs:
                print(crossvalidation.describe_status(d, crossvalidation.status(d)))
            return 0
        if command == "screen":
            parser = build_parser(SummaryConfig, prog="crossval.py screen",
                                  description="training set-ups ranked by validation accuracy "
                                              "pooled over folds and datasets (test folds unread)")
            parser.add_argument("dirs", nargs="+", help="cross-validation folders "
                                                        "SCREEN/DATASET/CANDIDATE")
        elif command == "curve":
            parser = build_parser(SummaryConfig, prog="crossval.py curve",
                                  description="test accuracy against dataset size")
            parser.add_argument("dirs", nargs="+", help="summary folders (crossval.py "
                                                        "summarize), one per dataset size")
        else:
            parser = build_parser(SummaryConfig, prog="crossval.py summarize",
                                  description="compare cross-validations on the same folds")
            parser.add_argument("dirs", nargs="+", help=(
                "cross-validation folders; the first is compared with each other; folders named "
                "alike on several datasets (seed0/cnn seed1/cnn) are one model over all folds"))
        ns = vars(parser.parse_args(rest))
        dirs = ns.pop("dirs")
        cfg = SummaryConfig(**ns)
        out = cfg.out or str(
            Path(dirs[0]).absolute().parent.parent / "table" if command == "screen"  # SCREEN/
            else Path(dirs[0]).parent / ("curve" if command == "curve" else "summary"))
        if command != "screen" and cfg.against != SummaryConfig.against:
            parser.error(f"--against is a flag of screen ({command} compares "
                         + ("the first folder with each other)" if command == "summarize"
                            else "summaries)"))
        if command == "screen":
            if cfg.only_folds:
                parser.error("--only-folds is a flag of summarize (screen reads every "
                             "finished fold)")
            screen.screen(dirs, out, cfg.overwrite, cfg.against)
        elif command == "curve":
            if cfg.only_folds:
                parser.error("--only-folds is a flag of summarize (curve reads summaries)")
            summary.learning_curve(dirs, out, cfg.overwrite)
        else:
            summary.summarize(dirs, out, cfg.overwrite, only_folds=cfg.only_folds)
        return 0
    own, model_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    ns = build_parser(cv_setup.CrossValConfig, description=USAGE).parse_args(own)
    crossvalidation.run(cv_setup.CrossValConfig(**vars(ns)), model_args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
