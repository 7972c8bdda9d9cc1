"""Conventional baselines of the paper: CNN, RNN, LSTM and GRU on the RSNN's own input.

    python baselines.py --model all --encoder spiking [--data-dir data] [--out runs/baselines]
    python baselines.py --model cnn --encoder realvalued --seeds 0,1,2

Each model reads exactly what the RSNN script of the same ``--encoder`` reads; hyper-parameters
are fixed (Adam 0.003, batch 32, 40 epochs, no selection on the test set). Writes
``baselines_<input>.csv`` (one row per model and seed) and ``baselines_<input>.json`` (mean
and spread) into ``--out``. The models and their input: :mod:`rsnn_bfd.study.baselines`;
every flag is a field of its :class:`BaselineConfig`.
"""
from __future__ import annotations

import sys

from rsnn_bfd.cli import build_parser, run_cli
from rsnn_bfd.study.baselines import BaselineConfig, run_baselines

DESCRIPTION = "Conventional baselines of the paper: CNN, RNN, LSTM and GRU on the RSNN's own input."


def main(argv=None, defaults: BaselineConfig | None = None) -> int:
    ns = build_parser(BaselineConfig, defaults, DESCRIPTION).parse_args(argv)
    cfg = BaselineConfig(**vars(ns))
    cfg.validate()
    run_baselines(cfg)
    return 0


if __name__ == "__main__":
    # The fixed set-up: every model, 3 seeds, on the spiking script's input.
    sys.exit(run_cli(lambda argv: main(argv, BaselineConfig(model="all", encoder="spiking",
                                                             seeds="0,1,2"))))
