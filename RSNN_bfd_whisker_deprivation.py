"""Whisker deprivation: evaluate a trained model with 0, 1 (each of 31) and 2..8 whiskers removed.

    python RSNN_bfd_whisker_deprivation.py --checkpoint runs/spiking/best.pth \
        [--data-dir data] [--out DIR] [--trials 50] [--seed 515] [--device auto]

Accepts checkpoints of either training script; any other file is refused with a one-line
``error:`` and exit code 2 (nothing in it is executed). Writes ``deprivation.csv``,
``deprivation.json`` and ``deprivation.png`` (see :mod:`rsnn_bfd.analyses.deprivation`). Every
flag is a field of :class:`rsnn_bfd.analyses.deprivation.DeprivationConfig`. Importing this
module has no side effects.
"""
from __future__ import annotations

import sys

from rsnn_bfd.analyses.deprivation import DeprivationConfig, run_deprivation
from rsnn_bfd.cli import build_parser, run_cli

DESCRIPTION = "Test accuracy of a trained barrel-cortex RSNN with whiskers removed."


def main(argv=None, defaults: DeprivationConfig | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the deprivation trials."""
    ns = build_parser(DeprivationConfig, defaults, DESCRIPTION).parse_args(argv)
    run_deprivation(DeprivationConfig(**vars(ns)))
    return 0


if __name__ == "__main__":
    # The paper's analysis of the spiking model: 50 random sets per number removed.
    paper = DeprivationConfig(checkpoint="runs/spiking/best.pth", trials=50, seed=515)
    sys.exit(run_cli(lambda argv: main(argv, defaults=paper)))
