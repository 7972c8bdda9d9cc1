"""rsnn_bfd/network/engines/numba_cpu.py (and its kernels): the numba engine equals the reference engine (spikes, outputs,
membranes, all gradients)."""
import numpy as np
import pytest
import torch

from rsnn_bfd.network.engines import EngineOptions, numba_backward, numba_forward
from rsnn_bfd.network.engines import numba_cpu as engine_numba

from conftest import golden_cases, require_golden_file
from engine_utils import (assert_matches_reference, assert_single_step_matches_reference,
                          make_inputs, random_model)


@pytest.fixture(scope="module")
def model64():
    return random_model()


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_fast_equals_reference_float64(model64, batch):
    x, state, labels = make_inputs(model64, batch, steps=6, seed=batch)
    assert_matches_reference(model64, x, state, labels)


@pytest.mark.parametrize("chunk", [1, 4])
def test_chunk_boundaries_and_state_gradients(model64, monkeypatch, chunk):
    """Checkpoint / recompute across chunk boundaries, and gradients to the initial state."""
    x, state, labels = make_inputs(model64, 2, steps=9, seed=10 + chunk, grad_state=True)
    assert_matches_reference(model64, x, state, labels, options=EngineOptions(chunk=chunk))


@pytest.mark.parametrize("chunk", [2, 32])
def test_gradient_of_a_loss_of_the_spikes(model64, monkeypatch, chunk):
    """A loss that reads the recorded spikes (--rate-reg) gets their gradient, as autograd
    through the reference gives it, across chunk boundaries and into the initial state."""
    x, state, labels = make_inputs(model64, 3, steps=7, seed=21, grad_state=True)
    assert_matches_reference(model64, x, state, labels, options=EngineOptions(chunk=chunk),
                             spike_loss=True)


def test_readout_positions(model64):
    """The forward / backward kernels find readout neurons through ``ro_pos``."""
    st = engine_numba._structure(model64.network())
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
    model = copy.deepcopy(model64)
    with torch.no_grad():
        for layer in model.readout:
            layer.weight.mul_(8.0)
            layer.bias.add_(torch.linspace(-1.0, 1.0, layer.bias.numel(), dtype=torch.float64))
    x, state, labels = make_inputs(model, 3, steps=steps, seed=20 + steps, grad_state=True)
    # initial "spikes" far from binary on the readout neurons
    with torch.no_grad():
        state.spk[:, model.readout_index] *= 0.37
    assert_matches_reference(model, x, state, labels, options=EngineOptions(chunk=chunk))


def test_single_step(model64):
    """T = 1 (no readout step) on the numba backend."""
    assert_single_step_matches_reference(model64)


def test_inference_path_matches_training_path(model64):
    x, state, _ = make_inputs(model64, 4, steps=7, seed=7)
    with torch.no_grad():
        a = model64(x, state=state, record_spikes=True, engine="numba")
        b = model64(x, state=state, engine="numba")
        r = model64(x, state=state, record_spikes=True, engine="reference")
    assert b.spikes is None and b.mem is None
    torch.testing.assert_close(a.output, b.output, rtol=0, atol=0)
    torch.testing.assert_close(a.output, r.output)
    torch.testing.assert_close(a.spikes, r.spikes, rtol=0, atol=0)
    assert not a.output.requires_grad


@pytest.mark.parametrize("path", golden_cases("*_forward.npz"))
def test_float32_spikes_match_reference_on_golden(path):
    """float32: the numba engine gives the reference's spikes on the golden inputs."""
    path = require_golden_file(path)
    from golden_utils import model_from_case
    case = np.load(path)
    model, x, _, state = model_from_case(case, dtype=torch.float32)
    with torch.no_grad():
        ref = model(x, state=state, record_spikes=True, engine="reference")
        fast = model(x, state=state, record_spikes=True, engine="numba")
    torch.testing.assert_close(fast.spikes, ref.spikes, rtol=0, atol=0)
    torch.testing.assert_close(fast.output, ref.output, rtol=1e-5, atol=1e-5)


