"""Checkpoints: the file format, atomic saving and safe loading.

A checkpoint is a dict of plain types and tensors, written with ``torch.save`` through a
temporary file and a rename, and read with ``torch.load(..., weights_only=True)``, so a file
that holds Python objects is refused and nothing in it runs.

    format            "barrel-rsnn-checkpoint"
    version           2 (version 1, the dense layout, still loads)
    model_config      ModelConfig as a dict (tuples as lists)
    model_state       the model's state_dict, sparse layers packed (below)
    optimizer_state   Adam's state_dict (None when absent), sparse moments packed
    scheduler_state   StepLR's state_dict (None when absent)
    epoch             completed epochs
    train_config      the training config as a dict
    dtype             "float32" or "float64"
    sparse            {layer: {"shape", "mask_bits", "optimizer_index"}} (version 2)
    best_test_acc, test_acc, metrics, ...   entries of ``extra``
    digest            SHA-256 of every entry as stored, checked when the file is read
                      (rsnn_bfd.io.integrity; absent in files written before it)

Version 2 stores only the connections that exist. In version 1 the dense 4,218 x 4,218
recurrent weight and its two Adam moments, almost all zeros, made a checkpoint about 250 MB;
now the values at the mask's entries are kept in row-major mask order and the mask as packed
bits (``numpy.packbits``), about 24 MB. A layer is packed only when its weight and moments
are exactly zero off the mask, which the constraint after every step guarantees; otherwise
it stays dense. Loading restores the same dense tensors, bit for bit.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from rsnn_bfd.writing import DirectoryLock, atomic_torch_save, check_writable_dir
from rsnn_bfd.io.errors import CheckpointError
from rsnn_bfd.io.integrity import DIGEST_KEY, check_network, digest, verify_digest
from rsnn_bfd.io.published import load_published
from rsnn_bfd.io.unpickler import is_xz
from rsnn_bfd.network.model import DTYPES, ModelConfig, build_model
from rsnn_bfd.network.readout import LOSSES
from rsnn_bfd.network.sparse import SparseLinear

FORMAT = "barrel-rsnn-checkpoint"
VERSION = 2
_MOMENTS = ("exp_avg", "exp_avg_sq")


class ForeignPickleError(CheckpointError):
    """A ``torch.save`` file that holds Python objects (refused by ``weights_only=True``)."""


def _plain(obj):
    """Config values as plain types (tuples -> lists) so ``weights_only`` loads them."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _sparse_layers(model) -> dict:
    """{state_dict prefix: layer} of the model's SparseLinear layers."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SparseLinear)}


def _pack(ckpt: dict, model, optimizer) -> None:
    """Replace the dense weights (and Adam moments) of sparse layers by their mask entries."""
    state, opt = ckpt["model_state"], ckpt["optimizer_state"]
    index = {}
    if optimizer is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        index = {id(p): i for i, p in enumerate(params)}
    ckpt["sparse"] = {}
    for name, layer in _sparse_layers(model).items():
        mask = layer.mask.detach().to("cpu", torch.bool)
        dense = [state[f"{name}.weight"]]
        i = index.get(id(layer.weight))
        moments = {}
        if opt is not None and i in opt["state"]:
            # a copy: state_dict() hands out the optimiser's live per-parameter dicts
            moments = opt["state"][i] = dict(opt["state"][i])
        dense += [moments[k] for k in _MOMENTS if k in moments]
        # nonzeros off the mask (NaN counts) show as more nonzeros in all than on the mask;
        # counted, not gathered: the mask's complement is 93 % of a 4218 x 4218 matrix
        if any(int(torch.count_nonzero(t)) != int(torch.count_nonzero(t[mask]))
               for t in (d.detach().cpu() for d in dense)):
            continue   # something lives off the mask: keep this layer dense
        state[f"{name}.weight"] = state[f"{name}.weight"].detach().cpu()[mask].clone()
        for k in _MOMENTS:
            if k in moments:
                moments[k] = moments[k].detach().cpu()[mask].clone()
        del state[f"{name}.mask"]
        bits = np.packbits(mask.numpy().reshape(-1))
        ckpt["sparse"][name] = {"shape": list(mask.shape), "mask_bits": torch.from_numpy(bits),
                                "optimizer_index": i if moments else None}


def _unpack(ckpt: dict, path) -> dict:
    """The dense state of a version-2 checkpoint (in place); version 1 is returned as it is."""
    sparse = ckpt.get("sparse") or {}
    state, opt = ckpt["model_state"], ckpt.get("optimizer_state")
    for name, entry in sparse.items():
        try:
            shape = tuple(int(v) for v in entry["shape"])
            n = shape[0] * shape[1]
            bits = entry["mask_bits"].cpu().numpy()
            mask = torch.from_numpy(np.unpackbits(bits, count=n).astype(bool).reshape(shape))

            def dense(values, mask=mask):
                full = torch.zeros(mask.shape, dtype=values.dtype)
                full[mask] = values.cpu()
                return full.to(values.device)

            state[f"{name}.mask"] = mask.to(state[f"{name}.weight"].device)
            state[f"{name}.weight"] = dense(state[f"{name}.weight"])
            i = entry.get("optimizer_index")
            if opt is not None and i is not None:
                moments = opt["state"][i]
                for k in _MOMENTS:
                    if k in moments:
                        moments[k] = dense(moments[k])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            raise CheckpointError(f"{path}: malformed sparse layer {name!r} "
                                  f"({type(err).__name__}: {' '.join(str(err).split())})") from None
    return ckpt


def save_checkpoint(path, model, optimizer=None, scheduler=None, epoch: int = 0,
                    train_config: dict | None = None, extra: dict | None = None) -> None:
    """Write a checkpoint atomically (see the module docstring for its contents)."""
    model = getattr(model, "module", model)
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": _plain(model.config.to_dict()),
        "model_state": dict(model.state_dict()),
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "train_config": _plain(dict(train_config or {})),
        "dtype": str(model.tau_m.dtype).replace("torch.", ""),
        "best_test_acc": None,
    }
    ckpt.update(extra or {})
    _pack(ckpt, model, optimizer)
    ckpt[DIGEST_KEY] = digest(ckpt)       # of what is stored: checked when it is read
    atomic_torch_save(ckpt, path)


def read_checkpoint(path, device="cpu") -> dict:
    """``torch.load`` a checkpoint safely (``weights_only``), check its format, and return
    it with dense tensors (as a version-1 checkpoint)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give a checkpoint file "
                              f"(e.g. {path / 'best.pth'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    is_zip = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():   # e.g. "Detected pickle protocol 4": the error says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text or "weights_only" in text:
            if is_zip or head[:1] == b"\x80":
                raise ForeignPickleError(
                    f"{path}: refused to load: the file holds Python objects whose loading "
                    "would run code (weights_only=True); nothing in it was executed — it is not "
                    "a checkpoint of this project") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint file") from None
    except Exception as err:  # truncated zip, bad magic, EOF, ...
        if head[:2] == b"PK" or is_zip:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint file "
                                  f"({type(err).__name__})") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint file") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = (" (it looks like a bare state_dict; this project's checkpoints are written by "
                "RSNN_bfd_SpikingBased.py / RSNN_bfd_RealValued.py)"
                if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor)
                                                           for v in ckpt.values()) else "")
        raise CheckpointError(f"{path}: not a checkpoint of the barrel-cortex RSNN{hint}")
    if ckpt.get("version", 1) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} is newer than "
                              f"this code reads ({VERSION}); update the code")
    for key in ("model_config", "model_state"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{path}: malformed checkpoint (missing {key!r})")
    verify_digest(ckpt, path)
    return _unpack(ckpt, path)


def model_config_of(ckpt: dict, path):
    """The ModelConfig stored in ``ckpt``; keys that are no longer part of the architecture
    (``engine``, now a run-time choice) are dropped."""
    try:
        return ModelConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: checkpoint of another architecture or version "
                              f"(model_config: {' '.join(str(err).split())})") from None


