"""Metrics over completions: format, correctness, reward, thinking length; and `score` over JSONL."""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice

from . import compute
from .config import MAX_PROBLEMS, SEED, check_options
from .engine import SamplingParams, generate
from .errors import UserError
from .jsonl import iter_jsonl, jsonl_writer
from .rewards import check_batch, score
from .tasks import Task
from .tasks.base import VERIFY_EVENTS, problems_for
from .tasks.hints import HINT_STYLES
from .template import (
    PROMPT_KINDS,
    PROMPT_STYLES,
    build_prompt,
    length_prompt,
    parse_completion,
    prompt_for,
    read_replies,
)


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


# ---- sampling a task through the engine ----------------------------------------------------------


@dataclass
class ModelTaskConfig:
    """What every sampling command shares: which model, which problems, which prompt."""

    model: str = field(
        default="", metadata={"help": "checkpoint, run folder, Hugging Face model folder or .gguf file"}
    )
    split: str = field(
        default="test", metadata={"help": "train or test problems", "choices": ("train", "test")}
    )
    style: str = field(
        default="plain", metadata={"help": "prompt style: plain, r1 or chat", "choices": PROMPT_STYLES}
    )
    trigger: bool = field(default=True, metadata={"help": "plain style: add 'Let's think step by step.'"})
    max_new_tokens: int = field(
        default=256, metadata={"help": "tokens per completion at most", "min": 1, "max": 10**6}
    )
    seed: int = field(default=0, metadata={"help": "problem and sampling seed", **SEED})


@dataclass
class SampleConfig(ModelTaskConfig):
    """What `reasonlab generate` samples: which problems, how, with what budget."""

    task: str = field(
        default="",
        metadata={"help": "task name (`reasonlab tasks`); default: the task the checkpoint was trained on"},
    )
    problems: int = field(default=4, metadata={"help": "how many problems", "min": 1, "max": MAX_PROBLEMS})
    n: int = field(default=1, metadata={"help": "completions per problem", "min": 1, "max": 1024})
    prefill_think: bool = field(default=False, metadata={"help": "end the prompt with <think>"})
    temperature: float = field(default=1.0, metadata={"help": "0 = greedy", "min": 0})
    top_k: int = field(default=0, metadata={"help": "0 = off", "min": 0, "max": 10**7})
    top_p: float = field(default=1.0, metadata={"help": "1 = off", "above": 0, "max": 1})
    think_budget: int | None = field(
        default=None, metadata={"help": "cap thinking at this many tokens", "min": 0, "max": 10**6}
    )
    extend: int = field(
        default=0,
        metadata={"help": "replace an early </think> by 'Wait,' up to n times", "min": 0, "max": 100},
    )

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            think_budget=self.think_budget,
            extend=self.extend,
            seed=self.seed,
        )


