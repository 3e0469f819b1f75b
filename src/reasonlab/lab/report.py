"""`reasonlab report RUN_DIR`: PNG plots and one HTML page from what a run logged.

Reads only files. A run folder (`outdir.RunFolder`) says in its ``run.json`` which command made it
and with which settings: a ``demo`` folder has ``results.json`` (the demo's summary, rewritten
after every stage) and its GRPO stage in ``grpo/``; an ``rl`` folder's ``metrics.jsonl`` has one
row a step, a ``rationales`` folder's one a round, and a ``pretrain`` or ``sft`` folder's the
supervised steps. Folders written before this layout are still read: without a ``run.json`` by
their files (``grpo_config.json``, ``rationales_config.json``), and a checkpoint ``OUT`` by its
step log in ``OUT.state/``. A log's last line torn by a kill is left out. It never imports a
trainer; the figures are `plots`.
"""

from __future__ import annotations

import html
from pathlib import Path

from ..console import demo_rows, percent
from ..jsonl import made_by, read_json, read_log, run_config
from .plots import (
    is_step,
    plot_budget,
    plot_compute,
    plot_faithfulness,
    plot_loss,
    plot_methods,
    plot_pass_at_k,
    plot_r1_zero,
    plot_rounds,
    plot_scaling,
    plot_total_compute,
    plot_training,
)
from .tables import compute_rows, study_rows


def build_report(run_dir) -> Path:
    """Write PNGs and report.html for `run_dir`, the folder of a `reasonlab demo`, `rl`,
    `rationales`, `pretrain` or `sft` run; returns the HTML path."""
    run = Path(run_dir)
    if not run.exists():
        raise ValueError(f"{run} does not exist")
    if not run.is_dir():
        raise ValueError(f"{run} is a file; give the run's folder")
    command = made_by(run)  # the folder's run.json says which command made it
    if command in REPORTS:
        return REPORTS[command](run)
    if command is None:  # a folder from before run.json: known by its files
        if (run / "results.json").is_file():
            return _demo_report(run)
        if (run / "metrics.jsonl").is_file() and (run / "grpo_config.json").is_file():
            return _rl_report(run)
        if (run / "metrics.jsonl").is_file() and (run / "rationales_config.json").is_file():
            return _rationales_report(run)
    if _step_log(run) is not None:
        return _loss_report(run)
    raise ValueError(
        f"{run} is not a run folder: it has no run.json (a reasonlab training run), no results.json "
        "(reasonlab demo) and no metrics.jsonl"
    )


def _demo_report(run: Path) -> Path:
    results = read_json(run / "results.json")
    figures = [("Accuracy by method", plot_methods(results, run / "methods.png"))]
    if results.get("budget_curve"):
        curves = (
            {
                "Method 1 (no budgets in training)": results["budget_curve_method1"],
                "budget-aware GRPO from Method 1": results["budget_curve"],
            }
            if results.get("budget_curve_method1")
            else results["budget_curve"]
        )
        figures.append(("Thinking budget", plot_budget(curves, run / "budget.png")))
    figures += _training_figure(*_grpo_run(run / "grpo"), run / "training.png")
    figures += _methods_figures(results, run, run / "grpo_from_base" / "metrics.jsonl")
    if results.get("faithfulness", {}).get("by_style"):
        figures.append(("Faithfulness", plot_faithfulness(results["faithfulness"], run / "faithfulness.png")))
    note = (
        f"Task: {results.get('task', '')}. Every accuracy is greedy, on held-out problems never seen in "
        "training."
    )
    return _write_page(
        run,
        "reasonlab: what reasoning buys",
        note,
        demo_rows(results),
        figures,
        samples_html(results.get("stage_samples", [])),
    )


def _methods_figures(results: dict, run: Path, r1_zero_log: Path) -> list:
    """The head-to-head's figures, where `results` has them: accuracy against compute, pass@k, and
    RL from the base (its format rate, held-out accuracy and thinking length by step)."""
    figures = []
    if results.get("methods"):
        figures.append(("Accuracy against compute", plot_compute(results["methods"], run / "compute.png")))
    if results.get("pass_at_k"):
        labels = {k: m["label"] for k, m in results.get("methods", {}).items()} | {"base": "base (free text)"}
        figures.append(("pass@k", plot_pass_at_k(results["pass_at_k"], run / "pass_at_k.png", labels)))
    if results.get("r1_zero_format_curve"):
        metrics = read_log(r1_zero_log) if r1_zero_log.is_file() else []
        accuracy = [[m["step"], m["eval/accuracy"]] for m in metrics if "eval/accuracy" in m]
        think = [
            [m["step"], m["completions/mean_think_tokens"]]
            for m in metrics
            if "completions/mean_think_tokens" in m
        ]
        figures.append(
            (
                "Method 2 from the base (R1-Zero)",
                plot_r1_zero(results["r1_zero_format_curve"], think, run / "r1_zero.png", accuracy),
            )
        )
    return figures


