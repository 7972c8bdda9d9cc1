"""tools/probe_representation.py: linear read-outs fitted to a trained network's spikes."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import probe_representation as pr  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from rsnn_bfd.config import SpikingConfig
    from rsnn_bfd.data.simulator.generate import generate_dataset
    from rsnn_bfd.training.run import train
    d = tmp_path_factory.mktemp("whisker_data")
    generate_dataset(d, objects_per_class=5, seed=3, workers=2)  # every class in both files
    out = tmp_path_factory.mktemp("run")
    train(SpikingConfig(data_dir=str(d), out=str(out), epochs=1, batch_size=4, n_steps=12,
                        device="cpu", progress=False, loss="log-mean-prob"),
          log=lambda *a: None)
    return out


def test_pooled_rates():
    s = torch.zeros(2, 7, 3, dtype=torch.uint8)
    s[0, 0:3, 1] = 1                         # first window of 3 steps, unit 1
    s[1, 6, 2] = 1                           # the dropped 7th step
    x = pr.pooled(s, 2)
    assert x.shape == (2, 6)
    assert x[0].tolist() == [0, 1, 0, 0, 0, 0] and not x[1].any()


def test_logistic_regression_separates_separable_classes():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(30) % 3
    x = torch.nn.functional.one_hot(y, 3).float() + 0.1 * torch.randn(30, 3, generator=g)
    assert pr.logistic_regression(x, y, x[:6], y[:6], l2=1e-3) == (1.0, 1.0)


def test_probe_writes_fits_and_matches_the_run(run, tmp_path):
    cfg, _ = pr.parse_config(pr.ProbeConfig, [
        "--checkpoint", str(run / "best.pth"), "--out", str(tmp_path), "--bins", "1,2",
        "--l2", "0.01", "--readout-lr", "0.01", "--readout-epochs", "5", "--stride", "1", "--no-progress",
        "--device", "cpu"])
    summary = pr.probe(cfg, log=lambda *a: None)
    fits = summary["fits"]
    assert [(f["group"], f["bins"]) for f in fits if f["fit"] == "logreg"] == \
        [("thalamus", 1), ("thalamus", 2), ("readout_neurons", 1), ("readout_neurons", 2)]
    refit = [f for f in fits if f["fit"] == "readout"]
    assert [f["epoch"] for f in refit] == [0, 5]
    # before the refit, the readout on the recorded spikes is the run's own test accuracy
    ckpt = torch.load(run / "best.pth", weights_only=True)
    assert refit[0]["test_acc"] == pytest.approx(ckpt["test_acc"])
    for f in fits:
        assert 0 <= f["train_acc"] <= 1 and 0 <= f["test_acc"] <= 1
    assert set(summary["class_rates"]) <= {0, 1, 2}
    assert json.loads((tmp_path / "probe.json").read_text())["n_train"] == summary["n_train"]
    with open(tmp_path / "probe.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(fits)


def test_bad_settings_are_refused(run, tmp_path):
    for flags, word in ((["--bins", "0"], "--bins"), (["--l2", "x"], "comma-separated"),
                        (["--stride", "0"], "--stride"), ([], "--checkpoint is required")):
        argv = flags + (["--checkpoint", str(run / "best.pth")] if word != "--checkpoint is required" else [])
        cfg, _ = pr.parse_config(pr.ProbeConfig, argv + ["--out", str(tmp_path)])
        with pytest.raises(ValueError, match=word.replace("-", "\\-")):
            pr.probe(cfg, log=lambda *a: None)
