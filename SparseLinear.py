"""The published module name of the probability-sampled sparse layer:
``from SparseLinear import SparseLinear`` works as it did (:mod:`rsnn_bfd.network.sparse`).
"""
from rsnn_bfd.network.sparse import SparseLinear  # noqa: F401
