"""`--rollout-dtype`: GRPO's built-in engine sampling from a bf16 copy of the policy (`rl.sampler`),
refreshed from the float32 weights at each step's first sampling call; no copy for fp32.

Run: pytest tests/rl/test_rollout_dtype.py"""

import json

import pytest
import torch
import torch.nn.functional as F

from reasonlab.engine import SamplingParams, generate
from reasonlab.errors import UserError
from reasonlab.model import GPTConfig, load_model, new_builtin
from reasonlab.rl import GRPOConfig, train_grpo
from reasonlab.rl.sampler import LowPrecisionSampler, lowered_copy
from reasonlab.runtime import precision
from reasonlab.tasks import get_task
from tests.model.test_model import make_tiny_hf

TASK = get_task("arithmetic", op="+", digits=1)


def tiny_gpt(seed: int = 0):
    return new_builtin(GPTConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=128), seed=seed)


def config(dtype: str, **overrides) -> GRPOConfig:
    """2 steps with a reward spread (the length target), so step 1's update moves the weights."""
    settings = dict(
        steps=2,
        prompts_per_step=2,
        group_size=4,
        max_new_tokens=10,
        eval_every=0,
        lr=1e-2,
        warmup_steps=1,
        length_target=4,
        length_alpha=0.1,
        seed=2,
        rollout_dtype=dtype,
    )
    return GRPOConfig(**{**settings, **overrides})


def spy_on_sampling(monkeypatch) -> list[dict]:
    """Each call of a `LowPrecisionSampler`: its step, its copy, and whether the copy's tensors were
    then the float32 model's rounded to bf16 (the model the trainer hands it)."""
    calls, real = [], LowPrecisionSampler.__call__

    def spy(self, model, prompts, params, step):
        out = real(self, model, prompts, params, step)
        pairs = list(zip(model.parameters(), self.copy.parameters()))
        calls.append(
            {
                "step": step,
                "copy": self.copy,
                "dtypes": {p.dtype for p in self.copy.parameters()},
                "current": all(torch.equal(c, p.detach().to(torch.bfloat16)) for p, c in pairs),
                "weights": [c.detach().clone() for c in self.copy.parameters()],
            }
        )
        return out

    monkeypatch.setattr(LowPrecisionSampler, "__call__", spy)
    return calls


def test_bf16_rollouts_sample_one_copy_refreshed_after_each_update(tmp_path, monkeypatch):
    calls = spy_on_sampling(monkeypatch)
    model, tok = tiny_gpt()
    history = []
    train_grpo(model, tok, TASK, config("bf16"), out_dir=tmp_path, log=history.append)
    assert [c["step"] for c in calls] == [0, 1] and calls[0]["copy"] is calls[1]["copy"]  # one copy, kept
    assert all(c["dtypes"] == {torch.bfloat16} for c in calls)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the policy stays float32
    assert history[0]["grad_norm"] > 0  # step 1 updated the weights...
    # ...and step 2 sampled from them: the copy was refreshed (not stale), to the bf16-rounded weights
    assert calls[1]["current"] and calls[0]["current"]
    assert any(not torch.equal(a, b) for a, b in zip(calls[0]["weights"], calls[1]["weights"]))
    # the rollout correction sees the copy's log-probs: pi_train / pi_rollout is no longer 1 (fp32's is)
    assert all(m["is/ratio_max"] - m["is/ratio_min"] > 1e-3 for m in history)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["sampling/dtype"] == "bfloat16" and run["config"]["rollout_dtype"] == "bf16"


def test_fp32_samples_the_policy_itself(tmp_path, monkeypatch):
    def no_copy(*_):
        raise AssertionError("made a copy for fp32")

    monkeypatch.setattr(LowPrecisionSampler, "__init__", no_copy)
    model, tok = tiny_gpt()
    history = []
    train_grpo(model, tok, TASK, config("fp32", steps=1), out_dir=tmp_path, log=history.append)
    assert history[0]["is/ratio_max"] - history[0]["is/ratio_min"] < 1e-5
    assert json.loads((tmp_path / "run.json").read_text())["config"]["sampling/dtype"] == "float32"


