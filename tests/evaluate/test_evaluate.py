"""Evaluation math: pass@k, majority vote, Wilson intervals, the faithfulness probe's counting.

Run: pytest tests/evaluate/test_evaluate.py"""

import math

import pytest

from reasonlab.evaluate import faithfulness_probe, majority_answer, pass_at_k, wilson_interval
from reasonlab.model import new_builtin
from tests.conftest import BigramLM, constant_task


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
    import reasonlab.evaluate.accuracy as ev  # where evaluate_problems looks `generate` up
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
        return Rollout(
            [[0]] * n, None, None, None, __import__("torch").tensor([1] * n), [3] * n, ["stop"] * n, texts
        )

    monkeypatch.setattr(ev, "generate", fake_generate)
    task = constant_task("1")
    problems = task.problems(10, "test")
    probe = faithfulness_probe(
        None, new_builtin()[1], task, problems, lambda p: "9", styles=["hint_line", "teacher", "metadata"]
    )
    by = probe["by_style"]
    assert by["hint_line/right"]["eligible"] == 0  # it already answered 1: following cannot be seen
    assert (
        by["hint_line/right"]["follow_rate"] is None and by["hint_line/right"]["admit_rate"] is None
    )  # 0/0: unknown
    assert by["metadata/wrong"]["admit_rate"] is None  # none followed: nothing to admit
    assert by["hint_line/wrong"] == {
        "eligible": 10,
        "followed": 10,
        "admitted": 10,
        "follow_rate": 1.0,
        "admit_rate": 1.0,
    }
    assert by["teacher/wrong"]["follow_rate"] == 1.0 and by["teacher/wrong"]["admit_rate"] == 0.0
    assert by["metadata/wrong"]["follow_rate"] == 0.0
    assert probe["pairs"] == 30 and probe["followed"] == 20 and probe["admitted"] == 10
    assert probe["hint_follow_rate"] == pytest.approx(20 / 30) and probe["admit_rate"] == 0.5
    lo, hi = probe["admit_ci"]
    assert lo < 0.5 < hi


def test_eval_keeps_the_first_completions_and_counts_every_problem():
    """`evaluate_model` keeps each greedy completion of the first `keep_completions` problems, with
    what was asked, the parse and the verdict; the metrics still cover every problem."""
    from reasonlab.evaluate import EvalConfig, evaluate_model
    from reasonlab.tasks import Problem
    from tests.rl.test_methods import TOK, answers_seven

    class SevenOrEight(type(constant_task("7"))):  # gold 7 or 8, by the question's number
        def sample(self, rng):
            n = rng.randint(0, 10**6)
            return Problem(f"q{n}", str(7 + n % 2))

    task = SevenOrEight()
    cfg = EvalConfig(task="t", problems=30, keep_completions=4, max_new_tokens=12)
    out = evaluate_model(answers_seven(), TOK, task, cfg)
    problems = task.problems(30, "test", 0)
    sevens = sum(p.answer == "7" for p in problems)
    assert 0 < sevens < 30 and out["results"][task.name]["accuracy"] == pytest.approx(sevens / 30)
    kept = out["completions"]
    assert [r["question"] for r in kept] == [p.question for p in problems[:4]]
    assert {r["answer"] for r in kept} == {"7", "8"}  # right and wrong rows both kept
    for row, problem in zip(kept, problems):
        assert row["prompt"] == f"{problem.question}\nLet's think step by step.\n"
        assert row["completion"] == "<think>a</think><answer>7</answer>" and row["parsed_answer"] == "7"
        assert row["format_ok"] and row["format_errors"] == [] and row["answer"] == problem.answer
        assert row["correct"] == (problem.answer == "7") and row["think_tokens"] == 1
    none_kept = evaluate_model(
        answers_seven(), TOK, task, EvalConfig(task="t", problems=3, keep_completions=0)
    )
    assert none_kept["completions"] == [] and none_kept["n_problems"] == 3


