"""The methods from one base with one seed (Method 1 alone, keeping samples by their steps or, in
the study, by the final answer alone; GRPO from the base, R1-Zero's; Method 1's first round, then
GRPO), at equal compute (multiples of C, Method 1's FLOPs over the demo's rounds), and what is
measured of them: the base's accuracy three ways, each arm's record and curve, its accuracy at each
budget, pass@k, and the summary over seeds. The methods study runs them for every seed
(`study.run_study`), the built-in demo once (`demo.BuiltinDemoRun`)."""

from __future__ import annotations

import copy
import math
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
from ..train.rationales import run_rationales
from .settings import DemoConfig, stage_configs

PASS_KS = (1, 2, 4, 8, 16, 32, 64)
PASS_TEMPERATURE = 0.7  # Method 1's sampling temperature: what its generator's pass@k is measured at
ARMS = ("method1", "method2", "method1_then_2")  # the demo's
STUDY_ARMS = ("method1", "method1_answer_only", "method2", "method1_then_2")
LABELS = {
    "base": "base",
    "method1": "Method 1 alone",
    "method1_answer_only": "Method 1, kept on the final answer alone",
    "method2": "Method 2 alone (R1-Zero, from the base)",
    "method1_then_2": "Method 1 round 1, then Method 2",
}


def arm_configs(quick: bool, seed: int, task, top: float = 1.0, lr_scale: dict | None = None) -> dict:
    """Each arm's settings: Method 1 (the demo's rounds, reading free text; as many more rounds as
    `top` x C takes, C being what the demo's rounds spend), the same keeping a sample on its final
    answer alone (no step check: the seed's wording of the method), GRPO from Method 1's round 1
    (the demo's, for `task`, a chain) and GRPO from the base (the same at T = 1.0, R1-Zero's).
    `lr_scale`: {arm: multiple of its default learning rate} (the study's tuning)."""
    _, m1, rl = stage_configs(
        DemoConfig(quick=quick, seed=seed, length=task.length, min_length=task.min_length)
    )
    m1 = replace(m1, free_form=True, rounds=rounds_for(m1.rounds, top))
    # the budget: max_flops, set by the study to Method 1's FLOPs (not its wall time: a second of GRPO's
    # small decoding batches buys about half the FLOPs a second of fine-tuning does on a CPU)
    rl = replace(rl, eval_every=3 if quick else 25, max_seconds=0)
    cfgs = {
        "method1": m1,
        "method1_answer_only": replace(m1, check_steps=False),
        "method2": replace(rl, temperature=1.0),
        "method1_then_2": rl,
    }
    for arm, scale in (lr_scale or {}).items():
        cfgs[arm] = replace(cfgs[arm], lr=cfgs[arm].lr * scale)
    return cfgs


def c_rounds(quick: bool) -> int:
    """Method 1's rounds in the demo: what they spend is the unit budget C."""
    return stage_configs(DemoConfig(quick=quick))[1].rounds


def rounds_for(rounds: int, top: float) -> int:
    """Method 1's rounds for a largest budget of `top` x what `rounds` rounds spend (rounds cost
    about the same; never fewer than `rounds`, which measure C)."""
    return max(rounds, math.ceil(rounds * top - 1e-9))


def pass_at_k(model, tokenizer, task, problems, seed: int, prompt: str, quick: bool) -> dict:
    """{k: pass@k} from 64 samples a problem at `PASS_TEMPERATURE` (4 with `quick`)."""
    n = 4 if quick else PASS_KS[-1]
    params = SamplingParams(temperature=PASS_TEMPERATURE, max_new_tokens=96, seed=seed)
    correct, _ = k_samples(model, tokenizer, task, problems, n, params, prompt=prompt)
    return {str(k): v for k, v in pass_curve(correct, n, [k for k in PASS_KS if k <= n]).items()}


