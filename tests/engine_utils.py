"""Helpers shared by the engine tests: random inputs, one training pass, and the comparison
of an engine against the reference (spikes, outputs, membranes, all gradients)."""
import torch

from rsnn_bfd.network.model import InitialState, ModelConfig, build_model


def random_model(dtype=torch.float64):
    """The real 4218-neuron anatomy with stronger weights for more activity."""
    torch.manual_seed(0)
    return build_model(ModelConfig(seed=3, init_w=0.1), dtype=dtype)


def make_inputs(model, batch, steps, seed, rate=0.3, grad_state=False):
    """Random input spikes (batch, 2, 1, steps, 93), a random initial state and labels."""
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


def train_pass(model, engine, x, state, labels, options=None, spike_loss=False):
    """Forward with recording and backward of the published loss; returns (result, grads).
    ``spike_loss``: add a loss of the recorded spikes themselves (a fixed random weighting of
    every step, sample and neuron, as a firing-rate regulariser reads them)."""
    model.zero_grad(set_to_none=True)
    for t in state:
        t.grad = None
    res = model(x, state=state, record_spikes=True, record_mem=True, engine=engine,
                options=options)
    loss = torch.nn.functional.cross_entropy(res.output / x.shape[3], labels)
    if spike_loss:
        g = torch.Generator().manual_seed(11)
        weight = torch.randn(res.spikes.shape, generator=g, dtype=res.spikes.dtype) * 1e-3
        loss = loss + (res.spikes * weight.to(res.spikes.device)).sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    grads.update({f"state.{k}": t.grad.clone() for k, t in zip(InitialState._fields, state)
                  if t.requires_grad})
    return res, grads


def assert_matches_reference(model, x, state, labels, engine="numba", options=None,
                             spike_loss=False):
    ref, g_ref = train_pass(model, "reference", x, state, labels, spike_loss=spike_loss)
    res, g = train_pass(model, engine, x, state, labels, options, spike_loss)
    assert ref.spikes.sum() > 0, "test network is silent"
    torch.testing.assert_close(res.spikes, ref.spikes.detach(), rtol=0, atol=0)
    torch.testing.assert_close(res.mem, ref.mem.detach())
    torch.testing.assert_close(res.output, ref.output.detach())
    assert g_ref.keys() == g.keys()
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], msg=lambda m: f"{name}: {m}")


def assert_single_step_matches_reference(model, engine="numba"):
    """T = 1: no readout step, so the output is zero; it equals the reference's and is
    differentiable."""
    x, state, _ = make_inputs(model, 2, steps=1, seed=5)
    ref = model(x, state=state, record_spikes=True, engine="reference")
    res = model(x, state=state, record_spikes=True, engine=engine)
    torch.testing.assert_close(res.output, ref.output.detach())
    torch.testing.assert_close(res.spikes, ref.spikes.detach(), rtol=0, atol=0)
    res.output.sum().backward()
