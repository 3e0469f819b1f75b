"""Batched sampling with a KV cache, stop rules and a per-row thinking budget.

`generate(model, tokenizer, prompts, SamplingParams(...))` works the same for the built-in GPT and for
any Hugging Face causal LM (both expose ``init_cache`` and ``decode``). Prompts are left-padded
and run through the model once (prefill; a prompt repeated for a group is prefilled once, and the
model keeps its cache once for the group: `share_rows`); then one token per row per step is
sampled (temperature, top-k, top-p; greedy at temperature 0; seeded by `seed`) or *forced*:

- **cap** (`think_budget` = B, per row or one for all): once a row has written B thinking tokens
  (tokens strictly inside ``<think>…</think>``) it is made to write ``</think><answer>``; the answer
  that follows is its own.
- **extend** (`extend` = n, one for all rows or per row; s1's budget forcing, Muennighoff et al.
  2025): when a row starts to close its thinking, ``</think>`` is replaced by ``Wait,`` — up to n
  times per row.

Every forced token has 0 in `sampled_mask` (sampled tokens 1), so trainers keep forced tokens out
of the loss. `logprobs` are the log-probabilities of each emitted token under the sampling
distribution (logits / temperature, before top-k/top-p truncation; raw logits when greedy). A tiny
positive temperature (1e-40, 1e-300) samples its limit, greedy (`temper`), with finite log-probs.

A row stops at ``</answer>`` (when `stop_at_answer`) or EOS: finish reason ``stop``, or ``budget`` when
its thinking was cut by the cap; a row that runs out of `max_new_tokens` (one for all rows or per
row) finishes with ``length``.

`on_step(rows, tokens)`, when given, is called after every decoding step with the rows (indices
into `prompts`) that emitted a token in that step and those tokens: a server streams them as they
come. It may return rows to end now (a client that went away, a stop string seen); they finish
with ``stop`` (``budget`` if capped) and leave the batch.

Tags are matched as token sequences, so tokenizers that spell ``</think>`` with several tokens work;
extension then watches for the first token of that sequence.

Layout: `params` (the request and the `Rollout`), `generation` (`generate`), `steps` (prefill and
one decoding step), `rows` (the general decoder, a state machine per row), `vectorized` (the same
as tensor ops, without extension), `sampling` (temperature, top-k/top-p, inverse CDF), `rng`
(per-row counter-based uniforms), `flops` (the compute ledger).
"""

from .flops import count_rollout
from .generation import generate
from .params import Rollout, SamplingParams
from .rng import keyed_uniform
from .rows import RowState, assemble_rollout
from .sampling import (
    LOGIT_FLOOR,
    TINY_TEMPERATURE,
    TOP_P_CANDIDATES,
    inverse_cdf,
    sample_next,
    temper,
    truncate,
)

__all__ = [
    "LOGIT_FLOOR",
    "TINY_TEMPERATURE",
    "TOP_P_CANDIDATES",
    "Rollout",
    "RowState",
    "SamplingParams",
    "assemble_rollout",
    "count_rollout",
    "generate",
    "inverse_cdf",
    "keyed_uniform",
    "sample_next",
    "temper",
    "truncate",
]