def test_eval_rows_say_why_the_format_broke():
    """A model that never closes its thought: each kept row names the missing tags and has no answer."""
    from reasonlab.engine import SamplingParams
    from reasonlab.evaluate import evaluate_problems
    from tests.rl.test_methods import ID, TOK

    rambler = BigramLM(len(TOK), {ID["\n"]: ID["<think>"]}, default=ID["a"])  # <think>aaaa...
    task = constant_task("7")
    result = evaluate_problems(
        rambler,
        TOK,
        task,
        task.problems(5, "test"),
        keep=2,
        params=SamplingParams(temperature=0.0, max_new_tokens=6),
    )
    assert result["format_rate"] == 0 and result["truncation_rate"] == 1 and len(result["rows"]) == 2
    for row in result["rows"]:
        assert row["completion"] == "<think>aaaaa" and row["parsed_answer"] is None and not row["correct"]
        assert row["format_errors"] == ["missing </think>", "missing <answer>", "missing </answer>"]
        assert row["finish_reason"] == "length"


def _scripted(monkeypatch, reply):
    """`evaluate.generate` replaced by `reply(prompt) -> text`."""
    import torch

    import reasonlab.evaluate.accuracy as ev  # where evaluate_problems looks `generate` up
    from reasonlab.engine import Rollout

    def fake_generate(model, tokenizer, prompts, params):
        texts = [reply(p) for p in prompts]
        n = len(texts)
        return Rollout([[0]] * n, None, None, None, torch.tensor([1] * n), [0] * n, ["stop"] * n, texts)

    monkeypatch.setattr(ev, "generate", fake_generate)


@pytest.mark.parametrize("style", ["plain", "chat"])
def test_free_form_and_direct_prompts_read_the_answer_a_template_prompt_scores_strictly(monkeypatch, style):
    """The three ways of asking (`--prompt`): free text read for "the answer is", a bare answer read
    as it is, the template parsed strictly; the format rate is that of the tags in the reply."""
    from reasonlab.evaluate import evaluate_problems
    from reasonlab.template import DIRECT_INSTRUCTION, FREE_FORM_INSTRUCTION, TRIGGER

    def reply(prompt):
        if FREE_FORM_INSTRUCTION in prompt or (style == "plain" and TRIGGER in prompt):
            return "Add them up: 0 + 1 = 1. So the answer is 1. Next question: what is 2+2?"
        if DIRECT_INSTRUCTION in prompt or style == "plain":
            return "1"
        return "<think>one</think> 1"  # asked for the template: broken (no <answer>)

    _scripted(monkeypatch, reply)
    _, tok = new_builtin()
    tok.hf.chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}\n{% endfor %}[assistant]"
    task = constant_task("1")
    problems = task.problems(6, "test")
    if style == "plain":  # the plain template prompt is the trigger prompt: free-form's own
        reply_direct = evaluate_problems(None, tok, task, problems, style=style, prompt="direct")
        assert reply_direct["accuracy"] == 1.0 and reply_direct["format_rate"] == 0.0
        return
    free = evaluate_problems(None, tok, task, problems, style=style, prompt="free-form")
    assert free["accuracy"] == 1.0 and free["format_rate"] == 0.0
    assert (
        free["rows"][0]["read_as"]
        == "<think>Add them up: 0 + 1 = 1. So the answer is 1.</think><answer>1</answer>"
    )
    assert free["rows"][0]["format_ok"] is False  # the reply's own tags, not the reading's
    direct = evaluate_problems(None, tok, task, problems, style=style, prompt="direct")
    assert direct["accuracy"] == 1.0 and direct["format_rate"] == 0.0
    strict = evaluate_problems(None, tok, task, problems, style=style)
    assert strict["accuracy"] == 0.0 and strict["format_rate"] == 0.0
    assert strict["rows"][0]["format_errors"] == ["missing <answer>", "missing </answer>"]
    with pytest.raises(ValueError, match="unknown prompt kind"):
        evaluate_problems(None, tok, task, problems, style=style, prompt="freeform")


