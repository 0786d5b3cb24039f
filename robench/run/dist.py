"""torchrun support: deterministic contiguous sample shards per rank; rank 0 gathers and writes.

Without torchrun (WORLD_SIZE unset or 1) every function is a no-op for a single process.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as tdist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return world_size() > 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


@contextmanager
def initialized():
    """Initialise the process group when launched by torchrun (nccl on CUDA, gloo otherwise)."""
    started = False
    if is_distributed() and not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        tdist.init_process_group(backend=backend)
        started = True
    try:
        yield
    finally:
        if started:
            tdist.destroy_process_group()


def shard(lo: int, hi: int, align: int = 1) -> tuple[int, int]:
    """This rank's contiguous part of [lo, hi); boundaries fall on multiples of `align` counted from lo."""
    w, r = world_size(), rank()
    if w == 1:
        return lo, hi
    blocks = -(-(hi - lo) // align)

    def edge(k):
        return min(hi, lo + ((blocks * k) // w) * align)
    return edge(r), edge(r + 1)


def broadcast(obj):
    """rank 0's object, on every rank."""
    if not (is_distributed() and tdist.is_initialized()):
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list | None:
    """Every rank's object, in rank order, on rank 0 (None elsewhere). Single process: [obj]."""
    if not (is_distributed() and tdist.is_initialized()):
        return [obj]
    out = [None] * world_size() if rank() == 0 else None
    tdist.gather_object(obj, out, dst=0)
    return out


def barrier():
    if is_distributed() and tdist.is_initialized():
        tdist.barrier()
