"""What a whisker dataset's sweeps look like: contact rates, first contacts, static presses,
and a nearest-class-mean check of how much class information per-whisker contact carries.

``python whisker_sim.py --stats DIR`` writes :func:`dataset_statistics` of a dataset as
``DIR/sweep_statistics.json``. Arrays follow the file layout: force (N, 12, 110, 31, 3, 3).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rsnn_bfd.data.files import CLASS_NAMES, TEST_FILE, TRAIN_FILE


def contact_features(force) -> np.ndarray:
    """Per-whisker contact features (N, 62): fraction of frames in contact and mean log(1 + |F|)
    at the base node, each averaged over sweeps and frames."""
    mag = np.linalg.norm(np.asarray(force)[..., 0, :], axis=-1)  # (N, 12, 110, 31)
    return np.concatenate([(mag > 0).mean((1, 2)), np.log1p(mag).mean((1, 2))], axis=1)


def contact_rates(force) -> np.ndarray:
    """Per-whisker fraction of sweeps with any contact, (31,)."""
    mag = np.linalg.norm(np.asarray(force)[..., 0, :], axis=-1)
    return (mag > 0).any(axis=2).mean(axis=(0, 1))


def first_contact_frames(force) -> np.ndarray:
    """Frame of the first contact of any whisker, per object and sweep (N, 12); -1 if none."""
    touched = (np.linalg.norm(np.asarray(force)[..., 0, :], axis=-1) > 0).any(-1)  # (N, 12, 110)
    return np.where(touched.any(-1), touched.argmax(-1), -1)


def sweep_statistics(force, labels) -> dict:
    """What the sweeps look like: first contact, contact rates and static presses.

    force (N, 12, 110, 31, 3, 3); labels (N,) class indices 0..2. Per class: quartiles of
    the first-contact frame over sweep 0 and over all sweeps, and the fraction of sweeps
    touching at frame 0 or never. Overall: per-whisker sweep contact rates, the fraction of
    base-node frames in contact (all sweeps, sweep 0), and the fraction of contact frames
    whose force equals the previous frame's (a static press).
    """
    force, labels = np.asarray(force), np.asarray(labels)
    base = force[..., 0, :]                                   # (N, 12, 110, 31, 3)
    touched = np.linalg.norm(base, axis=-1) > 0
    first = first_contact_frames(force)
    per_class = {}
    for c, kind in enumerate(CLASS_NAMES):
        fc = first[labels == c]
        entry = {}
        for name, f in (("sweep0", fc[:, 0]), ("all_sweeps", fc.ravel())):
            hit = f[f >= 0]
            entry[name] = {"first_contact_quartiles": (np.percentile(hit, [25, 50, 75]).tolist()
                                                       if hit.size else None),
                           "at_frame0": float((f == 0).mean()) if f.size else 0.0,
                           "never": float((f < 0).mean()) if f.size else 0.0}
        entry["contact_fraction_sweep0"] = float(touched[labels == c, 0].mean()) if fc.size else 0.0
        per_class[kind] = entry
    same = (np.abs(np.diff(base, axis=2)).sum(-1) == 0) & touched[:, :, 1:]
    return {"n_objects": int(len(labels)), "per_class": per_class,
            "contact_rate_per_whisker": contact_rates(force).round(4).tolist(),
            "contact_fraction": float(touched.mean()),
            "contact_fraction_sweep0": float(touched[:, 0].mean()),
            "static_press_fraction": float(same.sum() / max(touched[:, :, 1:].sum(), 1)),
            "first_contact_at_frame0": float((first == 0).mean())}


def nearest_class_mean_accuracy(x_train, y_train, x_test, y_test) -> float:
    """Accuracy of a nearest-class-mean classifier on standardised features."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-9
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    classes = np.unique(y_train)
    means = np.stack([a[y_train == c].mean(0) for c in classes])
    pred = classes[((b[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
    return float((pred == y_test).mean())


def dataset_statistics(data_dir) -> dict:
    """:func:`sweep_statistics` of both files of ``data_dir`` together."""
    from rsnn_bfd.data.files import load_whisker_file

    parts = [load_whisker_file(Path(data_dir) / name) for name in (TRAIN_FILE, TEST_FILE)]
    force = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    return sweep_statistics(force, labels)


def write_statistics(data_dir) -> dict:
    """``--stats``: :func:`dataset_statistics` of the dataset in
    ``data_dir``, written as ``data_dir/sweep_statistics.json``."""
    from rsnn_bfd.writing import atomic_write_json
    from rsnn_bfd.data.files import check_data_folder
    from rsnn_bfd.data.simulator.statistics import dataset_statistics

    data_dir = check_data_folder(data_dir, "--stats")
    missing = [name for name in (TRAIN_FILE, TEST_FILE) if not (data_dir / name).is_file()]
    if missing:
        raise ValueError(f"--stats {data_dir}: no dataset there ({' and '.join(missing)} "
                         f"missing); generate one with python whisker_sim.py --out {data_dir}")
    stats = dataset_statistics(data_dir)
    atomic_write_json(stats, data_dir / "sweep_statistics.json")
    return stats
