"""A damaged checkpoint says so: the digest stored with every checkpoint, and the network's
own invariants for every file (issue: a copy of the shipped network with 16 bytes changed
loaded, and deprivation gave results from a recurrent weight of -96.6)."""
from __future__ import annotations

import struct
import zipfile

import pytest
import torch

from conftest import SHIPPED, run_main
from rsnn_bfd.io.checkpoint import (CheckpointError, check_checkpoint, load_checkpoint,
                                    read_checkpoint, save_checkpoint)
from rsnn_bfd.network.model import ModelConfig, build_model


def _data_start(path, info: zipfile.ZipInfo) -> int:
    """Where the bytes of a stored (uncompressed) zip entry begin in the file."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _flip(path, offset: int, n: int = 1) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = fh.read(n)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "net.pth"
    save_checkpoint(path, build_model(ModelConfig()), epoch=2,
                    train_config={"loss": "mean-logit", "n_steps": 6, "data_dir": "nowhere"})
    return path


def test_the_shipped_network_is_intact():
    line = check_checkpoint(SHIPPED)
    assert "intact: the digest of its" in line and "obeys its constraints" in line, line


def test_bytes_changed_in_the_middle_of_the_file_are_refused(network, tmp_path):
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(network.read_bytes())
    _flip(damaged, damaged.stat().st_size // 2, 16)       # what the trial did
    with pytest.raises(CheckpointError, match=rf"{damaged}: the file is damaged .*"
                                              r"model_state.recurrent.weight do not match"):
        load_checkpoint(damaged)


def test_a_change_in_any_stored_tensor_is_refused(network, tmp_path):
    with zipfile.ZipFile(network) as zf:
        tensors = [i for i in zf.infolist() if "/data/" in i.filename and i.file_size]
    assert len(tensors) >= 10
    damaged = tmp_path / "damaged.pth"
    for info in tensors:
        damaged.write_bytes(network.read_bytes())
        _flip(damaged, _data_start(network, info) + info.file_size // 2)
        with pytest.raises(CheckpointError, match="the file is damaged"):
            read_checkpoint(damaged)


def _legacy(network, path, edit=None):
    """``network`` as a checkpoint written before digests (none stored), edited by ``edit``."""
    raw = torch.load(network, weights_only=True)
    del raw["digest"]
    if edit:
        edit(raw)
    torch.save(raw, path)
    return path


def test_checkpoints_without_a_digest_load_and_their_invariants_are_checked(network, tmp_path,
                                                                            capsys):
    model, _ = load_checkpoint(_legacy(network, tmp_path / "old.pth"))   # no word said
    assert capsys.readouterr() == ("", "")
    assert "holds no digest" in check_checkpoint(tmp_path / "old.pth")

    def negative(raw):
        raw["model_state"]["recurrent.weight"][1234] = -96.6
    with pytest.raises(CheckpointError, match=r"recurrent.weight holds -96.6 at \(\d+, \d+\), "
                                              r"outside \[0, 1\].*damaged or was edited"):
        load_checkpoint(_legacy(network, tmp_path / "neg.pth", negative))

    def tau(raw):
        raw["model_state"]["tau_adp"][7] = -5.0
    with pytest.raises(CheckpointError, match="tau_adp holds -5; time constants are positive"):
        load_checkpoint(_legacy(network, tmp_path / "tau.pth", tau))

    def sign(raw):
        raw["model_state"]["pre_sign"][0] *= -1
    with pytest.raises(CheckpointError, match="pre_sign differs from the anatomy"):
        load_checkpoint(_legacy(network, tmp_path / "sign.pth", sign))


def test_training_keeps_time_constants_positive():
    model = build_model(ModelConfig())
    with torch.no_grad():
        model.tau_m[3] = -2.0
        model.thal_tau_adp[0] = 0.0
        before = model.tau_m[4].item()
    model.constrain_()
    assert model.tau_m[3].item() == model.thal_tau_adp[0].item() == pytest.approx(0.01)
    assert model.tau_m[4].item() == before                        # the others unchanged


def test_every_command_that_reads_checkpoints_refuses_a_damaged_one(network, tmp_path):
    import checkpoint
    import RSNN_bfd_SpikingBased as spiking
    import RSNN_bfd_whisker_deprivation as deprivation
    import utils
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    damaged = run_dir / "checkpoint.pth"
    damaged.write_bytes(network.read_bytes())
    _flip(damaged, damaged.stat().st_size // 2, 16)
    commands = {
        "deprivation": (deprivation.main, ["--checkpoint", damaged, "--out", tmp_path / "d"]),
        "analyses": (utils.main, ["--checkpoint", damaged, "--out", tmp_path / "a"]),
        "resume": (spiking.main, ["--resume", run_dir, "--epochs", "5"]),
        "convert": (checkpoint.main, ["convert", damaged, tmp_path / "c.pth"]),
        "check": (checkpoint.main, ["check", damaged]),
    }
    for name, (main, argv) in commands.items():
        rc, lines = run_main(main, [str(a) for a in argv])
        assert rc == 2 and len(lines) == 1, (name, lines)
        assert lines[0].startswith(f"error: {damaged}: the file is damaged"), (name, lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]      # nothing written
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pth"]
