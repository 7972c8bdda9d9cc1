"""A restricted unpickler for the published scripts' whole-object pickles: it runs no code.

The published scripts save a network with ``torch.save(model, path)``: a pickle of the whole
``SRNN_bfd`` object (``RSNN_bfd_0.03b_0.05w.pth``, ``RSNN_bfd_0.04b_0.06w.pth``, written on a
GPU). Loading such a file with plain ``torch.load`` would import the classes it names and run
whatever the pickle says; ``weights_only=True`` refuses it. :func:`read_published` reads it
with its own restricted unpickler instead:

- The only globals admitted are those such a file needs: tensor and parameter rebuilding,
  the storage types, ``OrderedDict`` and ``set``, NumPy arrays and scalars of numbers (and
  ``_codecs.encode``, by which protocol 2 writes bytes), and the published classes
  (``SRNN_bfd`` under ``__main__`` or a published script's module, ``SparseLinear2``) and the
  ``torch.nn`` containers it uses, as *inert stand-ins* that only keep the state the pickle
  hands them. Any other global is refused with one line naming it; nothing is imported or
  called for it.
- Tensor data is read from the zip archive's records and placed on the CPU, whatever device
  (``cuda:0``) the file names.

:mod:`rsnn_bfd.io.published` converts the stand-in into this project's network.
"""
from __future__ import annotations

import codecs
import hashlib
import io
import lzma
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from rsnn_bfd.io.errors import CheckpointError

# The module names under which SRNN_bfd is pickled: the script that was run (__main__), or a
# published script imported by name.
PUBLISHED_MODULES = ("__main__", "RSNN_bfd_SpikingBased", "RSNN_bfd_RealValued",
                     "RSNN_bfd_whisker_deprivation", "utils")


PUBLISHED_CLASS = "SRNN_bfd"


XZ_MAGIC = b"\xfd7zXZ\x00"


class PublishedError(CheckpointError):
    """A file that is not a published network this project can read (one-line message)."""


# ----------------------------------------------------------------------------- stand-ins
_STAND_INS: dict[tuple[str, str], type] = {}


class InertModule:
    """A published module as data: keeps the state the pickle gives it and runs nothing.

    ``kind``: the pickled class as ``module.name``; ``state``: its ``__dict__`` (for an
    ``nn.Module``: ``_parameters``, ``_modules`` and the plain attributes).
    """
    kind = "?"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise PublishedError(f"{self.kind} holds a state of type {type(state).__name__}, "
                                 "not the attributes of a module")
        self.state = state

    def module(self, name: str) -> "InertModule":
        return self.state.get("_modules", {}).get(name)

    def parameter(self, name: str):
        return self.state.get("_parameters", {}).get(name)

    def __repr__(self):
        return f"<inert {self.kind}>"


def _stand_in(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STAND_INS:
        _STAND_INS[key] = type(name, (InertModule,), {"kind": f"{module}.{name}"})
    return _STAND_INS[key]


def _inert_kinds() -> set[tuple[str, str]]:
    kinds = {(m, PUBLISHED_CLASS) for m in PUBLISHED_MODULES}
    kinds |= {("SparseLinear", "SparseLinear2"),
              ("torch.nn.modules.linear", "Linear"),
              ("torch.nn.modules.container", "ModuleList"),
              ("torch.nn.modules.container", "Sequential")}
    return kinds


# ------------------------------------------------------------- admitted callables (checked)
class _StorageType:
    """The pickled ``torch.FloatStorage`` etc.: only its dtype is used."""

    def __init__(self, dtype):
        self.dtype = dtype


_STORAGES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64,
             "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
             "LongStorage": torch.int64, "IntStorage": torch.int32,
             "ShortStorage": torch.int16, "CharStorage": torch.int8,
             "ByteStorage": torch.uint8, "BoolStorage": torch.bool}


def _no_hooks(hooks):
    if hooks:   # a hook is a callable: none may come from a file
        raise PublishedError("the file attaches hooks to a tensor; a saved network has none")


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                    metadata=None):
    """``torch._utils._rebuild_tensor_v2`` on a storage this module read (a flat tensor)."""
    _no_hooks(hooks)
    if not isinstance(storage, torch.Tensor):
        raise PublishedError("a tensor of the file has no storage record")
    try:
        return torch.as_strided(storage, tuple(size), tuple(stride), int(offset)).clone()
    except (RuntimeError, TypeError, ValueError) as err:
        raise PublishedError(f"a tensor of the file lies outside its storage "
                             f"({' '.join(str(err).split())})") from None


def _rebuild_parameter(data, requires_grad=True, hooks=None):
    _no_hooks(hooks)
    return data


def _numeric_dtype(*args):
    dtype = np.dtype(*args) if args and isinstance(args[0], str) else None
    if dtype is None or dtype.kind not in "biuf":
        raise PublishedError(f"the file holds a NumPy array of dtype {args[:1]!r}; a published "
                             "network holds numbers only")
    return dtype


