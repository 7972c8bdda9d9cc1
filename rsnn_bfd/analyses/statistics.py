"""The analyses' statistics: arrays in, numbers out (no model, no files).

One-way ANOVA per neuron and the selectivity summary, class proportions and their ternary
coordinates, the CV of spike trains (binned and ISI), weighted degrees, min-max
normalisation, Pearson r, population rates, and the grid-value parser of the CV analysis.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import special, stats


def anova_oneway(counts, labels):
    """Vectorised one-way ANOVA of every column of ``counts`` across the groups in ``labels``.

    counts: (n_samples, n_neurons) spike counts; labels: (n_samples,) class of each sample.
    Returns ``(F, p)``, each (n_neurons,). Equal to ``scipy.stats.f_oneway`` per neuron, with
    two documented edge cases: a neuron with zero total variance (e.g. silent, or firing
    identically in every sample) has ``F = nan`` and ``p = 1`` (never selective); a neuron
    whose counts vary only between classes (zero within-class variance) has ``F = inf`` and
    ``p = 0``.
    """
    x = np.asarray(counts, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"counts has {x.shape[0]} samples but labels has {labels.shape[0]}")
    groups = np.unique(labels)
    k, n = len(groups), x.shape[0]
    if k < 2 or n <= k:
        raise ValueError(f"ANOVA needs at least 2 classes and more samples than classes; "
                         f"got {k} classes and {n} samples")
    grand = x.mean(0)
    ss_between = np.zeros(x.shape[1])
    ss_within = np.zeros(x.shape[1])
    for g in groups:
        xg = x[labels == g]
        mg = xg.mean(0)
        ss_between += len(xg) * (mg - grand) ** 2
        ss_within += ((xg - mg) ** 2).sum(0)
    ss_total = ss_between + ss_within
    df_b, df_w = k - 1, n - k
    scale = np.maximum(1.0, grand ** 2) * n
    flat = ss_total <= 1e-12 * scale                      # no variance at all
    only_between = ~flat & (ss_within <= 1e-12 * ss_total)
    with np.errstate(divide="ignore", invalid="ignore"):
        F = (ss_between / df_b) / (ss_within / df_w)
    F = np.where(flat, np.nan, np.where(only_between, np.inf, F))
    p = special.fdtrc(df_b, df_w, np.where(np.isfinite(F), F, 0.0))
    p = np.where(flat, 1.0, np.where(only_between, 0.0, p))
    return F, p


def class_proportions(counts, labels, n_classes: int = 3) -> np.ndarray:
    """(n_neurons, n_classes): each neuron's mean count per class, normalised to sum 1.

    Neurons that never fire get ``nan`` (their proportions are undefined).
    """
    x = np.asarray(counts, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    means = np.stack([x[labels == c].mean(0) if np.any(labels == c) else np.zeros(x.shape[1])
                      for c in range(n_classes)], axis=1)
    total = means.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, means / total, np.nan)


def ternary_xy(proportions) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric -> Cartesian: class 0 at (0, 0), class 1 at (1, 0), class 2 at the apex."""
    p = np.asarray(proportions, dtype=np.float64)
    return p[:, 1] + 0.5 * p[:, 2], (math.sqrt(3) / 2) * p[:, 2]


def _trains(spikes, time_axis: int) -> np.ndarray:
    s = np.asarray(spikes, dtype=np.float64)
    return np.moveaxis(s, time_axis, -1).reshape(-1, s.shape[time_axis])


