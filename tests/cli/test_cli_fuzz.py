"""A fuzz test of the CLI: seeded random option values (NaN, inf, negative, zero, huge floats, empty
strings, wrong types) and corrupted files (model folders, JSONL, config files) over every command,
each run in-process on a tiny model, asserting:

- never an uncaught exception (a traceback): exit code 0, or 2 with one error line on stderr;
- never exit 0 for an input the option's own limits (its config field's metadata) refuse, nor for
  a non-finite number;
- never a file touched outside the run's output folder (a snapshot of the test's folder before
  and after).

A run the command would accept goes ahead on a tiny budget (1 step, a few tokens); `serve` and
`demo`, which would run for long, are stopped where their work would start. `-m slow` runs a
bigger sample. Run: pytest tests/cli/test_cli_fuzz.py"""

import argparse
import hashlib
import json
import math
import os
import random
import shutil

import pytest

from reasonlab import cli
from reasonlab.config import _limit_error
from reasonlab.model import GPTConfig, new_builtin, save_checkpoint

PATHS = {
    "out",
    "output",
    "model",
    "data",
    "eval_data",
    "teacher",
    "judge",
    "config",
    "host",
    "run_dir",
    "input",
    "gguf",
    "hf",
}
SKIP = {"help", "debug"} | PATHS
FLOATS = ["nan", "inf", "-inf", "-1", "0", "1e300", "1e30", "-0.0", "abc", "", "1e-40", "1e-300", "5e-324"]
INTS = ["-1", "0", "abc", "1.5", "", "nan", "1000000000000", "9" * 30, "1e12"]
STRINGS = ["", "abc", "nan", " "]
TASK_ARGS = ["digits=0", "digits=abc", "nope=1", "noequals", "digits=999", "digits=-3"]


