"""reasonlab's GRPO against TRL's `GRPOTrainer` from the same checkpoint, step for step, over seeds.

Both trainers start from one checkpoint (TRL gets it exported as a `LlamaForCausalLM`) and run the
same number of optimizer steps with the same settings: the demo's task mix (chains of 2-4
variables), the same reward (`reasonlab.rewards.reasoning_reward`: format 2 + correct 1), P problems
x G samples a step (the demo's 32 x 4), temperature, at most `rl_new_tokens` new tokens, constant
learning rate after 5 warmup steps, AdamW (0.9, 0.95) without weight decay, gradient norm clipped at
1, clip range 0.2 on both sides (TRL has no clip-higher by default), beta = 0, one update a batch,
token-mean (DAPO) loss, group-std advantages, no dynamic sampling (TRL has none). Every
`--eval-every` steps both are measured by *our* evaluator (greedy, `evaluate_problems`) on a
validation set: train-split problems outside the training pool (`diag_grpo.validation_set`; the test
split is never looked at). Both read the same problems in the same order: TRL's dataset is our
stream's draw for the run (`rl.collect.ProblemStream`, P problems a step), unshuffled
(`--shuffle` lets TRL shuffle the pool its own way instead). Seeds change the problem order and the
sampling, not the start.

Writes `--out` (JSON: each trainer's curve per seed, the mean and sd at each evaluation, where the
two means differ by more than the seeds' spread) and `--plot` (accuracy against steps, mean +- sd
bands). Needs the `bench` extra (TRL): pip install -e '.[bench]'
Run: python benchmarks/bench_peer_curves.py --start CKPT [--steps 150] [--eval-every 25]
                                            [--seeds 0 1 2] [--set lr=3e-4 ...] [--out F.json]
"""

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from diag_grpo import validation_set  # noqa: E402

from reasonlab.engine import SamplingParams  # noqa: E402
from reasonlab.evaluate import evaluate_problems  # noqa: E402
from reasonlab.lab.settings import DemoConfig, stage_configs  # noqa: E402
from reasonlab.model import export_hf, load_model  # noqa: E402
from reasonlab.rewards import reasoning_reward  # noqa: E402
from reasonlab.rl import train_grpo  # noqa: E402
from reasonlab.rl.collect import ProblemStream  # noqa: E402
from reasonlab.runtime import keep_freed_memory  # noqa: E402
from reasonlab.selection import parse_value  # noqa: E402
from reasonlab.tasks import get_task  # noqa: E402
from reasonlab.template import build_prompt  # noqa: E402


def shared_config(seed: int, steps: int, eval_every: int, overrides: dict):
    """The demo's GRPO settings with what TRL cannot do turned off, and `overrides`."""
    demo = DemoConfig(seed=seed)
    cfg = dataclasses.replace(
        stage_configs(demo)[2],
        steps=steps,
        eval_every=eval_every,
        eval_problems=10**6,  # the whole validation set passed as held_out
        max_seconds=0,
        schedule="constant",
        dynamic_sampling=False,
        eps_high=0.2,
        beta=0.0,
        updates=1,
        loss_agg="token_mean",
        advantage="group",
        seed=seed,
        **overrides,
    )
    task = get_task("chain", length=demo.length, min_length=demo.min_length or demo.length)
    return cfg, task


def run_ours(start: str, cfg, task, val) -> list:
    model, tok = load_model(start)
    curve = []

    def log(row):
        if "eval/accuracy" in row:
            curve.append([row["step"], row["eval/accuracy"]])
            print(f"reasonlab seed {cfg.seed} step {row['step']:4d}  {row['eval/accuracy']:.1%}", flush=True)

    train_grpo(model, tok, task, cfg, log=log, held_out=val)
    return curve


def run_trl(start: str, cfg, task, val, shuffle: bool = False) -> list:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from reasonlab.model.hf import HFCausalLM

    model, tok = load_model(start)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=cfg.max_new_tokens)
    curve = []

    def measure(step, hf):
        acc = evaluate_problems(HFCausalLM(hf).eval(), tok, task, val, params=greedy)["accuracy"]
        curve.append([step, acc])
        print(f"TRL       seed {cfg.seed} step {step:4d}  {acc:.1%}", flush=True)

    if shuffle:  # the pool ours draws from, in TRL's own order
        pool = task.problems(20000, "train", cfg.seed, at_most=True)
    else:  # what ours draws, step by step: row k of TRL's unshuffled dataset is ours' k-th problem
        pool = ProblemStream(task, cfg.seed).take(cfg.steps * cfg.prompts_per_step)
    data = Dataset.from_list(
        [
            {"prompt": build_prompt(p.question, cfg.style, trigger=cfg.trigger), "answer": p.answer}
            for p in pool
        ]
    )

    def reward(completions, answer, prompts=None, **_):
        return reasoning_reward(completions, answer, task=task, prompts=prompts)

    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as out:
        export_hf(model, tok, folder)
        hf = AutoModelForCausalLM.from_pretrained(folder)
        measure(0, hf)
        args = TRLConfig(
            output_dir=out,
            per_device_train_batch_size=cfg.prompts_per_step * cfg.group_size,
            num_generations=cfg.group_size,
            max_completion_length=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=0,
            beta=0.0,
            epsilon=cfg.eps_low,
            epsilon_high=cfg.eps_high,
            scale_rewards="group",
            loss_type="dapo",
            learning_rate=cfg.lr,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=cfg.warmup_steps,
            adam_beta1=0.9,
            adam_beta2=0.95,
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_steps=cfg.steps,
            logging_steps=10**9,
            use_cpu=True,
            report_to="none",
            gradient_checkpointing=False,
            save_strategy="no",
            bf16=False,
            seed=cfg.seed,
            disable_tqdm=True,
            shuffle_dataset=shuffle,
        )
        trainer = GRPOTrainer(
            model=hf, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok.hf
        )

        class Evaluate(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kw):
                if state.global_step % cfg.eval_every == 0 or state.global_step == cfg.steps:
                    measure(state.global_step, model)
                    model.train()

        trainer.add_callback(Evaluate())
        trainer.train()
    return curve


