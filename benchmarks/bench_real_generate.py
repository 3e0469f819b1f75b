"""Generation at GRPO's shape on a real pretrained model: reasonlab's engine against
`transformers.generate`, same weights, prompts, sampling and threads, in one process.

GRPO's shape: P prompts x G samples each (a group shares its prompt), two-digit sums through the
model's chat template, temperature 1, at most `--new-tokens` new tokens, each row stopping at the
model's end-of-turn token, so rows finish at different lengths. Both sides get the same model
object (`--model`: a Hugging Face folder, a reasonlab run folder or a `.gguf` file) in the same
dtype. Counted: the tokens each row generated up to and including its stop (what a trainer
uses); `transformers.generate` keeps finished rows in the batch until the last one stops, which
is its cost, not counted work.

Also printed: the floor, `2 * N` FLOPs a generated token (N: the parameters every token's forward
multiplies by, the output layer included) at this machine's matmul peak measured at a decode
step's shape (64 x 576 x 1536, the dtype given), and each side's share of it (effective MFU).
`--repeats R` runs the two sides R times, alternating, and reports medians (the ratio is the
median of the R paired ratios, so a machine whose speed moves between pairs moves both sides).

The ceiling: `transformers.generate` computes every row's prompt and keeps finished rows in the
batch until the longest row ends, the engine computes each distinct prompt once and only the rows
still running. If both ran their matmuls equally fast, the ratio would be the ratio of those
token-forward counts times the ratio of the tokens counted (`ratio_ceiling`); the engine beats it
only by running its (shrinking) batches' matmuls faster than `generate` runs its full ones.
The last line is one JSON line with a `ratio` key (engine tokens/s over transformers').

Run: python benchmarks/bench_real_generate.py --model PATH [--prompts 8] [--group 8]
     [--new-tokens 128] [--threads 2] [--dtype float32|bfloat16] [--repeats 3]
"""

import argparse
import json
import statistics
import time

import torch
from transformers.utils import logging as hf_logging

