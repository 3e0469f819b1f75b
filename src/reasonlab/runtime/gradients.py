"""Gradients across ranks: when they are reduced, whether they are finite, their clipped norm."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .collectives import any_rank, world
from .wrappers import is_fsdp


@contextmanager
def gradient_sync(model, sync: bool):
    """Accumulating micro-batches: reduce gradients over ranks only on the last backward."""
    from torch.nn.parallel import DistributedDataParallel

    if sync:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def grads_finite(model) -> bool:
    """Every gradient finite, on every rank (FSDP2 ranks hold different shards: they must agree)."""
    ok = all(torch.isfinite(local_tensor(p.grad)).all() for p in model.parameters() if p.grad is not None)
    return not any_rank(not ok) if world()[1] > 1 else ok


def clip_grad_norm(model, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
