"""Exact loaders for the whisker sweep dataset (``snn_train3.h5`` / ``snn_test3.h5``).

File layout (the original Bullet-simulation files, or files made by ``whisker_sim.py``):

    force   (N, 12, 110, 31, 3, 3) float32   sweeps x frames x whiskers x nodes x (x, y, z)
    torque  (N, 12, 110, 31, 3, 3) float32
    label   (N,)                   any numeric dtype, values 53 (helmet), 55 (box), 113 (plane)

Two encodings, both reproducing the published reference code (checked against the golden
``whisker_tiny_expected.npz`` cases):

* Spiking. ``|v|`` = L2 norm over the last axis (0 replaced by 1e-5); spike probability
  ``p = sigmoid(log|v| - c)``, c = 2 (force) and 4 (torque), shape (N, 12, 110, 31, 3) each.
  Each of the 110 steps is repeated ``DT_REPEAT = 5`` times and Bernoulli-sampled, giving the
  spiking array (N, 2, 12, 550, 31, 3); the model sees it as ``(2, 12, T, 93)`` per sample
  (93 = 31 whiskers x 3 nodes, whisker-major).
* Real-valued. Force and torque are each L2-normalised along the 12-sweep axis
  (``torch.nn.functional.normalize(x, dim=1)``, eps 1e-12) and concatenated per node
  (fx fy fz tx ty tz): (N, 1, 12, 110, 31, 18); per sample ``(1, 12, T, 558)``.
  ``features="signed-log"`` (opt-in, not the published code) replaces the normalisation by
  ``sign(v) * log(1 + |v|)`` per component: the published normalisation divides each node's
  value by its norm over the 12 sweeps, so sweep 0 keeps a direction but loses how hard the
  whisker was pressed, and a node touched in sweep 0 only reads +-1 whatever the force; the
  log keeps magnitude and direction and compresses the heavy tail of the contact forces.

Memory. ``SpikingWhiskerDataset`` never materialises the 2.2 G-value spike array: it keeps the
float32 probabilities (N, 2, 12, 110, 93) (214 MB for 218 samples) and draws the spikes of a
sample in ``__getitem__`` from a ``torch.Generator`` seeded by (seed, epoch or 0, index), as
``uniform < p``. The uniforms do not depend on ``p``, so a whisker-deprived dataset gives the
same spikes on the intact whiskers as the intact dataset with the same seed. Files are read in
chunks of samples, so the peak while loading stays near the size of the stored probabilities:
loading both full files (218 + 55 samples) into ``SpikingWhiskerDataset`` peaks at 0.73 GB RSS
(268 MB of probabilities, the rest is the torch/h5py runtime). ``RealValuedWhiskerDataset``
holds (N, 1, 12, 110, 558) float32: 0.64 GB for the training file.

Whisker deprivation zeroes force and torque of the listed whiskers before encoding (their spike
probability is then the floor value ``sigmoid(log 1e-5 - c)``, exactly as for any untouched
whisker).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

# the label values of the original files and the classes they stand for, in class order
CLASS_LABELS = (53, 55, 113)
CLASS_NAMES = ("helmet", "box", "plane")
LABEL_MAP = {label: i for i, label in enumerate(CLASS_LABELS)}
N_WHISKERS = 31
N_NODES = 3
N_STEPS = 110
N_SWEEPS = 12
DT_REPEAT = 5
N_SPIKE_STEPS = N_STEPS * DT_REPEAT  # 550
FORCE_OFFSET = 2.0
TORQUE_OFFSET = 4.0
ZERO_NORM = 1e-5
TRAIN_FILE = "snn_train3.h5"
TEST_FILE = "snn_test3.h5"
SAMPLE_SHAPE = (N_SWEEPS, N_STEPS, N_WHISKERS, N_NODES, 3)
HOW_TO_GET = ("get the original snn_train3.h5/snn_test3.h5 files, or generate a compatible "
              "dataset with `python whisker_sim.py --out data`")
_CHUNK = 16  # samples read from disk at a time


class WhiskerDataError(ValueError):
    """A whisker data file is missing or malformed (the message says how to get good data)."""


def _fail(path, what: str):
    raise WhiskerDataError(f"{path}: {what}; {HOW_TO_GET}")


def _parse_deprived(deprived_whiskers: Iterable[int]) -> np.ndarray:
    idx = np.asarray(sorted({int(w) for w in deprived_whiskers}), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= N_WHISKERS):
        raise ValueError(f"deprived whisker indices must be in 0..{N_WHISKERS - 1}, got {idx.tolist()}")
    return idx


class _WhiskerFile:
    """Validated, chunk-wise access to one data file (used by all loaders)."""

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            _fail(self.path, "file not found")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as err:
            _fail(self.path, f"not a readable HDF5 file ({err})")
        try:
            for key in ("force", "torque", "label"):
                if key not in self._h5:
                    _fail(self.path, f"missing dataset {key!r} (found {sorted(self._h5.keys())})")
            f, t, lab = self._h5["force"], self._h5["torque"], self._h5["label"]
            for name, ds in (("force", f), ("torque", t)):
                if ds.ndim != 6 or tuple(ds.shape[1:]) != SAMPLE_SHAPE:
                    _fail(self.path, f"dataset {name!r} has shape {ds.shape}, expected (N, "
                          + ", ".join(map(str, SAMPLE_SHAPE)) + ")")
            if f.shape != t.shape:
                _fail(self.path, f"force {f.shape} and torque {t.shape} shapes differ")
            self.n = int(f.shape[0])
            if lab.shape != (self.n,):
                _fail(self.path, f"dataset 'label' has shape {lab.shape}, expected ({self.n},)")
            if self.n == 0:
                _fail(self.path, "holds no samples (force has shape "
                      f"{f.shape}); give a file with at least one sample")
            try:
                raw = np.asarray(lab[()], dtype=np.float64)
            except (TypeError, ValueError):
                _fail(self.path, f"dataset 'label' holds {lab.dtype} values, expected the "
                      f"numbers {sorted(LABEL_MAP)}")
            bad = ~np.isin(raw, list(LABEL_MAP))
            if bad.any():
                _fail(self.path, f"unknown label value(s) {np.unique(raw[bad]).tolist()} "
                      f"(expected {sorted(LABEL_MAP)})")
            self.labels = np.array([LABEL_MAP[int(v)] for v in raw], dtype=np.int64)
        except BaseException:
            self._h5.close()
            raise

    def chunks(self, size: int = _CHUNK):
        """Yield (start, force, torque) float32 chunks, checked for NaN/Inf."""
        for start in range(0, self.n, size):
            sl = slice(start, min(start + size, self.n))
            out = []
            for name in ("force", "torque"):
                arr = np.asarray(self._h5[name][sl], dtype=np.float32)
                if not np.isfinite(arr).all():
                    kind = "NaN" if np.isnan(arr).any() else "Inf"
                    _fail(self.path, f"dataset {name!r} contains {kind} values")
                out.append(arr)
            yield start, out[0], out[1]

    def close(self):
        self._h5.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_labels(path) -> np.ndarray:
    """The class indices (N,) int64 of a data file, validated, without reading its samples."""
    with _WhiskerFile(path) as wf:
        return wf.labels.copy()


def _deprive(force: np.ndarray, torque: np.ndarray, idx: np.ndarray):
    if idx.size:
        force[:, :, :, idx] = 0.0
        torque[:, :, :, idx] = 0.0
    return force, torque


def load_whisker_file(path, deprived_whiskers=()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and validate a data file.

    Returns ``force``, ``torque`` (N, 12, 110, 31, 3, 3) float32 (deprived whiskers zeroed) and
    ``labels`` (N,) int64 in 0..2. Raises ``WhiskerDataError`` for a missing file, a missing
    dataset, a wrong shape, an unknown label value or NaN/Inf in force or torque.
    """
    idx = _parse_deprived(deprived_whiskers)
    with _WhiskerFile(path) as wf:
        force = np.empty((wf.n,) + SAMPLE_SHAPE, np.float32)
        torque = np.empty_like(force)
        for start, f, t in wf.chunks():
            force[start:start + len(f)] = f
            torque[start:start + len(t)] = t
        labels = wf.labels.copy()
    _deprive(force, torque, idx)
    return force, torque, labels


