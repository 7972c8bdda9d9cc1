"""The two published encodings of the whisker forces and torques, and the augmentations that
act on encoded input (whisker silencing, driving sweeps).

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
"""
from __future__ import annotations

import numpy as np
import torch

from rsnn_bfd.data.files import (FORCE_OFFSET, N_NODES, N_SWEEPS, N_WHISKERS, TORQUE_OFFSET,
                                 ZERO_NORM)


def spike_probability(v: np.ndarray, offset: float) -> np.ndarray:
    norm = np.linalg.norm(v.astype(np.float64), axis=-1)
    norm[norm == 0] = ZERO_NORM
    x = np.log(norm) - offset
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # numerically stable sigmoid


def spike_probabilities(force, torque) -> tuple[np.ndarray, np.ndarray]:
    """Spike probability per step: ``sigmoid(log|v| - c)``, each (N, 12, 110, 31, 3) float32."""
    return (spike_probability(np.asarray(force), FORCE_OFFSET),
            spike_probability(np.asarray(torque), TORQUE_OFFSET))


def _normalize_sweeps(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    norm = np.sqrt((v * v).sum(axis=1, keepdims=True))
    return v / np.maximum(norm, 1e-12)


def _signed_log(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    return np.sign(v) * np.log1p(np.abs(v))


REALVALUED_FEATURES = {"published": _normalize_sweeps, "signed-log": _signed_log}


def check_features(features: str) -> None:
    if features not in REALVALUED_FEATURES:
        raise ValueError(f"real-valued features must be one of {tuple(REALVALUED_FEATURES)}, "
                         f"got {features!r}")


def realvalued_samples(force, torque, features: str = "published") -> np.ndarray:
    """Real-valued features (N, 1, 12, 110, 31, 18) float32 (see the module docstring)."""
    check_features(features)
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
