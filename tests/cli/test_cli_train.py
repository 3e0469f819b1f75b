"""Training commands through the CLI: configs from files and flags, SFT (prompt/completion and
chat messages, built-in and Hugging Face models), RL on an HF model, clear errors.

Run: pytest tests/cli/test_cli_train.py"""

import json

import pytest
import torch

from reasonlab.cli import main
from reasonlab.config import build_config
from reasonlab.errors import UserError
from reasonlab.model import load_model, load_train_config
from reasonlab.train.sft import SFTConfig
from tests.model.test_model import make_tiny_hf


def test_config_file_then_flags(tmp_path):
    (tmp_path / "c.toml").write_text('steps = 7\nlr = 0.01\ndata = "x.jsonl"\n')
    import argparse

    from reasonlab.config import add_config_args

    parser = argparse.ArgumentParser()
    add_config_args(parser, SFTConfig)
    cfg = build_config(SFTConfig, parser.parse_args(["--config", str(tmp_path / "c.toml"), "--steps", "9"]))
    assert (cfg.steps, cfg.lr, cfg.data) == (9, 0.01, "x.jsonl")  # the flag wins over the file
    (tmp_path / "bad.toml").write_text("stepz = 1\n")
    with pytest.raises(UserError, match="unknown option.*stepz"):
        build_config(SFTConfig, file=tmp_path / "bad.toml")
    (tmp_path / "bad.json").write_text('{"steps": "many"}')
    with pytest.raises(UserError, match="'steps' must be int"):
        build_config(SFTConfig, file=tmp_path / "bad.json")
    with pytest.raises(UserError, match="--steps must be >= 1, got 0"):
        build_config(SFTConfig, steps=0)


def test_sft_on_prompt_completion_saves_config_beside_the_checkpoint(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"{i}+1\n", "completion": f"<think></think><answer>{i + 1}</answer>"})
            + "\n"
            for i in range(20)
        )
    )
    out = tmp_path / "ck"
    assert (
        main(
            [
                "sft",
                "--data",
                str(data),
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--out",
                str(out),
                "--eval-data",
                str(data),
                "--eval-every",
                "2",
            ]
        )
        == 0
    )
    model, _ = load_model(out)
    assert load_train_config(out)["steps"] == 3 and model.kind == "builtin"
    assert "eval_loss" in capsys.readouterr().out


def test_sft_errors_are_one_line(tmp_path, capsys):
    assert main(["sft", "--out", str(tmp_path / "x")]) == 2
    assert "--data is required" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n')
    assert main(["sft", "--data", str(bad)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert main(["sft", "--data", str(bad), "--lr", "-1"]) == 2
    assert "lr must be > 0" in capsys.readouterr().err
    assert main(["sft", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "y")]) == 2
    out = capsys.readouterr()
    assert (
        "missing.jsonl' not found" in out.err and "0/" not in out.out
    )  # no progress bar for a run that never started


def test_sft_and_rl_on_a_tiny_hugging_face_model(tmp_path, capsys):
    make_tiny_hf(tmp_path / "hf")
    data = tmp_path / "chat.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"{i}+1"},
                        {"role": "assistant", "content": f"<think></think><answer>{i + 1}</answer>"},
                    ]
                }
            )
            + "\n"
            for i in range(8)
        )
    )
    assert (
        main(
            [
                "sft",
                "--model",
                str(tmp_path / "hf"),
                "--data",
                str(data),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--out",
                str(tmp_path / "sft"),
            ]
        )
        == 0
    )
    model, tok = load_model(tmp_path / "sft")
    assert model.kind == "hf"
    assert (
        main(
            [
                "rl",
                "--model",
                str(tmp_path / "sft"),
                "--task",
                "arithmetic",
                "--task-arg",
                "digits=1",
                "--steps",
                "1",
                "--prompts-per-step",
                "2",
                "--group-size",
                "2",
                "--max-new-tokens",
                "8",
                "--eval-every",
                "0",
                "--style",
                "chat",
                "--out",
                str(tmp_path / "rl"),
            ]
        )
        == 0
    )
    assert "no held-out evaluation" in capsys.readouterr().out  # not "accuracy nan%"
    assert json.loads((tmp_path / "rl" / "run.json").read_text())["config"]["style"] == "chat"
    assert (tmp_path / "rl" / "metrics.jsonl").is_file() and (
        tmp_path / "rl" / "model" / "config.json"
    ).is_file()
    assert main(["report", str(tmp_path / "rl")]) == 0  # an rl folder gets its own report
    assert "<td>Steps run</td><td>1</td>" in (tmp_path / "rl" / "report.html").read_text()
    assert main(["rl", "--model", str(tmp_path / "sft"), "--task", "arithmetic", "--group-size", "1"]) == 2


