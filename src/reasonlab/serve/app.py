"""The ASGI app of `reasonlab serve` (Starlette) and running it (uvicorn)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
import uuid

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from ..remote import BadRequest, error_body
from .batcher import Batcher, Job, apply_stop, row_seeds
from .protocol import (
    Limits,
    Row,
    Sampling,
    ServeError,
    chat_messages,
    chat_to_prompt,
    completion_prompts,
    json_type,
    legacy_logprobs,
    parse_json,
    parse_sampling,
    refuse_unknown_characters,
    reply_model,
    split_reply,
    token_logprobs,
    unknown_token_ids,
    usage,
    visible,
)


def _error(e: BadRequest) -> JSONResponse:
    return JSONResponse(
        error_body(str(e), getattr(e, "kind", "invalid_request_error"), e.param, e.code), e.status
    )


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
    rows at the next step.

    The chunks ready at one time go out in one write: a client that went away is only seen once
    the loop runs again, and every write to its closed socket before that is logged by asyncio
    ("socket.send() raised exception.")."""
    streams = [_RowStream(i, prompt, chat, job.sampling.stop) for i, prompt in enumerate(job.prompts)]

    def chunk(choices, **extra):
        return _sse({**header, "choices": choices, **extra})

    def advance(events: list[tuple[int, int]]):
        for i, token in events:
            streams[i].ids.append(token)
        updated = sorted({i for i, _ in events})
        for i, text in zip(updated, tokenizer.decode_batch([streams[i].ids for i in updated])):
            for choice in streams[i].choices(text, final=False):
                yield chunk([choice])

    def ending(rows: list[Row]):
        for stream, row in zip(streams, rows):
            for choice in stream.choices(row.text, final=True):
                yield chunk([choice])
            yield chunk([stream.choice(None, finish_reason=row.finish_reason)])
        if job.sampling.include_usage:
            yield chunk([], usage=usage(rows))
        yield _sse("[DONE]")

    async def events():
        getter = None
        try:
            if chat:
                yield "".join(
                    chunk(
                        [
                            {
                                "index": row.index,
                                "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None,
                            }
                        ]
                    )
                    for row in streams
                )
            elif job.sampling.echo:  # each row's prompt first, as the non-streamed text has it
                yield "".join(chunk([row.choice(row.prompt)]) for row in streams)
            done = False
            while not done:  # each step's tokens until the job is done, then what is left in the queue
                getter = asyncio.ensure_future(job.stream.get())
                await asyncio.wait({getter, job.future}, return_when=asyncio.FIRST_COMPLETED)
                done = not getter.done()
                steps = [] if done else [getter.result()]
                while not job.stream.empty():
                    steps.append(job.stream.get_nowait())
                ready = "".join(event for step in steps for event in advance(step))  # a token's text a chunk
                if ready:
                    yield ready
            try:
                rows = [apply_stop(r, job.sampling.stop, tokenizer) for r in job.future.result()]
            except Exception as e:  # noqa: BLE001 - the worker printed it; the stream has begun (200)
                yield _sse(error_body(f"internal error: {type(e).__name__}", "server_error")) + _sse("[DONE]")
                return
            yield "".join(ending(rows))
        finally:
            if getter is not None:  # else left pending when Starlette cancels this generator
                getter.cancel()
            if not job.future.done():  # the client went away (Starlette cancels this generator)
                job.cancelled = True

    return StreamingResponse(events(), media_type="text/event-stream")


