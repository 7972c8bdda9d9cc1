"""The paper's analyses of a trained barrel-cortex RSNN, as functions and as a command.

    python utils.py --checkpoint RUN/best.pth --out FIGDIR [--data-dir data]
                    [--analysis all|anova|raster|dynamics|degree|cv]

Every analysis writes PNG figures plus the numbers behind them (CSV / JSON) into ``--out``:

==========  ==================================================================================
anova       firing selectivity: one-way ANOVA of each neuron's spike counts across the three
            classes, trained vs. untrained network (same seed); triangular plot + counts per
            population and layer (``anova_selectivity.png/.json``, ``anova_neurons.csv``)
raster      raster of all neurons for one sample and the L4/L2/3 E/I population rates
            (``raster.png``, ``raster_rates.csv``, ``raster.json``)
dynamics    kernel densities of tau_m / tau_adp per population, trained vs. initial
            (``dynamics_tau.png/.csv``); the "dynamic gradient": firing rate of every subtype
            under constant input current against the reference rates, with Pearson r
            (``dynamics_constant_input.png/.csv/.json``)
degree      weighted in/out-degree distributions of the effective recurrent weights, initial
            vs. trained (``degree_distributions.png``, ``degree.csv``, ``degree.json``)
cv          binned-train CV and ISI CV of untrained networks over an init_w x init_b grid
            (``cv_grid.png``, ``cv_grid.csv``)
==========  ==================================================================================

Each analysis is a pure computation (arrays in, numbers out: :func:`anova_oneway`,
:func:`class_proportions`, :func:`binned_cv`, :func:`isi_cv`, :func:`weighted_degrees`,
:func:`constant_input_rates`, :func:`minmax`, :func:`pearson`) plus a function that plots and
writes (``plot_*`` / ``run_*``). All neuron index ranges come from :mod:`anatomy`.
Files are written atomically (:func:`common.atomic_path`).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import special, stats  # noqa: E402
from tqdm import tqdm  # noqa: E402

import neuron  # noqa: E402  (the single neuron update: neuron.alif_step)
import cli  # noqa: E402
from cli import flag  # noqa: E402
from common import atomic_path, check_writable_dir, select_device  # noqa: E402
from model import ModelConfig, build_model  # noqa: E402

ANALYSES = ("anova", "raster", "dynamics", "degree", "cv")
CLASS_NAMES_DEFAULT = ("helmet", "box", "plane")
E_COLOR, I_COLOR = "#d62728", "#1f77b4"     # excitatory red, inhibitory blue
INIT_COLOR = "0.45"
DPI = 100


def class_names() -> tuple:
    try:
        from whisker_dataset import CLASS_NAMES
        return tuple(CLASS_NAMES)
    except ImportError:  # pragma: no cover - the dataset module ships with the project
        return CLASS_NAMES_DEFAULT


# ============================================================================ pure numbers
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


@torch.no_grad()
def constant_input_rates(model, steps: int = 550, current: float = 1.0):
    """The "dynamic gradient": every cortical neuron driven by a constant current, alone.

    Each neuron is simulated in isolation (no recurrent or thalamic input) with the model's
    own neuron update (:func:`neuron.alif_step`), its own trained ``tau_m`` / ``tau_adp``,
    and the model's ``init_b`` and ``beta``, from rest (membrane 0, no previous spike,
    adaptation at b0), for ``steps`` steps of input ``current``.
    Returns ``(neuron_rates (n,), population_rates (13,))`` in spikes per step; a population's
    rate is the mean over its neurons (populations from ``model.anatomy``).
    """
    cfg = model.config
    tau_m = model.tau_m.detach().cpu().double()
    tau_adp = model.tau_adp.detach().cpu().double()
    n = tau_m.numel()
    inp = torch.full((1, n), float(current), dtype=torch.float64)
    state = neuron.ALIFState(torch.zeros(1, n, dtype=torch.float64),
                             torch.zeros(1, n, dtype=torch.float64), cfg.init_b)
    count = torch.zeros(n, dtype=torch.float64)
    for _ in range(int(steps)):
        state = neuron.alif_step(inp, state, tau_m, tau_adp, cfg.init_b, cfg.beta)
        count += state.spike[0]
    rates = (count / max(1, int(steps))).numpy()
    pops = np.array([rates[p.neurons].mean() for p in model.anatomy.populations])
    return rates, pops


# ============================================================================ running the model
def balanced_indices(labels, max_samples: Optional[int] = None) -> np.ndarray:
    """Indices of up to ``max_samples`` samples, taken round-robin over the classes.

    Deterministic (dataset order within a class); all samples when ``max_samples`` is None.
    """
    labels = np.asarray(labels).reshape(-1)
    if max_samples is None or max_samples >= len(labels):
        return np.arange(len(labels))
    per = [list(np.nonzero(labels == c)[0]) for c in np.unique(labels)]
    out = []
    while len(out) < max_samples:
        for idx in per:
            if idx and len(out) < max_samples:
                out.append(idx.pop(0))
    return np.sort(np.array(out, dtype=np.int64))


def dataset_labels(dataset) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    return np.asarray(labels.cpu() if torch.is_tensor(labels) else labels).astype(np.int64)


@torch.no_grad()
def record_spikes(model, dataset, batch_size: int = 16, device="cpu",
                  max_samples: Optional[int] = None, indices=None, keep_trains: bool = False,
                  engine: Optional[str] = None, progress: bool = True):
    """Run ``model`` on samples of ``dataset`` (no gradients) and collect their spikes.

    Returns a dict: ``counts`` (n, 4218) spike counts over all time steps, ``labels`` (n,),
    ``indices`` (n,) dataset indices, and with ``keep_trains`` also ``trains`` (n, T, 4218)
    uint8. Samples: ``indices`` if given, else up to ``max_samples`` class-balanced ones.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    labels_all = dataset_labels(dataset)
    idx = (np.asarray(indices, dtype=np.int64) if indices is not None
           else balanced_indices(labels_all, max_samples))
    engine = engine or model.config.engine
    dtype = model.tau_m.dtype
    counts, trains = [], []
    batches = [idx[i:i + batch_size] for i in range(0, len(idx), max(1, batch_size))]
    for b in tqdm(batches, desc="recording spikes", disable=not progress, leave=False):
        x = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in b]).to(device, dtype)
        out = model(x, record_spikes=True, engine=engine)
        s = out.spikes                                         # (T, B, N)
        counts.append(s.sum(0).cpu().double().numpy())
        if keep_trains:
            trains.append(s.permute(1, 0, 2).to(torch.uint8).cpu().numpy())
    res = dict(counts=np.concatenate(counts) if counts else np.zeros((0, model.n_neurons)),
               labels=labels_all[idx], indices=idx)
    if keep_trains:
        res["trains"] = np.concatenate(trains)
    return res


