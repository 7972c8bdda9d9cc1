"""engines/torch_dense.py: the torch engine (the one CUDA runs) equals the reference engine.

On the CPU it runs eagerly, chosen by name (``engine="torch"``); with a GPU the same checks
run on CUDA, where ``auto`` picks it.
"""
import copy
import gc
import warnings
import weakref

import pytest
import torch

from rsnn_bfd.network.engines import EngineOptions, resolve
from rsnn_bfd.network.engines import torch_dense as engine_torch
from rsnn_bfd.network.model import InitialState

from engine_utils import (assert_matches_reference, assert_single_step_matches_reference,
                          make_inputs, random_model, train_pass)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


@pytest.fixture(scope="module")
def model64():
    return random_model()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("chunk", [2, 4, 16])
def test_torch_engine_equals_reference_float64(model64, batch, chunk):
    """Steps run in chunks on fixed buffers (the unit a CUDA graph captures): 9 steps in
    chunks of 2 and 4 exercise full chunks, a remainder and the carried state; 16, one
    partial chunk."""
    x, state, labels = make_inputs(model64, batch, steps=9, seed=batch, grad_state=True)
    assert_matches_reference(model64, x, state, labels, "torch", EngineOptions(chunk=chunk))


def test_gradient_of_a_loss_of_the_spikes(model64):
    """--rate-reg reads the recorded spikes: their gradient as the reference's."""
    x, state, labels = make_inputs(model64, 2, steps=7, seed=21, grad_state=True)
    assert_matches_reference(model64, x, state, labels, "torch", EngineOptions(chunk=4),
                             spike_loss=True)


def test_single_step(model64):
    """T = 1 (no readout step) on the torch engine."""
    assert_single_step_matches_reference(model64, "torch")


@pytest.mark.parametrize("chunk", [2, 64])
def test_inference_matches_training_path(model64, chunk):
    """No-grad path: the readout is applied per chunk; chunk edges must not change a thing."""
    opts = EngineOptions(chunk=chunk)
    x, state, _ = make_inputs(model64, 3, steps=7, seed=8)
    with torch.no_grad():
        a = model64(x, state=state, record_spikes=True, record_mem=True, engine="torch",
                    options=opts)
        b = model64(x, state=state, engine="torch", options=opts)
        r = model64(x, state=state, record_spikes=True, record_mem=True, engine="reference")
    assert b.spikes is None and b.mem is None
    torch.testing.assert_close(a.spikes, r.spikes, rtol=0, atol=0)
    torch.testing.assert_close(a.thal_spikes, r.thal_spikes, rtol=0, atol=0)
    torch.testing.assert_close(a.mem, r.mem)
    torch.testing.assert_close(a.output, r.output)
    torch.testing.assert_close(b.output, a.output, rtol=0, atol=0)


def _thalamus_like_chunks(k=3, batch=2, n=5):
    """Forward chunks of a one-population layer without recurrence, and its input."""
    g = torch.Generator().manual_seed(0)
    alpha, rho = torch.rand(n, generator=g), torch.rand(n, generator=g)
    sim = engine_torch._Simulation([0, n], None, None, alpha, rho, 0.04, 1.8,
                                   engine_torch._Run(k, True))
    ch = engine_torch._ForwardChunks(sim, k, (batch, n), dict(dtype=torch.float32,
                                                               device=torch.device("cpu")))
    current = torch.rand(4 * k, batch, n, generator=g)
    return ch, current


def _run_chunks(ch, current):
    """The membranes of all steps."""
    mem = []
    for t0 in range(0, current.shape[0], ch.k):
        n = min(ch.k, current.shape[0] - t0)
        ch.thal[:n] = current[t0:t0 + n]
        ch.run(n)
        mem.append(ch.v[:n].clone())
    return torch.cat(mem)


@pytest.mark.parametrize("capture_fails", [False, True])
def test_chunks_run_eagerly_then_capture_then_replay(monkeypatch, capture_fails):
    """The graph protocol on the CPU, with a stand-in for the CUDA graph: the first full
    chunk runs eagerly, the second is captured and replayed, later ones replayed; a failed
    capture leaves every chunk to run eagerly. Results equal the plain eager run."""
    events = []

    class Graph:
        def __init__(self, fn, k):
            self.fn, self.k = fn, k

        def replay(self):
            events.append("replay")
            self.fn(self.k)

    def capture(fn, k):
        events.append("capture")
        return None if capture_fails else Graph(fn, k)

    monkeypatch.setattr(engine_torch, "_capture", capture)
    eager, current = _thalamus_like_chunks()
    expected = _run_chunks(eager, current)
    ch, _ = _thalamus_like_chunks()
    ch.capture = True
    torch.testing.assert_close(_run_chunks(ch, current), expected, rtol=0, atol=0)
    assert events == (["capture"] if capture_fails else ["capture", "replay", "replay", "replay"])


