"""The README's commands as a newcomer runs them: from the root of a fresh clone (no dataset in
``data/``), with its relative paths, one after another, in the README's order.

The commands are read from the README's "Set up and run" block; :data:`SMALL` appends the
flags that make each one small (a few samples, 20 steps). The shipped network records the
dataset it was trained on (91 objects per class, 800 MB); the clone's copy of it records a
dataset of 5 objects per class instead, so that the first command generates a dataset, as on
a fresh clone, in seconds. The code the commands run is this checkout's (``PYTHONPATH``).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import small_shipped_network

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = "data/RSNN_bfd_spiking_generated.pth"
QUICK = ["--n-steps", "20", "--no-progress"]
# each command of the README (as written there) -> the flags appended to make it small
SMALL = {
    f"RSNN_bfd_whisker_deprivation.py --checkpoint {SHIPPED} --out runs/shipped":
        ["--trials", "1", "--max-removed", "2", *QUICK],
    f"utils.py --checkpoint {SHIPPED} --out runs/shipped_figures":
        ["--max-samples", "6", "--const-steps", "20", "--cv-w", "0.02", "--cv-b", "0.1",
         "--cv-samples", "2", *QUICK],
    "RSNN_bfd_SpikingBased.py --preset fit --epochs 15 --out runs/fit":
        ["--epochs", "1", *QUICK],
    "RSNN_bfd_whisker_deprivation.py --checkpoint runs/fit/best.pth":
        ["--trials", "1", "--max-removed", "2", "--no-progress"],
    "RSNN_bfd_SpikingBased.py --out runs/paper":
        ["--epochs", "1", "--batch-size", "4", *QUICK],
}


def readme_commands() -> list[str]:
    """The ``python ...`` lines of the README's "Set up and run" block, without ``python``
    and comments, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [ln.split("#", 1)[0].strip() for ln in block.splitlines()]
    return [ln[len("python "):] for ln in lines if ln.startswith("python ")]


def test_every_command_of_the_readme_is_run_here():
    assert readme_commands() == list(SMALL), "update SMALL with the README's commands"


def fresh_clone(where: Path) -> Path:
    """The root scripts and the shipped network (recording a small dataset), no dataset."""
    clone = where / "clone"
    clone.mkdir()
    for script in ROOT.glob("*.py"):
        shutil.copy(script, clone / script.name)
    small_shipped_network(clone / SHIPPED, objects_per_class=5)   # every class in both files
    return clone


def run(command: str, extra: list[str], cwd: Path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               MPLBACKEND="Agg")
    return subprocess.run([sys.executable, *shlex.split(command), *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_first_command_generates_the_dataset_keeps_it_and_writes_its_results(tmp_path):
    clone = fresh_clone(tmp_path)
    first = next(iter(SMALL))
    proc = run(first, SMALL[first], clone)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "generating a simulated dataset" in proc.stdout + proc.stderr
    data = sorted(p.name for p in (clone / "data").iterdir())
    assert data == ["RSNN_bfd_spiking_generated.pth", "snn_test3.h5", "snn_train3.h5"], data
    results = sorted(p.name for p in (clone / "runs" / "shipped").iterdir())
    assert results == ["deprivation.csv", "deprivation.json", "deprivation.png"], results


@pytest.mark.slow
def test_every_readme_command_runs_in_order_on_a_fresh_clone(tmp_path):
    clone = fresh_clone(tmp_path)
    for command, extra in SMALL.items():
        proc = run(command, extra, clone)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
    assert (clone / "data" / "snn_train3.h5").is_file()
    for path in ("runs/shipped/deprivation.png", "runs/shipped_figures/anova_selectivity.png",
                 "runs/shipped_figures/cv_grid.png", "runs/fit/best.pth",
                 "runs/fit/deprivation.json", "runs/paper/metrics.csv"):
        assert (clone / path).is_file(), path
