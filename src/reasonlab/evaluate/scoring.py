"""A completion's scores: format, correctness, the method's reward, thinking length."""

from __future__ import annotations

from ..rewards import score
from ..tasks import Task


def score_completion(completion: str, answer: str, task: Task, prompt: str | None = None) -> dict:
    """format_ok, correct, reward (the method's 2 + 1 reward) and think_len (characters, or None)."""
    return score_batch([completion], [answer], task, [prompt])[0]


def score_batch(completions, answers, task: Task, prompts=None) -> list[dict]:
    """`score_completion` for many completions, their answers verified in one batch (`rewards.score`)."""
    scores = score(completions, answers, task, prompts)
    return [
        {"format_ok": f, "correct": c, "reward": r, "think_len": None if t is None else len(t)}
        for f, c, r, t in zip(scores.format_ok, scores.correct, scores.total, scores.think)
    ]
