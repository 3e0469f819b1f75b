"""Prompt building and completion parsing. Run: pytest tests/test_template.py"""

import pytest

from reasonlab.template import TRIGGER, build_prompt, format_completion, parse_completion, prompt_opens_think


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
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, "[UNK]")))
    tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|><think>{% endif %}"
    )
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


# Free text as models write it (SmolLM2, Qwen2.5, Llama instruct styles), and what is read from it.
FREE = [
    (
        "Let's add: 48 + 47. 8 + 7 = 15, carry 1. 4 + 4 + 1 = 9. So the final answer is 95.",
        "95",
        "Let's add: 48 + 47. 8 + 7 = 15, carry 1. 4 + 4 + 1 = 9. So the final answer is 95.",
        "the answer sentence, its period kept in the thought and out of the answer",
    ),
    (
        "Step 1: 3 * 4 = 12\nStep 2: 12 - 5 = 7\n\n**Answer:** 7\n\nQuestion: what is 2+2?",
        "7",
        "Step 1: 3 * 4 = 12\nStep 2: 12 - 5 = 7\n\n**Answer:** 7",
        "bold label; the model's next question dropped",
    ),
    (
        "She pays 3 x $2.50 = $7.50.\nThe answer is: $7.50.",
        "$7.50",
        None,
        "a decimal's point is not a sentence end",
    ),
    (
        "The answer is 12 at first glance, but 5 + 8 = 13. The answer is 13. The end.",
        "13",
        None,
        "the last 'answer is' counts",
    ),
    (
        "Therefore, the final answer is $\\boxed{1,234}$. I hope it is correct.",
        "1,234",
        None,
        "LaTeX boxed in $...$",
    ),
    (
        "We get \\boxed{\\frac{1}{2}} in the end",
        "\\frac{1}{2}",
        None,
        "boxed without a phrase, nested braces",
    ),
    (
        "Half of 10 is 5, plus 3 makes 8 apples.",
        "8",
        "Half of 10 is 5, plus 3 makes 8",
        "no phrase: the last number",
    ),
    ("The answer is:\n\n-42", "-42", None, "the answer on a later line, negative"),
    ("answer: 1,000,000 dollars", "1,000,000 dollars", None, "what follows the label, units too"),
]


@pytest.mark.parametrize("text,answer,reasoning,why", FREE)
def test_read_free_answer(text, answer, reasoning, why):
    from reasonlab.template import read_free_answer

    got = read_free_answer(text)
    assert got is not None and got[1] == answer, why
    if reasoning is not None:
        assert got[0] == reasoning, why


def test_free_form_rewrites_into_the_template():
    from reasonlab.template import free_form_completion, free_form_prompt, read_free_answer

    assert read_free_answer("I cannot tell.") is None and read_free_answer("The answer is") is None
    done = free_form_completion("8 + 7 = 15. The answer is 15.\nUser: next")
    assert done == "<think>8 + 7 = 15. The answer is 15.</think><answer>15</answer>"
    assert parse_completion(done).answer == "15"
    kept = "<think>x</think><answer>4</answer>"
    assert free_form_completion(kept) == kept  # already in the template
    assert free_form_completion("<answer>4</answer> because 2+2") is None  # answer tags that break the format
    assert free_form_completion("no number here") is None
    # A template that prefilled <think>: the completion closes it; the tags go, the text stays.
    assert (
        free_form_completion("2+2 is 4</think>The answer is 4.")
        == "<think>2+2 is 4\nThe answer is 4.</think><answer>4</answer>"
    )
    prompt = free_form_prompt("2+2?", "r1")
    assert prompt.endswith("User: 2+2? Assistant:") and "<think>" not in prompt and "The answer is" in prompt
    assert free_form_prompt("2+2?") == build_prompt("2+2?")  # plain: the trigger prompt
