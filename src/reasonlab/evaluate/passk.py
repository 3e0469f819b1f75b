"""pass@k and maj@k: `k` samples a problem, how many are right and whether their majority is."""

from __future__ import annotations

import dataclasses

from .. import compute
from ..engine import SamplingParams, generate
from ..rewards import check_batch
from ..tasks import Task
from ..template import asks_free, parse_completion, prompt_for, read_replies


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021) from n samples of which c are correct."""
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def majority_answer(answers: list[str | None]) -> str | None:
    """The most common non-empty answer (ties: the first seen)."""
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    return max(counts, key=counts.get) if counts else None


@compute.not_counted()
def k_samples(
    model,
    tokenizer,
    task: Task,
    problems,
    k: int,
    params: SamplingParams,
    *,
    style: str = "plain",
    prompt: str = "template",
    trigger: bool = True,
    batch_size: int = 1024,
) -> tuple[list[int], list[bool]]:
    """`k` samples a problem (read as `evaluate_problems` reads its replies): per problem, how many
    are correct, and whether their majority answer is."""
    prompts = [
        prompt_for(p.question, style, prompt, trigger=trigger, tokenizer=tokenizer.hf)
        for p in problems
        for _ in range(k)
    ]
    texts = []
    for i in range(0, len(prompts), batch_size):  # one seed a chunk, derived from the sampling seed
        chunk = dataclasses.replace(params, seed=None if params.seed is None else params.seed + i)
        texts += generate(model, tokenizer, prompts[i : i + batch_size], chunk).texts
    free = prompt != "template" or any(asks_free(p.question) for p in problems)
    texts, read_prompts = read_replies(texts, prompts, free)
    checked = check_batch(texts, [p.answer for p in problems for _ in range(k)], task, read_prompts)
    correct, votes = [], []
    for i, p in enumerate(problems):
        rows = slice(i * k, (i + 1) * k)
        correct.append(sum(c for _, c in checked[rows]))
        parsed = [parse_completion(t, q) for t, q in zip(texts[rows], read_prompts[rows])]
        vote = majority_answer([x.answer.strip() if x.answer else None for x in parsed])
        votes.append(vote is not None and task.verify(vote, p.answer))
    return correct, votes


def pass_curve(correct: list[int], n: int, ks: list[int]) -> dict[int, float]:
    """Mean unbiased pass@k over problems, for each k in `ks` (≤ n), from n samples a problem of
    which `correct[i]` are right."""
    return {k: sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in ks}
