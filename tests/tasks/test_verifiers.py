"""Verifiers a reward can trust (issue #24): no silent failure, no reward for a wrong answer.

Run: pytest tests/tasks/test_verifiers.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest

from reasonlab.rewards import reasoning_reward
from reasonlab.tasks import get_task, mathverify
from reasonlab.tasks.base import UnparsedGold

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python(
    args: list[str], stdin: str | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


CHECK = (
    "from reasonlab.tasks import get_task; t = get_task('math'); "
    "print(t.verify('\\\\frac{1}{2}', '0.5'), t.verify('3', '\\\\frac{6}{2}'))"
)


def test_math_verifies_from_a_script_without_a_main_guard_from_stdin_and_from_c(tmp_path):
    script = tmp_path / "no_guard.py"
    script.write_text(CHECK + "\n")  # no `if __name__ == "__main__":` (the spawn worker needed one)
    for result in (run_python([str(script)]), run_python(["-"], stdin=CHECK), run_python(["-c", CHECK])):
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["True", "True"] and "Traceback" not in result.stderr


def test_math_verifies_from_threads():
    task = get_task("math")
    results = {}
    threads = [
        threading.Thread(
            target=lambda i=i: results.__setitem__(
                i, task.verify(f"\\frac{{{i}}}{{{i + 1}}}", f"{i}/{i + 1}")
            )
        )
        for i in range(1, 5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {1: True, 2: True, 3: True, 4: True}


def test_a_worker_that_cannot_start_raises_instead_of_scoring_everything_wrong(tmp_path):
    broken = tmp_path / "math_verify"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('math_verify is broken here')\n")
    code = textwrap.dedent("""
        from reasonlab.rewards import reasoning_reward
        print(reasoning_reward(['<think>x</think><answer>\\\\frac{1}{2}</answer>'], ['0.5'], task='math'))
    """)
    result = run_python(["-c", code], env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0 and "[2.0]" not in result.stdout  # no reward of "format only"
    assert "VerifierError: the math-verify worker did not start: cannot import math_verify" in result.stderr
    assert "math_verify is broken here" in result.stderr


def test_a_worker_that_keeps_dying_raises(monkeypatch, tmp_path):
    dying = tmp_path / "worker.py"
    dying.write_text(
        "import json, sys\nprint(json.dumps({'ready': True}), flush=True)\nsys.stdin.readline()\n"
        "sys.exit(3)\n"
    )
    monkeypatch.setattr(mathverify._Worker, "SCRIPT", dying)
    pool = mathverify.WorkerPool(size=1)
    with pytest.raises(mathverify.VerifierError, match="died twice"):
        pool.check([("$x$", "$x$")])
    pool.stop()


def test_a_timeout_counts_as_wrong_and_is_counted(monkeypatch):
    pool = mathverify.WorkerPool(size=1)
    monkeypatch.setattr(mathverify, "_POOL", pool)
    task = get_task("math", timeout=0.5)
    assert task.verify("x+1", "1+x")
    os.kill(pool.workers[0].proc.pid, signal.SIGSTOP)  # stuck: the check overruns its timeout
    assert task.verify_batch(["x+2", "x+3"], ["2+x", "3+x"]) == [
        False,
        True,
    ]  # the next one gets a fresh worker
    assert task.counts["timeouts"] == 1
    pool.stop()


@pytest.mark.parametrize(
    "predicted, gold, expected",
    [
        ("silent", "listen", False),
        ("abc", "cab", False),
        ("xy", "yx", False),  # words are text, not products
        ("Listen", "listen", True),
        ("\\text{Yes}", "yes", True),
        ("\\boxed{Monday}", "monday", True),
        ("x", "listen", False),
        ("listen", "x", False),
        ("1 + \\frac{1}{e}", "1 - \\frac{1}{e}", False),
        ("1 - \\frac{1}{e}", "1-\\frac{1}{e}", True),
        ("The answer is 4 4/9.", "4", False),
        ("The answer is 4 4/9.", "\\frac{40}{9}", True),
        ("4 4/9", "40/9", True),
        ("1 000", "1000", True),
        ("1\u2009000", "1000", True),
        (".4", "0.4", True),
        ("0 0/0", "0", False),
        ("-4 0/0", "0", False),
        ("1/0", "2/0", False),
        ("$odd$", "$\\text{odd}$", True),
        ("so $\\boxed{\\text{Evelyn}}$ it is.", "$\\text{Evelyn}$", True),
        ("$12:00$", "$12:00$", True),
        ("$z = 1 + 1 = 2$", "$z = 1 + 1 = 2$", True),
        ("$z=2$", "$z = 1 + 1 = 2$", True),
        ("\\frac{1}{2}", "0.5", True),
        ("x+1", "1+x", True),
        ("2", "3", False),
        ("", "3", False),
    ],
)
def test_math_verdicts(predicted, gold, expected):
    assert get_task("math").verify(predicted, gold) is expected


def test_plain_number_shortcut_agrees_with_math_verify():
    """The in-process shortcut for plain numbers must give math-verify's verdict, only faster."""
    numbers = [
        "0",
        "7",
        "-7",
        "12",
        "012",
        "2.0",
        "2.5",
        ".5",
        "0.5",
        "1/2",
        "2/4",
        "-1/2",
        "5/2",
        "100",
        "99",
        "0.333333",
        "1/3",
        "3.14159",
        "-0.5",
        "+3",
    ]
    pairs = [(a, b) for a in numbers for b in numbers]
    quick = [(pair, mathverify.quick_outcome(*pair)) for pair in pairs]
    decided = [(pair, o) for pair, o in quick if o is not None]
    assert len(decided) >= 80  # equal values, and unequal integers
    pool = mathverify.WorkerPool(size=1)
    slow = pool.check([(mathverify.prepare(a), mathverify.prepare(b)) for (a, b), _ in decided])
    pool.stop()
    assert [o for _, o in decided] == slow


