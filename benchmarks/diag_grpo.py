"""Why does GRPO from a start lose or gain accuracy? Runs GRPO from a checkpoint for a fixed number of
steps (not seconds: contention on a shared machine changes nothing but the wall time) with the
demo's settings or overrides, and at every evaluation measures on a *validation* set (train-split
problems outside the training stream's pool; the test split is never looked at):

- greedy accuracy, overall and per difficulty (a chain's hops), and its thinking length, right vs wrong;
- sampled accuracy at the run's temperature (the policy GRPO actually optimises) and the share of
  validation problems whose G samples all agree (flat groups: no learning signal);
- KL(current || start) per token on the current model's own samples;

beside what the trainer logs each step (entropy, clip fraction, flat-group share, reward, lengths).

Run: python benchmarks/diag_grpo.py --start CKPT [--steps 120] [--eval-every 20] [--set lr=1e-4 ...]
                                    [--seed 0] [--fixed-length] [--out rows.jsonl]
"""

import argparse
import copy
import dataclasses
import json
import sys
import time

import torch

from reasonlab.engine import SamplingParams, generate
from reasonlab.evaluate import evaluate_problems, score_batch
from reasonlab.lab.settings import DemoConfig, stage_configs
from reasonlab.model import load_model
from reasonlab.rl import train_grpo
from reasonlab.rl import trainer as rl_trainer
from reasonlab.rl.update import token_logprobs
from reasonlab.runtime import keep_freed_memory
from reasonlab.selection import parse_value
from reasonlab.tasks import get_task
from reasonlab.template import build_prompt


def validation_set(task, cfg, n: int):
    """`n` train-split problems that the training stream (its pool of 20,000) never draws."""
    pool = {p.question for p in task.problems(20000, "train", cfg.seed, at_most=True)}
    candidates = task.problems(n * 2, "train", cfg.seed + 7919, at_most=True)
    kept = [p for p in candidates if p.question not in pool][:n]
    assert len(kept) == n, "not enough validation problems outside the training pool"
    return kept


def kl_to_start(start, rollout, temperature: float) -> float:
    """Mean per-token log pi(y) - log pi_start(y) over the current model's samples y (`rollout`, with
    the log-probs the engine recorded): a Monte Carlo estimate of KL(current || start) a token."""
    total, count = 0.0, 0
    for j, prompt in enumerate(rollout.prompt_ids):
        n = int(rollout.lengths[j])
        if n == 0:
            continue
        ids = torch.tensor([list(prompt) + rollout.tokens[j, :n].tolist()])
        with torch.no_grad():
            then = token_logprobs(start, ids, temperature)[0][0, len(prompt) - 1 :]
        mask = rollout.sampled_mask[j, :n].bool()  # forced tokens were not sampled
        total += float((rollout.logprobs[j, :n] - then)[mask].sum())
        count += int(mask.sum())
    return total / max(count, 1)


def make_evaluator(start, val, sample_seed: int, group: int):
    def evaluate(model, tokenizer, task, problems, cfg) -> dict:
        greedy = evaluate_problems(
            model,
            tokenizer,
            task,
            val,
            trigger=cfg.trigger,
            style=cfg.style,
            params=SamplingParams(temperature=0.0, max_new_tokens=cfg.max_new_tokens),
        )
        out = {
            "eval/accuracy": greedy["accuracy"],
            "eval/format_rate": greedy["format_rate"],
            "eval/mean_think_tokens": greedy["mean_think_tokens"],
            "eval/truncation_rate": greedy["truncation_rate"],
        }
        for level, m in greedy.get("by_difficulty", {}).items():
            out[f"eval/accuracy_d{level}"] = m["accuracy"]
        right = [r["think_tokens"] for r in greedy["rows"] if r["correct"]]
        wrong = [r["think_tokens"] for r in greedy["rows"] if not r["correct"]]
        out["eval/think_right"] = sum(right) / max(len(right), 1)
        out["eval/think_wrong"] = sum(wrong) / max(len(wrong), 1)
        prompts = [
            build_prompt(p.question, cfg.style, trigger=cfg.trigger) for p in val for _ in range(group)
        ]
        sampled = generate(
            model,
            tokenizer,
            prompts,
            SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=sample_seed),
        )
        scored = score_batch(sampled.texts, [p.answer for p in val for _ in range(group)], task, prompts)
        correct = [row["correct"] for row in scored]
        out["eval/sampled_accuracy"] = sum(correct) / len(correct)
        groups = [correct[i : i + group] for i in range(0, len(correct), group)]
        out["eval/sampled_flat_share"] = sum(len(set(g)) == 1 for g in groups) / len(groups)
        out["eval/sampled_all_wrong_share"] = sum(not any(g) for g in groups) / len(groups)
        out["eval/kl_to_start"] = kl_to_start(start, sampled, cfg.temperature)
        return out

    return evaluate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--start", required=True)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fixed-length", action="store_true", help="chains of 4 variables only (the study's task)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a GRPOConfig field"
    )
    parser.add_argument("--out", default="")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    demo = DemoConfig(seed=args.seed, **({"min_length": 0} if args.fixed_length else {}))
    rl_cfg = stage_configs(demo)[2]
    overrides = dict(item.split("=", 1) for item in args.set)
    rl_cfg = dataclasses.replace(
        rl_cfg,
        steps=args.steps,
        eval_every=args.eval_every,
        max_seconds=0,
        **{k: parse_value(v) for k, v in overrides.items()},
    )
    task = get_task("chain", length=demo.length, min_length=demo.min_length or demo.length)
    model, tok = load_model(args.start)
    start = copy.deepcopy(model).eval()
    val = validation_set(task, rl_cfg, args.val)
    rl_trainer.sharded_evaluate = make_evaluator(start, val, args.seed + 17, rl_cfg.group_size)
    label = args.label or ",".join(args.set) or "demo settings"
    rows, t0 = [], time.monotonic()

    def log(row):
        rows.append(row)
        if "eval/accuracy" in row:
            d = " ".join(f"d{k[-1]} {row[k]:.2f}" for k in sorted(row) if k.startswith("eval/accuracy_d"))
            print(
                f"[{label}] step {row['step']:4d}  greedy {row['eval/accuracy']:.3f} ({d})  sampled "
                f"{row['eval/sampled_accuracy']:.3f}  flat {row['eval/sampled_flat_share']:.2f}  all-wrong "
                f"{row['eval/sampled_all_wrong_share']:.2f}  think R/W {row['eval/think_right']:.0f}/"
                f"{row['eval/think_wrong']:.0f}  KL {row['eval/kl_to_start']:.3f}  "
                f"entropy {row.get('entropy', float('nan')):.3f}  {time.monotonic() - t0:.0f}s",
                flush=True,
            )

    train_grpo(model, tok, task, rl_cfg, log=log, held_out=val)
    evals = [r for r in rows if "eval/accuracy" in r]
    summary = {
        "label": label,
        "start": args.start,
        "seed": args.seed,
        "steps": args.steps,
        "first": evals[0]["eval/accuracy"],
        "last": evals[-1]["eval/accuracy"],
        "min": min(r["eval/accuracy"] for r in evals),
        "max": max(r["eval/accuracy"] for r in evals),
        "curve": [(r["step"], round(r["eval/accuracy"], 3)) for r in evals],
        "sampled_curve": [(r["step"], round(r["eval/sampled_accuracy"], 3)) for r in evals],
    }
    print(json.dumps(summary), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps({"summary": summary, "rows": rows}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
