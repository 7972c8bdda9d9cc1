"""The set-up of a cross-validation: its settings, the model's configuration, the folds and
the layout of its output folder (see :mod:`rsnn_bfd.study.crossvalidation`).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsnn_bfd.cli import data_dir_check, flag, parse_config, require
from rsnn_bfd.data.folds import check_partition, stratified_folds, stratified_holdout

RSNN_MODELS = {"rsnn-spiking": "SpikingConfig", "rsnn-realvalued": "RealValuedConfig"}


BASELINE_MODELS = ("cnn", "rnn", "lstm", "gru", "vote", "rate")   # baselines.MODELS


MODELS = tuple(RSNN_MODELS) + BASELINE_MODELS


SETTINGS_FILE, FOLDS_FILE, RESULT_FILE = "crossval.json", "folds.json", "result.json"


FORMAT = "barrel-rsnn-crossval"


# flags that cross-validation sets itself, refused after "--"
OWNED = {"rsnn": ("data_dir", "out", "resume", "overwrite", "max_train_samples",
                  "max_test_samples", "val_fraction", "val_seed", "progress"),
         "baseline": ("model", "data_dir", "out", "progress", "threads")}


# settings of the model configuration that do not change its results (not compared on reruns)
RUNTIME = ("device", "progress", "loader_workers", "workers", "data_dir", "out", "resume",
           "overwrite", "threads")


@dataclass
class CrossValConfig:
    """Settings of ``crossval.py`` (each is a flag); the model's own flags follow ``--``."""
    model: str = flag("rsnn-spiking", "the model: rsnn-spiking / rsnn-realvalued (the training "
                                      "scripts' configuration, flags after --) or a baseline "
                                      "of baselines.py (its flags after --)", MODELS)
    data_dir: str = flag("data", "folder with snn_train3.h5 / snn_test3.h5 (pooled)")
    out: str = flag("", "output folder (default runs/cv/MODEL)")
    folds: int = flag(5, "number of folds")
    seed: int = flag(0, "seed of the folds and of each fold's validation split")
    val_fraction: float = flag(0.2, "fraction of each fold's training objects held out "
                                    "(stratified) to choose the epoch")
    fold: int = flag(-1, "run only fold K (0..folds-1), e.g. one fold per process; -1: every "
                         "unfinished fold in turn")
    threads: int = flag(0, "torch and numba threads of this process (0: their defaults; 1 "
                           "for one fold per core)")
    progress: bool = flag(True, "progress bars")
    overwrite: bool = flag(False, "replace what --out holds: other settings, or the results of "
                                  "the folds run now")

    def validate(self) -> "CrossValConfig":
        require([
            (self.model in MODELS, f"--model must be one of {MODELS}, got {self.model!r}"),
            (self.folds >= 2, f"--folds must be >= 2, got {self.folds}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (math.isfinite(self.val_fraction) and 0 < self.val_fraction < 1,
             f"--val-fraction must be in (0, 1), got {self.val_fraction}"),
            (-1 <= self.fold < self.folds,
             f"--fold must be in 0..{self.folds - 1} (or -1: all), got {self.fold}"),
            (self.threads >= 0, f"--threads must be >= 0, got {self.threads}"),
            data_dir_check(self.data_dir),
        ])
        if not self.out:
            self.out = str(Path("runs") / "cv" / self.model)
        return self


# ================================================================== model configurations
def is_rsnn(model: str) -> bool:
    return model in RSNN_MODELS


def model_config(model: str, model_args: list[str], val_fraction: float = 0.2):
    """The configuration of ``model`` from the flags after ``--``: a ``training`` config for
    the RSNN (the defaults of its script, with the cross-validation's ``val_fraction``), a
    ``baselines.BaselineConfig`` for a baseline (one seed, ``--seeds`` default 0). Flags that
    cross-validation sets are refused."""
    if is_rsnn(model):
        from rsnn_bfd import config as training_config
        cls, owned = getattr(training_config, RSNN_MODELS[model]), OWNED["rsnn"]
    else:
        from rsnn_bfd.study.baselines import BaselineConfig
        cls, owned = BaselineConfig, OWNED["baseline"]
    prog = f"crossval.py --model {model} --"
    cfg, given = parse_config(cls, model_args, prog=prog)
    refused = sorted(given & set(owned))
    if refused:
        raise ValueError(f"{', '.join('--' + n.replace('_', '-') for n in refused)} after -- "
                         "is set by crossval.py (use its own flags, before --)")
    if is_rsnn(model):
        cfg.val_fraction = val_fraction
        return cfg.validate()
    from rsnn_bfd.study.baselines import parse_seeds
    if "seeds" not in given:
        cfg.seeds = "0"
    if len(parse_seeds(cfg.seeds)) != 1:
        raise ValueError(f"--seeds after -- must be one seed for cross-validation, got "
                         f"{cfg.seeds!r}")
    cfg.model = model
    return cfg.validate()