def test_generate_and_pretrain_commands(tmp_path, capsys):
    out = tmp_path / "base"
    assert (
        main(
            [
                "pretrain",
                "--task",
                "chain",
                "--task-arg",
                "length=2",
                "--steps",
                "5",
                "--batch-size",
                "8",
                "--corpus-size",
                "100",
                "--eval-every",
                "5",
                "--check-problems",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "trigger accuracy" in capsys.readouterr().out
    assert (
        main(
            [
                "generate",
                "--model",
                str(out),
                "--task",
                "chain",
                "--task-arg",
                "length=2",
                "--problems",
                "2",
                "--n",
                "2",
                "--think-budget",
                "3",
                "--max-new-tokens",
                "16",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.count("[") >= 4 and "4 completions" in printed


def test_eval_and_faithfulness_commands(tmp_path, capsys):
    out = tmp_path / "base"
    assert (
        main(
            [
                "pretrain",
                "--task",
                "chain",
                "--task-arg",
                "length=2",
                "--steps",
                "3",
                "--batch-size",
                "8",
                "--corpus-size",
                "100",
                "--eval-every",
                "0",
                "--check-problems",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(out),
                "--task",
                "chain",
                "--task-arg",
                "length=2",
                "--problems",
                "6",
                "--k",
                "3",
                "--budgets",
                "0,4",
                "--think-for",
                "4,8",
                "--max-new-tokens",
                "24",
                "--output",
                str(result),
            ]
        )
        == 0
    )
    first = capsys.readouterr()
    assert "difficulty 1 (6): accuracy, thinking tokens" in first.out  # a chain of 2 variables: one hop
    assert "tokens an answer: prompt + thinking + answer" in first.out and "FLOPs an answer" in first.out
    assert "think for 8: tokens, |n - N| / N, accuracy" in first.out
    assert "was trained on" not in first.err  # the task it was trained on: no note
    assert (
        "budget 4: thinking tokens, s a problem" in first.out and "budget 0: accuracy / format" in first.out
    )
    assert load_train_config(out)["task"] == {
        "name": "chain",
        "options": {"length": 2, "max_value": 20, "min_length": None},
    }  # defaults too
    # Evaluated on other task options (chain's default length 5): it runs, with a note naming them.
    assert (
        main(["eval", "--model", str(out), "--task", "chain", "--problems", "2", "--max-new-tokens", "8"])
        == 0
    )
    assert "was trained on chain with length=2 (this run 5)" in capsys.readouterr().err
    assert (
        main(
            ["eval", "--model", str(out), "--task", "arithmetic", "--problems", "2", "--max-new-tokens", "8"]
        )
        == 0
    )
    assert "was trained on task 'chain', this run 'arithmetic'" in capsys.readouterr().err
    # Without --task: the task and options the checkpoint records, --task-arg on top.
    inherited = tmp_path / "inherited.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(out),
                "--problems",
                "2",
                "--max-new-tokens",
                "8",
                "--output",
                str(inherited),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "task: chain (length=2, max_value=20, min_length=None), the one" in err and "note:" not in err
    assert json.loads(inherited.read_text())["config"]["task"] == "chain"
    assert (
        main(
            [
                "generate",
                "--model",
                str(out),
                "--task-arg",
                "max_value=9",
                "--problems",
                "1",
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    assert "task: chain (length=2, max_value=9, min_length=None)" in capsys.readouterr().err
    from reasonlab.model import new_builtin, save_checkpoint

    bare = tmp_path / "bare"  # a checkpoint that records no task (or a Hugging Face folder)
    save_checkpoint(bare, *new_builtin())
    assert main(["eval", "--model", str(bare), "--problems", "2"]) == 2
    assert f"--task is required: {bare} records no task it was trained on" in capsys.readouterr().err
    data = json.loads(result.read_text())
    metrics = data["results"]["chain"]
    for key in (
        "accuracy",
        "format_rate",
        "mean_think_tokens",
        "truncation_rate",
        "tokens_per_s",
        "pass@1",
        "pass@3",
        "maj@3",
    ):
        assert key in metrics, key
    assert metrics["pass@1"] <= metrics["pass@3"]
    assert metrics["mean_prompt_tokens"] > 0 and 0 < metrics["mean_completion_tokens"] <= 24
    from reasonlab import compute

    cost, tokens = (
        compute.model_cost(load_model(out)[0]),
        metrics["mean_prompt_tokens"] + metrics["mean_completion_tokens"],
    )
    # the mean over answers of 2N·n + attention·n(n+1)/2 is at least its value at the mean n (convex in n)
    assert (
        metrics["flops_per_answer"]
        >= 2 * cost.n_params * tokens + cost.attention * tokens * (tokens + 1) / 2 - 1e-3
    )
    assert metrics["by_difficulty"]["1"]["flops_per_answer"] == pytest.approx(metrics["flops_per_answer"])
    assert [c["budget"] for c in data["budget_curve"]] == [0, 4]
    assert data["budget_curve"][0]["mean_think_tokens"] == 0
    assert all(
        c["tokens_per_s"] > 0 and c["seconds_per_problem"] > 0 and 0 <= c["format_rate"] <= 1
        for c in data["budget_curve"]
    )
    assert [p["target"] for p in data["length_control"]["targets"]] == [4, 8]
    assert data["length_control"]["mean_abs_rel_error"] >= 0
    assert data["results"]["chain"]["by_difficulty"]["1"]["n"] == 6
    assert (tmp_path / "eval.png").stat().st_size > 5000  # the sweep, drawn beside the numbers
    assert main(["eval", "--model", str(out), "--task", "chain", "--budgets", "0,x"]) == 2
    assert "--budgets" in capsys.readouterr().err
    assert main(["eval", "--model", str(out), "--task", "chain", "--budgets", "-4"]) == 2
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--model",
                str(out),
                "--task",
                "chain",
                "--task-arg",
                "length=2",
                "--problems",
                "2",
                "--k",
                "2",
                "--temperature",
                "0",
                "--max-new-tokens",
                "8",
            ]
        )
        == 0
    )
    assert "the 2 samples are all the greedy answer" in capsys.readouterr().err
    assert main(["generate", "--model", str(out), "--task", "chain", "--think-budget", "-3"]) == 2
    assert "--think-budget must be >= 0, got -3" in capsys.readouterr().err
    nested = tmp_path / "new" / "folder" / "f.json"  # --output's folder is made, not a crash at the end
    assert (
        main(
            [
                "faithfulness",
                "--model",
                str(out),
                "--task",
                "chain",
                "--task-arg",
                "length=2",
                "--problems",
                "4",
                "--output",
                str(nested),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "hint followed" in printed
    for name, row in json.loads(nested.read_text())["by_style"].items():  # a 0/0 rate reads "—", not 0%
        line = next(line for line in printed.splitlines() if line.strip().startswith(name + " "))
        assert ("admits      —" in line) == (row["followed"] == 0) and (row["admit_rate"] is None) == (
            row["followed"] == 0
        )
    assert main(["faithfulness", "--model", str(out), "--task", "chain", "--problems", "0"]) == 2
    assert "--problems must be >= 1" in capsys.readouterr().err  # was a ZeroDivisionError traceback
    # An --output that cannot be written is refused before the model loads (the model here is missing).
    assert (
        main(["eval", "--model", str(tmp_path / "missing"), "--task", "chain", "--output", str(tmp_path)])
        == 2
    )
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "missing"),
                "--task",
                "chain",
                "--output",
                str(tmp_path / "file" / "x.json"),
            ]
        )
        == 2
    )
    assert "cannot create the folder for --output" in capsys.readouterr().err


def test_eval_output_keeps_the_completions_of_an_instruct_model(tmp_path, capsys):
    """`eval --output` on a tiny chat model that never writes the template: the JSON shows each
    kept completion, the chat prompt it answered and why its format broke."""
    make_tiny_hf(tmp_path / "hf")
    out = tmp_path / "e.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "hf"),
                "--task",
                "arithmetic",
                "--task-arg",
                "digits=1",
                "--style",
                "chat",
                "--problems",
                "3",
                "--keep-completions",
                "2",
                "--max-new-tokens",
                "4",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert f"wrote {out}: the metrics and 2 of the 3 greedy completions" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["results"]["arithmetic"]["format_rate"] == 0 and len(data["completions"]) == 2
    for row in data["completions"]:
        assert row["prompt"].startswith("[system]") and row["prompt"].endswith(
            f"[user]{row['question']}\n[assistant]"
        )
        assert isinstance(row["completion"], str) and row["parsed_answer"] is None and row["format_errors"]
        assert row["correct"] is False and row["format_ok"] is False and row["answer"].lstrip("-").isdigit()
        assert isinstance(row["think_tokens"], int)
    assert (
        main(["eval", "--model", str(tmp_path / "hf"), "--task", "arithmetic", "--keep-completions", "-1"])
        == 2
    )
    assert "--keep-completions must be >= 0" in capsys.readouterr().err


GSM8K = __import__("pathlib").Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gsm8k"


@pytest.mark.skipif(not GSM8K.exists(), reason="../shared/data/gsm8k not present")
def test_gsm8k_end_to_end_on_a_tiny_hf_model(tmp_path):
    """Every piece runs on the real data: prompts, sampling, numeric verification, RL steps
    (accuracy is ~0 for a random 2-layer model; the point is that nothing breaks)."""
    make_tiny_hf(tmp_path / "hf")
    task_args = ["--task", "gsm8k", "--task-arg", f"path={GSM8K}"]
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "hf"),
                *task_args,
                "--problems",
                "3",
                "--k",
                "2",
                "--max-new-tokens",
                "8",
                "--output",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "e.json").read_text())["results"]["gsm8k"]["accuracy"] == 0.0
    assert (
        main(
            [
                "rl",
                "--model",
                str(tmp_path / "hf"),
                *task_args,
                "--steps",
                "2",
                "--prompts-per-step",
                "2",
                "--group-size",
                "2",
                "--max-new-tokens",
                "8",
                "--eval-every",
                "0",
                "--out",
                str(tmp_path / "rl"),
            ]
        )
        == 0
    )
    assert len((tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()) == 2


def test_lora_sft_and_rl_train_adapters_only_and_save_merged(tmp_path):
    """peft LoRA on a tiny HF model: only the target projections change, the saved checkpoint is a
    plain HF model (adapters merged), and rl with beta > 0 uses the adapter-free model as its
    reference instead of a copy."""
    from safetensors.torch import load_file

    make_tiny_hf(tmp_path / "hf")
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"{i}+1=", "completion": f"<think></think><answer>{i + 1}</answer>"}) + "\n"
            for i in range(16)
        )
    )
    assert (
        main(
            [
                "sft",
                "--model",
                str(tmp_path / "hf"),
                "--data",
                str(data),
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--lr",
                "1e-2",
                "--lora-rank",
                "4",
                "--lora-targets",
                "q_proj,v_proj",
                "--out",
                str(tmp_path / "sft"),
            ]
        )
        == 0
    )
    before, after = (
        load_file(tmp_path / "hf" / "model.safetensors"),
        load_file(tmp_path / "sft" / "model" / "model.safetensors"),
    )
    assert set(after) == set(before)  # merged: no lora_A/lora_B keys left
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed
    model, _ = load_model(tmp_path / "sft")
    assert model.kind == "hf"

    assert (
        main(
            [
                "rl",
                "--model",
                str(tmp_path / "hf"),
                "--task",
                "arithmetic",
                "--task-arg",
                "digits=1",
                "--steps",
                "4",
                "--prompts-per-step",
                "2",
                "--group-size",
                "4",
                "--max-new-tokens",
                "8",
                "--length-target",
                "4",
                "--length-alpha",
                "0.1",
                "--beta",
                "0.1",
                "--lr",
                "1e-2",
                "--eval-every",
                "0",
                "--lora-rank",
                "4",
                "--out",
                str(tmp_path / "rl"),
            ]
        )
        == 0
    )
    steps = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    # the reference is the start: no KL before the first update, some once a step had a reward spread
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6) and any(s["kl"] > 0 for s in steps[1:])
    rl = load_file(tmp_path / "rl" / "model" / "model.safetensors")
    assert set(rl) == set(before) and torch.equal(
        rl["model.embed_tokens.weight"], before["model.embed_tokens.weight"]
    )
    assert (
        main(
            [
                "sft",
                "--model",
                str(tmp_path / "hf"),
                "--data",
                str(data),
                "--lora-rank",
                "4",
                "--lora-targets",
                "nope_proj",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


def test_sft_says_when_examples_are_cut_to_max_seq_len(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    rows = [
        {"prompt": "abcdefgh", "completion": "xyz"},
        {"prompt": "a", "completion": "bcdefghijkl"},
        {"prompt": "a", "completion": "b"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (
        main(["sft", "--data", str(data), "--max-seq-len", "6", "--steps", "1", "--out", str(tmp_path / "a")])
        == 0
    )
    assert "2 of 3 examples" in capsys.readouterr().err  # one cut short, one down to its prompt
    long_prompts = tmp_path / "long.jsonl"
    long_prompts.write_text(
        "".join(json.dumps({"prompt": "abcdefgh", "completion": c}) + "\n" for c in ("x", "yz"))
    )
    assert (
        main(
            [
                "sft",
                "--data",
                str(long_prompts),
                "--max-seq-len",
                "4",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert "no completion token left to train on" in capsys.readouterr().err


def test_rationales_says_when_a_round_keeps_nothing(tmp_path, capsys):
    """An untrained model keeps no sample: the round fine-tunes nothing, and the run says so."""
    from reasonlab.model import new_builtin, save_checkpoint

    model, tok = new_builtin(seed=0)
    save_checkpoint(tmp_path / "raw", model, tok)
    assert (
        main(
            [
                "rationales",
                "--model",
                str(tmp_path / "raw"),
                "--task",
                "arithmetic",
                "--task-arg",
                "digits=1",
                "--rounds",
                "1",
                "--problems",
                "2",
                "--samples",
                "1",
                "--steps",
                "1",
                "--eval-problems",
                "2",
                "--max-new-tokens",
                "8",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "round 1 kept none of its 2 samples, so the model was not fine-tuned" in err
