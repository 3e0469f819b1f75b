"""Batched sampling with a KV cache, stop rules and a per-row thinking budget.

`generate(model, tokenizer, prompts, SamplingParams(...))` works the same for the built-in GPT and for
any Hugging Face causal LM (both expose ``init_cache`` and ``decode``). Prompts are left-padded
and run through the model once (prefill; a prompt repeated for a group is prefilled once, and the
model keeps its cache once for the group: `share_rows`); then one token per row per step is sampled (temperature,
top-k, top-p; greedy at temperature 0; seeded by `seed`) or *forced*:

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
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import compute
from .softmax import floored_exp
from .template import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, prompt_opens_think


@dataclass
class SamplingParams:
    max_new_tokens: int | list[int] = 128  # one for all rows or per row
    min_new_tokens: int = 0  # EOS is not sampled before this many tokens
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    think_budget: int | list[int] | None = None  # cap on thinking tokens, one for all rows or per row
    extend: int | list[int] = (
        0  # how many times an early </think> becomes "Wait,", one for all rows or per row
    )
    stop_at_answer: bool = True  # end a row at </answer>
    seed: int | None = None  # same seed, same samples
    # Per-row seeds: row i's samples depend only on (row_seeds[i], step), never on the rows it shares a
    # batch with, so rollouts sharded over ranks draw exactly what one process would. Overrides `seed`.
    row_seeds: list[int] | None = None

    def __post_init__(self):
        limits = self.max_new_tokens if isinstance(self.max_new_tokens, list) else [self.max_new_tokens]
        if not limits or any(n < 1 for n in limits):
            raise ValueError("max_new_tokens must be >= 1")
        if not (
            0 <= self.temperature < math.inf and self.top_k >= 0 and 0 < self.top_p <= 1
        ):  # NaN fails too
            raise ValueError("need a finite temperature >= 0, top_k >= 0 and 0 < top_p <= 1")
        budgets = self.think_budget if isinstance(self.think_budget, list) else [self.think_budget]
        if any(b is not None and b < 0 for b in budgets):
            raise ValueError("think_budget must be >= 0")
        if any(n < 0 for n in (self.extend if isinstance(self.extend, list) else [self.extend])):
            raise ValueError("extend must be >= 0")
        if self.row_seeds is not None and any(not 0 <= k < 2**62 for k in self.row_seeds):
            raise ValueError("row_seeds must be integers in [0, 2**62)")


@dataclass
class Rollout:
    """What `generate` returns. Tensors are (B, T) with T the longest completion, padded."""

    prompt_ids: list[list[int]]
    tokens: torch.Tensor  # (B, T) completion token ids, pad after each row's end
    logprobs: torch.Tensor  # (B, T) log-prob of each emitted token, 0 on padding
    sampled_mask: torch.Tensor  # (B, T) 1 = sampled by the model, 0 = forced or padding
    lengths: torch.Tensor  # (B,) completion lengths, forced tokens included
    think_tokens: list[int]  # tokens written inside <think>…</think> per row
    finish_reason: list[str]  # "stop", "budget" or "length"
    texts: list[str] = field(default_factory=list)  # decoded completions

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, T) 1 on every completion token (sampled or forced), 0 on padding."""
        return (torch.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]).long()


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (int64 tensors holding values < 2**32; products stay below 2**63)."""
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def keyed_uniform(keys: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """Uniforms in (0, 1), float64, that are a pure function of (key, step): counter-based sampling.
    Keys and steps broadcast: (B,) keys and an int step give (B,); (B, 1) keys and (T,) steps give
    the (B, T) table a whole generation draws from, computed once. Kept in float64: in float32 the
    top 2**-25 of the hash would round to exactly 1."""
    h = _mix32(keys & _MASK32) ^ _mix32((keys >> 32) + 0x9E3779B9)
    h = _mix32(h ^ _mix32(torch.as_tensor(step, device=keys.device) + 0x7F4A7C15))
    return (h.double() + 0.5) / 2**32


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
    49k-token vocabulary cost more than the rest of the sampling step."""
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
    row's prefix is looked for among its top `TOP_P_CANDIDATES` first (a partial sort, an eighth of
    a full one at 64 x 49152); only a row whose nucleus is wider is sorted whole."""
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
    running sum of its weights): a float32 running sum over a 49k vocabulary moves ~3e-4 of the
    probability onto the wrong tokens and gives none to tokens below its resolution, and one in
    float64 costs ten times a float32 one on CPU; the two levels cost less than either."""
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


