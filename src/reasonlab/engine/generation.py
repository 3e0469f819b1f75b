"""`generate`: check the request, prefill the prompts, run one of the two decoders, count the compute."""

from __future__ import annotations

import torch

from ..template import prompt_opens_think
from .flops import count_rollout
from .params import Rollout, SamplingParams, _check_request
from .rng import row_uniforms
from .rows import RowState, _decode_rows, assemble_rollout
from .steps import Decoding, _prefill
from .vectorized import _decode_vectorized, _vectorizable


@torch.inference_mode()
def generate(
    model, tokenizer, prompts: list[str], params: SamplingParams | None = None, on_step=None
) -> Rollout:
    """Sample one completion per prompt (repeat prompts for groups). See the module docstring."""
    params = params or SamplingParams()
    budgets, limits, extends = _check_request(prompts, params)
    prompt_ids = tokenizer.encode_prompts(prompts)
    if min(len(p) for p in prompt_ids) == 0:
        raise ValueError("empty prompt")
    device = next(model.parameters()).device
    generator = None
    if params.seed is not None and params.temperature > 0:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    P, N = _lengths(model, prompt_ids, limits)
    uniforms = None  # with row seeds: (B, N), row i's uniform for every step (compacted with the batch)
    if params.row_seeds is not None and params.temperature > 0:
        uniforms = row_uniforms(params.row_seeds, N, device)
    cache, logits, attn, next_pos = _prefill(model, tokenizer.pad_id, prompt_ids, P, N, device)
    run = Decoding(cache, logits, attn, next_pos, uniforms, generator, P, N, on_step)
    if _vectorizable(tokenizer, budgets, params):
        return count_rollout(
            _decode_vectorized(model, tokenizer, prompts, prompt_ids, budgets, limits, params, run)
        )
    rows = [
        RowState(
            tokenizer.tags,
            tokenizer.wait_ids,
            tokenizer.eos_id,
            budgets[i],
            extends[i],
            prompt_opens_think(prompts[i]),
            limits[i],
        )
        for i in range(len(prompts))
    ]
    _decode_rows(model, tokenizer, rows, params, run)
    return count_rollout(assemble_rollout(rows, prompt_ids, tokenizer))


def _lengths(model, prompt_ids: list[list[int]], limits: list[int]) -> tuple[int, int]:
    """P, the longest prompt, and N, the most steps any row may decode: its own limit, cut to the
    positions the model has left after P (a ValueError when the prompt fills them)."""
    P = max(len(p) for p in prompt_ids)
    limit = getattr(model, "max_seq_len", None)  # positions the model has (RoPE tables)
    if limit is not None and P >= limit:
        raise ValueError(f"prompt of {P} tokens does not fit the model's {limit} positions")
    return P, max(limits) if limit is None else min(max(limits), limit - P)
