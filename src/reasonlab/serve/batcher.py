"""The batching worker of `reasonlab serve` (the package docstring tells how requests are batched)."""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import random
import sys
from dataclasses import dataclass, field

from ..engine import SamplingParams, generate
from ..template import THINK_CLOSE, THINK_OPEN, prompt_opens_think
from .protocol import Limits, Row, Sampling, ServeError, visible
from .scoring import score


@dataclass
class Job:
    """One request's rows (prompt x n) waiting for, or in, a `generate` call."""

    prompts: list[str]  # one per row
    prompt_ids: list[list[int]]  # one per row: what the model reads (checked when the request came)
    seeds: list[int]
    sampling: Sampling
    future: asyncio.Future = field(repr=False)
    # A streamed request: each decoding step puts [(row, token id), …] of its rows here, as they come
    stream: asyncio.Queue | None = field(default=None, repr=False)
    cancelled: bool = False  # its client went away: its rows end at the next step

    @property
    def gone(self) -> bool:
        return self.cancelled or self.future.cancelled()


class Batcher:
    """The waiting list and the worker that turns it into shared `generate` calls (package docstring)."""

    def __init__(self, model, tokenizer, limits: Limits):
        self.model, self.tokenizer, self.limits = model, tokenizer, limits
        self.waiting: list[Job] = []
        self.wake = asyncio.Event()
        self.calls = 0  # generate calls made (tests read how much was batched)
        self.rows_done = 0
        self.rows_dropped = 0  # rows of requests whose client went away: ended early, or never run
        self.busy = False  # a generate call is running
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def queued_rows(self) -> int:
        return sum(len(j.prompts) for j in self.waiting)

    def check_size(self, rows: int, param: str) -> None:
        """A request of `rows` rows (prompts x n) above the whole queue: a 400 (it could never be taken)."""
        if rows > self.limits.max_queue:
            raise ServeError(
                f"the request has {rows} rows (prompts x n), above this server's queue of "
                f"{self.limits.max_queue} rows (reasonlab serve --max-queue)",
                param,
                code="too_many_rows",
            )

    def submit(self, job: Job) -> asyncio.Future:
        """`job` into the waiting list; a 429 if its rows would take the waiting rows past the queue
        (later, they may fit). Its size was checked before (`check_size`)."""
        self._drop_gone()
        queued, cap = self.queued_rows(), self.limits.max_queue
        if queued + len(job.prompts) > cap:
            raise ServeError(
                f"the server is busy: {queued} rows are waiting (limit {cap}); retry later",
                status=429,
                code="queue_full",
                kind="rate_limit_error",
            )
        self.waiting.append(job)
        self.wake.set()
        return job.future

    def _drop_gone(self) -> None:
        """Waiting jobs whose clients went away leave the list (they take no room and no engine call)."""
        for job in [j for j in self.waiting if j.gone]:
            self.waiting.remove(job)
            self._end(job, [])

    def _end(self, job: Job, rows: list[Row]) -> None:
        """Gives `job` its rows (a job whose client went away: the rows it got, which nobody reads)."""
        if job.gone:
            self.rows_dropped += len(job.prompts)
        if not job.future.done():
            job.future.set_result(rows)

    def _take(self) -> list[Job]:
        self._drop_gone()
        if not self.waiting:
            return []
        key, rows, taken = self.waiting[0].sampling.key, 0, []
        for job in list(self.waiting):
            if not taken or (
                job.sampling.key == key and rows + len(job.prompts) <= self.limits.max_batch_rows
            ):
                taken.append(job)
                rows += len(job.prompts)
        for job in taken:
            self.waiting.remove(job)
        return taken

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            while jobs := self._take():
                self.busy = True
                try:
                    rows = await asyncio.to_thread(self._generate, jobs)
                except Exception as e:  # noqa: BLE001 - every waiting client gets an answer, the worker goes on
                    print(f"serve: internal error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(e)
                    continue
                finally:
                    self.busy = False
                for job in jobs:
                    self._end(job, rows[id(job)])

    def _generate(self, jobs: list[Job]) -> dict[int, list[Row]]:
        """The jobs' rows (by `id(job)`) through the engine: one call, or calls of max_batch_rows rows
        for jobs above it. Before each call the rows of jobs whose client went away are left out, so
        a large request that lost its client costs no more calls (only the one under way, which
        ends its rows at the next step: `_listener`)."""
        pending = [(job, i) for job in jobs for i in range(len(job.prompts))]
        out: dict[int, list[Row]] = {id(job): [] for job in jobs}
        while pending := [(job, i) for job, i in pending if not job.gone]:
            chunk, pending = pending[: self.limits.max_batch_rows], pending[self.limits.max_batch_rows :]
            for (job, _), row in zip(chunk, self._call(chunk)):
                out[id(job)].append(row)
        return out

    def _call(self, owners: list[tuple[Job, int]]) -> list[Row]:
        """These rows (each a job and its row in it): written by one `generate` call (`_write`),
        but rows of max_tokens 0 (echo: the prompt alone), which are not; then the rows that echo
        with logprobs are scored (`_score`)."""
        rows = [Row(job.prompts[i], "", [], len(job.prompt_ids[i]), 0, "length", []) for job, i in owners]
        writing = [k for k, (job, _) in enumerate(owners) if job.sampling.max_tokens > 0]
        if writing:
            for k, row in zip(writing, self._write([owners[k] for k in writing])):
                rows[k] = row
        self.rows_done += len(owners)
        self._score(owners, rows)
        return rows

    def _score(self, owners: list[tuple[Job, int]], rows: list[Row]) -> None:
        """Echo with logprobs: each row's prompt and completion through one forward pass of the model
        (`scoring.score`), on this worker thread like the engine; rows with the same tokens once (n > 1)."""
        done = {}
        for (job, i), row in zip(owners, rows):
            s = job.sampling
            if s.echo and s.logprobs and not job.gone:
                key = (tuple(job.prompt_ids[i]), tuple(row.ids), s.top_logprobs)
                if key not in done:
                    done[key] = score(self.model, job.prompt_ids[i], row.ids, s.top_logprobs)
                row.scored = done[key]

    def _write(self, owners: list[tuple[Job, int]]) -> list[Row]:
        """One `generate` call for these rows, with each row's budget, extensions, seed and
        max_tokens; every step's tokens go to the streaming jobs' queues, and rows whose client went
        away or whose text reached a stop string end there."""
        prompts = [job.prompts[i] for job, i in owners]
        budgets = [job.sampling.budget for job, _ in owners]
        first = owners[0][0].sampling
        params = SamplingParams(
            max_new_tokens=[job.sampling.max_tokens for job, _ in owners],
            temperature=first.temperature,
            top_p=first.top_p,
            think_budget=budgets if any(b is not None for b in budgets) else None,
            extend=[job.sampling.extend for job, _ in owners],
            row_seeds=[job.seeds[i] for job, i in owners],
        )
        given = _GivenIds(self.tokenizer, prompts, [job.prompt_ids[i] for job, i in owners])
        rollout = generate(self.model, given, prompts, params, on_step=self._listener(owners))
        self.calls += 1
        rows = []
        for i, prompt in enumerate(prompts):
            n = int(rollout.lengths[i])
            ids = rollout.tokens[i, :n].tolist()
            reason = "length" if rollout.finish_reason[i] == "length" else "stop"
            rows.append(
                Row(
                    prompt,
                    rollout.texts[i],
                    ids,
                    len(rollout.prompt_ids[i]),
                    rollout.think_tokens[i],
                    reason,
                    rollout.logprobs[i, :n].tolist(),
                )
            )
        return rows

    def _listener(self, owners: list[tuple[Job, int]]):
        """`generate`'s on_step for these rows (it runs on the worker thread)."""
        written: dict[int, list[int]] = {}  # the tokens so far of the rows that have stop strings

        def on_step(rows: list[int], tokens: list[int]) -> list[int]:
            ended, streamed = [], {}
            for r, token in zip(rows, tokens):
                job, i = owners[r]
                if job.gone:  # counted in rows_dropped when the job ends (`_end`)
                    ended.append(r)
                    continue
                if job.stream is not None:
                    streamed.setdefault(id(job), (job, []))[1].append((i, token))
                if job.sampling.stop:
                    written.setdefault(r, []).append(token)
                    if any(stop in self.tokenizer.decode(written[r]) for stop in job.sampling.stop):
                        ended.append(r)
            for job, events in streamed.values():
                self.loop.call_soon_threadsafe(job.stream.put_nowait, events)
            return ended

        return on_step


class _GivenIds:
    """The tokenizer, except that encoding this call's prompts gives the ids each row was checked as.
    The engine encodes its prompt texts itself, and a prompt sent as token ids does not survive
    decoding and encoding again: the built-in vocabulary's '<', 't', 'h', ... come back as the one
    <think> token, EOS decodes to nothing, a BPE merges what the client split."""

    def __init__(self, tokenizer, prompts: list[str], ids: list[list[int]]):
        self._tokenizer, self._prompts, self._ids = tokenizer, prompts, ids

    def encode_prompts(self, texts: list[str]) -> list[list[int]]:
        if list(texts) != self._prompts:
            raise ValueError("_GivenIds encodes only the prompts of its own generate call")
        return [list(ids) for ids in self._ids]

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def row_seeds(seed: int | None, count: int) -> list[int]:
    """Per-row engine seeds: derived from the request's seed (the same request, the same samples, in
    any batch), else random."""
    if seed is None:
        return [random.getrandbits(62) for _ in range(count)]
    return [random.Random(f"{seed}:{i}").getrandbits(62) for i in range(count)]


def _think_in_prefix(ids: list[int], k: int, tags: dict, opened: bool) -> int:
    """Tokens strictly inside the thought among the first `k` of `ids`."""

    def find(seq, start):
        for j in range(start, len(ids) - len(seq) + 1):
            if ids[j : j + len(seq)] == seq:
                return j
        return -1

    start = 0
    if not opened:
        at = find(tags[THINK_OPEN], 0)
        if at < 0:
            return 0
        start = at + len(tags[THINK_OPEN])
    end = find(tags[THINK_CLOSE], start)
    end = len(ids) if end < 0 else end
    return max(0, min(end, k) - start)


def apply_stop(row: Row, stops: list[str], tokenizer) -> Row:
    """The row cut before the first `stop` string (OpenAI's rule: the stop text is not returned):
    its text, the tokens up to the one that completed the stop, its thought's tokens among them.
    That token is found by bisection (a prefix that holds a stop string stays holding it as it
    grows): O(log T) decodes, not one per prefix."""
    text = visible(row.text, stops, final=True)
    if len(text) == len(row.text):
        return row
    holds = lambda k: any(s in tokenizer.decode(row.ids[:k]) for s in stops)  # noqa: E731
    k = min(bisect.bisect_left(range(len(row.ids) + 1), True, lo=1, key=holds), len(row.ids))
    think = min(
        row.think_tokens, _think_in_prefix(row.ids, k, tokenizer.tags, prompt_opens_think(row.prompt))
    )
    # A row scored for echo keeps its scores: the reply shows them up to the cut (`legacy_logprobs`).
    return dataclasses.replace(
        row, text=text, ids=row.ids[:k], think_tokens=think, finish_reason="stop", logprobs=row.logprobs[:k]
    )
