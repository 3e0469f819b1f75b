"""A hostile user's runs: two writers into one folder, kills, changed data, huge sizes, tiny
budgets of memory, abbreviated flags, unreadable characters, `~`, links and devices. Each case is
one reproduced report; every one failed before its fix. Run: pytest tests/run/test_hostile_runs.py"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from reasonlab import memory
from reasonlab.cli import main
from reasonlab.model import GPTConfig, new_builtin, save_checkpoint
from reasonlab.run import state as run_state
from reasonlab.run.optim import OptimConfig
from reasonlab.run.state import SaveClock, load_training_state
from reasonlab.train import loop
from reasonlab.train.loop import tokenize_examples

TINY = GPTConfig(n_layer=1, n_head=2, n_kv_head=2, d_model=16, max_seq_len=64)
SFT = ["--steps", "2", "--batch-size", "2", "--eval-every", "0", "--device", "cpu", "--report-to", "none"]


def sft_data(path, n=6, text="abc"):
    rows = [
        {"prompt": f"{i}+1\n", "completion": f"<think>{text}</think><answer>{i + 1}</answer>"}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def ck(tmp_path):
    model, tok = new_builtin(TINY, seed=0)
    save_checkpoint(tmp_path / "ck", model, tok, {"task": {"name": "arithmetic", "options": {"digits": 1}}})
    return str(tmp_path / "ck")


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


# ---- 1, 2: one writer a folder; an earlier run is not replaced unasked ----------------------------

HOLD = """
import sys, time
from reasonlab.outdir import claim
claim(sys.argv[1], "sft")
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_run_into_a_folder_in_use_is_refused_and_a_killed_holder_leaves_no_stale_lock(
    tmp_path, capsys
):
    out, data = tmp_path / "o", sft_data(tmp_path / "d.jsonl")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["sft", "--data", data, "--out", str(out), *SFT]) == 2
        line = error_line(capsys)
        assert f"is in use by another run (pid {holder.pid}, reasonlab sft" in line
        assert not (out / "run.json").exists() and not (out / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (
        main(["sft", "--data", data, "--out", str(out), *SFT]) == 0
    )  # the kernel dropped the dead one's lock
    assert (out / "model" / "config.json").is_file()


def test_two_runs_at_once_in_one_process_tree(tmp_path):
    """The reported race itself: a second `reasonlab sft` started while the first trains."""
    out, data = tmp_path / "o", sft_data(tmp_path / "d.jsonl", n=40)
    cmd = [
        sys.executable,
        "-m",
        "reasonlab",
        "sft",
        "--data",
        data,
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--eval-every",
        "0",
        "--device",
        "cpu",
        "--report-to",
        "none",
    ]
    first = subprocess.Popen(
        cmd + ["--steps", "400"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        for _ in range(600):  # until the first one holds the folder
            if (out / "run.json").exists():
                break
            time.sleep(0.1)
        second = subprocess.run(
            cmd + ["--steps", "10", "--lr", "1e-4"], capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 2, second.stderr
        assert "is in use by another run" in second.stderr and "Traceback" not in second.stderr
        assert json.loads((out / "run.json").read_text())["config"]["steps"] == 400  # the first run's folder
    finally:
        first.kill()
        first.wait()


def test_a_refused_run_into_a_new_folder_leaves_nothing_behind(tmp_path, capsys):
    out = tmp_path / "new"
    assert main(["sft", "--data", str(tmp_path / "missing.jsonl"), "--out", str(out), *SFT]) == 2
    error_line(capsys)
    assert not out.exists()


# ---- 3, 4: crash-safe by default; resume checks the data's content ------------------------------


def test_the_state_is_saved_by_wall_time_by_default():
    cfg = OptimConfig()
    assert cfg.save_every == 0 and cfg.save_minutes > 0  # a kill loses minutes, not the run
    clock, now = SaveClock(cfg), [1000.0]
    clock.last = now[0]
    real = run_state.time.monotonic
    run_state.time.monotonic = lambda: now[0]
    try:
        now[0] += 60 * cfg.save_minutes - 1
        assert not clock.due(1)
        now[0] += 2
        assert clock.due(2)

        def slow_save():  # a save that took 30 s: the next waits 20 x 30 s, so saving stays under 5%
            now[0] += 30

        clock.save(slow_save)
        now[0] += 60 * cfg.save_minutes + 1
        assert not clock.due(3)
        now[0] += 600
        assert clock.due(4)
    finally:
        run_state.time.monotonic = real
    assert not SaveClock(cfg, enabled=False).due(1)
    assert SaveClock(OptimConfig(save_every=3, save_minutes=0)).due(3)


def test_sft_keeps_a_state_without_save_every_so_a_kill_can_resume(tmp_path, capsys):
    out, data = tmp_path / "o", sft_data(tmp_path / "d.jsonl")
    assert (
        main(["sft", "--data", data, "--out", str(out), *SFT, "--steps", "3", "--save-minutes", "1e-6"]) == 0
    )
    state = load_training_state(out / "state")
    assert state is not None and 1 <= state["step"] <= 3  # (20x a save's own time apart at least)


def test_resume_refuses_data_whose_content_changed_at_the_same_size(tmp_path, capsys):
    out, data = tmp_path / "o", tmp_path / "d.jsonl"
    sft_data(data, text="abc")
    assert main(["sft", "--data", str(data), "--out", str(out), *SFT, "--save-every", "1"]) == 0
    sft_data(data, text="xyz")  # same lines, same length, other content
    capsys.readouterr()
    assert main(["sft", "--data", str(data), "--out", str(out), *SFT, "--steps", "4", "--resume"]) == 2
    assert "--resume: the run in" in (line := error_line(capsys)) and "data" in line


def test_rl_resume_refuses_a_task_file_whose_content_changed(tmp_path, ck, capsys):
    problems = tmp_path / "p.jsonl"
    problems.write_text(
        "".join(json.dumps({"question": f"{i}+1", "answer": str(i + 1)}) + "\n" for i in range(8))
    )
    out = tmp_path / "o"
    argv = [
        "rl",
        "--model",
        ck,
        "--task",
        "math",
        "--task-arg",
        f"path={problems}",
        "--out",
        str(out),
        "--prompts-per-step",
        "2",
        "--group-size",
        "2",
        "--max-new-tokens",
        "4",
        "--eval-every",
        "0",
        "--no-format-patience",
        "0",
        "--save-every",
        "1",
        "--device",
        "cpu",
        "--report-to",
        "none",
    ]
    assert main([*argv, "--steps", "1"]) == 0
    problems.write_text(problems.read_text().replace("+1", "+2"))
    capsys.readouterr()
    assert main([*argv, "--steps", "2", "--resume"]) == 2
    assert "task_data" in error_line(capsys)


# ---- 5, 6: bounded by design ---------------------------------------------------------------------


def test_a_huge_line_is_cut_before_it_is_tokenised():
    _, tok = new_builtin(TINY, seed=0)
    seen = []
    encode = tok.encode_batch
    tok.encode_batch = lambda texts: seen.extend(map(len, texts)) or encode(texts)
    rows = [{"prompt": "1+1\n", "completion": "x" * 5_000_000}]
    ((prompt, completion),) = tokenize_examples(tok, rows, 64)
    assert len(prompt) + len(completion) == 64
    assert max(seen) <= 64 * loop.MAX_CHARS_PER_TOKEN


@pytest.mark.parametrize(
    "argv",
    [
        ["sft", "--batch-size", "1000000000000"],
        ["rl", "--group-size", "1000000000000"],
        ["rl", "--prompts-per-step", "1000000000000"],
        ["eval", "--k", "1000000000"],
        ["eval", "--problems", "1000000000"],
        ["generate", "--max-new-tokens", "1000000000000"],
        ["rl", "--warmup-steps", "1" + "0" * 21],
    ],
)
def test_sizes_have_upper_limits_checked_before_any_work(argv, tmp_path, capsys):
    assert (
        main(
            [
                *argv,
                "--out" if argv[0] in ("sft", "rl") else "--seed",
                str(tmp_path / "o") if argv[0] in ("sft", "rl") else "0",
            ]
        )
        == 2
    )
    assert "must be <=" in error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_a_batch_that_cannot_fit_is_refused_with_the_estimate(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 50 * 2**20)  # a 50 MB machine
    data = sft_data(tmp_path / "d.jsonl")
    assert main(["sft", "--data", data, "--out", str(tmp_path / "o"), *SFT, "--batch-size", "60000"]) == 2
    line = error_line(capsys)
    assert "needs at least ~" in line and "50 MB free" in line and "lower --batch-size" in line
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_out_of_memory_says_what_to_lower_not_to_resume(tmp_path, capsys, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate memory"
        )

    monkeypatch.setattr(loop, "_forward_backward", no_memory)
    data = sft_data(tmp_path / "d.jsonl")
    assert main(["sft", "--data", data, "--out", str(tmp_path / "o"), *SFT]) == 2
    line = error_line(capsys)
    assert (
        "out of memory after step 0" in line
        and "lower --batch-size" in line
        and "rerun with --resume" not in line
    )


# ---- 12, 13, 15: exact flags, no empty training, unreadable characters ---------------------------


def test_abbreviated_flags_are_refused(ck, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "--model", ck, "--n", "8"])  # was taken as --no-trigger
    assert stop.value.code == 2
    assert "unrecognized arguments: --n 8" in capsys.readouterr().err


def test_sft_on_rows_with_nothing_to_learn_is_refused(tmp_path, capsys):
    data = tmp_path / "empty.jsonl"
    data.write_text(
        json.dumps({"prompt": "", "completion": ""})
        + "\n"
        + json.dumps({"prompt": "", "completion": ""})
        + "\n"
    )
    assert main(["sft", "--data", str(data), "--out", str(tmp_path / "o"), *SFT]) == 2
    assert "no example has a completion token to train on" in error_line(capsys)


def test_a_problem_the_built_in_tokenizer_cannot_read_is_refused(tmp_path, ck, capsys):
    problems = tmp_path / "p.jsonl"
    # enough rows that the held-out share (a hash of each row) holds some
    rows = [{"question": f"你好: 1+{i}", "answer": str(1 + i)} for i in range(40)]
    problems.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for command in ("generate", "eval", "faithfulness"):
        assert (
            main(
                [
                    command,
                    "--model",
                    ck,
                    "--task",
                    "math",
                    "--task-arg",
                    f"path={problems}",
                    "--problems",
                    "1",
                    "--device",
                    "cpu",
                ]
            )
            == 2
        )
        assert "U+4F60" in error_line(capsys)


# ---- 16, 17: ~, links, devices, YAML, a full disk -------------------------------------------------


def test_a_tilde_is_the_home_folder(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    data = sft_data(tmp_path / "d.jsonl")
    assert main(["sft", "--data", data, "--out", "~", *SFT]) == 2  # home holds files of its own
    assert f"--out {home} already holds files" in error_line(capsys)
    config = tmp_path / "c.toml"
    config.write_text('out = "~/x"\n')
    assert main(["sft", "--data", data, "--config", str(config), *SFT]) == 0
    assert f"saved {home / 'x' / 'model'}" in capsys.readouterr().out
    assert (home / "x" / "model" / "config.json").is_file() and not (tmp_path / "~").exists()


def test_messages_name_the_real_cause(tmp_path, capsys):
    data = sft_data(tmp_path / "d.jsonl")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert main(["sft", "--data", data, "--out", str(tmp_path / "link"), *SFT]) == 2
    assert "is a symbolic link to" in error_line(capsys)
    (tmp_path / "x.yaml").write_text("steps: 3\n")
    assert (
        main(["sft", "--data", data, "--config", str(tmp_path / "x.yaml"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "YAML is not read" in error_line(capsys)
    assert main(["sft", "--data", "/dev/zero", "--out", str(tmp_path / "o"), *SFT]) == 2
    assert "'/dev/zero' is not a regular file" in error_line(capsys)


def test_a_full_disk_while_saving_the_state_says_so(tmp_path, monkeypatch):
    import torch

    def full(obj, f):
        f.write(b"x" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(run_state.UserError, match="the write stopped short, as on a full disk"):
        run_state.save_training_state(tmp_path / "state", {"model": {}})
    assert not list((tmp_path / "state").iterdir())


class FullDisk:
    """Files opened for writing under `root` fail with ENOSPC once `budget` bytes have been written
    into them (a disk that fills during the run, at any write)."""

    def __init__(self, root, budget: int):
        self.root, self.budget = str(root), budget

    def wrap(self, real_open):
        def opener(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            writing = (
                any(c in mode for c in "wax+") and os.fspath(file).startswith(self.root)
                if isinstance(file, (str, os.PathLike))
                else False
            )
            return _Filling(handle, self) if writing else handle

        return opener


class _Filling:
    def __init__(self, handle, disk: FullDisk):
        self._handle, self._disk = handle, disk

    def write(self, data):
        import errno

        self._disk.budget -= len(data)
        if self._disk.budget < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


@pytest.mark.parametrize("budget", [0, 200, 2_000, 20_000, 200_000, 2_000_000])
def test_a_disk_that_fills_at_any_write_of_a_run_is_one_line(budget, tmp_path, capsys, monkeypatch):
    import builtins
    import io

    data = sft_data(tmp_path / "d.jsonl")
    out = tmp_path / "o"
    disk = FullDisk(out, budget)
    monkeypatch.setattr(builtins, "open", disk.wrap(builtins.open))
    monkeypatch.setattr(io, "open", disk.wrap(io.open))
    code = main(["sft", "--data", data, "--out", str(out), *SFT, "--steps", "4", "--save-every", "1"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 0:  # the budget sufficed (safetensors writes the model outside Python's open)
        assert disk.budget >= 0
        return
    assert code == 2
    line = error_line_of(err)
    assert "no space left" in line.lower() or "full disk" in line, line
    monkeypatch.undo()  # the disk has room again: a resume goes on from what was kept
    assert (
        main(
            ["sft", "--data", data, "--out", str(out), *SFT, "--steps", "4", "--save-every", "1", "--resume"]
        )
        == 0
    )


def error_line_of(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_every_command_prints_its_help(capsys):
    """A `%` in an option's help once crashed argparse's --help for four commands."""
    from reasonlab.cli import COMMANDS

    for command in COMMANDS:
        with pytest.raises(SystemExit) as stop:
            main([*command.name.split(), "--help"])
        assert stop.value.code == 0, command.name
        assert "usage: reasonlab" in capsys.readouterr().out
