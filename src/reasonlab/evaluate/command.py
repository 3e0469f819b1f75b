"""`reasonlab eval`: its options and the whole evaluation of a model in lm-eval's layout."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import MAX_PROBLEMS, check_options
from ..engine import SamplingParams
from ..errors import UserError
from ..tasks import Task
from ..tasks.base import problems_for
from ..template import PROMPT_KINDS
from .accuracy import evaluate_problems
from .passk import k_samples, pass_curve
from .sample import ModelTaskConfig, refuse_unreadable
from .sweeps import budget_sweep, length_control


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
            "help": 'comma-separated length targets N: ask "think for N tokens" '
            "(what rl --length-target trains), "
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
            "help": "how the model is asked: template (the <think>/<answer> prompt of --style, "
            "scored strictly), "
            "free-form (reason step by step in free text) or direct (only the answer); the last two read "
            'the answer from the reply ("the answer is ...", else the last number): a base model\'s '
            "prompting",
            "choices": PROMPT_KINDS,
        },
    )
    keep_completions: int = field(
        default=200,
        metadata={
            "help": "greedy completions --output keeps: those of the first N problems "
            "(a seeded random sample; 0 = none)",
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
        metrics.update(_sampled_metrics(model, tokenizer, task, problems, cfg))
    out = {
        "results": {task.name: metrics},
        "config": dict(vars(cfg)),
        "n_problems": len(problems),
        "completions": result["rows"],
    }
    # Options every sweep shares; `extend` is the budget sweep's alone.
    shared = {"trigger": cfg.trigger, "max_new_tokens": cfg.max_new_tokens, "style": cfg.style}
    if budgets := cfg.budget_list():
        out["budget_curve"] = budget_sweep(
            model, tokenizer, task, problems, budgets, extend=cfg.extend, **shared
        )
    if targets := cfg.target_list():
        out["length_control"] = length_control(model, tokenizer, task, problems, targets, **shared)
    return out


def _sampled_metrics(model, tokenizer, task: Task, problems, cfg: EvalConfig) -> dict:
    """pass@1, pass@k and maj@k from `cfg.k` samples a problem at `cfg.temperature`."""
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
    return {"pass@1": curve[1], f"pass@{cfg.k}": curve[cfg.k], f"maj@{cfg.k}": sum(votes) / len(problems)}
