"""Model selection and the stall notice: which epoch ``best.pth`` holds, when to stop early,
and when to say that training has stopped learning.
"""
from __future__ import annotations

import math


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
