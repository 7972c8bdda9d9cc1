"""One epoch of training and one evaluation pass: the optimiser, the loss with its opt-in
regularisers, the constraint after every step, and the divergence check.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rsnn_bfd.config import TrainConfig
from rsnn_bfd.data.encoding import drive_with_sweeps, drop_whiskers
from rsnn_bfd.network.model import BarrelCortexRSNN
from rsnn_bfd.network.neuron import SURROGATE_SCALE, SURROGATE_SIGMA
from rsnn_bfd.network.readout import predict, readout_loss
from rsnn_bfd.training.batches import (batch_sweeps, iterate_batches, progress_bar, readout_keep,
                                       stack_batch, whisker_keep)
from rsnn_bfd.training.distributed import Dist, shard, shard_bounds, shard_state
from rsnn_bfd.training.frozen import FrozenRates


class TrainingDiverged(ValueError):
    """The loss, a gradient or a parameter became NaN or infinite; the run stopped (one-line
    message). ``lever``: what to change, for the run's final message."""

    def __init__(self, message: str, lever: str = "Try a smaller --lr"):
        super().__init__(message)
        self.lever = lever


def gradient_lever(model: BarrelCortexRSNN, first_step: bool = True) -> str:
    """What to change when the gradient itself is NaN or infinite while the loss is finite.
    The membrane gradient is multiplied by the surrogate's value at every step it passes
    through, so a pseudo-derivative taller than the published one can overflow over 550
    steps whatever the learning rate (``--surrogate-sigma 0.02`` at the published scale:
    peak 10). ``first_step``: no optimiser step was taken before, so the learning rate
    played no part."""
    c = model.config
    peak = c.surrogate_scale / (math.sqrt(2 * math.pi) * c.surrogate_sigma)
    published = SURROGATE_SCALE / (math.sqrt(2 * math.pi) * SURROGATE_SIGMA)
    lr = ("a smaller --lr does not help (no step had been taken)" if first_step
          else "or a smaller --lr")
    if peak > published * (1 + 1e-9):
        return (f"the surrogate's peak --surrogate-scale / (2.507 x --surrogate-sigma) is "
                f"{peak:.3g} (published {published:.2f}) and the gradient through the time steps "
                f"grows with it: lower --surrogate-scale (e.g. to --surrogate-sigma, peak 0.40); "
                f"{lr}")
    return f"the gradient overflowed: try --dtype float64 or a lower --surrogate-scale; {lr}"


def make_optimizer(model: BarrelCortexRSNN, cfg: TrainConfig):
    """Adam with param groups: tau_adp x lr_tau_adp_factor, tau_m x lr_tau_m_factor, rest x1
    (the published three); with ``lr_readout_factor`` or ``lr_recurrent_factor`` other than 1,
    two more groups after them: the readout, and the recurrent plus thalamocortical weights."""
    tau_adp = [model.tau_adp, model.thal_tau_adp]
    tau_m = [model.tau_m, model.thal_tau_m]
    extra = []
    if cfg.lr_readout_factor != 1 or cfg.lr_recurrent_factor != 1:
        extra = [{"params": list(model.readout.parameters()),
                  "lr": cfg.lr * cfg.lr_readout_factor},
                 {"params": [model.recurrent.weight, model.thalamocortical.weight],
                  "lr": cfg.lr * cfg.lr_recurrent_factor}]
    special = {id(p) for p in tau_adp + tau_m} | {id(p) for g in extra for p in g["params"]}
    rest = [p for p in model.parameters() if id(p) not in special]
    optimizer = torch.optim.Adam([
        {"params": rest, "lr": cfg.lr},
        {"params": tau_adp, "lr": cfg.lr * cfg.lr_tau_adp_factor},
        {"params": tau_m, "lr": cfg.lr * cfg.lr_tau_m_factor},
    ] + extra, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size,
                                                gamma=cfg.gamma)
    return optimizer, scheduler


