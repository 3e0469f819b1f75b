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
from .protocol import (Limits, Row, Sampling, ServeError, chat_messages, chat_to_prompt, parse_sampling, pieces,
                       split_reply, token_logprobs, usage)


def _error(e: BadRequest) -> JSONResponse:
    return JSONResponse(error_body(str(e), getattr(e, "kind", "invalid_request_error"), e.param, e.code), e.status)


def _streamed(body: dict, rows: list, header: dict, choice_chunks) -> StreamingResponse:
    """A streamed reply (chat or completions): for each row, one SSE chunk per choice dict that
    `choice_chunks(index, row)` yields (`header` around it), then a usage chunk when
    ``stream_options.include_usage``, then ``[DONE]``."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(choices, **extra):
        return _sse({**header, "choices": choices, **extra})

    async def events():
        for i, row in enumerate(rows):
            for choice in choice_chunks(i, row):
                yield chunk([choice])
        if include_usage:
            yield chunk([], usage=usage(rows))
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


def chat_page(model_name: str, limits: Limits) -> str:
    """The chat page (`chat.html`, package data) with the server's settings in ``window.REASONLAB``:
    the model's name, the cap on max_tokens and the default (the page's thinking-budget slider runs
    from 0 to the cap)."""
    from importlib.resources import files

    settings = {"model": model_name, "max_tokens": limits.max_tokens, "default_max_tokens": limits.default_max_tokens}
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

    async def body_of(request: Request):
        length = request.headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > limits.max_body_bytes:
            raise ServeError(f"the body has {int(length)} bytes, above this server's {limits.max_body_bytes} "
                             "(reasonlab serve --max-body-bytes)", status=413, code="body_too_large")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limits.max_body_bytes:
                raise ServeError(f"the body is larger than this server's {limits.max_body_bytes} bytes", status=413,
                                 code="body_too_large")
        try:
            body = json.loads(bytes(data))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ServeError(f"the body is not valid JSON: {e}", code="bad_json") from None
        if not isinstance(body, dict):
            raise ServeError("the body must be a JSON object")
        return body

    def check_prompts(prompts: list[str]) -> None:
        for ids in tokenizer.encode_batch(prompts):
            if not ids:
                raise ServeError("empty prompt", "prompt")
            if max_len is not None and len(ids) >= max_len:
                raise ServeError(f"the prompt has {len(ids)} tokens and does not fit the model's {max_len} positions",
                                 "prompt", code="context_length_exceeded")

    async def run_rows(prompts: list[str], s: Sampling) -> list[Row]:
        """Each prompt `s.n` times through the batcher; the rows, prompt-major."""
        check_prompts(prompts)
        rows_per = [p for p in prompts for _ in range(s.n)]
        job = Job(rows_per, [s.budget] * len(rows_per), row_seeds(s.seed, len(rows_per)), s,
                  asyncio.get_running_loop().create_future())
        try:
            rows = await state["batcher"].submit(job)
        except BadRequest:
            raise
        except Exception as e:  # noqa: BLE001 - the worker printed it
            raise ServeError(f"internal error: {type(e).__name__}", status=500, kind="server_error") from None
        return [apply_stop(r, s.stop, tokenizer) for r in rows]

    def rid(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:24]}"

    async def chat(request: Request):
        try:
            body = await body_of(request)
            messages = chat_messages(body)
            s = parse_sampling(body, limits, chat=True)
            prompt = chat_to_prompt(tokenizer, messages, s.budget)
            rows = await run_rows([prompt], s)
        except BadRequest as e:
            return _error(e)
        name, ident, now = body.get("model") or model_name, rid("chatcmpl"), int(time.time())
        splits = [split_reply(r.text, r.prompt) for r in rows]
        if not body.get("stream"):
            choices = []
            for i, (row, (thought, answer)) in enumerate(zip(rows, splits)):
                choice = {"index": i, "message": {"role": "assistant", "reasoning_content": thought, "content": answer},
                          "finish_reason": row.finish_reason, "logprobs": None}
                if s.logprobs:
                    choice["logprobs"] = {"content": token_logprobs(tokenizer, row)}
                choices.append(choice)
            return JSONResponse({"id": ident, "object": "chat.completion", "created": now, "model": name,
                                 "choices": choices, "usage": usage(rows)})
        def deltas(i, row):
            thought, answer = splits[i]
            yield {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            for piece in pieces(tokenizer, thought or ""):
                yield {"index": i, "delta": {"reasoning_content": piece}, "finish_reason": None}
            for piece in pieces(tokenizer, answer):
                yield {"index": i, "delta": {"content": piece}, "finish_reason": None}
            yield {"index": i, "delta": {}, "finish_reason": row.finish_reason}

        header = {"id": ident, "object": "chat.completion.chunk", "created": now, "model": name}
        return _streamed(body, rows, header, deltas)

    async def completions(request: Request):
        try:
            body = await body_of(request)
            prompt = body.get("prompt")
            prompts = prompt if isinstance(prompt, list) else [prompt]
            if not prompts or not all(isinstance(p, str) and p for p in prompts):
                raise ServeError("'prompt' must be a non-empty string or a non-empty list of them", "prompt")
            s = parse_sampling(body, limits, chat=False)
            rows = await run_rows(prompts, s)
        except BadRequest as e:
            return _error(e)
        name, ident, now = body.get("model") or model_name, rid("cmpl"), int(time.time())

        def legacy_logprobs(row):
            tokens = [t["token"] for t in token_logprobs(tokenizer, row)]
            offsets = [sum(len(t) for t in tokens[:j]) for j in range(len(tokens))]
            return {"tokens": tokens, "token_logprobs": row.logprobs, "top_logprobs": None, "text_offset": offsets}

        if not body.get("stream"):
            choices = [{"index": i, "text": r.text, "finish_reason": r.finish_reason,
                        "logprobs": legacy_logprobs(r) if s.logprobs else None} for i, r in enumerate(rows)]
            return JSONResponse({"id": ident, "object": "text_completion", "created": now, "model": name,
                                 "choices": choices, "usage": usage(rows)})
        def text_chunks(i, row):
            for piece in pieces(tokenizer, row.text):
                yield {"index": i, "text": piece, "finish_reason": None, "logprobs": None}
            yield {"index": i, "text": "", "finish_reason": row.finish_reason, "logprobs": None}

        header = {"id": ident, "object": "text_completion", "created": now, "model": name}
        return _streamed(body, rows, header, text_chunks)

    async def page(request: Request):
        return HTMLResponse(chat_page(model_name, limits))

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                                          "owned_by": "reasonlab", "max_model_len": max_len}]})

    async def health(request: Request):
        batcher = state["batcher"]
        waiting = sum(len(j.prompts) for j in batcher.waiting)
        return JSONResponse({"status": "ok", "busy": batcher.busy, "waiting_rows": waiting,
                             "generate_calls": batcher.calls, "rows_done": batcher.rows_done})

    async def http_error(request: Request, exc: HTTPException):
        routes = "POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET / (the chat page)"
        code = "not_found" if exc.status_code == 404 else "method_not_allowed"
        return JSONResponse(error_body(f"{request.method} {request.url.path}: {exc.detail}; this server has {routes}",
                                       code=code), exc.status_code)

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

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"]),
                             Route("/health", health, methods=["GET"]),
                             Route("/", page, methods=["GET"])],
                     exception_handlers={HTTPException: http_error, Exception: internal_error}, lifespan=lifespan)


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
