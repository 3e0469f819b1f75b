"""Reward functions: plain batch functions, composable with weights.

Contract (the same as TRL's): ``f(completions, answers, **columns) -> list[float]``, one float per
completion. Dataset and rollout columns arrive as keyword arguments: `prompts` (for templates that
prefill ``<think>``), `task` (a `Task` or its name, for verification), `completion_lengths` and
`think_lengths` (in tokens, from the sampler). Unused columns are ignored, so any set of rewards can
be called with the same columns.

The method's reward is `reasoning_reward`: format points + correctness points, default 2 + 1 = 3,
and **0 in total when the format is broken**, even when the answer inside it would be right::

    <think>7+5=12</think><answer>12</answer>   (gold 12) -> 2 + 1 = 3
    <think>7+5=13</think><answer>13</answer>   (gold 12) -> 2 + 0 = 2
    <think>7+5=12</think>12                    (gold 12) -> 0  (no <answer> block)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .tasks import Task, get_task
from .template import parse_completion

RewardFn = Callable[..., list[float]]


def _task(task: Task | str | None) -> Task:
    if task is None:
        raise ValueError("this reward needs task=... (a Task or a task name) to verify answers")
    return get_task(task) if isinstance(task, str) else task


def _prompts(prompts: Sequence[str] | None, n: int) -> Sequence[str | None]:
    return prompts if prompts is not None else [None] * n


def is_correct(completion: str, answer: str, task: Task, prompt: str | None = None) -> tuple[bool, bool]:
    """(format_ok, correct) for one completion; `correct` is False whenever the format is broken."""
    return check_batch([completion], [answer], task, [prompt])[0]


def check_batch(
    completions: Sequence[str],
    answers: Sequence[str],
    task: Task,
    prompts: Sequence[str | None] | None = None,
) -> list[tuple[bool, bool]]:
    """(format_ok, correct) per completion, the answers of the well-formed ones verified in one
    `task.verify_batch` call (math-verify spreads it over its workers)."""
    parsed, correct = _parse_and_verify(completions, answers, task, prompts)
    return [(x.format_ok, c) for x, c in zip(parsed, correct)]


def _parse_and_verify(completions, answers, task: Task, prompts=None):
    parsed = [
        parse_completion(c, p) for c, p in zip(completions, _prompts(prompts, len(completions)), strict=True)
    ]
    ok = [i for i, x in enumerate(parsed) if x.format_ok]
    verdicts = task.verify_batch([parsed[i].answer for i in ok], [answers[i] for i in ok])
    correct = [False] * len(parsed)
    for i, verdict in zip(ok, verdicts):
        correct[i] = bool(verdict)
    return parsed, correct


def reasoning_points(
    format_ok: bool, correct: bool, format_points: float = 2.0, correct_points: float = 1.0
) -> float:
    """The method's reward for one completion: nothing unless the format holds."""
    return format_points + (correct_points if correct else 0.0) if format_ok else 0.0


def format_reward(
    completions: Sequence[str], answers=None, *, prompts=None, points: float = 1.0, checks=None, **_
) -> list[float]:
    """`points` when the completion respects the template (see `template.parse_completion`), else 0."""
    if checks is not None:
        return [points if format_ok else 0.0 for format_ok, _ in checks]
    return [
        points if parse_completion(c, p).format_ok else 0.0
        for c, p in zip(completions, _prompts(prompts, len(completions)))
    ]


def correctness_reward(
    completions: Sequence[str],
    answers: Sequence[str],
    *,
    task=None,
    prompts=None,
    points: float = 1.0,
    checks=None,
    **_,
) -> list[float]:
    """`points` when the answer block verifies against the gold answer; 0 with a broken format."""
    checks = checks if checks is not None else check_batch(completions, answers, _task(task), prompts)
    return [points if correct else 0.0 for _, correct in checks]


def reasoning_reward(
    completions: Sequence[str],
    answers: Sequence[str],
    *,
    task=None,
    prompts=None,
    format_points: float = 2.0,
    correct_points: float = 1.0,
    checks=None,
    **_,
) -> list[float]:
    """The method's reward: format_points + correct_points (2 + 1), nothing when the format breaks."""
    checks = checks if checks is not None else check_batch(completions, answers, _task(task), prompts)
    return [reasoning_points(f, c, format_points, correct_points) for f, c in checks]


