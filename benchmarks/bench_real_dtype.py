"""bf16 against fp32 weights on a real pretrained model: what it changes and what it buys.

The same model (`--model`: a Hugging Face folder, a reasonlab run folder or a `.gguf` file) is
loaded twice, in float32 and in bfloat16 (weights and activations; `--dtype bfloat16` of the
trainers loads this way). On `--prompts` chat-template prompts of two-digit sums it measures:
- the next-token logits of the prompts: the largest and the mean absolute difference, and how
  often the two agree on the most likely token;
- greedy decoding of `--new-tokens` tokens with the engine: the share of rows whose text is the
  same, and of tokens up to a row's first difference;
- the engine's tokens/s sampling a GRPO-shaped batch (`--prompts` x 8, temperature 1) in each.
The last line is one JSON line with a `ratio` key (bf16 tokens/s over fp32 tokens/s).

Run: python benchmarks/bench_real_dtype.py --model PATH [--prompts 16] [--new-tokens 64] [--threads 2]
"""

import argparse
import json
import time

import torch
from transformers.utils import logging as hf_logging

from reasonlab.engine import SamplingParams, generate
from reasonlab.model import load_model
from reasonlab.runtime import keep_freed_memory
from reasonlab.tasks import get_task
from reasonlab.template import build_prompt


def prompt_logits(model, tok, prompts: list[str]) -> torch.Tensor:
    """The next-token logits (B, V), in float32, after each prompt."""
    rows = [torch.tensor(tok.encode(p)) for p in prompts]
    with torch.no_grad():
        return torch.stack([model(ids[None])[0, -1].float() for ids in rows])


def agreement(a, b) -> tuple[float, float]:
    """Share of rows with the same tokens, and share of tokens before each row's first difference."""
    same_rows, prefix, total = 0, 0, 0
    for x, y in zip(a, b):
        n = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y)))
        same_rows += x == y
        prefix += n
        total += max(len(x), len(y))
    return same_rows / len(a), prefix / max(total, 1)


def tokens_per_s(model, tok, prompts: list[str], new_tokens: int) -> float:
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, stop_at_answer=False, seed=0)
    generate(model, tok, prompts[:2], SamplingParams(max_new_tokens=4, seed=0))  # warm-up
    start = time.perf_counter()
    rollout = generate(model, tok, prompts, params)
    return float(rollout.lengths.sum()) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI does (for every side compared here: one process)
    hf_logging.disable_progress_bar()

    problems = get_task("arithmetic", digits=2).problems(args.prompts, "test", seed=0)
    results, greedy, speed = {}, {}, {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model, tok = load_model(args.model, dtype)
        model.eval()
        prompts = [build_prompt(p.question, style="chat", tokenizer=tok.hf) for p in problems]
        results[name] = prompt_logits(model, tok, prompts)
        out = generate(
            model,
            tok,
            prompts,
            SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens, stop_at_answer=False),
        )
        greedy[name] = [row[:n].tolist() for row, n in zip(out.tokens, out.lengths.tolist())]
        speed[name] = tokens_per_s(
            model, tok, [p for p in prompts[: max(1, args.prompts // 2)] for _ in range(8)], args.new_tokens
        )
        del model
    diff = (results["float32"] - results["bfloat16"]).abs()
    top_agree = float((results["float32"].argmax(-1) == results["bfloat16"].argmax(-1)).float().mean())
    rows_same, tokens_same = agreement(greedy["float32"], greedy["bfloat16"])
    print(
        f"next-token logits: max |diff| {diff.max():.3f}, mean {diff.mean():.4f}; "
        f"same top token {top_agree:.1%}"
    )
    print(
        f"greedy, {args.new_tokens} tokens: {rows_same:.1%} of rows identical, "
        f"{tokens_same:.1%} of tokens before the first difference"
    )
    print(f"sampling tokens/s: float32 {speed['float32']:.1f}, bfloat16 {speed['bfloat16']:.1f}")
    print(
        json.dumps(
            {
                "bench": "real_dtype",
                "model": str(args.model),
                "prompts": args.prompts,
                "threads": args.threads,
                "logit_max_abs_diff": round(float(diff.max()), 4),
                "logit_mean_abs_diff": round(float(diff.mean()), 5),
                "top_token_agreement": round(top_agree, 4),
                "greedy_rows_identical": round(rows_same, 4),
                "greedy_token_prefix_agreement": round(tokens_same, 4),
                "fp32_tokens_per_s": round(speed["float32"], 1),
                "bf16_tokens_per_s": round(speed["bfloat16"], 1),
                "ratio": round(speed["bfloat16"] / speed["float32"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