class _Concat(torch.utils.data.Dataset):
    """Train and test sets as one dataset with a ``labels`` attribute."""

    def __init__(self, *parts):
        self.parts = parts
        self.labels = torch.cat([torch.as_tensor(dataset_labels(p)) for p in parts])
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self):
        return int(self.starts[-1])

    def __getitem__(self, i):
        j = int(np.searchsorted(self.starts, i, side="right") - 1)
        return self.parts[j][int(i - self.starts[j])]


def untrained_like(model):
    """The network at initialisation: same config (and seed) as ``model``, same dtype/device."""
    cfg = ModelConfig(**model.config.to_dict())
    return build_model(cfg, device=model.tau_m.device, dtype=model.tau_m.dtype).eval()


# ============================================================================ writing
def _save_fig(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path


def write_csv(path, header, rows) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_fmt(v) for v in r])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return Path(path)


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return v


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_json(obj, path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    return Path(path)


def _blocks(anatomy):
    """Contiguous runs of populations with the same (layer, type): [(label, start, stop, type)]."""
    out = []
    for p in anatomy.populations:
        label = f"{p.layer} {p.type}"
        if out and out[-1][0] == label and out[-1][2] == p.offset:
            out[-1] = (label, out[-1][1], p.offset + p.size, p.type)
        else:
            out.append((label, p.offset, p.offset + p.size, p.type))
    return out


def _layer_boundaries(anatomy) -> list[tuple[int, str, str]]:
    """[(index, layer below, layer above)] where the layer changes along the neuron index."""
    pops = anatomy.populations
    return [(pops[i].offset, pops[i - 1].layer, pops[i].layer)
            for i in range(1, len(pops)) if pops[i].layer != pops[i - 1].layer]


def _groups(anatomy):
    """The four layer/type groups in anatomy order: {"L4 E": indices, ...}."""
    out = {}
    for p in anatomy.populations:
        key = f"{p.layer} {p.type}"
        if key not in out:
            out[key] = anatomy.layer_neurons(p.layer, p.type)
    return out


# ============================================================================ 1. selectivity
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


def plot_ternary(ax, proportions, selective, title, names):
    h = math.sqrt(3) / 2
    ax.plot([0, 1, 0.5, 0], [0, 0, h, 0], color="k", lw=1)
    for f in (0.25, 0.5, 0.75):          # guide lines of constant proportion
        for a, b in (((f, 0), (f / 2, f * h)), ((1 - f, 0), (1 - f / 2, f * h)),
                     ((f / 2, f * h), (1 - f / 2, f * h))):
            ax.plot([a[0], b[0]], [a[1], b[1]], color="0.85", lw=0.6, zorder=0)
    ok = np.all(np.isfinite(proportions), axis=1)
    x, y = ternary_xy(np.nan_to_num(proportions))
    rest = ok & ~selective
    sel = ok & selective
    ax.scatter(x[rest], y[rest], s=6, color="0.6", alpha=0.5, lw=0,
               label=f"not selective ({int(rest.sum())})")
    ax.scatter(x[sel], y[sel], s=9, color="#e6550d", alpha=0.8, lw=0,
               label=f"selective, p < alpha ({int(sel.sum())})")
    ax.text(-0.03, -0.03, names[0], ha="right", va="top", fontsize=10)
    ax.text(1.03, -0.03, names[1], ha="left", va="top", fontsize=10)
    ax.text(0.5, h + 0.03, names[2], ha="center", va="bottom", fontsize=10)
    ax.set_xlim(-0.22, 1.22)
    ax.set_ylim(-0.2, h + 0.14)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    n_silent = int((~ok).sum())
    ax.legend(loc="upper left", fontsize=7, frameon=False, markerscale=2.5,
              title=f"silent, not shown: {n_silent}", title_fontsize=7)


def run_anova(model, dataset, out, alpha: float = 0.001, batch_size: int = 16, device="cpu",
              max_samples: Optional[int] = None, engine: Optional[str] = None,
              initial_model=None, progress: bool = True) -> dict:
    """Selectivity of the trained and the untrained network (same seed) on ``dataset``."""
    out = Path(out)
    names = class_names()
    anatomy = model.anatomy
    initial_model = initial_model if initial_model is not None else untrained_like(model)
    results = {}
    for key, net in (("untrained", initial_model), ("trained", model)):
        rec = record_spikes(net, dataset, batch_size, device, max_samples, engine=engine,
                            progress=progress)
        F, p = anova_oneway(rec["counts"], rec["labels"])
        results[key] = dict(F=F, p=p, props=class_proportions(rec["counts"], rec["labels"],
                                                              len(names)),
                            summary=selectivity_summary(p, anatomy, alpha),
                            n_samples=len(rec["labels"]),
                            mean_rate=float(rec["counts"].mean()))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    for ax, key in zip(axes, ("untrained", "trained")):
        r = results[key]
        s = r["summary"]
        plot_ternary(ax, r["props"], r["p"] < alpha,
                     f"{key}: {s['selective']} / {s['total']} selective "
                     f"({100 * s['fraction']:.1f} %)", names)
    fig.suptitle(f"Firing selectivity (one-way ANOVA across classes, p < {alpha:g}; "
                 f"{results['trained']['n_samples']} samples)\nposition = share of a neuron's "
                 "mean spike count in each class", fontsize=10)
    fig.tight_layout()
    files = [_save_fig(fig, out / "anova_selectivity.png")]
    summary = dict(alpha=alpha, classes=list(names),
                   n_samples=results["trained"]["n_samples"],
                   note="p = 1 for neurons with zero variance of their counts (e.g. silent)",
                   **{k: dict(v["summary"], mean_count_per_neuron=v["mean_rate"])
                      for k, v in results.items()})
    files.append(write_json(summary, out / "anova_selectivity.json"))
    pop = anatomy.population_of_neuron
    rows = []
    for j in range(anatomy.n_neurons):
        pp = anatomy.populations[pop[j]]
        row = [j, pp.name, pp.layer, pp.type]
        for key in ("trained", "untrained"):
            r = results[key]
            row += [r["F"][j], r["p"][j], int(r["p"][j] < alpha), *r["props"][j]]
        rows.append(row)
    header = ["neuron", "population", "layer", "type"]
    for key in ("trained", "untrained"):
        header += [f"F_{key}", f"p_{key}", f"selective_{key}",
                   *[f"prop_{c}_{key}" for c in names]]
    files.append(write_csv(out / "anova_neurons.csv", header, rows))
    return dict(summary=summary, files=files, results=results)


# ============================================================================ 2. raster
def group_rates(spikes, anatomy) -> dict:
    """Population rate over time (mean spikes per neuron per step) of L4/L2/3 x E/I.

    spikes: (T, 4218) of one sample.
    """
    s = np.asarray(spikes, dtype=np.float64)
    return {k: s[:, idx].mean(1) for k, idx in _groups(anatomy).items()}


def plot_raster(spikes, anatomy, title="", sample_info=""):
    s = np.asarray(spikes)
    T = s.shape[0]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True,
                                  gridspec_kw=dict(height_ratios=[3, 1.2]))
    t, j = np.nonzero(s)
    exc = anatomy.pre_sign[j] > 0
    ms = max(0.3, min(2.0, 300.0 / max(T, 1)))
    ax.scatter(t[exc], j[exc], s=ms, marker="|", color=E_COLOR, lw=0.5, label="excitatory",
               rasterized=True)
    ax.scatter(t[~exc], j[~exc], s=ms, marker="|", color=I_COLOR, lw=0.5, label="inhibitory",
               rasterized=True)
    for b, below, above in _layer_boundaries(anatomy):
        ax.axhline(b - 0.5, color="k", lw=1.2, ls="--")
        ax.text(1.005, b, f"{above}\n{below}", transform=ax.get_yaxis_transform(),
                va="center", ha="left", fontsize=8)
    for label, lo, hi, _ in _blocks(anatomy)[1:]:
        ax.axhline(lo - 0.5, color="0.7", lw=0.5)
    blocks = _blocks(anatomy)
    ax.set_yticks([(lo + hi) / 2 for _, lo, hi, _ in blocks])
    ax.set_yticklabels([lab for lab, *_ in blocks])
    ax.set_ylim(-0.5, anatomy.n_neurons - 0.5)
    ax.set_ylabel("neurons (by population)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8, markerscale=4, framealpha=0.9)
    rates = group_rates(s, anatomy)
    styles = {"E": "-", "I": "--"}
    colors = {}
    for k in rates:
        layer, typ = k.split()
        base = E_COLOR if typ == "E" else I_COLOR
        colors[k] = base if layer == anatomy.populations[0].layer else (
            "#8c1a1a" if typ == "E" else "#0b3d66")
        ax2.plot(np.arange(T), rates[k], styles[typ], color=colors[k], lw=1.1, label=k)
    ax2.set_xlabel("time step")
    ax2.set_ylabel("rate (spikes / neuron / step)")
    ax2.legend(loc="upper right", fontsize=8, ncol=4, framealpha=0.9)
    ax2.set_xlim(-0.5, T - 0.5)
    if sample_info:
        ax2.set_title(sample_info, fontsize=9)
    fig.tight_layout()
    return fig, rates


def run_raster(model, dataset, out, sample: int = 0, device="cpu", engine=None,
               progress: bool = True) -> dict:
    out = Path(out)
    if not 0 <= sample < len(dataset):
        raise ValueError(f"--sample {sample} is not in the test set (0..{len(dataset) - 1})")
    rec = record_spikes(model, dataset, 1, device, indices=[sample], keep_trains=True,
                        engine=engine, progress=progress)
    spikes = rec["trains"][0]
    label = int(rec["labels"][0])
    names = class_names()
    fig, rates = plot_raster(spikes, model.anatomy,
                             title=f"Spike raster, sample {sample} (class: {names[label]})",
                             sample_info="population firing rate")
    files = [_save_fig(fig, out / "raster.png")]
    keys = list(rates)
    files.append(write_csv(out / "raster_rates.csv", ["t", *keys],
                           [[t, *[rates[k][t] for k in keys]] for t in range(spikes.shape[0])]))
    info = dict(sample=sample, label=label, class_name=names[label], n_steps=spikes.shape[0],
                mean_rate={k: float(v.mean()) for k, v in rates.items()},
                layer_boundaries=[b for b, *_ in _layer_boundaries(model.anatomy)])
    files.append(write_json(info, out / "raster.json"))
    return dict(info=info, files=files, rates=rates, spikes=spikes)


# ============================================================================ 3. dynamics
def _kde(values, grid):
    v = np.asarray(values, dtype=np.float64)
    if v.size >= 2 and v.std() > 1e-9:
        try:
            return stats.gaussian_kde(v)(grid)
        except (np.linalg.LinAlgError, ValueError):
            pass
    bw = max(1e-3, 0.02 * (grid[-1] - grid[0]))       # degenerate: narrow bumps
    return np.exp(-0.5 * ((grid[:, None] - v[None]) / bw) ** 2).sum(1)


def plot_tau_kde(trained: dict, initial: dict, anatomy):
    """Ridge plot: per population (rows) the KDE of tau_m and tau_adp (columns)."""
    pops = anatomy.populations
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.42 * len(pops) + 1.8), sharey=True)
    for ax, name, sym in zip(axes, ("tau_m", "tau_adp"), (r"$\tau_m$", r"$\tau_{adp}$")):
        allv = np.concatenate([trained[name], initial[name]])
        lo, hi = allv.min(), allv.max()
        pad = 0.08 * (hi - lo) + 1e-3
        grid = np.linspace(lo - pad, hi + pad, 400)
        for i, p in enumerate(pops):
            y0 = len(pops) - 1 - i
            col = E_COLOR if p.excitatory else I_COLOR
            d_tr = _kde(trained[name][p.neurons], grid)
            d_in = _kde(initial[name][p.neurons], grid)
            scale = 0.9 / max(d_tr.max(), d_in.max(), 1e-12)
            ax.fill_between(grid, y0, y0 + d_tr * scale, color=col, alpha=0.45, lw=0)
            ax.plot(grid, y0 + d_tr * scale, color=col, lw=1)
            ax.plot(grid, y0 + d_in * scale, color="k", lw=1.1, ls=(0, (3, 2)), zorder=3)
        ax.set_xlabel(f"{sym} (time steps)")
        ax.set_title(f"{sym}: trained (filled) vs initial (dashed)", fontsize=10)
        ax.set_xlim(grid[0], grid[-1])
    axes[0].set_yticks([len(pops) - 1 - i + 0.3 for i in range(len(pops))])
    axes[0].set_yticklabels([f"{p.layer} {p.name}" for p in pops], fontsize=8)
    axes[0].set_ylim(-0.2, len(pops) + 0.1)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Patch(color=E_COLOR, alpha=0.5, label="trained, excitatory"),
               Patch(color=I_COLOR, alpha=0.5, label="trained, inhibitory"),
               Line2D([], [], color="k", ls=(0, (3, 2)), label="initial")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Membrane and adaptation time constants per population "
                 "(densities scaled to their peak)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def plot_constant_input(anatomy, reference, trained, initial, r_tr, r_in, steps, current):
    names = [p.name for p in anatomy.populations]
    x = np.arange(len(names))
    ref_n, tr_n = minmax(reference), minmax(trained)
    fig, ax = plt.subplots(figsize=(10, 4.6))
    w = 0.27
    ax.bar(x - w, ref_n, w, color="0.55", label="reference rate (Izhikevich subtypes)")
    ax.bar(x, tr_n, w, color="#e6550d", label=f"trained model: r = {r_tr[0]:.2f}, "
                                              f"p = {r_tr[1]:.2g}")
    if initial is not None:
        ax.bar(x + w, minmax(initial), w, color="#9ecae1",
               label=f"initial model: r = {r_in[0]:.2f}, p = {r_in[1]:.2g}")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{p.layer} {n}" for n, p in zip(names, anatomy.populations)],
                       rotation=35, ha="right", fontsize=8, rotation_mode="anchor")
    ax.set_ylabel("firing rate (min-max normalised)")
    ax.set_ylim(0, 1.22)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.legend(loc="upper center", fontsize=8, ncol=3, framealpha=0.9)
    ax.set_title(f"Dynamic gradient: rate of each subtype under constant input "
                 f"{current:g} for {steps} steps, isolated neurons\n"
                 f"Pearson r of trained vs reference = {r_tr[0]:.3f} (p = {r_tr[1]:.3g})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def run_dynamics(model, out, initial_model=None, steps: int = 550, current: float = 1.0) -> dict:
    out = Path(out)
    anatomy = model.anatomy
    initial_model = initial_model if initial_model is not None else untrained_like(model)
    tr = {k: getattr(model, k).detach().cpu().double().numpy() for k in ("tau_m", "tau_adp")}
    ini = {k: getattr(initial_model, k).detach().cpu().double().numpy()
           for k in ("tau_m", "tau_adp")}
    files = [_save_fig(plot_tau_kde(tr, ini, anatomy), out / "dynamics_tau.png")]
    pop = anatomy.population_of_neuron
    files.append(write_csv(out / "dynamics_tau.csv",
                           ["neuron", "population", "tau_m_initial", "tau_m_trained",
                            "tau_adp_initial", "tau_adp_trained"],
                           [[j, anatomy.populations[pop[j]].name, ini["tau_m"][j],
                             tr["tau_m"][j], ini["tau_adp"][j], tr["tau_adp"][j]]
                            for j in range(anatomy.n_neurons)]))
    _, rate_tr = constant_input_rates(model, steps, current)
    _, rate_in = constant_input_rates(initial_model, steps, current)
    ref = np.array([p.reference_rate for p in anatomy.populations])
    r_tr = pearson(minmax(rate_tr), minmax(ref))
    r_in = pearson(minmax(rate_in), minmax(ref))
    files.append(_save_fig(plot_constant_input(anatomy, ref, rate_tr, rate_in, r_tr, r_in,
                                               steps, current),
                           out / "dynamics_constant_input.png"))
    rows = [[p.name, p.layer, p.type, ref[i], rate_tr[i], rate_in[i], minmax(ref)[i],
             minmax(rate_tr)[i], minmax(rate_in)[i]] for i, p in enumerate(anatomy.populations)]
    files.append(write_csv(out / "dynamics_constant_input.csv",
                           ["population", "layer", "type", "reference_rate", "rate_trained",
                            "rate_initial", "reference_minmax", "trained_minmax",
                            "initial_minmax"], rows))
    summary = dict(steps=steps, current=current,
                   pearson_trained=dict(r=r_tr[0], p=r_tr[1]),
                   pearson_initial=dict(r=r_in[0], p=r_in[1]),
                   note="each neuron alone (no recurrent/thalamic input), from rest, "
                        "neuron.alif_step with its own tau_m/tau_adp; rates in spikes/step")
    files.append(write_json(summary, out / "dynamics_constant_input.json"))
    return dict(summary=summary, files=files, rates_trained=rate_tr, rates_initial=rate_in)


# ============================================================================ 4. degrees
@torch.no_grad()
def model_degrees(model) -> tuple[np.ndarray, np.ndarray]:
    """Weighted (in, out) degrees of the effective signed recurrent weights of ``model``."""
    return weighted_degrees(model.signed_recurrent_weight())


def run_degree(model, out, initial_model=None) -> dict:
    out = Path(out)
    anatomy = model.anatomy
    initial_model = initial_model if initial_model is not None else untrained_like(model)
    deg = {"initial": model_degrees(initial_model), "trained": model_degrees(model)}
    stats_ = {k: {"in_degree": summary_stats(v[0]), "out_degree": summary_stats(v[1]),
                  "weight_sum": float(v[0].sum())} for k, v in deg.items()}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, d, name in zip(axes, (0, 1), ("in-degree", "out-degree")):
        allv = np.concatenate([deg["initial"][d], deg["trained"][d]])
        bins = np.linspace(allv.min(), allv.max(), 60) if np.ptp(allv) > 0 else 10
        for key, col in (("initial", INIT_COLOR), ("trained", "#e6550d")):
            v = deg[key][d]
            st = stats_[key][name.replace("-", "_")]
            ax.hist(v, bins=bins, histtype="stepfilled" if key == "initial" else "step",
                    color=col, alpha=0.45 if key == "initial" else 1, lw=1.4,
                    label=f"{key}: mean {st['mean']:.2f}, std {st['std']:.2f}, "
                          f"skew {st['skewness']:.2f}")
        ax.set_xlabel(f"weighted {name} (sum of signed effective weights)")
        ax.set_ylabel("number of neurons")
        ax.set_yscale("log")
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
        ax.set_title(f"weighted {name}", fontsize=10)
    fig.suptitle(f"Weighted degree distributions of the {anatomy.n_neurons} x "
                 f"{anatomy.n_neurons} recurrent network (E > 0, I < 0)", fontsize=10)
    fig.tight_layout()
    files = [_save_fig(fig, out / "degree_distributions.png")]
    files.append(write_json(dict(stats_, note="W[post, pre] = sign(pre) * weight * mask; "
                                 "in-degree = row sum, out-degree = column sum"),
                            out / "degree.json"))
    pop = anatomy.population_of_neuron
    files.append(write_csv(out / "degree.csv",
                           ["neuron", "population", "in_initial", "out_initial",
                            "in_trained", "out_trained"],
                           [[j, anatomy.populations[pop[j]].name, deg["initial"][0][j],
                             deg["initial"][1][j], deg["trained"][0][j], deg["trained"][1][j]]
                            for j in range(anatomy.n_neurons)]))
    return dict(stats=stats_, files=files, degrees=deg)


# ============================================================================ 5. CV grid
def parse_floats(text) -> list[float]:
    """"0.01,0.02" or "0.01:0.04:4" (start:stop:count, inclusive) -> list of floats."""
    if isinstance(text, (list, tuple)):
        return [float(v) for v in text]
    text = str(text).strip()
    if ":" in text:
        a, b, n = text.split(":")
        return [float(v) for v in np.linspace(float(a), float(b), int(n))]
    return [float(v) for v in text.split(",") if v.strip()]


@torch.no_grad()
def cv_point(config: dict, x: torch.Tensor, init_w: float, init_b: float,
             batch_size: int = 16, engine: Optional[str] = None, threads: int = 0) -> dict:
    """Binned CV, ISI CV, rate and silent fraction of an untrained network on inputs ``x``."""
    if threads:
        torch.set_num_threads(threads)
    cfg = dict(config, init_w=float(init_w), init_b=float(init_b))
    model = build_model(ModelConfig(**cfg)).eval()
    engine = engine or model.config.engine
    parts = []
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i:i + batch_size].to(model.tau_m.dtype), record_spikes=True, engine=engine)
        parts.append(out.spikes.cpu().numpy())
    s = np.concatenate(parts, axis=1)                       # (T, n, N)
    b = binned_cv(s, 0, reduce=False)
    isi = isi_cv(s, 0, reduce=False)
    return dict(init_w=float(init_w), init_b=float(init_b),
                binned_cv=float(np.nanmean(b)) if np.isfinite(b).any() else float("nan"),
                isi_cv=float(np.nanmean(isi)) if np.isfinite(isi).any() else float("nan"),
                mean_rate=float(s.mean()),
                fraction_silent=float(np.mean(~np.isfinite(b))),
                fraction_isi_defined=float(np.mean(np.isfinite(isi))))


