"""Small helpers shared by every script: device choice, atomic writes, seeding of generators.

Nothing here touches the global RNG.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import torch


def select_device(name: str | None = "auto") -> torch.device:
    """The device to run on: CUDA when present and the CPU otherwise.

    ``name`` overrides the choice: ``"auto"`` (or ``None``), ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"``. Asking for CUDA on a machine without it is an error, not a silent fallback.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; "
                         "use --device cpu (or auto)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device type {device.type!r} is not supported: use 'cpu' or 'cuda'")
    return device


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    A run killed half-way leaves the previous file intact (the rename is atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600 files; give the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text: str, path) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(obj, path) -> None:
    """Write JSON atomically (indented, for people to read)."""
    atomic_write_text(json.dumps(obj, indent=2) + "\n", path)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A dedicated ``torch.Generator`` seeded with ``seed`` (never the global one)."""
    return torch.Generator(device=device).manual_seed(int(seed))