def _prob(v: np.ndarray, offset: float) -> np.ndarray:
    norm = np.linalg.norm(v.astype(np.float64), axis=-1)
    norm[norm == 0] = ZERO_NORM
    x = np.log(norm) - offset
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # numerically stable sigmoid


def spike_probabilities(force, torque) -> tuple[np.ndarray, np.ndarray]:
    """Spike probability per step: ``sigmoid(log|v| - c)``, each (N, 12, 110, 31, 3) float32."""
    return _prob(np.asarray(force), FORCE_OFFSET), _prob(np.asarray(torque), TORQUE_OFFSET)


def _normalize_sweeps(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    norm = np.sqrt((v * v).sum(axis=1, keepdims=True))
    return v / np.maximum(norm, 1e-12)


def _signed_log(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    return np.sign(v) * np.log1p(np.abs(v))


REALVALUED_FEATURES = {"published": _normalize_sweeps, "signed-log": _signed_log}


def _check_features(features: str) -> None:
    if features not in REALVALUED_FEATURES:
        raise ValueError(f"real-valued features must be one of {tuple(REALVALUED_FEATURES)}, "
                         f"got {features!r}")


def realvalued_samples(force, torque, features: str = "published") -> np.ndarray:
    """Real-valued features (N, 1, 12, 110, 31, 18) float32 (see the module docstring)."""
    _check_features(features)
    transform = REALVALUED_FEATURES[features]
    force, torque = np.asarray(force), np.asarray(torque)
    both = np.concatenate([transform(force), transform(torque)], axis=-1)
    n = force.shape[0]
    return both.reshape(n, 1, N_SWEEPS, force.shape[2], N_WHISKERS, N_NODES * 6).astype(np.float32)


def drop_whiskers(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Silence whiskers per sample: the training augmentation ``--whisker-dropout``.

    x: (batch, channels, sweeps, T, 31 * k), whisker-major on the last axis (k = 3 spike
    lines or 18 real values per whisker); keep: (batch, 31), True / 1 where a whisker stays.
    Returns a copy with the dropped whiskers' inputs zero for the whole sequence. For real
    values this is exactly whisker deprivation; for spikes it is deprivation up to the floor
    spike probability of an untouched node (below 1e-6 per step).
    """
    if x.dim() != 5 or x.shape[-1] % N_WHISKERS:
        raise ValueError(f"drop_whiskers expects x of shape (batch, channels, sweeps, T, 31 * k), "
                         f"got {tuple(x.shape)}")
    if tuple(keep.shape) != (x.shape[0], N_WHISKERS):
        raise ValueError(f"keep must have shape ({x.shape[0]}, {N_WHISKERS}), got {tuple(keep.shape)}")
    keep = keep.to(device=x.device, dtype=x.dtype).repeat_interleave(x.shape[-1] // N_WHISKERS, dim=1)
    return x * keep[:, None, None, None, :]


def parse_sweeps(spec: str) -> tuple[int, ...]:
    """Sweeps named by ``spec``: ``"0"``, ``"0-3"``, ``"0,4,8"`` or ``"all"`` (0..11)."""
    text = str(spec).strip().lower()
    if text == "all":
        return tuple(range(N_SWEEPS))
    sweeps = []
    try:
        for part in text.split(","):
            lo, dash, hi = part.partition("-")
            sweeps += range(int(lo), int(hi if dash else lo) + 1)
    except ValueError:
        raise ValueError(f"sweeps must be 'all', a number, a range 'a-b' or a comma-separated "
                         f"list of them, got {spec!r}") from None
    if not sweeps or not all(0 <= k < N_SWEEPS for k in sweeps):
        raise ValueError(f"sweeps must lie in 0..{N_SWEEPS - 1} (ranges a-b with a <= b), "
                         f"got {spec!r}")
    return tuple(sorted(set(sweeps)))


def drive_with_sweeps(x: torch.Tensor, sweeps: torch.Tensor, driving: int = 0) -> torch.Tensor:
    """Put each sample's sweep ``sweeps[b]`` where the network reads its driving sweep.

    x: (batch, channels, 12, T, features); sweeps: (batch,) sweep indices; returns a copy
    whose sweep ``driving`` is ``x[b, :, sweeps[b]]`` (the other sweeps unchanged). Training
    on other sweeps of the same objects (``--train-sweeps``) this way leaves the model's
    published ``x[:, :, 0]`` untouched.
    """
    if x.dim() != 5 or tuple(sweeps.shape) != (x.shape[0],):
        raise ValueError(f"drive_with_sweeps expects x (batch, channels, sweeps, T, features) "
                         f"and sweeps (batch,), got {tuple(x.shape)} and {tuple(sweeps.shape)}")
    out = x.clone()
    out[:, :, driving] = x[torch.arange(x.shape[0]), :, sweeps.to(torch.long)]
    return out


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
        self.deprived_whiskers = tuple(int(w) for w in _parse_deprived(deprived_whiskers))
        self.n_steps = N_SPIKE_STEPS if n_steps is None else int(n_steps)
        if not 1 <= self.n_steps <= N_SPIKE_STEPS:
            raise ValueError(f"n_steps must be in 1..{N_SPIKE_STEPS}, got {n_steps}")
        self.epoch = 0
        self._drawn = {}                     # index -> spikes, when drawn once
        idx = np.asarray(self.deprived_whiskers, dtype=np.int64)
        with _WhiskerFile(self.path) as wf:
            n = wf.n
            # (N, 2, 12, 110, 93) float32
            self.probs = torch.empty((n, 2, N_SWEEPS, N_STEPS, N_WHISKERS * N_NODES), dtype=torch.float32)
            for start, f, t in wf.chunks():
                _deprive(f, t, idx)
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
        idx = _parse_deprived(whiskers)
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
        sets = [_parse_deprived(ws) for ws in deprived_sets]
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
        return float(_prob(zero, FORCE_OFFSET)[0]), float(_prob(zero, TORQUE_OFFSET)[0])

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
        _check_features(features)     # before the file is read
        self.features = features
        self.path = Path(path)
        self.deprived_whiskers = tuple(int(w) for w in _parse_deprived(deprived_whiskers))
        self.n_steps = N_STEPS if n_steps is None else int(n_steps)
        if not 1 <= self.n_steps <= N_STEPS:
            raise ValueError(f"n_steps must be in 1..{N_STEPS}, got {n_steps}")
        idx = np.asarray(self.deprived_whiskers, dtype=np.int64)
        with _WhiskerFile(self.path) as wf:
            n = wf.n
            self.samples = torch.empty((n, 1, N_SWEEPS, self.n_steps, N_WHISKERS * N_NODES * 6),
                                       dtype=torch.float32)
            for start, f, t in wf.chunks():
                _deprive(f, t, idx)
                rv = realvalued_samples(f, t, features)[:, :, :, :self.n_steps]
                self.samples[start:start + len(f)] = torch.from_numpy(
                    np.ascontiguousarray(rv).reshape(len(f), 1, N_SWEEPS, self.n_steps, -1))
            self.labels = torch.from_numpy(wf.labels.copy())

    def deprived(self, whiskers) -> "RealValuedWhiskerDataset":
        """A copy with ``whiskers`` also silenced (their features 0), without reading the file.

        Equals a dataset built with those ``deprived_whiskers``: a whisker with zero force and
        torque has zero features (either kind), and the other whiskers' features do not change.
        """
        idx = _parse_deprived(whiskers)
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
            idx = _parse_deprived(ws)
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


def data_dir_of_run(train_config: dict | None, data_dir=None) -> Path:
    """``data_dir`` when given, else the training run's ``--data-dir`` (default ``data``)."""
    return Path(data_dir or (train_config or {}).get("data_dir") or "data")


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


def check_data_folder(data_dir, flag: str = "--data-dir") -> Path:
    """``data_dir`` as a Path; a path naming a file (not the folder of the two files) is a
    ``ValueError`` naming ``flag``."""
    data_dir = Path(data_dir)
    if data_dir.is_file():
        raise ValueError(f"{flag} {data_dir} is a file; give the folder that holds "
                         f"{TRAIN_FILE} and {TEST_FILE}"
                         + (f" ({data_dir.parent})" if data_dir.name in (TRAIN_FILE, TEST_FILE)
                            else ""))
    return data_dir


def ensure_dataset(data_dir, objects_per_class: int = 91, seed: int = 0, workers=None,
                   log=print, progress: bool = False) -> tuple[Path, Path]:
    """Return (train_path, test_path) in ``data_dir``, generating both with whisker_sim when
    the folder holds neither.

    Data is generated only into an existing folder that holds neither file, so a user's own
    files are never written over: a folder holding one of the two files, or a folder that
    does not exist (a typo in ``--data-dir``), is a ``FileNotFoundError`` that says what is
    missing and how to generate data (``python whisker_sim.py --out DIR``).
    """
    data_dir = check_data_folder(data_dir)
    train, test = data_dir / TRAIN_FILE, data_dir / TEST_FILE
    have = [p for p in (train, test) if p.exists()]
    if len(have) == 1:
        missing = test if have[0] == train else train
        raise FileNotFoundError(
            f"{data_dir} holds {have[0].name} but not {missing.name}; add the missing file, or "
            f"generate a complete dataset into a new folder with python whisker_sim.py --out DIR "
            f"and pass --data-dir DIR (the existing file is left alone)")
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data folder {data_dir} does not exist; check --data-dir, or generate a dataset "
            f"there with python whisker_sim.py --out {data_dir}")
    if not have:
        import whisker_sim

        log(f"whisker data not found in {data_dir}: generating a simulated dataset "
            f"({objects_per_class} objects per class, seed {seed}) with whisker_sim ...")
        whisker_sim.generate_dataset(data_dir, objects_per_class=objects_per_class, seed=seed,
                                     workers=workers, progress=progress)
        log(f"wrote {train} and {test}")
    return train, test


def dataset_identity(data_dir) -> dict:
    """What identifies the dataset in ``data_dir``, recorded in checkpoints so that a network
    used on other data can say so: for a generated dataset its generator version, seed and
    objects per class (the simulator's file attributes); for other files (the original
    dataset) the sha256 of each file. Missing files: ``{}``."""
    import h5py

    from common import sha256_of

    data_dir = Path(data_dir)
    paths = [data_dir / TRAIN_FILE, data_dir / TEST_FILE]
    if not all(p.is_file() for p in paths):
        return {}
    try:
        with h5py.File(paths[0], "r") as h5:
            attrs = {k: h5.attrs[k] for k in ("generator_version", "seed", "objects_per_class")
                     if k in h5.attrs}
    except OSError:
        return {}
    if len(attrs) == 3:
        return {"generator_version": str(attrs["generator_version"]),
                "seed": int(attrs["seed"]), "objects_per_class": int(attrs["objects_per_class"])}
    return {"sha256": {p.name: sha256_of(p) for p in paths}}


def describe_identity(identity: dict) -> str:
    if not identity:
        return "an unrecorded dataset"
    if "generator_version" in identity:
        return (f"data generated by {identity['generator_version']} (seed {identity['seed']}, "
                f"{identity['objects_per_class']} objects per class)")
    return "files with sha256 " + ", ".join(f"{k} {v[:12]}" for k, v in
                                            sorted(identity.get("sha256", {}).items()))


def ensure_run_dataset(trained_on: dict | None, data_dir, log=print) -> Path:
    """The data folder a trained network is evaluated on, ready to read.

    When ``data_dir`` holds neither file and the network records that it was trained on data
    of this simulator (``trained_on``: a checkpoint's ``dataset``, see
    :func:`dataset_identity`), that dataset is generated there first (same seed and size:
    the same files). When the data differs from what the network was trained on, that is
    said once with ``log``; the evaluation goes on.
    """
    data_dir = Path(data_dir)
    trained_on = trained_on if isinstance(trained_on, dict) else {}
    missing = not any((data_dir / f).exists() for f in (TRAIN_FILE, TEST_FILE))
    if missing and "generator_version" in trained_on:
        import whisker_sim

        if trained_on["generator_version"] != whisker_sim.GENERATOR_VERSION:
            log(f"note: the network was trained on data of {trained_on['generator_version']}; "
                f"this simulator is {whisker_sim.GENERATOR_VERSION}")
        ensure_dataset(data_dir, objects_per_class=int(trained_on["objects_per_class"]),
                       seed=int(trained_on["seed"]), log=log)
    if trained_on:
        here = dataset_identity(data_dir)
        if here and here != trained_on:
            log(f"note: this network was trained on {describe_identity(trained_on)}; "
                f"{data_dir} holds {describe_identity(here)}")
    return data_dir
