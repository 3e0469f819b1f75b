"""Bad input through the CLI, one test per defect: out-of-range or non-finite options refused before
any work, corrupt model files, a training run that diverges, a resume on shrunken data, characters
the tokenizer cannot read, folders given as files, `--config` for every option, `score` on a large
file. Every one: exit code 2, one line on stderr, no traceback.

Run: pytest tests/cli/test_cli_errors.py"""

import json
import os
import shutil
import tracemalloc

import pytest

from reasonlab.cli import main
from reasonlab.evaluate import score_file
from reasonlab.model import GPTConfig, new_builtin, save_checkpoint
from reasonlab.tasks import get_task

TINY = GPTConfig(n_layer=1, n_head=2, n_kv_head=2, d_model=16, max_seq_len=64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny built-in checkpoint trained on nothing, recording arithmetic with 1 digit."""
    model, tok = new_builtin(TINY, seed=0)
    path = tmp_path_factory.mktemp("ck") / "model"
    save_checkpoint(path, model, tok, {"task": {"name": "arithmetic", "options": {"digits": 1}}})
    return path


def one_error_line(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert all(n in err for n in needles), err
    return err


def sft_data(path, rows=8, text="1+1"):
    path.write_text(
        "".join(
            json.dumps({"prompt": f"{text}\n", "completion": f"<answer>{i}</answer>"}) + "\n"
            for i in range(rows)
        )
    )
    return path


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["rl", "--temperature", "nan"], "--temperature"),
        (["rl", "--temperature", "0"], "--temperature"),
        (["rl", "--beta", "-1"], "--beta"),
        (["rl", "--eps-low", "-1"], "--eps-low"),
        (["rl", "--lr", "0"], "--lr"),
        (["rl", "--format-points", "nan"], "--format-points"),
        (["rl", "--max-seconds", "inf"], "--max-seconds"),
        (["pretrain", "--task", "chain", "--n-layer", "0"], "--n-layer"),
        (["pretrain", "--task", "chain", "--worked-fraction", "1.5"], "--worked-fraction"),
        (["pretrain", "--task", "chain", "--d-model", "-8"], "--d-model"),
        (["pretrain", "--task", "chain", "--corpus-size", "0"], "--corpus-size"),
        (["rationales", "--judge-threshold", "11"], "--judge-threshold"),
        (["eval", "--budgets", ""], "--budgets"),
        (["eval", "--temperature", "nan"], "--temperature"),
        (["eval", "--temperature", "-1"], "--temperature"),
        (["generate", "--temperature", "nan"], "--temperature"),
        (["generate", "--top-p", "0"], "--top-p"),
        (["sft", "--lr", "inf"], "--lr"),
        (["sft", "--seed", "-1"], "--seed"),
        (["demo", "--threads", "-1"], "--threads"),
    ],
)
def test_options_out_of_range_are_refused_before_any_work(argv, flag, tmp_path, capsys):
    before = set(tmp_path.iterdir())
    # a model that does not exist: the option is refused before anything loads
    extra = [] if argv[0] in ("pretrain", "demo") else ["--model", str(tmp_path / "nothing")]
    out = (
        ["--out", str(tmp_path / "out")] if argv[0] in ("pretrain", "rl", "rationales", "sft", "demo") else []
    )
    assert main(argv + extra + out) == 2
    one_error_line(capsys, flag)
    assert set(tmp_path.iterdir()) == before


def test_eval_budgets_that_are_not_integers(tmp_path, capsys):
    assert main(["eval", "--budgets", "4,,8", "--model", str(tmp_path)]) == 2
    one_error_line(capsys, "--budgets must be comma-separated integers")


def test_arithmetic_refuses_operands_too_long_to_verify(capsys):
    with pytest.raises(ValueError, match="digits \\+ digits_b must be <= 200"):
        get_task("arithmetic", digits=150)
    task = get_task("arithmetic", op="*", digits=100)  # 200-digit products still verify
    import random

    problem = task.sample(random.Random(0))
    assert task.verify(problem.answer, problem.answer)


def test_sft_that_diverges_stops_with_one_line(tmp_path, capsys):
    data = sft_data(tmp_path / "d.jsonl")
    assert (
        main(
            [
                "sft",
                "--data",
                str(data),
                "--lr",
                "1e30",
                "--steps",
                "12",
                "--batch-size",
                "4",
                "--warmup-steps",
                "0",
                "--eval-every",
                "0",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    one_error_line(capsys, "non-finite losses or gradients in a row")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def _corrupt(src, dst, how: str):
    shutil.copytree(src, dst)
    weights, config = dst / "model.safetensors", dst / "config.json"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:200])
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "random":
        weights.write_bytes(os.urandom(4096))
    elif how in ("wrong type", "wrong shape"):
        meta = json.loads(config.read_text())
        meta["reasonlab"]["gpt"].update(n_layer="two" if how == "wrong type" else 2)
        config.write_text(json.dumps(meta))
    elif how == "config list":
        config.write_text("[1, 2]")
    elif how == "train config list":
        (dst / "train_config.json").write_text("[1, 2]")
    return dst


HOW = ["truncated", "empty", "random", "wrong type", "wrong shape", "config list", "train config list"]


def command_using(model, tmp_path) -> list[list[str]]:
    task = ["--task", "arithmetic", "--task-arg", "digits=1"]
    data = str(sft_data(tmp_path / "d.jsonl"))
    return [
        ["generate", "--model", model, "--problems", "1", "--max-new-tokens", "2"],
        ["eval", "--model", model, *task, "--problems", "1", "--max-new-tokens", "2"],
        ["serve", "--model", model, "--port", "0"],
        ["rl", "--model", model, *task, "--steps", "1", "--out", str(tmp_path / "rl")],
        ["sft", "--model", model, "--data", data, "--steps", "1", "--out", str(tmp_path / "sft")],
        ["faithfulness", "--model", model, *task, "--problems", "1"],
        ["rationales", "--model", model, "--teacher", model, *task, "--out", str(tmp_path / "ra")],
    ]


@pytest.mark.parametrize("how", HOW)
def test_a_corrupt_model_folder_is_one_line_for_every_command(how, checkpoint, tmp_path, capsys):
    bad = _corrupt(checkpoint, tmp_path / "bad", how)
    for argv in command_using(str(bad), tmp_path):
        if how == "train config list" and argv[0] in ("serve", "sft"):
            continue  # they read no train_config.json: serve would serve
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and "error:" in err and str(bad) in err, (argv, err)
        assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_sft_resume_on_shrunken_data_is_one_line(tmp_path, capsys):
    data = sft_data(tmp_path / "d.jsonl", rows=40)
    common = ["--batch-size", "4", "--eval-every", "0", "--save-every", "2", "--out", str(tmp_path / "out")]
    assert main(["sft", "--data", str(data), "--steps", "2", *common]) == 0
    sft_data(data, rows=3)
    assert main(["sft", "--data", str(data), "--steps", "4", "--resume", *common]) == 2
    one_error_line(capsys, "--resume", "(now 3)")  # the saved run had 40 examples


def test_characters_the_built_in_tokenizer_cannot_read_are_refused(tmp_path, capsys):
    data = sft_data(tmp_path / "d.jsonl", rows=3)
    with open(data, "a") as f:
        f.write(json.dumps({"prompt": "2+2\n", "completion": "<answer>4 \u00e9</answer>"}) + "\n")
    assert main(["sft", "--data", str(data), "--steps", "1", "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "d.jsonl:4", "'\u00e9'", "U+00E9")
    _, tok = new_builtin()
    assert tok.unknown_characters("ab\n?<>\t\u00e9") == {"\t", "\u00e9"}


def test_a_folder_given_as_a_file_says_so(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    for argv in (
        ["score", "--task", "arithmetic", str(folder)],
        ["sft", "--data", str(folder)],
        ["generate", "--config", str(folder)],
        ["serve", "--config", str(folder)],
    ):
        assert main(argv) == 2
        one_error_line(capsys, "is a folder")


def test_config_file_sets_every_option_and_the_command_line_wins(checkpoint, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(
        f'model = "{checkpoint}"\ntask = "arithmetic"\ntask_arg = {{digits = 1}}\ndevice = "nope"\n'
        "problems = 1\nmax_new_tokens = 2\n"
    )
    assert main(["generate", "--config", str(config)]) == 2
    one_error_line(capsys, "--device 'nope'")  # the file's device was taken
    assert main(["generate", "--config", str(config), "--device", "cpu"]) == 0  # the flag wins
    assert "1 completions" in capsys.readouterr().out
    faith = tmp_path / "faith.json"
    faith.write_text(
        json.dumps(
            {
                "model": str(checkpoint),
                "task_arg": ["digits=1"],
                "problems": 2,
                "device": "cpu",
                "output": str(tmp_path / "f.json"),
            }
        )
    )
    assert main(["faithfulness", "--config", str(faith)]) == 0 and (tmp_path / "f.json").is_file()
    capsys.readouterr()
    serve = tmp_path / "serve.toml"
    for text, needle in (
        ('port = "x"\n', "option 'port' must be int"),
        ("colour = 1\n", "unknown option(s) colour"),
    ):
        serve.write_text(text)
        assert main(["serve", "--config", str(serve)]) == 2
        one_error_line(capsys, needle)


def test_score_streams_a_large_file(tmp_path):
    row = json.dumps({"completion": "<think>x</think><answer>12</answer>", "answer": "12", "pad": "p" * 200})
    task = get_task("arithmetic")

    def peak(n: int) -> int:
        path = tmp_path / f"in{n}.jsonl"
        path.write_text((row + "\n") * n)
        tracemalloc.start()
        summary = score_file(task, path, tmp_path / f"out{n}.jsonl")
        size = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert summary["count"] == n and summary["accuracy"] == 1.0
        assert len((tmp_path / f"out{n}.jsonl").read_text().splitlines()) == n
        return size

    small, large = peak(500), peak(5000)
    assert large < 2 * small + 200_000  # ten times the rows (1.2 MB more input), about the same memory
