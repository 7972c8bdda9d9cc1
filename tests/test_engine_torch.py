"""The fast engine's torch-ops backend (the one CUDA runs) equals the reference engine.

On the CPU the backend is selected with ``engine_fast.BACKEND = "torch"``; with a GPU the
same checks run on CUDA, where it is the default.
"""
import copy

import pytest
import torch

import engine_fast
import engine_torch
from engine_utils import (assert_matches_reference, assert_single_step_matches_reference,
                          make_inputs, random_model, train_pass)
from model import InitialState

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


@pytest.fixture(scope="module")
def model64():
    return random_model()


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.setattr(engine_fast, "BACKEND", "torch")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("chunk", [2, 4, 16])
def test_torch_backend_equals_reference_float64(model64, torch_backend, monkeypatch, batch,
                                                chunk):
    """Steps run in chunks on fixed buffers (the unit a CUDA graph captures): 9 steps in
    chunks of 2 and 4 exercise full chunks, a remainder and the carried state; 16, one
    partial chunk."""
    monkeypatch.setattr(engine_torch, "CHUNK", chunk)
    x, state, labels = make_inputs(model64, batch, steps=9, seed=batch, grad_state=True)
    assert_matches_reference(model64, x, state, labels)


def test_single_step(model64, torch_backend):
    """T = 1 (no readout step) on the torch backend."""
    assert_single_step_matches_reference(model64)


@pytest.mark.parametrize("chunk", [2, 64])
def test_inference_matches_training_path(model64, torch_backend, monkeypatch, chunk):
    """No-grad path: the readout is applied per chunk; chunk edges must not change a thing."""
    monkeypatch.setattr(engine_torch, "CHUNK", chunk)
    x, state, _ = make_inputs(model64, 3, steps=7, seed=8)
    with torch.no_grad():
        a = model64(x, state=state, record_spikes=True, record_mem=True, engine="fast")
        b = model64(x, state=state, engine="fast")
        r = model64(x, state=state, record_spikes=True, record_mem=True, engine="reference")
    assert b.spikes is None and b.mem is None
    torch.testing.assert_close(a.spikes, r.spikes, rtol=0, atol=0)
    torch.testing.assert_close(a.mem, r.mem)
    torch.testing.assert_close(a.output, r.output)
    torch.testing.assert_close(b.output, a.output, rtol=0, atol=0)


def test_numba_backend_refuses_other_devices(model64, monkeypatch):
    monkeypatch.setattr(engine_fast, "BACKEND", "numba")
    thal = torch.zeros(2, 1, 200, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="CPU only"):
        engine_fast.run_cortex(model64, thal, None)
    monkeypatch.setattr(engine_fast, "BACKEND", "gpu")
    with pytest.raises(ValueError, match="ENGINE_FAST_BACKEND"):
        engine_fast.run_cortex(model64, thal, None)


@needs_cuda
@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_cuda_matches_cpu_reference(model64, engine):
    """float64 on CUDA: the same spikes, outputs and gradients as the CPU reference."""
    x, state, labels = make_inputs(model64, 2, steps=5, seed=11, grad_state=True)
    ref, g_ref = train_pass(model64, "reference", x, state, labels)
    model_c = copy.deepcopy(model64).to("cuda")
    state_c = InitialState(*(t.detach().cuda().requires_grad_() for t in state))
    res, g = train_pass(model_c, engine, x.cuda(), state_c, labels.cuda())
    torch.testing.assert_close(res.spikes.cpu(), ref.spikes.detach(), rtol=0, atol=0)
    torch.testing.assert_close(res.mem.cpu(), ref.mem.detach())
    torch.testing.assert_close(res.output.cpu(), ref.output.detach())
    for name in g_ref:
        torch.testing.assert_close(g[name].cpu(), g_ref[name], msg=lambda m: f"{name}: {m}")


@needs_cuda
def test_cuda_float32_no_grad_long_sequence(model64):
    """float32 inference on CUDA over a long sequence agrees with the CPU fast engine."""
    model32 = copy.deepcopy(model64).float()
    x, state, _ = make_inputs(model32, 4, steps=120, seed=12, rate=0.1)
    with torch.no_grad():
        cpu = model32(x, state=state, record_spikes=True)
        model_c = copy.deepcopy(model32).to("cuda")
        gpu = model_c(x.cuda(), state=InitialState(*(t.cuda() for t in state)),
                      record_spikes=True)
    flips = (gpu.spikes.cpu() != cpu.spikes).float().mean().item()
    assert flips < 1e-3, f"{flips:.2e} of the spikes differ between CUDA and CPU"


@needs_cuda
@pytest.mark.parametrize("graphs", [True, False])
def test_cuda_graphs_match_cpu_reference(model64, monkeypatch, graphs):
    """float64 on CUDA over 37 steps in chunks of 8, so both loops capture a CUDA graph and
    replay it (and leave a remainder): the CPU reference's spikes, outputs and gradients;
    inference through the graphs gives the same spikes and output as training."""
    monkeypatch.setattr(engine_torch, "CHUNK", 8)
    monkeypatch.setattr(engine_torch, "CUDA_GRAPHS", graphs)
    x, state, labels = make_inputs(model64, 3, steps=37, seed=13, rate=0.2, grad_state=True)
    ref, g_ref = train_pass(model64, "reference", x, state, labels)
    model_c = copy.deepcopy(model64).to("cuda")
    state_c = InitialState(*(t.detach().to("cuda").requires_grad_() for t in state))
    res, g = train_pass(model_c, "fast", x.to("cuda"), state_c, labels.to("cuda"))
    assert ref.spikes.sum() > 0
    torch.testing.assert_close(res.spikes.cpu(), ref.spikes.detach(), rtol=0, atol=0)
    torch.testing.assert_close(res.mem.cpu(), ref.mem.detach())
    torch.testing.assert_close(res.output.cpu(), ref.output.detach())
    for name in g_ref:
        torch.testing.assert_close(g[name].cpu(), g_ref[name], msg=lambda m: f"{name}: {m}")
    with torch.no_grad():
        inf = model_c(x.to("cuda"), state=state_c, record_spikes=True)
    torch.testing.assert_close(inf.spikes, res.spikes, rtol=0, atol=0)
    torch.testing.assert_close(inf.output, res.output.detach())
