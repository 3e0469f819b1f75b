"""GRPO's math (`reasonlab.rl.algos`, `batch`, `update`): advantages, aggregation, the clipped
loss, k3 KL, masks, and the gradient invariance of accumulation. Run: pytest tests/rl/test_rl_algos.py"""

import math

import pytest
import torch

from reasonlab.engine import Rollout
from reasonlab.rl.algos import aggregate, group_advantages, kl_k3, policy_loss
from reasonlab.rl.batch import rollout_batch
from reasonlab.rl.update import token_logprobs


def test_group_advantages_hand_computed():
    rewards = torch.tensor([[3.0, 2.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0]])
    centred = torch.tensor([[1.25, 0.25, 0.25, -1.75], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(group_advantages(rewards, "none"), centred)
    std0 = (
        torch.tensor([1.25, 0.25, 0.25, 1.75]).pow(2).sum().div(3).sqrt()
    )  # unbiased std of group 0: 1.2583
    assert torch.allclose(group_advantages(rewards, "group")[0], centred[0] / (std0 + 1e-4))
    assert torch.equal(group_advantages(rewards, "group")[1], torch.zeros(4))  # equal rewards: no signal
    tenths = torch.full((1, 7), 0.1)  # their float32 mean is 0.1 - 7e-9: still exactly no signal
    for scale in ("group", "batch", "none"):
        assert torch.equal(group_advantages(tenths, scale), torch.zeros(1, 7))
    assert torch.allclose(group_advantages(rewards, "batch"), centred / (rewards.std() + 1e-4))
    with pytest.raises(ValueError):
        group_advantages(rewards, "nope")


def test_aggregations_hand_computed():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(10 / 4)  # DAPO: per token
    assert aggregate(values, mask, "seq_mean").item() == pytest.approx((2 + 4) / 2)  # GRPO: per sequence
    assert aggregate(values, mask, "constant", max_tokens=5).item() == pytest.approx(10 / (2 * 5))  # Dr. GRPO


def test_kl_k3_is_zero_at_equality_and_positive_elsewhere():
    logp = torch.log(torch.tensor([0.5, 0.2]))
    assert torch.allclose(kl_k3(logp, logp), torch.zeros(2))
    ref = torch.log(torch.tensor([0.4, 0.3]))
    r = ref - logp
    assert torch.allclose(kl_k3(logp, ref), torch.exp(r) - r - 1) and (kl_k3(logp, ref) > 0).all()


def test_policy_loss_clipping_hand_computed():
    old = torch.zeros(1, 2)
    logp = torch.tensor([[math.log(1.5), math.log(0.5)]])  # ratios 1.5 and 0.5
    mask = torch.ones(1, 2)
    # Positive advantage: ratio 1.5 clipped at 1.28 (eps_high), ratio 0.5 not clipped (min takes it).
    loss, stats = policy_loss(logp, old, torch.tensor([1.0]), mask, eps_low=0.2, eps_high=0.28)
    assert loss.item() == pytest.approx(-(1.28 + 0.5) / 2)
    assert stats["clip_frac"] == pytest.approx(0.5)
    # Negative advantage: ratio 0.5 clipped at 0.8 → -0.8*-1; ratio 1.5 unclipped → 1.5.
    loss, _ = policy_loss(logp, old, torch.tensor([-1.0]), mask, eps_low=0.2, eps_high=0.28)
    assert loss.item() == pytest.approx((1.5 + 0.8) / 2)


def test_policy_loss_on_policy_gradient_is_advantage_times_grad_logp():
    logits = torch.randn(2, 3, requires_grad=True)
    logp = torch.log_softmax(logits, -1)[:, :1].expand(2, 1)  # (N=2, T=1)
    adv = torch.tensor([2.0, -1.0])
    loss, _ = policy_loss(logp, logp.detach(), adv, torch.ones(2, 1), agg="seq_mean")
    loss.backward()
    manual = logits.detach().clone().requires_grad_()
    (-(adv * torch.log_softmax(manual, -1)[:, 0]).mean()).backward()
    assert torch.allclose(logits.grad, manual.grad)


def test_policy_loss_kl_term_needs_reference():
    logp = torch.zeros(1, 2)
    with pytest.raises(ValueError):
        policy_loss(logp, logp, torch.ones(1), torch.ones(1, 2), beta=0.1)
    ref = torch.full((1, 2), -0.5)
    loss0, _ = policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 2))
    loss1, stats = policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 2), beta=0.1, ref_logp=ref)
    assert loss1.item() == pytest.approx(loss0.item() + 0.1 * kl_k3(logp, ref).mean().item())
    assert stats["kl"] > 0


def test_rollout_batch_masks_forced_and_truncated_tokens():
    rollout = Rollout(
        prompt_ids=[[5, 6], [7]],
        tokens=torch.tensor([[1, 2, 3], [4, 0, 0]]),
        logprobs=torch.zeros(2, 3),
        sampled_mask=torch.tensor([[1, 0, 1], [1, 0, 0]]),
        lengths=torch.tensor([3, 1]),
        think_tokens=[0, 0],
        finish_reason=["stop", "length"],
    )
    ids, mask, _ = rollout_batch(rollout, pad_id=0)
    assert ids.tolist() == [[5, 6, 1, 2, 3], [7, 4, 0, 0, 0]]
    # mask[t] = 1 when token t+1 is a sampled completion token: row 0 tokens 1 (sampled), 2 (forced), 3
    assert mask.tolist() == [[0, 1, 0, 1], [1, 0, 0, 0]]
    _, mask, _ = rollout_batch(rollout, pad_id=0, mask_truncated=True)
    assert mask[1].sum() == 0 and mask[0].sum() == 2


def test_accumulation_invariance_8x1_equals_4x2(tiny_gpt):
    """One batch of 8 and two accumulated halves of 4 give the same gradient (token_mean over the
    whole batch needs the global token count; seq_mean splits evenly)."""
    model, _ = tiny_gpt
    torch.manual_seed(0)
    ids = torch.randint(6, 100, (8, 12))
    mask = (torch.rand(8, 11) > 0.3).float()
    adv = torch.randn(8)

    def grads(chunks, weights, agg):
        model.zero_grad()
        for rows, w in zip(chunks, weights):
            logp, _ = token_logprobs(model, ids[rows])
            loss, _ = policy_loss(logp, logp.detach(), adv[rows], mask[rows], agg=agg)
            (loss * w).backward()
        return [p.grad.clone() for p in model.parameters()]

    halves = [slice(0, 4), slice(4, 8)]
    for agg, weights in (
        ("seq_mean", [0.5, 0.5]),  # equal halves of sequences
        ("token_mean", [float(mask[r].sum() / mask.sum()) for r in halves]),
    ):  # token shares
        full = grads([slice(0, 8)], [1.0], agg)
        accumulated = grads(halves, weights, agg)
        for a, b in zip(full, accumulated):
            assert torch.allclose(a, b, atol=1e-6), agg