def samples_html(samples: list[dict]) -> str:
    """What the model writes at each stage, for a few held-out problems (the demo's stage_samples)."""
    if not samples:
        return ""
    parts = ["<h2>What the model writes at each stage</h2>"]
    for s in samples:
        parts.append(
            f"<p><code>{html.escape(s['question'])}</code> (gold {html.escape(s['answer'])})</p><table>"
        )
        parts += [
            f'<tr><td>{html.escape(name)}</td><td class="reply"><code>{html.escape(text)}</code></td></tr>'
            for name, text in s["replies"].items()
        ]
        parts.append("</table>")
    return "\n".join(parts)


def _study_report(run: Path) -> Path:
    """A `reasonlab study methods` folder: the head-to-head, pass@k, and the R1-Zero run."""
    results = read_json(run / "results.json")
    figures = _methods_figures(results, run, run / "seed0" / "method2" / "metrics.jsonl")
    note = (
        f"Task: {results.get('task', '')}. Every accuracy is greedy, on the same held-out problems; compute "
        f"is {results.get('compute', 'FLOPs')}; pass@k from samples at T = {results.get('pass_temperature')}."
    )
    return _write_page(run, "reasonlab study: Method 1 vs Method 2", note, study_rows(results), figures)


def _grpo_run(folder: Path) -> tuple[list[dict], dict | None]:
    """A GRPO run's metrics log and, when there, its settings."""
    return read_log(folder / "metrics.jsonl"), _settings(folder, "grpo_config.json")


def _settings(folder: Path, older: str) -> dict | None:
    """A run's settings: its run.json's, else (a folder from before run.json held them) file `older`."""
    if (config := run_config(folder)) is not None:
        return config
    return read_json(folder / older) if (folder / older).is_file() else None


def _training_figure(metrics: list[dict], config: dict | None, path: Path) -> list:
    """[("RL training", png)] when the log has training steps, else []."""
    if not any(is_step(m) for m in metrics):
        return []
    return [("RL training", plot_training(metrics, path, config))]


def _rl_report(run: Path) -> Path:
    """A `reasonlab rl` run: its training curves and where it started and ended."""
    metrics, config = _grpo_run(run)
    steps = [m for m in metrics if is_step(m)]
    evals = [m for m in metrics if "eval/accuracy" in m]
    figures = _training_figure(metrics, config, run / "training.png")
    rows = [("Steps run", str(steps[-1]["step"]) if steps else "0")]
    if evals:
        rows += [
            (f"Held-out accuracy at step {evals[0]['step']}", percent(evals[0]["eval/accuracy"])),
            (f"Held-out accuracy at step {evals[-1]['step']}", percent(evals[-1]["eval/accuracy"])),
            (f"Held-out format rate at step {evals[-1]['step']}", percent(evals[-1].get("eval/format_rate"))),
        ]
    if steps:
        rows += [
            ("Sample accuracy, last step", percent(steps[-1].get("reward/accuracy"))),
            ("Sample format rate, last step", percent(steps[-1].get("reward/format_rate"))),
            ("Wall time", f"{steps[-1].get('seconds', 0):.0f} s"),
        ]
    note = (
        f"GRPO: {config.get('prompts_per_step')} prompts × {config.get('group_size')} samples a step at "
        f"T = {config.get('temperature')}, lr {config.get('lr')}. Held-out accuracy is greedy."
    )
    return _write_page(run, "reasonlab rl", note, rows, figures)


def _rationales_report(run: Path) -> Path:
    """A `reasonlab rationales` run (Method 1): accuracy and yield round by round."""
    records = [r for r in read_log(run / "metrics.jsonl") if "round" in r and "accuracy" in r]
    config = _settings(run, "rationales_config.json") or {}
    figures = [("Method 1 rounds", plot_rounds(records, run / "rounds.png"))] if records else []
    rows = [
        (
            f"Round {r['round']}: held-out accuracy (kept {r['kept']} of {r['samples']} samples)",
            percent(r["accuracy"]),
        )
        for r in records
    ]
    if records:
        rows.append(("Wall time", f"{sum(r.get('seconds', 0) for r in records):.0f} s"))
    note = (
        f"Method 1: {config.get('samples')} samples a problem at T = {config.get('temperature')}, those the "
        "verifier accepts kept and fine-tuned on, round after round. Held-out accuracy is greedy."
    )
    return _write_page(run, "reasonlab rationales", note, rows or [("Rounds finished", "0")], figures)


