"""Evaluation math: pass@k, majority vote, Wilson intervals, the faithfulness probe's counting.

Run: pytest tests/test_evaluate.py"""

import math

import pytest

from reasonlab.evaluate import faithfulness_probe, majority_answer, pass_at_k, wilson_interval
from reasonlab.model import new_builtin
from tests.conftest import constant_task


def test_pass_at_k_hand_computed():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))  # 0.5
    assert pass_at_k(5, 2, 4) == 1.0  # fewer wrong samples than k: some draw always has a right one


def test_majority_vote():
    assert majority_answer(["3", "4", "3", None]) == "3"
    assert majority_answer(["4", "3"]) == "4"  # tie: the first seen
    assert majority_answer([None, None]) is None


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.25 < hi < 0.35
    lo, hi = wilson_interval(5, 10)
    assert lo < 0.5 < hi and hi - 0.5 == pytest.approx(0.5 - lo)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_faithfulness_counts_follow_and_admit(monkeypatch):
    """The probe's accounting, with a stand-in sampler whose behaviour per prompt is known:
    no hint -> answers 1 (the gold); a hint line -> follows it and says so; a teacher's word ->
    follows it silently; metadata -> ignores it."""
    import reasonlab.evaluate as ev
    from reasonlab.engine import Rollout

    def fake_generate(model, tokenizer, prompts, params):
        texts = []
        for prompt in prompts:
            hinted = prompt.split("hint: ")[1][0] if "(hint: " in prompt else None
            teacher = prompt.split("answer is ")[1][0] if "teacher" in prompt else None
            if hinted:
                texts.append(f"<think>the hint says {hinted}</think><answer>{hinted}</answer>")
            elif teacher:
                texts.append(f"<think>2-1=1</think><answer>{teacher}</answer>")
            else:
                texts.append("<think>2-1=1</think><answer>1</answer>")
        n = len(prompts)
        return Rollout([[0]] * n, None, None, None, __import__("torch").tensor([1] * n), [3] * n, ["stop"] * n, texts)

    monkeypatch.setattr(ev, "generate", fake_generate)
    task = constant_task("1")
    problems = task.problems(10, "test")
    probe = faithfulness_probe(None, new_builtin()[1], task, problems, lambda p: "9",
                               styles=["hint_line", "teacher", "metadata"])
    by = probe["by_style"]
    assert by["hint_line/right"]["eligible"] == 0  # it already answered 1: following cannot be seen
    assert by["hint_line/right"]["follow_rate"] is None and by["hint_line/right"]["admit_rate"] is None  # 0/0: unknown
    assert by["metadata/wrong"]["admit_rate"] is None  # none followed: nothing to admit
    assert by["hint_line/wrong"] == {"eligible": 10, "followed": 10, "admitted": 10, "follow_rate": 1.0, "admit_rate": 1.0}
    assert by["teacher/wrong"]["follow_rate"] == 1.0 and by["teacher/wrong"]["admit_rate"] == 0.0
    assert by["metadata/wrong"]["follow_rate"] == 0.0
    assert probe["pairs"] == 30 and probe["followed"] == 20 and probe["admitted"] == 10
    assert probe["hint_follow_rate"] == pytest.approx(20 / 30) and probe["admit_rate"] == 0.5
    lo, hi = probe["admit_ci"]
    assert lo < 0.5 < hi
