"""The training levers of the run configuration and the named recipe (``--preset``)."""
from __future__ import annotations

import pytest
import torch

from rsnn_bfd.cli import parse_config
from rsnn_bfd.config import PRESETS, RealValuedConfig, SpikingConfig
from rsnn_bfd.network.model import build_model
from rsnn_bfd.training.init import fit_readout_norm_
from rsnn_bfd.training.step import make_optimizer


def test_a_preset_sets_defaults_and_the_flags_given_win():
    cfg, given = parse_config(SpikingConfig, ["--preset", "fit", "--lr", "0.002"])
    for name, value in PRESETS["fit"]["spiking"].items():
        assert getattr(cfg, name) == (0.002 if name == "lr" else value), name
    assert cfg.preset == "fit" and given == {"preset", "lr"}
    assert parse_config(SpikingConfig, [])[0] == SpikingConfig()        # no preset: the paper's
    with pytest.raises(ValueError, match="--preset fit is a recipe for the spiking input only"):
        parse_config(RealValuedConfig, ["--preset", "fit"])
    with pytest.raises(ValueError, match="--preset must be one of"):
        SpikingConfig(preset="nope").with_preset()
    model_cfg = cfg.model_config()
    for name in ("readout_norm", "init_w_thalamic", "surrogate_sigma", "balance", "init_state"):
        assert getattr(model_cfg, name) == getattr(cfg, name), name


def test_learning_rate_groups():
    model = build_model(SpikingConfig().model_config())
    published, _ = make_optimizer(model, SpikingConfig())
    assert [g["lr"] for g in published.param_groups] == [0.008, 0.04, 0.016]   # as published
    cfg = SpikingConfig(lr=0.001, lr_readout_factor=10, lr_recurrent_factor=0.1)
    opt, _ = make_optimizer(model, cfg)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.readout[0].weight)] == pytest.approx(0.01)
    assert lrs[id(model.recurrent.weight)] == lrs[id(model.thalamocortical.weight)] == \
        pytest.approx(0.0001)
    assert lrs[id(model.encoder.force.weight)] == 0.001 and lrs[id(model.tau_m)] == 0.002
    assert len(lrs) == len(list(model.parameters()))                # every parameter once
    for bad in (dict(lr_readout_factor=-1), dict(grad_clip=float("nan")),
                dict(surrogate_sigma=0), dict(init_w_thalamic=1.5)):
        with pytest.raises(ValueError, match="--" + next(iter(bad)).replace("_", "-")):
            SpikingConfig(**bad).validate()


def test_the_readout_standardisation_is_measured_on_the_training_samples():
    cfg = SpikingConfig(readout_norm=True, init_w_thalamic=0.3)
    model = build_model(cfg.model_config())
    g = torch.Generator().manual_seed(0)
    rate = torch.linspace(0.05, 0.6, 6)[:, None, None, None, None]   # samples that differ
    x = (torch.rand(6, 2, 1, 200, 93, generator=g) < rate).float()
    dataset = [(x[i], 0) for i in range(6)]
    info = fit_readout_norm_(model, dataset, list(range(6)), batch_size=4, device="cpu")
    assert info["n"] == 6 and info["mean_rate"] > 0
    # in the same batches (the published initial state depends on the batch size)
    rates = torch.cat([model(x[i:i + 4], record_spikes=True).spikes[1:, :, model.readout_index]
                       .mean(0) for i in (0, 4)])                    # (6, 3606)
    torch.testing.assert_close(model.readout_shift, rates.mean(0), rtol=1e-4, atol=1e-6)
    z = (rates - model.readout_shift) * model.readout_scale * len(model.readout_index) ** 0.5
    spread = rates.std(0, unbiased=False)
    varied = spread > 1 / 199                                        # above the floor
    assert varied.sum() > 100
    torch.testing.assert_close(z[:, varied].std(0, unbiased=False),
                               torch.ones(int(varied.sum())), rtol=1e-3, atol=1e-3)
    assert float(model.readout_scale.max()) <= 199 / len(model.readout_index) ** 0.5 + 1e-6


def test_a_run_with_the_preset_stores_it_and_its_network_loads(tmp_path):
    from rsnn_bfd.data.simulator.generate import generate_dataset
    from rsnn_bfd.io.checkpoint import load_checkpoint
    from rsnn_bfd.training.run import training_main
    data = tmp_path / "data"
    generate_dataset(data, objects_per_class=5, seed=0, workers=1)
    out = tmp_path / "run"
    argv = ["--preset", "fit", "--data-dir", str(data), "--out", str(out), "--epochs", "1",
            "--n-steps", "8", "--max-train-samples", "8", "--no-progress"]
    assert training_main(SpikingConfig, argv) == 0
    model, ckpt = load_checkpoint(out / "checkpoint.pth")
    stored = ckpt["train_config"]
    assert stored["preset"] == "fit" and stored["readout_norm"] and stored["batch_size"] == 16
    assert model.config.readout_norm and model.config.init_state == "zero"
    assert float(model.readout_scale.min()) > 0 and float(model.readout_shift.max()) > 0
    assert training_main(SpikingConfig, ["--resume", str(out), "--epochs", "2",
                                         "--no-progress"]) == 0
