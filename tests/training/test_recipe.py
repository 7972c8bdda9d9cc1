"""The training levers of the run configuration and the named recipe (``--preset``)."""
from __future__ import annotations

import dataclasses

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
    real = parse_config(RealValuedConfig, ["--preset", "fit"])[0]
    assert real.encoder == "realvalued" and all(
        getattr(real, k) == v for k, v in PRESETS["fit"]["realvalued"].items())
    with pytest.raises(ValueError, match="--preset must be one of"):
        SpikingConfig(preset="nope").with_preset()
    from rsnn_bfd.cli import build_parser
    from rsnn_bfd.config import PRESET_SUMMARIES
    assert set(PRESET_SUMMARIES) == set(PRESETS)                  # --help says what each does
    assert "trains only the readout" in " ".join(build_parser(SpikingConfig).format_help().split())
    model_cfg = cfg.model_config()
    for name in ("readout_norm", "init_w_thalamic", "surrogate_sigma", "balance", "init_state"):
        assert getattr(model_cfg, name) == getattr(cfg, name), name


def test_the_whole_preset_is_the_screened_recipe():
    """``--preset whole`` trains exactly what the screen's records trained (docs/cv/screen45)."""
    import json
    from pathlib import Path
    record = (Path(__file__).resolve().parents[2] / "docs/cv/screen45/seed0"
              / "fitjoint-0-e30-last5/crossval.json")
    screened = parse_config(SpikingConfig, json.loads(record.read_text())["model_args"])[0]
    whole = parse_config(SpikingConfig, ["--preset", "whole"])[0]
    # crossval.py sets each fold's validation fifth; the script's preset holds one out too
    assert dataclasses.replace(screened, preset="whole", val_fraction=0.2) == whole
    assert whole.readout_epochs == 0 and whole.epochs == 30 and whole.readout_last == 5
    with pytest.raises(ValueError, match="spiking input only"):
        parse_config(RealValuedConfig, ["--preset", "whole"])


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


def test_readout_epochs_train_the_readout_alone_with_the_gradient_of_the_full_pass():
    from rsnn_bfd.training.batches import epoch_batches
    from rsnn_bfd.training.distributed import Dist
    from rsnn_bfd.training.step import train_one_epoch
    cfg = SpikingConfig(loss="mean-logit", init_state="zero", init_w_thalamic=0.3,
                        dtype="float64")
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(4, 2, 1, 40, 93, generator=g) < 0.3).double()
    y = torch.tensor([0, 1, 2, 0])
    dataset = [(x[i], int(y[i])) for i in range(4)]

    def one_epoch(readout_only):
        model = build_model(cfg.model_config(), dtype=torch.float64)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer, _ = make_optimizer(model, cfg)
        grads = {}
        step = optimizer.step
        optimizer.step = lambda: (grads.update({n: None if p.grad is None else p.grad.clone()
                                                for n, p in model.named_parameters()}), step())
        train_one_epoch(model, model, optimizer, dataset, epoch_batches(list(range(4)), 4, 0, 0),
                        "cpu", Dist(), False, 0, "t", cfg.loss, readout_only=readout_only)
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        return changed, grads

    changed, grads = one_epoch(True)
    assert changed == {"readout.0.weight", "readout.0.bias", "readout.1.weight",
                       "readout.1.bias"}
    assert all(grads[n] is None for n in grads if not n.startswith("readout."))
    _, full = one_epoch(False)                  # the same spikes, so the same readout gradient
    assert any(full[n] is not None and float(full[n].abs().max()) > 0 for n in full
               if not n.startswith("readout."))
    for n in grads:
        if n.startswith("readout."):
            torch.testing.assert_close(grads[n], full[n], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="--readout-epochs"):
        SpikingConfig(readout_epochs=-2).validate()
    assert [SpikingConfig(readout_epochs=n).readout_only(e) for n, e in
            ((0, 0), (2, 1), (2, 2), (-1, 500))] == [False, True, False, True]