def overlong_penalty(
    completions: Sequence[str],
    answers=None,
    *,
    completion_lengths: Sequence[int],
    max_length: int,
    cache_length: int,
    **_,
) -> list[float]:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), in tokens.

    0 up to ``max_length - cache_length``; then falls linearly to -1 at ``max_length``; -1 beyond.
    """
    if not 0 < cache_length <= max_length:
        raise ValueError("overlong_penalty needs 0 < cache_length <= max_length")
    start = max_length - cache_length
    return [
        0.0 if n <= start else -1.0 if n > max_length else (start - n) / cache_length
        for n in completion_lengths
    ]


def length_target_reward(
    completions: Sequence[str],
    answers=None,
    *,
    think_lengths: Sequence[int],
    target_lengths: Sequence[int],
    alpha: float = 1e-3,
    **_,
) -> list[float]:
    """``-alpha * |n - N|``: thinking length n against the requested N (L1, Aggarwal & Welleck 2025)."""
    return [-alpha * abs(n - target) for n, target in zip(think_lengths, target_lengths)]


def combine(*weighted: tuple[RewardFn, float]) -> RewardFn:
    """One reward from several: ``combine((reasoning_reward, 1.0), (overlong_penalty, 0.5))``.

    Every function gets the same arguments and columns; the results are summed with their weights.
    """

    def combined(completions, answers=None, **columns) -> list[float]:
        total = [0.0] * len(completions)
        for fn, weight in weighted:
            for i, r in enumerate(fn(completions, answers, **columns)):
                total[i] += weight * r
        return total

    combined.__name__ = "+".join(f"{w:g}*{fn.__name__}" for fn, w in weighted)
    return combined


def named(fn: RewardFn, name: str, **options) -> RewardFn:
    """`fn` with some options fixed, under `name` (how it shows in `Scores.parts` and the logs)."""
    out = functools.partial(fn, **options)
    out.__name__ = name
    return out


@dataclass
class Scores:
    """N completions scored: the one record eval, Method 1, GRPO and `score` build (`score`)."""

    format_ok: list[bool]  # (N,) the template holds
    correct: list[bool]  # (N,) the answer verifies (False whenever the format is broken)
    parts: dict[str, list[float]]  # reward name -> (N,) its weighted values
    total: list[float]  # (N,) the reward: the parts summed in order
    think: list[str | None] = field(default_factory=list)  # (N,) the thought, None without a closed block

    def log(self, prefix: str = "reward/") -> dict[str, float]:
        """Mean and std (float64, unbiased) of the total, the format and correctness rates, and each
        part: ``reward/sampled_mean``, ``reward/format_rate``, ``reward/accuracy``, ``reward/<part>``,
        each with its ``_std``."""
        import torch

        columns = {
            ("sampled_mean", "sampled_std"): self.total,
            ("format_rate", "format_std"): self.format_ok,
            ("accuracy", "accuracy_std"): self.correct,
            **{(name, f"{name}_std"): values for name, values in self.parts.items()},
        }
        out = {}
        for (mean_key, std_key), values in columns.items():
            v = torch.tensor(values, dtype=torch.float64)
            out.update({prefix + mean_key: float(v.mean()), prefix + std_key: float(v.std())})
        return out

    @classmethod
    def merged(cls, parts: list[Scores]) -> Scores:
        """One record of several (ranks, sampling attempts), in order."""
        names = list(parts[0].parts) if parts else []
        return cls(
            [x for p in parts for x in p.format_ok],
            [x for p in parts for x in p.correct],
            {n: [x for p in parts for x in p.parts[n]] for n in names},
            [x for p in parts for x in p.total],
            [x for p in parts for x in p.think],
        )


def score(
    completions: Sequence[str],
    answers: Sequence[str],
    task: Task,
    prompts=None,
    rewards: Sequence[tuple[RewardFn, float]] = ((reasoning_reward, 1.0),),
    **columns,
) -> Scores:
    """Score completions against their gold answers: every answer verified once (`check_batch`),
    then each weighted reward computed from the same checks and columns, and summed."""
    parsed, correct = _parse_and_verify(completions, answers, task, prompts)
    checks = [(x.format_ok, c) for x, c in zip(parsed, correct)]
    parts = {}
    for fn, weight in rewards:
        values = fn(completions, answers, task=task, prompts=prompts, checks=checks, **columns)
        parts[fn.__name__] = [weight * v for v in values]
    total = [0.0] * len(completions)
    for values in parts.values():
        total = [t + v for t, v in zip(total, values)]
    return Scores([x.format_ok for x in parsed], correct, parts, total, [x.think for x in parsed])


REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "correctness": correctness_reward,
    "reasoning": reasoning_reward,
    "overlong": overlong_penalty,
    "length_target": length_target_reward,
}
