"""Baselines: the RSNN's own sweep-0 input, every model trains, outputs, bad arguments."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rsnn_bfd.study.baselines import (MODELS, BaselineConfig, LeakyVoteNet, build_baseline,
                                      load_inputs, run_baselines, sweep0_inputs, sweep_inputs,
                                      train_baseline)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from rsnn_bfd.data.simulator.generate import generate_dataset
    d = tmp_path_factory.mktemp("whisker_data")
    generate_dataset(d, objects_per_class=3, seed=4, workers=2)
    return d


def test_inputs_are_what_the_rsnn_reads(data_dir):
    from rsnn_bfd.data.datasets import RealValuedWhiskerDataset, SpikingWhiskerDataset
    ds = SpikingWhiskerDataset(data_dir / "snn_train3.h5", seed=5)
    x, y = sweep0_inputs(ds, "spiking")
    assert x.shape == (len(ds), 550, 186) and x.dtype == torch.float32
    sample, label = ds[1]
    # the RSNN's force encoder reads channel 0 of sweep 0, the torque encoder channel 1
    assert torch.equal(x[1, :, :93], sample[0, 0].float())
    assert torch.equal(x[1, :, 93:], sample[1, 0].float())
    assert int(y[1]) == int(label)
    rv = RealValuedWhiskerDataset(data_dir / "snn_train3.h5")
    x, _ = sweep0_inputs(rv, "realvalued")
    assert x.shape == (len(rv), 110, 558)
    assert torch.equal(x[2], rv[2][0][0, 0])


def test_training_sweeps_are_the_rsnn_driving_sweeps(data_dir):
    """--train-sweeps: the training inputs hold the listed sweeps, each as the RSNN would read
    it in the driving slot; a run trains on them and writes files tagged with the sweeps."""
    from rsnn_bfd.data.datasets import SpikingWhiskerDataset
    from rsnn_bfd.data.encoding import drive_with_sweeps
    ds = SpikingWhiskerDataset(data_dir / "snn_train3.h5", seed=5)
    x, y = sweep_inputs(ds, (0, 2))
    assert x.shape == (len(ds), 2, 550, 186)
    sample = ds[3][0]
    driven = drive_with_sweeps(sample[None], torch.tensor([2]))[0]
    assert torch.equal(x[3, 1, :, :93], driven[0, 0].float())
    assert torch.equal(x[3, 1, :, 93:], driven[1, 0].float())
    assert torch.equal(x[3, 0], sweep0_inputs(ds)[0][3])


def test_run_on_training_sweeps(data_dir, tmp_path):
    cfg = BaselineConfig(model="cnn", encoder="realvalued", data_dir=str(data_dir),
                         out=str(tmp_path), seeds="0", epochs=2, hidden=8, progress=False,
                         features="signed-log", train_sweeps="0-3")
    summary = run_baselines(cfg, log=lambda *a: None)
    on_disk = json.loads((tmp_path / "baselines_realvalued_signed-log_sweeps0-3.json").read_text())
    assert on_disk == json.loads(json.dumps(summary)) and on_disk["train_sweeps"] == "0-3"
    assert (tmp_path / "baselines_realvalued_signed-log_sweeps0-3.csv").is_file()


@pytest.mark.parametrize("kind", MODELS)
def test_every_model_maps_a_sequence_to_three_logits(kind):
    model = build_baseline(kind, n_in=186, hidden=8, frame=5)
    assert model(torch.rand(4, 550, 186)).shape == (4, 3)
    with pytest.raises(ValueError, match="unknown baseline"):
        build_baseline("transformer", 186, 8, 5)


def test_a_baseline_fits_its_training_set(data_dir):
    """The CNN learns the 6 training samples; training is reproducible from the seed."""
    cfg = BaselineConfig(encoder="spiking", epochs=15, batch_size=4)
    train, test, frame = load_inputs(BaselineConfig(data_dir=str(data_dir)))
    a = train_baseline("cnn", train, test, cfg, seed=1, frame=frame)
    b = train_baseline("cnn", train, test, cfg, seed=1, frame=frame)
    assert a["train_acc"] == 1.0
    assert (a["test_acc"], a["train_acc"]) == (b["test_acc"], b["train_acc"])


@pytest.mark.parametrize("encoder, features, tag", [
    ("spiking", "published", "spiking"), ("realvalued", "published", "realvalued"),
    ("realvalued", "signed-log", "realvalued_signed-log")])
def test_run_writes_csv_and_json(data_dir, tmp_path, encoder, features, tag):
    cfg = BaselineConfig(model="all", encoder=encoder, data_dir=str(data_dir), out=str(tmp_path),
                         seeds="0,1", epochs=1, hidden=8, progress=False, features=features)
    summary = run_baselines(cfg, log=lambda *a: None)
    with open(tmp_path / f"baselines_{tag}.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["model"], int(r["seed"])) for r in rows] == [
        (m, s) for m in MODELS for s in (0, 1)]
    on_disk = json.loads((tmp_path / f"baselines_{tag}.json").read_text())
    assert on_disk["features"] == features
    assert on_disk == json.loads(json.dumps(summary))
    for m in MODELS:
        accs = [float(r["test_acc"]) for r in rows if r["model"] == m]
        assert on_disk["models"][m]["test_acc"] == pytest.approx(accs)
        assert on_disk["models"][m]["mean"] == pytest.approx(np.mean(accs))
        assert on_disk["models"][m]["std"] == pytest.approx(np.std(accs))
    assert on_disk["encoder"] == encoder and on_disk["input"] == "sweep 0"


def _cli(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "baselines.py"), *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, words", [
    (["--model", "transformer"], "--model"),
    (["--encoder", "rate"], "--encoder"),
    (["--features", "signed-log"], "realvalued only"),
    (["--encoder", "realvalued", "--features", "log"], "--features"),
    (["--seeds", "0,x"], "--seeds"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "nan"], "--lr"),
    (["--train-sweeps", "12"], "--train-sweeps"),
    (["--data-dir", "nowhere"], "whisker_sim.py"),
    (["--data-dir", ROOT / "README.md"], "is a file"),
    (["--out", ""], "--out must name a folder"),
    (["--seeds", f"0,{10 ** 23}"], "--seeds must list integers in 0.."),
    (["--epochs", "2.5"], "--epochs: invalid int value"),
])
def test_bad_arguments_give_one_line_errors(tmp_path, args, words):
    proc = _cli(["--out", tmp_path / "o", "--no-progress", *args], tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()                # nothing left behind


def test_a_repeated_run_keeps_the_earlier_results(data_dir, tmp_path):
    cfg = dict(model="cnn", encoder="realvalued", data_dir=str(data_dir), out=str(tmp_path),
               seeds="0", epochs=1, hidden=8, progress=False)
    run_baselines(BaselineConfig(**cfg), log=lambda *a: None)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["baselines_realvalued.csv", "baselines_realvalued.json"]
    with pytest.raises(ValueError, match="already holds baseline results of this input.*"
                                         "--overwrite"):
        run_baselines(BaselineConfig(**{**cfg, "model": "gru"}), log=lambda *a: None)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # another input writes other files; --overwrite replaces these
    run_baselines(BaselineConfig(**{**cfg, "encoder": "spiking"}), log=lambda *a: None)
    run_baselines(BaselineConfig(**{**cfg, "model": "gru", "overwrite": True}), log=lambda *a: None)
    rows = (tmp_path / "baselines_realvalued.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["gru"]


def test_vote_model_is_a_leaky_integrator_with_per_step_votes():
    """The conv filter equals the step-by-step update h <- a h + (1 - a) W x (exactly while
    the sequence is shorter than the kernel, to e^-8 after), and the output is the log of the
    time-averaged per-step softmax."""
    torch.manual_seed(0)
    model = LeakyVoteNet(n_in=5, hidden=4, tau=3.0)
    for T in (20, 60):
        x = torch.rand(2, T, 5)
        a = float(np.exp(-1 / 3.0))
        u, s, hs = model.project(x), torch.zeros(2, 4), []
        for t in range(T):
            s = a * s + (1 - a) * u[:, t]
            hs.append(s)
        prob = torch.softmax(model.readout(torch.relu(torch.stack(hs, 1))), -1).mean(1)
        torch.testing.assert_close(model(x), torch.log(prob), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model(x).exp().sum(1), torch.ones(2))


def test_rate_model_reads_out_the_time_averaged_logits():
    """``rate`` is the vote model's leaky layer with the mean logits as output (mean-logit)."""
    torch.manual_seed(0)
    vote = build_baseline("vote", 5, 4, frame=1, vote_tau=3.0)
    rate = build_baseline("rate", 5, 4, frame=1, vote_tau=3.0)
    rate.load_state_dict(vote.state_dict())
    x = torch.rand(2, 30, 5)
    u = rate.project(x).transpose(1, 2)
    k = rate.kernel[-30:]
    h = torch.nn.functional.conv1d(torch.nn.functional.pad(u, (len(k) - 1, 0)),
                                   k.expand(4, 1, -1), groups=4)
    logits = rate.readout(torch.relu(h).transpose(1, 2))
    torch.testing.assert_close(rate(x), logits.mean(1))
    torch.testing.assert_close(vote(x), torch.log(torch.softmax(logits, -1).mean(1)))
