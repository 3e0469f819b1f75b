"""The vLLM rollout engine's own logic, without vLLM: request parameters, the weights it is sent
(names, LoRA merged), the conversion of its outputs to a Rollout, and the sync protocol, against a
stand-in `LLM` that holds a real Hugging Face model and samples with the built-in engine.
Run: pytest tests/engine/test_rollout_vllm.py"""

import importlib.util
from types import SimpleNamespace

import pytest
import torch

from reasonlab.cli import main
from reasonlab.engine import SamplingParams, generate
from reasonlab.errors import UserError
from reasonlab.model import export_hf, load_model
from reasonlab.rollout_vllm import (
    VLLMEngine,
    WeightReceiver,
    hf_named_weights,
    rollout_from_outputs,
    vllm_request_params,
)
from reasonlab.runtime import RuntimeOptions, add_lora
from tests.model.test_model import make_tiny_hf


def test_request_params_map_ours_to_vllms():
    reqs = vllm_request_params(
        SamplingParams(max_new_tokens=32, temperature=0.7, top_p=0.9, row_seeds=[5, 9]), 2
    )
    assert [r["seed"] for r in reqs] == [5, 9]
    r = reqs[0]
    assert (r["temperature"], r["top_p"], r["top_k"], r["max_tokens"]) == (0.7, 0.9, -1, 32)
    assert r["stop"] == ["</answer>"] and r["include_stop_str_in_output"] and r["logprobs"] == 0
    assert [r["seed"] for r in vllm_request_params(SamplingParams(seed=3), 3)] == [3, 4, 5]
    assert vllm_request_params(SamplingParams(top_k=4, stop_at_answer=False), 1)[0]["top_k"] == 4
    assert vllm_request_params(SamplingParams(stop_at_answer=False), 1)[0]["stop"] == []
    with pytest.raises(ValueError, match="thinking-budget"):
        vllm_request_params(SamplingParams(think_budget=8), 2)
    with pytest.raises(ValueError, match="Wait"):
        vllm_request_params(SamplingParams(extend=1), 2)


