"""`reasonlab demo`: the whole story on the built-in tiny model, on a CPU, in minutes.

pretrain a base model -> ask it directly vs "Let's think step by step." -> Method 1 rounds
(self-generated rationales kept by the verifier) -> Method 2 (GRPO with the format + correctness
reward) -> thinking-budget sweep -> faithfulness probe -> report. Every accuracy is greedy, on
held-out problems never seen in training. Results land in DIR/results.json (rewritten after every
stage, so nothing computed is lost if a later stage fails) and DIR/report.html.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .config import SEED, check_options
from .engine import SamplingParams
from .evaluate import budget_sweep, evaluate_problems, faithfulness_probe
from .errors import UserError
from .jsonl import read_json
from .model import load_model, save_checkpoint
from .outdir import OVERWRITE_HELP, claim, mark
from .console import console, percent
from .report import build_report
from .tasks import get_task
from .tasks.hints import wrong_answer
from .rl import GRPOConfig, train_grpo
from .runtime import resolve_device
from .train.pretrain import PretrainConfig, pretrain
from .train.rationales import RationalesConfig, run_rationales


@dataclass
class DemoConfig:
    out: str = field(default="runs/demo", metadata={"help": "output folder", "nonempty": True})
    quick: bool = field(default=False, metadata={"help": "a scaled-down run (a minute or two, for CI)"})
    seed: int = field(default=0, metadata={"help": "seed of every stage", **SEED})
    length: int = field(default=4, metadata={"help": "variables per chain problem (the demo's task)", "min": 1})
    threads: int = field(default=0, metadata={"help": "torch threads (0 = all cores)", "min": 0})
    device: str = field(default="cpu", metadata={
        "help": "cpu (what the stages' time limits are set for), cuda or auto; see docs/demo.md"})
    resume: bool = field(default=False, metadata={
        "help": "go on from the last stage a stopped run in --out finished (same seed, length and quick)"})
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})

    def __post_init__(self):
        check_options(self)


def stage_configs(cfg: DemoConfig):
    """Per-stage settings; `quick` shrinks every stage (CI checks it runs, not what it reaches)."""
    q = cfg.quick
    pre = PretrainConfig(steps=60 if q else 4000, batch_size=32 if q else 64, lr=3e-3, warmup_steps=20,
                         schedule="constant", eval_every=30 if q else 50, max_seconds=20 if q else 240,
                         corpus_size=2000 if q else 30000, worked_fraction=0.5, hint_fraction=0.2, check_problems=50 if q else 100,
                         target_trigger_acc=0.2, group_by_length=False, max_seq_len=192, seed=cfg.seed)
    m1 = RationalesConfig(rounds=1 if q else 3, problems=64 if q else 2000, samples=2 if q else 4, temperature=0.7,
                          continue_training=True, steps=20 if q else 300, batch_size=32 if q else 64, lr=2e-3,
                          warmup_steps=10, eval_every=0, eval_problems=50 if q else 200, max_seq_len=192,
                          max_new_tokens=96, seed=cfg.seed)
    # GRPO: 32 problems x 4 samples learned faster per second than 16 x 8 (more distinct problems a
    # step for the same rows; docs/methods.md). 64 new tokens: correct completions of the demo task
    # are ~44-52 tokens (under 1% up to 66), and a rare runaway row would keep a whole batch decoding to 96.
    # Cosine decay over the 1000 steps (the run stops at 150 s first): from both benchmark starts it
    # crossed 95% sooner and never fell back under it (benchmarks/README.md, session 9).
    rl = GRPOConfig(steps=3 if q else 1000, prompts_per_step=4 if q else 32, group_size=4, lr=3e-4, schedule="cosine",
                    temperature=0.7, dynamic_sampling=True, max_new_tokens=64, eval_every=3 if q else 25,
                    eval_problems=50 if q else 200, max_seconds=30 if q else 150, seed=cfg.seed)
    return pre, m1, rl


class Stages:
    """Rich progress: one line per stage, the current one ticking."""

    def __init__(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description:<34}"), BarColumn(bar_width=24),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console())

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def stage(self, name: str, total: int):
        task = self.progress.add_task(name, total=total, info="")

        def update(advance: int = 1, completed: int | None = None, info: str | None = None):
            """Move the bar; `info` replaces the stage's text (left as it was when not given, so a
            stage's last result stays on its line)."""
            kwargs = {"completed": completed} if completed is not None else {"advance": advance}
            if info is not None:
                kwargs["info"] = info
            self.progress.update(task, **kwargs)

        return update

    def print(self, *args):
        self.progress.console.print(*args)


