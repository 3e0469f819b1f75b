"""The update: μ gradient steps on one batch, in micro-batches whose gradients add up to the batch's.

Each micro-batch's loss is normalised by the *global* count (`total`: tokens or sequences of the
whole batch on every rank), so the micro-batches and the ranks sum to the loss of the whole batch
and DDP/FSDP2's gradient average is the single-process gradient. Ranks may hold different numbers
of micro-batches (flat groups skipped, refills cut short), but DDP and FSDP2 need the same forward
and backward calls on every rank: a rank with fewer repeats its last one with its loss weighted 0.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from .. import compute
from ..model.grouped import GroupedBatch
from ..run.optim import set_lr
from ..runtime import (
    all_gather_list,
    all_reduce_sum,
    autocast,
    clip_grad_norm,
    gradient_sync,
    grads_finite,
    world,
)
from ..softmax import probs_entropy
from .algos import aggregate, policy_loss, rollout_weights
from .batch import micro_batches
from .config import GRPOConfig
from .types import Batch, Policy, Update


def token_logprobs(
    model,
    inputs: torch.Tensor | GroupedBatch,
    temperature: float = 1.0,
    precision: str = "auto",
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T-1) log-prob of each next token of `inputs` (B, T), and (B, T-1) entropy of each
    prediction (with its gradient when `entropy_grad`, for an entropy bonus); for a `GroupedBatch`
    (the built-in model, or an HF model whose `shares_prompts`), (N, Lc) for each completion token,
    0 past each row's end."""
    if isinstance(inputs, GroupedBatch):  # the model returns only real predictions: no lm_head on padding
        places, (N, Lc) = inputs.places(), inputs.completion_ids.shape
        with autocast(places.device, precision):
            logits = model(dataclasses.replace(inputs, packed=True)).float()
        logp, entropy = _logp_entropy(
            logits, inputs.completion_ids.reshape(-1)[places], temperature, entropy_grad
        )
        grid = lambda v: v.new_zeros(N * Lc).index_copy(0, places, v).view(N, Lc)  # noqa: E731
        return grid(logp), grid(entropy)
    with autocast(inputs.device, precision):
        logits = model(inputs)[:, :-1].float()
    return _logp_entropy(logits, inputs[:, 1:], temperature, entropy_grad)


