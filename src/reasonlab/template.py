"""The reasoning format: `<think>…</think><answer>…</answer>`.

Three prompt styles build the text a model continues:

- ``r1``: the DeepSeek-R1 instruction ("The assistant first thinks about the reasoning process …")
  followed by ``User: … Assistant:``. For base models that read instructions.
- ``plain``: the question on one line, optionally followed by the chain-of-thought trigger
  ("Let's think step by step."). For the built-in tiny models, which read no instructions.
- ``chat``: the question as a user message through a tokenizer's chat template
  (``apply_chat_template``), for instruct models.

`parse_completion` splits a completion into think text and answer text and decides whether the
format is respected. The criteria are strict on purpose, since reward hacking starts where a parser
is lenient:

1. exactly one ``<think>`` block, closed, and first (only whitespace before it);
2. exactly one ``<answer>`` block after it, closed, with a non-empty answer;
3. only whitespace between ``</think>`` and ``<answer>`` and after ``</answer>``;
4. no tag repeated or nested (each of the four tags occurs exactly once, in order).

Method 1's free-form mode samples from a prompt that asks for step-by-step text and no tags
(`free_form_prompt`), reads the answer from that text (`read_free_answer`) and rewrites a verified
sample into the template (`free_form_completion`): how an instruct model that never writes the tags
gets its first training data.

Prompts that already open ``<think>`` (chat templates that prefill it, e.g. DeepSeek-R1 distills and
Qwen3) are handled: the parser prepends the tag before checking, so such completions are not
scored as broken. Forgetting this makes format rewards always 0 in other libraries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

TRIGGER = "Let's think step by step."

R1_INSTRUCTION = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process in the mind and then "
    "provides the User with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think> <answer> answer here </answer>."
)

CHAT_SYSTEM = (
    "You are a helpful assistant. You first think about the reasoning process and then give the "
    "answer. Put the reasoning between <think> and </think> and the final answer between "
    "<answer> and </answer>."
)

PROMPT_STYLES = ("plain", "r1", "chat")


# What a model is trained and measured to write (`Question.output`): the template's tags, parsed
# strictly, or its own format ("free": the prompt asks for no tags; the rewards you write judge the
# reply, and an evaluation reads its answer as `read_free_answer` does).
OUTPUTS = ("template", "free")


class Question(str):
    """A question that carries how it is asked: a dataset's conversation (`messages`, a list of
    ``{"role", "content"}``, the last one the user's), a `system` prompt and the `output` it asks
    for (`OUTPUTS`). As a string it is the user's last message, what logs and samples show;
    `build_prompt` reads the rest, so every caller that passes ``problem.question`` (training,
    `eval`, Method 1) asks the same way."""

    messages: list[dict] | None
    system: str | None
    output: str

    def __new__(
        cls,
        text: str,
        messages: list[dict] | None = None,
        system: str | None = None,
        output: str = "template",
    ):
        out = super().__new__(cls, text)
        out.messages, out.system, out.output = messages, system, output
        return out

    def __reduce__(self):  # pickled (a resumable state's problem stream) with its conversation
        return Question, (str(self), self.messages, self.system, self.output)

    def with_text(self, text: str) -> Question:
        """The same question with its last user message replaced by `text`."""
        messages = self.messages
        if messages:
            messages = [*messages[:-1], {**messages[-1], "content": text}]
        return Question(text, messages, self.system, self.output)


def asks_free(question) -> bool:
    """True for a question whose model answers in its own format (``output="free"``)."""
    return getattr(question, "output", "template") == "free"


def _conversation(question: str) -> list[dict]:
    """A question's messages: its conversation, or one user message."""
    return list(getattr(question, "messages", None) or [{"role": "user", "content": str(question)}])


