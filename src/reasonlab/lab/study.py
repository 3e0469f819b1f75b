"""`reasonlab study methods`: Method 1 against Method 2 from the same base, at equal compute, over seeds.

One base model is pretrained (the demo's: the built-in model on 4-variable chains, its corpus in
free text but for a share `TEMPLATE_FRACTION` written in the ``<think>/<answer>`` template, so the
base writes the template now and then, as a pretrained LM does). From it, for each seed:

- **method1**: Method 1 alone (the demo's STaR rounds: free-text samples read, verified, their
  steps checked, rewritten into the template, fine-tuned). What its first 3 rounds spend is the
  unit budget C;
- **method1_answer_only**: the same keeping a sample on its final answer alone (the seed's wording
  of the method): what the step check, a process check, adds;
- **method2**: GRPO from the base (DeepSeek-R1-Zero: the template's prompt, the 2 + 1 reward, no
  warm start, T = 1.0);
- **method1_then_2**: Method 1's first round, then GRPO from that model (the demo's).

Every arm is read at each of `--budgets` x C (default 0.5, 1, 2): the GRPO arms run to the largest
and are evaluated where their spend reaches each budget (where a run with that budget would stop;
nothing in a run depends on where it stops, so the readings are those of separate runs); Method 1
runs 3 x the largest rounds and is read by rounds (b x 3 whole rounds). Equal compute is equal
FLOPs (`compute`: 2N a sampled token, 6N a trained one, plus attention; evaluations not counted),
not equal wall time (each arm's wall time is recorded beside them). With `--tune`, every arm first
gets the same tuning budget (`study_tuning`: its learning rate at 0.5x, 1x and 2x, the best on
validation problems at 1 x C); without it, `DEFAULT_LR_SCALE`. Every model is evaluated on the same
held-out test problems: greedy accuracy, format rate, thinking length, and pass@k for k = 1 … 64
from 64 samples a problem at T = 0.7 (the base read as free text, as Method 1 reads its samples;
trained models strictly, at the largest budget). Seeds change every method's sampling and data
order, not the base or the held-out problems: the spread across seeds is the methods' reliability.
Settings are fixed here before any run, the same for every seed.

DIR/results.json (rewritten after every seed, so nothing computed is lost) holds ``methods`` (per
method: ``acc`` (at 1 x C), ``at_budget`` ({budget: accuracies and their mean and spread}),
``format_rate``, ``flops``, ``seconds`` a list per seed, ``curve`` a list per seed of [flops,
accuracy, seconds] points), ``pass_at_k`` (per model: {k: rate}, the mean over seeds),
``r1_zero_format_curve`` ([step, format rate of the samples] of seed 0's GRPO-from-base run),
``tuning`` (with `--tune`), ``lr_scale`` and ``per_seed``; DIR/report.html draws them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import compute
from ..config import MAX_PROBLEMS, check_options
from ..errors import UserError
from ..jsonl import read_json
from ..model import load_model, save_checkpoint, train_record
from ..outdir import OVERWRITE_HELP, RunFolder, claim, mark
from ..runtime import resolve_device
from ..tasks import get_task
from ..train.pretrain import PretrainConfig, pretrain
from .arms import PASS_TEMPERATURE, STUDY_ARMS, Arms, base_measurements, budget_key, pass_at_k, summarize
from .settings import TEMPLATE_FRACTION, DemoConfig, stage_configs
from .stages import Stages
from .study_tuning import tune

# each arm's learning rate, as a multiple of its default, without --tune: what `--tune` chose
# (2026-12-08, the 2-core EPYC: 1x for every arm; docs/methods.md)
DEFAULT_LR_SCALE = {arm: 1.0 for arm in STUDY_ARMS}


@dataclass
class StudyConfig:
    out: str = field(default="runs/study-methods", metadata={"help": "output folder", "nonempty": True})
    seeds: int = field(
        default=5,
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
    budgets: str = field(
        default="0.5,1,2",
        metadata={
            "help": "compute budgets every arm is read at, as multiples of C (Method 1's FLOPs over the "
            "demo's 3 rounds), comma-separated: the arms run to the largest (and to 1 at least)",
            "nonempty": True,
        },
    )
    tune: bool = field(
        default=False,
        metadata={
            "help": "first give every arm the same tuning budget: its learning rate tried at 0.5x, 1x and "
            "2x its default, the best kept by validation accuracy at 1x C (one tuning seed; about 30 "
            "minutes more on a 2-core CPU)"
        },
    )
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})

    def __post_init__(self):
        check_options(self)
        if self.pass_problems > self.held_out:
            raise UserError(f"--pass-problems {self.pass_problems} is more than --held-out {self.held_out}")
        parse_budgets(self.budgets)

    def budget_list(self) -> tuple[float, ...]:
        return parse_budgets(self.budgets)


def parse_budgets(text: str) -> tuple[float, ...]:
    """ "0.5,1,2" -> (0.5, 1.0, 2.0); a one-line error for anything else."""
    try:
        budgets = tuple(sorted({float(x) for x in text.split(",")}))
    except ValueError:
        raise UserError(
            f"--budgets must be numbers separated by commas, like 0.5,1,2; got {text!r}"
        ) from None
    if not all(0 < b <= 16 for b in budgets):
        raise UserError(f"--budgets must each be above 0 and at most 16 (x C), got {text!r}")
    return budgets


def base_config(quick: bool, seed: int = 0) -> PretrainConfig:
    """The base: the demo's pretraining (its corpus in free text but for `TEMPLATE_FRACTION`)."""
    return stage_configs(DemoConfig(quick=quick, seed=seed))[0]