# The settings make_optimizer reads: a resume that changes one applies it from its first step
SCHEDULE_SETTINGS = ("lr", "lr_tau_adp_factor", "lr_tau_m_factor", "lr_readout_factor",
                     "lr_recurrent_factor", "step_size", "gamma")


def restore_optimizer(model: BarrelCortexRSNN, cfg: TrainConfig, ckpt: dict):
    """Adam and StepLR for resuming from ``ckpt``: their stored state (moments, step counts,
    the schedule's position), with the learning rates and schedule of ``cfg``.

    Unchanged settings restore the stored state exactly (``--resume`` is exact). When one of
    ``SCHEDULE_SETTINGS`` differs from the run's stored value, every group's rate becomes
    ``cfg``'s base rate times the decay StepLR(``cfg.step_size``, ``cfg.gamma``) has reached
    by the stored epoch, and the schedule goes on from there. Returns ``(optimizer,
    scheduler, changed settings)``; ``ValueError`` when the optimiser's groups differ (a
    learning-rate factor switched on or off)."""
    optimizer, scheduler = make_optimizer(model, cfg)
    base = [g["lr"] for g in optimizer.param_groups]
    stored = ckpt.get("optimizer_state")
    if stored:
        if len(stored.get("param_groups", ())) != len(optimizer.param_groups):
            raise ValueError(
                f"the run was trained with {len(stored['param_groups'])} optimiser groups and "
                f"these settings make {len(optimizer.param_groups)} (--lr-readout-factor and "
                "--lr-recurrent-factor other than 1 add two): resume it with the factors it "
                "was started with, or start a new run with --out NEW_DIR")
        optimizer.load_state_dict(stored)
    if ckpt.get("scheduler_state"):
        scheduler.load_state_dict(ckpt["scheduler_state"])
    was = ckpt.get("train_config") or {}
    changed = [k for k in SCHEDULE_SETTINGS if k in was and was[k] != getattr(cfg, k)]
    if changed:
        scheduler.step_size, scheduler.gamma = cfg.step_size, cfg.gamma
        scheduler.base_lrs = base
        decay = cfg.gamma ** (scheduler.last_epoch // cfg.step_size)
        for group, lr in zip(optimizer.param_groups, base):
            group["initial_lr"], group["lr"] = lr, lr * decay
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    return optimizer, scheduler, changed


@torch.no_grad()
def evaluate(model: BarrelCortexRSNN, dataset, indices: list[int], batch_size: int, device,
             dist: Dist | None = None, progress: bool = False, workers: int = 0,
             desc: str = "test", loss_kind: str = "published",
             rates: FrozenRates | None = None) -> dict:
    """Accuracy, mean loss and mean cortical firing rate over ``indices``.

    ``eval()`` and ``no_grad``; every batch starts from the model's deterministic initial
    state. Under torchrun each rank evaluates its shard of every batch and the sums are
    all-reduced; with ``rates`` (a frozen network, one process) from its stored rates.
    Returns ``{"loss", "acc", "firing_rate", "n"}`` (firing rate in spikes per
    neuron per step).
    """
    dist = dist or Dist()
    was_training = model.training
    model.eval()
    global_batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    loss_sum = correct = spikes = spike_count = 0.0
    n = 0
    if rates is not None:    # a frozen network: the stored rates (rsnn_bfd.training.frozen)
        for gb in progress_bar(global_batches, len(global_batches), desc, progress):
            stored_rates, y, spike_sum, count = rates.batch(dataset, gb)
            out = rates.output(stored_rates)
            loss_sum += float(readout_loss(out, y, loss_kind, reduction="sum"))
            correct += float((predict(out, loss_kind) == y).sum())
            spikes, spike_count, n = spikes + spike_sum, spike_count + count, n + len(y)
        global_batches = []
    batches = [shard(b, dist) for b in global_batches]
    bar = progress_bar(iterate_batches(dataset, batches, workers), len(batches), desc,
                       progress and dist.main)
    for (x, y), gb in zip(bar, global_batches):
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


@dataclass(frozen=True)
class Regularisers:
    """The opt-in regularisers of a training step (all off by default: the published step).

    ``rate_reg`` x :func:`rate_penalty` (``rate_reg_of``: per sample or per neuron) is added
    to the loss; ``readout_dropout``: the readout neurons of a
    global batch are dropped with this probability (:func:`readout_keep`);
    ``readout_weight_decay``: decoupled decay of the readout weights after each step
    (:func:`decay_readout_`); ``grad_clip`` > 0: the gradient's global norm is clipped to it.
    """
    rate_reg: float = 0.0
    target_rate: float = 0.02
    readout_dropout: float = 0.0
    readout_weight_decay: float = 0.0
    grad_clip: float = 0.0
    rate_reg_of: str = "sample"

    @classmethod
    def of(cls, cfg: "TrainConfig") -> "Regularisers":
        return cls(cfg.rate_reg, cfg.target_rate, cfg.readout_dropout, cfg.readout_weight_decay,
                   cfg.grad_clip, cfg.rate_reg_of)


def rate_penalty(spikes: torch.Tensor, target: float, of: str = "sample") -> torch.Tensor:
    """The firing-rate penalty of a batch, scaled like the readout loss (a sum over samples,
    ``reduction="sum"``). ``of="sample"``: the sum over samples of (the sample's mean cortical
    rate - ``target``)^2. ``of="neuron"``: the batch size times the mean over neurons of (the
    neuron's mean rate over the batch and steps - ``target``)^2, which a silent neuron pays
    as much as a runaway one: the regulariser of LSNN and e-prop (Bellec et al. 2018, 2020),
    a mean instead of their sum over neurons so that its weight does not grow with 4218.

    spikes: (T, batch, 4218) with a gradient (every engine records them so)."""
    if of == "neuron":
        return ((spikes.mean(dim=(0, 1)) - target) ** 2).mean() * spikes.shape[1]
    return ((spikes.mean(dim=(0, 2)) - target) ** 2).sum()


@torch.no_grad()
def decay_readout_(model, decay: float, lr: float) -> None:
    """``--readout-weight-decay``: multiply both readout weights by ``1 - lr * decay``."""
    for layer in (model.readout[0], model.readout[1]):
        layer.weight.mul_(1 - lr * decay)


def train_one_epoch(ddp_model, model, optimizer, dataset, batches, device, dist: Dist,
                    progress: bool, workers: int, desc: str, loss_kind: str = "published",
                    whisker_dropout: float = 0.0, seed: int = 0, epoch: int = 0,
                    sweeps: tuple[int, ...] = (0,), reg: Regularisers = Regularisers(),
                    readout_only: bool = False, rates: FrozenRates | None = None) -> dict:
    """One pass over ``batches`` (lists of global indices). Returns mean loss and accuracy, and
    the largest gradient norm of its batches (``grad_norm``, for the stall notice,
    :class:`rsnn_bfd.training.selection.LearningStall`).

    Augmentations (off by default), drawn per global batch from ``seed`` and ``epoch``:
    ``sweeps`` other than ``(0,)`` drive the network with one of these sweeps per sample
    (:func:`batch_sweeps`, :func:`rsnn_bfd.data.encoding.drive_with_sweeps`);
    ``whisker_dropout`` > 0 silences whiskers (:func:`whisker_keep`,
    :func:`rsnn_bfd.data.encoding.drop_whiskers`).
    Regularisers (off by default): ``reg`` (:class:`Regularisers`).
    ``readout_only`` (``--readout-epochs``): the network runs without gradients and only the
    readout learns (:func:`_readout_only_forward`); with ``rates``
    (:class:`rsnn_bfd.training.frozen.FrozenRates`, where it applies) from stored rates.
    """
    model.train()
    loss_sum = correct = n = grad_norm = 0.0
    stored = readout_only and rates is not None     # the rates come from the store
    source = ([(None, None)] * len(batches) if stored else
              iterate_batches(dataset, [shard(b, dist) for b in batches], workers))
    bar = progress_bar(source, len(batches), desc, progress and dist.main)
    for k, ((x, y), batch) in enumerate(zip(bar, batches)):
        global_n = len(batch)
        dummy = x is None and not stored
        if stored:
            stored_rates, y, _, _ = rates.batch(dataset, batch)
        else:
            x, y, state = _batch_input(model, dataset, batch, x, y, dummy, dist, device, sweeps,
                                       whisker_dropout, seed, epoch, k)
        if reg.readout_dropout > 0:
            model.readout_keep = readout_keep(len(model.readout_index), reg.readout_dropout,
                                              seed, epoch, k).to(device, model.tau_m.dtype)
        try:
            if stored:
                out = rates.output(stored_rates)
            elif readout_only:
                out = _readout_only_forward(model, x, state)
            else:
                out = ddp_model(x, state=state, record_spikes=reg.rate_reg > 0)
        finally:
            model.readout_keep = None
        ce = readout_loss(out, y, loss_kind, reduction="sum")
        loss = ce * (dist.world / global_n)
        if reg.rate_reg > 0 and not readout_only:   # the rates cannot change: no gradient
            penalty = rate_penalty(out.spikes, reg.target_rate, reg.rate_reg_of)
            loss = loss + reg.rate_reg * penalty * (dist.world / global_n)
        if dummy:
            loss = loss * 0.0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if readout_only:
            dist.average_grads(model.readout.parameters())   # DDP's job, had DDP run it
        norm = _grad_norm(model)
        if not math.isfinite(norm) and math.isfinite(float(loss.detach())):
            # a finite loss with a non-finite gradient, before the step (the parameters are
            # still good): back-propagation overflowed, which no learning rate changes
            raise TrainingDiverged(f"the gradient became {norm} at batch {k + 1} of "
                                   f"{len(batches)} (batch loss "
                                   f"{float(ce.detach()) / max(len(y), 1):.4g})",
                                   gradient_lever(model, first_step=epoch == 0 and k == 0))
        grad_norm = max(grad_norm, norm)
        if reg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), reg.grad_clip)
        optimizer.step()
        if reg.readout_weight_decay > 0:
            decay_readout_(model, reg.readout_weight_decay, optimizer.param_groups[0]["lr"])
        trained = list(model.readout.parameters()) if readout_only else list(model.parameters())
        if not readout_only:         # the network's weights did not move
            model.constrain_()
        # after the step the parameters are the same on every rank, so all ranks stop together
        if not all(bool(torch.isfinite(p).all()) for p in trained):
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


