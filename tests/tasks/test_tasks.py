"""Tasks: seeded problems, disjoint splits, verifiers, reference rationales.
Run: pytest tests/tasks/test_tasks.py"""

import json
import threading
from pathlib import Path

import pytest

from reasonlab.tasks import Problem, Task, get_task, list_tasks, register_task
from reasonlab.tasks.countdown import check_expression, parse_expression
from reasonlab.tasks.gsm8k import gold_from_solution, parse_number, rationale_from_solution
from reasonlab.template import parse_completion

GSM8K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gsm8k"


def test_registry_lists_builtins_and_rejects_unknown():
    assert {"arithmetic", "countdown", "gsm8k", "math"} <= set(list_tasks())
    with pytest.raises(ValueError, match="unknown task 'nope'.*arithmetic"):
        get_task("nope")


def test_task_options_are_checked_by_name_and_type():
    with pytest.raises(
        ValueError, match="no option 'lenght'; its options: length \\(default 5\\), max_value"
    ):
        get_task("chain", lenght=4)
    for bad in ("x", 4.5, True):  # what --task-arg length=x / 4.5 / true parse to
        with pytest.raises(ValueError, match=f"length must be an integer, got {bad!r}"):
            get_task("chain", length=bad)
    with pytest.raises(ValueError, match="timeout must be a number, got 'soon'"):
        get_task("math", timeout="soon")
    assert get_task("math", timeout=2).timeout == 2 and get_task("chain", length=3).length == 3


@pytest.mark.parametrize(
    "name,kwargs", [("arithmetic", {"op": "+-*", "digits": 3}), ("countdown", {"count": 4})]
)
def test_synthetic_tasks_seeded_and_splits_disjoint(name, kwargs):
    task = get_task(name, **kwargs)
    a = task.problems(200, "train", seed=1)
    assert [p.question for p in a] == [p.question for p in task.problems(200, "train", seed=1)]
    assert [p.question for p in a] != [p.question for p in task.problems(200, "train", seed=2)]
    test = {p.question for p in task.problems(100, "test", seed=1)}
    assert not test & {p.question for p in task.problems(2000, "train", seed=3)}
    assert len({p.question for p in a}) == 200  # distinct


@pytest.mark.parametrize(
    "kwargs",
    [
        {"op": "+", "digits": 4},
        {"op": "-", "digits": 3},
        {"op": "*", "digits": 3, "digits_b": 2},
        {"op": "+-*", "digits": 1},
    ],
)
def test_arithmetic_reference_completions_verify(kwargs):
    task = get_task("arithmetic", **kwargs)
    for p in task.problems(200, seed=0):  # 1-digit with 3 ops has only ~270 train problems
        a, op, b = p.meta["a"], p.meta["op"], p.meta["b"]
        assert int(p.answer) == eval(f"{a}{op}{b}")  # the gold itself (test code may eval)
        parsed = parse_completion(p.reference_completion())
        assert parsed.format_ok and task.verify(parsed.answer, p.answer)


def test_arithmetic_rationale_is_digit_by_digit():
    from reasonlab.tasks.arithmetic import rationale_for

    assert rationale_for(1234, "+", 5678) == "4+8+0=12;3+7+1=11;2+6+1=09;1+5+0=06"
    assert rationale_for(52, "-", 38) == "12-8-0=4;5-3-1=1"  # borrow written as a leading 1
    assert rationale_for(38, "-", 52).startswith("swap;") and rationale_for(38, "-", 52).endswith("neg")
    assert (
        rationale_for(12, "*", 34)
        == "2*4+0=08;1*4+0=04;>48;2*3+0=06;1*3+0=03;>360;8+0+0=08;4+6+0=10;0+3+1=04;>408"
    )


def test_arithmetic_asks_in_words_when_told():
    from reasonlab.tasks.arithmetic import rationale_for

    asked = get_task("arithmetic", digits=2, ask="What is {}?")
    p = asked.problems(5, "test", seed=3)[0]
    assert (
        p.question == f"What is {p.meta['a']}+{p.meta['b']}?" and int(p.answer) == p.meta["a"] + p.meta["b"]
    )
    assert p.rationale == rationale_for(
        p.meta["a"], "+", p.meta["b"]
    )  # the reference works on the expression
    assert {q.question for q in asked.problems(50, "train")}.isdisjoint(
        {q.question for q in asked.problems(50, "test")}
    )
    with pytest.raises(ValueError, match="one \\{\\} where the expression goes"):
        get_task("arithmetic", ask="What is it?")
    from reasonlab.cli import main

    assert main(["generate", "--task", "arithmetic", "--task-arg", "ask=What is it?", "--model", "x"]) == 2


