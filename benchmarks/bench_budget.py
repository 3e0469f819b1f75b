"""The thinking budget as a dial: budget-aware GRPO and length control against plain GRPO, from a
demo run's Method 1 model, on the demo's held-out problems.

From the `method1` checkpoint of a `reasonlab demo` folder (`--run`; its task, with its mix of
difficulties, is read from the folder's settings), GRPO runs of `--seconds` each, with the demo's
GRPO settings and seed but `--max-new-tokens` (96: room for every correct completion):

- `plain`: budget_share 0 (the model trained without budgets: the control at full budget);
- `budget_aware`: `--share` of the groups cut at a budget drawn from 0 to `--max-budget`
  (default: 1.25 x the Method 1 model's mean thinking length on the held-out problems);
- `length_control`: every prompt asks to "think for N tokens", N drawn per group from
  `--targets` (low, high), with the length-target reward at `--alpha`;
- `both`: the two at once;
- `length_sft`: `length_control` after a warm start: `--sft-steps` of fine-tuning on Method 1's
  last round of kept samples, each twice (its thought whole, and without the closing "The answer
  is ..." sentence), each prompt asking to "think for n tokens" with n that thought's own length
  (hindsight labels). `--arms` picks which run.

Then each model (Method 1's too) is swept: greedy accuracy, format rate after the forced close and
thinking tokens at budgets 0, 1/8 ... 5/4 x that mean (per difficulty as well), and the
length-controlled models' (and Method 1's) |n - N| / N at five targets in the trained range, uncapped.
Writes `--out`/results.json and budget.png (accuracy against thinking tokens, all models on one
axes); the last stdout line is one JSON line of the headline numbers.

Run: python benchmarks/bench_budget.py --run runs/demo [--seconds 90] [--share 0.5]
     [--targets 10 60] [--alpha 0.01] [--out runs/bench_budget] [--threads 2]
"""

import argparse
import copy
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from reasonlab.evaluate import budget_sweep, evaluate_problems, length_control, wilson_interval
from reasonlab.jsonl import read_json, read_jsonl
from reasonlab.lab.plots import plot_budget
from reasonlab.lab.settings import DemoConfig, stage_configs
from reasonlab.model import load_model
from reasonlab.rl import train_grpo
from reasonlab.runtime import keep_freed_memory
from reasonlab.tasks import get_task
from reasonlab.template import build_prompt, format_completion, length_prompt, parse_completion
from reasonlab.train.loop import TrainConfig, tokenize_examples, train_supervised


def relabelled(rows: list[dict], tok) -> list[dict]:
    """Hindsight length labels: each Method 1 row twice, its thought whole and without its closing
    sentence ("The answer is ..."), each prompt asking for the length that thought has."""
    out = []
    for row in rows:
        parsed = parse_completion(row["completion"], row["prompt"])
        question = row["prompt"].split("\n")[0]
        for thought in {parsed.think, parsed.think.split("\n")[0]}:
            prompt = build_prompt(length_prompt(question, len(tok.encode(thought))))
            out.append({"prompt": prompt, "completion": format_completion(thought, parsed.answer)})
    return out


