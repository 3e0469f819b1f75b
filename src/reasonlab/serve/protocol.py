"""The OpenAI protocol of `reasonlab serve`: a request's body checked into a `Sampling` (or an
OpenAI error naming the parameter), the chat messages into the prompt the model continues, a reply
split into the thought (``reasoning_content``) and the answer (``content``), and ``usage``."""

from __future__ import annotations

import itertools
import json
import math
import sys
from dataclasses import dataclass

from ..remote import BadRequest
from ..template import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    TAGS,
    THINK_CLOSE,
    THINK_OPEN,
    build_prompt,
    chat_prompt,
    prompt_opens_think,
)

# reasoning_effort -> the thinking budget, as a share of the request's max_tokens ("none": answer at once)
EFFORT_SHARE = {"none": 0.0, "minimal": 1 / 16, "low": 1 / 4, "medium": 1 / 2, "high": 3 / 4}
MAX_N = 128
MAX_EXTENSIONS = 16  # thinking_extensions at most
MAX_THINKING_TOKENS = 2**31 - 1  # a bound for the engine's integer tensors; any real budget is far below
MAX_TOP_LOGPROBS = 5  # legacy completions' `logprobs` at most (OpenAI's range)
# OpenAI parameters the engine has no counterpart for: refused (400 naming them) unless absent, null or at
# their no-op value (None here: an empty list or object). `echo` only for chat: completions take it.
UNSUPPORTED = {
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "logit_bias": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "top_logprobs": 0,
    "best_of": 1,
    "suffix": None,
    "audio": None,
    "modalities": None,
    "prediction": None,
}


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


