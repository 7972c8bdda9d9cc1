"""Generate a whisker dataset with the layout and character of the original files.

``generate_dataset(out)`` writes ``out/snn_train3.h5`` and ``out/snn_test3.h5`` (a folder
holding either is refused unless ``overwrite``; both are renamed into place together when the
generation ends):

    force   (N, 12, 110, 31, 3, 3) float32   sweeps x frames x whiskers x nodes x (x, y, z), world frame
    torque  (N, 12, 110, 31, 3, 3) float32
    label   (N,) float64                     53 helmet, 55 box, 113 plane

with an 80/20 split inside each class (218/55 for 91 objects per class) and the generation
parameters as file attributes. Same seed -> byte-identical files, whatever ``workers``
(each object has its own seed, ``SeedSequence([seed, class, object])``). One object's sweeps:
:mod:`rsnn_bfd.data.simulator.sweeps`.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from rsnn_bfd.common import cap_workers, end_with_parent
from rsnn_bfd.writing import DirectoryLock, atomic_path, check_writable_dir, remove_stale_temps
from rsnn_bfd.data.files import CLASS_LABELS, CLASS_NAMES, TEST_FILE, TRAIN_FILE
from rsnn_bfd.data.simulator.params import GENERATOR_VERSION, PARAMS
from rsnn_bfd.data.simulator.sweeps import simulate_task


# ----------------------------------------------------------------------------- dataset
def split_counts(objects_per_class: int) -> list[int]:
    """Test objects per class: 20 % of the total (rounded), spread as evenly as possible."""
    n_test = int(round(PARAMS["test_fraction"] * 3 * objects_per_class))
    base = n_test // 3
    return [base + (1 if c < n_test - 3 * base else 0) for c in range(3)]


def plan(objects_per_class: int, seed: int):
    """(train, test) lists of (class_index, seed entropy) in file order."""
    n_test = split_counts(objects_per_class)
    train, test = [], []
    for c in range(3):
        for j in range(objects_per_class):
            task = (c, (int(seed), c, j))
            (test if j >= objects_per_class - n_test[c] else train).append(task)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 999]))
    train = [train[i] for i in rng.permutation(len(train))]
    test = [test[i] for i in rng.permutation(len(test))]
    return train, test


def generate_dataset(out, objects_per_class: int = 91, seed: int = 0, workers=None, log=None,
                     progress: bool = False, overwrite: bool = False):
    """Write ``out/snn_train3.h5`` and ``out/snn_test3.h5``; return their paths.

    About 800 MB (uncompressed float32) for the default 91 objects per class: 218 training
    and 55 test objects.
    ``progress``: a tqdm bar per file. A folder that holds either file is refused (a
    ``ValueError``) unless ``overwrite`` is set; both files are written to temporary files
    and renamed into place together at the end, so an interrupted generation leaves what
    was there. Temporary files of an earlier, interrupted generation into ``out`` are
    deleted first. ``workers`` above the machine's cores are capped (a notice to ``log``).
    """
    out = check_writable_dir(out)
    # the writer's lock before the first look at what the folder holds, to the end
    with DirectoryLock(out, "whisker_sim"):
        links = [out / n for n in (TRAIN_FILE, TEST_FILE) if (out / n).is_symlink()]
        if links:   # a link stands for the user's data elsewhere: never generated over
            raise ValueError(f"{links[0]} is a link to {os.readlink(links[0])}; the simulator "
                             "does not write over a link (even with --overwrite): give "
                             "another --out, or remove the link")
        existing = [name for name in (TRAIN_FILE, TEST_FILE) if (out / name).exists()]
        if existing and not overwrite:
            raise ValueError(f"{out} already holds {' and '.join(existing)}; the simulator does "
                             f"not write over a dataset: give another --out, or --overwrite to "
                             f"replace {'it' if len(existing) == 1 else 'them'}")
        remove_stale_temps(out, (TRAIN_FILE, TEST_FILE))
        return _generate(out, objects_per_class, seed, cap_workers(workers, "--workers", log),
                         log, progress)


def _generate(out: Path, objects_per_class: int, seed: int, workers: int, log,
              progress: bool) -> tuple[Path, Path]:
    import h5py
    from tqdm import tqdm

    train, test = plan(objects_per_class, seed)
    paths = (out / TRAIN_FILE, out / TEST_FILE)
    t0 = time.time()
    shape = (PARAMS["n_sweeps"], PARAMS["n_frames"], 31, 3, 3)
    pool = (ProcessPoolExecutor(max_workers=workers, initializer=end_with_parent,
                                initargs=(os.getpid(),)) if workers > 1 else None)
    try:
        # both files are renamed into place when the block ends, one right after the other
        with contextlib.ExitStack() as stack:
            tmps = [stack.enter_context(atomic_path(path)) for path in paths]
            for path, tmp, tasks in zip(paths, tmps, (train, test)):
                with h5py.File(tmp, "w", libver="earliest") as h5:
                    n = len(tasks)
                    kw = dict(dtype=np.float32, track_times=False)
                    dsf = h5.create_dataset("force", (n,) + shape, **kw)
                    dst = h5.create_dataset("torque", (n,) + shape, **kw)
                    h5.create_dataset("label", data=np.array([CLASS_LABELS[c] for c, _ in tasks], np.float64),
                                      track_times=False)
                    results = pool.map(simulate_task, tasks) if pool else map(simulate_task, tasks)
                    results = tqdm(results, total=n, desc=f"simulating {path.name}",
                                   unit="object", disable=not progress)
                    for i, (f, tq) in enumerate(results):
                        dsf[i] = f
                        dst[i] = tq
                    h5.attrs["seed"] = int(seed)
                    h5.attrs["objects_per_class"] = int(objects_per_class)
                    h5.attrs["generator_version"] = GENERATOR_VERSION
                    h5.attrs["split"] = "train" if path.name == TRAIN_FILE else "test"
                    h5.attrs["parameters"] = json.dumps(PARAMS, sort_keys=True)
                    h5.attrs["classes"] = json.dumps(dict(zip(CLASS_NAMES, CLASS_LABELS)))
                if log:
                    log(f"simulated {path.name} ({len(tasks)} objects, {time.time() - t0:.1f} s)")
        if log:
            log(f"wrote {paths[0]} and {paths[1]}")
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return paths
