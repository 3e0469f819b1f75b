"""`reasonlab score`: a JSONL file of completions scored in chunks, never all in memory."""

from __future__ import annotations

import contextlib
from collections import Counter
from itertools import islice

from ..errors import UserError
from ..jsonl import iter_jsonl, jsonl_writer
from ..tasks import Task
from ..tasks.base import VERIFY_EVENTS
from .scoring import score_batch, score_completion


def read_score_input(path):
    """Rows of a `score` input file, read and checked one at a time; a bad line raises UserError
    naming its number."""
    for lineno, row in iter_jsonl(path):
        for key in ("completion", "answer"):
            if not isinstance(row.get(key), str):
                raise UserError(f"{path}:{lineno}: {key!r} must be a string")
        if "prompt" in row and not isinstance(row["prompt"], str):
            raise UserError(f"{path}:{lineno}: 'prompt' must be a string")
        yield lineno, row


SCORE_CHUNK = 256  # rows scored together: one verify_batch call, a bounded slice of the file in memory


def score_file(task: Task, input_path, output_path=None, emit=None) -> dict:
    """Score `input_path` in chunks of `SCORE_CHUNK` lines (the file is never all in memory): each
    scored row goes to `output_path` (atomically: all or nothing) or to `emit(row)`. Returns the
    summary: count, format_rate, accuracy, mean_reward, and under ``verify`` the verifier's events
    (timeouts, unparsed golds, ...: answers scored wrong because they could not be judged)."""
    sums = {"count": 0, "format_ok": 0, "correct": 0, "reward": 0.0}
    before = Counter(task.counts)
    with jsonl_writer(output_path) if output_path is not None else contextlib.nullcontext(emit) as write:
        rows = read_score_input(input_path)
        while chunk := list(islice(rows, SCORE_CHUNK)):
            for scored in _score_chunk(task, input_path, chunk):
                for key in ("format_ok", "correct", "reward"):
                    sums[key] += scored[key]
                sums["count"] += 1
                if write:
                    write(scored)
        if not sums["count"]:
            raise UserError(f"{input_path}: no input lines")
    n = sums["count"]
    return {
        "count": n,
        "format_rate": sums["format_ok"] / n,
        "accuracy": sums["correct"] / n,
        "mean_reward": sums["reward"] / n,
        "verify": {k: task.counts[k] - before[k] for k in VERIFY_EVENTS},
    }


def _score_chunk(task: Task, input_path, chunk: list[tuple[int, dict]]) -> list[dict]:
    rows = [row for _, row in chunk]
    try:
        scored = score_batch(
            [r["completion"] for r in rows],
            [r["answer"] for r in rows],
            task,
            [r.get("prompt") for r in rows],
        )
    except ValueError:  # e.g. a gold answer the task cannot read: find its line
        for lineno, row in chunk:
            try:
                score_completion(row["completion"], row["answer"], task, row.get("prompt"))
            except ValueError as e:
                raise UserError(f"{input_path}:{lineno}: {e}") from None
        raise
    return [{**row, **s} for row, s in zip(rows, scored)]
