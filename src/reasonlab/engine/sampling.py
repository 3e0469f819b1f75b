"""One sampling step: next tokens from logits (temperature, top-k, top-p, greedy), by inverse CDF."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..softmax import floored_exp


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
    uniform: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row (B,) and the log-probabilities (B, V) it was drawn from. Each row's token is
    the inverse CDF at one uniform: `uniform` (B,) when given (`keyed_uniform`: see
    `SamplingParams.row_seeds`; a row's token then depends on its own uniform alone), else one drawn
    per row from `generator`. One random number per row, not per vocabulary entry: noise over a
    whole vocabulary cost more than the rest of the sampling step (benchmarks/README.md)."""
    if temperature == 0:
        return logits.argmax(-1), F.log_softmax(logits, dim=-1)
    scaled = temper(logits, temperature)
    logp = F.log_softmax(scaled, dim=-1)
    weights = truncate(scaled, floored_exp(logp), top_k, top_p)
    if uniform is None:
        uniform = torch.rand(len(logits), dtype=torch.float64, generator=generator, device=logits.device)
    return inverse_cdf(weights, uniform), logp


TINY_TEMPERATURE = 1e-2  # below it `temper` divides logits shifted by their row's max
LOGIT_FLOOR = -1e30  # what `temper` puts where logits / temperature overflows to -inf


def temper(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`logits` (B, V) / `temperature` (> 0), finite for every positive temperature. Below
    `TINY_TEMPERATURE` each row is first shifted by its max, so the row's top logits become 0 and
    the rest (logits - max) / T: a tiny temperature (1e-40, or 1e-300, which is 0 in float32) then
    gives 0 at the top and very negative values elsewhere, i.e. all the mass on the argmax (split
    evenly between exact ties, as at any positive temperature), instead of inf - inf = NaN in the
    softmax. What overflows to -inf (and logits that are -inf) is set to `LOGIT_FLOOR`: probability
    exactly 0 (`floored_exp`), but a finite log-prob for a forced token. At and above
    `TINY_TEMPERATURE` the plain division: logits / T stays finite for any logit below 3e36 in size."""
    if temperature == 1:
        return logits
    if temperature >= TINY_TEMPERATURE:
        return logits / temperature
    shifted = logits - logits.amax(-1, keepdim=True)
    # 0 / T is NaN where T rounds to 0 in float32 (1e-300, or a denormal flushed on a GPU): the top is 0.
    return shifted.div_(temperature).nan_to_num_(nan=0.0, neginf=LOGIT_FLOOR)


def truncate(scaled: torch.Tensor, probs: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """`probs` (B, V) with the tokens outside top-k, then outside top-p of what is left, set to 0
    (not renormalised: `inverse_cdf` scales by the total). Ties with the k-th logit stay in."""
    if top_k and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        probs = probs.masked_fill(scaled < kth, 0.0)
    if top_p < 1.0:
        probs = _nucleus(probs, top_p)
    return probs


TOP_P_CANDIDATES = 1024


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`probs` (B, V) outside the smallest prefix (by probability) reaching `top_p` set to 0. Each
    row's prefix is looked for among its top `TOP_P_CANDIDATES` first (a partial sort, far cheaper
    than a full one: benchmarks/README.md); only a row whose nucleus is wider is sorted whole."""
    k = min(TOP_P_CANDIDATES, probs.shape[-1])
    top, order = torch.topk(probs, k, dim=-1)  # descending
    kept = _keep_prefix(probs, top, order, top_p)
    if k < probs.shape[-1] and (wide := (top.sum(-1) < top_p * probs.sum(-1)).nonzero().squeeze(-1)).numel():
        kept[wide] = _keep_prefix(probs[wide], *torch.sort(probs[wide], descending=True, dim=-1), top_p)
    return kept


def _keep_prefix(probs: torch.Tensor, top: torch.Tensor, order: torch.Tensor, top_p: float) -> torch.Tensor:
    """`probs` with only the prefix of `top` (its values in descending order, at `order`) that
    first reaches `top_p` of each row's total left."""
    shares = top / probs.sum(-1, keepdim=True)
    drop = shares.cumsum(-1) - shares > top_p
    return torch.zeros_like(probs).scatter(-1, order, top.masked_fill(drop, 0.0))


def inverse_cdf(weights: torch.Tensor, uniform: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Row i draws token j with cdf[j-1] <= u_i * total < cdf[j], where cdf is the running sum of the
    row's weights (B, V), >= 0, unnormalised, and u_i in [0, 1). In two levels, first the block of
    `block` tokens (a float64 running sum of the blocks' totals), then the token inside it (a float64
    running sum of its weights): a float32 running sum over a large vocabulary moves probability
    onto the wrong tokens and gives none to tokens below its resolution, and one in float64 costs
    several times a float32 one on CPU; the two levels cost less than either (benchmarks/README.md)."""
    B, V = weights.shape
    full = V - V % block
    sums = weights[:, :full].reshape(B, full // block, block).sum(-1)
    if full < V:
        sums = torch.cat([sums, weights[:, full:].sum(-1, keepdim=True)], dim=-1)
    cdf = sums.double().cumsum(-1)
    blk, offset = _search(cdf, uniform[:, None].double() * cdf[:, -1:])
    cols = blk * block + torch.arange(block, device=weights.device)  # (B, block): the chosen block's tokens
    inner = weights.gather(-1, cols.clamp(max=V - 1)).masked_fill(cols >= V, 0.0).double().cumsum(-1)
    token, _ = _search(inner, offset)
    return (blk * block + token).squeeze(-1)


def _search(cdf: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the index i (B, 1) with cdf[i-1] <= x < cdf[i] and the rest x - cdf[i-1] (B, 1). x is
    kept strictly below the total, so i always has positive weight, also where rounding puts x at or
    past the total (a clamp to the last index would draw a zero-weight token there)."""
    total = cdf[:, -1:]
    x = torch.minimum(x, torch.nextafter(total, torch.zeros_like(total)))
    i = torch.searchsorted(cdf, x, right=True)
    before = torch.where(i > 0, cdf.gather(-1, (i - 1).clamp(min=0)), 0.0)
    return i, x - before
