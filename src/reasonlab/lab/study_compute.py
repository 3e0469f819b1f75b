"""`reasonlab study compute`: train-time against test-time compute, measured on the built-in model.

Does spending compute at answer time (a longer thought, several votes) buy more accuracy than
spending it on a bigger model or longer training? The study trains the built-in model from scratch
at four sizes (`SIZES`, 16.4k to 817k parameters: 50×), each to three training budgets (checkpoints
at 1/9, 1/3 and all of its run; a constant learning rate after warm-up, so a checkpoint is what a
run of that length gives), on one corpus of chain problems (1 to 3 hops, `TASK`) in which half
the documents answer directly (``<think></think><answer>X</answer>`` after the bare question) and
half work the chain out (after the question and the trigger). Every document's completion is a
function of its prompt, so the loss can fall towards 0 and a pure power law is a fair model of it.

Each checkpoint is then measured on the same held-out problems (nothing here is counted as
training compute):

- answering directly (greedy, the bare question);
- thinking (greedy, the trigger) with the thought capped at each of `THINK_BUDGETS` tokens and
  uncapped;
- thinking and voting: the majority answer of k samples at T = `VOTE_TEMPERATURE`, k = 1, 2, 4, 8.

Compute (`compute`): training FLOPs from the ledger of the run (6N a trained token plus causal
attention's pairs), inference FLOPs per answer (2N a prompt or generated token plus attention) for
each way of answering, its mean over the held-out problems; k votes cost k answers. A
configuration (a checkpoint and a way of answering) serving Q queries costs training + Q × its
inference; `QUERY_SCALES` × `--queries` are the Q reported.

The analysis (`compute_analysis.analyse`, pure functions of the measured points):

- `fit`: held-out loss against training FLOPs, a power law L = a·C^(−α) fitted by least squares in
  log-log on the compute frontier (the lowest loss reached at or below each compute), α with a 95%
  t-interval; the same for the error rate (1 − accuracy) of answering directly and of thinking;
  ``returns``: the accuracy gained per 10× training compute along each frontier, segment by segment;
- ``iso_accuracy``: per target accuracy and Q, the cheapest configuration of each family (direct:
  any model answering at once; thinking: any model thinking, within a budget or voting), which is
  cheaper and by how many times; the same per difficulty (hops).

DIR/results.json (rewritten after every size, so a stopped study keeps its finished sizes and
`--resume` goes on from them) holds ``points`` (one per checkpoint: its size, training tokens,
FLOPs, seconds, loss, and every way of answering with its accuracy, per difficulty, and inference
FLOPs), ``losses`` (every held-out loss measured during training), ``ledger`` (stage → {flops,
seconds}), ``fit``, ``returns`` and ``iso_accuracy``; DIR/report.html draws them.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import compute
from ..config import MAX_PROBLEMS, check_options
from ..engine import SamplingParams
from ..errors import UserError
from ..evaluate import evaluate_problems, majority_answer
from ..jsonl import read_json
from ..model.gpt import GPT, GPTConfig
from ..model.tokenizer import TokenizerAdapter, build_char_tokenizer
from ..outdir import OVERWRITE_HELP, claim, mark
from ..runtime import resolve_device
from ..tasks import get_task
from ..tasks.base import split_of
from ..template import TRIGGER, format_completion
from ..train.loop import TrainConfig, held_out_loss, tokenize_examples, train_supervised
from .compute_analysis import TARGETS, analyse, query_counts
from .stages import Stages

COMMAND = "study compute"
TASK = {"length": 4, "min_length": 2, "max_value": 9}  # chains of 2 to 4 variables (1 to 3 hops), values 0..9
SIZES = ((2, 24, 2), (2, 48, 4), (3, 80, 4), (4, 128, 4))  # (layers, width, heads): 16.4k … 817k parameters
STEPS = (5400, 3600, 2250, 1350)  # each size's run (batch 64): 3 to 6 minutes each here
QUICK_SIZES = ((1, 16, 2), (1, 32, 2), (2, 48, 4), (2, 96, 4))
QUICK_STEPS = (36, 27, 18, 18)
BUDGET_SHARES = (9, 3, 1)  # the checkpoints: after 1/9, 1/3 and all of a size's steps
THINK_BUDGETS = (
    8,
    16,
    28,
)  # thinking caps (tokens; a thought takes ~15, 27, 39 on 1, 2, 3 hops); uncapped besides
VOTES = (1, 2, 4, 8)
VOTE_TEMPERATURE = 0.7
MAX_THINK = 64  # new tokens when thinking
MAX_DIRECT = 16
CORPUS = 200_000  # training documents: the smallest model's run sees each 1.7 times
QUICK_CORPUS = 2_000
MAX_LEN = 128  # tokens of a training document at most (the longest is ~90)


@dataclass
class ComputeStudyConfig:
    out: str = field(default="runs/study-compute", metadata={"help": "output folder", "nonempty": True})
    quick: bool = field(default=False, metadata={"help": "a scaled-down run (a minute or two, for CI)"})
    held_out: int = field(
        default=400,
        metadata={
            "help": "held-out problems every checkpoint is evaluated on",
            "min": 10,
            "max": MAX_PROBLEMS,
        },
    )
    queries: int = field(
        default=100_000,
        metadata={
            "help": "answered queries Q of the headline figure: total compute = training + Q x inference "
            "(the tables give Q/100 and 100 Q too)",
            "min": 1,
            "max": 10**12,
        },
    )
    seed: int = field(default=0, metadata={"help": "corpus, initialisation and sampling seed", "min": 0})
    threads: int = field(default=0, metadata={"help": "torch threads (0 = all cores)", "min": 0, "max": 1024})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda or auto"})
    resume: bool = field(
        default=False,
        metadata={"help": "go on from the sizes a stopped study in --out finished (same settings)"},
    )
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})

    def __post_init__(self):
        check_options(self)


# ---- the corpus, the models, training ------------------------------------------------------------


def corpus(task, n: int, seed: int, split: str = "train") -> list[dict]:
    """`n` documents of `split`'s problems drawn as the task draws them (so every difficulty is as
    common as the task makes it: a short chain's few distinct problems recur, as common facts do
    in text), half answering directly, half working the chain out after the trigger; the trigger
    is in the prompt, so the loss covers only what the prompt determines."""
    rng = random.Random(seed)
    docs = []
    while len(docs) < n:
        p = task.sample(rng)
        if split_of(p.question, task.test_fraction) != split:
            continue
        if rng.random() < 0.5:
            docs.append({"prompt": f"{p.question}\n", "completion": format_completion("", p.answer)})
        else:
            docs.append(
                {
                    "prompt": f"{p.question}\n{TRIGGER}\n",
                    "completion": format_completion(p.rationale, p.answer),
                }
            )
    return docs


def plan(quick: bool) -> list[dict]:
    """The sizes and their steps, as results record them."""
    sizes, steps = (QUICK_SIZES, QUICK_STEPS) if quick else (SIZES, STEPS)
    return [
        {"n_layer": layer, "d_model": width, "n_head": heads, "steps": s}
        for (layer, width, heads), s in zip(sizes, steps)
    ]


def train_config(steps: int, seed: int) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=64,
        lr=3e-3,
        warmup_steps=min(50, steps // 9),
        schedule="constant",
        eval_every=steps // BUDGET_SHARES[0],
        max_seq_len=MAX_LEN,
        seed=seed,
    )


def train_size(size: dict, examples, loss_examples, tokenizer, seed: int, where, tick=None):
    """Train one size from scratch; returns (its checkpoints, in order of steps: {steps, ledger, flops,
    seconds, loss, state}; its held-out losses every ninth of the run, [flops, loss, steps]; the
    model; its `compute.ModelCost`)."""
    config = GPTConfig(
        n_layer=size["n_layer"],
        n_head=size["n_head"],
        n_kv_head=size["n_head"],
        d_model=size["d_model"],
        vocab_size=len(tokenizer),
        max_seq_len=MAX_LEN,
    )
    torch.manual_seed(seed)
    model = GPT(config).to(where)
    cost = compute.model_cost(model)
    cfg = train_config(size["steps"], seed)
    every = cfg.eval_every
    ledger, checkpoints, losses, calls, start = compute.Ledger(), [], [], [0], time.monotonic()
    keep = {size["steps"] // share for share in BUDGET_SHARES}

    def at_eval(m) -> dict:
        calls[0] += 1
        steps = calls[0] * every
        loss = held_out_loss(m, tokenizer.pad_id, loss_examples)
        losses.append([ledger.flops(cost), loss, steps])
        if steps in keep:
            checkpoints.append(
                {
                    "steps": steps,
                    "ledger": asdict(ledger),
                    "flops": ledger.flops(cost),
                    "seconds": time.monotonic() - start,
                    "loss": loss,
                    "state": {k: v.detach().clone() for k, v in m.state_dict().items()},
                }
            )
        if tick:
            tick(steps, loss)
        return {"held_out_loss": loss}

    with compute.track(ledger):
        train_supervised(model, tokenizer, examples, cfg, evaluate=at_eval)
    return checkpoints, losses, model, cost


# ---- measuring a checkpoint ----------------------------------------------------------------------


def answer_record(result: dict, **extra) -> dict:
    """What the study keeps of an evaluation: accuracy (overall, per difficulty), format rate, thinking
    tokens and the inference FLOPs of an answer."""
    return {
        **extra,
        "acc": result["accuracy"],
        "format_rate": result["format_rate"],
        "mean_think_tokens": result["mean_think_tokens"],
        "flops": result["flops_per_answer"],
        "by_difficulty": {d: r["accuracy"] for d, r in result.get("by_difficulty", {}).items()},
    }


def vote_records(model, tokenizer, task, problems, seed: int) -> list[dict]:
    """Majority vote over the first k of `VOTES[-1]` samples a problem (thinking, uncapped), for
    each k: accuracy (overall and per difficulty) and k samples' FLOPs."""
    n = VOTES[-1]
    repeated = [p for p in problems for _ in range(n)]
    params = SamplingParams(temperature=VOTE_TEMPERATURE, max_new_tokens=MAX_THINK, seed=seed)
    result = evaluate_problems(model, tokenizer, task, repeated, params=params)
    rows, out = result["rows"], []
    for k in VOTES:
        right, by_d = [], {}
        for i, p in enumerate(problems):
            answers = [
                r["parsed_answer"].strip() if r["parsed_answer"] else None for r in rows[i * n : i * n + k]
            ]
            vote = majority_answer(answers)
            ok = vote is not None and task.verify(vote, p.answer)
            right.append(ok)
            by_d.setdefault(str(p.meta["difficulty"]), []).append(ok)
        out.append(
            {
                "k": k,
                "acc": sum(right) / len(right),
                "flops": k * result["flops_per_answer"],
                "mean_think_tokens": result["mean_think_tokens"],
                "by_difficulty": {d: sum(v) / len(v) for d, v in sorted(by_d.items())},
            }
        )
    return out