def summarise(runs: dict) -> dict:
    """Per trainer, the mean and sd over seeds at each evaluated step; the difference ours - TRL
    paired by seed (mean, sd); and the steps where the two means differ by more than the larger of
    the two sds."""
    out = {}
    for name, curves in runs.items():
        steps = [s for s, _ in curves[0]]
        at = [[c[i][1] for c in curves] for i in range(len(steps))]
        out[name] = {
            "steps": steps,
            "mean": [statistics.mean(a) for a in at],
            "sd": [statistics.stdev(a) if len(a) > 1 else 0.0 for a in at],
        }
    # paired by seed (the two share a seed's validation set and start): ours - TRL at each step
    diffs = [[a[1] - b[1] for a, b in zip(x, y)] for x, y in zip(runs["reasonlab"], runs["TRL"])]
    out["paired"] = [
        [step, statistics.mean(d), statistics.stdev(d) if len(d) > 1 else 0.0]
        for step, d in zip(out["reasonlab"]["steps"], zip(*diffs))
    ]
    ours, trl = out["reasonlab"], out["TRL"]
    out["apart"] = [
        [s, round(m1 - m2, 4)]
        for s, m1, m2, d1, d2 in zip(ours["steps"], ours["mean"], trl["mean"], ours["sd"], trl["sd"])
        if abs(m1 - m2) > max(d1, d2)
    ]
    return out


def plot(summary: dict, runs: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, colour in (("reasonlab", "tab:blue"), ("TRL", "tab:orange")):
        s = summary[name]
        lo = [m - d for m, d in zip(s["mean"], s["sd"])]
        hi = [m + d for m, d in zip(s["mean"], s["sd"])]
        ax.plot(s["steps"], s["mean"], color=colour, label=f"{name} (mean of {len(runs[name])} seeds)")
        ax.fill_between(s["steps"], lo, hi, color=colour, alpha=0.2)
        for c in runs[name]:
            ax.plot([p[0] for p in c], [p[1] for p in c], color=colour, alpha=0.35, lw=0.7)
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("validation accuracy (greedy)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--start", required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--out", default="peer_curves.json")
    parser.add_argument("--plot", default="")
    parser.add_argument("--only", choices=("reasonlab", "TRL"), default="")
    parser.add_argument(
        "--shuffle", action="store_true", help="TRL shuffles the pool its own way (default: ours' order)"
    )
    args = parser.parse_args()
    keep_freed_memory()
    overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    records = previous.setdefault("runs", {})  # per trainer, one {seed, curve, seconds} a finished seed
    order = "shuffled by TRL" if args.shuffle else "ours"
    saved = previous.get("settings", {}).get("trl_order", "shuffled by TRL")  # files before the option
    if records.get("TRL") and saved != order:
        sys.exit(
            f"{args.out} holds TRL runs whose problem order was {saved!r}, not {order!r}: use another --out"
        )
    previous.setdefault("settings", {})["trl_order"] = order  # kept by the saves of a run stopped midway
    has = lambda name, seed: any(r["seed"] == seed for r in records.get(name, []))  # noqa: E731
    for seed in args.seeds:
        cfg, task = shared_config(seed, args.steps, args.eval_every, overrides)
        val = validation_set(task, cfg, args.val)
        for name, run in (("reasonlab", run_ours), ("TRL", functools.partial(run_trl, shuffle=args.shuffle))):
            if has(name, seed) or (args.only and name != args.only):
                continue
            torch.manual_seed(seed)
            t0 = time.monotonic()
            curve = run(args.start, cfg, task, val)
            record = {"seed": seed, "curve": curve, "seconds": time.monotonic() - t0}
            records.setdefault(name, []).append(record)
            Path(args.out).write_text(json.dumps(previous, indent=1))  # a stopped run keeps its seeds
    # the seeds asked for that both trainers finished, in one order: the curves are paired by seed
    both = [seed for seed in args.seeds if has("reasonlab", seed) and has("TRL", seed)]
    runs = {
        name: [next(r["curve"] for r in records[name] if r["seed"] == seed) for seed in both]
        for name in ("reasonlab", "TRL")
    }
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "seed"}
    settings["trl_order"] = order
    result = {**previous, "start": args.start, "settings": settings}
    if both:
        result["summary"] = summarise(runs)
        if args.plot:
            title = (
                f"GRPO from {Path(args.start).name}: {cfg.prompts_per_step} x {cfg.group_size}, "
                f"T {cfg.temperature}, lr {cfg.lr:g}, token-mean, beta 0"
            )
            plot(result["summary"], runs, args.plot, title)
        print(json.dumps({"bench": "peer_curves", "apart": result["summary"]["apart"]}))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
