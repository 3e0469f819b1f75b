"""Logs a TRL user can read: one progress line a step when the output is redirected (with an
ETA), TRL's metric names beside ours in metrics.jsonl, and samples.jsonl rows with their prompt,
reward parts and verdict. Under pytest's capsys stdout is not a terminal: what a file or a pipe gets.

Run: pytest tests/run/test_logs.py"""

import json
import re

import pytest

from reasonlab.cli import main
from reasonlab.console import TrainProgress
from reasonlab.model import GPTConfig, new_builtin, save_checkpoint
from reasonlab.rl import GRPOConfig, train_grpo
from tests.conftest import constant_task
from tests.rl.test_methods import TOK, seven_or_eight

CLOCK = r"\d+:\d\d:\d\d"
LINE = re.compile(rf"^(\w+) step=(\d+)/(\d+) .*elapsed={CLOCK} eta={CLOCK}$")


def tiny_checkpoint(path):
    model, tok = new_builtin(GPTConfig(n_layer=1, n_head=2, n_kv_head=1, d_model=16, max_seq_len=96), seed=0)
    save_checkpoint(path, model, tok)
    return str(path)


def step_lines(out: str, what: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"{what} step=")]


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_redirected_rl_prints_a_line_a_step_and_logs_trl_names(tmp_path, capsys):
    out = tmp_path / "rl"
    assert (
        main(
            [
                "rl",
                "--model",
                tiny_checkpoint(tmp_path / "m"),
                "--task",
                "arithmetic",
                "--task-arg",
                "digits=1",
                "--steps",
                "3",
                "--prompts-per-step",
                "2",
                "--group-size",
                "3",
                "--max-new-tokens",
                "8",
                "--eval-every",
                "2",
                "--eval-problems",
                "2",
                "--updates",
                "2",
                "--out",
                str(out),
                "--log-completions",
                "4",
            ]
        )
        == 0
    )
    lines = step_lines(capsys.readouterr().out, "rl")
    assert [LINE.match(line).group(2, 3) for line in lines] == [("1", "3"), ("2", "3"), ("3", "3")]
    for line in lines:
        for field in ("loss=", "reward=", "format=", "lr=", "steps/s="):
            assert field in line, (field, line)
    assert (
        "accuracy=" not in lines[0] and "accuracy=" in lines[1] and "accuracy=" in lines[2]
    )  # evaluated at 2, 3
    assert lines[-1].endswith("eta=0:00:00")
    steps = [m for m in rows_of(out / "metrics.jsonl") if m["step"] >= 1]
    assert len(steps) == 3
    for m in steps:  # TRL's name beside ours, the same value
        assert m["learning_rate"] == m["lr"] and m["reward"] == m["reward/sampled_mean"]
        assert m["reward_std"] == m["reward/sampled_std"] and m["clip_ratio/region_mean"] == m["clip_frac"]
        assert m["rewards/reasoning/mean"] == m["reward/reasoning"]
        assert m["rewards/reasoning/std"] == m["reward/reasoning_std"]
        assert m["completions/min_length"] <= m["completions/mean_length"] <= m["completions/max_length"] <= 8
        assert 0 <= m["completions/clipped_ratio"] <= 1
    samples = rows_of(out / "samples.jsonl")
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4 + [
        3
    ] * 4  # 4 a step: group 0's 3, then group 1's
    assert [s["group"] for s in samples[:4]] == [0, 0, 0, 1]
    for s in samples:
        assert re.fullmatch(r"\d\+\d\nLet's think step by step\.\n", s["prompt"])
        assert isinstance(s["completion"], str)
        assert s["verdict"] == (
            "broken format" if not s["format_ok"] else "correct" if s["reward"]["correct"] else "wrong"
        )
        assert set(s["reward"]) == {"format", "correct", "total"}
        assert s["reward"]["total"] == s["reward"]["format"] + s["reward"]["correct"]