def test_verdicts_do_not_depend_on_the_hash_seed():
    code = (
        "from reasonlab.tasks import get_task; t = get_task('math'); "
        "print([t.verify(p, '0') for p in ['0 0/0', '-4 0/0', '0/0', '\\\\{0, 0/0\\\\}']])"
    )
    outs = {run_python(["-c", code], env={"PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert len(outs) == 1 and outs.pop().startswith("[False, False, False,")  # 0/0 is no value: never 0


def test_a_gold_that_cannot_be_read_is_warned_once_and_counted():
    for name, bad_gold, good_gold in (("math", "\\frac{0}{0}", "2"), ("gsm8k", "about twelve", "12")):
        task = get_task(name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert task.verify_batch(["12", "13", "12"], [bad_gold, bad_gold, good_gold]) == [
                False,
                False,
                name == "gsm8k",
            ]
        assert [w.category for w in caught] == [UnparsedGold], name
        assert task.counts["unparsed_gold"] == 2


@pytest.mark.parametrize("answer", [".4", "$.40", "0.4", "0.40 m", "= 0.4"])
def test_gsm8k_reads_a_leading_point(answer):
    assert get_task("gsm8k").verify(answer, "0.4")


@pytest.mark.parametrize(
    "answer, gold",
    [
        ("1 000", "1000"),
        ("1\u2009000", "1000"),
        ("1\u202f000\u202f000", "1000000"),
        ("12 m²", "12"),
        ("1000.99€", "1000.99"),
        ("€20", "20"),
        ("£3.50", "3.5"),
        ("45°", "45"),
        ("50%", "50"),
        ("18 dollars", "18"),
    ],
)
def test_gsm8k_reads_thousands_and_the_documented_units(answer, gold):
    assert get_task("gsm8k").verify(answer, gold)


@pytest.mark.parametrize("answer", ["3 5", "5 apples 3", "1,000 000", "1,23", ".", "$", "12 345 6", "twelve"])
def test_gsm8k_refuses_what_is_not_one_number(answer):
    task = get_task("gsm8k")
    assert not task.verify(answer, "12") and not task.verify(answer, "12345") and not task.counts


def test_rewards_score_a_batch_through_verify_batch():
    completions = [f"<think>t</think><answer>{a}</answer>" for a in ("\\frac{1}{2}", "0.25", "silent", "1/2")]
    completions.append("<think>t</think>1/2")  # broken format: nothing, even though 1/2 is right
    golds = ["0.5", "1/4", "listen", "2/4", "0.5"]
    assert reasoning_reward(completions, golds, task="math") == [3.0, 3.0, 2.0, 3.0, 0.0]


def test_score_reports_answers_it_could_not_judge(tmp_path, capsys):
    import json

    from reasonlab.cli import main

    rows = [
        {"completion": "<think>a</think><answer>1/2</answer>", "answer": gold}
        for gold in ("0.5", "\\frac{0}{0}")
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnparsedGold)
        assert (
            main(["score", "--task", "math", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")])
            == 0
        )
    out = capsys.readouterr().out
    assert "accuracy 50.0%" in out and "scored wrong unjudged: 1 with a gold the verifier cannot read" in out


def test_grpo_logs_what_the_verifier_could_not_judge(tmp_path):
    from reasonlab.rl import GRPOConfig, train_grpo
    from reasonlab.tasks.base import VERIFY_EVENTS
    from tests.conftest import constant_task
    from tests.rl.test_methods import TOK, answers_seven

    class Stuck(type(constant_task("7"))):
        def verify_batch(self, predicted, golds):  # every other answer "times out"
            verdicts = super().verify_batch(predicted, golds)
            for i in range(0, len(verdicts), 2):
                self.count("timeouts")
                verdicts[i] = False
            return verdicts

    model, tok = answers_seven(), TOK
    logged = []
    cfg = GRPOConfig(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=8, eval_every=0, lr=0.1)
    train_grpo(model, tok, Stuck(), cfg, log=logged.append)
    assert [row["verify/timeouts"] for row in logged] == [2, 2]  # 4 completions a step, every other one
    assert all(row[f"verify/{k}"] == 0 for row in logged for k in VERIFY_EVENTS if k != "timeouts")
