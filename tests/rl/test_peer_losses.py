"""Method 2's registered math against the peers it is named after, on the same tensors.

Each registered policy loss (`POLICY_LOSSES`), loss aggregation (`AGGREGATIONS`) and advantage
estimator (`ADVANTAGES`) of `reasonlab.rl.algos` is computed beside the formula of its peer,
written out below in plain torch from the peer's source (trl and verl are not dependencies and are
not imported). Values, and gradients w.r.t. the log-probs, are compared with
`torch.testing.assert_close`.

Peers, and the versions the formulas were copied from:

- TRL `GRPOTrainer._compute_loss` and the advantage of `_generate_and_score_completions`
  (trl/trainer/grpo_trainer.py; `nanstd` in trl/trainer/utils.py), huggingface/trl main at
  f2cd577 (VERSION 1.10.0.dev0): the TRL 1.x loss, `loss_type` grpo, bnpo, dr_grpo, dapo, with
  importance_sampling_level="token", delta=None, top_entropy_quantile=1, no vLLM IS correction,
  use_bias_correction_kl=False (the defaults).
- verl `compute_policy_loss_vanilla`, `agg_loss`, `kl_penalty` ("low_var_kl"/"k3") and
  `compute_grpo_outcome_advantage` (verl/trainer/ppo/core_algos.py; `masked_sum` in
  verl/utils/torch_functional.py), volcengine/verl main at b178a3c (0.8.0.dev).

Where ours departs from a peer on purpose, the test states the departure and checks ours against
the peer with that adjustment (see each test's comment):

- `seq_mean` counts a fully masked row in its denominator, as TRL's grpo and verl's global-batch
  path (`global_batch_size`) do; verl's local default counts only rows with a token.
- `constant` divides by rows × max_tokens as TRL's dr_grpo does; verl's seq-mean-token-sum-norm
  divides by the constant only (a factor of the row count).
- `clip` has no dual clip: verl caps the loss of a token with A < 0 at -A · clip_ratio_c (3).
- a group whose rewards are all equal gets advantage exactly 0; the peers divide the rounding of
  its float mean by ε.

Run (a few seconds, CPU only): pytest -q tests/rl/test_peer_losses.py
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from reasonlab.rl.algos import (
    ADVANTAGES,
    AGGREGATIONS,
    POLICY_LOSSES,
    aggregate,
    group_advantages,
    pick,
    policy_loss,
)

EPS_LOW, EPS_HIGH, BETA = 0.2, 0.28, 0.04
LENGTHS = [7, 3, 0, 5, 1, 6]  # ragged rows; row 2 fully masked (a truncated row under mask_truncated)
T = max(LENGTHS)
MAX_TOKENS = 9  # max_new_tokens / TRL's max_completion_length: longer than this batch's padded length
DTYPES = [torch.float64, torch.float32]

# Which peer formula each registered name is checked against here. A name registered without an
# entry fails `test_every_registered_name_is_checked_against_a_peer`.
PEERS = {
    "policy loss": {
        "clip": "TRL grpo-family per-token loss; verl compute_policy_loss_vanilla",
        # checked in tests/rl/test_gspo_cispo.py
        "gspo": "TRL importance_sampling_level='sequence' (grpo); verl compute_policy_loss_gspo",
        "cispo": "TRL loss_type='cispo'; verl compute_policy_loss_cispo",
    },
    "aggregation": {
        "token_mean": "TRL bnpo and dapo; verl token-mean",
        "seq_mean": "TRL grpo; verl seq-mean-token-mean",
        "constant": "TRL dr_grpo; verl seq-mean-token-sum-norm",
    },
    "advantage": {
        "group": "TRL scale_rewards='group'; verl GRPO (norm_adv_by_std_in_grpo=True)",
        "batch": "TRL scale_rewards='batch'",
        "none": "TRL scale_rewards='none'; verl GRPO (norm_adv_by_std_in_grpo=False)",
    },
}


def make(seed: int = 0, dtype=torch.float64, lengths=LENGTHS):
    """Seeded (N, T) log-probs (a leaf that requires grad), old and reference log-probs, (N,)
    advantages of both signs, and an int (N, T) mask as TRL's completion_mask. The old log-probs
    are far enough from the new ones that both clips bite; past each row's end the log-probs are
    other values (padding), which no loss may read. Ratios stay within e^±1, under verl's dual clip
    (clip_ratio_c = 3), which `test_clip_has_no_dual_clip_unlike_verl` covers on its own."""
    g = torch.Generator().manual_seed(seed)
    n, t = len(lengths), max(lengths)
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).long()
    logp = -3 * torch.rand(n, t, generator=g, dtype=torch.float64)
    old = logp + (0.4 * torch.randn(n, t, generator=g, dtype=torch.float64)).clamp(-1, 1)  # ratios e^±1: < 3
    ref = logp + 0.3 * torch.randn(n, t, generator=g, dtype=torch.float64)
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    adv[0], adv[1] = adv[0].abs() + 0.1, -adv[1].abs() - 0.1
    pad = mask == 0
    logp = logp.masked_fill(pad, -7.0)
    old = old.masked_fill(pad, -0.5)
    ref = ref.masked_fill(pad, -4.0)
    return logp.to(dtype).requires_grad_(), old.to(dtype), ref.to(dtype), adv.to(dtype), mask


def value_and_grad(loss: torch.Tensor, logp: torch.Tensor):
    return loss.detach(), torch.autograd.grad(loss, logp)[0]


def assert_both_clips_bite(logp, old, adv, mask):
    """The data must exercise the clip on both sides, or the comparisons prove little."""
    ratio, a, m = torch.exp(logp - old).detach(), adv[:, None].expand_as(logp), mask.bool()
    assert ((ratio > 1 + EPS_HIGH) & (a > 0) & m).any() and ((ratio < 1 - EPS_LOW) & (a < 0) & m).any()
    assert ((ratio > 1 - EPS_LOW) & (ratio < 1 + EPS_HIGH) & m).any()


# ---- the peers' formulas, written out -------------------------------------------------------------


def trl_per_token_loss(
    per_token_logps, old_per_token_logps, ref_per_token_logps, advantages, *, epsilon_low, epsilon_high, beta
):
    """TRL GRPOTrainer._compute_loss (loss_type in grpo, bnpo, dr_grpo, dapo), up to the aggregation."""
    advantages = advantages.unsqueeze(1)
    log_ratio = per_token_logps - old_per_token_logps
    coef_1 = torch.exp(log_ratio)
    if beta != 0.0:
        per_token_kl = (
            torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
        )
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss1 = coef_1 * advantages
    per_token_loss2 = coef_2 * advantages
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    return per_token_loss


def trl_aggregate(
    loss_type,
    per_token_loss,
    mask,
    *,
    max_completion_length=None,
    num_items_in_batch=None,
    num_processes=1,
    gradient_accumulation_steps=1,
):
    """TRL GRPOTrainer._compute_loss's aggregation, in train mode, for one micro-batch of one process."""
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        return loss / gradient_accumulation_steps
    if loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
        return loss / gradient_accumulation_steps
    if loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
        return loss / gradient_accumulation_steps
    if loss_type == "dapo":  # num_items_in_batch: the gathered token count of the whole accumulated batch
        normalizer = num_items_in_batch.clamp(min=1.0) / num_processes
        return (per_token_loss * mask).sum() / normalizer
    raise ValueError(loss_type)


