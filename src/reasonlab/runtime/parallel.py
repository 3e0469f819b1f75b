"""A model across torchrun's ranks: DDP or FSDP2 wrapping (`prepare`), full weights for sampling
(`gathered`) and the plain model to save (`plain_model`)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..errors import UserError
from .collectives import world
from .devices import rank_device
from .lora import add_lora, has_lora
from .options import RuntimeOptions
from .wrappers import is_fsdp, unwrap


def prepare(model, options: RuntimeOptions):
    """LoRA (when asked), the rank's device, then DDP or FSDP2 under torchrun. Returns the model to
    train; `unwrap` gives back the module the engine samples from."""
    if options.lora_rank > 0:
        if options.fsdp:
            raise UserError("--lora-rank with --fsdp is not supported: LoRA adapters are small, use DDP")
        model = add_lora(model, options)
    rank, size = world()
    if size == 1:
        if options.fsdp:
            raise UserError("--fsdp needs several processes: launch with torchrun --nproc_per_node N")
        return model
    device = rank_device()
    model = model.to(device)
    if options.fsdp:
        return _shard(model, device, size)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _shard(model, device: torch.device, size: int):
    """`model` sharded in place with FSDP2 over `size` ranks: one unit per transformer block, and
    the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # The mesh on the ranks' own device type: left to itself FSDP2 picks CUDA whenever a GPU is
    # visible, also for gloo ranks on the CPU (`--device cpu` on a GPU machine).
    mesh = init_device_mesh(device.type, (size,))
    for block in _blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    with torch.no_grad():  # one forward through the root first, so FSDP2 initialises from the root
        model(torch.zeros((1, 1), dtype=torch.long, device=device))  # (the engine may call blocks first)
    for unit in model.modules():  # a no-grad forward leaves the root unsharded: reshard it, or the
        if is_fsdp(unit):  # first update would not reach the weights it computes with
            unit.reshard()
    return model


def _blocks(model) -> list:
    """The transformer blocks (one FSDP2 unit each) of the built-in GPT or a Llama-like HF model."""
    inner = model.hf if getattr(model, "kind", "") == "hf" else model
    layers = getattr(getattr(inner, "model", None), "layers", None)
    if layers is None:
        raise UserError("--fsdp: cannot find the model's transformer blocks (model.layers)")
    return list(layers)


@contextmanager
def gathered(model):
    """Full (unsharded) weights inside the block, for the engine and evaluations; no-op unless FSDP2."""
    if not is_fsdp(model):
        yield unwrap(model)
        return
    units = [m for m in model.modules() if is_fsdp(m)]
    model.set_reshard_after_forward(False)
    for unit in units:
        unit.unshard()
    try:
        yield model
    finally:
        model.set_reshard_after_forward(True)
        for unit in units:
            unit.reshard()


def refuse_fsdp_states(save_every: int, fsdp: bool) -> None:
    """Resumable states hold the module's own (unsharded) weights: not written under FSDP2 yet."""
    if save_every and fsdp:
        raise UserError("--save-every/--resume with --fsdp is not supported yet: use DDP, or no states")


def plain_model(model):
    """The model to save: LoRA merged into the weights; FSDP2 shards gathered into a plain copy on
    rank 0 (other ranks get None). A collective under FSDP2: every rank must call it."""
    core = unwrap(model)
    if is_fsdp(core):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(core, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if world()[0] != 0:
            return None
        copy = _fresh_like(core)
        copy.load_state_dict(state)
        return copy
    if has_lora(core):
        core.hf = core.hf.merge_and_unload()
    return core


def _fresh_like(core):
    if getattr(core, "kind", "") == "hf":
        from transformers import AutoModelForCausalLM

        from ..model.hf import HFCausalLM

        return HFCausalLM(AutoModelForCausalLM.from_config(core.hf.config))
    from ..model.gpt import GPT

    return GPT(core.config)