def test_auto_on_a_cpu_without_native_bf16_makes_no_copy(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    monkeypatch.setattr(LowPrecisionSampler, "__init__", lambda *_: pytest.fail("made a copy"))
    model, tok = tiny_gpt()
    train_grpo(model, tok, TASK, config("auto", steps=1))


def test_bf16_with_lora_is_refused_and_auto_falls_back(tmp_path, monkeypatch, capsys):
    pytest.importorskip("peft")
    make_tiny_hf(tmp_path / "hf")
    with pytest.raises(UserError, match="--rollout-dtype bf16 .* LoRA"):
        train_grpo(*load_model(tmp_path / "hf"), TASK, config("bf16", steps=1, lora_rank=2))
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda *_, **__: 2.0)  # auto would take bf16...
    monkeypatch.setattr(precision, "MIN_WIDTH", 0)  # ...even for this narrow model
    monkeypatch.setattr(LowPrecisionSampler, "__init__", lambda *_: pytest.fail("made a copy"))
    train_grpo(*load_model(tmp_path / "hf"), TASK, config("auto", steps=1, lora_rank=2))
    assert "note: --rollout-dtype auto samples in float32: LoRA" in capsys.readouterr().err


def token_logprobs(model, rollout, temperature: float) -> torch.Tensor:
    """The float32 model's log-probs of each row's sampled tokens (one causal pass a row), (B, T)."""
    out = torch.zeros_like(rollout.logprobs)
    with torch.no_grad():
        for i, prompt in enumerate(rollout.prompt_ids):
            n = int(rollout.lengths[i])
            ids = torch.tensor([*prompt, *rollout.tokens[i, :n].tolist()])[None]
            logits = model(ids)[0, len(prompt) - 1 : len(prompt) - 1 + n].float() / temperature
            out[i, :n] = F.log_softmax(logits, -1).gather(-1, rollout.tokens[i, :n, None]).squeeze(-1)
    return out


@pytest.mark.parametrize("builtin", [True, False])
def test_a_bf16_copys_rollout_logprobs_are_float32_and_near_the_models(tmp_path, builtin):
    if builtin:
        model, tok = new_builtin(
            GPTConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=128), seed=1
        )
    else:
        make_tiny_hf(tmp_path / "hf")
        model, tok = load_model(tmp_path / "hf")
    model.eval()
    low = lowered_copy(model, torch.bfloat16)
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}
    params = SamplingParams(max_new_tokens=12, temperature=0.7, row_seeds=list(range(6)))
    rollout = generate(low, tok, ["1+2=", "3+4=", "5+6="] * 2, params)
    assert rollout.logprobs.dtype == torch.float32 and int(rollout.lengths.min()) > 0
    exact = token_logprobs(model, rollout, 0.7)
    mask = torch.arange(rollout.tokens.shape[1])[None] < rollout.lengths[:, None]
    gap = (rollout.logprobs - exact)[mask].abs()
    assert gap.max() < 0.05  # bf16's rounding, no more...
    assert gap.max() > 0  # ...but some: the copy is not the float32 model


def test_an_hf_model_trains_with_bf16_rollouts(tmp_path, monkeypatch):
    calls = spy_on_sampling(monkeypatch)
    make_tiny_hf(tmp_path / "hf")
    model, tok = load_model(tmp_path / "hf")
    history = []
    train_grpo(model, tok, TASK, config("bf16"), log=history.append)
    assert len(history) == 2 and [c["step"] for c in calls] == [0, 1]
    assert all(c["dtypes"] == {torch.bfloat16} and c["current"] for c in calls)
    buffers = dict(calls[0]["copy"].named_buffers())
    assert all(b.dtype == torch.float32 for name, b in buffers.items() if "inv_freq" in name)  # RoPE in fp32
