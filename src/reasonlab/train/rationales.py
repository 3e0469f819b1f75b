"""Method 1: self-generated rationales (STaR, Zelikman et al. 2022), kept by a verifier.

Each round:

1. sample `samples` (k) chains of thought per training problem from a generator prompted to reason
   (the model itself by default, a stronger local checkpoint: a teacher, or an OpenAI-compatible
   endpoint: `remote.RemoteGenerator`), in the template's prompt of `style`; or, with `free_form`,
   prompted to reason step by step in free text (no tags asked for: an instruct model never shown
   the template writes none), each sample's answer read from its text and the sample rewritten into
   the template (`template.free_form_completion`);
2. keep the completions whose format holds and whose answer the task's verifier accepts, or, for
   tasks without a gold answer, that an LLM judge scores at least `judge_threshold` (0-10) against
   the criteria in `judge_rubric`; where the task can check reasoning steps (`Task.check_steps`,
   e.g. chain), a right answer reached by wrong steps is dropped too (`check_steps`, on by
   default: in the demo's first round most right answers came from wrong steps,
   benchmarks/README.md);
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
import functools
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import compute
from ..config import MAX_PROBLEMS
from ..engine import SamplingParams, generate
from ..evaluate import evaluate_problems
from ..jsonl import made_by, write_jsonl_atomic
from ..outdir import RunFolder
from ..remote import RemoteGenerator
from ..rewards import check_batch
from ..run.state import (
    check_resume,
    discard_training_state,
    load_training_state,
    nothing_to_resume,
    save_training_state,
    task_setting,
)
from ..tasks import Task
from ..tasks.base import problems_for
from ..tasks.hints import with_hint
from ..template import (
    PROMPT_STYLES,
    THINK_OPEN,
    build_prompt,
    free_form_prompt,
    parse_completion,
    prompt_opens_think,
    read_replies,
)
from .loop import TrainConfig, fit_to_model, tokenize_examples, train_supervised


@dataclass
class RationalesConfig(TrainConfig):
    rounds: int = field(
        default=3, metadata={"help": "sample -> filter -> fine-tune rounds", "min": 1, "max": 1000}
    )
    problems: int = field(
        default=2000, metadata={"help": "training problems sampled per round", "min": 1, "max": MAX_PROBLEMS}
    )
    samples: int = field(
        default=4, metadata={"help": "k: chains of thought per problem", "min": 1, "max": 1024}
    )
    temperature: float = field(
        default=0.6, metadata={"help": "sampling temperature for rationales", "min": 0}
    )
    max_new_tokens: int = field(
        default=160, metadata={"help": "tokens per rationale at most", "min": 1, "max": 10**6}
    )
    rationalize: bool = field(
        default=False, metadata={"help": "retry failed problems with the answer as a hint"}
    )
    continue_training: bool = field(
        default=False, metadata={"help": "fine-tune the last round's model instead of the base"}
    )
    train_trigger: bool = field(
        default=True, metadata={"help": "keep the trigger phrase in fine-tuning prompts"}
    )
    eval_problems: int = field(
        default=200, metadata={"help": "held-out problems per round", "min": 1, "max": MAX_PROBLEMS}
    )
    judge_rubric: str = field(
        default="", metadata={"help": "criteria an LLM judge scores each sample against (no gold needed)"}
    )
    judge_threshold: float = field(
        default=7.0,
        metadata={"help": "keep samples the judge scores at least this (0-10)", "min": 0, "max": 10},
    )
    check_steps: bool = field(
        default=True,
        metadata={
            "help": "also require every reasoning step to check out, where the task can tell (chain): "
            "drops lucky guesses"
        },
    )
    style: str = field(
        default="plain",
        metadata={
            "help": "prompt style of sampling, fine-tuning and evaluation: "
            "plain, r1 or chat (instruct models)",
            "choices": PROMPT_STYLES,
        },
    )
    free_form: bool = field(
        default=False,
        metadata={
            "help": 'sample free text (step by step, no tags), read its answer ("the answer is ...", '
            "else the last number), keep verified ones rewritten into the template; evaluation stays strict"
        },
    )


def sample_texts(source, tokenizer, prompts: list[str], params: SamplingParams) -> list[str]:
    """Completions from a local model or an OpenAI-compatible endpoint (`RemoteGenerator`)."""
    if isinstance(source, RemoteGenerator):
        return source.complete(
            prompts, max_tokens=params.max_new_tokens, temperature=params.temperature, seed=params.seed
        )
    return generate(source, tokenizer, prompts, params).texts


class Judge:
    """An LLM that scores a response 0-10 against a rubric; unparseable scores count as 0."""

    def __init__(self, source, tokenizer, rubric: str, threshold: float = 7.0):
        if not rubric.strip():
            raise ValueError("a judge needs a rubric (the criteria to score against)")
        self.source, self.tokenizer, self.rubric, self.threshold = source, tokenizer, rubric, threshold

    def prompt(self, question: str, response: str) -> str:
        return f"{self.rubric}\nQuestion: {question}\nResponse: {response}\nScore (0-10):"

    def scores(self, questions: list[str], responses: list[str]) -> list[float]:
        texts = sample_texts(
            self.source,
            self.tokenizer,
            [self.prompt(q, r) for q, r in zip(questions, responses)],
            SamplingParams(temperature=0.0, max_new_tokens=4),
        )
        out = []
        for text in texts:
            m = re.match(r"\s*(\d{1,2})", text)
            out.append(float(m.group(1)) if m and int(m.group(1)) <= 10 else 0.0)
        return out

    def accepts(self, questions: list[str], responses: list[str]) -> list[bool]:
        return [s >= self.threshold for s in self.scores(questions, responses)]


def judge_agreement(judge: Judge, task: Task, problems, texts: list[str]) -> dict:
    """How far `judge` agrees with `task`'s verifier on `texts`, one sample per problem (free
    text or template): the judge's verdict on each text as it is (`Judge.accepts`), against the
    verifier's on the answer read from it as Method 1's free-form mode reads one (a text whose
    answer cannot be read counts as wrong). Returns the counts `samples`, `judge_kept`,
    `verifier_correct` and `both` (kept and correct), and the rates `precision` (of the kept, the
    share correct; None when the judge kept none), `recall` (of the correct, the share kept; None
    when none is correct) and `agreement` (the share where both verdicts are the same; None with
    no samples)."""
    if len(problems) != len(texts):
        raise ValueError(f"need one text per problem, got {len(texts)} texts for {len(problems)} problems")
    kept = judge.accepts([p.question for p in problems], texts)
    completions, prompts = read_replies(texts, [None] * len(texts), free=True)
    correct = [c for _, c in check_batch(completions, [p.answer for p in problems], task, prompts)]
    n, n_kept, n_correct = len(texts), sum(kept), sum(correct)
    both = sum(k and c for k, c in zip(kept, correct))
    return {
        "samples": n,
        "judge_kept": n_kept,
        "verifier_correct": n_correct,
        "both": both,
        "precision": both / n_kept if n_kept else None,
        "recall": both / n_correct if n_correct else None,
        "agreement": sum(k == c for k, c in zip(kept, correct)) / n if n else None,
    }


def sampling_fingerprint(source, prompts: list[str], params: SamplingParams) -> str:
    """What decides a round's samples: the generator (an endpoint's model name, wherever it is
    served from, or a local model's weights), the prompts and the sampling settings. A sample
    cache is reused only when it matches."""
    h = hashlib.sha256(json.dumps([prompts, asdict(params)], sort_keys=True).encode())
    if isinstance(source, RemoteGenerator):
        h.update(f"endpoint|{source.model}".encode())
    else:
        for name, tensor in source.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def read_sample_cache(path, fingerprint: str) -> dict[int, tuple[list[str], int, int]]:
    """Chunks already sampled: {first prompt index: (texts, the tokens sampling them put through the
    model, their attention's query-key pairs (0 in a cache written before pairs were counted))},
    from a cache whose first line names the same `sampling_fingerprint` ({} otherwise: another
    generator, prompts or settings made it). A line torn by a kill is ignored."""
    done, lines = {}, Path(path).read_text().splitlines() if Path(path).is_file() else []
    try:
        if not lines or json.loads(lines[0]).get("fingerprint") != fingerprint:
            return {}
    except (json.JSONDecodeError, AttributeError):
        return {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
            done[row["start"]] = (row["texts"], row.get("tokens", 0), row.get("pairs", 0))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def sample_rationales(
    generator,
    tokenizer,
    task: Task,
    problems,
    cfg: RationalesConfig,
    seed: int,
    hinted: bool = False,
    judge: Judge | None = None,
    cache=None,
    counts: dict | None = None,
) -> tuple[list[dict], int]:
    """Kept, deduplicated `{"question", "completion"}` pairs and the number of samples drawn.

    Kept means: the format holds (with `cfg.free_form`, that of the sample rewritten into the
    template), and the verifier accepts the answer (or, with `judge`, the judge
    accepts the response); with `cfg.check_steps`, the task's step check (`Task.check_steps`) must
    not reject the thought either: a right answer reached by wrong steps is counted in
    `counts["lucky"]` and dropped. With `hinted`, the generator sees the gold answer as a hint line; the
    pair keeps the plain question. With `cache` (a JSONL path), samples are appended as each chunk
    arrives and reused on a rerun, so an interrupted round loses nothing.
    """
    questions = [with_hint(p.question, p.solution or p.answer) if hinted else p.question for p in problems]
    prompts = [sampling_prompt(q, cfg, tokenizer) for q in questions for _ in range(cfg.samples)]
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed)
    chunks = SampleCache(cache, generator, prompts, params)
    kept, seen, drawn = [], set(), 0
    for i in range(0, len(prompts), CHUNK):
        texts = chunks.texts(
            i, functools.partial(sample_texts, generator, tokenizer, prompts[i : i + CHUNK], params)
        )
        chunk_problems = [problems[(i + j) // cfg.samples] for j in range(len(texts))]
        completions, read_prompts = as_template(texts, prompts[i : i + len(texts)], cfg, counts)
        parsed = [parse_completion(t, p) for t, p in zip(completions, read_prompts)]
        if judge is not None:
            verdicts = judge.accepts([p.question for p in chunk_problems], texts)
            ok = [x.format_ok and v for x, v in zip(parsed, verdicts)]
        else:
            answers = [p.answer for p in chunk_problems]
            ok = [c for _, c in check_batch(completions, answers, task, read_prompts)]
        for problem, x, good in zip(chunk_problems, parsed, ok):
            drawn += 1
            if not good or (hinted and "hint" in x.think):  # a rationale leaning on the hint teaches nothing
                continue
            if cfg.check_steps and task.check_steps(problem.question, x.think) is False:
                if counts is not None:  # a right answer reached by wrong steps: a lucky guess
                    counts["lucky"] = counts.get("lucky", 0) + 1
                continue
            completion = f"<think>{x.think}</think><answer>{x.answer}</answer>"
            if (problem.question, completion) not in seen:
                seen.add((problem.question, completion))
                kept.append({"question": problem.question, "completion": completion})
    return kept, drawn


CHUNK = 512  # prompts sampled at a time: what a cache line holds, and what a kill can lose


class SampleCache:
    """A round's samples kept as they arrive (`path`, JSONL: a first line naming the
    `sampling_fingerprint`, then one line a chunk), so an interrupted round loses nothing; none
    without a path. A cache made by another generator, prompts or settings is replaced."""

    def __init__(self, path, generator, prompts: list[str], params: SamplingParams):
        self.path, self.done = path, {}
        if path:
            fingerprint = sampling_fingerprint(generator, prompts, params)
            self.done = read_sample_cache(path, fingerprint)
            if not self.done:  # a new cache (an old one from other samples is replaced)
                Path(path).write_text(json.dumps({"fingerprint": fingerprint}) + "\n")

    def texts(self, start: int, sample) -> list[str]:
        """The chunk at prompt `start`: from the cache, its compute counted as this run's (it was
        spent on them), or `sample()`d now and appended."""
        texts, tokens, pairs = self.done.get(start, (None, 0, 0))
        if texts is not None:
            compute.count("sampled", tokens, pairs)
            return texts
        with compute.track() as chunk:
            texts = sample()
        if self.path:
            line = {"start": start, "texts": texts, "tokens": chunk.sampled, "pairs": chunk.sampled_pairs}
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")
        return texts


def sampling_prompt(question: str, cfg: RationalesConfig, tokenizer) -> str:
    """What the generator continues: the template's prompt of `cfg.style` (the trigger on), or with
    `cfg.free_form` the step-by-step prompt that asks for no tags."""
    if cfg.free_form:
        return free_form_prompt(question, cfg.style, tokenizer=tokenizer.hf)
    return build_prompt(question, cfg.style, trigger=True, tokenizer=tokenizer.hf)


def as_template(texts: list[str], prompts: list[str], cfg: RationalesConfig, counts: dict | None):
    """(completions, the prompts to parse them against): the samples as they are, or with
    `cfg.free_form` rewritten into the template ("" where no answer could be read, counted in
    `counts["unread"]`), complete in themselves (no prompt)."""
    completions, read_prompts = read_replies(texts, prompts, cfg.free_form)
    if cfg.free_form and counts is not None:
        counts["unread"] = counts.get("unread", 0) + completions.count("")
    return completions, read_prompts


def training_row(question: str, completion: str, cfg: RationalesConfig, tokenizer) -> dict:
    """A kept sample as fine-tuning data: the template's prompt of `cfg.style` (with the trigger
    when `train_trigger`) and the completion, less its ``<think>`` when the prompt opens one."""
    prompt = build_prompt(question, cfg.style, trigger=cfg.train_trigger, tokenizer=tokenizer.hf)
    if prompt_opens_think(prompt) and completion.startswith(THINK_OPEN):
        completion = completion[len(THINK_OPEN) :]
    return {"prompt": prompt, "completion": completion}


def run_rationales(
    base,
    tokenizer,
    task: Task,
    cfg: RationalesConfig,
    generator=None,
    out_dir=None,
    log=None,
    progress=None,
    judge: Judge | None = None,
    resume: bool = False,
    on_round=None,
):
    """Run `cfg.rounds` rounds; returns (final model, list of per-round records). Each record
    carries ``compute``: the tokens and FLOPs spent up to the end of its round (`spent_so_far`);
    `on_round(record, model)` is called after each round with the round's model.

    `generator`: a teacher model or a `RemoteGenerator` (default: the model being trained).
    `judge`: keep samples by the judge's verdict instead of the verifier (tasks without gold).
    With `out_dir`, each round's samples are cached as they arrive, the fine-tuning keeps a
    resumable state every `save_every` steps, and each finished round is saved: `resume=True`
    picks up where a killed run stopped (mid-sampling, mid-fine-tuning or between rounds). A
    `RunFolder` as `out_dir` brings its trackers (`report_to`): the round records go to them at
    step = round, each round's fine-tuning steps to those of its round{r}_train folder."""
    out = out_dir if isinstance(out_dir, RunFolder) else RunFolder(out_dir, "rationales") if out_dir else None
    fit_to_model(cfg, base)
    held_out = problems_for(task, cfg.eval_problems, "test", cfg.seed + 1, "--eval-problems")
    spent = {"sampling": compute.Ledger(), "training": compute.Ledger()}  # this run's compute, per part
    config = {**asdict(cfg), **task_setting(task)}  # what a resume must not change (`check_resume`)
    if resume and out and made_by(out.path) != "rationales":
        nothing_to_resume(out)
        resume = False
    model, records, first = _resumed(base, out, config, spent) if resume and out else (base, [], 1)
    if out:
        _start_log(out, config, records, first, resume)
    rounds = Rounds(base, tokenizer, task, cfg, generator, judge, out, progress, held_out, spent)
    try:
        for round_ in range(first, cfg.rounds + 1):
            model, record = rounds.run(model, round_, resume=resume and round_ == first)
            records.append(record)
            if out:  # the state first: a kill between the two loses a log line, never a round
                state = {"model": model.state_dict(), "records": records, "round": round_, "config": config}
                save_training_state(out.state, state)
                out.log(record, step=round_)
            if log:
                log(record)
            if on_round:
                on_round(record, model)
    finally:
        if out:
            out.close()  # the trackers: complete event files, on an error too
    return model, records