def test_the_centred_readout_reads_each_sample_minus_its_mean_over_the_read_out_neurons():
    cfg = SpikingConfig(readout_norm=True, readout_centre=True, dtype="float64")
    model = build_model(cfg.model_config(), dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    model.readout_shift.copy_(torch.rand(3606, generator=g, dtype=torch.float64) * 0.05)
    model.readout_scale.copy_(torch.rand(3606, generator=g, dtype=torch.float64) + 0.5)
    spikes = (torch.rand(7, 2, 4218, generator=g) < 0.1).double()      # steps 1..7
    z = (spikes[:, :, model.readout_index] - model.readout_shift) * model.readout_scale
    z = z - z.mean(-1, keepdim=True)                                   # the centred input
    ro1, ro2 = model.readout
    expected = torch.nn.functional.linear(torch.nn.functional.linear(z, ro1.weight, ro1.bias),
                                          ro2.weight, ro2.bias)
    torch.testing.assert_close(model.read_out(spikes).logits, expected)
    # a common shift of every read-out neuron's standardised rate changes nothing
    shifted = spikes.clone()
    shifted[:, :, model.readout_index] += 0.3 / model.readout_scale
    torch.testing.assert_close(model.read_out(shifted).logits, expected)
    assert not build_model(SpikingConfig().model_config()).config.readout_centre   # published


def test_readout_only_epochs_read_stored_rates_with_the_same_result(tmp_path, monkeypatch):
    """The store (rsnn_bfd.training.frozen) runs the network once per sample and gives the
    run the same readout, metrics and validation choice as running it every epoch."""
    from rsnn_bfd.data.simulator.generate import generate_dataset
    from rsnn_bfd.io.checkpoint import load_checkpoint
    from rsnn_bfd.training import frozen, step
    from rsnn_bfd.training.run import train
    data = tmp_path / "data"
    generate_dataset(data, objects_per_class=5, seed=0, workers=1)
    cfg = SpikingConfig(data_dir=str(data), epochs=3, n_steps=30, batch_size=4, lr=0.01,
                        loss="mean-logit", readout_norm=True, readout_centre=True,
                        init_state="zero", init_w_thalamic=0.3, readout_epochs=-1,
                        val_fraction=0.25, progress=False, dtype="float64")
    calls = []
    forward = step.BarrelCortexRSNN.forward
    monkeypatch.setattr(step.BarrelCortexRSNN, "forward",
                        lambda self, x, *a, **k: calls.append(len(x)) or forward(self, x, *a, **k))
    cached = train(dataclasses.replace(cfg, out=str(tmp_path / "cached")), log=lambda *a: None)
    n_samples = 9 + 3 + 3                            # train + validation + test, once each
    assert sum(calls) == n_samples
    calls.clear()
    monkeypatch.setattr(frozen, "frozen_rates_apply", lambda *a: False)
    monkeypatch.setattr("rsnn_bfd.training.run.frozen_rates_apply", lambda *a: False)
    direct = train(dataclasses.replace(cfg, out=str(tmp_path / "direct")), log=lambda *a: None)
    assert sum(calls) > 3 * n_samples
    for a, b in zip(cached["rows"], direct["rows"]):
        for key in ("loss", "train_acc", "val_acc", "val_loss", "test_acc", "firing_rate"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    m1, _ = load_checkpoint(tmp_path / "cached" / "best.pth")
    m2, _ = load_checkpoint(tmp_path / "direct" / "best.pth")
    for (name, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        if not name.startswith("readout."):    # the network: untouched, identical
            assert torch.equal(p1, p2), name
        else:   # float64: in float32 Adam turns rounding-level gradients into lr-sized steps
            torch.testing.assert_close(p1, p2, rtol=1e-7, atol=1e-9, msg=name)
    assert not frozen.frozen_rates_apply(dataclasses.replace(cfg, init_state="published"), m1)
    assert not frozen.frozen_rates_apply(dataclasses.replace(cfg, loss="published"), m1)


@pytest.fixture(scope="module")
def follow_runs(tmp_path_factory, tiny_data):
    """Three short runs of one configuration with ``--readout-follow``: the readout alone for
    2 epochs, the network for 1, and the network for 1 then the readout for 1
    (``--readout-last 1``); their stored models, the initial one, and the standardisation
    measured again on a stored network."""
    from rsnn_bfd.io.checkpoint import load_checkpoint
    from rsnn_bfd.training.data import run_data
    from rsnn_bfd.training.run import train
    tmp = tmp_path_factory.mktemp("follow")
    cfg = SpikingConfig(data_dir=str(tiny_data), n_steps=30, batch_size=4, lr=0.01,
                        loss="mean-logit", readout_norm=True, readout_centre=True,
                        init_state="zero", init_w_thalamic=0.3, readout_follow=True,
                        progress=False, dtype="float64")
    runs = {}
    for name, epochs, first, last in (("readout_only", 2, 2, 0), ("joint", 1, 0, 0),
                                      ("then_readout", 2, 0, 1)):
        train(dataclasses.replace(cfg, epochs=epochs, readout_epochs=first, readout_last=last,
                                  out=str(tmp / name)), log=lambda *a: None)
        runs[name] = load_checkpoint(tmp / name / "checkpoint.pth")[0]
    data = run_data(cfg, log=lambda *a: None)

    def measured(state):
        model = build_model(cfg.model_config(), dtype=torch.float64)
        model.load_state_dict(state)
        fit_readout_norm_(model, data.train_set, data.train_idx, cfg.batch_size, "cpu")
        return model

    runs["initial"] = measured(build_model(cfg.model_config(), dtype=torch.float64).state_dict())
    runs["joint_measured"] = measured(runs["joint"].state_dict())
    return runs


def test_a_following_readout_is_standardised_for_the_network_as_it_is_after_each_epoch(
        follow_runs):
    """``--readout-follow``: after an epoch in which the network trained, the stored
    standardisation is the one measured on the stored network; readout-only epochs keep the
    first measurement."""
    readout_only, joint, initial = (follow_runs[k] for k in ("readout_only", "joint", "initial"))
    torch.testing.assert_close(readout_only.readout_shift, initial.readout_shift)
    assert not torch.equal(joint.recurrent.weight, initial.recurrent.weight)
    now = follow_runs["joint_measured"]          # the stored network, measured again
    torch.testing.assert_close(joint.readout_shift, now.readout_shift)
    torch.testing.assert_close(joint.readout_scale, now.readout_scale)
    assert not torch.equal(joint.readout_shift, initial.readout_shift)
    with pytest.raises(ValueError, match="--readout-follow"):
        SpikingConfig(readout_follow=True).validate()


def test_the_last_readout_epochs_train_the_readout_of_the_network_as_trained(follow_runs):
    """``--readout-last``: the network trains, then only the readout, on the rates of the
    network as trained (standardised again, read from a store filled anew)."""
    joint, last = follow_runs["joint"], follow_runs["then_readout"]
    for name in ("recurrent.weight", "thalamocortical.weight", "tau_m", "encoder.force.weight"):
        assert torch.equal(last.state_dict()[name], joint.state_dict()[name]), name
    assert not torch.equal(last.readout[0].weight, joint.readout[0].weight)
    now = follow_runs["joint_measured"]                                   # measured again
    torch.testing.assert_close(last.readout_shift, now.readout_shift)
    assert [SpikingConfig(epochs=4, readout_last=2).readout_only(e) for e in range(4)] == \
        [False, False, True, True]
    with pytest.raises(ValueError, match="--readout-last"):
        SpikingConfig(readout_last=-1).validate()