def test_small_problem_space_is_reported():
    with pytest.raises(ValueError, match="fewer than 300 distinct train"):
        get_task("arithmetic", op="+-*", digits=1).problems(300)


def test_a_run_asking_too_many_problems_is_told_which_setting_to_lower(tmp_path, capsys):
    from reasonlab.cli import main
    from reasonlab.model import new_builtin, save_checkpoint

    model, tok = new_builtin()
    save_checkpoint(tmp_path / "m", model, tok)
    # 1-digit sums hold 10 test problems; rl evaluates on 200 by default, eval on --problems.
    assert (
        main(
            [
                "rl",
                "--model",
                str(tmp_path / "m"),
                "--task",
                "arithmetic",
                "--task-arg",
                "digits=1",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "rl"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "fewer than 200 distinct test problems (found 10): lower --eval-problems" in err
        and "Traceback" not in err
    )
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "m"),
                "--task",
                "arithmetic",
                "--task-arg",
                "digits=1",
                "--problems",
                "11",
            ]
        )
        == 2
    )
    assert "lower --problems" in capsys.readouterr().err


def test_a_training_stream_holds_every_problem_of_a_small_space(tmp_path):
    """GRPO's problem stream asks for 20,000 problems. A smaller space gives all it holds (it used
    to halve the request until one fitted: 78 of 1-digit addition's 90 train sums, 5,000 of GSM8K's
    7,473), and the first ones are those a plain request returns. A task whose `problems` predates
    `at_most` still gets a stream."""
    from reasonlab.rl.collect import ProblemStream
    from reasonlab.tasks.base import split_of

    task = get_task("arithmetic", op="+", digits=1)
    sums = (f"{a}+{b}" for a in range(10) for b in range(10))
    train = {q for q in sums if split_of(q, task.test_fraction) == "train"}
    everything = task.problems(20000, "train", seed=0, at_most=True)
    assert len(everything) == len(train) and {p.question for p in everything} == train
    assert everything[:30] == task.problems(30, "train", seed=0)
    assert len(ProblemStream(task, seed=0).problems) == len(everything)

    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(7)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    gsm8k = get_task("gsm8k", path=str(tmp_path))
    assert len(ProblemStream(gsm8k, seed=0).problems) == 7

    class Legacy(Task):  # problems() without at_most: the stream halves its request until one fits
        name = "legacy"

        def problems(self, n, split="train", seed=0):
            if n > 5:
                raise ValueError("too many")
            return [Problem(f"q{i}", str(i)) for i in range(n)]

        def verify(self, predicted, gold):
            return predicted == gold

    assert len(ProblemStream(Legacy(), seed=0).problems) == 4  # 20000 halved down to 4


def test_arithmetic_verify():
    task = get_task("arithmetic")
    assert task.verify(" 579 ", "579") and task.verify("-3", "-3") and task.verify("+5", "5")
    assert not task.verify("579.0", "579")  # integer task: exact integer text only
    assert not task.verify("57 9", "579") and not task.verify("", "579") and not task.verify("1" * 5000, "1")
    with pytest.raises(ValueError):
        get_task("arithmetic", op="/")


def test_countdown_reference_is_a_search_trace_that_verifies():
    task = get_task("countdown", count=4, attempts=2)
    for p in task.problems(200, seed=0):
        assert p.rationale.endswith(" yes")
        assert p.rationale.count(" no") <= 2
        parsed = parse_completion(p.reference_completion())
        assert task.verify(parsed.answer, p.answer), p


