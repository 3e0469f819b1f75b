"""GSPO and CISPO (`POLICY_LOSSES["gspo"]`, `["cispo"]`) against their papers and their peers' code.

Each formula is written out below in plain torch (trl and verl are not dependencies and are not
imported), from the sources named in tests/rl/test_peer_losses.py (huggingface/trl f2cd577,
volcengine/verl b178a3c):

- GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): TRL `GRPOTrainer._compute_loss`
  with importance_sampling_level="sequence", loss_type="grpo" (the paper's setup, as TRL's docs
  say), and verl `compute_policy_loss_gspo` (the GSPO-token form, aggregated seq-mean-token-mean).
- CISPO (MiniMax-M1, 2025): verl `compute_policy_loss_cispo` (clip(ρ, 1-ε_low, 1+ε_high), the
  paper's eq. 5) and TRL loss_type="cispo" (ρ capped at epsilon_high alone, over the batch's tokens).

Where ours departs from a peer, the test says so: verl's seq-mean-token-mean leaves fully masked
rows out of its denominator (ours counts them, as TRL's grpo does); verl clamps GSPO's log-ratio at
10 (not reached here); TRL counts clipped sequences for GSPO and clipped positive-advantage tokens
for CISPO, ours (as verl) the share of tokens.

Run (seconds, CPU only): pytest -q tests/rl/test_gspo_cispo.py
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from reasonlab.rl import GRPOConfig, train_grpo
from reasonlab.rl.algos import POLICY_LOSSES, aggregate, policy_loss
from tests.conftest import constant_task
from tests.rl.test_methods import TOK, seven_or_eight
from tests.rl.test_peer_losses import verl_agg_loss, verl_masked_sum

LENGTHS = [7, 3, 0, 5, 1, 6]  # ragged rows; row 2 fully masked
# Per-row shift of log π - log π_old, against each row's advantage: row 0 (A > 0) and row 1 (A < 0)
# past the clip on the side that bites, row 3 inside, rows 4 and 5 past it on the side that does not.
SHIFTS = [0.5, -0.5, 0.0, 0.05, -0.5, 0.5]
ADVANTAGES = [0.9, -1.1, 0.5, 0.7, 1.3, -0.6]
EPS_LOW, EPS_HIGH = 0.2, 0.28
GSPO_PAPER_EPS = (3e-4, 4e-4)
AGGS = ["token_mean", "seq_mean", "constant"]
MAX_TOKENS = 9


def make(seed: int = 0, dtype=torch.float64, pad_logp: float = -7.0):
    """(N, T) log-probs (a leaf that requires grad), old log-probs, (N,) advantages and an int mask.
    Per-token log-ratios are each row's shift plus noise (within e^±1 of it); past each row's end
    the log-probs are other values (padding), which no loss may read."""
    g = torch.Generator().manual_seed(seed)
    n, t = len(LENGTHS), max(LENGTHS)
    mask = (torch.arange(t)[None] < torch.tensor(LENGTHS)[:, None]).long()
    logp = -3 * torch.rand(n, t, generator=g, dtype=torch.float64)
    noise = (0.25 * torch.randn(n, t, generator=g, dtype=torch.float64)).clamp(-0.5, 0.5)
    old = logp - torch.tensor(SHIFTS, dtype=torch.float64)[:, None] - noise
    logp, old = logp.masked_fill(mask == 0, pad_logp), old.masked_fill(mask == 0, -0.5)
    adv = torch.tensor(ADVANTAGES, dtype=torch.float64)
    return logp.to(dtype).requires_grad_(), old.to(dtype), adv.to(dtype), mask


def grad(loss: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(loss, logp, retain_graph=True)[0]


def masked_sum_grad(per_token, mask, logp):
    """d loss_t / d logp (summed over the mask): each token's own gradient."""
    return grad((per_token * mask).sum(), logp)


# ---- the formulas, written out --------------------------------------------------------------------


