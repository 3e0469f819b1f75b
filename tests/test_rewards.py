"""Reward functions: valid and adversarial cases (each says why), composition, fuzzing.

Run: pytest tests/test_rewards.py
"""

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reasonlab.rewards import (
    combine,
    correctness_reward,
    format_reward,
    length_target_reward,
    overlong_penalty,
    reasoning_reward,
)
from reasonlab.tasks import get_task
from reasonlab.template import parse_completion

ARITH = get_task("arithmetic")

# completion, gold, format_ok, correct, why
CASES = [
    ("<think>7+5=12</think><answer>12</answer>", "12", True, True, "right answer, right format"),
    ("<think>7+5=13</think><answer>13</answer>", "12", True, False, "wrong answer, right format"),
    ("<think>7+5=12</think>12", "12", False, False, "right number but no <answer> block"),
    ("<answer>12</answer>", "12", False, False, "skipped the thinking"),
    (
        "<think>x</think><answer>12</answer><answer>13</answer>",
        "12",
        False,
        False,
        "hedging with two answers",
    ),
    ("<think>x</think><answer>12</answer>12", "12", False, False, "text after the answer"),
    (
        "<think>x</think><answer>11 or 12</answer>",
        "12",
        True,
        False,
        "two candidates in one answer are not an integer",
    ),
    (
        "<think><answer>12</answer></think><answer>12</answer>",
        "12",
        False,
        False,
        "answer hidden inside the thought",
    ),
    ("<think>x</think><answer>012</answer>", "12", True, True, "leading zero is still the integer 12"),
]


@pytest.mark.parametrize("completion,gold,format_ok,correct,why", CASES, ids=[c[4] for c in CASES])
def test_reward_cases(completion, gold, format_ok, correct, why):
    assert format_reward([completion]) == [1.0 if format_ok else 0.0], why
    assert correctness_reward([completion], [gold], task=ARITH) == [1.0 if correct else 0.0], why
    expected = (2.0 + (1.0 if correct else 0.0)) if format_ok else 0.0
    assert reasoning_reward([completion], [gold], task=ARITH) == [expected], why


def test_reasoning_reward_points_are_configurable_and_task_by_name():
    good = "<think>1+1=2</think><answer>2</answer>"
    assert reasoning_reward([good], ["2"], task="arithmetic", format_points=0.5, correct_points=4) == [4.5]
    assert reasoning_reward([good], ["3"], task="arithmetic", format_points=0.5, correct_points=4) == [0.5]
    with pytest.raises(ValueError, match="needs task"):
        reasoning_reward([good], ["2"])


def test_prompts_column_handles_prefilled_think():
    completion = "1+1=2</think><answer>2</answer>"
    assert reasoning_reward([completion], ["2"], task=ARITH, prompts=["Q <think>"]) == [3.0]
    assert reasoning_reward([completion], ["2"], task=ARITH, prompts=["Q"]) == [0.0]


def test_overlong_penalty_is_soft():
    # max 100 tokens, last 20 are the soft zone: 80 -> 0, 90 -> -0.5, 100 -> -1, 101 -> -1
    got = overlong_penalty(
        ["x"] * 5, completion_lengths=[10, 80, 90, 100, 101], max_length=100, cache_length=20
    )
    assert got == [0.0, 0.0, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError):
        overlong_penalty(["x"], completion_lengths=[1], max_length=10, cache_length=0)


def test_length_target_reward():
    got = length_target_reward(
        ["a", "b", "c"], think_lengths=[50, 40, 70], target_lengths=[50, 50, 50], alpha=0.01
    )
    assert got == pytest.approx([0.0, -0.1, -0.2])