@dataclass
class Rounds:
    """What every round of a run uses; `run` runs one."""

    base: object  # the model each round fine-tunes afresh (unless `continue_training`)
    tokenizer: object
    task: Task
    cfg: RationalesConfig
    generator: object  # a teacher or an endpoint; None: the model of the round before
    judge: Judge | None
    out: RunFolder | None
    progress: object
    held_out: list
    spent: dict  # this run's compute, per part: {"sampling": Ledger, "training": Ledger}

    def run(self, model, round_: int, resume: bool):
        """Round `round_` from `model` (the last round's): sample, keep, fine-tune, evaluate.
        Returns (the round's model, its record); `resume`: its fine-tuning has a state to go on from."""
        cfg, start = self.cfg, time.monotonic()
        source = self.generator if self.generator is not None else model
        with compute.track(self.spent["sampling"]):
            kept, record = sample_round(source, self.tokenizer, self.task, cfg, round_, self.judge, self.out)
        record["sample_seconds"] = time.monotonic() - start
        rows = [training_row(r["question"], r["completion"], cfg, self.tokenizer) for r in kept]
        if self.out:
            write_jsonl_atomic(self.out.path / f"round{round_}_data.jsonl", rows)
        if kept:
            student = copy.deepcopy(model if cfg.continue_training else self.base)
            with compute.track(self.spent["training"]):
                fine_tune(
                    student, self.tokenizer, rows, self.task, cfg, self.progress, self.out, round_, resume
                )
            model = student
        result = evaluate_problems(
            model,
            self.tokenizer,
            self.task,
            self.held_out,
            trigger=cfg.train_trigger,
            style=cfg.style,
            params=SamplingParams(temperature=0.0, max_new_tokens=cfg.max_new_tokens),
        )
        record.update(
            accuracy=result["accuracy"],
            format_rate=result["format_rate"],
            mean_think_tokens=result["mean_think_tokens"],
            seconds=time.monotonic() - start,
            compute=spent_so_far(self.spent, source, self.base),
        )
        return model, record


