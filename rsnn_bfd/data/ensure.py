"""A dataset ready to read: generate a missing one with the simulator.

This sits above both the file reader (:mod:`rsnn_bfd.data.files`) and the simulator
(:mod:`rsnn_bfd.data.simulator`), which know nothing of each other's callers: data is
generated only into an existing folder that holds neither file.
"""
from __future__ import annotations

from pathlib import Path

from rsnn_bfd.data.files import (TEST_FILE, TRAIN_FILE, check_data_folder, dataset_identity,
                                 describe_identity)


def ensure_dataset(data_dir, objects_per_class: int = 91, seed: int = 0, workers=None,
                   log=print, progress: bool = False) -> tuple[Path, Path]:
    """Return (train_path, test_path) in ``data_dir``, generating both with whisker_sim when
    the folder holds neither.

    Data is generated only into an existing folder that holds neither file, so a user's own
    files are never written over: a folder holding one of the two files, or a folder that
    does not exist (a typo in ``--data-dir``), is a ``FileNotFoundError`` that says what is
    missing and how to generate data (``python whisker_sim.py --out DIR``).
    """
    data_dir = check_data_folder(data_dir)
    train, test = data_dir / TRAIN_FILE, data_dir / TEST_FILE
    have = [p for p in (train, test) if p.exists()]
    if len(have) == 1:
        missing = test if have[0] == train else train
        raise FileNotFoundError(
            f"{data_dir} holds {have[0].name} but not {missing.name}; add the missing file, or "
            f"generate a complete dataset into a new folder with python whisker_sim.py --out DIR "
            f"and pass --data-dir DIR (the existing file is left alone)")
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data folder {data_dir} does not exist; check --data-dir, or generate a dataset "
            f"there with python whisker_sim.py --out {data_dir}")
    if not have:
        from rsnn_bfd.data.simulator.generate import generate_dataset

        log(f"whisker data not found in {data_dir}: generating a simulated dataset "
            f"({objects_per_class} objects per class, seed {seed}) with whisker_sim ...")
        generate_dataset(data_dir, objects_per_class=objects_per_class, seed=seed,
                         workers=workers, progress=progress)
        log(f"wrote {train} and {test}")
    return train, test


def ensure_run_dataset(trained_on: dict | None, data_dir, log=print,
                       progress: bool = False) -> Path:
    """The data folder a trained network is evaluated on, ready to read.

    When ``data_dir`` holds neither file and the network records that it was trained on data
    of this simulator (``trained_on``: a checkpoint's ``dataset``, see
    :func:`dataset_identity`), that dataset is generated there first (same seed and size:
    the same files). When the data differs from what the network was trained on, that is
    said once with ``log``; the evaluation goes on. ``progress``: the simulator's progress
    bars while it generates.
    """
    data_dir = Path(data_dir)
    trained_on = trained_on if isinstance(trained_on, dict) else {}
    missing = not any((data_dir / f).exists() for f in (TRAIN_FILE, TEST_FILE))
    if missing and "generator_version" in trained_on:
        from rsnn_bfd.data.simulator.params import GENERATOR_VERSION

        if trained_on["generator_version"] != GENERATOR_VERSION:
            log(f"note: the network was trained on data of {trained_on['generator_version']}; "
                f"this simulator is {GENERATOR_VERSION}")
        ensure_dataset(data_dir, objects_per_class=int(trained_on["objects_per_class"]),
                       seed=int(trained_on["seed"]), log=log, progress=progress)
    if trained_on:
        here = dataset_identity(data_dir)
        if here and here != trained_on:
            log(f"note: this network was trained on {describe_identity(trained_on)}; "
                f"{data_dir} holds {describe_identity(here)}")
    return data_dir
