"""Does GRPO learn the same from bf16 rollouts? fp32 rollouts against bf16 rollouts with the
importance-sampling correction (TIS) and without it, on a real model (SmolLM2-135M-Instruct).

The start is the real-model demo's cold start (the base fine-tuned on 200 reference rationales of
two-digit sums; built once into `--out`/start and reused). From it, each arm runs GRPO with the
real demo's stage-3 settings (8 prompts × 4 samples, T = 0.7, ≤ 96 new tokens, lr 1e-5, β = 0)
for a fixed number of steps (not seconds: the arms compare per step), one run per arm and seed,
evaluating greedy accuracy on the demo's 100 held-out sums every `--eval-every` steps:

- ``fp32``: the engine samples with the fp32 weights (`--rollout-dtype fp32`, the correction on: its
  weights are 1 to rounding);
- ``bf16-tis``: a bf16 copy samples (`--rollout-dtype bf16`), token-level TIS at C = 2;
- ``bf16-none``: the same rollouts, no correction (`--rollout-is none`).

Each step's reward, the correction's statistics and the step's split (seconds generating / training)
go to `--out`/rows.jsonl; the last line is one JSON summary per arm: held-out accuracy at each
evaluation (mean and sd over seeds), mean reward over the last 10 steps, seconds a step.

Run: python benchmarks/bench_rollout_dtype.py --model PATH [--out runs/bench_rollout_dtype]
                                              [--steps 30] [--eval-every 10] [--seeds 0 1]
                                              [--arms fp32 bf16-tis bf16-none] [--threads 2]
"""

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from reasonlab.lab.demo_real import STYLE, TASK, real_stage_configs
from reasonlab.lab.settings import DemoConfig
from reasonlab.model import load_model, save_checkpoint
from reasonlab.rl import train_grpo
from reasonlab.runtime import keep_freed_memory
from reasonlab.tasks import get_task
from reasonlab.template import build_prompt
from reasonlab.train.loop import tokenize_examples, train_supervised

ARMS = {
    "fp32": {"rollout_dtype": "fp32", "rollout_is": "token_truncate"},
    "bf16-tis": {"rollout_dtype": "bf16", "rollout_is": "token_truncate"},
    "bf16-none": {"rollout_dtype": "bf16", "rollout_is": "none"},
}


def cold_start(model_path: str, out: Path, seed: int):
    """The real demo's cold-start model: built once (about 5 minutes here), then loaded."""
    start = out / "start"
    if (start / "config.json").exists() or (start / "model.safetensors").exists():
        return load_model(str(start))
    base, tok = load_model(model_path)
    cfg = real_stage_configs(DemoConfig(model=model_path, seed=seed))[3]
    task = get_task("arithmetic", **TASK)
    problems = task.problems(200, "train", seed=seed + 5)
    rows = [
        {"prompt": build_prompt(p.question, STYLE, tokenizer=tok.hf), "completion": p.reference_completion()}
        for p in problems
    ]
    train_supervised(base, tok, tokenize_examples(tok, rows, cfg.max_seq_len), cfg)
    save_checkpoint(start, base, tok, dataclasses.asdict(cfg))
    return base, tok


def run_arm(start, tok, task, held_out, arm: str, seed: int, args) -> list[dict]:
    rl = real_stage_configs(DemoConfig(model=args.model, seed=seed))[1]
    cfg = dataclasses.replace(
        rl, steps=args.steps, max_seconds=0, eval_every=args.eval_every, seed=seed, **ARMS[arm]
    )
    rows: list[dict] = []
    began = time.monotonic()
    train_grpo(copy.deepcopy(start), tok, task, cfg, log=rows.append, held_out=held_out)
    for row in rows:
        row.update(arm=arm, seed=seed)
    print(f"{arm} seed {seed}: {len(rows)} rows in {time.monotonic() - began:.0f} s", flush=True)
    return rows


def summary(rows: list[dict], arm: str) -> dict:
    mine = [r for r in rows if r["arm"] == arm]
    seeds = sorted({r["seed"] for r in mine})
    evals: dict[int, list[float]] = {}
    for r in mine:
        if "eval/accuracy" in r:
            evals.setdefault(r["step"], []).append(r["eval/accuracy"])
    trained = [r for r in mine if "loss" in r]
    last = max((r["step"] for r in trained), default=0)
    tail = [r["reward/sampled_mean"] for r in trained if r["step"] > last - 10]
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
    return {
        "arm": arm,
        "seeds": seeds,
        "accuracy": {s: [round(statistics.mean(v), 4), round(sd(v), 4)] for s, v in sorted(evals.items())},
        "reward_last10": round(statistics.mean(tail), 4) if tail else None,
        "generate_s_per_step": round(statistics.mean(r["time/generate_s"] for r in trained), 2),
        "train_s_per_step": round(statistics.mean(r["time/train_s"] for r in trained), 2),
        "is_kl": round(statistics.mean(r.get("is/kl", 0.0) for r in trained), 6),
        "is_capped": round(statistics.mean(r.get("is/capped", 0.0) for r in trained), 6),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model", required=True, help="SmolLM2-135M-Instruct: .gguf or HF folder")
    parser.add_argument("--out", default="runs/bench_rollout_dtype")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, tok = cold_start(args.model, out, 0)
    task = get_task("arithmetic", **TASK)
    held_out = task.problems(100, "test", seed=99)  # the real demo's held-out sums (seed 0)
    rows_path = out / "rows.jsonl"
    done = [json.loads(line) for line in rows_path.open()] if rows_path.exists() else []
    for seed in args.seeds:
        for arm in args.arms:
            if any(r["arm"] == arm and r["seed"] == seed for r in done):
                continue  # a rerun goes on where the last one stopped
            rows = run_arm(start, tok, task, held_out, arm, seed, args)
            with rows_path.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            done += rows
    for arm in args.arms:
        print(json.dumps(summary(done, arm)))


if __name__ == "__main__":
    main()
