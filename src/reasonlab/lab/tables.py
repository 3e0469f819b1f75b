"""The studies' results as (what, value) rows: a table on the terminal (`print_study`,
`print_compute_study`) and in the HTML report (`report.build_report`)."""

from __future__ import annotations

import statistics

from ..console import percent, print_table
from .compute_analysis import human


def study_rows(results: dict) -> list[tuple[str, str]]:
    """A methods study's results as (what, value) rows: per method the held-out accuracy over seeds
    (mean ± standard deviation, and the range) at 1 x C and at each budget, its format rate and the
    compute it spent; the tuning's validation scores, where it tuned."""
    rows = []
    base = results.get("base", {})
    if base:
        rows += [
            (
                "base: asked directly / step by step (free text)",
                f"{percent(base['direct_acc'])} / {percent(base['cot_prompt_acc'])}",
            ),
            (
                "base: template format rate, greedy / sampled at T=1",
                f"{percent(base['template_format_rate'])} / {percent(base['sampled_format_rate'])}",
            ),
        ]
    for m in results.get("methods", {}).values():
        n = len(m["acc"])
        rows.append(
            (
                f"{m['label']} ({n} seed{'s' if n > 1 else ''})",
                f"{100 * m['acc_mean']:.1f} ± {100 * m['acc_std']:.1f}% [{100 * m['acc_min']:.1f}, "
                f"{100 * m['acc_max']:.1f}]",
            )
        )
        if m.get("at_budget"):
            budgets = list(m["at_budget"])
            rows.append(
                (
                    f"  at {' / '.join(budgets)} x C (mean ± sd)",
                    " / ".join(
                        f"{100 * at['acc_mean']:.1f} ± {100 * at['acc_std']:.1f}"
                        for at in m["at_budget"].values()
                    ),
                )
            )
        rows.append(
            (
                "  format rate (lowest seed); FLOPs; wall time",
                f"{percent(min(m['format_rate']))}; {statistics.fmean(m['flops']):.3g}; "
                f"{statistics.fmean(m['seconds']):.0f} s",
            )
        )
    tuning = results.get("tuning")
    if tuning:
        for arm, by in tuning["scores"].items():
            rows.append(
                (
                    f"tuning {arm}: validation at lr x {' / '.join(by)}",
                    " / ".join(f"{100 * v:.1f}" for v in by.values()) + f"; chose x{tuning['chosen'][arm]:g}",
                )
            )
    for name, curve in results.get("pass_at_k", {}).items():
        ks = list(curve)
        rows.append((f"pass@k {name} (k = {', '.join(ks)})", " / ".join(f"{100 * curve[k]:.0f}" for k in ks)))
    rows.append(("wall time", f"{results.get('seconds', 0):.0f} s"))
    return rows


def print_study(results: dict) -> None:
    """A methods study's results table, on the terminal."""
    print_table(
        f"reasonlab study methods: {results.get('task', '')} (held-out, greedy)",
        "result",
        study_rows(results),
    )


def compute_rows(results: dict) -> list[tuple[str, str]]:
    """A compute study's summary: the fits, each size's best accuracies, and the iso-accuracy table."""
    rows = []
    for key, label in (
        ("loss", "held-out loss"),
        ("direct_error", "error answering directly"),
        ("thinking_error", "error thinking"),
    ):
        fit = results.get("fit", {}).get(key, {})
        value = (
            f"α = {fit['exponent']:.3f} [{fit['ci'][0]:.3f}, {fit['ci'][1]:.3f}] on {fit['n']} points"
            if fit.get("exponent") is not None
            else fit.get("why", "—")
        )
        rows.append((f"power law of {label} against training FLOPs", value))
    for p in results.get("points", []):
        think = next(t for t in p["think"] if t["budget"] is None)
        vote = p["vote"][-1]
        rows.append(
            (
                f"{human(p['n_params'])} params, {human(p['tokens'])} tokens ({human(p['train_flops'])}FLOP)",
                f"direct {percent(p['direct']['acc'])} · thinking {percent(think['acc'])} · "
                f"vote of {vote['k']} {percent(vote['acc'])}",
            )
        )
    for q, table in results.get("iso_accuracy", {}).get("overall", {}).items():
        for row in table:
            rows.append((f"reach {row['target']:.0%} at {human(float(q))} queries", iso_text(row)))
    return rows


def iso_text(row: dict) -> str:
    """One iso-accuracy row: the cheapest configuration, its total FLOPs, and by how much it beats
    the other family."""
    if row["winner"] is None:
        return "not reached"
    best = row[row["winner"]]
    beaten = (
        f", {row['ratio']:.3g}x cheaper than {'thinking' if row['winner'] == 'direct' else 'direct'}"
        if row["ratio"]
        else f" ({'thinking' if row['winner'] == 'direct' else 'direct'}: not reached)"
    )
    return f"{best['label']}: {human(best['total'])}FLOP{beaten}"


def print_compute_study(results: dict) -> None:
    """A compute study's results, on the terminal."""
    print_table(
        f"reasonlab study compute: {results.get('task', '')} (held-out)", "result", compute_rows(results)
    )