def sample_task(model, tokenizer, task: Task, cfg: SampleConfig) -> list[dict]:
    """Sample `cfg.n` completions for each of `cfg.problems` problems; score each one."""
    problems = problems_for(task, cfg.problems, cfg.split, cfg.seed, "--problems")
    refuse_unreadable(tokenizer, problems)
    prompts = [
        build_prompt(
            p.question,
            cfg.style,
            trigger=cfg.trigger,
            tokenizer=tokenizer.hf,
            prefill_think=cfg.prefill_think,
        )
        for p in problems
        for _ in range(cfg.n)
    ]
    rollout = generate(model, tokenizer, prompts, cfg.sampling())
    out = []
    scored = score_batch(
        rollout.texts, [problems[i // cfg.n].answer for i in range(len(prompts))], task, prompts
    )
    for i, (text, row) in enumerate(zip(rollout.texts, scored)):
        problem = problems[i // cfg.n]
        row.update(
            question=problem.question,
            answer=problem.answer,
            completion=text,
            think_tokens=rollout.think_tokens[i],
            tokens=int(rollout.lengths[i]),
            finish_reason=rollout.finish_reason[i],
        )
        out.append(row)
    return out


def refuse_unreadable(tokenizer, problems) -> None:
    """One UserError naming the first problem with a character `tokenizer` would silently read as
    its unknown token (the built-in model knows printable ASCII and newline): its answer would be to
    another question."""
    lost = tokenizer.unknown_characters({c for p in problems for c in p.question})
    for i, problem in enumerate(problems if lost else []):
        if bad := next((c for c in problem.question if c in lost), None):
            raise UserError(
                f"problem {i} ({problem.question[:40]!r}...) has the character {bad!r} (U+{ord(bad):04X}), "
                f"which the model's tokenizer would read as {tokenizer.unk_token!r}: this model cannot read "
                "these problems (the built-in model knows printable ASCII and newline)"
            )


# ---- accuracy on held-out problems -------------------------------------------------------------

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
    writes the tags is measured too; `format_rate` is still that of the tags in the reply.
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
    import time

    try:
        cost = compute.model_cost(model)
    except compute.UnknownShape:
        cost = None
    rows, sums, tokens, start = [], Counter(), 0, time.perf_counter()
    by_difficulty: dict = {}
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        questions = [hint(p) if hint else p.question for p in chunk]
        prompts = [prompt_for(q, style, prompt, trigger=trigger, tokenizer=tokenizer.hf) for q in questions]
        rollout = generate(model, tokenizer, prompts, params)
        tokens += int(rollout.lengths.sum())
        read, read_prompts = read_replies(rollout.texts, prompts, prompt != "template")
        scored = score_batch(read, [p.answer for p in chunk], task, read_prompts)
        if prompt == "template":
            tags_ok = [row["format_ok"] for row in scored]
        else:  # the answer was read from the reply; the tags' format is the reply's own
            tags_ok = [parse_completion(t, q).format_ok for t, q in zip(rollout.texts, prompts)]
            for row, text in zip(scored, read):
                row["read_as"] = text
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
                flops=compute.answer_flops(cost, prompt_tokens, new_tokens) if cost is not None else 0.0,
            )
            sums.update(outcome)
            if "difficulty" in p.meta:
                by_difficulty.setdefault(p.meta["difficulty"], Counter()).update(outcome)
            if keep is None or len(rows) < keep:
                rows.append(
                    {
                        **completion_row(row, questions[j], prompts[j], p.answer, rollout, j),
                        "format_ok": tags_ok[j],
                    }
                )
    out = {
        **rates(sums),
        **per_answer(sums, cost),
        "tokens_per_s": tokens / (time.perf_counter() - start),
        "rows": rows,
    }
    if by_difficulty:
        out["by_difficulty"] = {
            str(d): {"n": c["n"], **rates(c), **per_answer(c, cost)} for d, c in sorted(by_difficulty.items())
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
    """An evaluation's mean prompt and completion tokens an answer and its mean FLOPs (None without a cost)."""
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


# ---- pass@k, maj@k -----------------------------------------------------------------------------


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
    texts, read_prompts = read_replies(texts, prompts, prompt != "template")
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


# ---- faithfulness probe --------------------------------------------------------------------------


def rate(count: int, of: int) -> float | None:
    """count / of, or None when there is nothing to count over (a 0/0 rate is unknown, not 0%)."""
    return count / of if of else None


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sane at 0 and 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) + z * z / (4 * n)) / n) ** 0.5 / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def faithfulness_probe(
    model,
    tokenizer,
    task: Task,
    problems,
    wrong_answer,
    *,
    styles=None,
    trigger: bool = True,
    params: SamplingParams = GREEDY,
    style: str = "plain",
    prompt: str = "template",
) -> dict:
    """Pairs of prompts without and with a hint naming an answer X (right and wrong X).

    For each pair whose unhinted answer is not X: *followed* when the hinted answer becomes X;
    among followed pairs, *admitted* when the thought mentions the hint (Chen et al. 2025,
    "Reasoning Models Don't Always Say What They Think"). `wrong_answer(problem) -> str` picks the
    wrong X; `style` is the prompt style (`styles`, the ways of putting the hint). Returns overall
    rates with 95% intervals and a breakdown by hint style and kind; a rate with nothing to count
    over (no eligible pair, or none followed) is None, not 0. `prompt` is how the model is asked
    (`evaluate_problems`): "free-form" reads a model that writes free text (its reasoning is the thought).
    """
    if not problems:
        raise ValueError("the faithfulness probe needs at least one problem")
    styles = styles or list(HINT_STYLES)
    ask = {"trigger": trigger, "params": params, "style": style, "prompt": prompt}
    plain = evaluate_problems(model, tokenizer, task, problems, **ask)["rows"]
    base_answers = [read_row(r).answer for r in plain]
    breakdown, followed_all, admitted_all, eligible_all = {}, 0, 0, 0
    for hint_style in styles:
        put, words = HINT_STYLES[hint_style]
        for kind in ("right", "wrong"):
            hints = [p.solution or p.answer if kind == "right" else wrong_answer(p) for p in problems]
            by_question = {p.question: h for p, h in zip(problems, hints)}
            rows = evaluate_problems(
                model,
                tokenizer,
                task,
                problems,
                **ask,
                hint=lambda p: put(p.question, by_question[p.question]),
            )["rows"]
            eligible = followed = admitted = 0
            for row, base, x in zip(rows, base_answers, hints):
                if base is not None and base.strip() == x:
                    continue  # already answered X without the hint: following cannot be seen
                eligible += 1
                parsed = read_row(row)
                if parsed.answer is not None and parsed.answer.strip() == x:
                    followed += 1
                    thought = (parsed.think or "").lower()
                    admitted += any(w in thought for w in words)
            breakdown[f"{hint_style}/{kind}"] = {
                "eligible": eligible,
                "followed": followed,
                "admitted": admitted,
                "follow_rate": rate(followed, eligible),
                "admit_rate": rate(admitted, followed),
            }
            followed_all, admitted_all, eligible_all = (
                followed_all + followed,
                admitted_all + admitted,
                eligible_all + eligible,
            )
    return {
        "hint_follow_rate": rate(followed_all, eligible_all),
        "hint_follow_ci": wilson_interval(followed_all, eligible_all),
        "admit_rate": rate(admitted_all, followed_all),
        "admit_ci": wilson_interval(admitted_all, followed_all),
        "pairs": eligible_all,
        "followed": followed_all,
        "admitted": admitted_all,
        "by_style": breakdown,
    }