def _step_log(run: Path) -> Path | None:
    """A supervised run's step log: in its folder, or, for a checkpoint `OUT` written before run
    folders, in ``OUT.state`` (the .state folder itself given works too)."""
    here = run.resolve()  # `reasonlab report .`: the folder's name is needed for OUT.state
    for log in (
        run / "metrics.jsonl",
        here.with_name(here.name + ".state") / "metrics.jsonl" if here.name else None,
    ):
        if log is not None and log.is_file():
            return log
    return None


def _loss_report(run: Path) -> Path:
    """A supervised run (`pretrain`, `sft`): its step log as curves."""
    if (log := _step_log(run)) is None:
        raise ValueError(f"{run} has no step log (metrics.jsonl) yet")
    steps = [m for m in read_log(log) if "loss" in m]
    if not steps:
        raise ValueError(f"{log} has no training steps yet")
    last = steps[-1]
    rows = [("Steps run", str(last["step"])), ("Training loss, last step", f"{last['loss']:.4f}")]
    held = [m for m in steps if "eval_loss" in m]
    if held:
        rows.append((f"Held-out loss at step {held[-1]['step']}", f"{held[-1]['eval_loss']:.4f}"))
    if "trigger_acc" in last:
        rows.append(("Trigger accuracy at the end", percent(last["trigger_acc"])))
    if "trigger_steps_acc" in last:
        rows.append(("... with every step right", percent(last["trigger_steps_acc"])))
    rows.append(("Wall time", f"{last.get('seconds', 0):.0f} s"))
    here = run.resolve()
    folder = here.with_name(here.name.removesuffix(".state")) if here.name.endswith(".state") else here
    config = _settings(folder, "train_config.json") or {}
    note = (
        f"Supervised training, loss on completion tokens only; lr {config.get('lr', '?')}, batch "
        f"{config.get('batch_size', '?')}."
        if config
        else "Supervised training, loss on completion tokens only."
    )
    figures = [("Training", plot_loss(steps, run / "training.png"))]
    return _write_page(run, f"reasonlab: {folder.name}", note, rows, figures)


def _compute_report(run: Path) -> Path:
    """A `reasonlab study compute` folder: the fits, accuracy against total compute, iso-accuracy."""
    results = read_json(run / "results.json")
    figures = [
        ("Train-time scaling", plot_scaling(results, run / "scaling.png")),
        (
            "Accuracy against total compute (training + queries x inference)",
            plot_total_compute(results, run / "total_compute.png"),
        ),
    ]
    note = (
        f"Task: {results.get('task', '')}. Compute: {results.get('compute', 'FLOPs')}. Every accuracy on the "
        f"same held-out problems; thinking budgets {results.get('think_budgets')}, votes of "
        f"{results.get('votes')} samples at T = {results.get('vote_temperature')}."
    )
    return _write_page(
        run, "reasonlab study: train-time vs test-time compute", note, compute_rows(results), figures
    )


def _write_page(
    run: Path, title: str, note: str, rows: list[tuple[str, str]], figures, extra: str = ""
) -> Path:
    table = "\n".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    images = "\n".join(
        f'<h2>{html.escape(t)}</h2><img src="{p.name}" alt="{html.escape(t)}">' for t, p in figures
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td {{ padding: 4px 14px; border-bottom: 1px solid #ddd; }}
td:last-child {{ text-align: right; font-weight: 600; }}
img {{ max-width: 100%; }}
td.reply {{ text-align: left; font-weight: normal; white-space: pre-wrap; }}
h2 {{ margin-top: 1.6em; }}
.note {{ color: #666; font-size: 0.9em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="note">{html.escape(note)}</p>
<table>{table}</table>
{images}
{extra}
</body></html>
"""
    out = run / "report.html"
    out.write_text(page)
    return out


REPORTS = {
    "demo": _demo_report,
    "study": _study_report,
    "study compute": _compute_report,
    "rl": _rl_report,
    "rationales": _rationales_report,  # by run.json's command
    "pretrain": _loss_report,
    "sft": _loss_report,
}
