"""The compute study's analysis: pure functions of its measured points (no torch, no trainer), so
the report and the console read them too. See `study_compute` for what the points are.

- `power_fit` on a `frontier`: y = a·x^(−α) by least squares in log-log, α with a 95% t-interval;
- `returns`: accuracy gained per 10× training compute along a frontier;
- `families`, `cheapest`, `iso_accuracy`: every configuration (a checkpoint and a way of answering)
  as direct or thinking, and the cheapest of each to a target accuracy at Q answered queries.
"""

from __future__ import annotations

import math

QUERY_SCALES = (0.01, 1.0, 100.0)  # the Q reported: --queries times these
TARGETS = (0.3, 0.5, 0.7, 0.9)  # iso-accuracy targets (fixed before any run)


def frontier(points: list[tuple[float, float]], lower: bool = True) -> list[tuple[float, float]]:
    """The points (x, y) with a better y (lower, or higher with `lower=False`) than every point of
    smaller x: the best reached at or below each x."""
    out: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not out or (y < out[-1][1] if lower else y > out[-1][1]):
            out.append((x, y))
    return out


def power_fit(points: list[tuple[float, float]]) -> dict:
    """y = a·x^(−α) by least squares in log-log: α, its 95% t-interval (n − 2 degrees of freedom),
    a, R², the points used. Needs 3 points with positive values."""
    from scipy import stats

    pts = [(x, y) for x, y in points if x > 0 and y > 0]
    if len(pts) < 3 or len({x for x, _ in pts}) < 2:
        return {
            "exponent": None,
            "ci": None,
            "n": len(pts),
            "points": pts,
            "why": "fewer than 3 points on the frontier",
        }
    fit = stats.linregress([math.log(x) for x, _ in pts], [math.log(y) for _, y in pts])
    half = float(stats.t.ppf(0.975, len(pts) - 2) * fit.stderr)
    return {
        "exponent": -fit.slope,
        "ci": [-fit.slope - half, -fit.slope + half],
        "coef": math.exp(fit.intercept),
        "r2": fit.rvalue**2,
        "n": len(pts),
        "points": pts,
    }


def families(points: list[dict], difficulty: str | None = None) -> list[dict]:
    """Every configuration (a checkpoint and a way of answering) as {family, label, acc, train,
    inference}; `difficulty` reads its accuracy on those problems only."""
    out = []
    for p in points:

        def acc(r):
            return r["acc"] if difficulty is None else r["by_difficulty"].get(difficulty)

        name = f"{human(p['n_params'])} params, {human(p['tokens'])} tokens"
        rows = [("direct", f"{name}, direct", p["direct"])]
        rows += [
            (
                "thinking",
                f"{name}, thinking ≤ {t['budget']}" if t["budget"] is not None else f"{name}, thinking",
                t,
            )
            for t in p["think"]
        ]
        rows += [("thinking", f"{name}, thinking, vote of {v['k']}", v) for v in p["vote"] if v["k"] > 1]
        out += [
            {"family": fam, "label": label, "acc": acc(r), "train": p["train_flops"], "inference": r["flops"]}
            for fam, label, r in rows
            if acc(r) is not None
        ]
    return out


def cheapest(configs: list[dict], target: float, queries: float) -> dict | None:
    """The configuration reaching `target` at the least total compute for `queries` answers (its
    ``total`` added), or None when none reaches it."""
    ok = [c for c in configs if c["acc"] >= target - 1e-9]
    if not ok:
        return None
    best = min(ok, key=lambda c: c["train"] + queries * c["inference"])
    return {**best, "total": best["train"] + queries * best["inference"]}


def iso_accuracy(configs: list[dict], queries: float, targets=TARGETS) -> list[dict]:
    """Per target: the cheapest configuration of each family at `queries` answered, the winner and
    the ratio of the other family's cost to it (None where only one family reaches the target)."""
    rows = []
    for target in targets:
        best = {
            fam: cheapest([c for c in configs if c["family"] == fam], target, queries)
            for fam in ("direct", "thinking")
        }
        reached = [fam for fam, c in best.items() if c]
        winner = min(reached, key=lambda f: best[f]["total"]) if reached else None
        other = next((f for f in reached if f != winner), None)
        rows.append(
            {
                "target": target,
                "queries": queries,
                "direct": best["direct"],
                "thinking": best["thinking"],
                "winner": winner,
                "ratio": best[other]["total"] / best[winner]["total"] if other else None,
            }
        )
    return rows


def returns(points: list[tuple[float, float]]) -> list[dict]:
    """Accuracy gained per 10× training compute between successive frontier points (x = FLOPs,
    y = accuracy): where the gains shrink, returns diminish."""
    f = frontier(points, lower=False)
    return [
        {
            "from": a[0],
            "to": b[0],
            "acc_from": a[1],
            "acc_to": b[1],
            "gain_per_decade": (b[1] - a[1]) / math.log10(b[0] / a[0]),
        }
        for a, b in zip(f, f[1:])
    ]


def analyse(points: list[dict], losses: list[list[float]], n_held_out: int, queries: int) -> dict:
    """The fits, the diminishing returns and the iso-accuracy tables from the measured points."""
    floor = 0.5 / n_held_out  # an error rate of 0 is put at half a problem (log scale)
    direct = [(p["train_flops"], p["direct"]["acc"]) for p in points]
    thinking = [(p["train_flops"], next(t["acc"] for t in p["think"] if t["budget"] is None)) for p in points]
    fit = {
        "loss": power_fit(frontier([(c, loss) for c, loss, *_ in losses])),
        "direct_error": power_fit(frontier([(c, max(1 - a, floor)) for c, a in direct])),
        "thinking_error": power_fit(frontier([(c, max(1 - a, floor)) for c, a in thinking])),
    }
    difficulties = sorted({d for p in points for d in p["direct"]["by_difficulty"]}, key=int)
    iso = {
        "overall": {str(q): iso_accuracy(families(points), q) for q in query_counts(queries)},
        "by_difficulty": {d: iso_accuracy(families(points, d), queries) for d in difficulties},
    }
    return {
        "fit": fit,
        "returns": {"direct": returns(direct), "thinking": returns(thinking)},
        "iso_accuracy": iso,
    }


def query_counts(queries: int) -> list[int]:
    return [max(1, round(queries * s)) for s in QUERY_SCALES]


def human(n: float) -> str:
    """17k, 1.2M, 3.4G, 2.1T."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"
