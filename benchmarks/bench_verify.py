"""`math` verification throughput: verdicts per second, one at a time and as one batch.

Sets (predicted, gold), half right and half wrong, seeded:
- integers: ``417`` against ``417`` or ``418`` (what GSM8K-style answers are);
- fractions: ``\\frac{a}{b}`` against ``a/b`` or ``(a+1)/b`` (LaTeX, always through math-verify);
- expressions: ``x^2 + ax`` against ``ax + x^2`` or ``ax - x^2`` (symbolic, through math-verify).
Each is checked by `task.verify` one pair at a time and by one `task.verify_batch` call (the path
GRPO's rewards take), with the default worker pool (``$REASONLAB_VERIFY_WORKERS``, else up to 2), and
integers once more forced through math-verify (the in-process shortcut off) to show what it saves.
Workers are started before timing. Prints a table, then one JSON line.

Run: python benchmarks/bench_verify.py [--n 400] [--repeats 3]
"""

import argparse
import json
import random
import statistics
import time

from reasonlab.tasks import get_task, mathverify


def pairs(kind: str, n: int, rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        wrong = i % 2
        if kind == "integers":
            a = rng.randint(0, 10_000)
            out.append((str(a), str(a + wrong)))
        elif kind == "fractions":
            a, b = rng.randint(1, 999), rng.randint(2, 999)
            out.append((f"\\frac{{{a}}}{{{b}}}", f"{a + wrong}/{b}"))
        else:
            a = rng.randint(2, 99)
            out.append((f"x^2 + {a}x", f"{a}x {'-' if wrong else '+'} x^2"))
    return out


def rate(fn, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    task = get_task("math")
    pool = mathverify._POOL
    pool.check([(f"${i}x$", f"${i}x$") for i in range(2 * mathverify.BATCH_PER_WORKER * len(pool.workers))])
    rng = random.Random(0)
    results = {"workers": len(pool.workers), "n": args.n}
    for kind in ("integers", "fractions", "expressions"):
        data = pairs(kind, args.n, rng)
        predicted, golds = [p for p, _ in data], [g for _, g in data]
        verdicts = task.verify_batch(predicted, golds)
        assert verdicts == [i % 2 == 0 for i in range(args.n)], f"{kind}: wrong verdicts"
        one = rate(lambda data=data: [task.verify(p, g) for p, g in data], args.n, args.repeats)
        batch = rate(
            lambda predicted=predicted, golds=golds: task.verify_batch(predicted, golds), args.n, args.repeats
        )
        results[kind] = {"one_at_a_time_per_s": round(one), "batch_per_s": round(batch)}
    forced = [(mathverify.prepare(p), mathverify.prepare(g)) for p, g in pairs("integers", args.n, rng)]
    results["integers_through_math_verify_batch_per_s"] = round(
        rate(lambda: pool.check(forced), args.n, args.repeats)
    )
    print(f"{'set':12s} {'one at a time /s':>18s} {'verify_batch /s':>16s}")
    for kind in ("integers", "fractions", "expressions"):
        print(f"{kind:12s} {results[kind]['one_at_a_time_per_s']:>18,} {results[kind]['batch_per_s']:>16,}")
    print(
        f"integers through math-verify (shortcut off), batch: "
        f"{results['integers_through_math_verify_batch_per_s']:,}/s with {len(pool.workers)} workers"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
