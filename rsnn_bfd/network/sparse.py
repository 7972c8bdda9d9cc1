"""The probability-sampled sparse linear layer with non-negative weights.

A Bernoulli(p) connection mask is drawn once at construction from a seedable generator and
never changes. Weights start uniform in [0, init_w] on the mask; the layer keeps them in
[0, 1] (the paper's clamp) and the unconnected entries at exactly zero. Signs (Dale's law)
belong to the presynaptic neuron and are applied by the network, not here.

    layer = SparseLinear(200, 4218, connect_prob, init_w=0.06, generator=g)
    y = layer(x)               # x (..., in_features) -> (..., out_features)
    optimizer.step(); layer.constrain_()   # right after every optimiser step
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class SparseLinear(nn.Module):
    """y = x @ (weight * mask).T (+ bias), with ``weight`` in [0, 1] and zero off the mask.

    connect_prob: scalar, or (out_features, in_features) array of connection probabilities.
    init_w: weights on the mask start uniform in [0, init_w].
    generator: ``torch.Generator`` for the mask and the initial weights (CPU).
    """

    def __init__(self, in_features: int, out_features: int, connect_prob, init_w: float,
                 bias: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        prob = torch.as_tensor(np.asarray(connect_prob, dtype=np.float64))
        prob = prob.expand(out_features, in_features)
        if not torch.all((prob >= 0) & (prob <= 1)):
            raise ValueError("connection probabilities must lie in [0, 1]")
        if not 0 <= init_w <= 1:
            raise ValueError(f"init_w must lie in [0, 1], got {init_w}")
        self.in_features, self.out_features = in_features, out_features
        mask = torch.rand(out_features, in_features, generator=generator,
                          dtype=torch.float64) < prob
        weight = torch.rand(out_features, in_features, generator=generator) * init_w
        self.register_buffer("mask", mask)
        self.weight = nn.Parameter(weight * mask)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def effective_weight(self) -> torch.Tensor:
        """(out, in) the weights actually in use: ``weight * mask`` (non-negative)."""
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.effective_weight(), self.bias)

    @torch.no_grad()
    def constrain_(self) -> None:
        """Clamp to [0, 1] and zero the unconnected entries (after every optimiser step)."""
        self.weight.clamp_(0.0, 1.0).mul_(self.mask)

    @torch.no_grad()
    def set_connections(self, mask: torch.Tensor, weight: torch.Tensor) -> None:
        """Replace mask and weights (for loading published networks); weight is masked."""
        if mask.shape != self.mask.shape or weight.shape != self.weight.shape:
            raise ValueError(f"expected mask and weight of shape {tuple(self.mask.shape)}, "
                             f"got {tuple(mask.shape)} and {tuple(weight.shape)}")
        self.mask.copy_(mask.to(torch.bool))
        self.weight.copy_(weight * self.mask)

    @property
    def nnz(self) -> int:
        return int(self.mask.sum())

    def extra_repr(self) -> str:
        density = self.nnz / max(1, self.mask.numel())
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"density={density:.4f}, bias={self.bias is not None}")
