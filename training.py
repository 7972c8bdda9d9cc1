"""Shared training library for ``RSNN_bfd_SpikingBased.py`` and ``RSNN_bfd_RealValued.py``.

    cfg = SpikingConfig(epochs=2, n_steps=8, max_train_samples=4)   # or RealValuedConfig
    summary = train(cfg)                                            # writes cfg.out/...

A run writes into its run directory (:mod:`rundir`: checkpoints, metrics.csv, learning
curves, config; all writes atomic). A folder that already holds a run is never overwritten:
a new run there is refused unless ``--resume`` continues it or ``--overwrite`` replaces it
(:func:`rundir.claim_run_dir`). A run stops
with a one-line message, keeping its last good checkpoint, when the loss or a parameter
becomes NaN or infinite (:class:`TrainingDiverged`).

Paper set-up (the defaults): Adam, lr 0.008 (x5 for ``tau_adp``, x2 for ``tau_m``, thalamic
and cortical), StepLR(20, 0.8) spiking / StepLR(10, 0.5) real-valued, 100 epochs, batch 128,
cross-entropy on ``output / T`` (T = 550 spiking, 110 real-valued). ``loss="log-mean-prob"``
and ``loss="mean-logit"`` are the opt-in alternatives of :mod:`readout`.

Reproducibility: the model is built from its own generator (``seed``); the data order of
epoch ``e`` is a permutation drawn from a generator seeded with ``(seed, e)``; spikes are drawn
per sample from ``(spike_seed, index)``. Nothing uses the global RNG, so ``--resume`` gives the
same weights as an uninterrupted run.

Multi-process (``torchrun``, :mod:`distributed`): DistributedDataParallel. Each rank's loss is
``K * sum(CE over its shard) / global_batch``, so DDP's gradient average equals the gradient
of the mean loss over the global batch (shards may differ in size). Evaluation sums are
all-reduced; only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from checkpoint import DTYPES, CheckpointError, load_checkpoint, read_checkpoint, \
    save_checkpoint  # noqa: F401  (CheckpointError, read_checkpoint: this module's interface)
from cli import flag, parse_config, require, run_cli, seed_check  # noqa: F401  (run_cli: the scripts)
from common import atomic_write_json, make_generator
from distributed import Dist, setup_distributed, shard, shard_bounds, shard_state
from folds import stratified_holdout
from model import ENGINES, PAPER_INIT, BarrelCortexRSNN, ModelConfig, build_model
from readout import LOSSES, predict, readout_loss  # noqa: F401  (LOSSES: this module's interface)
from rundir import METRIC_FIELDS, claim_run_dir, plot_learning_curves, read_metrics, \
    removed_if_unused, same_dir, write_metrics  # noqa: F401  (METRIC_FIELDS: this module's interface)
from whisker_dataset import CLASS_NAMES, N_WHISKERS, REALVALUED_FEATURES, dataset_identity, \
    datasets_for, drive_with_sweeps, drop_whiskers, ensure_dataset, parse_sweeps


class TrainingDiverged(ValueError):
    """The loss or a parameter became NaN or infinite; the run stopped (one-line message)."""


# =============================================================================== configs
@dataclass
class TrainConfig:
    """Every training setting; each field is also a command-line flag (``--snake-case``)."""
    encoder: str = flag("spiking", "input encoding", ("spiking", "realvalued"))
    data_dir: str = flag("data", "folder with snn_train3.h5 / snn_test3.h5 (generated if missing)")
    out: str = flag("runs/spiking", "run directory (checkpoints, metrics, plot)")
    epochs: int = flag(100, "number of epochs")
    batch_size: int = flag(128, "global batch size (split across processes under torchrun)")
    lr: float = flag(0.008, "Adam learning rate")
    lr_tau_adp_factor: float = flag(5.0, "learning-rate factor for tau_adp (thalamic and cortical)")
    lr_tau_m_factor: float = flag(2.0, "learning-rate factor for tau_m (thalamic and cortical)")
    step_size: int = flag(20, "StepLR step in epochs (published: 20 spiking, 10 real-valued)")
    gamma: float = flag(0.8, "StepLR factor (published: 0.8 spiking, 0.5 real-valued)")
    loss: str = flag("published", "readout loss (and decision): 'published' = cross-entropy "
                      "with the mean readout probability output/T as logits; 'log-mean-prob' "
                      "= -log of the true class's mean readout probability; 'mean-logit' = "
                      "cross-entropy of the time-averaged readout logits (see readout.py)",
                      LOSSES)
    init_b: float = flag(PAPER_INIT["spiking"][0], "baseline threshold b0")
    init_w: float = flag(PAPER_INIT["spiking"][1], "recurrent / thalamic weights start in "
                                                   "U[0, init_w]")
    tau_scale: float = flag(1.0, "multiply the initial tau_m and tau_adp (about 10 and 5 "
                             "steps) by this; 5 gives the spiking network, which sees each "
                             "frame for 5 steps, the real-valued network's time constants "
                             "in frames")
    seed: int = flag(0, "model initialisation and data order")
    spike_seed: int = flag(0, "seed of the Bernoulli spike encoding (spiking only)")
    features: str = flag("published", "real-valued input: 'published' = each node normalised "
                          "over the 12 sweeps; 'signed-log' = sign(v) log(1 + |v|) per "
                          "component (real-valued only; see whisker_dataset.py)",
                          REALVALUED_FEATURES)
    resample_each_epoch: bool = flag(False, "draw new input spikes every epoch (published: no)")
    train_sweeps: str = flag("0", "sweeps a training sample is read from, one drawn anew per "
                                  "sample and epoch: '0' (published: sweep 0 only), a range "
                                  "'0-3' (the 4 object rotations on the central path), a list "
                                  "'0,4,8' or 'all'; the test set always reads sweep 0")
    whisker_dropout: float = flag(0.0, "training augmentation: silence each whisker of each "
                                       "training sample with this probability, anew every "
                                       "epoch (published: 0)")
    val_fraction: float = flag(0.0, "hold out this fraction of the training set (stratified, "
                                    "drawn with --val-seed) as a validation set: best.pth is "
                                    "then the epoch of the best validation accuracy (ties: the "
                                    "lower validation loss) and the test set is only "
                                    "reported; 0 (published): no validation set, best.pth by "
                                    "test accuracy")
    val_seed: int = flag(0, "seed of the --val-fraction split (apart from --seed, so that "
                            "runs of several seeds share one validation set)")
    patience: int = flag(0, "stop after this many epochs without a better validation "
                            "accuracy (needs --val-fraction; 0: run every epoch)")
    rate_reg: float = flag(0.0, "firing-rate regulariser: add rate_reg x the mean over samples "
                                "of (the sample's mean cortical rate - --target-rate)^2 to the "
                                "loss (as LSNN / e-prop); 0 (published): off")
    target_rate: float = flag(0.02, "target of --rate-reg: spikes per neuron per step")
    readout_tau: float = flag(0.0, "leaky readout: the logits become the membranes of 3 "
                                   "non-spiking leaky output neurons with this tau_m (steps) "
                                   "driven by the readout, as the adaptive SRNN of Yin et al. "
                                   "2021 reads out; 0 (published): the readout itself")
    readout_weight_decay: float = flag(0.0, "decoupled weight decay of the two readout layers' "
                                            "weights: each step multiplies them by 1 - lr x "
                                            "this (AdamW-style); 0 (published): none")
    readout_dropout: float = flag(0.0, "drop each readout neuron (the 3,606 excitatory neurons "
                                       "the readout reads) with this probability for a whole "
                                       "training batch, the others scaled by 1 / (1 - p); 0 "
                                       "(published): none")
    device: str = flag("auto", "auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    dtype: str = flag("float32", "parameter dtype", tuple(DTYPES))
    engine: str = flag("auto", "simulation engine: auto (numba on the CPU, torch on CUDA), "
                               "reference, numba or torch", ENGINES)
    resume: str = flag("", "continue the run in this directory from its checkpoint.pth")
    max_train_samples: int = flag(0, "use only the first N training samples (0: all)")
    max_test_samples: int = flag(0, "use only the first N test samples (0: all)")
    n_steps: int = flag(0, "truncate the sequences to T steps (0: full, 550 / 110)")
    objects_per_class: int = flag(91, "objects per class when the dataset is generated")
    data_seed: int = flag(0, "simulator seed when the dataset is generated")
    workers: int = flag(0, "simulator processes when the dataset is generated (0: all cores)")
    loader_workers: int = flag(-1, "DataLoader worker processes (-1: 4 on CUDA, 0 on the CPU)")
    progress: bool = flag(True, "tqdm progress bars")
    overwrite: bool = flag(False, "replace the run already in --out (its files are replaced "
                                   "when this run's first epoch ends; until then it is kept)")

    def __post_init__(self):
        if self.engine == "fast":   # the name of older versions (stored in their checkpoints)
            self.engine = "auto"

    def model_config(self) -> ModelConfig:
        base = ModelConfig()
        scale = lambda r: tuple(self.tau_scale * v for v in r)  # noqa: E731
        return ModelConfig(encoder=self.encoder, init_b=self.init_b, init_w=self.init_w,
                           seed=self.seed, readout_tau=self.readout_tau,
                           tau_m_range=scale(base.tau_m_range),
                           tau_adp_range=scale(base.tau_adp_range))

    def validate(self) -> "TrainConfig":
        positive = lambda v: math.isfinite(v) and v > 0  # noqa: E731
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (positive(self.lr), f"--lr must be a positive number, got {self.lr}"),
            (positive(self.lr_tau_adp_factor),
             f"--lr-tau-adp-factor must be a positive number, got {self.lr_tau_adp_factor}"),
            (positive(self.lr_tau_m_factor),
             f"--lr-tau-m-factor must be a positive number, got {self.lr_tau_m_factor}"),
            (positive(self.tau_scale), f"--tau-scale must be a positive number, got {self.tau_scale}"),
            (self.step_size >= 1, f"--step-size must be >= 1, got {self.step_size}"),
            (positive(self.gamma) and self.gamma <= 1,
             f"--gamma must be in (0, 1] (the StepLR factor), got {self.gamma}"),
            (positive(self.init_b), f"--init-b must be a positive number, got {self.init_b}"),
            (positive(self.init_w), f"--init-w must be a positive number, got {self.init_w}"),
            (math.isfinite(self.whisker_dropout) and 0 <= self.whisker_dropout < 1,
             f"--whisker-dropout must be in [0, 1), got {self.whisker_dropout}"),
            (self.n_steps == 0 or self.n_steps >= 2, f"--n-steps must be 0 (full) or >= 2, got {self.n_steps}"),
            (math.isfinite(self.val_fraction) and 0 <= self.val_fraction < 1,
             f"--val-fraction must be in [0, 1), got {self.val_fraction}"),
            (self.patience >= 0, f"--patience must be >= 0 (0: no early stopping), got {self.patience}"),
            (self.patience == 0 or self.val_fraction > 0,
             f"--patience {self.patience} needs a validation set: give --val-fraction (e.g. 0.2)"),
            (math.isfinite(self.rate_reg) and self.rate_reg >= 0,
             f"--rate-reg must be >= 0, got {self.rate_reg}"),
            (math.isfinite(self.target_rate) and 0 <= self.target_rate <= 1,
             f"--target-rate must be in [0, 1] (spikes per neuron per step), got {self.target_rate}"),
            (math.isfinite(self.readout_weight_decay) and self.readout_weight_decay >= 0
             and self.lr * self.readout_weight_decay < 1,
             f"--readout-weight-decay must be >= 0 with --lr x it below 1, got "
             f"{self.readout_weight_decay}"),
            (math.isfinite(self.readout_tau) and self.readout_tau >= 0,
             f"--readout-tau must be >= 0 (0: no leaky readout), got {self.readout_tau}"),
            (math.isfinite(self.readout_dropout) and 0 <= self.readout_dropout < 1,
             f"--readout-dropout must be in [0, 1), got {self.readout_dropout}"),
            (self.max_train_samples >= 0, f"--max-train-samples must be >= 0, got {self.max_train_samples}"),
            (self.max_test_samples >= 0, f"--max-test-samples must be >= 0, got {self.max_test_samples}"),
            (self.objects_per_class >= 1, f"--objects-per-class must be >= 1, got {self.objects_per_class}"),
            (self.workers >= 0, f"--workers must be >= 0 (0: all cores), got {self.workers}"),
            (self.loader_workers >= -1, f"--loader-workers must be >= -1, got {self.loader_workers}"),
            (bool(str(self.out).strip()), "--out must name the run folder, got ''"),
        ] + [seed_check(getattr(self, name), f"--{name.replace('_', '-')}")
             for name in ("seed", "spike_seed", "data_seed", "val_seed")]
        require(checks)
        if self.encoder == "spiking" and self.features != "published":
            raise ValueError(f"--features {self.features} applies to the real-valued input "
                             "only (RSNN_bfd_RealValued.py)")
        try:
            parse_sweeps(self.train_sweeps)
        except ValueError as err:
            raise ValueError(f"--train-sweeps: {err}") from None
        for name in ("encoder", "dtype", "engine", "loss", "features"):
            choices = next(f for f in dataclasses.fields(self) if f.name == name).metadata["choices"]
            if getattr(self, name) not in choices:
                raise ValueError(f"--{name} must be one of {choices}, got {getattr(self, name)!r}")
        return self


def _default(name: str, default):
    """A field of :class:`TrainConfig` with another default (same flag help and choices)."""
    return field(default=default, metadata=TrainConfig.__dataclass_fields__[name].metadata)


@dataclass
class SpikingConfig(TrainConfig):
    """``RSNN_bfd_SpikingBased.py``: spike-encoded input, T = 550, the spiking PAPER_INIT,
    StepLR(20, 0.8) (the defaults of :class:`TrainConfig`)."""


@dataclass
class RealValuedConfig(TrainConfig):
    """``RSNN_bfd_RealValued.py``: real-valued input, T = 110, the real-valued PAPER_INIT,
    StepLR(10, 0.5)."""
    encoder: str = _default("encoder", "realvalued")
    step_size: int = _default("step_size", 10)
    gamma: float = _default("gamma", 0.5)
    out: str = _default("out", "runs/realvalued")
    init_b: float = _default("init_b", PAPER_INIT["realvalued"][0])
    init_w: float = _default("init_w", PAPER_INIT["realvalued"][1])


# ============================================================================== training
def make_optimizer(model: BarrelCortexRSNN, cfg: TrainConfig):
    """Adam with param groups: tau_adp x lr_tau_adp_factor, tau_m x lr_tau_m_factor, rest x1."""
    tau_adp = [model.tau_adp, model.thal_tau_adp]
    tau_m = [model.tau_m, model.thal_tau_m]
    special = {id(p) for p in tau_adp + tau_m}
    rest = [p for p in model.parameters() if id(p) not in special]
    optimizer = torch.optim.Adam([
        {"params": rest, "lr": cfg.lr},
        {"params": tau_adp, "lr": cfg.lr * cfg.lr_tau_adp_factor},
        {"params": tau_m, "lr": cfg.lr * cfg.lr_tau_m_factor},
    ], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size,
                                                gamma=cfg.gamma)
    return optimizer, scheduler


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
    (:func:`folds.stratified_holdout`, seed ``val_seed``) is held out for validation."""
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


