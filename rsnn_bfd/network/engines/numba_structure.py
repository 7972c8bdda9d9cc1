"""The ``numba`` engine's sparse index structures of the recurrent and thalamocortical
masks (CSC by presynaptic neuron for the scatter and the backward, CSR for the gathering
forward), built once per mask and cached in this module. Design and layout:
:mod:`rsnn_bfd.network.engines.numba_cpu`.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch

from rsnn_bfd.network.engines import Network


class _Structure:
    """Sparse index structures of the recurrent and thalamocortical masks (cached per mask)."""

    def __init__(self, net: Network):
        off = np.asarray(net.offsets, dtype=np.int64)
        n = int(off[-1])
        pop = np.repeat(np.arange(len(off) - 1), np.diff(off))
        mask = net.recurrent_mask.detach().cpu().numpy().astype(bool)
        rows, cols = np.nonzero(mask)                       # CSR (post-major) order
        rows, cols = rows.astype(np.int64), cols.astype(np.int64)
        self.n, self.off, self.nnz = n, off, len(rows)
        self.rec_flat = torch.from_numpy(rows * n + cols)
        self.col_t = torch.from_numpy(cols)
        order = np.lexsort((rows, cols))                    # CSC (pre-major) order
        self.cperm = torch.from_numpy(order)
        # neuron indices as uint16 where they fit (4218 neurons): the kernels stream the
        # index of every connection at every step, and half the bytes made the backward's
        # product about 1.3 times faster (benchmarks/roofline.py)
        index_t = np.uint16 if n <= np.iinfo(np.uint16).max + 1 else np.int32
        self.crow = rows[order].astype(index_t)
        self.colptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n))]).astype(np.int64)
        ckey = cols[order] * n + rows[order]
        # first entry of column p whose postsynaptic population is > pop(p)
        self.csplit = np.searchsorted(ckey, np.arange(n) * n + off[pop + 1]).astype(np.int64)
        # CSR (post-major) for the gathering forward: each neuron's incoming connections
        # from its own population on first, then from the earlier ones (the order in which
        # the scatter adds them), ascending within each part
        earlier = cols < off[pop[rows]]
        gorder = np.lexsort((cols, earlier, rows))
        self.gperm = torch.from_numpy(gorder)
        self.gcol = cols[gorder].astype(index_t)
        self.rowptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)

        tmask = net.thalamic_mask.detach().cpu().numpy().astype(bool)
        n_thal = tmask.shape[1]
        trows, tcols = np.nonzero(tmask)
        torder = np.lexsort((trows, tcols))
        trows, tcols = trows[torder].astype(np.int64), tcols[torder].astype(np.int64)
        self.th_flat = torch.from_numpy(trows * n_thal + tcols)
        self.trow = trows.astype(np.int32)
        self.tcolptr = np.concatenate([[0], np.cumsum(np.bincount(tcols, minlength=n_thal))]).astype(np.int64)
        self.n_thal = n_thal

        self.readout_index = net.readout_index.detach().cpu().long()
        # position of each neuron in the readout vector, -1 for neurons not read out
        self.ro_pos = np.full(n, -1, dtype=np.int64)
        self.ro_pos[self.readout_index.numpy()] = np.arange(len(self.readout_index))
        self.ro_index = self.readout_index.numpy()


# this engine's cache: id(recurrent mask) -> (weak references to both masks, their
# versions, offsets, readout index, structure); a few models at a time
_STRUCTURES: dict = {}


def _structure(net: Network) -> _Structure:
    """The structure of ``net``'s masks, built once per mask (and rebuilt when a mask or the
    readout index is modified in place)."""
    m, tm, ro = net.recurrent_mask, net.thalamic_mask, net.readout_index
    key = (m._version, tm._version, ro._version, tuple(net.offsets))
    hit = _STRUCTURES.get(id(m))
    if hit is not None and hit[0]() is m and hit[1]() is tm and hit[2]() is ro and hit[3] == key:
        return hit[4]
    st = _Structure(net)
    for k in [k for k, v in _STRUCTURES.items() if v[0]() is None]:   # masks freed since
        del _STRUCTURES[k]
    if len(_STRUCTURES) >= 4:
        _STRUCTURES.pop(next(iter(_STRUCTURES)))
    _STRUCTURES[id(m)] = (weakref.ref(m), weakref.ref(tm), weakref.ref(ro), key, st)
    return st