class Arms:
    """The methods from one base with one seed: each arm's model and record (accuracy, format rate,
    thinking length, FLOPs, wall time, the [flops, accuracy, seconds] curve, the accuracy at each
    budget of `budgets` x C, pass@k). `budgets` (multiples of C) set how far the arms run: to the
    largest, and to C at least."""

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
        budgets: tuple[float, ...] = (1.0,),
        lr_scale: dict | None = None,
    ):
        self.base, self.tok, self.task, self.held_out = base, tokenizer, task, held_out
        self.base_acc = base_acc  # the base's greedy accuracy in the template (`base_measurements`)
        self.pass_problems, self.seed, self.out, self.quick = pass_problems, seed, out, quick
        self.budgets, self.c_rounds = tuple(sorted({*budgets, 1.0})), c_rounds(quick)  # 1 x C: `acc`
        self.top = self.budgets[-1]
        self.cfgs = arm_configs(quick, seed, task, self.top, lr_scale)
        self.m1_cfg, self.rl_cfg, self.zero_cfg = (
            self.cfgs[a] for a in ("method1", "method1_then_2", "method2")
        )
        self.greedy = SamplingParams(temperature=0.0, max_new_tokens=96)
        self.tick = tick or (lambda name, info: None)
        self.models: dict = {}
        self.c = 0.0  # C: Method 1's FLOPs over its first `c_rounds` rounds (`method1` measures it)

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

    def marks(self) -> list[float]:
        """The budgets in FLOPs (C measured)."""
        return [b * self.c for b in self.budgets]

    def method1(self, start: list, resume: bool = False, arm: str = "method1") -> dict:
        """Method 1 alone, `arm` "method1" (which measures C and keeps its round-1 model for
        `method1_then_2`) or "method1_answer_only" (`resume`: from where a stopped run in the folder
        got to). Started afresh, it samples afresh: an earlier run's sample caches in its folder are
        dropped, since taking them would shorten the wall time recorded beside the FLOPs."""
        curve, t0, folder = [start], time.monotonic(), self.out / arm
        if not resume:
            for cache in folder.glob("round*_samples.jsonl"):
                cache.unlink()

        evaluated = {}  # round -> its model's evaluation

        def on_round(record, model):
            evaluated[record["round"]] = self.evaluate(model)
            curve.append(
                [record["compute"]["flops"], evaluated[record["round"]]["acc"], time.monotonic() - t0]
            )
            if record["round"] == 1 and arm == "method1":
                self.models["method1_round1"] = (copy.deepcopy(model), curve[-1])
            self.tick(arm, f"round {record['round']}: {curve[-1][1]:.0%}")

        model, records = run_rationales(
            self.base, self.tok, self.task, self.cfgs[arm], out_dir=folder, on_round=on_round, resume=resume
        )
        if arm == "method1":
            self.c = records[self.c_rounds - 1]["compute"]["flops"]
        self.models[arm] = model
        # evaluated by on_round, or not (a resumed run that had finished)
        final = evaluated.get(records[-1]["round"]) or self.evaluate(model)
        return {
            **final,
            "flops": records[-1]["compute"]["flops"],
            "seconds": time.monotonic() - t0,
            "curve": curve,
            **self.by_rounds(curve, len(records)),
            "rounds": records,
        }

    def by_rounds(self, curve: list, rounds: int) -> dict:
        """Method 1 read at each budget by rounds: b x C is its first b x `c_rounds` rounds (whole
        ones; C is what the step-checked arm's first `c_rounds` spent, and either arm's rounds cost
        about that), with the FLOPs they spent (nothing where a resumed run left no curve)."""
        if len(curve) != rounds + 1:
            return {}
        at = {budget_key(b): curve[math.floor(b * self.c_rounds + 1e-9)] for b in self.budgets}
        return {
            "at_budget": {b: point[1] for b, point in at.items()},
            "flops_at_budget": {b: point[0] for b, point in at.items()},
        }

    def grpo(
        self, name: str, model, cfg: GRPOConfig, before: list, curve: list, folder: str = "", marks=()
    ) -> dict:
        """GRPO on `model` (in place, logged to `folder`, default `name`) until `cfg.max_flops` (or
        `cfg.max_seconds`), evaluated too at `marks` (FLOPs, with what was spent `before` it: [flops,
        seconds]): its record, the curve continued from `curve`, ``at_budget`` (`readings`)."""
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
                eval_at_flops=[m - before[0] for m in marks if m > before[0]],
            )
        except NoFormatError as e:
            stopped = str(e)  # a base that never writes the template: said, and the arm scores what it is
        metrics = read_log(self.out / (folder or name) / "metrics.jsonl")
        flops, seconds = (
            before[0] + max((m.get("compute/flops", 0.0) for m in metrics), default=0.0),
            before[1] + time.monotonic() - t0,
        )
        earlier = curve
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
            "at_budget": self.readings(earlier, curve, before[0], marks),
            "steps": max((m["step"] for m in metrics), default=0),
            "stopped": stopped,
            "format_curve": [[m["step"], m["reward/format_rate"]] for m in steps],
            "think_curve": [
                [m["step"], m["completions/mean_think_tokens"]]
                for m in steps
                if "completions/mean_think_tokens" in m
            ],
        }

    def readings(self, earlier: list, curve: list, before: float, marks) -> dict:
        """A GRPO arm's accuracy at each budget mark: its evaluation there (`curve` past `earlier`),
        or, for a mark reached before GRPO began (`before` FLOPs), the `earlier` curve's."""
        return {
            budget_key(b): last_within(earlier, m) if m <= before else first_from(curve, len(earlier), m)
            for b, m in zip(self.budgets, marks)
        }

    def r1_zero(self, budget: float, start: list, folder: str = "", marks=()) -> dict:
        """Method 2 alone: GRPO from (a copy of) the base for `budget` FLOPs."""
        return self.grpo(
            "method2",
            copy.deepcopy(self.base),
            replace(self.zero_cfg, max_flops=budget),
            [0.0, 0.0],
            [start],
            folder,
            marks,
        )

    def chain(self, budget: float, start: list, folder: str = "", marks=()) -> dict:
        """Method 1's round 1, then GRPO from its model, until the two have spent `budget` FLOPs."""
        round1, spent = self.models.pop("method1_round1")
        record = self.grpo(
            "method1_then_2",
            round1,
            replace(self.rl_cfg, max_flops=max(budget - spent[0], 1.0)),
            [spent[0], spent[2]],
            [start, spent],
            folder,
            marks,
        )
        return {**record, "method1_flops": spent[0], "method1_seconds": spent[2]}

    def run(self, save=None, arms=ARMS) -> dict:
        """The `arms` and their pass@k; `save(record)` after each arm (what a failure keeps). The
        GRPO arms run to the largest budget; each arm's ``acc`` is its accuracy at 1 x C, its last
        evaluation's ``acc_final``."""
        save = save or (lambda record: None)
        start = self.start_point()
        record = {"seed": self.seed, "method1": self.method1(start)}
        save(record)
        budget, marks = self.top * self.c, self.marks()
        for arm in arms:
            if arm == "method1_answer_only":
                record[arm] = self.method1(start, arm=arm)
            elif arm == "method2":
                record[arm] = self.r1_zero(budget, start, marks=marks)
            elif arm == "method1_then_2":
                record[arm] = self.chain(budget, start, marks=marks)
            elif arm != "method1":
                raise ValueError(f"unknown arm {arm!r}")
            save(record)
        for arm in arms:
            record[arm]["acc_final"] = record[arm]["acc"]
            record[arm]["acc"] = record[arm]["at_budget"]["1"]
        record["pass_at_k"] = {
            arm: pass_at_k(
                self.models[arm], self.tok, self.task, self.pass_problems, self.seed, "template", self.quick
            )
            for arm in arms
        }
        return record


