"""The three methods from one base with one seed (Method 1 alone; GRPO from the base, R1-Zero's;
Method 1's first round, then GRPO), at equal compute (Method 1's FLOPs), and what is measured of
them: the base's accuracy three ways, each arm's record and curve, pass@k, and the summary over
seeds. The methods study runs them for every seed (`study.run_study`), the built-in demo once
(`demo.BuiltinDemoRun`)."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import replace
from pathlib import Path

from ..engine import SamplingParams
from ..errors import NoFormatError
from ..evaluate import evaluate_problems, k_samples, pass_curve
from ..jsonl import read_log
from ..rl import GRPOConfig, train_grpo
from ..train.pretrain import FREE_ANSWER
from ..train.rationales import RationalesConfig, run_rationales
from .settings import DemoConfig, stage_configs

PASS_KS = (1, 2, 4, 8, 16, 32, 64)
PASS_TEMPERATURE = 0.7  # Method 1's sampling temperature: what its generator's pass@k is measured at
ARMS = ("method1", "method2", "method1_then_2")
LABELS = {
    "base": "base",
    "method1": "Method 1 alone",
    "method2": "Method 2 alone (R1-Zero, from the base)",
    "method1_then_2": "Method 1 round 1, then Method 2",
}


def arm_configs(quick: bool, seed: int, task) -> tuple[RationalesConfig, GRPOConfig, GRPOConfig]:
    """Method 1 (the demo's rounds, reading free text), GRPO from Method 1 (the demo's for `task`, a
    chain) and GRPO from the base (the same at T = 1.0, R1-Zero's)."""
    _, m1, rl = stage_configs(
        DemoConfig(quick=quick, seed=seed, length=task.length, min_length=task.min_length)
    )
    m1 = replace(m1, free_form=True)
    # the budget: max_flops, set by the study to Method 1's FLOPs (not its wall time: a second of GRPO's
    # small decoding batches buys about half the FLOPs a second of fine-tuning does on a CPU)
    rl = replace(rl, eval_every=3 if quick else 25, max_seconds=0)
    zero = replace(rl, temperature=1.0)
    return m1, rl, zero


def pass_at_k(model, tokenizer, task, problems, seed: int, prompt: str, quick: bool) -> dict:
    """{k: pass@k} from 64 samples a problem at `PASS_TEMPERATURE` (4 with `quick`)."""
    n = 4 if quick else PASS_KS[-1]
    params = SamplingParams(temperature=PASS_TEMPERATURE, max_new_tokens=96, seed=seed)
    correct, _ = k_samples(model, tokenizer, task, problems, n, params, prompt=prompt)
    return {str(k): v for k, v in pass_curve(correct, n, [k for k in PASS_KS if k <= n]).items()}


class Arms:
    """The three methods from one base with one seed: each arm's model and record (accuracy, format
    rate, thinking length, FLOPs, wall time, the [flops, accuracy] curve, pass@k)."""

    def __init__(
        self,
        base,
        tokenizer,
        task,
        held_out,
        pass_problems,
        seed: int,
        out: Path,
        quick: bool,
        base_acc: float,
        tick=None,
    ):
        self.base, self.tok, self.task, self.held_out = base, tokenizer, task, held_out
        self.base_acc = base_acc  # the base's greedy accuracy in the template (`base_measurements`)
        self.pass_problems, self.seed, self.out, self.quick = pass_problems, seed, out, quick
        self.m1_cfg, self.rl_cfg, self.zero_cfg = arm_configs(quick, seed, task)
        self.greedy = SamplingParams(temperature=0.0, max_new_tokens=96)
        self.tick = tick or (lambda name, info: None)
        self.models: dict = {}

    def evaluate(self, model) -> dict:
        r = evaluate_problems(model, self.tok, self.task, self.held_out, params=self.greedy)
        return {
            "acc": r["accuracy"],
            "format_rate": r["format_rate"],
            "mean_think_tokens": r["mean_think_tokens"],
        }

    def start_point(self) -> list:
        """Every curve's first point, [flops, accuracy, seconds]: the base in the template (strictly
        read), before any compute."""
        return [0.0, self.base_acc, 0.0]

    def method1(self, start: list, resume: bool = False) -> dict:
        """Method 1 alone (`resume`: from where a stopped run in the folder got to); keeps round 1's
        model for `method1_then_2`. Started afresh, it samples afresh: an earlier run's sample caches
        in its folder are dropped, since taking them would shorten the wall time that budgets the
        other arms."""
        curve, t0 = [start], time.monotonic()
        if not resume:
            for cache in (self.out / "method1").glob("round*_samples.jsonl"):
                cache.unlink()

        evaluated = {}  # round -> its model's evaluation

        def on_round(record, model):
            evaluated[record["round"]] = self.evaluate(model)
            curve.append(
                [record["compute"]["flops"], evaluated[record["round"]]["acc"], time.monotonic() - t0]
            )
            if record["round"] == 1:
                self.models["method1_round1"] = (copy.deepcopy(model), curve[-1])
            self.tick("method1", f"round {record['round']}: {curve[-1][1]:.0%}")

        model, records = run_rationales(
            self.base,
            self.tok,
            self.task,
            self.m1_cfg,
            out_dir=self.out / "method1",
            on_round=on_round,
            resume=resume,
        )
        self.models["method1"] = model
        # evaluated by on_round, or not (a resumed run that had finished)
        final = evaluated.get(records[-1]["round"]) or self.evaluate(model)
        return {
            **final,
            "flops": records[-1]["compute"]["flops"],
            "seconds": time.monotonic() - t0,
            "curve": curve,
            "rounds": records,
        }

    def grpo(self, name: str, model, cfg: GRPOConfig, before: list, curve: list, folder: str = "") -> dict:
        """GRPO on `model` (in place, logged to `folder`, default `name`) until `cfg.max_flops` (or
        `cfg.max_seconds`);
        its record, the curve continued from `curve` (its evaluations shifted by what was spent
        `before` it, [flops, seconds], and the final model's point)."""
        t0, stopped = time.monotonic(), None
        spent, budget = ("seconds", cfg.max_seconds) if cfg.max_seconds else ("compute/flops", cfg.max_flops)

        def progress(m):
            self.tick(
                name,
                f"step {m['step']}" + (f", {m.get(spent, 0) / budget:.0%} of the budget" if budget else ""),
            )

        try:
            train_grpo(
                model,
                self.tok,
                self.task,
                cfg,
                out_dir=self.out / (folder or name),
                progress=progress,
                held_out=self.held_out,
            )
        except NoFormatError as e:
            stopped = str(e)  # a base that never writes the template: said, and the arm scores what it is
        metrics = read_log(self.out / (folder or name) / "metrics.jsonl")
        flops, seconds = (
            before[0] + max((m.get("compute/flops", 0.0) for m in metrics), default=0.0),
            before[1] + time.monotonic() - t0,
        )
        curve = curve + [
            [before[0] + m["compute/flops"], m["eval/accuracy"], before[1] + m["seconds"]]
            for m in metrics
            if "eval/accuracy" in m and m["step"] > 0
        ]
        steps = [m for m in metrics if "reward/format_rate" in m]
        self.models[name] = model
        final = self.evaluate(model)
        if curve[-1][0] < flops:  # the run stopped between evaluations
            curve.append([flops, final["acc"], seconds])
        return {
            **final,
            "flops": flops,
            "seconds": seconds,
            "curve": curve,
            "steps": max((m["step"] for m in metrics), default=0),
            "stopped": stopped,
            "format_curve": [[m["step"], m["reward/format_rate"]] for m in steps],
            "think_curve": [
                [m["step"], m["completions/mean_think_tokens"]]
                for m in steps
                if "completions/mean_think_tokens" in m
            ],
        }

    def r1_zero(self, budget: float, start: list, folder: str = "") -> dict:
        """Method 2 alone: GRPO from (a copy of) the base for `budget` FLOPs."""
        return self.grpo(
            "method2",
            copy.deepcopy(self.base),
            replace(self.zero_cfg, max_flops=budget),
            [0.0, 0.0],
            [start],
            folder,
        )

    def chain(self, budget: float, start: list, folder: str = "") -> dict:
        """Method 1's round 1, then GRPO from its model, until the two have spent `budget` FLOPs."""
        round1, spent = self.models.pop("method1_round1")
        record = self.grpo(
            "method1_then_2",
            round1,
            replace(self.rl_cfg, max_flops=max(budget - spent[0], 1.0)),
            [spent[0], spent[2]],
            [start, spent],
            folder,
        )
        return {**record, "method1_flops": spent[0], "method1_seconds": spent[2]}

    def run(self, save=None) -> dict:
        """All three arms and their pass@k; `save(record)` after each arm (what a failure keeps)."""
        save = save or (lambda record: None)
        start = self.start_point()
        record = {"seed": self.seed, "method1": self.method1(start)}
        save(record)
        budget = record["method1"]["flops"]
        record["method2"] = self.r1_zero(budget, start)
        save(record)
        record["method1_then_2"] = self.chain(budget, start)
        save(record)
        record["pass_at_k"] = {
            arm: pass_at_k(
                self.models[arm], self.tok, self.task, self.pass_problems, self.seed, "template", self.quick
            )
            for arm in ARMS
        }
        return record


def summarize(per_seed: list[dict], base_pass: dict) -> dict:
    """The study's results from each seed's arms: per method the lists over seeds and their mean and
    spread, pass@k averaged over seeds."""
    methods = {}
    for arm in ARMS:
        runs = [s[arm] for s in per_seed]
        acc = [r["acc"] for r in runs]
        methods[arm] = {
            "label": LABELS[arm],
            "acc": acc,
            "format_rate": [r["format_rate"] for r in runs],
            "mean_think_tokens": [r["mean_think_tokens"] for r in runs],
            "flops": [r["flops"] for r in runs],
            "seconds": [r["seconds"] for r in runs],
            "curve": [r["curve"] for r in runs],
            "acc_mean": statistics.fmean(acc),
            "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "acc_min": min(acc),
            "acc_max": max(acc),
        }
    pass_k = {"base": base_pass}
    for arm in ARMS:
        ks = per_seed[0]["pass_at_k"][arm]
        pass_k[arm] = {k: statistics.fmean(s["pass_at_k"][arm][k] for s in per_seed) for k in ks}
    zero = per_seed[0]["method2"]
    return {
        "methods": methods,
        "pass_at_k": pass_k,
        "r1_zero_format_curve": zero["format_curve"],
        "r1_zero_think_curve": zero["think_curve"],
    }


def base_measurements(base, tokenizer, task, held_out) -> dict:
    """The base asked directly, with the trigger (both read as free text), in the template (strict,
    greedy), and the template's format rate of its samples at T = 1 (where R1-Zero starts)."""
    greedy = SamplingParams(temperature=0.0, max_new_tokens=96)
    direct = evaluate_problems(
        base,
        tokenizer,
        task,
        held_out,
        trigger=False,
        prompt="direct",
        keep=0,
        params=SamplingParams(temperature=0.0, max_new_tokens=DIRECT_TOKENS),
    )
    free = evaluate_problems(base, tokenizer, task, held_out, prompt="free-form", params=greedy, keep=0)
    template = evaluate_problems(base, tokenizer, task, held_out, params=greedy, keep=0)
    sampled = evaluate_problems(
        base,
        tokenizer,
        task,
        held_out,
        keep=0,
        params=SamplingParams(temperature=1.0, max_new_tokens=96, seed=0),
    )
    return {
        "direct_acc": direct["accuracy"],
        "cot_prompt_acc": free["accuracy"],
        "template_acc": template["accuracy"],
        "template_format_rate": template["format_rate"],
        "sampled_format_rate": sampled["format_rate"],
        "sampled_acc": sampled["accuracy"],
    }


DIRECT_TOKENS = (
    len(FREE_ANSWER.format(20)) + 1
)  # asked directly: room for the answer sentence, none to reason
