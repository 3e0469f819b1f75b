"""The two generating routes: ``POST /v1/chat/completions`` and ``POST /v1/completions``."""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..remote import BadRequest, error_body
from .intake import Intake
from .protocol import (
    chat_messages,
    chat_to_prompt,
    completion_prompts,
    legacy_logprobs,
    parse_sampling,
    reply_model,
    split_reply,
    token_logprobs,
    usage,
)
from .stream import _streamed


def _error(e: BadRequest) -> JSONResponse:
    return JSONResponse(
        error_body(str(e), getattr(e, "kind", "invalid_request_error"), e.param, e.code), e.status
    )


def _rid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class Generation:
    """The generating routes of one app (their endpoints are the bound methods `chat` and
    `completions`): a request is read and submitted through `intake`, then streamed or answered
    whole."""

    def __init__(self, intake: Intake, tokenizer, model, model_name: str):
        self.intake, self.tokenizer, self.model_name = intake, tokenizer, model_name
        # Token ids a prompt may hold: the tokenizer's, and no more than the model has rows for (an HF
        # model's embedding is often padded past its tokenizer; the test models have no config)
        vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
        self.vocab = min(len(tokenizer), vocab_size or len(tokenizer))

    async def chat(self, request: Request):
        try:
            body = await self.intake.body_of(request)
            messages = chat_messages(body)
            s = parse_sampling(body, self.intake.limits, chat=True)
            name, ident, now = reply_model(body, self.model_name), _rid("chatcmpl"), int(time.time())
            job = self.intake.submit([chat_to_prompt(self.tokenizer, messages, s.budget)], s, "messages")
            if s.stream:
                header = {"id": ident, "object": "chat.completion.chunk", "created": now, "model": name}
                return _streamed(job, header, self.tokenizer, chat=True)
            rows = await self.intake.finished(request, job)
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
                choice["logprobs"] = {"content": token_logprobs(self.tokenizer, row)}
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

    async def completions(self, request: Request):
        try:
            body = await self.intake.body_of(request)
            texts, ids = completion_prompts(body, self.vocab)
            s = parse_sampling(body, self.intake.limits, chat=False)
            name, ident, now = reply_model(body, self.model_name), _rid("cmpl"), int(time.time())
            job = self.intake.submit(texts, s, "prompt", ids)
            if s.stream:
                header = {"id": ident, "object": "text_completion", "created": now, "model": name}
                return _streamed(job, header, self.tokenizer, chat=False)
            rows = await self.intake.finished(request, job)
        except BadRequest as e:
            return _error(e)
        choices = [
            {
                "index": i,
                "text": r.prompt + r.text if s.echo else r.text,
                "finish_reason": r.finish_reason,
                "logprobs": legacy_logprobs(self.tokenizer, r, s.top_logprobs) if s.logprobs else None,
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