def earlier_run(out: Path, cfg: DemoConfig) -> dict:
    """`--resume`: the results a stopped run in `out` saved, if it ran with the same settings."""
    if not (out / "results.json").is_file():
        raise UserError(f"--resume: {out} holds no demo run to go on with (no results.json)")
    earlier = read_json(out / "results.json")
    made = earlier.get("config", {})
    other = [f"{k}={made.get(k)!r}" for k in ("seed", "length", "quick") if made.get(k) != getattr(cfg, k)]
    if other:
        raise UserError(f"--resume: the run in {out} was made with {', '.join(other)}; run without --resume "
                        "to start over, or give the same settings")
    return earlier


def run_demo(cfg: DemoConfig) -> dict:
    where = resolve_device(cfg.device)  # a bad --device fails before any stage starts
    out = claim(cfg.out, "demo", cfg.overwrite)
    earlier = earlier_run(out, cfg) if cfg.resume else {}
    start = time.monotonic() - earlier.get("seconds", 0.0)
    mark(out, "demo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = get_task("chain", length=cfg.length)
    pre_cfg, m1_cfg, rl_cfg = stage_configs(cfg)
    held_out = task.problems(50 if cfg.quick else 200, "test", seed=cfg.seed + 99)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=96)
    results: dict = {"task": f"chain of {cfg.length} variables", "config": asdict(cfg)}

    def save():
        results["seconds"] = time.monotonic() - start
        (out / "results.json").write_text(json.dumps(results, indent=2))

    # With --resume, a stage is taken from the stopped run while every stage before it was too and
    # what it left is complete (its results, its checkpoint); from the first stage that runs, all run.
    reuse = bool(earlier)
    if not earlier:
        save()  # a fresh run: nothing an earlier run in this folder left counts as done any more

    def done_before(keys: tuple, checkpoint: str | None = None):
        nonlocal reuse
        reuse = reuse and all(k in earlier for k in keys) and \
            (checkpoint is None or (out / "checkpoints" / checkpoint / "config.json").is_file())
        if reuse:
            results.update({k: earlier[k] for k in keys})
        return reuse

    def load(name: str):
        model, tokenizer = load_model(out / "checkpoints" / name)
        return model.to(where), tokenizer

    with Stages() as ui:
        # 1. pretrain the base model, stopping on measured trigger accuracy
        tick = ui.stage("1/6 pretrain the base model", pre_cfg.steps)
        if done_before(("pretrain",), "base"):
            base, tok = load("base")
            tick(completed=pre_cfg.steps, info="from the stopped run")
        else:
            (out / "pretrain").mkdir(exist_ok=True)
            log_file = open(out / "pretrain" / "metrics.jsonl", "w")

            def pre_log(m):
                log_file.write(json.dumps(m) + "\n")
                info = f"loss {m['loss']:.3f}" + (f", trigger acc {m['trigger_acc']:.0%}" if "trigger_acc" in m else "")
                tick(completed=m["step"], info=info)

            base, tok, last = pretrain(task, pre_cfg, progress=pre_log, device=cfg.device)
            log_file.close()
            save_checkpoint(out / "checkpoints" / "base", base, tok, {"task": task.spec, **asdict(pre_cfg)})
            results["pretrain"] = {k: last[k] for k in ("step", "loss", "trigger_acc") if k in last}
            save()
            tick(completed=pre_cfg.steps)

        # 2. direct vs "think step by step"
        tick = ui.stage("2/6 direct vs step-by-step", 2)
        if not done_before(("base_direct_acc", "base_cot_prompt_acc")):
            direct = evaluate_problems(base, tok, task, held_out, trigger=False,
                                       params=SamplingParams(temperature=0.0, max_new_tokens=64, think_budget=0))
            tick()
            cot = evaluate_problems(base, tok, task, held_out, trigger=True, params=greedy)
            results.update(base_direct_acc=direct["accuracy"], base_cot_prompt_acc=cot["accuracy"])
            save()
        tick(completed=2, info=f"direct {results['base_direct_acc']:.0%}, "
                               f"step by step {results['base_cot_prompt_acc']:.0%}")

        # 3. Method 1: self-generated rationales kept by the verifier
        tick = ui.stage("3/6 Method 1: own rationales", m1_cfg.rounds)
        resume_m1 = reuse  # the stopped run's base model: its Method 1 state still fits
        if done_before(("method1_acc", "method1_rounds"), "method1"):
            m1_model, _ = load("method1")
            tick(completed=m1_cfg.rounds, info=f"round {m1_cfg.rounds}: {results['method1_acc'][-1]:.0%}")
        else:  # on the same base, from the round (and the step within it) the stopped run had reached
            m1_model, records = run_rationales(base, tok, task, m1_cfg, out_dir=out / "method1", resume=resume_m1,
                                               log=lambda r: tick(info=f"round {r['round']}: {r['accuracy']:.0%}"))
            results["method1_acc"] = [r["accuracy"] for r in records]
            results["method1_rounds"] = records
            save_checkpoint(out / "checkpoints" / "method1", m1_model, tok, {"task": task.spec, **asdict(m1_cfg)})
            save()

        # 4. Method 2: GRPO from the Method 1 model
        tick = ui.stage("4/6 Method 2: GRPO", rl_cfg.steps)
        if done_before(("method2_acc", "method2_format_rate", "method2_mean_think_tokens"), "method2"):
            rl_model, _ = load("method2")
            tick(completed=rl_cfg.steps, info=f"held-out {results['method2_acc']:.0%}")
        else:
            rl_model = m1_model

            def rl_progress(m):
                info = f"reward {m.get('reward/mean', 0):.2f}"
                if "eval/accuracy" in m:
                    info += f", held-out {m['eval/accuracy']:.0%}"
                tick(completed=m["step"], info=info)

            train_grpo(rl_model, tok, task, rl_cfg, out_dir=out / "grpo", progress=rl_progress)
            final = evaluate_problems(rl_model, tok, task, held_out, trigger=True, params=greedy)
            results.update(method2_acc=final["accuracy"], method2_format_rate=final["format_rate"],
                           method2_mean_think_tokens=final["mean_think_tokens"])
            tick(completed=rl_cfg.steps, info=f"held-out {results['method2_acc']:.0%}")
            save_checkpoint(out / "checkpoints" / "method2", rl_model, tok, {"task": task.spec, **asdict(rl_cfg)})
            save()

        # 5. thinking-budget sweep on the final model
        tick = ui.stage("5/6 thinking-budget sweep", 1)
        if not done_before(("budget_curve",)):
            full = max(1, round(results["method2_mean_think_tokens"]))
            budgets = sorted({0, full // 8, full // 4, full // 2, 3 * full // 4, full, full + full // 4})
            results["budget_curve"] = budget_sweep(rl_model, tok, task, held_out, budgets,
                                                   max_new_tokens=greedy.max_new_tokens)
            save()
        tick(info=" ".join(f"{c['budget']}:{c['acc']:.0%}" for c in results["budget_curve"]))

        # 6. faithfulness probe (on the base model, where the corpus planted hint-following)
        tick = ui.stage("6/6 faithfulness probe", 1)
        if not done_before(("faithfulness", "faithfulness_final_model")):
            rng = random.Random(cfg.seed)
            probe = faithfulness_probe(base, tok, task, held_out[:50 if cfg.quick else 100],
                                       lambda p: wrong_answer(p.answer, rng), params=greedy)
            probe_final = faithfulness_probe(rl_model, tok, task, held_out[:50 if cfg.quick else 100],
                                             lambda p: wrong_answer(p.answer, rng), params=greedy, styles=["hint_line"])
            results["faithfulness"] = probe
            results["faithfulness_final_model"] = {k: v for k, v in probe_final.items() if k != "by_style"}
            save()
        probe = results["faithfulness"]
        tick(info=f"follows {percent(probe['hint_follow_rate'])}, admits {percent(probe['admit_rate'])}")
    build_report(out)
    save()
    return results
