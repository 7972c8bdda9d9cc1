"""The fast engine equals the reference engine (spikes, outputs, membranes, all gradients)."""
import numpy as np
import pytest
import torch

import engine_fast
from conftest import golden_cases, require_golden_file
from model import InitialState, ModelConfig, build_model


@pytest.fixture(scope="module")
def model64():
    """The real 4218-neuron anatomy in float64, with stronger weights for more activity."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(seed=3, init_w=0.1), dtype=torch.float64)
    return model


def _inputs(model, batch, steps, seed, rate=0.3, grad_state=False):
    g = torch.Generator().manual_seed(seed)
    dtype = model.tau_m.dtype
    x = (torch.rand(batch, 2, 1, steps, 93, generator=g) < rate).to(dtype)
    n, nt = model.n_neurons, model.config.n_thalamus
    state = InitialState(torch.rand(batch, nt, generator=g, dtype=dtype),
                         torch.rand(batch, nt, generator=g, dtype=dtype),
                         torch.rand(batch, n, generator=g, dtype=dtype),
                         torch.rand(batch, n, generator=g, dtype=dtype))
    if grad_state:
        state = InitialState(*(t.requires_grad_() for t in state))
    labels = torch.randint(0, 3, (batch,), generator=g)
    return x, state, labels


def _run(model, engine, x, state, labels):
    model.zero_grad(set_to_none=True)
    for t in state:
        t.grad = None
    res = model(x, state=state, record_spikes=True, record_mem=True, engine=engine)
    loss = torch.nn.functional.cross_entropy(res.output / x.shape[3], labels)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    grads.update({f"state.{k}": t.grad.clone() for k, t in zip(InitialState._fields, state)
                  if t.requires_grad})
    return res, grads


def _assert_same(model, x, state, labels):
    ref, g_ref = _run(model, "reference", x, state, labels)
    fast, g_fast = _run(model, "fast", x, state, labels)
    assert ref.spikes.sum() > 0, "test network is silent"
    torch.testing.assert_close(fast.spikes, ref.spikes.detach(), rtol=0, atol=0)
    torch.testing.assert_close(fast.mem, ref.mem.detach())
    torch.testing.assert_close(fast.output, ref.output.detach())
    assert g_ref.keys() == g_fast.keys()
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_fast_equals_reference_float64(model64, batch):
    x, state, labels = _inputs(model64, batch, steps=6, seed=batch)
    _assert_same(model64, x, state, labels)


@pytest.mark.parametrize("chunk", [1, 4])
def test_chunk_boundaries_and_state_gradients(model64, monkeypatch, chunk):
    """Checkpoint / recompute across chunk boundaries, and gradients to the initial state."""
    monkeypatch.setattr(engine_fast, "CHUNK", chunk)
    x, state, labels = _inputs(model64, 2, steps=9, seed=10 + chunk, grad_state=True)
    _assert_same(model64, x, state, labels)


def test_readout_positions(model64):
    """The forward / backward kernels find readout neurons through ``ro_pos``."""
    st = engine_fast._structure(model64)
    ro = model64.readout_index.numpy()
    assert (st.ro_pos[ro] == np.arange(len(ro))).all()
    others = np.ones(model64.n_neurons, dtype=bool)
    others[ro] = False
    assert (st.ro_pos[others] == -1).all()


@pytest.mark.parametrize("steps,chunk", [(2, 1), (5, 2)])
def test_event_driven_readout_with_strong_readout(model64, monkeypatch, steps, chunk):
    """Event-driven readout (logits = w2 w1 x + w2 b1 + b2) and its gradients (w1, b1, w2,
    b2, spikes) with a sharp softmax; the first readout step (t = 1) at a chunk start and
    inside a chunk. The non-binary initial "spikes" (t = -1) never enter the readout."""
    import copy
    monkeypatch.setattr(engine_fast, "CHUNK", chunk)
    model = copy.deepcopy(model64)
    with torch.no_grad():
        for layer in model.readout:
            layer.weight.mul_(8.0)
            layer.bias.add_(torch.linspace(-1.0, 1.0, layer.bias.numel(), dtype=torch.float64))
    x, state, labels = _inputs(model, 3, steps=steps, seed=20 + steps, grad_state=True)
    # initial "spikes" far from binary on the readout neurons
    with torch.no_grad():
        state.spk[:, model.readout_index] *= 0.37
    _assert_same(model, x, state, labels)


def test_single_step(model64):
    """T = 1: no readout step, the output is zero (and differentiable in the fast engine)."""
    x, state, _ = _inputs(model64, 2, steps=1, seed=5)
    ref = model64(x, state=state, record_spikes=True, engine="reference")
    fast = model64(x, state=state, record_spikes=True, engine="fast")
    torch.testing.assert_close(fast.output, ref.output.detach())
    torch.testing.assert_close(fast.spikes, ref.spikes.detach(), rtol=0, atol=0)
    fast.output.sum().backward()


def test_inference_path_matches_training_path(model64):
    x, state, _ = _inputs(model64, 4, steps=7, seed=7)
    with torch.no_grad():
        a = model64(x, state=state, record_spikes=True, engine="fast")
        b = model64(x, state=state, engine="fast")
        r = model64(x, state=state, record_spikes=True, engine="reference")
    assert b.spikes is None and b.mem is None
    torch.testing.assert_close(a.output, b.output, rtol=0, atol=0)
    torch.testing.assert_close(a.output, r.output)
    torch.testing.assert_close(a.spikes, r.spikes, rtol=0, atol=0)
    assert not a.output.requires_grad


def test_torch_ops_path_equals_reference(model64):
    """The device-generic path (used on CUDA) checked on CPU."""
    x, state, labels = _inputs(model64, 2, steps=4, seed=3)
    thal = model64.thalamus(x[:, :, 0], state).detach()
    from engine_reference import run_cortex as ref_run
    o1, s1, m1 = ref_run(model64, thal, state, True, True)
    o2, s2, m2 = engine_fast._run_torch(model64, thal, state, True, True)
    torch.testing.assert_close(s2, s1, rtol=0, atol=0)
    torch.testing.assert_close(m2, m1)
    torch.testing.assert_close(o2, o1)


@pytest.mark.parametrize("path", golden_cases("*_forward.npz"))
def test_float32_spikes_match_reference_on_golden(path):
    """float32: the fast engine gives the reference's spikes on the golden inputs."""
    path = require_golden_file(path)
    from golden_utils import model_from_case
    case = np.load(path)
    model, x, _, state = model_from_case(case, dtype=torch.float32)
    with torch.no_grad():
        ref = model(x, state=state, record_spikes=True, engine="reference")
        fast = model(x, state=state, record_spikes=True, engine="fast")
    torch.testing.assert_close(fast.spikes, ref.spikes, rtol=0, atol=0)
    torch.testing.assert_close(fast.output, ref.output, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu_reference(model64):
    x, state, labels = _inputs(model64, 2, steps=5, seed=11)
    ref, g_ref = _run(model64, "reference", x, state, labels)
    model_c = build_model(ModelConfig(seed=3, init_w=0.1), dtype=torch.float64)
    model_c.load_state_dict(model64.state_dict())
    model_c.to("cuda")
    state_c = InitialState(*(t.detach().cuda() for t in state))
    fast, g_fast = _run(model_c, "fast", x.cuda(), state_c, labels.cuda())
    torch.testing.assert_close(fast.spikes.cpu(), ref.spikes.detach(), rtol=0, atol=0)
    torch.testing.assert_close(fast.output.cpu(), ref.output.detach())
    for name in g_ref:
        torch.testing.assert_close(g_fast[name].cpu(), g_ref[name], msg=lambda m: f"{name}: {m}")