def _as_text(messages: list[dict]) -> str:
    """A conversation as plain text (styles without a chat template): the user's words bare when
    there is one message, else ``Role: content`` lines."""
    if len(messages) == 1:
        return str(messages[0]["content"])
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def build_prompt(
    question: str,
    style: str = "plain",
    *,
    trigger: bool = True,
    tokenizer=None,
    prefill_think: bool = False,
    system: str | None = None,
) -> str:
    """Return the text a model continues for `question`.

    >>> build_prompt("12+34", style="plain")
    "12+34\\nLet's think step by step.\\n"
    >>> build_prompt("12+34", style="plain", trigger=False)
    '12+34\\n'

    `trigger` only applies to the plain style (the other styles carry their own instructions).
    `prefill_think` ends the prompt with ``<think>`` so the model starts inside its reasoning;
    `parse_completion(..., prompt=...)` then accounts for it.

    `system` (or a `Question`'s own) replaces the style's instruction: the chat system message, the
    R1 instruction, or a first line before a plain question. A `Question` with a conversation is
    asked as that conversation (chat), or as its text (plain, r1). A `Question` that asks for the
    model's own format (`asks_free`) gets no instruction about tags (`free_output_prompt`).
    """
    system = system or getattr(question, "system", None)
    messages = _conversation(question)
    if asks_free(question):
        return free_output_prompt(messages, style, trigger=trigger, tokenizer=tokenizer, system=system)
    if style == "plain":
        body = _as_text(messages)
        text = f"{body}\n{TRIGGER}\n" if trigger else f"{body}\n"
        text = f"{system}\n{text}" if system else text
    elif style == "r1":
        text = f"{system or R1_INSTRUCTION} User: {_as_text(messages)} Assistant:"
        if prefill_think:
            text += " "
    elif style == "chat":
        if messages[0].get("role") != "system":
            messages = [{"role": "system", "content": system or CHAT_SYSTEM}, *messages]
        text = chat_prompt(tokenizer, messages)
        if prompt_opens_think(text):  # the template prefilled <think> itself
            return text
    else:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    return text + THINK_OPEN if prefill_think else text


FREE_OUTPUT_R1 = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant answers it."
)


def free_output_prompt(
    messages: list[dict], style: str, *, trigger: bool = True, tokenizer=None, system: str | None = None
) -> str:
    """The prompt of a question answered in the model's own format: no tags asked for, nothing
    prefilled. Plain: the question (after `system`'s line; the trigger as `trigger` says); r1: the
    conversation under `system`, else a neutral R1 header; chat: the chat template with `system` as
    the system message, else none (the template's own default, if it has one)."""
    if style == "plain":
        body = f"{_as_text(messages)}\n{TRIGGER}\n" if trigger else f"{_as_text(messages)}\n"
        return f"{system}\n{body}" if system else body
    if style == "r1":
        return f"{system or FREE_OUTPUT_R1} User: {_as_text(messages)} Assistant:"
    if style != "chat":
        raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    if system and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return chat_prompt(tokenizer, messages)


def length_prompt(question: str, target: int) -> str:
    """The question with a length target, as length control (L1) asks: "(think for N tokens)"."""
    text = f"{question} (think for {target} tokens)"
    return question.with_text(text) if isinstance(question, Question) else text


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """`messages` through the tokenizer's chat template, ready for the assistant's reply."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the chat prompt style needs a tokenizer with a chat template, and this model's has "
            "none: use the plain or r1 style"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_opens_think(prompt: str | None) -> bool:
    """True when the prompt leaves a ``<think>`` block open for the completion to continue."""
    if not prompt:
        return False
    last_open = prompt.rfind(THINK_OPEN)
    return last_open >= 0 and prompt.find(THINK_CLOSE, last_open) < 0


@dataclass
class Parsed:
    """One completion, split. `answer` is None unless the format is respected."""

    think: str | None  # text inside <think>…</think> (stripped), None without a closed block
    answer: str | None  # text inside <answer>…</answer> (stripped), None when format_ok is False
    format_ok: bool
    reasons: list[str] = field(default_factory=list)  # why the format is broken (empty when ok)


def parse_completion(
    completion: str, prompt: str | None = None, *, think_prefilled: bool | None = None
) -> Parsed:
    """Split `completion` into think and answer text and check the format (see module docstring).

    >>> parse_completion("<think>2+2=4</think><answer>4</answer>").answer
    '4'
    >>> parse_completion("<think>x</think>4").reasons
    ['missing <answer>', 'missing </answer>']
    >>> parse_completion("2+2=4</think> <answer>4</answer>", prompt="Q <think>").format_ok
    True
    """
    if think_prefilled is None:
        think_prefilled = prompt_opens_think(prompt)
    text = THINK_OPEN + completion if think_prefilled else completion
    think = _block(text, THINK_OPEN, THINK_CLOSE)

    reasons = []
    for tag in TAGS:
        count = text.count(tag)
        if count == 0:
            reasons.append(f"missing {tag}")
        elif count > 1:
            reasons.append(f"repeated {tag}")
    if reasons:
        return Parsed(think, None, False, reasons)

    i0, i1, i2, i3 = (text.index(tag) for tag in TAGS)
    if not i0 < i1 < i2 < i3:
        return Parsed(think, None, False, ["tags out of order or nested"])
    if text[:i0].strip():
        reasons.append("text before <think>")
    if text[i1 + len(THINK_CLOSE) : i2].strip():
        reasons.append("text between </think> and <answer>")
    if text[i3 + len(ANSWER_CLOSE) :].strip():
        reasons.append("text after </answer>")
    answer = text[i2 + len(ANSWER_OPEN) : i3].strip()
    if not answer:
        reasons.append("empty answer")
    if reasons:
        return Parsed(think, None, False, reasons)
    return Parsed(think, answer, True, [])


def _block(text: str, open_tag: str, close_tag: str) -> str | None:
    """The stripped text of the first closed open_tag…close_tag block, or None."""
    start = text.find(open_tag)
    if start < 0:
        return None
    end = text.find(close_tag, start + len(open_tag))
    if end < 0:
        return None
    return text[start + len(open_tag) : end].strip()


def format_completion(think: str, answer: str) -> str:
    """The canonical completion for a rationale and an answer (used to build training data)."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


