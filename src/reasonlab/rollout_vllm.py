"""vLLM as the rollout engine on GPUs (`reasonlab rl --rollout-engine vllm`, extra `reasonlab[vllm]`).

The trainer keeps its model; a colocated `vllm.LLM` on the same GPU samples the groups. Before each
step's sampling the trainer's current weights are pushed into vLLM (`sync_weights`): Hugging Face
parameter names (the built-in GPT already uses Llama's), LoRA updates added to the copies,
the model itself untouched, FSDP2 shards gathered by the caller (`parallel.gathered`). vLLM receives them
through a worker extension (`WeightReceiver.reasonlab_load_weights` → the model's own
`load_weights`), called with `LLM.collective_rpc`, the interface vLLM provides for RLHF loops.

Completions come back as the same `Rollout` the built-in engine returns (token ids, log-probs,
sampled mask, thinking tokens, finish reasons), computed by the same per-row state machine. What
vLLM cannot do here: the thinking-budget cap and "Wait" extension (use the built-in engine for
budget sweeps), and its log-probs are vLLM's (the trainer recomputes its own anyway).

Everything but the `vllm.LLM` calls is plain Python and is unit-tested without vLLM.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import torch

from .engine import Rollout, RowState, SamplingParams, assemble_rollout, count_rollout
from .errors import UserError
from .template import ANSWER_CLOSE, prompt_opens_think


@dataclass
class VLLMOptions:
    gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "share of GPU memory vLLM may take (the trainer needs the rest)"}
    )
    tensor_parallel_size: int = 1
    dtype: str = "bfloat16"
    max_model_len: int = 4096
    enable_prefix_caching: bool = True  # G completions share each prompt
    enforce_eager: bool = False


def vllm_request_params(params: SamplingParams, n_prompts: int) -> list[dict]:
    """Keyword arguments for one `vllm.SamplingParams` per prompt (per-row seeds map to vLLM's
    per-request seeds). Raises ValueError for what vLLM rollouts do not support."""
    if params.think_budget is not None and params.think_budget != [None] * n_prompts:
        raise ValueError("vLLM rollouts do not apply a thinking-budget cap: use the built-in engine")
    if any(params.extend if isinstance(params.extend, list) else [params.extend]):
        raise ValueError("vLLM rollouts do not extend thinking with 'Wait': use the built-in engine")
    if params.row_seeds is not None and len(params.row_seeds) != n_prompts:
        raise ValueError(f"row_seeds has {len(params.row_seeds)} entries for {n_prompts} prompts")
    base = {
        "temperature": params.temperature,
        "top_k": params.top_k if params.top_k > 0 else -1,  # vLLM: -1 = off
        "top_p": params.top_p,
        "min_tokens": params.min_new_tokens,
        "stop": [ANSWER_CLOSE] if params.stop_at_answer else [],
        "include_stop_str_in_output": True,  # keep </answer>: the format reward needs it
        "skip_special_tokens": False,
        "logprobs": 0,  # the sampled token's log-prob only
    }
    seeds = (
        params.row_seeds
        if params.row_seeds is not None
        else [None if params.seed is None else params.seed + i for i in range(n_prompts)]
    )
    limits = (
        params.max_new_tokens
        if isinstance(params.max_new_tokens, list)
        else [params.max_new_tokens] * n_prompts
    )
    if len(limits) != n_prompts:
        raise ValueError(f"max_new_tokens has {len(limits)} entries for {n_prompts} prompts")
    return [{**base, "max_tokens": n, "seed": seed} for n, seed in zip(limits, seeds)]


def hf_named_weights(model) -> list[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) for every weight vLLM loads: the built-in GPT's names are
    Llama's; an HF model's come without the adapter's prefix; LoRA updates are added to their base
    weights in the copy (the model itself is never merged). Call inside `parallel.gathered`."""
    from .runtime import has_lora, unwrap

    core = unwrap(model)
    if getattr(core, "kind", "") != "hf":
        return [(name, _full(t)) for name, t in core.state_dict().items()]
    if not has_lora(core):
        return [(name, _full(t)) for name, t in core.hf.state_dict().items()]
    peft_model = core.hf
    deltas = {
        f"{name}.base_layer.weight": sum(module.get_delta_weight(a) for a in module.active_adapters)
        for name, module in peft_model.named_modules()
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")
    }
    out = []
    for name, t in peft_model.state_dict().items():
        if "lora_" in name:
            continue
        t = _full(t)
        if name in deltas:  # W + (alpha/r)·BA, computed for the copy: the model is never merged
            t = t + deltas[name].to(t.dtype)
        out.append((name.removeprefix("base_model.model.").replace(".base_layer.", "."), t))
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach()


