"""Networks saved by the published scripts (whole-object pickles): read without running code,
converted to this project's model, refused with one line when they are anything else."""
from __future__ import annotations

import io
import lzma
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from rsnn_bfd.io.checkpoint import CheckpointError, convert_network, load_checkpoint
from rsnn_bfd.io.unpickler import PublishedError, read_published
from rsnn_bfd.network.model import InitialState, ModelConfig, build_model

import SparseLinear as sparse_module
from conftest import ROOT, golden_cases, require_golden_file
from golden_utils import expected_spikes

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
ENGINES = [pytest.param("reference", "cpu", id="reference"),
           pytest.param("numba", "cpu", id="numba"),
           pytest.param("torch", "cuda", id="torch-cuda", marks=needs_cuda)]


def _reference(path):
    return np.load(str(path).replace(".pth.xz", "_reference.npz"))


@pytest.mark.golden
@pytest.mark.parametrize("engine,device", ENGINES)
@pytest.mark.parametrize("path", golden_cases("published_*.pth.xz"))
def test_published_network_reproduces_its_reference(path, engine, device):
    """Converted, run in float64 from the reference's initial state: spikes bit for bit,
    ``out`` to 1e-9."""
    require_golden_file(path)
    ref = _reference(path)
    model, ckpt = load_checkpoint(path)
    assert ckpt["published_source"]["class"].endswith(".SRNN_bfd")
    assert (model.config.init_b, model.config.init_w) == (float(ref["init_b"]),
                                                          float(ref["init_w"]))
    np.testing.assert_array_equal(ref["pop_size"], model.anatomy.sizes)
    model = model.to(device=device, dtype=torch.float64)
    state = InitialState(*(torch.as_tensor(ref[k]).to(device) for k in
                           ("init_mem_thal", "init_spk_thal", "init_mem", "init_spk")))
    x = torch.as_tensor(ref["input"]).to(device)
    with torch.no_grad():
        result = model(x, state=state, record_spikes=True, engine=engine)
    mismatch = result.spikes.cpu().numpy().astype(bool) != expected_spikes(ref)
    assert not mismatch.any(), f"{mismatch.sum()} spikes differ"
    out, expected = result.output.cpu().numpy(), ref["out"]
    assert np.abs(out - expected).max() <= 1e-9 * np.abs(expected).max()


def _plain(path, tmp_path):
    """The golden ``path`` decompressed, as users download such a file (.pth)."""
    require_golden_file(path)
    out = tmp_path / path.name.replace(".xz", "")
    out.write_bytes(lzma.decompress(path.read_bytes()))
    return out


@pytest.mark.golden
@pytest.mark.parametrize("path", golden_cases("published_*.pth.xz"))
def test_plain_file_converts_to_a_weights_only_checkpoint(path, tmp_path):
    plain = _plain(path, tmp_path)
    model, _ = load_checkpoint(plain)
    out = tmp_path / "converted.pth"
    result = convert_network(plain, out, log=lambda *_: None)
    raw = torch.load(out, weights_only=True)      # our format: weights only
    assert raw["optimizer_state"] is None and raw["source"]["sha256"] == result["source"]["sha256"]
    assert raw["source"]["class"].endswith(".SRNN_bfd") and result["bytes_out"] < 12e6
    again, _ = load_checkpoint(out)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    # the published forward's effective weights: clamp(w, 0, 1) * mask
    w = model.recurrent.effective_weight().detach()
    assert float(w.min()) >= 0 and float(w.max()) <= 1
    with pytest.raises(ValueError, match="exists"):
        convert_network(plain, out, log=lambda *_: None)


