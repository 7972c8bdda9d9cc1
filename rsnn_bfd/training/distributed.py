"""Multi-process training under torchrun: the process group, and each rank's share of a batch.

``torchrun --nproc_per_node K script.py ...`` starts K processes; each takes a contiguous
shard of every global batch (:func:`shard`), with its rows of the batch's initial state
(:func:`shard_state`), so that K processes give the metrics and weights of one. NCCL on
GPUs, gloo on the CPU; only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from rsnn_bfd.common import select_device


@dataclass
class Dist:
    """Process-group facts: ``world`` processes, this one is ``rank`` (0 writes files)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.active:
            torch.distributed.barrier()

    def all_sum(self, values, device) -> list[float]:
        """Sum a list of floats over all processes (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.active:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def average_grads(self, params) -> None:
        """Average the gradients of ``params`` over all processes, as DDP does for a forward
        it ran (for a step whose gradient did not come through DDP)."""
        if self.active:
            for p in params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(self.world)


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Start the process group under torchrun (``WORLD_SIZE`` > 1) and choose the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), select_device(device_name)
    import datetime

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        # long timeout: rank 0 may be generating the dataset while the others wait
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=3))
    return Dist(rank, world, local_rank, True), device


def shard_bounds(n: int, dist: Dist) -> tuple[int, int]:
    """``[lo, hi)`` of this rank's contiguous share of ``n`` items (sizes differ by <= 1)."""
    w, r = dist.world, dist.rank
    lo = r * (n // w) + min(r, n % w)
    return lo, lo + n // w + (1 if r < n % w else 0)


def shard(batch: list[int], dist: Dist) -> list[int]:
    """This rank's contiguous share of a global batch."""
    lo, hi = shard_bounds(len(batch), dist)
    return batch[lo:hi]


def shard_state(model, global_n: int, lo: int, hi: int, device):
    """Rows ``lo:hi`` of the initial state of a whole global batch of ``global_n``.

    The published initial state is drawn per batch (sample i's state depends on its row), so
    a rank must use its rows of the global batch's state to match a single-process run.
    """
    from rsnn_bfd.network.model import InitialState
    full = model.initial_state(global_n, device=device)
    return InitialState(*(t[lo:hi] for t in full))