def _cv_task(args):
    return cv_point(*args)


def cv_grid(config: dict, x: torch.Tensor, w_values, b_values, batch_size: int = 16,
            engine: Optional[str] = None, workers: int = 1, progress: bool = True) -> list[dict]:
    """:func:`cv_point` for every (init_w, init_b); ``workers`` > 1 uses processes."""
    points = [(w, b) for w in w_values for b in b_values]
    config = dict(config)
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        tasks = [(config, x, w, b, batch_size, engine, threads) for w, b in points]
        import multiprocessing as mp
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            return list(tqdm(pool.map(_cv_task, tasks), total=len(tasks), desc="CV grid",
                             disable=not progress))
    return [cv_point(config, x, w, b, batch_size, engine)
            for w, b in tqdm(points, desc="CV grid", disable=not progress)]


def plot_cv_grid(rows, w_values, b_values):
    keys = (("binned_cv", "binned-train CV (published \"CV\")"),
            ("isi_cv", "ISI CV (irregularity)"),
            ("mean_rate", "mean rate (spikes / neuron / step)"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.35 * len(b_values) + 3.2))
    for ax, (key, title) in zip(axes, keys):
        M = np.full((len(b_values), len(w_values)), np.nan)
        for r in rows:
            M[b_values.index(r["init_b"]), w_values.index(r["init_w"])] = r[key]
        im = ax.imshow(M, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(w_values)))
        ax.set_xticklabels([f"{w:g}" for w in w_values], fontsize=8,
                           rotation=45 if len(w_values) > 6 else 0)
        ax.set_yticks(range(len(b_values)))
        ax.set_yticklabels([f"{b:g}" for b in b_values], fontsize=8)
        ax.set_xlabel("init_w (initial weight scale)")
        ax.set_ylabel("init_b (baseline threshold)")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if M.size <= 80:
            finite = M[np.isfinite(M)]
            mid = (finite.min() + finite.max()) / 2 if finite.size else 0
            for (i, j), v in np.ndenumerate(M):
                ax.text(j, i, "-" if not np.isfinite(v) else f"{v:.2g}", ha="center",
                        va="center", fontsize=7, color="w" if v < mid else "k")
    fig.suptitle("Untrained networks over the initialisation grid (CVs: mean over trains where "
                 "defined; '-': undefined, e.g. no train with 3+ spikes)", fontsize=10)
    fig.tight_layout()
    return fig


