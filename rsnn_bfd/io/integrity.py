"""Whether a checkpoint is the file that was written, and a network that obeys its own rules.

``torch.load`` does not check the CRCs of the zip it reads, so a file with some bytes changed
in its tensors loads without complaint (a copy of the shipped network with 16 bytes changed
read one recurrent weight as -96.6 and gave results). Two checks catch that:

- :func:`digest`: written into every checkpoint (``ckpt["digest"]``), the SHA-256 of each
  stored tensor of the model's state, of each packed sparse layer, and of every other entry
  (configurations, optimiser, metrics), over the content as stored; :func:`verify_digest`
  recomputes it when the file is read and names what differs. A checkpoint written before
  digests were stored has none and is read as before.
- :func:`check_network`: the model's own invariants, for every network however it was read
  (digest or not, published pickles too): every parameter finite; the recurrent and
  thalamocortical weights in [0, 1] and zero off their masks (the constraint applied after
  every optimiser step, :meth:`SparseLinear.constrain_`); time constants positive; the
  anatomy's constants (the presynaptic signs, the read-out neurons) as the anatomy has them.

Both raise :class:`CheckpointError` with one line naming the file and what is wrong.
"""
from __future__ import annotations

import hashlib

import torch

from rsnn_bfd.io.errors import CheckpointError

DIGEST_KEY = "digest"
ALGORITHM = "sha256"


def _feed(h, obj) -> None:
    """Feed ``obj`` (tensors, dicts, lists and plain values, nested) into the hash ``h``,
    with its types and shapes, in an order that does not depend on dict order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"T{str(t.dtype)}{tuple(obj.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    else:   # str, int, float (repr is exact), bool, None
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def _hex(obj) -> str:
    h = hashlib.new(ALGORITHM)
    _feed(h, obj)
    return h.hexdigest()


def _entries(ckpt: dict) -> dict:
    """{name: object} of what the digest covers: each tensor of the model's state and each
    packed sparse layer apart (so that a mismatch names it), every other entry whole."""
    entries = {}
    for key, value in ckpt.items():
        if key == DIGEST_KEY:
            continue
        if key in ("model_state", "sparse") and isinstance(value, dict):
            entries.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            entries[key] = value
    return entries


def digest(ckpt: dict) -> dict:
    """The digest of a checkpoint dict as it is stored (sparse layers packed):
    ``{"algorithm": "sha256", "entries": {name: hex digest}}``."""
    return {"algorithm": ALGORITHM, "entries": {k: _hex(v) for k, v in _entries(ckpt).items()}}


def verify_digest(ckpt: dict, path) -> None:
    """Check ``ckpt`` (as read, before unpacking) against its stored digest; a checkpoint
    without one (written before digests were stored) passes. Raises :class:`CheckpointError`
    naming what differs."""
    stored = ckpt.get(DIGEST_KEY)
    if stored is None:
        return
    damaged = (f"{path}: the file is damaged (it differs from what was written); use another "
               "copy, or another checkpoint of its run; nothing was read from it")
    if (not isinstance(stored, dict) or stored.get("algorithm") != ALGORITHM
            or not isinstance(stored.get("entries"), dict)):
        raise CheckpointError(f"{damaged} (its digest is malformed)")
    want, have = stored["entries"], _entries(ckpt)
    differ = sorted(k for k in set(want) | set(have)
                    if k not in want or k not in have or _hex(have[k]) != want[k])
    if differ:
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise CheckpointError(f"{damaged} ({', '.join(differ[:3])}{more} do not match the "
                              f"digest stored with them)")


def check_network(model, path) -> None:
    """The invariants of a loaded network (module docstring); :class:`CheckpointError` naming
    the first that fails."""
    def fail(what):
        raise CheckpointError(f"{path}: {what}; the network cannot have been written so: the "
                              "file is damaged or was edited; use another copy")

    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if p.is_floating_point() and not torch.isfinite(p).all():
                fail(f"{name} holds NaN or infinite values")
        for name in ("recurrent", "thalamocortical"):
            layer = getattr(model, name)
            w, mask = layer.weight, layer.mask
            if mask.dtype != torch.bool:
                fail(f"{name}.mask is {mask.dtype}, not a mask")
            outside = (w < 0) | (w > 1)
            if outside.any():
                i = tuple(int(v) for v in outside.nonzero()[0])
                fail(f"{name}.weight holds {float(w[i]):.4g} at {i}, outside [0, 1]")
            off = (w != 0) & ~mask
            if off.any():
                i = tuple(int(v) for v in off.nonzero()[0])
                fail(f"{name}.weight holds {float(w[i]):.4g} at {i}, where there is no connection")
        for name in ("tau_m", "tau_adp", "thal_tau_m", "thal_tau_adp"):
            tau = getattr(model, name)
            if (tau <= 0).any():
                fail(f"{name} holds {float(tau.min()):.4g}; time constants are positive")
        scale = getattr(model, "readout_scale", None)
        if scale is not None and (scale <= 0).any():
            fail(f"readout_scale holds {float(scale.min()):.4g}; a spread is positive")
        anatomy = model.anatomy
        if not torch.equal(model.pre_sign.cpu().double(),
                           torch.as_tensor(anatomy.pre_sign).double()):
            fail("pre_sign differs from the anatomy's presynaptic signs (Dale's law)")
        if not torch.equal(model.readout_index.cpu().long(),
                           torch.as_tensor(anatomy.readout_neurons).long()):
            fail("readout_index differs from the anatomy's read-out neurons")