def _resumed(base, out: RunFolder, config: dict, spent: dict):
    """(model, records, first round) where a run saved in `out` stopped (after `check_resume`), the
    finished rounds' compute restored into `spent`; a fresh start when nothing is saved."""
    state = load_training_state(out.state)
    if state is None:
        return base, [], 1
    check_resume(state.get("config"), config, out.state)
    model = copy.deepcopy(base)
    model.load_state_dict(state["model"])
    records = state["records"]
    for part, ledger in spent.items():  # the finished rounds' (a resumed round counts what it redoes)
        ledger.restore(records[-1].get("compute", {}).get(part, {}))
    return model, records, state["round"] + 1


def _start_log(out: RunFolder, config: dict, records: list[dict], first: int, resume: bool) -> None:
    """Mark the folder with the settings. The log holds this run's finished rounds (a kill can come
    between saving a round and logging it); a fresh run drops an earlier run's states (its rounds'
    and their fine-tunings'), so a later `resume` never takes them. Sample caches stay: each is
    reused only for the same generator, prompts and settings."""
    out.start(config)
    out.restart_logs(first - 1 or None)  # for the trackers: a fresh run drops an earlier run's events
    write_jsonl_atomic(out.metrics, records)
    if not resume:
        for folder in [out.state, *(p / "state" for p in out.path.glob("round*_train"))]:
            discard_training_state(folder)


