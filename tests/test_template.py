"""Prompt building and completion parsing. Run: pytest tests/test_template.py"""

import pytest

from reasonlab.template import (TRIGGER, build_prompt, format_completion, parse_completion,
                                prompt_opens_think)


def test_plain_prompt_with_and_without_trigger():
    assert build_prompt("12+34") == f"12+34\n{TRIGGER}\n"
    assert build_prompt("12+34", trigger=False) == "12+34\n"


def test_r1_prompt_names_both_tags_and_can_prefill():
    prompt = build_prompt("What is 2+2?", style="r1")
    assert "<think>" in prompt and "<answer>" in prompt and prompt.endswith("Assistant:")
    assert prompt_opens_think(build_prompt("q", style="r1", prefill_think=True))
    assert not prompt_opens_think(prompt)  # the instruction mentions both tags, closed


def test_unknown_style_is_an_error():
    with pytest.raises(ValueError, match="unknown prompt style"):
        build_prompt("q", style="nope")


def test_chat_prompt_through_a_chat_template():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, "[UNK]")))
    tok.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|><think>{% endif %}")
    prompt = build_prompt("2+2?", style="chat", tokenizer=tok)
    assert prompt.endswith("<|assistant|><think>") and "<|user|>2+2?" in prompt
    # The template prefilled <think>: a completion that continues the thought parses as ok.
    assert parse_completion("4 it is</think><answer>4</answer>", prompt).format_ok
    with pytest.raises(ValueError):
        build_prompt("q", style="chat")
    tok.chat_template = None  # a tokenizer without one (the built-in model's): one clear line, not jinja's
    with pytest.raises(ValueError, match="this model's has none: use the plain or r1 style"):
        build_prompt("q", style="chat", tokenizer=tok)


# Each case: completion, format_ok, and why.
CASES = [
    ("<think>2+2=4</think><answer>4</answer>", True, "canonical"),
    ("  <think>\n2+2=4\n</think>\n<answer> 4 </answer>\n", True, "whitespace around blocks is fine"),
    ("<think></think><answer>4</answer>", True, "an empty thought is still the format"),
    ("<answer>4</answer>", False, "no think block"),
    ("<think>2+2=4</think>", False, "no answer block"),
    ("<think>2+2=4<answer>4</answer>", False, "think never closed"),
    ("<think>2+2=4</think><answer>4", False, "answer never closed"),
    ("<think>x</think><answer>   </answer>", False, "empty answer"),
    ("So: <think>x</think><answer>4</answer>", False, "text before <think>"),
    ("<think>x</think> so <answer>4</answer>", False, "text between the blocks"),
    ("<think>x</think><answer>4</answer> trust me", False, "text after </answer>"),
    ("<answer>4</answer><think>x</think>", False, "blocks in the wrong order"),
    ("<think>x<answer>5</answer></think><answer>4</answer>", False, "answer tags nested in think"),
    ("<think>a</think><think>b</think><answer>4</answer>", False, "repeated think"),
    ("<think>a</think><answer>4</answer><answer>5</answer>", False, "two answers: no hedging"),
    ("<think>a</think></think><answer>4</answer>", False, "stray closing tag"),
]


@pytest.mark.parametrize("completion,ok,why", CASES, ids=[c[2] for c in CASES])
def test_format_cases(completion, ok, why):
    parsed = parse_completion(completion)
    assert parsed.format_ok is ok, why
    assert (parsed.answer is not None) is ok
    assert bool(parsed.reasons) is not ok


def test_parse_extracts_stripped_parts():
    parsed = parse_completion("<think> 3+4=7 </think><answer> 7 </answer>")
    assert (parsed.think, parsed.answer, parsed.reasons) == ("3+4=7", "7", [])


def test_reasons_name_the_problem():
    assert parse_completion("<think>x</think>4").reasons == ["missing <answer>", "missing </answer>"]
    assert "text after </answer>" in parse_completion("<think>x</think><answer>4</answer>!").reasons


def test_prefilled_think_prompt():
    prompt = "User: 2+2? Assistant: <think>"
    completion = "2+2=4</think><answer>4</answer>"
    assert parse_completion(completion, prompt).format_ok
    assert not parse_completion(completion).format_ok  # without the prompt it lacks <think>
    # A completion that opens <think> again after a prefilled one repeats the tag.
    assert not parse_completion("<think>" + completion, prompt).format_ok
    assert parse_completion(completion, think_prefilled=True).format_ok


def test_format_completion_round_trips():
    parsed = parse_completion(format_completion("1+1=2", "2"))
    assert (parsed.format_ok, parsed.think, parsed.answer) == (True, "1+1=2", "2")
