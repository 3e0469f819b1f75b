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

Layout: `options` (`RuntimeOptions`, dtypes), `memory` (malloc tuning), `devices`, `collectives`
(the process group, reductions over ranks), `lora`, `wrappers` (DDP/FSDP2 wrappers told apart),
`parallel` (`prepare`, `gathered`, `plain_model`), `gradients` (sync, finiteness, clipping),
`precision` (the dtype a rollout samples in: `rollout_dtype`, from the CPU's flags and a timed matmul).
"""

from .collectives import (
    all_gather_list,
    all_reduce_sum,
    any_rank,
    broadcast_flag,
    setup_distributed,
    shutdown_distributed,
    world,
)
from .devices import autocast, rank_device, resolve_device
from .gradients import clip_grad_norm, gradient_sync, grads_finite, local_tensor
from .lora import add_lora, has_lora
from .memory import MALLOC_ENV, TRIM_THRESHOLD, keep_freed_memory
from .options import AUTOCAST, DTYPES, RuntimeOptions, load_dtype
from .parallel import gathered, plain_model, prepare, refuse_fsdp_states
from .precision import bf16_matmul_speedup, cpu_flags, native_bf16, rollout_dtype
from .wrappers import is_fsdp, unwrap

__all__ = [
    "AUTOCAST",
    "DTYPES",
    "MALLOC_ENV",
    "RuntimeOptions",
    "TRIM_THRESHOLD",
    "add_lora",
    "all_gather_list",
    "all_reduce_sum",
    "any_rank",
    "autocast",
    "bf16_matmul_speedup",
    "broadcast_flag",
    "clip_grad_norm",
    "cpu_flags",
    "gathered",
    "gradient_sync",
    "grads_finite",
    "has_lora",
    "is_fsdp",
    "keep_freed_memory",
    "load_dtype",
    "local_tensor",
    "native_bf16",
    "plain_model",
    "prepare",
    "rank_device",
    "refuse_fsdp_states",
    "resolve_device",
    "rollout_dtype",
    "setup_distributed",
    "shutdown_distributed",
    "unwrap",
    "world",
]
