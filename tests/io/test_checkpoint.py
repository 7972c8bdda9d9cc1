"""Checkpoints: sparse layout, exact round trip, older versions, refusing bad files."""
from __future__ import annotations

import pytest
import torch

from rsnn_bfd.config import SpikingConfig
from rsnn_bfd.io.checkpoint import (VERSION, CheckpointError, _plain, load_checkpoint,
                                    read_checkpoint, save_checkpoint)
from rsnn_bfd.network.model import ModelConfig, build_model
from rsnn_bfd.training.step import make_optimizer


def _trained_one_step(seed: int = 0):
    """The full model and its Adam after one step with random (masked) gradients."""
    model = build_model(ModelConfig(seed=seed))
    optimizer, scheduler = make_optimizer(model, SpikingConfig())
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    for layer in (model.recurrent, model.thalamocortical):
        layer.weight.grad *= layer.mask
    optimizer.step()
    model.constrain_()
    scheduler.step()
    return model, optimizer, scheduler


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, optimizer, scheduler = _trained_one_step()
    path = tmp_path_factory.mktemp("ckpt") / "full.pth"
    live = {k: v.clone() for k, v in optimizer.state[model.recurrent.weight].items()}
    save_checkpoint(path, model, optimizer, scheduler, epoch=3, train_config={"lr": 0.008},
                    extra={"best_test_acc": 0.5})
    # saving does not touch the optimiser's live state
    for k, v in optimizer.state[model.recurrent.weight].items():
        assert torch.equal(v, live[k]), k
    return path, model, optimizer, scheduler


def test_a_full_checkpoint_is_small(saved):
    path, *_ = saved
    assert path.stat().st_size < 25e6, path.stat().st_size
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == VERSION == 2 and set(raw["sparse"]) == {"recurrent", "thalamocortical"}
    assert raw["model_state"]["recurrent.weight"].dim() == 1      # only the connections


def test_round_trip_is_exact(saved):
    path, model, optimizer, scheduler = saved
    loaded, ckpt = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    opt2, sched2 = make_optimizer(loaded, SpikingConfig())
    opt2.load_state_dict(ckpt["optimizer_state"])
    sched2.load_state_dict(ckpt["scheduler_state"])
    for p, q in zip(model.parameters(), loaded.parameters()):
        for key, v in optimizer.state[p].items():
            assert torch.equal(v, opt2.state[q][key]), key
    assert sched2.state_dict() == scheduler.state_dict()
    assert (ckpt["epoch"], ckpt["best_test_acc"], ckpt["train_config"]) == (3, 0.5, {"lr": 0.008})


def test_version_1_dense_checkpoints_still_load(tmp_path):
    model, optimizer, scheduler = _trained_one_step(seed=1)
    path = tmp_path / "v1.pth"
    config = _plain(model.config.to_dict())
    config["engine"] = "fast"     # version 1 stored the engine in the architecture
    torch.save({"format": "barrel-rsnn-checkpoint", "version": 1, "model_config": config,
                "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(), "epoch": 1, "train_config": {},
                "dtype": "float32", "best_test_acc": 0.4}, path)
    loaded, ckpt = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert ckpt["version"] == 1 and ckpt["best_test_acc"] == 0.4


def test_a_layer_with_values_off_its_mask_stays_dense(tmp_path):
    model = build_model(ModelConfig())
    with torch.no_grad():
        off = (~model.thalamocortical.mask).nonzero()[0]
        model.thalamocortical.weight[off[0], off[1]] = 0.5
    save_checkpoint(tmp_path / "c.pth", model)
    raw = torch.load(tmp_path / "c.pth", weights_only=True)
    assert set(raw["sparse"]) == {"recurrent"}
    assert torch.equal(read_checkpoint(tmp_path / "c.pth")["model_state"]["thalamocortical.weight"],
                       model.thalamocortical.weight.detach())


def test_malformed_or_newer_checkpoints_are_refused(saved, tmp_path):
    path, *_ = saved
    raw = torch.load(path, weights_only=True)
    raw["sparse"]["recurrent"]["mask_bits"] = raw["sparse"]["recurrent"]["mask_bits"][:10]
    torch.save(raw, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="damaged .*sparse.recurrent do not match"):
        load_checkpoint(tmp_path / "bad.pth")
    del raw["digest"]             # as written before digests were stored
    torch.save(raw, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="malformed sparse layer 'recurrent'"):
        load_checkpoint(tmp_path / "bad.pth")
    raw = torch.load(path, weights_only=True)
    raw["version"] = VERSION + 1
    torch.save(raw, tmp_path / "new.pth")
    with pytest.raises(CheckpointError, match="newer than this code reads"):
        load_checkpoint(tmp_path / "new.pth")