def test_chunks_are_freed_by_reference_counting():
    """A chunk object, and with it its CUDA graph, is freed as soon as the call that made
    it returns: left to the garbage collector, a graph could be destroyed during a later
    capture, which invalidates that capture."""
    ch, current = _thalamus_like_chunks()
    _run_chunks(ch, current)
    ref = weakref.ref(ch)
    collecting = gc.isenabled()
    gc.disable()
    try:
        del ch
        assert ref() is None
    finally:
        if collecting:
            gc.enable()


def test_numba_engine_refuses_other_devices(model64):
    from rsnn_bfd.network.engines import numba_cpu
    thal = torch.zeros(2, 1, 200, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="CPU only"):
        numba_cpu.run_cortex(model64.network(), thal, None)
    with pytest.raises(ValueError, match="CPU only"):
        resolve("numba", "cuda")


@needs_cuda
@pytest.mark.parametrize("engine", ["auto", "torch", "reference"])
def test_cuda_matches_cpu_reference(model64, engine):
    """float64 on CUDA: the same spikes, outputs and gradients as the CPU reference."""
    x, state, labels = make_inputs(model64, 2, steps=5, seed=11, grad_state=True)
    ref, g_ref = train_pass(model64, "reference", x, state, labels)
    model_c = copy.deepcopy(model64).to("cuda")
    state_c = InitialState(*(t.detach().to("cuda").requires_grad_() for t in state))
    res, g = train_pass(model_c, engine, x.to("cuda"), state_c, labels.to("cuda"))
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
        gpu = model_c(x.to("cuda"), state=InitialState(*(t.to("cuda") for t in state)),
                      record_spikes=True)
    flips = (gpu.spikes.cpu() != cpu.spikes).float().mean().item()
    assert flips < 1e-3, f"{flips:.2e} of the spikes differ between CUDA and CPU"


@needs_cuda
@pytest.mark.parametrize("graphs", [True, False])
def test_cuda_graphs_match_cpu_reference(model64, graphs):
    """float64 on CUDA over 37 steps in chunks of 8, so both loops capture a CUDA graph and
    replay it (and leave a remainder): the CPU reference's spikes, outputs and gradients;
    inference through the graphs gives the same spikes and output as training."""
    opts = EngineOptions(chunk=8, cuda_graphs=graphs)
    x, state, labels = make_inputs(model64, 3, steps=37, seed=13, rate=0.2, grad_state=True)
    ref, g_ref = train_pass(model64, "reference", x, state, labels)
    model_c = copy.deepcopy(model64).to("cuda")
    state_c = InitialState(*(t.detach().to("cuda").requires_grad_() for t in state))
    # a CUDA graph in a reference cycle, and a garbage collector that runs every ten
    # allocations (a capture makes hundreds): collecting that graph during one of the
    # engine's captures would invalidate the capture
    cycle = [torch.cuda.CUDAGraph()]
    with torch.cuda.graph(cycle[0]):
        torch.ones(1, device="cuda").add_(1)
    cycle.append(cycle)
    del cycle
    threshold = gc.get_threshold()
    gc.set_threshold(10)
    try:
        with warnings.catch_warnings():
            # a failed capture warns, and so does torch where a graph is destroyed mid-capture
            warnings.filterwarnings("error", message=".*captur")
            res, g = train_pass(model_c, "torch", x.to("cuda"), state_c, labels.to("cuda"),
                                opts)
    finally:
        gc.set_threshold(*threshold)
    assert ref.spikes.sum() > 0
    torch.testing.assert_close(res.spikes.cpu(), ref.spikes.detach(), rtol=0, atol=0)
    torch.testing.assert_close(res.mem.cpu(), ref.mem.detach())
    torch.testing.assert_close(res.output.cpu(), ref.output.detach())
    for name in g_ref:
        torch.testing.assert_close(g[name].cpu(), g_ref[name], msg=lambda m: f"{name}: {m}")
    with torch.no_grad():
        inf = model_c(x.to("cuda"), state=state_c, record_spikes=True, engine="torch",
                      options=opts)
    torch.testing.assert_close(inf.spikes, res.spikes, rtol=0, atol=0)
    torch.testing.assert_close(inf.output, res.output.detach())