async def _watch_disconnect(request: Request, job: Job) -> None:
    """Marks `job` cancelled if its client goes away before its reply (ASGI's http.disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancelled = True
            return
        await asyncio.sleep(0.05)


def chat_page(model_name: str, limits: Limits) -> str:
    """The chat page (`chat.html`, package data) with the server's settings in ``window.REASONLAB``:
    the model's name, the cap on max_tokens and the default (the page's thinking-budget slider runs
    from 0 to the cap)."""
    from importlib.resources import files

    settings = {
        "model": model_name,
        "max_tokens": limits.max_tokens,
        "default_max_tokens": limits.default_max_tokens,
    }
    html = files(__package__).joinpath("chat.html").read_text(encoding="utf-8")
    return html.replace("/*REASONLAB_SETTINGS*/{}", json.dumps(settings).replace("</", "<\\/"))


def _sse(payload) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


# ---- the app --------------------------------------------------------------------------------------


def make_app(model, tokenizer, limits: Limits | None = None, model_name: str = "reasonlab") -> Starlette:
    """The ASGI app serving `model` (run it with uvicorn: `run_server`, `ServerThread`)."""
    limits = limits or Limits()
    state = {"batcher": None}
    created = int(time.time())
    max_len = getattr(model, "max_seq_len", None)
    # Token ids a prompt may hold: the tokenizer's, and no more than the model has rows for (an HF
    # model's embedding is often padded past its tokenizer; the test models have no config)
    vocab = min(len(tokenizer), getattr(getattr(model, "config", None), "vocab_size", None) or len(tokenizer))

    async def body_of(request: Request) -> dict:
        length = request.headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > limits.max_body_bytes:
            raise ServeError(
                f"the body has {int(length)} bytes, above this server's {limits.max_body_bytes} "
                "(reasonlab serve --max-body-bytes)",
                status=413,
                code="body_too_large",
            )
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limits.max_body_bytes:
                raise ServeError(
                    f"the body is larger than this server's {limits.max_body_bytes} bytes",
                    status=413,
                    code="body_too_large",
                )
        body = parse_json(bytes(data))
        if not isinstance(body, dict):
            raise ServeError(f"the body must be a JSON object, got {json_type(body)}")
        return body

    unknown = unknown_token_ids(tokenizer)

    def check_fits(ids: list[int], s: Sampling, param: str) -> None:
        """A prompt leaves the model a position to write in (with max_tokens 0, echo, it may fill them all)."""
        if max_len is not None and len(ids) > max_len - (s.max_tokens > 0):
            raise ServeError(
                f"the prompt has {len(ids)} tokens and does not fit the model's {max_len} positions",
                param,
                code="context_length_exceeded",
            )

    def encode_prompts(prompts: list[str], s: Sampling, param: str) -> list[list[int]]:
        encoded = tokenizer.encode_batch(prompts)
        for prompt, ids in zip(prompts, encoded):
            if not ids:
                raise ServeError("empty prompt", param)
            check_fits(ids, s, param)
            if unknown & set(ids):  # the unknown token, or a character that is written like it ('?')
                refuse_unknown_characters(tokenizer, prompt, param)
        return encoded

    def submit(prompts: list[str] | None, s: Sampling, param: str, ids: list[list[int]] | None = None) -> Job:
        """Each prompt `s.n` times (prompt-major) into the batcher's waiting list: texts, or token ids
        (`ids`; their text, decoded, is what a reply shows). The rows are counted before anything
        else is done with them (a 2,000-prompt request is refused before its prompts are
        tokenised); a full queue (429) is told after the prompts are checked (a client's mistake is
        a 400 whether the server is busy or not)."""
        batcher = state["batcher"]
        batcher.check_size(len(prompts or ids) * s.n, "n" if s.n > 1 else param)
        if ids is None:
            ids = encode_prompts(prompts, s, param)
        else:
            for one in ids:
                check_fits(one, s, param)
            prompts = tokenizer.decode_batch(ids)
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
        batcher.submit(job)
        return job

    async def finished(request: Request, job: Job) -> list[Row]:
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
        return [apply_stop(r, job.sampling.stop, tokenizer) for r in rows]

    def rid(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:24]}"

    async def chat(request: Request):
        try:
            body = await body_of(request)
            messages = chat_messages(body)
            s = parse_sampling(body, limits, chat=True)
            name, ident, now = reply_model(body, model_name), rid("chatcmpl"), int(time.time())
            job = submit([chat_to_prompt(tokenizer, messages, s.budget)], s, "messages")
            if s.stream:
                header = {"id": ident, "object": "chat.completion.chunk", "created": now, "model": name}
                return _streamed(job, header, tokenizer, chat=True)
            rows = await finished(request, job)
        except BadRequest as e:
            return _error(e)
        choices = []
        for i, row in enumerate(rows):
            thought, answer = split_reply(row.text, row.prompt)
            choice = {
                "index": i,
                "message": {"role": "assistant", "reasoning_content": thought, "content": answer},
                "finish_reason": row.finish_reason,
                "logprobs": None,
            }
            if s.logprobs:
                choice["logprobs"] = {"content": token_logprobs(tokenizer, row)}
            choices.append(choice)
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": now,
                "model": name,
                "choices": choices,
                "usage": usage(rows),
            }
        )

    async def completions(request: Request):
        try:
            body = await body_of(request)
            texts, ids = completion_prompts(body, vocab)
            s = parse_sampling(body, limits, chat=False)
            name, ident, now = reply_model(body, model_name), rid("cmpl"), int(time.time())
            job = submit(texts, s, "prompt", ids)
            if s.stream:
                header = {"id": ident, "object": "text_completion", "created": now, "model": name}
                return _streamed(job, header, tokenizer, chat=False)
            rows = await finished(request, job)
        except BadRequest as e:
            return _error(e)
        choices = [
            {
                "index": i,
                "text": r.prompt + r.text if s.echo else r.text,
                "finish_reason": r.finish_reason,
                "logprobs": legacy_logprobs(tokenizer, r, s.top_logprobs) if s.logprobs else None,
            }
            for i, r in enumerate(rows)
        ]
        return JSONResponse(
            {
                "id": ident,
                "object": "text_completion",
                "created": now,
                "model": name,
                "choices": choices,
                "usage": usage(rows),
            }
        )

    async def page(request: Request):
        return HTMLResponse(chat_page(model_name, limits))

    async def models(request: Request):
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": model_name,
                        "object": "model",
                        "created": created,
                        "owned_by": "reasonlab",
                        "max_model_len": max_len,
                    }
                ],
            }
        )

    async def health(request: Request):
        batcher = state["batcher"]
        waiting = sum(len(j.prompts) for j in batcher.waiting)
        return JSONResponse(
            {
                "status": "ok",
                "busy": batcher.busy,
                "waiting_rows": waiting,
                "generate_calls": batcher.calls,
                "rows_done": batcher.rows_done,
                "rows_dropped": batcher.rows_dropped,
            }
        )

    async def http_error(request: Request, exc: HTTPException):
        routes = "POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET / (the chat page)"
        code = "not_found" if exc.status_code == 404 else "method_not_allowed"
        return JSONResponse(
            error_body(
                f"{request.method} {request.url.path}: {exc.detail}; this server has {routes}", code=code
            ),
            exc.status_code,
        )

    async def internal_error(request: Request, exc: Exception):
        print(f"serve: internal error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), 500)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(model, tokenizer, limits)
        state["batcher"] = app.state.batcher = batcher
        batcher.task = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            batcher.task.cancel()

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/", page, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )


# ---- running it ---------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); OSError when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _server(app, sock):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=30, access_log=False)
    return uvicorn.Server(config)


def run_server(app, sock: socket.socket, on_start=None) -> None:
    """Serve `app` on `sock` until interrupted (the calling thread; Ctrl-C stops it)."""
    server = _server(app, sock)
    if on_start is not None:
        original = server.startup

        async def startup(sockets=None):
            await original(sockets=sockets)
            on_start()

        server.startup = startup
    server.run(sockets=[sock])


class ServerThread:
    """`app` served on a background thread (tests, notebooks): `.url`, then `.close()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = _server(app, self.sock)
        self.app = app
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def model_name_of(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or "reasonlab"