def run_cv(model_config: dict, dataset, out, w_values, b_values, n_samples: int = 8,
           batch_size: int = 16, engine: Optional[str] = None, workers: int = 1,
           progress: bool = True) -> dict:
    out = Path(out)
    idx = balanced_indices(dataset_labels(dataset), n_samples)
    x = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in idx]).float()
    w_values, b_values = [float(v) for v in w_values], [float(v) for v in b_values]
    rows = cv_grid(model_config, x, w_values, b_values, batch_size, engine, workers, progress)
    keys = ["init_w", "init_b", "binned_cv", "isi_cv", "mean_rate", "fraction_silent",
            "fraction_isi_defined"]
    files = [write_csv(out / "cv_grid.csv", keys, [[r[k] for k in keys] for r in rows])]
    files.append(_save_fig(plot_cv_grid(rows, w_values, b_values), out / "cv_grid.png"))
    return dict(rows=rows, files=files, n_samples=len(idx))


# ============================================================================ CLI
@dataclass
class AnalysisConfig:
    """Command-line options of ``utils.py`` (one field, one flag; None: the checkpoint's)."""
    checkpoint: str = flag(None, "checkpoint of a trained run (e.g. RUN/best.pth)", type=str,
                           required=True)
    out: str = flag(None, "output folder for figures, CSV and JSON", type=str, required=True)
    data_dir: str = flag("data", "folder of snn_train3.h5 / snn_test3.h5 (generated if it "
                                 "holds neither)")
    analysis: str = flag("all", "which analysis", ("all",) + ANALYSES)
    device: str = flag("auto", "auto, cpu, cuda or cuda:N")
    engine: Optional[str] = flag(None, "engine for the forward passes (default: the "
                                       "checkpoint's)", ("fast", "reference"), type=str)
    batch_size: int = flag(16, "samples per forward pass")
    max_samples: Optional[int] = flag(None, "ANOVA: at most this many samples, class-balanced "
                                            "(default: all train + test samples)", type=int)
    n_steps: Optional[int] = flag(None, "time steps of the input (default: the checkpoint's "
                                        "train_config n_steps, else the full sequence)", type=int)
    data_seed: Optional[int] = flag(None, "seed of the input spike draws (default: the "
                                          "checkpoint's train_config spike_seed, else 0)", type=int)
    sample: int = flag(0, "raster: index of the test-set sample")
    alpha: float = flag(0.001, "ANOVA significance threshold")
    const_steps: int = flag(550, "dynamics: steps of constant input")
    const_current: float = flag(1.0, "dynamics: the constant input current")
    cv_w: str = flag("0.01:0.04:4", "CV grid: init_w values, 'a,b,c' or 'start:stop:count'")
    cv_b: str = flag("0.01,0.1,0.2,0.3,0.4,0.5,0.6",
                     "CV grid: init_b values, 'a,b,c' or 'start:stop:count'")
    cv_samples: int = flag(8, "CV grid: samples per grid point (class-balanced, test set)")
    workers: int = flag(1, "CV grid: processes over grid points")
    objects_per_class: int = flag(91, "objects per class if the data must be generated")
    progress: bool = flag(True, "progress bars")


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser(AnalysisConfig, description=__doc__.split("\n")[0], prog="utils.py")


