"""The optimiser and its learning-rate schedule, the same for every trainer: `OptimConfig` (steps,
schedule, clipping, cadences, budgets), `make_optimizer` (AdamW, no decay on vectors) and `lr_at`
(linear warm-up, then cosine, linear or constant)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..config import FRACTION, SEED, check_options

MAX_STEPS = 10**9  # the most steps (and step counts: warm-up, cadences) any option takes
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    """What every trainer (supervised and RL) shares: how many steps, the learning-rate schedule
    (`lr_at`), gradient clipping, the seed, and when it evaluates, saves and stops. A trainer sets
    its own defaults with `default_of`."""

    steps: int = field(default=500, metadata={"help": "optimiser steps at most", "min": 1, "max": MAX_STEPS})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate", "above": 0})
    warmup_steps: int = field(
        default=20, metadata={"help": "linear warm-up steps", "min": 0, "max": MAX_STEPS}
    )
    schedule: str = field(
        default="cosine",
        metadata={
            "help": "after warm-up: cosine or linear decay over `steps` (not over max_seconds), or constant",
            "choices": SCHEDULES,
        },
    )
    min_lr_ratio: float = field(
        default=0.1, metadata={"help": "cosine / linear: final lr as a fraction of the peak", **FRACTION}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm (0 = off)", "min": 0})
    eval_every: int = field(
        default=100, metadata={"help": "evaluate every N steps (0 = never)", "min": 0, "max": MAX_STEPS}
    )
    save_every: int = field(
        default=0,
        metadata={
            "help": "write a resumable training state every N steps (0 = never)",
            "min": 0,
            "max": MAX_STEPS,
        },
    )
    save_minutes: float = field(
        default=2.0,
        metadata={  # no percent sign in a help: argparse formats it (--help failed)
            "help": "also write it every N minutes of training, so a kill loses at most that (stretched to "
            "keep saving under 5 percent of the time; 0 = only --save-every)",
            "min": 0,
            "max": 10**6,
        },
    )
    max_seconds: float = field(
        default=0.0, metadata={"help": "stop after this much wall time (0 = no limit)", "min": 0}
    )
    seed: int = field(default=0, metadata={"help": "data order, initialisation and sampling seed", **SEED})

    def __post_init__(self):
        check_options(self)


def default_of(name: str, default, help: str | None = None):
    """`OptimConfig`'s field `name` (its limits and help) with another default, for a trainer's
    own config."""
    metadata = dict(OptimConfig.__dataclass_fields__[name].metadata)
    if help:
        metadata["help"] = help
    return field(default=default, metadata=metadata)


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Warm-up then cosine / linear decay over `cfg.steps` to `min_lr_ratio` of the peak (or
    constant). `cfg`: an `OptimConfig` (supervised `TrainConfig` or `GRPOConfig`)."""
    # 1) linear warm-up: step 0 already trains, at lr / warmup_steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    # 2) decay over the steps left, reaching min_lr_ratio of the peak at `steps` (not at max_seconds)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def make_optimizer(model, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW (β2 0.95, as nanoGPT); weight decay on matrices only, never on biases and norms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
