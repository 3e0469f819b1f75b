"""`reasonlab demo`: the whole story on the built-in tiny model, on a CPU, in minutes.

pretrain a base model -> ask it directly vs "Let's think step by step." -> Method 1 rounds
(self-generated rationales kept by the verifier) -> Method 2 (GRPO with the format + correctness
reward) -> thinking-budget sweep -> faithfulness probe -> report. Every accuracy is greedy, on
held-out problems never seen in training. Results land in DIR/results.json (rewritten after every
stage, so nothing computed is lost if a later stage fails) and DIR/report.html.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, replace

from ..console import percent
from ..engine import SamplingParams
from ..evaluate import budget_sweep, evaluate_problems, faithfulness_probe, length_control
from ..outdir import RunFolder
from ..rl import train_grpo
from ..runtime import resolve_device
from ..tasks import get_task
from ..tasks.hints import wrong_answer
from ..train.pretrain import pretrain
from .arms import ARMS, DIRECT_TOKENS, LABELS, Arms, base_measurements, pass_at_k, summarize
from .demo_real import run_real_demo
from .demo_run import DemoRun
from .settings import DemoConfig, stage_configs
from .stages import Stages

BUDGET_SECONDS = {False: 60.0, True: 10.0}  # budget-aware GRPO's wall time (stage 7; --quick)


class BuiltinDemoRun(DemoRun):
    """The built-in demo's stages, on the tiny model pretrained in its first stage."""

    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.where = resolve_device(cfg.device)  # a bad --device fails before any stage starts
        self.open_folder()
        self.task = get_task("chain", length=cfg.length, min_length=cfg.min_length or cfg.length)
        self.pre_cfg, self.m1_cfg, self.rl_cfg = stage_configs(cfg)
        self.held_out = self.task.problems(50 if cfg.quick else 200, "test", seed=cfg.seed + 99)
        self.greedy = SamplingParams(temperature=0.0, max_new_tokens=96)
        t = self.task
        lengths = f"{t.min_length} to {t.length}" if t.min_length != t.length else t.length
        self.results: dict = {"task": f"chain of {lengths} variables", "config": asdict(cfg)}
        self.reuse = bool(self.earlier)
        self.base = None  # the pretrained model, once there is one
        if not self.earlier:
            self.save()  # a fresh run: nothing an earlier run in this folder left counts as done any more

    def pretrain_base(self, ui):
        """1. pretrain the base model, stopping on measured trigger accuracy."""
        cfg = self.pre_cfg
        tick = ui.stage("1/8 pretrain the base model", cfg.steps)
        if self.done_before(("pretrain",), "base"):
            base, self.tok = self.load("base")
            tick(completed=cfg.steps, info="from the stopped run")
            return base

        def pre_log(m):
            info = f"loss {m['loss']:.3f}" + (
                f", trigger acc {m['trigger_acc']:.0%}" if "trigger_acc" in m else ""
            )
            if "trigger_steps_acc" in m:
                info += f" ({m['trigger_steps_acc']:.0%} with every step right)"
            tick(completed=m["step"], info=info)

        folder = RunFolder(self.out / "pretrain", "pretrain")
        base, self.tok, last = pretrain(
            self.task, cfg, progress=pre_log, folder=folder, device=self.cfg.device
        )
        self.keep("base", base, cfg)
        self.results["pretrain"] = {
            k: last[k] for k in ("step", "loss", "trigger_acc", "trigger_steps_acc") if k in last
        }
        self.save()
        tick(completed=cfg.steps)
        return base

    def prompting(self, ui, base):
        """2. the base model asked directly vs "think step by step" (both read as free text, as the
        base writes), and in the template (strictly: what RL from the base starts from)."""
        tick = ui.stage("2/8 direct vs step-by-step", 3)
        keys = (
            "base_direct_acc",
            "base_cot_prompt_acc",
            "base_template_acc",
            "base_format_rate",
            "base_sampled_format_rate",
        )
        if not self.done_before(keys):
            measured = base_measurements(base, self.tok, self.task, self.held_out)
            self.results.update(
                base_direct_acc=measured["direct_acc"],
                base_cot_prompt_acc=measured["cot_prompt_acc"],
                base_template_acc=measured["template_acc"],
                base_format_rate=measured["template_format_rate"],
                base_sampled_format_rate=measured["sampled_format_rate"],
            )
            self.save()
        r = self.results
        tick(
            completed=3,
            info=f"direct {r['base_direct_acc']:.0%}, step by step {r['base_cot_prompt_acc']:.0%}, "
            f"template format {r['base_sampled_format_rate']:.0%} at T=1",
        )

    def method1(self, ui, base):
        """3. Method 1: self-generated rationales kept by the verifier (its round-1 model is where
        Method 2 goes on from: the two together spend what Method 1 alone does)."""
        cfg = self.m1_cfg
        tick = ui.stage("3/8 Method 1: own rationales", cfg.rounds)
        self.reuse_method1 = self.reuse  # the stopped run's base model: its Method 1 state still fits
        if (
            self.done_before(("method1_acc", "method1_rounds", "arm_method1"), "method1")
            and (self.out / "checkpoints" / "method1_round1" / "config.json").is_file()
        ):
            tick(completed=cfg.rounds, info=f"round {cfg.rounds}: {self.results['method1_acc'][-1]:.0%}")
            self.arms.models["method1_round1"] = (
                self.load("method1_round1")[0],
                self.results["arm_method1"]["curve"][1],
            )
            return self.load("method1")[0]
        record = self.arms.method1(self.arms.start_point(), resume=self.reuse_method1)
        self.results["method1_rounds"] = record["rounds"]
        self.results["method1_acc"] = [r["accuracy"] for r in record["rounds"]]
        self.results["arm_method1"] = {k: v for k, v in record.items() if k != "rounds"}
        self.keep("method1", self.arms.models["method1"], cfg)
        self.keep("method1_round1", self.arms.models["method1_round1"][0], cfg)
        self.save()
        tick(completed=cfg.rounds)
        return self.arms.models["method1"]

    def method2(self, ui):
        """4. Method 2: GRPO from Method 1's round-1 model, until the two have spent Method 1's FLOPs."""
        tick = ui.stage("4/8 Method 2 from Method 1's round 1", 1)
        keys = ("method2_acc", "method2_format_rate", "method2_mean_think_tokens", "arm_method1_then_2")
        if self.done_before(keys, "method2"):
            tick(info=f"held-out {self.results['method2_acc']:.0%}")
            return self.load("method2")[0]
        m1 = self.results["arm_method1"]
        record = self.arms.chain(m1["flops"], m1["curve"][0], folder="grpo")
        self.results.update(
            method2_acc=record["acc"],
            method2_format_rate=record["format_rate"],
            method2_mean_think_tokens=record["mean_think_tokens"],
            arm_method1_then_2=record,
        )
        model = self.arms.models["method1_then_2"]
        self.keep("method2", model, self.arms.rl_cfg)
        self.save()
        tick(info=f"held-out {record['acc']:.0%} after {record['steps']} steps")
        return model

    def r1_zero(self, ui, base):
        """5. Method 2 alone: GRPO from the base (R1-Zero), for Method 1's FLOPs."""
        tick = ui.stage("5/8 Method 2 from the base (R1-Zero)", 1)
        if self.done_before(("r1_zero", "arm_method2", "r1_zero_format_curve"), "r1_zero"):
            tick(info=self.results["r1_zero"]["summary"])
            return self.load("r1_zero")[0]
        m1 = self.results["arm_method1"]
        record = self.arms.r1_zero(m1["flops"], m1["curve"][0], folder="grpo_from_base")
        curve = record["format_curve"]
        summary = (
            f"{record['steps']} steps: format {curve[0][1]:.0%} -> {curve[-1][1]:.0%} of the samples; "
            f"held-out {record['acc']:.0%}"
            if curve
            else f"{record['steps']} steps"
        )
        self.results["r1_zero"] = {
            "steps": record["steps"],
            "format_curve": curve,
            "stopped": record["stopped"],
            "acc": record["acc"],
            "format_rate": record["format_rate"],
            "summary": summary,
        }
        self.results["r1_zero_format_curve"] = curve
        self.results["arm_method2"] = record
        model = self.arms.models["method2"]
        self.keep("r1_zero", model, self.arms.zero_cfg)
        self.save()
        tick(info=summary)
        return model

    def head_to_head(self, ui, base, models: dict):
        """6. pass@k of the base and of each method's model; the head-to-head at equal compute."""
        tick = ui.stage("6/8 pass@k, head to head", 1)
        if not self.done_before(("pass_at_k", "methods", "stage_samples")):
            problems = self.held_out[: 8 if self.cfg.quick else 100]
            record = {
                "seed": self.cfg.seed,
                **{arm: self.results[f"arm_{arm}"] for arm in ARMS},
                "pass_at_k": {
                    arm: pass_at_k(
                        models[arm], self.tok, self.task, problems, self.cfg.seed, "template", self.cfg.quick
                    )
                    for arm in ARMS
                },
            }
            base_pass = pass_at_k(
                base, self.tok, self.task, problems, self.cfg.seed, "free-form", self.cfg.quick
            )
            self.results.update(summarize([record], base_pass))
            self.results["stage_samples"] = stage_samples(
                base, models, self.tok, self.task, self.held_out[:3]
            )
            self.save()
        k = max(self.results["pass_at_k"]["base"], key=int)
        tick(
            info=" ".join(f"{arm} {m['acc'][0]:.0%}" for arm, m in self.results["methods"].items())
            + f"; pass@{k} base {self.results['pass_at_k']['base'][k]:.0%}"
        )

    def budget(self, ui, method1):
        """7. the thinking budget as a dial: GRPO from Method 1's model with a share of its groups cut
        at a budget drawn per group (budget-aware RL), then both models with their thinking capped at
        0 … 1.5 × Method 1's mean thinking length, and asked to "think for N tokens"."""
        tick = ui.stage("7/8 budget-aware RL, the dial", 1)
        keys = ("budget_curve", "budget_curve_method1", "budget_aware", "length_control")
        if self.done_before(keys, "budget_aware"):
            model = self.load("budget_aware")[0]
        else:
            model = self.budget_aware(method1, tick)
        curve = self.results["budget_curve"]
        tick(
            info=" ".join(f"{c['budget']}:{c['acc']:.0%}" for c in curve)
            + f"; format after the cut ≥ {min(c['format_rate'] for c in curve):.0%}"
        )
        return model

    def budget_aware(self, method1, tick):
        """GRPO from (a copy of) `method1`, half its groups' thinking cut at a budget drawn per group
        (kept as checkpoints/budget_aware); then both models' accuracy at each thinking budget and
        the new one's "think for N tokens". Returns the new model."""
        full = max(4, round(self.results["arm_method1"]["mean_think_tokens"]))
        cfg = replace(
            self.rl_cfg,
            max_seconds=BUDGET_SECONDS[self.cfg.quick],
            eval_every=0,
            budget_share=0.5,
            budget_min=0,
            budget_max=full + full // 4,
        )
        model = copy.deepcopy(method1)
        tick(info=f"GRPO, half the groups cut at 0-{cfg.budget_max} thinking tokens")
        t0 = time.monotonic()
        last = train_grpo(model, self.tok, self.task, cfg, out_dir=self.out / "grpo_budget")
        seconds = time.monotonic() - t0
        self.keep("budget_aware", model, cfg)
        uncapped = evaluate_problems(model, self.tok, self.task, self.held_out, params=self.greedy)
        budgets = sorted(
            {0, full // 8, full // 4, full // 2, 3 * full // 4, full, full + full // 4, 3 * full // 2}
        )
        self.results["budget_curve_method1"] = budget_sweep(
            method1,
            self.tok,
            self.task,
            self.held_out,
            budgets,
            max_new_tokens=self.greedy.max_new_tokens,
        )
        self.results["budget_curve"] = budget_sweep(
            model, self.tok, self.task, self.held_out, budgets, max_new_tokens=self.greedy.max_new_tokens
        )
        self.results["budget_aware"] = {
            "acc": uncapped["accuracy"],
            "format_rate": uncapped["format_rate"],
            "mean_think_tokens": uncapped["mean_think_tokens"],
            "by_difficulty": uncapped.get("by_difficulty", {}),
            "steps": last["step"],
            "seconds": seconds,
            "budget_share": cfg.budget_share,
            "budget_range": [cfg.budget_min, cfg.budget_max],
        }
        self.results["length_control"] = length_control(
            model,
            self.tok,
            self.task,
            self.held_out[:100],
            [full // 2, full, 3 * full // 2],
            max_new_tokens=self.greedy.max_new_tokens,
        )
        self.save()
        return model

    def faithfulness(self, ui, base, final):
        """8. faithfulness probe (on the base model, where the corpus planted hint-following, read
        as free text; Method 1's model with the hint line only)."""
        tick = ui.stage("8/8 faithfulness probe", 1)
        if not self.done_before(("faithfulness", "faithfulness_final_model")):
            rng = random.Random(self.cfg.seed)
            problems = self.held_out[: 50 if self.cfg.quick else 100]
            probe = faithfulness_probe(
                base,
                self.tok,
                self.task,
                problems,
                lambda p: wrong_answer(p.answer, rng),
                params=self.greedy,
                prompt="free-form",
            )
            probe_final = faithfulness_probe(
                final,
                self.tok,
                self.task,
                problems,
                lambda p: wrong_answer(p.answer, rng),
                params=self.greedy,
                styles=["hint_line"],
            )
            self.results["faithfulness"] = probe
            self.results["faithfulness_final_model"] = {
                k: v for k, v in probe_final.items() if k != "by_style"
            }
            self.save()
        probe = self.results["faithfulness"]
        tick(info=f"follows {percent(probe['hint_follow_rate'])}, admits {percent(probe['admit_rate'])}")


def run_demo(cfg: DemoConfig) -> dict:
    if cfg.model:
        return run_real_demo(cfg)
    run = BuiltinDemoRun(cfg)
    with Stages() as ui:
        with run.ledger("pretrain"):
            run.base = base = run.pretrain_base(ui)
        with run.ledger("prompting"):
            run.prompting(ui, base)
        run.arms = Arms(
            base,
            run.tok,
            run.task,
            run.held_out,
            [],
            cfg.seed,
            run.out,
            cfg.quick,
            run.results["base_template_acc"],
        )
        with run.ledger("method1"):
            method1 = run.method1(ui, base)
        with run.ledger("method1_then_2"):
            chain = run.method2(ui)
        with run.ledger("r1_zero"):
            zero = run.r1_zero(ui, base)
        with run.ledger("head_to_head"):
            run.head_to_head(ui, base, {"method1": method1, "method2": zero, "method1_then_2": chain})
        with run.ledger("budget_aware"):
            run.budget(ui, method1)
        with run.ledger("faithfulness"):
            run.faithfulness(ui, base, method1)
    return run.report()


def stage_samples(base, models: dict, tokenizer, task, problems) -> list[dict]:
    """What the model writes at each stage for a few held-out problems: the base asked directly and
    with the trigger, and each method's model (greedy)."""
    greedy = SamplingParams(temperature=0.0, max_new_tokens=96)
    asked = {
        "base, asked directly": (
            base,
            "direct",
            SamplingParams(temperature=0.0, max_new_tokens=DIRECT_TOKENS),
        ),
        'base, "Let\'s think step by step."': (base, "free-form", greedy),
        **{
            LABELS[arm]: (models[arm], "template", greedy) for arm in ("method1", "method1_then_2", "method2")
        },
    }
    texts = {
        name: [
            r["completion"]
            for r in evaluate_problems(
                model, tokenizer, task, problems, params=params, prompt=prompt, trigger=prompt != "direct"
            )["rows"]
        ]
        for name, (model, prompt, params) in asked.items()
    }
    return [
        {"question": p.question, "answer": p.answer, "replies": {name: texts[name][i] for name in asked}}
        for i, p in enumerate(problems)
    ]
