"""`reasonlab study methods`: Method 1 against Method 2 from the same base, at equal compute, over seeds.

One base model is pretrained (the demo's: the built-in model on 4-variable chains, its corpus in
free text but for a share `TEMPLATE_FRACTION` written in the ``<think>/<answer>`` template, so the
base writes the template now and then, as a pretrained LM does). From it, for each seed:

- **method1**: Method 1 alone (the demo's three STaR rounds: free-text samples read, verified,
  rewritten into the template, fine-tuned). The wall time it takes, T, is the budget of the other two;
- **method2**: GRPO from the base (DeepSeek-R1-Zero: the template's prompt, the 2 + 1 reward, no
  warm start, T = 1.0), stopped after T seconds;
- **method1_then_2**: Method 1's first round, then GRPO from that model (the demo's), stopped when
  the two together have taken T.

Equal compute is equal wall time on one machine (each arm's periodic held-out evaluations
included). FLOPs are counted beside it (`compute`: 2N a sampled token, 6N a trained one, plus
attention; evaluations not counted): on a CPU, GRPO's small decoding batches use the FLOPs far less well than
Method 1's large fine-tuning batches, so equal FLOPs would give GRPO several times Method 1's time
(`GRPOConfig.max_flops` runs that comparison). Every model is evaluated on the same held-out problems:
greedy accuracy, format rate, thinking length, and pass@k for k = 1 … 64 from 64 samples a problem at
T = 0.7 (the base read as free text, as Method 1 reads its samples; trained models strictly). Seeds
change every method's sampling and data order, not the base or the held-out problems: the spread
across seeds is the methods' reliability. Settings are fixed here before any run, the same for
every seed.

DIR/results.json (rewritten after every seed, so nothing computed is lost) holds ``methods`` (per
method: ``acc``, ``format_rate``, ``flops``, ``seconds`` a list per seed, ``curve`` a list per seed
of [flops, accuracy, seconds] points), ``pass_at_k`` (per model: {k: rate}, the mean over seeds),
``r1_zero_format_curve`` ([step, format rate of the samples] of seed 0's GRPO-from-base run) and
``per_seed``; DIR/report.html draws them.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from . import compute
from .config import MAX_PROBLEMS, check_options
from .engine import SamplingParams
from .errors import NoFormatError, UserError
from .evaluate import evaluate_problems, k_samples, pass_curve
from .jsonl import read_json, read_log
from .model import load_model, save_checkpoint, train_record
from .outdir import OVERWRITE_HELP, RunFolder, claim, mark
from .rl import GRPOConfig, train_grpo
from .runtime import resolve_device
from .tasks import get_task
from .train.pretrain import FREE_ANSWER, PretrainConfig, pretrain
from .train.rationales import RationalesConfig, run_rationales

TEMPLATE_FRACTION = 0.15  # documents of the base's corpus in the template: ~15% of its samples at T = 1
PASS_KS = (1, 2, 4, 8, 16, 32, 64)
PASS_TEMPERATURE = 0.7  # Method 1's sampling temperature: what its generator's pass@k is measured at
ARMS = ("method1", "method2", "method1_then_2")
LABELS = {
    "base": "base",
    "method1": "Method 1 alone",
    "method2": "Method 2 alone (R1-Zero, from the base)",
    "method1_then_2": "Method 1 round 1, then Method 2",
}


@dataclass
class StudyConfig:
    out: str = field(default="runs/study-methods", metadata={"help": "output folder", "nonempty": True})
    seeds: int = field(
        default=3,
        metadata={
            "help": "seeds of every method (the spread across them is its reliability)",
            "min": 1,
            "max": 1000,
        },
    )
    quick: bool = field(default=False, metadata={"help": "a scaled-down run (a minute or two, for CI)"})
    length: int = field(default=4, metadata={"help": "variables per chain problem", "min": 2, "max": 64})
    held_out: int = field(
        default=200,
        metadata={"help": "held-out problems every model is evaluated on", "min": 1, "max": MAX_PROBLEMS},
    )
    pass_problems: int = field(
        default=100,
        metadata={"help": "of those, the ones pass@k samples 64 times", "min": 1, "max": MAX_PROBLEMS},
    )
    threads: int = field(default=0, metadata={"help": "torch threads (0 = all cores)", "min": 0, "max": 1024})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda or auto"})
    resume: bool = field(
        default=False,
        metadata={
            "help": "go on from the seeds a stopped study in --out finished (same settings; --seeds may grow)"
        },
    )
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})

    def __post_init__(self):
        check_options(self)
        if self.pass_problems > self.held_out:
            raise UserError(f"--pass-problems {self.pass_problems} is more than --held-out {self.held_out}")


def base_config(quick: bool, seed: int = 0) -> PretrainConfig:
    """The base: the demo's pretraining (its corpus in free text but for `TEMPLATE_FRACTION`)."""
    from .demo import DemoConfig, stage_configs

    return stage_configs(DemoConfig(quick=quick, seed=seed))[0]


