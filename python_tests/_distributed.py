"""Multi-process test workers without ports: ``run_workers(fn, world, tmp_dir, *args)`` starts ``world`` processes
that meet through a FileStore in a fresh folder under ``tmp_dir`` (no free-port race, nothing left listening),
run ``fn(rank, world, *args)`` under a gloo process group, meet at a barrier, destroy the group, and are joined.

Why each step: a rank that tears its group down (or exits) while a peer still uses the connection can kill the peer
(``terminate called without an active exception``, SIGABRT in a gloo thread), so every rank reaches the barrier
before any rank destroys the group; a rank that fails skips the barrier and destroys its group at once, so its
peers fail instead of hanging, and ``torch.multiprocessing`` ends the others and re-raises the failure.
``fn`` must be a module-level function (the workers are spawned, not forked) and write its results to files.
"""
from __future__ import annotations

import datetime
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = datetime.timedelta(seconds=300)  # a collective that waits longer than this fails instead of hanging


def _entry(rank: int, fn, world: int, init_method: str, args: tuple) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world, timeout=TIMEOUT)
    ok = False
    try:
        fn(rank, world, *args)
        ok = True
    finally:
        if ok and dist.is_initialized():
            dist.barrier()
        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(fn, world: int, tmp_dir, *args) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` spawned gloo processes and join them (see the module doc)."""
    store = os.path.join(tempfile.mkdtemp(prefix="filestore-", dir=str(tmp_dir)), "store")  # must not exist yet
    mp.start_processes(_entry, args=(fn, world, f"file://{store}", args), nprocs=world, join=True,
                       start_method="spawn")
