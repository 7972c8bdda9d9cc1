"""readout.py: the losses and decisions of the readout."""
import pytest
import torch

from rsnn_bfd.network.model import RSNNOutput
from rsnn_bfd.network.readout import LOSSES, class_scores, predict, readout_loss


def _result(logits):
    """An RSNNOutput as the model makes it from per-step logits (T-1, batch, 3)."""
    return RSNNOutput(torch.softmax(logits, -1).sum(0), logits=logits)


def test_published_loss_gives_no_gradient_on_a_saturated_readout():
    """The diagnosis in numbers: once every step's softmax is one-hot, the published loss
    (cross-entropy of output / T) has a zero gradient; the other two losses do not."""
    T = 550
    labels = torch.tensor([0, 0])                                        # first sample wrong
    step = torch.tensor([[0.0, 40.0, 0.0], [40.0, 0.0, 0.0]])            # class 1, class 0
    for kind, vanishes in (("published", True), ("log-mean-prob", False), ("mean-logit", False)):
        # (float32 saturates exactly at larger gaps; at a gap of 40 the gradient is ~1e-18)
        logits = step.expand(T - 1, 2, 3).clone().requires_grad_(True)
        result = _result(logits)
        torch.testing.assert_close(result.output.detach(),
                                   torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]) * (T - 1))
        g, = torch.autograd.grad(readout_loss(result, labels, kind), logits)
        assert (g.abs().max() < 1e-15 if vanishes else g.abs().sum() > 0.1), (kind, g.abs().max())
    # the published loss is bounded below by -log(e^a / (e^a + 2)), a = (T-1)/T: about 0.551
    best = readout_loss(_result(step[1:].expand(T - 1, 1, 3)), labels[1:], "published")
    a = torch.tensor((T - 1) / T)
    assert float(best) == pytest.approx(float(-torch.log(a.exp() / (a.exp() + 2))))
    assert float(best) > 0.551


def test_losses_and_decisions_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(9, 4, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    result = _result(logits)
    prob = torch.softmax(logits, -1)
    torch.testing.assert_close(readout_loss(result, labels, "published"),
                               torch.nn.functional.cross_entropy(prob.sum(0) / 10, labels))
    torch.testing.assert_close(readout_loss(result, labels, "log-mean-prob"),
                               -prob.mean(0).log().gather(1, labels[:, None]).mean())
    torch.testing.assert_close(readout_loss(result, labels, "mean-logit"),
                               torch.nn.functional.cross_entropy(logits.mean(0), labels))
    # the mean-logit decision integrates evidence: one confident step outvotes many weak ones
    votes = torch.tensor([[0.0, 1.0, 0.0]]).repeat(30, 1, 1)
    votes = torch.cat([votes, torch.tensor([[[40.0, 0.0, 0.0]]])])
    result = _result(votes)
    assert int(predict(result, "published")) == 1 and int(predict(result, "mean-logit")) == 0
    torch.testing.assert_close(class_scores(result, "mean-logit"), votes.mean(0))
    assert class_scores(result, "log-mean-prob") is result.output


def test_unknown_loss_is_refused():
    result = _result(torch.zeros(3, 1, 3))
    for call in (lambda: readout_loss(result, torch.tensor([0]), "mse"),
                 lambda: predict(result, "mse")):
        with pytest.raises(ValueError, match="loss must be one of"):
            call()
    assert LOSSES[0] == "published"