def arm_configs(quick: bool, seed: int, task) -> tuple[RationalesConfig, GRPOConfig, GRPOConfig]:
    """Method 1 (the demo's rounds, reading free text), GRPO from Method 1 (the demo's for `task`, a
    chain) and GRPO from the base (the same at T = 1.0, R1-Zero's)."""
    from .demo import DemoConfig, stage_configs

    _, m1, rl = stage_configs(
        DemoConfig(quick=quick, seed=seed, length=task.length, min_length=task.min_length)
    )
    m1 = replace(m1, free_form=True)
    rl = replace(rl, eval_every=3 if quick else 25)  # max_seconds: set by the study to Method 1's wall time
    zero = replace(rl, temperature=1.0)
    return m1, rl, zero


def pass_at_k(model, tokenizer, task, problems, seed: int, prompt: str, quick: bool) -> dict:
    """{k: pass@k} from 64 samples a problem at `PASS_TEMPERATURE` (4 with `quick`)."""
    n = 4 if quick else PASS_KS[-1]
    params = SamplingParams(temperature=PASS_TEMPERATURE, max_new_tokens=96, seed=seed)
    correct, _ = k_samples(model, tokenizer, task, problems, n, params, prompt=prompt)
    return {str(k): v for k, v in pass_curve(correct, n, [k for k in PASS_KS if k <= n]).items()}