def demo_rounds(run: Path) -> int:
    return max(int(p.name[5:-11]) for p in (run / "method1").glob("round*_data.jsonl"))


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--run", required=True, help="a reasonlab demo folder (its checkpoints/method1)")
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--max-budget", type=int, default=0)
    ap.add_argument("--targets", type=int, nargs=2, default=[10, 60])
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--arms", nargs="+", default=["plain", "budget_aware", "length_control"])
    ap.add_argument("--max-new-tokens", type=int, default=96, help="GRPO's completions at most")
    ap.add_argument("--sft-steps", type=int, default=150, help="length_sft: warm-start steps")
    ap.add_argument("--out", default="runs/bench_budget")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    keep_freed_memory()  # as the CLI does
    if args.threads:
        torch.set_num_threads(args.threads)
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = read_json(run / "results.json")["config"]
    demo = DemoConfig(
        **{k: v for k, v in settings.items() if k in DemoConfig.__dataclass_fields__ and k != "out"},
        out=str(out / "unused"),
    )
    task = get_task("chain", length=demo.length, min_length=demo.min_length or demo.length)
    held_out = task.problems(200, "test", seed=demo.seed + 99)  # the demo's held-out problems
    method1, tok = load_model(run / "checkpoints" / "method1")
    _, _, rl = stage_configs(demo)
    rl = replace(rl, max_new_tokens=args.max_new_tokens)
    greedy = evaluate_problems(method1, tok, task, held_out)
    full = max(1, round(greedy["mean_think_tokens"]))
    max_budget = args.max_budget or full + full // 4
    lo, hi = args.targets
    arms = {
        "plain": replace(rl, max_seconds=args.seconds),
        "budget_aware": replace(
            rl, max_seconds=args.seconds, budget_share=args.share, budget_min=0, budget_max=max_budget
        ),
        "length_control": replace(
            rl, max_seconds=args.seconds, length_target=lo, length_target_max=hi, length_alpha=args.alpha
        ),
    }
    arms["both"] = replace(
        arms["budget_aware"], length_target=lo, length_target_max=hi, length_alpha=args.alpha
    )
    arms["length_sft"] = arms["length_control"]
    budgets = sorted({0, full // 8, full // 4, full // 2, 3 * full // 4, full, full + full // 4})
    targets = sorted({lo, (3 * lo + hi) // 4, (lo + hi) // 2, (lo + 3 * hi) // 4, hi})
    models = {"method1": method1}
    results = {
        "task": f"chain of {demo.min_length or demo.length} to {demo.length} variables",
        "method1_mean_think_tokens": greedy["mean_think_tokens"],
        "budgets": budgets,
        "targets": targets,
        "arms": {},
        "machine": {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
    }
    for name in args.arms:
        cfg = arms[name]
        model = copy.deepcopy(method1)
        t0 = time.monotonic()
        if (
            name == "length_sft"
        ):  # warm start: Method 1's last round, each prompt told its thought's own length
            rows = relabelled(
                [r for _, r in read_jsonl(run / "method1" / f"round{demo_rounds(run)}_data.jsonl")], tok
            )
            train_supervised(
                model,
                tok,
                tokenize_examples(tok, rows, 192),
                TrainConfig(
                    steps=args.sft_steps,
                    batch_size=64,
                    lr=1e-3,
                    warmup_steps=10,
                    schedule="cosine",
                    max_seq_len=192,
                ),
            )
        last = train_grpo(model, tok, task, cfg, out_dir=out / name, held_out=held_out)
        models[name] = model
        results["arms"][name] = {
            "steps": last["step"],
            "seconds": time.monotonic() - t0,
            "config": {
                k: getattr(cfg, k)
                for k in (
                    "budget_share",
                    "budget_min",
                    "budget_max",
                    "length_target",
                    "length_target_max",
                    "length_alpha",
                )
            },
        }
        print(f"{name}: {last['step']} steps in {time.monotonic() - t0:.0f} s", flush=True)
    curves, control = {}, {}
    for name, model in models.items():
        t0 = time.monotonic()
        curves[name] = budget_sweep(model, tok, task, held_out, budgets, max_new_tokens=96)
        for point in curves[name]:
            correct = round(point["acc"] * len(held_out))
            point["acc_ci"] = wilson_interval(correct, len(held_out))
        if name in ("method1", "length_control", "both", "length_sft"):
            control[name] = length_control(model, tok, task, held_out, targets, max_new_tokens=96)
        print(
            f"{name}: "
            + " ".join(f"{p['budget']}:{p['acc']:.0%}/{p['format_rate']:.0%}" for p in curves[name])
            + (f"; length control error {control[name]['mean_abs_rel_error']:.1%}" if name in control else "")
            + f" ({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
    results.update(budget_curves=curves, length_control=control)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    labels = {
        "method1": "Method 1 (no budgets in training)",
        "plain": "+ GRPO",
        "budget_aware": "+ budget-aware GRPO",
        "length_control": "+ length-control GRPO",
        "both": "+ budget-aware, length-control GRPO",
        "length_sft": "+ length labels (SFT), length-control GRPO",
    }
    plot_budget({labels[k]: v for k, v in curves.items()}, out / "budget.png")
    half = [b for b in budgets if b <= full // 2][-1]
    headline = {
        name: {
            "full": curve[-1]["acc"],
            "at_half": next(p["acc"] for p in curve if p["budget"] == half),
            "min_format": min(p["format_rate"] for p in curve),
        }
        for name, curve in curves.items()
    }
    print(
        json.dumps(
            {
                "half_budget": half,
                "headline": headline,
                "length_error": {k: v["mean_abs_rel_error"] for k, v in control.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