def parse_config(argv=None) -> AnalysisConfig:
    ap = build_parser()
    args = ap.parse_args(argv)
    checks = [(args.batch_size >= 1, "--batch-size must be >= 1"),
              (args.workers >= 1, "--workers must be >= 1"),
              (args.cv_samples >= 1, "--cv-samples must be >= 1"),
              (args.max_samples is None or args.max_samples >= 4,
               "--max-samples must be >= 4 (the ANOVA needs more samples than classes)"),
              (args.n_steps is None or args.n_steps >= 2, "--n-steps must be >= 2"),
              (args.const_steps >= 1, "--const-steps must be >= 1"),
              (math.isfinite(args.const_current), "--const-current must be a finite number"),
              (0 < args.alpha < 1, "--alpha must lie in (0, 1)"),
              (args.sample >= 0, "--sample must be >= 0"),
              (args.data_seed is None or args.data_seed >= 0, "--data-seed must be >= 0"),
              (args.objects_per_class >= 1, "--objects-per-class must be >= 1")]
    for ok, msg in checks:
        if not ok:
            ap.error(msg)
    for flag in ("cv_w", "cv_b"):
        try:
            if not parse_floats(getattr(args, flag)):
                raise ValueError
        except ValueError:
            ap.error(f"--{flag.replace('_', '-')}: give numbers 'a,b,c' or 'start:stop:count', "
                     f"got {getattr(args, flag)!r}")
    return AnalysisConfig(**vars(args))