def trl_nanstd(tensor, dim=None, keepdim=False):
    """trl.trainer.utils.nanstd: the std with Bessel's correction (n - 1), ignoring NaNs."""
    mean = torch.nanmean(tensor, dim=dim, keepdim=True)
    variance = torch.nanmean((tensor - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(tensor), dim=dim, keepdim=True)
    correction = count / (count - 1)
    correction = torch.where(count > 1, correction, torch.full_like(correction, float("nan")))
    variance *= correction
    std = torch.sqrt(variance)
    if keepdim:
        return std
    return std.squeeze(dim) if dim is not None else std.squeeze()


def trl_advantages(rewards, num_generations, scale_rewards):
    """TRL _generate_and_score_completions, multi_objective_aggregation="sum_then_normalize": (B,) rewards
    in groups of num_generations -> (B,) advantages."""
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        std_rewards = trl_nanstd(rewards.view(-1, num_generations), dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    elif scale_rewards == "batch":
        std_rewards = trl_nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def verl_masked_sum(values, mask, axis=None):
    """verl.utils.torch_functional.masked_sum."""
    valid_values = torch.where(mask.bool(), values, 0.0)
    return (valid_values * mask).sum(axis=axis)


def verl_agg_loss(
    loss_mat,
    loss_mask,
    loss_agg_mode,
    dp_size=1,
    batch_num_tokens=None,
    global_batch_size=None,
    loss_scale_factor=None,
):
    """verl core_algos.agg_loss."""
    if loss_agg_mode == "token-mean":
        if batch_num_tokens is None:
            batch_num_tokens = loss_mask.sum()
        loss = verl_masked_sum(loss_mat, loss_mask) / batch_num_tokens * dp_size
    elif loss_agg_mode == "seq-mean-token-sum":
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        seq_mask = (torch.sum(loss_mask, dim=-1) > 0).float()
        if global_batch_size is None:
            global_batch_size = seq_mask.sum()
        loss = verl_masked_sum(seq_losses, seq_mask) / global_batch_size * dp_size
    elif loss_agg_mode == "seq-mean-token-mean":
        seq_mask = torch.sum(loss_mask, dim=-1)
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (seq_mask + 1e-8)
        seq_mask = (seq_mask > 0).float()
        if global_batch_size is None:
            global_batch_size = seq_mask.sum()
        loss = verl_masked_sum(seq_losses, seq_mask) / global_batch_size * dp_size
    elif loss_agg_mode == "seq-mean-token-sum-norm":
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        if loss_scale_factor is None:
            loss_scale_factor = loss_mask.shape[-1]
        loss = torch.sum(seq_losses) / loss_scale_factor
    else:
        raise ValueError(f"Invalid loss_agg_mode: {loss_agg_mode}")
    return loss


def verl_pg_losses(
    old_log_prob, log_prob, advantages, response_mask, *, clip_ratio_low, clip_ratio_high, clip_ratio_c=3.0
):
    """verl core_algos.compute_policy_loss_vanilla up to its agg_loss: the (bs, T) pg_losses and pg_clipfrac.
    `advantages` are token-level (bs, T), as compute_grpo_outcome_advantage returns them."""
    negative_approx_kl = log_prob - old_log_prob
    negative_approx_kl = torch.clamp(negative_approx_kl, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    mask = response_mask.to(ratio.dtype)
    pg_clipfrac = verl_masked_sum(torch.gt(pg_losses2, pg_losses1).to(ratio.dtype), mask) / mask.sum()
    pg_losses3 = -advantages * clip_ratio_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    return pg_losses, pg_clipfrac


def verl_kl_k3(logprob, ref_logprob):
    """verl core_algos.kl_penalty_forward, kl_penalty="low_var_kl" / "k3"."""
    kl = ref_logprob - logprob
    kl = torch.clamp(kl, min=-20, max=20)
    ratio = torch.exp(kl)
    kld = (ratio - kl - 1).contiguous()
    return torch.clamp(kld, min=-10, max=10)


def verl_actor_loss(
    old, logp, adv, mask, loss_agg_mode, kl_loss_coef, ref, clip_ratio_c=3.0, **global_batch_info
):
    """verl workers/utils/losses.ppo_loss (vanilla, use_kl_loss, kl_loss_type k3, entropy_coeff 0):
    agg_loss(pg_losses) + kl_loss_coef · agg_loss(k3), token-level advantages A · mask."""
    m = mask.to(logp.dtype)
    pg_losses, _ = verl_pg_losses(
        old,
        logp,
        adv[:, None] * m,
        m,
        clip_ratio_low=EPS_LOW,
        clip_ratio_high=EPS_HIGH,
        clip_ratio_c=clip_ratio_c,
    )
    pg_loss = verl_agg_loss(pg_losses, m, loss_agg_mode, **global_batch_info)
    kl_loss = verl_agg_loss(verl_kl_k3(logp, ref), m, loss_agg_mode, **global_batch_info)
    return pg_loss + kl_loss * kl_loss_coef


def verl_grpo_advantage(
    token_level_rewards, response_mask, index, epsilon=1e-6, norm_adv_by_std_in_grpo=True
):
    """verl core_algos.compute_grpo_outcome_advantage (the per-uid loop)."""
    scores = token_level_rewards.sum(dim=-1)
    id2score, id2mean, id2std = {}, {}, {}
    with torch.no_grad():
        bsz = scores.shape[0]
        for i in range(bsz):
            id2score.setdefault(index[i], []).append(scores[i])
        for idx in id2score:
            if len(id2score[idx]) == 1:
                id2mean[idx] = torch.tensor(0.0)
                id2std[idx] = torch.tensor(1.0)
            else:
                scores_tensor = torch.stack(id2score[idx])
                id2mean[idx] = torch.mean(scores_tensor)
                id2std[idx] = torch.std(scores_tensor)
        for i in range(bsz):
            if norm_adv_by_std_in_grpo:
                scores[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + epsilon)
            else:
                scores[i] = scores[i] - id2mean[index[i]]
        scores = scores.unsqueeze(-1) * response_mask
    return scores


# ---- coverage -------------------------------------------------------------------------------------


def test_every_registered_name_is_checked_against_a_peer():
    assert set(POLICY_LOSSES) == set(PEERS["policy loss"])
    assert set(AGGREGATIONS) == set(PEERS["aggregation"])
    assert set(ADVANTAGES) == set(PEERS["advantage"])


# ---- policy loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_per_token_equals_trl_and_verl(dtype):
    """POLICY_LOSSES["clip"] per token = TRL's -min(coef_1 A, coef_2 A) = verl's max(-A ρ, -A clip(ρ))
    (dual clip inactive here: every ratio is under clip_ratio_c = 3), on the tokens of the mask."""
    logp, old, ref, adv, mask = make(1, dtype)
    assert_both_clips_bite(logp, old, adv, mask)
    m, on = mask.to(dtype), mask.bool()
    assert torch.exp(logp - old)[on].max() < 3.0
    ours, stats = pick(POLICY_LOSSES, "clip", "policy loss")(
        logp, old, adv, m, eps_low=EPS_LOW, eps_high=EPS_HIGH
    )
    trl = trl_per_token_loss(logp, old, ref, adv, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=0.0)
    verl, verl_clipfrac = verl_pg_losses(
        old, logp, adv[:, None] * m, m, clip_ratio_low=EPS_LOW, clip_ratio_high=EPS_HIGH
    )
    assert_close(ours[on], trl[on])
    assert_close(ours[on], verl[on])
    g_ours = torch.autograd.grad((ours * m).sum(), logp)[
        0
    ]  # the gradient of the masked sum: d loss_t / d logp_t
    for peer in (trl, verl):
        assert_close(g_ours, torch.autograd.grad((peer * m).sum(), logp)[0])
    # clip_frac: verl's pg_clipfrac, and TRL's clip_ratio/region_mean (low: ρ < 1-ε_low with A < 0;
    # high: ρ > 1+ε_high with A > 0)
    assert stats["clip_frac"] == pytest.approx(float(verl_clipfrac))
    ratio, a = torch.exp(logp - old).detach(), adv[:, None]
    region = ((ratio < 1 - EPS_LOW) & (a < 0)) | ((ratio > 1 + EPS_HIGH) & (a > 0))
    assert stats["clip_frac"] == pytest.approx(float(region[on].double().mean()))


def test_clip_has_no_dual_clip_unlike_verl():
    """Deliberate: `clip` is PPO's clipped surrogate as TRL's (which has no dual clip; its optional
    `delta` is off by default). verl's vanilla loss also caps a token with A < 0 at -A · clip_ratio_c
    (dual-clip PPO, Ye et al. 2019; clip_ratio_c = 3). Ours equals verl with the dual clip off
    (clip_ratio_c = inf), and differs from verl's default only on tokens with A < 0 and ρ > 3."""
    logp, old, ref, adv, mask = make(2)
    with torch.no_grad():
        old[1, :2] = logp[1, :2] - 1.5  # row 1 has A < 0: ratios e^1.5 ≈ 4.5 > 3
    m, on = mask.double(), mask.bool()
    ours, _ = POLICY_LOSSES["clip"](logp, old, adv, m, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    no_dual, _ = verl_pg_losses(
        old,
        logp,
        adv[:, None] * m,
        m,
        clip_ratio_low=EPS_LOW,
        clip_ratio_high=EPS_HIGH,
        clip_ratio_c=math.inf,
    )
    dual, _ = verl_pg_losses(old, logp, adv[:, None] * m, m, clip_ratio_low=EPS_LOW, clip_ratio_high=EPS_HIGH)
    assert_close(ours[on], no_dual[on])
    capped = on & (adv[:, None] < 0) & (torch.exp(logp - old).detach() > 3.0)
    assert capped.sum() == 2
    assert_close(ours[on & ~capped], dual[on & ~capped])
    assert_close(dual[capped], -3.0 * adv[:, None].expand_as(dual)[capped])
    assert (ours[capped] > dual[capped]).all()


# ---- aggregations, with the KL term: TRL ---------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "agg, loss_type",
    [("seq_mean", "grpo"), ("token_mean", "bnpo"), ("token_mean", "dapo"), ("constant", "dr_grpo")],
)
@pytest.mark.parametrize("with_total", [False, True], ids=["local", "trainer_total"])
def test_policy_loss_equals_trl_compute_loss(agg, loss_type, with_total, dtype):
    """policy_loss(..., agg, β) = TRL _compute_loss(loss_type, β) on one process and one micro-batch,
    value and gradient, with the KL term; `total` as trainer.batch_for_update passes it (the global
    token count for token_mean, the row count otherwise) or left out."""
    logp, old, ref, adv, mask = make(3, dtype)
    assert_both_clips_bite(logp, old, adv, mask)
    total = None
    if with_total:
        total = float(mask.sum()) if agg == "token_mean" else float(len(mask))
    ours, stats = policy_loss(
        logp,
        old,
        adv,
        mask,
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
        agg=agg,
        max_tokens=MAX_TOKENS,
        ref_logp=ref,
        beta=BETA,
        total=total,
        loss="clip",
    )
    per_token = trl_per_token_loss(logp, old, ref, adv, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=BETA)
    trl = trl_aggregate(
        loss_type, per_token, mask, max_completion_length=MAX_TOKENS, num_items_in_batch=mask.sum().to(dtype)
    )
    (v_ours, g_ours), (v_trl, g_trl) = value_and_grad(ours, logp), value_and_grad(trl, logp)
    assert_close(v_ours, v_trl)
    assert_close(g_ours, g_trl)
    assert (g_ours[mask == 0] == 0).all()
    # TRL's "kl" metric: the masked mean of per_token_kl
    kl = (torch.exp(ref - logp) - (ref - logp) - 1).detach()
    assert stats["kl"] == pytest.approx(float(kl[mask.bool()].mean()), rel=1e-5)


@pytest.mark.parametrize("agg, loss_type", [("seq_mean", "grpo"), ("constant", "dr_grpo")])
def test_micro_batches_equal_trl_gradient_accumulation(agg, loss_type):
    """update.py's micro-batches (each normalised by the whole batch's row count) = TRL's gradient
    accumulation (each micro-batch's grpo/dr_grpo loss divided by the accumulation steps), chunk by
    chunk, for micro-batches of equal size (TRL's per_device_train_batch_size)."""
    logp, old, ref, adv, mask = make(4)
    for rows in (slice(0, 3), slice(3, 6)):
        ours, _ = policy_loss(
            logp[rows],
            old[rows],
            adv[rows],
            mask[rows],
            eps_low=EPS_LOW,
            eps_high=EPS_HIGH,
            agg=agg,
            max_tokens=MAX_TOKENS,
            ref_logp=ref[rows],
            beta=BETA,
            total=float(len(mask)),
        )
        per_token = trl_per_token_loss(
            logp[rows], old[rows], ref[rows], adv[rows], epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=BETA
        )
        trl = trl_aggregate(
            loss_type, per_token, mask[rows], max_completion_length=MAX_TOKENS, gradient_accumulation_steps=2
        )
        for a, b in zip(value_and_grad(ours, logp), value_and_grad(trl, logp)):
            assert_close(a, b)


def test_ranks_equal_trl_dapo_across_processes():
    """token_mean with the global token count, times the world size as update.py backpropagates it
    (DDP then averages), = TRL dapo on each process (num_items_in_batch gathered, / num_processes),
    for two ranks holding different numbers of tokens. (TRL's bnpo would normalise each rank by its
    own tokens instead: ours on one whole batch is bnpo, split over ranks or micro-batches it is dapo.)"""
    logp, old, ref, adv, mask = make(5)
    shards, size = (slice(0, 2), slice(2, 6)), 2
    num_items_in_batch = mask.sum().double()
    assert mask[shards[0]].sum() != mask[shards[1]].sum()
    for rows in shards:
        ours, _ = policy_loss(
            logp[rows],
            old[rows],
            adv[rows],
            mask[rows],
            eps_low=EPS_LOW,
            eps_high=EPS_HIGH,
            agg="token_mean",
            ref_logp=ref[rows],
            beta=BETA,
            total=float(num_items_in_batch),
        )
        per_token = trl_per_token_loss(
            logp[rows], old[rows], ref[rows], adv[rows], epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=BETA
        )
        trl = trl_aggregate(
            "dapo", per_token, mask[rows], num_items_in_batch=num_items_in_batch, num_processes=size
        )
        for a, b in zip(value_and_grad(ours * size, logp), value_and_grad(trl, logp)):
            assert_close(a, b)


# ---- aggregations, with the KL term: verl --------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_token_mean_equals_verl_token_mean(dtype):
    """token_mean = verl agg_loss "token-mean" (pg loss + kl_loss_coef · k3 KL loss), locally and per
    data-parallel rank (batch_num_tokens = the global count, × dp_size; ours × world size in update.py)."""
    logp, old, ref, adv, mask = make(6, dtype)
    ours, _ = policy_loss(
        logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, agg="token_mean", ref_logp=ref, beta=BETA
    )
    verl = verl_actor_loss(old, logp, adv, mask, "token-mean", BETA, ref)
    for a, b in zip(value_and_grad(ours, logp), value_and_grad(verl, logp)):
        assert_close(a, b)
    tokens, size = float(mask.sum()), 2
    for rows in (slice(0, 4), slice(4, 6)):
        ours, _ = policy_loss(
            logp[rows],
            old[rows],
            adv[rows],
            mask[rows],
            eps_low=EPS_LOW,
            eps_high=EPS_HIGH,
            agg="token_mean",
            ref_logp=ref[rows],
            beta=BETA,
            total=tokens,
        )
        verl = verl_actor_loss(
            old[rows],
            logp[rows],
            adv[rows],
            mask[rows],
            "token-mean",
            BETA,
            ref[rows],
            dp_size=size,
            batch_num_tokens=tokens,
        )
        for a, b in zip(value_and_grad(ours * size, logp), value_and_grad(verl, logp)):
            assert_close(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_seq_mean_equals_verl_seq_mean_token_mean(dtype):
    """seq_mean = verl "seq-mean-token-mean" given the global batch size (what verl's engine passes:
    ppo_mini_batch_size rows), per rank with dp_size. Deliberate difference: verl's local default
    (global_batch_size None) counts only rows with at least one token, while ours, like TRL's grpo
    (`.mean()` over every row), counts a fully masked row too. So there ours = verl · (rows with a
    token) / (rows). Counting every row keeps a row's weight the same whether or not another row of
    the batch was masked out (mask_truncated), and lets micro-batches and ranks use the row count
    known before the backward."""
    logp, old, ref, adv, mask = make(7, dtype)
    rows_total, with_tokens = len(mask), int((mask.sum(-1) > 0).sum())
    assert with_tokens < rows_total  # the fully masked row is where the two differ
    ours, _ = policy_loss(
        logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, agg="seq_mean", ref_logp=ref, beta=BETA
    )
    global_bs = verl_actor_loss(
        old, logp, adv, mask, "seq-mean-token-mean", BETA, ref, global_batch_size=rows_total
    )
    local = verl_actor_loss(old, logp, adv, mask, "seq-mean-token-mean", BETA, ref)
    ours = value_and_grad(ours, logp)
    for a, b in zip(ours, value_and_grad(global_bs, logp)):
        assert_close(a, b)
    for a, b in zip(ours, value_and_grad(local * with_tokens / rows_total, logp)):
        assert_close(a, b)
    size = 2  # per rank, update.py's loss × world size = verl's per-rank loss with dp_size
    for rows in (slice(0, 3), slice(3, 6)):
        ours, _ = policy_loss(
            logp[rows],
            old[rows],
            adv[rows],
            mask[rows],
            eps_low=EPS_LOW,
            eps_high=EPS_HIGH,
            agg="seq_mean",
            ref_logp=ref[rows],
            beta=BETA,
            total=float(rows_total),
        )
        verl = verl_actor_loss(
            old[rows],
            logp[rows],
            adv[rows],
            mask[rows],
            "seq-mean-token-mean",
            BETA,
            ref[rows],
            dp_size=size,
            global_batch_size=rows_total,
        )
        for a, b in zip(value_and_grad(ours * size, logp), value_and_grad(verl, logp)):
            assert_close(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_equals_verl_seq_mean_token_sum_norm_over_rows(dtype):
    """constant (Dr. GRPO: Σ tokens / (rows · max_tokens), as TRL's dr_grpo) = verl
    "seq-mean-token-sum-norm" with loss_scale_factor = max_tokens, divided by the row count.
    Deliberate difference: verl's mode divides the token sum by the constant only (its actor then
    divides by the accumulation steps, not by rows), so it is ours times the number of rows in the
    micro-batch: the same direction, a learning-rate factor apart. verl's default loss_scale_factor
    is the padded length of the micro-batch, which changes batch to batch; ours is max_new_tokens."""
    logp, old, ref, adv, mask = make(8, dtype)
    ours, _ = policy_loss(
        logp,
        old,
        adv,
        mask,
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
        agg="constant",
        max_tokens=MAX_TOKENS,
        ref_logp=ref,
        beta=BETA,
    )
    verl = verl_actor_loss(
        old, logp, adv, mask, "seq-mean-token-sum-norm", BETA, ref, loss_scale_factor=MAX_TOKENS
    )
    for a, b in zip(value_and_grad(ours, logp), value_and_grad(verl / len(mask), logp)):
        assert_close(a, b)


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_aggregation_ignores_what_lies_past_the_mask(agg):
    """verl's masked_sum zeroes values outside the mask before summing; ours multiplies by the mask.
    The same for any finite padding value: other values past each row's end change nothing."""
    logp, old, ref, adv, mask = make(9)
    per_token = trl_per_token_loss(logp, old, ref, adv, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=BETA)
    noise = torch.randn(per_token.shape, generator=torch.Generator().manual_seed(9), dtype=per_token.dtype)
    other = per_token + 1e3 * noise * (mask == 0)
    a = aggregate(per_token, mask, agg, max_tokens=MAX_TOKENS)
    b = aggregate(other, mask, agg, max_tokens=MAX_TOKENS)
    assert_close(a, b)
    assert_close(torch.autograd.grad(a, logp, retain_graph=True)[0], torch.autograd.grad(b, logp)[0])


# ---- advantages ---------------------------------------------------------------------------------

REWARDS = torch.tensor(
    [
        [3.0, 2.0, 2.0, 0.0, 3.0],
        [0.0, 0.0, 2.0, 0.0, 0.0],
        [2.0, 2.0, 2.0, 2.0, 2.0],  # flat, exactly representable: advantage 0 for all
        [1.5, -0.25, 3.0, 0.75, 2.0],
    ]
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_equal_trl(scale, dtype):
    """ADVANTAGES[scale] = TRL's (r - group mean) / (std + 1e-4) with scale_rewards = scale. TRL's
    std is `nanstd`, with Bessel's correction (n - 1), as torch.std's default that ours uses; the
    population std would differ by √(G / (G-1)) and fail this test."""
    rewards = REWARDS.to(dtype)
    P, G = rewards.shape
    ours = group_advantages(rewards, scale)
    trl = trl_advantages(rewards.flatten(), G, scale).view(P, G)
    assert_close(ours, trl)
    if scale != "none":
        biased = (
            rewards.std(dim=1, keepdim=True, unbiased=False)
            if scale == "group"
            else rewards.std(unbiased=False)
        )
        assert not torch.allclose(ours[0], ((rewards - rewards.mean(1, keepdim=True)) / (biased + 1e-4))[0])


@pytest.mark.parametrize("norm_adv_by_std_in_grpo, scale", [(True, "group"), (False, "none")])
def test_advantages_equal_verl_grpo(norm_adv_by_std_in_grpo, scale):
    """ADVANTAGES[scale] with eps = 1e-6 = verl compute_grpo_outcome_advantage (torch.std, unbiased;
    rows grouped by uid in any order; the outcome reward on a row's last token, the advantage on
    every token of its response mask). verl gives a group of one mean 0 and std 1; reasonlab's
    groups have at least 2 rows (GRPOConfig.group_size >= 2), so that case does not arise."""
    rewards = REWARDS.double()
    P, G = rewards.shape
    lengths = torch.tensor([1 + (3 * i) % T for i in range(P * G)])
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    order = torch.randperm(P * G, generator=torch.Generator().manual_seed(10))
    uid = [f"prompt-{int(i) // G}" for i in order]
    token_level_rewards = torch.zeros(P * G, T, dtype=torch.float64)
    token_level_rewards[torch.arange(P * G), lengths[order] - 1] = rewards.flatten()[order]
    verl = verl_grpo_advantage(
        token_level_rewards, mask[order], uid, epsilon=1e-6, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo
    )
    ours = group_advantages(rewards, scale, eps=1e-6).flatten()[order]
    assert_close(ours[:, None] * mask[order], verl)


def test_flat_group_is_exactly_zero_where_peers_divide_rounding_by_eps():
    """Deliberate (algos.centred, docs/methods.md "Groups with no signal cost no training"): a group
    whose rewards are all equal gets advantage exactly 0. TRL and verl compute (r - mean) / (0 + ε),
    and a float mean that rounds away from the value (the float32 mean of seven 0.1 is 7e-9 off
    0.1 here) becomes -7.5e-5 (TRL, ε = 1e-4) or -7.4e-3 (verl, ε = 1e-6) on every row: a signal
    with no reward spread behind it. Elsewhere in the batch ours and the peers agree."""
    rewards = torch.tensor([[0.1] * 7, [0.1, 0.3, 0.0, 0.1, 0.2, 0.6, 0.1]])
    ours = group_advantages(rewards, "group")
    trl = trl_advantages(rewards.flatten(), 7, "group").view(2, 7)
    assert torch.equal(ours[0], torch.zeros(7))
    assert trl[0].abs().max() < 1e-3  # the peer's rounding: zero or near it
    assert_close(ours[1], trl[1])
    verl = verl_grpo_advantage(rewards.flatten()[:, None].clone(), torch.ones(14, 1), [0] * 7 + [1] * 7)[:, 0]
    assert verl[:7].abs().max() < 1e-2
    assert_close(group_advantages(rewards, "group", eps=1e-6)[1], verl[7:])
