"""The Task abstraction: a seeded problem source plus a verifier (plus a worked solution if it can).

A task is everything a trainer or an evaluation needs to know about a problem family:

- `problems(n, split, seed)` gives `Problem`s (question text, gold answer, optional rationale);
- `verify(predicted, gold)` says whether an answer is right; rewards call it;
- `Problem.rationale` is a reference chain of thought where the task can write one.

Synthetic tasks split train/test by a hash of the question, so the two splits never share a
problem whatever the seeds. Add a task with `@register_task("name")` (see docs/tasks.md).
"""

from __future__ import annotations

import hashlib
import inspect
import random
import typing
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from ..template import format_completion

SPLITS = ("train", "test")
# What a verifier counts besides right and wrong (`Task.counts`); trainers log each as verify/<name>.
VERIFY_EVENTS = ("timeouts", "unparsed_gold", "too_long", "errors")


@dataclass
class Problem:
    question: str  # the problem as the model reads it (the template wraps it)
    answer: str  # the gold answer, in the form `verify` expects as `gold`
    rationale: str | None = None  # a reference chain of thought, where the task can write one
    meta: dict = field(default_factory=dict)
    solution: str | None = None  # what a worked answer writes, when it differs from `answer`

    def reference_completion(self) -> str | None:
        """The `<think>rationale</think><answer>solution</answer>` text, if there is a rationale."""
        if self.rationale is None:
            return None
        return format_completion(self.rationale, self.solution or self.answer)


class Task:
    """Base class. Subclasses set `name` and implement `sample` (or override `problems`) and `verify`."""

    name: ClassVar[str] = "task"
    test_fraction: ClassVar[float] = 0.1  # share of the problem space held out for evaluation

    def sample(self, rng: random.Random) -> Problem:
        """One random problem (synthetic tasks)."""
        raise NotImplementedError

    def verify(self, predicted: str, gold: str) -> bool:
        raise NotImplementedError

    def verify_batch(self, predicted: typing.Sequence[str], golds: typing.Sequence[str]) -> list[bool]:
        """`verify` over pairs; tasks whose checks are costly (math-verify) do them in parallel."""
        return [self.verify(p, g) for p, g in zip(predicted, golds, strict=True)]

    @property
    def counts(self) -> Counter:
        """Verification events that are not a plain right or wrong (``timeouts``, ``unparsed_gold``,
        …), counted since the task was built: scoring reports them, the trainers log them as
        ``verify/<name>``. Each is still scored wrong, but never in silence."""
        return self.__dict__.setdefault("_counts", Counter())

    def count(self, event: str, gold: str | None = None) -> None:
        """Count one event; a gold the verifier cannot read is also warned about, once per gold."""
        self.counts[event] += 1
        warned = self.__dict__.setdefault("_warned", set())
        if event == "unparsed_gold" and gold not in warned:
            warned.add(gold)
            warnings.warn(
                UnparsedGold(
                    f"task {self.name!r} cannot read the gold answer {gold[:80]!r}: "
                    "every answer to it scores wrong"
                ),
                stacklevel=3,
            )

    def check_steps(self, question: str, think: str) -> bool | None:
        """Does every step of a chain of thought follow from the question and the steps before it?
        None when the task cannot tell (the default). A *process* check that needs no reference
        rationale: Method 1 uses it to drop samples whose answer is right by luck."""
        return None

    def data_files(self) -> list:
        """The files the task reads its problems from ([] for a generated task): a resume checks
        their content is what the run started on."""
        return []

    def problems(self, n: int, split: str = "train", seed: int = 0, at_most: bool = False) -> list[Problem]:
        """`n` distinct problems of `split`, the same for the same seed.

        Raises ValueError when the problem space has fewer than `n` problems in that split; with
        `at_most`, returns all there are instead (the first ones the same as without it). The space
        counts as exhausted when no new problem turned up in 1,000 + 20 x (problems found) draws in
        a row, so a small space answers at once, not after 50 x n draws.
        """
        check_split(split)
        rng = random.Random(f"{self.name}:{split}:{seed}")
        out, seen, tries, since_new = [], set(), 0, 0
        while len(out) < n:
            tries += 1
            since_new += 1
            if tries > 50 * n + 1000 or since_new > 1000 + 20 * len(out):
                if at_most and out:
                    return out
                raise TooFewProblems(
                    f"task {self.name!r} has fewer than {n} distinct {split} problems"
                    + (f" (found {len(out)})" if out else "")
                )
            problem = self.sample(rng)
            if problem.question in seen or split_of(problem.question, self.test_fraction) != split:
                continue
            seen.add(problem.question)
            out.append(problem)
            since_new = 0
        return out