def comparable(config) -> dict:
    """The settings of a model configuration that change its results."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in RUNTIME}


def same_config(stored: dict, current: dict, cls) -> bool:
    """Whether a stored ``comparable`` configuration is the ``current`` one. A setting the
    stored one lacks (added to the code since) counts as the same while ``current`` holds its
    default, so that runs started before a new opt-in option keep going."""
    defaults = comparable(cls())
    return all(stored[k] == v if k in stored else v == defaults.get(k)
               for k, v in current.items()) and set(stored) <= set(current)


# ================================================================================ folds
def make_folds(data_dir, k: int, seed: int, val_fraction: float) -> dict:
    """The content of ``folds.json`` for the pooled files of ``data_dir`` (see the module
    docstring). Fold K's validation split is drawn with :func:`validation_seed`."""
    from rsnn_bfd.data.files import TEST_FILE, TRAIN_FILE, dataset_identity, read_labels
    data_dir = Path(data_dir)
    for name in (TRAIN_FILE, TEST_FILE):
        if not (data_dir / name).is_file():
            raise FileNotFoundError(f"{data_dir / name} not found; generate the data with "
                                    f"`python whisker_sim.py --out {data_dir}` or pass --data-dir")
    parts = [read_labels(data_dir / name) for name in (TRAIN_FILE, TEST_FILE)]
    labels = np.concatenate(parts)
    folds = stratified_folds(labels, k, seed)
    check_partition(folds, len(labels))
    validation = []
    for K, test in enumerate(folds):
        rest = np.asarray(training_objects(folds, K))
        _, held = stratified_holdout(labels[rest], val_fraction, validation_seed(seed, K))
        validation.append(rest[held].tolist())
    return {"format": FORMAT, "k": k, "seed": seed, "val_fraction": val_fraction,
            "n_objects": int(len(labels)),
            "class_counts": np.bincount(labels, minlength=3).tolist(),
            "files": [{"name": TRAIN_FILE, "first": 0, "n": int(len(parts[0]))},
                      {"name": TEST_FILE, "first": int(len(parts[0])), "n": int(len(parts[1]))}],
            "dataset": dataset_identity(data_dir), "data_dir": str(data_dir),
            "folds": folds, "validation": validation, "labels": labels.tolist()}


def validation_seed(seed: int, K: int) -> int:
    """The seed of fold ``K``'s validation split (as ``--val-seed`` in its run's config)."""
    return (int(seed) * 1000 + K + 1) % 2 ** 63


def training_objects(folds: list[list[int]], K: int) -> list[int]:
    """The pooled indices of every fold but ``K``, sorted."""
    return sorted(i for j, f in enumerate(folds) if j != K for i in f)


def fold_split(record: dict, K: int) -> tuple[list[int], list[int], list[int]]:
    """(train, validation, test) pooled indices of fold ``K`` of a ``folds.json`` record."""
    val = record["validation"][K]
    held = set(val)
    train = [i for i in training_objects(record["folds"], K) if i not in held]
    return train, list(val), list(record["folds"][K])


def same_folds(a: dict, b: dict) -> bool:
    """Whether two ``folds.json`` records test on the same objects of the same data."""
    return (a["folds"] == b["folds"] and a["labels"] == b["labels"]
            and a.get("dataset") == b.get("dataset"))


# ========================================================================= the output dir
def fold_dir(out, K: int) -> Path:
    return Path(out) / f"fold_{K}"


def read_json(path) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} cannot be read ({err}); delete it or use --overwrite") from None