class RowState:
    """Per-row state machine: where the row is in the template and what it must be made to write."""

    def __init__(
        self,
        tags: dict,
        wait_ids: list[int],
        eos_id: int,
        budget: int | None,
        extend: int,
        thinking: bool,
        max_tokens: int | None = None,
    ):
        self.tags, self.wait_ids, self.eos_id = tags, wait_ids, eos_id
        self.budget, self.extend, self.max_tokens = budget, extend, max_tokens
        self.phase = "think" if thinking else "pre"  # pre -> think -> post -> done
        self.history: list[int] = []  # emitted tokens
        self.logprobs: list[float] = []  # their log-probs
        self.sampled: list[int] = []  # 1 sampled, 0 forced
        self.queue: deque[int] = deque()
        self.think_count = self.waits = 0
        self.capped = False
        self.reason = None

    def _ends_with(self, tag: str) -> bool:
        seq = self.tags[tag]
        return len(seq) > 0 and self.history[-len(seq) :] == seq

    def choose(self, sampled: int) -> tuple[int, bool]:
        """The token this row emits given the model's sample, and whether it was forced."""
        if self.phase == "think" and self.budget is not None and self.think_count >= self.budget:
            self.queue = deque(self.tags[THINK_CLOSE] + self.tags[ANSWER_OPEN])
            self.phase, self.capped = "post", True
        if self.queue:
            return self.queue.popleft(), True
        close = self.tags[THINK_CLOSE]
        if self.phase == "think" and self.waits < self.extend and close and sampled == close[0]:
            self.waits += 1
            self.queue = deque(self.wait_ids)
            return self.queue.popleft(), True
        return sampled, False

    def push(self, token: int, stop_at_answer: bool) -> None:
        self.history.append(token)
        if token == self.eos_id:
            self.phase, self.reason = "done", "stop"
        elif self.phase == "pre" and self._ends_with(THINK_OPEN):
            self.phase = "think"
        elif self.phase == "think":
            if self._ends_with(THINK_CLOSE):
                self.phase = "post"
                self.think_count -= len(self.tags[THINK_CLOSE]) - 1  # its first tokens were counted
            else:
                self.think_count += 1
        elif stop_at_answer and self._ends_with(ANSWER_CLOSE):
            self.phase, self.reason = "done", "stop"
        if self.reason == "stop" and self.capped:
            self.reason = "budget"
        if self.phase != "done" and self.max_tokens is not None and len(self.history) >= self.max_tokens:
            self.phase = "done"  # reason None: "length"

    def end(self) -> None:
        """Ended from outside (`generate`'s `on_step`): finished as by a stop rule."""
        if self.phase != "done":
            self.phase, self.reason = "done", "budget" if self.capped else "stop"


@torch.inference_mode()
def generate(
    model, tokenizer, prompts: list[str], params: SamplingParams | None = None, on_step=None
) -> Rollout:
    """Sample one completion per prompt (repeat prompts for groups). See the module docstring."""
    params = params or SamplingParams()
    budgets, limits, extends = _check_request(prompts, params)
    prompt_ids = tokenizer.encode_batch(prompts)
    if min(len(p) for p in prompt_ids) == 0:
        raise ValueError("empty prompt")
    device = next(model.parameters()).device
    generator = None
    if params.seed is not None and params.temperature > 0:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    P = max(len(p) for p in prompt_ids)
    limit = getattr(model, "max_seq_len", None)  # positions the model has (RoPE tables)
    if limit is not None and P >= limit:
        raise ValueError(f"prompt of {P} tokens does not fit the model's {limit} positions")
    N = max(limits) if limit is None else min(max(limits), limit - P)
    uniforms = None  # with row seeds: (B, N), row i's uniform for every step (compacted with the batch)
    if params.row_seeds is not None and params.temperature > 0:
        seeds = torch.tensor(params.row_seeds, dtype=torch.long, device=device)
        # In blocks of steps: the hash's int64 temporaries stay small for long generations.
        uniforms = torch.cat(
            [
                keyed_uniform(seeds[:, None], torch.arange(s, min(s + 512, N), device=device))
                for s in range(0, N, 512)
            ],
            dim=1,
        )
    cache, logits, attn, next_pos = _prefill(model, tokenizer.pad_id, prompt_ids, P, N, device)
    if _vectorizable(tokenizer, budgets, params):
        return count_rollout(
            _decode_vectorized(
                model,
                tokenizer,
                prompts,
                prompt_ids,
                budgets,
                limits,
                params,
                cache,
                logits,
                attn,
                next_pos,
                uniforms,
                generator,
                P,
                N,
                on_step,
            )
        )
    rows = [
        RowState(
            tokenizer.tags,
            tokenizer.wait_ids,
            tokenizer.eos_id,
            budgets[i],
            extends[i],
            prompt_opens_think(prompts[i]),
            limits[i],
        )
        for i in range(len(prompts))
    ]
    _decode_rows(
        model, tokenizer, rows, params, cache, logits, attn, next_pos, uniforms, generator, P, N, on_step
    )
    return count_rollout(assemble_rollout(rows, prompt_ids, tokenizer))


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


