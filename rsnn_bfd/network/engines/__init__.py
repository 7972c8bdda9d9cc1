"""Simulation engines: named backends that run the thalamus and the cortex over a sequence.

    reference   engines/reference.py    the readable specification: per-step autograd,
                                        population by population (any device)
    numba       engines/numba_cpu.py    event-driven numba kernels with a hand-written BPTT
                                        backward (CPU only)
    torch       engines/torch_dense.py  the same algorithm with dense torch operations, in
                                        CUDA graphs on a GPU (any device; eager on the CPU)
    auto        numba on the CPU, torch on CUDA (:func:`resolve` says which)

The contract. The model hands an engine one :class:`Network` record (written by
``BarrelCortexRSNN.network()``): weights, masks, time constants, the readout and the
constants; engines read nothing else from the model, and keep their caches (sparse index
structures, masks) in their own module, never on the model. Both functions of an engine take
the :class:`EngineOptions` of the run:

    run_thalamus(net, current (T, batch, 200), state, options) -> spikes (T, batch, 200)
    run_cortex(net, thal_spikes (T, batch, 200), state, record_spikes, record_mem, options)
        -> (logits (T-1, batch, 3), spikes (T, batch, 4218) or None,
            mem (T, batch, 4218) or None)

``state`` is the model's ``InitialState``. ``logits`` are the readout's logits at
t = 1..T-1 (the published readout skips t = 0); the model turns them into the summed softmax.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch

NAMES = ("auto", "reference", "numba", "torch")
_MODULES = {"reference": ".reference", "numba": ".numba_cpu",
            "torch": ".torch_dense"}


class Network(NamedTuple):
    """Everything an engine reads from the model (N = 4218 cortical neurons)."""
    offsets: tuple            # population boundaries (14,): population i is [off[i], off[i+1])
    recurrent: torch.Tensor   # (N, N) [post, pre] non-negative weights, zero off the mask
    recurrent_mask: torch.Tensor   # (N, N) bool
    pre_sign: torch.Tensor    # (N,) +1 excitatory / -1 inhibitory presynaptic neuron
    thalamic: torch.Tensor    # (N, 200) non-negative thalamocortical weights
    thalamic_mask: torch.Tensor    # (N, 200) bool
    tau_m: torch.Tensor       # (N,) cortical membrane time constants (steps)
    tau_adp: torch.Tensor     # (N,) cortical adaptation time constants
    thal_tau_m: torch.Tensor  # (200,)
    thal_tau_adp: torch.Tensor     # (200,)
    readout_index: torch.Tensor    # (3606,) the neurons read out (excitatory)
    readout: tuple            # (w1 (128, 3606), b1 (128,), w2 (3, 128), b2 (3,)), no nonlinearity
    init_b: float             # baseline threshold b0
    beta: float               # adaptation strength
    n_classes: int
    surrogate: tuple = (0.5, 0.5, 0.0)  # (sigma, scale, cutoff) of the pseudo-derivative


def signed_recurrent(net: Network) -> torch.Tensor:
    """(N, N) effective recurrent weights ``weight * mask * sign[pre]``."""
    return net.recurrent * net.recurrent_mask * net.pre_sign


def thalamic_effective(net: Network) -> torch.Tensor:
    """(N, 200) effective thalamocortical weights ``weight * mask``."""
    return net.thalamic * net.thalamic_mask


def readout_logits(net: Network, spikes: torch.Tensor) -> torch.Tensor:
    """Readout logits per step. spikes: (T', batch, N) -> (T', batch, n_classes)."""
    w1, b1, w2, b2 = net.readout
    # index_select, not spikes[..., index]: on CUDA the backward of advanced indexing sorts
    # the indices, which costs more than the rest of the readout
    hidden = torch.nn.functional.linear(spikes.index_select(-1, net.readout_index), w1, b1)
    return torch.nn.functional.linear(hidden, w2, b2)


# how the numba engine forms the recurrent input (EngineOptions.recurrent_input)
RECURRENT_INPUT_MODES = ("auto", "scatter", "gather")


@dataclass(frozen=True)
class EngineOptions:
    """Run-time options of the engines.

    ``chunk``: steps per chunk (numba: the checkpoint interval of the backward, default 32;
    torch: steps per CUDA-graph replay, default 16). ``cuda_graphs``: replay the torch
    engine's chunks from captured CUDA graphs (on CUDA). ``recurrent_input``: how the numba
    engine's forward forms the recurrent input, ``scatter`` from the neurons that spiked,
    ``gather`` over every neuron's incoming connections, or ``auto`` (per chunk, whichever
    the previous chunk's firing rate makes cheaper); the results are bit-identical.
    """
    chunk: int | None = None
    cuda_graphs: bool = True
    recurrent_input: str = "auto"

    def __post_init__(self):
        if self.chunk is not None and int(self.chunk) < 1:
            raise ValueError(f"engine chunk must be >= 1, got {self.chunk}")
        if self.recurrent_input not in RECURRENT_INPUT_MODES:
            raise ValueError(f"engine recurrent_input must be one of {RECURRENT_INPUT_MODES}, "
                             f"got {self.recurrent_input!r}")

    @classmethod
    def from_env(cls, environ=None) -> "EngineOptions":
        """Options from ``ENGINE_CHUNK``, ``ENGINE_CUDA_GRAPHS`` (0 / 1) and
        ``ENGINE_RECURRENT_INPUT`` (auto / scatter / gather), read when called (at the start
        of a run), not at import."""
        env = os.environ if environ is None else environ
        chunk = env.get("ENGINE_CHUNK") or None
        graphs = env.get("ENGINE_CUDA_GRAPHS", "1")
        if graphs not in ("0", "1"):
            raise ValueError(f"ENGINE_CUDA_GRAPHS must be 0 or 1, got {graphs!r}")
        mode = env.get("ENGINE_RECURRENT_INPUT") or "auto"
        if mode not in RECURRENT_INPUT_MODES:
            raise ValueError(f"ENGINE_RECURRENT_INPUT must be one of "
                             f"{', '.join(RECURRENT_INPUT_MODES)}, got {mode!r}")
        try:
            steps = int(chunk) if chunk else None
            if steps is not None and steps < 1:
                raise ValueError
        except ValueError:
            raise ValueError(f"ENGINE_CHUNK must be a positive integer, got {chunk!r}") from None
        return cls(chunk=steps, cuda_graphs=graphs == "1", recurrent_input=mode)


def resolve(name: str, device) -> str:
    """The engine that runs for ``name`` on ``device``: ``auto`` picks numba on the CPU and
    torch elsewhere; a named engine is never swapped for another (numba off the CPU is an
    error). ``fast``, the name of older versions, means ``auto``."""
    device = torch.device(device)
    if name in ("auto", "fast"):
        return "numba" if device.type == "cpu" else "torch"
    if name not in _MODULES:
        raise ValueError(f"engine must be one of {NAMES}, got {name!r}")
    if name == "numba" and device.type != "cpu":
        raise ValueError(f"the numba engine runs on the CPU only, not on {device}; use "
                         "--engine torch or auto")
    return name


def get(name: str):
    """The module of the engine ``name`` (not ``auto``: :func:`resolve` it first)."""
    if name not in _MODULES:
        raise ValueError(f"engine must be one of {tuple(_MODULES)}, got {name!r}")
    return importlib.import_module(_MODULES[name], __name__)