def test_builtin_weights_go_out_under_hugging_face_names(tiny_gpt, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = tiny_gpt
    export_hf(model, tok, tmp_path / "hf")
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    sent = dict(hf_named_weights(model))
    assert set(sent) - {"lm_head.weight"} == set(reference) - {"lm_head.weight"}
    assert all(torch.equal(sent[k], reference[k]) for k in reference if k in sent)


def test_lora_weights_are_sent_merged_and_the_model_is_untouched(tmp_path):
    make_tiny_hf(tmp_path / "hf")
    model, _ = load_model(tmp_path / "hf")
    plain = {k: v.clone() for k, v in model.hf.state_dict().items()}
    add_lora(model, RuntimeOptions(lora_rank=4, lora_targets="q_proj"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained adapter: B != 0
    sent = dict(hf_named_weights(model))
    assert set(sent) == set(plain)
    changed = {k for k in plain if not torch.allclose(sent[k], plain[k])}
    assert changed and all(k.endswith("q_proj.weight") for k in changed)
    layer = model.hf.base_model.model.model.layers[0].self_attn.q_proj
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
    assert torch.allclose(
        sent["model.layers.0.self_attn.q_proj.weight"],
        plain["model.layers.0.self_attn.q_proj.weight"] + delta,
        atol=1e-6,
    )
    assert torch.equal(
        layer.base_layer.weight, plain["model.layers.0.self_attn.q_proj.weight"]
    )  # never merged


def as_vllm_outputs(rollout):
    """The built-in engine's rollout, dressed as vLLM RequestOutputs."""
    return [
        SimpleNamespace(
            prompt_token_ids=p,
            outputs=[
                SimpleNamespace(
                    token_ids=rollout.tokens[i, : int(rollout.lengths[i])].tolist(),
                    logprobs=[
                        {int(t): SimpleNamespace(logprob=float(lp))}
                        for t, lp in zip(rollout.tokens[i, : int(rollout.lengths[i])], rollout.logprobs[i])
                    ],
                )
            ],
        )
        for i, p in enumerate(rollout.prompt_ids)
    ]


def test_outputs_become_the_same_rollout(tiny_gpt):
    model, tok = tiny_gpt
    prompts = ["12+34\n<think>", "7*8\n", "1\n<think>"]
    ours = generate(model, tok, prompts, SamplingParams(max_new_tokens=24, seed=1))
    theirs = rollout_from_outputs(as_vllm_outputs(ours), prompts, tok)
    assert theirs.texts == ours.texts and theirs.finish_reason == ours.finish_reason
    assert theirs.think_tokens == ours.think_tokens and torch.equal(theirs.tokens, ours.tokens)
    assert torch.allclose(theirs.logprobs, ours.logprobs)
    assert torch.equal(theirs.sampled_mask, ours.sampled_mask)  # nothing forced: all ones up to each length


def test_outputs_past_the_answer_stay_when_rollouts_run_to_end_of_text(tiny_gpt):
    """GRPO's rollouts run to end-of-text (`stop_at_answer` off: vLLM gets no stop string, line
    above): what vLLM wrote after </answer> stays in the rollout; with `stop_at_answer` the row ends
    at </answer>."""
    _, tok = tiny_gpt
    answer, tail = tok.encode("<think>a</think><answer>3</answer>"), tok.encode("\n4")
    ids = answer + tail + [tok.eos_id]
    out = SimpleNamespace(
        prompt_token_ids=tok.encode("1\n"),
        outputs=[SimpleNamespace(token_ids=ids, logprobs=[{t: SimpleNamespace(logprob=-0.5)} for t in ids])],
    )
    on = rollout_from_outputs([out], ["1\n"], tok, stop_at_answer=False)
    assert on.tokens[0, : int(on.lengths[0])].tolist() == ids and on.finish_reason == ["stop"]
    cut = rollout_from_outputs([out], ["1\n"], tok)
    assert cut.tokens[0, : int(cut.lengths[0])].tolist() == answer and cut.finish_reason == ["stop"]


class StandInLLM:
    """What the engine needs of `vllm.LLM`, held by a real model: collective_rpc calls the worker
    extension on a worker whose model loads weights by name; generate samples with our engine."""

    def __init__(self, path):
        self.served, self.tok = load_model(path)
        served = self.served

        class Model:
            def load_weights(self, weights):
                state = served.hf.state_dict()
                for name, tensor in weights:
                    state[name].copy_(tensor)

        self.worker = WeightReceiver()
        self.worker.model_runner = SimpleNamespace(model=Model())
        self.cache_resets = 0

    def collective_rpc(self, method, args=()):
        return [getattr(self.worker, method)(*args)]

    def reset_prefix_cache(self):
        self.cache_resets += 1

    def generate(self, prompts, requests, use_tqdm=False):
        r = requests[0]
        rollout = generate(
            self.served,
            self.tok,
            prompts,
            SamplingParams(max_new_tokens=r["max_tokens"], temperature=r["temperature"]),
        )
        return as_vllm_outputs(rollout)


class DictEngine(VLLMEngine):
    def _sampling_params(self, kwargs):
        return kwargs


def test_sync_then_sample_follows_the_trainer(tmp_path):
    make_tiny_hf(tmp_path / "hf")
    trainer, tok = load_model(tmp_path / "hf")
    engine = DictEngine(StandInLLM(tmp_path / "hf"), tok)
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # the trainer took steps
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    prompts = ["3+4\n<think>", "12\n"]
    before = engine.generate(prompts, greedy)
    assert engine.sync_weights(trainer) == len(trainer.hf.state_dict())
    after = engine.generate(prompts, greedy)
    assert after.texts == generate(trainer, tok, prompts, greedy).texts != before.texts
    assert engine.syncs == 1 and engine.llm.cache_resets == 1


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_a_clear_error(tiny_gpt, tmp_path, capsys):
    model, tok = tiny_gpt
    with pytest.raises(UserError, match=r"reasonlab\[vllm\]"):
        VLLMEngine.from_model(model, tok)
    from reasonlab.model import save_checkpoint

    save_checkpoint(tmp_path / "m", model, tok)
    assert (
        main(
            [
                "rl",
                "--model",
                str(tmp_path / "m"),
                "--task",
                "arithmetic",
                "--steps",
                "1",
                "--rollout-engine",
                "vllm",
                "--out",
                str(tmp_path / "rl"),
            ]
        )
        == 2
    )
    assert "reasonlab[vllm]" in capsys.readouterr().err
