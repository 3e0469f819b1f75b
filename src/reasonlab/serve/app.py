"""The ASGI app of `reasonlab serve` (Starlette): its routes, error handlers and the batcher's
lifetime. `server` runs it (uvicorn)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from ..remote import error_body
from .batcher import Batcher
from .intake import Intake
from .protocol import Limits
from .routes import Generation

ROUTES = "POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET / (the chat page)"


def make_app(model, tokenizer, limits: Limits | None = None, model_name: str = "reasonlab") -> Starlette:
    """The ASGI app serving `model` (run it with uvicorn: `run_server`, `ServerThread`)."""
    limits = limits or Limits()
    intake = Intake(model, tokenizer, limits)
    generation = Generation(intake, tokenizer, model, model_name)
    info = _Info(intake, model, model_name, limits)
    return Starlette(
        routes=[
            Route("/v1/chat/completions", generation.chat, methods=["POST"]),
            Route("/v1/completions", generation.completions, methods=["POST"]),
            Route("/v1/models", info.models, methods=["GET"]),
            Route("/health", info.health, methods=["GET"]),
            Route("/", info.page, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=_lifespan(model, tokenizer, limits, intake),
    )


def _lifespan(model, tokenizer, limits: Limits, intake: Intake):
    """The app's lifespan: one batcher, its worker task running while the app serves."""

    @asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(model, tokenizer, limits)
        intake.batcher = app.state.batcher = batcher
        batcher.task = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            batcher.task.cancel()

    return lifespan


class _Info:
    """The routes that tell about the server: the chat page, the model list and the health check."""

    def __init__(self, intake: Intake, model, model_name: str, limits: Limits):
        self.intake, self.model_name, self.limits = intake, model_name, limits  # intake: its batcher
        self.created = int(time.time())
        self.max_len = getattr(model, "max_seq_len", None)

    async def page(self, request: Request):
        return HTMLResponse(chat_page(self.model_name, self.limits))

    async def models(self, request: Request):
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model_name,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "reasonlab",
                        "max_model_len": self.max_len,
                    }
                ],
            }
        )

    async def health(self, request: Request):
        batcher = self.intake.batcher
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


async def _http_error(request: Request, exc: HTTPException):
    """An unknown path (404) or method (405), as OpenAI's error object naming the routes there are."""
    code = "not_found" if exc.status_code == 404 else "method_not_allowed"
    return JSONResponse(
        error_body(f"{request.method} {request.url.path}: {exc.detail}; this server has {ROUTES}", code=code),
        exc.status_code,
    )


async def _internal_error(request: Request, exc: Exception):
    print(f"serve: internal error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), 500)


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