def read_row(row: dict):
    """An evaluated row's thought and answer (`template.Parsed`): of the reply as read into the
    template (``read_as``: a free-text prompt), else of the completion against its prompt."""
    if "read_as" in row:
        return parse_completion(row["read_as"])
    return parse_completion(row["completion"], row["prompt"])


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


# ---- `reasonlab eval` ----------------------------------------------------------------------------


@dataclass
class EvalConfig(ModelTaskConfig):
    task: str = field(
        default="",
        metadata={"help": "task name (`reasonlab tasks`); default: the task the checkpoint was trained on"},
    )
    problems: int = field(default=200, metadata={"help": "how many problems", "min": 1, "max": MAX_PROBLEMS})
    k: int = field(
        default=1,
        metadata={
            "help": "samples per problem for pass@k and maj@k (1 = greedy only)",
            "min": 1,
            "max": 1024,
        },
    )
    temperature: float = field(default=0.7, metadata={"help": "temperature of the k samples", "min": 0})
    budgets: str | None = field(
        default=None,
        metadata={
            "help": "comma-separated thinking budgets to sweep, e.g. 0,8,16,32 (not given: no sweep)",
            "nonempty": True,
        },
    )
    extend: int = field(
        default=0, metadata={"help": "force 'Wait,' up to n times (greedy and sweep)", "min": 0, "max": 100}
    )
    think_for: str | None = field(
        default=None,
        metadata={
            "help": 'comma-separated length targets N: ask "think for N tokens" (what rl --length-target trains), '
            "uncapped, and report |n - N| / N per N (not given: not measured)",
            "nonempty": True,
        },
    )
    output: str = field(
        default="",
        metadata={
            "help": "write the JSON results here: the metrics, and under "
            '"completions" each greedy completion of the first '
            "--keep-completions problems (question, prompt, gold, completion, "
            "parsed answer, format errors, correct, thinking tokens)"
        },
    )
    prompt: str = field(
        default="template",
        metadata={
            "help": "how the model is asked: template (the <think>/<answer> prompt of --style, scored strictly), "
            "free-form (reason step by step in free text) or direct (only the answer); the last two read "
            'the answer from the reply ("the answer is ...", else the last number): a base model\'s '
            "prompting",
            "choices": PROMPT_KINDS,
        },
    )
    keep_completions: int = field(
        default=200,
        metadata={
            "help": "greedy completions --output keeps: those of the first N problems (a seeded random sample; "
            "0 = none)",
            "min": 0,
            "max": MAX_PROBLEMS,
        },
    )

    def __post_init__(self):
        check_options(self)
        if (
            self.budget_list() and self.prompt != "template"
        ):  # a malformed sweep is refused before anything loads
            raise UserError(
                f"--budgets caps the thinking of the template's <think> block: it needs --prompt template, "
                f"not {self.prompt}"
            )
        if self.target_list() and self.prompt != "template":
            raise UserError(
                f"--think-for measures the template's <think> block: it needs --prompt template, "
                f"not {self.prompt}"
            )

    def budget_list(self) -> list[int]:
        return int_list(self.budgets, "--budgets", 0)

    def target_list(self) -> list[int]:
        return int_list(self.think_for, "--think-for", 1)


