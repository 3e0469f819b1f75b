"""Resume after a crash: a `reasonlab sft` process killed with SIGKILL at a random step, then
`--resume`, gives bitwise the losses of an uninterrupted run; a corrupt state falls back to the
previous good one. Run: pytest tests/run/test_resume.py"""

import json
import os
import random
import subprocess
import sys
import time

import pytest
import torch

from reasonlab.run.state import load_training_state, save_training_state

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_data(path):
    rows = [
        {"prompt": f"{i}*{j}=", "completion": f"<think>{i} times {j}</think><answer>{i * j}</answer>"}
        for i in range(12)
        for j in range(12)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def losses(state_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (state_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in rows if "loss" in m]
    assert steps == sorted(set(steps)), "a step logged twice: the resumed run must drop what it replays"
    return {m["step"]: m["loss"] for m in rows if "loss" in m}


def run_until_killed(cmd, log, kill_at: int):
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= kill_at:
            proc.kill()
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -9, f"the run ended before step {kill_at}"


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = tmp_path / "d.jsonl"
    write_data(data)
    cmd = [
        sys.executable,
        "-m",
        "reasonlab",
        "sft",
        "--data",
        str(data),
        "--steps",
        "60",
        "--batch-size",
        "32",
        "--save-every",
        "5",
        "--eval-every",
        "0",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "5",
    ]
    subprocess.run([*cmd, "--out", str(tmp_path / "a")], env=ENV, check=True, capture_output=True)
    reference = losses(tmp_path / "a")
    assert sorted(reference) == list(range(1, 61))

    kill_at = random.randint(8, 50)
    run_until_killed([*cmd, "--out", str(tmp_path / "b")], tmp_path / "b" / "metrics.jsonl", kill_at)
    assert not (tmp_path / "b" / "model").exists()  # the checkpoint is only written at the end
    subprocess.run([*cmd, "--out", str(tmp_path / "b"), "--resume"], env=ENV, check=True, capture_output=True)
    resumed = losses(tmp_path / "b")
    assert resumed == reference, f"killed at step {kill_at}"  # bitwise equal floats


def test_corrupt_state_falls_back_to_the_previous_one(tmp_path, capsys):
    weights = {"w": torch.ones(2)}
    save_training_state(tmp_path, {"model": weights, "step": 5})
    save_training_state(tmp_path, {"model": weights, "step": 10})
    (tmp_path / "state.pt").write_bytes((tmp_path / "state.pt").read_bytes()[:100])  # a torn write
    assert load_training_state(tmp_path)["step"] == 5
    assert "unreadable" in capsys.readouterr().err
    assert load_training_state(tmp_path / "none") is None


def test_nan_weights_are_never_saved(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="NaN"):
        save_training_state(tmp_path, {"model": {"w": torch.tensor([float("nan")])}, "step": 1})
    assert not (tmp_path / "state.pt").exists()


def rl_history(out) -> dict[int, tuple]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in rows if "loss" in m]
    assert steps == sorted(set(steps)), "a step logged twice: the resumed run must drop what it replays"
    return {
        m["step"]: (m["loss"], m["reward/mean"], m["completions/mean_length"], m["grad_norm"])
        for m in rows
        if "loss" in m
    }


def test_rl_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    from reasonlab.model import GPTConfig, new_builtin, save_checkpoint

    model, tok = new_builtin(GPTConfig(n_layer=1, n_head=2, n_kv_head=2, d_model=32, max_seq_len=64), seed=0)
    save_checkpoint(tmp_path / "m", model, tok)
    # The length-target reward varies between completions even for a random model: real updates
    # (the model never writes the template: the format watch is off).
    cmd = [
        sys.executable,
        "-m",
        "reasonlab",
        "rl",
        "--model",
        str(tmp_path / "m"),
        "--task",
        "arithmetic",
        "--task-arg",
        "digits=1",
        "--steps",
        "16",
        "--prompts-per-step",
        "4",
        "--group-size",
        "4",
        "--max-new-tokens",
        "12",
        "--eval-every",
        "0",
        "--length-target",
        "6",
        "--length-alpha",
        "0.1",
        "--lr",
        "1e-3",
        "--save-every",
        "2",
        "--dynamic-sampling",
        "--no-format-patience",
        "0",
    ]
    subprocess.run([*cmd, "--out", str(tmp_path / "a")], env=ENV, check=True, capture_output=True)
    reference = rl_history(tmp_path / "a")
    assert sorted(reference) == list(range(1, 17)) and len({r[0] for r in reference.values()}) > 1

    kill_at = random.randint(3, 13)
    run_until_killed([*cmd, "--out", str(tmp_path / "b")], tmp_path / "b" / "metrics.jsonl", kill_at)
    subprocess.run([*cmd, "--out", str(tmp_path / "b"), "--resume"], env=ENV, check=True, capture_output=True)
    assert rl_history(tmp_path / "b") == reference, f"killed at step {kill_at}"


def test_rationales_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    from reasonlab.cli import main
    from reasonlab.tasks import get_task
    from reasonlab.template import build_prompt

    # A start that is sometimes right: a little SFT on 1-digit sums, so rounds keep samples and fine-tune.
    problems = get_task("arithmetic", op="+", digits=1).problems(80, seed=5)
    (tmp_path / "sft.jsonl").write_text(
        "".join(
            json.dumps({"prompt": build_prompt(p.question), "completion": p.reference_completion()}) + "\n"
            for p in problems
        )
    )
    assert (
        main(
            [
                "sft",
                "--data",
                str(tmp_path / "sft.jsonl"),
                "--steps",
                "150",
                "--batch-size",
                "16",
                "--lr",
                "3e-3",
                "--eval-every",
                "0",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    cmd = [
        sys.executable,
        "-m",
        "reasonlab",
        "rationales",
        "--model",
        str(tmp_path / "m"),
        "--task",
        "arithmetic",
        "--task-arg",
        "digits=1",
        "--rounds",
        "3",
        "--problems",
        "60",
        "--samples",
        "4",
        "--temperature",
        "1.0",
        "--max-new-tokens",
        "24",
        "--steps",
        "40",
        "--batch-size",
        "4",
        "--save-every",
        "3",
        "--eval-problems",
        "10",
        "--continue-training",
    ]
    start = time.monotonic()
    subprocess.run([*cmd, "--out", str(tmp_path / "a")], env=ENV, check=True, capture_output=True)
    duration = time.monotonic() - start

    def records(out):
        keep = ("round", "samples", "kept", "solved", "accuracy", "format_rate", "mean_think_tokens")
        return [
            {k: r[k] for k in keep}
            for r in (json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())
        ]

    reference = records(tmp_path / "a")
    assert [r["round"] for r in reference] == [1, 2, 3] and sum(r["kept"] for r in reference) > 0
    # Kill after start-up (~4 s of imports) at a random moment inside the run.
    delay = random.uniform(min(5.0, duration * 0.5), duration * 0.9)
    proc = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "b")], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(delay)
    proc.kill()
    proc.wait()
    subprocess.run([*cmd, "--out", str(tmp_path / "b"), "--resume"], env=ENV, check=True, capture_output=True)
    got = records(tmp_path / "b")
    # The resumed run rewrites the log from its saved rounds: even a kill between saving a round and
    # logging it leaves no line out.
    assert got == reference, f"killed after {delay:.1f} s"
    from reasonlab.model import load_model

    a, _ = load_model(tmp_path / "a" / "model")
    b, _ = load_model(tmp_path / "b" / "model")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---- in one process: failures, checked resumes, log rows, full disks --------------------------------

SFT = ["--steps", "4", "--batch-size", "8", "--eval-every", "0", "--lr", "3e-3", "--warmup-steps", "2"]


def sft_rows(state_dir) -> list[dict]:
    return [json.loads(line) for line in (state_dir / "metrics.jsonl").read_text().splitlines()]


class Killed(BaseException):
    """A kill -9 at that instant: nothing after it runs (no handler catches a BaseException)."""


def test_an_over_long_example_is_cut_to_the_models_positions_before_training(tmp_path, capsys):
    from reasonlab.cli import main
    from reasonlab.model import GPTConfig, new_builtin, save_checkpoint

    save_checkpoint(
        tmp_path / "m", *new_builtin(GPTConfig(n_layer=1, n_head=2, n_kv_head=2, d_model=32, max_seq_len=192))
    )
    data = tmp_path / "d.jsonl"
    write_data(data)
    with open(data, "a") as f:  # one example longer than the model's 192 positions (a pretrained base's)
        f.write(
            json.dumps(
                {"prompt": "7*7=", "completion": "<think>" + "7 " * 200 + "</think><answer>49</answer>"}
            )
            + "\n"
        )
    assert (
        main(
            [
                "sft",
                "--model",
                str(tmp_path / "m"),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "a"),
                *SFT,
                "--batch-size",
                "145",
            ]
        )
        == 0
    )  # every batch holds it: it used to fail at the first step
    err = capsys.readouterr().err
    assert "--max-seq-len 256 is more than the model's 192 positions: using 192" in err
    assert "1 of 145 examples" in err and "longer than --max-seq-len 192 and were cut" in err


def failing_call(real, n: int, error: BaseException):
    """`real`, except that its n-th call raises `error` (a step that fails, in the middle of a run)."""
    calls = []

    def call(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise error
        return real(*args, **kwargs)

    return call


def test_a_failing_step_saves_the_last_good_state_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import reasonlab.train.loop as loop
    from reasonlab.cli import main

    data = tmp_path / "d.jsonl"
    write_data(data)
    assert main(["sft", "--data", str(data), "--out", str(tmp_path / "a"), *SFT]) == 0
    real = loop.lm_loss
    monkeypatch.setattr(
        loop, "lm_loss", failing_call(real, 3, RuntimeError("CUDA out of memory"))
    )  # no --save-every
    assert main(["sft", "--data", str(data), "--out", str(tmp_path / "b"), *SFT]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"reasonlab sft: error: training stopped by RuntimeError: CUDA out of memory; the state after "
        f"step 2 is saved in {tmp_path / 'b' / 'state'}: rerun with --resume to go on"
    )
    monkeypatch.setattr(loop, "lm_loss", real)
    assert main(["sft", "--data", str(data), "--out", str(tmp_path / "b"), *SFT, "--resume"]) == 0
    assert losses(tmp_path / "b") == losses(tmp_path / "a")  # bitwise: as if never stopped

    monkeypatch.setattr(loop, "lm_loss", failing_call(real, 3, KeyboardInterrupt()))
    assert main(["sft", "--data", str(data), "--out", str(tmp_path / "c"), *SFT]) == 130  # Ctrl-C
    assert "interrupted: the state after step 2 is saved" in capsys.readouterr().err
    assert load_training_state(tmp_path / "c" / "state")["step"] == 2


def test_rl_failing_while_it_samples_saves_the_state_and_resumes_as_if_never_stopped(
    tmp_path, capsys, monkeypatch
):
    import reasonlab.rl.collect as collect
    from reasonlab.cli import main
    from reasonlab.model import GPTConfig, new_builtin, save_checkpoint

    model, tok = new_builtin(GPTConfig(n_layer=1, n_head=2, n_kv_head=1, d_model=16, max_seq_len=64), seed=0)
    save_checkpoint(tmp_path / "m", model, tok)
    rl = [
        "rl",
        "--model",
        str(tmp_path / "m"),
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
        "10",
        "--eval-every",
        "0",
        "--lr",
        "1e-2",
    ]
    assert main([*rl, "--out", str(tmp_path / "a")]) == 0
    real = collect.generate
    monkeypatch.setattr(
        collect, "generate", failing_call(real, 3, RuntimeError("CUDA out of memory"))
    )  # no --save-every
    assert main([*rl, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"reasonlab rl: error: training stopped by RuntimeError: CUDA out of memory; the state after "
        f"step 2 is saved in {tmp_path / 'b' / 'state'}: rerun with --resume to go on"
    )
    monkeypatch.setattr(collect, "generate", real)
    assert main([*rl, "--out", str(tmp_path / "b"), "--resume"]) == 0

    def rows(run):
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    keys = ("step", "loss", "grad_norm", "reward/sampled_mean", "completions/mean_length")
    assert [[r[k] for k in keys] for r in rows("b")] == [[r[k] for k in keys] for r in rows("a")]  # bitwise


def test_resume_refuses_changed_settings_and_says_when_there_is_nothing_to_resume(tmp_path, capsys):
    from reasonlab.cli import main

    data, out = tmp_path / "d.jsonl", str(tmp_path / "a")
    write_data(data)
    assert main(["sft", "--data", str(data), "--out", out, *SFT, "--save-every", "2"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "sft",
                "--data",
                str(data),
                "--out",
                out,
                *SFT,
                "--save-every",
                "2",
                "--resume",
                "--lr",
                "0.05",
                "--seed",
                "3",
            ]
        )
        == 2
    )
    assert (
        f"--resume: the run in {out}/state was made with lr 0.003 (now 0.05), seed 0 (now 3); only --steps, "
        "--max-seconds, --eval-every, --save-every and --save-minutes may change" in capsys.readouterr().err
    )
    smaller = tmp_path / "small.jsonl"
    smaller.write_text("".join(data.read_text().splitlines(keepends=True)[:50]))
    assert main(["sft", "--data", str(smaller), "--out", out, *SFT, "--resume"]) == 2
    assert "examples 144 (now 50)" in capsys.readouterr().err  # and data: another file (not an IndexError)
    # Changed settings from the documented list are taken: steps, eval_every, save_every, max_seconds.
    assert (
        main(
            ["sft", "--data", str(data), "--out", out, *SFT, "--resume", "--steps", "6", "--eval-every", "3"]
        )
        == 0
    )
    assert sorted(losses(tmp_path / "a")) == [1, 2, 3, 4, 5, 6]
    assert main(["sft", "--data", str(data), "--out", str(tmp_path / "new"), *SFT, "--resume"]) == 0
    assert f"nothing to resume in {tmp_path / 'new' / 'state'}: starting fresh" in capsys.readouterr().err


def test_rl_resume_refuses_another_group_size_or_task_option(tmp_path, capsys):
    from reasonlab.cli import main
    from reasonlab.model import GPTConfig, new_builtin, save_checkpoint

    save_checkpoint(
        tmp_path / "m", *new_builtin(GPTConfig(n_layer=1, n_head=2, n_kv_head=2, d_model=32, max_seq_len=64))
    )
    cmd = [
        "rl",
        "--model",
        str(tmp_path / "m"),
        "--task",
        "arithmetic",
        "--task-arg",
        "digits=1",
        "--steps",
        "2",
        "--prompts-per-step",
        "2",
        "--group-size",
        "2",
        "--max-new-tokens",
        "6",
        "--eval-every",
        "0",
        "--save-every",
        "1",
        "--out",
        str(tmp_path / "rl"),
    ]
    assert main(cmd) == 0
    saved = (tmp_path / "rl" / "run.json").read_text()
    capsys.readouterr()
    assert main([*cmd, "--resume", "--group-size", "3"]) == 2
    assert "group_size 2 (now 3)" in capsys.readouterr().err
    assert main([*cmd, "--resume", "--task-arg", "digits=2"]) == 2
    err = capsys.readouterr().err
    assert "was made with task {'name': 'arithmetic'" in err and "'digits': 1" in err and "'digits': 2" in err
    assert (tmp_path / "rl" / "run.json").read_text() == saved  # the refused run changed nothing
    assert main([*cmd, "--resume", "--steps", "3"]) == 0


def test_elapsed_seconds_carry_across_a_resume(tmp_path):
    from reasonlab.cli import main

    data, out = tmp_path / "d.jsonl", tmp_path / "a"
    write_data(data)
    assert main(["sft", "--data", str(data), "--out", str(out), *SFT, "--save-every", "4"]) == 0
    state = torch.load(tmp_path / "a" / "state" / "state.pt", weights_only=False)
    state["seconds"] = 1000.0  # as if the first 4 steps had taken 1000 s
    torch.save(state, tmp_path / "a" / "state" / "state.pt")
    assert (
        main(
            [
                "sft",
                "--data",
                str(data),
                "--out",
                str(out),
                *SFT,
                "--resume",
                "--steps",
                "8",
                "--max-seconds",
                "500",
            ]
        )
        == 0
    )
    rows = sft_rows(tmp_path / "a")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1][
        "seconds"
    ] > 1000  # over the limit: stopped


def test_a_kill_right_after_the_state_is_written_loses_no_log_row(tmp_path, monkeypatch):
    import reasonlab.run.lifecycle as lifecycle
    from reasonlab.cli import main
    from reasonlab.model import GPTConfig, new_builtin, save_checkpoint

    data, real = tmp_path / "d.jsonl", lifecycle.save_training_state
    write_data(data)

    def killed_after(step):
        def save(folder, state):
            real(folder, state)
            if state["step"] == step:
                raise Killed

        return save

    cmd = [
        "sft",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "a"),
        *SFT,
        "--save-every",
        "2",
        "--eval-every",
        "2",
        "--eval-data",
        str(data),
    ]
    monkeypatch.setattr(lifecycle, "save_training_state", killed_after(2))
    with pytest.raises(Killed):
        main(cmd)
    monkeypatch.setattr(lifecycle, "save_training_state", real)
    assert main([*cmd, "--resume"]) == 0
    rows = sft_rows(tmp_path / "a")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "eval_loss" in rows[
        1
    ]  # step 2's row and its eval, once

    save_checkpoint(
        tmp_path / "m", *new_builtin(GPTConfig(n_layer=1, n_head=2, n_kv_head=2, d_model=32, max_seq_len=64))
    )
    rl = [
        "rl",
        "--model",
        str(tmp_path / "m"),
        "--task",
        "arithmetic",
        "--task-arg",
        "digits=1",
        "--steps",
        "3",
        "--prompts-per-step",
        "2",
        "--group-size",
        "2",
        "--max-new-tokens",
        "6",
        "--eval-every",
        "0",
        "--save-every",
        "2",
        "--out",
        str(tmp_path / "rl"),
    ]
    monkeypatch.setattr(lifecycle, "save_training_state", killed_after(2))
    with pytest.raises(Killed):
        main(rl)
    monkeypatch.setattr(lifecycle, "save_training_state", real)
    assert main([*rl, "--resume"]) == 0
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3]