def parse_json(data: bytes):
    """The body, parsed; a 400 (code ``bad_json``) for anything `json.loads` refuses: not JSON, not
    UTF-8, an integer of more digits than Python converts (``sys.get_int_max_str_digits()``, a
    ValueError) or nesting deeper than its recursion limit (a RecursionError)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ServeError("the body is not valid JSON: it nests too deep", code="bad_json") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        if "integer string conversion" in str(e):
            raise ServeError(
                f"the body has an integer of more than {sys.get_int_max_str_digits()} digits, more "
                "than this server reads",
                code="bad_json",
            ) from None
        raise ServeError(f"the body is not valid JSON: {e}", code="bad_json") from None


def unknown_token_ids(tokenizer) -> set[int]:
    """The ids of the token a tokenizer reads unknown characters as (the built-in one: '?'); none
    for byte-level vocabularies, which have no unknown token."""
    unk = getattr(tokenizer, "unk_token", None)
    return set(tokenizer.encode(unk)) if unk else set()


def refuse_unknown_characters(tokenizer, prompt: str, param: str) -> None:
    """A 400 naming the first character of `prompt` the tokenizer would silently read as its unknown
    token (`TokenizerAdapter.unknown_characters`: the built-in model knows printable ASCII and newline)."""
    lost = tokenizer.unknown_characters(set(prompt))
    if bad := next((c for c in prompt if c in lost), None):
        raise ServeError(
            f"character {bad!r} (U+{ord(bad):04X}) is not in the model's vocabulary: its tokenizer "
            f"would read it as {tokenizer.unk_token!r} (the built-in model knows printable ASCII and "
            "newline)",
            param,
            code="unknown_character",
        )


def json_type(value) -> str:
    """The JSON type of a parsed value, as an error message names it (never the value itself: it may
    be a megabyte list or a 4,000-digit integer)."""
    if value is None:
        return "null"
    for kind, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "an array"),
    ):
        if isinstance(value, kind):  # bool first: True is an int to Python, not to JSON
            return name
    return "an object"


def _shown(value) -> str:
    """`value` in an error message, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def typed(body: dict, key: str, kinds: tuple, what: str, default=None):
    """body[key] when it is one of `kinds`, `default` when absent or null; else a 400 naming `key`.
    A boolean is only taken where `kinds` has bool (Python counts True as the integer 1)."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ServeError(f"'{key}' must be {what}, got {json_type(value)}", key, code="invalid_type")
    return value


def _number(body: dict, key: str, default, kind, low, high=math.inf):
    what = "an integer" if kind is int else "a number"
    value = typed(body, key, (int, float) if kind is float else (int,), what)
    if value is None:
        return default
    if kind is float:  # also refuses NaN and Infinity (json.loads takes them) and integers past float range
        high = min(high, sys.float_info.max)
    if not low <= value <= high:
        span = f">= {low}" if high in (math.inf, sys.float_info.max) else f"in [{low}, {high}]"
        raise ServeError(f"'{key}' must be {what} {span}, got {_shown(value)}", key)
    return kind(value)


def _neutral(value, neutral) -> bool:
    if value is None:
        return True
    if neutral is None:
        return isinstance(value, (list, dict)) and not value
    if isinstance(neutral, bool):
        return value is neutral
    return type(value) in (int, float) and value == neutral  # not True for best_of=1: a boolean is no number


def _refuse_unsupported(body: dict, chat: bool) -> None:
    for key, neutral in {**UNSUPPORTED, **({"echo": False} if chat else {})}.items():
        if not _neutral(body.get(key), neutral):
            raise ServeError(
                f"'{key}' is not supported by this server (the engine has no counterpart)",
                key,
                code="unsupported_parameter",
            )


def _refuse_response_format(body: dict) -> None:
    """Only plain text: the engine cannot constrain its output to JSON (json_object, json_schema)."""
    fmt = typed(body, "response_format", (dict,), "an object")
    if fmt is not None and fmt.get("type") != "text":
        raise ServeError(
            '\'response_format\' must be {"type": "text"}: this server cannot constrain its output '
            "to JSON (json_object, json_schema)",
            "response_format",
            code="unsupported_parameter",
        )


def reply_model(body: dict, default: str) -> str:
    """The model a reply names: the request's (OpenAI echoes it), else the server's."""
    return typed(body, "model", (str,), "a string") or default


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
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a streamed reply ends with a usage chunk
    echo: bool = (
        False  # completions: the prompt comes back before the completion (and is scored with logprobs)
    )
    top_logprobs: int = 0  # completions with echo: the top alternatives of each token (legacy `logprobs`: k)

    @property
    def key(self) -> tuple:
        """What rows must share to share a `generate` call (budgets, seeds and max_tokens are per row)."""
        return (self.temperature, self.top_p)


def parse_sampling(body: dict, limits: Limits, chat: bool) -> Sampling:
    """Every body field the server reads besides the prompt or messages and the model, checked
    (type and range; a wrong one is a 400 naming it) into a `Sampling`."""
    _refuse_unsupported(body, chat)
    _refuse_response_format(body)
    echo = False if chat else typed(body, "echo", (bool,), "a boolean", False)
    n = _number(body, "n", 1, int, 1, MAX_N)
    max_tokens = _max_tokens(body, limits, chat, echo)
    temperature = _number(body, "temperature", 1.0, float, 0)  # no cap at 2: rationales may ask more
    top_p = _number(body, "top_p", 1.0, float, 0, 1)
    if top_p == 0:
        raise ServeError("'top_p' must be above 0", "top_p")
    seed = _number(body, "seed", None, int, -(2**63), 2**63 - 1)
    budget = _number(body, "max_thinking_tokens", None, int, 0, MAX_THINKING_TOKENS)
    extend = _number(body, "thinking_extensions", 0, int, 0, MAX_EXTENSIONS)
    effort = typed(body, "reasoning_effort", (str,), f"one of {', '.join(EFFORT_SHARE)}")
    if effort is not None:
        if effort not in EFFORT_SHARE:
            raise ServeError(
                f"'reasoning_effort' must be one of {', '.join(EFFORT_SHARE)}, got {_shown(effort)}",
                "reasoning_effort",
            )
        if budget is None:  # an explicit max_thinking_tokens wins
            budget = int(EFFORT_SHARE[effort] * max_tokens)
    stream, include_usage = _streaming(body)
    logprobs, top = _logprobs(body, chat, echo)
    if logprobs and stream:
        raise ServeError(
            "'logprobs' is not supported with 'stream'", "logprobs", code="unsupported_parameter"
        )
    return Sampling(
        n,
        max_tokens,
        temperature,
        top_p,
        seed,
        budget,
        extend,
        _stops(body),
        logprobs,
        stream,
        include_usage,
        echo,
        top,
    )


def _max_tokens(body: dict, limits: Limits, chat: bool, echo: bool) -> int:
    """The request's token limit. Chat takes `max_completion_tokens`, else
    `max_tokens` (both checked, even the one not used). 0 only for completions with `echo`: the
    prompt alone is returned (and scored, with `logprobs`), nothing written."""
    keys = ["max_completion_tokens", "max_tokens"] if chat else ["max_tokens"]
    given = {key: _number(body, key, None, int, 0) for key in keys}
    for key, value in given.items():
        if value == 0 and not echo:
            also = "" if chat else " (0 only with echo: true, which returns the prompt scored)"
            raise ServeError(f"'{key}' must be an integer >= 1, got 0{also}", key)
    token_key = next((key for key in keys if given[key] is not None), "max_tokens")
    max_tokens = given[token_key]
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, limits.max_tokens)
    if max_tokens > limits.max_tokens:
        raise ServeError(
            f"'{token_key}' is {_shown(max_tokens)}, above this server's cap of {limits.max_tokens} "
            "(reasonlab serve --max-tokens)",
            token_key,
            code="max_tokens_too_large",
        )
    return max_tokens


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else ([] if stop is None else stop)
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ServeError("'stop' must be a non-empty string or a list of up to 4 of them", "stop")
    return stop


def _streaming(body: dict) -> tuple[bool, bool]:
    """(stream, stream_options.include_usage): booleans, not strings ("false" is not false)."""
    stream = typed(body, "stream", (bool,), "a boolean", False)
    options = typed(body, "stream_options", (dict,), "an object", {})
    usage = options.get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise ServeError(
            f"'stream_options.include_usage' must be a boolean, got {json_type(usage)}",
            "stream_options",
            code="invalid_type",
        )
    return stream, bool(usage)


def _logprobs(body: dict, chat: bool, echo: bool) -> tuple[bool, int]:
    """(whether to return the tokens' log-probabilities, how many top alternatives of each). Chat:
    `logprobs` is a boolean (and `top_logprobs`, alternatives, is refused above 0 by
    `_refuse_unsupported`). Legacy completions: an integer or null, the number of top alternatives
    beside the chosen token (a boolean is not taken for it: false == 0 would turn log-probabilities
    on). Above 0 only with `echo`: the reply is then scored by a forward pass, which has every
    token's distribution; the engine keeps only the chosen token's log-probability."""
    if chat:
        return typed(body, "logprobs", (bool,), "a boolean", False), 0
    typed(body, "logprobs", (int,), "an integer or null (0: the chosen tokens' log-probabilities)")
    top = _number(body, "logprobs", None, int, 0, MAX_TOP_LOGPROBS)
    if top and not echo:
        raise ServeError(
            "'logprobs' above 0 (top alternatives) is only supported with echo: true (the prompt and "
            "completion scored by a forward pass); the engine keeps only the chosen token's "
            "log-probability (use logprobs=0)",
            "logprobs",
            code="unsupported_parameter",
        )
    return top is not None, top or 0


def _text_of(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    raise ServeError(
        f'{where}: \'content\' must be a string or a list of text parts ({{"type": "text", '
        '"text": a string})',
        "messages",
    )


PROMPT_FORMS = (
    "'prompt' must be a non-empty string, a non-empty list of token ids (integers), or a non-empty "
    "list of either"
)


def completion_prompts(body: dict, vocab: int) -> tuple[list[str] | None, list[list[int]] | None]:
    """(texts, None) or (None, token ids): the prompts of a completions request, in any of OpenAI's
    four forms: a string, a list of strings, a list of token ids, a list of such lists. An id must
    be an integer (not a boolean, not 3.0) in [0, `vocab`); anything else is a 400 naming `prompt`."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompt = [prompt]
    elif isinstance(prompt, list) and prompt and all(_is_id(t) for t in prompt):
        prompt = [prompt]  # one prompt of token ids
    if not isinstance(prompt, list) or not prompt:
        got = "an empty array" if prompt == [] else json_type(prompt)
        raise ServeError(
            f"{PROMPT_FORMS}, got {got}", "prompt", code=None if prompt is None else "invalid_type"
        )
    if all(isinstance(p, str) for p in prompt):
        if not all(prompt):
            raise ServeError("empty prompt", "prompt")
        return prompt, None
    if any(isinstance(p, str) for p in prompt):
        raise ServeError(f"{PROMPT_FORMS}: not strings and token ids mixed", "prompt", code="invalid_type")
    for i, ids in enumerate(prompt):
        if not isinstance(ids, list) or not ids or not all(_is_id(t) for t in ids):
            what = (
                "an empty list"
                if ids == []
                else json_type(ids)
                if not isinstance(ids, list)
                else "a list holding " + json_type(next(t for t in ids if not _is_id(t)))
            )
            raise ServeError(f"{PROMPT_FORMS}; prompt[{i}] is {what}", "prompt", code="invalid_type")
        if (bad := next((t for t in ids if not 0 <= t < vocab), None)) is not None:
            raise ServeError(
                f"prompt[{i}] has the token id {_shown(bad)}, outside the model's vocabulary (0-{vocab - 1})",
                "prompt",
                code="invalid_token_id",
            )
    return None, prompt


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python, not to JSON


def chat_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ServeError("'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ServeError(
                f"messages[{i}] must be an object with a role of system, developer, user or assistant",
                "messages",
            )
        out.append(
            {
                "role": "system" if m["role"] == "developer" else m["role"],
                "content": _text_of(m.get("content", ""), f"messages[{i}]"),
            }
        )
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
    ``<think>`` block, stripped; the answer is the text outside it (what follows its ``</think>``,
    and what a model wrote before its ``<think>``, if anything), without the answer tags, stripped.
    For a completion in the template: `template.parse_completion`'s think and answer. An unclosed
    thought (cut by max_tokens) is all reasoning; no thought (a stock instruct model), all content.

    `final=False`: what of an unfinished completion can be sent already, so that a stream's pieces
    add up to the final split: only a tag half written at the end is held back. Text before any
    ``<think>`` is content as it comes: a model that never thinks streams its whole reply."""
    full = THINK_OPEN + text if prompt_opens_think(prompt) else text
    if not final:
        full = _hold_back(full, TAGS)
    if THINK_OPEN not in full:
        return None, _untagged(full)
    before, after = full.split(THINK_OPEN, 1)
    if THINK_CLOSE not in after:
        return after.strip(), _untagged(before)
    thought, rest = after.split(THINK_CLOSE, 1)
    # Both parts of the answer: joined so that what was streamed of the first stays a prefix
    return thought.strip(), "\n\n".join(part for part in (_untagged(before), _untagged(rest)) if part)


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
        return text[: min(hits)]
    return text if final else _hold_back(text, stops)


# ---- a reply -----------------------------------------------------------------------------------------


@dataclass
class Scored:
    """A row's prompt and completion scored by one forward pass (`scoring.score`): what `echo`
    with `logprobs` returns. Entry j of `logprobs` and `top` is about ids[j + 1]."""

    ids: list[int]  # the prompt's, then the completion's
    prompt_len: int
    logprobs: list[float]  # log p(ids[j + 1] | ids[:j + 1]), at temperature 1: the model's own
    top: list[list[tuple[int, float]]]  # the top alternatives (id, log-prob) at each place, best first


@dataclass
class Row:
    """One finished completion, as a reply reports it."""

    prompt: str  # the prompt's text (a prompt of token ids: decoded)
    text: str
    ids: list[int]
    prompt_tokens: int
    think_tokens: int
    finish_reason: (
        str  # "stop" or "length" (OpenAI's); the engine's "budget" (capped, then answered) is "stop"
    )
    logprobs: list[float]
    scored: Scored | None = None  # echo with logprobs


def usage(rows: list[Row], prompts: list[str] | None = None) -> dict:
    seen, prompt_tokens = set(), 0
    for row in rows:  # each prompt once, as OpenAI counts n > 1
        if row.prompt not in seen:
            seen.add(row.prompt)
            prompt_tokens += row.prompt_tokens
    completion = sum(len(r.ids) for r in rows)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "completion_tokens_details": {"reasoning_tokens": sum(r.think_tokens for r in rows)},
    }


def token_logprobs(tokenizer, row: Row) -> list[dict]:
    texts = tokenizer.decode_batch([[i] for i in row.ids])
    return [
        {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
        for t, lp in zip(texts, row.logprobs)
    ]


def legacy_logprobs(tokenizer, row: Row, top: int) -> dict:
    """Legacy completions' ``choices[i].logprobs``: ``tokens``, ``token_logprobs``, ``top_logprobs``
    (per token a {token text: log-prob} object of `top` entries, or null when `top` is 0) and
    ``text_offset`` (where each token starts in the choice's text). Without echo: the completion's
    tokens with the engine's log-probs. With echo (`row.scored`): the prompt's tokens, then the
    completion's, from the forward pass; the first token's entries are null (nothing predicts it)."""
    if row.scored is None:
        ids, logprobs, tops = row.ids, row.logprobs, None
    else:
        kept = row.scored.prompt_len + len(row.ids)  # the completion as cut at a stop string
        ids, logprobs = row.scored.ids[:kept], [None] + row.scored.logprobs[: kept - 1]
        tops = [None] + row.scored.top[: kept - 1] if top else None
    alternatives = {i for place in tops or () if place for i, _ in place}
    distinct = list(set(ids) | alternatives)
    text = dict(zip(distinct, tokenizer.decode_batch([[i] for i in distinct])))
    offsets = list(itertools.accumulate((len(text[i]) for i in ids), initial=0))[:-1]
    return {
        "tokens": [text[i] for i in ids],
        "token_logprobs": logprobs,
        "text_offset": offsets,
        "top_logprobs": None if tops is None else [None if p is None else _top_object(p, text) for p in tops],
    }


def _top_object(place: list[tuple[int, float]], text: dict) -> dict:
    """{token text: log-prob}, best first. Two ids may decode to the same text (a byte-level
    vocabulary's halves of one character): the better one is kept, so the object's largest value
    is still the place's best log-prob (lm-eval compares the chosen token's with it: "is greedy")."""
    out = {}
    for i, logprob in place:
        out.setdefault(text[i], logprob)
    return out