def rollout_from_outputs(outputs, prompts: list[str], tokenizer, stop_at_answer: bool = True) -> Rollout:
    """vLLM `RequestOutput`s (one completion each) as a `Rollout`: the built-in engine's per-row
    state machine reads the tokens, so thinking counts and finish reasons mean the same; a row ends
    at its first </answer> when `stop_at_answer` (as the request's stop string had vLLM do)."""
    rows, prompt_ids = [], []
    for out, prompt in zip(outputs, prompts):
        done = out.outputs[0]
        row = RowState(
            tokenizer.tags, tokenizer.wait_ids, tokenizer.eos_id, None, 0, prompt_opens_think(prompt)
        )
        for j, token in enumerate(done.token_ids):
            row.push(int(token), stop_at_answer=stop_at_answer)
            row.sampled.append(1)
            row.logprobs.append(_logprob(done.logprobs, j, int(token)))
            if row.phase == "done":
                break
        rows.append(row)
        prompt_ids.append(list(out.prompt_token_ids))
    return assemble_rollout(rows, prompt_ids, tokenizer)


def _logprob(logprobs, j: int, token: int) -> float:
    """The sampled token's log-prob vLLM returned; missing is an error, never a made-up 0 (the
    trainer's importance-sampling correction divides by it)."""
    if not logprobs or j >= len(logprobs) or token not in logprobs[j]:
        raise ValueError(f"vLLM returned no log-prob for token {token} at position {j} of a completion")
    entry = logprobs[j][token]
    return float(getattr(entry, "logprob", entry))


class WeightReceiver:
    """vLLM worker extension (`worker_extension_cls`): loads pushed weights into the worker's model."""

    def reasonlab_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        self.model_runner.model.load_weights(weights=weights)
        return len(weights)


class VLLMEngine:
    """A colocated `vllm.LLM` that samples `Rollout`s and takes the trainer's weights each step."""

    def __init__(self, llm, tokenizer):
        self.llm, self.tokenizer, self.syncs = llm, tokenizer, 0

    @classmethod
    def from_model(cls, model, tokenizer, options: VLLMOptions | None = None) -> VLLMEngine:
        """Export `model` (plain: before LoRA or sharding) to a temporary HF folder and start vLLM on it."""
        try:
            import vllm
        except ImportError:
            raise UserError(
                "--rollout-engine vllm needs vLLM on a GPU machine: pip install 'reasonlab[vllm]'"
            ) from None
        from .model import export_hf

        options = options or VLLMOptions()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: weights pass in-process
        folder = tempfile.mkdtemp(prefix="reasonlab-vllm-")
        export_hf(model, tokenizer, f"{folder}/model")
        llm = vllm.LLM(
            model=f"{folder}/model",
            tokenizer=f"{folder}/model",
            dtype=options.dtype,
            gpu_memory_utilization=options.gpu_memory_utilization,
            tensor_parallel_size=options.tensor_parallel_size,
            max_model_len=options.max_model_len,
            enable_prefix_caching=options.enable_prefix_caching,
            enforce_eager=options.enforce_eager,
            worker_extension_cls=f"{__name__}.WeightReceiver",
            # the sampled tokens' log-probs under the sampling distribution (after temperature), as
            # the built-in engine records them and the trainer computes them: the default is the raw
            # logits', which would bias the importance-sampling correction by the temperature
            logprobs_mode="processed_logprobs",
        )
        return cls(llm, tokenizer)

    def sync_weights(self, model) -> int:
        """Push the trainer's current weights; returns how many tensors went over."""
        weights = hf_named_weights(model)
        self.llm.collective_rpc("reasonlab_load_weights", args=(weights,))
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached prompt states belong to the old weights
        self.syncs += 1
        return len(weights)

    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout:
        requests = [self._sampling_params(kw) for kw in vllm_request_params(params, len(prompts))]
        outputs = self.llm.generate(prompts, requests, use_tqdm=False)
        return count_rollout(rollout_from_outputs(outputs, prompts, self.tokenizer, params.stop_at_answer))

    def _sampling_params(self, kwargs: dict):
        import vllm

        return vllm.SamplingParams(**kwargs)
