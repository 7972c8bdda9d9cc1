"""The training levers of the model configuration (surrogate, thalamocortical start, E/I
balance, initial state, readout standardisation): each does what it says, every engine reads
it, and its default is the published network."""
from __future__ import annotations

import math

import pytest
import torch

from rsnn_bfd.network.model import ModelConfig, build_model
from rsnn_bfd.network.neuron import surrogate_derivative

from engine_utils import assert_matches_reference, make_inputs


def test_the_defaults_are_the_published_network():
    base, cfg = build_model(ModelConfig()), ModelConfig()
    assert (cfg.surrogate_sigma, cfg.surrogate_scale, cfg.init_w_thalamic, cfg.balance,
            cfg.init_state, cfg.readout_norm) == (0.5, 0.5, 0.0, False, "published", False)
    assert "readout_shift" not in base.state_dict()         # no new entries in checkpoints
    assert base.network().surrogate == (0.5, 0.5, 0.0)
    state = base.initial_state(2)
    assert 0 < float(state.mem.mean()) < 1                  # the published U[0, 1) state


def test_a_surrogate_scaled_to_the_threshold():
    x = torch.linspace(-0.2, 0.2, 41, dtype=torch.float64)
    narrow = surrogate_derivative(x, 0.02, 0.5)
    assert float(narrow.max()) == pytest.approx(0.5 / (math.sqrt(2 * math.pi) * 0.02))
    assert float(narrow[0]) < 1e-20                           # 10 sigma away: nothing passes
    wide = surrogate_derivative(x)                            # published: flat over +-0.2
    assert float(wide.min() / wide.max()) > 0.9


@pytest.mark.parametrize("engine", ["numba", pytest.param("torch", marks=pytest.mark.slow)])
def test_every_engine_reads_the_surrogate(engine):
    """A narrow surrogate changes the gradients, and every engine computes the reference's."""
    model = build_model(ModelConfig(seed=3, init_w=0.1, surrogate_sigma=0.05,
                                    surrogate_scale=0.8), dtype=torch.float64)
    x, state, labels = make_inputs(model, batch=1, steps=6, seed=1)
    assert_matches_reference(model, x, state, labels, engine=engine)
    published = build_model(ModelConfig(seed=3, init_w=0.1), dtype=torch.float64)
    g = []
    for m in (model, published):
        m.zero_grad()
        out = m(x, state=state, engine="reference")
        out.output[:, 0].sum().backward()
        g.append(m.recurrent.weight.grad.clone())
    assert not torch.allclose(g[0], g[1], rtol=1e-2, atol=0)


def test_a_truncated_surrogate_is_zero_beyond_its_cutoff():
    x = torch.linspace(-0.1, 0.1, 201, dtype=torch.float64)
    cut = surrogate_derivative(x, 0.02, 0.5, cutoff=2.0)
    inside = x.abs() <= 0.04
    torch.testing.assert_close(cut[inside], surrogate_derivative(x, 0.02, 0.5)[inside])
    assert float(cut[~inside].abs().max()) == 0 and int(inside.sum()) < 201
    with pytest.raises(ValueError, match="surrogate_cutoff"):
        ModelConfig(surrogate_cutoff=-1)


# one batch block, and two (numba: 64 lanes; slow: the reference engine at batch 70)
@pytest.mark.parametrize("batch", [3, pytest.param(70, marks=pytest.mark.slow)])
def test_the_sparse_backward_gives_the_reference_gradients(batch):
    """With a truncated surrogate the numba backward skips the spike gradients of neurons
    whose surrogate is zero on every lane of a block: the gradients stay the reference's."""
    config = ModelConfig(seed=3, init_w=0.1, surrogate_sigma=0.02, surrogate_scale=0.5,
                         surrogate_cutoff=2.0)
    model = build_model(config, dtype=torch.float64)
    x, state, labels = make_inputs(model, batch=batch, steps=40 if batch < 64 else 12, seed=1)
    mem = model(x, state=state, record_mem=True, engine="reference").mem
    near = (mem - model.config.init_b).abs() <= 0.04     # roughly where the surrogate passes
    assert 0 < float(near.double().mean()) < 0.5         # most neuron-steps are skipped
    assert_matches_reference(model, x, state, labels, engine="numba")


def test_thalamocortical_weights_start_in_their_own_range():
    base = build_model(ModelConfig())
    strong = build_model(ModelConfig(init_w_thalamic=0.3))
    # the same draws, scaled: only the thalamocortical weights change
    torch.testing.assert_close(strong.thalamocortical.weight, base.thalamocortical.weight * 5,
                               rtol=1e-6, atol=0)
    assert float(strong.thalamocortical.weight.detach().max()) <= 0.3
    assert torch.equal(strong.recurrent.weight, base.recurrent.weight)
    with pytest.raises(ValueError, match="init_w_thalamic"):
        ModelConfig(init_w_thalamic=2.0)


def test_balance_gives_each_neuron_equal_excitatory_and_inhibitory_weight():
    base, balanced = build_model(ModelConfig()), build_model(ModelConfig(balance=True))
    inhibitory = balanced.pre_sign < 0
    w, w0 = (m.recurrent.effective_weight().detach() for m in (balanced, base))
    exc, inh = w[:, ~inhibitory].sum(1), w[:, inhibitory].sum(1)
    both = (w0[:, inhibitory].sum(1) > 0) & (w0[:, ~inhibitory].sum(1) > 0)
    unclamped = both & (w[:, inhibitory].max(1).values < 1)   # the [0, 1] bound kept the rest
    assert unclamped.sum() > 4000
    torch.testing.assert_close(inh[unclamped], exc[unclamped], rtol=1e-5, atol=0)
    assert torch.equal(w[:, ~inhibitory], w0[:, ~inhibitory])        # excitatory untouched
    assert float(w.max()) <= 1.0 and torch.equal(w != 0, w0 != 0)   # bound and masks kept
    net = balanced.signed_recurrent_weight().detach().sum(1)
    assert float(net[unclamped].abs().max()) < 1e-4                  # zero net input at equal rates


def test_the_zero_initial_state():
    state = build_model(ModelConfig(init_state="zero")).initial_state(3)
    assert all(float(t.abs().sum()) == 0 and t.shape[0] == 3 for t in state)
    with pytest.raises(ValueError, match="init_state"):
        ModelConfig(init_state="random")


def test_the_readout_standardisation_is_folded_into_the_first_layer():
    model = build_model(ModelConfig(readout_norm=True), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = len(model.readout_index)
    model.readout_shift.copy_(torch.rand(n, generator=g, dtype=torch.float64) * 0.05)
    model.readout_scale.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
    spikes = (torch.rand(4, n, generator=g) < 0.1).to(torch.float64)
    w1, b1, w2, b2 = model.network().readout
    got = (spikes @ w1.t() + b1) @ w2.t() + b2
    ro1, ro2 = model.readout
    want = ro2(ro1((spikes - model.readout_shift) * model.readout_scale))
    torch.testing.assert_close(got, want)
    assert {"readout_shift", "readout_scale"} <= set(model.state_dict())   # saved with it
