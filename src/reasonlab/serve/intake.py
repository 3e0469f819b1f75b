"""A request's way in: its body read and checked, its prompts encoded and checked, its rows handed
to the batcher as one `Job`, and its rows once they are done."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from .batcher import Job, apply_stop, row_seeds
from .protocol import (
    Limits,
    Row,
    Sampling,
    ServeError,
    json_type,
    parse_json,
    refuse_unknown_characters,
    unknown_token_ids,
)


class Intake:
    """What the generating routes share: the tokenizer, the model's positions, the server's limits
    and its batcher (`batcher`, set when the app starts)."""

    def __init__(self, model, tokenizer, limits: Limits):
        self.tokenizer, self.limits = tokenizer, limits
        self.max_len = getattr(model, "max_seq_len", None)
        self.unknown = unknown_token_ids(tokenizer)
        self.batcher = None

    async def body_of(self, request: Request) -> dict:
        """The request's JSON object, read no further than `Limits.max_body_bytes` (413 past it)."""
        limit = self.limits.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            raise ServeError(
                f"the body has {int(length)} bytes, above this server's {limit} "
                "(reasonlab serve --max-body-bytes)",
                status=413,
                code="body_too_large",
            )
        data = bytearray()
        async for chunk in request.stream():  # a body sent without a length is counted as it comes
            data += chunk
            if len(data) > limit:
                raise ServeError(
                    f"the body is larger than this server's {limit} bytes",
                    status=413,
                    code="body_too_large",
                )
        body = parse_json(bytes(data))
        if not isinstance(body, dict):
            raise ServeError(f"the body must be a JSON object, got {json_type(body)}")
        return body

    def check_fits(self, ids: list[int], s: Sampling, param: str) -> None:
        """A prompt leaves the model a position to write in (with max_tokens 0, echo, it may fill
        them all)."""
        if self.max_len is not None and len(ids) > self.max_len - (s.max_tokens > 0):
            raise ServeError(
                f"the prompt has {len(ids)} tokens and does not fit the model's {self.max_len} positions",
                param,
                code="context_length_exceeded",
            )

    def encode_prompts(self, prompts: list[str], s: Sampling, param: str) -> list[list[int]]:
        encoded = self.tokenizer.encode_prompts(prompts)
        for prompt, ids in zip(prompts, encoded):
            if not ids:
                raise ServeError("empty prompt", param)
            self.check_fits(ids, s, param)
            if self.unknown & set(ids):  # the unknown token, or a character that is written like it ('?')
                refuse_unknown_characters(self.tokenizer, prompt, param)
        return encoded

    def submit(
        self, prompts: list[str] | None, s: Sampling, param: str, ids: list[list[int]] | None = None
    ) -> Job:
        """Each prompt `s.n` times (prompt-major) into the batcher's waiting list: texts, or token ids
        (`ids`; their text, decoded, is what a reply shows). The rows are counted before anything
        else is done with them (a 2,000-prompt request is refused before its prompts are
        tokenised); a full queue (429) is told after the prompts are checked (a client's mistake is
        a 400 whether the server is busy or not)."""
        self.batcher.check_size(len(prompts or ids) * s.n, "n" if s.n > 1 else param)
        if ids is None:
            ids = self.encode_prompts(prompts, s, param)
        else:
            for one in ids:
                self.check_fits(one, s, param)
            prompts = self.tokenizer.decode_batch(ids)
        rows_per = [p for p in prompts for _ in range(s.n)]
        ids_per = [one for one in ids for _ in range(s.n)]
        job = Job(
            rows_per,
            ids_per,
            row_seeds(s.seed, len(rows_per)),
            s,
            asyncio.get_running_loop().create_future(),
            asyncio.Queue() if s.stream else None,
        )
        self.batcher.submit(job)
        return job

    async def finished(self, request: Request, job: Job) -> list[Row]:
        """The job's rows once done, cut at their stop strings; its rows end early if the client goes away."""
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        try:
            rows = await job.future
        except Exception as e:  # noqa: BLE001 - the worker printed it
            raise ServeError(f"internal error: {type(e).__name__}", status=500, kind="server_error") from None
        finally:
            watcher.cancel()
        if job.gone:  # its rows were cut short or skipped; nobody reads this answer (nginx's status for it)
            raise ServeError("the client closed the request", status=499, code="client_closed")
        return [apply_stop(r, job.sampling.stop, self.tokenizer) for r in rows]


async def _watch_disconnect(request: Request, job: Job) -> None:
    """Marks `job` cancelled if its client goes away before its reply (ASGI's http.disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancelled = True
            return
        await asyncio.sleep(0.05)
