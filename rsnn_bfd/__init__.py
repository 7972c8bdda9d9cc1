"""The barrel-cortex RSNN (ICLR 2025) as a library; the scripts at the repository's root are
its commands.

    network/    the anatomy, the ALIF neuron, the sparse layer, the readout, the model and
                its simulation engines (engines/)
    data/       the whisker files and their encodings, datasets, folds; simulator/ makes a
                dataset (array, objects, sweeps, statistics); ensure generates a missing one
    config      the training configurations (every flag of the training scripts)
    training/   batches, the epoch step, model selection, resuming, the run folder,
                torchrun, and the run itself
    io/         the checkpoint format and the published networks' pickles (read safely)
    analyses/   recording, statistics, figures, whisker deprivation, the analyses' command
    study/      the baselines and cross-validation
    common, cli the helpers every layer uses: devices, atomic writes, locks; flags from
                configuration dataclasses

Imports run one way, downward: common and cli < network < data < config < io <
training < analyses, study < the root scripts. Nothing imports upward and there are no
import circles (``tests/test_layout.py`` checks both).
"""
__version__ = "2.0.0"
