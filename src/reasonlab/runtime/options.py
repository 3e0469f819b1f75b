"""The options every trainer shares about where and how its model runs, and the weights' dtype."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError

AUTOCAST = ("auto", "on", "off")


@dataclass
class RuntimeOptions:
    """Options every trainer shares: how the model is wrapped when it outgrows one process."""

    fsdp: bool = field(
        default=False,
        metadata={
            "help": "under torchrun: shard parameters, gradients and optimiser state with FSDP2 "
            "(default: DDP)"
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "weights load as float32 (full fine-tuning; GPUs compute in bf16 autocast) "
            "or bfloat16 (a frozen LoRA base)"
        },
    )
    autocast: str = field(
        default="auto",
        metadata={
            "help": "bf16 autocast of the trainers' forward passes (weights and optimiser stay float32): "
            "auto = on GPUs; "
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
