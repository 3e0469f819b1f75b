"""What the thinking budget does: accuracy under a capped budget (`budget_sweep`), and how well the
model thinks for as long as asked (`length_control`)."""

from __future__ import annotations

from ..engine import SamplingParams
from ..tasks import Task
from ..template import length_prompt
from .accuracy import evaluate_problems


def budget_sweep(
    model,
    tokenizer,
    task: Task,
    problems,
    budgets: list[int],
    *,
    trigger: bool = True,
    extend: int = 0,
    max_new_tokens: int = 256,
    style: str = "plain",
) -> list[dict]:
    """Greedy accuracy with the thinking budget capped at each value, and what the budget costs and
    does: the format rate after the forced close of the thought, the mean thinking tokens, the
    tokens generated per second and the seconds per problem."""
    import time

    curve = []
    for budget in budgets:
        params = SamplingParams(
            temperature=0.0, max_new_tokens=max_new_tokens, think_budget=budget, extend=extend
        )
        start = time.perf_counter()
        result = evaluate_problems(
            model, tokenizer, task, problems, trigger=trigger, params=params, style=style
        )
        curve.append(
            {
                "budget": budget,
                "acc": result["accuracy"],
                "mean_think_tokens": result["mean_think_tokens"],
                "format_rate": result["format_rate"],
                "tokens_per_s": result["tokens_per_s"],
                "seconds_per_problem": (time.perf_counter() - start) / len(problems),
                **({"by_difficulty": result["by_difficulty"]} if "by_difficulty" in result else {}),
            }
        )
    return curve


def length_control(
    model,
    tokenizer,
    task: Task,
    problems,
    targets: list[int],
    *,
    trigger: bool = True,
    max_new_tokens: int = 256,
    style: str = "plain",
) -> dict:
    """How well the model thinks for as long as asked: each prompt says "think for N tokens"
    (`template.length_prompt`, what length control trains on) and nothing caps the thought, so the
    lengths are the model's own. Per N: accuracy, format rate, mean thinking tokens and the mean of
    |n - N| / N; overall, that error's mean over every N."""
    points = []
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    for target in targets:
        result = evaluate_problems(
            model,
            tokenizer,
            task,
            problems,
            trigger=trigger,
            style=style,
            params=params,
            hint=lambda p, n=target: length_prompt(p.question, n),
        )
        errors = [abs(row["think_tokens"] - target) / target for row in result["rows"]]
        points.append(
            {
                "target": target,
                "acc": result["accuracy"],
                "format_rate": result["format_rate"],
                "mean_think_tokens": result["mean_think_tokens"],
                "mean_abs_rel_error": sum(errors) / len(errors),
            }
        )
    return {
        "targets": points,
        "mean_abs_rel_error": sum(p["mean_abs_rel_error"] for p in points) / len(points),
    }
