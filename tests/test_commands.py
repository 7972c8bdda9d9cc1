"""Every command that writes a folder: a second writer (this process) into a folder another
process holds is refused with one line naming the holder, and nothing there is touched;
resource flags are checked against the machine (issue: every writer locks)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import hold_lock, run_main

ROOT = Path(__file__).resolve().parents[1]
CV = ROOT / "docs" / "cv" / "91"


def run(args, cwd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    """A weights-only checkpoint of an untrained network (what the writers read)."""
    from rsnn_bfd.io.checkpoint import save_checkpoint
    from rsnn_bfd.network.model import ModelConfig, build_model
    path = tmp_path_factory.mktemp("net") / "best.pth"
    save_checkpoint(path, build_model(ModelConfig()), epoch=0,
                    train_config={"data_dir": "nowhere", "n_steps": 6})
    return path


COMMANDS = {
    "training": lambda d, net: ["RSNN_bfd_SpikingBased.py", "--out", d, "--data-dir", "nowhere"],
    "deprivation": lambda d, net: ["RSNN_bfd_whisker_deprivation.py", "--checkpoint", net,
                                   "--out", d],
    "analyses": lambda d, net: ["utils.py", "--checkpoint", net, "--out", d,
                                "--analysis", "degree"],
    "simulator": lambda d, net: ["whisker_sim.py", "--out", d, "--objects-per-class", "5"],
    "baselines": lambda d, net: ["baselines.py", "--out", d, "--data-dir", "nowhere"],
    "convert": lambda d, net: ["checkpoint.py", "convert", net, Path(d) / "network.pth"],
    "summary": lambda d, net: ["crossval.py", "summarize", CV / "cnn", CV / "rnn", "--out", d],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_folder_another_process_writes_is_refused_and_untouched(command, network, tmp_path):
    held = tmp_path / "held"
    held.mkdir()
    (held / "metrics.csv").write_text("the other writer's\n")
    holder = hold_lock(held)
    try:
        import importlib
        name, *argv = [str(a) for a in COMMANDS[command](str(held), str(network))]
        rc, lines = run_main(importlib.import_module(name[:-3]).main, argv)   # this process
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        line = lines[0]
        assert f"{held} is in use by process {holder.pid} (holding" in line, line
        assert "started" in line and ("--out" in line or "OUT" in line), line
        assert sorted(p.name for p in held.iterdir()) == [".lock", "metrics.csv"]
        assert (held / "metrics.csv").read_text() == "the other writer's\n"
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held"]   # nothing else made


@pytest.mark.parametrize("args, word", [
    (["baselines.py", "--threads", "-1"], "--threads must be >= 0"),
    (["baselines.py", "--seeds", "0,0"], "--seeds lists 0 more than once"),
    (["baselines.py", "--spike-seed", "-1"], "--spike-seed must be an integer"),
    (["crossval.py", "--threads", "-1"], "--threads must be >= 0"),
    (["whisker_sim.py", "--workers", "0"], "--workers must be >= 1"),
    (["utils.py", "--checkpoint", "x", "--cv-b", "-1"], "--cv-b: give positive init_b"),
    (["utils.py", "--checkpoint", "x", "--cv-w", "2"], "--cv-w: give init_w values in (0, 1]"),
    (["RSNN_bfd_SpikingBased.py", "--preset", "none"], "--preset must be one of"),
])
def test_bad_resource_and_count_flags_are_one_line(args, word, tmp_path):
    import importlib
    script = importlib.import_module(args[0][:-3])          # in this process: fast
    rc, lines = run_main(script.main, [*args[1:], "--out", str(tmp_path / "o")])
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert word in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_more_workers_or_threads_than_cores_are_capped(tmp_path):
    """whisker_sim.py --workers 5000 would start 5,000 processes; it uses the machine's cores."""
    from rsnn_bfd.common import cap_workers, machine_cores
    notes = []
    assert cap_workers(10 ** 5, "--threads", notes.append) == machine_cores()
    assert notes and "--threads 100000 is more than this machine's" in notes[0]
    assert cap_workers(0, "--workers") == cap_workers(None, "--workers") == machine_cores()
    assert cap_workers(1, "--workers") == 1
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        cap_workers(-1, "--workers")
    proc = run([ROOT / "whisker_sim.py", "--out", tmp_path / "d", "--objects-per-class", "5",
                "--workers", "5000", "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"--workers 5000 is more than this machine's {machine_cores()} cores" in proc.stdout


def test_a_data_folder_of_dangling_links_is_an_error_and_the_links_stay(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("snn_train3.h5", "snn_test3.h5"):
        (data / name).symlink_to(tmp_path / "unmounted" / name)
    line = one_line_error(run([ROOT / "RSNN_bfd_SpikingBased.py", "--data-dir", data,
                               "--out", tmp_path / "run"], tmp_path))
    assert f"{data / 'snn_train3.h5'} is a link to {tmp_path / 'unmounted'}" in line, line
    assert "which does not exist" in line and "Nothing is generated over a link" in line
    line = one_line_error(run([ROOT / "whisker_sim.py", "--out", data, "--overwrite"], tmp_path))
    assert "does not write over a link" in line, line
    assert all((data / n).is_symlink() for n in ("snn_train3.h5", "snn_test3.h5"))
    assert sorted(p.name for p in data.iterdir()) == ["snn_test3.h5", "snn_train3.h5"]
    assert not (tmp_path / "run").exists() and not (tmp_path / "unmounted").exists()


@pytest.mark.parametrize("args", [
    ["crossval.py", "--model", "cnn", "--data-dir", "nowhere"],
    ["baselines.py", "--data-dir", "nowhere"],
])
def test_a_failed_start_leaves_no_empty_out(args, tmp_path):
    line = one_line_error(run([ROOT / args[0], *args[1:], "--out", tmp_path / "new" / "o"],
                              tmp_path))
    assert "nowhere" in line, line
    assert not (tmp_path / "new").exists()


def test_the_dataset_error_names_the_folder_given(tmp_path):
    other = tmp_path / "mydata"
    other.mkdir()
    (other / "snn_train3.h5").write_text("not hdf5")
    (other / "snn_test3.h5").write_text("not hdf5")
    line = one_line_error(run([ROOT / "RSNN_bfd_SpikingBased.py", "--data-dir", other,
                               "--out", tmp_path / "run", "--epochs", "1"], tmp_path))
    assert "whisker_sim.py --out NEW_DIR" in line and "--out data" not in line, line


def _interrupt(*a, **k):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", ["simulator", "baselines", "crossval"])
def test_ctrl_c_says_what_is_kept_and_how_to_go_on(command, tiny_data, tmp_path, monkeypatch):
    """Ctrl-C in a long command: one line (exit 130) saying what is kept and how to go on."""
    import baselines
    import crossval
    import whisker_sim
    from rsnn_bfd.study import baselines as study_baselines
    from rsnn_bfd.study import crossvalidation
    out = tmp_path / "o"
    if command == "simulator":
        monkeypatch.setattr(whisker_sim, "generate_dataset", _interrupt)
        main, argv, said = whisker_sim.main, ["--out", str(out)], "no dataset was written"
    elif command == "baselines":
        monkeypatch.setattr(study_baselines, "_train_all", _interrupt)
        main, argv = baselines.main, ["--data-dir", str(tiny_data), "--out", str(out)]
        said = "no baseline results were written"
    else:
        monkeypatch.setattr(crossvalidation, "_baseline_fold", _interrupt)
        main, argv = crossval.main, ["--model", "cnn", "--data-dir", str(tiny_data), "--out",
                                     str(out), "--folds", "2", "--no-progress"]
        said = "fold 0 stopped (a baseline's fold starts again from its first epoch)"
    rc, lines = run_main(main, argv)
    lines = [ln for ln in lines if ln.startswith(("interrupted", "error", "Traceback"))]
    assert rc == 130 and len(lines) == 1, lines
    assert lines[0].startswith(f"interrupted; {said}"), lines
    assert "run the same command again" in lines[0] or "rerun the same command" in lines[0]
