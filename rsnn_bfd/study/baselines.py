"""Conventional baselines of the paper: CNN, RNN, LSTM and GRU on the RSNN's own input
(the command line: ``baselines.py``).

Each model reads exactly what the RSNN script of the same ``--encoder`` reads: sweep 0 of
every sample, as the spike trains of ``RSNN_bfd_SpikingBased.py`` (T = 550 steps x 2 x 93
force / torque nodes, the same ``--spike-seed``) or the real-valued features of
``RSNN_bfd_RealValued.py`` (T = 110 steps x 558). Hyper-parameters are fixed (no selection on
the test set); the reported accuracy is the test accuracy after the last epoch. With
``--encoder realvalued --features signed-log`` the models read the real-valued script's
``--features signed-log`` input, and with ``--train-sweeps 0-3`` they train, like the RSNN
with that flag, on one of these sweeps per sample, drawn anew every epoch (the test set is
always sweep 0). Writes to ``--out`` (``<input>``: ``spiking``, ``realvalued`` or
``realvalued_signed-log``, followed by ``_sweeps<spec>`` with ``--train-sweeps``):

    baselines_<input>.csv    one row per model and seed: test and train accuracy, seconds
    baselines_<input>.json   per model: accuracies per seed, mean and std (ddof 0)

The models (torch only, a few minutes each on two CPU cores):

* ``cnn``: three 1-D convolutions over time (64 channels, ReLU; the first one's stride is one
  frame, 5 steps of the spike trains or 1 real-valued step), max-pooled over time, linear
  readout.
* ``rnn`` / ``lstm`` / ``gru``: one recurrent layer of 64 units over every step, its outputs
  averaged over time (the RSNN also sums its readout over time), linear readout.
* ``vote``: the RSNN's readout on a non-spiking network. A linear projection to 64 units is
  low-pass filtered with a time constant of ``--vote-tau`` steps (10, the RSNN's initial
  membrane time constant), rectified and read out at every step; the per-step softmaxes are
  averaged over time and trained on -log of the mean probability of the label
  (``--loss log-mean-prob``). Its accuracy shows what a per-step readout with short memory
  can reach on this input.
* ``rate``: the same leaky layer read out from its time-averaged activity (the mean logits),
  trained by cross-entropy on them: the RSNN's ``--loss mean-logit``.

Training: Adam (lr 0.003), batch 32, ``--epochs`` (default 40) epochs, gradient norm clipped
at 1, cross-entropy; the data order and initialisation come from the seed.
"""
from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rsnn_bfd.cli import SEED_MAX, data_dir_check, flag, seed_check
from rsnn_bfd.common import cap_workers, make_generator
from rsnn_bfd.writing import (atomic_write_json, atomic_write_text, claim_results_dir,
                              removed_if_unused, together)
from rsnn_bfd.data.datasets import datasets_for
from rsnn_bfd.data.encoding import REALVALUED_FEATURES, parse_sweeps
from rsnn_bfd.data.files import DT_REPEAT, TEST_FILE, TRAIN_FILE, check_data_folder

MODELS = ("cnn", "rnn", "lstm", "gru", "vote", "rate")
ENCODERS = ("spiking", "realvalued")


