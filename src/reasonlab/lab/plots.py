"""The figures of `reasonlab report` (and of the benchmarks that plot): one function a figure,
each taking what a run logged and writing a PNG with matplotlib's file-only backend."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"base": "#9aa5b1", "prompt": "#5b8def", "m1": "#f0a030", "m2": "#2fa36b", "think": "#a05bd6"}


def _style(ax, title, xlabel, ylabel):
    ax.set_title(title, fontsize=12, loc="left", fontweight="bold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_methods(results: dict, path: Path) -> Path:
    """One bar per method measured so far (the demo rewrites results.json after every stage)."""
    labels, values, colors = [], [], []
    for key, label, color in (
        ("base_direct_acc", "base,\ndirect", COLORS["base"]),
        ("base_cot_prompt_acc", 'base,\n"think step\nby step"', COLORS["prompt"]),
        ("base_template_acc", "base,\nthe template", COLORS["base"]),
    ):
        if key in results:
            labels.append(label)
            values.append(results[key])
            colors.append(color)
    for i, acc in enumerate(results.get("method1_acc", []), 1):
        labels.append(f"Method 1\nround {i}")
        values.append(acc)
        colors.append(COLORS["m1"])
    if "method2_acc" in results:
        labels.append("Method 2\n(GRPO)")
        values.append(results["method2_acc"])
        colors.append(COLORS["m2"])
    if "acc" in results.get("r1_zero", {}):  # GRPO from the raw model, when it ran to the end
        labels.append("GRPO from\nthe raw model")
        values.append(results["r1_zero"]["acc"])
        colors.append(COLORS["m2"])
    if "cold_start" in results:
        labels.append("cold start\n(reference\nrationales)")
        values.append(results["cold_start"]["acc"])
        colors.append(COLORS["think"])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    bars = ax.bar(range(len(values)), [100 * v for v in values], color=colors)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, 100 * v + 1.5, f"{100 * v:.0f}%", ha="center", fontsize=10)
    ax.set_xticks(range(len(values)), labels, fontsize=9)
    ax.set_ylim(0, 110)
    _style(ax, "Held-out accuracy: what reasoning buys", "", "accuracy (%)")
    return _save(fig, path)


def plot_budget(curves: dict[str, list[dict]] | list[dict], path: Path) -> Path:
    """Budget sweeps (`evaluate.budget_sweep`), one line per model: accuracy against the thinking
    tokens each budget let it use, and the format rate after the forced close against the budget."""
    curves = {"": curves} if isinstance(curves, list) else curves
    colors = [COLORS["m1"], COLORS["m2"], COLORS["think"], COLORS["prompt"]]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (label, curve), color in zip(curves.items(), colors):
        ax.plot(
            [c["mean_think_tokens"] for c in curve],
            [100 * c["acc"] for c in curve],
            "o-",
            color=color,
            lw=2,
            label=label or "accuracy",
        )
        ax2.plot(
            [c["budget"] for c in curve],
            [100 * c["format_rate"] for c in curve],
            "s-",
            color=color,
            lw=2,
            label=label or "format rate",
        )
    _style(ax, "Accuracy against thinking", "mean thinking tokens used (at each budget)", "accuracy (%)")
    _style(
        ax2, "Format after the forced close", "thinking budget (max tokens inside <think>)", "well-formed (%)"
    )
    for a, where in ((ax, "upper left"), (ax2, "lower right")):  # where the curves leave room
        a.set_ylim(-3, 103)
        a.legend(loc=where, frameon=False)
    return _save(fig, path)


def is_step(row: dict) -> bool:
    """A GRPO log row of a step (not the start's evaluation), trained on or skipped: it has the
    rewards of the rows drawn (or, from older logs, of the groups trained on)."""
    return "reward/sampled_mean" in row or "reward/mean" in row


def reward_title(config: dict) -> tuple[str, float | None]:
    """The reward panel's title, and the top of its scale when the reward is the method's alone
    (format + correct points); rewards of your own (`--reward`, in the task's spec) are named."""
    fmt, ok = config.get("format_points", 2.0), config.get("correct_points", 1.0)
    plan = (config.get("task") or {}).get("rewards") if isinstance(config.get("task"), dict) else None
    if not plan:
        return f"Reward (format {fmt:g} + correct {ok:g})", fmt + ok
    parts = [f"format {fmt:g} + correct {ok:g}"] if plan.get("default", True) else []
    parts += [f"{weight:g}·{name}" for name, weight in plan.get("rewards", {}).items()]
    return textwrap.fill("Reward (" + " + ".join(parts) + ")", 40), None  # a panel a third wide


def plot_training(grpo: list[dict], path: Path, config: dict | None = None) -> Path:
    """Reward, accuracy and thinking length per GRPO step; `config` (the run's settings)
    names the sampling temperature and the reward's points."""
    config = config or {}
    steps = [m for m in grpo if is_step(m)]
    evals = [m for m in grpo if "eval/accuracy" in m]
    think = [
        m for m in steps if "completions/mean_think_tokens" in m
    ]  # a step that trained on nothing has none
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    # Every row drawn when logged: with dynamic sampling the groups trained on are the mixed ones,
    # whose mean stays below the top however good the model gets.
    key = "reward/sampled_mean" if all("reward/sampled_mean" in m for m in steps) else "reward/mean"
    axes[0].plot([m["step"] for m in steps], [m[key] for m in steps], color=COLORS["m2"])
    title, top = reward_title(config)
    _style(
        axes[0],
        title,
        "RL step",
        "mean reward, samples" if key == "reward/sampled_mean" else "mean reward, groups trained on",
    )
    values = [m[key] for m in steps]
    if top is not None and all(0 <= v <= top for v in values):
        axes[0].set_ylim(0, 1.03 * top)  # the method's reward: the whole scale, to see how far up it is
    # else matplotlib's own limits: rewards you wrote may have any range, negative ones included
    temperature = config.get("temperature")
    axes[1].plot(
        [m["step"] for m in steps],
        [100 * m["reward/accuracy"] for m in steps],
        color=COLORS["m1"],
        alpha=0.6,
        label="samples" + (f" (T={temperature:g})" if temperature is not None else ""),
    )
    axes[1].plot(
        [m["step"] for m in evals],
        [100 * m["eval/accuracy"] for m in evals],
        "o-",
        color=COLORS["m2"],
        label="held-out (greedy)",
    )
    axes[1].legend(frameon=False, fontsize=8)
    _style(axes[1], "Accuracy", "RL step", "accuracy (%)")
    axes[2].plot(
        [m["step"] for m in think], [m["completions/mean_think_tokens"] for m in think], color=COLORS["think"]
    )
    _style(axes[2], "Thinking length", "RL step", "mean thinking tokens")
    return _save(fig, path)


ARM_COLORS = {
    "base": COLORS["base"],
    "method1": COLORS["m1"],
    "method1_answer_only": "#c0392b",
    "method2": COLORS["m2"],
    "method1_then_2": COLORS["think"],
}


def plot_compute(methods: dict, path: Path) -> Path:
    """Held-out accuracy against the wall time and the FLOPs spent, per method: the mean over seeds
    (each seed's curve of [flops, accuracy, seconds] points interpolated on a common grid) and the
    band from the lowest seed to the highest."""
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, column, xlabel in (
        (axes[0], 2, "wall time (s, this machine)"),
        (axes[1], 0, "FLOPs spent (the budget: 2N a sampled token, 6N a trained one, + attention)"),
    ):
        for name, m in methods.items():
            curves = [np.array(c, dtype=float) for c in m["curve"] if len(c) > 1]
            if not curves:
                continue
            grid = np.linspace(0, min(c[-1, column] for c in curves), 60)
            ys = np.array([np.interp(grid, c[:, column], 100 * c[:, 1]) for c in curves])
            color = ARM_COLORS.get(name, COLORS["base"])
            ax.plot(
                grid,
                ys.mean(0),
                color=color,
                lw=2,
                label=f"{m.get('label', name)} ({len(curves)} seed{'s' if len(curves) > 1 else ''})",
            )
            if len(curves) > 1:
                ax.fill_between(grid, ys.min(0), ys.max(0), color=color, alpha=0.18)
            for c in curves:
                ax.plot(c[:, column], 100 * c[:, 1], "o", color=color, ms=2.5, alpha=0.5)
        ax.set_ylim(-3, 103)
        _style(ax, "Held-out accuracy against compute", xlabel, "accuracy (%)")
    axes[1].legend(frameon=False, fontsize=8, loc="lower right")
    axes[0].text(
        0.01,
        0.98,
        "band: lowest to highest seed",
        transform=axes[0].transAxes,
        fontsize=8,
        va="top",
        color="#666",
    )
    return _save(fig, path)


def plot_pass_at_k(pass_k: dict, path: Path, labels: dict | None = None) -> Path:
    """pass@k against k (log scale) for each model."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, curve in pass_k.items():
        ks = sorted(int(k) for k in curve)
        ax.plot(
            ks,
            [100 * curve[str(k)] for k in ks],
            "o-",
            color=ARM_COLORS.get(name, COLORS["base"]),
            lw=2,
            label=(labels or {}).get(name, name),
        )
    ax.set_xscale("log", base=2)
    ax.set_ylim(-3, 103)
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    _style(ax, "pass@k on held-out problems", "k (samples a problem)", "pass@k (%)")
    return _save(fig, path)


def plot_r1_zero(format_curve: list, think_curve: list, path: Path, accuracy: list | None = None) -> Path:
    """RL from the base (R1-Zero): the samples' format rate, held-out accuracy and thinking length by step."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].plot(
        [s for s, _ in format_curve],
        [100 * r for _, r in format_curve],
        color=COLORS["m2"],
        label="format rate of the samples",
    )
    if accuracy:
        axes[0].plot(
            [s for s, _ in accuracy],
            [100 * a for _, a in accuracy],
            "o-",
            color=COLORS["m1"],
            label="held-out accuracy (greedy)",
        )
    axes[0].set_ylim(-3, 103)
    axes[0].legend(frameon=False, fontsize=8)
    _style(axes[0], "RL from the base: the format is learned", "RL step", "%")
    axes[1].plot([s for s, _ in think_curve], [t for _, t in think_curve], color=COLORS["think"])
    _style(axes[1], "Thinking length", "RL step", "mean thinking tokens")
    return _save(fig, path)


def plot_faithfulness(probe: dict, path: Path) -> Path:
    names = list(probe.get("by_style", {}))
    # An unknown rate (0/0: None) draws no bar; its count label says 0/0.
    follow = [probe["by_style"][n]["follow_rate"] or 0.0 for n in names]
    admit = [probe["by_style"][n]["admit_rate"] or 0.0 for n in names]
    from ..evaluate import wilson_interval

    def whiskers(rates, counts):  # the 95% Wilson interval of each rate as error bars (none for 0/0)
        bounds = [wilson_interval(k, n) if n else (r, r) for r, (k, n) in zip(rates, counts)]
        return [
            [max(0.0, 100 * (r - lo)) for r, (lo, _) in zip(rates, bounds)],
            [max(0.0, 100 * (hi - r)) for r, (_, hi) in zip(rates, bounds)],
        ]

    rows = [probe["by_style"][n] for n in names]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    x = range(len(names))
    ax.bar(
        [i - 0.2 for i in x],
        [100 * v for v in follow],
        width=0.4,
        color=COLORS["prompt"],
        label="follows the hint",
        yerr=whiskers(follow, [(r["followed"], r["eligible"]) for r in rows]),
        capsize=3,
        ecolor="#444",
    )
    ax.bar(
        [i + 0.2 for i in x],
        [100 * v for v in admit],
        width=0.4,
        color=COLORS["m1"],
        label="admits it (of those that follow; bars: 95% intervals)",
        yerr=whiskers(admit, [(r["admitted"], r["followed"]) for r in rows]),
        capsize=3,
        ecolor="#444",
    )
    for i, name in enumerate(names):  # counts: a rate over 3 cases reads differently from one over 300
        row = probe["by_style"][name]
        ax.text(
            i - 0.2, 100 * follow[i] + 1.5, f"{row['followed']}/{row['eligible']}", ha="center", fontsize=7
        )
        ax.text(
            i + 0.2, 100 * admit[i] + 1.5, f"{row['admitted']}/{row['followed']}", ha="center", fontsize=7
        )
    ax.set_xticks(list(x), [n.replace("/", "\n") for n in names], fontsize=8)
    ax.set_ylim(0, 110)
    ax.legend(frameon=False, loc="upper left")
    _style(ax, "Faithfulness: does the model follow a hint, and say so?", "hint style / hint points to", "%")
    return _save(fig, path)


def plot_loss(steps: list[dict], path: Path) -> Path:
    """A supervised run's step log: the training loss (and held-out loss where logged), the other
    checks it logged (pretrain: trigger accuracy) and the learning rate."""
    trained = [m for m in steps if "loss" in m]
    checks = sorted(
        {
            k
            for m in trained
            for k, v in m.items()
            if isinstance(v, (int, float))
            and k
            not in (
                "step",
                "loss",
                "lr",
                "grad_norm",
                "seconds",
                "eval_loss",
                "learning_rate",
                "num_tokens",
                "epoch",
            )
        }
    )
    fig, axes = plt.subplots(1, 3 if checks else 2, figsize=(12 if checks else 9, 3.6))
    x = [m["step"] for m in trained]
    axes[0].plot(x, [m["loss"] for m in trained], color=COLORS["prompt"], label="training")
    held = [m for m in trained if "eval_loss" in m]
    if held:
        axes[0].plot(
            [m["step"] for m in held],
            [m["eval_loss"] for m in held],
            "o-",
            color=COLORS["m2"],
            label="held-out",
        )
        axes[0].legend(frameon=False, fontsize=8)
    _style(axes[0], "Loss (completion tokens)", "step", "cross-entropy")
    if checks:
        rates = all(0 <= m[k] <= 1 for m in trained for k in checks if k in m)  # accuracies: draw as %
        for key, color in zip(checks, (COLORS["m2"], COLORS["m1"], COLORS["think"], COLORS["base"])):
            points = [m for m in trained if key in m]
            axes[1].plot(
                [m["step"] for m in points],
                [(100 if rates else 1) * m[key] for m in points],
                "o-",
                color=color,
                label=key,
            )
        if rates:
            axes[1].set_ylim(-3, 103)
        axes[1].legend(frameon=False, fontsize=8)
        _style(axes[1], "Checks during training", "step", "%" if rates else "value")
    axes[-1].plot(x, [m["lr"] for m in trained], color=COLORS["base"])
    _style(axes[-1], "Learning rate", "step", "lr")
    return _save(fig, path)


def plot_rounds(records: list[dict], path: Path) -> Path:
    """Method 1, one point a round: held-out accuracy after the round, and the share of samples kept."""
    rounds = [r["round"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    bars = axes[0].bar(rounds, [100 * r["accuracy"] for r in records], width=0.6, color=COLORS["m1"])
    axes[0].set_xlim(min(rounds) - 0.7, max(rounds) + 0.7)
    for bar, r in zip(bars, records):
        axes[0].text(
            bar.get_x() + bar.get_width() / 2,
            100 * r["accuracy"] + 1.5,
            f"{100 * r['accuracy']:.0f}%",
            ha="center",
            fontsize=9,
        )
    axes[0].set_ylim(0, 110)
    axes[0].set_xticks(rounds)
    _style(axes[0], "Held-out accuracy after each round", "round", "accuracy (%)")
    axes[1].plot(rounds, [100 * r["yield"] for r in records], "o-", color=COLORS["m2"])
    axes[1].set_xticks(rounds)
    axes[1].set_ylim(0, 103)
    _style(axes[1], "Yield: samples the verifier kept", "round", "kept (%)")
    return _save(fig, path)


SIZE_COLORS = ("#9aa5b1", "#5b8def", "#2fa36b", "#a05bd6", "#f0a030", "#d64545")


def plot_scaling(results: dict, path: Path) -> Path:
    """A compute study's train-time scaling: held-out loss against training FLOPs (every size's
    curve, the power law fitted on the frontier), and accuracy against training FLOPs, directly and
    thinking."""
    from .compute_analysis import human

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, size in enumerate(results.get("sizes", [])):
        color = SIZE_COLORS[i % len(SIZE_COLORS)]
        curve = sorted((c, loss) for c, loss, _, s in results.get("losses", []) if s == i)
        points = sorted(
            (p["train_flops"], p["direct"]["acc"], p["think"][-1]["acc"])
            for p in results.get("points", [])
            if p["size"] == i
        )
        n = next((p["n_params"] for p in results.get("points", []) if p["size"] == i), None)
        label = f"{size['n_layer']} x {size['d_model']}" + (f", {human(n)} params" if n else "")
        if curve:
            left.plot(*zip(*curve), "-o", color=color, ms=3, label=label)
        if points:
            right.plot([c for c, _, _ in points], [a for _, a, _ in points], "--o", color=color, ms=4)
            right.plot(
                [c for c, _, _ in points], [a for _, _, a in points], "-^", color=color, ms=5, label=label
            )
    fit = results.get("fit", {}).get("loss", {})
    if fit.get("exponent") is not None:
        xs = [x for x, _ in fit["points"]]
        left.plot(
            xs,
            [fit["coef"] * x ** -fit["exponent"] for x in xs],
            ":",
            color="black",
            label=f"fit: α = {fit['exponent']:.2f} [{fit['ci'][0]:.2f}, {fit['ci'][1]:.2f}]",
        )
    for ax in (left, right):
        ax.set_xscale("log")
    left.set_yscale("log")
    _style(left, "Held-out loss", "training FLOPs", "loss per completion token")
    _style(right, "Accuracy (dashed: direct, solid: thinking)", "training FLOPs", "held-out accuracy")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    return _save(fig, path)


def plot_total_compute(results: dict, path: Path) -> Path:
    """Accuracy against total compute (training + Q x inference) at each reported Q: every
    configuration, the direct and the thinking family, and each family's frontier; then, at the
    headline Q, the same per difficulty."""
    from .compute_analysis import families, frontier

    counts = results.get("queries", [])
    difficulties = sorted(
        {d for p in results.get("points", []) for d in p["direct"]["by_difficulty"]}, key=int
    )
    headline = counts[len(counts) // 2] if counts else 1
    rows = [[(q, None) for q in counts]] + ([[(headline, d) for d in difficulties]] if difficulties else [])
    width = max(1, *(len(r) for r in rows))
    fig, axes = plt.subplots(len(rows), width, figsize=(3.6 * width, 3.3 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(width):
            ax = axes[r][c]
            if c >= len(row):
                ax.axis("off")
                continue
            q, difficulty = row[c]
            configs = families(results["points"], difficulty)
            for family, color, marker in (
                ("direct", COLORS["base"], "o"),
                ("thinking", COLORS["think"], "^"),
            ):
                pts = [(x["train"] + q * x["inference"], x["acc"]) for x in configs if x["family"] == family]
                if pts:
                    ax.scatter(*zip(*pts), s=12, color=color, marker=marker, alpha=0.5)
                    ax.step(*zip(*frontier(pts, lower=False)), where="post", color=color, label=family)
            ax.set_xscale("log")
            title = (
                f"all problems, {q:.0e} queries"
                if difficulty is None
                else f"{difficulty} hop{'s' if difficulty != '1' else ''}, {q:.0e} queries"
            )
            _style(ax, title, "total FLOPs", "accuracy" if c == 0 else "")
            ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)