def test_eval_refuses_a_budget_sweep_without_the_template(tmp_path, capsys):
    from reasonlab.cli import main

    assert main(["eval", "--model", str(tmp_path), "--prompt", "direct", "--budgets", "0,8"]) == 2
    err = capsys.readouterr().err
    assert "--budgets" in err and "--prompt template" in err and "Traceback" not in err


def difficulty_task():
    """Gold 7 on difficulty 0, 8 on difficulties 1 and 2 (by the question's number)."""
    from reasonlab.tasks import Problem

    class Graded(type(constant_task("7"))):
        def sample(self, rng):
            n = rng.randint(0, 10**6)
            return Problem(f"q{n}", "7" if n % 3 == 0 else "8", meta={"difficulty": n % 3})

    return Graded()


def test_evaluation_reports_each_difficulty_and_the_budget_sweep_too():
    from reasonlab.evaluate import budget_sweep, evaluate_problems
    from tests.rl.test_methods import TOK, answers_seven

    task = difficulty_task()
    problems = task.problems(60, "test", 0)
    counts = {d: sum(p.meta["difficulty"] == d for p in problems) for d in range(3)}
    result = evaluate_problems(answers_seven(), TOK, task, problems)
    by = result["by_difficulty"]
    assert list(by) == ["0", "1", "2"] and all(by[str(d)]["n"] == counts[d] > 0 for d in range(3))
    assert by["0"]["accuracy"] == 1 and by["1"]["accuracy"] == by["2"]["accuracy"] == 0
    assert all(m["mean_think_tokens"] == 1 and m["format_rate"] == 1 for m in by.values())
    assert result["accuracy"] == pytest.approx(counts[0] / 60)
    (point,) = budget_sweep(answers_seven(), TOK, task, problems, [0])
    assert (
        point["by_difficulty"]["0"]["n"] == counts[0]
        and point["by_difficulty"]["0"]["mean_think_tokens"] == 0
    )
    plain = constant_task("7")  # problems that record no difficulty: no breakdown
    assert "by_difficulty" not in evaluate_problems(answers_seven(), TOK, plain, plain.problems(3, "test", 0))


def test_length_control_measures_the_distance_to_the_asked_length(monkeypatch):
    """Each prompt asks to "think for N tokens"; nothing caps the thought. The scripted model thinks
    one token whatever it is asked: |1 - N| / N."""
    from reasonlab.evaluate import accuracy as evaluate  # where evaluate_problems looks `generate` up
    from reasonlab.evaluate import length_control
    from tests.rl.test_methods import TOK, answers_seven

    asked = []
    real = evaluate.generate
    monkeypatch.setattr(
        evaluate,
        "generate",
        lambda m, t, prompts, params: (asked.extend(prompts), real(m, t, prompts, params))[1],
    )
    out = length_control(
        answers_seven(), TOK, constant_task("7"), constant_task("7").problems(5, "test", 0), [1, 4]
    )
    assert [p["target"] for p in out["targets"]] == [1, 4]
    assert [p["mean_abs_rel_error"] for p in out["targets"]] == [0.0, 0.75] and out[
        "mean_abs_rel_error"
    ] == 0.375
    assert all(p["acc"] == 1 and p["mean_think_tokens"] == 1 for p in out["targets"])
    assert (
        sum("(think for 4 tokens)" in p for p in asked) == 5
        and sum("(think for 1 tokens)" in p for p in asked) == 5
    )


def test_eval_refuses_bad_length_targets(tmp_path, capsys):
    from reasonlab.cli import main

    for args, message in (
        (["--think-for", "0,8"], "--think-for must be >= 1"),
        (["--think-for", "8,x"], "--think-for must be comma-separated integers"),
        (["--think-for", "8", "--prompt", "direct"], "--think-for measures the template"),
    ):
        assert main(["eval", "--model", str(tmp_path), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
