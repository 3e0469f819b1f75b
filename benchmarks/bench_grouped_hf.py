"""One GRPO batch's forward + backward on a Hugging Face model: padded prompt + completion rows
against the shared-prompt pass (`HFCausalLM.forward(GroupedBatch)`: each prompt once into a KV
cache, its G completions packed back to back into rows as wide as the longest). Same loss and
gradient (tests/model/test_hf_grouped.py); this measures the time.

The batch: P chat-template prompts of two-digit sums, G completions each of 64 (`--shortest`) to
128 random tokens (the cost does not depend on which tokens), every completion token sampled, fp32.
The batch runs in micro-batches of `--micro` whole groups, as `update` runs it (the same gradient;
it bounds the memory of the (rows, T, vocab) logits). Prints both times (median of `--repeats` after
a warm-up), the tokens each layout computes, and one JSON line. The layouts alternate, after
`--warmup` untimed rounds.
Run: python benchmarks/bench_grouped_hf.py --model HF_FOLDER [--prompts 8] [--group 8] [--micro 2]
                                             [--repeats 3] [--warmup 1] [--threads 2] [--shortest 64]
                                             [--layouts padded,grouped]
"""

import argparse
import json
import statistics
import time

import torch

from reasonlab.engine import Rollout
from reasonlab.model import load_model
from reasonlab.model.hf import next_fit
from reasonlab.rl import GRPOConfig
from reasonlab.rl.batch import build_batch, micro_batches
from reasonlab.rl.types import Group
from reasonlab.rl.update import step_loss
from reasonlab.runtime import keep_freed_memory
from reasonlab.tasks import get_task
from reasonlab.template import build_prompt

LAYOUTS = (("padded", False), ("grouped", True))


def make_groups(tok, vocab: int, P: int, G: int, seed: int = 0, shortest: int = 64) -> list[Group]:
    """P groups of G completions of `shortest`-128 random tokens after chat prompts of two-digit sums."""
    gen = torch.Generator().manual_seed(seed)
    problems = get_task("arithmetic", op="+", digits=2).problems(P, seed=seed)
    prompts = [tok.encode(build_prompt(p.question, "chat", tokenizer=tok.hf)) for p in problems]
    lengths = torch.randint(shortest, 129, (P * G,), generator=gen)
    tokens = torch.randint(0, vocab, (P * G, 128), generator=gen) * (
        torch.arange(128)[None, :] < lengths[:, None]
    )
    rollout = Rollout(
        [p for p in prompts for _ in range(G)],
        tokens,
        torch.zeros(P * G, 128),
        (torch.arange(128)[None, :] < lengths[:, None]).long(),
        lengths,
        [0] * (P * G),
        ["stop"] * (P * G),
    )
    return [Group(rollout, g, torch.randn(G, generator=gen)) for g in range(P)]


def forward_backward(model, batch, cfg: GRPOConfig, rows: int) -> float:
    """Seconds of one forward + backward over `batch`, in micro-batches of `rows` rows."""
    model.zero_grad(set_to_none=True)
    total = float(batch.mask.sum())
    start = time.perf_counter()
    for c in micro_batches(len(batch), rows, cfg.group_size):
        loss, _ = step_loss(
            model, batch.inputs[c], batch.mask[c], batch.advantages[c], None, None, cfg, total
        )
        loss.backward()
    return time.perf_counter() - start


def computed_tokens(batch, rows: int, G: int) -> int:
    """Token positions the layout runs through the model's layers: N·T padded; grouped, per
    micro-batch, P·Lp prompt positions and the packed completion rows `HFCausalLM` builds (each as
    wide as the micro-batch's longest fed completion; a row's last token is not fed)."""
    if isinstance(batch.inputs, torch.Tensor):
        return batch.inputs.numel()
    total = 0
    for c in micro_batches(len(batch), rows, G):
        b = batch.inputs[c]
        cols, fed = b.fed()
        packed_rows = next_fit(fed.sum(1).tolist(), G, len(cols))[0]
        total += b.prompt_ids.numel() + len(packed_rows) * len(cols)
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--micro", type=int, default=2, help="groups per micro-batch (0 = the whole batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="rounds run first and not timed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shortest", type=int, default=64, help="completions are of this many to 128 tokens")
    ap.add_argument("--layouts", default="padded,grouped", help="which to time, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI does (for every side compared here: one process)
    model, tok = load_model(args.model)
    model.train()
    if not model.shares_prompts:
        raise SystemExit("this model cannot take the grouped pass")
    P, G = args.prompts, args.group
    cfg = GRPOConfig(group_size=G, max_new_tokens=128)
    groups = make_groups(tok, model.config.vocab_size, P, G, shortest=args.shortest)
    rollout = groups[0].rollout  # every group's rows are in it
    completions = int(rollout.lengths.sum())
    result = {
        "prompts": P,
        "group": G,
        "micro_groups": args.micro,
        "threads": args.threads,
        "prompt_tokens": [len(rollout.prompt_ids[k * G]) for k in range(P)],
        "completion_tokens": completions,
        "row_tokens": sum(len(p) for p in rollout.prompt_ids) + completions,
    }
    batches = {
        name: build_batch(groups, G, tok.pad_id, shared=shared)
        for name, shared in LAYOUTS
        if name in args.layouts.split(",")
    }
    times = {name: [] for name in batches}
    for repeat in range(args.warmup + args.repeats):  # alternating, so a neighbour's load hits both alike
        for name, batch in batches.items():
            seconds = forward_backward(model, batch, cfg, args.micro * G)
            if repeat >= args.warmup:
                times[name].append(seconds)
    for name, batch in batches.items():
        result[name] = {
            "seconds": round(statistics.median(times[name]), 3),
            "all": [round(t, 3) for t in times[name]],
            "computed_tokens": computed_tokens(batch, args.micro * G, G),
        }
        print(
            f"{name:8s} {result[name]['seconds']:7.2f} s  (runs {result[name]['all']}), "
            f"{result[name]['computed_tokens']:,} token positions"
        )
    print(
        f"{P} prompts x {G}: {result['row_tokens']:,} prompt + completion tokens over the rows, "
        f"{result['completion_tokens']:,} of them completions"
    )
    if len(batches) == 2:
        result["speedup"] = round(result["padded"]["seconds"] / result["grouped"]["seconds"], 2)
        print(f"grouped is {result['speedup']}x faster")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