def _batch_generator(seed: int, epoch: int, batch: int, salt: int) -> torch.Generator:
    """A generator seeded by (seed, epoch, batch, salt): the data order of an epoch (batch 0,
    salt 17) and each global batch's augmentations, the same on every rank."""
    return make_generator((int(seed) * 1_000_003 + int(epoch) * 7919 + int(batch) * 104_729
                           + salt) % (2 ** 63))


def epoch_batches(indices: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of ``epoch``: a permutation seeded by ``(seed, epoch)``, then chunks."""
    g = _batch_generator(seed, epoch, 0, 17)
    perm = torch.randperm(len(indices), generator=g).tolist()
    order = [indices[i] for i in perm]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _stack(dataset, idx: list[int], device):
    xs, ys = zip(*(dataset[i] for i in idx))
    return torch.stack(xs).to(device), torch.stack([torch.as_tensor(y) for y in ys]).to(device)


class _Batches(torch.utils.data.Dataset):
    """Wraps a dataset so that item k is the stacked batch k (for DataLoader workers)."""

    def __init__(self, dataset, batches):
        self.dataset, self.batches = dataset, batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        return _stack(self.dataset, self.batches[k], "cpu") if self.batches[k] else (None, None)


def _identity(x):
    return x


def _iterate(dataset, batches, workers: int):
    """Yield (x, y) CPU tensors for each batch of indices (optionally in worker processes)."""
    if workers <= 0:
        for b in batches:
            yield _stack(dataset, b, "cpu") if b else (None, None)
        return
    loader = torch.utils.data.DataLoader(_Batches(dataset, batches), batch_size=None,
                                         num_workers=workers, shuffle=False,
                                         collate_fn=_identity, persistent_workers=False)
    yield from loader


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


@torch.no_grad()
def evaluate(model: BarrelCortexRSNN, dataset, indices: list[int], batch_size: int, device,
             dist: Dist | None = None, progress: bool = False, workers: int = 0,
             desc: str = "test", loss_kind: str = "published") -> dict:
    """Accuracy, mean loss and mean cortical firing rate over ``indices``.

    ``eval()`` and ``no_grad``; every batch starts from the model's deterministic initial
    state. Under torchrun each rank evaluates its shard of every batch and the sums are
    all-reduced. Returns ``{"loss", "acc", "firing_rate", "n"}`` (firing rate in spikes per
    neuron per step).
    """
    dist = dist or Dist()
    was_training = model.training
    model.eval()
    global_batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    batches = [shard(b, dist) for b in global_batches]
    loss_sum = correct = spikes = spike_count = 0.0
    n = 0
    for (x, y), gb in zip(_progress(_iterate(dataset, batches, workers), len(batches), desc,
                                    progress and dist.main), global_batches):
        if x is None:
            continue
        x, y = x.to(device), y.to(device)
        state = None
        if dist.world > 1:
            state = shard_state(model, len(gb), *shard_bounds(len(gb), dist), device)
        out = model(x, state=state, record_spikes=True)
        loss_sum += float(readout_loss(out, y, loss_kind, reduction="sum"))
        correct += float((predict(out, loss_kind) == y).sum())
        spikes += float(out.spikes.sum(dtype=torch.float64))
        spike_count += out.spikes.numel()
        n += len(y)
    loss_sum, correct, spikes, spike_count, n = dist.all_sum(
        [loss_sum, correct, spikes, spike_count, n], device)
    model.train(was_training)
    n = int(round(n))
    return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1),
            "firing_rate": spikes / max(spike_count, 1), "n": n}


def whisker_keep(n: int, p: float, seed: int, epoch: int, batch: int) -> torch.Tensor:
    """The ``--whisker-dropout`` mask of a global batch: (n, 31) bool, each whisker kept with
    probability 1 - p, from a generator seeded by (seed, epoch, batch) (the same on every rank)."""
    return torch.rand((n, N_WHISKERS), generator=_batch_generator(seed, epoch, batch, 29)) >= p


def batch_sweeps(n: int, sweeps: tuple[int, ...], seed: int, epoch: int, batch: int) -> torch.Tensor:
    """The ``--train-sweeps`` choice of a global batch: (n,) sweeps drawn uniformly from
    ``sweeps``, seeded by (seed, epoch, batch) (the same on every rank)."""
    pick = torch.randint(len(sweeps), (n,), generator=_batch_generator(seed, epoch, batch, 31))
    return torch.as_tensor(sweeps)[pick]


@dataclass(frozen=True)
class Regularisers:
    """The opt-in regularisers of a training step (all off by default: the published step).

    ``rate_reg`` x mean over samples of (sample's mean cortical rate - ``target_rate``)^2 is
    added to the loss (:func:`rate_penalty`); ``readout_dropout``: the readout neurons of a
    global batch are dropped with this probability (:func:`readout_keep`);
    ``readout_weight_decay``: decoupled decay of the readout weights after each step
    (:func:`decay_readout_`).
    """
    rate_reg: float = 0.0
    target_rate: float = 0.02
    readout_dropout: float = 0.0
    readout_weight_decay: float = 0.0

    @classmethod
    def of(cls, cfg: "TrainConfig") -> "Regularisers":
        return cls(cfg.rate_reg, cfg.target_rate, cfg.readout_dropout, cfg.readout_weight_decay)


def rate_penalty(spikes: torch.Tensor, target: float) -> torch.Tensor:
    """Sum over samples of (the sample's mean cortical rate - ``target``)^2.

    spikes: (T, batch, 4218) with a gradient (torch and reference engines). Summed, not
    averaged, so that it is scaled like the readout loss (``reduction="sum"``)."""
    return ((spikes.mean(dim=(0, 2)) - target) ** 2).sum()


def readout_keep(n_readout: int, p: float, seed: int, epoch: int, batch: int) -> torch.Tensor:
    """The ``--readout-dropout`` multipliers of a global batch: (n_readout,) float, 0 for a
    dropped readout neuron and 1 / (1 - p) for a kept one, from a generator seeded by
    (seed, epoch, batch) (the same on every rank)."""
    keep = torch.rand(n_readout, generator=_batch_generator(seed, epoch, batch, 37)) >= p
    return keep.float() / (1 - p)


@torch.no_grad()
def decay_readout_(model, decay: float, lr: float) -> None:
    """``--readout-weight-decay``: multiply both readout weights by ``1 - lr * decay``."""
    for layer in (model.readout[0], model.readout[1]):
        layer.weight.mul_(1 - lr * decay)


def train_one_epoch(ddp_model, model, optimizer, dataset, batches, device, dist: Dist,
                    progress: bool, workers: int, desc: str, loss_kind: str = "published",
                    whisker_dropout: float = 0.0, seed: int = 0, epoch: int = 0,
                    sweeps: tuple[int, ...] = (0,), reg: Regularisers = Regularisers()) -> dict:
    """One pass over ``batches`` (lists of global indices). Returns mean loss and accuracy, and
    the largest gradient norm of its batches (``grad_norm``, for :class:`LearningStall`).

    Augmentations (off by default), drawn per global batch from ``seed`` and ``epoch``:
    ``sweeps`` other than ``(0,)`` drive the network with one of these sweeps per sample
    (:func:`batch_sweeps`, :func:`whisker_dataset.drive_with_sweeps`); ``whisker_dropout`` > 0
    silences whiskers (:func:`whisker_keep`, :func:`whisker_dataset.drop_whiskers`).
    Regularisers (off by default): ``reg`` (:class:`Regularisers`).
    """
    model.train()
    loss_sum = correct = n = grad_norm = 0.0
    bar = _progress(_iterate(dataset, [shard(b, dist) for b in batches], workers),
                    len(batches), desc, progress and dist.main)
    for k, ((x, y), batch) in enumerate(zip(bar, batches)):
        global_n = len(batch)
        dummy = x is None
        lo, hi = shard_bounds(global_n, dist)
        if dummy:  # this rank got no sample of a tiny last batch: contribute a zero gradient
            x, y = _stack(dataset, batch[:1], "cpu")
            lo, hi = 0, 1
        if tuple(sweeps) != (model.config.sweep,):
            x = drive_with_sweeps(x, batch_sweeps(global_n, sweeps, seed, epoch, k)[lo:hi],
                                  model.config.sweep)
        if whisker_dropout > 0:
            x = drop_whiskers(x, whisker_keep(global_n, whisker_dropout, seed, epoch, k)[lo:hi])
        x, y = x.to(device), y.to(device)
        state = shard_state(model, global_n, lo, hi, device) if dist.world > 1 else None
        if reg.readout_dropout > 0:
            model.readout_keep = readout_keep(len(model.readout_index), reg.readout_dropout,
                                              seed, epoch, k).to(device, model.tau_m.dtype)
        try:
            out = ddp_model(x, state=state, record_spikes=reg.rate_reg > 0)
        finally:
            model.readout_keep = None
        ce = readout_loss(out, y, loss_kind, reduction="sum")
        loss = ce * (dist.world / global_n)
        if reg.rate_reg > 0:
            loss = loss + reg.rate_reg * rate_penalty(out.spikes, reg.target_rate) * (
                dist.world / global_n)
        if dummy:
            loss = loss * 0.0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = max(grad_norm, _grad_norm(model))
        optimizer.step()
        if reg.readout_weight_decay > 0:
            decay_readout_(model, reg.readout_weight_decay, optimizer.param_groups[0]["lr"])
        model.constrain_()
        # after the step the parameters are the same on every rank, so all ranks stop together
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise TrainingDiverged(f"a parameter became NaN or infinite at batch {k + 1} of "
                                   f"{len(batches)} (batch loss {float(ce.detach()) / max(len(y), 1):.4g})")
        if not dummy:
            loss_sum += float(ce.detach())
            correct += float((predict(out, loss_kind).detach() == y).sum())
            n += len(y)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{float(ce.detach()) / len(y):.4f}")
    loss_sum, correct, n = dist.all_sum([loss_sum, correct, n], device)
    return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1), "grad_norm": grad_norm}


@torch.no_grad()
def _grad_norm(model) -> float:
    """The L2 norm of all parameter gradients (after DDP's averaging: the same on every rank)."""
    norms = [p.grad.detach().norm(dtype=torch.float64) for p in model.parameters()
             if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


class LearningStall:
    """Says once, as a log line, when training has stopped learning: an epoch in which every
    batch's gradient norm was below ``GRAD_EPS``, or a training loss unchanged to within
    ``LOSS_EPS`` for ``EPOCHS`` epochs running. It only reads the metrics; the run goes on
    as it would without it."""
    GRAD_EPS, LOSS_EPS, EPOCHS = 1e-12, 1e-6, 3

    def __init__(self, loss_kind: str):
        self.loss_kind, self.losses, self.said = loss_kind, [], False

    def notice(self, epoch: int, loss: float, grad_norm: float) -> str | None:
        """The notice after ``epoch`` (1-based), or None (always None once it was given)."""
        self.losses = (self.losses + [loss])[-self.EPOCHS:]
        if self.said:
            return None
        if grad_norm < self.GRAD_EPS:
            why = f"every gradient norm of epoch {epoch} was below {self.GRAD_EPS:g}"
        elif (len(self.losses) == self.EPOCHS
              and max(self.losses) - min(self.losses) <= self.LOSS_EPS):
            why = f"the loss has stayed at {loss:.6f} for {self.EPOCHS} epochs"
        else:
            return None
        self.said = True
        cause = (" (with the published loss the readout's per-step softmax saturates and gives "
                 "no gradient)" if self.loss_kind == "published" else "")
        return (f"note: training has stopped learning: {why}{cause}; the set-up that learns on "
                "the generated data is --loss log-mean-prob --lr 0.001 --batch-size 32 (see "
                "docs/RESULTS.md). This run goes on unchanged.")


SCRIPTS = {"spiking": "RSNN_bfd_SpikingBased.py", "realvalued": "RSNN_bfd_RealValued.py"}


def stored_train_config(ckpt: dict, path, encoder: str | None = None, fix: str = "") -> dict:
    """The training configuration stored in the checkpoint ``ckpt`` (read from ``path``),
    checked before it is used: it must be one that training accepts (``validate``, its
    paths aside) and name its network's encoder. With ``encoder`` (the script's own), the
    network must also be of that encoder; ``fix`` then says what to do instead. Raises
    :class:`CheckpointError` (one line); returns the stored dict (``{}`` when none)."""
    stored = ckpt.get("train_config") or {}
    network = (ckpt.get("model_config") or {}).get("encoder", "spiking")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: malformed checkpoint (its train_config is a "
                              f"{type(stored).__name__}, not a dict)")
    if stored.get("encoder", network) != network:
        raise CheckpointError(f"{path}: its stored training configuration names the encoder "
                              f"{stored.get('encoder')!r}, but it holds a {network} network; "
                              "the checkpoint is damaged or was edited")
    cls = RealValuedConfig if network == "realvalued" else SpikingConfig
    names = {f.name for f in dataclasses.fields(cls)} - {"out", "resume"}
    try:
        cls(**{k: v for k, v in stored.items() if k in names}).validate()
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its stored training configuration is invalid "
                              f"({' '.join(str(err).split())})") from None
    if encoder is not None and network != encoder:
        raise CheckpointError(f"{path} holds a {network} network, not a {encoder} one"
                              + (f"; {fix}" if fix else ""))
    return stored


def resolve_resume(cfg: TrainConfig, given: set[str], log=print) -> TrainConfig:
    """For ``--resume RUN_DIR``: the run's stored config, overridden by the flags given now.
    The run must be of the script's encoder (``cfg.encoder``)."""
    if not cfg.resume:
        return cfg
    run_dir = Path(cfg.resume)
    ckpt_path = run_dir / "checkpoint.pth" if run_dir.is_dir() else run_dir
    if run_dir.is_file():
        run_dir = run_dir.parent
    ckpt = read_checkpoint(ckpt_path)
    network = (ckpt.get("model_config") or {}).get("encoder", "spiking")
    stored = stored_train_config(ckpt, ckpt_path, cfg.encoder,
                                 f"continue it with python {SCRIPTS.get(network, '?')} --resume "
                                 f"{cfg.resume}")
    out = Path(cfg.out) if "out" in given else run_dir
    latest = run_dir / "checkpoint.pth"
    if (same_dir(out, run_dir) and ckpt_path.name != latest.name and latest.is_file()
            and int(read_checkpoint(latest).get("epoch", 0)) > int(ckpt.get("epoch", 0))):
        raise ValueError(
            f"{ckpt_path} is from epoch {ckpt.get('epoch', 0)} but {latest} holds a later one; "
            f"continuing here would replace it. Continue the run with --resume {run_dir}, or "
            f"branch from {ckpt_path.name} into a new folder with --resume {ckpt_path} --out NEW_DIR")
    names = {f.name for f in dataclasses.fields(cfg)}
    merged = {k: v for k, v in stored.items() if k in names}
    merged.update({k: getattr(cfg, k) for k in given})
    merged["resume"] = str(ckpt_path)
    merged["out"] = str(out)
    changed = sorted(k for k in given - {"resume", "out"} if stored.get(k, getattr(cfg, k)) != getattr(cfg, k))
    if changed:
        log(f"resuming {run_dir} with changed settings: {', '.join(changed)}")
    return type(cfg)(**merged)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def train(cfg: TrainConfig, log=print, data: RunData | None = None) -> dict:
    """Train (or resume) a run as described in the module docstring.

    ``data``: the datasets and index lists to use (default :func:`run_data` of ``cfg``).
    Returns ``{"rows": metrics rows, "best_test_acc", "out": run dir, "epoch": the last
    epoch run, "selected_on": "test" or "validation", "best_epoch": the epoch of best.pth,
    "best_val_acc" (None without a validation set), "stopped_early"}``.
    """
    cfg.validate()
    dist, device = setup_distributed(cfg.device)
    log = log if dist.main else (lambda *a, **k: None)
    # a run folder made by this run is removed again when it fails before its first epoch
    with removed_if_unused(cfg.out) if dist.main else contextlib.nullcontext():
        lock = claim_run_dir(cfg.out, cfg.resume, cfg.overwrite) if dist.main else None
        try:
            return _train(cfg, dist, device, log, data)
        finally:
            if lock is not None:
                lock.release()
            if dist.active and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, dist: Dist, device, log, data: RunData | None = None) -> dict:
    out = Path(cfg.out)
    dtype = DTYPES[cfg.dtype]
    data = data or run_data(cfg, dist, log)
    require_classes(data)
    workers = cfg.loader_workers if cfg.loader_workers >= 0 else (4 if device.type == "cuda" else 0)

    start_epoch, best, rows = 0, -1.0, []
    if cfg.resume:
        model, ckpt = load_checkpoint(cfg.resume, device)
        model = model.to(dtype=dtype)
        optimizer, scheduler = make_optimizer(model, cfg)
        if ckpt.get("optimizer_state"):
            optimizer.load_state_dict(ckpt["optimizer_state"])
        if ckpt.get("scheduler_state"):
            scheduler.load_state_dict(ckpt["scheduler_state"])
        start_epoch = int(ckpt.get("epoch", 0))
        if cfg.epochs <= start_epoch:
            raise ValueError(f"{cfg.resume} has already trained {start_epoch} epochs; give "
                             f"--epochs larger than {start_epoch} to continue")
        best = float(ckpt.get("best_test_acc") if ckpt.get("best_test_acc") is not None else -1.0)
        stored_split = ckpt.get("split") or {}
        if (stored_split or data.val_idx) and {k: stored_split.get(k) for k in ("train_idx", "val_idx")} \
                != {k: v for k, v in data.split().items() if k != "test_idx"}:
            raise ValueError(f"{cfg.resume} was trained with "
                             + (f"another validation split ({len(stored_split.get('val_idx', []))} "
                                "samples)" if stored_split else "no validation set")
                             + "; resume it with the settings it was started with (--val-fraction, "
                             "--val-seed, --max-train-samples)")
        # the history up to this checkpoint, from the run it belongs to
        rows = [r for r in read_metrics(Path(cfg.resume).parent / "metrics.csv")
                if r["epoch"] <= start_epoch]
        log(f"resumed from {cfg.resume} after epoch {start_epoch}")
    else:
        model = build_model(cfg.model_config(), device=device, dtype=dtype)
        optimizer, scheduler = make_optimizer(model, cfg)
    model.train()
    model.use_engine(cfg.engine)   # a named engine is never swapped; options from ENGINE_*

    ddp_model = model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel as DDP
        with warnings.catch_warnings():   # buffers (masks, signs) are fixed: no syncing
            warnings.simplefilter("ignore", FutureWarning)
            ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                            broadcast_buffers=False)

    config_dict = dataclasses.asdict(cfg)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        log(f"training {cfg.encoder} RSNN on {device} with the {model.engine} engine"
            f"{' (auto)' if cfg.engine == 'auto' else ''} ({dist.world} process(es)): "
            f"{len(data.train_idx)} train / "
            + (f"{len(data.val_idx)} validation / " if data.val_idx else "")
            + f"{len(data.test_idx)} test samples, T = {data.train_set[0][0].shape[2]}, epochs "
            f"{start_epoch + 1}..{cfg.epochs}, best.pth by "
            f"{'validation' if data.val_idx else 'test'} accuracy; run dir {out}")

    try:
        stopped = _epochs(cfg, model, ddp_model, optimizer, scheduler, data, workers,
                          start_epoch, best, rows, config_dict, dist, device, log)
    except (TrainingDiverged, KeyboardInterrupt) as err:
        if not dist.main:
            raise
        done = rows[-1]["epoch"] if rows else 0
        saved = out / "checkpoint.pth"
        kept = (f"kept {saved} (epoch {done})" if done and saved.is_file()
                else "nothing was saved")
        if isinstance(err, TrainingDiverged):
            raise TrainingDiverged(f"training diverged in epoch {done + 1}: {err}; {kept}, and "
                                   "best.pth holds no diverged state. Try a smaller --lr") from None
        script = Path(sys.argv[0]).name if sys.argv[0].endswith(".py") else "RSNN_bfd_SpikingBased.py"
        resume = f"; continue with: python {script} --resume {out}" if "kept" in kept else ""
        raise KeyboardInterrupt(f"{kept}{resume}") from None
    key = "val_acc" if data.val_idx else "test_acc"
    best_epoch, best_value, _ = selection(rows, key)
    return {"rows": rows, "best_test_acc": max([r["test_acc"] for r in rows], default=best),
            "out": str(out), "epoch": rows[-1]["epoch"] if rows else start_epoch,
            "selected_on": "validation" if data.val_idx else "test", "best_epoch": best_epoch,
            "best_val_acc": best_value if data.val_idx else None, "stopped_early": stopped}


def selection(rows: list[dict], key: str = "val_acc") -> tuple[int, float, int]:
    """``(epoch, value, epochs since)`` of the best ``key`` in the metrics ``rows``, and how
    many epochs ran after it (the early-stopping count). ``(0, -1.0, 0)`` without rows.

    On the test set (the published selection) ties go to the earlier epoch. On a validation
    set, equal accuracies are common (44 samples, a step of 2.3 points), so ties go to the
    lower validation loss, then to the earlier epoch; only validation data choose either way.
    """
    tie_key = "val_loss" if key == "val_acc" else None
    best_epoch, best, best_loss = 0, -1.0, math.inf
    for r in rows:
        loss = float(r[tie_key]) if tie_key and tie_key in r else math.inf
        if r[key] > best or (r[key] == best and loss < best_loss):
            best_epoch, best, best_loss = int(r["epoch"]), float(r[key]), loss
    return best_epoch, best, (int(rows[-1]["epoch"]) - best_epoch if rows else 0)


def _epochs(cfg, model, ddp_model, optimizer, scheduler, data: RunData, workers, start_epoch,
            best, rows, config_dict, dist, device, log) -> bool:
    """The epoch loop of :func:`_train`; appends to ``rows`` as epochs finish. Returns whether
    it stopped early (``patience`` epochs without a better validation accuracy).

    Without a validation set ``best.pth`` is the epoch of the best test accuracy (published);
    with one, of the best validation accuracy, and the test set is only reported.
    """
    out = Path(cfg.out)
    t_start = time.time()
    train_set, test_set, train_idx, test_idx = (data.train_set, data.test_set, data.train_idx,
                                                data.test_idx)
    validating = bool(data.val_idx)
    # the validation samples as a test set reads them (spikes drawn once)
    val_set = getattr(train_set, "without_resampling", lambda: train_set)()
    if validating:
        _, best, _ = selection(rows, "val_acc")
    # recorded in every checkpoint, so that a network used on other data can say so
    dataset = dataset_identity(cfg.data_dir) if dist.main else {}
    stall = LearningStall(cfg.loss)
    for epoch in range(start_epoch, cfg.epochs):
        best_epoch, _, since = selection(rows, "val_acc") if validating else (0, 0.0, 0)
        if cfg.patience and since >= cfg.patience:
            log(f"stopped early after epoch {epoch}: no better validation accuracy in the "
                f"last {since} epochs (--patience {cfg.patience}); best.pth is epoch {best_epoch}")
            return True
        t0 = time.time()
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        batches = epoch_batches(train_idx, cfg.batch_size, cfg.seed, epoch)
        tr = train_one_epoch(ddp_model, model, optimizer, train_set, batches, device, dist,
                             cfg.progress, workers, f"epoch {epoch + 1}/{cfg.epochs}", cfg.loss,
                             cfg.whisker_dropout, cfg.seed, epoch,
                             parse_sweeps(cfg.train_sweeps), Regularisers.of(cfg))
        scheduler.step()
        te = evaluate(model, test_set, test_idx, cfg.batch_size, device, dist, cfg.progress,
                      workers, loss_kind=cfg.loss)
        va = (evaluate(model, val_set, data.val_idx, cfg.batch_size, device, dist, cfg.progress,
                       workers, desc="validation", loss_kind=cfg.loss) if validating else None)
        if not (math.isfinite(tr["loss"]) and math.isfinite(te["loss"])
                and (va is None or math.isfinite(va["loss"]))):
            raise TrainingDiverged(f"the loss became {tr['loss']:.4g} (train) / "
                                   f"{te['loss']:.4g} (test)")
        seconds = time.time() - t0
        row = {"epoch": epoch + 1, "loss": tr["loss"], "train_acc": tr["acc"],
               "test_loss": te["loss"], "test_acc": te["acc"], "lr": lr,
               "firing_rate": te["firing_rate"], "seconds": seconds}
        if validating:
            row.update(val_loss=va["loss"], val_acc=va["acc"])
        rows.append(row)
        # what selects best.pth: validation accuracy (ties: lower validation loss), else test
        if validating:
            improved = selection(rows, "val_acc")[0] == epoch + 1
        else:
            improved = te["acc"] > best
        best = max(best, va["acc"] if validating else te["acc"])
        if dist.main:
            best_test = max(r["test_acc"] for r in rows) if validating else best
            extra = {"best_test_acc": best_test, "test_acc": te["acc"], "metrics": rows[-1],
                     "dataset": dataset, "selected_on": "validation" if validating else "test"}
            if validating:
                extra.update(best_val_acc=best, val_acc=va["acc"], split=data.split())
            if improved:
                save_checkpoint(out / "best.pth", model, optimizer, scheduler, epoch + 1,
                                config_dict, extra)
            save_checkpoint(out / "checkpoint.pth", model, optimizer, scheduler, epoch + 1,
                            config_dict, extra)
            if epoch == start_epoch:   # with the first checkpoint: a failed start changes nothing
                atomic_write_json(config_dict, out / "config.json")
            write_metrics(rows, out / "metrics.csv")
            plot_learning_curves(rows, out / "learning_curves.png",
                                 f"{cfg.encoder} RSNN")
            left = (time.time() - t_start) / (epoch + 1 - start_epoch) * (cfg.epochs - epoch - 1)
            scores = (f"val acc {va['acc']:.3f} (best {best:.3f}), test acc {te['acc']:.3f}"
                      if validating else f"test acc {te['acc']:.3f} (best {best:.3f})")
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {tr['loss']:.4f}, train acc "
                f"{tr['acc']:.3f}, {scores}, lr {lr:.2e}, "
                f"rate {te['firing_rate']:.4f}, {seconds:.1f} s"
                + (f", about {_duration(left)} left" if epoch + 1 < cfg.epochs else ""))
            notice = stall.notice(epoch + 1, tr["loss"], tr["grad_norm"])
            if notice:
                log(notice)
        dist.barrier()
    return False


def training_main(config_cls, argv=None, defaults=None, description=None) -> int:
    """The body of the training scripts: parse flags, resolve ``--resume``, train."""
    cfg, given = parse_config(config_cls, argv, defaults, description)
    cfg = resolve_resume(cfg, given)
    train(cfg)
    return 0
