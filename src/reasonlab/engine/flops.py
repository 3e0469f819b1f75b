"""What a rollout computed, in the compute ledger (`reasonlab.compute`)."""

from __future__ import annotations

from .. import compute
from .params import Rollout


def count_rollout(rollout: Rollout) -> Rollout:
    """Put a rollout's tokens in the compute ledger (`compute`): each distinct prompt once (the
    prefill computes it once: `compute.pairs(P)` query-key pairs for P tokens) and every token
    generated (a row's G tokens after its P-token prompt: `compute.pairs(P + G, P)`)."""
    distinct = {tuple(ids) for ids in rollout.prompt_ids}
    prompts = [len(ids) for ids in rollout.prompt_ids]
    new = [int(n) for n in rollout.lengths]
    compute.count(
        "sampled",
        sum(map(len, distinct)) + sum(new),
        sum(compute.pairs(len(ids)) for ids in distinct)
        + sum(compute.pairs(p + g, p) for p, g in zip(prompts, new)),
    )
    return rollout
