"""Bring your own prompts: a Jinja2 prompt template over the row's columns (`prompt_template`), an
output in the model's own format judged by your rewards alone (`output="free"`), and the math
task's `path=FILE` read by the data task's loader with a held-out share by hash.

Run: OMP_NUM_THREADS=1 pytest tests/tasks/test_byo_prompts.py
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

datasets = pytest.importorskip("datasets")

from reasonlab.cli import main  # noqa: E402
from reasonlab.errors import UserError  # noqa: E402
from reasonlab.evaluate import SampleConfig, evaluate_problems, sample_task  # noqa: E402
from reasonlab.model import new_builtin, save_checkpoint  # noqa: E402
from reasonlab.model.gpt import GPTConfig  # noqa: E402
from reasonlab.rewards import reward_plan  # noqa: E402
from reasonlab.tasks import get_task  # noqa: E402
from reasonlab.tasks.data import data_task_options, output_rewards  # noqa: E402
from reasonlab.template import THINK_OPEN, Question, build_prompt  # noqa: E402

TINY = GPTConfig(n_layer=1, n_head=2, n_kv_head=1, d_model=16, max_seq_len=96)
RL = [
    *("--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "6", "--steps", "2"),
    *("--eval-every", "2", "--eval-problems", "3", "--device", "cpu", "--report-to", "none"),
]


@pytest.fixture
def ck(tmp_path):
    model, tok = new_builtin(TINY, seed=0)
    save_checkpoint(tmp_path / "ck", model, tok, {"task": {"name": "arithmetic", "options": {"digits": 1}}})
    return str(tmp_path / "ck")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sums(n: int) -> list[dict]:
    return [{"q": f"{i}+1", "a": i + 1, "level": i % 3} for i in range(n)]


# ---- a Jinja2 prompt template -----------------------------------------------------------------------


def test_a_prompt_template_renders_the_user_turn_from_the_row(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", sums(20))
    template = tmp_path / "p.jinja"
    template.write_text(
        "Level {{ level }}: what is {{ q }}?{% if system_prompt %} ({{ system_prompt }}){% endif %}"
    )
    task = get_task(
        "data", path=str(data), prompt_column="q", answer_column="a", prompt_template=str(template)
    )
    first = task.problems(split="train")[0]
    assert first.question == "Level 0: what is 0+1?" and first.meta["row"]["q"] == "0+1"
    # the style wraps it as any question: plain adds the trigger (none with trigger=False)
    assert build_prompt(first.question, "plain") == "Level 0: what is 0+1?\nLet's think step by step.\n"
    assert build_prompt(first.question, "plain", trigger=False) == "Level 0: what is 0+1?\n"
    assert template in task.data_files()  # a resume checks it did not change
    asked = get_task(
        "data",
        path=str(data),
        prompt_column="q",
        answer_column="a",
        system_prompt="be brief",
        prompt_template=str(template),
    )
    assert asked.problems(1)[0].question == "Level 0: what is 0+1? (be brief)"


def test_a_prompt_template_renders_the_last_user_message_of_a_conversation(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": f"{i}*2"}], "answer": str(2 * i), "unit": "cm"}
        for i in range(10)
    ]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "p.jinja").write_text("{{ question }} in {{ unit }}")
    task = get_task("data", path=str(tmp_path / "d.parquet"), prompt_template=str(tmp_path / "p.jinja"))
    question = task.problems(1)[0].question
    assert question == "0*2 in cm" and question.messages == [{"role": "user", "content": "0*2 in cm"}]


def test_bad_prompt_templates_are_one_line(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", sums(20))
    with pytest.raises(UserError, match="no such file"):
        get_task("data", path=str(data), prompt_template=str(tmp_path / "none.jinja"))
    (tmp_path / "bad.jinja").write_text("ok\n{{ q ")
    with pytest.raises(UserError, match=r"bad.jinja:2: "):
        get_task("data", path=str(data), prompt_template=str(tmp_path / "bad.jinja"))
    (tmp_path / "typo.jinja").write_text("{{ qq }}")
    task = get_task(
        "data",
        path=str(data),
        prompt_column="q",
        answer_column="a",
        prompt_template=str(tmp_path / "typo.jinja"),
    )
    with pytest.raises(UserError, match=r"typo.jinja, row 1: 'qq' is undefined"):
        task.problems(1)
    with pytest.raises(UserError, match="unknown output 'tags'"):
        get_task("data", path=str(data), output="tags")


def test_data_options_route_the_template_and_the_output(tmp_path, capsys):
    from reasonlab.config import build_config
    from reasonlab.options import RLOptions

    (tmp_path / "p.jinja").write_text("{{ q }}")
    template = str(tmp_path / "p.jinja")
    opts = build_config(RLOptions, data="d.jsonl", prompt_template=template, output_format="free")
    options = data_task_options(opts)
    assert options["prompt_template"] == str(Path(template).resolve()) and options["output"] == "free"
    # without --data they are refused, as --system-prompt is
    for flags in (["--prompt-template", template], ["--output-format", "free"]):
        assert main(["rl", "--model", "m", "--task", "chain", *flags]) == 2
        assert "goes with --data" in capsys.readouterr().err


# ---- output="free": the model's own format, your rewards alone -------------------------------------


def test_free_output_prompts_ask_for_no_tags():
    free = Question("2+2", None, None, "free")
    assert build_prompt(free, "plain") == build_prompt("2+2", "plain")  # plain never asked for tags
    assert build_prompt(free, "plain", prefill_think=True) == "2+2\nLet's think step by step.\n"
    r1 = build_prompt(free, "r1", prefill_think=True)
    assert "<answer>" not in r1 and not r1.endswith(THINK_OPEN) and r1.endswith("User: 2+2 Assistant:")
    assert build_prompt(Question("2+2", None, "Answer in words.", "free"), "r1").startswith(
        "Answer in words. User:"
    )
    assert (
        build_prompt(free.with_text("3+3"), "plain", trigger=False) == "3+3\n"
    )  # with_text keeps the output


def test_free_output_rewards_are_yours_alone():
    free, template = SimpleNamespace(output="free"), SimpleNamespace(output="template")
    plan = reward_plan([lambda completions, **_: [1.0] * len(completions)])
    assert output_rewards(template, plan) is plan and output_rewards(template, None) is None
    assert output_rewards(free, plan).default is False and output_rewards(free, plan).funcs == plan.funcs
    with pytest.raises(UserError, match="--default-reward scores the <think>/<answer> template"):
        output_rewards(free, plan, default=True)
    with pytest.raises(UserError, match="output=free needs at least one --reward"):
        output_rewards(free, None)
    with pytest.raises(UserError, match="--format-gate"):
        output_rewards(free, reward_plan(["format"], format_gate=True))


REWARDS_MODULE = """
def short(completions, **kwargs):
    return [-0.1 * len(c) for c in completions]
