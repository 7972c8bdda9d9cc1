"""The readout's training loss and decision: how the logits of the readout at t = 1..T-1,
``RSNNOutput.logits`` (T-1, batch, 3), become a loss and a predicted class.

    published      ``cross_entropy(output / T, label)`` with ``output = sum_t softmax(logits_t)``
                   (the published scripts); predicts ``argmax output``, a vote of the steps.
    log-mean-prob  ``-log(mean_t softmax(logits_t)[label])``, the likelihood of the same vote;
                   predicts ``argmax output``.
    mean-logit     ``cross_entropy(mean_t logits_t, label)``; predicts ``argmax mean_t logits_t``.
                   The readout has no nonlinearity, so the mean logits are the readout of
                   each excitatory neuron's firing rate over the sweep: evidence is summed
                   over the sweep before the softmax instead of voted step by step.

Why the published loss starves the gradient: its "logits" ``output / T`` are mean
probabilities in [0, 1], so it cannot fall below -log(e / (e + 2)) = 0.551, and a sample
whose per-step softmax has saturated on a wrong class gets no gradient (the softmax Jacobian
vanishes there); docs/RESULTS.md has the measurements.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("published", "log-mean-prob", "mean-logit")


def _check(kind: str) -> None:
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def mean_logits(result) -> torch.Tensor:
    """(batch, 3) readout logits averaged over t = 1..T-1 (zeros when T = 1)."""
    logits = result.logits
    return logits.sum(0) / max(logits.shape[0], 1)


def class_scores(result, kind: str | None = None) -> torch.Tensor:
    """(batch, 3) scores whose argmax is the prediction of a network trained with ``kind``
    (None: the rule of the network that gave ``result``, its ``decision``)."""
    kind = kind or getattr(result, "decision", "published")
    _check(kind)
    return mean_logits(result) if kind == "mean-logit" else result.output


def predict(result, kind: str | None = None) -> torch.Tensor:
    """(batch,) predicted classes of a network trained with loss ``kind`` (None: the rule of
    the network that gave ``result``: a loaded checkpoint decides as its run did)."""
    return class_scores(result, kind).argmax(1)


def readout_loss(result, labels: torch.Tensor, kind: str = "published",
                 reduction: str = "mean") -> torch.Tensor:
    """The training loss ``kind`` of an ``RSNNOutput`` (``output`` and ``logits``) against
    ``labels`` (batch,)."""
    _check(kind)
    n_steps = result.logits.shape[0] + 1                 # T: the published divisor
    if kind == "published":
        return F.cross_entropy(result.output / n_steps, labels, reduction=reduction)
    if kind == "log-mean-prob":
        mean_prob = result.output / max(n_steps - 1, 1)
        log_prob = torch.log(mean_prob.clamp_min(torch.finfo(mean_prob.dtype).tiny))
        return F.nll_loss(log_prob, labels, reduction=reduction)
    return F.cross_entropy(mean_logits(result), labels, reduction=reduction)
