"""The whisker sweep files (``snn_train3.h5`` / ``snn_test3.h5``): layout, constants, reader.

File layout (the original Bullet-simulation files, or files made by ``whisker_sim.py``):

    force   (N, 12, 110, 31, 3, 3) float32   sweeps x frames x whiskers x nodes x (x, y, z)
    torque  (N, 12, 110, 31, 3, 3) float32
    label   (N,)                   any numeric dtype, values 53 (helmet), 55 (box), 113 (plane)

Whisker deprivation zeroes force and torque of the listed whiskers before encoding (their spike
probability is then the floor value ``sigmoid(log 1e-5 - c)``, exactly as for any untouched
whisker).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

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
              "dataset with `python whisker_sim.py --out DIR`")   # see how_to_get(folder)
_CHUNK = 16  # samples read from disk at a time


class WhiskerDataError(ValueError):
    """A whisker data file is missing or malformed (the message says how to get good data)."""


def how_to_get(folder) -> str:
    """What to do about a missing or malformed file in the data folder ``folder``."""
    if any((Path(folder) / f).exists() for f in (TRAIN_FILE, TEST_FILE)):
        where = ("into a new folder with `python whisker_sim.py --out NEW_DIR` (then --data-dir "
                 "NEW_DIR)")
    else:
        where = f"with `python whisker_sim.py --out {folder}`"
    return ("get the original snn_train3.h5/snn_test3.h5 files, or generate a compatible "
            f"dataset {where}")


def _fail(path, what: str):
    raise WhiskerDataError(f"{path}: {what}; {how_to_get(Path(path).parent)}")


def parse_deprived(deprived_whiskers: Iterable[int]) -> np.ndarray:
    idx = np.asarray(sorted({int(w) for w in deprived_whiskers}), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= N_WHISKERS):
        raise ValueError(f"deprived whisker indices must be in 0..{N_WHISKERS - 1}, got {idx.tolist()}")
    return idx


class WhiskerFile:
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
    with WhiskerFile(path) as wf:
        return wf.labels.copy()


def deprive(force: np.ndarray, torque: np.ndarray, idx: np.ndarray):
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
    idx = parse_deprived(deprived_whiskers)
    with WhiskerFile(path) as wf:
        force = np.empty((wf.n,) + SAMPLE_SHAPE, np.float32)
        torque = np.empty_like(force)
        for start, f, t in wf.chunks():
            force[start:start + len(f)] = f
            torque[start:start + len(t)] = t
        labels = wf.labels.copy()
    deprive(force, torque, idx)
    return force, torque, labels


def check_data_folder(data_dir, flag: str = "--data-dir") -> Path:
    """``data_dir`` as a Path; a path naming a file (not the folder of the two files) is a
    ``ValueError`` naming ``flag``, a link (the folder or one of its two files) to nothing a
    ``FileNotFoundError`` naming the link and its target."""
    data_dir = Path(data_dir)
    for path in (data_dir, data_dir / TRAIN_FILE, data_dir / TEST_FILE):
        if path.is_symlink() and not path.exists():   # the user's data, on a disk not there
            raise FileNotFoundError(
                f"{path} is a link to {os.readlink(path)}, which does not exist (an unmounted "
                f"disk?); mount it or fix the link ({flag} {data_dir}). Nothing is generated "
                "over a link")
    if data_dir.is_file():
        raise ValueError(f"{flag} {data_dir} is a file; give the folder that holds "
                         f"{TRAIN_FILE} and {TEST_FILE}"
                         + (f" ({data_dir.parent})" if data_dir.name in (TRAIN_FILE, TEST_FILE)
                            else ""))
    return data_dir


def dataset_identity(data_dir) -> dict:
    """What identifies the dataset in ``data_dir``, recorded in checkpoints so that a network
    used on other data can say so: for a generated dataset its generator version, seed and
    objects per class (the simulator's file attributes); for other files (the original
    dataset) the sha256 of each file. Missing files: ``{}``."""
    import h5py

    from rsnn_bfd.common import sha256_of

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