def paper_gspo_ratio(logp, old, mask):
    """GSPO eq. 7: s_i = (π_θ(y_i|x) / π_old(y_i|x))^(1/|y_i|) = exp(mean_t log-ratio), per sequence."""
    rows = []
    for i, n in enumerate(LENGTHS):
        rows.append(torch.exp((logp[i, :n] - old[i, :n]).sum() / max(n, 1)))
    return torch.stack(rows)


def trl_gspo(per_token_logps, old_per_token_logps, advantages, mask, *, epsilon_low, epsilon_high):
    """TRL _compute_loss, importance_sampling_level="sequence", loss_type="grpo": the (B, 1) loss
    and the aggregated loss."""
    log_ratio = per_token_logps - old_per_token_logps
    log_importance_weights = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    coef_1 = torch.exp(log_importance_weights.unsqueeze(-1))
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    advantages = advantages.unsqueeze(1)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    return per_token_loss, loss


def verl_gspo(old_log_prob, log_prob, advantages, response_mask, *, clip_ratio_low, clip_ratio_high):
    """verl compute_policy_loss_gspo (GSPO-token): (bs, T) pg_losses, pg_clipfrac. Token-level
    advantages (bs, T)."""
    negative_approx_kl = log_prob - old_log_prob
    seq_lengths = torch.sum(response_mask, dim=-1).clamp(min=1)
    negative_approx_kl_seq = torch.sum(negative_approx_kl * response_mask, dim=-1) / seq_lengths
    log_seq_ratio = log_prob - log_prob.detach() + negative_approx_kl_seq.detach().unsqueeze(-1)
    seq_ratio = torch.exp(torch.clamp(log_seq_ratio, max=10.0))
    pg_losses1 = -advantages * seq_ratio
    pg_losses2 = -advantages * torch.clamp(seq_ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    pg_losses = torch.maximum(pg_losses1, pg_losses2)
    m = response_mask.to(seq_ratio.dtype)
    return pg_losses, verl_masked_sum(torch.gt(pg_losses2, pg_losses1).to(m.dtype), m) / m.sum()


def verl_cispo(old_log_prob, log_prob, advantages, response_mask, *, clip_ratio_low, clip_ratio_high):
    """verl compute_policy_loss_cispo: (bs, T) pg_losses and pg_clipfrac."""
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    clipped_ratio = torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    pg_losses = -clipped_ratio.detach() * advantages * log_prob
    m = response_mask.to(ratio.dtype)
    return pg_losses, verl_masked_sum((ratio != clipped_ratio).to(m.dtype), m) / m.sum()


def trl_cispo(per_token_logps, old_per_token_logps, advantages, mask, *, epsilon_high, num_items_in_batch):
    """TRL _compute_loss, loss_type="cispo", importance_sampling_level="token": the aggregated loss."""
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    clamped_ratios = torch.clamp(coef_1, max=epsilon_high).detach()
    per_token_loss = -clamped_ratios * advantages.unsqueeze(1) * per_token_logps
    return (per_token_loss * mask).sum() / num_items_in_batch.clamp(min=1.0)


def assert_gspo_clips_bite(logp, old, adv, eps_low=EPS_LOW, eps_high=EPS_HIGH):
    s = paper_gspo_ratio(logp, old, None).detach()
    assert s[0] > 1 + eps_high and adv[0] > 0 and s[1] < 1 - eps_low and adv[1] < 0
    assert 1 - eps_low < s[3] < 1 + eps_high
    assert s[4] < 1 - eps_low and adv[4] > 0 and s[5] > 1 + eps_high and adv[5] < 0  # unclipped sides


# ---- GSPO -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gspo_per_sequence_equals_paper_and_trl_sequence_level(dtype):
    """Per token: the sequence's -min(s A, clip(s) A), s the paper's length-normalised ratio; equal to
    TRL's (B, 1) loss on every token of the mask, with the gradient through s."""
    logp, old, adv, mask = make(1, dtype)
    assert_gspo_clips_bite(logp, old, adv)
    m, on = mask.to(dtype), mask.bool()
    ours, stats = POLICY_LOSSES["gspo"](logp, old, adv, m, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    s = paper_gspo_ratio(logp, old, mask)
    paper = -torch.minimum(s * adv, s.clamp(1 - EPS_LOW, 1 + EPS_HIGH) * adv)
    trl, _ = trl_gspo(logp, old, adv, m, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH)
    assert_close(ours[on], paper[:, None].expand_as(ours)[on])
    assert_close(ours[on], trl.expand_as(ours)[on])
    # the mean over each sequence's tokens is the sequence's loss: its gradient is the paper's
    per_seq = (ours * m).sum(-1) / m.sum(-1).clamp(min=1)
    assert_close(grad(per_seq.sum(), logp), grad(paper[m.sum(-1) > 0].sum(), logp))
    # clipped sequences: rows 0 and 1 (7 + 3 tokens of 22)
    assert stats["clip_frac"] == pytest.approx(10 / 22)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gspo_seq_mean_equals_trl_grpo_and_verl_gspo(dtype):
    """policy_loss(loss="gspo", agg="seq_mean") = TRL's sequence-level grpo loss = verl's GSPO-token
    loss under seq-mean-token-mean (its denominator counting the fully masked row, as ours and
    TRL's): values and gradients. verl's clip fraction is ours."""
    logp, old, adv, mask = make(2, dtype)
    assert_gspo_clips_bite(logp, old, adv)
    ours, stats = policy_loss(
        logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, agg="seq_mean", loss="gspo"
    )
    _, trl = trl_gspo(logp, old, adv, mask.to(dtype), epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH)
    m = mask.to(dtype)
    pg, clipfrac = verl_gspo(old, logp, adv[:, None] * m, m, clip_ratio_low=EPS_LOW, clip_ratio_high=EPS_HIGH)
    verl = verl_agg_loss(pg, m, "seq-mean-token-mean", global_batch_size=len(mask))
    for peer in (trl, verl):
        assert_close(ours, peer)
        assert_close(grad(ours, logp), grad(peer, logp))
    assert stats["clip_frac"] == pytest.approx(float(clipfrac))


@pytest.mark.parametrize("agg", AGGS)
def test_gspo_token_variant_is_the_same_loss_for_sequence_advantages(agg):
    """GSPO-token (s_t = sg[s] π_t / sg[π_t], verl's form) equals GSPO in value and gradient under
    every aggregation, as the advantage is one per sequence; `token_mean` and `constant` weight a
    sequence by its length (the paper's objective is `seq_mean`)."""
    logp, old, adv, mask = make(3)
    m = mask.double()
    ours = policy_loss(
        logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, agg=agg, max_tokens=MAX_TOKENS, loss="gspo"
    )[0]
    pg, _ = verl_gspo(old, logp, adv[:, None] * m, m, clip_ratio_low=EPS_LOW, clip_ratio_high=EPS_HIGH)
    token = aggregate(pg, mask, agg, max_tokens=MAX_TOKENS)
    assert_close(ours, token)
    assert_close(grad(ours, logp), grad(token, logp))
    if agg == "token_mean":  # the length-weighted mean of the sequences' losses
        s = paper_gspo_ratio(logp, old, mask)
        per_seq = -torch.minimum(s * adv, s.clamp(1 - EPS_LOW, 1 + EPS_HIGH) * adv)
        assert_close(ours, (per_seq * torch.tensor(LENGTHS)).sum() / sum(LENGTHS))


@pytest.mark.parametrize("eps", [(EPS_LOW, EPS_HIGH), GSPO_PAPER_EPS], ids=["dapo_eps", "paper_eps"])
def test_gspo_on_policy_gradient_is_the_sequence_mean_policy_gradient(eps):
    """μ = 1 (old = current, detached): s = 1, the clip is inactive at any ε, and the gradient is
    -(1/N) Σ_i A_i (1/|o_i|) Σ_t ∇ log π_t: the sequence-mean policy gradient."""
    logp, _, adv, mask = make(4)
    loss, stats = policy_loss(
        logp, logp.detach(), adv, mask, eps_low=eps[0], eps_high=eps[1], agg="seq_mean", loss="gspo"
    )
    n = mask.sum(-1, keepdim=True).double()
    expected = torch.where(mask.bool(), -adv[:, None] / (n.clamp(min=1) * len(mask)), 0.0)
    assert_close(grad(loss, logp), expected)
    assert_close(grad(loss, logp), grad(aggregate(-adv[:, None] * logp, mask, "seq_mean"), logp))
    assert_close(loss.detach(), -adv[n[:, 0] > 0].sum() / len(mask))
    assert stats["clip_frac"] == 0


# ---- CISPO ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cispo_per_token_equals_paper_and_verl(dtype):
    """Per token: -sg[clip(ρ, 1-ε_low, 1+ε_high)] A log π (MiniMax-M1 eq. 4-5) = verl's pg_losses;
    each token's gradient is -clip(ρ) A, whatever the clip did; verl's clip fraction is ours."""
    logp, old, adv, mask = make(5, dtype)
    m, on = mask.to(dtype), mask.bool()
    ours, stats = POLICY_LOSSES["cispo"](logp, old, adv, m, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    ratio = torch.exp(logp - old).detach()
    weight = ratio.clamp(1 - EPS_LOW, 1 + EPS_HIGH)
    assert ((ratio > 1 + EPS_HIGH) & on).any() and ((ratio < 1 - EPS_LOW) & on).any()
    paper = -weight * adv[:, None] * logp
    verl, clipfrac = verl_cispo(
        old, logp, adv[:, None] * m, m, clip_ratio_low=EPS_LOW, clip_ratio_high=EPS_HIGH
    )
    for peer in (paper, verl):
        assert_close(ours[on], peer[on])
    g = masked_sum_grad(ours, m, logp)
    assert_close(g, torch.where(on, -weight * adv[:, None], 0.0))
    assert_close(g, masked_sum_grad(verl, m, logp))
    assert stats["clip_frac"] == pytest.approx(float(clipfrac))
    clipped = ((ratio < 1 - EPS_LOW) | (ratio > 1 + EPS_HIGH)) & on
    assert stats["clip_frac"] == pytest.approx(float(clipped.sum() / on.sum()))


@pytest.mark.parametrize("eps_max", [1.3, 5.0], ids=["bites", "scalerl"])
def test_cispo_token_mean_equals_trl_cispo(eps_max):
    """TRL's cispo caps ρ at epsilon_high alone and divides by the batch's tokens: ours with
    --eps-low 1 (no lower bound: ρ > 0) and --eps-high epsilon_high - 1, --loss-agg token_mean."""
    logp, old, adv, mask = make(6)
    ours, _ = policy_loss(
        logp, old, adv, mask, eps_low=1.0, eps_high=eps_max - 1, agg="token_mean", loss="cispo"
    )
    trl = trl_cispo(
        logp, old, adv, mask.double(), epsilon_high=eps_max, num_items_in_batch=mask.sum().double()
    )
    if eps_max < 2:
        assert (torch.exp(logp - old)[mask.bool()] > eps_max).any()
    assert_close(ours, trl)
    assert_close(grad(ours, logp), grad(trl, logp))


def test_cispo_clipping_the_weight_zeroes_no_token_gradient_unlike_clip():
    """Every token of the mask keeps a gradient under cispo; under `clip` the tokens past the bound
    on the advantage's side get none (the reason CISPO was proposed)."""
    logp, old, adv, mask = make(7)
    on = mask.bool()
    g_cispo = grad(
        policy_loss(logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, loss="cispo")[0], logp
    )
    g_clip = grad(policy_loss(logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, loss="clip")[0], logp)
    ratio, a = torch.exp(logp - old).detach(), adv[:, None]
    clipped = (((ratio > 1 + EPS_HIGH) & (a > 0)) | ((ratio < 1 - EPS_LOW) & (a < 0))) & on
    assert clipped.sum() >= 3
    assert (g_clip[clipped] == 0).all()
    assert (g_cispo[on] != 0).all()
    assert (g_cispo[~on] == 0).all()


def test_cispo_on_policy_is_the_token_mean_policy_gradient():
    """μ = 1: ρ = 1, the weight is 1, and cispo is REINFORCE's -A log π averaged over the tokens."""
    logp, _, adv, mask = make(8)
    loss, stats = policy_loss(
        logp, logp.detach(), adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, loss="cispo"
    )
    expected = torch.where(mask.bool(), -adv[:, None] / mask.sum(), 0.0)
    assert_close(grad(loss, logp), expected)
    assert stats["clip_frac"] == 0


# ---- both: the mask, the KL term --------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["gspo", "cispo"])
@pytest.mark.parametrize("agg", AGGS)
def test_what_lies_past_the_mask_changes_nothing(loss, agg):
    """Other padding log-probs (-inf too: a -inf log π past a row's end) give the same value and
    gradient, the gradient 0 past each row's end, the fully masked row none at all."""
    kw = dict(eps_low=EPS_LOW, eps_high=EPS_HIGH, agg=agg, max_tokens=MAX_TOKENS, loss=loss)
    runs = []
    for pad in (-7.0, -30.0, -math.inf):
        logp, old, adv, mask = make(9, pad_logp=pad)
        if pad == -math.inf:  # both sides -inf past the mask: their difference is NaN there
            old = old.masked_fill(mask == 0, pad)
        value, _ = policy_loss(logp, old, adv, mask, **kw)
        runs.append((value.detach(), grad(value, logp), mask))
    for value, g, mask in runs:
        assert torch.isfinite(value) and torch.isfinite(g).all()
        assert (g[mask == 0] == 0).all() and (g[2] == 0).all()
        assert_close(value, runs[0][0])
        assert_close(g, runs[0][1])


@pytest.mark.parametrize("loss", ["gspo", "cispo"])
def test_kl_term_adds_to_either_loss(loss):
    """β > 0 adds β · k3 per token before the aggregation, whichever the policy loss."""
    logp, old, adv, mask = make(10)
    ref = logp.detach() + 0.3
    kw = dict(eps_low=EPS_LOW, eps_high=EPS_HIGH, agg="seq_mean", loss=loss)
    with_kl, stats = policy_loss(logp, old, adv, mask, ref_logp=ref, beta=0.04, **kw)
    without, _ = policy_loss(logp, old, adv, mask, **kw)
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    assert_close(with_kl, without + 0.04 * aggregate(kl, mask, "seq_mean"))
    assert "kl" in stats and "clip_frac" in stats


# ---- end to end -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss, extra",
    [("gspo", {"loss_agg": "seq_mean"}), ("cispo", {"eps_low": 1.0, "eps_high": 4.0})],
)
def test_grpo_run_with_each_loss_finishes_logs_and_learns(loss, extra):
    """A GRPO run with μ = 2 (the ratios leave 1 in the second step) on the model that answers 7 or
    8 at random: it finishes, logs its loss and clip_frac every step, and the accuracy rises."""
    cfg = GRPOConfig(
        steps=12,
        prompts_per_step=8,
        group_size=8,
        max_new_tokens=10,
        eval_every=0,
        lr=0.2,
        warmup_steps=1,
        seed=1,
        updates=2,
        policy_loss=loss,
        **extra,
    )
    history = []
    train_grpo(seven_or_eight(0.0), TOK, constant_task("7"), cfg, log=history.append)
    assert len(history) == cfg.steps
    for m in history:
        assert math.isfinite(m["loss"]) and 0 <= m["clip_frac"] <= 1 and "entropy" in m
    assert history[0]["reward/accuracy"] < 0.7 and history[-1]["reward/accuracy"] > 0.9
