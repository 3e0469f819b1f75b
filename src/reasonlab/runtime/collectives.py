"""torchrun's process group and the few collectives the trainers use; each is the identity (or
(0, 1)) in a single process, so the same code runs on one rank and on N."""

from __future__ import annotations

import os

import torch

from .devices import rank_device, resolve_device


def setup_distributed(device: str = "auto") -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): nccl when the ranks run
    on GPUs (`device` auto or cuda and a GPU is there), gloo on CPUs."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_available() and dist.is_initialized()
    if resolve_device(device).type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless torch.distributed is initialised (torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(value: float) -> float:
    if world()[1] == 1:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=rank_device())
    dist.all_reduce(tensor)
    return float(tensor[0])


def all_gather_list(items: list) -> list:
    """Every rank's list, concatenated in rank order (picklable items)."""
    if world()[1] == 1:
        return list(items)
    import torch.distributed as dist

    gathered = [None] * world()[1]
    dist.all_gather_object(gathered, list(items))
    return [x for part in gathered for x in part]


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's decision, on every rank (stopping on wall time must not split the ranks)."""
    if world()[1] == 1:
        return flag
    import torch.distributed as dist

    tensor = torch.tensor([int(flag)], device=rank_device())
    dist.broadcast(tensor, src=0)
    return bool(tensor[0])


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on at least one."""
    return all_reduce_sum(float(flag)) > 0
