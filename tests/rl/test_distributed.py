"""torchrun with 2 processes on the gloo backend (CPU): the same global batch and seed give the
single-process loss curve, for sft and rl, with DDP and with FSDP2.
Run: pytest tests/rl/test_distributed.py"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = Path(sys.executable).with_name("torchrun")


needs_torchrun = pytest.mark.skipif(
    not TORCHRUN.exists() and not shutil.which("torchrun"), reason="torchrun not installed"
)


@needs_torchrun
def test_ddp_two_processes_match_one(tmp_path):
    rows = [
        {"prompt": f"{i}*{j}=", "completion": f"<think>{i} times {j}</think><answer>{i * j}</answer>"}
        for i in range(12)
        for j in range(12)
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [
        "sft",
        "--device",
        "cpu",
        "--data",
        str(tmp_path / "d.jsonl"),
        "--steps",
        "12",
        "--batch-size",
        "8",
        "--eval-every",
        "0",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "2",
    ]
    subprocess.run(
        [sys.executable, "-m", "reasonlab", *args, "--out", str(tmp_path / "one")],
        env=ENV,
        check=True,
        capture_output=True,
    )
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "reasonlab",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )  # ranks whose collective calls split would hang: fail instead
    assert proc.returncode == 0, proc.stderr[-2000:]
    one = [json.loads(line)["loss"] for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line)["loss"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 12
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5
    assert one[-1] < one[0]  # it trained
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()  # rank 0 saved the (unwrapped) model


def run_pair(
    tmp_path, args: list[str], metrics: str, extra_two: list[str] = ()
) -> tuple[list[dict], list[dict]]:
    """The command once in one process and once under torchrun with 2; each run's metrics lines."""
    one = subprocess.run(
        [sys.executable, "-m", "reasonlab", *args, "--out", str(tmp_path / "one")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    two = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "reasonlab",
            *args,
            *extra_two,
            "--out",
            str(tmp_path / "two"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )  # ranks whose collective calls split would hang: fail instead
    assert two.returncode == 0, two.stderr[-12000:]  # every rank's lines: the first error may be far up

    def read(run):
        return [json.loads(line) for line in (tmp_path / metrics.format(run=run)).read_text().splitlines()]

    return read("one"), read("two")


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory):
    from reasonlab.model import new_builtin, save_checkpoint
    from reasonlab.model.gpt import GPTConfig

    model, tok = new_builtin(
        GPTConfig(d_model=64, n_layer=2, n_head=4, n_kv_head=4, d_ff=128, max_seq_len=96), seed=1
    )
    return str(save_checkpoint(tmp_path_factory.mktemp("start") / "base", model, tok))


@needs_torchrun
def test_rl_sharded_rollouts_two_processes_match_one(tmp_path, start_checkpoint):
    """Each rank samples and trains 2 of the 4 problems; per-row seeds make the samples those of one
    process, and global normalisation makes the update the same. The length-target reward gives
    most groups a spread (a random model never gets the format right)."""
    args = [
        "rl",
        "--device",
        "cpu",
        "--model",
        start_checkpoint,
        "--task",
        "arithmetic",
        "--steps",
        "4",
        "--prompts-per-step",
        "4",
        "--group-size",
        "4",
        "--max-new-tokens",
        "24",
        "--eval-every",
        "2",
        "--eval-problems",
        "6",
        "--length-target",
        "6",
        "--length-alpha",
        "0.1",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "1",
        "--no-skip-flat-groups",
    ]  # one process would skip flat groups: its logged entropy would cover fewer rows
    one, two = run_pair(tmp_path, args, "{run}/metrics.jsonl")

    def steps(rows):
        return [r for r in rows if "loss" in r]

    assert len(steps(one)) == len(steps(two)) == 4
    for a, b in zip(steps(one), steps(two)):
        for key in ("reward/mean", "completions/mean_length", "reward/length_target"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), key  # the same samples
        for key in ("loss", "grad_norm", "entropy"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key  # the same update
    assert steps(one)[0]["grad_norm"] > 0
    evals = [(r["eval/accuracy"], r["eval/mean_think_tokens"]) for r in one if "eval/accuracy" in r]
    assert evals == [(r["eval/accuracy"], r["eval/mean_think_tokens"]) for r in two if "eval/accuracy" in r]
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()


@needs_torchrun
def test_rl_skipping_flat_groups_under_torchrun_matches_one_process(tmp_path, start_checkpoint):
    """Flat groups skipped (the default) with micro-batches of one group, under FSDP2: the ranks
    then hold different numbers of micro-batches, and the one with fewer repeats its last one with
    weight 0, so the ranks' collective calls match (without it this run hangs) and the update is
    still the one process's."""
    args = [
        "rl",
        "--device",
        "cpu",
        "--model",
        start_checkpoint,
        "--task",
        "arithmetic",
        "--steps",
        "4",
        "--prompts-per-step",
        "4",
        "--group-size",
        "4",
        "--max-new-tokens",
        "24",
        "--eval-every",
        "0",
        "--length-target",
        "6",
        "--length-alpha",
        "0.1",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "1",
        "--micro-batch-size",
        "4",
        "--updates",
        "2",
    ]
    one, two = run_pair(tmp_path, args, "{run}/metrics.jsonl", extra_two=["--fsdp"])
    assert any(m["sampling/groups_trained"] < 4 for m in one)  # some group was flat and skipped
    for a, b in zip(one, two):
        assert a["reward/mean"] == pytest.approx(b["reward/mean"], abs=1e-9)
        for key in ("loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key


@needs_torchrun
def test_fsdp2_sft_and_rl_match_one_process(tmp_path, start_checkpoint):
    rows = [
        {"prompt": f"{i}*{j}=", "completion": f"<think>{i} times {j}</think><answer>{i * j}</answer>"}
        for i in range(8)
        for j in range(8)
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [
        "sft",
        "--device",
        "cpu",
        "--model",
        start_checkpoint,
        "--data",
        str(tmp_path / "d.jsonl"),
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--eval-every",
        "0",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "1",
    ]
    one, two = run_pair(tmp_path / "sft", args, "{run}/metrics.jsonl", extra_two=["--fsdp"])
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(one, two)) < 1e-5 and len(one) == len(two) == 6
    from safetensors.torch import load_file

    w1, w2 = (load_file(tmp_path / "sft" / run / "model" / "model.safetensors") for run in ("one", "two"))
    assert w1.keys() == w2.keys() and max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4

    args = [
        "rl",
        "--device",
        "cpu",
        "--model",
        start_checkpoint,
        "--task",
        "arithmetic",
        "--steps",
        "2",
        "--prompts-per-step",
        "2",
        "--group-size",
        "4",
        "--max-new-tokens",
        "16",
        "--eval-every",
        "0",
        "--length-target",
        "6",
        "--length-alpha",
        "0.1",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "1",
    ]
    one, two = run_pair(tmp_path / "rl", args, "{run}/metrics.jsonl", extra_two=["--fsdp"])
    for a, b in zip(one, two):
        assert a["reward/mean"] == pytest.approx(b["reward/mean"], abs=1e-9)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_fsdp_and_lora_refuse_what_they_cannot_do(tmp_path, start_checkpoint):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "reasonlab", *args], env=ENV, capture_output=True, text=True
        )

    rl = [
        "rl",
        "--device",
        "cpu",
        "--model",
        start_checkpoint,
        "--task",
        "arithmetic",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "x"),
    ]
    for args, message in [
        (["--fsdp"], "--fsdp needs several processes"),
        (["--lora-rank", "4"], "LoRA needs a Hugging Face model"),
    ]:
        proc = run(*rl, *args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
