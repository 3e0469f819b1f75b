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

import asyncio
import functools
import inspect
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .errors import UserError
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
            v = v[~v.isnan()]  # a reward's None values (not applicable) are left out
            if len(v) or not len(values):
                std = float(v.std()) if len(v) > 1 else math.nan  # (what torch gives, without its warning)
                out.update({prefix + mean_key: float(v.mean()), prefix + std_key: std})
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
    gate: bool = False,
    **columns,
) -> Scores:
    """Score completions against their gold answers: every answer verified once (`check_batch`),
    then each weighted reward computed from the same checks and columns, and summed (a None value
    counts 0 in the total). `gate`: a completion whose format breaks gets 0 in total."""
    parsed, correct = _parse_and_verify(completions, answers, task, prompts)
    checks = [(x.format_ok, c) for x, c in zip(parsed, correct)]
    parts = {}
    for fn, weight in rewards:
        values = fn(completions, answers, task=task, prompts=prompts, checks=checks, **columns)
        # None: the reward does not apply to that completion (TRL's convention); kept as NaN, left
        # out of the total and of the reward's mean
        parts[fn.__name__] = [weight * v if v is not None else math.nan for v in values]
    total = [0.0] * len(completions)
    for values in parts.values():
        total = [t + v if v == v else t for t, v in zip(total, values)]
    if gate:  # the format gates every reward, the user's included
        total = [t if x.format_ok else 0.0 for t, x in zip(total, parsed)]
    return Scores([x.format_ok for x in parsed], correct, parts, total, [x.think for x in parsed])


REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "correctness": correctness_reward,
    "reasoning": reasoning_reward,
    "overlong": overlong_penalty,
    "length_target": length_target_reward,
}


# ---- reward functions you write (`--reward`, `reward_funcs=`) ------------------------------------


@dataclass
class RewardPlan:
    """What a GRPO run rewards besides, or instead of, the method's default (format + correctness).

    `funcs`: your rewards and their weights, each already wrapped (`user_reward`) and named uniquely.
    `default`: keep the method's reward (`--no-default-reward`: your rewards alone judge).
    `format_gate`: a completion whose template breaks gets 0 in total, your rewards included.
    The trainer takes it (`train_grpo(..., rewards=plan)`); the task's spec records it
    (`plan.spec()`), so a checkpoint says what it was trained on.
    """

    funcs: list[tuple[RewardFn, float]] = field(default_factory=list)
    default: bool = True
    format_gate: bool = False

    def spec(self) -> dict:
        """What a checkpoint records (and a resume compares)."""
        return {
            "rewards": {fn.__name__: weight for fn, weight in self.funcs},
            "default": self.default,
            "format_gate": self.format_gate,
        }


