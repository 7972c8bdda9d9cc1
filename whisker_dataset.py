"""Exact loaders for the whisker sweep dataset (``snn_train3.h5`` / ``snn_test3.h5``).

The published module name: ``from whisker_dataset import SpikingWhiskerDataset, ...`` works
as it did. The code lives in :mod:`rsnn_bfd.data`: the file layout and reader
(``files``), the two encodings (``encoding``), the datasets (``datasets``) and generating a
missing dataset (``ensure``).
"""
# flake8: noqa: F401  (this module hands the published names on)
from rsnn_bfd.data.files import (CLASS_LABELS, CLASS_NAMES, LABEL_MAP, N_WHISKERS, N_NODES,
                                 N_STEPS, N_SWEEPS, DT_REPEAT, N_SPIKE_STEPS, FORCE_OFFSET,
                                 TORQUE_OFFSET, ZERO_NORM, TRAIN_FILE, TEST_FILE,
                                 SAMPLE_SHAPE, HOW_TO_GET, WhiskerDataError, read_labels,
                                 load_whisker_file, check_data_folder, dataset_identity,
                                 describe_identity)
from rsnn_bfd.data.encoding import (spike_probabilities, REALVALUED_FEATURES,
                                    realvalued_samples, drop_whiskers, parse_sweeps,
                                    drive_with_sweeps)
from rsnn_bfd.data.datasets import (SpikingWhiskerDataset, RealValuedWhiskerDataset,
                                    PooledDataset, pooled_dataset, samples_by_class,
                                    datasets_for, data_dir_of_run, datasets_of_run)
from rsnn_bfd.data.ensure import (ensure_dataset, ensure_run_dataset)