class Arms:
    """The three methods from one base with one seed: each arm's model and record (accuracy, format
    rate, thinking length, FLOPs, wall time, the [flops, accuracy] curve, pass@k)."""

    def __init__(
        self,
        base,
        tokenizer,
        task,
        held_out,
        pass_problems,
        seed: int,
        out: Path,
        quick: bool,
        base_acc: float,
        tick=None,
    ):
        self.base, self.tok, self.task, self.held_out = base, tokenizer, task, held_out
        self.base_acc = base_acc  # the base's greedy accuracy in the template (`base_measurements`)
        self.pass_problems, self.seed, self.out, self.quick = pass_problems, seed, out, quick
        self.m1_cfg, self.rl_cfg, self.zero_cfg = arm_configs(quick, seed, task)
        self.greedy = SamplingParams(temperature=0.0, max_new_tokens=96)
        self.tick = tick or (lambda name, info: None)
        self.models: dict = {}

    def evaluate(self, model) -> dict:
        r = evaluate_problems(model, self.tok, self.task, self.held_out, params=self.greedy)
        return {
            "acc": r["accuracy"],
            "format_rate": r["format_rate"],
            "mean_think_tokens": r["mean_think_tokens"],
        }

    def start_point(self) -> list:
        """Every curve's first point, [flops, accuracy, seconds]: the base in the template (strictly
        read), before any compute."""
        return [0.0, self.base_acc, 0.0]

    def method1(self, start: list, resume: bool = False) -> dict:
        """Method 1 alone (`resume`: from where a stopped run in the folder got to); keeps round 1's
        model for `method1_then_2`. Started afresh, it samples afresh: an earlier run's sample caches
        in its folder are dropped, since taking them would shorten the wall time that budgets the
        other arms."""
        curve, t0 = [start], time.monotonic()
        if not resume:
            for cache in (self.out / "method1").glob("round*_samples.jsonl"):
                cache.unlink()

        evaluated = {}  # round -> its model's evaluation

        def on_round(record, model):
            evaluated[record["round"]] = self.evaluate(model)
            curve.append(
                [record["compute"]["flops"], evaluated[record["round"]]["acc"], time.monotonic() - t0]
            )
            if record["round"] == 1:
                self.models["method1_round1"] = (copy.deepcopy(model), curve[-1])
            self.tick("method1", f"round {record['round']}: {curve[-1][1]:.0%}")

        model, records = run_rationales(
            self.base,
            self.tok,
            self.task,
            self.m1_cfg,
            out_dir=self.out / "method1",
            on_round=on_round,
            resume=resume,
        )
        self.models["method1"] = model
        final = evaluated.get(records[-1]["round"]) or self.evaluate(
            model
        )  # (a resumed run that had finished)
        return {
            **final,
            "flops": records[-1]["compute"]["flops"],
            "seconds": time.monotonic() - t0,
            "curve": curve,
            "rounds": records,
        }

    def grpo(self, name: str, model, cfg: GRPOConfig, before: list, curve: list, folder: str = "") -> dict:
        """GRPO on `model` (in place, logged to `folder`, default `name`) until `cfg.max_seconds`;
        its record, the curve continued from `curve` (its evaluations shifted by what was spent
        `before` it, [flops, seconds], and the final model's point)."""
        t0, stopped = time.monotonic(), None
        spent, budget = ("seconds", cfg.max_seconds) if cfg.max_seconds else ("compute/flops", cfg.max_flops)
        progress = lambda m: self.tick(
            name,
            f"step {m['step']}"  # noqa: E731
            + (f", {m.get(spent, 0) / budget:.0%} of the budget" if budget else ""),
        )
        try:
            train_grpo(
                model,
                self.tok,
                self.task,
                cfg,
                out_dir=self.out / (folder or name),
                progress=progress,
                held_out=self.held_out,
            )
        except (
            NoFormatError
        ) as e:  # a base that never writes the template: said, and the arm scores what it is
            stopped = str(e)
        metrics = read_log(self.out / (folder or name) / "metrics.jsonl")
        flops, seconds = (
            before[0] + max((m.get("compute/flops", 0.0) for m in metrics), default=0.0),
            before[1] + time.monotonic() - t0,
        )
        curve = curve + [
            [before[0] + m["compute/flops"], m["eval/accuracy"], before[1] + m["seconds"]]
            for m in metrics
            if "eval/accuracy" in m and m["step"] > 0
        ]
        steps = [m for m in metrics if "reward/format_rate" in m]
        self.models[name] = model
        final = self.evaluate(model)
        if curve[-1][0] < flops:  # the run stopped between evaluations
            curve.append([flops, final["acc"], seconds])
        return {
            **final,
            "flops": flops,
            "seconds": seconds,
            "curve": curve,
            "steps": max((m["step"] for m in metrics), default=0),
            "stopped": stopped,
            "format_curve": [[m["step"], m["reward/format_rate"]] for m in steps],
            "think_curve": [
                [m["step"], m["completions/mean_think_tokens"]]
                for m in steps
                if "completions/mean_think_tokens" in m
            ],
        }

    def r1_zero(self, budget: float, start: list, folder: str = "") -> dict:
        """Method 2 alone: GRPO from (a copy of) the base for `budget` seconds."""
        return self.grpo(
            "method2",
            copy.deepcopy(self.base),
            replace(self.zero_cfg, max_seconds=budget),
            [0.0, 0.0],
            [start],
            folder,
        )

    def chain(self, budget: float, start: list, folder: str = "") -> dict:
        """Method 1's round 1, then GRPO from its model, until the two have spent `budget` seconds."""
        round1, spent = self.models.pop("method1_round1")
        record = self.grpo(
            "method1_then_2",
            round1,
            replace(self.rl_cfg, max_seconds=max(budget - spent[2], 1.0)),
            [spent[0], spent[2]],
            [start, spent],
            folder,
        )
        return {**record, "method1_flops": spent[0], "method1_seconds": spent[2]}

    def run(self, save=None) -> dict:
        """All three arms and their pass@k; `save(record)` after each arm (what a failure keeps)."""
        save = save or (lambda record: None)
        start = self.start_point()
        record = {"seed": self.seed, "method1": self.method1(start)}
        save(record)
        budget = record["method1"]["seconds"]
        record["method2"] = self.r1_zero(budget, start)
        save(record)
        record["method1_then_2"] = self.chain(budget, start)
        save(record)
        record["pass_at_k"] = {
            arm: pass_at_k(
                self.models[arm], self.tok, self.task, self.pass_problems, self.seed, "template", self.quick
            )
            for arm in ARMS
        }
        return record


