"""Engine throughput against `transformers` `generate` on the same weights, in one process.

A ~1M-parameter Llama-shaped model (the built-in GPT, 4 layers, d=128, character vocabulary) is
exported to Hugging Face format and loaded with `AutoModelForCausalLM`; both samplers then draw
batch 128 x 64 new tokens (temperature 1, no early stop), on one torch thread. Prints a table, then
one JSON line with a `ratio` key (engine tokens/s over HF tokens/s).

Run: python benchmarks/bench_generate.py [--batch 128] [--new-tokens 64] [--repeats 3]
"""

import argparse
import json
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from reasonlab.engine import SamplingParams, generate
from reasonlab.model import GPTConfig, export_hf, new_builtin
from reasonlab.runtime import keep_freed_memory
from reasonlab.tasks import get_task
from reasonlab.template import build_prompt


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = fn()
        times.append(time.perf_counter() - start)
    return tokens, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()  # as the CLI does (for every side compared here: one process)
    hf_logging.disable_progress_bar()

    model, tok = new_builtin(GPTConfig(n_layer=4, n_head=4, n_kv_head=4, d_model=128), seed=0)
    model.eval()
    prompts = [
        build_prompt(p.question) for p in get_task("arithmetic", digits=4).problems(args.batch, seed=0)
    ]
    with tempfile.TemporaryDirectory() as folder:
        export_hf(model, tok, folder)
        hf = AutoModelForCausalLM.from_pretrained(folder).eval()

    params = SamplingParams(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        temperature=1.0,
        stop_at_answer=False,
        seed=0,
    )
    ours_tokens, ours_s = timed(
        lambda: int(generate(model, tok, prompts, params).lengths.sum()), args.repeats
    )

    enc = tok.hf(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)

    def hf_generate():
        with torch.no_grad():
            out = hf.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=tok.pad_id,
            )
        return (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]

    hf_tokens, hf_s = timed(hf_generate, args.repeats)
    ours_tps, hf_tps = ours_tokens / ours_s, hf_tokens / hf_s
    print(f"model: {model.num_params():,} params, batch {args.batch}, {args.new_tokens} new tokens, 1 thread")
    print(f"{'engine':<22}{'tokens':>8}{'seconds':>10}{'tokens/s':>12}")
    print(f"{'reasonlab.engine':<22}{ours_tokens:>8}{ours_s:>10.3f}{ours_tps:>12.0f}")
    print(f"{'transformers.generate':<22}{hf_tokens:>8}{hf_s:>10.3f}{hf_tps:>12.0f}")
    print(
        json.dumps(
            {
                "bench": "generate",
                "params": model.num_params(),
                "batch": args.batch,
                "new_tokens": args.new_tokens,
                "ours_tokens_per_s": round(ours_tps),
                "hf_tokens_per_s": round(hf_tps),
                "ratio": round(ours_tps / hf_tps, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
