"""Whisker deprivation: trial sets, deprived datasets, outputs, and refusing bad checkpoints."""
from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rsnn_bfd.analyses.deprivation import DeprivationConfig, run_deprivation, whisker_sets
from rsnn_bfd.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from conftest import run_main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "RSNN_bfd_whisker_deprivation.py"


ENGINE = "auto"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from rsnn_bfd.data.simulator.generate import generate_dataset
    d = tmp_path_factory.mktemp("whisker_data")
    generate_dataset(d, objects_per_class=2, seed=1, workers=2)
    return d


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory, data_dir):
    """A checkpoint of an untrained spiking model (deprivation needs no training)."""
    from rsnn_bfd.network.model import ModelConfig, build_model
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    model = build_model(ModelConfig(), engine=ENGINE)
    save_checkpoint(path, model, epoch=0, train_config={"data_dir": str(data_dir), "n_steps": 6,
                                                        "spike_seed": 0},
                    extra={"best_test_acc": 0.0})
    return path


def run_cli(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


# ------------------------------------------------------------------------------- trial sets
def test_whisker_sets_layout_and_reproducibility():
    sets = whisker_sets(trials=3, seed=515)
    assert len(sets) == 1 + 31 + 7 * 3
    assert sets[0] == () and sets[1:32] == [(w,) for w in range(31)]
    for i, k in enumerate(range(2, 9)):
        block = sets[32 + 3 * i: 32 + 3 * (i + 1)]
        assert all(len(s) == k == len(set(s)) and list(s) == sorted(s) for s in block)
    assert sets == whisker_sets(trials=3, seed=515)
    assert sets != whisker_sets(trials=3, seed=516)


def test_whisker_sets_draw_from_all_31_whiskers():
    drawn = {w for s in whisker_sets(trials=200, seed=515)[32:] for w in s}
    assert drawn == set(range(31))   # the original code never removed whisker 30


def test_deprived_copy_equals_deprived_dataset(data_dir):
    from rsnn_bfd.data.datasets import RealValuedWhiskerDataset, SpikingWhiskerDataset
    removed = (0, 7, 30)
    base = SpikingWhiskerDataset(data_dir / "snn_test3.h5", seed=3, n_steps=40)
    ref = SpikingWhiskerDataset(data_dir / "snn_test3.h5", seed=3, n_steps=40,
                                deprived_whiskers=removed)
    view = base.deprived(removed)
    for i in range(len(base)):
        assert torch.equal(view[i][0], ref[i][0])
    assert torch.equal(base.probs, SpikingWhiskerDataset(data_dir / "snn_test3.h5").probs)
    rbase = RealValuedWhiskerDataset(data_dir / "snn_test3.h5", n_steps=20)
    rref = RealValuedWhiskerDataset(data_dir / "snn_test3.h5", n_steps=20, deprived_whiskers=removed)
    assert torch.equal(rbase.deprived(removed).samples, rref.samples)


def test_driving_sweep_equals_deprived_samples(data_dir):
    from rsnn_bfd.data.datasets import RealValuedWhiskerDataset, SpikingWhiskerDataset
    sets = [(), (3,), (0, 7, 30)]
    path = data_dir / "snn_train3.h5"   # 5 samples (the test file holds 1)
    for ds in (SpikingWhiskerDataset(path, seed=3, n_steps=40),
               RealValuedWhiskerDataset(path, n_steps=20)):
        x = ds.driving_sweep([1, 0], sets, sweep=0)
        assert x.shape[:2] == (3, 2)
        for k, ws in enumerate(sets):
            for j, i in enumerate([1, 0]):
                assert torch.equal(x[k, j], ds.deprived(ws)[i][0][:, 0])


@pytest.mark.parametrize("encoder, loss, lanes", [("spiking", "published", 5),
                                                  ("realvalued", "published", 7),
                                                  ("spiking", "mean-logit", 7)])
def test_batched_trials_equal_one_trial_at_a_time(data_dir, encoder, loss, lanes):
    """Stacking trials into one pass changes no prediction: each sample keeps the initial-state
    row of its evaluation batch and its input spikes, also in a trial split over two passes
    (7 lanes, 5 samples per trial). The decision is the training loss's."""
    from rsnn_bfd.analyses.deprivation import evaluate_trials
    from rsnn_bfd.data.datasets import RealValuedWhiskerDataset, SpikingWhiskerDataset
    from rsnn_bfd.network.model import ModelConfig, build_model
    from rsnn_bfd.network.readout import class_scores
    from rsnn_bfd.training.step import evaluate
    path = data_dir / "snn_train3.h5"   # 5 samples (the test file holds 1)
    ds = (SpikingWhiskerDataset(path, seed=1, n_steps=30) if encoder == "spiking"
          else RealValuedWhiskerDataset(path, n_steps=20))
    model = build_model(ModelConfig(encoder=encoder, init_b=0.01), engine=ENGINE)
    sets = whisker_sets(trials=1, seed=515, max_removed=3)[:4] + [(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)]
    indices = list(range(len(ds)))
    # batch 2: samples sit in different evaluation batches; lanes 5: one trial per pass,
    # 7: trials straddle passes
    acc, out = evaluate_trials(model, ds, indices, sets, batch_size=2, lanes=lanes,
                               device="cpu", return_outputs=True, loss=loss)
    assert acc == [evaluate(model, ds.deprived(ws), indices, 2, "cpu", loss_kind=loss)["acc"]
                   for ws in sets]
    for ws, o in zip(sets, out):
        view = ds.deprived(ws)
        with torch.no_grad():
            ref = torch.cat([class_scores(model(torch.stack([view[i][0]
                                                             for i in indices[lo:lo + 2]])), loss)
                             for lo in range(0, len(indices), 2)])
        torch.testing.assert_close(o, ref)   # same values; BLAS may order sums by batch size


# ------------------------------------------------------------------------------- outputs
def test_run_deprivation_outputs(ckpt_path, tmp_path):
    cfg = DeprivationConfig(checkpoint=str(ckpt_path), out=str(tmp_path), trials=2,
                            device="cpu", progress=False, engine=ENGINE)
    summary = run_deprivation(cfg, log=lambda *a: None)
    with open(tmp_path / "deprivation.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["n_removed", "trial", "whiskers", "accuracy"]
    assert len(rows) == 1 + 31 + 14
    on_disk = json.loads((tmp_path / "deprivation.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    by = on_disk["by_n_removed"]
    assert [by[str(k)]["n_trials"] for k in range(9)] == [1, 31] + [2] * 7
    import numpy as np
    one = [float(r["accuracy"]) for r in rows if r["n_removed"] == "1"]
    assert by["1"]["mean"] == pytest.approx(np.mean(one)) and by["1"]["std"] == pytest.approx(np.std(one))
    assert on_disk["n_steps"] == 6 and on_disk["seed"] == 515
    assert on_disk["batch_size"] == 128      # the training run's (none stored: 128)
    assert (tmp_path / "deprivation.png").stat().st_size > 0


def test_intact_trial_uses_the_training_runs_batch_size(data_dir, tmp_path):
    """Each sample's initial state depends on its row in the evaluation batch, so the
    intact accuracy equals the run's test accuracy only with the run's batch size."""
    from rsnn_bfd.network.model import ModelConfig, build_model
    model = build_model(ModelConfig(init_b=0.01), engine=ENGINE)
    path = tmp_path / "best.pth"
    save_checkpoint(path, model, train_config={"data_dir": str(data_dir), "n_steps": 6,
                                               "spike_seed": 0, "batch_size": 1})
    runs = {}
    for flag in (-1, 1, 2):
        cfg = DeprivationConfig(checkpoint=str(path), out=str(tmp_path / str(flag)), trials=1,
                                max_removed=1, batch_size=flag, device="cpu", progress=False)
        runs[flag] = run_deprivation(cfg, log=lambda *a: None)
    assert runs[-1]["batch_size"] == 1 and runs[2]["batch_size"] == 2
    assert runs[-1]["by_n_removed"] == runs[1]["by_n_removed"]


# ------------------------------------------------------------------------------- bad files
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))


def _resaved(ck, path):
    """``ck`` written as a checkpoint of its own (its digest recomputed: another architecture
    or version, not a damaged file)."""
    from rsnn_bfd.io.integrity import digest
    ck["digest"] = digest(ck)
    torch.save(ck, path)


def _bad_files(tmp_path, ckpt_path):
    files = {}
    files["text"] = tmp_path / "notes.pth"
    files["text"].write_text("this is not a checkpoint\n")
    blob = ckpt_path.read_bytes()
    files["truncated"] = tmp_path / "truncated.pth"
    files["truncated"].write_bytes(blob[: len(blob) // 3])
    ck = torch.load(ckpt_path, weights_only=True)
    ck["model_state"] = {k: v for k, v in ck["model_state"].items() if not k.startswith("readout")}
    ck["model_state"]["extra_layer.weight"] = torch.zeros(3)
    files["architecture"] = tmp_path / "other_arch.pth"
    _resaved(ck, files["architecture"])
    ck = torch.load(ckpt_path, weights_only=True)
    ck["model_state"]["tau_m"] = torch.zeros(10)
    files["shape"] = tmp_path / "shape.pth"
    _resaved(ck, files["shape"])
    files["bare_state_dict"] = tmp_path / "bare.pth"
    torch.save({"w": torch.zeros(2)}, files["bare_state_dict"])
    files["code"] = tmp_path / "evil.pth"
    torch.save({"format": "barrel-rsnn-checkpoint", "x": _RunsCode(tmp_path / "PWNED")},
               files["code"])
    files["plain_pickle"] = tmp_path / "evil.pkl"
    files["plain_pickle"].write_bytes(pickle.dumps(_RunsCode(tmp_path / "PWNED")))
    files["missing"] = tmp_path / "missing.pth"
    return files


def test_load_checkpoint_refuses_bad_files(tmp_path, ckpt_path):
    model, ck = load_checkpoint(ckpt_path)
    assert ck["format"] == "barrel-rsnn-checkpoint" and model.config.encoder == "spiking"
    expected = {"text": "not a PyTorch checkpoint", "truncated": "truncated or corrupt",
                "architecture": "another architecture", "shape": "another architecture",
                "bare_state_dict": "not a checkpoint", "code": "run code",
                "plain_pickle": "run code", "missing": "not found"}
    for kind, path in _bad_files(tmp_path, ckpt_path).items():
        with pytest.raises(CheckpointError, match=expected[kind]) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value), kind
    assert not (tmp_path / "PWNED").exists()


def test_cli_refuses_bad_files_with_one_line(tmp_path, ckpt_path):
    files = _bad_files(tmp_path, ckpt_path)
    # the command line itself once (a pickle that would run code), the others in this process
    proc = run_cli(["--checkpoint", files["code"], "--out", tmp_path / "o", "--device", "cpu"],
                   tmp_path)
    assert_one_line_error(proc, str(files["code"].name))
    for kind in ("truncated", "architecture", "text"):
        rc, lines = _in_process(["--checkpoint", str(files[kind]), "--out", str(tmp_path / "o"),
                                 "--device", "cpu"])
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        assert files[kind].name in lines[0], lines
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags, word", [
    (["--max-test-samples", "-1"], "--max-test-samples"), (["--n-steps", "-5"], "--n-steps"),
    (["--batch-size", "0"], "--batch-size"), (["--lanes", "0"], "--lanes"),
    (["--seed", "-3"], "--seed"), (["--trials", "-1"], "--trials"),
    (["--max-removed", "32"], "--max-removed")])
def test_bad_settings_are_refused(flags, word, ckpt_path, tmp_path):
    rc, lines = _in_process(["--checkpoint", str(ckpt_path), "--out", str(tmp_path / "o"),
                             *flags])
    assert rc == 2 and len(lines) == 1 and word in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_an_unwritable_out_fails_before_the_trials(ckpt_path, tmp_path, monkeypatch):
    from rsnn_bfd.analyses import deprivation
    a_file = tmp_path / "results"
    a_file.write_text("not a folder")
    monkeypatch.setattr(deprivation, "evaluate_trials",
                        lambda *a, **k: pytest.fail("evaluated before checking --out"))
    with pytest.raises(ValueError, match="--out .* is a file"):
        run_deprivation(DeprivationConfig(checkpoint=str(ckpt_path), out=str(a_file),
                                          trials=1, device="cpu", progress=False))
    assert a_file.read_text() == "not a folder"


# ------------------------------------------------------------------------------- nothing lost
def _in_process(argv):
    """rc and stderr lines of the deprivation script, run in this process."""
    import RSNN_bfd_whisker_deprivation as script
    return run_main(script.main, argv)


def test_a_repeated_deprivation_keeps_the_earlier_results(ckpt_path, tmp_path):
    out = tmp_path / "dep"
    argv = ["--checkpoint", str(ckpt_path), "--out", str(out), "--trials", "1", "--device", "cpu",
            "--no-progress"]
    assert _in_process(argv)[0] == 0
    before = {n: (out / n).read_bytes() for n in ("deprivation.csv", "deprivation.json",
                                                  "deprivation.png")}
    rc, lines = _in_process(argv + ["--seed", "7"])
    assert rc == 2 and len(lines) == 1 and "already holds deprivation results" in lines[0], lines
    assert "--overwrite" in lines[0] and "another --out" in lines[0]
    assert {n: (out / n).read_bytes() for n in before} == before
    assert _in_process(argv + ["--seed", "7", "--overwrite"])[0] == 0
    assert (out / "deprivation.csv").read_bytes() != before["deprivation.csv"]


def test_a_folder_another_writer_holds_is_refused_and_untouched(ckpt_path, tmp_path):
    from conftest import hold_lock
    out = tmp_path / "held"
    out.mkdir()
    (out / "metrics.csv").write_text("a live training's\n")
    holder = hold_lock(out)            # e.g. a training run writing there
    try:
        rc, lines = _in_process(["--checkpoint", str(ckpt_path), "--out", str(out),
                                 "--trials", "1", "--device", "cpu", "--no-progress"])
        assert rc == 2 and len(lines) == 1, lines
        assert f"{out} is in use by process {holder.pid} (holding" in lines[0]
        assert sorted(p.name for p in out.iterdir()) == [".lock", "metrics.csv"]
    finally:
        holder.kill()
        holder.wait()


def test_a_full_disk_leaves_the_earlier_results_whole(ckpt_path, tmp_path, monkeypatch):
    import errno

    from rsnn_bfd import writing
    out = tmp_path / "dep"
    argv = ["--checkpoint", str(ckpt_path), "--out", str(out), "--trials", "1", "--device", "cpu",
            "--no-progress"]
    assert _in_process(argv)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_open = open

    def full_at_the_json(path, mode="r", *args, **kwargs):   # the second of the three files
        if "w" in mode and Path(path).name.startswith(".deprivation.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(writing, "open", full_at_the_json, raising=False)
    rc, lines = _in_process(argv + ["--seed", "7", "--overwrite"])
    assert rc == 2 and len(lines) == 1, lines
    assert f"no space left to write {out / 'deprivation.json'}" in lines[0], lines
    assert "free on its disk" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # all three as they were


def test_a_relative_data_folder_is_found_beside_the_checkpoint(data_dir, tmp_path, monkeypatch):
    """The shipped network records ``data``, the folder it lies in: found from elsewhere too."""
    import shutil

    from rsnn_bfd.data.datasets import data_dir_of_run
    repo = tmp_path / "repo"
    shutil.copytree(data_dir, repo / "data")
    ckpt = repo / "data" / "network.pth"
    monkeypatch.chdir(tmp_path)
    assert data_dir_of_run({"data_dir": "data"}, None, ckpt) == repo / "data"
    (repo / "runs" / "a").mkdir(parents=True)
    assert data_dir_of_run({"data_dir": "data"}, None, repo / "runs" / "a" / "best.pth") == \
        repo / "data"
    assert data_dir_of_run({"data_dir": "data"}, "given", ckpt) == Path("given")
    assert data_dir_of_run({"data_dir": "nowhere"}, None, ckpt) == Path("nowhere")


def test_the_default_out_is_the_checkpoints_folder_and_is_refused_too(data_dir, tmp_path):
    from rsnn_bfd.network.model import ModelConfig, build_model
    run = tmp_path / "run"
    save_checkpoint(run / "best.pth", build_model(ModelConfig(), engine=ENGINE),
                    train_config={"data_dir": str(data_dir), "n_steps": 6})
    (run / "deprivation.json").write_text("earlier\n")
    rc, lines = _in_process(["--checkpoint", str(run / "best.pth"), "--device", "cpu"])
    assert rc == 2 and f"{run} already holds deprivation results (deprivation.json)" in lines[0]
    assert (run / "deprivation.json").read_text() == "earlier\n"


@pytest.mark.parametrize("flags, word", [
    (["--trials", "0"], "--trials must be >= 1"), (["--out", ""], "--out must name a folder"),
    (["--seed", str(10 ** 23)], "--seed must be an integer in 0.."),
    (["--engine", "warp"], "--engine: invalid choice"),
    (["--lanes", "2.5"], "--lanes: invalid int value"),
    (["--device", "cpu:3"], "--device cpu:3"), (["--data-dir", ""], "--data-dir must name"),
    (["--data-dir", str(ROOT / "README.md")], "is a file")])
def test_bad_settings_are_one_line_and_leave_nothing(flags, word, ckpt_path, tmp_path):
    rc, lines = _in_process(["--checkpoint", str(ckpt_path), "--out", str(tmp_path / "o"),
                             "--no-progress", *flags])
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert word in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_a_failed_start_removes_the_out_folder_it_made(ckpt_path, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "new" / "dep"
    rc, lines = _in_process(["--checkpoint", str(ckpt_path), "--out", str(out), "--data-dir",
                             str(empty), "--device", "cpu"])
    assert rc == 2 and "snn_test3.h5" in lines[0], lines
    assert not (tmp_path / "new").exists() and empty.is_dir()


@pytest.mark.parametrize("stored, word", [
    ({"encoder": "foo"}, "names the encoder 'foo'"),
    ({"encoder": "realvalued"}, "holds a spiking network"),
    ({"epochs": 0}, "stored training configuration is invalid (--epochs must be >= 1"),
    ({"loss": "hinge"}, "--loss must be one of"),
    ({"batch_size": "many"}, "stored training configuration is invalid")])
def test_a_checkpoint_with_a_bad_stored_configuration_is_refused(stored, word, data_dir,
                                                                 tmp_path):
    from rsnn_bfd.network.model import ModelConfig, build_model
    path = tmp_path / "bad.pth"
    save_checkpoint(path, build_model(ModelConfig(), engine=ENGINE),
                    train_config={"data_dir": str(data_dir), "n_steps": 6, **stored})
    rc, lines = _in_process(["--checkpoint", str(path), "--out", str(tmp_path / "o"),
                             "--device", "cpu"])
    assert rc == 2 and len(lines) == 1 and word in lines[0] and "bad.pth" in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_a_dataset_generated_on_the_way_is_kept_when_the_command_fails_later(tmp_path,
                                                                              monkeypatch):
    """The README's first command on a fresh clone generated the shipped network's dataset
    inside the block of its results and lost it; here the results go where the data goes
    (the default --out: the checkpoint's folder, data/), and the trials fail."""
    from conftest import small_shipped_network
    from rsnn_bfd.analyses import deprivation
    data = tmp_path / "data"
    ckpt = small_shipped_network(data / "RSNN_bfd_spiking_generated.pth")

    def failing(*a, **k):
        raise RuntimeError("the trials failed")
    monkeypatch.setattr(deprivation, "evaluate_trials", failing)
    monkeypatch.chdir(tmp_path)
    cfg = DeprivationConfig(checkpoint=str(ckpt), trials=1, max_removed=2, n_steps=10,
                            device="cpu", progress=False)
    with pytest.raises(RuntimeError, match="the trials failed"):
        run_deprivation(cfg, log=lambda *a: None)
    assert sorted(p.name for p in data.iterdir()) == [
        "RSNN_bfd_spiking_generated.pth", "snn_test3.h5", "snn_train3.h5"]
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    summary = run_deprivation(cfg, log=lambda *a: None)        # now it runs, on that dataset
    assert summary["by_n_removed"]["0"]["n_trials"] == 1
    assert (data / "deprivation.png").is_file()


def test_the_figure_shows_chance_what_the_bars_are_and_the_network(monkeypatch, tmp_path):
    from rsnn_bfd.analyses import deprivation
    texts = []
    import matplotlib.figure
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *a, **k):
        texts.extend(t.get_text() for t in fig.texts)
        for ax in fig.axes:
            texts.append(ax.get_title())
            texts.extend(t.get_text() for t in ax.get_legend().get_texts())
        return real(fig, *a, **k)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    summary_k = {"0": {"mean": 0.8, "std": 0.0, "n_trials": 1},
                 "1": {"mean": 0.7, "std": 0.05, "n_trials": 31},
                 "2": {"mean": 0.6, "std": 0.1, "n_trials": 50}}
    deprivation.plot_deprivation(summary_k, tmp_path / "d.png", "fit/best.pth")
    text = " | ".join(texts)
    assert "chance (1/3)" in text and "whisker deprivation: fit/best.pth" in text, text
    assert "std over trials (1 removed: each of the 31 whiskers; 2+: 50 random sets each)" in text
    assert deprivation._network_name("data/RSNN_bfd_spiking_generated.pth") == \
        "RSNN_bfd_spiking_generated.pth"


def test_ctrl_c_says_nothing_was_written_and_how_to_go_on(ckpt_path, tmp_path, monkeypatch):
    from rsnn_bfd.analyses import deprivation

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(deprivation, "evaluate_trials", interrupted)
    rc, lines = _in_process(["--checkpoint", str(ckpt_path), "--out", str(tmp_path / "o"),
                             "--device", "cpu"])
    assert rc == 130 and len(lines) == 1, lines
    assert lines[0].startswith("interrupted; no deprivation results were written"), lines
    assert "run the same command again" in lines[0]