def _load(cfg: AnalysisConfig, device):
    from checkpoint import load_checkpoint
    model, ckpt = load_checkpoint(cfg.checkpoint, device=device)
    return model.eval(), ckpt


def _datasets(cfg: AnalysisConfig, model, ckpt):
    from whisker_dataset import (RealValuedWhiskerDataset, SpikingWhiskerDataset,
                                 ensure_dataset)
    train_path, test_path = ensure_dataset(cfg.data_dir, objects_per_class=cfg.objects_per_class)
    tc = ckpt.get("train_config") or {}
    tc = tc if isinstance(tc, dict) else vars(tc)
    n_steps = cfg.n_steps if cfg.n_steps is not None else (tc.get("n_steps") or None)
    seed = cfg.data_seed if cfg.data_seed is not None else int(tc.get("spike_seed") or 0)
    if model.config.encoder == "spiking":
        make = lambda p: SpikingWhiskerDataset(p, seed=seed, n_steps=n_steps)  # noqa
    else:
        make = lambda p: RealValuedWhiskerDataset(p, n_steps=n_steps)  # noqa
    return make(train_path), make(test_path)


def run(cfg: AnalysisConfig) -> dict:
    """Run the analyses selected by ``cfg.analysis``; returns {analysis: result}."""
    device = select_device(cfg.device)
    todo = ANALYSES if cfg.analysis == "all" else (cfg.analysis,)
    out = Path(cfg.out)
    progress = cfg.progress
    model, ckpt = _load(cfg, device)
    check_writable_dir(out)   # before the long work, not after it
    initial = untrained_like(model)
    results = {}
    data = None
    if any(a in todo for a in ("anova", "raster", "cv")):
        data = _datasets(cfg, model, ckpt)
    for a in todo:
        print(f"[utils] {a} ...", file=sys.stderr, flush=True)
        if a == "anova":
            results[a] = run_anova(model, _Concat(*data), out, cfg.alpha, cfg.batch_size,
                                   device, cfg.max_samples, cfg.engine, initial, progress)
        elif a == "raster":
            results[a] = run_raster(model, data[1], out, cfg.sample, device, cfg.engine,
                                    progress)
        elif a == "dynamics":
            results[a] = run_dynamics(model, out, initial, cfg.const_steps, cfg.const_current)
        elif a == "degree":
            results[a] = run_degree(model, out, initial)
        elif a == "cv":
            mc = model.config.to_dict()
            results[a] = run_cv(mc, data[1], out, parse_floats(cfg.cv_w),
                                parse_floats(cfg.cv_b), cfg.cv_samples, cfg.batch_size,
                                cfg.engine, cfg.workers, progress)
        for f in results[a]["files"]:
            print(f"  wrote {f}", file=sys.stderr)
    return results