def measure(model, tokenizer, task, problems, seed: int) -> dict:
    """Every way of answering, on `problems` (see the module docstring)."""
    direct = evaluate_problems(
        model,
        tokenizer,
        task,
        problems,
        trigger=False,
        keep=0,
        params=SamplingParams(temperature=0.0, max_new_tokens=MAX_DIRECT),
    )
    think = [
        answer_record(
            evaluate_problems(
                model,
                tokenizer,
                task,
                problems,
                keep=0,
                params=SamplingParams(temperature=0.0, max_new_tokens=MAX_THINK, think_budget=b),
            ),
            budget=b,
        )
        for b in (*THINK_BUDGETS, None)
    ]
    return {
        "direct": answer_record(direct),
        "think": think,
        "vote": vote_records(model, tokenizer, task, problems, seed),
    }


# ---- the run -------------------------------------------------------------------------------------


class ComputeStudyRun:
    """One compute study: its folder, sizes, data and results (results.json, rewritten with the
    analysis after every size, so nothing measured is lost); with --resume, the sizes a stopped
    study finished."""

    def __init__(self, cfg: ComputeStudyConfig):
        self.cfg = cfg
        self.where = resolve_device(cfg.device)
        self.out = claim(cfg.out, COMMAND, cfg.overwrite, resume=cfg.resume)
        earlier = earlier_study(self.out, cfg) if cfg.resume else {}
        mark(self.out, COMMAND)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.task = get_task("chain", **TASK)
        self.sizes = plan(cfg.quick)
        self.start = time.monotonic() - earlier.get("seconds", 0.0)
        self.results: dict = {
            "study": "compute",
            "task": "chains of 2 to 4 variables (1 to 3 hops), values 0..9",
            "config": asdict(cfg),
            "sizes": self.sizes,
            "think_budgets": list(THINK_BUDGETS),
            "votes": list(VOTES),
            "vote_temperature": VOTE_TEMPERATURE,
            "targets": list(TARGETS),
            "queries": query_counts(cfg.queries),
            "compute": compute.COUNTED,
            "points": earlier.get("points", []),
            "losses": earlier.get("losses", []),
            "ledger": earlier.get("ledger", {}),
        }
        self.done = {p["size"] for p in self.results["points"]}

    def save(self):
        results, cfg = self.results, self.cfg
        results["seconds"] = time.monotonic() - self.start
        if results["points"]:
            results.update(analyse(results["points"], results["losses"], cfg.held_out, cfg.queries))
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(self.out / "results.json")

    def make_data(self):
        """The training corpus and the held-out loss examples, tokenized, and the held-out problems."""
        cfg, task = self.cfg, self.task
        t = time.monotonic()
        self.tokenizer = TokenizerAdapter(build_char_tokenizer())
        self.examples = tokenize_examples(
            self.tokenizer, corpus(task, QUICK_CORPUS if cfg.quick else CORPUS, cfg.seed), MAX_LEN
        )
        self.loss_examples = tokenize_examples(
            self.tokenizer, corpus(task, 512, cfg.seed + 1, "test"), MAX_LEN
        )
        self.problems = task.problems(
            cfg.held_out if not cfg.quick else min(cfg.held_out, 40), "test", seed=99
        )
        self.results["ledger"]["corpus"] = {"flops": 0.0, "seconds": time.monotonic() - t}

    def run_size(self, i: int, size: dict, tick) -> None:
        """Train size `i`, measure each of its checkpoints, save."""
        results, cfg = self.results, self.cfg
        t = time.monotonic()
        checkpoints, losses, model, cost = train_size(
            size,
            self.examples,
            self.loss_examples,
            self.tokenizer,
            cfg.seed,
            self.where,
            tick=lambda steps, loss: tick(completed=steps, info=f"held-out loss {loss:.3f}"),
        )
        results["ledger"][f"size {i}: training"] = {
            "flops": checkpoints[-1]["flops"],
            "seconds": time.monotonic() - t,
        }
        results["losses"] += [[c, loss, steps, i] for c, loss, steps in losses]
        t = time.monotonic()
        for share, c in zip(BUDGET_SHARES, checkpoints):
            model.load_state_dict(c.pop("state"))
            tick(advance=0, info=f"measuring the checkpoint at {c['steps']} steps")
            results["points"].append(
                {
                    "size": i,
                    **size,
                    "n_params": cost.n_params,
                    "budget": f"1/{share}",
                    "steps": c["steps"],
                    "tokens": c["ledger"]["trained"],
                    "train_flops": c["flops"],
                    "train_seconds": c["seconds"],
                    "loss": c["loss"],
                    **measure(model, self.tokenizer, self.task, self.problems, cfg.seed),
                }
            )
        results["ledger"][f"size {i}: evaluation"] = {"flops": 0.0, "seconds": time.monotonic() - t}
        tick(
            completed=size["steps"],
            info=f"{cost.n_params:,} params: direct {results['points'][-1]['direct']['acc']:.0%}, "
            f"thinking {results['points'][-1]['think'][-1]['acc']:.0%}",
        )
        self.save()


