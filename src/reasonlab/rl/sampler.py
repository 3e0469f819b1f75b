"""GRPO's rollouts in another precision than the policy's (`--rollout-dtype`): a bf16 copy to sample.

The update stays in the policy's float32. The built-in engine samples from one persistent copy of
the policy's model in the rollout dtype, whose weights are copied over in place at the first
sampling call of each step (the last update's weights: never stale, never rebuilt). The rollout's
log-probs come out float32 (the engine casts the copy's logits) and are the copy's: the trainer's
importance-sampling correction (`--rollout-is`) weighs the gap to the float32 policy. Evaluation
samples the float32 model. vLLM has a dtype of its own; LoRA adapters (peft) and FSDP2's shards
leave no plain model to copy, so those sample the policy as it is.
"""

from __future__ import annotations

import copy
import sys
import time

import torch
import torch.nn as nn

from ..engine import generate
from ..errors import UserError
from ..runtime import broadcast_flag, rollout_dtype, world
from .config import GRPOConfig
from .types import Policy


class LowPrecisionSampler:
    """`Collector.sample` from a copy of `core` in `dtype` (`lowered_copy`), its weights refreshed
    from `core`'s at the first call of each step. `refresh_seconds`: the last refresh's wall time."""

    def __init__(self, core: nn.Module, tokenizer, dtype: torch.dtype):
        self.copy = lowered_copy(core, dtype)
        self.tokenizer, self.step, self.refresh_seconds = tokenizer, None, 0.0
        sources, targets = (
            [*core.parameters(), *core.buffers()],
            [*self.copy.parameters(), *self.copy.buffers()],
        )
        if len(sources) != len(targets) or any(a.shape != b.shape for a, b in zip(sources, targets)):
            raise RuntimeError("the rollout copy's tensors do not match the model's")
        self.pairs = list(zip(sources, targets))

    @torch.no_grad()
    def refresh(self) -> None:
        """The model's current weights (and buffers) into the copy, in place, rounded to its dtype."""
        began = time.perf_counter()
        for source, target in self.pairs:
            target.copy_(source)
        self.refresh_seconds = time.perf_counter() - began

    def __call__(self, model, prompts: list[str], params, step: int):
        if step != self.step:  # a new step: the weights may have changed since the last one sampled
            self.refresh()
            self.step = step
        return generate(self.copy, self.tokenizer, prompts, params)


def lowered_copy(core: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A frozen copy of `core` in eval mode, its parameters in `dtype`, each made straight from the
    original (no full-precision copy on the way; tied weights stay tied). Floating buffers go to
    `dtype` too, as `Module.to` would (the built-in GPT multiplies its RoPE tables into the
    activations), but in a Hugging Face model, which computes RoPE from a float32 `inv_freq` and
    casts the result: they stay float32 there, as `from_pretrained(dtype=torch.bfloat16)` keeps them."""
    memo = {
        id(p): nn.Parameter(p.detach().to(dtype, copy=True), requires_grad=False) for p in core.parameters()
    }
    if getattr(core, "kind", "") != "hf":
        memo |= {id(b): b.detach().to(dtype, copy=True) for b in core.buffers() if b.is_floating_point()}
    return copy.deepcopy(core, memo).eval()


def model_width(core: nn.Module) -> int:
    """The model's hidden width (what `rollout_dtype`'s auto judges by): its config's, else the
    last dimension of its first matrix."""
    config = getattr(core, "config", None)
    for name in ("d_model", "hidden_size", "n_embd"):
        if isinstance(width := getattr(config, name, None), int):
            return width
    return next((p.shape[-1] for p in core.parameters() if p.dim() == 2), 1)


def rollout_sampler(
    policy: Policy, tokenizer, cfg: GRPOConfig
) -> tuple[LowPrecisionSampler | None, torch.dtype | None]:
    """The collector's sampler for `cfg.rollout_dtype` and the dtype the rollouts run in (None: vLLM
    samples). The sampler is None where the policy samples as it is: fp32 chosen, or weights
    already below float32. LoRA and FSDP2 leave no plain copy to make: auto then keeps float32
    (a note says so where it would have taken bf16), an explicit bf16 is refused in one line.
    Rank 0 decides for every rank (auto may time a matmul: ranks must not split)."""
    if cfg.rollout_engine != "builtin":
        return None, None
    own = next(policy.core.parameters()).dtype
    if own != torch.float32:
        return None, own
    dtype = _decided(policy.core, cfg)
    if dtype == own:
        return None, own
    if reason := _no_copy(cfg):
        if cfg.rollout_dtype == "bf16":
            raise UserError(
                f"--rollout-dtype bf16 samples a bf16 copy of the model, which {reason} rule out: "
                "use --rollout-dtype fp32 or auto"
            )
        if world()[0] == 0:
            print(
                f"note: --rollout-dtype auto samples in float32: {reason} leave no model to copy",
                file=sys.stderr,
            )
        return None, own
    return LowPrecisionSampler(policy.core, tokenizer, dtype), dtype


def _decided(core: nn.Module, cfg: GRPOConfig) -> torch.dtype:
    """`rollout_dtype` as rank 0 finds it, on every rank (a collective call under torchrun)."""
    param = next(core.parameters())
    mine = rollout_dtype(cfg.rollout_dtype, param.device, model_width(core)) if world()[0] == 0 else None
    return torch.bfloat16 if broadcast_flag(mine == torch.bfloat16) else torch.float32


def _no_copy(cfg: GRPOConfig) -> str:
    """What rules a plain copy of the policy out ("" when nothing does)."""
    if cfg.lora_rank:
        return "LoRA adapters (--lora-rank)"
    if cfg.fsdp and world()[1] > 1:
        return "FSDP2's shards (--fsdp)"
    return ""
