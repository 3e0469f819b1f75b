"""The math of Method 2, each piece one small registered function chosen by name.

- **Advantage estimators** (`ADVANTAGES`, `register_advantage`): (P, G) rewards -> (P, G)
  advantages. All centre on the group mean; they differ in the scale: the group's std (`group`,
  GRPO), the batch's std (`batch`), or none (`none`, Dr. GRPO). A group whose rewards are all equal
  gets exactly 0 (its float mean can round away from the value: 0.1 × 7).
- **Policy losses** (`POLICY_LOSSES`, `register_policy_loss`): per-token losses to minimise from
  (N, T) log-probs, old log-probs and (N,) advantages. `clip` is PPO's clipped surrogate with
  separate low and high clips (DAPO's clip-higher); `gspo` clips one length-normalised ratio per
  sequence (GSPO); `cispo` clips the importance weight, stop-gradient, and keeps every token's
  gradient (CISPO).
- **Aggregations** (`AGGREGATIONS`): (N, T) per-token values -> one number over the loss mask:
  `token_mean` (DAPO), `seq_mean` (GRPO), `constant` (Dr. GRPO: divided by N · max_tokens).
- **KL** to a reference: the k3 estimator (Schulman 2020), added with weight β.
- **Rollout corrections** (`ROLLOUT_CORRECTIONS`): importance weights for the gap between the
  log-probs the rollout engine sampled with and the trainer's (another precision, vLLM's kernels):
  per token or per sequence, truncated at a cap (TIS) or zeroed past it (MIS); TRL's
  `vllm_importance_sampling_mode`, verl's `rollout_is` / `rollout_rs`.

The registries are the one list of allowed names: `GRPOConfig`'s choices come from them. A new
estimator or loss is one function here plus a test.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {}
POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, dict]]] = {}
AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {}
ROLLOUT_CORRECTIONS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor] | None]] = {}


def _registrar(registry: dict, what: str):
    def register(name: str):
        def add(fn):
            if name in registry:
                raise ValueError(f"{what} {name!r} is registered twice")
            registry[name] = fn
            return fn

        return add

    return register


register_advantage = _registrar(ADVANTAGES, "advantage estimator")
register_policy_loss = _registrar(POLICY_LOSSES, "policy loss")
register_aggregation = _registrar(AGGREGATIONS, "loss aggregation")
register_rollout_correction = _registrar(ROLLOUT_CORRECTIONS, "rollout correction")


def pick(registry: dict, name: str, what: str):
    """The function registered as `name`; an unknown name is a ValueError listing the known ones."""
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}: {', '.join(registry)}")
    return registry[name]


# ---- advantages -----------------------------------------------------------------------------


def centred(rewards: torch.Tensor) -> torch.Tensor:
    """(P, G) rewards minus their group's mean; exactly 0 for a group of equal rewards."""
    flat = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)
    return (rewards - rewards.mean(dim=1, keepdim=True)).masked_fill(flat, 0.0)


@register_advantage("group")
def group_scaled(rewards: torch.Tensor, eps: float = 1e-4, batch_std: float | None = None) -> torch.Tensor:
    return centred(rewards) / (rewards.std(dim=1, keepdim=True) + eps)


@register_advantage("batch")
def batch_scaled(rewards: torch.Tensor, eps: float = 1e-4, batch_std: float | None = None) -> torch.Tensor:
    """`batch_std` replaces the std of `rewards` when the batch spans several ranks."""
    return centred(rewards) / ((rewards.std() if batch_std is None else batch_std) + eps)


@register_advantage("none")
def unscaled(rewards: torch.Tensor, eps: float = 1e-4, batch_std: float | None = None) -> torch.Tensor:
    return centred(rewards)


def group_advantages(
    rewards: torch.Tensor, scale: str = "group", eps: float = 1e-4, batch_std: float | None = None
) -> torch.Tensor:
    """(P, G) rewards -> (P, G) advantages by the estimator registered as `scale`."""
    return pick(ADVANTAGES, scale, "advantage scale")(rewards, eps, batch_std)


# ---- aggregation ----------------------------------------------------------------------------
# `total` replaces the count in the denominator (tokens for token_mean, sequences otherwise): a
# rank holding part of the batch passes the global count, so the ranks' losses sum to the loss of
# the whole batch.


@register_aggregation("token_mean")
def token_mean(per_token, mask, max_tokens=None, total=None):
    return (per_token * mask).sum() / (mask.sum().clamp(min=1) if total is None else total)


@register_aggregation("seq_mean")
def seq_mean(per_token, mask, max_tokens=None, total=None):
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / (per_seq.shape[0] if total is None else total)


