"""Hostile values and files met by the CLI: a temperature so small it overflows, a full disk, a
truncated GGUF, a umask, a touched model file, runaway schedule lengths. Every refusal is one line
on stderr with exit code 2, before any work. Run: pytest tests/cli/test_hostile_files.py"""

import pytest

from reasonlab.cli import main
from reasonlab.model import GPTConfig, new_builtin, save_checkpoint

TINY = GPTConfig(n_layer=1, n_head=2, n_kv_head=2, d_model=16, max_seq_len=64)


@pytest.fixture
def checkpoint(tmp_path):
    model, tok = new_builtin(TINY, seed=0)
    save_checkpoint(
        tmp_path / "model", model, tok, {"task": {"name": "arithmetic", "options": {"digits": 1}}}
    )
    return tmp_path / "model"


def test_generate_at_a_tiny_temperature_is_greedy(checkpoint, capsys):
    """`generate --temperature 1e-40` ended in 'index 512 is out of bounds', exit 1."""
    args = [
        "generate",
        "--model",
        str(checkpoint),
        "--task",
        "arithmetic",
        "--problems",
        "2",
        "--max-new-tokens",
        "8",
        "--seed",
        "1",
    ]
    assert main(args + ["--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert main(args + ["--temperature", "1e-40"]) == 0
    assert capsys.readouterr().out == greedy


def test_rl_refuses_a_temperature_below_its_floor_before_any_work(checkpoint, tmp_path, capsys):
    """rl at 1e-40 crashed in the sampler, then told the user to rerun with --resume: it is
    refused up front (its samples would be greedy and its gradients scaled by 1 / T)."""
    out = tmp_path / "rl"
    assert (
        main(
            [
                "rl",
                "--model",
                str(checkpoint),
                "--task",
                "arithmetic",
                "--steps",
                "1",
                "--prompts-per-step",
                "2",
                "--group-size",
                "2",
                "--max-new-tokens",
                "4",
                "--eval-every",
                "0",
                "--temperature",
                "1e-40",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "--temperature must be >= 0.001, got 1e-40" in err and "--resume" not in err
    )
    assert not out.exists()


def test_tasks_prints_whole_first_sentences_wrapped(monkeypatch, capsys):
    """`reasonlab tasks` printed each docstring's first line: chain's stopped at "; each"."""
    from reasonlab.tasks import base

    class Long(base.Task):
        """A task whose first sentence runs over three lines of its docstring, long enough to need
        wrapping at eighty columns, e.g. one that names `options` in words and keeps going on
        for a while. Its second sentence is not printed.

        Nor is this paragraph."""

    monkeypatch.setitem(base._REGISTRY, "zz_long", Long)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 80
    described, options = {}, False
    for line in lines:
        if not line.startswith(" "):
            name, _, text = line.partition(" ")
            described[name], options = text.strip(), False
        elif line.strip().startswith("--task-arg"):
            options = True  # the options' lines, wrapped too, close a task's entry
        elif not options:
            described[name] += " " + line.strip()
    assert described["chain"].endswith("each after the first is the previous one plus or minus 1..9.")
    assert described["zz_long"] == (
        "A task whose first sentence runs over three lines of its docstring, long enough to "
        "need wrapping at eighty columns, e.g. one that names `options` in words and "
        "keeps going on for a while."
    )
    assert all(text.endswith(".") for text in described.values())


@pytest.mark.parametrize("flag", ["--warmup-steps", "--steps", "--eval-every", "--save-every"])
def test_runaway_step_counts_are_refused_before_any_work(checkpoint, tmp_path, capsys, flag):
    """`--warmup-steps 10**21` was accepted: a schedule no run reaches the end of."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1\\n", "completion": "<think></think><answer>2</answer>"}\n')
    for argv in (["sft", "--data", str(data)], ["rl", "--model", str(checkpoint), "--task", "arithmetic"]):
        out = tmp_path / argv[0]
        assert main(argv + ["--out", str(out), flag, str(10**21)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{flag} must be <= " in err and not out.exists()
