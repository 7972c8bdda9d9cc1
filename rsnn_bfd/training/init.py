"""Data-dependent initialisation of a fresh run: the readout's input standardisation.

With ``--readout-norm`` (:attr:`rsnn_bfd.network.model.ModelConfig.readout_norm`) the readout
reads each excitatory neuron's spikes shifted by its mean rate and scaled by its spread over
the training set, measured once on the untrained network before the first step. Why: the
rates are small (about 0.003-0.04 spikes per step) and differ between neurons by orders of
magnitude, so with Adam, which moves every weight by about the learning rate per step, a
readout of raw rates needs hundreds of steps before a rarely firing neuron's evidence counts.
The standardised rates are divided by sqrt(3606) besides, so that a sample's readout input
has about unit norm: a step then moves the logits by about lr x sqrt(3606) whatever the
number of neurons read, and the untrained readout starts near chance instead of confidently
wrong. The readout of the standardised rates of the untrained network fits the default
training set in 15 epochs, one of the raw rates does not (docs/RESULTS.md).
"""
from __future__ import annotations

import torch

from rsnn_bfd.training.batches import iterate_batches, progress_bar


@torch.no_grad()
def fit_readout_norm_(model, dataset, indices: list[int], batch_size: int, device,
                      progress: bool = False, rates=None) -> dict:
    """Set the model's ``readout_shift`` (3606,) to each read-out neuron's mean rate over t =
    1..T-1 and the samples ``indices``, and ``readout_scale`` to 1 / its standard deviation
    across the samples (floored at one spike per sequence, 1 / (T - 1), so that a neuron that
    (almost) never fires is not scaled up without bound) times sqrt(3606), the number of
    neurons read. ``rates``: a :class:`rsnn_bfd.training.frozen.FrozenRates` of the untrained
    network, which then keeps the rates for the readout-only epochs (the same numbers).
    Returns ``{"mean_rate", "n"}``."""
    was_training = model.training
    model.eval()
    idx = model.readout_index
    total = total_sq = None
    n = 0
    steps = max(int(dataset[indices[0]][0].shape[2]) - 1, 1) if indices else 1   # T - 1
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    for sample_rates in progress_bar(_rates(model, dataset, batches, device, rates),
                                     len(batches), "readout norm", progress):
        sample_rates = sample_rates[:, idx]                                # (batch, 3606)
        total = sample_rates.sum(0) if total is None else total + sample_rates.sum(0)
        squares = (sample_rates ** 2).sum(0)
        total_sq = squares if total_sq is None else total_sq + squares
        n += sample_rates.shape[0]
    model.train(was_training)
    if not n:
        raise ValueError("--readout-norm needs training samples to measure the rates on")
    mean = total / n
    std = (total_sq / n - mean ** 2).clamp_min(0).sqrt()
    model.readout_shift.copy_(mean)
    model.readout_scale.copy_(1 / (std.clamp_min(1.0 / steps) * len(idx) ** 0.5))
    return {"mean_rate": float(mean.mean()), "n": n}


def _rates(model, dataset, batches, device, rates=None):
    """Each batch's mean rates over t = 1..T-1, (batch, 4218) float64 (exact counts / (T-1)),
    from ``rates`` (a FrozenRates) or a forward pass."""
    if rates is not None:
        for b in batches:
            yield rates.batch(dataset, b)[0]
        return
    for x, _ in iterate_batches(dataset, batches, 0):
        spikes = model(x.to(device), record_spikes=True).spikes            # (T, batch, 4218)
        yield spikes[1:].to(torch.float64).sum(0) / max(spikes.shape[0] - 1, 1)