@register_aggregation("constant")
def constant(per_token, mask, max_tokens=None, total=None):
    if not max_tokens:
        raise ValueError("constant aggregation needs max_tokens")
    return (per_token * mask).sum() / ((per_token.shape[0] if total is None else total) * max_tokens)


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    how: str,
    max_tokens: int | None = None,
    total: float | None = None,
) -> torch.Tensor:
    """Reduce (N, T) per-token values over `mask` (N, T) by the aggregation registered as `how`."""
    return pick(AGGREGATIONS, how, "loss aggregation")(per_token, mask.to(per_token.dtype), max_tokens, total)


# ---- policy losses --------------------------------------------------------------------------


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π ‖ π_ref): exp(r) - r - 1 with r = ref_logp - logp (≥ 0)."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1


@register_policy_loss("clip")
def clipped_surrogate(logp, old_logp, advantages, mask, *, eps_low: float = 0.2, eps_high: float = 0.2):
    """PPO's clipped surrogate, per token: -min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A), ρ = π/π_old."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    unclipped, clipped = ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    return -torch.minimum(unclipped, clipped), {
        "clip_frac": float(token_mean((clipped < unclipped).float(), mask))
    }


@register_policy_loss("gspo")
def sequence_clipped_surrogate(
    logp, old_logp, advantages, mask, *, eps_low: float = 0.2, eps_high: float = 0.2
):
    """GSPO (Zheng et al. 2025), per sequence: -min(s A, clip(s, 1-ε_low, 1+ε_high) A) with the
    length-normalised ratio s = exp(mean over the sequence's tokens of log π - log π_old), the
    gradient through s; broadcast onto the sequence's tokens. Under `seq_mean` this is the paper's
    objective (the mean over sequences); `token_mean` and `constant` weight each sequence by its
    length (TRL warns of it; verl forces seq-mean-token-mean). As the advantage is one per
    sequence, GSPO-token (s_t = sg[s] π_t / sg[π_t]) has the same value and gradient. The paper's
    clips are ~1e-4 (3e-4 / 4e-4): set --eps-low / --eps-high for it."""
    on = mask > 0
    log_ratio = torch.where(on, logp - old_logp, 0.0)  # whatever lies past the mask stays out
    ratio = torch.exp(log_ratio.sum(-1) / on.sum(-1).clamp(min=1))[:, None].expand_as(logp)
    adv = advantages[:, None]
    unclipped, clipped = ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    return -torch.minimum(unclipped, clipped), {
        "clip_frac": float(token_mean((clipped < unclipped).float(), mask))
    }


@register_policy_loss("cispo")
def clipped_is_weight(logp, old_logp, advantages, mask, *, eps_low: float = 0.2, eps_high: float = 0.2):
    """CISPO (MiniMax-M1, 2025), per token: -sg[clip(ρ, 1-ε_low, 1+ε_high)] A log π, ρ = π/π_old
    (verl's compute_policy_loss_cispo). The weight is clipped, not the token: every token keeps a
    gradient. The paper sets no lower bound (--eps-low 1); TRL's loss_type="cispo" caps ρ at
    epsilon_high alone (= --eps-low 1 --eps-high epsilon_high-1; ScaleRL's ε_max 5: --eps-high 4).
    clip_frac: share of tokens whose weight was clipped, either side (verl's pg_clipfrac)."""
    on = mask > 0  # past the mask both sides may be -inf: their difference would be NaN
    ratio = torch.exp(torch.where(on, logp - old_logp, 0.0)).detach()
    weight = ratio.clamp(1 - eps_low, 1 + eps_high)
    logp_on = torch.where(on, logp, 0.0)  # a -inf past the mask cannot turn the sum into NaN
    return -weight * advantages[:, None] * logp_on, {
        "clip_frac": float(token_mean((weight != ratio).float(), mask))
    }


# ---- rollout corrections --------------------------------------------------------------------
# Each takes the (N, T) log-ratio log π_train - log π_rollout (0 off the mask), the (N, T) mask and
# the cap C, and returns the (N, T) weight each token's policy loss is multiplied by (no gradient)
# and the (N, T) tokens it truncated or zeroed; "none" returns None: no weight at all.
LOG_RATIO_LIMIT = 50.0  # a sequence's summed log-ratio is clamped here: exp stays finite for the stats


def _sequence(log_ratio: torch.Tensor) -> torch.Tensor:
    """Each sequence's ratio Π_t ρ_t (the product over its masked tokens), on every token of it."""
    return torch.exp(log_ratio.sum(-1, keepdim=True).clamp(max=LOG_RATIO_LIMIT)).expand_as(log_ratio)


def _truncated(ratio: torch.Tensor, cap: float):
    return ratio.clamp(max=cap), ratio > cap


def _masked(ratio: torch.Tensor, cap: float):
    return ratio.masked_fill(ratio > cap, 0.0), ratio > cap


@register_rollout_correction("none")
def no_correction(log_ratio, mask, cap):
    return None


@register_rollout_correction("token_truncate")
def token_truncated(log_ratio, mask, cap):
    """TIS per token: w_t = min(ρ_t, C), ρ_t = π_train(y_t) / π_rollout(y_t)."""
    return _truncated(torch.exp(log_ratio), cap)


@register_rollout_correction("token_mask")
def token_masked(log_ratio, mask, cap):
    """MIS per token: w_t = ρ_t where ρ_t ≤ C, else 0 (the token leaves the loss, not its count)."""
    return _masked(torch.exp(log_ratio), cap)


@register_rollout_correction("sequence_truncate")
def sequence_truncated(log_ratio, mask, cap):
    """TIS per sequence: every token of a sequence weighted by min(Π_t ρ_t, C)."""
    return _truncated(_sequence(log_ratio), cap)


@register_rollout_correction("sequence_mask")
def sequence_masked(log_ratio, mask, cap):
    """MIS per sequence: Π_t ρ_t where it is ≤ C, else the whole sequence weighted 0."""
    return _masked(_sequence(log_ratio), cap)


def rollout_weights(
    train_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, how: str, cap: float
) -> tuple[torch.Tensor | None, dict]:
    """The rollout correction registered as `how` for the trainer's (N, T) log-probs of the sampled
    tokens before the update (`train_logp`, no gradient) against the engine's (`rollout_logp`), over
    `mask`: the (N, T) weights (None for "none") and their statistics over the masked tokens, logged
    with the correction off too (the gap is worth seeing either way) — ``is/ratio_mean``,
    ``is/ratio_min``, ``is/ratio_max`` (of the ratio the mode uses: the token's or its sequence's;
    the token's for "none"), ``is/capped`` (share of tokens truncated or zeroed; 0 for "none") and
    ``is/kl`` (k3 estimate of KL(π_rollout ‖ π_train) a token: exp(r) - r - 1, r the token's
    log-ratio)."""
    on = mask > 0
    log_ratio = torch.where(on, train_logp.detach() - rollout_logp, 0.0)
    out = pick(ROLLOUT_CORRECTIONS, how, "rollout correction")(log_ratio, mask, cap)
    weight, capped = (None, torch.zeros_like(on)) if out is None else out
    ratio = _sequence(log_ratio) if how.startswith("sequence") else torch.exp(log_ratio)
    picked = ratio[on] if bool(on.any()) else ratio.new_ones(1)
    stats = {
        "is/ratio_mean": float(token_mean(ratio, mask)),
        "is/ratio_min": float(picked.min()),
        "is/ratio_max": float(picked.max()),
        "is/capped": float(token_mean(capped.to(mask.dtype), mask)),
        "is/kl": float(token_mean(torch.expm1(log_ratio) - log_ratio, mask)),  # expm1: no cancellation near 0
    }
    return weight, stats


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    agg: str = "token_mean",
    max_tokens: int | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    total: float | None = None,
    loss: str = "clip",
    is_weight: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """The loss to minimise for (N, T) token log-probs and (N,) advantages: the policy loss
    registered as `loss`, each token's multiplied by the rollout correction's `is_weight` when given
    (`rollout_weights`; TRL applies it there too, before the KL term), plus β · KL_k3 to the
    reference when β > 0, minus `entropy_coef` times each token's `entropy` (a bonus, with its
    gradient), aggregated by `agg` (`total`: the global count when the batch spans ranks).
    Returns the loss and its statistics."""
    per_token, stats = pick(POLICY_LOSSES, loss, "policy loss")(
        logp, old_logp, advantages, mask.to(logp.dtype), eps_low=eps_low, eps_high=eps_high
    )
    if is_weight is not None:
        per_token = per_token * is_weight.detach()
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probs")
        kl = kl_k3(logp, ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = float(aggregate(kl.detach(), mask, "token_mean"))
    if entropy_coef > 0:
        if entropy is None or not entropy.requires_grad:
            raise ValueError("entropy_coef > 0 needs each token's entropy with its gradient")
        per_token = per_token - entropy_coef * entropy
    return aggregate(per_token, mask, agg, max_tokens, total), stats
