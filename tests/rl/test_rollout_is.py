"""The rollout correction (`--rollout-is`): importance weights π_train / π_rollout for the gap between
the log-probs the engine sampled with and the trainer's, per token or per sequence, truncated (TIS)
or masked (MIS) at a cap C; each mode against its formula on hand-computed tensors, against TRL's
`GRPOTrainer` (trl/trainer/grpo_trainer.py, `vllm_importance_sampling_mode`: the ratio
exp(old - sampling) per token or exp of its masked sum per sequence, clamped at the cap (*_truncate)
or set to 0 past it (*_mask), multiplying the per-token loss before the KL term), and end to end:
the engine's log-probs reach the batch in the mask's coordinates, in both layouts.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from reasonlab.engine import SamplingParams, generate
from reasonlab.rl import GRPOConfig, train_grpo
from reasonlab.rl.algos import ROLLOUT_CORRECTIONS, policy_loss, rollout_weights
from reasonlab.rl.batch import build_batch
from reasonlab.rl.types import Group, Policy
from reasonlab.rl.update import token_logprobs, update
from reasonlab.rollout_vllm import rollout_from_outputs
from tests.conftest import constant_task
from tests.rl.test_methods import TOK, seven_or_eight

CAP = 2.0
# (N, T) log-ratios log π_train - log π_rollout on the mask: row 0 small gaps, row 1 one token past
# the cap (e^0.9 = 2.46), row 2 a sequence whose product passes it (e^(0.3·3) = 2.46) with no token
# past it, row 3 below 1; off the mask (-1 entries of LENGTHS' complement) a huge gap no mode may read.
LOG_RATIO = torch.tensor(
    [
        [0.01, -0.02, 0.03, 0.00],
        [0.10, 0.90, -0.10, 0.00],
        [0.30, 0.30, 0.30, 0.00],
        [-0.50, -0.20, 0.00, 0.00],
    ],
    dtype=torch.float64,
)
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float64)


def sides():
    """Trainer and rollout log-probs with LOG_RATIO between them on the mask and 9 off it."""
    g = torch.Generator().manual_seed(0)
    train = -2 * torch.rand(LOG_RATIO.shape, generator=g, dtype=torch.float64)
    rollout = train - LOG_RATIO
    rollout = torch.where(MASK > 0, rollout, train - 9.0)
    return train, rollout


# ---- the formulas, written out -------------------------------------------------------------------


def by_hand(mode: str) -> torch.Tensor:
    """Each mode's weight from its definition, row by row and token by token (plain Python)."""
    out = torch.zeros_like(LOG_RATIO)
    for i in range(LOG_RATIO.shape[0]):
        on = [t for t in range(LOG_RATIO.shape[1]) if MASK[i, t] > 0]
        seq = math.exp(sum(float(LOG_RATIO[i, t]) for t in on))
        for t in range(LOG_RATIO.shape[1]):
            rho = math.exp(float(LOG_RATIO[i, t])) if t in on else 1.0
            r = seq if mode.startswith("sequence") else rho
            out[i, t] = min(r, CAP) if mode.endswith("truncate") else (r if r <= CAP else 0.0)
    return out


def trl_is_ratio(old_per_token_logps, sampling_per_token_logps, mask, mode, cap):
    """TRL's `_generate_and_score_completions`, the vLLM importance-sampling ratio, written out."""
    per_token_logps_diff = (old_per_token_logps - sampling_per_token_logps) * mask
    if mode in ("sequence_mask", "sequence_truncate"):
        logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)
    else:
        logps_diff = per_token_logps_diff
    ratio = torch.exp(logps_diff)
    if mode in ("sequence_truncate", "token_truncate"):
        return torch.clamp(ratio, max=cap)
    return ratio.masked_fill(ratio > cap, value=0.0)


def trl_dapo_loss(per_token_logps, old_per_token_logps, advantages, mask, is_ratio, eps_low, eps_high):
    """TRL's `_compute_loss`, loss_type "dapo" (a token mean over the batch), β = 0, with the ratio."""
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(coef_1 * advantages[:, None], coef_2 * advantages[:, None])
    per_token_loss = per_token_loss * is_ratio
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)


MODES = [m for m in ROLLOUT_CORRECTIONS if m != "none"]


def test_the_registry_holds_the_four_modes_and_none():
    assert set(ROLLOUT_CORRECTIONS) == {
        "none",
        "token_truncate",
        "token_mask",
        "sequence_truncate",
        "sequence_mask",
    }


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_is_its_formula_and_trls(mode):
    train, rollout = sides()
    weight, _ = rollout_weights(train, rollout, MASK, mode, CAP)
    on = MASK > 0
    assert_close(weight[on], by_hand(mode)[on])
    assert_close(weight[on], trl_is_ratio(train, rollout, MASK, mode, CAP).expand_as(weight)[on])


