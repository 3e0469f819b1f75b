"""The fast decoder: `RowState`'s phases, thinking cap and stop rules as tensor ops over the batch,
for requests without extension whose tags are single tokens (the same tokens; tested)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..template import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, prompt_opens_think
from .params import Rollout, SamplingParams
from .steps import Decoding, _next_step, _sample_step

PRE, THINK, POST = 0, 1, 2  # a row's phase (`RowState.phase`, "done" kept apart in `_Rows.done`)


def _vectorizable(tokenizer, budgets, params: SamplingParams) -> bool:
    """No extension and single-token tags (``<answer>`` too when a row has a budget, as the cap
    forces it): the row state machine runs as tensor ops."""
    tags = (THINK_OPEN, THINK_CLOSE, ANSWER_CLOSE) + (
        (ANSWER_OPEN,) if any(b is not None for b in budgets) else ()
    )
    extends = params.extend if isinstance(params.extend, list) else [params.extend]
    return not any(extends) and all(len(tokenizer.tags[t]) == 1 for t in tags)


def _decode_vectorized(
    model, tokenizer, prompts, prompt_ids, budgets, limits, params, run: Decoding
) -> Rollout:
    """The decode loop without extension: every step samples, lets `_Rows.emit` choose (or force)
    and record each live row's token, then drops finished rows and feeds the rest theirs."""
    logits, attn, next_pos, uniforms = run.logits, run.attn, run.next_pos, run.uniforms  # each step's
    device, N = logits.device, run.N
    tags = _TagIds.of(tokenizer)
    state = _Rows(prompts, budgets, limits, N, tokenizer.pad_id, device)
    live = torch.arange(len(prompts), device=device)  # the row behind each batch position
    for step in range(N):
        token, logp = _sample_step(logits, params, tokenizer.eos_id, run.generator, uniforms, step)
        rows, tok = state.emit(token, logp, live, step, tags, params.stop_at_answer)
        if run.on_step is not None and (ended := run.on_step(rows.tolist(), tok.tolist())):
            state.end(ended)
        keep = (~state.done[live]).nonzero().squeeze(-1)
        if len(keep) == 0 or step == N - 1:
            break
        logits, next_pos, attn, uniforms, index = _next_step(
            model, run.cache, token, next_pos, attn, uniforms, keep, run.P, step
        )
        if index is not None:
            live = live[index]
    return state.rollout(prompt_ids, tokenizer)


@dataclass
class _TagIds:
    """The single token of each tag the state machine watches for, and EOS (-1: none)."""

    open: int
    close: int
    answer_close: int
    answer_open: int
    eos: int

    @classmethod
    def of(cls, tokenizer) -> _TagIds:
        open_id, close_id, answer_id = (tokenizer.tags[t][0] for t in (THINK_OPEN, THINK_CLOSE, ANSWER_CLOSE))
        answer_open_id = (tokenizer.tags[ANSWER_OPEN] or [-1])[0]  # only forced under a cap: then one token
        return cls(
            open_id, close_id, answer_id, answer_open_id, -1 if tokenizer.eos_id is None else tokenizer.eos_id
        )


class _Rows:
    """Every row's state (B,) and what it wrote (B, N), indexed by row (not by batch position)."""

    def __init__(self, prompts, budgets, limits, N: int, pad_id: int, device):
        B = len(prompts)
        never = torch.iinfo(torch.long).max  # the budget of a row without one
        self.budget = torch.tensor([never if b is None else b for b in budgets], device=device)
        self.limit = torch.tensor(limits, device=device)
        self.phase = torch.tensor([THINK if prompt_opens_think(p) else PRE for p in prompts], device=device)
        self.done = torch.zeros(B, dtype=torch.bool, device=device)
        self.capped = torch.zeros(B, dtype=torch.bool, device=device)  # thinking was cut by the cap
        self.cut = torch.zeros(
            B, dtype=torch.bool, device=device
        )  # ended at its own max_new_tokens: "length"
        self.pending = torch.zeros(B, dtype=torch.bool, device=device)  # capped last step: <answer> is next
        self.think = torch.zeros(B, dtype=torch.long, device=device)
        self.lengths = torch.zeros(B, dtype=torch.long, device=device)
        self.tokens = torch.full((B, N), pad_id, dtype=torch.long, device=device)
        self.logprobs = torch.zeros((B, N), device=device)
        self.sampled = torch.zeros((B, N), dtype=torch.long, device=device)

    def emit(self, token, logp, live, step: int, tags: _TagIds, stop_at_answer: bool):
        """The live rows' tokens at `step` given the model's samples `token` (one per batch position;
        overwritten with what each row emits, which the model reads next). Returns the rows that
        emitted (row indices) and their tokens."""
        active = ~self.done[live]
        rows = live[active]
        ph = self.phase[rows]
        # `RowState.choose`: a thinking row at its budget writes </think> now (which ends its thinking as a
        # sampled one would) and <answer> next step.
        cap = (ph == THINK) & (self.think[rows] >= self.budget[rows])
        forced = cap | self.pending[rows]
        tok = torch.where(cap, tags.close, torch.where(self.pending[rows], tags.answer_open, token[active]))
        token[active] = tok  # what the model reads next
        self.pending[rows], self.capped[rows] = cap, self.capped[rows] | cap
        # `RowState.push`: the emitted token moves the row on through the phases or ends it.
        self.tokens[rows, step] = tok
        self.logprobs[rows, step] = logp.gather(-1, token[:, None]).squeeze(-1)[active]  # no (B, V) copy
        self.sampled[rows, step] = (~forced).long()
        self.lengths[rows] = step + 1
        closes = (ph == THINK) & (tok == tags.close)
        self.think[rows] += ((ph == THINK) & ~closes & (tok != tags.eos)).long()
        stop = (tok == tags.eos) | (stop_at_answer & (ph != THINK) & (tok == tags.answer_close))
        self.phase[rows] = torch.where((ph == PRE) & (tok == tags.open), THINK, torch.where(closes, POST, ph))
        self.cut[rows] = ~stop & (step + 1 >= self.limit[rows])
        self.done[rows] = stop | self.cut[rows]
        return rows, tok

    def end(self, ended) -> None:
        """Rows ended from outside (`generate`'s `on_step`): finished as by a stop rule."""
        ended = torch.tensor(sorted(set(ended)), dtype=torch.long, device=self.done.device)
        ended = ended[~self.done[ended]]  # a row that finished this step keeps its own reason
        self.done[ended] = True

    def rollout(self, prompt_ids, tokenizer) -> Rollout:
        T = max(int(self.lengths.max()), 1)
        tokens, logprobs = self.tokens[:, :T].cpu(), self.logprobs[:, :T].cpu()
        sampled, lengths = self.sampled[:, :T].cpu(), self.lengths.cpu()
        reasons = [
            ("budget" if c else "stop") if d and not k else "length"
            for d, c, k in zip(self.done.tolist(), self.capped.tolist(), self.cut.tolist())
        ]
        texts = tokenizer.decode_batch([row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())])
        return Rollout(prompt_ids, tokens, logprobs, sampled, lengths, self.think.tolist(), reasons, texts)