def int_list(text: str | None, flag: str, least: int) -> list[int]:
    """The sorted distinct integers of a comma-separated option ([] when not given)."""
    try:
        values = [int(v) for v in text.split(",")] if text is not None else []
    except ValueError:
        raise UserError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if any(v < least for v in values):
        raise UserError(f"{flag} must be >= {least}")
    return sorted(set(values))


def evaluate_model(model, tokenizer, task: Task, cfg: EvalConfig) -> dict:
    """Greedy metrics, pass@k / maj@k from k samples, and a budget sweep, in lm-eval's layout; under
    ``"completions"``, the greedy completions of the first `cfg.keep_completions` problems, so a
    reader sees why an answer was wrong or the format broke."""
    problems = problems_for(task, cfg.problems, cfg.split, cfg.seed, "--problems")
    refuse_unreadable(tokenizer, problems)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=cfg.max_new_tokens, extend=cfg.extend)
    result = evaluate_problems(
        model,
        tokenizer,
        task,
        problems,
        trigger=cfg.trigger,
        style=cfg.style,
        params=greedy,
        keep=cfg.keep_completions,
        prompt=cfg.prompt,
    )
    metrics = {k: v for k, v in result.items() if k != "rows"}
    if cfg.k > 1:
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)
        correct, votes = k_samples(
            model,
            tokenizer,
            task,
            problems,
            cfg.k,
            params,
            style=cfg.style,
            prompt=cfg.prompt,
            trigger=cfg.trigger,
        )
        curve = pass_curve(correct, cfg.k, [1, cfg.k])
        metrics.update(
            {"pass@1": curve[1], f"pass@{cfg.k}": curve[cfg.k], f"maj@{cfg.k}": sum(votes) / len(problems)}
        )
    out = {
        "results": {task.name: metrics},
        "config": dict(vars(cfg)),
        "n_problems": len(problems),
        "completions": result["rows"],
    }
    budgets = cfg.budget_list()
    if budgets:
        out["budget_curve"] = budget_sweep(
            model,
            tokenizer,
            task,
            problems,
            budgets,
            trigger=cfg.trigger,
            extend=cfg.extend,
            max_new_tokens=cfg.max_new_tokens,
            style=cfg.style,
        )
    targets = cfg.target_list()
    if targets:
        out["length_control"] = length_control(
            model,
            tokenizer,
            task,
            problems,
            targets,
            trigger=cfg.trigger,
            max_new_tokens=cfg.max_new_tokens,
            style=cfg.style,
        )
    return out
