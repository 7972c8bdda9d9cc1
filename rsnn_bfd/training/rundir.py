"""The run directory of a training run: claiming it, and its metrics and learning curves.

    checkpoint.pth, best.pth   see :mod:`rsnn_bfd.io.checkpoint`
    metrics.csv                one row per epoch (:data:`METRIC_FIELDS`)
    learning_curves.png        loss and accuracy against epoch
    config.json                the training config
    .lock                      held while a process trains here
                               (:class:`rsnn_bfd.writing.DirectoryLock`)

The other commands' result folders follow the same rules (:mod:`rsnn_bfd.writing`).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from rsnn_bfd.writing import DirectoryLock, atomic_path, atomic_write_text, claim_results_dir

METRIC_FIELDS = ("epoch", "loss", "train_acc", "test_loss", "test_acc", "lr", "firing_rate",
                 "seconds")
# appended to METRIC_FIELDS in runs with a validation set (``--val-fraction``)
VAL_FIELDS = ("val_loss", "val_acc")
RUN_FILES = ("config.json", "checkpoint.pth", "best.pth", "metrics.csv", "learning_curves.png")


def read_metrics(path) -> list[dict]:
    """Rows of ``metrics.csv`` as dicts of floats (``epoch`` as int)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()} for r in rows]


def write_metrics(rows: list[dict], path) -> None:
    """Write ``metrics.csv`` atomically (header :data:`METRIC_FIELDS`, then
    :data:`VAL_FIELDS` when the rows have them)."""
    fields = METRIC_FIELDS + (VAL_FIELDS if rows and all(k in rows[0] for k in VAL_FIELDS)
                              else ())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r[k] for k in fields})
    atomic_write_text(buf.getvalue(), path)


def plot_learning_curves(rows: list[dict], path, title: str = "") -> None:
    """Loss and accuracy (train / test) against epoch, as a PNG (Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ep = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(ep, [r["loss"] for r in rows], "o-", label="train")
    ax1.plot(ep, [r["test_loss"] for r in rows], "s-", label="test")
    if rows and "val_loss" in rows[0]:
        ax1.plot(ep, [r["val_loss"] for r in rows], "^-", label="validation")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax2.plot(ep, [r["train_acc"] for r in rows], "o-", label="train")
    ax2.plot(ep, [r["test_acc"] for r in rows], "s-", label="test")
    if rows and "val_acc" in rows[0]:
        ax2.plot(ep, [r["val_acc"] for r in rows], "^-", label="validation")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # epochs are counted
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def same_dir(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def claim_run_dir(out, resume: str = "", overwrite: bool = False) -> DirectoryLock:
    """Lock the run folder ``out`` for this process and check that training there loses nothing.

    A folder that already holds a run (any of :data:`RUN_FILES`) is refused unless this run
    continues it (``resume`` is a checkpoint in ``out``) or ``overwrite`` is set. The earlier
    run's files are then replaced (atomically) by the new run's when its first epoch ends,
    all five of them, so a run that fails before that leaves the earlier one as it was.
    Temporary files of writes interrupted by a killed process are cleaned up. Raises
    ``ValueError`` (one line); returns the held :class:`DirectoryLock`.
    """
    continuing = bool(resume) and same_dir(Path(resume).parent, out)
    return claim_results_dir(out, RUN_FILES, overwrite or continuing, "a run", "training",
                             f"continue it with --resume {Path(out)}, replace "
                             "it with --overwrite, or choose another --out")