def last_within(curve: list, flops: float) -> float:
    """The accuracy of `curve`'s last point ([flops, accuracy, ...]) at or under `flops`: what the
    arm had at that budget (Method 1: its last finished round; the start point is at 0)."""
    return [p for p in curve if p[0] <= flops * (1 + 1e-9)][-1][1]


def first_from(curve: list, i: int, flops: float) -> float:
    """The accuracy of the first point of `curve[i:]` at or past `flops`: GRPO's evaluation at a
    budget mark, at the step where a run with that budget would stop (or the curve's last point,
    had it stopped sooner)."""
    return next((p[1] for p in curve[i:] if p[0] >= flops), curve[-1][1])


def budget_key(b: float) -> str:
    """A budget's key in the results: "0.5", "1", "2" (x C)."""
    return f"{b:g}"


def summarize(per_seed: list[dict], base_pass: dict, arms=ARMS) -> dict:
    """The results from each seed's `arms`: per method the lists over seeds and their mean and
    spread (``at_budget``: the same at each budget, where the arms were read at several), pass@k
    averaged over seeds."""
    methods = {}
    for arm in arms:
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
            **spread(acc),
        }
        if all(r.get("at_budget") for r in runs):
            methods[arm]["at_budget"] = {
                b: {"acc": [r["at_budget"][b] for r in runs], **spread([r["at_budget"][b] for r in runs])}
                for b in runs[0]["at_budget"]
            }
    pass_k = {"base": base_pass}
    for arm in arms:
        ks = per_seed[0]["pass_at_k"][arm]
        pass_k[arm] = {k: statistics.fmean(s["pass_at_k"][arm][k] for s in per_seed) for k in ks}
    zero = per_seed[0]["method2"]
    return {
        "methods": methods,
        "pass_at_k": pass_k,
        "r1_zero_format_curve": zero["format_curve"],
        "r1_zero_think_curve": zero["think_curve"],
    }


def spread(acc: list[float]) -> dict:
    """Mean, sd (0 with one seed), min and max of accuracies over seeds."""
    return {
        "acc_mean": statistics.fmean(acc),
        "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "acc_min": min(acc),
        "acc_max": max(acc),
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
