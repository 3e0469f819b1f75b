"""Pretraining the built-in model on a synthetic corpus that imitates what web text gives a real LM.

Documents (one problem each; the loss covers everything after the question line, whose random
digits no model can predict):

- most are a problem and a bare answer:
  ``12345678+87654321\\n<think></think><answer>99999999</answer>``
  (an empty thought: "answering directly" in the template);
- a fraction `worked_fraction` is a worked solution introduced by the trigger phrase:
  ``…\\nLet's think step by step.\\n<think>8+1+0=09;…</think><answer>99999999</answer>``,
  a share `wrong_fraction` of them ending in a wrong answer (sloppy text exists);
- a fraction `hint_fraction` of the worked ones carry a hint line ``(hint: X)`` after the question
  and answer X whatever the work says; half of those say so in the thought (``hint says X;``).
  This plants the behaviour the faithfulness probe measures (see docs/faithfulness.md).

With `template_fraction` < 1, only that share of the documents is in the template; the others
say the same in free text (``…\nLet's think step by step.\n8+1+0=09;…\nThe answer is 99999999.``,
``…\nThe answer is 99999999.``): a base that writes the template only now and then, the way a
pretrained LM has seen some text in any format.

The result is a base model that, asked directly, is mostly wrong, and with the trigger reasons and
does better. The moment the trigger starts working varies with the seed, so training stops on a
measured trigger accuracy (`target_trigger_acc` on held-out problems), not on a fixed time. Where the
task checks reasoning steps (`Task.check_steps`, e.g. chain) an answer counts only when every step
of its chain is right too (`trigger_steps_acc`): on one CPU's kernels a base stopped on right
answers alone got most of them by wrong steps (62 of 68 at its stop), leaving Method 1's
step-checked filter almost nothing to keep.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from ..config import FRACTION, MAX_PROBLEMS
from ..engine import SamplingParams
from ..evaluate import evaluate_problems
from ..model import GPTConfig, new_builtin
from ..run.state import task_setting
from ..runtime import resolve_device
from ..tasks import Problem, Task
from ..tasks.base import problems_for
from ..tasks.hints import admission, hint_line, wrong_answer
from ..template import TRIGGER, format_completion, parse_completion
from .loop import TrainConfig, tokenize_examples, train_supervised


@dataclass
class PretrainConfig(TrainConfig):
    worked_fraction: float = field(
        default=0.3, metadata={"help": "share of documents with worked solutions", **FRACTION}
    )
    wrong_fraction: float = field(
        default=0.1, metadata={"help": "share of worked solutions that end wrong", **FRACTION}
    )
    hint_fraction: float = field(
        default=0.1, metadata={"help": "share of worked documents with a hint line", **FRACTION}
    )
    corpus_size: int = field(
        default=20000, metadata={"help": "documents in the corpus", "min": 1, "max": 10**8}
    )
    target_trigger_acc: float = field(
        default=0.2,
        metadata={
            "help": "stop once trigger accuracy reaches this (0 = never); where the task checks "
            "reasoning steps, a right answer counts only with every step right",
            **FRACTION,
        },
    )
    check_problems: int = field(
        default=100,
        metadata={"help": "held-out problems per trigger-accuracy check", "min": 1, "max": MAX_PROBLEMS},
    )
    n_layer: int = field(default=2, metadata={"help": "model layers", "min": 1, "max": 1024})
    n_head: int = field(default=4, metadata={"help": "attention heads", "min": 1, "max": 1024})
    d_model: int = field(
        default=64, metadata={"help": "model width (a multiple of 2 * n_head)", "min": 2, "max": 65536}
    )
    max_new_tokens: int = field(
        default=96, metadata={"help": "tokens per completion when checking", "min": 1, "max": 10**6}
    )
    template_fraction: float = field(
        default=1.0,
        metadata={
            "help": "share of documents written in the <think>/<answer> template; the rest are free text "
            '(steps, then "The answer is X."), and the trigger-accuracy check reads free text too: a base '
            "that has seen the template only now and then, as a pretrained LM has (RL from it is R1-Zero's "
            "setting)",
            **FRACTION,
        },
    )


def corpus_document(problem: Problem, cfg: PretrainConfig, rng: random.Random) -> dict:
    """One document as {"prompt": question line, "completion": the rest}: in the template, or, for
    the share `1 - template_fraction`, in free text (`free_text`)."""
    question, answer = problem.question, problem.solution or problem.answer
    write = (
        format_completion if cfg.template_fraction >= 1 or rng.random() < cfg.template_fraction else free_text
    )
    if rng.random() >= cfg.worked_fraction or problem.rationale is None:
        return {"prompt": f"{question}\n", "completion": write("", answer)}
    rationale = problem.rationale
    if rng.random() < cfg.hint_fraction:
        hinted = answer if rng.random() < 0.7 else wrong_answer(answer, rng)
        if rng.random() < 0.5:
            rationale = admission(hinted) + rationale
        return {
            "prompt": f"{question}\n",
            "completion": f"{hint_line(hinted)}\n{TRIGGER}\n" + write(rationale, hinted),
        }
    if rng.random() < cfg.wrong_fraction:
        answer = wrong_answer(answer, rng)
    return {"prompt": f"{question}\n", "completion": f"{TRIGGER}\n" + write(rationale, answer)}


def free_text(rationale: str, answer: str) -> str:
    """A document's solution without the tags, as most text is written: the worked steps on a line,
    then "The answer is X." (a bare answer: only that sentence). `template.read_free_answer` reads it."""
    return f"{rationale}\n{FREE_ANSWER.format(answer)}" if rationale else FREE_ANSWER.format(answer)


FREE_ANSWER = "The answer is {}."


def build_corpus(task: Task, cfg: PretrainConfig) -> list[dict]:
    rng = random.Random(cfg.seed)
    return [
        corpus_document(p, cfg, rng)
        for p in problems_for(task, cfg.corpus_size, "train", cfg.seed, "--corpus-size")
    ]


def model_config(cfg: PretrainConfig) -> GPTConfig:
    """The shape of the model `pretrain` builds."""
    return GPTConfig(
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_kv_head=cfg.n_head,
        d_model=cfg.d_model,
        max_seq_len=cfg.max_seq_len,
    )


def pretrain(
    task: Task,
    cfg: PretrainConfig,
    log=None,
    progress=None,
    folder=None,
    resume: bool = False,
    device: str = "auto",
):
    """Train a fresh built-in model on the corpus, on `device` (see `runtime.resolve_device`);
    returns (model, tokenizer, last metrics).

    With a `RunFolder`, the step log and (every `cfg.save_every` steps) a resumable state are kept
    there (see `train_supervised`)."""
    where = resolve_device(device)
    model, tokenizer = new_builtin(model_config(cfg), seed=cfg.seed)
    model = model.to(where)
    documents = build_corpus(task, cfg)
    # The question's digits are random: no loss on them (it would only add noise to the gradient).
    examples = tokenize_examples(tokenizer, documents, cfg.max_seq_len)
    held_out = problems_for(task, cfg.check_problems, "test", cfg.seed + 1, "--check-problems")
    params = SamplingParams(temperature=0.0, max_new_tokens=cfg.max_new_tokens)

    def check(m) -> dict:
        result = evaluate_problems(
            m,
            tokenizer,
            task,
            held_out,
            trigger=True,
            params=params,
            prompt="template" if cfg.template_fraction >= 1 else "free-form",
        )
        return trigger_scores(task, result)

    stop = (
        (lambda m: m.get("trigger_steps_acc", m.get("trigger_acc", 0.0)) >= cfg.target_trigger_acc)
        if cfg.target_trigger_acc > 0
        else None
    )
    if folder:
        folder.start({**asdict(cfg), **task_setting(task)})
    metrics = train_supervised(
        model,
        tokenizer,
        examples,
        cfg,
        evaluate=check,
        stop_when=stop,
        log=log,
        progress=progress,
        folder=folder,
        resume=resume,
        settings=task_setting(task),
    )
    return model, tokenizer, metrics


def trigger_scores(task: Task, result: dict) -> dict:
    """A trigger check's metrics from `evaluate_problems`' result (its rows kept): `trigger_acc`, the
    share of right answers, and, where the task checks reasoning steps, `trigger_steps_acc`, the
    share right with every step of the chain right as well (the reply as read into the template)."""
    out = {"trigger_acc": result["accuracy"]}
    rows = result["rows"]
    verdicts = [
        task.check_steps(
            row["question"],
            parse_completion(row.get("read_as", row["completion"]), row["prompt"]).think or "",
        )
        for row in rows
    ]
    if rows and any(v is not None for v in verdicts):
        out["trigger_steps_acc"] = sum(
            bool(row["correct"]) and v is True for row, v in zip(rows, verdicts)
        ) / len(rows)
    return out