@pytest.mark.golden
@pytest.mark.parametrize("path", golden_cases("published_*.pth.xz"))
def test_truncated_published_file_is_refused(path, tmp_path):
    plain = _plain(path, tmp_path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(cut)
    assert "truncated or corrupt" in _script_refuses(cut, tmp_path)


# ----------------------------------------------------- published-format files made here
class SRNN_bfd(nn.Module):
    """Stands for the published class when this test writes files of its format."""


class SparseLinear2(nn.Module):
    pass


@pytest.fixture
def published_classes(monkeypatch):
    """Let torch.save pickle the two classes as ``__main__.SRNN_bfd`` and
    ``SparseLinear.SparseLinear2``, as the published scripts do."""
    monkeypatch.setattr(SRNN_bfd, "__module__", "__main__")
    monkeypatch.setattr(SparseLinear2, "__module__", "SparseLinear")
    monkeypatch.setattr(sys.modules["__main__"], "SRNN_bfd", SRNN_bfd, raising=False)
    monkeypatch.setattr(sparse_module, "SparseLinear2", SparseLinear2, raising=False)


def _sparse(mask: torch.Tensor, weight: torch.Tensor) -> SparseLinear2:
    layer = SparseLinear2()
    layer.weight = nn.Parameter(weight.clone())
    layer.mask = mask.float()
    return layer


def _linear(src: nn.Linear) -> nn.Linear:
    layer = nn.Linear(src.in_features, src.out_features)
    layer.load_state_dict(src.state_dict())
    return layer


def published_like(model, pop_size=None, flip_sign=None, over_one=1.5) -> SRNN_bfd:
    """Our ``model`` in the layout of the published SRNN_bfd (see published.py); on-mask
    weights of ``over_one`` are placed in each block, as the published optimiser leaves
    them (the forward clamps them to 1)."""
    an = model.anatomy
    off = model.population_offsets
    net = SRNN_bfd()
    net.init_b, net.init_w, net.output_dim = model.config.init_b, model.config.init_w, 3
    net.popSize = list(pop_size or [int(s) for s in an.sizes])
    net.popType = [p.type for p in an.populations]
    net.Prob_ThtoAll = np.asarray(an.p_thal, np.float64)
    net.Prob_AlltoAll = np.asarray(an.p_rec, np.float64).T.copy()          # [pre, post]
    sign = np.array([1.0 if p.excitatory else -1.0 for p in an.populations])
    net.Type_AlltoAll = np.where(net.Prob_AlltoAll != 0, sign[:, None], 0.0)
    if flip_sign is not None:
        net.Type_AlltoAll[flip_sign] *= -1
    if model.config.encoder == "spiking":
        net.fc_f, net.fc_t = _linear(model.encoder.force), _linear(model.encoder.torque)
    else:
        net.fc = _linear(model.encoder.fc)
    net.barrelloid = _linear(model.thalamus_input)
    net.barrelloid_tau_m = nn.Parameter(model.thal_tau_m.detach().clone())
    net.barrelloid_tau_adp = nn.Parameter(model.thal_tau_adp.detach().clone())
    rec_w, rec_m = model.recurrent.weight.detach(), model.recurrent.mask
    tc_w, tc_m = model.thalamocortical.weight.detach(), model.thalamocortical.mask

    def block(w, m, rows, cols):
        w, m = w[rows, cols].clone(), m[rows, cols]
        on = torch.nonzero(m)
        if len(on):
            w[tuple(on[0])] = over_one
        return _sparse(m, w)

    net.ThtoPops = nn.ModuleList(block(tc_w, tc_m, slice(off[i], off[i + 1]), slice(None))
                                 for i in np.nonzero(an.p_thal)[0])
    net.toPops = nn.ModuleList(
        nn.ModuleList(block(rec_w, rec_m, slice(off[i], off[i + 1]), slice(off[j], off[j + 1]))
                      for j in np.nonzero(net.Prob_AlltoAll[:, i])[0])
        for i in range(len(an.sizes)))
    net.tau_m = [nn.Parameter(model.tau_m.detach()[off[i]:off[i + 1]].clone())
                 for i in range(len(an.sizes))]
    net.tau_adp = [nn.Parameter(model.tau_adp.detach()[off[i]:off[i + 1]].clone())
                   for i in range(len(an.sizes))]
    net.fc2_1, net.fc2_2 = _linear(model.readout[0]), _linear(model.readout[1])
    net.b, net.b_barrelloid = [torch.zeros(2, s) for s in an.sizes], torch.zeros(2, 200)
    return net


@pytest.fixture(scope="module")
def realvalued_model():
    return build_model(ModelConfig(encoder="realvalued", init_b=0.03, init_w=0.05, seed=3))


def test_a_realvalued_network_round_trips(published_classes, realvalued_model, tmp_path):
    path = tmp_path / "rv.pth"
    torch.save(published_like(realvalued_model), path)
    model, ckpt = load_checkpoint(path)
    assert model.config.encoder == "realvalued" and ckpt["train_config"]["encoder"] == "realvalued"
    ours = realvalued_model
    expected_rec = ours.recurrent.weight.detach().clone()
    for name, a in model.state_dict().items():
        b = ours.state_dict()[name]
        if name not in ("recurrent.weight", "thalamocortical.weight"):
            assert torch.equal(a, b), name
    # every weight but the one set to 1.5 per block is ours; that one is clamped to 1
    differ = model.recurrent.weight != expected_rec
    assert bool((model.recurrent.weight[differ] == 1.0).all()) and int(differ.sum()) > 0
    assert torch.equal(model.recurrent.mask, ours.recurrent.mask)


def test_another_anatomy_is_refused(published_classes, realvalued_model, tmp_path):
    sizes = [int(s) for s in realvalued_model.anatomy.sizes]
    sizes[0] += 1
    path = tmp_path / "sizes.pth"
    torch.save(published_like(realvalued_model, pop_size=sizes), path)
    with pytest.raises(PublishedError, match="population sizes"):
        load_checkpoint(path)
    path = tmp_path / "signs.pth"
    torch.save(published_like(realvalued_model, flip_sign=(0, slice(None))), path)
    with pytest.raises(PublishedError, match="sign of"):
        load_checkpoint(path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _script_refuses(path, tmp_path):
    """The deprivation script on ``path``: exit 2, one line, no traceback."""
    run = subprocess.run([sys.executable, str(ROOT / "RSNN_bfd_whisker_deprivation.py"),
                          "--checkpoint", str(path), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


def test_pickles_that_would_run_code_are_refused_and_nothing_runs(published_classes,
                                                                  realvalued_model, tmp_path):
    marker = tmp_path / "executed"
    # the class named as published, reducing to os.system
    evil = tmp_path / "evil.pth"
    SRNN_bfd.__reduce__ = lambda self: (os.system, (f"touch {marker}",))
    try:
        torch.save(SRNN_bfd(), evil)
    finally:
        del SRNN_bfd.__reduce__
    # a real published layout with one attribute that runs code
    net = published_like(realvalued_model)
    net.hook = _RunsCode(marker)
    inner = tmp_path / "evil_inner.pth"
    torch.save(net, inner)
    for path in (evil, inner):
        with pytest.raises(PublishedError, match=r"global (posix|os|nt)\.system.*nothing in it "
                                                 r"was executed"):
            read_published(path)
        assert "system" in _script_refuses(path, tmp_path)
    assert not marker.exists()


def test_a_pickle_of_another_class_is_refused(tmp_path):
    path = tmp_path / "linear.pth"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(PublishedError, match="holds a torch.nn.modules.linear.Linear, not a "
                                             "published SRNN_bfd"):
        load_checkpoint(path)
    other = tmp_path / "namespace.pth"
    torch.save({"args": __import__("argparse").Namespace(a=1)}, other)
    assert "argparse.Namespace" in _script_refuses(other, tmp_path)


def test_a_zip_without_a_pickle_is_refused(tmp_path):
    path = tmp_path / "empty.pth"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/readme.txt", "hello")
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.golden
@pytest.mark.parametrize("path", golden_cases("published_*.pth.xz"))
def test_deprivation_and_analyses_run_on_a_published_file(path, tmp_path):
    """The scripts take the published file as it is (here on a tiny generated dataset)."""
    require_golden_file(path)
    from rsnn_bfd.data.simulator.generate import generate_dataset
    data = tmp_path / "data"
    generate_dataset(data, objects_per_class=1, seed=1, workers=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    base = ["--checkpoint", str(path), "--data-dir", str(data), "--device", "cpu"]
    runs = [[str(ROOT / "RSNN_bfd_whisker_deprivation.py"), *base, "--out", str(tmp_path / "d"),
             "--trials", "1", "--max-removed", "2", "--n-steps", "6", "--no-progress"],
            [str(ROOT / "utils.py"), *base, "--out", str(tmp_path / "u"), "--analysis",
             "degree"]]
    for args in runs:
        run = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "d" / "deprivation.csv").is_file()
    assert (tmp_path / "u" / "degree.json").is_file()