def binned_cv(spikes, time_axis: int = 0, reduce: bool = True):
    """The published "CV": std / mean of each neuron's binned (0/1) spike train.

    spikes: array with time on ``time_axis`` (e.g. (T, batch, neurons)); every other index
    is one train. For a Bernoulli train of rate p it equals sqrt((1 - p) / p), so it mostly
    tracks the firing rate. std uses ddof = 0. Silent trains (mean 0) are undefined and left
    out of the average. Returns the mean over the remaining trains (``nan`` if none), or
    with ``reduce=False`` the per-train values (``nan`` for silent trains) in the shape of
    ``spikes`` without the time axis.
    """
    s = np.asarray(spikes)
    tr = _trains(s, time_axis)
    mean = tr.mean(1)
    std = tr.std(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.where(mean > 0, std / mean, np.nan)
    if not reduce:
        return cv.reshape(np.delete(s.shape, time_axis))
    return float(np.nanmean(cv)) if np.any(np.isfinite(cv)) else float("nan")


def isi_cv(spikes, time_axis: int = 0, reduce: bool = True, min_intervals: int = 2):
    """Inter-spike-interval CV, std(ISI) / mean(ISI) (ddof = 0), the usual irregularity.

    Trains with fewer than ``min_intervals`` intervals (default 2, i.e. fewer than 3 spikes)
    are undefined (``nan``) and left out of the average. A perfectly regular train has 0, a
    Poisson train about 1. Same shapes and return convention as :func:`binned_cv`.
    """
    s = np.asarray(spikes)
    tr = _trains(s, time_axis) > 0
    rows, cols = np.nonzero(tr)                     # row-major: times sorted within a row
    same = rows[1:] == rows[:-1]
    isi = np.diff(cols)[same].astype(np.float64)
    row = rows[1:][same]
    n_tr = tr.shape[0]
    cnt = np.bincount(row, minlength=n_tr)
    tot = np.bincount(row, weights=isi, minlength=n_tr)
    tot2 = np.bincount(row, weights=isi ** 2, minlength=n_tr)
    ok = cnt >= max(1, int(min_intervals))
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = tot / cnt
        var = np.maximum(tot2 / cnt - mu ** 2, 0.0)
        cv = np.where(ok, np.sqrt(var) / mu, np.nan)
    if not reduce:
        return cv.reshape(np.delete(s.shape, time_axis))
    return float(np.nanmean(cv)) if np.any(np.isfinite(cv)) else float("nan")


def weighted_degrees(W) -> tuple[np.ndarray, np.ndarray]:
    """(in_degree, out_degree) of a weight matrix indexed ``[post, pre]``.

    in-degree of a neuron = sum of the weights onto it (row sum); out-degree = sum of its
    outgoing weights (column sum). Both sum to ``W.sum()``.
    """
    W = W.detach().cpu().double().numpy() if torch.is_tensor(W) else np.asarray(W, np.float64)
    return W.sum(1), W.sum(0)


def summary_stats(x) -> dict:
    """mean, std (ddof 0), skewness (biased, scipy default), min and max of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # skew of a constant vector
        skew = float(stats.skew(x)) if x.size > 2 else float("nan")
    return dict(mean=float(x.mean()), std=float(x.std()), skewness=skew,
                min=float(x.min()), max=float(x.max()), n=int(x.size))


def minmax(x) -> np.ndarray:
    """(x - min) / (max - min); a constant vector maps to zeros."""
    x = np.asarray(x, dtype=np.float64)
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def pearson(x, y) -> tuple[float, float]:
    """Pearson correlation r and the two-sided p-value (t-test with n - 2 dof).

    Equal to ``scipy.stats.pearsonr``; ``(nan, nan)`` when either vector is constant.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 3:
        raise ValueError("pearson needs two 1-D vectors of equal length >= 3")
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    if den == 0:
        return float("nan"), float("nan")
    r = float(np.clip((dx * dy).sum() / den, -1.0, 1.0))
    dof = x.size - 2
    if abs(r) == 1.0:
        return r, 0.0
    t = r * math.sqrt(dof / (1 - r * r))
    return r, float(2 * stats.t.sf(abs(t), dof))


def selectivity_summary(p_values, anatomy, alpha: float = 0.001) -> dict:
    """Counts of selective neurons (p < alpha) in total, per population and per layer."""
    sel = np.asarray(p_values) < alpha
    per_pop = {p.name: dict(selective=int(sel[p.neurons].sum()), total=p.size,
                            fraction=float(sel[p.neurons].mean()))
               for p in anatomy.populations}
    layers = list(dict.fromkeys(p.layer for p in anatomy.populations))
    per_layer = {}
    for layer in layers:
        idx = anatomy.layer_neurons(layer)
        per_layer[layer] = dict(selective=int(sel[idx].sum()), total=int(idx.size),
                                fraction=float(sel[idx].mean()))
    return dict(selective=int(sel.sum()), total=int(sel.size), fraction=float(sel.mean()),
                per_population=per_pop, per_layer=per_layer)


def group_rates(spikes, anatomy) -> dict:
    """Population rate over time (mean spikes per neuron per step) of L4/L2/3 x E/I.

    spikes: (T, 4218) of one sample.
    """
    s = np.asarray(spikes, dtype=np.float64)
    return {k: s[:, idx].mean(1) for k, idx in _groups(anatomy).items()}


def parse_floats(text) -> list[float]:
    """"0.01,0.02" or "0.01:0.04:4" (start:stop:count, inclusive) -> list of floats."""
    if isinstance(text, (list, tuple)):
        return [float(v) for v in text]
    text = str(text).strip()
    if ":" in text:
        a, b, n = text.split(":")
        return [float(v) for v in np.linspace(float(a), float(b), int(n))]
    return [float(v) for v in text.split(",") if v.strip()]


def _kde(values, grid):
    v = np.asarray(values, dtype=np.float64)
    if v.size >= 2 and v.std() > 1e-9:
        try:
            return stats.gaussian_kde(v)(grid)
        except (np.linalg.LinAlgError, ValueError):
            pass
    bw = max(1e-3, 0.02 * (grid[-1] - grid[0]))       # degenerate: narrow bumps
    return np.exp(-0.5 * ((grid[:, None] - v[None]) / bw) ** 2).sum(1)


def _groups(anatomy):
    """The four layer/type groups in anatomy order: {"L4 E": indices, ...}."""
    out = {}
    for p in anatomy.populations:
        key = f"{p.layer} {p.type}"
        if key not in out:
            out[key] = anatomy.layer_neurons(p.layer, p.type)
    return out