def anova_main(argv_or_args=None) -> int:
    """Entry point of ``RSNN_bfd_SpikingBased.py --anova --checkpoint X --out DIR``.

    Accepts an argv list (``--anova`` is ignored), an ``argparse.Namespace`` with at least
    ``checkpoint`` and ``out`` (other :class:`AnalysisConfig` fields are taken when present),
    or an :class:`AnalysisConfig`. Runs the selectivity analysis only; returns 0.
    """
    a = argv_or_args
    if isinstance(a, AnalysisConfig):
        cfg = a
    elif isinstance(a, argparse.Namespace):
        given = {f.name: getattr(a, f.name) for f in fields(AnalysisConfig)
                 if getattr(a, f.name, None) is not None}
        cfg = parse_config(["--checkpoint", str(given.pop("checkpoint")),
                            "--out", str(given.pop("out"))])
        for k, v in given.items():
            setattr(cfg, k, v)
    else:
        argv = list(sys.argv[1:] if a is None else a)
        cfg = parse_config([v for v in argv if v != "--anova"])
    cfg.analysis = "anova"
    run(cfg)
    return 0


def main(argv=None) -> int:
    """Parse ``argv`` and run; user errors (bad checkpoint, data, flags) exit 2 with one line."""
    cfg = parse_config(argv)
    try:
        run(cfg)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # The default call, e.g.:
    #   python utils.py --checkpoint runs/spiking/best.pth --out figures --data-dir data
    sys.exit(main())
