"""`reasonlab generate`: what every sampling command shares, and sampling a task's problems."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import MAX_PROBLEMS, SEED
from ..engine import SamplingParams, generate
from ..errors import UserError
from ..tasks import Task
from ..tasks.base import problems_for
from ..template import PROMPT_STYLES, asks_free, build_prompt, read_replies
from .scoring import score_batch


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
    # questions answered in the model's own format (output=free) are scored on the answer read from them
    read, read_prompts = read_replies(rollout.texts, prompts, any(asks_free(p.question) for p in problems))
    scored = score_batch(read, [problems[i // cfg.n].answer for i in range(len(prompts))], task, read_prompts)
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