def test_countdown_verifier_is_exact_and_strict():
    gold = "3 5 7 -> 22"
    task = get_task("countdown")
    assert task.verify("(7-3)*5+2", "2 3 5 7 -> 22")
    assert task.verify("3*5+7", gold) and task.verify("3*5+7 = 22", gold)
    assert not task.verify("3*5+7 = 23", gold)  # restated result must be the target
    assert not task.verify("5*5-3", gold)  # 5 used twice, 7 unused
    assert not task.verify("3*5+7+0", gold)  # extra number
    assert not task.verify("22", gold)  # just the target
    assert task.verify("7/(1/3)+1", "1 1 3 7 -> 22")  # exact rationals: 7/(1/3) = 21
    assert not task.verify("7/(1/3)+1", "1 3 7 -> 22")  # 1 used twice
    assert not task.verify("7/(3-3)+15", gold)  # division by zero is not an answer
    assert not task.verify("__import__('os').system('true')", gold)  # never evaluated
    assert not task.verify("(" * 1000 + "3", gold)  # too deep / too long
    assert not task.verify("3**5", gold) and not task.verify("-3+5*7", gold)
    value, numbers = parse_expression("(1+2)/4")
    assert str(value) == "3/4" and numbers == [1, 2, 4]
    assert check_expression("2*(3+4)", [2, 3, 4], 14)


def test_gsm8k_number_parsing():
    assert parse_number("$1,234.50") == parse_number("1234.5")
    assert parse_number("18 dollars") == 18 and parse_number("= 72") == 72
    assert parse_number("-3") == -3 and parse_number("$-3") == -3 and parse_number("72.0") == 72
    assert parse_number("50%") == 50
    assert parse_number("3 and 4") is None  # two numbers are not one answer
    assert parse_number("1,23") is None  # not a thousands grouping
    assert parse_number("") is None and parse_number(" " * 10_000 + "1") is None
    task = get_task("gsm8k", path=str(GSM8K))
    assert task.verify("$18", "18") and not task.verify("17", "18")


def test_gsm8k_with_no_data_and_no_hub_is_one_clear_error(monkeypatch):
    import sys
    import types

    from reasonlab.tasks import gsm8k

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub")

    monkeypatch.setattr(gsm8k, "find_data_dir", lambda path=None: None)  # no local copy anywhere
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(ValueError, match=r"hub failed \(ConnectionError\): pass path=DIR"):
        get_task("gsm8k").problems(2)


def test_gsm8k_solution_helpers():
    solution = "Half is 48/2 = <<48/2=24>>24.\nSo 48+24 = <<48+24=72>>72\n#### 1,072"
    assert gold_from_solution(solution) == "1072"
    assert rationale_from_solution(solution) == "Half is 48/2 = 24. So 48+24 = 72"
    with pytest.raises(ValueError):
        gold_from_solution("no answer line")