def _reconstruct(cls, shape, typecode):
    if cls is not np.ndarray:
        raise PublishedError("the file rebuilds a NumPy object that is not an array")
    return np.ndarray.__new__(np.ndarray, shape, typecode)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise PublishedError("the file holds a NumPy scalar that is not a number")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PublishedError("the file encodes bytes in an unexpected way")
    return codecs.encode(text, encoding)


def _admitted() -> dict[tuple[str, str], object]:
    table = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
             ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
             ("collections", "OrderedDict"): OrderedDict,
             ("__builtin__", "set"): set, ("builtins", "set"): set,
             ("_codecs", "encode"): _encode,
             ("numpy", "dtype"): _numeric_dtype,
             ("numpy", "ndarray"): np.ndarray}
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(core, "_reconstruct")] = _reconstruct
        table[(core, "scalar")] = _np_scalar
    for name, dtype in _STORAGES.items():
        table[("torch", name)] = _StorageType(dtype)
    return table


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles the ``data.pkl`` of a ``torch.save`` zip archive, admitting only the globals
    of :func:`_admitted` and the inert stand-ins; storages come from the archive."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.table, self.inert = _admitted(), _inert_kinds()
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module, name):
        if (module, name) in self.inert:
            return _stand_in(module, name)
        if (module, name) in self.table:
            return self.table[(module, name)]
        raise PublishedError(f"{self.path}: refused to load: the file names the global "
                             f"{module}.{name}, whose loading could run code and which "
                             "neither a checkpoint of this project nor a published network "
                             "holds; nothing in it was executed")

    def persistent_load(self, pid):
        try:
            tag, storage_type, key, _location, numel = pid
        except (TypeError, ValueError):
            raise PublishedError(f"{self.path}: malformed storage record {pid!r:.60}") from None
        if tag != "storage" or not isinstance(storage_type, _StorageType):
            raise PublishedError(f"{self.path}: malformed storage record {pid!r:.60}")
        key = str(key)
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}/data/{key}")
            except KeyError:
                raise PublishedError(f"{self.path}: truncated or corrupt file (storage {key} "
                                     "is missing)") from None
            dtype = storage_type.dtype
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != int(numel) * itemsize:
                raise PublishedError(f"{self.path}: truncated or corrupt file (storage {key} "
                                     f"has {len(raw)} bytes, {int(numel) * itemsize} expected)")
            self.storages[key] = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else \
                torch.empty(0, dtype=dtype)
        return self.storages[key]


# ----------------------------------------------------------------------------------- read
def _file_bytes(path: Path) -> tuple[bytes, str]:
    """The archive's bytes (decompressed when xz) and the sha256 of the file as it is."""
    raw = path.read_bytes()
    sha256 = hashlib.sha256(raw).hexdigest()
    if raw.startswith(XZ_MAGIC):      # e.g. a published_*.pth.xz
        try:
            raw = lzma.decompress(raw)
        except lzma.LZMAError:
            raise PublishedError(f"{path}: truncated or corrupt xz file") from None
    return raw, sha256


def read_published(path) -> InertModule:
    """The inert ``SRNN_bfd`` stand-in of a published ``torch.save(model)`` file (plain or xz).

    Raises :class:`PublishedError` (one line) for a file that is not a zip archive of
    ``torch.save``, is truncated, names a global outside the admitted set, or holds another
    object than ``SRNN_bfd``. Nothing in the file is executed.
    """
    path = Path(path)
    raw, sha256 = _file_bytes(path)
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise PublishedError(f"{path}: not a torch.save archive (no data.pkl)")
        prefix = pkl.split("/")[0]
        if f"{prefix}/byteorder" in names and archive.read(f"{prefix}/byteorder") != b"little":
            raise PublishedError(f"{path}: written on a big-endian machine, which is not "
                                 "supported")
        data = archive.read(pkl)
        root = _RestrictedUnpickler(data, archive, prefix, path).load()
    except PublishedError:
        raise
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, OSError) as err:
        raise PublishedError(f"{path}: truncated or corrupt file ({type(err).__name__})") from None
    except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, KeyError,
            IndexError, RuntimeError) as err:
        raise PublishedError(f"{path}: truncated or corrupt file ({type(err).__name__}: "
                             f"{' '.join(str(err).split())[:120]})") from None
    if not (isinstance(root, InertModule) and root.kind.endswith("." + PUBLISHED_CLASS)):
        kind = root.kind if isinstance(root, InertModule) else type(root).__name__
        raise PublishedError(f"{path}: the file holds a {kind}, not a published "
                             f"{PUBLISHED_CLASS} network")
    root.sha256 = sha256     # of the file read, recorded by convert
    return root


def is_xz(path) -> bool:
    """Whether ``path`` is xz-compressed (as the golden ``published_*.pth.xz``)."""
    with open(path, "rb") as fh:
        return fh.read(len(XZ_MAGIC)) == XZ_MAGIC