def _check_request(prompts: list[str], params: SamplingParams) -> tuple[list, list[int], list[int]]:
    """The per-row thinking budgets, token limits and extensions; a request whose lists do not match
    its prompts is a ValueError."""
    B = len(prompts)
    if B == 0:
        raise ValueError("no prompts to generate from")
    budgets = params.think_budget if isinstance(params.think_budget, list) else [params.think_budget] * B
    if len(budgets) != B:
        raise ValueError(f"think_budget has {len(budgets)} entries for {B} prompts")
    limits = params.max_new_tokens if isinstance(params.max_new_tokens, list) else [params.max_new_tokens] * B
    if len(limits) != B:
        raise ValueError(f"max_new_tokens has {len(limits)} entries for {B} prompts")
    extends = params.extend if isinstance(params.extend, list) else [params.extend] * B
    if len(extends) != B:
        raise ValueError(f"extend has {len(extends)} entries for {B} prompts")
    if params.row_seeds is not None and len(params.row_seeds) != B:
        raise ValueError(f"row_seeds has {len(params.row_seeds)} entries for {B} prompts")
    return budgets, limits, extends


def _prefill(model, pad_id: int, prompt_ids: list[list[int]], P: int, N: int, device):
    """Run the prompts through the model: (cache, last logits (B, V), attention mask (B, P + N) that
    grows a column per step, next positions (B, 1)). Prompts are left-padded so every row's last
    token sits in column P - 1; each distinct prompt is computed once (GRPO repeats every prompt G
    times) and its cache rows copied."""
    B = len(prompt_ids)
    input_ids = torch.full((B, P), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros((B, P + N), dtype=torch.long, device=device)
    for i, ids in enumerate(prompt_ids):
        input_ids[i, P - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attn[i, P - len(ids) : P] = 1
    positions = (attn[:, :P].cumsum(-1) - 1).clamp(min=0)
    next_pos = attn.sum(-1, keepdim=True)  # (B, 1)
    distinct, firsts, inverse = {}, [], []
    for i, ids in enumerate(prompt_ids):
        key = tuple(ids)
        if key not in distinct:
            distinct[key] = len(firsts)
            firsts.append(i)
        inverse.append(distinct[key])
    if len(firsts) < B:
        first = torch.tensor(firsts, device=device)
        cache = model.init_cache(len(firsts), P + N)
        logits = model.decode(input_ids[first], positions[first], attn[first, :P], cache)[:, -1].float()
        expand = torch.tensor(inverse, device=device)
        getattr(model, "share_rows", model.select_rows)(cache, expand)  # one copy of each prompt's cache
        return cache, logits[expand], attn, next_pos
    cache = model.init_cache(B, P + N)
    return cache, model.decode(input_ids, positions, attn[:, :P], cache)[:, -1].float(), attn, next_pos


def _decode_rows(
    model,
    tokenizer,
    rows: list,
    params: SamplingParams,
    cache,
    logits,
    attn,
    next_pos,
    uniforms,
    generator,
    P: int,
    N: int,
    on_step=None,
) -> None:
    """The general decode loop: each row's `RowState` chooses (or forces) its token every step;
    finished rows leave the batch."""
    device = logits.device
    live = list(range(len(rows)))  # the row behind each batch position
    for step in range(N):
        if step < params.min_new_tokens and tokenizer.eos_id is not None:
            logits[:, tokenizer.eos_id] = float("-inf")
        sampled, logp = sample_next(
            logits,
            params.temperature,
            params.top_k,
            params.top_p,
            generator,
            None if uniforms is None else uniforms[:, step],
        )
        proposal = sampled.tolist()
        chosen, emitted = [], []
        for j, i in enumerate(live):
            row = rows[i]
            if row.phase == "done":
                chosen.append(tokenizer.pad_id)
                continue
            token, forced = row.choose(proposal[j])
            row.push(token, params.stop_at_answer)
            row.sampled.append(0 if forced else 1)
            chosen.append(token)
            emitted.append(i)
        if on_step is not None:
            for i in on_step(emitted, [rows[i].history[-1] for i in emitted]) or ():
                rows[i].end()
        token_t = torch.tensor(chosen, dtype=torch.long, device=device)
        for i, lp in zip(live, logp.gather(-1, token_t[:, None]).squeeze(-1).tolist()):
            if len(rows[i].logprobs) < len(rows[i].history):
                rows[i].logprobs.append(lp)
        keep = [j for j, i in enumerate(live) if rows[i].phase != "done"]
        if not keep or step == N - 1:
            break
        logits, next_pos, attn, uniforms, index = _next_step(
            model, cache, token_t, next_pos, attn, uniforms, torch.tensor(keep, device=device), P, step
        )
        if index is not None:
            live = [live[j] for j in keep]


def _next_step(model, cache, token, next_pos, attn, uniforms, keep: torch.Tensor, P: int, step: int):
    """Drop finished rows once a quarter of the batch has finished (`keep`: the batch positions still
    running), then feed each row its token. Returns the next logits, the (compacted) positions,
    attention mask and row uniforms, and the kept index when rows were dropped (else None)."""
    index = None
    if len(token) - len(keep) >= max(1, len(token) // 4):
        index = keep
        model.select_rows(cache, index)
        token, next_pos, attn = token[index], next_pos[index], attn[index]
        uniforms = uniforms[index] if uniforms is not None else None
    attn[:, P + step] = 1
    logits = model.decode(token[:, None], next_pos, attn[:, : P + step + 1], cache)[:, -1].float()
    return logits, next_pos + 1, attn, uniforms, index


def _vectorizable(tokenizer, budgets, params: SamplingParams) -> bool:
    """No extension and single-token tags (``<answer>`` too when a row has a budget, as the cap
    forces it): the row state machine runs as tensor ops."""
    tags = (THINK_OPEN, THINK_CLOSE, ANSWER_CLOSE) + (
        (ANSWER_OPEN,) if any(b is not None for b in budgets) else ()
    )
    extends = params.extend if isinstance(params.extend, list) else [params.extend]
    return not any(extends) and all(len(tokenizer.tags[t]) == 1 for t in tags)


def _decode_vectorized(
    model,
    tokenizer,
    prompts,
    prompt_ids,
    budgets,
    limits,
    params,
    cache,
    logits,
    attn,
    next_pos,
    uniforms,
    generator,
    P: int,
    N: int,
    on_step=None,
) -> Rollout:
    """The decode loop without extension: `RowState`'s phases (pre, think, post), thinking cap and
    stop rules as tensor ops over the batch, no per-row Python (the same tokens; tested)."""
    B, device = len(prompts), logits.device
    open_id, close_id, answer_id = (tokenizer.tags[t][0] for t in (THINK_OPEN, THINK_CLOSE, ANSWER_CLOSE))
    answer_open_id = (tokenizer.tags[ANSWER_OPEN] or [-1])[0]  # only forced under a cap, then a single token
    eos = -1 if tokenizer.eos_id is None else tokenizer.eos_id
    never = torch.iinfo(torch.long).max  # the budget of a row without one
    budget = torch.tensor([never if b is None else b for b in budgets], device=device)
    limit = torch.tensor(limits, device=device)
    phase = torch.tensor(
        [1 if prompt_opens_think(p) else 0 for p in prompts], device=device
    )  # 0 pre 1 think 2 post
    done = torch.zeros(B, dtype=torch.bool, device=device)
    capped = torch.zeros(B, dtype=torch.bool, device=device)  # thinking was cut by the cap
    cut = torch.zeros(B, dtype=torch.bool, device=device)  # ended at its own max_new_tokens: "length"
    pending = torch.zeros(B, dtype=torch.bool, device=device)  # capped last step: <answer> is forced next
    think = torch.zeros(B, dtype=torch.long, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    tokens = torch.full((B, N), tokenizer.pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((B, N), device=device)
    sampled = torch.zeros((B, N), dtype=torch.long, device=device)
    live = torch.arange(B, device=device)  # the row behind each batch position
    for step in range(N):
        if step < params.min_new_tokens and tokenizer.eos_id is not None:
            logits[:, tokenizer.eos_id] = float("-inf")
        token, logp = sample_next(
            logits,
            params.temperature,
            params.top_k,
            params.top_p,
            generator,
            None if uniforms is None else uniforms[:, step],
        )
        active = ~done[live]
        rows = live[active]
        ph = phase[rows]
        # `RowState.choose`: a thinking row at its budget writes </think> now (which ends its thinking as a
        # sampled one would) and <answer> next step.
        cap = (ph == 1) & (think[rows] >= budget[rows])
        forced = cap | pending[rows]
        tok = torch.where(cap, close_id, torch.where(pending[rows], answer_open_id, token[active]))
        token[active] = tok  # what the model reads next
        pending[rows], capped[rows] = cap, capped[rows] | cap
        # `RowState.push`: the emitted token moves the row on through the phases or ends it.
        tokens[rows, step] = tok
        logprobs[rows, step] = logp.gather(-1, token[:, None]).squeeze(-1)[active]  # no (B, V) copy
        sampled[rows, step] = (~forced).long()
        lengths[rows] = step + 1
        closes = (ph == 1) & (tok == close_id)
        think[rows] += ((ph == 1) & ~closes & (tok != eos)).long()
        stop = (tok == eos) | (params.stop_at_answer & (ph != 1) & (tok == answer_id))
        phase[rows] = torch.where((ph == 0) & (tok == open_id), 1, torch.where(closes, 2, ph))
        cut[rows] = ~stop & (step + 1 >= limit[rows])
        done[rows] = stop | cut[rows]
        if on_step is not None and (ended := on_step(rows.tolist(), tok.tolist())):
            ended = torch.tensor(sorted(set(ended)), dtype=torch.long, device=device)
            ended = ended[~done[ended]]  # a row that finished this step keeps its own reason
            done[ended] = True
        keep = (~done[live]).nonzero().squeeze(-1)
        if len(keep) == 0 or step == N - 1:
            break
        logits, next_pos, attn, uniforms, index = _next_step(
            model, cache, token, next_pos, attn, uniforms, keep, P, step
        )
        if index is not None:
            live = live[index]
    T = max(int(lengths.max()), 1)
    tokens, logprobs, sampled = tokens[:, :T].cpu(), logprobs[:, :T].cpu(), sampled[:, :T].cpu()
    lengths = lengths.cpu()
    reasons = [
        ("budget" if c else "stop") if d and not k else "length"
        for d, c, k in zip(done.tolist(), capped.tolist(), cut.tolist())
    ]
    texts = tokenizer.decode_batch([row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())])
    return Rollout(prompt_ids, tokens, logprobs, sampled, lengths, think.tolist(), reasons, texts)


def assemble_rollout(rows: list[RowState], prompt_ids, tokenizer) -> Rollout:
    T = max(len(row.history) for row in rows)
    tokens = torch.full((len(rows), T), tokenizer.pad_id, dtype=torch.long)
    logprobs = torch.zeros((len(rows), T))
    sampled = torch.zeros((len(rows), T), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.history)
        tokens[i, :n] = torch.tensor(row.history, dtype=torch.long)
        logprobs[i, :n] = torch.tensor(row.logprobs)
        sampled[i, :n] = torch.tensor(row.sampled, dtype=torch.long)
    lengths = torch.tensor([len(row.history) for row in rows])
    texts = tokenizer.decode_batch([row.history for row in rows])
    return Rollout(
        prompt_ids,
        tokens,
        logprobs,
        sampled,
        lengths,
        [max(row.think_count, 0) for row in rows],
        [row.reason or "length" for row in rows],
        texts,
    )