def _batch_input(model, dataset, batch, x, y, dummy, dist, device, sweeps, whisker_dropout,
                 seed, epoch, k):
    """This rank's input of global batch ``k`` with its augmentations, labels and initial
    state (None: the model's own); a rank without a sample gets the batch's first (its
    loss is zeroed)."""
    global_n = len(batch)
    lo, hi = shard_bounds(global_n, dist)
    if dummy:  # this rank got no sample of a tiny last batch: contribute a zero gradient
        x, y = stack_batch(dataset, batch[:1], "cpu")
        lo, hi = 0, 1
    if tuple(sweeps) != (model.config.sweep,):
        x = drive_with_sweeps(x, batch_sweeps(global_n, sweeps, seed, epoch, k)[lo:hi],
                              model.config.sweep)
    if whisker_dropout > 0:
        x = drop_whiskers(x, whisker_keep(global_n, whisker_dropout, seed, epoch, k)[lo:hi])
    state = shard_state(model, global_n, lo, hi, device) if dist.world > 1 else None
    return x.to(device), y.to(device), state


def _readout_only_forward(model: BarrelCortexRSNN, x: torch.Tensor, state):
    """The network's spikes without gradients (no BPTT: the engines' inference path), then
    the readout with them: the gradient reaches the readout's parameters only."""
    with torch.no_grad():
        spikes = model(x, state=state, record_spikes=True).spikes
    return model.read_out(spikes[1:])


@torch.no_grad()
def _grad_norm(model) -> float:
    """The L2 norm of all parameter gradients (after DDP's averaging: the same on every rank)."""
    norms = [p.grad.detach().norm(dtype=torch.float64) for p in model.parameters()
             if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0
