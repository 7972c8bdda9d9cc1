"""Datasets over the whisker files: spiking and real-valued samples as the model reads them,
the two files pooled for cross-validation, and the datasets a trained run read.

Memory. ``SpikingWhiskerDataset`` never materialises the 2.2 G-value spike array: it keeps the
float32 probabilities (N, 2, 12, 110, 93) (214 MB for 218 samples) and draws the spikes of a
sample in ``__getitem__`` from a ``torch.Generator`` seeded by (seed, epoch or 0, index), as
``uniform < p``. The uniforms do not depend on ``p``, so a whisker-deprived dataset gives the
same spikes on the intact whiskers as the intact dataset with the same seed. Files are read in
chunks of samples, so the peak while loading stays near the size of the stored probabilities:
loading both full files (218 + 55 samples) into ``SpikingWhiskerDataset`` peaks at 0.73 GB RSS
(268 MB of probabilities, the rest is the torch/h5py runtime). ``RealValuedWhiskerDataset``
holds (N, 1, 12, 110, 558) float32: 0.64 GB for the training file.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from rsnn_bfd.data.encoding import (check_features, realvalued_samples, spike_probabilities,
                                    spike_probability)
from rsnn_bfd.data.files import (CLASS_NAMES, DT_REPEAT, FORCE_OFFSET, N_NODES, N_SPIKE_STEPS,
                                 N_STEPS, N_SWEEPS, N_WHISKERS, TEST_FILE, TORQUE_OFFSET,
                                 TRAIN_FILE, deprive, parse_deprived, WhiskerFile)


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, int(epoch), int(index)])
    lo, hi = state.generate_state(2, np.uint32)
    return (int(hi) << 32 | int(lo)) & 0x7FFF_FFFF_FFFF_FFFF


class SpikingWhiskerDataset(torch.utils.data.Dataset):
    """Spike trains drawn on the fly from stored probabilities.

    ``x`` of a sample is a ``torch.uint8`` tensor (2, 12, T, 93) (channel 0 force, 1 torque),
    T = ``n_steps`` or 550. Spikes are reproducible from ``seed``; with
    ``resample_each_epoch`` the draw also depends on the epoch set by ``set_epoch``
    (the published code draws them once: the default).

    Drawn once, a sample is kept in memory after its first access (1.2 MB at T = 550;
    330 MB for the default 273 samples) and returned again, read-only by convention:
    drawing 128 samples takes about 0.8 s on two cores, every epoch. The kept samples are
    not pickled (DataLoader workers draw their own).
    """

    def __init__(self, path, seed: int = 0, resample_each_epoch: bool = False,
                 deprived_whiskers=(), n_steps: int | None = None):
        self.path = Path(path)
        self.seed = int(seed)
        self.resample_each_epoch = bool(resample_each_epoch)
        self.deprived_whiskers = tuple(int(w) for w in parse_deprived(deprived_whiskers))
        self.n_steps = N_SPIKE_STEPS if n_steps is None else int(n_steps)
        if not 1 <= self.n_steps <= N_SPIKE_STEPS:
            raise ValueError(f"n_steps must be in 1..{N_SPIKE_STEPS}, got {n_steps}")
        self.epoch = 0
        self._drawn = {}                     # index -> spikes, when drawn once
        idx = np.asarray(self.deprived_whiskers, dtype=np.int64)
        with WhiskerFile(self.path) as wf:
            n = wf.n
            # (N, 2, 12, 110, 93) float32
            self.probs = torch.empty((n, 2, N_SWEEPS, N_STEPS, N_WHISKERS * N_NODES), dtype=torch.float32)
            for start, f, t in wf.chunks():
                deprive(f, t, idx)
                pf, pt = spike_probabilities(f, t)
                m = len(f)
                self.probs[start:start + m, 0] = torch.from_numpy(pf.reshape(m, N_SWEEPS, N_STEPS, -1))
                self.probs[start:start + m, 1] = torch.from_numpy(pt.reshape(m, N_SWEEPS, N_STEPS, -1))
            self.labels = torch.from_numpy(wf.labels.copy())

    def deprived(self, whiskers) -> "SpikingWhiskerDataset":
        """A copy with ``whiskers`` also silenced, without reading the file again.

        Equals a dataset built with those ``deprived_whiskers``: the whiskers' probabilities
        become the floor value of an untouched node, and the spikes of the other whiskers
        stay the same (the uniforms depend only on seed, epoch and index).
        """
        idx = parse_deprived(whiskers)
        view = copy.copy(self)
        view._drawn = {}
        view.deprived_whiskers = tuple(sorted(set(self.deprived_whiskers) | set(idx.tolist())))
        if idx.size:
            floor = self._floor()
            nodes = torch.as_tensor((idx[:, None] * N_NODES + np.arange(N_NODES)).ravel())
            view.probs = self.probs.clone()
            for channel in range(2):
                view.probs[:, channel, ..., nodes] = floor[channel]
        return view

    @property
    def spiking_shape(self) -> tuple[int, ...]:
        return (len(self), 2, N_SWEEPS, N_SPIKE_STEPS, N_WHISKERS, N_NODES)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def without_resampling(self) -> "SpikingWhiskerDataset":
        """The same samples with the spikes drawn once (epoch 0), as a test set reads them:
        itself unless ``resample_each_epoch``; else a view sharing the probabilities. A
        validation split of a resampled training set is evaluated on it."""
        if not self.resample_each_epoch:
            return self
        view = copy.copy(self)
        view.resample_each_epoch, view.epoch, view._drawn = False, 0, {}
        return view

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_drawn"] = {}
        return state

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i):
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.resample_each_epoch:
            return self._draw(i, self.epoch), self.labels[i]
        x = self._drawn.get(i)
        if x is None:
            x = self._drawn[i] = self._draw(i, 0)
        return x, self.labels[i]

    def driving_sweep(self, indices, deprived_sets=((),), sweep: int = 0) -> torch.Tensor:
        """Spikes of one sweep for every (whisker set, sample) pair, without drawing twice.

        Returns uint8 (len(deprived_sets), len(indices), 2, T, 93); entry ``[k, j]`` equals
        ``self.deprived(deprived_sets[k])[indices[j]][0][:, sweep]`` (the same uniforms, the
        removed whiskers' probabilities at the floor value). Used to evaluate many
        whisker-deprivation trials in one batch.
        """
        floor = self._floor()
        sets = [parse_deprived(ws) for ws in deprived_sets]
        out = torch.empty((len(sets), len(indices), 2, self.n_steps, N_WHISKERS * N_NODES),
                          dtype=torch.uint8)
        for j, i in enumerate(indices):
            u = self._uniforms(int(i), 0 if not self.resample_each_epoch else self.epoch)
            u = u[:, :, sweep].permute(1, 0, 2)                     # (2, T, 93)
            p = self.probs[int(i), :, sweep]                        # (2, 110, 93)
            for k, idx in enumerate(sets):
                pk = p
                if idx.size:
                    pk = p.clone()
                    nodes = torch.as_tensor((idx[:, None] * N_NODES + np.arange(N_NODES)).ravel())
                    for channel in range(2):
                        pk[channel, :, nodes] = floor[channel]
                pk = pk.repeat_interleave(DT_REPEAT, dim=1)[:, :self.n_steps]
                out[k, j] = (u < pk).to(torch.uint8)
        return out

    @staticmethod
    def _floor() -> tuple[float, float]:
        """Spike probability of an untouched node (force, torque)."""
        zero = np.zeros((1, 3), np.float32)
        return (float(spike_probability(zero, FORCE_OFFSET)[0]),
                float(spike_probability(zero, TORQUE_OFFSET)[0]))

    def _uniforms(self, i: int, epoch: int) -> torch.Tensor:
        """The sample's uniforms (T, 2, 12, 93), drawn time-major so that a truncated
        sequence is a prefix of the full one."""
        gen = torch.Generator().manual_seed(_sample_seed(self.seed, epoch, i))
        return torch.rand((N_SPIKE_STEPS, 2, N_SWEEPS, N_WHISKERS * N_NODES),
                          generator=gen)[:self.n_steps]

    def _draw(self, i: int, epoch: int) -> torch.Tensor:
        T = self.n_steps
        u = self._uniforms(i, epoch)
        p = self.probs[i].repeat_interleave(DT_REPEAT, dim=2)[:, :, :T]  # (2, 12, T, 93)
        return (u.permute(1, 2, 0, 3) < p).to(torch.uint8)


class RealValuedWhiskerDataset(torch.utils.data.Dataset):
    """Real-valued inputs: ``x`` float32 (1, 12, T, 558), T = ``n_steps`` or 110;
    ``features``: ``"published"`` or ``"signed-log"`` (:func:`realvalued_samples`)."""

    def __init__(self, path, deprived_whiskers=(), n_steps: int | None = None,
                 features: str = "published"):
        check_features(features)     # before the file is read
        self.features = features
        self.path = Path(path)
        self.deprived_whiskers = tuple(int(w) for w in parse_deprived(deprived_whiskers))
        self.n_steps = N_STEPS if n_steps is None else int(n_steps)
        if not 1 <= self.n_steps <= N_STEPS:
            raise ValueError(f"n_steps must be in 1..{N_STEPS}, got {n_steps}")
        idx = np.asarray(self.deprived_whiskers, dtype=np.int64)
        with WhiskerFile(self.path) as wf:
            n = wf.n
            self.samples = torch.empty((n, 1, N_SWEEPS, self.n_steps, N_WHISKERS * N_NODES * 6),
                                       dtype=torch.float32)
            for start, f, t in wf.chunks():
                deprive(f, t, idx)
                rv = realvalued_samples(f, t, features)[:, :, :, :self.n_steps]
                self.samples[start:start + len(f)] = torch.from_numpy(
                    np.ascontiguousarray(rv).reshape(len(f), 1, N_SWEEPS, self.n_steps, -1))
            self.labels = torch.from_numpy(wf.labels.copy())

    def deprived(self, whiskers) -> "RealValuedWhiskerDataset":
        """A copy with ``whiskers`` also silenced (their features 0), without reading the file.

        Equals a dataset built with those ``deprived_whiskers``: a whisker with zero force and
        torque has zero features (either kind), and the other whiskers' features do not change.
        """
        idx = parse_deprived(whiskers)
        view = copy.copy(self)
        view.deprived_whiskers = tuple(sorted(set(self.deprived_whiskers) | set(idx.tolist())))
        if idx.size:
            features = N_NODES * 6
            cols = torch.as_tensor((idx[:, None] * features + np.arange(features)).ravel())
            view.samples = self.samples.clone()
            view.samples[..., cols] = 0.0
        return view

    def driving_sweep(self, indices, deprived_sets=((),), sweep: int = 0) -> torch.Tensor:
        """Features of one sweep for every (whisker set, sample) pair.

        Returns float32 (len(deprived_sets), len(indices), 1, T, 558); entry ``[k, j]``
        equals ``self.deprived(deprived_sets[k])[indices[j]][0][:, sweep]``.
        """
        x = self.samples[torch.as_tensor(list(indices), dtype=torch.long), :, sweep]
        out = x.unsqueeze(0).repeat(len(deprived_sets), 1, 1, 1, 1)
        features = N_NODES * 6
        for k, ws in enumerate(deprived_sets):
            idx = parse_deprived(ws)
            if idx.size:
                out[k, ..., torch.as_tensor((idx[:, None] * features + np.arange(features)).ravel())] = 0.0
        return out

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i):
        return self.samples[i], self.labels[i]


class PooledDataset(torch.utils.data.Dataset):
    """Several datasets read as one: item ``i`` is item ``i - start`` of the part that holds
    it (parts in the order given, e.g. the training file's samples, then the test file's).

    Each sample is the one its own dataset gives (the same spikes: they are drawn from the
    sample's index in its file), so a subset of a pool equals the same samples read from
    their files. ``labels`` (N,) and ``set_epoch`` / ``without_resampling`` as the parts.
    """

    def __init__(self, parts):
        self.parts = tuple(parts)
        if not self.parts:
            raise ValueError("a pooled dataset needs at least one part")
        sizes = [len(p) for p in self.parts]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.labels = torch.cat([torch.as_tensor(p.labels) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(part, index within the part) of pooled item ``i``."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(i)
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        return part, i - int(self.starts[part])

    def __getitem__(self, i):
        part, j = self.locate(i)
        return self.parts[part][j]

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            if hasattr(p, "set_epoch"):
                p.set_epoch(epoch)

    def without_resampling(self) -> "PooledDataset":
        views = [p.without_resampling() if hasattr(p, "without_resampling") else p
                 for p in self.parts]
        return self if all(v is p for v, p in zip(views, self.parts)) else PooledDataset(views)


def pooled_dataset(encoder: str, data_dir, **kwargs) -> PooledDataset:
    """The training and test files of ``data_dir`` as one dataset (training samples first):
    :func:`datasets_for` with the same keyword arguments, pooled (for cross-validation)."""
    return PooledDataset(datasets_for(encoder, data_dir, splits=("train", "test"), **kwargs))


def samples_by_class(dataset) -> dict[int, torch.Tensor]:
    """Class index -> stacked inputs (n_c, ...) of that class, in dataset order."""
    labels = dataset.labels
    out = {}
    for c in range(len(CLASS_NAMES)):
        idx = torch.nonzero(labels == c).flatten().tolist()
        if idx:
            out[c] = torch.stack([dataset[i][0] for i in idx])
    return out


def datasets_for(encoder: str, data_dir, *, spike_seed: int = 0, n_steps: int | None = None,
                 resample_each_epoch: bool = False, splits=("train", "test"),
                 features: str = "published") -> tuple:
    """The datasets a run reads from ``data_dir``, one per split (``"train"``, ``"test"``).

    ``encoder``: ``"spiking"`` (:class:`SpikingWhiskerDataset`, spikes from ``spike_seed``)
    or ``"realvalued"`` (:class:`RealValuedWhiskerDataset` with ``features``); ``n_steps``
    truncates the sequences (None: full). Files are read as they are; :func:`ensure_dataset`
    generates missing ones.
    """
    if encoder == "spiking" and features != "published":
        raise ValueError(f"features {features!r} apply to the real-valued input only")
    files = {"train": TRAIN_FILE, "test": TEST_FILE}
    unknown = [s for s in splits if s not in files]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}: use 'train' and / or 'test'")
    if encoder == "spiking":
        def make(path):
            return SpikingWhiskerDataset(path, seed=spike_seed, n_steps=n_steps,
                                         resample_each_epoch=resample_each_epoch)
    elif encoder == "realvalued":
        def make(path):
            return RealValuedWhiskerDataset(path, n_steps=n_steps, features=features)
    else:
        raise ValueError(f"encoder must be 'spiking' or 'realvalued', got {encoder!r}")
    return tuple(make(Path(data_dir) / files[s]) for s in splits)


def data_dir_of_run(train_config: dict | None, data_dir=None, checkpoint=None) -> Path:
    """``data_dir`` when given, else the training run's ``--data-dir`` (default ``data``).

    A recorded relative folder is relative to where the run was started, which need not be
    here: when it holds no dataset here, the folder of that name beside the ``checkpoint`` or
    beside one of its parent folders that holds one is taken (the shipped network,
    ``data/RSNN_bfd_spiking_generated.pth``, records ``data``: the folder it lies in)."""
    if data_dir:
        return Path(data_dir)
    recorded = Path((train_config or {}).get("data_dir") or "data")
    if recorded.is_absolute() or checkpoint is None or _holds_data(recorded):
        return recorded
    for folder in Path(checkpoint).resolve().parents:
        if _holds_data(folder / recorded):
            return folder / recorded
        if folder.name == recorded.name and _holds_data(folder):
            return folder
    return recorded


def _holds_data(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (TRAIN_FILE, TEST_FILE))


def datasets_of_run(encoder: str, train_config: dict | None, *, data_dir=None,
                    n_steps: int | None = None, spike_seed: int | None = None,
                    splits=("train", "test")) -> tuple:
    """The datasets a training run read, from the ``train_config`` stored in its checkpoint:
    its ``data_dir``, ``n_steps``, ``spike_seed`` and real-valued ``features``.

    ``data_dir``, ``n_steps`` (0: the full sequence) and ``spike_seed`` replace the run's
    values when given (not None). Used by deprivation, the analyses and the tools, so that
    they evaluate on what the run was trained and tested on.
    """
    tc = train_config or {}
    data_dir = data_dir_of_run(tc, data_dir)
    n_steps = tc.get("n_steps") if n_steps is None else n_steps
    spike_seed = int(tc.get("spike_seed") or 0) if spike_seed is None else spike_seed
    return datasets_for(encoder, Path(data_dir), spike_seed=spike_seed,
                        n_steps=int(n_steps or 0) or None, splits=splits,
                        features=tc.get("features", "published"))
