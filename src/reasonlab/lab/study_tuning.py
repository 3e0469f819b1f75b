"""The methods study's tuning (`reasonlab study methods --tune`): every arm gets the same tuning
budget, its learning rate tried at each of `LR_SCALES` x its default (as many configurations for
each arm), and keeps the one with the best greedy accuracy on *validation* problems at 1 x C. One
tuning seed (`TUNE_SEED`, none of the final seeds) runs them all; validation problems are train-
split problems that neither the base's corpus nor any tuning run trains on (the test split, where
the study reports, is never looked at). Method 1 is tuned first; "Method 1 round 1, then GRPO" is
tuned on its GRPO learning rate, from round 1 of the Method 1 chosen. Ties go to the scale nearest
the default."""

from __future__ import annotations

import copy

from ..engine import SamplingParams
from ..evaluate import evaluate_problems
from ..rl.collect import ProblemStream
from .arms import STUDY_ARMS, Arms, arm_configs

LR_SCALES = (0.5, 1.0, 2.0)
TUNE_SEED = 1000  # the tuning runs' seed: the final seeds are 0, 1, ...
VALIDATION_SEED = 7919


def validation_problems(task, n: int, excluded) -> list:
    """`n` train-split problems none of whose questions is in `excluded` (a set)."""
    drawn = task.problems(4 * n, "train", VALIDATION_SEED, at_most=True)
    kept = [p for p in drawn if p.question not in excluded][:n]
    if len(kept) < n:
        raise ValueError(f"only {len(kept)} validation problems outside the training data, {n} asked")
    return kept


def trained_on(task, cfgs: dict, corpus: list) -> set:
    """The questions the tuning runs may train on: the base's corpus, Method 1's rounds' problems,
    the GRPO arms' problem pool (`cfgs`: `arm_configs`'s)."""
    seen = {p.question for p in corpus}
    m1 = cfgs["method1"]
    for r in range(1, m1.rounds + 1):
        seen.update(p.question for p in task.problems(m1.problems, "train", m1.seed + 1000 * r))
    seen.update(p.question for p in ProblemStream(task, cfgs["method2"].seed).problems)
    return seen


def best(scores: dict) -> float:
    """The scale with the best score; ties to the one nearest 1."""
    return max(scores, key=lambda s: (scores[s], -abs(s - 1.0)))


def tune(base, tokenizer, task, corpus: list, out, quick: bool, n_val: int, tick=None) -> dict:
    """Each arm's validation accuracy at 1 x C for every scale of `LR_SCALES`, and the scale chosen:
    {"seed", "validation", "scales", "scores": {arm: {scale: acc}}, "chosen": {arm: scale}}."""
    tick = tick or (lambda info: None)

    def arms_at(scale: float, held_out, base_acc: float) -> Arms:
        return Arms(
            base,
            tokenizer,
            task,
            held_out,
            [],
            TUNE_SEED,
            out / f"lr_x{scale:g}",
            quick,
            base_acc,
            lr_scale={arm: scale for arm in STUDY_ARMS},
        )

    val = validation_problems(task, n_val, trained_on(task, arm_configs(quick, TUNE_SEED, task), corpus))
    greedy = SamplingParams(temperature=0.0, max_new_tokens=96)
    base_acc = evaluate_problems(base, tokenizer, task, val, params=greedy, keep=0)["accuracy"]
    scores: dict = {arm: {} for arm in STUDY_ARMS}
    runs = {s: arms_at(s, val, base_acc) for s in LR_SCALES}
    start = runs[1.0].start_point()
    for s, arms in runs.items():  # Method 1 both ways first: C is the default Method 1's
        for arm in ("method1", "method1_answer_only"):
            tick(f"{arm} at lr x{s:g}")
            scores[arm][s] = arms.method1(start, arm=arm)["at_budget"]["1"]
    c = runs[1.0].c
    round1, point = runs[best(scores["method1"])].models["method1_round1"]
    for s, arms in runs.items():
        arms.c = c
        tick(f"method2 at lr x{s:g}")
        scores["method2"][s] = arms.r1_zero(c, start, marks=arms.marks())["at_budget"]["1"]
        arms.models["method1_round1"] = (copy.deepcopy(round1), point)  # chain() trains what it takes
        tick(f"method1_then_2 at lr x{s:g}")
        scores["method1_then_2"][s] = arms.chain(c, start, marks=arms.marks())["at_budget"]["1"]
    return {
        "seed": TUNE_SEED,
        "validation": len(val),
        "scales": list(LR_SCALES),
        "flops_c": c,
        "base_validation_acc": base_acc,
        "scores": {arm: {f"{s:g}": v for s, v in by.items()} for arm, by in scores.items()},
        "chosen": {arm: best(by) for arm, by in scores.items()},
    }
