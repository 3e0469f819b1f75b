"""Where a model runs: the device `--device` names, this rank's device, and bf16 autocast."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from ..errors import UserError
from .options import AUTOCAST


def autocast(device: torch.device, mode: str = "auto"):
    """bf16 autocast for a forward pass (weights and optimiser stay float32): `mode` "auto" on GPUs
    only, "on" on CPUs too, "off" never (`RuntimeOptions.autocast`)."""
    if mode not in AUTOCAST:
        raise ValueError(f"autocast must be one of {', '.join(AUTOCAST)}, got {mode!r}")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def resolve_device(spec: str = "auto") -> torch.device:
    """What `--device` names: ``auto`` is this rank's GPU (``cuda:LOCAL_RANK``) when torch sees one,
    else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` are taken as given, once checked."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {spec}: torch sees no CUDA device here (a CPU build of torch, or no GPU)"
            )
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def rank_device() -> torch.device:
    """Where this rank's model lives under torchrun: ``cuda:LOCAL_RANK`` under nccl, the CPU under
    gloo. One process trains wherever its model was put (`--device`)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
