"""Groups -> one training batch: token ids, the loss mask, advantages (`build_batch`); what a step
trains on (`batch_for_update`: the batch, its groups and the loss's global normaliser); and the
batch's micro-batches.

Two layouts of the same rows, giving the same loss and gradient (tested): plain (N, T) sequences
(prompt + completion, right-padded), and a `GroupedBatch` that holds each group's prompt once
(`shared`: fewer FLOPs), for the models whose forward takes it (the built-in model packs the
completions; `HFCausalLM` runs them on the prompts' KV cache, see `model.hf`). The mask is 1 where
a token was *sampled*: forced tokens (a thinking-budget close, "Wait," extensions) and padding
never enter the loss; with `mask_truncated`, neither do completions cut at max_new_tokens.
"""

from __future__ import annotations

import torch

from .. import compute
from ..engine import Rollout
from ..model.grouped import GroupedBatch
from ..runtime import all_gather_list, all_reduce_sum, any_rank
from .algos import group_advantages
from .config import GRPOConfig
from .types import Batch, Group, StepBatch


def rollout_batch(rollout: Rollout, pad_id: int, mask_truncated: bool = False):
    """Sequences (prompt + completion, right-padded), the loss mask and the engine's log-probs in
    next-token coordinates.

    Returns input_ids (N, T), mask (N, T-1): 1 where the token at t+1 is a *sampled* completion
    token (forced tokens and padding are 0; with `mask_truncated`, whole truncated rows are 0), and
    (N, T-1) the log-prob the rollout engine recorded for the token at t+1 (0 off the completions).
    """
    N = len(rollout.prompt_ids)
    lengths = [len(p) + int(n) for p, n in zip(rollout.prompt_ids, rollout.lengths)]
    T = max(lengths)
    input_ids = torch.full((N, T), pad_id, dtype=torch.long)
    mask, logp = torch.zeros((N, T - 1)), torch.zeros((N, T - 1))
    for i, prompt in enumerate(rollout.prompt_ids):
        n, at = int(rollout.lengths[i]), len(prompt) - 1
        input_ids[i, : len(prompt)] = torch.tensor(prompt)
        input_ids[i, len(prompt) : len(prompt) + n] = rollout.tokens[i, :n]
        logp[i, at : at + n] = rollout.logprobs[i, :n].float()
        if mask_truncated and rollout.finish_reason[i] == "length":
            continue
        mask[i, at : at + n] = rollout.sampled_mask[i, :n].float()
    return input_ids, mask, logp


def group_batch(
    parts, group_size: int, pad_id: int, mask_truncated: bool = False
) -> tuple[GroupedBatch, torch.Tensor, torch.Tensor]:
    """Groups of rollout rows as a `GroupedBatch` (each prompt once), the (N, Lc) loss mask and the
    (N, Lc) log-probs the engine recorded.

    `parts`: (rollout, g) pairs, group g being rows g·G … (g+1)·G - 1 of `rollout`, all on one
    prompt. Mask and log-probs are in the coordinates of those `token_logprobs` returns for the batch."""
    G = group_size
    prompts = [rollout.prompt_ids[g * G] for rollout, g in parts]
    widths = [int(rollout.lengths[g * G : (g + 1) * G].max()) for rollout, g in parts]
    Lp, Lc, N = max(len(p) for p in prompts), max(max(widths), 1), len(parts) * G
    prompt_ids = torch.full((len(parts), Lp), pad_id, dtype=torch.long)
    completion_ids = torch.full((N, Lc), pad_id, dtype=torch.long)
    mask, logp = torch.zeros((N, Lc)), torch.zeros((N, Lc))
    for k, ((rollout, g), prompt, w) in enumerate(zip(parts, prompts, widths)):
        rows, out = slice(g * G, (g + 1) * G), slice(k * G, (k + 1) * G)
        prompt_ids[k, : len(prompt)] = torch.tensor(prompt)
        completion_ids[out, :w] = rollout.tokens[rows, :w]
        mask[out, :w] = rollout.sampled_mask[rows, :w].float()
        logp[out, :w] = rollout.logprobs[rows, :w].float()
        if mask_truncated:
            for i in range(G):
                if rollout.finish_reason[g * G + i] == "length":
                    mask[k * G + i] = 0
    lens = torch.cat([rollout.lengths[g * G : (g + 1) * G] for rollout, g in parts])
    plens = torch.tensor([len(p) for p in prompts])
    return GroupedBatch(prompt_ids, plens, completion_ids, lens, G), mask, logp


