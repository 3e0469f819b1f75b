"""Where models run: `--device` (auto, cpu, cuda, cuda:N) and the GPU paths.

The CPU half runs everywhere (CI included). The tests marked `gpu` need a CUDA device and skip
without one; they check that the CUDA path computes what the CPU path computes (the same greedy
tokens, logits within float tolerance) and that every trainer keeps its model, its reference and
its batches on the GPU. Run: pytest tests/test_device.py"""

import json
import os

import pytest
import torch

from reasonlab.cli import main
from reasonlab.engine import SamplingParams, generate
from reasonlab.errors import UserError
from reasonlab.model import GPTConfig, load_model, new_builtin, save_checkpoint
from reasonlab.runtime import MALLOC_ENV as MALLOC_ENV_NAMES
from reasonlab.runtime import resolve_device
from reasonlab.tasks import get_task
from reasonlab.template import build_prompt
from tests.model.test_model import make_tiny_hf

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_resolve_device_names_and_mistakes():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu0", "tpu", "cuda:x"):
        with pytest.raises(UserError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")
    else:
        with pytest.raises(UserError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, tok = new_builtin(
        GPTConfig(d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=128, max_seq_len=128), seed=3
    )
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m", model, tok))


def test_cli_device_mistake_is_one_line(checkpoint, tmp_path, capsys):
    assert main(["generate", "--model", checkpoint, "--task", "arithmetic", "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "--device 'tpu'" in err and "Traceback" not in err
    if not torch.cuda.is_available():
        assert main(["eval", "--model", checkpoint, "--task", "arithmetic", "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--device", "tpu", "--out", str(out)]) == 2  # refused before any stage
    assert "--device 'tpu'" in capsys.readouterr().err and not out.exists()


def test_cli_cpu_device_runs(checkpoint, capsys):
    assert (
        main(
            [
                "generate",
                "--model",
                checkpoint,
                "--task",
                "arithmetic",
                "--problems",
                "2",
                "--n",
                "1",
                "--max-new-tokens",
                "8",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "2 completions" in capsys.readouterr().out


# ---- on a GPU -------------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("kind", ["builtin", "hf"])
def test_gpu_sampling_matches_cpu(tmp_path, checkpoint, kind):
    """Greedy tokens on the GPU are the CPU's (fp32 both; a rare near-tie could differ, so the
    prompts are few and the check is per row), and the decode logits match a full forward pass."""
    path = checkpoint
    if kind == "hf":
        make_tiny_hf(tmp_path / "hf")
        path = tmp_path / "hf"
    model, tok = load_model(path)
    task = get_task("chain", length=3)
    prompts = [build_prompt(p.question) for p in task.problems(6, seed=0)]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=24)
    on_cpu = generate(model, tok, prompts, greedy)
    model = model.to("cuda")
    on_gpu = generate(model, tok, prompts, greedy)
    assert on_gpu.tokens.device.type == "cpu"  # a Rollout is always on the CPU
    assert sum(a == b for a, b in zip(on_cpu.texts, on_gpu.texts)) >= 5
    # grouped rows with per-row seeds (GRPO's path): row i's draws depend on its seed alone
    grouped = SamplingParams(temperature=1.0, max_new_tokens=16, row_seeds=list(range(12)))
    a = generate(model, tok, [p for p in prompts[:3] for _ in range(4)], grouped)
    b = generate(model, tok, [p for p in prompts[:3] for _ in range(4)], grouped)
    assert a.texts == b.texts
    ids = torch.tensor([tok.encode(prompts[0])], device="cuda")
    cache = model.init_cache(1, ids.shape[1] + 1)
    n = ids.shape[1]
    stepwise = model.decode(
        ids, torch.arange(n, device="cuda")[None], torch.ones(1, n, dtype=torch.long, device="cuda"), cache
    )
    assert torch.allclose(stepwise, model(ids), atol=1e-4)


@gpu
def test_gpu_grpo_keeps_everything_on_the_gpu(checkpoint, tmp_path):
    """β > 0 (a reference copy), μ = 2 (ratio clipping) and dynamic sampling, on the GPU: the model,
    its reference and the optimiser state stay there, the loss is finite and the weights move."""
    from reasonlab.rl import GRPOConfig, train_grpo

    model, tok = load_model(checkpoint)
    model = model.to("cuda")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = GRPOConfig(
        steps=3,
        prompts_per_step=4,
        group_size=4,
        max_new_tokens=24,
        beta=0.04,
        updates=2,
        length_target=6,
        length_alpha=0.1,
        eval_every=3,
        eval_problems=8,
        lr=1e-3,
        warmup_steps=1,
        save_every=3,
    )
    rows = []
    train_grpo(model, tok, get_task("arithmetic", digits=1), cfg, out_dir=tmp_path / "rl", log=rows.append)
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "eval/accuracy" in rows[-1]
    state = torch.load(tmp_path / "rl" / "state" / "state.pt", map_location="cpu", weights_only=False)
    assert state["reference"] is not None and state["step"] == 3


@gpu
def test_gpu_cli_pretrain_sft_rl_eval(tmp_path, capsys):
    """The commands on `--device cuda`, a tiny HF model with LoRA included; checkpoints written from
    the GPU load back on the CPU."""
    assert (
        main(
            [
                "pretrain",
                "--task",
                "chain",
                "--task-arg",
                "length=2",
                "--steps",
                "4",
                "--batch-size",
                "8",
                "--corpus-size",
                "64",
                "--eval-every",
                "0",
                "--check-problems",
                "16",
                "--out",
                str(tmp_path / "base"),
                "--device",
                "cuda",
            ]
        )
        == 0
    )
    rows = [
        {"prompt": f"{i}+{j}=", "completion": f"<think>{i}+{j}</think><answer>{i + j}</answer>"}
        for i in range(6)
        for j in range(6)
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (
        main(
            [
                "sft",
                "--model",
                str(tmp_path / "base"),
                "--data",
                str(tmp_path / "d.jsonl"),
                "--steps",
                "3",
                "--batch-size",
                "8",
                "--out",
                str(tmp_path / "sft"),
                "--device",
                "cuda",
            ]
        )
        == 0
    )
    make_tiny_hf(tmp_path / "hf")
    for model, extra in [(tmp_path / "sft", []), (tmp_path / "hf", ["--lora-rank", "4", "--beta", "0.04"])]:
        out = tmp_path / f"rl-{model.name}"
        assert (
            main(
                [
                    "rl",
                    "--model",
                    str(model),
                    "--task",
                    "arithmetic",
                    "--task-arg",
                    "digits=1",
                    "--steps",
                    "2",
                    "--prompts-per-step",
                    "2",
                    "--group-size",
                    "4",
                    "--max-new-tokens",
                    "16",
                    "--eval-every",
                    "2",
                    "--eval-problems",
                    "4",
                    "--out",
                    str(out),
                    "--device",
                    "cuda",
                    *extra,
                ]
            )
            == 0
        )
        loaded, _ = load_model(out / "model")
        assert next(loaded.parameters()).device.type == "cpu"
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "rl-sft" / "model"),
                "--task",
                "arithmetic",
                "--problems",
                "4",
                "--max-new-tokens",
                "16",
                "--device",
                "cuda",
            ]
        )
        == 0
    )
    assert "accuracy" in capsys.readouterr().out


def test_keep_freed_memory_sets_glibc_malloc_unless_the_user_did(monkeypatch):
    import platform

    from reasonlab.runtime import MALLOC_ENV, keep_freed_memory

    for name in MALLOC_ENV:
        monkeypatch.delenv(name, raising=False)
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert keep_freed_memory() is False
        return
    assert keep_freed_memory() is True
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")  # the user's choice wins
    assert keep_freed_memory() is False


MAPPED = """
import ctypes, sys, torch
from reasonlab.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Info
x = torch.empty(25 << 20).fill_(1)  # 100 MB, held
info = mallinfo2()
print(info.hblkhd, info.arena)
"""


def test_keep_freed_memory_serves_big_tensors_from_the_heap_not_fresh_mmaps():
    """glibc's default maps a 100 MB tensor with `mmap` (freed, it goes back to the kernel and the
    next one is faulted in afresh: ~1.4 ms a MB measured); after `keep_freed_memory` it comes from
    the heap, which keeps freed memory for the next one. Read from malloc's own counts (mallinfo2:
    bytes in mapped blocks, bytes in the heap), in a fresh interpreter each."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc only")
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV_NAMES}

    def run(mode: str) -> tuple[int, int]:
        out = subprocess.run(
            [sys.executable, "-c", MAPPED, mode], env=env, check=True, capture_output=True, text=True
        )
        return tuple(int(v) for v in out.stdout.split())

    size = 100 << 20
    mapped, heap = run("default")
    assert mapped >= size and heap < size
    mapped, heap = run("keep")
    assert mapped < size and heap >= size


def test_autocast_modes_on_the_cpu(tiny_gpt):
    """`--autocast`: auto leaves CPU passes in float32 (GPUs only), on runs them in bf16 (the log-probs
    close to float32's, not equal), off never; a bad mode is refused."""
    from reasonlab.rl.update import token_logprobs
    from reasonlab.runtime import autocast

    cpu = torch.device("cpu")
    for mode, on in (("auto", False), ("on", True), ("off", False)):
        with autocast(cpu, mode):
            assert torch.is_autocast_enabled("cpu") is on
    with pytest.raises(ValueError, match="autocast"):
        autocast(cpu, "bf16")
    model, tok = tiny_gpt
    inputs = torch.tensor([tok.encode("12+34\n<think>1+3=4</think><answer>46</answer>")])
    fp32, _ = token_logprobs(model, inputs, 1.0, "auto")
    assert torch.equal(fp32, token_logprobs(model, inputs, 1.0, "off")[0])
    bf16, _ = token_logprobs(model, inputs, 1.0, "on")
    assert not torch.equal(bf16, fp32) and torch.allclose(bf16, fp32, atol=0.1)
