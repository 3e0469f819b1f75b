"""What a `generate` call is asked (`SamplingParams`) and what it returns (`Rollout`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int | list[int] = 128  # one for all rows or per row
    min_new_tokens: int = 0  # EOS is not sampled before this many tokens
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    think_budget: int | list[int] | None = None  # cap on thinking tokens, one for all rows or per row
    extend: int | list[int] = (
        0  # how many times an early </think> becomes "Wait,", one for all rows or per row
    )
    stop_at_answer: bool = True  # end a row at </answer>
    seed: int | None = None  # same seed, same samples
    # Per-row seeds: row i's samples depend only on (row_seeds[i], step), never on the rows it shares a
    # batch with, so rollouts sharded over ranks draw exactly what one process would. Overrides `seed`.
    row_seeds: list[int] | None = None

    def __post_init__(self):
        limits = self.max_new_tokens if isinstance(self.max_new_tokens, list) else [self.max_new_tokens]
        if not limits or any(n < 1 for n in limits):
            raise ValueError("max_new_tokens must be >= 1")
        if not (
            0 <= self.temperature < math.inf and self.top_k >= 0 and 0 < self.top_p <= 1
        ):  # NaN fails too
            raise ValueError("need a finite temperature >= 0, top_k >= 0 and 0 < top_p <= 1")
        budgets = self.think_budget if isinstance(self.think_budget, list) else [self.think_budget]
        if any(b is not None and b < 0 for b in budgets):
            raise ValueError("think_budget must be >= 0")
        if any(n < 0 for n in (self.extend if isinstance(self.extend, list) else [self.extend])):
            raise ValueError("extend must be >= 0")
        if self.row_seeds is not None and any(not 0 <= k < 2**62 for k in self.row_seeds):
            raise ValueError("row_seeds must be integers in [0, 2**62)")


@dataclass
class Rollout:
    """What `generate` returns. Tensors are (B, T) with T the longest completion, padded."""

    prompt_ids: list[list[int]]
    tokens: torch.Tensor  # (B, T) completion token ids, pad after each row's end
    logprobs: torch.Tensor  # (B, T) log-prob of each emitted token, 0 on padding
    sampled_mask: torch.Tensor  # (B, T) 1 = sampled by the model, 0 = forced or padding
    lengths: torch.Tensor  # (B,) completion lengths, forced tokens included
    think_tokens: list[int]  # tokens written inside <think>…</think> per row
    finish_reason: list[str]  # "stop", "budget" or "length"
    texts: list[str] = field(default_factory=list)  # decoded completions

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, T) 1 on every completion token (sampled or forced), 0 on padding."""
        return (torch.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]).long()


def _check_request(prompts: list[str], params: SamplingParams) -> tuple[list, list[int], list[int]]:
    """The per-row thinking budgets, token limits and extensions; a request whose lists do not match
    its prompts is a ValueError."""
    B = len(prompts)
    if B == 0:
        raise ValueError("no prompts to generate from")
    budgets = params.think_budget if isinstance(params.think_budget, list) else [params.think_budget] * B
    if len(budgets) != B:
        raise ValueError(f"think_budget has {len(budgets)} entries for {B} prompts")
    limits = params.max_new_tokens if isinstance(params.max_new_tokens, list) else [params.max_new_tokens] * B
    if len(limits) != B:
        raise ValueError(f"max_new_tokens has {len(limits)} entries for {B} prompts")
    extends = params.extend if isinstance(params.extend, list) else [params.extend] * B
    if len(extends) != B:
        raise ValueError(f"extend has {len(extends)} entries for {B} prompts")
    if params.row_seeds is not None and len(params.row_seeds) != B:
        raise ValueError(f"row_seeds has {len(params.row_seeds)} entries for {B} prompts")
    return budgets, limits, extends
