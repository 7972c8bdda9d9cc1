"""Training library and scripts: defaults, end-to-end run, checkpoints, resume, DDP, errors.

Runs on a tiny simulated dataset (4 objects per class: 10 train / 2 test samples) with a short
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

import training
from training import RealValuedConfig, SpikingConfig, load_checkpoint, read_metrics, train

ROOT = Path(__file__).resolve().parents[1]
T = 8


ENGINE = "auto"


def env1():
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    import whisker_sim
    d = tmp_path_factory.mktemp("whisker_data")
    whisker_sim.generate_dataset(d, objects_per_class=4, seed=0, workers=2)
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
    from model import build_model
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
                           batch_size=4, n_steps=8, max_train_samples=4, max_test_samples=4,
                           device="cpu", engine=ENGINE, progress=False, features="signed-log")
    train_set, _ = training.load_datasets(cfg, log=lambda *a: None)
    assert train_set.features == "signed-log"
    train(cfg, log=lambda *a: None)
    stored = torch.load(tmp_path / "rv" / "best.pth", weights_only=True)["train_config"]
    assert stored["features"] == "signed-log"


def test_flags_from_dataclass():
    cfg, given = training.parse_config(SpikingConfig, [
        "--data-dir", "d", "--out", "o", "--epochs", "3", "--batch-size", "5", "--lr", "0.1",
        "--init-b", "0.5", "--init-w", "0.2", "--seed", "7", "--device", "cpu", "--resume", "r",
        "--max-train-samples", "9", "--n-steps", "12", "--engine", "reference", "--no-progress"])
    assert (cfg.data_dir, cfg.out, cfg.epochs, cfg.batch_size, cfg.lr) == ("d", "o", 3, 5, 0.1)
    assert (cfg.init_b, cfg.init_w, cfg.seed, cfg.device, cfg.resume) == (0.5, 0.2, 7, "cpu", "r")
    assert (cfg.max_train_samples, cfg.n_steps, cfg.engine, cfg.progress) == (9, 12, "reference", False)
    assert "epochs" in given and "gamma" not in given


def test_optimizer_groups_and_scheduler():
    from model import ModelConfig, build_model
    model = build_model(ModelConfig(), engine=ENGINE)
    opt, sched = training.make_optimizer(model, SpikingConfig())
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.tau_adp)] == lrs[id(model.thal_tau_adp)] == pytest.approx(0.04)
    assert lrs[id(model.tau_m)] == lrs[id(model.thal_tau_m)] == pytest.approx(0.016)
    assert lrs[id(model.recurrent.weight)] == lrs[id(model.readout[0].weight)] == 0.008
    assert len(lrs) == len(list(model.parameters()))
    assert (sched.step_size, sched.gamma) == (20, 0.8)
    _, sched = training.make_optimizer(model, RealValuedConfig())
    assert (sched.step_size, sched.gamma) == (10, 0.5)


def test_epoch_order_reproducible_and_sharded():
    a = training.epoch_batches(list(range(10)), 4, seed=3, epoch=1)
    assert a == training.epoch_batches(list(range(10)), 4, seed=3, epoch=1)
    assert a != training.epoch_batches(list(range(10)), 4, seed=3, epoch=2)
    assert sorted(sum(a, [])) == list(range(10)) and [len(b) for b in a] == [4, 4, 2]
    batch = [5, 6, 7]
    shards = [training.shard(batch, training.Dist(r, 2, r, True)) for r in range(2)]
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
    assert set(training.METRIC_FIELDS) == set(rows[0])
    for r in rows:
        assert 0 <= float(r["train_acc"]) <= 1 and 0 <= float(r["test_acc"]) <= 1
        assert float(r["lr"]) == pytest.approx(0.008) and 0 < float(r["firing_rate"]) < 1
        assert float(r["loss"]) > 0 and float(r["seconds"]) > 0

    assert torch.load(out / "checkpoint.pth", weights_only=True)["version"] == 2
    ckpt = training.read_checkpoint(out / "checkpoint.pth")     # dense tensors
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
    training.training_main(SpikingConfig, ["--resume", str(out), "--epochs", "2", "--no-progress"])
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
    keep = training.whisker_keep(64, 0.2, seed=3, epoch=5, batch=2)
    assert keep.shape == (64, 31) and keep.dtype == torch.bool
    assert torch.equal(keep, training.whisker_keep(64, 0.2, seed=3, epoch=5, batch=2))
    assert not torch.equal(keep, training.whisker_keep(64, 0.2, seed=3, epoch=6, batch=2))
    assert 0.15 < 1 - keep.float().mean().item() < 0.25
    assert training.whisker_keep(8, 0.0, 0, 0, 0).all()
    with pytest.raises(ValueError, match="--whisker-dropout must be in"):
        SpikingConfig(whisker_dropout=1.0).validate()
    cfg = tiny(data_dir, tmp_path / "wd", epochs=1, whisker_dropout=0.3)
    train(cfg, log=lambda *a: None)
    stored = torch.load(tmp_path / "wd" / "best.pth", weights_only=True)["train_config"]
    assert stored["whisker_dropout"] == 0.3


def test_training_sweeps_choice_and_run(data_dir, tmp_path, monkeypatch):
    """--train-sweeps: each training sample is driven by one of the listed sweeps, drawn per
    (seed, epoch, batch); the test set reads sweep 0; the run stores the setting."""
    pick = training.batch_sweeps(400, (0, 1, 2, 3), seed=1, epoch=2, batch=0)
    assert set(pick.tolist()) == {0, 1, 2, 3}
    assert torch.equal(pick, training.batch_sweeps(400, (0, 1, 2, 3), 1, 2, 0))
    assert not torch.equal(pick, training.batch_sweeps(400, (0, 1, 2, 3), 1, 3, 0))
    with pytest.raises(ValueError, match="--train-sweeps"):
        SpikingConfig(train_sweeps="0-12").validate()
    seen = []
    real = training.drive_with_sweeps

    def spy(x, sweeps, driving=0):
        seen.append(sweeps.clone())
        return real(x, sweeps, driving)
    monkeypatch.setattr(training, "drive_with_sweeps", spy)
    cfg = tiny(data_dir, tmp_path / "sw", epochs=1, train_sweeps="4-7", max_test_samples=2)
    train(cfg, log=lambda *a: None)
    assert seen and all(set(s.tolist()) <= {4, 5, 6, 7} for s in seen)
    assert sum(len(s) for s in seen) == 8               # every training sample, once
    stored = torch.load(tmp_path / "sw" / "best.pth", weights_only=True)["train_config"]
    assert stored["train_sweeps"] == "4-7"


def test_realvalued_script_runs(data_dir, tmp_path):
    import RSNN_bfd_RealValued
    out = tmp_path / "rv"
    RSNN_bfd_RealValued.main(["--data-dir", str(data_dir), "--out", str(out), "--epochs", "1",
                              "--n-steps", "6", "--batch-size", "4", "--max-train-samples", "4",
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
    training.training_main(SpikingConfig, args + ["--out", str(single)])
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


def _cli(argv):
    """rc and stderr lines of the training command line, run in this process."""
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = training.run_cli(lambda a: training.training_main(SpikingConfig, a), argv)
    return rc, [ln for ln in err.getvalue().splitlines() if ln.strip()]


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


def test_resume_from_an_older_checkpoint_keeps_the_newer_one(run2, data_dir, tmp_path):
    out, _ = run2
    run = _copy_run(out, tmp_path / "run")
    model, ckpt = load_checkpoint(run / "checkpoint.pth")
    rows = read_metrics(run / "metrics.csv")
    training.save_checkpoint(run / "epoch1.pth", model, epoch=1,
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


_HOLD = ("import sys, time; sys.path.insert(0, {root!r}); from common import DirectoryLock; "
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
    lock = training.claim_run_dir(d)         # the kernel released it: no stale lock
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
             (["--data-dir", str(tmp_path / "typo")], "does not exist")]
    for flags, word in cases:
        out = ["--out", str(tmp_path / "o")] if "--out" not in flags else []
        rc, lines = _cli(base + out + flags)
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (flags, lines)
        assert word in lines[0], (flags, lines)
    assert not (tmp_path / "o" / "checkpoint.pth").exists()


def test_a_nan_stops_the_run_and_best_stays_finite(data_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = training.readout_loss

    def poisoned(result, labels, kind="published", reduction="mean"):
        loss = real(result, labels, kind, reduction)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] > 2:          # epoch 2 (two batches per epoch)
                return loss * float("nan")
        return loss

    monkeypatch.setattr(training, "readout_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(training.TrainingDiverged, match="diverged in epoch 2.*epoch 1"):
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
    training.save_checkpoint(tmp_path / "nan.pth", model, train_config=ckpt["train_config"])
    with pytest.raises(training.CheckpointError, match="NaN or infinite.*'tau_m'"):
        load_checkpoint(tmp_path / "nan.pth")


def test_ctrl_c_says_what_was_kept_and_how_to_resume(data_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = training.train_one_epoch

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(training, "train_one_epoch", interrupted)
    out = tmp_path / "ctrl_c"
    with pytest.raises(KeyboardInterrupt, match=r"kept .*checkpoint.pth \(epoch 1\); continue "
                                                r"with: python \S+ --resume"):
        train(tiny(data_dir, out, epochs=3))
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1