class UnparsedGold(UserWarning):
    """A gold answer the task's verifier cannot read (every answer to it is scored wrong)."""


class TooFewProblems(ValueError):
    """The split holds fewer problems than asked for."""


def problems_for(task: Task, n: int, split: str, seed: int, setting: str) -> list[Problem]:
    """`task.problems(n, split, seed)` for a run's setting (say `--eval-problems`): a space too small
    is a one-line user error that names the setting to lower."""
    try:
        return task.problems(n, split, seed)
    except TooFewProblems as e:
        from ..errors import UserError

        raise UserError(f"{e}: lower {setting}") from None


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def split_of(question: str, test_fraction: float) -> str:
    """Deterministic train/test assignment from a hash of the question text."""
    h = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "big")
    return "test" if (h % 10_000) < test_fraction * 10_000 else "train"


_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str):
    """Class decorator: `@register_task("mytask")` makes `get_task("mytask", **kwargs)` work."""

    def wrap(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_task(name: str, **kwargs) -> Task:
    """Build a registered task. Unknown names, options the task does not take and option values of
    the wrong type raise ValueError naming what the task accepts."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_REGISTRY))}")
    from ..config import unwrap_optional, value_fits

    cls = _REGISTRY[name]
    options = task_options(cls)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve: leave the values unchecked
        hints = {}
    for key, value in kwargs.items():
        if key not in options:
            known = ", ".join(f"{k} (default {v.default!r})" for k, v in options.items()) or "none"
            raise ValueError(f"task {name!r} has no option {key!r}; its options: {known}")
        kind, optional = unwrap_optional(hints.get(key))
        # Numbers only: a --task-arg string option may look numeric (a file named 2024).
        if kind in (int, float) and not (value is None and optional) and not value_fits(kind, value):
            raise ValueError(
                f"task {name!r}: {key} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
            )
    task = cls(**kwargs)
    # What was built, every option with its value (defaults filled in): saved beside checkpoints,
    # so a later run on other settings can say so (`describe_difference`).
    task.spec = {
        "name": name,
        "options": {
            k: kwargs.get(k, p.default)
            for k, p in options.items()
            if k in kwargs or p.default is not inspect.Parameter.empty
        },
    }
    return task


def describe_difference(trained, now: dict) -> str | None:
    """How task spec `now` differs from `trained` (a checkpoint's record: a spec, or a bare task
    name from older checkpoints); None when they agree or nothing was recorded."""
    if isinstance(trained, str):
        trained = {"name": trained}
    if not isinstance(trained, dict) or "name" not in trained:
        return None
    if trained["name"] != now["name"]:
        return f"task {trained['name']!r}, this run {now['name']!r}"
    if not isinstance(trained.get("options"), dict):
        return None
    old, new = trained["options"], now["options"]
    changed = [
        f"{k}={old.get(k)!r} (this run {new.get(k)!r})"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    return f"{now['name']} with " + ", ".join(changed) if changed else None


def task_options(cls) -> dict[str, inspect.Parameter]:
    """The keyword options a task class takes (its constructor's parameters)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def list_tasks() -> list[str]:
    return sorted(_REGISTRY)
