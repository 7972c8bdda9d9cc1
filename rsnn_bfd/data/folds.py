"""Stratified splits of a labelled set of objects: k folds, and a held-out part.

    folds = stratified_folds(labels, k=5, seed=0)          # k disjoint lists covering 0..N-1
    keep, held = stratified_holdout(labels, 0.2, seed=0)   # e.g. training and validation

Both deal each class's objects, in an order drawn from their own ``torch.Generator``
(never the global RNG), so every part holds the classes in the proportions of the whole
(to within one object per class) and the same ``seed`` gives the same split on any machine.
Used by training (``--val-fraction``: a validation split of the training set) and by
``crossval.py`` (the folds, and each fold's validation split of its training folds).
"""
from __future__ import annotations

import torch

from rsnn_bfd.common import make_generator


def _labels(labels) -> torch.Tensor:
    y = torch.as_tensor(labels).reshape(-1).long()
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, got {int(y.min())}")
    return y


def _class_orders(y: torch.Tensor, seed: int) -> list[list[int]]:
    """Per class (in increasing class order): its positions in ``y`` in a seeded order."""
    g = make_generator(seed)
    orders = []
    for c in torch.unique(y).tolist():
        pos = torch.nonzero(y == c).flatten()
        orders.append(pos[torch.randperm(len(pos), generator=g)].tolist())
    return orders


def stratified_folds(labels, k: int, seed: int = 0) -> list[list[int]]:
    """``k`` disjoint folds of the positions ``0..N-1`` of ``labels`` (N,), each sorted.

    Each class's objects are shuffled (``seed``) and dealt to the folds in turn, the dealing
    continuing from class to class, so fold sizes differ by at most one and each class's
    counts in two folds by at most one. Every position lies in exactly one fold.
    """
    y = _labels(labels)
    if k < 2:
        raise ValueError(f"the number of folds must be >= 2, got {k}")
    if k > len(y):
        raise ValueError(f"{k} folds need at least {k} objects, got {len(y)}")
    folds: list[list[int]] = [[] for _ in range(k)]
    turn = 0
    for order in _class_orders(y, seed):
        for pos in order:
            folds[turn % k].append(pos)
            turn += 1
    return [sorted(f) for f in folds]


def stratified_holdout(labels, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split the positions of ``labels`` (N,) into ``(kept, held)``, both sorted.

    ``held`` takes ``round(fraction * n_c)`` objects of each class c (at least one of a class
    with two or more objects, and never all of a class), drawn with ``seed``. Raises
    ``ValueError`` when ``fraction`` is not in (0, 1) or nothing would be kept or held.
    """
    y = _labels(labels)
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    kept, held = [], []
    for order in _class_orders(y, seed):
        n = len(order)
        m = min(max(int(round(fraction * n)), 1 if n >= 2 else 0), n - 1)
        held += order[:m]
        kept += order[m:]
    if not held or not kept:
        raise ValueError(f"a held-out fraction of {fraction} of {len(y)} objects leaves "
                         f"{len(kept)} to keep and {len(held)} to hold out; use more objects "
                         "or another fraction")
    return sorted(kept), sorted(held)


def check_partition(folds, n: int) -> None:
    """Raise ``ValueError`` unless ``folds`` are disjoint and cover ``0..n-1`` exactly once."""
    seen = [i for f in folds for i in f]
    if sorted(seen) != list(range(n)):
        dup = len(seen) - len(set(seen))
        raise ValueError(f"the folds do not partition the {n} objects ({len(seen)} entries, "
                         f"{dup} repeated, {n - len(set(seen) & set(range(n)))} missing)")
