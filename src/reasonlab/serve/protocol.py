"""The OpenAI protocol of `reasonlab serve`: a request's body checked into a `Sampling` (or an
OpenAI error naming the parameter), the chat messages into the prompt the model continues, a reply
split into the thought (``reasoning_content``) and the answer (``content``), and ``usage``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..remote import BadRequest
from ..template import (ANSWER_CLOSE, ANSWER_OPEN, TAGS, THINK_CLOSE, THINK_OPEN, build_prompt, chat_prompt,
                        prompt_opens_think)

# reasoning_effort -> the thinking budget, as a share of the request's max_tokens ("none": answer at once)
EFFORT_SHARE = {"none": 0.0, "minimal": 1 / 16, "low": 1 / 4, "medium": 1 / 2, "high": 3 / 4}
MAX_N = 128
MAX_EXTENSIONS = 16  # thinking_extensions at most
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


# ---- a request -------------------------------------------------------------------------

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
    extend: int  # times an early </think> becomes "Wait," (s1's budget forcing)
    stop: list[str]
    logprobs: bool

    @property
    def key(self) -> tuple:
        """What rows must share to share a `generate` call (budgets, seeds and max_tokens are per row)."""
        return (self.temperature, self.top_p)


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
    extend = _number(body, "thinking_extensions", 0, int, 0, MAX_EXTENSIONS)
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
    return Sampling(n, max_tokens, temperature, top_p, seed, budget, extend, stop, logprobs)


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


def split_reply(text: str, prompt: str | None = None, final: bool = True) -> tuple[str | None, str]:
    """(reasoning_content, content) of a completion: the thought is the text of the first
    ``<think>`` block, the answer what follows its ``</think>`` without the answer tags, both
    stripped; for a completion in the template, `template.parse_completion`'s think and answer. An
    unclosed thought (cut by max_tokens) is all reasoning and no content; no thought, all content.

    `final=False`: what of an unfinished completion can be sent already, so that a stream's pieces
    add up to the final split: a tag half written at the end is held back, and so is text before
    any ``<think>`` until an ``<answer>`` shows the model is answering without one."""
    full = THINK_OPEN + text if prompt_opens_think(prompt) else text
    if not final:
        full = _hold_back(full, TAGS)
    if THINK_OPEN in full:
        after = full.split(THINK_OPEN, 1)[1]
        if THINK_CLOSE not in after:
            return after.strip(), ""
        thought, rest = after.split(THINK_CLOSE, 1)
        return thought.strip(), _untagged(rest)
    if not final and ANSWER_OPEN not in full:
        return None, ""
    return None, _untagged(full)


def _untagged(text: str) -> str:
    return text.replace(ANSWER_OPEN, "").replace(ANSWER_CLOSE, "").strip()


def _hold_back(text: str, marks) -> str:
    """`text` without an end that is the start of one of `marks` (it may become it), or an
    incomplete character (a byte-level tokenizer decodes half a UTF-8 sequence to U+FFFD)."""
    cut = len(text)
    for mark in marks:
        for k in range(min(len(mark) - 1, len(text)), 0, -1):
            if text.endswith(mark[:k]):
                cut = min(cut, len(text) - k)
                break
    text = text[:cut]
    return text[:-1] if text.endswith("\ufffd") else text


def visible(text: str, stops: list[str], final: bool) -> str:
    """What of a row's text a reply shows: the text before its first stop string (OpenAI's rule:
    the stop text is not returned); while it is unfinished, without an end that may still become a
    stop string (`_hold_back`)."""
    hits = [text.find(s) for s in stops if s in text]
    if hits:
        return text[:min(hits)]
    return text if final else _hold_back(text, stops)


# ---- a reply -----------------------------------------------------------------------------------------

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


def token_logprobs(tokenizer, row: Row) -> list[dict]:
    texts = tokenizer.decode_batch([[i] for i in row.ids])
    return [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
            for t, lp in zip(texts, row.logprobs)]
