"""Batches of a training run: the seeded data order of an epoch, stacking samples, and the
per-batch draws of the augmentations (whisker dropout, sweeps, readout dropout).

Every draw comes from a generator seeded by (seed, epoch, batch, salt), the same on every
rank, so that ``--resume`` and ``torchrun`` give the same batches as one uninterrupted run.
"""
from __future__ import annotations

import torch

from rsnn_bfd.common import make_generator
from rsnn_bfd.data.files import N_WHISKERS


def _batch_generator(seed: int, epoch: int, batch: int, salt: int) -> torch.Generator:
    """A generator seeded by (seed, epoch, batch, salt): the data order of an epoch (batch 0,
    salt 17) and each global batch's augmentations, the same on every rank."""
    return make_generator((int(seed) * 1_000_003 + int(epoch) * 7919 + int(batch) * 104_729
                           + salt) % (2 ** 63))


def epoch_batches(indices: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of ``epoch``: a permutation seeded by ``(seed, epoch)``, then chunks."""
    g = _batch_generator(seed, epoch, 0, 17)
    perm = torch.randperm(len(indices), generator=g).tolist()
    order = [indices[i] for i in perm]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def stack_batch(dataset, idx: list[int], device):
    xs, ys = zip(*(dataset[i] for i in idx))
    return torch.stack(xs).to(device), torch.stack([torch.as_tensor(y) for y in ys]).to(device)


class _Batches(torch.utils.data.Dataset):
    """Wraps a dataset so that item k is the stacked batch k (for DataLoader workers)."""

    def __init__(self, dataset, batches):
        self.dataset, self.batches = dataset, batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        batch = self.batches[k]
        return stack_batch(self.dataset, batch, "cpu") if batch else (None, None)


def _identity(x):
    return x


def iterate_batches(dataset, batches, workers: int):
    """Yield (x, y) CPU tensors for each batch of indices (optionally in worker processes)."""
    if workers <= 0:
        for b in batches:
            yield stack_batch(dataset, b, "cpu") if b else (None, None)
        return
    loader = torch.utils.data.DataLoader(_Batches(dataset, batches), batch_size=None,
                                         num_workers=workers, shuffle=False,
                                         collate_fn=_identity, persistent_workers=False)
    yield from loader


def progress_bar(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def whisker_keep(n: int, p: float, seed: int, epoch: int, batch: int) -> torch.Tensor:
    """The ``--whisker-dropout`` mask of a global batch: (n, 31) bool, each whisker kept with
    probability 1 - p, from a generator seeded by (seed, epoch, batch) (the same on every rank)."""
    return torch.rand((n, N_WHISKERS), generator=_batch_generator(seed, epoch, batch, 29)) >= p


def batch_sweeps(n: int, sweeps: tuple[int, ...], seed: int, epoch: int, batch: int) -> torch.Tensor:
    """The ``--train-sweeps`` choice of a global batch: (n,) sweeps drawn uniformly from
    ``sweeps``, seeded by (seed, epoch, batch) (the same on every rank)."""
    pick = torch.randint(len(sweeps), (n,), generator=_batch_generator(seed, epoch, batch, 31))
    return torch.as_tensor(sweeps)[pick]


def readout_keep(n_readout: int, p: float, seed: int, epoch: int, batch: int) -> torch.Tensor:
    """The ``--readout-dropout`` multipliers of a global batch: (n_readout,) float, 0 for a
    dropped readout neuron and 1 / (1 - p) for a kept one, from a generator seeded by
    (seed, epoch, batch) (the same on every rank)."""
    keep = torch.rand(n_readout, generator=_batch_generator(seed, epoch, batch, 37)) >= p
    return keep.float() / (1 - p)
