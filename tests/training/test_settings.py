"""Settings mean what they say: a resume with a changed learning rate trains at it; the scripts
train their own network; flags that change nothing in a run get a notice; an empty
--data-dir is refused; the divergence message names the lever that diverged."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import run_main
from rsnn_bfd.config import RealValuedConfig, SpikingConfig
from rsnn_bfd.training import step as training_step
from rsnn_bfd.training.resume import resolve_resume
from rsnn_bfd.training.rundir import read_metrics
from rsnn_bfd.training.run import train
from rsnn_bfd.training.step import TrainingDiverged, gradient_lever


def tiny(data, out, **kw) -> SpikingConfig:
    base = dict(data_dir=str(data), out=str(out), epochs=1, batch_size=4, n_steps=8,
                max_train_samples=8, device="cpu", progress=False, lr=0.003)
    base.update(kw)
    return SpikingConfig(**base)


def _resume(cfg, given, log=lambda *a: None):
    return train(resolve_resume(cfg, given, log=log), log=log)


def test_a_resume_with_a_changed_learning_rate_trains_at_it(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(tiny(tiny_data, out), log=lambda *a: None)
    branch_same, branch_new = tmp_path / "same", tmp_path / "new"
    _resume(tiny(tiny_data, branch_same, epochs=2, resume=str(out / "checkpoint.pth")),
            {"resume", "epochs", "out"})
    said = []
    _resume(tiny(tiny_data, branch_new, epochs=2, lr=0.01, resume=str(out / "checkpoint.pth")),
            {"resume", "epochs", "out", "lr"}, said.append)
    assert any("changed settings: epochs, lr" in s for s in said), said
    assert any("learning rates follow the changed lr" in s and "0.01" in s for s in said), said
    same, new = read_metrics(branch_same / "metrics.csv"), read_metrics(branch_new / "metrics.csv")
    assert same[-1]["lr"] == pytest.approx(0.003) and new[-1]["lr"] == pytest.approx(0.01)
    assert same[-1]["loss"] != new[-1]["loss"]                 # it trained at the new rate
    ckpt = torch.load(branch_new / "checkpoint.pth", weights_only=True)
    rates = [g["lr"] for g in ckpt["optimizer_state"]["param_groups"]]
    assert rates == pytest.approx([0.01, 0.05, 0.02])          # x5 tau_adp, x2 tau_m
    assert ckpt["train_config"]["lr"] == 0.01
    # a factor that adds optimiser groups cannot change on resume: refused, not ignored
    with pytest.raises(ValueError, match="optimiser groups"):
        _resume(tiny(tiny_data, tmp_path / "f", epochs=2, lr_readout_factor=2.0,
                     resume=str(out / "checkpoint.pth")), {"resume", "epochs", "out",
                                                           "lr_readout_factor"})


def test_a_resume_with_a_changed_schedule_continues_from_its_position():
    from rsnn_bfd.network.model import ModelConfig, build_model
    model = build_model(ModelConfig())
    optimizer, scheduler = training_step.make_optimizer(model, SpikingConfig(step_size=2,
                                                                             gamma=0.5))
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    ckpt = {"optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
            "train_config": {"lr": 0.008, "step_size": 2, "gamma": 0.5}}
    kept, _, changed = training_step.restore_optimizer(model, SpikingConfig(step_size=2,
                                                                            gamma=0.5), ckpt)
    assert changed == [] and [g["lr"] for g in kept.param_groups] == \
        [g["lr"] for g in optimizer.param_groups]              # unchanged: exactly restored
    opt, sched, changed = training_step.restore_optimizer(
        model, SpikingConfig(lr=0.004, step_size=2, gamma=0.5), ckpt)
    assert changed == ["lr"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.004 * 0.5 ** 2)   # after 5 epochs
    opt.step()
    sched.step()                                               # epoch 6: the next decay
    assert opt.param_groups[0]["lr"] == pytest.approx(0.004 * 0.5 ** 3)


def test_each_script_trains_its_own_network(tmp_path):
    import RSNN_bfd_RealValued as realvalued
    import RSNN_bfd_SpikingBased as spiking
    rc, lines = run_main(realvalued.main, ["--encoder", "spiking", "--out", str(tmp_path / "o")])
    assert rc == 2 and lines == ["error: RSNN_bfd_RealValued.py trains the realvalued network, "
                                 "not a spiking one: run python RSNN_bfd_SpikingBased.py "
                                 "instead"], lines
    rc, lines = run_main(spiking.main, ["--encoder", "realvalued", "--out", str(tmp_path / "o")])
    assert rc == 2 and "run python RSNN_bfd_RealValued.py instead" in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_flags_that_change_nothing_get_a_notice():
    assert SpikingConfig().ineffective() == []
    assert SpikingConfig(preset="fit").with_preset().ineffective() == []
    notes = SpikingConfig(epochs=5, readout_epochs=8).ineffective()
    assert notes == ["--readout-epochs 8 is more than --epochs 5: every epoch trains the "
                     "readout alone (as --readout-epochs -1)"]
    notes = SpikingConfig(readout_epochs=-1, surrogate_cutoff=3.0, lr_tau_m_factor=1.0).ineffective()
    assert len(notes) == 1 and notes[0].startswith("--surrogate-cutoff, --lr-tau-m-factor "
                                                   "change nothing here: only the readout")
    assert SpikingConfig(readout_epochs=3, surrogate_cutoff=3.0).ineffective() == []
    assert SpikingConfig(target_rate=0.05).ineffective() == [
        "--target-rate changes nothing without --rate-reg"]
    assert SpikingConfig(target_rate=0.05, rate_reg_of="neuron").ineffective() == [
        "--target-rate, --rate-reg-of change nothing without --rate-reg"]
    assert "--spike-seed change nothing for real-valued input" in \
        RealValuedConfig(spike_seed=4).ineffective()[0]


def test_the_notice_is_said_when_the_run_starts(tiny_data, tmp_path):
    said = []
    train(tiny(tiny_data, tmp_path / "r", epochs=1, readout_epochs=3, loss="mean-logit"),
          log=said.append)
    assert said[0].startswith("note: --readout-epochs 3 is more than --epochs 1"), said


@pytest.mark.parametrize("script, argv", [
    ("RSNN_bfd_SpikingBased", ["--data-dir", ""]),
    ("utils", ["--checkpoint", "x.pth", "--data-dir", " "]),
    ("crossval", ["--data-dir", ""]),
    ("baselines", ["--data-dir", ""]),
])
def test_an_empty_data_dir_is_refused(script, argv, tmp_path, monkeypatch):
    import importlib
    monkeypatch.chdir(tmp_path)
    rc, lines = run_main(importlib.import_module(script).main, [*argv, "--out", "o"])
    assert rc == 2 and len(lines) == 1 and "--data-dir must name a folder" in lines[0], lines
    assert list(tmp_path.iterdir()) == []                       # nothing generated here


def test_a_gradient_that_overflows_names_the_surrogate(tiny_data, tmp_path):
    from rsnn_bfd.network.model import ModelConfig, build_model
    lever = gradient_lever(build_model(ModelConfig(surrogate_sigma=0.02)))
    assert "--surrogate-scale / (2.507 x --surrogate-sigma) is 9.97 (published 0.40)" in lever
    assert lever.endswith("a smaller --lr does not help (no step had been taken)")
    assert gradient_lever(build_model(ModelConfig()), first_step=False).endswith(
        "or a smaller --lr")

    # the overflow itself needs the full 550 steps; here the gradient's norm is made infinite
    out = tmp_path / "diverged"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training_step, "_grad_norm", lambda model: math.inf)
        with pytest.raises(TrainingDiverged, match=r"the gradient became inf at batch 1 .*"
                                                   r"--surrogate-scale .*a smaller --lr does "
                                                   r"not help"):
            train(tiny(tiny_data, out, surrogate_sigma=0.02), log=lambda *a: None)
    assert not out.exists()                                     # nothing was saved