def test_samples_carry_reward_parts_and_verdicts(tmp_path):
    """A model answering 7 (mostly) or 8 on a task whose answer is 7, with length control and dynamic
    sampling (flat groups dropped, more drawn: a step makes several sampling calls): each row's
    verdict and reward parts are its own completion's; log_completions 0 writes none."""
    model = seven_or_eight(3.0)
    cfg = GRPOConfig(
        steps=2,
        prompts_per_step=3,
        group_size=3,
        max_new_tokens=10,
        eval_every=0,
        lr=1e-3,
        seed=1,
        length_target=3,
        dynamic_sampling=True,
        log_completions=6,
    )
    train_grpo(model, TOK, constant_task("7"), cfg, out_dir=tmp_path)
    metrics = rows_of(tmp_path / "metrics.jsonl")
    assert any(m["sampling/groups_drawn"] > 3 for m in metrics)  # more than one sampling call a step
    samples = rows_of(tmp_path / "samples.jsonl")
    assert [(s["step"], s["group"]) for s in samples] == [
        (step, g) for step in (1, 2) for g in (0, 1) for _ in range(3)
    ]
    for s in samples:
        r = s["reward"]
        assert s["verdict"] == ("correct" if s["completion"].endswith("<answer>7</answer>") else "wrong")
        assert r["format"] == 2.0 and r["correct"] == (1.0 if s["verdict"] == "correct" else 0.0)
        assert r["length_target"] == pytest.approx(-1e-3 * abs(1 - 3))  # thinks one token ("a"), asked for 3
        assert r["total"] == pytest.approx(r["format"] + r["correct"] + r["length_target"])
        assert s["completion"] in ("<think>a</think><answer>7</answer>", "<think>a</think><answer>8</answer>")
        assert s["prompt"].startswith("q") and "(think for 3 tokens)" in s["prompt"]
    for step in (1, 2):  # a kept group is mixed: both verdicts in each
        for g in (0, 1):
            assert {s["verdict"] for s in samples if (s["step"], s["group"]) == (step, g)} == {
                "correct",
                "wrong",
            }
    assert all(m["rewards/length_target/mean"] == m["reward/length_target"] for m in metrics)
    cfg.log_completions, cfg.steps = 0, 1
    train_grpo(model, TOK, constant_task("7"), cfg, out_dir=tmp_path / "none")
    assert not (tmp_path / "none" / "samples.jsonl").exists()  # removed at the start, none written


def test_redirected_sft_prints_a_line_a_step_and_logs_trl_names(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"{i}+1\n", "completion": f"<think></think><answer>{i + 1}</answer>"})
            + "\n"
            for i in range(10)
        )
    )
    out = tmp_path / "sft"
    assert (
        main(
            [
                "sft",
                "--model",
                tiny_checkpoint(tmp_path / "m"),
                "--data",
                str(data),
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--eval-data",
                str(data),
                "--eval-every",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    lines = step_lines(printed, "sft")
    assert [LINE.match(line).group(2) for line in lines] == ["1", "2", "3"]
    for line in lines:
        for field in ("loss=", "lr=", "tokens/s="):
            assert field in line, (field, line)
    assert "step 2: eval_loss=" in printed  # the evaluation's own line stays
    steps = rows_of(out / "metrics.jsonl")
    assert [m["epoch"] for m in steps] == [
        pytest.approx(0.4 * s) for s in (1, 2, 3)
    ]  # 4 of 10 examples a step
    assert all(m["learning_rate"] == m["lr"] for m in steps)
    tokens = [m["num_tokens"] for m in steps]
    assert 0 < tokens[0] < tokens[1] < tokens[2]  # a running count


def test_long_runs_print_a_line_every_nth_step_and_always_the_last(capsys):
    """1000 steps: a line every 5th step (at most ~200), the first, evaluated and last ones always;
    a run stopped early prints its last step at exit; a new round (Method 1) starts over."""
    with TrainProgress(1000, "pretrain") as bar:
        for step in range(1, 13):
            bar(
                {
                    "step": step,
                    "loss": 1.0,
                    "lr": 1e-3,
                    "seconds": 0.1 * step,
                    **({"trigger_acc": 0.5} if step == 7 else {}),
                }
            )
        for step in (1, 2):
            bar({"step": step, "loss": 1.0, "lr": 1e-3, "seconds": 0.1 * step})
    printed = capsys.readouterr().out
    assert [int(LINE.match(line).group(2)) for line in step_lines(printed, "pretrain")] == [
        1,
        5,
        7,
        10,
        12,
        1,
        2,
    ]
    assert "accuracy=50.0%" in step_lines(printed, "pretrain")[2] and "step 7: trigger_acc=0.5" in printed
    assert "steps/s=10 " in step_lines(printed, "pretrain")[1]  # 4 steps in 0.4 s since the line before
    assert step_lines(printed, "pretrain")[1].endswith("elapsed=0:00:00 eta=0:01:40")  # 995 steps at 0.1 s


def test_a_terminal_bar_shows_an_eta():
    from rich.progress import TimeRemainingColumn

    bar = TrainProgress(10, "rl")
    assert any(isinstance(column, TimeRemainingColumn) for column in bar.progress.columns)


@pytest.mark.parametrize("command", ["pretrain", "sft", "rationales", "rl"])
def test_the_help_states_the_progress_rule(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "every ceil(steps/200)-th step when a run has more than 200 steps" in printed
    assert "always the first, every evaluated and the last step" in printed