def test_gsm8k_from_a_jsonl_path(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"work <<1+1=2>>\n#### {i}"} for i in range(5)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    task = get_task("gsm8k", path=str(tmp_path))
    problems = task.problems(3, "train", seed=0)
    assert len(problems) == 3 and all(task.verify(p.answer, p.answer) for p in problems)
    assert problems == task.problems(3, "train", seed=0)
    with pytest.raises(ValueError, match="fewer than 9"):
        task.problems(9)
    (tmp_path / "test.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(ValueError, match="test.jsonl:1"):
        task.problems(1, "test")


@pytest.mark.skipif(not GSM8K.exists(), reason="../shared/data/gsm8k not present")
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_real_gsm8k_gold_verifies_against_itself(split):
    task = get_task("gsm8k", path=str(GSM8K))
    problems = task.problems(None, split)
    assert len(problems) == {"train": 7473, "test": 1319}[split]
    for p in problems:
        assert parse_number(p.answer) is not None, p.answer
        assert task.verify(p.answer, p.answer)


def test_math_verify_symbolic_answers():
    task = get_task("math")
    assert task.verify("\\frac{1}{2}", "0.5")
    assert task.verify("\\boxed{\\frac{3}{4}}", "3/4")
    assert task.verify("x+1", "1+x")
    assert not task.verify("2", "3") and not task.verify("", "3")


def test_math_verify_works_outside_the_main_thread():
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(get_task("math").verify("1/2", "0.5")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [True, True, True]


def test_math_verify_timeout_kills_a_stuck_check():
    import os
    import signal
    import time

    from reasonlab.tasks import mathverify

    pool = mathverify.WorkerPool(size=1)
    worker = pool.workers[0]
    assert pool.check([("$x+1$", "$1+x$")]) == ["correct"]  # warm the worker up
    pid = worker.proc.pid
    # A stuck worker: stopped, it cannot answer however easy the check (a timeout of 0 on a live
    # worker was a race: on a busy machine the worker sometimes answered before the caller polled).
    os.kill(pid, signal.SIGSTOP)
    start = time.monotonic()
    assert pool.check([("$x+2$", "$2+x$")], timeout=0.5) == ["timeout"]  # killed, counted wrong
    assert time.monotonic() - start < 5 and worker.proc is None
    assert pool.check([("$x+3$", "$3+x$")]) == ["correct"]  # a fresh worker answers the next call
    assert worker.proc.pid != pid
    pool.stop()


def test_adding_a_task_takes_a_few_lines():
    @register_task("parity")
    class Parity(Task):
        def sample(self, rng):
            n = rng.randint(0, 10**6)
            return Problem(f"parity of {n}", "even" if n % 2 == 0 else "odd")

        def verify(self, predicted, gold):
            return predicted.strip().lower() == gold

    task = get_task("parity")
    p = task.problems(5, "test")[0]
    assert task.verify(p.answer.upper(), p.answer)


def test_chain_step_check_accepts_sound_reasoning_and_rejects_lucky_guesses():
    from reasonlab.tasks import get_task

    task = get_task("chain", length=4)
    problems = task.problems(300, "train", seed=3)
    assert all(task.check_steps(p.question, p.rationale) for p in problems)
    q = "c=b-2;d=c+1;b=a+6;a=14;d?"
    sound = "a=14;b=a+6=14+6=20;c=b-2=20-2=18;d=c+1=18+1=19"
    assert task.check_steps(q, sound)
    assert task.check_steps(q, " " + sound.replace(";", "; ") + "\n")  # whitespace is not an error
    for lucky in [
        "a=15;b=a+6=15+6=20;c=b-2=20-2=18;d=c+1=18+1=19",  # wrong a, compensated
        "a=14;b=a+6=14+6=21;c=b-2=21-2=18;d=c+1=18+1=19",  # wrong sum, compensated
        "a=14;b=a+5=14+6=20;c=b-2=20-2=18;d=c+1=18+1=19",  # definition misquoted
        "a=14;b=a+6=14+6=20;c=b-2=20-2=18",  # the asked variable never evaluated
        "d=c+1=18+1=19;a=14;b=a+6=14+6=20;c=b-2=20-2=18",  # a value used before it exists
        "",
        "a=14;;",
        "e=1;a=14",
    ]:
        assert task.check_steps(q, lucky) is False, lucky
    assert get_task("arithmetic").check_steps("1+2", "anything") is None  # tasks that cannot tell say so


def test_tasks_command_lists_every_task_with_its_description(capsys):
    from reasonlab.cli import main
    from reasonlab.tasks import list_tasks

    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    named = {line.split()[0]: line for line in lines if not line.startswith(" ")}
    assert list(named) == list(
        list_tasks()
    )  # with any registered by other tests (no description: the name alone)
    for name in ("arithmetic", "chain", "countdown", "gsm8k", "math"):
        assert len(named[name].split()) > 3, named[name]  # a name and a one-line description
    # then (after the description, wrapped to the terminal) the options, with their defaults
    assert "--task-arg: op='+' digits=3 digits_b=None" in next(
        line for line in lines[1:] if "--task-arg:" in line
    )


def test_chain_mixes_difficulties_and_records_each_problems_hops():
    from collections import Counter

    from reasonlab.tasks import get_task

    task = get_task("chain", length=6, min_length=2)
    problems = task.problems(400, "train", seed=1)
    hops = Counter(p.meta["difficulty"] for p in problems)
    assert set(hops) == {1, 2, 3, 4, 5} and min(hops.values()) > 30  # every length, none rare
    for p in problems:
        definitions = p.question.split(";")[:-1]
        assert len(definitions) == p.meta["difficulty"] + 1 and task.check_steps(p.question, p.rationale)
        assert task.verify(p.answer, p.rationale.rsplit("=", 1)[1])
    assert {p.meta["difficulty"] for p in get_task("chain", length=4).problems(50)} == {
        3
    }  # one length: one difficulty
    assert get_task("chain", length=4).problems(20) == get_task("chain", length=4, min_length=4).problems(20)
    for bad in (1, 7):
        with pytest.raises(ValueError, match="min_length must be between 2 and length"):
            get_task("chain", length=6, min_length=bad)
