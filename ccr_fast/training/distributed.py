"""torch.distributed for the training loop: set-up under ``torchrun``, the device of a rank, and rank-0 decisions
broadcast to every rank (the run folder, validation scores). Only rank 0 writes files and prints."""
from __future__ import annotations

import os
from typing import Any, Tuple

import torch


_OWNED = False  # True while the default process group is one that setup() created


def setup(device: str) -> Tuple[int, int]:
    """``(rank, world)``; initialises the default process group when ``WORLD_SIZE > 1`` and none exists yet
    (NCCL on CUDA, gloo on CPU). A group created here is torn down by :func:`teardown`; a group the caller
    created stays the caller's."""
    global _OWNED
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
        _OWNED = True
    return rank_world()


def teardown(ok: bool = True) -> None:
    """Destroy the process group :func:`setup` created (none other). ``ok``: every rank got here normally, so
    they first meet at a barrier and no rank leaves while another still talks to it (a rank that exits while a
    peer's gloo threads still use the connection can abort the peer). After an error the barrier is skipped (a
    failed rank may never arrive) and the group is destroyed at once, which makes waiting peers fail, not hang."""
    global _OWNED
    if not (_OWNED and torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    try:
        if ok:
            torch.distributed.barrier()
    finally:
        _OWNED = False
        torch.distributed.destroy_process_group()


def rank_world() -> Tuple[int, int]:
    """``(rank, world)`` of the default process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def device_for(name: str, rank: int) -> torch.device:
    """``"auto"`` → ``cuda:<rank mod #gpus>`` when CUDA is visible, else CPU; ``"cuda"`` without CUDA raises."""
    if name == "auto":
        return torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but no CUDA device is visible")
    return torch.device(name)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (identity without a process group)."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if rank_world()[1] > 1:
        torch.distributed.barrier()