def load_checkpoint(path, device="cpu"):
    """Build the model from a checkpoint and load its weights.

    Returns ``(model, ckpt)``; the model is on ``device`` in the stored dtype, in eval mode.
    A network saved by the published scripts (``torch.save(model)``, plain or xz) is read by
    :mod:`rsnn_bfd.io.published` without running code and converted; its ``ckpt`` has the paper's
    ``train_config`` and ``published_source``.
    Raises :class:`CheckpointError` (one-line message) for a missing file, a file that is not
    a checkpoint, a truncated or corrupt file, a file whose content differs from its digest,
    a checkpoint of another architecture, a pickle that would run code (refused by
    ``weights_only=True``; nothing is executed), or a network that breaks its invariants
    (NaN or infinite parameters, weights outside [0, 1] or off their masks, ...:
    :func:`rsnn_bfd.io.integrity.check_network`).
    """
    if Path(path).is_file() and is_xz(path):
        return _checked(*load_published(path, device), path)
    try:
        ckpt = read_checkpoint(path, device)
    except ForeignPickleError:
        if not zipfile.is_zipfile(path):
            raise
        # perhaps a network of the published scripts (torch.save(model)): read by a restricted
        # unpickler that runs no code; any other pickle is refused by it, naming a global
        return _checked(*load_published(path, device), path)
    config = model_config_of(ckpt, path)
    dtype = DTYPES.get(ckpt.get("dtype", "float32"), torch.float32)
    model = build_model(config, device=device, dtype=dtype)
    state = ckpt["model_state"]
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys, e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys, e.g. {unexpected[0]!r}")
        raise CheckpointError(f"{path}: checkpoint of another architecture ({'; '.join(parts)})")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(own[k].shape):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise CheckpointError(f"{path}: checkpoint of another architecture ({k!r} has shape "
                                  f"{shape}, the model expects {tuple(own[k].shape)})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} parameter(s) hold NaN or infinite values "
                              f"(e.g. {bad[0]!r}): the run that wrote it diverged; use an earlier "
                              "checkpoint")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: checkpoint of another architecture "
                              f"({str(err).splitlines()[0]})") from None
    return _checked(model, ckpt, path)