class StudyRun:
    """One methods study: its folder, task, held-out problems, base and results (results.json,
    rewritten after every seed, so nothing computed is lost); with --resume, the base and the seeds
    a stopped study finished."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.where = resolve_device(cfg.device)
        self.out = claim(cfg.out, "study", cfg.overwrite, resume=cfg.resume)
        self.earlier = earlier_study(self.out, cfg) if cfg.resume else {}
        mark(self.out, "study")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.start = time.monotonic() - self.earlier.get("seconds", 0.0)
        self.task = get_task("chain", length=cfg.length)
        self.held_out = self.task.problems(cfg.held_out, "test", seed=99)
        self.pass_problems = self.held_out[
            : cfg.pass_problems if not cfg.quick else min(cfg.pass_problems, 8)
        ]
        self.results: dict = {
            "study": "methods",
            "task": f"chain of {cfg.length} variables",
            "config": asdict(cfg),
            "template_fraction": TEMPLATE_FRACTION,
            "compute": compute.COUNTED,
            "pass_temperature": PASS_TEMPERATURE,
            "budgets": [budget_key(b) for b in sorted({*cfg.budget_list(), 1.0})],
            "lr_scale": dict(DEFAULT_LR_SCALE),
        }

    def save(self):
        self.results["seconds"] = time.monotonic() - self.start
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2))

    def pretrain_base(self, ui):
        """The base, pretrained and measured (or the stopped study's, and what it measured of it)."""
        cfg, task, out, results = self.cfg, self.task, self.out, self.results
        pre_cfg = base_config(cfg.quick)
        tick = ui.stage("base: pretrain", pre_cfg.steps)
        if self.earlier:
            base, self.tok = load_model(out / "checkpoints" / "base")
            self.base = base.to(self.where)
            results.update({k: self.earlier[k] for k in ("base", "pass_at_k_base_free_form")})
        else:
            base, self.tok, _ = pretrain(
                task,
                pre_cfg,
                folder=RunFolder(out / "pretrain", "pretrain"),
                device=cfg.device,
                progress=lambda m: tick(completed=m["step"]),
            )
            self.base = base = base.to(self.where)
            save_checkpoint(out / "checkpoints" / "base", base, self.tok, train_record(pre_cfg, task))
            results["base"] = base_measurements(base, self.tok, task, self.held_out)
            results["pass_at_k_base_free_form"] = pass_at_k(
                base, self.tok, task, self.pass_problems, 0, "free-form", cfg.quick
            )
        tick(
            completed=pre_cfg.steps,
            info=f"template format {results['base']['sampled_format_rate']:.0%} at T=1",
        )

    def tune(self, ui) -> None:
        """`--tune`: each arm's learning rate chosen on validation (`study_tuning`), kept in the
        results (a resumed study keeps the one it made)."""
        if "tuning" in self.earlier:
            self.results["tuning"] = self.earlier["tuning"]
        else:
            tick = ui.stage("tuning: 3 learning rates an arm, on validation", 1)
            pre_cfg = base_config(self.cfg.quick)
            corpus = self.task.problems(pre_cfg.corpus_size, "train", pre_cfg.seed)
            self.results["tuning"] = tune(
                self.base,
                self.tok,
                self.task,
                corpus,
                self.out / "tuning",
                self.cfg.quick,
                self.cfg.held_out,
                tick=lambda info: tick(advance=0, info=info),
            )
            tick(completed=1, info=str(self.results["tuning"]["chosen"]))
        self.results["lr_scale"] = dict(self.results["tuning"]["chosen"])
        self.save()

    def record(self, per_seed: list[dict]) -> None:
        """The finished seeds and their summary, in the results."""
        self.results["per_seed"] = per_seed
        self.results.update(summarize(per_seed, self.results["pass_at_k_base_free_form"], STUDY_ARMS))

    def run_seed(self, ui, seed: int, per_seed: list[dict]) -> None:
        """The arms with `seed`, added to `per_seed` and the results."""
        results = self.results
        bars = {arm: ui.stage(f"seed {seed}: {arm}", 1) for arm in STUDY_ARMS}
        arms = Arms(
            self.base,
            self.tok,
            self.task,
            self.held_out,
            self.pass_problems,
            seed,
            self.out / f"seed{seed}",
            self.cfg.quick,
            results["base"]["template_acc"],
            tick=lambda arm, info: bars[arm](advance=0, info=info),
            budgets=self.cfg.budget_list(),
            lr_scale=results["lr_scale"],
        )

        def keep(record):  # a seed cut short keeps its finished arms here (a resume reruns the seed)
            results["unfinished_seed"] = record
            self.save()

        per_seed.append(arms.run(save=keep, arms=STUDY_ARMS))
        for arm in STUDY_ARMS:
            bars[arm](
                completed=1,
                info=f"{per_seed[-1][arm]['acc']:.0%} in {per_seed[-1][arm]['seconds']:.0f} s",
            )
        results.pop("unfinished_seed", None)
        self.record(per_seed)
        self.save()


def run_study(cfg: StudyConfig) -> dict:
    """Pretrain the base, tune (`--tune`), run the arms for every seed, write results.json and
    report.html."""
    from .report import build_report  # matplotlib: imported when a study runs, not with its options

    study = StudyRun(cfg)
    with Stages() as ui:
        study.pretrain_base(ui)
        if cfg.tune:
            study.tune(ui)
        per_seed = study.earlier.get("per_seed", [])[: cfg.seeds]  # each a finished seed
        if per_seed:
            study.record(per_seed)
        study.save()
        for seed in range(len(per_seed), cfg.seeds):
            study.run_seed(ui, seed, per_seed)
    build_report(study.out)
    study.save()
    return study.results


def earlier_study(out: Path, cfg: StudyConfig) -> dict:
    """`--resume`: what a stopped study in `out` saved, if it ran with the same settings (but
    --seeds, which may grow) and left its base."""
    if not (out / "results.json").is_file() or not (out / "checkpoints" / "base" / "config.json").is_file():
        raise UserError(f"--resume: {out} holds no study to go on with (no results.json and base checkpoint)")
    earlier = read_json(out / "results.json")
    made = earlier.get("config", {})
    other = [
        f"{k}={made.get(k)!r}"
        for k in ("quick", "length", "held_out", "pass_problems", "budgets", "tune")
        if made.get(k) != getattr(cfg, k)
    ]
    if other or "base" not in earlier:
        raise UserError(
            f"--resume: the study in {out} was made with {', '.join(other) or 'no base measured'}; "
            "run without --resume to start over, or give the same settings"
        )
    return earlier