class Started(Exception):
    """Raised where `serve` or `demo` would start their long work: the input was accepted."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_inputs")
    model, tok = new_builtin(GPTConfig(n_layer=1, n_head=2, n_kv_head=2, d_model=16, max_seq_len=64), seed=0)
    save_checkpoint(root / "ck", model, tok, {"task": {"name": "arithmetic", "options": {"digits": 1}}})
    rows = [
        {"prompt": f"{i}+1\n", "completion": f"<think></think><answer>{i + 1}</answer>"} for i in range(6)
    ]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scored = [{"completion": r["completion"], "answer": str(i + 1)} for i, r in enumerate(rows)]
    (root / "score.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scored))
    return root


def base_argv(command: str, inputs, out: str) -> list[str]:
    """Settings that make an accepted run of `command` take about a second."""
    ck, run = str(inputs / "ck"), ["--out", out, "--max-seconds", "5"]
    small = ["--max-new-tokens", "2", "--device", "cpu"]
    return {
        "generate": ["generate", "--model", ck, "--problems", "1", *small],
        "eval": ["eval", "--model", ck, "--problems", "1", *small],
        "faithfulness": ["faithfulness", "--model", ck, "--problems", "1", "--device", "cpu"],
        "serve": ["serve", "--model", ck, "--port", "0", "--device", "cpu"],
        "rl": [
            "rl",
            "--model",
            ck,
            "--steps",
            "1",
            "--prompts-per-step",
            "1",
            "--group-size",
            "2",
            "--eval-every",
            "0",
            *small,
            *run,
        ],
        "sft": [
            "sft",
            "--model",
            ck,
            "--data",
            str(inputs / "sft.jsonl"),
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--eval-every",
            "0",
            "--device",
            "cpu",
            *run,
        ],
        "pretrain": [
            "pretrain",
            "--task",
            "chain",
            "--task-arg",
            "length=2",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--corpus-size",
            "8",
            "--check-problems",
            "1",
            "--n-layer",
            "1",
            "--n-head",
            "2",
            "--d-model",
            "16",
            "--max-seq-len",
            "64",
            "--eval-every",
            "0",
            *small,
            *run,
        ],
        "rationales": [
            "rationales",
            "--model",
            ck,
            "--rounds",
            "1",
            "--problems",
            "2",
            "--samples",
            "1",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--eval-problems",
            "1",
            "--eval-every",
            "0",
            *small,
            *run,
        ],
        "score": [
            "score",
            "--task",
            "arithmetic",
            str(inputs / "score.jsonl"),
            "-o",
            os.path.join(out, "s.jsonl"),
        ],
        "demo": ["demo", "--quick", "--out", out],
        "export": ["export", "--model", ck, "--gguf", os.path.join(out, "m.gguf")],
        "report": ["report", str(inputs)],
        "tasks": ["tasks"],
    }[command]


def options(command: str) -> list[argparse.Action]:
    parser = cli.build_parser().commands[command]
    return [a for a in parser._actions if a.option_strings and a.dest not in SKIP]


def fuzz_value(action: argparse.Action, rng: random.Random) -> list[str]:
    """The flag(s) setting `action` to a random, probably bad, value; now and then through an
    abbreviation of its flag, which must be refused."""
    flag = action.option_strings[-1]
    if rng.random() < 0.1 and len(flag) > 4:
        return [flag[: rng.randrange(3, len(flag))], "1"]
    if action.nargs == 0:  # a switch: on, or (BooleanOptionalAction) off
        return [rng.choice(action.option_strings)]
    if action.dest == "task_arg":
        return [flag, rng.choice(TASK_ARGS)]
    pool = FLOATS if action.type is float else INTS if action.type is int else STRINGS + ["nope"]
    return [flag, rng.choice(pool)]


def must_refuse(command: str, action: argparse.Action, value: str) -> bool:
    """Whether `value` breaks a limit the option states (or is a non-finite number)."""
    if action.type is float:
        try:
            number = float(value)
        except ValueError:
            return True  # argparse refuses it
        if not math.isfinite(number):
            return True
        field = FIELDS.get(command, {}).get(action.dest)
        return field is not None and _limit_error(field, number) is not None
    if action.type is int:
        try:
            number = int(value)
        except ValueError:
            return True
        field = FIELDS.get(command, {}).get(action.dest)
        return field is not None and _limit_error(field, number) is not None
    return False


def _fields():
    import dataclasses

    from reasonlab.evaluate import EvalConfig, SampleConfig
    from reasonlab.lab.settings import DemoConfig
    from reasonlab.train.pretrain import PretrainConfig
    from reasonlab.train.rationales import RationalesConfig
    from reasonlab.train.sft import SFTConfig

    try:
        from reasonlab.rl.config import GRPOConfig
    except ImportError:
        from reasonlab.train.grpo import GRPOConfig

    classes = {
        "generate": SampleConfig,
        "eval": EvalConfig,
        "demo": DemoConfig,
        "pretrain": PretrainConfig,
        "rationales": RationalesConfig,
        "sft": SFTConfig,
        "rl": GRPOConfig,
    }
    return {cmd: {f.name: f for f in dataclasses.fields(cls)} for cmd, cls in classes.items()}


FIELDS = _fields()  # command -> its config's fields: the limits each option states


def corrupt_model(src, dst, rng: random.Random) -> None:
    shutil.copytree(src, dst)
    weights, config = dst / "model.safetensors", dst / "config.json"
    how = rng.choice(
        ["truncate", "flip header", "random", "empty", "config value", "config garbage", "no config"]
    )
    data = bytearray(weights.read_bytes())
    if how == "truncate":
        weights.write_bytes(data[: rng.randrange(len(data))])
    elif how == "flip header":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(min(200, len(data)))] = rng.randrange(256)
        weights.write_bytes(bytes(data))
    elif how == "random":
        weights.write_bytes(os.urandom(rng.randint(1, 5000)))
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "config value":
        meta = json.loads(config.read_text())
        key = rng.choice(sorted(meta["reasonlab"]["gpt"]))
        meta["reasonlab"]["gpt"][key] = rng.choice([-1, 0, "x", None, 10**9, 1.5, [], {}])
        config.write_text(json.dumps(meta))
    elif how == "config garbage":
        config.write_text(
            rng.choice(["", "[1]", "{", "null", '{"reasonlab": 5}', '{"reasonlab": {"kind": "builtin"}}'])
        )
    else:
        config.unlink()


def corrupt_jsonl(path, rng: random.Random) -> None:
    good = json.dumps({"prompt": "1\n", "completion": "<answer>2</answer>", "answer": "2"})
    bad = rng.choice(
        [
            '{"prompt": 1, "completion": "x"}',
            "[1, 2]",
            "{not json",
            "\xff\xfe",
            '"text"',
            "{}",
            "null",
            '{"completion": 5, "answer": "1"}',
            '{"messages": "x"}',
            '{"messages": [{"role": "user"}]}',
        ]
    )
    text = rng.choice(
        ["", "\n\n", good + "\n" + bad + "\n", bad + "\n" + good + "\n", good[: rng.randrange(len(good))]]
    )
    path.write_bytes(text.encode("utf-8", "surrogateescape") if text else b"")


def snapshot(root) -> dict:
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for name in names + dirs:
            p = os.path.join(dirpath, name)
            out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else "dir"
    return out


def run(argv, capsys, monkeypatch) -> tuple[int, str]:
    """(exit code, stderr) of `reasonlab argv` in-process; `serve`/`demo` stop where they would start."""
    import reasonlab.lab.demo
    import reasonlab.serve

    def started(*args, **kwargs):
        raise Started

    monkeypatch.setattr(reasonlab.serve, "run_server", started)
    monkeypatch.setattr(reasonlab.lab.demo, "run_demo", started)
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse: a malformed flag or value
        code = e.code
    except Started:
        code = 0
    return code, capsys.readouterr().err


def check(argv, code, err, refuse: bool):
    assert "Traceback" not in err, (argv, err)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1, (argv, err)
    if refuse:
        assert code == 2, f"accepted {argv}"


def cases(seed: int, n: int):
    """(command, mutation) pairs: ("option", action, value argv) or ("model" / "jsonl" / "config",
    None, [])."""
    rng = random.Random(seed)
    commands = [
        "generate",
        "eval",
        "faithfulness",
        "serve",
        "rl",
        "sft",
        "pretrain",
        "rationales",
        "score",
        "demo",
        "export",
    ]
    for _ in range(n):
        command = rng.choice(commands)
        kind = rng.choices(["option", "model", "jsonl", "config"], weights=[6, 2, 1, 1])[0]
        if kind == "model" and command in ("pretrain", "score", "demo"):
            kind = "option"
        if kind == "jsonl" and command not in ("sft", "score"):
            kind = "option"
        action = rng.choice(options(command)) if kind == "option" else None
        yield command, kind, action, rng.randrange(2**31)


def fuzz(seed: int, n: int, files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative path written by mistake would show in the snapshot
    for i, (command, kind, action, case_seed) in enumerate(cases(seed, n)):
        rng = random.Random(case_seed)
        inputs = tmp_path / f"in{i}"
        shutil.copytree(files, inputs)
        out = tmp_path / f"out{i}"
        argv, refuse = base_argv(command, inputs, str(out)), False
        if kind == "option":
            extra = fuzz_value(action, rng)
            argv += extra
            flags = {f for a in cli.build_parser().commands[command]._actions for f in a.option_strings}
            abbreviated = extra[0] not in flags  # argparse took a flag's prefixes as the flag once
            refuse = abbreviated or (len(extra) == 2 and must_refuse(command, action, extra[1]))
        elif kind == "model":
            shutil.rmtree(inputs / "ck")
            corrupt_model(files / "ck", inputs / "ck", rng)
        elif kind == "jsonl":
            corrupt_jsonl(inputs / ("sft.jsonl" if command == "sft" else "score.jsonl"), rng)
        else:  # a config file of a random bad option or value
            config = inputs / rng.choice(["c.toml", "c.json"])
            config.write_text(
                rng.choice(
                    [
                        "steps = nan\n",
                        "nope = 1\n",
                        "[x]\n",
                        '{"lr": "x"}',
                        "[1]",
                        '{"device": 5}',
                        '{"task_arg": 5}',
                        "temperature = -1\n",
                    ]
                )
            )
            argv += ["--config", str(config)]
            refuse = True
        before = snapshot(tmp_path)
        code, err = run(argv, capsys, monkeypatch)
        check(argv, code, err, refuse)
        after = snapshot(tmp_path)
        touched = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
        outside = {p for p in touched if not (p == str(out) or p.startswith(str(out) + os.sep))}
        assert not outside, (argv, sorted(outside))
        shutil.rmtree(inputs)


def test_cli_fuzz(files, tmp_path, capsys, monkeypatch):
    fuzz(0, 70, files, tmp_path, capsys, monkeypatch)


@pytest.mark.slow
def test_cli_fuzz_many(files, tmp_path, capsys, monkeypatch):
    fuzz(1, 600, files, tmp_path, capsys, monkeypatch)