@dataclass
class BaselineConfig:
    """Settings of ``baselines.py`` (each is a flag)."""
    model: str = flag("all", f"which model: {', '.join(MODELS)} or all")
    encoder: str = flag("spiking", "the input form of one RSNN script: spiking or realvalued")
    data_dir: str = flag("data", "folder with snn_train3.h5 / snn_test3.h5")
    out: str = flag("runs/baselines", "output folder")
    seeds: str = flag("0,1,2", "comma-separated seeds (model initialisation and data order)")
    epochs: int = flag(40, "training epochs (fixed; no selection on the test set)")
    batch_size: int = flag(32, "batch size")
    lr: float = flag(0.003, "Adam learning rate")
    hidden: int = flag(64, "hidden units or channels")
    vote_tau: float = flag(10.0, "time constant (steps) of the leaky integrator of the vote "
                                 "and rate models")
    spike_seed: int = flag(0, "the RSNN script's --spike-seed")
    features: str = flag("published", "the real-valued script's --features: published or "
                                      "signed-log")
    train_sweeps: str = flag("0", "the RSNN script's --train-sweeps: the sweeps a training "
                                  "sample is drawn from every epoch ('0', '0-3', 'all')")
    threads: int = flag(0, "torch CPU threads (0: torch's default)")
    progress: bool = flag(True, "a progress bar over models and seeds")
    overwrite: bool = flag(False, "replace the results of this input already in --out")

    def validate(self) -> "BaselineConfig":
        """Raise ``ValueError`` naming the flag of the first bad setting; returns itself."""
        if self.model not in MODELS + ("all",):
            raise ValueError(f"--model must be one of {MODELS + ('all',)}, got {self.model!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"--encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.features not in REALVALUED_FEATURES:
            raise ValueError(f"--features must be one of {tuple(REALVALUED_FEATURES)}, "
                             f"got {self.features!r}")
        if self.encoder == "spiking" and self.features != "published":
            raise ValueError(f"--features {self.features} applies to --encoder realvalued only")
        try:
            parse_sweeps(self.train_sweeps)
        except ValueError as err:
            raise ValueError(f"--train-sweeps: {err}") from None
        if not (math.isfinite(self.vote_tau) and self.vote_tau > 0):
            raise ValueError(f"--vote-tau must be a positive number of steps, got {self.vote_tau}")
        for name in ("epochs", "batch_size", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive finite number, got {self.lr}")
        if not str(self.out).strip():
            raise ValueError("--out must name a folder, got ''")
        ok, message = data_dir_check(self.data_dir)
        if not ok:
            raise ValueError(message)
        parse_seeds(self.seeds)
        ok, message = seed_check(self.spike_seed, "--spike-seed")
        if not ok:
            raise ValueError(message)
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0 (0: torch's default), got {self.threads}")
        return self


class ConvNet(nn.Module):
    """(batch, T, features) -> (batch, 3): three 1-D convolutions over time, max-pooled."""

    def __init__(self, n_in: int, hidden: int, frame: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv1d(n_in, hidden, kernel_size=frame, stride=frame), nn.ReLU(),
            nn.Conv1d(hidden, hidden, kernel_size=5, stride=2, padding=2), nn.ReLU(),
            nn.Conv1d(hidden, hidden, kernel_size=5, stride=2, padding=2), nn.ReLU())
        self.readout = nn.Linear(hidden, 3)

    def forward(self, x):
        h = self.convs(x.transpose(1, 2))           # (batch, hidden, T')
        return self.readout(h.amax(dim=2))


class RecurrentNet(nn.Module):
    """(batch, T, features) -> (batch, 3): one recurrent layer, outputs averaged over time."""

    def __init__(self, kind: str, n_in: int, hidden: int):
        super().__init__()
        cell = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.rnn = cell(n_in, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, 3)

    def forward(self, x):
        h, _ = self.rnn(x)                           # (batch, T, hidden)
        return self.readout(h.mean(dim=1))


class LeakyVoteNet(nn.Module):
    """(batch, T, features) -> (batch, 3) scores of a leaky layer read out at every step.

    Per step: ``h_t = relu(filter_tau(W x)_t)`` with a causal exponential filter (a leaky
    integrator, ``h <- a h + (1 - a) W x``, a = exp(-1 / tau)), logits ``V h_t``.
    ``mean_logits=False`` (vote): the output is ``log(mean_t softmax(V h_t))``, so
    cross-entropy on it is -log of the mean probability of the label, the RSNN's
    ``log-mean-prob`` loss. ``mean_logits=True`` (rate): the output is ``mean_t V h_t``,
    the RSNN's ``mean-logit`` loss.
    """

    def __init__(self, n_in: int, hidden: int, tau: float, mean_logits: bool = False):
        super().__init__()
        self.mean_logits = mean_logits
        self.project = nn.Linear(n_in, hidden)
        self.readout = nn.Linear(hidden, 3)
        a = math.exp(-1.0 / tau)
        length = max(1, int(math.ceil(8 * tau)))   # the kernel keeps all but e^-8 of the filter
        kernel = (1 - a) * a ** torch.arange(length - 1, -1, -1, dtype=torch.float32)
        self.register_buffer("kernel", kernel)

    def forward(self, x):
        u = self.project(x).transpose(1, 2)                        # (batch, hidden, T)
        k = self.kernel[-u.shape[2]:]
        w = k.expand(u.shape[1], 1, -1)
        h = F.conv1d(F.pad(u, (len(k) - 1, 0)), w, groups=u.shape[1])  # causal filter
        logits = self.readout(torch.relu(h).transpose(1, 2))          # (batch, T, 3)
        if self.mean_logits:
            return logits.mean(dim=1)
        return torch.log(torch.softmax(logits, dim=-1).mean(dim=1).clamp_min(1e-30))


def build_baseline(kind: str, n_in: int, hidden: int, frame: int,
                   vote_tau: float = 10.0) -> nn.Module:
    if kind in ("vote", "rate"):
        return LeakyVoteNet(n_in, hidden, vote_tau, mean_logits=kind == "rate")
    if kind == "cnn":
        return ConvNet(n_in, hidden, frame)
    if kind in ("rnn", "lstm", "gru"):
        return RecurrentNet(kind, n_in, hidden)
    raise ValueError(f"unknown baseline model {kind!r}: use one of {MODELS}")


def sweep_inputs(dataset, sweeps=(0,)) -> tuple[torch.Tensor, torch.Tensor]:
    """The listed sweeps of every sample as the RSNN reads its driving sweep:
    (N, len(sweeps), T, features) float32 and (N,) labels.

    spiking: features = 186 spikes, force nodes then torque nodes (T = 550); realvalued: 558
    (T = 110).
    """
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    x = torch.stack(xs)[:, :, list(sweeps)].float()   # (N, C, S, T, F)
    x = x.permute(0, 2, 3, 1, 4).reshape(x.shape[0], x.shape[2], x.shape[3], -1)
    return x.contiguous(), torch.stack([torch.as_tensor(y) for y in ys]).long()


def sweep0_inputs(dataset, encoder: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Sweep 0 of every sample: (N, T, features) float32 and (N,) labels."""
    x, y = sweep_inputs(dataset, (0,))
    return x[:, 0], y


def train_baseline(kind: str, train, test, cfg: BaselineConfig, seed: int, frame: int,
                   progress=None) -> dict:
    """Train one model with one seed; returns test / train accuracy and seconds.

    ``train``: inputs (N, S, T, features) of S training sweeps (each batch reads one per
    sample, drawn from the seed's generator) and labels; ``test``: (N, T, features) and
    labels. The train accuracy is the mean over the S sweeps.
    """
    x_tr, y_tr = train
    x_te, y_te = test
    t0 = time.time()
    model = _fit(kind, x_tr, y_tr, cfg, seed, frame, progress)
    train_acc = float(np.mean([accuracy(model, x_tr[:, k], y_tr) for k in range(x_tr.shape[1])]))
    return {"test_acc": accuracy(model, x_te, y_te), "train_acc": train_acc,
            "seconds": time.time() - t0}


def train_baseline_on_split(kind: str, x: torch.Tensor, x_eval: torch.Tensor, y: torch.Tensor,
                            train_idx, val_idx, test_idx, cfg: BaselineConfig, seed: int,
                            frame: int, progress=None) -> dict:
    """Train on ``train_idx`` and keep the epoch of the best accuracy on ``val_idx``.

    ``x``: (N, S, T, features) the training sweeps of all N objects; ``x_eval``: (N, T,
    features) the sweep they are evaluated on (sweep 0); ``y``: (N,) labels. The model of
    the first epoch with the highest validation accuracy is kept (the test accuracy of every
    epoch is recorded but chooses nothing). Training is :func:`train_baseline`'s (the same
    seed gives the same steps). Returns ``{"best_epoch", "val_acc", "test_acc",
    "train_acc"}`` of the kept model (train: mean over the S sweeps), ``"epochs"`` (per
    epoch: ``epoch``, ``val_acc``, ``test_acc``) and ``"seconds"``.
    """
    train_idx, val_idx, test_idx = (torch.as_tensor(list(ix), dtype=torch.long)
                                    for ix in (train_idx, val_idx, test_idx))
    if not len(train_idx) or not len(val_idx) or not len(test_idx):
        raise ValueError("training, validation and test indices must each be non-empty")
    x_tr, y_tr = x[train_idx], y[train_idx]
    history, best = [], {"val_acc": -1.0}

    def after_epoch(model, epoch):
        val = accuracy(model, x_eval[val_idx], y[val_idx])
        history.append({"epoch": epoch, "val_acc": val,
                        "test_acc": accuracy(model, x_eval[test_idx], y[test_idx])})
        if val > best["val_acc"]:
            best.update(val_acc=val, epoch=epoch,
                        state={k: v.detach().clone() for k, v in model.state_dict().items()})

    t0 = time.time()
    model = _fit(kind, x_tr, y_tr, cfg, seed, frame, progress, after_epoch)
    model.load_state_dict(best["state"])
    train_acc = float(np.mean([accuracy(model, x_tr[:, k], y_tr) for k in range(x_tr.shape[1])]))
    return {"best_epoch": best["epoch"], "val_acc": best["val_acc"],
            "test_acc": accuracy(model, x_eval[test_idx], y[test_idx]), "train_acc": train_acc,
            "epochs": history, "seconds": time.time() - t0}


def _fit(kind: str, x_tr: torch.Tensor, y_tr: torch.Tensor, cfg: BaselineConfig, seed: int,
         frame: int, progress=None, after_epoch=None) -> nn.Module:
    """The training loop of the baselines: ``cfg.epochs`` epochs of Adam on ``x_tr`` (N, S,
    T, features), one sweep per sample and batch drawn from the seed's generator;
    ``after_epoch(model, epoch)`` (1-based) is called after each epoch. Returns the model."""
    torch.manual_seed(seed)          # nn.Module initialisers draw from the global RNG
    model = build_baseline(kind, x_tr.shape[3], cfg.hidden, frame, cfg.vote_tau)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = make_generator(seed)
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(y_tr), generator=g)
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            sweep = (torch.randint(x_tr.shape[1], (len(idx),), generator=g)
                     if x_tr.shape[1] > 1 else torch.zeros(len(idx), dtype=torch.long))
            loss = F.cross_entropy(model(x_tr[idx, sweep]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        if after_epoch is not None:
            after_epoch(model, epoch + 1)
        if progress is not None:
            progress.update(1)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(y), batch)])
    return float((pred == y).float().mean())


def load_inputs(cfg: BaselineConfig):
    """(train, test) pairs of inputs and labels, and the frame length in steps: the training
    sweeps (N, S, T, features) and sweep 0 of the test set (N, T, features)."""
    data_dir = check_data_folder(cfg.data_dir)
    for name in (TRAIN_FILE, TEST_FILE):
        if not (data_dir / name).is_file():
            raise FileNotFoundError(f"{data_dir / name} not found; generate the data with "
                                    f"`python whisker_sim.py --out {data_dir}` or pass --data-dir")
    train, test = datasets_for(cfg.encoder, data_dir, spike_seed=cfg.spike_seed,
                               features=cfg.features)
    frame = DT_REPEAT if cfg.encoder == "spiking" else 1
    return sweep_inputs(train, parse_sweeps(cfg.train_sweeps)), sweep0_inputs(test), frame


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or min(seeds) < 0 or max(seeds) > SEED_MAX:
        raise ValueError(f"--seeds must list integers in 0..{SEED_MAX}, got {text!r}")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"--seeds lists {', '.join(map(str, twice))} more than once ({text!r}); "
                         "each seed counts once in the mean")
    return seeds


def output_tag(cfg: BaselineConfig) -> str:
    """The input form in the file names: ``spiking``, ``realvalued`` or
    ``realvalued_signed-log``, then ``_sweeps<spec>`` with ``--train-sweeps``."""
    tag = cfg.encoder if cfg.features == "published" else f"{cfg.encoder}_{cfg.features}"
    if parse_sweeps(cfg.train_sweeps) != (0,):
        tag += f"_sweeps{cfg.train_sweeps.replace(',', '+')}"
    return tag


def run_baselines(cfg: BaselineConfig, log=print) -> dict:
    """Train every requested model for every seed; write CSV and JSON; return the summary.

    Results of the same input already in ``--out`` are refused unless ``--overwrite``; an
    ``--out`` made here is removed again when the run fails before writing them."""
    kinds = MODELS if cfg.model == "all" else (cfg.model,)
    seeds = parse_seeds(cfg.seeds)
    out, tag = Path(cfg.out), output_tag(cfg)
    if cfg.threads:
        torch.set_num_threads(cap_workers(cfg.threads, "--threads", log))
    # locked before the training and to its end
    names = (f"baselines_{tag}.csv", f"baselines_{tag}.json")
    with removed_if_unused(out), claim_results_dir(
            out, names, cfg.overwrite, "baseline results of this input", "baselines"), \
            together(*(out / n for n in names)):
        try:
            return _train_all(cfg, kinds, seeds, out, tag, log)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"no baseline results were written to {out} (they appear "
                                    "together when every model is trained); run the same "
                                    "command again, or fewer models with --model") from None


def _train_all(cfg: BaselineConfig, kinds, seeds, out: Path, tag: str, log) -> dict:
    train, test, frame = load_inputs(cfg)
    log(f"baselines trained on sweep(s) {cfg.train_sweeps}, tested on sweep 0, {cfg.encoder} "
        f"input {tuple(test[0].shape[1:])}: "
        f"{len(train[1])} train / {len(test[1])} test samples, models {', '.join(kinds)}, "
        f"seeds {seeds}")
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=len(kinds) * len(seeds) * cfg.epochs, desc="baselines", leave=False)
    rows, summary = [], {}
    for kind in kinds:
        accs = []
        for seed in seeds:
            r = train_baseline(kind, train, test, cfg, seed, frame, bar)
            rows.append({"model": kind, "encoder": cfg.encoder, "seed": seed, **r})
            accs.append(r["test_acc"])
            log(f"{kind} seed {seed}: test acc {r['test_acc']:.3f}, train acc "
                f"{r['train_acc']:.3f} ({r['seconds']:.0f} s)")
        summary[kind] = {"test_acc": accs, "mean": float(np.mean(accs)),
                         "std": float(np.std(accs)), "seeds": seeds}
    if bar is not None:
        bar.close()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["model", "encoder", "seed", "test_acc", "train_acc",
                                             "seconds"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), out / f"baselines_{tag}.csv")
    result = {"encoder": cfg.encoder, "input": "sweep 0", "train_sweeps": cfg.train_sweeps,
              "epochs": cfg.epochs, "lr": cfg.lr,
              "batch_size": cfg.batch_size, "hidden": cfg.hidden, "vote_tau": cfg.vote_tau,
              "spike_seed": cfg.spike_seed, "features": cfg.features,
              "data_dir": str(cfg.data_dir), "models": summary}
    atomic_write_json(result, out / f"baselines_{tag}.json")
    for kind, s in summary.items():
        log(f"{kind}: {s['mean']:.3f} +- {s['std']:.3f} over {len(seeds)} seeds")
    return result
