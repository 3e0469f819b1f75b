"""The general decoder: a state machine per row (`RowState`) chooses or forces its token each step.
It handles everything `generate` is asked, extension and multi-token tags included."""

from __future__ import annotations

from collections import deque

import torch

from ..template import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from .params import Rollout, SamplingParams
from .steps import Decoding, _next_step, _sample_step


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


def _decode_rows(model, tokenizer, rows: list, params: SamplingParams, run: Decoding) -> None:
    """The general decode loop: each row's `RowState` chooses (or forces) its token every step;
    finished rows leave the batch."""
    logits, attn, next_pos, uniforms = run.logits, run.attn, run.next_pos, run.uniforms  # each step's
    device = logits.device
    live = list(range(len(rows)))  # the row behind each batch position
    for step in range(run.N):
        sampled, logp = _sample_step(logits, params, tokenizer.eos_id, run.generator, uniforms, step)
        chosen, emitted = _choose_tokens(
            rows, live, sampled.tolist(), tokenizer.pad_id, params.stop_at_answer
        )
        if run.on_step is not None:
            for i in run.on_step(emitted, [rows[i].history[-1] for i in emitted]) or ():
                rows[i].end()
        token_t = torch.tensor(chosen, dtype=torch.long, device=device)
        for i, lp in zip(live, logp.gather(-1, token_t[:, None]).squeeze(-1).tolist()):
            if len(rows[i].logprobs) < len(rows[i].history):  # a row that was done wrote nothing
                rows[i].logprobs.append(lp)
        keep = [j for j, i in enumerate(live) if rows[i].phase != "done"]
        if not keep or step == run.N - 1:
            break
        logits, next_pos, attn, uniforms, index = _next_step(
            model,
            run.cache,
            token_t,
            next_pos,
            attn,
            uniforms,
            torch.tensor(keep, device=device),
            run.P,
            step,
        )
        if index is not None:
            live = [live[j] for j in keep]


def _choose_tokens(rows: list, live: list[int], proposal: list[int], pad_id: int, stop_at_answer: bool):
    """Each live row's token this step (the pad for a row already done: the model still reads one)
    and the rows that emitted one."""
    chosen, emitted = [], []
    for j, i in enumerate(live):
        row = rows[i]
        if row.phase == "done":
            chosen.append(pad_id)
            continue
        token, forced = row.choose(proposal[j])
        row.push(token, stop_at_answer)
        row.sampled.append(0 if forced else 1)
        chosen.append(token)
        emitted.append(i)
    return chosen, emitted


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
