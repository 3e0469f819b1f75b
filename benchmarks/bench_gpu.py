"""GRPO on a GPU: seconds per step (sampling, training) and peak GPU memory.

Two models, both built here from a config (nothing is downloaded):
- `tiny`: the demo's built-in model (2 layers, d = 64) at the demo's GRPO settings (32 x 4, 64 new
  tokens, dynamic sampling off so every step draws the same rows), from a random start.
- `qwen05`: a Hugging Face Qwen2 model of Qwen2.5-0.5B's shape (24 layers, d = 896, 14 query and 2
  key/value heads, vocabulary 151,936, tied embeddings), random weights, full fine-tuning in float32
  with bf16 autocast: 16 prompts x 8 completions of --new-tokens, micro-batches of --micro-batch
  rows. Random weights never close the template, so every row runs to the token limit: the worst
  case for sampling time. The tokenizer is the built-in character one (other ids decode to nothing).

Prints one line per step and a JSON line per model. Needs a CUDA device.
Run: python benchmarks/bench_gpu.py [--models tiny,qwen05] [--steps 4] [--new-tokens 256]
"""

import argparse
import dataclasses
import json
import statistics
import tempfile
import time

import torch

from reasonlab.lab.settings import DemoConfig, stage_configs
from reasonlab.model import load_model, new_builtin
from reasonlab.rl import GRPOConfig, train_grpo
from reasonlab.tasks import get_task
from reasonlab.train.pretrain import model_config


def qwen05(folder: str):
    from transformers import AutoModelForCausalLM, Qwen2Config

    _, tok = new_builtin()  # ids past its 102 decode to nothing: the text is what the 102 spell
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save(folder)
    return load_model(folder)


def run(name: str, model, tok, cfg: GRPOConfig) -> dict:
    model = model.to("cuda")
    torch.cuda.reset_peak_memory_stats()
    rows = []

    def log(m):
        if "time/generate_s" in m:
            rows.append(m)
            print(
                f"{name} step {m['step']}: generate {m['time/generate_s']:.2f} s, "
                f"train {m['time/train_s']:.2f} s, mean completion {m['completions/mean_length']:.0f} tokens",
                flush=True,
            )

    train_grpo(model, tok, get_task("chain", length=4), cfg, log=log)
    later = rows[1:] or rows  # the first step pays for CUDA's warm-up
    gen = statistics.median(r["time/generate_s"] for r in later)
    train = statistics.median(r["time/train_s"] for r in later)
    tokens = (
        statistics.mean(r["completions/mean_length"] for r in later) * cfg.prompts_per_step * cfg.group_size
    )
    return {
        "bench": "grpo_gpu",
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "device": torch.cuda.get_device_name(),
        "P": cfg.prompts_per_step,
        "G": cfg.group_size,
        "max_new_tokens": cfg.max_new_tokens,
        "generate_s": round(gen, 3),
        "train_s": round(train, 3),
        "step_s": round(gen + train, 3),
        "sampled_tokens_per_s": round(tokens / gen),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--models", default="tiny,qwen05")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=16)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA device")
    results = []
    for name in args.models.split(","):
        if name == "tiny":
            pre_cfg, _, rl_cfg = stage_configs(DemoConfig())
            model, tok = new_builtin(model_config(pre_cfg), seed=0)
            cfg = dataclasses.replace(
                rl_cfg,
                steps=args.steps,
                dynamic_sampling=False,
                eval_every=0,
                max_seconds=0,
                no_format_patience=0,
            )  # a random model: timing, not learning
            results.append(run(name, model, tok, cfg))
        elif name == "qwen05":
            with tempfile.TemporaryDirectory() as folder:
                t0 = time.monotonic()
                model, tok = qwen05(folder)
                print(f"qwen05 built in {time.monotonic() - t0:.0f} s", flush=True)
                cfg = GRPOConfig(
                    steps=args.steps,
                    prompts_per_step=16,
                    group_size=8,
                    max_new_tokens=args.new_tokens,
                    lr=1e-6,
                    eval_every=0,
                    micro_batch_size=args.micro_batch,
                    no_format_patience=0,
                )
                results.append(run(name, model, tok, cfg))
        else:
            raise SystemExit(f"unknown model {name!r}: tiny or qwen05")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