def test_combine_weights_and_shares_columns():
    reward = combine((reasoning_reward, 1.0), (overlong_penalty, 0.5))
    completions = ["<think>1+1=2</think><answer>2</answer>", "<think>1+1=3</think><answer>3</answer>"]
    got = reward(
        completions, ["2", "2"], task=ARITH, completion_lengths=[10, 100], max_length=100, cache_length=20
    )
    assert got == [3.0, 2.0 - 0.5]
    assert "reasoning_reward" in reward.__name__


# ---- fuzzing: random strings and mutations of valid completions --------------------------------

VALID = ["<think>7+5=12</think><answer>12</answer>", "<think>\n3*4=12\n</think>\n<answer>12</answer>"]
PIECES = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "12",
    " ",
    "\n",
    "<",
    ">",
    "/",
    "think",
    "answer",
    "x",
]


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "dup"]))
        if kind == "insert":
            text = text[:i] + draw(st.sampled_from(PIECES) | st.text(max_size=5)) + text[i:]
        elif kind == "delete":
            j = draw(st.integers(i, min(len(text), i + 8)))
            text = text[:i] + text[j:]
        else:
            text = text + text[i:]
    return text


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(st.text(max_size=300), mutated()))
def test_fuzz_rewards_never_raise_and_broken_format_earns_nothing(completion):
    start = time.monotonic()
    for task, gold in (
        (ARITH, "12"),
        (get_task("countdown"), "3 4 1 -> 12"),
        (get_task("gsm8k", path="."), "12"),
    ):
        parsed = parse_completion(completion)
        r = reasoning_reward([completion], [gold], task=task)[0]
        c = correctness_reward([completion], [gold], task=task)[0]
        assert r in (0.0, 2.0, 3.0)
        if not parsed.format_ok:
            assert r == 0.0 and c == 0.0  # never correctness points with a broken format
        else:
            assert r >= 2.0
    assert time.monotonic() - start < 1.0


@pytest.mark.slow
def test_fuzz_100k_completions_through_every_reward():
    """10^5 random and mutated completions through every reward and verifier (math-verify included,
    with its timeout): no exception, no call much over the timeout, no points for a broken format."""
    import random

    from reasonlab.rewards import REWARDS

    rng = random.Random(0)
    tasks = [
        (ARITH, "12"),
        (get_task("countdown"), "3 4 1 -> 12"),
        (get_task("gsm8k", path="."), "12"),
        (get_task("chain"), "12"),
        (get_task("math", timeout=1.0), "12"),
    ]
    alphabet = "".join(PIECES) + "0123456789+-*/()$., \\\\{}^"
    tasks[-1][0].verify("x+1", "1+x")  # the math-verify workers start once (a second or two), before timing
    slowest = 0.0
    for i in range(100_000):
        if i % 2:
            completion = rng.choice(VALID)
            for _ in range(rng.randint(1, 4)):
                j = rng.randint(0, len(completion))
                completion = (
                    completion[:j]
                    + rng.choice(PIECES + [rng.choice(alphabet)])
                    + completion[j + rng.randint(0, 3) :]
                )
        else:
            completion = "".join(
                rng.choice(PIECES) if rng.random() < 0.2 else rng.choice(alphabet)
                for _ in range(rng.randint(0, 60))
            )
        task, gold = tasks[i % len(tasks)]
        start = time.monotonic()
        columns = dict(
            task=task,
            completion_lengths=[len(completion)],
            max_length=64,
            cache_length=16,
            think_lengths=[10],
            target_lengths=[12],
        )
        values = {name: fn([completion], [gold], **columns)[0] for name, fn in REWARDS.items()}
        slowest = max(slowest, time.monotonic() - start)
        if not parse_completion(completion).format_ok:
            assert values["reasoning"] == 0.0 and values["correctness"] == 0.0 and values["format"] == 0.0
    # a check gets its 1 s timeout plus the margin before its worker is killed; the next check then
    # waits for a fresh worker, so no call takes more than about that
    from reasonlab.tasks.mathverify import CHECK_MARGIN

    assert slowest < 1.0 + CHECK_MARGIN + 1.0
