"""utils.py: the command line of the analyses, and the analyses that run the model (figures, recording)."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from rsnn_bfd.io.checkpoint import save_checkpoint
from rsnn_bfd.network import neuron
from rsnn_bfd.network.model import ModelConfig, build_model
from rsnn_bfd.network.neuron import alif_step

import utils
from conftest import run_main

T_STEPS = 5


class FakeSpikingData(torch.utils.data.Dataset):
    """Class 0: every input spikes at every step; classes 1 and 2: silent input."""

    def __init__(self, labels, n_steps=T_STEPS, seed=None):
        self.labels = torch.as_tensor(labels)
        self.n_steps = n_steps
        self.seed = seed

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if self.seed is not None:       # random input spikes
            g = torch.Generator().manual_seed(self.seed + int(i))
            x = (torch.rand(2, 12, self.n_steps, 93, generator=g) < 0.3).to(torch.uint8)
        else:
            fill = 1 if int(self.labels[i]) == 0 else 0
            x = torch.full((2, 12, self.n_steps, 93), fill, dtype=torch.uint8)
        return x, self.labels[i]


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(), engine="reference").eval()


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- ANOVA
def wired_model():
    """Only neuron k receives input, and only when the input spikes (class 0)."""
    m = build_model(ModelConfig(), engine="reference").eval()
    anatomy = m.anatomy
    k = anatomy.populations[4].offset + 3
    n, n_thal = anatomy.n_neurons, m.config.n_thalamus
    with torch.no_grad():
        for layer in (m.encoder.force, m.encoder.torque):
            layer.weight.fill_(1.0)
            layer.bias.zero_()
        m.thalamus_input.weight.copy_(torch.eye(n_thal))
        m.thalamus_input.bias.fill_(-20.0)          # silent VPM without input
        mask = torch.zeros(n, n_thal, dtype=torch.bool)
        mask[k] = True
        m.thalamocortical.set_connections(mask, mask.float())
        m.recurrent.set_connections(torch.zeros(n, n, dtype=torch.bool), torch.zeros(n, n))
    return m, k


def test_anova_on_wired_model(tmp_path):
    m, k = wired_model()
    data = FakeSpikingData([0, 1, 2, 0, 1, 2], n_steps=3)
    # batch_size 1: every sample starts from the same (published) initial state, so a
    # neuron without input fires identically in every sample
    rec = utils.record_spikes(m, data, batch_size=1, progress=False, keep_trains=True)
    np.testing.assert_array_equal(rec["counts"], rec["trains"].sum(1))
    assert rec["counts"][rec["labels"] == 0, k].min() > rec["counts"][rec["labels"] != 0, k].max()
    res = utils.run_anova(m, data, tmp_path, batch_size=1, initial_model=m, progress=False)
    p = res["results"]["trained"]["p"]
    assert p[k] < 0.001
    others = np.arange(m.n_neurons) != k
    assert (rec["counts"][:, others].sum(0) > 0).sum() > 100   # they do fire, identically
    assert np.all(p[np.arange(m.n_neurons) != k] == 1.0)    # identical in every sample
    summary = json.loads((tmp_path / "anova_selectivity.json").read_text())
    pop = m.anatomy.populations[4]
    assert summary["trained"]["selective"] == 1
    assert summary["trained"]["per_population"][pop.name]["selective"] == 1
    assert summary["trained"]["per_layer"][pop.layer]["selective"] == 1
    assert summary["n_samples"] == 6
    rows = read_csv(tmp_path / "anova_neurons.csv")
    assert len(rows) == m.n_neurons
    assert rows[k]["population"] == pop.name and rows[k]["selective_trained"] == "1"
    assert float(rows[k]["prop_helmet_trained"]) == pytest.approx(1.0)
    assert (tmp_path / "anova_selectivity.png").stat().st_size > 1000


def test_untrained_like_and_balanced_indices(model):
    init = utils.untrained_like(model)
    assert torch.equal(init.tau_m, model.tau_m)
    assert torch.equal(init.recurrent.mask, model.recurrent.mask)
    idx = utils.balanced_indices([0, 0, 0, 1, 1, 2, 2, 2], 4)
    assert list(idx) == [0, 1, 3, 5]
    assert list(utils.balanced_indices([0, 1], None)) == [0, 1]


# ----------------------------------------------------------------------------- raster
def test_group_rates_and_raster(tmp_path, model):
    anatomy = model.anatomy
    s = np.zeros((4, anatomy.n_neurons))
    l4e = anatomy.layer_neurons("L4", "E")
    s[1, l4e[:10]] = 1
    rates = utils.group_rates(s, anatomy)
    assert set(rates) == {"L4 E", "L4 I", "L2/3 E", "L2/3 I"}
    assert rates["L4 E"][1] == pytest.approx(10 / len(l4e))
    assert rates["L2/3 I"].sum() == 0
    res = utils.run_raster(model, FakeSpikingData([1, 0, 2], seed=3), tmp_path, sample=1,
                           progress=False)
    spikes = res["spikes"]
    assert spikes.shape == (T_STEPS, anatomy.n_neurons)
    rows = read_csv(tmp_path / "raster_rates.csv")
    l23i = anatomy.layer_neurons("L2/3", "I")
    for t, row in enumerate(rows):
        assert float(row["L2/3 I"]) == pytest.approx(spikes[t, l23i].mean())
    info = json.loads((tmp_path / "raster.json").read_text())
    assert info["label"] == 0 and info["layer_boundaries"] == [len(anatomy.layer_neurons("L4"))]


# ----------------------------------------------------------------------------- dynamics
def test_constant_input_rates_use_alif_step(monkeypatch, model):
    calls = []
    real = alif_step

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(neuron, "alif_step", counting)
    rates, pops = utils.constant_input_rates(model, steps=60, current=1.0)
    assert len(calls) == 60
    assert rates.shape == (model.n_neurons,) and np.all((rates >= 0) & (rates <= 1))
    for i, p in enumerate(model.anatomy.populations):
        assert pops[i] == pytest.approx(rates[p.neurons].mean())
    # an independent scalar re-derivation of the ALIF equations for one neuron
    j = 1234
    tm, ta = float(model.tau_m[j].detach()), float(model.tau_adp[j].detach())
    b0, beta = model.config.init_b, model.config.beta
    alpha, rho = math.exp(-1 / tm), math.exp(-1 / ta)
    mem, spk, b, n = 0.0, 0.0, b0, 0
    for _ in range(60):
        b = rho * b + (1 - rho) * spk
        th = b0 + beta * b
        mem = mem * alpha + (1 - alpha) * 1.0 - th * spk
        spk = 1.0 if mem - th > 0 else 0.0
        n += spk
    assert rates[j] == pytest.approx(n / 60)
    assert np.all(utils.constant_input_rates(model, steps=20, current=0.0)[0] == 0)


def test_run_dynamics(tmp_path, model):
    res = utils.run_dynamics(model, tmp_path, initial_model=model, steps=50)
    summary = json.loads((tmp_path / "dynamics_constant_input.json").read_text())
    ref = [p.reference_rate for p in model.anatomy.populations]
    r, p = stats.pearsonr(res["rates_trained"], ref)
    assert summary["pearson_trained"]["r"] == pytest.approx(r, rel=1e-9)
    rows = read_csv(tmp_path / "dynamics_constant_input.csv")
    assert [row["population"] for row in rows] == model.anatomy.names
    tau = read_csv(tmp_path / "dynamics_tau.csv")
    assert float(tau[7]["tau_m_trained"]) == pytest.approx(float(model.tau_m[7].detach()))
    for name in ("dynamics_tau.png", "dynamics_constant_input.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert sorted(f.name for f in res["files"]) == sorted(utils.ANALYSIS_FILES["dynamics"])


# ----------------------------------------------------------------------------- degrees
def test_weighted_degrees_sum_to_effective_weights(tmp_path, model):
    W = model.signed_recurrent_weight().detach().double()
    d_in, d_out = utils.model_degrees(model)
    assert d_in.sum() == pytest.approx(float(W.sum()), rel=1e-9)
    assert d_out.sum() == pytest.approx(float(W.sum()), rel=1e-9)
    # an independent oracle: sign of the presynaptic neuron x weight x mask
    w = (model.recurrent.weight.detach().double() * model.recurrent.mask).numpy()
    signed = w * model.anatomy.pre_sign[None, :]
    np.testing.assert_allclose(d_in, signed.sum(1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(d_out, signed.sum(0), rtol=1e-9, atol=1e-9)
    inh = model.anatomy.pre_sign < 0
    assert np.all(d_out[inh] <= 0) and np.all(d_out[~inh] >= 0)
    trained = build_model(ModelConfig(), engine="reference").eval()
    with torch.no_grad():
        trained.recurrent.weight.mul_(2.0)
    res = utils.run_degree(trained, tmp_path, initial_model=model)
    st = json.loads((tmp_path / "degree.json").read_text())
    assert st["trained"]["weight_sum"] == pytest.approx(2 * float(W.sum()), rel=1e-6)
    assert st["initial"]["in_degree"]["mean"] == pytest.approx(d_in.mean(), rel=1e-9)
    assert st["initial"]["out_degree"]["skewness"] == pytest.approx(stats.skew(d_out), rel=1e-6)
    assert st["trained"]["out_degree"]["max"] == pytest.approx(2 * d_out.max(), rel=1e-6)
    rows = read_csv(tmp_path / "degree.csv")
    assert float(rows[11]["in_trained"]) == pytest.approx(2 * d_in[11], rel=1e-6)
    assert res["files"]


# ----------------------------------------------------------------------------- CV
def test_cv_grid_small(tmp_path):
    data = FakeSpikingData([0, 1, 2, 0], n_steps=3, seed=5)
    cfg = ModelConfig().to_dict()
    res = utils.run_cv(cfg, data, tmp_path, [0.02, 0.08], [0.04], n_samples=2, batch_size=2,
                       progress=False)
    rows = read_csv(tmp_path / "cv_grid.csv")
    assert [(float(r["init_w"]), float(r["init_b"])) for r in rows] == [(0.02, 0.04),
                                                                       (0.08, 0.04)]
    # recompute the second point by hand
    m = build_model(ModelConfig(init_w=0.08, init_b=0.04), engine="reference").eval()
    x = torch.stack([data[i][0] for i in (0, 1)]).float()
    with torch.no_grad():
        s = m(x, record_spikes=True).spikes.numpy()
    assert float(rows[1]["binned_cv"]) == pytest.approx(utils.binned_cv(s), rel=1e-9)
    assert float(rows[1]["mean_rate"]) == pytest.approx(s.mean(), rel=1e-9)
    isi = utils.isi_cv(s)
    assert (math.isnan(isi) and rows[1]["isi_cv"] == "nan") or \
        float(rows[1]["isi_cv"]) == pytest.approx(isi, rel=1e-9)
    assert res["n_samples"] == 2 and (tmp_path / "cv_grid.png").stat().st_size > 1000
    assert utils.parse_floats("0.01:0.04:4") == pytest.approx([0.01, 0.02, 0.03, 0.04])
    assert utils.parse_floats("0.1, 0.2") == [0.1, 0.2]


@pytest.mark.slow
def test_cv_grid_workers_match_serial():
    data = FakeSpikingData([0, 1], n_steps=3, seed=7)
    x = torch.stack([data[i][0] for i in range(2)]).float()
    cfg = ModelConfig().to_dict()
    serial = utils.cv_grid(cfg, x, [0.02, 0.05], [0.04], progress=False)
    parallel = utils.cv_grid(cfg, x, [0.02, 0.05], [0.04], workers=2, progress=False)
    for a, b in zip(serial, parallel):
        for k in ("binned_cv", "mean_rate"):
            assert a[k] == pytest.approx(b[k], rel=1e-6)


# ----------------------------------------------------------------------------- CLI
def test_parser_from_dataclass():
    cfg = utils.parse_config(["--checkpoint", "a.pth", "--out", "o", "--analysis", "cv",
                              "--cv-w", "0.01,0.02", "--workers", "2", "--max-samples", "9"])
    assert cfg.analysis == "cv" and cfg.workers == 2 and cfg.max_samples == 9
    assert cfg.n_steps is None and cfg.alpha == 0.001
    with pytest.raises(SystemExit):
        utils.parse_config(["--out", "o"])                       # --checkpoint is required


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    training = pytest.importorskip("training")
    from rsnn_bfd.data.ensure import ensure_dataset
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    ensure_dataset(data_dir, objects_per_class=2, workers=1, log=lambda *a: None)
    model = build_model(ModelConfig(), engine="reference")
    ckpt = tmp_path / "best.pth"
    save_checkpoint(ckpt, model, train_config={"n_steps": 3})
    out = tmp_path / "figs"
    rc = utils.main(["--checkpoint", str(ckpt), "--out", str(out), "--data-dir", str(data_dir),
                     "--cv-w", "0.02", "--cv-b", "0.04", "--cv-samples", "1",
                     "--const-steps", "30", "--no-progress"])
    assert rc == 0
    for name in ("anova_selectivity.png", "anova_selectivity.json", "anova_neurons.csv",
                 "raster.png", "raster_rates.csv", "dynamics_tau.png",
                 "dynamics_constant_input.png", "dynamics_constant_input.csv",
                 "degree_distributions.png", "degree.json", "cv_grid.png", "cv_grid.csv"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "anova_selectivity.json").read_text())
    assert summary["trained"]["total"] == model.n_neurons
    # same model untrained and trained here: identical selectivity
    assert summary["trained"]["selective"] == summary["untrained"]["selective"]
    assert len(read_csv(out / "raster_rates.csv")) == 3
    out2 = tmp_path / "anova_only"
    assert utils.anova_main(["--anova", "--checkpoint", str(ckpt), "--out", str(out2),
                             "--data-dir", str(data_dir), "--no-progress"]) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["anova_neurons.csv",
                                                      "anova_selectivity.json",
                                                      "anova_selectivity.png"]
    assert utils.main(["--checkpoint", str(tmp_path / "missing.pth"), "--out", str(out)]) == 2


def test_an_unwritable_out_fails_before_the_analyses(tmp_path, capsys):
    training = pytest.importorskip("training")
    model = build_model(ModelConfig(), engine="reference")
    ckpt = tmp_path / "best.pth"
    save_checkpoint(ckpt, model, train_config={"n_steps": 3})
    a_file = tmp_path / "figs"
    a_file.write_text("not a folder")
    rc = utils.main(["--checkpoint", str(ckpt), "--out", str(a_file), "--data-dir",
                     str(tmp_path / "no_data"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is a file" in err[0], err


# ----------------------------------------------------------------------------- nothing lost
def _cli(argv, main=None):
    """rc and stderr lines of ``utils.py argv`` (or of ``main``), run in this process."""
    return run_main(main or utils.main, argv)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A checkpoint of an untrained spiking network and a dataset of one object per class."""
    from rsnn_bfd.data.simulator.generate import generate_dataset
    from rsnn_bfd.io.checkpoint import save_checkpoint
    d = tmp_path_factory.mktemp("utils_run")
    generate_dataset(d / "data", objects_per_class=1, seed=0, workers=1)
    save_checkpoint(d / "best.pth", build_model(ModelConfig(), engine="reference"),
                    train_config={"n_steps": 3, "data_dir": str(d / "data")})
    return d