def test_a_full_disk_on_save_is_one_line_and_keeps_the_last_good_state(tmp_path, capsys, monkeypatch):
    import errno

    import safetensors.torch

    from reasonlab.cli import main

    data, out = tmp_path / "d.jsonl", tmp_path / "a"
    write_data(data)
    real_save, saves = torch.save, []

    def disk_fills_on_the_second_state(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_on_the_second_state)
    quiet = ["--report-to", "none"]  # the folder holds the run's own files only (no tracker's)
    assert main(["sft", "--data", str(data), "--out", str(out), *SFT, *quiet, "--save-every", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"reasonlab sft: error: cannot write the training state {tmp_path / 'a' / 'state' / 'state.pt'}: "
        "No space left on device (the states saved before are kept)"
    ]
    assert sorted(p.name for p in (tmp_path / "a" / "state").iterdir()) == ["state.pt"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        ".lock",
        "metrics.jsonl",
        "run.json",
        "state",
    ]
    assert load_training_state(tmp_path / "a" / "state")["step"] == 2
    monkeypatch.setattr(torch, "save", real_save)

    assert main(["sft", "--data", str(data), "--out", str(out), *SFT, *quiet, "--resume"]) == 0  # room again
    before = {p.name: p.read_bytes() for p in (out / "model").iterdir()}
    for code in (errno.ENOSPC, errno.EROFS):  # the checkpoint at the end: a full disk, a read-only one

        def fails(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(safetensors.torch, "save_file", fails)
        assert main(["sft", "--data", str(data), "--out", str(out), *SFT, *quiet, "--resume"]) == 2
        assert (
            f"cannot save the checkpoint {out / 'model'}: {os.strerror(code)} (nothing was changed there)"
            in capsys.readouterr().err
        )
        assert {
            p.name: p.read_bytes() for p in (out / "model").iterdir()
        } == before  # the earlier checkpoint, as it was
        assert sorted(p.name for p in out.iterdir()) == [
            ".lock",
            "metrics.jsonl",
            "model",
            "run.json",
            "state",
        ]  # no .model.tmp-*