def test_subnormal_adaptation_is_flushed_without_changing_results(model64):
    """float32 adaptation decays into subnormal numbers (about 430 steps at tau_adp = 5),
    which slow the CPU many-fold; the fast engine flushes them to zero. The threshold
    b0 + beta * b absorbs such a b entirely, so the spikes stay those of the reference (the
    membranes differ only by float32 summation order). A short tau_adp gets there within a
    few steps."""
    import copy
    model = copy.deepcopy(model64).float()
    with torch.no_grad():
        model.tau_adp.fill_(0.12)            # rho = exp(-1 / 0.12): b is subnormal by step ~6
        model.thal_tau_adp.fill_(0.12)
    x, state, labels = make_inputs(model, 2, steps=20, seed=31, rate=0.2)
    with torch.no_grad():
        ref = model(x, state=state, record_spikes=True, record_mem=True, engine="reference")
        fast = model(x, state=state, record_spikes=True, record_mem=True, engine="numba")
    assert ref.spikes.sum() > 0
    torch.testing.assert_close(fast.spikes, ref.spikes, rtol=0, atol=0)
    torch.testing.assert_close(fast.thal_spikes, ref.thal_spikes, rtol=0, atol=0)
    torch.testing.assert_close(fast.mem, ref.mem)


def test_flush_denormal_context_restores_the_previous_setting():
    """The CPU backward runs with flush-to-zero (fading gradients turn subnormal and slow
    every product many-fold) and leaves the caller's setting as it found it."""
    probe = torch.tensor([1e-40], dtype=torch.float32)             # subnormal in float32
    for before in (False, True):
        if not torch.set_flush_denormal(before):
            pytest.skip("this CPU cannot flush denormals")
        with engine_numba._FlushDenormal():
            assert (probe * 1.0).item() == 0.0
        assert ((probe * 1.0).item() == 0.0) == before
    torch.set_flush_denormal(False)


def test_backward_drops_gradients_below_the_floor():
    """Fading gradients below GRAD_FLOOR x the smallest normal float are written as zero:
    their products with the weights would be subnormal, which slows the backward's products
    on numba's worker threads (they do not flush subnormals). Larger ones pass unchanged."""
    dtype = np.float32
    tiny = np.finfo(dtype).tiny
    floor = dtype(engine_numba.GRAD_FLOOR * tiny)
    n, batch = 1, 5
    gs = np.array([[0.5 * floor, -0.5 * floor, 2 * floor, -3 * floor, 1e-7]], dtype=dtype)
    ones, zeros = np.ones((n, batch), dtype), np.zeros((n, batch), dtype)
    alpha, rho = np.zeros(n, dtype), np.zeros(n, dtype)       # 1 - alpha = 1: dL/dI = gs
    consts = np.array([0.01, 1.8, 0, 0, 0, 1.0, tiny, floor], dtype=dtype)
    gi, gs_prev = np.empty_like(gs), np.empty_like(gs)
    gv, gb = zeros.copy(), zeros.copy()
    numba_backward._neurons_backward(0, n, 0, batch, gs, ones, zeros, zeros, zeros, zeros, zeros,
                                     alpha, 1 - alpha, rho, 1 - rho, consts, gv, gb, gi, gs_prev,
                                     np.zeros(n, dtype), np.zeros(n, dtype))
    np.testing.assert_array_equal(gi, np.where(np.abs(gs) < floor, 0, gs))


