"""Shared test fixtures: where the golden cases live and how their absence is handled.

Golden cases are read from ``$GOLDEN_DIR`` (default ``../shared/golden`` relative to the
project root). On a user's clone that folder is absent and golden tests skip with a reason;
CI sets ``REQUIRE_GOLDEN=1`` so that a missing or empty folder fails instead.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# pytest.ini runs the suite in two pytest-xdist workers (-n 2); each computes on one thread,
# so that the two share two cores instead of four threads contending for them (measured:
# 8 min 45 s against 12 min 38 s with two threads each, 16 min 13 s in one process).
# Subprocesses the tests start inherit OMP_NUM_THREADS.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numba
    import torch
    torch.set_num_threads(1)
    numba.set_num_threads(1)

GOLDEN_DIR = Path(os.environ.get("GOLDEN_DIR", ROOT.parent / "shared" / "golden"))
REQUIRE_GOLDEN = os.environ.get("REQUIRE_GOLDEN", "") not in ("", "0")


def golden_cases(pattern):
    """Parameters for every golden file matching ``pattern``, with the file stem as test id.

    Returns a list usable by ``pytest.mark.parametrize``. When no file matches, returns a
    single parameter that skips (or fails under ``REQUIRE_GOLDEN=1``) with the reason.
    """
    files = sorted(GOLDEN_DIR.glob(pattern)) if GOLDEN_DIR.is_dir() else []
    if files:
        return [pytest.param(f, id=f.stem) for f in files]
    reason = f"no golden cases matching {pattern!r} in {GOLDEN_DIR} (set GOLDEN_DIR)"
    if REQUIRE_GOLDEN:
        # the test body calls require_golden_file(None), which fails with the reason
        return [pytest.param(None, id="missing")]
    return [pytest.param(None, id="missing", marks=pytest.mark.skip(reason=reason))]

def require_golden_file(path):
    """Fail clearly inside a test when a golden case is required but missing."""
    if path is None:
        pytest.fail(f"REQUIRE_GOLDEN is set but {GOLDEN_DIR} holds no golden cases; "
                    "set GOLDEN_DIR to the folder of golden cases")
    return path


def run_main(main, argv):
    """``(rc, stderr lines)`` of a script's ``main(argv)`` run in this process as its command
    line runs it (``cli.run_cli``: errors become one line and rc 2; argparse's usage errors
    exit, caught here)."""
    import contextlib
    import io

    from rsnn_bfd.cli import run_cli
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = run_cli(main, argv)
        except SystemExit as exit_:
            rc = exit_.code
    return rc, [ln for ln in err.getvalue().splitlines() if ln.strip()]


_HOLD = ("import sys, time; sys.path.insert(0, {root!r}); from rsnn_bfd.writing import "
         "DirectoryLock; lock = DirectoryLock({d!r}, 'holding').acquire(); "
         "print('locked', flush=True); time.sleep(120)")


def hold_lock(folder):
    """Another process that takes ``folder``'s writer's lock and keeps it (kill it to end it)."""
    import subprocess
    proc = subprocess.Popen([sys.executable, "-c", _HOLD.format(root=str(ROOT), d=str(folder))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


SHIPPED = ROOT / "data" / "RSNN_bfd_spiking_generated.pth"


def small_shipped_network(path, objects_per_class: int = 3):
    """A copy of the shipped network at ``path`` that records a dataset of
    ``objects_per_class`` objects per class instead of its 91, so that a command generating
    the network's dataset (as on a fresh clone) takes seconds."""
    from rsnn_bfd.io.checkpoint import load_checkpoint, save_checkpoint
    model, ckpt = load_checkpoint(SHIPPED)
    extra = {k: ckpt[k] for k in ("best_test_acc", "test_acc", "metrics", "source") if k in ckpt}
    extra["dataset"] = dict(ckpt["dataset"], objects_per_class=objects_per_class)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, None, None, ckpt["epoch"], ckpt["train_config"], extra)
    return Path(path)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A simulated dataset of 5 objects per class (12 train / 3 test samples), generated once
    for the whole session; tests only read it."""
    from rsnn_bfd.data.simulator.generate import generate_dataset
    d = tmp_path_factory.mktemp("tiny_data")
    generate_dataset(d, objects_per_class=5, seed=0, workers=2)
    return d
