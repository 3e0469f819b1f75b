"""Resume after a crash: a `reasonlab sft` process killed with SIGKILL at a random step, then
`--resume`, gives bitwise the losses of an uninterrupted run; a corrupt state falls back to the
previous good one. Run: pytest tests/test_resume.py"""

import json
import os
import random
import subprocess
import sys
import time

import torch

from reasonlab.train.loop import load_training_state, save_training_state

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_data(path):
    rows = [{"prompt": f"{i}*{j}=", "completion": f"<think>{i} times {j}</think><answer>{i * j}</answer>"}
            for i in range(12) for j in range(12)]
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
    cmd = [sys.executable, "-m", "reasonlab", "sft", "--data", str(data), "--steps", "60", "--batch-size", "32",
           "--save-every", "5", "--eval-every", "0", "--lr", "3e-3", "--warmup-steps", "5"]
    subprocess.run([*cmd, "--out", str(tmp_path / "a")], env=ENV, check=True, capture_output=True)
    reference = losses(tmp_path / "a.state")
    assert sorted(reference) == list(range(1, 61))

    kill_at = random.randint(8, 50)
    run_until_killed([*cmd, "--out", str(tmp_path / "b")], tmp_path / "b.state" / "metrics.jsonl", kill_at)
    assert not (tmp_path / "b").exists()  # the checkpoint is only written at the end
    subprocess.run([*cmd, "--out", str(tmp_path / "b"), "--resume"], env=ENV, check=True, capture_output=True)
    resumed = losses(tmp_path / "b.state")
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
    return {m["step"]: (m["loss"], m["reward/mean"], m["completions/mean_length"], m["grad_norm"])
            for m in rows if "loss" in m}


def test_rl_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    from reasonlab.model import GPTConfig, new_builtin, save_checkpoint

    model, tok = new_builtin(GPTConfig(n_layer=1, n_head=2, n_kv_head=2, d_model=32, max_seq_len=64), seed=0)
    save_checkpoint(tmp_path / "m", model, tok)
    # The length-target reward varies between completions even for a random model: real updates.
    cmd = [sys.executable, "-m", "reasonlab", "rl", "--model", str(tmp_path / "m"), "--task", "arithmetic",
           "--task-arg", "digits=1", "--steps", "16", "--prompts-per-step", "4", "--group-size", "4",
           "--max-new-tokens", "12", "--eval-every", "0", "--length-target", "6", "--length-alpha", "0.1",
           "--lr", "1e-3", "--save-every", "2", "--dynamic-sampling"]
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
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps({"prompt": build_prompt(p.question),
                                                            "completion": p.reference_completion()}) + "\n"
                                                for p in problems))
    assert main(["sft", "--data", str(tmp_path / "sft.jsonl"), "--steps", "150", "--batch-size", "16",
                 "--lr", "3e-3", "--eval-every", "0", "--out", str(tmp_path / "m")]) == 0
    cmd = [sys.executable, "-m", "reasonlab", "rationales", "--model", str(tmp_path / "m"), "--task", "arithmetic",
           "--task-arg", "digits=1", "--rounds", "3", "--problems", "60", "--samples", "4", "--temperature", "1.0",
           "--max-new-tokens", "24", "--steps", "40", "--batch-size", "4", "--save-every", "3",
           "--eval-problems", "10", "--continue-training"]
    start = time.monotonic()
    subprocess.run([*cmd, "--out", str(tmp_path / "a")], env=ENV, check=True, capture_output=True)
    duration = time.monotonic() - start

    def records(out):
        keep = ("round", "samples", "kept", "solved", "accuracy", "format_rate", "mean_think_tokens")
        return [{k: r[k] for k in keep} for r in (json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())]

    reference = records(tmp_path / "a")
    assert [r["round"] for r in reference] == [1, 2, 3] and sum(r["kept"] for r in reference) > 0
    # Kill after start-up (~4 s of imports) at a random moment inside the run.
    delay = random.uniform(min(5.0, duration * 0.5), duration * 0.9)
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "b")], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
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