def test_which_rows_each_mode_cuts():
    """Row 1's one token past the cap: truncated to C or zeroed alone per token, and the whole row cut
    per sequence; row 2 passes only as a sequence; row 3 (below 1) is never cut."""
    train, rollout = sides()
    w = {m: rollout_weights(train, rollout, MASK, m, CAP)[0] for m in MODES}
    assert w["token_truncate"][1, 1] == CAP and w["token_mask"][1, 1] == 0
    assert w["token_mask"][1, 0] == pytest.approx(math.exp(0.1))
    assert (w["sequence_mask"][1] == 0).all() and (w["sequence_truncate"][1] == CAP).all()
    assert (w["token_mask"][2, :3] > 1).all() and (w["sequence_mask"][2] == 0).all()
    for m in MODES:
        assert (w[m][3, :2] < 1).all() and (w[m][3, :2] > 0).all()


def test_none_gives_no_weight_but_still_measures_the_gap():
    train, rollout = sides()
    weight, stats = rollout_weights(train, rollout, MASK, "none", CAP)
    _, truncated = rollout_weights(train, rollout, MASK, "token_truncate", CAP)
    assert weight is None and stats["is/capped"] == 0
    for key in ("is/ratio_mean", "is/ratio_min", "is/ratio_max", "is/kl"):
        assert stats[key] == truncated[key]


def test_statistics_over_the_mask():
    train, rollout = sides()
    _, stats = rollout_weights(train, rollout, MASK, "token_truncate", CAP)
    on = MASK > 0
    ratios = torch.exp(LOG_RATIO[on])
    assert stats["is/ratio_mean"] == pytest.approx(float(ratios.mean()))
    assert stats["is/ratio_max"] == pytest.approx(math.exp(0.9))
    assert stats["is/ratio_min"] == pytest.approx(math.exp(-0.5))
    assert stats["is/capped"] == pytest.approx(1 / int(on.sum()))
    k3 = torch.exp(LOG_RATIO[on]) - LOG_RATIO[on] - 1
    assert stats["is/kl"] == pytest.approx(float(k3.mean()))
    _, seq = rollout_weights(train, rollout, MASK, "sequence_mask", CAP)
    assert seq["is/capped"] == pytest.approx((4 + 3) / int(on.sum()))  # rows 1 and 2, every token


@pytest.mark.parametrize("mode", MODES)
def test_loss_and_gradient_equal_trls_with_the_weight_held_fixed(mode):
    """The weighted loss and its gradient equal TRL's dapo loss with its ratio; the weight, computed
    from the old log-probs, carries no gradient of its own."""
    train, rollout = sides()
    g = torch.Generator().manual_seed(1)
    logp = (train + 0.1 * torch.randn(train.shape, generator=g, dtype=torch.float64)).requires_grad_()
    adv = torch.tensor([0.9, -1.1, 0.5, 0.7], dtype=torch.float64)
    weight, _ = rollout_weights(train, rollout, MASK, mode, CAP)
    ours, _ = policy_loss(logp, train, adv, MASK, eps_low=0.2, eps_high=0.28, is_weight=weight)
    theirs = trl_dapo_loss(logp, train, adv, MASK, trl_is_ratio(train, rollout, MASK, mode, CAP), 0.2, 0.28)
    assert_close(ours, theirs)
    assert_close(torch.autograd.grad(ours, logp)[0], torch.autograd.grad(theirs, logp)[0])


def test_the_weight_multiplies_the_policy_term_not_the_kl():
    train, rollout = sides()
    logp = train.clone().requires_grad_()
    ref = train - 0.3
    adv = torch.tensor([0.9, -1.1, 0.5, 0.7], dtype=torch.float64)
    weight = torch.full_like(train, 0.5)
    plain, _ = policy_loss(logp, train, adv, MASK, ref_logp=ref, beta=0.1)
    halved, _ = policy_loss(logp, train, adv, MASK, ref_logp=ref, beta=0.1, is_weight=weight)
    kl_only, _ = policy_loss(logp, train, torch.zeros_like(adv), MASK, ref_logp=ref, beta=0.1)
    assert_close(halved - kl_only, 0.5 * (plain - kl_only))


def test_an_unknown_mode_is_refused():
    train, rollout = sides()
    with pytest.raises(ValueError, match="unknown rollout correction"):
        rollout_weights(train, rollout, MASK, "tis", CAP)


def test_a_cap_below_one_is_refused():
    from reasonlab.errors import UserError

    with pytest.raises(UserError):
        GRPOConfig(rollout_is_cap=0.5)


