"""The paper's analyses of a trained barrel-cortex RSNN, as functions and as a command.

    python utils.py --checkpoint RUN/best.pth --out FIGDIR [--data-dir data]
                    [--analysis all|anova|raster|dynamics|degree|cv]

Every analysis writes PNG figures plus the numbers behind them (CSV / JSON) into ``--out``:

==========  ==================================================================================
anova       firing selectivity: one-way ANOVA of each neuron's spike counts across the three
            classes, trained vs. untrained network (same seed); triangular plot + counts per
            population and layer (``anova_selectivity.png/.json``, ``anova_neurons.csv``)
raster      raster of all neurons for one sample and the L4/L2/3 E/I population rates
            (``raster.png``, ``raster_rates.csv``, ``raster.json``)
dynamics    kernel densities of tau_m / tau_adp per population, trained vs. initial
            (``dynamics_tau.png/.csv``); the "dynamic gradient": firing rate of every subtype
            under constant input current against the reference rates, with Pearson r
            (``dynamics_constant_input.png/.csv/.json``)
degree      weighted in/out-degree distributions of the effective recurrent weights, initial
            vs. trained (``degree_distributions.png``, ``degree.csv``, ``degree.json``)
cv          binned-train CV and ISI CV of untrained networks over an init_w x init_b grid
            (``cv_grid.png``, ``cv_grid.csv``)
==========  ==================================================================================

The analyses live in the package :mod:`rsnn_bfd.analyses` (``statistics``: arrays in,
numbers out; ``recording``: running the model; ``figures``: the ``plot_*`` / ``run_*``
functions that write the files; ``command``: this command's settings and run); this module is
their command line and hands their names on, so ``from utils import run_anova, pearson, ...``
works as before. All neuron index ranges come from :mod:`rsnn_bfd.network.anatomy`.
"""
from __future__ import annotations

import sys

from rsnn_bfd.analyses import *  # noqa: F401,F403  (the published names: utils.run_anova, ...)
from rsnn_bfd.analyses.command import (AnalysisConfig, anova_main, build_parser,  # noqa: F401
                                       parse_config, run)
from rsnn_bfd.cli import run_cli


def main(argv=None) -> int:
    """Parse ``argv`` and run; user errors (bad checkpoint, data, flags) exit 2 with one line,
    Ctrl-C 130 with one line saying what is kept."""
    return run_cli(lambda args: run(parse_config(args)) and 0, argv)


if __name__ == "__main__":
    # The default call, e.g.:
    #   python utils.py --checkpoint runs/spiking/best.pth --out figures
    sys.exit(main())