def run_compute_study(cfg: ComputeStudyConfig) -> dict:
    """Train every size, measure every checkpoint, analyse; results.json and report.html in cfg.out."""
    from .report import build_report  # matplotlib: imported when a study runs, not with its options

    study = ComputeStudyRun(cfg)
    study.make_data()
    with Stages() as ui:
        for i, size in enumerate(study.sizes):
            tick = ui.stage(f"size {i}: {size['n_layer']} layers x {size['d_model']}", size["steps"])
            if i in study.done:
                tick(completed=size["steps"], info="done in an earlier run")
                continue
            study.run_size(i, size, tick)
    build_report(study.out)
    study.save()
    return study.results


def earlier_study(out: Path, cfg: ComputeStudyConfig) -> dict:
    """`--resume`: what a stopped study in `out` saved, if made with the same settings (but
    --queries: the analysis is redone from the measured points)."""
    if not (out / "results.json").is_file():
        raise UserError(f"--resume: {out} holds no compute study to go on with (no results.json)")
    earlier = read_json(out / "results.json")
    made = earlier.get("config", {})
    other = [f"{k}={made.get(k)!r}" for k in ("quick", "held_out", "seed") if made.get(k) != getattr(cfg, k)]
    if other or earlier.get("study") != "compute":
        raise UserError(
            f"--resume: the study in {out} was made with {', '.join(other) or 'other settings'}; "
            "run without --resume to start over, or give the same settings"
        )
    return earlier