# ---- the engine's log-probs in the batch ---------------------------------------------------------


def group_of(model, tok, G: int = 4, seed: int = 3):
    prompts = ["12+34\n<think>"] * G + ["7*8\n<think>"] * G
    rollout = generate(model, tok, prompts, SamplingParams(max_new_tokens=20, temperature=1.0, seed=seed))
    return [Group(rollout, k, torch.arange(G, dtype=torch.float32)) for k in range(2)]


@pytest.mark.parametrize("shared", [False, True])
def test_the_batch_carries_the_engines_logprobs_where_the_mask_is(tiny_gpt, shared):
    """In either layout the engine's recorded log-probs sit where the mask is 1, and there equal the
    trainer's own log-probs of those tokens (fp32 engine: to rounding)."""
    model, tok = tiny_gpt
    model.eval()
    batch = build_batch(group_of(model, tok), 4, tok.pad_id, shared=shared)
    with torch.no_grad():
        trainer = token_logprobs(model, batch.inputs)[0]
    on = batch.mask > 0
    assert batch.rollout_logp.shape == batch.mask.shape and int(on.sum()) > 20
    assert_close(batch.rollout_logp[on], trainer[on], atol=1e-4, rtol=1e-4)
    assert (batch.rollout_logp[on] < 0).all()


def test_update_with_matching_logprobs_is_the_uncorrected_update(tiny_gpt):
    """Rollout log-probs equal to the trainer's: ratio 1, nothing capped, KL 0, and the same
    gradient as with --rollout-is none; shifted past the cap on some tokens, the statistics say so and
    the step differs."""
    model, tok = tiny_gpt
    model.eval()
    batch = build_batch(group_of(model, tok), 4, tok.pad_id)
    with torch.no_grad():
        batch.rollout_logp = token_logprobs(model, batch.inputs)[0] * batch.mask
    base = {k: v.clone() for k, v in model.state_dict().items()}

    def step(mode: str, rollout_logp):
        model.load_state_dict(base)
        batch.rollout_logp = rollout_logp
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        cfg = GRPOConfig(rollout_is=mode, max_new_tokens=20, micro_batch_size=3)
        out = update(Policy(model, model, opt), batch, cfg, lr=0.1, total=float(batch.mask.sum()))
        return out, {k: v.clone() for k, v in model.state_dict().items()}

    same = batch.rollout_logp.clone()
    out_none, w_none = step("none", same)
    out_tis, w_tis = step("token_truncate", same)
    assert out_none.stats["is/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert out_tis.stats["is/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert out_tis.stats["is/capped"] == 0 and out_tis.stats["is/kl"] == pytest.approx(0.0, abs=1e-9)
    for k in w_none:
        assert_close(w_tis[k], w_none[k], atol=1e-6, rtol=1e-5)
    lowered = same - 2.0 * batch.mask * (torch.arange(same.shape[1]) % 5 == 0)  # ratio e^2 on a fifth
    out_low, w_low = step("token_mask", lowered)
    assert out_low.stats["is/capped"] > 0.1
    assert out_low.stats["is/ratio_max"] == pytest.approx(math.exp(2.0), rel=1e-4)  # over the micro-batches
    assert any(not torch.allclose(w_low[k], w_none[k]) for k in w_none)


def test_a_grpo_run_logs_the_correction_every_step():
    """fp32 rollouts from the built-in engine: the correction is on by default and near 1."""
    cfg = GRPOConfig(
        steps=3,
        prompts_per_step=4,
        group_size=4,
        max_new_tokens=10,
        eval_every=0,
        seed=1,
        rollout_dtype="fp32",
    )
    history = []
    train_grpo(seven_or_eight(0.0), TOK, constant_task("7"), cfg, log=history.append)
    assert cfg.rollout_is == "token_truncate" and cfg.rollout_is_cap == 2.0
    trained = [m for m in history if "loss" in m]
    assert trained
    for m in trained:
        assert m["is/ratio_mean"] == pytest.approx(1.0, abs=1e-4) and m["is/capped"] == 0
        assert 0 <= m["is/kl"] < 1e-6 and m["is/ratio_min"] <= 1 + 1e-6 <= m["is/ratio_max"] + 2e-6


def test_vllm_outputs_without_a_logprob_are_refused(tiny_gpt):
    from types import SimpleNamespace

    _, tok = tiny_gpt
    ids = tok.encode("<think>1</think>")
    outputs = [
        SimpleNamespace(
            prompt_token_ids=[1, 2], outputs=[SimpleNamespace(token_ids=ids, logprobs=[{}] * len(ids))]
        )
    ]
    with pytest.raises(ValueError, match="no log-prob"):
        rollout_from_outputs(outputs, ["1+1\n"], tok)