# ---- free-form samples (Method 1's `free_form` mode) ---------------------------------------------

FREE_FORM_INSTRUCTION = (
    'Solve the problem step by step, then end with "The answer is" followed by the final answer.'
)
FREE_FORM_R1 = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    'solves it step by step, then ends with "The answer is" followed by the final answer.'
)
DIRECT_R1 = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    "replies with only the final answer."
)
DIRECT_INSTRUCTION = "Reply with only the final answer."

# How a model is asked (`prompt_for`): in the template (strictly parsed), to reason in free text, or to
# answer directly; the last two are read leniently (`read_free_answer`), as a user reads a reply.
PROMPT_KINDS = ("template", "free-form", "direct")


def free_form_prompt(question: str, style: str = "plain", *, tokenizer=None) -> str:
    """The text a model continues to solve `question` in free text, no tags asked for: the plain
    style's trigger prompt (the built-in models read no instructions), the R1 conversation or the
    chat template with the instruction to reason step by step and end with "The answer is ..." after
    the question, in the user's message (the model's own system prompt, if its template has one:
    SmolLM2-135M-Instruct solved 20% of 100 two-digit sums so, 11% with the instruction as the
    system prompt)."""
    return _instructed(
        question, style, tokenizer, trigger=True, r1=FREE_FORM_R1, instruction=FREE_FORM_INSTRUCTION
    )


def direct_prompt(question: str, style: str = "plain", *, tokenizer=None) -> str:
    """The text a model continues to answer `question` at once, no reasoning asked for: the plain
    prompt without the trigger, the R1 conversation or the chat template with the instruction to
    reply with only the answer after the question (as `free_form_prompt` puts its own)."""
    return _instructed(
        question, style, tokenizer, trigger=False, r1=DIRECT_R1, instruction=DIRECT_INSTRUCTION
    )


def _instructed(question: str, style: str, tokenizer, *, trigger: bool, r1: str, instruction: str) -> str:
    """A prompt that asks in words, not for the template: plain (with or without the trigger),
    the R1 conversation under `r1`, or a chat user message of the question then `instruction`."""
    if style == "plain":
        return build_prompt(question, "plain", trigger=trigger)
    if style == "r1":
        return f"{r1} User: {question} Assistant:"
    if style != "chat":
        raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    return chat_prompt(tokenizer, [{"role": "user", "content": f"{question} {instruction}"}])


