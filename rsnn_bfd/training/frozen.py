"""Readout-only epochs of the mean-logit readout: each sample's rates computed once.

While the network is frozen (``--readout-epochs``) and reads the mean-logit readout, a
sample's loss depends on the network only through its read-out neurons' mean rates over
t = 1..T-1: the readout has no nonlinearity, so the mean of its per-step logits is the
readout of the mean spikes. When nothing else changes a sample's spikes between epochs
(the initial state is the same for every sample, its input spikes are drawn once, no
augmentation), those rates are the same every epoch, so :class:`FrozenRates` runs the network
once per sample and the later readout-only epochs train and evaluate on the stored rates:
the same losses and gradients up to float rounding (the mean is taken before the readout
instead of after), in seconds instead of minutes per epoch.
"""
from __future__ import annotations

import torch

from rsnn_bfd.config import TrainConfig
from rsnn_bfd.data.encoding import parse_sweeps
from rsnn_bfd.network.model import BarrelCortexRSNN, RSNNOutput
from rsnn_bfd.training.batches import stack_batch


def frozen_rates_apply(cfg: TrainConfig, model: BarrelCortexRSNN, world: int = 1) -> bool:
    """Whether a readout-only epoch of ``cfg`` may read stored rates: the mean-logit readout
    without a leaky output, the zero initial state (the published one is drawn per batch
    row, so a sample's spikes depend on its batch), input spikes drawn once, no whisker
    dropout or sweep augmentation, one process."""
    return ((cfg.readout_epochs != 0 or cfg.readout_last > 0) and cfg.loss == "mean-logit"
            and cfg.readout_tau == 0
            and cfg.init_state == "zero" and not cfg.resample_each_epoch
            and cfg.whisker_dropout == 0
            and tuple(parse_sweeps(cfg.train_sweeps)) == (model.config.sweep,) and world == 1)


class FrozenRates:
    """Each sample's mean rates (4218,) over t = 1..T-1 and its spike count, per dataset.

    Valid while the network does not change (:meth:`clear` when it has, as before
    ``--readout-last``'s epochs); :func:`frozen_rates_apply` says when its
    inputs do not either. ``batch`` computes the samples it has not seen (one forward pass
    without gradients per batch) and returns the stored ones.
    """

    def __init__(self, model: BarrelCortexRSNN, device):
        self.model, self.device = model, device
        self._store: dict[tuple[int, int], tuple[torch.Tensor, float, int, int]] = {}

    @torch.no_grad()
    def batch(self, dataset, indices: list[int]):
        """(rates (batch, 4218) float64, labels (batch,), spike sum, spike count) of
        ``indices``."""
        missing = [i for i in indices if (id(dataset), i) not in self._store]
        if missing:
            x, y = stack_batch(dataset, missing, "cpu")
            spikes = self.model(x.to(self.device), record_spikes=True).spikes  # (T, B, 4218)
            steps = max(spikes.shape[0] - 1, 1)
            rates = spikes[1:].to(torch.float64).sum(0) / steps          # exact counts
            per_sample = spikes.sum(dim=(0, 2), dtype=torch.float64)
            for k, i in enumerate(missing):
                self._store[(id(dataset), i)] = (rates[k].clone(), float(per_sample[k]),
                                                 spikes.shape[0] * spikes.shape[2], int(y[k]))
        stored = [self._store[(id(dataset), i)] for i in indices]
        return (torch.stack([s[0] for s in stored]),
                torch.tensor([s[3] for s in stored], device=self.device),
                sum(s[1] for s in stored), sum(s[2] for s in stored))

    def clear(self) -> None:
        """Forget every stored rate (the network has changed)."""
        self._store.clear()

    def output(self, rates: torch.Tensor) -> RSNNOutput:
        """The readout of stored rates: ``logits`` (1, batch, 3), whose mean over its single
        step is the mean-logit readout's (``output`` is its softmax, not the published sum)."""
        return self.model.read_out(rates[None].to(self.model.tau_m.dtype))