def _logp_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float, grad: bool = False):
    """Log-prob of each target under softmax(logits / T), and the entropy of that softmax: for
    logging, computed without gradient; with `grad`, with it (-Σ p log p, for an entropy bonus)."""
    logp_all = F.log_softmax(logits if temperature == 1 else logits / temperature, dim=-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if grad else probs_entropy(logp_all)
    return logp_all.gather(-1, targets[..., None]).squeeze(-1), entropy


def reference_logprobs(core, ref_model, inputs, temperature: float, precision: str = "auto") -> torch.Tensor:
    """Token log-probs under the frozen reference: a kept copy, or the LoRA model with adapters off."""
    with torch.no_grad():
        if ref_model is not None:
            return token_logprobs(ref_model, inputs, temperature, precision)[0]
        with core.hf.disable_adapter():
            return token_logprobs(core, inputs, temperature, precision)[0]


def step_loss(
    model, inputs, mask, advantages, old_logp, ref_logp, cfg: GRPOConfig, total=None, rollout_logp=None
):
    """One micro-batch's loss and statistics (clip_frac, kl, entropy, and the rollout gap's ``is/*``
    when the engine's log-probs `rollout_logp` are given; unless `cfg.rollout_is` is none, each
    token's loss is then weighted by π_old / π_rollout, truncated or masked at `cfg.rollout_is_cap`)."""
    bonus = cfg.entropy_coef > 0
    logp, entropy = token_logprobs(model, inputs, cfg.temperature, cfg.autocast, entropy_grad=bonus)
    old = logp.detach() if old_logp is None else old_logp
    weight, is_stats = None, {}
    if rollout_logp is not None:
        weight, is_stats = rollout_weights(old, rollout_logp, mask, cfg.rollout_is, cfg.rollout_is_cap)
    loss, stats = policy_loss(
        logp,
        old,
        advantages,
        mask,
        eps_low=cfg.eps_low,
        eps_high=cfg.eps_high,
        agg=cfg.loss_agg,
        max_tokens=cfg.max_new_tokens,
        ref_logp=ref_logp,
        beta=cfg.beta,
        total=total,
        loss=cfg.policy_loss,
        is_weight=weight,
        entropy=entropy if bonus else None,
        entropy_coef=cfg.entropy_coef,
    )
    stats["entropy"] = float(aggregate(entropy.detach(), mask, "token_mean"))
    return loss, {**stats, **is_stats}


def update(policy: Policy, batch: Batch, cfg: GRPOConfig, *, lr: float, total: float) -> Update:
    """`cfg.updates` optimiser steps of `policy` on `batch` at learning rate `lr`, its loss
    normalised by `total` (`StepBatch.total`); a collective call under torchrun. A non-finite loss
    or gradient skips the step (`Update.skipped`)."""
    size = world()[1]
    chunks = micro_batches(len(batch), cfg.micro_batch_size, batch.group_rows)
    real = len(chunks)
    if size > 1:  # the same number of calls on every rank: repeat the last chunk, weighted 0
        chunks += [chunks[-1]] * (max(all_gather_list([real])) - real)
    _count_compute(batch, cfg)
    old_logp, ref_logp = _fixed_logprobs(policy, batch.inputs, chunks, real, cfg)
    set_lr(policy.optimizer, lr)
    out = Update(lr=lr)
    for _ in range(cfg.updates):
        policy.optimizer.zero_grad(set_to_none=True)
        out.loss, weighted = _accumulate(policy.model, batch, chunks, real, old_logp, ref_logp, cfg, total)
        if not math.isfinite(out.loss) or not grads_finite(policy.model):
            policy.optimizer.zero_grad(set_to_none=True)
            out.skipped = True
            break
        out.grad_norm = clip_grad_norm(policy.model, cfg.grad_clip or float("inf"))
        policy.optimizer.step()
    out.stats = reduce_stats(weighted, float(batch.mask.sum()))
    return out


def extreme(key: str):
    """`min` for a ``*_min`` statistic, `max` for a ``*_max`` one (reduced as such over micro-batches
    and ranks), None for the others (token-weighted means)."""
    return min if key.endswith("_min") else max if key.endswith("_max") else None


def reduce_stats(weighted: dict[str, float], tokens: float) -> dict[str, float]:
    """The step's statistics over every rank: the token-weighted means (`weighted` holds the sums),
    and for a ``*_min`` / ``*_max`` key (`_accumulate` keeps them unweighted) the extreme."""
    n_tokens = max(all_reduce_sum(tokens), 1.0)
    out = {}
    for key, v in weighted.items():
        pick_one = extreme(key)
        out[key] = pick_one(all_gather_list([v])) if pick_one else all_reduce_sum(v) / n_tokens
    return out


def _count_compute(batch: Batch, cfg: GRPOConfig) -> None:
    """The tokens the update puts through the model (`compute`): trained `updates` times, and
    scored without gradient once for the old log-probs (μ > 1) and once for the reference (β > 0)."""
    tokens = int(batch.tokens.sum()) if batch.tokens is not None else 0
    pairs = int(batch.pairs.sum()) if batch.pairs is not None else 0
    forward_only = (cfg.updates > 1) + (cfg.beta > 0)
    compute.count("scored", tokens * forward_only, pairs * forward_only)
    compute.count("trained", tokens * cfg.updates, pairs * cfg.updates)


def _fixed_logprobs(policy: Policy, inputs, chunks: list[slice], real: int, cfg: GRPOConfig):
    """The log-probs that stay fixed through the update: the policy's before its first step (the
    ratio's denominator, μ > 1) and the reference's (β > 0); None where not needed. Every chunk runs,
    the repeats too (FSDP2's forward is a collective), but only the `real` ones are kept."""
    old_logp = ref_logp = None
    if cfg.updates > 1:
        with torch.no_grad():
            old_logp = torch.cat(
                [token_logprobs(policy.model, inputs[c], cfg.temperature, cfg.autocast)[0] for c in chunks][
                    :real
                ]
            )
    if cfg.beta > 0:
        ref_logp = torch.cat(
            [
                reference_logprobs(policy.core, policy.reference, inputs[c], cfg.temperature, cfg.autocast)
                for c in chunks
            ][:real]
        )
    return old_logp, ref_logp


def _accumulate(model, batch: Batch, chunks, real: int, old_logp, ref_logp, cfg: GRPOConfig, total):
    """One gradient step's backward passes over the micro-batches (every chunk's loss is over the
    global count: they sum to the batch's). Returns the loss summed over ranks and the token-weighted
    sums of the chunks' statistics."""
    size = world()[1]
    pick = lambda t, c: None if t is None else t[c]  # noqa: E731
    local, weighted = 0.0, {}
    for k, c in enumerate(chunks):
        with gradient_sync(model, k == len(chunks) - 1):  # DDP/FSDP2 reduce once, after the last chunk
            loss, stats = step_loss(
                model,
                batch.inputs[c],
                batch.mask[c],
                batch.advantages[c],
                pick(old_logp, c),
                pick(ref_logp, c),
                cfg,
                total,
                pick(batch.rollout_logp, c),
            )
            (loss * (size if k < real else 0.0)).backward()  # DDP/FSDP2 average over ranks
        if k >= real:  # a repeat that keeps the ranks in step: no loss of its own
            continue
        local += loss.item()
        n = float(batch.mask[c].sum())
        for key, v in stats.items():
            pick_one = extreme(key)
            weighted[key] = pick_one(weighted.get(key, v), v) if pick_one else weighted.get(key, 0.0) + v * n
    return all_reduce_sum(local), weighted
