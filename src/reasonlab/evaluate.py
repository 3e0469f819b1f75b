"""Metrics over completions: format, correctness, reward, thinking length; and `score` over JSONL."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .engine import SamplingParams, generate
from .errors import UserError
from .rewards import reasoning_points
from .tasks import Task
from .template import build_prompt, parse_completion


def score_completion(completion: str, answer: str, task: Task, prompt: str | None = None) -> dict:
    """format_ok, correct, reward (the method's 2 + 1 reward) and think_len (characters, or None)."""
    parsed = parse_completion(completion, prompt)
    correct = parsed.format_ok and task.verify(parsed.answer, answer)
    think_len = None if parsed.think is None else len(parsed.think)
    return {"format_ok": parsed.format_ok, "correct": bool(correct),
            "reward": reasoning_points(parsed.format_ok, correct), "think_len": think_len}


def summarize(scored: list[dict]) -> dict:
    n = len(scored)
    return {
        "count": n,
        "format_rate": sum(r["format_ok"] for r in scored) / n if n else 0.0,
        "accuracy": sum(r["correct"] for r in scored) / n if n else 0.0,
        "mean_reward": sum(r["reward"] for r in scored) / n if n else 0.0,
    }


def read_score_input(path: str | Path) -> list[dict]:
    """Rows of a `score` input file, checked; a bad line raises UserError naming its number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"input file {str(path)!r} not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object")
            for key in ("completion", "answer"):
                if not isinstance(row.get(key), str):
                    raise UserError(f"{path}:{lineno}: {key!r} must be a string")
            if "prompt" in row and not isinstance(row["prompt"], str):
                raise UserError(f"{path}:{lineno}: 'prompt' must be a string")
            rows.append((lineno, row))
    if not rows:
        raise UserError(f"{path}: no input lines")
    return rows


def score_file(task: Task, input_path, output_path=None) -> tuple[list[dict], dict]:
    """Score every line of `input_path`; write them to `output_path` atomically (all or nothing)."""
    out = []
    for lineno, row in read_score_input(input_path):
        try:
            out.append({**row, **score_completion(row["completion"], row["answer"], task, row.get("prompt"))})
        except ValueError as e:  # e.g. a gold answer the task cannot read
            raise UserError(f"{input_path}:{lineno}: {e}") from None
    if output_path is not None:
        write_jsonl_atomic(output_path, out)
    return out, summarize(out)


def write_jsonl_atomic(path, rows: list[dict]) -> None:
    """Write JSONL to a temporary file beside `path`, fsync, then rename: never a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- sampling a task through the engine ----------------------------------------------------------

@dataclass
class SampleConfig:
    """What `reasonlab generate` (and the evaluations) sample: which problems, how, with what budget."""

    model: str = field(default="", metadata={"help": "checkpoint or Hugging Face model folder"})
    task: str = field(default="arithmetic", metadata={"help": "task name (`reasonlab tasks`)"})
    split: str = field(default="test", metadata={"help": "train or test problems"})
    problems: int = field(default=4, metadata={"help": "how many problems"})
    n: int = field(default=1, metadata={"help": "completions per problem"})
    style: str = field(default="plain", metadata={"help": "prompt style: plain, r1 or chat"})
    trigger: bool = field(default=True, metadata={"help": "plain style: add 'Let's think step by step.'"})
    prefill_think: bool = field(default=False, metadata={"help": "end the prompt with <think>"})
    max_new_tokens: int = field(default=256, metadata={"help": "tokens per completion at most"})
    temperature: float = field(default=1.0, metadata={"help": "0 = greedy"})
    top_k: int = field(default=0, metadata={"help": "0 = off"})
    top_p: float = field(default=1.0, metadata={"help": "1 = off"})
    think_budget: int | None = field(default=None, metadata={"help": "cap thinking at this many tokens"})
    extend: int = field(default=0, metadata={"help": "replace an early </think> by 'Wait,' up to n times"})
    seed: int = field(default=0, metadata={"help": "problem and sampling seed"})

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_k=self.top_k, top_p=self.top_p, think_budget=self.think_budget,
                              extend=self.extend, seed=self.seed)


def sample_task(model, tokenizer, task: Task, cfg: SampleConfig) -> list[dict]:
    """Sample `cfg.n` completions for each of `cfg.problems` problems; score each one."""
    problems = task.problems(cfg.problems, cfg.split, cfg.seed)
    prompts = [build_prompt(p.question, cfg.style, trigger=cfg.trigger, tokenizer=tokenizer.hf,
                            prefill_think=cfg.prefill_think) for p in problems for _ in range(cfg.n)]
    rollout = generate(model, tokenizer, prompts, cfg.sampling())
    out = []
    for i, text in enumerate(rollout.texts):
        problem = problems[i // cfg.n]
        row = score_completion(text, problem.answer, task, prompts[i])
        row.update(question=problem.question, answer=problem.answer, completion=text,
                   think_tokens=rollout.think_tokens[i], tokens=int(rollout.lengths[i]),
                   finish_reason=rollout.finish_reason[i])
        out.append(row)
    return out
