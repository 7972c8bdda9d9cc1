"""Cross-validation (crossval.py, crossvalidation.py, folds.py): the folds, one fold's run,
the per-fold and aggregate files, resuming after a kill, pairing, bad arguments.

A tiny generated dataset (4 objects per class: 12 objects pooled), 2 folds, 1-2 epochs and
T = 8 steps; about a minute on 2 CPU cores.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rsnn_bfd.data.folds import check_partition, stratified_folds, stratified_holdout
from rsnn_bfd.study import crossvalidation as cv
from rsnn_bfd.study.cv_setup import fold_split, make_folds, read_json, training_objects
from rsnn_bfd.study.summary import load_results, paired_test, summarize
from rsnn_bfd.training import run as training_run
from rsnn_bfd.training.step import train_one_epoch

import crossval

ROOT = Path(__file__).resolve().parents[2]
RSNN_ARGS = ["--epochs", "1", "--n-steps", "8", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from rsnn_bfd.data.simulator.generate import generate_dataset
    d = tmp_path_factory.mktemp("whisker_data")
    generate_dataset(d, objects_per_class=4, seed=0, workers=2)
    return d


def run_cv(data_dir, out, model="rsnn-spiking", args=(), model_args=RSNN_ARGS):
    return crossval.main(["--model", model, "--data-dir", str(data_dir), "--out", str(out),
                          "--folds", "2", "--no-progress", *args, "--", *model_args])


# ----------------------------------------------------------------------------- the folds
def test_folds_are_stratified_disjoint_and_cover_every_object():
    shuffle = torch.randperm(273, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0] * 91 + [1] * 93 + [2] * 89)[shuffle]
    state = torch.random.get_rng_state()
    folds = stratified_folds(labels, 5, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())      # own generator only
    check_partition(folds, 273)
    assert sorted(i for f in folds for i in f) == list(range(273))
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    per_class = np.array([np.bincount(labels[f].numpy(), minlength=3) for f in folds])
    assert (per_class.max(0) - per_class.min(0) <= 1).all(), per_class
    assert folds == stratified_folds(labels, 5, seed=0)
    assert folds != stratified_folds(labels, 5, seed=1)
    with pytest.raises(ValueError, match="partition"):
        check_partition([folds[0], folds[0]], 273)
    with pytest.raises(ValueError, match=">= 2"):
        stratified_folds(labels, 1)

    kept, held = stratified_holdout(labels, 0.2, seed=4)
    assert sorted(kept + held) == list(range(273)) and not set(kept) & set(held)
    assert np.bincount(labels[held].numpy()).tolist() == [18, 19, 18]   # round(0.2 n_c)
    with pytest.raises(ValueError, match="fraction"):
        stratified_holdout(labels, 1.0)


def test_folds_file_pools_both_files(data_dir):
    from rsnn_bfd.data.files import read_labels
    record = make_folds(data_dir, 2, seed=0, val_fraction=0.2)
    labels = np.concatenate([read_labels(data_dir / "snn_train3.h5"),
                             read_labels(data_dir / "snn_test3.h5")])
    assert record["labels"] == labels.tolist() and record["n_objects"] == 12
    assert [f["n"] for f in record["files"]] == [10, 2]
    check_partition(record["folds"], 12)
    for K in range(2):
        train, val, test = fold_split(record, K)
        assert sorted(train + val + test) == list(range(12))
        assert set(val) <= set(training_objects(record["folds"], K))
        assert sorted(np.bincount(labels[val], minlength=3).tolist()) == [1, 1, 1]
    # the pooled dataset reads each object as its own file does
    from rsnn_bfd.data.datasets import SpikingWhiskerDataset, pooled_dataset
    pool = pooled_dataset("spiking", data_dir, spike_seed=3, n_steps=8)
    test = SpikingWhiskerDataset(data_dir / "snn_test3.h5", seed=3, n_steps=8)
    assert len(pool) == 12 and torch.equal(pool.labels, torch.as_tensor(labels))
    assert torch.equal(pool[11][0], test[1][0]) and int(pool[11][1]) == int(test[1][1])


# ----------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """An RSNN and a CNN cross-validation of 2 folds, 1 epoch, and their summary."""
    root = tmp_path_factory.mktemp("cv")
    run_cv(data_dir, root / "rsnn")
    run_cv(data_dir, root / "cnn", "cnn", model_args=["--epochs", "2", "--hidden", "8"])
    crossval.main(["summarize", str(root / "rsnn"), str(root / "cnn"), "--out",
                   str(root / "summary")])
    return root


def test_crossval_writes_per_fold_and_aggregate_files(finished):
    root = finished
    for name in ("rsnn", "cnn"):
        record = json.loads((root / name / "folds.json").read_text())
        assert record["k"] == 2 and record["seed"] == 0
        for K in range(2):
            r = json.loads((root / name / f"fold_{K}" / "result.json").read_text())
            assert r["fold"] == K and (r["n_train"], r["n_val"], r["n_test"]) == (3, 3, 6)
            assert 0 <= r["test_acc"] <= 1 and r["best_epoch"] >= 1
            assert r["machine"]["torch"] == torch.__version__
    # the RSNN fold is a training run folder chosen on validation
    ckpt = torch.load(root / "rsnn" / "fold_0" / "best.pth", weights_only=True)
    assert ckpt["selected_on"] == "validation"
    record = json.loads((root / "rsnn" / "folds.json").read_text())
    train, val, test = fold_split(record, 0)
    assert ckpt["split"] == {"train_idx": train, "val_idx": val, "test_idx": test}

    summary = json.loads((root / "summary" / "crossval_summary.json").read_text())
    with open(root / "summary" / "crossval_folds.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["model"], int(r["fold"])) for r in rows] == [("rsnn", 0), ("rsnn", 1),
                                                            ("cnn", 0), ("cnn", 1)]
    for name in ("rsnn", "cnn"):
        accs = [float(r["test_acc"]) for r in rows if r["model"] == name]
        m = summary["models"][name]
        assert m["test_acc"] == pytest.approx(accs)
        assert m["ci95"]["mean"] == pytest.approx(np.mean(accs))
        if m["ci95"]["low"] is not None:
            assert m["ci95"]["low"] <= m["ci95"]["mean"] <= m["ci95"]["high"]
    pair = summary["paired"]["rsnn - cnn"]
    diffs = np.subtract(summary["models"]["rsnn"]["test_acc"], summary["models"]["cnn"]["test_acc"])
    assert pair["differences"] == pytest.approx(diffs.tolist())
    assert pair["mean"] == pytest.approx(diffs.mean())
    with open(root / "summary" / "crossval_paired.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    assert (root / "summary" / "crossval_summary.png").is_file()
    # a second summary into the same folder needs --overwrite
    with pytest.raises(ValueError, match="--overwrite"):
        crossval.main(["summarize", str(root / "rsnn"), "--out", str(root / "summary")])


def test_paired_test_matches_scipy():
    from scipy import stats
    a, b = [0.7, 0.75, 0.72, 0.8, 0.69], [0.8, 0.78, 0.74, 0.85, 0.77]
    p = paired_test(a, b, correction=1 / 4)   # 5 folds: n_test / n_train = 1 / 4
    ref = stats.ttest_rel(a, b)
    assert p["t"] == pytest.approx(ref.statistic) and p["p"] == pytest.approx(ref.pvalue)
    ci = stats.t.interval(0.95, 4, loc=np.mean(np.subtract(a, b)),
                          scale=stats.sem(np.subtract(a, b)))
    assert (p["low"], p["high"]) == pytest.approx(ci)
    assert p["low_corrected"] < p["low"] and p["p_corrected"] > p["p"]


def _results(out):
    keep = ("best_epoch", "val_acc", "test_acc", "train_acc", "n_train", "n_val", "n_test")
    return [{k: json.loads((Path(out) / f"fold_{K}" / "result.json").read_text())[k]
             for k in keep} for K in range(2)]


def test_a_killed_run_resumes_and_gives_the_same_aggregate(data_dir, tmp_path, monkeypatch):
    """An RSNN cross-validation killed in fold 0's second epoch continues fold 0 from its
    checkpoint on the rerun and ends with the results of an uninterrupted run."""
    args = ["--epochs", "2", "--n-steps", "8", "--batch-size", "4", "--device", "cpu"]
    run_cv(data_dir, tmp_path / "full", model_args=args)
    calls = {"n": 0}
    real = train_one_epoch

    def killed(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(training_run, "train_one_epoch", killed)
    with pytest.raises(KeyboardInterrupt, match="fold 0 stopped.*rerun"):
        run_cv(data_dir, tmp_path / "killed", model_args=args)
    fold0 = tmp_path / "killed" / "fold_0"
    assert not (fold0 / "result.json").exists()
    assert torch.load(fold0 / "checkpoint.pth", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(training_run, "train_one_epoch", real)
    run_cv(data_dir, tmp_path / "killed", model_args=args)
    assert _results(tmp_path / "killed") == _results(tmp_path / "full")
    a, b = (torch.load(d / "fold_0" / "best.pth", weights_only=True)
            for d in (tmp_path / "full", tmp_path / "killed"))
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    sa, sb = (summarize([d], tmp_path / f"sum_{d.name}", log=lambda *a: None)
              for d in (tmp_path / "full", tmp_path / "killed"))
    assert sa["models"]["full"]["ci95"] == sb["models"]["killed"]["ci95"]
    # a finished fold is skipped; a fold whose result is lost runs again, to the same result
    (tmp_path / "killed" / "fold_1" / "result.json").unlink()
    run_cv(data_dir, tmp_path / "killed", model_args=args)
    assert _results(tmp_path / "killed") == _results(tmp_path / "full")


def test_one_fold_per_process_and_baseline_resume(data_dir, tmp_path):
    out = tmp_path / "gru"
    model_args = ["--epochs", "2", "--hidden", "8"]
    run_cv(data_dir, out, "gru", ["--fold", "1", "--threads", "1"], model_args)
    assert (out / "fold_1" / "result.json").is_file() and not (out / "fold_0").exists()
    assert [r["state"] for r in cv.status(out)] == ["not started", "done"]
    with pytest.raises(ValueError, match="fold.*0.*not finished"):
        load_results(out)
    # the finished folds alone can be compared (screens on a subset of the folds)
    part = summarize([out], tmp_path / "part", log=lambda *a: None, only_folds="1")
    assert part["folds"] == [1] and part["models"]["gru"]["ci95"]["n"] == 1
    assert part["models"]["gru"]["test_acc"] == [read_json(out / "fold_1" / "result.json")
                                                 ["test_acc"]]
    with pytest.raises(ValueError, match="are 0..1"):
        summarize([out], tmp_path / "bad", log=lambda *a: None, only_folds="2")
    run_cv(data_dir, out, "gru", ["--fold", "0"], model_args)
    once = _results(out)
    (out / "fold_0" / "result.json").unlink()
    run_cv(data_dir, out, "gru", [], model_args)
    assert _results(out) == once


def test_other_settings_or_folds_are_refused(finished, data_dir, tmp_path):
    root = finished
    with pytest.raises(ValueError, match="other settings.*model_config.*--overwrite"):
        run_cv(data_dir, root / "cnn", "cnn", model_args=["--epochs", "3", "--hidden", "8"])
    other = tmp_path / "cnn_seed1"
    run_cv(data_dir, other, "cnn", ["--seed", "1"], ["--epochs", "1", "--hidden", "8"])
    with pytest.raises(ValueError, match="other folds"):
        summarize([root / "cnn", other], tmp_path / "s", log=lambda *a: None)
    # --overwrite replaces a cross-validation with other settings
    run_cv(data_dir, other, "cnn", ["--overwrite"], ["--epochs", "1", "--hidden", "8"])
    assert json.loads((other / "folds.json").read_text())["seed"] == 0


def test_a_summary_pools_datasets_of_models_named_alike(finished, tmp_path):
    """seed0/rsnn seed1/rsnn seed0/cnn seed1/cnn: two models, each over both datasets' folds,
    paired dataset by dataset and fold by fold."""
    for tag in ("d0", "d1"):
        for name in ("rsnn", "cnn"):
            shutil.copytree(finished / name, tmp_path / tag / name,
                            ignore=shutil.ignore_patterns("*.pth", "*.png", ".lock"))
            if tag == "d1":   # another dataset (its fingerprint), other results
                folds = tmp_path / tag / name / "folds.json"
                record = json.loads(folds.read_text())
                folds.write_text(json.dumps({**record, "dataset": {"seed": 1}}))
                for K in range(2):
                    path = tmp_path / tag / name / f"fold_{K}" / "result.json"
                    r = json.loads(path.read_text())
                    n = (K + len(name)) % (r["n_test"] + 1)
                    path.write_text(json.dumps({**r, "n_correct": n,
                                                "test_acc": n / r["n_test"]}))
    dirs = [tmp_path / t / n for n in ("rsnn", "cnn") for t in ("d0", "d1")]
    s = summarize(dirs, tmp_path / "s", log=lambda *a: None)
    acc = {(t, n): [read_json(tmp_path / t / n / f"fold_{K}" / "result.json")["test_acc"]
                    for K in range(2)] for t in ("d0", "d1") for n in ("rsnn", "cnn")}
    assert list(s["models"]) == ["rsnn", "cnn"] and [d["name"] for d in s["datasets"]] == [
        "d0", "d1"]
    for n in ("rsnn", "cnn"):
        assert s["models"][n]["test_acc"] == acc["d0", n] + acc["d1", n]
        assert s["models"][n]["ci95"]["n"] == 4
    assert s["paired"]["rsnn - cnn"]["differences"] == pytest.approx(
        [a - b for a, b in zip(acc["d0", "rsnn"] + acc["d1", "rsnn"],
                               acc["d0", "cnn"] + acc["d1", "cnn"])])
    with open(tmp_path / "s" / "crossval_paired.csv") as fh:
        assert [(r["dataset"], r["fold"]) for r in csv.DictReader(fh)] == [
            ("d0", "0"), ("d0", "1"), ("d1", "0"), ("d1", "1")]
    with pytest.raises(ValueError, match="one folder of each model per dataset"):
        summarize(dirs[:3], tmp_path / "s2", log=lambda *a: None)


def test_baseline_epoch_choice_never_reads_the_test_labels(data_dir):
    from rsnn_bfd.study import baselines
    cfg = baselines.BaselineConfig(epochs=4, hidden=8)
    pool = __import__("whisker_dataset").pooled_dataset("realvalued", data_dir)
    x, y = baselines.sweep_inputs(pool)
    x0 = x[:, 0]
    record = make_folds(data_dir, 2, 0, 0.2)
    train, val, test = fold_split(record, 0)
    a = baselines.train_baseline_on_split("cnn", x, x0, y, train, val, test, cfg, 0, 1)
    flipped = y.clone()
    flipped[test] = (flipped[test] + 1) % 3
    b = baselines.train_baseline_on_split("cnn", x, x0, flipped, train, val, test, cfg, 0, 1)
    assert a["best_epoch"] == b["best_epoch"]
    assert [e["val_acc"] for e in a["epochs"]] == [e["val_acc"] for e in b["epochs"]]
    assert a["val_acc"] == max(e["val_acc"] for e in a["epochs"])


@pytest.mark.parametrize("args, word", [
    (["--folds", "1"], "--folds"),
    (["--folds", "2", "--fold", "2"], "--fold"),
    (["--val-fraction", "0"], "--val-fraction"),
    (["--model", "cnn", "--", "--seeds", "0,1"], "one seed"),
    (["--", "--out", "x"], "--out after --"),
    (["--", "--val-fraction", "0.3"], "--val-fraction after --"),
    (["--", "--patience", "3", "--lr", "nan"], "--lr"),
    (["--data-dir", "nowhere"], "not found"),
    (["summarize", "nowhere"], "holds no cross-validation"),
    (["summarize", "nowhere", "--only-folds", "a"], "--only-folds"),
])
def test_bad_arguments_give_one_line_errors(data_dir, tmp_path, args, word):
    if "--data-dir" not in args and args[0] != "summarize":
        args = ["--data-dir", str(data_dir)] + args
    if args[0] != "summarize":
        args = ["--out", str(tmp_path / "o")] + args
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "crossval.py"), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], proc.stderr
    assert not list((tmp_path / "o").glob("fold_*")) if (tmp_path / "o").exists() else True


def test_learning_curve_reads_summaries(finished, tmp_path):
    crossval.main(["curve", str(finished / "summary"), "--out", str(tmp_path / "curve")])
    with open(tmp_path / "curve" / "learning_curve.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["model"] for r in rows) == ["cnn", "rsnn"]
    assert all(float(r["objects_per_class"]) == 4 for r in rows)
    assert (tmp_path / "curve" / "learning_curve.png").is_file()
    with pytest.raises(ValueError, match="--overwrite"):
        crossval.main(["curve", str(finished / "summary"), "--out", str(tmp_path / "curve")])


def test_the_screen_pools_validation_over_folds_and_datasets_and_reads_no_test(finished,
                                                                             tmp_path):
    screen_dir = tmp_path / "screen"
    for dataset in ("d0", "d1"):
        shutil.copytree(finished / "rsnn", screen_dir / dataset / "joint")
    shutil.copytree(finished / "rsnn", screen_dir / "d0" / "half")
    shutil.rmtree(screen_dir / "d0" / "half" / "fold_1")          # a fold not yet run
    (screen_dir / "d0" / "half" / "fold_0" / "best.pth").unlink()  # as in the records
    crossval.main(["screen", *map(str, sorted(screen_dir.glob("d*/*")))])
    out = screen_dir / "table"                                      # the default
    table = json.loads((out / "screen.json").read_text())
    results = [json.loads((finished / "rsnn" / f"fold_{K}" / "result.json").read_text())
               for K in range(2)]
    correct = sum(round(r["val_acc"] * r["n_val"]) for r in results)
    n = sum(r["n_val"] for r in results)
    joint = next(c for c in table["candidates"] if c["candidate"] == "joint")
    assert joint["folds"] == 4 and joint["folds_d0"] == joint["folds_d1"] == 2
    assert joint["val_acc"] == pytest.approx(correct / n)
    assert joint["val_low"] <= joint["val_acc"] <= joint["val_high"]
    assert joint["recurrent_change"] > 0 and joint["train_acc_min"] <= joint["train_acc"]
    half = next(c for c in table["candidates"] if c["candidate"] == "half")
    assert half["folds"] == 1 and half["folds_d1"] == 0
    assert math.isnan(half["recurrent_change"])                     # unknown without best.pth
    assert "diff" not in half                                       # no candidate named fit
    crossval.main(["screen", str(screen_dir / "d0" / "joint"), str(screen_dir / "d0" / "half"),
                   "--against", "joint", "--out", str(tmp_path / "paired")])
    paired = json.loads((tmp_path / "paired" / "screen.json").read_text())["candidates"]
    half = next(c for c in paired if c["candidate"] == "half")      # the same runs: 0
    assert half["paired_folds"] == 1 and half["diff"] == half["last_diff"] == 0
    with pytest.raises(ValueError, match="--against nope: no such candidate"):
        crossval.main(["screen", str(screen_dir / "d0" / "joint"), "--against", "nope",
                       "--out", str(tmp_path / "t3")])
    text = "".join((out / name).read_text() for name in ("screen.csv", "screen_folds.csv",
                                                         "screen.json"))
    assert "test" not in text                                       # the held-out folds unread
    with pytest.raises(ValueError, match="RSNN training set-ups"):
        crossval.main(["screen", str(finished / "cnn"), "--out", str(tmp_path / "t2")])
    with pytest.raises(ValueError, match="--overwrite"):
        crossval.main(["screen", str(screen_dir / "d0" / "joint")])


def test_study_records_are_saved_and_seed_a_fresh_run(finished, data_dir, tmp_path, capsys):
    """tools/crossval_records.sh: the finished folds go into the records (docs/cv in the
    study) and back into a fresh run folder, whose run then skips them."""
    script = ["bash", str(ROOT / "tools" / "crossval_records.sh")]
    records = tmp_path / "records"
    subprocess.run([*script, "save", str(finished), str(records)], check=True,
                   capture_output=True)
    rec = records / "91"
    assert sorted(p.name for p in (rec / "rsnn" / "fold_0").iterdir()) == ["metrics.csv",
                                                                          "result.json"]
    assert sorted(p.name for p in rec.iterdir()) == ["cnn", "rsnn"]    # not the summary
    quiet = dict(log=lambda *a: None)
    runs = summarize([finished / "rsnn", finished / "cnn"], tmp_path / "s1", **quiet)
    kept = summarize([rec / "rsnn", rec / "cnn"], tmp_path / "s2", **quiet)
    assert kept["models"]["rsnn"]["test_acc"] == runs["models"]["rsnn"]["test_acc"]
    assert kept["paired"] == runs["paired"]

    # nothing in the records is overwritten, and other settings are left alone
    result = rec / "cnn" / "fold_1" / "result.json"
    result.write_text(result.read_text().replace('"fold": 1', '"fold": 1, "mark": 1'))
    settings = json.loads((rec / "rsnn" / "crossval.json").read_text())
    (rec / "rsnn" / "crossval.json").write_text(json.dumps({**settings, "seed": 7}))
    shutil.rmtree(rec / "rsnn" / "fold_1")
    done = subprocess.run([*script, "save", str(finished), str(records)], check=True,
                          capture_output=True, text=True)
    assert '"mark": 1' in result.read_text() and not (rec / "rsnn" / "fold_1").exists()
    assert "other settings" in done.stderr

    out = tmp_path / "fresh"
    subprocess.run([*script, "load", str(out), str(records)], check=True, capture_output=True)
    assert (out / "cnn" / "fold_0" / "result.json").is_file()
    capsys.readouterr()
    run_cv(data_dir, out / "cnn", "cnn", model_args=["--epochs", "2", "--hidden", "8"])
    assert capsys.readouterr().out.count("done before") == 2
