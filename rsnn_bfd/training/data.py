"""What a run trains, selects and tests on: the datasets of its config and their index lists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rsnn_bfd.config import TrainConfig
from rsnn_bfd.data.datasets import datasets_for
from rsnn_bfd.data.ensure import ensure_dataset
from rsnn_bfd.data.files import CLASS_NAMES
from rsnn_bfd.data.folds import stratified_holdout
from rsnn_bfd.training.distributed import Dist


def load_datasets(cfg: TrainConfig, dist: Dist | None = None, log=print):
    """(train, test) datasets; generates the data on rank 0 if missing (others wait)."""
    dist = dist or Dist()
    data_dir = Path(cfg.data_dir)
    if dist.main:
        ensure_dataset(data_dir, cfg.objects_per_class, cfg.data_seed, cfg.workers or None,
                       log=log, progress=cfg.progress)
    dist.barrier()
    return datasets_for(cfg.encoder, data_dir, spike_seed=cfg.spike_seed,
                        n_steps=cfg.n_steps or None,
                        resample_each_epoch=cfg.resample_each_epoch, features=cfg.features)


def _subset_indices(n: int, limit: int) -> list[int]:
    return list(range(min(n, limit) if limit else n))


@dataclass
class RunData:
    """What a run trains on, selects its epoch on and tests on: datasets and index lists.

    ``train_idx`` index ``train_set`` (the training batches), ``val_idx`` the same dataset
    (evaluated each epoch, never trained on; empty: no validation set, ``best.pth`` by test
    accuracy as published), ``test_idx`` index ``test_set`` (evaluated and reported each
    epoch). A caller such as ``crossval.py`` passes its own (e.g. one pooled dataset as both
    sets); by default :func:`run_data` builds them from the config.
    """
    train_set: object
    test_set: object
    train_idx: list
    test_idx: list
    val_idx: list = field(default_factory=list)

    def __post_init__(self):
        self.train_idx, self.test_idx, self.val_idx = (
            [int(i) for i in ix] for ix in (self.train_idx, self.test_idx, self.val_idx))
        if not self.train_idx or not self.test_idx:
            raise ValueError(f"a run needs training and test samples, got {len(self.train_idx)} "
                             f"and {len(self.test_idx)}")
        overlap = set(self.train_idx) & set(self.val_idx)
        if overlap:
            raise ValueError(f"{len(overlap)} validation sample(s) are also training samples")
        if self.train_set is self.test_set and set(self.test_idx) & (set(self.train_idx)
                                                                     | set(self.val_idx)):
            raise ValueError("the test samples overlap the training or validation samples")

    def split(self) -> dict:
        """The index lists, as recorded in the run's checkpoints."""
        return {"train_idx": self.train_idx, "val_idx": self.val_idx, "test_idx": self.test_idx}


def run_data(cfg: TrainConfig, dist: Dist | None = None, log=print) -> RunData:
    """The data of a run from its config: the first ``max_train_samples`` / ``max_test_samples``
    of the two files; with ``val_fraction`` > 0 a stratified split of those training samples
    (:func:`rsnn_bfd.data.folds.stratified_holdout`, seed ``val_seed``) is held out for
    validation."""
    train_set, test_set = load_datasets(cfg, dist, log)
    train_idx = _subset_indices(len(train_set), cfg.max_train_samples)
    val_idx = []
    if cfg.val_fraction > 0:
        try:
            kept, held = stratified_holdout(train_set.labels[train_idx], cfg.val_fraction,
                                            cfg.val_seed)
        except ValueError as err:
            raise ValueError(f"--val-fraction: {err}") from None
        train_idx, val_idx = [train_idx[k] for k in kept], [train_idx[k] for k in held]
    return RunData(train_set, test_set, train_idx,
                   _subset_indices(len(test_set), cfg.max_test_samples), val_idx)


def require_classes(data: RunData) -> None:
    """Refuse a run whose training, validation or test samples lack one of the three classes
    (``ValueError``, one line): it could not learn that class, and its accuracy would not say
    how well the classes are told apart."""
    limits = {"training": "--max-train-samples", "validation": "--val-fraction",
              "test": "--max-test-samples"}
    for name, dataset, idx in (("training", data.train_set, data.train_idx),
                               ("validation", data.train_set, data.val_idx),
                               ("test", data.test_set, data.test_idx)):
        labels = getattr(dataset, "labels", None)
        if not idx or labels is None:
            continue
        present = set(torch.as_tensor(labels)[torch.as_tensor(idx)].tolist())
        missing = [c for i, c in enumerate(CLASS_NAMES) if i not in present]
        if missing:
            raise ValueError(f"the {len(idx)} {name} samples hold no {' and no '.join(missing)}; "
                             f"every class needs {name} samples: raise {limits[name]} if given, "
                             "or use data with all three classes in both files (whisker_sim.py "
                             "--objects-per-class 5 or more)")