def summarize(per_seed: list[dict], base_pass: dict) -> dict:
    """The study's results from each seed's arms: per method the lists over seeds and their mean and
    spread, pass@k averaged over seeds."""
    methods = {}
    for arm in ARMS:
        runs = [s[arm] for s in per_seed]
        acc = [r["acc"] for r in runs]
        methods[arm] = {
            "label": LABELS[arm],
            "acc": acc,
            "format_rate": [r["format_rate"] for r in runs],
            "mean_think_tokens": [r["mean_think_tokens"] for r in runs],
            "flops": [r["flops"] for r in runs],
            "seconds": [r["seconds"] for r in runs],
            "curve": [r["curve"] for r in runs],
            "acc_mean": statistics.fmean(acc),
            "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "acc_min": min(acc),
            "acc_max": max(acc),
        }
    pass_k = {"base": base_pass}
    for arm in ARMS:
        ks = per_seed[0]["pass_at_k"][arm]
        pass_k[arm] = {k: statistics.fmean(s["pass_at_k"][arm][k] for s in per_seed) for k in ks}
    zero = per_seed[0]["method2"]
    return {
        "methods": methods,
        "pass_at_k": pass_k,
        "r1_zero_format_curve": zero["format_curve"],
        "r1_zero_think_curve": zero["think_curve"],
    }


def run_study(cfg: StudyConfig) -> dict:
    """Pretrain the base, run the three arms for every seed, write results.json and report.html."""
    from .demo import Stages
    from .report import build_report

    where = resolve_device(cfg.device)
    out = claim(cfg.out, "study", cfg.overwrite, resume=cfg.resume)
    earlier = earlier_study(out, cfg) if cfg.resume else {}
    mark(out, "study")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.monotonic() - earlier.get("seconds", 0.0)
    task = get_task("chain", length=cfg.length)
    held_out = task.problems(cfg.held_out, "test", seed=99)
    pass_problems = held_out[: cfg.pass_problems] if not cfg.quick else held_out[: min(cfg.pass_problems, 8)]
    results: dict = {
        "study": "methods",
        "task": f"chain of {cfg.length} variables",
        "config": asdict(cfg),
        "template_fraction": TEMPLATE_FRACTION,
        "compute": compute.COUNTED,
        "pass_temperature": PASS_TEMPERATURE,
    }

    def save():
        results["seconds"] = time.monotonic() - start
        (out / "results.json").write_text(json.dumps(results, indent=2))

    with Stages() as ui:
        pre_cfg = base_config(cfg.quick)
        tick = ui.stage("base: pretrain", pre_cfg.steps)
        if earlier:  # the stopped study's base, and what it measured of it
            base, tok = load_model(out / "checkpoints" / "base")
            base = base.to(where)
            results.update({k: earlier[k] for k in ("base", "pass_at_k_base_free_form")})
        else:
            base, tok, _ = pretrain(
                task,
                pre_cfg,
                folder=RunFolder(out / "pretrain", "pretrain"),
                device=cfg.device,
                progress=lambda m: tick(completed=m["step"]),
            )
            base = base.to(where)
            save_checkpoint(out / "checkpoints" / "base", base, tok, train_record(pre_cfg, task))
            results["base"] = base_measurements(base, tok, task, held_out)
            results["pass_at_k_base_free_form"] = pass_at_k(
                base, tok, task, pass_problems, 0, "free-form", cfg.quick
            )
        tick(
            completed=pre_cfg.steps,
            info=f"template format {results['base']['sampled_format_rate']:.0%} at T=1",
        )
        per_seed = earlier.get("per_seed", [])[: cfg.seeds]  # each a finished seed
        if per_seed:
            results["per_seed"] = per_seed
            results.update(summarize(per_seed, results["pass_at_k_base_free_form"]))
        save()
        for seed in range(len(per_seed), cfg.seeds):
            bars = {arm: ui.stage(f"seed {seed}: {arm}", 1) for arm in ARMS}
            arms = Arms(
                base,
                tok,
                task,
                held_out,
                pass_problems,
                seed,
                out / f"seed{seed}",
                cfg.quick,
                results["base"]["template_acc"],
                tick=lambda arm, info: bars[arm](advance=0, info=info),
            )

            def keep(record):  # a seed cut short keeps its finished arms here (a resume reruns the seed)
                results["unfinished_seed"] = record
                save()

            per_seed.append(arms.run(save=keep))
            for arm in ARMS:
                bars[arm](
                    completed=1,
                    info=f"{per_seed[-1][arm]['acc']:.0%} in {per_seed[-1][arm]['seconds']:.0f} s",
                )
            results.pop("unfinished_seed", None)
            results["per_seed"] = per_seed
            results.update(summarize(per_seed, results["pass_at_k_base_free_form"]))
            save()
    build_report(out)
    save()
    return results