def test_a_repeated_analysis_keeps_the_earlier_files(tiny_run, tmp_path):
    out = tmp_path / "figs"
    argv = ["--checkpoint", str(tiny_run / "best.pth"), "--out", str(out), "--analysis",
            "degree", "--no-progress"]
    assert _cli(argv)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(utils.ANALYSIS_FILES["degree"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, lines = _cli(argv)
    assert rc == 2 and len(lines) == 1 and "already holds results of these analyses" in lines[0]
    assert "--overwrite" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _cli(argv + ["--overwrite"])[0] == 0


@pytest.mark.parametrize("flags, word", [
    (["--analysis", "raster", "--sample", "999"], "--sample 999 is not in the test set"),
    (["--analysis", "spectrum"], "--analysis: invalid choice"),
    (["--out", ""], "--out must name a folder"),
    (["--data-seed", str(10 ** 23)], "--data-seed must be an integer in 0.."),
    (["--device", "cpu:3"], "--device cpu:3")])
def test_bad_settings_are_one_line_and_leave_no_folder(tiny_run, tmp_path, flags, word):
    rc, lines = _cli(["--checkpoint", str(tiny_run / "best.pth"), "--out",
                      str(tmp_path / "figs"), "--no-progress", *flags])
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert word in lines[0], lines
    assert not (tmp_path / "figs").exists()


def test_a_bad_stored_configuration_and_the_scripts_encoder_are_checked(tiny_run, tmp_path):
    from rsnn_bfd.io.checkpoint import save_checkpoint

    import RSNN_bfd_SpikingBased
    bad = tmp_path / "bad.pth"
    save_checkpoint(bad, build_model(ModelConfig(), engine="reference"),
                    train_config={"encoder": "foo", "n_steps": 3})
    rc, lines = _cli(["--checkpoint", str(bad), "--out", str(tmp_path / "a"), "--analysis",
                      "degree"])
    assert rc == 2 and "names the encoder 'foo'" in lines[0], lines
    rv = tmp_path / "rv.pth"
    save_checkpoint(rv, build_model(ModelConfig(encoder="realvalued"), engine="reference"),
                    train_config={"encoder": "realvalued", "n_steps": 3})
    rc, lines = _cli(["--anova", "--checkpoint", str(rv), "--out", str(tmp_path / "b")],
                     RSNN_bfd_SpikingBased.main)
    assert rc == 2 and len(lines) == 1, lines
    assert "holds a realvalued network, not a spiking one" in lines[0]
    assert "python utils.py --analysis anova" in lines[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_analyses_read_the_runs_own_data_folder(tiny_run, tmp_path, monkeypatch):
    """As deprivation does: the run recorded its --data-dir; utils.py reads it, not data/."""
    monkeypatch.chdir(tmp_path)                     # no data/ here
    argv = ["--checkpoint", str(tiny_run / "best.pth"), "--out", "figs", "--analysis",
            "raster", "--no-progress"]
    assert _cli(argv)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"]   # nothing generated here


def test_ctrl_c_keeps_the_finished_analyses_and_says_how_to_go_on(tiny_run, tmp_path,
                                                                  monkeypatch):
    from rsnn_bfd.analyses import command

    real = command._one

    def interrupted(a, *args, **kw):
        if a == "dynamics":
            raise KeyboardInterrupt
        return real(a, *args, **kw)
    monkeypatch.setattr(command, "_one", interrupted)
    monkeypatch.setattr(command, "ANALYSES", ("degree", "raster", "dynamics", "cv"))
    out = tmp_path / "figs"
    rc, lines = _cli(["--checkpoint", str(tiny_run / "best.pth"), "--out", str(out),
                      "--no-progress"])
    lines = [ln for ln in lines if not ln.startswith(("[utils]", "  wrote"))]
    assert rc == 130 and len(lines) == 1, lines
    assert lines[0].startswith("interrupted; dynamics stopped, its files not written; the "
                               "finished analyses (degree, raster) are kept in"), lines
    assert lines[0].endswith("and each of: --analysis dynamics --analysis cv"), lines
    kept = {f for a in ("degree", "raster") for f in utils.ANALYSIS_FILES[a]}
    assert {p.name for p in out.iterdir()} == kept


def test_a_network_whose_readout_alone_was_trained_is_said_to_be_its_untrained_one(tmp_path):
    from rsnn_bfd.analyses.figures import run_degree, run_dynamics
    from rsnn_bfd.analyses.recording import (training_comparison, unchanged_by_training,
                                             untrained_like)
    m = build_model(ModelConfig(), engine="reference").eval()
    twin = untrained_like(m)
    with torch.no_grad():
        m.readout[0].weight.mul_(2.0)                # the readout trained, the network not
    assert unchanged_by_training(m, twin)
    degree = run_degree(m, tmp_path, twin)
    assert json.loads((tmp_path / "degree.json").read_text())["network_trained"] is False
    assert "only its readout was trained" in json.loads(
        (tmp_path / "degree.json").read_text())["same_network"]
    with torch.no_grad():
        m.recurrent.weight.mul_(0.5)                 # now the network has changed
    assert not unchanged_by_training(m, twin)
    assert unchanged_by_training(m, twin, ("tau_m", "tau_adp"))
    run_degree(m, tmp_path / "b", twin)
    assert json.loads((tmp_path / "b" / "degree.json").read_text())["network_trained"] is True
    assert "same_network" not in json.loads((tmp_path / "b" / "degree.json").read_text())
    note, fields = training_comparison(m, twin, "time constants", ("tau_m", "tau_adp"))
    assert fields == {"network_trained": False, "same_network": note}
    assert note.startswith("the network's time constants are its initial ones")
    assert training_comparison(m, twin, "weights") == ("", {"network_trained": True})
    assert degree["files"]
    run_dynamics(m, tmp_path / "c", twin, steps=5)
    dyn = json.loads((tmp_path / "c" / "dynamics_constant_input.json").read_text())
    assert dyn["network_trained"] is False and "time constants" in dyn["same_network"]
