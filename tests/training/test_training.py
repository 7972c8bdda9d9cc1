"""Training library and scripts: defaults, end-to-end run, checkpoints, resume, DDP, errors.

Runs on a tiny simulated dataset (5 objects per class: 12 train / 3 test samples) with a short
T; the whole file takes about a minute or two on 2 CPU cores.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rsnn_bfd.cli import parse_config
from rsnn_bfd.config import RealValuedConfig, SpikingConfig
from rsnn_bfd.data.encoding import drive_with_sweeps
from rsnn_bfd.io.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from rsnn_bfd.io.errors import CheckpointError
from rsnn_bfd.io.integrity import digest
from rsnn_bfd.network.readout import readout_loss
from rsnn_bfd.training import run as training_run
from rsnn_bfd.training import step as training_step
from rsnn_bfd.training.batches import (batch_sweeps, epoch_batches, readout_keep, stack_batch,
                                       whisker_keep)
from rsnn_bfd.training.data import load_datasets
from rsnn_bfd.training.distributed import Dist, shard
from rsnn_bfd.training.resume import resolve_resume
from rsnn_bfd.training.run import train, training_main
from rsnn_bfd.training.rundir import METRIC_FIELDS, claim_run_dir, read_metrics
from rsnn_bfd.training.selection import LearningStall, selection
from rsnn_bfd.training.step import (Regularisers, TrainingDiverged, evaluate, make_optimizer,
                                    rate_penalty, train_one_epoch)

from conftest import run_main

ROOT = Path(__file__).resolve().parents[2]
T = 8


ENGINE = "auto"


def env1():
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from rsnn_bfd.data.simulator.generate import generate_dataset
    d = tmp_path_factory.mktemp("whisker_data")
    generate_dataset(d, objects_per_class=5, seed=0, workers=2)
    return d


def tiny(data_dir, out, **kw) -> SpikingConfig:
    base = dict(data_dir=str(data_dir), out=str(out), epochs=2, batch_size=4, n_steps=T,
                max_train_samples=8, device="cpu", engine=ENGINE, progress=False)
    base.update(kw)
    return SpikingConfig(**base)


@pytest.fixture(scope="module")
def run2(data_dir, tmp_path_factory):
    """An uninterrupted 2-epoch run."""
    out = tmp_path_factory.mktemp("run2")
    summary = train(tiny(data_dir, out))
    return out, summary


def run_script(args, cwd, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env1(),
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


# ----------------------------------------------------------------------------- set-up
def test_paper_defaults():
    s, r = SpikingConfig(), RealValuedConfig()
    assert (s.lr, s.epochs, s.batch_size, s.step_size, s.gamma) == (0.008, 100, 128, 20, 0.8)
    assert (r.lr, r.epochs, r.batch_size, r.step_size, r.gamma) == (0.008, 100, 128, 10, 0.5)
    assert (s.init_b, s.init_w, s.encoder) == (0.04, 0.06, "spiking")
    assert (r.init_b, r.init_w, r.encoder) == (0.03, 0.05, "realvalued")
    assert s.loss == r.loss == "published"
    assert s.engine == "auto" and s.data_dir == "data" and s.n_steps == 0
    assert SpikingConfig(engine="fast").engine == "auto"     # the older name, in old checkpoints


def test_tau_scale_multiplies_the_initial_time_constants():
    from rsnn_bfd.network.model import build_model
    base = build_model(SpikingConfig(engine=ENGINE).model_config())
    cfg = SpikingConfig(tau_scale=5.0, engine=ENGINE).validate()
    assert cfg.model_config().tau_m_range == (45.0, 55.0)
    assert cfg.model_config().tau_adp_range == (20.0, 30.0)
    scaled = build_model(cfg.model_config())
    # the same draws, scaled: every time constant (thalamic and cortical) is 5 times larger
    for name in ("tau_m", "tau_adp", "thal_tau_m", "thal_tau_adp"):
        torch.testing.assert_close(getattr(scaled, name), 5 * getattr(base, name))
    torch.testing.assert_close(scaled.recurrent.weight, base.recurrent.weight)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="--tau-scale"):
            SpikingConfig(tau_scale=bad).validate()


def test_features_apply_to_the_real_valued_input_only(data_dir, tmp_path):
    assert RealValuedConfig(features="signed-log").validate().features == "signed-log"
    with pytest.raises(ValueError, match="real-valued input only"):
        SpikingConfig(features="signed-log").validate()
    with pytest.raises(ValueError, match="--features must be one of"):
        RealValuedConfig(features="log").validate()
    # the run reads the features it names, and keeps them in its config
    cfg = RealValuedConfig(data_dir=str(data_dir), out=str(tmp_path / "rv"), epochs=1,
                           batch_size=4, n_steps=8, max_train_samples=8, max_test_samples=4,
                           device="cpu", engine=ENGINE, progress=False, features="signed-log")
    train_set, _ = load_datasets(cfg, log=lambda *a: None)
    assert train_set.features == "signed-log"
    train(cfg, log=lambda *a: None)
    stored = torch.load(tmp_path / "rv" / "best.pth", weights_only=True)["train_config"]
    assert stored["features"] == "signed-log"


def test_flags_from_dataclass():
    cfg, given = parse_config(SpikingConfig, [
        "--data-dir", "d", "--out", "o", "--epochs", "3", "--batch-size", "5", "--lr", "0.1",
        "--init-b", "0.5", "--init-w", "0.2", "--seed", "7", "--device", "cpu", "--resume", "r",
        "--max-train-samples", "9", "--n-steps", "12", "--engine", "reference", "--no-progress"])
    assert (cfg.data_dir, cfg.out, cfg.epochs, cfg.batch_size, cfg.lr) == ("d", "o", 3, 5, 0.1)
    assert (cfg.init_b, cfg.init_w, cfg.seed, cfg.device, cfg.resume) == (0.5, 0.2, 7, "cpu", "r")
    assert (cfg.max_train_samples, cfg.n_steps, cfg.engine, cfg.progress) == (9, 12, "reference", False)
    assert "epochs" in given and "gamma" not in given


def test_optimizer_groups_and_scheduler():
    from rsnn_bfd.network.model import ModelConfig, build_model
    model = build_model(ModelConfig(), engine=ENGINE)
    opt, sched = make_optimizer(model, SpikingConfig())
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.tau_adp)] == lrs[id(model.thal_tau_adp)] == pytest.approx(0.04)
    assert lrs[id(model.tau_m)] == lrs[id(model.thal_tau_m)] == pytest.approx(0.016)
    assert lrs[id(model.recurrent.weight)] == lrs[id(model.readout[0].weight)] == 0.008
    assert len(lrs) == len(list(model.parameters()))
    assert (sched.step_size, sched.gamma) == (20, 0.8)
    _, sched = make_optimizer(model, RealValuedConfig())
    assert (sched.step_size, sched.gamma) == (10, 0.5)


def test_epoch_order_reproducible_and_sharded():
    a = epoch_batches(list(range(10)), 4, seed=3, epoch=1)
    assert a == epoch_batches(list(range(10)), 4, seed=3, epoch=1)
    assert a != epoch_batches(list(range(10)), 4, seed=3, epoch=2)
    assert sorted(sum(a, [])) == list(range(10)) and [len(b) for b in a] == [4, 4, 2]
    batch = [5, 6, 7]
    shards = [shard(batch, Dist(r, 2, r, True)) for r in range(2)]
    assert shards == [[5, 6], [7]]


def test_import_has_no_side_effects(tmp_path):
    code = ("import torch; s = torch.random.get_rng_state(); "
            "import RSNN_bfd_SpikingBased, RSNN_bfd_RealValued, RSNN_bfd_whisker_deprivation; "
            "assert torch.equal(s, torch.random.get_rng_state()); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env1(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- end to end
def test_end_to_end_training_and_checkpoint(run2, tmp_path):
    out, summary = run2
    for name in ("checkpoint.pth", "best.pth", "metrics.csv", "learning_curves.png", "config.json"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(METRIC_FIELDS) == set(rows[0])
    for r in rows:
        assert 0 <= float(r["train_acc"]) <= 1 and 0 <= float(r["test_acc"]) <= 1
        assert float(r["lr"]) == pytest.approx(0.008) and 0 < float(r["firing_rate"]) < 1
        assert float(r["loss"]) > 0 and float(r["seconds"]) > 0

    assert torch.load(out / "checkpoint.pth", weights_only=True)["version"] == 2
    ckpt = read_checkpoint(out / "checkpoint.pth")     # dense tensors
    assert ckpt["format"] == "barrel-rsnn-checkpoint"
    assert ckpt["epoch"] == 2 and ckpt["train_config"]["n_steps"] == T
    for key in ("model_state", "optimizer_state", "scheduler_state", "model_config", "best_test_acc"):
        assert ckpt[key] is not None, key
    best = torch.load(out / "best.pth", map_location="cpu", weights_only=True)
    assert best["best_test_acc"] == max(float(r["test_acc"]) for r in rows)

    model, ck = load_checkpoint(out / "checkpoint.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model_state"][k]), k
    assert model.config.tau_m_range == (9.0, 11.0)

    # whisker deprivation of the trained model, 2 trials per number removed, via the CLI
    dep = tmp_path / "dep"
    proc = run_script([ROOT / "RSNN_bfd_whisker_deprivation.py", "--checkpoint", out / "best.pth",
                       "--out", dep, "--trials", "2", "--device", "cpu", "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(dep / "deprivation.csv") as fh:
        drows = list(csv.DictReader(fh))
    assert len(drows) == 1 + 31 + 7 * 2
    assert [int(r["n_removed"]) for r in drows[:3]] == [0, 1, 1]
    assert drows[0]["whiskers"] == "" and [r["whiskers"] for r in drows[1:32]] == [str(w) for w in range(31)]
    for r in drows:
        ws = r["whiskers"].split()
        assert len(ws) == int(r["n_removed"]) and len(set(ws)) == len(ws)
        assert 0 <= float(r["accuracy"]) <= 1
    summary_dep = json.loads((dep / "deprivation.json").read_text())
    by = summary_dep["by_n_removed"]
    assert sorted(by, key=int) == [str(k) for k in range(9)]
    assert by["1"]["n_trials"] == 31 and by["5"]["n_trials"] == 2
    # intact accuracy = the best checkpoint's test accuracy (same spikes, same state)
    assert by["0"]["mean"] == pytest.approx(best["best_test_acc"])
    assert (dep / "deprivation.png").is_file()


def test_resume_equals_uninterrupted(run2, data_dir, tmp_path):
    out2, _ = run2
    out = tmp_path / "resumed"
    train(tiny(data_dir, out, epochs=1))
    assert read_metrics(out / "metrics.csv")[-1]["epoch"] == 1
    training_main(SpikingConfig, ["--resume", str(out), "--epochs", "2", "--no-progress"])
    a = torch.load(out / "checkpoint.pth", weights_only=True)
    b = torch.load(out2 / "checkpoint.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k in b["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    for ga, gb in zip(a["optimizer_state"]["state"].values(), b["optimizer_state"]["state"].values()):
        assert torch.equal(ga["exp_avg_sq"], gb["exp_avg_sq"])
    assert a["scheduler_state"] == b["scheduler_state"]
    ra, rb = read_metrics(out / "metrics.csv"), read_metrics(out2 / "metrics.csv")
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in ra] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in rb]


def test_whisker_dropout_masks_and_run(data_dir, tmp_path):
    """--whisker-dropout: one mask per global batch, reproducible from (seed, epoch, batch)
    and the same on every rank; about p of the whiskers dropped; the run stores the setting."""
    keep = whisker_keep(64, 0.2, seed=3, epoch=5, batch=2)
    assert keep.shape == (64, 31) and keep.dtype == torch.bool
    assert torch.equal(keep, whisker_keep(64, 0.2, seed=3, epoch=5, batch=2))
    assert not torch.equal(keep, whisker_keep(64, 0.2, seed=3, epoch=6, batch=2))
    assert 0.15 < 1 - keep.float().mean().item() < 0.25
    assert whisker_keep(8, 0.0, 0, 0, 0).all()
    with pytest.raises(ValueError, match="--whisker-dropout must be in"):
        SpikingConfig(whisker_dropout=1.0).validate()
    cfg = tiny(data_dir, tmp_path / "wd", epochs=1, whisker_dropout=0.3)
    train(cfg, log=lambda *a: None)
    stored = torch.load(tmp_path / "wd" / "best.pth", weights_only=True)["train_config"]
    assert stored["whisker_dropout"] == 0.3


def test_training_sweeps_choice_and_run(data_dir, tmp_path, monkeypatch):
    """--train-sweeps: each training sample is driven by one of the listed sweeps, drawn per
    (seed, epoch, batch); the test set reads sweep 0; the run stores the setting."""
    pick = batch_sweeps(400, (0, 1, 2, 3), seed=1, epoch=2, batch=0)
    assert set(pick.tolist()) == {0, 1, 2, 3}
    assert torch.equal(pick, batch_sweeps(400, (0, 1, 2, 3), 1, 2, 0))
    assert not torch.equal(pick, batch_sweeps(400, (0, 1, 2, 3), 1, 3, 0))
    with pytest.raises(ValueError, match="--train-sweeps"):
        SpikingConfig(train_sweeps="0-12").validate()
    seen = []
    real = drive_with_sweeps

    def spy(x, sweeps, driving=0):
        seen.append(sweeps.clone())
        return real(x, sweeps, driving)
    monkeypatch.setattr(training_step, "drive_with_sweeps", spy)
    cfg = tiny(data_dir, tmp_path / "sw", epochs=1, train_sweeps="4-7", max_test_samples=3)
    train(cfg, log=lambda *a: None)
    assert seen and all(set(s.tolist()) <= {4, 5, 6, 7} for s in seen)
    assert sum(len(s) for s in seen) == 8               # every training sample, once
    stored = torch.load(tmp_path / "sw" / "best.pth", weights_only=True)["train_config"]
    assert stored["train_sweeps"] == "4-7"


def test_realvalued_script_runs(data_dir, tmp_path):
    import RSNN_bfd_RealValued
    out = tmp_path / "rv"
    RSNN_bfd_RealValued.main(["--data-dir", str(data_dir), "--out", str(out), "--epochs", "1",
                              "--n-steps", "6", "--batch-size", "4", "--max-train-samples", "8",
                              "--device", "cpu", "--engine", ENGINE, "--no-progress"])
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["model_config"]["encoder"] == "realvalued"
    assert ckpt["model_config"]["init_b"] == 0.03 and ckpt["model_config"]["init_w"] == 0.05
    assert len(read_metrics(out / "metrics.csv")) == 1


def test_ddp_two_cpu_processes_match_single_process(data_dir, tmp_path):
    """torchrun with 2 gloo processes gives the metrics and weights of one process."""
    args = ["--data-dir", str(data_dir), "--epochs", "2", "--batch-size", "4",
            "--max-train-samples", "8", "--n-steps", str(T), "--device", "cpu",
            "--engine", ENGINE, "--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(ROOT / "RSNN_bfd_SpikingBased.py"),
                           *args, "--out", str(tmp_path / "ddp")],
                          cwd=tmp_path, env=env1(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    single = tmp_path / "single"
    training_main(SpikingConfig, args + ["--out", str(single)])
    rd, rs = read_metrics(tmp_path / "ddp" / "metrics.csv"), read_metrics(single / "metrics.csv")
    assert len(rd) == len(rs) == 2
    for a, b in zip(rd, rs):
        for k in ("loss", "train_acc", "test_loss", "test_acc", "lr", "firing_rate"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), (k, a, b)
    wa = torch.load(tmp_path / "ddp" / "checkpoint.pth", weights_only=True)["model_state"]
    wb = torch.load(single / "checkpoint.pth", weights_only=True)["model_state"]
    # Adam normalises each gradient entry, so float-rounding differences of near-zero
    # gradients show up as weight differences far below one step (lr = 8e-3)
    for k in wb:
        if wb[k].is_floating_point():
            assert float((wa[k] - wb[k]).abs().max()) < 2e-4, k


# ----------------------------------------------------------------------------- data errors
@pytest.mark.parametrize("kind", ["truncated", "garbage", "malformed"])
def test_bad_data_file_gives_one_line_error(data_dir, tmp_path, kind):
    import h5py
    import numpy as np
    bad = tmp_path / "bad"
    bad.mkdir()
    src = (data_dir / "snn_train3.h5").read_bytes()
    (bad / "snn_test3.h5").write_bytes((data_dir / "snn_test3.h5").read_bytes())
    if kind == "truncated":
        (bad / "snn_train3.h5").write_bytes(src[: len(src) // 2])
    elif kind == "garbage":
        (bad / "snn_train3.h5").write_text("not an hdf5 file\n")
    else:
        with h5py.File(bad / "snn_train3.h5", "w") as h5:
            h5["force"] = np.zeros((2, 3), np.float32)
    proc = run_script([ROOT / "RSNN_bfd_SpikingBased.py", "--data-dir", bad, "--out",
                       tmp_path / "o", "--epochs", "1", "--n-steps", "4", "--device", "cpu"],
                      tmp_path, timeout=120)
    assert_one_line_error(proc)
    assert "snn_train3.h5" in proc.stderr


def test_bad_flag_value_gives_one_line_error(tmp_path):
    proc = run_script([ROOT / "RSNN_bfd_SpikingBased.py", "--batch-size", "0"], tmp_path, timeout=120)
    assert_one_line_error(proc)
    assert not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------- learning
def _separable_data(d, n_per_class: int, seed: int = 0):
    """Whisker files where each class touches its own group of whiskers in sweep 0."""
    import h5py
    import numpy as np
    rng = np.random.default_rng(seed)
    for name, n in (("snn_train3.h5", n_per_class), ("snn_test3.h5", 1)):
        force = np.zeros((3 * n, 12, 110, 31, 3, 3), np.float32)
        labels = []
        for c in range(3):
            for j in range(n):
                whiskers = rng.choice(np.arange(10 * c, 10 * c + 10), 6, replace=False)
                force[c * n + j, 0, 2:60, whiskers, :, 0] = rng.uniform(20, 80)
                labels.append((53, 55, 113)[c])
        with h5py.File(d / name, "w") as h5:
            h5["force"], h5["torque"] = force, force * 10
            h5["label"] = np.array(labels, np.float64)


@pytest.mark.parametrize("loss, epochs, fitted", [
    ("published", 8, 0.9), ("log-mean-prob", 8, 0.9),
    # measured: the mean-logit loss falls from 1.09 to 0.33 in 12 epochs while the accuracy
    # climbs more slowly (0.67-0.75 from epoch 7; numba engine)
    ("mean-logit", 12, 0.65)])
def test_network_fits_a_small_training_set(tmp_path, loss, epochs, fitted):
    """A regression that stops learning (zero or wrong gradients, frozen weights) fails here:
    12 samples of an easy task are fitted within a few epochs from chance."""
    _separable_data(tmp_path, n_per_class=4)
    cfg = SpikingConfig(data_dir=str(tmp_path), out=str(tmp_path / "run"), epochs=epochs,
                        batch_size=12, n_steps=60, loss=loss, device="cpu", engine=ENGINE,
                        progress=False)
    rows = train(cfg, log=lambda *a: None)["rows"]
    acc = [r["train_acc"] for r in rows]
    assert acc[0] <= 0.5 and max(acc[-3:]) >= fitted, acc
    assert rows[-1]["loss"] < rows[0]["loss"], [r["loss"] for r in rows]


# ----------------------------------------------------------------------------- nothing lost
def _digests(folder):
    import hashlib
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())
            if p.is_file() and p.name != ".lock"}


def _cli(argv, config=SpikingConfig):
    """rc and stderr lines of the training command line, run in this process."""
    return run_main(lambda a: training_main(config, a), argv)


def _copy_run(src, dst):
    import shutil
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def test_a_finished_run_is_never_overwritten(run2, data_dir, tmp_path):
    out, _ = run2
    before = _digests(out)
    rc, lines = _cli(["--data-dir", str(data_dir), "--out", str(out), "--epochs", "1",
                      "--n-steps", str(T), "--max-train-samples", "4", "--no-progress"])
    assert rc == 2 and len(lines) == 1 and "already holds a run" in lines[0], lines
    assert "--resume" in lines[0] and "--overwrite" in lines[0]
    assert _digests(out) == before
    # --overwrite replaces it: a fresh one-epoch history
    copy = _copy_run(out, tmp_path / "copy")
    train(tiny(data_dir, copy, epochs=1, overwrite=True))
    assert [r["epoch"] for r in read_metrics(copy / "metrics.csv")] == [1]
    assert torch.load(copy / "best.pth", weights_only=True)["epoch"] == 1


def test_resume_checks_what_it_resumes(run2, data_dir, tmp_path):
    """Another dataset, or a setting of the network or of its data, is refused with what
    differs and how to start a new run; the run is untouched."""
    from rsnn_bfd.data.simulator.generate import generate_dataset
    run = _copy_run(run2[0], tmp_path / "run")
    before = _digests(run)
    other = tmp_path / "other_data"
    generate_dataset(other, objects_per_class=5, seed=1, workers=1)
    cases = [(["--data-dir", str(other)], "(seed 0, 5 objects per class), but --data-dir"),
             (["--init-w", "0.1"], "--init-w 0.1 differs from the run's 0.06: the network"),
             (["--n-steps", "6"], "--n-steps 6 differs from the run's 8: the data it trains on"),
             (["--preset", "fit"], "the recipe")]
    for flags, words in cases:
        rc, lines = _cli(["--resume", str(run), "--epochs", "3", "--no-progress", *flags])
        assert rc == 2 and len(lines) == 1 and words in lines[0], (flags, lines)
        assert "--out NEW_DIR" in lines[0], lines
        assert _digests(run) == before


def test_resume_from_an_older_checkpoint_keeps_the_newer_one(run2, data_dir, tmp_path):
    out, _ = run2
    run = _copy_run(out, tmp_path / "run")
    model, ckpt = load_checkpoint(run / "checkpoint.pth")
    rows = read_metrics(run / "metrics.csv")
    save_checkpoint(run / "epoch1.pth", model, epoch=1,
                    train_config=ckpt["train_config"],
                    extra={"best_test_acc": rows[0]["test_acc"]})
    before = _digests(run)
    rc, lines = _cli(["--resume", str(run / "epoch1.pth"), "--epochs", "3"])
    assert rc == 2 and "holds a later one" in lines[0] and "--out NEW_DIR" in lines[0], lines
    assert _digests(run) == before
    # branching into a new folder keeps the history up to the checkpoint
    branch = tmp_path / "branch"
    rc, lines = _cli(["--resume", str(run / "epoch1.pth"), "--out", str(branch), "--epochs", "2"])
    assert rc == 0, lines
    got = read_metrics(branch / "metrics.csv")
    assert [r["epoch"] for r in got] == [1, 2] and got[0] == rows[0]
    assert _digests(run) == before
    rc, lines = _cli(["--resume", str(run), "--epochs", "2"])
    assert rc == 2 and "already trained 2 epochs" in lines[0], lines


_HOLD = ("import sys, time; sys.path.insert(0, {root!r}); from rsnn_bfd.writing import DirectoryLock; "
         "lock = DirectoryLock({d!r}).acquire(); print('locked', flush=True); time.sleep(60)")


def test_one_process_per_run_directory_and_stale_locks(tmp_path):
    import signal
    d = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD.format(root=str(ROOT), d=str(d))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, lines = _cli(["--out", str(d), "--epochs", "1"])   # refused before anything else
        assert rc == 2 and len(lines) == 1 and f"in use by process {holder.pid}" in lines[0]
        assert sorted(p.name for p in d.iterdir()) == [".lock"]
    finally:
        holder.send_signal(signal.SIGKILL)   # dies holding the lock
        holder.wait()
    lock = claim_run_dir(d)         # the kernel released it: no stale lock
    lock.release()


def test_bad_settings_are_refused(data_dir, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = ["--data-dir", str(data_dir), "--n-steps", str(T), "--no-progress"]
    cases = [(["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"), (["--gamma", "nan"], "--gamma"),
             (["--gamma", "-0.5"], "--gamma"), (["--init-b", "-1"], "--init-b"),
             (["--init-w", "0"], "--init-w"), (["--epochs", "0"], "--epochs"),
             (["--seed", "-1"], "--seed"), (["--spike-seed", "-2"], "--spike-seed"),
             (["--lr-tau-m-factor", "inf"], "--lr-tau-m-factor"),
             (["--whisker-dropout", "1"], "--whisker-dropout"),
             (["--train-sweeps", "13"], "--train-sweeps"),
             (["--out", str(a_file)], "is a file"),
             (["--data-dir", str(tmp_path / "typo")], "does not exist"),
             (["--data-dir", str(a_file)], f"--data-dir {a_file} is a file"),
             (["--out", ""], "--out must name the run folder"),
             (["--device", "cpu:3"], "--device cpu:3: there is one CPU device"),
             (["--seed", str(10 ** 23)], "--seed must be an integer in 0.."),
             (["--data-seed", str(2 ** 63)], "--data-seed must be an integer in 0..")]
    for flags, word in cases:
        out = ["--out", str(tmp_path / "o")] if "--out" not in flags else []
        rc, lines = _cli(base + out + flags)
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (flags, lines)
        assert word in lines[0], (flags, lines)
        assert not (tmp_path / "o").exists(), flags       # a failed start leaves no folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.parametrize("flags, word", [
    (["--engine", "warp"], "--engine: invalid choice: 'warp'"),
    (["--batch-size", "3.5"], "--batch-size: invalid int value: '3.5'"),
    (["--features", "foo"], "--features: invalid choice: 'foo'")])
def test_usage_errors_are_one_line(tmp_path, flags, word):
    proc = run_script([ROOT / "RSNN_bfd_SpikingBased.py", *flags], tmp_path, timeout=120)
    assert_one_line_error(proc)
    assert word in proc.stderr and "--help" in proc.stderr and "usage:" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_failed_start_leaves_nothing_behind(run2, data_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "snn_train3.h5").write_text("not an hdf5 file\n")
    (bad / "snn_test3.h5").write_bytes((data_dir / "snn_test3.h5").read_bytes())
    args = ["--data-dir", str(bad), "--epochs", "1", "--n-steps", str(T), "--no-progress"]
    rc, lines = _cli(args + ["--out", str(tmp_path / "new" / "run")])
    assert rc == 2 and "snn_train3.h5" in lines[0], lines
    assert not (tmp_path / "new").exists()                   # made by the run: removed
    mine = tmp_path / "mine"
    mine.mkdir()
    assert _cli(args + ["--out", str(mine)])[0] == 2
    assert mine.is_dir()                                     # the user's folder stays
    # --overwrite replaces an earlier run only when the new one has finished an epoch
    copy = _copy_run(run2[0], tmp_path / "copy")
    before = _digests(copy)
    assert _cli(args + ["--out", str(copy), "--overwrite"])[0] == 2
    assert _digests(copy) == before


def test_a_training_set_without_every_class_is_refused(tmp_path):
    import h5py
    import numpy as np
    for name, labels in (("snn_train3.h5", [53] * 4), ("snn_test3.h5", [53, 55, 113])):
        with h5py.File(tmp_path / name, "w") as h5:
            h5["force"] = h5["torque"] = np.ones((len(labels), 12, 110, 31, 3, 3), np.float32)
            h5["label"] = np.array(labels, np.float64)
    rc, lines = _cli(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--epochs",
                      "1", "--n-steps", str(T), "--no-progress"])
    assert rc == 2 and len(lines) == 1, lines
    assert "the 4 training samples hold no box and no plane" in lines[0]
    assert not (tmp_path / "o").exists()


def test_a_run_is_resumed_only_by_its_own_script_and_with_a_valid_configuration(run2, tmp_path):
    out, _ = run2
    run = _copy_run(out, tmp_path / "run")
    before = _digests(run)
    rc, err_lines = _cli(["--resume", str(run), "--epochs", "3"], RealValuedConfig)
    assert rc == 2 and len(err_lines) == 1, err_lines
    assert "holds a spiking network, not a realvalued one" in err_lines[0]
    assert f"continue it with python RSNN_bfd_SpikingBased.py --resume {run}" in err_lines[0]
    # a stored configuration that training would refuse is refused as the checkpoint's
    original = (run / "checkpoint.pth").read_bytes()
    ckpt = torch.load(run / "checkpoint.pth", weights_only=True)
    for stored, word in (({"encoder": "foo"}, "names the encoder 'foo'"),
                         ({"lr": -1.0}, "stored training configuration is invalid (--lr")):
        edited = {**ckpt, "train_config": {**ckpt["train_config"], **stored}}
        edited["digest"] = digest(edited)       # written so (by an older version), not damaged
        torch.save(edited, run / "checkpoint.pth")
        rc, lines = _cli(["--resume", str(run), "--epochs", "3"])
        assert rc == 2 and len(lines) == 1 and word in lines[0] and "checkpoint.pth" in lines[0]
        assert _digests(run)["metrics.csv"] == before["metrics.csv"]
    (run / "checkpoint.pth").write_bytes(original)
    assert _digests(run) == before


def test_a_nan_stops_the_run_and_best_stays_finite(data_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = readout_loss

    def poisoned(result, labels, kind="published", reduction="mean"):
        loss = real(result, labels, kind, reduction)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] > 2:          # epoch 2 (two batches per epoch)
                return loss * float("nan")
        return loss

    monkeypatch.setattr(training_step, "readout_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match="diverged in epoch 2.*epoch 1"):
        train(tiny(data_dir, out, epochs=3))
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [1]
    for name in ("best.pth", "checkpoint.pth"):
        model, ckpt = load_checkpoint(out / name)      # refuses non-finite parameters
        assert ckpt["epoch"] == 1


def test_a_checkpoint_with_nan_parameters_is_refused(run2, tmp_path):
    out, _ = run2
    model, ckpt = load_checkpoint(out / "checkpoint.pth")
    with torch.no_grad():
        model.tau_m[3] = float("nan")
    save_checkpoint(tmp_path / "nan.pth", model, train_config=ckpt["train_config"])
    with pytest.raises(CheckpointError, match="NaN or infinite.*'tau_m'"):
        load_checkpoint(tmp_path / "nan.pth")


def test_ctrl_c_says_what_was_kept_and_how_to_resume(data_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = train_one_epoch

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(training_run, "train_one_epoch", interrupted)
    out = tmp_path / "ctrl_c"
    with pytest.raises(KeyboardInterrupt, match=r"kept .*checkpoint.pth \(epoch 1\); continue "
                                                r"with: python \S+ --resume"):
        train(tiny(data_dir, out, epochs=3))
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1


def test_a_full_disk_keeps_the_last_checkpoint_and_the_resume_works(data_dir, tmp_path,
                                                                   monkeypatch):
    import errno

    from rsnn_bfd import writing
    from rsnn_bfd.writing import DiskFullError
    real_open, writes = open, []

    def full_at_the_second_checkpoint(path, mode="r", *args, **kwargs):
        if "w" in mode and Path(path).name.startswith(".checkpoint.pth."):
            writes.append(path)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(writing, "open", full_at_the_second_checkpoint, raising=False)
    out = tmp_path / "full"
    with pytest.raises(DiskFullError, match=r"no space left to write \S*checkpoint.pth .*free on "
                                            r"its disk.*; kept \S*checkpoint.pth \(epoch 1\): free "
                                            r"some space, then continue with: python "
                                            r"RSNN_bfd_SpikingBased.py --resume "):
        train(tiny(data_dir, out, epochs=3))
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    summary = train(tiny(data_dir, out, epochs=3, resume=str(out / "checkpoint.pth")))
    assert summary["epoch"] == 3


# ----------------------------------------------------------------------------- validation
def _with_test_labels(src, dst, labels):
    """A copy of the dataset in ``src`` whose test file has the label values ``labels``."""
    import shutil

    import h5py
    import numpy as np
    dst.mkdir()
    for name in ("snn_train3.h5", "snn_test3.h5"):
        shutil.copy(src / name, dst / name)
    with h5py.File(dst / "snn_test3.h5", "r+") as h5:
        h5["label"][...] = np.asarray(labels, h5["label"].dtype)
    return dst


def test_selection_picks_the_first_best_epoch():
    rows = [{"epoch": e, "val_acc": a} for e, a in enumerate([0.2, 0.5, 0.5, 0.4], start=1)]
    assert selection(rows, "val_acc") == (2, 0.5, 2)
    assert selection([], "val_acc") == (0, -1.0, 0)
    # test selection (published): ties to the earlier epoch, whatever the losses
    rows = [{"epoch": e, "test_acc": a, "test_loss": l}
            for e, (a, l) in enumerate([(0.5, 0.9), (0.5, 0.1)], start=1)]
    assert selection(rows, "test_acc") == (1, 0.5, 1)


def test_validation_ties_go_to_the_lower_validation_loss():
    accs, losses = [0.5, 0.7, 0.6, 0.7, 0.7, 0.6], [1.0, 0.8, 0.7, 0.6, 0.9, 0.5]
    rows = [{"epoch": e, "val_acc": a, "val_loss": l}
            for e, (a, l) in enumerate(zip(accs, losses), start=1)]
    assert selection(rows, "val_acc") == (4, 0.7, 2)


def test_val_fraction_never_touches_the_test_set(data_dir, tmp_path, monkeypatch):
    """With --val-fraction, best.pth is chosen on a stratified validation split of the
    training set that never enters a training batch: other test labels give the same
    best.pth epoch and weights (and the same validation history)."""
    import h5py
    with h5py.File(data_dir / "snn_test3.h5", "r") as h5:
        labels = h5["label"][()]
    flipped = _with_test_labels(data_dir, tmp_path / "flipped",
                                [{53: 55, 55: 113, 113: 53}[int(v)] for v in labels])
    trained_on = []
    real = epoch_batches

    def spy(indices, *a, **k):
        trained_on.append(list(indices))
        return real(indices, *a, **k)
    monkeypatch.setattr(training_run, "epoch_batches", spy)

    runs = {}
    for name, d in (("same", data_dir), ("flipped", flipped)):
        cfg = tiny(d, tmp_path / name, epochs=3, max_train_samples=0, val_fraction=0.4)
        runs[name] = train(cfg, log=lambda *a: None)
    a, b = (torch.load(tmp_path / n / "best.pth", weights_only=True) for n in ("same", "flipped"))
    assert a["epoch"] == b["epoch"] == runs["same"]["best_epoch"] == runs["flipped"]["best_epoch"]
    assert a["selected_on"] == "validation" and a["best_val_acc"] == b["best_val_acc"]
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    ra, rb = (read_metrics(tmp_path / n / "metrics.csv") for n in ("same", "flipped"))
    assert [(r["val_acc"], r["val_loss"], r["loss"]) for r in ra] == \
           [(r["val_acc"], r["val_loss"], r["loss"]) for r in rb]
    assert [r["test_loss"] for r in ra] != [r["test_loss"] for r in rb]   # the test set differs
    # the split: stratified, recorded, and never trained on
    split = a["split"]
    train_set, _ = load_datasets(tiny(data_dir, tmp_path / "x"), log=lambda *a: None)
    assert sorted(split["train_idx"] + split["val_idx"]) == list(range(len(train_set)))
    counts = torch.bincount(train_set.labels, minlength=3).tolist()
    held = torch.bincount(train_set.labels[split["val_idx"]], minlength=3).tolist()
    assert held == [min(max(round(0.4 * n), 1), n - 1) for n in counts], (held, counts)
    assert trained_on and all(set(t) == set(split["train_idx"]) for t in trained_on)
    with open(tmp_path / "same" / "metrics.csv") as fh:
        header = fh.readline().strip().split(",")
    assert header == list(METRIC_FIELDS) + ["val_loss", "val_acc"]


def test_patience_stops_early_and_resume_keeps_the_choice(data_dir, tmp_path, monkeypatch):
    """--patience N stops after N epochs without a better validation accuracy; resuming the
    stopped run trains nothing more; --patience without a validation set is refused."""
    val_accs = iter([0.25, 0.5, 0.5, 0.25, 0.75, 0.75])
    real = evaluate

    def scripted(*a, desc="test", **k):
        r = real(*a, desc=desc, **k)
        return dict(r, acc=next(val_accs)) if desc == "validation" else r
    monkeypatch.setattr(training_run, "evaluate", scripted)
    out = tmp_path / "stop"
    summary = train(tiny(data_dir, out, epochs=6, val_fraction=0.4, patience=2,
                         max_train_samples=0), log=lambda *a: None)
    assert summary["stopped_early"] and summary["epoch"] == 4 and summary["best_epoch"] == 2
    assert [r["val_acc"] for r in read_metrics(out / "metrics.csv")] == [0.25, 0.5, 0.5, 0.25]
    assert torch.load(out / "best.pth", weights_only=True)["epoch"] == 2
    again = train(resolve_resume(tiny(data_dir, out, epochs=6, resume=str(out)),
                                 {"resume", "epochs"}), log=lambda *a: None)
    assert again["stopped_early"] and again["epoch"] == 4
    for flags, word in ((dict(patience=2), "--patience 2 needs a validation set"),
                        (dict(val_fraction=1.0), "--val-fraction"),
                        (dict(val_fraction=0.2, patience=-1), "--patience")):
        with pytest.raises(ValueError, match=word):
            SpikingConfig(**flags).validate()


def test_resume_with_a_validation_set_equals_uninterrupted(data_dir, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny(data_dir, full, epochs=2, val_fraction=0.4, max_train_samples=0), log=lambda *a: None)
    train(tiny(data_dir, part, epochs=1, val_fraction=0.4, max_train_samples=0), log=lambda *a: None)
    cfg = resolve_resume(tiny(data_dir, part, epochs=2, resume=str(part)),
                         {"resume", "epochs"}, log=lambda *a: None)
    train(cfg, log=lambda *a: None)
    a, b = (torch.load(d / "checkpoint.pth", weights_only=True) for d in (full, part))
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(full / "metrics.csv")) == strip(read_metrics(part / "metrics.csv"))
    # resuming with another split is refused: by the flags' check, and by the run's own
    with pytest.raises(ValueError, match="--val-seed 5 differs from the run's 0: the data"):
        resolve_resume(tiny(data_dir, part, epochs=3, resume=str(part), val_seed=5),
                       {"resume", "epochs", "val_seed"}, log=lambda *a: None)
    cfg = tiny(data_dir, part, epochs=3, resume=str(part / "checkpoint.pth"), val_seed=5,
               val_fraction=0.4, max_train_samples=0)
    with pytest.raises(ValueError, match="another validation split"):
        train(cfg, log=lambda *a: None)


# ----------------------------------------------------------------------------- regularisers
def test_regularisers_are_off_by_default():
    assert Regularisers.of(SpikingConfig()) == Regularisers()
    assert Regularisers.of(RealValuedConfig()) == Regularisers()
    from rsnn_bfd.network.model import ModelConfig, build_model
    model = build_model(ModelConfig(), engine=ENGINE)
    assert model.readout_keep is None and model.network().readout[0] is model.readout[0].weight
    for flags, word in ((dict(rate_reg=-1.0), "--rate-reg"), (dict(target_rate=2.0), "--target-rate"),
                        (dict(readout_dropout=1.0), "--readout-dropout"),
                        (dict(readout_weight_decay=float("nan")), "--readout-weight-decay"),
                        (dict(readout_weight_decay=200.0), "--readout-weight-decay"),
                        (dict(readout_tau=-2.0), "--readout-tau")):
        with pytest.raises(ValueError, match=word):
            SpikingConfig(**flags).validate()


def test_readout_dropout_drops_readout_neurons_for_a_batch(data_dir, tmp_path):
    keep = readout_keep(3606, 0.25, seed=1, epoch=2, batch=3)
    assert torch.equal(keep, readout_keep(3606, 0.25, 1, 2, 3))
    assert not torch.equal(keep, readout_keep(3606, 0.25, 1, 2, 4))
    assert keep.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert 0.2 < float((keep == 0).float().mean()) < 0.3
    # the dropped neurons' readout weights get no gradient
    from rsnn_bfd.network.model import ModelConfig, build_model
    model = build_model(ModelConfig(), engine=ENGINE)
    train_set, _ = load_datasets(tiny(data_dir, tmp_path / "x"), log=lambda *a: None)
    x, y = stack_batch(train_set, [0, 1], "cpu")
    model.readout_keep = keep
    readout_loss(model(x[..., :T, :]), y, "log-mean-prob").backward()
    grad = model.readout[0].weight.grad
    assert float(grad[:, keep == 0].abs().max()) == 0 and float(grad[:, keep > 0].abs().max()) > 0
    cfg = tiny(data_dir, tmp_path / "rd", epochs=1, readout_dropout=0.5)
    train(cfg, log=lambda *a: None)
    stored = torch.load(tmp_path / "rd" / "best.pth", weights_only=True)["train_config"]
    assert stored["readout_dropout"] == 0.5


def test_leaky_readout_is_stored_in_the_model_config(data_dir, tmp_path):
    assert SpikingConfig().model_config().readout_tau == 0.0
    cfg = tiny(data_dir, tmp_path / "leaky", epochs=1, readout_tau=20.0)
    train(cfg, log=lambda *a: None)
    ckpt = torch.load(tmp_path / "leaky" / "best.pth", weights_only=True)
    assert ckpt["model_config"]["readout_tau"] == 20.0
    assert load_checkpoint(tmp_path / "leaky" / "best.pth")[0].config.readout_tau == 20.0


def test_readout_weight_decay_multiplies_the_readout_weights(data_dir, tmp_path):
    """One step (one batch): the decayed run's readout weights are the plain run's times
    1 - lr x decay; every other parameter is the same."""
    plain = tiny(data_dir, tmp_path / "plain", epochs=1, batch_size=8)
    decayed = tiny(data_dir, tmp_path / "decay", epochs=1, batch_size=8, readout_weight_decay=5.0)
    for cfg in (plain, decayed):
        train(cfg, log=lambda *a: None)
    a, b = (torch.load(Path(c.out) / "checkpoint.pth", weights_only=True)["model_state"]
            for c in (plain, decayed))
    for k in a:
        if k in ("readout.0.weight", "readout.1.weight"):
            torch.testing.assert_close(b[k], a[k] * (1 - 0.008 * 5.0))
        else:
            assert torch.equal(a[k], b[k]), k


def test_rate_regulariser_has_a_gradient_on_every_engine(data_dir, tmp_path):
    spikes = torch.zeros(4, 2, 10)
    spikes[:, 0, :5] = 1                      # sample 0 fires at 0.5, sample 1 is silent
    assert float(rate_penalty(spikes, 0.1)) == pytest.approx(0.4 ** 2 + 0.1 ** 2)
    # per neuron: neurons 0-4 fire at 0.5 over the batch, 5-9 are silent; times batch 2
    assert float(rate_penalty(spikes, 0.1, "neuron")) == pytest.approx(
        2 * (0.4 ** 2 + 0.1 ** 2) / 2)
    from rsnn_bfd.network.model import ModelConfig, build_model
    train_set, _ = load_datasets(tiny(data_dir, tmp_path / "x"), log=lambda *a: None)
    x, _ = stack_batch(train_set, [0, 1], "cpu")
    grads = {}
    for engine in ("torch", "numba"):
        model = build_model(ModelConfig(), engine=engine, dtype=torch.float64)
        out = model(x[..., :T, :].double(), record_spikes=True)
        (rate_penalty(out.spikes, 0.0) + rate_penalty(out.spikes, 0.05, "neuron")).backward()
        grads[engine] = model.recurrent.weight.grad
    assert float(grads["torch"].abs().max()) > 0
    torch.testing.assert_close(grads["numba"], grads["torch"])
    # one epoch each: the same run on both engines
    for engine in ("torch", "numba"):
        train(tiny(data_dir, tmp_path / engine, epochs=1, rate_reg=1.0, target_rate=0.01,
                   engine=engine, dtype="float64"), log=lambda *a: None)
    a, b = (read_metrics(tmp_path / e / "metrics.csv") for e in ("torch", "numba"))
    assert len(a) == 1 and a[0]["loss"] == pytest.approx(b[0]["loss"], rel=1e-9)


# ----------------------------------------------------------------------------- stalled runs
def test_learning_stall_says_so_once():
    stall = LearningStall("published")
    assert stall.notice(1, 1.10, 0.1) is None and stall.notice(2, 1.0097158, 0.1) is None
    assert stall.notice(3, 1.0097160, 0.1) is None               # 2 epochs unchanged: not yet
    note = stall.notice(4, 1.0097157, 0.1)                       # 3 epochs within 1e-6
    assert note.startswith("note: training has stopped learning: the loss has stayed at")
    assert "--loss log-mean-prob" in note and "docs/RESULTS.md" in note and "saturates" in note
    assert stall.notice(5, 1.0097157, 0.0) is None               # once only
    other = LearningStall("log-mean-prob")
    note = other.notice(1, 0.9, 1e-13)
    assert "every gradient norm of epoch 1 was below 1e-12" in note and "saturates" not in note
    noisy = LearningStall("published")
    assert all(noisy.notice(e, 1.10 + 0.01 * (e % 2), 0.03) is None for e in range(1, 20))


@pytest.fixture(scope="module")
def why_data(tmp_path_factory):
    """The first 24 training samples of the default generated dataset (91 objects per class,
    seed 0) and one test sample per class: the run of the published set-up that stops
    learning (measured: the gradient norm falls to 5e-14 in epoch 4 and to 0 after, the loss
    stays at 1.0097; the same with T = 100)."""
    import h5py
    import numpy as np

    from rsnn_bfd.data.files import CLASS_LABELS
    from rsnn_bfd.data.simulator.generate import plan
    from rsnn_bfd.data.simulator.sweeps import simulate_task
    d = tmp_path_factory.mktemp("why_data")
    train_tasks, test_tasks = plan(91, 0)
    test_tasks = [next(t for t in test_tasks if t[0] == c) for c in range(3)]
    for name, tasks in (("snn_train3.h5", train_tasks[:24]), ("snn_test3.h5", test_tasks)):
        sims = [simulate_task(t) for t in tasks]
        with h5py.File(d / name, "w") as h5:
            h5["force"] = np.stack([f for f, _ in sims])
            h5["torque"] = np.stack([tq for _, tq in sims])
            h5["label"] = np.array([CLASS_LABELS[c] for c, _ in tasks], np.float64)
    return d


def _why_run(why_data, out, epochs):
    lines = []
    cfg = SpikingConfig(data_dir=str(why_data), out=str(out), epochs=epochs, batch_size=128,
                        max_train_samples=24, n_steps=100, device="cpu", engine=ENGINE,
                        progress=False)
    return train(cfg, log=lines.append)["rows"], lines


def test_a_frozen_run_says_so_within_ten_epochs(why_data, tmp_path):
    rows, lines = _why_run(why_data, tmp_path / "run", epochs=6)
    notes = [i for i, ln in enumerate(lines) if ln.startswith("note: training has stopped")]
    assert len(notes) == 1, lines
    epoch_lines = [ln for ln in lines[:notes[0]] if ln.startswith("epoch ")]
    assert 1 <= len(epoch_lines) <= 10, lines                  # said within 10 epochs
    assert "--loss log-mean-prob --lr 0.001 --batch-size 32" in lines[notes[0]]
    assert len(rows) == 6                                      # and the run went on
    assert abs(rows[-1]["loss"] - rows[-2]["loss"]) < 1e-6      # frozen indeed


@pytest.mark.slow
def test_the_stall_notice_changes_nothing_else(why_data, tmp_path, monkeypatch):
    rows, lines = _why_run(why_data, tmp_path / "with", epochs=5)
    monkeypatch.setattr(LearningStall, "notice", lambda self, *a: None)
    quiet_rows, quiet_lines = _why_run(why_data, tmp_path / "without", epochs=5)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows) == strip(quiet_rows)
    assert len(lines) == len(quiet_lines) + 1                  # the notice, and only it
    a = torch.load(tmp_path / "with" / "checkpoint.pth", weights_only=True)["model_state"]
    b = torch.load(tmp_path / "without" / "checkpoint.pth", weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in b)
