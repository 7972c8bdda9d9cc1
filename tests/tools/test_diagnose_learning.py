"""tools/diagnose_learning.py: the per-epoch measurements of a small training run."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import diagnose_learning as dl  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from rsnn_bfd.data.simulator.generate import generate_dataset
    d = tmp_path_factory.mktemp("whisker_data")
    generate_dataset(d, objects_per_class=2, seed=3, workers=2)
    return d


def test_records_rates_gradients_and_saturation(data_dir, tmp_path):
    cfg, _ = dl.parse_config(dl.DiagnoseConfig, [
        "--data-dir", str(data_dir), "--out", str(tmp_path), "--epochs", "2",
        "--max-train-samples", "4", "--batch-size", "4", "--n-steps", "20", "--device", "cpu",
        "--loss", "log-mean-prob", "--no-progress"])
    records = dl.diagnose(cfg, log=lambda *a: None)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    first, last = records[0], records[-1]
    assert first["n_samples"] == 4 and first["T"] == 20
    assert 0 < first["touched_fraction"] <= 1 and 0 < first["touched_spike_prob"] <= 1
    names = [n for n in dl.build_model(cfg.model_config()).anatomy.names]
    for key in ["rate_thalamus", "rate_cortex"] + [f"rate_{n}" for n in names]:
        assert 0 <= last[key] <= 1
    for key in ("grad_encoder", "grad_readout", "grad_recurrent", "grad_thalamocortical",
                f"grad_recurrent_to_{names[0]}", "grad_tau_m"):
        assert last[key] >= 0
    assert last["grad_readout"] > 0
    assert len(last["grad_thal_time"]) == 10 and max(last["grad_thal_time"]) > 0
    assert 1 / 3 - 1e-6 <= last["softmax_max"] <= 1 and 0 <= last["saturated_steps"] <= 1
    on_disk = [json.loads(line) for line in (tmp_path / "diagnostics.jsonl").read_text().splitlines()]
    assert on_disk == json.loads(json.dumps(records))
    with open(tmp_path / "diagnostics.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]
    assert (tmp_path / "diagnostics.png").stat().st_size > 0
