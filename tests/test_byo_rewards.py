"""Bring your own rewards and tasks: reward functions written for TRL's GRPOTrainer run unchanged
(keyword call, dataset columns by name, None = not applicable, async), each logged under its own
name; `rl --reward`, `--no-default-reward`, `--format-gate`; `--import` a task module, then `eval`
on the result imports it again.

Run: OMP_NUM_THREADS=1 pytest tests/test_byo_rewards.py
"""

import asyncio
import json
import math
import sys

import pytest

from reasonlab.cli import main
from reasonlab.errors import UserError
from reasonlab.model import load_train_config, new_builtin, save_checkpoint
from reasonlab.model.gpt import GPTConfig
from reasonlab.rewards import reward_plan, score
from reasonlab.tasks import Problem, get_task
from reasonlab.tasks.base import _REGISTRY
from reasonlab.template import Question

TINY = GPTConfig(n_layer=1, n_head=2, n_kv_head=1, d_model=16, max_seq_len=96)
RL = [
    *("--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "6", "--steps", "2"),
    *("--eval-every", "0", "--device", "cpu", "--report-to", "none"),
]


@pytest.fixture
def ck(tmp_path):
    model, tok = new_builtin(TINY, seed=0)
    save_checkpoint(tmp_path / "ck", model, tok, {"task": {"name": "arithmetic", "options": {"digits": 1}}})
    return str(tmp_path / "ck")


# Rewards written the way TRL's GRPOTrainer calls them (keyword arguments, **kwargs for the rest).
def starts_with_think(completions, **kwargs):
    """TRL style, conversational: each completion is a list of one message."""
    return [1.0 if c[0]["content"].startswith("<think>") else 0.0 for c in completions]


def level_bonus(prompts, completions, completion_ids, level, **kwargs):
    """TRL style, standard format: a dataset column (`level`) arrives by name; None where not applicable."""
    return [None if lv == 0 else 0.1 * lv * len(ids) for lv, ids in zip(level, completion_ids)]


async def async_length(completions, **kwargs):
    await asyncio.sleep(0)
    return [float(len(c)) for c in completions]


def problems(rows, conversational=False):
    out = []
    for row in rows:
        q = row["q"]
        question = Question(q, [{"role": "user", "content": q}]) if conversational else Question(q)
        out.append(Problem(question, str(row["a"]), None, {"row": row}))
    return out


def test_trl_rewards_run_unchanged_with_columns_none_and_async():
    rows = [{"q": "1+1", "a": 2, "level": 0}, {"q": "2+2", "a": 4, "level": 2}]
    plan = reward_plan([level_bonus, async_length, lambda completions, **kw: [1.0] * len(completions)])
    assert [fn.__name__ for fn, _ in plan.funcs] == ["level_bonus", "async_length", "lambda"]
    texts = ["<think>a</think><answer>2</answer>", "<think>b</think><answer>5</answer>"]
    task = get_task("arithmetic", digits=1)
    columns = {"problems": problems(rows), "completion_ids": [[1, 2, 3], [4, 5]]}
    scores = score(texts, ["2", "4"], task, None, [*plan.funcs], **columns)
    assert math.isnan(scores.parts["level_bonus"][0]) and scores.parts["level_bonus"][1] == pytest.approx(0.4)
    assert scores.parts["async_length"] == [34.0, 34.0]
    assert scores.total == pytest.approx([35.0, 35.4])  # the None counts 0, as TRL's nansum does
    logged = scores.log()
    assert logged["reward/level_bonus"] == pytest.approx(0.4)  # the mean over the rows it applies to


def test_conversational_prompts_give_message_completions_and_names_stay_unique():
    plan = reward_plan([starts_with_think, starts_with_think, lambda **kw: [0.0], lambda **kw: [0.0]])
    assert [fn.__name__ for fn, _ in plan.funcs] == [
        "starts_with_think",
        "starts_with_think_2",
        "lambda",
        "lambda_2",
    ]
    fn = plan.funcs[0][0]
    rows = [{"q": "1+1", "a": 2}]
    assert fn(["<think>x</think>"], problems=problems(rows, conversational=True)) == [1.0]


def test_bad_rewards_are_one_clear_line():
    task = get_task("arithmetic", digits=1)
    rows = [{"q": "1+1", "a": 2}]
    for bad, why in (
        (lambda **kw: [1.0, 2.0], "returned 2 values for 1 completions"),
        (lambda **kw: ["high"], "returned 'high'"),
    ):
        with pytest.raises(UserError, match=why):
            score(["x"], ["2"], task, None, reward_plan([bad]).funcs, problems=problems(rows))
    with pytest.raises(UserError, match="MODULE:FUNCTION"):
        reward_plan(["nonsense"])
    with pytest.raises(UserError, match="no module 'no_such_rewards'"):
        reward_plan(["no_such_rewards:f"])
    with pytest.raises(UserError, match="2 weights for 1 reward functions"):
        reward_plan([level_bonus], weights=[1.0, 2.0])
    with pytest.raises(UserError, match="needs at least one --reward"):
        reward_plan([], default=False)


REWARDS_MODULE = """
def brevity(completions, completion_ids, **kwargs):
    return [-0.01 * len(ids) for ids in completion_ids]

def uses_level(prompts, completions, level, **kwargs):
    assert isinstance(prompts[0], str) and len(level) == len(completions)
    return [float(x) for x in level]
"""


def test_rl_with_reward_functions_from_the_command_line(tmp_path, ck, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the module lives in the working folder, as a user's would
    (tmp_path / "my_rewards.py").write_text(REWARDS_MODULE)
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"q": f"{i}+1", "a": i + 1, "level": i % 3}) + "\n" for i in range(30))
    )
    out = tmp_path / "out"
    argv = ["rl", "--model", ck, "--data", str(data), "--prompt-column", "q", "--answer-column", "a"]
    rewards = [
        "--reward",
        "my_rewards:brevity=0.5",
        "--reward",
        "my_rewards:uses_level",
        "--no-default-reward",
    ]
    assert main([*argv, *rewards, "--out", str(out), *RL]) == 0  # no format patience: rewards judge alone
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert "reward/brevity" in last and "reward/uses_level" in last and "reward/reasoning" not in last
    assert last["reward/brevity"] <= 0
    recorded = load_train_config(out)["task"]["rewards"]
    assert recorded == {
        "rewards": {"brevity": 0.5, "uses_level": 1.0},
        "default": False,
        "format_gate": False,
    }
    sys.modules.pop("my_rewards", None)


