"""`reasonlab serve`: an OpenAI-compatible server for any reasonlab model, with batching.

Endpoints: ``POST /v1/chat/completions`` (the reply split into ``message.reasoning_content``, the
thought, and ``message.content``, the answer, as vLLM's reasoning parsers and DeepSeek's API do),
``POST /v1/completions`` (raw text, what `remote.RemoteGenerator` reads), ``GET /v1/models`` and
``GET /health``. docs/serve.md has the parameters, the thinking budgets and measured numbers.

Why Starlette + uvicorn, not FastAPI: every body is checked by hand here, because a refusal must be
OpenAI's error object naming the parameter (FastAPI's pydantic models answer 422 and their own
shape, which would have to be overridden everywhere), and streaming is a plain async generator.
What FastAPI would add (pydantic models, OpenAPI pages) this server does not use, so the smaller
stack it is built on (Starlette; uvicorn runs both) is enough.

Batching. A request is checked, its prompts built and tokenised on the event loop, and its rows
(prompt x ``n``) put in a waiting list as one `Job` with a future. One worker task takes what is
waiting each time the model is free: the oldest job's sampling key (temperature, top_p, max_tokens:
the engine takes those once per `generate` call) and every waiting job with the same key, oldest
first, up to `Limits.max_batch_rows` rows (a larger job runs alone, in calls of that many rows); jobs
with other keys wait for a later turn (oldest key first). Thinking budgets and seeds differ per row
inside a batch: the engine takes `think_budget` as a per-row list and `row_seeds` (a row's samples
depend only on its own seed, never on the rows it shares a batch with). The `generate` call runs
in a thread (`asyncio.to_thread`), so the loop keeps accepting requests; each job's future gets its
rows. A client that disconnects leaves a future nobody awaits: its rows are dropped and the worker
goes on. A request whose rows would take the waiting rows past `Limits.max_queue`: 429 (alone, a
request is always taken).

Streaming. The engine returns whole rollouts (it has no per-step hook), so a streamed reply starts
when its batch has finished: the thought is sent as ``delta.reasoning_content`` one token's text at
a time, then the answer as ``delta.content``, then a chunk with the finish reason, a ``usage``
chunk when ``stream_options.include_usage``, and ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .engine import SamplingParams, generate
from .remote import BadRequest, error_body
from .template import (ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, build_prompt, chat_prompt,
                       parse_completion, prompt_opens_think)

# reasoning_effort -> the thinking budget, as a share of the request's max_tokens ("none": answer at once)
EFFORT_SHARE = {"none": 0.0, "minimal": 1 / 16, "low": 1 / 4, "medium": 1 / 2, "high": 3 / 4}
MAX_N = 128
# OpenAI parameters the engine has no counterpart for: refused (400 naming them) unless at their no-op value
UNSUPPORTED = {"tools": None, "tool_choice": None, "functions": None, "function_call": None, "logit_bias": None,
               "presence_penalty": 0, "frequency_penalty": 0, "top_logprobs": 0, "best_of": 1, "echo": False,
               "suffix": None, "audio": None, "modalities": None, "prediction": None}


@dataclass
class Limits:
    """What one server takes at most (`reasonlab serve`'s --max-* options)."""

    max_batch_rows: int = 64  # rows (prompt x n) in one generate call
    max_queue: int = 512  # rows waiting for the model; more: 429
    max_tokens: int = 1024  # cap on a request's max_tokens; above: 400
    default_max_tokens: int = 256  # a request without max_tokens (never above max_tokens)
    max_body_bytes: int = 1 << 20  # request body; larger: 413


class ServeError(BadRequest):
    """A refusal with its HTTP status and OpenAI error type."""

    def __init__(self, message, param=None, status=400, code=None, kind="invalid_request_error"):
        super().__init__(message, param, status, code)
        self.kind = kind


def _error(e: BadRequest) -> JSONResponse:
    return JSONResponse(error_body(str(e), getattr(e, "kind", "invalid_request_error"), e.param, e.code), e.status)


# ---- checking a request -------------------------------------------------------------------------

def _number(body: dict, key: str, default, kind, low, high=math.inf):
    value = body.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok or (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
        shown = "an integer" if kind is int else "a number"
        raise ServeError(f"'{key}' must be {shown} in [{low}, {high}], got {value!r}", key)
    return kind(value)


def _refuse_unsupported(body: dict) -> None:
    for key, neutral in UNSUPPORTED.items():
        value = body.get(key)
        if value is not None and value != neutral and value != {} and value != []:
            raise ServeError(f"'{key}' is not supported by this server (the engine has no counterpart)", key,
                             code="unsupported_parameter")


@dataclass
class Sampling:
    """A request's sampling, checked: what the engine takes per call (`key`) and per row."""

    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    budget: int | None  # thinking tokens at most (None: no cap)
    stop: list[str]
    logprobs: bool

    @property
    def key(self) -> tuple:
        return (self.temperature, self.top_p, self.max_tokens)


def parse_sampling(body: dict, limits: Limits, chat: bool) -> Sampling:
    _refuse_unsupported(body)
    n = _number(body, "n", 1, int, 1, MAX_N)
    token_key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, token_key, min(limits.default_max_tokens, limits.max_tokens), int, 1)
    if max_tokens > limits.max_tokens:
        raise ServeError(f"'{token_key}' is {max_tokens}, above this server's cap of {limits.max_tokens} "
                         "(reasonlab serve --max-tokens)", token_key, code="max_tokens_too_large")
    temperature = _number(body, "temperature", 1.0, float, 0)  # no cap at 2: rationales may ask more
    top_p = _number(body, "top_p", 1.0, float, 0, 1)
    if top_p == 0:
        raise ServeError("'top_p' must be above 0", "top_p")
    seed = _number(body, "seed", None, int, -(2**63), 2**63 - 1)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ServeError("'stop' must be a non-empty string or a list of up to 4 of them", "stop")
    budget = _number(body, "max_thinking_tokens", None, int, 0)
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in EFFORT_SHARE:
            raise ServeError(f"'reasoning_effort' must be one of {', '.join(EFFORT_SHARE)}, got {effort!r}",
                             "reasoning_effort")
        if budget is None:  # an explicit max_thinking_tokens wins
            budget = int(EFFORT_SHARE[effort] * max_tokens)
    logprobs = body.get("logprobs")
    if chat:
        if logprobs is not None and not isinstance(logprobs, bool):
            raise ServeError("'logprobs' must be true or false", "logprobs")
        logprobs = bool(logprobs)
    else:  # the legacy API: an integer, the number of top tokens beside the chosen one (0 only here)
        if logprobs not in (None, 0) and not (isinstance(logprobs, int) and not isinstance(logprobs, bool)):
            raise ServeError("'logprobs' must be an integer", "logprobs")
        if logprobs:
            raise ServeError("'logprobs' above 0 (top alternatives) is not supported: the engine keeps only the "
                             "chosen token's log-probability (use logprobs=0)", "logprobs",
                             code="unsupported_parameter")
        logprobs = logprobs == 0
    if logprobs and body.get("stream"):
        raise ServeError("'logprobs' is not supported with 'stream'", "logprobs", code="unsupported_parameter")
    return Sampling(n, max_tokens, temperature, top_p, seed, budget, stop, logprobs)


def _text_of(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise ServeError(f"{where}: 'content' must be a string or a list of text parts", "messages")


def chat_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ServeError("'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ServeError(f"messages[{i}] must be an object with a role of system, developer, user or assistant",
                             "messages")
        out.append({"role": "system" if m["role"] == "developer" else m["role"],
                    "content": _text_of(m.get("content", ""), f"messages[{i}]")})
    if not any(m["role"] == "user" for m in out):
        raise ServeError("'messages' has no user message", "messages")
    return out


def chat_to_prompt(tokenizer, messages: list[dict], budget: int | None) -> str:
    """The text the model continues: the messages through the tokenizer's chat template when it has
    one; else (the built-in models, which read no instructions) the plain prompt of the last user
    message, with the step-by-step trigger unless the thinking budget is 0 (then the question alone,
    as the direct prompt asks; the engine's cap closes any thinking at once too)."""
    hf = getattr(tokenizer, "hf", None)
    if hf is not None and getattr(hf, "chat_template", None):
        return chat_prompt(hf, messages)
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return build_prompt(question, "plain", trigger=budget != 0)


def split_reply(text: str, prompt: str | None = None) -> tuple[str | None, str]:
    """(reasoning_content, content) of a completion. In the template: `template.parse_completion`'s
    think and answer. Out of it: the closed thought if any and the rest without answer tags; an
    unclosed thought (cut by max_tokens) is all reasoning and no content; no thought, all content."""
    parsed = parse_completion(text, prompt)
    if parsed.format_ok:
        return parsed.think, parsed.answer
    full = THINK_OPEN + text if prompt_opens_think(prompt) else text
    if parsed.think is not None:
        rest = full.split(THINK_CLOSE, 1)[1]
    elif THINK_OPEN in full:
        return full.split(THINK_OPEN, 1)[1].strip(), ""
    else:
        rest = full
    return parsed.think, rest.replace(ANSWER_OPEN, "").replace(ANSWER_CLOSE, "").strip()


# ---- the batching worker ------------------------------------------------------------------------

@dataclass
class Row:
    """One finished completion, as a reply reports it."""

    prompt: str
    text: str
    ids: list[int]
    prompt_tokens: int
    think_tokens: int
    finish_reason: str  # "stop" or "length" (OpenAI's); the engine's "budget" (capped, then answered) is "stop"
    logprobs: list[float]


@dataclass
class Job:
    prompts: list[str]  # one per row
    budgets: list[int | None]
    seeds: list[int]
    sampling: Sampling
    future: asyncio.Future = field(repr=False)


class Batcher:
    """The waiting list and the worker that turns it into shared `generate` calls (module docstring)."""

    def __init__(self, model, tokenizer, limits: Limits):
        self.model, self.tokenizer, self.limits = model, tokenizer, limits
        self.waiting: list[Job] = []
        self.wake = asyncio.Event()
        self.calls = 0  # generate calls made (tests read how much was batched)
        self.rows_done = 0
        self.busy = False  # a generate call is running
        self.task: asyncio.Task | None = None

    def submit(self, job: Job) -> asyncio.Future:
        queued = sum(len(j.prompts) for j in self.waiting)
        if queued and queued + len(job.prompts) > self.limits.max_queue:  # alone, a request is always taken
            raise ServeError(f"the server is busy: {queued} rows are waiting (limit {self.limits.max_queue}); "
                             "retry later", status=429, code="queue_full", kind="rate_limit_error")
        self.waiting.append(job)
        self.wake.set()
        return job.future

    def _take(self) -> list[Job]:
        key, rows, taken = self.waiting[0].sampling.key, 0, []
        for job in list(self.waiting):
            if not taken or (job.sampling.key == key and rows + len(job.prompts) <= self.limits.max_batch_rows):
                taken.append(job)
                rows += len(job.prompts)
        for job in taken:
            self.waiting.remove(job)
        return taken

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.waiting:
                jobs = [j for j in self._take() if not j.future.cancelled()]
                if not jobs:
                    continue
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
                start = 0
                for job in jobs:
                    mine = rows[start:start + len(job.prompts)]
                    start += len(job.prompts)
                    if not job.future.done():  # a client that went away: dropped
                        job.future.set_result(mine)

    def _generate(self, jobs: list[Job]) -> list[Row]:
        """The jobs' rows through the engine: one call, or calls of max_batch_rows for a job above it."""
        prompts = [p for j in jobs for p in j.prompts]
        budgets = [b for j in jobs for b in j.budgets]
        seeds = [k for j in jobs for k in j.seeds]
        step = self.limits.max_batch_rows
        return [row for i in range(0, len(prompts), step)
                for row in self._call(jobs[0].sampling, prompts[i:i + step], budgets[i:i + step], seeds[i:i + step])]

    def _call(self, s: Sampling, prompts: list[str], budgets: list, seeds: list[int]) -> list[Row]:
        params = SamplingParams(max_new_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                                think_budget=budgets if any(b is not None for b in budgets) else None,
                                row_seeds=seeds)
        rollout = generate(self.model, self.tokenizer, prompts, params)
        self.calls += 1
        self.rows_done += len(prompts)
        rows = []
        for i, prompt in enumerate(prompts):
            n = int(rollout.lengths[i])
            ids = rollout.tokens[i, :n].tolist()
            reason = "length" if rollout.finish_reason[i] == "length" else "stop"
            rows.append(Row(prompt, rollout.texts[i], ids, len(rollout.prompt_ids[i]), rollout.think_tokens[i],
                            reason, rollout.logprobs[i, :n].tolist()))
        return rows


def _row_seeds(seed: int | None, count: int) -> list[int]:
    """Per-row engine seeds: derived from the request's seed (the same request, the same samples, in
    any batch), else random."""
    if seed is None:
        return [random.getrandbits(62) for _ in range(count)]
    return [random.Random(f"{seed}:{i}").getrandbits(62) for i in range(count)]


# ---- replies --------------------------------------------------------------------------------------

def _think_in_prefix(ids: list[int], k: int, tags: dict, opened: bool) -> int:
    """Tokens strictly inside the thought among the first `k` of `ids`."""
    def find(seq, start):
        for j in range(start, len(ids) - len(seq) + 1):
            if ids[j:j + len(seq)] == seq:
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
    its text, the tokens up to the one that completed the stop, its thought's tokens among them."""
    hits = [row.text.find(s) for s in stops if s in row.text]
    if not hits:
        return row
    cut = min(hits)
    prefixes = tokenizer.decode_batch([row.ids[:k] for k in range(1, len(row.ids) + 1)])
    k = next((k + 1 for k, text in enumerate(prefixes) if any(s in text for s in stops)), len(row.ids))
    think = min(row.think_tokens, _think_in_prefix(row.ids, k, tokenizer.tags, prompt_opens_think(row.prompt)))
    return Row(row.prompt, row.text[:cut], row.ids[:k], row.prompt_tokens, think, "stop", row.logprobs[:k])


def usage(rows: list[Row], prompts: list[str] | None = None) -> dict:
    seen, prompt_tokens = set(), 0
    for row in rows:  # each prompt once, as OpenAI counts n > 1
        if row.prompt not in seen:
            seen.add(row.prompt)
            prompt_tokens += row.prompt_tokens
    completion = sum(len(r.ids) for r in rows)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "completion_tokens_details": {"reasoning_tokens": sum(r.think_tokens for r in rows)}}


def _pieces(tokenizer, text: str) -> list[str]:
    """`text` in pieces of one token's text each (their concatenation is `text`)."""
    if not text:
        return []
    ids = tokenizer.encode(text)
    prefixes = tokenizer.decode_batch([ids[:k] for k in range(1, len(ids) + 1)])
    pieces, sent = [], ""
    for prefix in prefixes:
        if prefix.startswith(sent) and len(prefix) > len(sent):
            pieces.append(prefix[len(sent):])
            sent = prefix
    if sent != text:  # a tokenizer that does not decode back to the text: one piece
        return [text]
    return pieces


def _token_logprobs(tokenizer, row: Row) -> list[dict]:
    texts = tokenizer.decode_batch([[i] for i in row.ids])
    return [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
            for t, lp in zip(texts, row.logprobs)]


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
        job = Job(rows_per, [s.budget] * len(rows_per), _row_seeds(s.seed, len(rows_per)), s,
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
                    choice["logprobs"] = {"content": _token_logprobs(tokenizer, row)}
                choices.append(choice)
            return JSONResponse({"id": ident, "object": "chat.completion", "created": now, "model": name,
                                 "choices": choices, "usage": usage(rows)})
        def deltas(i, row):
            thought, answer = splits[i]
            yield {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            for piece in _pieces(tokenizer, thought or ""):
                yield {"index": i, "delta": {"reasoning_content": piece}, "finish_reason": None}
            for piece in _pieces(tokenizer, answer):
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
            tokens = [t["token"] for t in _token_logprobs(tokenizer, row)]
            offsets = [sum(len(t) for t in tokens[:j]) for j in range(len(tokens))]
            return {"tokens": tokens, "token_logprobs": row.logprobs, "top_logprobs": None, "text_offset": offsets}

        if not body.get("stream"):
            choices = [{"index": i, "text": r.text, "finish_reason": r.finish_reason,
                        "logprobs": legacy_logprobs(r) if s.logprobs else None} for i, r in enumerate(rows)]
            return JSONResponse({"id": ident, "object": "text_completion", "created": now, "model": name,
                                 "choices": choices, "usage": usage(rows)})
        def pieces(i, row):
            for piece in _pieces(tokenizer, row.text):
                yield {"index": i, "text": piece, "finish_reason": None, "logprobs": None}
            yield {"index": i, "text": "", "finish_reason": row.finish_reason, "logprobs": None}

        header = {"id": ident, "object": "text_completion", "created": now, "model": name}
        return _streamed(body, rows, header, pieces)

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                                          "owned_by": "reasonlab", "max_model_len": max_len}]})

    async def health(request: Request):
        batcher = state["batcher"]
        waiting = sum(len(j.prompts) for j in batcher.waiting)
        return JSONResponse({"status": "ok", "busy": batcher.busy, "waiting_rows": waiting,
                             "generate_calls": batcher.calls, "rows_done": batcher.rows_done})

    async def http_error(request: Request, exc: HTTPException):
        routes = "POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health"
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
                             Route("/health", health, methods=["GET"])],
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