def sample_round(source, tokenizer, task: Task, cfg: RationalesConfig, round_: int, judge, out):
    """Round `round_`'s kept samples, from its training problems (cached in `out` as they arrive),
    rationalized ones included (`cfg.rationalize`); and the start of its record."""
    problems = problems_for(task, cfg.problems, "train", cfg.seed + 1000 * round_, "--problems")
    cache = out.path / f"round{round_}_samples.jsonl" if out else None
    counts = {"lucky": 0, "unread": 0}
    kept, drawn = sample_rationales(
        source,
        tokenizer,
        task,
        problems,
        cfg,
        seed=cfg.seed + round_,
        judge=judge,
        cache=cache,
        counts=counts,
    )
    solved = {row["question"] for row in kept}
    rationalized = 0
    if cfg.rationalize and judge is None:  # rationalization needs a gold answer to hint
        failed = [p for p in problems if p.question not in solved]
        if failed:
            extra, more = sample_rationales(
                source, tokenizer, task, failed, cfg, seed=cfg.seed + 7 * round_, hinted=True, counts=counts
            )
            kept, drawn, rationalized = kept + extra, drawn + more, len(extra)
    return kept, {
        "round": round_,
        "problems": len(problems),
        "samples": drawn,
        "kept": len(kept),
        "solved": len(solved),
        "rationalized": rationalized,
        "lucky_dropped": counts["lucky"],
        **({"unread": counts["unread"]} if cfg.free_form else {}),
        "yield": len(kept) / drawn if drawn else 0.0,
    }


def fine_tune(student, tokenizer, rows, task: Task, cfg: RationalesConfig, progress, out, round_, resume):
    """Fine-tune `student` on the round's rows, its steps kept in `out`'s round{r}_train folder."""
    folder = RunFolder(out.path / f"round{round_}_train", "rationales", out.report_to) if out else None
    examples = tokenize_examples(tokenizer, rows, cfg.max_seq_len)
    train_supervised(
        student,
        tokenizer,
        examples,
        cfg,
        progress=progress,
        settings=task_setting(task),
        folder=folder,
        resume=resume,
    )


def spent_so_far(spent: dict, generator, model) -> dict:
    """The compute a run has spent up to now (`compute`): its sampling's tokens and attention at the
    generator's `compute.model_cost` (none counted for an endpoint, whose model is not here), its
    fine-tuning's at the trained model's; `flops` their sum."""
    gen = compute.ModelCost(0, 0) if isinstance(generator, RemoteGenerator) else compute.model_cost(generator)
    sampling, training = spent["sampling"].record(gen), spent["training"].record(compute.model_cost(model))
    return {"sampling": sampling, "training": training, "flops": sampling["flops"] + training["flops"]}