def prompt_for(
    question: str, style: str = "plain", kind: str = "template", *, trigger: bool = True, tokenizer=None
) -> str:
    """The prompt of `kind` (`PROMPT_KINDS`) in `style`: the template's (`build_prompt`), the
    free-form step-by-step one (`free_form_prompt`) or the direct one (`direct_prompt`)."""
    if kind == "template":
        return build_prompt(question, style, trigger=trigger, tokenizer=tokenizer)
    if kind == "free-form":
        return free_form_prompt(question, style, tokenizer=tokenizer)
    if kind == "direct":
        return direct_prompt(question, style, tokenizer=tokenizer)
    raise ValueError(f"unknown prompt kind {kind!r}; choose one of {', '.join(PROMPT_KINDS)}")


# "The answer is 95", "the final answer is: 95", "Answer: 95", "**Answer:** 95" (the last one counts)
_ANSWER_PHRASE = re.compile(r"\banswer\b[*\s]*(?:is\b[*:\s]*|:[*\s]*)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d(?:[\d,]*\d)?(?:\.\d+)?")
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n")
_BOXED = "\\boxed{"


def read_free_answer(text: str) -> tuple[str, str] | None:
    """(reasoning, answer) from a free-text solution, or None when no answer can be read.

    The answer is what follows the last "answer is" / "answer:" up to the end of its sentence
    (bold, ``$…$`` and ``\\boxed{…}`` unwrapped), else the last ``\\boxed{…}``, else the last
    number. The reasoning is the text up to the end of the answer's sentence: what a model writes
    after it (a new question, a sign-off) is dropped.

    >>> read_free_answer("12 + 34: 2 + 4 = 6, 1 + 3 = 4. So the final answer is 46.")
    ('12 + 34: 2 + 4 = 6, 1 + 3 = 4. So the final answer is 46.', '46')
    >>> read_free_answer("Half of 10 is 5, plus 3 makes 8 apples.")
    ('Half of 10 is 5, plus 3 makes 8', '8')
    """
    phrase = None
    for phrase in _ANSWER_PHRASE.finditer(text):  # noqa: B007 - the last match is kept
        pass
    if phrase is not None:
        start = phrase.end()
        start += len(text[start:]) - len(text[start:].lstrip())  # "The answer is:\n\n46"
        stop = _SENTENCE_END.search(text, start)
        end = stop.start() if stop else len(text)
        answer = _clean_answer(text[start:end])
        if answer:
            return text[: end + (stop is not None and text[end] == ".")].strip(), answer
    if (box := text.rfind(_BOXED)) >= 0 and (inner := _braced(text, box + len(_BOXED))) is not None:
        end = box + len(_BOXED) + len(inner) + 1
        return text[:end].strip(), inner.strip()
    numbers = list(_NUMBER.finditer(text))
    if not numbers:
        return None
    return text[: numbers[-1].end()].strip(), numbers[-1].group()


def _clean_answer(text: str) -> str:
    """An answer as written after "answer is", without markdown, math delimiters or \\boxed{}."""
    text = text.strip().strip("*").strip()
    if text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    if text.startswith(_BOXED) and (inner := _braced(text, len(_BOXED))) is not None:
        text = inner
    return text.strip().rstrip(".").strip()


def _braced(text: str, start: int) -> str | None:
    """The text from `start` to the brace that closes the one just before it, or None."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def read_replies(texts: list[str], prompts: list, free: bool) -> tuple[list[str], list]:
    """(completions, the prompts to parse them against): template replies as they are, or with
    `free` (replies in free text) each rewritten into the template by `free_form_completion` ("" where
    no answer can be read), complete in themselves (no prompt). How an evaluation and Method 1's
    free-form mode score a reply alike."""
    if not free:
        return texts, prompts
    return [free_form_completion(t) or "" for t in texts], [None] * len(texts)


def free_form_completion(text: str) -> str | None:
    """A free-text sample rewritten into the template: ``<think>{reasoning}</think><answer>{answer}
    </answer>`` (`read_free_answer`); a sample already in the template is kept as it is. None when
    no answer can be read, or when the text holds answer tags that do not make the template (a
    stray ``<think>``/``</think>``, as a template that prefills ``<think>`` leaves, is dropped)."""
    if parse_completion(text).format_ok:
        return text
    if ANSWER_OPEN in text or ANSWER_CLOSE in text:
        return None
    read = read_free_answer(text.replace(THINK_OPEN, "").replace(THINK_CLOSE, "\n"))
    if read is None:
        return None
    completion = format_completion(*read)
    return completion if parse_completion(completion).format_ok else None