def load_reward(spec: str) -> tuple[Callable, float | None, str]:
    """(function, weight or None, name) for ``--reward MODULE:FUNCTION[=WEIGHT]`` or the name of a
    built-in reward (`REWARDS`: format, correctness, reasoning)."""
    target, sep, weight_text = spec.partition("=")
    weight = None
    if sep:
        try:
            weight = float(weight_text)
        except ValueError:
            raise UserError(f"--reward {spec}: the weight after = must be a number") from None
    if target in REWARDS:
        return named(REWARDS[target], target), weight, target
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise UserError(
            f"--reward {spec}: give MODULE:FUNCTION[=WEIGHT] (e.g. my_rewards:length_bonus=0.5) or one of "
            f"{', '.join(REWARDS)}"
        )
    from .plugins import import_module

    fn = import_module(module_name, "--reward")
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise UserError(f"--reward {spec}: module {module_name!r} has no {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise UserError(f"--reward {spec}: {attr!r} is not a function")
    return fn, weight, attr


def rewards_given(
    funcs: Sequence = (),
    weights: Sequence[float] | None = None,
    default: bool = True,
    format_gate: bool = False,
) -> RewardPlan | None:
    """`reward_plan`'s plan, or None when it would be the method's default reward alone (no
    functions of yours, the default on, no format gate): the run then scores as it always has."""
    if not funcs and weights is None and default and not format_gate:
        return None
    return reward_plan(funcs, weights, default, format_gate)


def reward_plan(
    funcs: Sequence = (),
    weights: Sequence[float] | None = None,
    default: bool = True,
    format_gate: bool = False,
) -> RewardPlan:
    """A `RewardPlan` from reward functions as TRL takes them (`reward_funcs`): callables called the
    TRL way (`user_reward`), ``MODULE:FUNCTION[=WEIGHT]`` strings, or built-in names; `weights`
    one per function (default 1; a ``=WEIGHT`` may not be given twice)."""
    if weights is not None and len(weights) != len(funcs):
        raise UserError(f"--reward-weights gives {len(weights)} weights for {len(funcs)} reward functions")
    plan, taken = RewardPlan(default=default, format_gate=format_gate), {"reasoning", "length_target"}
    for i, item in enumerate(funcs):
        if isinstance(item, str):
            fn, weight, name = load_reward(item)
            builtin = item.partition("=")[0] in REWARDS
        else:
            fn, weight, name, builtin = item, None, getattr(item, "__name__", "reward"), False
        if weights is not None:
            if weight is not None:
                raise UserError(f"reward {name!r} has a weight in --reward and in --reward-weights: give one")
            weight = float(weights[i])
        name = unique_name(name, taken)
        plan.funcs.append(
            (named(fn, name) if builtin else user_reward(fn, name), 1.0 if weight is None else weight)
        )
    if not plan.default and not plan.funcs:
        raise UserError("--no-default-reward needs at least one --reward: nothing would judge the samples")
    return plan


def unique_name(name: str, taken: set) -> str:
    """`name` (``<lambda>`` as ``lambda``), or with ``_2``, ``_3``… when taken; added to `taken`."""
    base = name.strip("<>") or "reward"
    out, n = base, 1
    while out in taken:
        n += 1
        out = f"{base}_{n}"
    taken.add(out)
    return out


def user_reward(fn: Callable, name: str) -> RewardFn:
    """A reward written for TRL, as reasonlab calls rewards. It is called TRL's way, by keyword:
    ``fn(prompts=..., completions=..., completion_ids=..., **columns)``, where `prompts` are the
    dataset's prompts (text, or lists of messages for a conversational dataset, whose completions
    then come as ``[{"role": "assistant", "content": text}]``), and `columns` every other column of
    the rows (a built-in task's rows have ``question`` and ``answer``). It returns one float or None
    (not applicable) per completion; an async function is awaited."""

    def reward(completions, answers=None, *, problems, completion_ids=None, **_) -> list:
        conversational = bool(problems) and getattr(problems[0].question, "messages", None) is not None
        prompts = [p.question.messages if conversational else prompt_text(p) for p in problems]
        if conversational:
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        kwargs = {"prompts": prompts, "completions": list(completions), "completion_ids": completion_ids}
        values = call(fn, {**row_columns(problems), **kwargs})
        if not isinstance(values, list | tuple) or len(values) != len(completions):
            got = f"{len(values)} values" if isinstance(values, list | tuple) else type(values).__name__
            raise UserError(f"reward {name!r} returned {got} for {len(completions)} completions")
        bad = next((v for v in values if v is not None and not isinstance(v, int | float)), None)
        if bad is not None or any(isinstance(v, bool) for v in values):
            raise UserError(f"reward {name!r} returned {bad!r}: give a float (or None) per completion")
        return [None if v is None else float(v) for v in values]

    reward.__name__ = name
    reward.user_fn = fn
    return reward


def prompt_text(problem) -> str:
    """A row's prompt as its dataset wrote it (TRL's `prompts`), else the question."""
    return str(problem.question)


def row_columns(problems) -> dict[str, list]:
    """Every column of the rows but the prompt, by name (TRL passes them so), one value a row; a
    problem with no row (a built-in task) gives ``question`` and ``answer``."""
    rows = [p.meta.get("row") or {"question": str(p.question), "answer": p.answer} for p in problems]
    names = [k for k in rows[0] if k != "prompt"] if rows else []
    return {k: [row.get(k) for row in rows] for k in names}


def call(fn: Callable, kwargs: dict):
    """`fn(**kwargs)`, awaited when it is async (in a thread of its own when this one already runs an
    event loop, as a notebook does)."""
    if not inspect.iscoroutinefunction(fn):
        return fn(**kwargs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(fn(**kwargs))
    out = {}

    def run() -> None:
        try:
            out["value"] = asyncio.run(fn(**kwargs))
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            out["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]