def _checked(model, ckpt: dict, path):
    """``(model, ckpt)`` once the network passed its invariants (:func:`check_network`), with
    the decision rule of its run (the loss it was trained with)."""
    check_network(model, path)
    tc = ckpt.get("train_config")
    loss = tc.get("loss", "published") if isinstance(tc, dict) else "published"
    model.decision = loss if loss in LOSSES else "published"
    model.eval()
    return model, ckpt


def check_checkpoint(path) -> str:
    """Read ``path`` as every command does (:func:`load_checkpoint`: its digest, the
    network's invariants); one line saying that it is intact, or :class:`CheckpointError`."""
    model, ckpt = load_checkpoint(path)
    stored = ckpt.get(DIGEST_KEY)
    how = (f"the digest of its {len(stored['entries'])} entries matches" if stored else
           "it holds no digest (written by the published scripts or before digests were "
           "stored)")
    return (f"{path}: intact: {how}, and the network ({model.config.encoder}, "
            f"{model.recurrent.nnz:,} recurrent connections) obeys its constraints")


# ------------------------------------------------------------------------- convert
def convert_network(src, out, data_dir: str | None = None, overwrite: bool = False,
                    log=print) -> dict:
    """Write ``src`` (published pickle or checkpoint) to ``out`` as a weights-only checkpoint;
    returns what was recorded (``source``, ``dataset``) with the sizes and seconds."""
    src, out = Path(src), Path(out)
    if out.is_dir():
        raise ValueError(f"OUT {out} is a folder; give a file name, e.g. {out / 'network.pth'}")
    if out.is_symlink():
        raise ValueError(f"OUT {out} is a symbolic link; it is not replaced: give another path")
    check_writable_dir(out.parent, "OUT's folder")
    # the writer's lock of OUT's folder, before the first look at OUT, to the end
    with DirectoryLock(out.parent, "checkpoint.py convert", "OUT"):
        return _convert(src, out, data_dir, overwrite, log)


def _convert(src: Path, out: Path, data_dir, overwrite: bool, log) -> dict:
    import time

    from rsnn_bfd.common import sha256_of
    from rsnn_bfd.data.files import dataset_identity

    if out.exists() and out.resolve() == (src.resolve() if src.exists() else None):
        raise ValueError(f"OUT {out} is the source file; give another path")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; give another OUT, or --overwrite to replace it")
    t0 = time.time()
    model, ckpt = load_checkpoint(src)
    dataset = ckpt.get("dataset") or {}
    if data_dir:
        found = dataset_identity(data_dir)
        if not found:
            raise ValueError(f"--data-dir {data_dir} holds no snn_train3.h5 / snn_test3.h5")
        if dataset and dataset != found:
            raise ValueError(f"{src} records another dataset than --data-dir {data_dir}")
        dataset = found
    if ckpt.get("published_source"):       # hashed when it was read
        source = dict(ckpt["published_source"], file=str(src), epoch=ckpt.get("epoch"))
    else:
        source = {"file": str(src), "sha256": sha256_of(src), "epoch": ckpt.get("epoch")}
    extra = {k: ckpt[k] for k in ("best_test_acc", "test_acc", "metrics") if k in ckpt}
    extra.update(source=source, dataset=dataset)
    save_checkpoint(out, model, None, None, int(ckpt.get("epoch") or 0),
                    ckpt.get("train_config"), extra)
    result = {"source": source, "dataset": dataset, "seconds": time.time() - t0,
              "bytes_in": src.stat().st_size, "bytes_out": out.stat().st_size}
    log(f"wrote {out} ({result['bytes_out'] / 1e6:.1f} MB; {src} {result['bytes_in'] / 1e6:.1f} "
        f"MB) in {result['seconds']:.1f} s")
    return result
