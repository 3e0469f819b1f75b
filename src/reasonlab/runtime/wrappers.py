"""What DDP and FSDP2 make of a model: telling them apart and getting the module back."""

from __future__ import annotations


def is_fsdp(model) -> bool:
    return hasattr(model, "unshard") and hasattr(model, "reshard")


def unwrap(model):
    """The module inside a DDP wrapper (FSDP2 works in place: the model itself)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