from reasonlab.engine import SamplingParams, generate
from reasonlab.model import load_model
from reasonlab.runtime import keep_freed_memory
from reasonlab.tasks import get_task
from reasonlab.template import build_prompt

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def matmul_peak(dtype: torch.dtype, m: int = 64, k: int = 576, n: int = 1536, repeats: int = 200) -> float:
    """FLOP/s of an (m x k) @ (k x n) product in `dtype`, the shape of one decode step's MLP."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(20):
        a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n * repeats / best


def matmul_params(hf_model) -> int:
    """Parameters a token's forward multiplies by: all of them but the input embedding, plus the
    output layer (tied to the embedding in SmolLM2, so counted once here)."""
    embed = hf_model.get_input_embeddings().weight
    out = hf_model.get_output_embeddings().weight
    total = sum(p.numel() for p in hf_model.parameters())
    return (
        total - embed.numel() + out.numel() if out.data_ptr() == embed.data_ptr() else total - embed.numel()
    )


def ours(model, tok, prompts: list[str], new_tokens: int, seed: int) -> tuple[int, float, int]:
    """Tokens generated, seconds, and token forwards computed (each distinct prompt once, then one
    per running row a step)."""
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, stop_at_answer=False, seed=seed)
    start = time.perf_counter()
    rollout = generate(model, tok, prompts, params)
    seconds = time.perf_counter() - start
    tokens = int(rollout.lengths.sum())
    return tokens, seconds, sum(len(ids) for ids in {tuple(p) for p in rollout.prompt_ids}) + tokens


def theirs(
    hf_model, tok, prompts: list[str], group: int, new_tokens: int, seed: int
) -> tuple[int, float, int]:
    """Tokens generated up to each row's stop, seconds, and token forwards computed (every row's
    padded prompt, then every row at every step until the longest row ends)."""
    distinct = prompts[::group]  # each prompt once, sampled `group` times (num_return_sequences)
    enc = tok.hf(distinct, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        out = hf_model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=new_tokens,
            num_return_sequences=group,
            eos_token_id=tok.eos_id,
            pad_token_id=tok.pad_id,
        )
    seconds = time.perf_counter() - start
    new = out[:, enc["input_ids"].shape[1] :]
    ended = new == tok.eos_id
    lengths = torch.where(
        ended.any(-1),
        ended.float().argmax(-1) + 1,
        torch.full_like(ended[:, 0], new.shape[1], dtype=torch.long),
    )
    return int(lengths.sum()), seconds, out.shape[0] * out.shape[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model", required=True, help="HF folder, reasonlab run folder or .gguf file")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI does (for every side compared here: one process)
    hf_logging.disable_progress_bar()
    dtype = DTYPES[args.dtype]

    model, tok = load_model(args.model, dtype)
    model.eval()
    problems = get_task("arithmetic", digits=2).problems(args.prompts, "test", seed=args.seed)
    prompts = [
        build_prompt(p.question, style="chat", tokenizer=tok.hf) for p in problems for _ in range(args.group)
    ]
    ours(model, tok, prompts[:2], 4, args.seed)  # warm-up: first calls allocate
    theirs(model.hf, tok, prompts[:2], 2, 4, args.seed)

    runs = []  # (ours, theirs) per repeat: (tokens, seconds, token forwards)
    for _ in range(args.repeats):
        runs.append(
            (
                ours(model, tok, prompts, args.new_tokens, args.seed),
                theirs(model.hf, tok, prompts, args.group, args.new_tokens, args.seed),
            )
        )
    n, peak = matmul_params(model.hf), matmul_peak(dtype)
    floor = peak / (2 * n)  # tokens/s when every FLOP runs at the matmul peak
    (ours_tokens, _, ours_forwards), (hf_tokens, _, hf_forwards) = runs[0]
    ours_s = statistics.median(o[1] for o, _ in runs)
    hf_s = statistics.median(h[1] for _, h in runs)
    ratio = statistics.median((o[0] / o[1]) / (h[0] / h[1]) for o, h in runs)
    ceiling = (hf_forwards / ours_forwards) * (ours_tokens / hf_tokens)
    print(
        f"model: {n:,} matmul params, {args.dtype}, {args.prompts} prompts x {args.group} samples, <= "
        f"{args.new_tokens} new tokens, {args.threads} threads; matmul peak {peak / 1e9:.0f} GFLOP/s, "
        f"floor {floor:.0f} tokens/s; median of {args.repeats} alternating runs"
    )
    print(f"{'engine':<24}{'tokens':>8}{'forwards':>10}{'seconds':>10}{'tokens/s':>10}{'MFU':>8}")
    rows = [
        ("reasonlab.engine", ours_tokens, ours_forwards, ours_s),
        ("transformers.generate", hf_tokens, hf_forwards, hf_s),
    ]
    for name, tokens, forwards, seconds in rows:
        print(
            f"{name:<24}{tokens:>8}{forwards:>10}{seconds:>10.1f}{tokens / seconds:>10.1f}"
            f"{tokens / seconds / floor:>8.1%}"
        )
    print(
        f"ratio {ratio:.2f} "
        f"(each run: {', '.join(f'{(o[0] / o[1]) / (h[0] / h[1]):.2f}' for o, h in runs)}); "
        f"at equal matmul speed {ceiling:.2f}"
    )
    ours_tps, hf_tps = ours_tokens / ours_s, hf_tokens / hf_s
    print(
        json.dumps(
            {
                "bench": "real_generate",
                "model": str(args.model),
                "dtype": args.dtype,
                "rows": args.prompts * args.group,
                "new_tokens": args.new_tokens,
                "threads": args.threads,
                "repeats": args.repeats,
                "matmul_params": n,
                "peak_gflops": round(peak / 1e9, 1),
                "floor_tokens_per_s": round(floor),
                "ours_tokens_per_s": round(ours_tps, 1),
                "hf_tokens_per_s": round(hf_tps, 1),
                "ours_forwards": ours_forwards,
                "hf_forwards": hf_forwards,
                "ours_mfu": round(ours_tps / floor, 3),
                "hf_mfu": round(hf_tps / floor, 3),
                "ratio_ceiling": round(ceiling, 2),
                "ratio": round(ratio, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
