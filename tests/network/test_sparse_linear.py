"""The sparse sign-constrained layer: the mask never changes, weights stay in [0, 1]."""
import pytest
import torch

from rsnn_bfd.network.sparse import SparseLinear


def make_layer(seed=0, p=0.3, init_w=0.06):
    return SparseLinear(40, 30, p, init_w=init_w, generator=torch.Generator().manual_seed(seed))


def test_mask_and_initial_weights():
    layer = make_layer()
    w = layer.weight.detach()
    assert layer.mask.dtype == torch.bool
    assert torch.all(w[~layer.mask] == 0)
    assert torch.all((w >= 0) & (w <= 0.06))
    torch.testing.assert_close(layer.effective_weight(), w * layer.mask)
    again = make_layer()
    assert torch.equal(layer.mask, again.mask) and torch.equal(layer.weight, again.weight)
    assert not torch.equal(layer.mask, make_layer(seed=1).mask)


def test_per_entry_probabilities():
    prob = torch.zeros(30, 40)
    prob[:10] = 1.0
    layer = SparseLinear(40, 30, prob, init_w=0.1, generator=torch.Generator().manual_seed(0))
    assert layer.mask[:10].all() and not layer.mask[10:].any()


@pytest.mark.parametrize("optim", ["adam", "adamw", "sgd"])
def test_mask_invariant_under_many_large_optimiser_steps(optim):
    layer = make_layer()
    mask = layer.mask.clone()
    opt = {"adam": lambda p: torch.optim.Adam(p, lr=5.0, weight_decay=0.5),
           "adamw": lambda p: torch.optim.AdamW(p, lr=5.0, weight_decay=0.5),
           "sgd": lambda p: torch.optim.SGD(p, lr=50.0, momentum=0.9, weight_decay=0.5),
           }[optim](layer.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        x = torch.randn(8, 40, generator=g)
        loss = (layer(x) * torch.randn(8, 30, generator=g)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        layer.constrain_()
        w = layer.weight.detach()
        assert torch.equal(layer.mask, mask)
        assert torch.all(w[~mask] == 0)
        assert torch.all((w >= 0) & (w <= 1))
    # the constraint binds at both ends, so the test exercised it
    w = layer.weight.detach()[mask]
    assert (w == 0).any() and (w == 1).any()


def test_gradient_is_zero_off_the_mask():
    layer = make_layer()
    layer(torch.randn(5, 40)).sum().backward()
    assert torch.all(layer.weight.grad[~layer.mask] == 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="probabilities"):
        SparseLinear(4, 3, 1.5, init_w=0.1)
    with pytest.raises(ValueError, match="init_w"):
        SparseLinear(4, 3, 0.5, init_w=2.0)
