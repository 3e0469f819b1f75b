"""The entropy bonus (`--entropy-coef`): the loss minus c times each token's entropy of
softmax(logits / T), aggregated like the policy loss (verl's `entropy_coeff`, subtracted from the
policy loss after the same aggregation); its gradient raises the entropy; flat groups are trained on
when it is on (their advantage is 0, the bonus is not)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reasonlab.model import new_builtin
from reasonlab.rl import GRPOConfig, train_grpo
from reasonlab.rl.algos import policy_loss
from reasonlab.rl.update import token_logprobs
from tests.conftest import constant_task


def test_the_bonus_is_the_aggregated_entropy_times_the_coefficient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (3, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float64)
    advantages = torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)
    logp_all = F.log_softmax(logits / 0.7, dim=-1)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    # by hand: H = -sum_v p_v log p_v per token, token-mean over the 9 tokens on the mask
    by_hand = sum(
        -sum(float(p) * float(lp) for p, lp in zip(logp_all[i, t].detach().exp(), logp_all[i, t].detach()))
        for i in range(3)
        for t in range(5)
        if mask[i, t]
    ) / float(mask.sum())
    base, _ = policy_loss(logp, logp.detach(), advantages, mask)
    with_bonus, _ = policy_loss(logp, logp.detach(), advantages, mask, entropy=entropy, entropy_coef=0.01)
    assert float((base - with_bonus).detach()) == pytest.approx(0.01 * by_hand, rel=1e-12)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(logp, logp.detach(), advantages, mask, entropy=entropy.detach(), entropy_coef=0.01)


def test_token_logprobs_gives_the_entropy_with_its_gradient_only_when_asked():
    model, tok = new_builtin(seed=0)
    ids = torch.tensor([tok.encode("1+2=3 and more text")])
    logp, h = token_logprobs(model, ids, 0.8)
    logp2, h2 = token_logprobs(model, ids, 0.8, entropy_grad=True)
    assert not h.requires_grad and h2.requires_grad
    torch.testing.assert_close(h, h2.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logp, logp2)


def run(coef: float):
    model, tok = new_builtin(seed=3)
    with torch.no_grad():  # logits x 8: a confident policy (near-uniform at init), as after fine-tuning
        model.model.norm.weight.mul_(8.0)
    cfg = GRPOConfig(
        steps=3,
        prompts_per_step=2,
        group_size=3,
        max_new_tokens=8,
        eval_every=0,
        lr=1e-2,
        warmup_steps=1,
        format_points=0.0,
        correct_points=0.0,  # every reward 0: every group flat, the policy gradient zero
        entropy_coef=coef,
        seed=1,
    )
    history = []
    train_grpo(model, tok, constant_task("7"), cfg, log=history.append)
    return history


def test_flat_groups_train_on_the_bonus_and_it_raises_the_entropy():
    off, on = run(0.0), run(0.5)
    assert all(m["sampling/groups_trained"] == 1 and m["grad_norm"] == 0 for m in off)  # skipped
    assert all(m["sampling/groups_trained"] == 2 for m in on)
    assert all(m["grad_norm"] > 0 for m in on)
    assert on[-1]["entropy"] > on[0]["entropy"] + 0.5  # the update climbs the entropy (1.0 -> 2.5)
