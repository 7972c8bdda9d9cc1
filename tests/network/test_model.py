"""The network against the golden cases of the published implementation, and its contract."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from rsnn_bfd.network.model import BarrelCortexRSNN, InitialState, ModelConfig, build_model

from conftest import ROOT, golden_cases, require_golden_file
from golden_utils import (encoder_weight_grad, expected_spikes, model_from_case,
                          recurrent_value_grad)


def assert_rel(actual, expected, rtol, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = np.abs(expected).max()
    err = np.abs(actual - expected).max() / (scale if scale > 0 else 1.0)
    assert err <= rtol, f"{what}: max relative error {err:.3e} > {rtol:.0e}"


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

# (engine, device): every engine by name; torch is the one CUDA runs
ENGINES = [pytest.param("reference", "cpu", id="reference"),
           pytest.param("numba", "cpu", id="numba"),
           pytest.param("torch", "cpu", id="torch"),
           pytest.param("torch", "cuda", id="torch-cuda", marks=needs_cuda),
           pytest.param("reference", "cuda", id="reference-cuda", marks=needs_cuda)]


@pytest.mark.golden
@pytest.mark.parametrize("engine,device", ENGINES)
@pytest.mark.parametrize("path", golden_cases("*_forward.npz"))
def test_golden_forward_backward(path, engine, device):
    """Spikes bit for bit, output and loss to 1e-9, gradients to 1e-6 (float64)."""
    require_golden_file(path)
    case = np.load(path)
    model, x, labels, state = model_from_case(case, engine=engine, device=device)
    result = model(x, state=state, record_spikes=True)
    T = x.shape[3]
    loss = torch.nn.functional.cross_entropy(result.output / T, labels)
    loss.backward()

    spikes = result.spikes.detach().cpu().numpy()
    assert set(np.unique(spikes)) <= {0.0, 1.0}
    expected = expected_spikes(case)
    mismatch = (spikes.astype(bool) != expected)
    assert not mismatch.any(), (f"{mismatch.sum()} spikes differ, first at step "
                                f"{np.nonzero(mismatch.any((1, 2)))[0][0]}")
    assert_rel(result.output.detach().cpu().numpy(), case["out"], 1e-9, "out")
    assert_rel(loss.item(), case["loss"], 1e-9, "loss")
    grads = {
        "grad_tau_m": model.tau_m.grad,
        "grad_tau_adp": model.tau_adp.grad,
        "grad_thal_tau_m": model.thal_tau_m.grad,
        "grad_ro2_w": model.readout[1].weight.grad,
        "grad_W_rec_vals": recurrent_value_grad(model, case),
        "grad_fc_f_w" if "grad_fc_f_w" in case.files else "grad_fc_w": encoder_weight_grad(model),
    }
    for key in case.files:
        if key.startswith("grad_"):
            assert key in grads, f"golden case lists {key}, which the test does not check"
    for key, grad in grads.items():
        assert_rel(grad.cpu().numpy() if torch.is_tensor(grad) else grad, case[key], 1e-6, key)


@pytest.fixture(scope="module")
def small_model():
    return build_model(ModelConfig(), engine="reference")


def test_default_initial_state_is_published_and_leaves_global_rng_alone(small_model):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    s1 = small_model.initial_state(3)
    s2 = small_model.initial_state(3)
    assert torch.equal(torch.get_rng_state(), before)
    for a, b in zip(s1, s2):
        assert torch.equal(a, b)
    # published draw order: thalamic mem, thalamic spk, then cortical mem and spk per population
    g = torch.Generator().manual_seed(515)
    torch.testing.assert_close(s1.mem_thal, torch.rand(3, 200, generator=g))
    assert float(s1.spk.min()) >= 0 and float(s1.spk.max()) < 1


def test_forward_shapes_and_recording(small_model):
    x = (torch.rand(2, 2, 12, 4, 93) < 0.1).to(torch.uint8)
    res = small_model(x, record_spikes=True, record_mem=True)
    assert res.output.shape == (2, 3)
    assert res.spikes.shape == (4, 2, 4218) and res.mem.shape == (4, 2, 4218)
    assert res.thal_spikes.shape == (4, 2, 200)
    # the summed readout over t = 1..T-1 is a sum of T-1 probability vectors
    torch.testing.assert_close(res.output.sum(1), torch.full((2,), 3.0))
    plain = small_model(x)
    assert plain.spikes is None and plain.mem is None
    torch.testing.assert_close(plain.output, res.output)


def test_explicit_initial_state_is_used(small_model):
    x = (torch.rand(1, 2, 12, 3, 93) < 0.1).to(torch.uint8)
    state = small_model.initial_state(1)
    zero = InitialState(*(torch.zeros_like(t) for t in state))
    a = small_model(x, state=state, record_spikes=True).spikes
    b = small_model(x, state=zero, record_spikes=True).spikes
    c = small_model(x, record_spikes=True).spikes
    assert torch.equal(a, c) and not torch.equal(a, b)


@pytest.mark.parametrize("shape, message", [
    ((2, 2, 12, 5), "shape"),
    ((2, 1, 12, 5, 93), "channel"),
    ((2, 2, 12, 5, 90), "features"),
    ((2, 2, 0, 5, 93), "sweeps"),
])
def test_bad_input_shapes_are_refused(small_model, shape, message):
    with pytest.raises(ValueError, match=message):
        small_model(torch.zeros(shape))


def test_realvalued_encoder_refuses_spiking_input():
    model = BarrelCortexRSNN(ModelConfig(encoder="realvalued", init_b=0.03, init_w=0.05),
                             engine="reference")
    with pytest.raises(ValueError, match="channel"):
        model(torch.zeros(1, 2, 12, 3, 93))
    assert model(torch.zeros(1, 1, 12, 3, 558)).output.shape == (1, 3)


def test_bad_initial_state_and_config_are_refused(small_model):
    x = torch.zeros(2, 2, 12, 3, 93)
    state = small_model.initial_state(1)
    with pytest.raises(ValueError, match="initial state"):
        small_model(x, state=state)
    with pytest.raises(ValueError, match="encoder"):
        ModelConfig(encoder="analog")
    with pytest.raises(ValueError, match="engine must be one of"):
        small_model(x, engine="warp")
    with pytest.raises(ValueError, match="init_w"):
        ModelConfig(init_w=1.5)


def test_dale_signs_and_readout_from_excitatory_populations(small_model):
    w = small_model.signed_recurrent_weight().detach()
    for pop in small_model.anatomy.populations:
        block = w[:, pop.neurons]
        assert (block >= 0).all() if pop.excitatory else (block <= 0).all(), pop.name
    ro = small_model.readout_index
    assert len(ro) == 3606 == small_model.readout[0].in_features
    excitatory = [p for p in small_model.anatomy.populations if p.excitatory]
    assert sorted(p.index for p in excitatory) == [0, 1, 4]


def test_leaky_readout_integrates_the_published_logits():
    """--readout-tau: the same network, its logits passed through leaky integrators; the
    gradient reaches the readout through the filter with the numba engine as with the
    reference."""
    x = (torch.rand(2, 2, 12, 6, 93, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    plain = build_model(ModelConfig(), engine="reference")
    leaky = build_model(ModelConfig(readout_tau=4.0), engine="reference")
    logits = plain(x).logits.detach()
    alpha, mem, expected = np.exp(-1 / 4.0), torch.zeros_like(logits[0]), []
    for t in range(logits.shape[0]):
        mem = alpha * mem + (1 - alpha) * logits[t]
        expected.append(mem)
    res = leaky(x, record_spikes=True)
    torch.testing.assert_close(res.logits, torch.stack(expected))
    torch.testing.assert_close(res.output, torch.softmax(res.logits, -1).sum(0))
    torch.testing.assert_close(leaky.readout_sum(res.spikes[1:]), res.output)
    grads = {}
    for engine in ("reference", "numba"):
        leaky.zero_grad()
        leaky(x, engine=engine).output[:, 0].sum().backward()
        grads[engine] = leaky.readout[0].weight.grad.clone()
    assert grads["reference"].abs().sum() > 0
    torch.testing.assert_close(grads["numba"], grads["reference"], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="readout_tau"):
        ModelConfig(readout_tau=-1.0)


def test_same_seed_same_network_without_global_rng():
    torch.manual_seed(0)
    a = BarrelCortexRSNN(ModelConfig(seed=3))
    torch.manual_seed(99)
    b = BarrelCortexRSNN(ModelConfig(seed=3))
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name
    c = BarrelCortexRSNN(ModelConfig(seed=4))
    assert not torch.equal(a.recurrent.mask, c.recurrent.mask)


@pytest.mark.parametrize("script", ["RSNN_bfd_SpikingBased", "RSNN_bfd_RealValued",
                                    "RSNN_bfd_whisker_deprivation"])
def test_importing_scripts_has_no_side_effects(script, tmp_path):
    if not (ROOT / f"{script}.py").exists():
        pytest.skip(f"{script}.py not written yet")
    code = (f"import sys, torch; sys.path.insert(0, {str(ROOT)!r}); torch.manual_seed(7); "
            "s = torch.get_rng_state(); "
            f"import {script}; "
            "assert torch.equal(torch.get_rng_state(), s), 'global RNG touched'")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    assert list(tmp_path.iterdir()) == [], "importing the script wrote files"