TASK_MODULE = '''
from reasonlab.tasks import Problem, Task, register_task


@register_task("parity")
class Parity(Task):
    """Is a number even or odd?"""

    def sample(self, rng):
        n = rng.randint(0, 10**6)
        return Problem(f"parity of {n}", "even" if n % 2 == 0 else "odd")

    def verify(self, predicted, gold):
        return predicted.strip().lower() == gold
'''


def test_import_a_task_module_then_eval_on_the_result_imports_it_again(tmp_path, ck, capsys):
    module = tmp_path / "my_tasks.py"
    module.write_text(TASK_MODULE)
    out = tmp_path / "out"
    argv = ["rl", "--model", ck, "--import", str(module), "--task", "parity", "--out", str(out)]
    assert main([*argv, *RL, "--no-format-patience", "0"]) == 0
    assert load_train_config(out)["task"]["imports"] == [str(module.resolve())]
    _REGISTRY.pop("parity")  # as in a fresh process: the task is unknown until its module is imported
    sys.modules.pop("my_tasks", None)
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--problems", "2", "--device", "cpu"]) == 0
    assert "task: parity" in capsys.readouterr().err
    assert main(["eval", "--model", ck, "--import", str(tmp_path / "nope.py"), "--device", "cpu"]) == 2
    assert "no such file" in capsys.readouterr().err
    _REGISTRY.pop("parity", None)
    sys.modules.pop("my_tasks", None)