@pytest.mark.parametrize("cnt", range(7))
def test_event_driven_edge_loops_for_any_number_of_active_lanes(cnt):
    """The scatter (forward current) and the backward (spike gradient over all lanes, weight
    gradient over the active ones) through one neuron's connections, with their unrolled
    cases for 1 to 3 active lanes and the general loop."""
    rng = np.random.default_rng(cnt)
    n, n_lanes = 6, 8
    rows = rng.integers(0, n, size=12).astype(np.int32)
    vals = rng.standard_normal(12)
    lanes = np.sort(rng.choice(n_lanes, size=n_lanes, replace=False)).astype(np.int64)
    xs = rng.random(n_lanes)
    e0, e1 = 2, 11
    acc = rng.standard_normal((n, n_lanes))
    expected = acc.copy()
    for e in range(e0, e1):
        for q in range(cnt):
            expected[rows[e], lanes[q]] += vals[e] * xs[q]
    numba_forward._scatter_edges(e0, e1, rows, vals, lanes, xs, cnt, acc)
    np.testing.assert_allclose(acc, expected, rtol=1e-14, atol=0)

    g = rng.standard_normal((n, n_lanes))
    gw = rng.standard_normal(12)
    expected = gw.copy()
    for e in range(e0, e1):
        expected[e] += sum(xs[q] * g[rows[e], lanes[q]] for q in range(cnt))
    grad_s = np.full(n_lanes, np.nan)
    numba_backward._edges_backward(e0, e1, rows, vals, g, lanes[None], xs[None], 0, cnt, gw,
                                   grad_s, np.full(n_lanes, np.nan), n_lanes)
    np.testing.assert_allclose(gw, expected, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(grad_s, vals[e0:e1] @ g[rows[e0:e1]], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("batch,blocks", [(24, 3), (24, 2), (24, 1), (70, 2)])
def test_backward_for_each_block_width(model64, monkeypatch, batch, blocks):
    """The backward kernel is compiled per block width (8, 16, 32 and 64 lanes here: 24
    lanes in 3, 2 or 1 blocks, 70 in 2); each gives the reference's gradients."""
    monkeypatch.setattr(engine_numba, "_nblocks", lambda batch: blocks)
    x, state, labels = make_inputs(model64, batch, steps=4, seed=40 + blocks, grad_state=True)
    assert_matches_reference(model64, x, state, labels)


@pytest.mark.parametrize("blocks", [1, 4, 7])
def test_scatter_blocks_change_nothing(model64, monkeypatch, blocks):
    """The scattering forward runs batch blocks of at most SCATTER_LANES lanes, several to
    a thread: every lane receives the same additions in the same order however the batch
    is blocked, so spikes, membranes, logits and gradients are bit-identical."""
    from engine_utils import train_pass
    x, state, labels = make_inputs(model64, 20, steps=8, seed=70, grad_state=True)
    opts = EngineOptions(chunk=5, recurrent_input="scatter")
    ref, g_ref = train_pass(model64, "numba", x, state, labels, opts)
    monkeypatch.setattr(engine_numba, "_scatter_blocks", lambda batch: blocks)
    res, g = train_pass(model64, "numba", x, state, labels, opts)
    for a, b in ((res.spikes, ref.spikes), (res.mem, ref.mem), (res.output, ref.output)):
        assert torch.equal(a, b)
    for name in g_ref:
        assert torch.equal(g[name], g_ref[name]), name


@pytest.mark.parametrize("batch,threads", [(3, 1), (9, 1), (40, 2), (100, 2), (130, 2)])
def test_gathered_recurrent_input_equals_scattered(model64, monkeypatch, batch, threads):
    """The forward that gathers the recurrent input (compiled per lane width: 8, 16, 32,
    64 and 128 here, blocks full or not) gives the scatter's spikes, membranes, logits and
    so gradients bit for bit, across chunk boundaries; ``auto`` switches between them
    from chunk to chunk and changes nothing either."""
    from engine_utils import train_pass
    monkeypatch.setattr(engine_numba, "get_num_threads", lambda: threads)
    x, state, labels = make_inputs(model64, batch, steps=12, seed=60 + batch, grad_state=True)
    runs = {}
    for mode in ("scatter", "gather", "auto"):
        runs[mode] = train_pass(model64, "numba", x, state, labels,
                                EngineOptions(chunk=5, recurrent_input=mode))
    (ref, g_ref) = runs["scatter"]
    assert ref.spikes[1:].mean() > 0.02, "test network too quiet to use every path"
    for mode in ("gather", "auto"):
        res, g = runs[mode]
        for a, b in ((res.spikes, ref.spikes), (res.mem, ref.mem), (res.output, ref.output)):
            assert torch.equal(a, b), mode
        for name in g_ref:
            assert torch.equal(g[name], g_ref[name]), f"{mode}: {name}"


def test_gathered_recurrent_input_in_float32_at_training_rates(monkeypatch):
    """float32 (no fused multiply-adds, so the sums round as the scatter's do), at the
    firing rate of a trained network (about 9 %), in inference."""
    from rsnn_bfd.network.model import ModelConfig, build_model
    torch.manual_seed(0)
    model = build_model(ModelConfig(seed=3, init_w=0.22), dtype=torch.float32)
    x, state, _ = make_inputs(model, 20, steps=40, seed=3, rate=0.15)
    out = {}
    with torch.no_grad():
        for mode in ("scatter", "gather"):
            out[mode] = model(x, state=state, record_spikes=True, record_mem=True,
                              engine="numba", options=EngineOptions(recurrent_input=mode))
    assert out["scatter"].spikes[1:].mean() > 0.05
    for field in ("spikes", "mem", "output"):
        assert torch.equal(getattr(out["gather"], field), getattr(out["scatter"], field))


def test_auto_gathers_from_the_break_even_rate():
    assert not engine_numba._gathers("auto", None, 128)          # the first chunk scatters
    assert engine_numba._gathers("auto", engine_numba.GATHER_RATE[128], 128)
    assert not engine_numba._gathers("auto", 0.01, 128)
    assert not engine_numba._gathers("auto", 0.04, 16) and engine_numba._gathers("auto", 0.04, 32)
    assert engine_numba._gathers("gather", None, 8) and not engine_numba._gathers("scatter", 0.5, 8)
