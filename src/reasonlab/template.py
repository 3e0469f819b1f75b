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

Prompts that already open ``<think>`` (chat templates that prefill it, e.g. DeepSeek-R1 distills and
Qwen3) are handled: the parser prepends the tag before checking, so such completions are not
scored as broken. Forgetting this makes format rewards always 0 in other libraries.
"""

from __future__ import annotations

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


def build_prompt(question: str, style: str = "plain", *, trigger: bool = True,
                 tokenizer=None, prefill_think: bool = False, system: str | None = None) -> str:
    """Return the text a model continues for `question`.

    >>> build_prompt("12+34", style="plain")
    "12+34\\nLet's think step by step.\\n"
    >>> build_prompt("12+34", style="plain", trigger=False)
    '12+34\\n'

    `trigger` only applies to the plain style (the other styles carry their own instructions).
    `prefill_think` ends the prompt with ``<think>`` so the model starts inside its reasoning;
    `parse_completion(..., prompt=...)` then accounts for it.
    """
    if style == "plain":
        text = f"{question}\n{TRIGGER}\n" if trigger else f"{question}\n"
    elif style == "r1":
        text = f"{R1_INSTRUCTION} User: {question} Assistant:"
        if prefill_think:
            text += " "
    elif style == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("the chat prompt style needs a tokenizer with a chat template, and this model's has "
                             "none: use the plain or r1 style")
        messages = [{"role": "system", "content": system or CHAT_SYSTEM},
                    {"role": "user", "content": question}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if prompt_opens_think(text):  # the template prefilled <think> itself
            return text
    else:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    return text + THINK_OPEN if prefill_think else text


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


def parse_completion(completion: str, prompt: str | None = None, *,
                     think_prefilled: bool | None = None) -> Parsed:
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
    if text[i1 + len(THINK_CLOSE):i2].strip():
        reasons.append("text between </think> and <answer>")
    if text[i3 + len(ANSWER_CLOSE):].strip():
        reasons.append("text after </answer>")
    answer = text[i2 + len(ANSWER_OPEN):i3].strip()
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
    return text[start + len(open_tag):end].strip()


def format_completion(think: str, answer: str) -> str:
    """The canonical completion for a rationale and an answer (used to build training data)."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"