def earlier_study(out: Path, cfg: StudyConfig) -> dict:
    """`--resume`: what a stopped study in `out` saved, if it ran with the same settings (but
    --seeds, which may grow) and left its base."""
    if not (out / "results.json").is_file() or not (out / "checkpoints" / "base" / "config.json").is_file():
        raise UserError(f"--resume: {out} holds no study to go on with (no results.json and base checkpoint)")
    earlier = read_json(out / "results.json")
    made = earlier.get("config", {})
    other = [
        f"{k}={made.get(k)!r}"
        for k in ("quick", "length", "held_out", "pass_problems")
        if made.get(k) != getattr(cfg, k)
    ]
    if other or "base" not in earlier:
        raise UserError(
            f"--resume: the study in {out} was made with {', '.join(other) or 'no base measured'}; "
            "run without --resume to start over, or give the same settings"
        )
    return earlier


def base_measurements(base, tokenizer, task, held_out) -> dict:
    """The base asked directly, with the trigger (both read as free text), in the template (strict,
    greedy), and the template's format rate of its samples at T = 1 (where R1-Zero starts)."""
    greedy = SamplingParams(temperature=0.0, max_new_tokens=96)
    direct = evaluate_problems(
        base,
        tokenizer,
        task,
        held_out,
        trigger=False,
        prompt="direct",
        keep=0,
        params=SamplingParams(temperature=0.0, max_new_tokens=DIRECT_TOKENS),
    )
    free = evaluate_problems(base, tokenizer, task, held_out, prompt="free-form", params=greedy, keep=0)
    template = evaluate_problems(base, tokenizer, task, held_out, params=greedy, keep=0)
    sampled = evaluate_problems(
        base,
        tokenizer,
        task,
        held_out,
        keep=0,
        params=SamplingParams(temperature=1.0, max_new_tokens=96, seed=0),
    )
    return {
        "direct_acc": direct["accuracy"],
        "cot_prompt_acc": free["accuracy"],
        "template_acc": template["accuracy"],
        "template_format_rate": template["format_rate"],
        "sampled_format_rate": sampled["format_rate"],
        "sampled_acc": sampled["accuracy"],
    }


DIRECT_TOKENS = (
    len(FREE_ANSWER.format(20)) + 1
)  # asked directly: room for the answer sentence, none to reason
