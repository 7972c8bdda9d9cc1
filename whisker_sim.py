"""Whisker sweep simulator: makes a dataset with the layout and character of the original files.

    python whisker_sim.py --out DIR [--objects-per-class 91] [--seed 0] [--workers N]
    python whisker_sim.py --stats DIR      # sweep statistics of the dataset in DIR (JSON)

writes ``DIR/snn_train3.h5`` and ``DIR/snn_test3.h5`` (a folder holding either is refused
unless ``--overwrite``; both are renamed into place together when the generation ends), with
an 80/20 split inside each class (218/55 for 91 objects per class). Same seed: byte-identical
files, whatever ``--workers``. The simulator, its array, objects, sweeps and mechanics:
:mod:`rsnn_bfd.data.simulator`.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from rsnn_bfd.cli import build_parser, flag, require, run_cli, seed_check
from rsnn_bfd.data.simulator.generate import generate_dataset
from rsnn_bfd.data.simulator.params import GENERATOR_VERSION, PARAMS  # noqa: F401  (as before)
from rsnn_bfd.data.simulator.statistics import write_statistics

DESCRIPTION = ("Whisker sweep simulator: makes a dataset with the layout and character of the "
               "original files.")


@dataclass
class SimConfig:
    """Settings of ``whisker_sim.py`` (each is a ``--flag``)."""
    out: str = flag(None, "folder to write snn_train3.h5 and snn_test3.h5 into", type=str)
    objects_per_class: int = flag(91, "objects per class (80/20 train / test split inside each)")
    seed: int = flag(0, "seed of the objects and sweeps (same seed: byte-identical files)")
    workers: int = flag(None, "processes (default: all cores)", type=int)
    progress: bool = flag(True, "a progress bar per file")
    overwrite: bool = flag(False, "replace the dataset files already in --out")
    stats: str = flag(None, "instead of generating, write DIR/sweep_statistics.json about the "
                            "dataset in DIR (first contact, contact rates, static presses)",
                      type=str)

    def validate(self) -> "SimConfig":
        require([
            (self.out is not None or self.stats is not None, "--out is required (or --stats DIR)"),
            (self.out is None or self.stats is None,
             "--stats DIR describes a dataset instead of generating one: give --out or --stats"),
            (self.out is None or bool(self.out.strip()), "--out must name a folder, got ''"),
            (self.stats is None or bool(self.stats.strip()), "--stats must name a folder, got ''"),
            (self.objects_per_class >= 1,
             f"--objects-per-class must be >= 1, got {self.objects_per_class}"),
            seed_check(self.seed, "--seed"),
            (self.workers is None or self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
        ])
        return self


def main(argv=None) -> int:
    """Parse ``argv`` and generate the dataset (or, with ``--stats``, describe one)."""
    ns = build_parser(SimConfig, description=DESCRIPTION,
                      prog="whisker_sim.py").parse_args(argv)
    cfg = SimConfig(**vars(ns)).validate()
    if cfg.stats is not None:
        print(json.dumps(write_statistics(cfg.stats), indent=1))
        return 0
    try:
        generate_dataset(cfg.out, cfg.objects_per_class, cfg.seed, cfg.workers, log=print,
                         progress=cfg.progress, overwrite=cfg.overwrite)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"no dataset was written to {cfg.out} (its two files appear "
                                "together at the end) and what it held is unchanged; run the "
                                "same command again") from None
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
