"""Accuracy on held-out problems (`evaluate_problems`): the metrics every trainer and study reads."""

from __future__ import annotations

import time
from collections import Counter

from .. import compute
from ..engine import SamplingParams, generate
from ..tasks import Task
from ..template import asks_free, parse_completion, prompt_for, read_replies
from .scoring import score_batch

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=256)


@compute.not_counted()  # a measurement, not the compute of a method
def evaluate_problems(
    model,
    tokenizer,
    task: Task,
    problems,
    *,
    trigger: bool = True,
    style: str = "plain",
    params: SamplingParams = GREEDY,
    batch_size: int = 256,
    hint=None,
    keep: int | None = None,
    prompt: str = "template",
) -> dict:
    """Greedy (by default) accuracy, format rate, thinking length, truncation rate and tokens/s.

    `prompt` (`template.PROMPT_KINDS`): "template" asks for the template and scores it strictly;
    "free-form" (reason step by step in free text) and "direct" (only the answer) read the answer
    from the reply as Method 1's free-form mode does (`template.read_replies`), so a model that never
    writes the tags is measured too; `format_rate` is still that of the tags in the reply. Questions
    answered in the model's own format (a data task's ``output="free"``, `template.asks_free`) are
    read so under any `prompt`.
    `hint(problem) -> str` optionally rewrites each question (the faithfulness probe uses it).
    Returns the metrics and, under ``"rows"``, the scored rows (`completion_row`) of the first
    `keep` problems (all of them when None): the metrics count every problem, while memory holds
    `keep` rows at most. Problems that record a difficulty (``meta["difficulty"]``, say a chain's
    hops) get the same metrics per difficulty under ``"by_difficulty"``: does the model think longer
    on the harder ones, and where does its accuracy go?

    The inference cost of an answer, beside them: ``mean_prompt_tokens`` (the prompt's tokens, as
    the engine tokenised it), ``mean_completion_tokens`` (every token generated, thinking included)
    and ``flops_per_answer``, the mean over problems of `compute.answer_flops` at the model's
    `compute.model_cost` (prefill and decoding, attention included; None for a model whose shape
    `compute.model_cost` cannot find).
    """
    try:
        cost = compute.model_cost(model)
    except compute.UnknownShape:
        cost = None
    tally, tokens, start = _Tally(cost, keep), 0, time.perf_counter()
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        questions = [hint(p) if hint else p.question for p in chunk]
        prompts = [prompt_for(q, style, prompt, trigger=trigger, tokenizer=tokenizer.hf) for q in questions]
        rollout = generate(model, tokenizer, prompts, params)
        tokens += int(rollout.lengths.sum())
        free = prompt != "template" or any(asks_free(q) for q in questions)
        scored, tags_ok = _score_replies(rollout, prompts, chunk, task, free)
        tally.add(chunk, questions, prompts, scored, tags_ok, rollout)
    return tally.result(tokens / (time.perf_counter() - start))


def _score_replies(
    rollout, prompts: list[str], chunk, task: Task, free: bool
) -> tuple[list[dict], list[bool]]:
    """The scored rows of a batch's replies and whether each reply's tags are well formed. With
    `free` (a free-text prompt, or questions answered in the model's own format) the answer is read
    from the reply (kept as ``read_as``) and scored; the tags' format is still the reply's own."""
    read, read_prompts = read_replies(rollout.texts, prompts, free)
    scored = score_batch(read, [p.answer for p in chunk], task, read_prompts)
    if not free:
        return scored, [row["format_ok"] for row in scored]
    tags_ok = [parse_completion(t, q).format_ok for t, q in zip(rollout.texts, prompts)]
    for row, text in zip(scored, read):
        row["read_as"] = text
    return scored, tags_ok


class _Tally:
    """An evaluation's running counts, overall and per difficulty, and the rows it keeps (the first
    `keep`; all when None)."""

    def __init__(self, cost, keep: int | None):
        self.cost, self.keep = cost, keep
        self.sums, self.by_difficulty, self.rows = Counter(), {}, []

    def add(self, chunk, questions, prompts, scored, tags_ok, rollout) -> None:
        for j, (p, row) in enumerate(zip(chunk, scored)):
            prompt_tokens, new_tokens = len(rollout.prompt_ids[j]), int(rollout.lengths[j])
            outcome = Counter(
                n=1,
                correct=row["correct"],
                format_ok=tags_ok[j],
                think_tokens=rollout.think_tokens[j],
                truncated=rollout.finish_reason[j] == "length",
                prompt_tokens=prompt_tokens,
                completion_tokens=new_tokens,
                flops=compute.answer_flops(self.cost, prompt_tokens, new_tokens)
                if self.cost is not None
                else 0.0,
            )
            self.sums.update(outcome)
            if "difficulty" in p.meta:
                self.by_difficulty.setdefault(p.meta["difficulty"], Counter()).update(outcome)
            if self.keep is None or len(self.rows) < self.keep:
                self.rows.append(
                    {
                        **completion_row(row, questions[j], prompts[j], p.answer, rollout, j),
                        "format_ok": tags_ok[j],
                    }
                )

    def result(self, tokens_per_s: float) -> dict:
        sums, cost = self.sums, self.cost
        out = {**rates(sums), **per_answer(sums, cost), "tokens_per_s": tokens_per_s, "rows": self.rows}
        if self.by_difficulty:
            out["by_difficulty"] = {
                str(d): {"n": c["n"], **rates(c), **per_answer(c, cost)}
                for d, c in sorted(self.by_difficulty.items())
            }
        return out


def rates(sums: Counter) -> dict:
    """Accuracy, format rate, mean thinking tokens and truncation rate from an evaluation's counts."""
    n = sums["n"]
    return {
        "accuracy": sums["correct"] / n,
        "format_rate": sums["format_ok"] / n,
        "mean_think_tokens": sums["think_tokens"] / n,
        "truncation_rate": sums["truncated"] / n,
    }


def per_answer(sums: Counter, cost) -> dict:
    """An evaluation's mean prompt and completion tokens an answer and its mean FLOPs (None without
    a cost)."""
    n = sums["n"]
    return {
        "mean_prompt_tokens": sums["prompt_tokens"] / n,
        "mean_completion_tokens": sums["completion_tokens"] / n,
        "flops_per_answer": sums["flops"] / n if cost is not None else None,
    }


def completion_row(scored: dict, question: str, prompt: str, gold: str, rollout, j: int) -> dict:
    """One evaluated completion as `--output` keeps it: what the model was asked (question and the
    prompt it read), what it wrote, the parsed answer (None when the format is broken) and why the
    format broke, the gold, and the scores."""
    parsed = parse_completion(rollout.texts[j], prompt)
    return {
        "question": question,
        "prompt": prompt,
        "answer": gold,
        "completion": rollout.texts[j],
        "parsed_answer": parsed.answer,
        "format_errors": parsed.reasons,
        **scored,
        "think_tokens": rollout.think_tokens[j],
        "finish_reason": rollout.finish_reason[j],
    }
