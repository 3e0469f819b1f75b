"""The math of Method 2 (GRPO family), in small unit-tested functions: advantages, the k3 KL
estimate, loss aggregation, the clipped surrogate, token log-probs, and a rollout as a training
batch. `grpo.py` states the objective they make up and runs the trainer; nothing else computes
these.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..engine import Rollout
from ..model.gpt import GroupedBatch
from .parallel import autocast


def group_advantages(rewards: torch.Tensor, scale: str = "group", eps: float = 1e-4,
                     batch_std: float | None = None) -> torch.Tensor:
    """(P, G) rewards -> (P, G) advantages: r - group mean, divided per `scale` (group/batch/none).
    `batch_std` replaces the std of `rewards` for "batch" when the batch spans several ranks. A group
    whose rewards are all equal gets exactly 0 (its mean can round away from the value: 0.1 × 7)."""
    flat = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)
    centred = (rewards - rewards.mean(dim=1, keepdim=True)).masked_fill(flat, 0.0)
    if scale == "group":
        return centred / (rewards.std(dim=1, keepdim=True) + eps)
    if scale == "batch":
        return centred / ((rewards.std() if batch_std is None else batch_std) + eps)
    if scale == "none":
        return centred
    raise ValueError(f"unknown advantage scale {scale!r}: group, batch or none")


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π ‖ π_ref): exp(r) - r - 1 with r = ref_logp - logp (≥ 0)."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str, max_tokens: int | None = None,
              total: float | None = None) -> torch.Tensor:
    """Reduce (N, T) per-token values over `mask` (N, T): token_mean, seq_mean or constant.

    `total` replaces the count in the denominator (tokens for token_mean, sequences otherwise): a
    rank holding part of the batch passes the global count, so the ranks' losses sum to the loss of
    the whole batch."""
    mask = mask.to(per_token.dtype)
    if how == "token_mean":
        return (per_token * mask).sum() / (mask.sum().clamp(min=1) if total is None else total)
    if how == "seq_mean":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / (per_seq.shape[0] if total is None else total)
    if how == "constant":
        if not max_tokens:
            raise ValueError("constant aggregation needs max_tokens")
        return (per_token * mask).sum() / ((per_token.shape[0] if total is None else total) * max_tokens)
    raise ValueError(f"unknown loss aggregation {how!r}: token_mean, seq_mean or constant")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                eps_low: float = 0.2, eps_high: float = 0.2, agg: str = "token_mean",
                max_tokens: int | None = None, ref_logp: torch.Tensor | None = None,
                beta: float = 0.0, total: float | None = None) -> tuple[torch.Tensor, dict]:
    """The clipped surrogate (to minimise) for (N, T) token log-probs and (N,) advantages
    (`total`: the global count for `aggregate` when the batch spans ranks)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    unclipped, clipped = ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    stats = {"clip_frac": float(aggregate((clipped < unclipped).float(), mask, "token_mean"))}
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probs")
        kl = kl_k3(logp, ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = float(aggregate(kl.detach(), mask, "token_mean"))
    return aggregate(per_token, mask, agg, max_tokens, total), stats


def token_logprobs(model, inputs: torch.Tensor | GroupedBatch, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T-1) log-prob of each next token of `inputs` (B, T), and (B, T-1) entropy of each
    prediction; for a `GroupedBatch` (built-in model), (N, Lc) for each completion token, 0 past
    each row's end."""
    if isinstance(inputs, GroupedBatch):  # the model returns only real predictions: no work on padding
        places, (N, Lc) = inputs.places(), inputs.completion_ids.shape
        with autocast(places.device):
            logits = model(dataclasses.replace(inputs, packed=True)).float()
        logp, entropy = _logp_entropy(logits, inputs.completion_ids.reshape(-1)[places], temperature)
        grid = lambda v: v.new_zeros(N * Lc).index_copy(0, places, v).view(N, Lc)  # noqa: E731
        return grid(logp), grid(entropy)
    with autocast(inputs.device):
        logits = model(inputs)[:, :-1].float()
    return _logp_entropy(logits, inputs[:, 1:], temperature)


def _logp_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """Log-prob of each target under softmax(logits / T), and the entropy of that softmax (for
    logging: computed without gradient)."""
    logp_all = F.log_softmax(logits / temperature, dim=-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp_all.gather(-1, targets[..., None]).squeeze(-1), entropy


def rollout_batch(rollout: Rollout, pad_id: int, mask_truncated: bool = False):
    """Sequences (prompt + completion, right-padded) and the loss mask in next-token coordinates.

    Returns input_ids (N, T) and mask (N, T-1): 1 where the token at t+1 is a *sampled* completion
    token (forced tokens and padding are 0; with `mask_truncated`, whole truncated rows are 0).
    """
    N = len(rollout.prompt_ids)
    lengths = [len(p) + int(n) for p, n in zip(rollout.prompt_ids, rollout.lengths)]
    T = max(lengths)
    input_ids = torch.full((N, T), pad_id, dtype=torch.long)
    mask = torch.zeros((N, T - 1))
    for i, prompt in enumerate(rollout.prompt_ids):
        n = int(rollout.lengths[i])
        input_ids[i, :len(prompt)] = torch.tensor(prompt)
        input_ids[i, len(prompt):len(prompt) + n] = rollout.tokens[i, :n]
        if mask_truncated and rollout.finish_reason[i] == "length":
            continue
        mask[i, len(prompt) - 1:len(prompt) - 1 + n] = rollout.sampled_mask[i, :n].float()
    return input_ids, mask


def group_batch(parts, group_size: int, pad_id: int, mask_truncated: bool = False) -> tuple[GroupedBatch, torch.Tensor]:
    """Groups of rollout rows as a `GroupedBatch` (each prompt once) and the (N, Lc) loss mask.

    `parts`: (rollout, g) pairs, group g being rows g·G … (g+1)·G - 1 of `rollout`, all on one
    prompt. The mask is 1 where a completion token was *sampled* (forced tokens and padding are 0;
    with `mask_truncated`, whole truncated rows are 0), in the same coordinates as the log-probs
    `token_logprobs` returns for the batch."""
    G = group_size
    prompts = [rollout.prompt_ids[g * G] for rollout, g in parts]
    widths = [int(rollout.lengths[g * G:(g + 1) * G].max()) for rollout, g in parts]
    Lp, Lc, N = max(len(p) for p in prompts), max(max(widths), 1), len(parts) * G
    prompt_ids = torch.full((len(parts), Lp), pad_id, dtype=torch.long)
    completion_ids = torch.full((N, Lc), pad_id, dtype=torch.long)
    mask = torch.zeros((N, Lc))
    for k, ((rollout, g), prompt, w) in enumerate(zip(parts, prompts, widths)):
        rows, out = slice(g * G, (g + 1) * G), slice(k * G, (k + 1) * G)
        prompt_ids[k, :len(prompt)] = torch.tensor(prompt)
        completion_ids[out, :w] = rollout.tokens[rows, :w]
        mask[out, :w] = rollout.sampled_mask[rows, :w].float()
        if mask_truncated:
            for i in range(G):
                if rollout.finish_reason[g * G + i] == "length":
                    mask[k * G + i] = 0
    lens = torch.cat([rollout.lengths[g * G:(g + 1) * G] for rollout, g in parts])
    plens = torch.tensor([len(p) for p in prompts])
    return GroupedBatch(prompt_ids, plens, completion_ids, lens, G), mask