"""


def test_a_free_output_run_is_judged_by_your_reward_and_evaluated_free_form(tmp_path, ck, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "free_rewards.py").write_text(REWARDS_MODULE)
    data = write_jsonl(tmp_path / "d.jsonl", sums(40))
    argv = [
        "rl",
        "--model",
        ck,
        "--data",
        str(data),
        "--prompt-column",
        "q",
        "--answer-column",
        "a",
        "--verifier",
        "numeric",
        "--output-format",
        "free",
        "--no-format-patience",
        "1",
    ]
    out = tmp_path / "out"
    assert main([*argv, "--reward", "free_rewards:short", "--out", str(out), *RL]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(
        "reward/short" in r and "reward/reasoning" not in r for r in rows if "reward/sampled_mean" in r
    )
    assert rows[-1]["reward/short"] <= 0 and "eval/accuracy" in rows[-1]
    assert main([*argv, "--out", str(tmp_path / "none"), *RL]) == 2  # no reward of yours: nothing judges
    sys.modules.pop("free_rewards", None)


def test_evaluation_reads_a_free_output_answer_from_the_reply(tmp_path, monkeypatch):
    model, tok = new_builtin(TINY, seed=0)
    data = write_jsonl(tmp_path / "d.jsonl", sums(40))
    for output, read in (("free", True), ("template", False)):
        task = get_task(
            "data", path=str(data), prompt_column="q", answer_column="a", verifier="numeric", output=output
        )
        result = evaluate_problems(model, tok, task, task.problems(3, split="test"), keep=3)
        assert all(("read_as" in row) is read for row in result["rows"])
        gold = task.problems(1, split="test")[0].answer

        def replies(model, tokenizer, prompts, params, gold=gold, read=read):
            assert not any(THINK_OPEN in p for p in prompts) or not read
            return SimpleNamespace(
                texts=[f"Adding up, the answer is {gold}."] * len(prompts),
                think_tokens=[0] * len(prompts),
                lengths=[8] * len(prompts),
                finish_reason=["stop"] * len(prompts),
            )

        monkeypatch.setattr("reasonlab.evaluate.sample.generate", replies)
        sampled = sample_task(model, tok, task, SampleConfig(problems=1, split="test"))
        assert (
            sampled[0]["correct"] is read and sampled[0]["completion"] == f"Adding up, the answer is {gold}."
        )


# ---- the math task's file through the loader -----------------------------------------------------


def test_math_path_holds_out_rows_by_hash_and_reads_any_format(tmp_path):
    rows = [
        {"problem": f"{i}+1", "question": "unused", "answer": str(i + 1), "solution": f"{i} plus one"}
        for i in range(100)
    ]
    file = write_jsonl(tmp_path / "m.jsonl", rows)
    task = get_task("math", path=str(file))
    train, test = task.problems(split="train"), task.problems(split="test")
    assert len(train) + len(test) == 100 and 3 <= len(test) <= 25
    assert not {p.question for p in train} & {p.question for p in test}  # never the training file
    assert train[0].question == "0+1" and train[0].rationale == "0 plus one"  # 'problem' before 'question'
    assert task.problems(2) == train[:2] and task.verify("1.0", "1")
    wider = get_task("math", path=str(file), eval_fraction=0.5)
    assert len(wider.problems(split="test")) > len(test)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "m.parquet"))
    assert get_task("math", path=str(tmp_path / "m.parquet")).problems(split="test") == test


def test_math_folder_uses_its_test_file_without_training_rows(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"question": f"{i}+1", "answer": i + 1} for i in range(10)])
    write_jsonl(folder / "test.jsonl", [{"question": f"{i}+1", "answer": i + 1} for i in range(8, 14)])
    task = get_task("math", path=str(folder))
    with pytest.warns(UserWarning, match="2 of the 6 test rows are also training rows"):
        test = task.problems(split="test")
    assert [p.question for p in test] == [f"{i}+1" for i in range(10, 14)]
    assert len(task.problems(split="train")) == 10 and len(task.data_files()) == 2
    write_jsonl(tmp_path / "bad.jsonl", [{"q": "1+1", "answer": 2}])
    with pytest.raises(UserError, match="no prompt column"):
        get_task("math", path=str(tmp_path / "bad.jsonl")).problems()
