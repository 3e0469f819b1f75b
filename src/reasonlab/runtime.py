"""Runtime: where and how a model runs (devices, autocast, torchrun with DDP/FSDP2, LoRA by `peft`).

Every trainer calls these few functions, so a single process and N ranks run the same code:

- `setup_distributed()` joins the process group torchrun prepared (gloo on CPU, nccl on GPUs, each
  rank on ``cuda:LOCAL_RANK``); `world()` is (rank, size), (0, 1) without torchrun.
- `prepare(model, options)` adds LoRA adapters (`peft`), moves the model to the rank's device and
  wraps it: DDP replicates it on every rank, FSDP2 (`fully_shard`, one unit per transformer block
  plus the root) shards parameters, gradients and optimiser state over the ranks.
- `gathered(model)` unshards an FSDP2 model for sampling and evaluation (the engine calls the
  weights outside `forward`), and reshards it after; with DDP or one process it does nothing.
- `plain_model(model)` is what gets saved: LoRA merged, FSDP2 shards gathered (on rank 0).

Gradients stay exact: trainers normalise losses by *global* counts (tokens, sequences) and multiply
by the world size, since DDP and FSDP average gradients over ranks.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from .errors import UserError

AUTOCAST = ("auto", "on", "off")


@dataclass
class RuntimeOptions:
    """Options every trainer shares: how the model is wrapped when it outgrows one process."""

    fsdp: bool = field(
        default=False,
        metadata={
            "help": "under torchrun: shard parameters, gradients and optimiser state with FSDP2 (default: DDP)"
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "weights load as float32 (full fine-tuning; GPUs compute in bf16 autocast) or bfloat16 (a frozen LoRA base)"
        },
    )
    autocast: str = field(
        default="auto",
        metadata={
            "help": "bf16 autocast of the trainers' forward passes (weights and optimiser stay float32): auto = on GPUs; "
            "on = on CPUs too (fast only where they have AMX or AVX-512 BF16); off",
            "choices": AUTOCAST,
        },
    )
    lora_rank: int = field(
        default=0,
        metadata={
            "help": "train LoRA adapters of this rank with peft (0 = full fine-tuning)",
            "min": 0,
            "max": 65536,
        },
    )
    lora_alpha: float = field(
        default=32.0, metadata={"help": "LoRA scaling numerator (the update is alpha/rank · BA)", "above": 0}
    )
    lora_targets: str = field(
        default="all-linear",
        metadata={"help": "LoRA target modules: 'all-linear' or comma-separated names (q_proj,v_proj)"},
    )


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_dtype(options: RuntimeOptions) -> torch.dtype:
    if options.dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}")
    return DTYPES[options.dtype]


MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
TRIM_THRESHOLD = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory freed tensors leave, instead of handing it back to the
    kernel and faulting it in again for the next one: no block comes from a fresh ``mmap`` (the
    main heap serves them all; glibc still maps memory where the heap cannot grow, and for threads'
    arenas past their 64 MB heaps), and the heap is not trimmed below 2 GB of free space. Faulting
    fresh memory in costs about 1.4 ms a MB on the machines measured: on CPU every decoding step
    allocates several (rows x vocabulary) tensors, and a training micro-batch's logits, their
    log-softmax and both gradients are hundreds of MB each (benchmarks/README.md: a decoding
    step's sampler passes ~20 ms instead of ~2 ms each, a GRPO batch's forward + backward 18% slower).
    So the CLI and the benchmarks call this first. The process keeps its peak memory once reached.
    Does nothing (False) off glibc, or when the user set a MALLOC_* variable of these (theirs wins)."""
    import ctypes

    if any(name in os.environ for name in MALLOC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


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


def rank_device() -> torch.device:
    """Where this rank's model lives under torchrun: ``cuda:LOCAL_RANK`` under nccl, the CPU under
    gloo. One process trains wherever its model was put (`--device`)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


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


def add_lora(model, options: RuntimeOptions):
    """Wrap a Hugging Face model's weights with LoRA adapters (peft); only the adapters train."""
    if getattr(model, "kind", "") != "hf":
        raise UserError(
            "LoRA needs a Hugging Face model (--model PATH); the built-in model is small "
            "enough to train fully"
        )
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("LoRA needs peft: pip install 'reasonlab[lora]'") from None
    targets = (
        options.lora_targets
        if options.lora_targets == "all-linear"
        else [t.strip() for t in options.lora_targets.split(",") if t.strip()]
    )
    config = LoraConfig(
        r=options.lora_rank,
        lora_alpha=options.lora_alpha,
        target_modules=targets,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    try:
        model.hf = get_peft_model(model.hf, config)
    except ValueError as e:  # peft names the modules it could not find
        raise UserError(f"LoRA: {e}") from None
    return model


def has_lora(model) -> bool:
    return hasattr(getattr(unwrap(model), "hf", None), "peft_config")


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
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _blocks(model) -> list:
    """The transformer blocks (one FSDP2 unit each) of the built-in GPT or a Llama-like HF model."""
    inner = model.hf if getattr(model, "kind", "") == "hf" else model
    layers = getattr(getattr(inner, "model", None), "layers", None)
    if layers is None:
        raise UserError("--fsdp: cannot find the model's transformer blocks (model.layers)")
    return list(layers)


def is_fsdp(model) -> bool:
    return hasattr(model, "unshard") and hasattr(model, "reshard")


def unwrap(model):
    """The module inside a DDP wrapper (FSDP2 works in place: the model itself)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


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

        from .model.hf import HFCausalLM

        return HFCausalLM(AutoModelForCausalLM.from_config(core.hf.config))
    from .model.gpt import GPT

    return GPT(core.config)
