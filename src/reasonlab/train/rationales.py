"""Method 1: self-generated rationales (STaR, Zelikman et al. 2022), kept by a verifier.

Each round:

1. sample `samples` (k) chains of thought per training problem from a generator prompted to reason
   (the model itself by default, or a stronger local checkpoint: a teacher);
2. keep the completions whose format holds and whose answer the task's verifier accepts;
3. optionally *rationalize* (STaR): for problems with no kept sample, sample again with the gold
   answer given as a hint, and keep correct rationales with the hint removed from the prompt;
4. deduplicate, write the survivors as prompt/completion pairs in the ``<think>/<answer>`` template;
5. fine-tune: from the base model each round (STaR's choice, the default) or continuing;
6. measure held-out accuracy.

The base model is never shown a reference rationale here: everything it learns comes from its own
samples that turned out right.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..engine import SamplingParams, generate
from ..evaluate import evaluate_problems
from ..jsonl import write_jsonl_atomic
from ..rewards import is_correct
from ..tasks import Task
from ..template import build_prompt, parse_completion
from .loop import TrainConfig, tokenize_examples, train_supervised
from .pretrain import hint_line


@dataclass
class RationalesConfig(TrainConfig):
    rounds: int = field(default=3, metadata={"help": "sample -> filter -> fine-tune rounds"})
    problems: int = field(default=2000, metadata={"help": "training problems sampled per round"})
    samples: int = field(default=4, metadata={"help": "k: chains of thought per problem"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature for rationales"})
    max_new_tokens: int = field(default=160, metadata={"help": "tokens per rationale at most"})
    rationalize: bool = field(default=False, metadata={"help": "retry failed problems with the answer as a hint"})
    continue_training: bool = field(default=False, metadata={"help": "fine-tune the last round's model instead of the base"})
    train_trigger: bool = field(default=True, metadata={"help": "keep the trigger phrase in fine-tuning prompts"})
    eval_problems: int = field(default=200, metadata={"help": "held-out problems per round"})


def sample_rationales(generator, tokenizer, task: Task, problems, cfg: RationalesConfig, seed: int,
                      hinted: bool = False) -> tuple[list[dict], int]:
    """Correct, deduplicated `{"question", "completion"}` pairs and the number of samples drawn.

    With `hinted`, the generator sees the gold answer as a hint line; the pair keeps the plain question.
    """
    questions = [f"{p.question}\n{hint_line(p.solution or p.answer)}" if hinted else p.question for p in problems]
    prompts = [build_prompt(q, trigger=True, tokenizer=tokenizer.hf) for q in questions for _ in range(cfg.samples)]
    kept, seen, drawn = [], set(), 0
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed)
    for i in range(0, len(prompts), 512):
        rollout = generate(generator, tokenizer, prompts[i:i + 512], params)
        for j, text in enumerate(rollout.texts):
            problem = problems[(i + j) // cfg.samples]
            drawn += 1
            if not is_correct(text, problem.answer, task, prompts[i + j])[1]:
                continue
            parsed = parse_completion(text, prompts[i + j])
            completion = f"<think>{parsed.think}</think><answer>{parsed.answer}</answer>"
            if hinted and "hint" in parsed.think:  # a rationale that leans on the hint teaches nothing
                continue
            if (problem.question, completion) not in seen:
                seen.add((problem.question, completion))
                kept.append({"question": problem.question, "completion": completion})
    return kept, drawn


def run_rationales(base, tokenizer, task: Task, cfg: RationalesConfig, generator=None, out_dir=None,
                   log=None, progress=None):
    """Run `cfg.rounds` rounds; returns (final model, list of per-round records)."""
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "rationales_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    held_out = task.problems(cfg.eval_problems, "test", seed=cfg.seed + 1)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=cfg.max_new_tokens)
    model, records = base, []
    for round_ in range(1, cfg.rounds + 1):
        start = time.monotonic()
        problems = task.problems(cfg.problems, "train", seed=cfg.seed + 1000 * round_)
        source = generator if generator is not None else model
        kept, drawn = sample_rationales(source, tokenizer, task, problems, cfg, seed=cfg.seed + round_)
        solved = {row["question"] for row in kept}
        rationalized = 0
        if cfg.rationalize:
            failed = [p for p in problems if p.question not in solved]
            if failed:
                extra, more = sample_rationales(source, tokenizer, task, failed, cfg, seed=cfg.seed + 7 * round_,
                                                hinted=True)
                kept += extra
                drawn += more
                rationalized = len(extra)
        sample_seconds = time.monotonic() - start
        record = {"round": round_, "problems": len(problems), "samples": drawn, "kept": len(kept),
                  "solved": len(solved), "rationalized": rationalized,
                  "yield": len(kept) / drawn if drawn else 0.0, "sample_seconds": sample_seconds}
        if out:
            write_jsonl_atomic(out / f"round{round_}_data.jsonl",
                               [{"prompt": build_prompt(r["question"], trigger=cfg.train_trigger),
                                 "completion": r["completion"]} for r in kept])
        if kept:
            rows = [{"prompt": build_prompt(r["question"], trigger=cfg.train_trigger, tokenizer=tokenizer.hf),
                     "completion": r["completion"]} for r in kept]
            student = copy.deepcopy(model if cfg.continue_training else base)
            examples = tokenize_examples(tokenizer, rows, cfg.max_seq_len)
            train_supervised(student, tokenizer, examples, cfg, progress=progress)
            model = student
        result = evaluate_problems(model, tokenizer, task, held_out, trigger=cfg.train_trigger, params=greedy)
        record.update(accuracy=result["accuracy"], format_rate=result["format_rate"],
                      mean_think_tokens=result["mean_think_tokens"],
                      seconds=time.monotonic() - start)
        records.append(record)
        if out:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if log:
            log(record)
    return model, records