def padded_batch(
    groups: list[Group], G: int, pad_id: int, mask_truncated: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, T) ids, (N, T-1) mask and (N, T-1) engine log-probs of the groups' rows, one
    `rollout_batch` per sampling call."""
    seqs, masks, logps, batches = [], [], [], {}
    for group in groups:
        if id(group.rollout) not in batches:
            batches[id(group.rollout)] = rollout_batch(group.rollout, pad_id, mask_truncated)
        ids, m, lp = batches[id(group.rollout)]
        seqs += list(ids[group.rows(G)])
        masks += list(m[group.rows(G)])
        logps += list(lp[group.rows(G)])
    T = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask, logp = torch.zeros((len(seqs), T - 1)), torch.zeros((len(seqs), T - 1))
    for i, (s, m, lp) in enumerate(zip(seqs, masks, logps)):
        input_ids[i, : len(s)] = s
        mask[i, : len(m)] = m
        logp[i, : len(lp)] = lp
    return input_ids, mask, logp


def build_batch(
    groups: list[Group],
    G: int,
    pad_id: int,
    *,
    advantage: str = "group",
    batch_std: float | None = None,
    shared: bool = False,
    mask_truncated: bool = False,
) -> Batch:
    """The groups as one `Batch`: advantages by the estimator `advantage`, inputs in either layout."""
    advantages = group_advantages(
        torch.stack([g.rewards for g in groups]), advantage, batch_std=batch_std
    ).flatten()
    lengths = torch.cat([g.rollout.lengths[g.rows(G)] for g in groups])
    think = [t for g in groups for t in g.rollout.think_tokens[g.rows(G)]]
    if shared:
        inputs, mask, logp = group_batch([(g.rollout, g.index) for g in groups], G, pad_id, mask_truncated)
    else:
        inputs, mask, logp = padded_batch(groups, G, pad_id, mask_truncated)
    # the tokens each row puts through the model (the compute ledger's): its completion, and its
    # prompt on every row, or, in the shared layout, on the group's first row only; and their
    # attention's query-key pairs (a completion's tokens sit after the prompt either way)
    prompts = torch.tensor([len(g.rollout.prompt_ids[g.index * G]) for g in groups for _ in range(G)])
    counted = prompts.clone()
    if shared:
        counted[torch.arange(len(prompts)) % G != 0] = 0
    pairs = torch.tensor(
        [
            compute.pairs(p + c, p - k)
            for p, k, c in zip(prompts.tolist(), counted.tolist(), lengths.tolist())
        ],
        dtype=torch.long,
    )
    return Batch(inputs, mask, advantages, lengths, think, lengths + counted, pairs, logp)


def batch_for_update(groups: list[Group], cfg: GRPOConfig, pad_id: int, shared: bool) -> StepBatch | None:
    """What the update trains on (a collective call): the groups' batch, in the shared-prompt layout
    when `shared`, and the loss's normaliser over every group kept on every rank. With β = 0 the
    flat groups (advantage 0: no gradient) stay out of the batch but in the normaliser, the same
    update for less work (`skip_flat_groups`). None when some rank kept no group: no update."""
    if any_rank(not groups):
        return None
    kept = all_gather_list(torch.cat([g.rewards for g in groups]).tolist())
    batch_std = float(torch.tensor(kept).std()) if cfg.advantage == "batch" else None

    def batch_of(chosen: list[Group]) -> Batch:
        return build_batch(
            chosen,
            cfg.group_size,
            pad_id,
            advantage=cfg.advantage,
            batch_std=batch_std,
            shared=shared,
            mask_truncated=cfg.mask_truncated,
        )

    batch = batch_of(groups)
    rows_or_tokens = float(batch.mask.sum()) if cfg.loss_agg == "token_mean" else len(batch)
    total = all_reduce_sum(rows_or_tokens)
    trained = groups
    # with no KL term and no entropy bonus (one group kept at least: every rank runs the update)
    if cfg.skip_flat_groups and cfg.beta == 0 and cfg.entropy_coef == 0:
        trained = [g for g in groups if not g.flat] or groups[:1]
        if len(trained) < len(groups):
            batch = batch_of(trained)
    return StepBatch(batch, trained, total, kept)


def micro_batches(n: int, size: int, group: int = 1) -> list[slice]:
    """Row slices of at most `size` (all rows in one when size is 0), in whole groups of `group`
    rows (at least one group a slice)."""
    size = max(group, size // group * group) if size else n
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
