"""Running the model for the analyses: recorded spikes, the untrained twin of a trained
network, constant-input rates, weighted degrees and the CV grid of untrained networks.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from rsnn_bfd.common import end_with_parent
from rsnn_bfd.network import neuron  # the single neuron update: neuron.alif_step
from rsnn_bfd.network.model import ModelConfig, build_model

from .statistics import binned_cv, isi_cv, weighted_degrees


@torch.no_grad()
def constant_input_rates(model, steps: int = 550, current: float = 1.0):
    """The "dynamic gradient": every cortical neuron driven by a constant current, alone.

    Each neuron is simulated in isolation (no recurrent or thalamic input) with the model's own
    neuron update (:func:`rsnn_bfd.network.neuron.alif_step`), its own trained ``tau_m`` /
    ``tau_adp``, and the model's ``init_b`` and ``beta``, from rest (membrane 0, no previous
    spike, adaptation at b0), for ``steps`` steps of input ``current``.
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
    engine = engine or model.engine
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
    twin = build_model(cfg, device=model.tau_m.device, dtype=model.tau_m.dtype,
                       engine=model.engine).eval()
    twin.engine_options = model.engine_options
    return twin


# The parameters of the network proper (the readout aside): what "trained" changes in the
# comparisons of trained and untrained networks
NETWORK_PARAMETERS = ("encoder", "thalamus_input", "thal_tau_m", "thal_tau_adp",
                      "thalamocortical.weight", "recurrent.weight", "tau_m", "tau_adp")


@torch.no_grad()
def unchanged_by_training(model, initial, names=NETWORK_PARAMETERS) -> bool:
    """Whether the parameters ``names`` (prefixes of parameter names) of ``model`` equal those
    of ``initial`` (:func:`untrained_like`): a network of which only the readout was trained
    (``--preset fit``) is its untrained network, and a comparison of the two says so."""
    mine, theirs = dict(model.named_parameters()), dict(initial.named_parameters())
    keys = [k for k in mine if any(k == n or k.startswith(n + ".") for n in names)]
    return all(k in theirs and mine[k].shape == theirs[k].shape
               and torch.equal(mine[k].detach().cpu(), theirs[k].detach().to("cpu", mine[k].dtype))
               for k in keys)


def training_comparison(model, initial, what: str,
                        names=NETWORK_PARAMETERS) -> tuple[str, dict]:
    """What a figure comparing ``initial`` with ``model`` says of them: the note for its title
    ("" when the parameters ``names``, described as ``what``, were trained) and the fields of
    its JSON (``network_trained``, plus ``same_network`` with the note when they were not)."""
    if not unchanged_by_training(model, initial, names):
        return "", {"network_trained": True}
    note = (f"the network's {what} are its initial ones (only its readout was trained): "
            "untrained and trained show the same network")
    return note, {"network_trained": False, "same_network": note}


@torch.no_grad()
def model_degrees(model) -> tuple[np.ndarray, np.ndarray]:
    """Weighted (in, out) degrees of the effective signed recurrent weights of ``model``."""
    return weighted_degrees(model.signed_recurrent_weight())


@torch.no_grad()
def cv_point(config: dict, x: torch.Tensor, init_w: float, init_b: float,
             batch_size: int = 16, engine: Optional[str] = None, threads: int = 0) -> dict:
    """Binned CV, ISI CV, rate and silent fraction of an untrained network on inputs ``x``."""
    if threads:
        torch.set_num_threads(threads)
    cfg = dict(config, init_w=float(init_w), init_b=float(init_b))
    model = build_model(cfg).eval()
    engine = engine or model.engine
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
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                 initializer=end_with_parent, initargs=(os.getpid(),)) as pool:
            return list(tqdm(pool.map(_cv_task, tasks), total=len(tasks), desc="CV grid",
                             disable=not progress))
    return [cv_point(config, x, w, b, batch_size, engine)
            for w, b in tqdm(points, desc="CV grid", disable=not progress)]
