"""The model calls both decoders share: the prefill, one sampling step and one decoding step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .params import SamplingParams
from .sampling import sample_next


@dataclass
class Decoding:
    """What a decode loop starts from (`_prefill`'s cache, first logits, mask and positions) and
    what it samples with: the seeded generator or each row's uniforms, P (the longest prompt), N
    (the most steps), and `on_step` (a caller's look at each step's tokens, which may end rows)."""

    cache: object
    logits: torch.Tensor
    attn: torch.Tensor
    next_pos: torch.Tensor
    uniforms: torch.Tensor | None
    generator: torch.Generator | None
    P: int
    N: int
    on_step: Callable | None = None


def _prefill(model, pad_id: int, prompt_ids: list[list[int]], P: int, N: int, device):
    """Run the prompts through the model: (cache, last logits (B, V), attention mask (B, P + N) that
    grows a column per step, next positions (B, 1)). Prompts are left-padded so every row's last
    token sits in column P - 1; each distinct prompt is computed once (GRPO repeats every prompt G
    times) and its cache rows copied."""
    B = len(prompt_ids)
    input_ids = torch.full((B, P), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros((B, P + N), dtype=torch.long, device=device)
    for i, ids in enumerate(prompt_ids):
        input_ids[i, P - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attn[i, P - len(ids) : P] = 1
    positions = (attn[:, :P].cumsum(-1) - 1).clamp(min=0)  # pads sit at position 0, masked out
    next_pos = attn.sum(-1, keepdim=True)  # (B, 1)
    distinct, firsts, inverse = {}, [], []
    for i, ids in enumerate(prompt_ids):
        key = tuple(ids)
        if key not in distinct:
            distinct[key] = len(firsts)
            firsts.append(i)
        inverse.append(distinct[key])
    if len(firsts) < B:
        first = torch.tensor(firsts, device=device)
        cache = model.init_cache(len(firsts), P + N)
        logits = model.decode(input_ids[first], positions[first], attn[first, :P], cache)[:, -1].float()
        expand = torch.tensor(inverse, device=device)
        getattr(model, "share_rows", model.select_rows)(cache, expand)  # one copy of each prompt's cache
        return cache, logits[expand], attn, next_pos
    cache = model.init_cache(B, P + N)
    return cache, model.decode(input_ids, positions, attn[:, :P], cache)[:, -1].float(), attn, next_pos


def _sample_step(logits, params: SamplingParams, eos_id, generator, uniforms, step: int):
    """`sample_next` at decoding step `step`: EOS is kept out before `params.min_new_tokens`, and a
    row draws its own uniform for this step when there are row seeds (`uniforms`, (B, N))."""
    if step < params.min_new_tokens and eos_id is not None:
        logits[:, eos_id] = float("-inf")
    return sample_next(
        logits,
        params.temperature,
        params.top_k,
        params.top_p,
        generator,
        None if uniforms is None else uniforms[:, step],
    )


def _next_step(model, cache, token, next_pos, attn, uniforms, keep: torch.Tensor, P: int, step: int):
    """Drop finished rows once a quarter of the batch has finished (`keep`: the batch positions still
    running), then feed each row its token. Returns the next logits, the (compacted) positions,
    attention mask and row uniforms, and the kept index when rows were dropped (else None)."""
    index = None
    # Compacting copies the whole cache: worth it only once enough rows have finished.
    if len(token) - len(keep) >= max(1, len(token) // 4):
        index = keep
        model.select_rows(cache, index)
        token, next_pos, attn = token[index], next_pos[index], attn[index]
        uniforms = uniforms[index] if uniforms is not None else None
    attn[:, P + step] = 1
    logits = model.decode(token[:, None], next_pos, attn[:, : P + step + 1], cache)[:, -1].float()
    return logits, next_pos + 1, attn, uniforms, index
