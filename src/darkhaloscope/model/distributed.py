"""torchrun / DDP plumbing of the training loop (``WORLD_SIZE > 1``); a no-op in one process.

- :func:`init_distributed`: join the process group torchrun describes; (rank, world_size).
- :func:`rank_world`: (rank, world_size) of an initialised process group, else (0, 1).
- :func:`is_main_process`: rank 0, or no process group (only it writes checkpoints and metrics).
- :func:`barrier`: wait for every rank (world_size > 1).
- :func:`sync_optimizer`: after an epoch under DDP's join, every rank gets the optimizer state
  of the rank whose model the join kept.

``torch.distributed`` is imported where it is used, so importing this module costs nothing.
"""

from __future__ import annotations

import os

import torch


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): nccl on GPU, gloo on CPU.

    Returns (rank, world_size); (0, 1) outside torchrun.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def rank_world() -> tuple[int, int]:
    """(rank, world_size) of the initialised process group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier(world: int) -> None:
    """Wait for every rank (a no-op for ``world <= 1``)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def sync_optimizer(opt, n_steps: int, rank: int, world: int, device) -> None:
    """After an epoch under DDP's join: give every rank the optimizer state of the rank whose
    model the join kept.

    A rank that ran out of batches early skipped the other ranks' last optimizer steps; the
    join then copies the model of the last rank to finish (the highest rank among those with
    the most steps) to every rank, but not the optimizer's state (AdamW moments, step count).
    Without this the ranks' optimizers, and with them their weights, drift apart next epoch.
    """
    import torch.distributed as dist

    steps = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(steps, torch.tensor([n_steps], dtype=torch.int64, device=device))
    steps = [int(s) for s in steps]
    if min(steps) == max(steps):
        return  # every rank took the same steps: the states are already identical
    src = max(r for r, s in enumerate(steps) if s == max(steps))  # DDP's authoritative rank
    obj = [_cpu(opt.state_dict()) if rank == src else None]  # load_state_dict moves it to the params' device
    dist.broadcast_object_list(obj, src=src)
    if rank != src:
        opt.load_state_dict(obj[0])


def _cpu(obj):
    """A copy of a (nested) optimizer state with every tensor on the CPU."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


__all__ = ["init_distributed", "rank_world", "is_main_process", "barrier", "sync_optimizer"]
