"""Small helpers shared by every script: device choice, seeding of generators, worker
processes, the machine a result came from (writing files: :mod:`rsnn_bfd.writing`).

Nothing here touches the global RNG.
"""
from __future__ import annotations

import hashlib
import os
import sys

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


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system says)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cap_workers(n: int | None, flag: str, log=None) -> int:
    """A count of threads or processes for ``flag``: ``None`` or 0 gives every core; more than
    the machine's cores is capped to them, with a notice to ``log`` (default: stderr), since
    more only slow the work down (and thousands of processes can exhaust the memory). Below 0
    is a ``ValueError`` naming the flag."""
    cores = machine_cores()
    if n is None or n == 0:
        return cores
    if n < 0:
        raise ValueError(f"{flag} must be >= 1 (0: all {cores} cores), got {n}")
    if n > cores:
        msg = f"note: {flag} {n} is more than this machine's {cores} cores; using {cores}"
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)
        return cores
    return int(n)


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
