"""A streamed reply (chat or completions) as server-sent events, live: each decoding step's tokens
become one chunk per row with the text that is new."""

from __future__ import annotations

import asyncio
import json

from starlette.responses import StreamingResponse

from ..remote import error_body
from .batcher import Job, apply_stop
from .protocol import Row, split_reply, usage, visible


class _RowStream:
    """One row of a streamed reply: its tokens so far and what of its text has been sent. Chat sends
    two fields (the thought, the answer: `split_reply`), completions one (the text); each field grows
    by what is new since the last step, so the pieces add up to the non-streamed reply."""

    def __init__(self, index: int, prompt: str, chat: bool, stops: list[str]):
        self.index, self.prompt, self.chat, self.stops = index, prompt, chat, stops
        self.ids: list[int] = []
        self.sent = ["", ""] if chat else [""]

    def choices(self, text: str, final: bool) -> list[dict]:
        shown = visible(text, self.stops, final)
        fields = list(split_reply(shown, self.prompt, final)) if self.chat else [shown]
        out = []
        for k, now in enumerate(fields):
            now = now or ""
            if len(now) > len(self.sent[k]) and now.startswith(self.sent[k]):  # a stream takes nothing back
                piece, self.sent[k] = now[len(self.sent[k]) :], now
                out.append(self.choice(piece, k))
        return out

    def choice(self, piece: str | None, field: int = 0, finish_reason: str | None = None) -> dict:
        if not self.chat:
            return {
                "index": self.index,
                "text": piece or "",
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        delta = {} if piece is None else {("reasoning_content", "content")[field]: piece}
        return {"index": self.index, "delta": delta, "finish_reason": finish_reason}


def _streamed(job: Job, header: dict, tokenizer, chat: bool) -> StreamingResponse:
    """A streamed reply (chat or completions), live: each decoding step's tokens, as the batcher
    puts them in the job's queue, become one SSE chunk per row with the new text (the thought as
    ``delta.reasoning_content``, the answer as ``delta.content``; completions: ``text``). When the
    job is done: the rest (what was held back), a chunk with each row's finish reason, a usage
    chunk when ``stream_options.include_usage``, then ``[DONE]``. A client that goes away ends its
    rows at the next step."""
    return StreamingResponse(_Stream(job, header, tokenizer, chat).events(), media_type="text/event-stream")


class _Stream:
    """The events of one streamed reply (`_streamed`). The chunks ready at one time go out in one
    write: a client that went away is only seen once the loop runs again, and every write to its
    closed socket before that is logged by asyncio ("socket.send() raised exception.")."""

    def __init__(self, job: Job, header: dict, tokenizer, chat: bool):
        self.job, self.header, self.tokenizer, self.chat = job, header, tokenizer, chat
        self.rows = [_RowStream(i, prompt, chat, job.sampling.stop) for i, prompt in enumerate(job.prompts)]
        self.getter = None  # the pending read of the job's queue

    async def events(self):
        job = self.job
        try:
            if (opening := self.opening()) is not None:
                yield opening
            done = False
            while not done:  # each step's tokens until the job is done, then what is left in the queue
                done, steps = await self.wait()
                ready = "".join(
                    event for step in steps for event in self.advance(step)
                )  # a token's text a chunk
                if ready:
                    yield ready
            try:
                rows = [apply_stop(r, job.sampling.stop, self.tokenizer) for r in job.future.result()]
            except Exception as e:  # noqa: BLE001 - the worker printed it; the stream has begun (200)
                yield _sse(error_body(f"internal error: {type(e).__name__}", "server_error")) + _sse("[DONE]")
                return
            yield "".join(self.ending(rows))
        finally:
            if self.getter is not None:  # else left pending when Starlette cancels this generator
                self.getter.cancel()
            if not job.future.done():  # the client went away (Starlette cancels this generator)
                job.cancelled = True

    def opening(self) -> str | None:
        """Chat: each row's role first; completions with ``echo``: each row's prompt first, as the
        non-streamed text has it."""
        if self.chat:
            delta = {"role": "assistant", "content": ""}
            return "".join(
                self.chunk([{"index": row.index, "delta": delta, "finish_reason": None}]) for row in self.rows
            )
        if self.job.sampling.echo:
            return "".join(self.chunk([row.choice(row.prompt)]) for row in self.rows)
        return None

    async def wait(self) -> tuple[bool, list]:
        """Whether the job is done (the batcher put nothing more in its queue), and the steps' tokens
        in the queue by now (waiting for one while the job runs)."""
        self.getter = asyncio.ensure_future(self.job.stream.get())
        await asyncio.wait({self.getter, self.job.future}, return_when=asyncio.FIRST_COMPLETED)
        done = not self.getter.done()
        steps = [] if done else [self.getter.result()]
        while not self.job.stream.empty():
            steps.append(self.job.stream.get_nowait())
        return done, steps

    def chunk(self, choices, **extra) -> str:
        return _sse({**self.header, "choices": choices, **extra})

    def advance(self, events: list[tuple[int, int]]):
        """The chunks of one step's (row, token) events: each updated row's new text."""
        for i, token in events:
            self.rows[i].ids.append(token)
        updated = sorted({i for i, _ in events})
        for i, text in zip(updated, self.tokenizer.decode_batch([self.rows[i].ids for i in updated])):
            for choice in self.rows[i].choices(text, final=False):
                yield self.chunk([choice])

    def ending(self, rows: list[Row]):
        """What each row held back, its finish reason, the usage when asked, then ``[DONE]``."""
        for stream, row in zip(self.rows, rows):
            for choice in stream.choices(row.text, final=True):
                yield self.chunk([choice])
            yield self.chunk([stream.choice(None, finish_reason=row.finish_reason)])
        if self.job.sampling.include_usage:
            yield self.chunk([], usage=usage(rows))
        yield _sse("[DONE]")


def _sse(payload) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
