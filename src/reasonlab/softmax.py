"""Probabilities from log-probabilities without torch's slow exp.

torch's CPU ``exp`` takes a path many times slower for inputs below float32's underflow point
(about -87.3: exp(-87.3) is float32's smallest normal number), and for -inf (benchmarks/README.md).
A confident model puts most of its vocabulary's log-probabilities there, and the sampler
exponentiates every one of them each step. `floored_exp` computes exp(max(z, FLOOR)) and sets what
was at the floor to exactly 0: exp(-87) ≈ 1.6e-38 is below anything float32 sums can tell from 0
next to the top token's share, and a token whose logit is -inf still has probability 0. The
log-probabilities themselves stay torch's `log_softmax` (fused, faster in range than anything
composed of these pieces, with its own backward).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FLOOR = -87.0
_ABOVE_FLOOR = math.exp(FLOOR) * (1 + 1e-5)  # exp(FLOOR) in float32, and a margin for its rounding


def floored_exp(z: torch.Tensor) -> torch.Tensor:
    """exp(z) for z ≤ 0 (log-probabilities), exactly 0 where z ≤ FLOOR (and at -inf). Computed on
    max(z, FLOOR), then what is at the floor set to 0 (`F.threshold`: one pass, no mask), so every
    value stays a normal float32 and no operation meets a denormal."""
    return F.threshold_(z.clamp(min=FLOOR).exp_(), _ABOVE_FLOOR, 0.0)


CHUNK_BYTES = 16 << 20  # the entropy's temporaries: small enough to be reused from malloc's heap


def probs_entropy(logp: torch.Tensor) -> torch.Tensor:
    """The entropy of each row of log-probabilities `logp` (..., V), without gradient. Computed a
    few rows at a time: on a (tokens, 49,152) batch of logits each whole-batch temporary would be
    hundreds of MB, mapped fresh and faulted in page by page."""
    flat = logp.detach().reshape(-1, logp.shape[-1])
    rows = max(1, CHUNK_BYTES // (flat.shape[1] * flat.element_size()))
    out = flat.new_empty(flat.shape[0])
    with torch.no_grad():
        for start in range(0, flat.shape[0], rows):
            z = flat[start : start + rows]
            torch.sum(floored_exp(z).mul_(z.clamp(min=FLOOR)), -1, out=out[start : start + rows])
    return out.neg_().view(logp.shape[:-1])
