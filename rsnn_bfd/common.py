"""Small helpers shared by every script: device choice, atomic writes, seeding of generators.

Nothing here touches the global RNG.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch


def select_device(name: str | None = "auto") -> torch.device:
    """The device to run on: CUDA when present and the CPU otherwise.

    ``name`` overrides the choice: ``"auto"`` (or ``None``), ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"``. Asking for a device that is not there (CUDA on a machine without it, a GPU
    index beyond the last, ``cpu:N``) is an error naming ``--device``, not a silent fallback.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device: unknown device {name!r}: use 'auto', 'cpu', 'cuda' or "
                         "'cuda:N'") from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: device type {device.type!r} is not supported: use 'cpu' "
                         "or 'cuda'")
    if device.type == "cpu" and device.index not in (None, 0):
        raise ValueError(f"--device {name}: there is one CPU device (its cores are threads); "
                         "use --device cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but CUDA is not available here; "
                         "use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                         f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
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


def remove_stale_temps(folder, names) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` left beside ``folder/name`` when a
    process was killed mid-write (``.NAME.*.tmp``). Call it only while no other process can
    be writing there (under the run's lock, or before generating data). Returns the removed
    paths."""
    removed = []
    for name in names:
        for tmp in glob.glob(os.path.join(glob.escape(str(folder)), f".{glob.escape(name)}.*.tmp")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
                removed.append(Path(tmp))
    return removed


def check_writable_dir(path, flag: str = "--out") -> Path:
    """Create ``path`` if needed and check that files can be written there, so that a command
    fails before its long computation rather than after it. Raises ``ValueError`` naming the
    flag."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder; give a folder for the results")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{flag} {path} cannot be written ({err.strerror or err}); "
                         "choose another folder") from None
    return path


class DirectoryLock:
    """An exclusive lock on a folder (``folder/.lock``, ``fcntl.flock``) while a process works
    in it. The kernel releases it when the process ends, however it ends, so a lock left by a
    killed process never blocks the next one. The file holds the holder's process id and
    ``what`` it does, for the message a second process gets."""

    def __init__(self, folder, what: str = "a run"):
        self.folder, self.what, self._fh = Path(folder), what, None

    def acquire(self) -> "DirectoryLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.folder / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            pid, _, what = (fh.read().strip() or "unknown").partition(" ")
            fh.close()
            raise ValueError(f"{self.folder} is in use by process {pid}"
                             + (f" ({what})" if what else "")
                             + "; wait for it to finish or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {self.what}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()   # closing releases the flock
            self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def end_with_parent(parent_pid: int) -> None:
    """Initializer of worker processes: on Linux the kernel ends the worker when its parent
    dies, however it dies (kill -9 included), so interrupted work leaves no workers behind.
    Use as ``ProcessPoolExecutor(initializer=end_with_parent, initargs=(os.getpid(),))``."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:   # the parent died before the request took effect
        os._exit(1)


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


def machine() -> dict:
    """What a result was computed on: the CPU, the instruction set torch's kernels use and the
    library versions. Float results can differ between machines (another CPU takes other
    kernels, whose rounding can change an epoch's accuracy and so the chosen epoch), so a
    result recorded for later comparison carries this."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(), "torch": torch.__version__}
    for name in ("numpy", "numba"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    return info


def sha256_of(path) -> str:
    """Hex sha256 of a file, read in blocks (recorded to identify datasets and sources)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
