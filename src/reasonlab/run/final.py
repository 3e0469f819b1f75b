"""The end of a training run: its model saved where `--model OUT` finds it."""

from __future__ import annotations

from ..model import save_checkpoint
from ..model.export import save_adapter
from ..outdir import RunFolder
from ..runtime import plain_model, world


def save_trained(model, tokenizer, folder: RunFolder, record: dict, into: bool = False):
    """Save a trained `model` to folder/model with `record` (what trained it), and a LoRA adapter
    also alone, in peft's format, beside it; returns the plain model (LoRA merged, FSDP2 shards
    gathered). Every rank calls it (the gathering is a collective); rank 0 writes."""
    rank = world()[0]
    if rank == 0:
        save_adapter(model, folder.path)
    final = plain_model(model)
    if rank == 0:
        save_checkpoint(folder.model, final, tokenizer, record, into=into)
    return final
