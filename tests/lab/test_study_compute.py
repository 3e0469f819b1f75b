"""`reasonlab study compute`: the frontier, the power-law fit and its interval, iso-accuracy, and the
quick study end to end (ledger sums, resume, refusals)."""

import json
import math
import random

import pytest

from reasonlab.cli import main
from reasonlab.lab.compute_analysis import (
    cheapest,
    families,
    frontier,
    iso_accuracy,
    power_fit,
    query_counts,
    returns,
)
from reasonlab.lab.study_compute import VOTES


def test_frontier_keeps_the_best_reached_at_or_below_each_compute():
    points = [(4.0, 0.5), (1.0, 1.0), (2.0, 1.2), (3.0, 0.7), (5.0, 0.6)]
    assert frontier(points) == [(1.0, 1.0), (3.0, 0.7), (4.0, 0.5)]
    assert frontier(points, lower=False) == [(1.0, 1.0), (2.0, 1.2)]


def test_power_fit_recovers_an_exponent_and_its_interval_covers_it():
    exact = power_fit([(x, 3.0 * x**-0.5) for x in (1e3, 1e4, 1e5, 1e6)])
    assert exact["exponent"] == pytest.approx(0.5) and exact["coef"] == pytest.approx(3.0)
    assert exact["ci"][0] == pytest.approx(0.5) and exact["ci"][1] == pytest.approx(0.5)
    rng = random.Random(0)
    covered = 0
    for _ in range(200):  # a 95% interval covers the true exponent about 95% of the time
        noisy = power_fit(
            [(x, 2.0 * x**-0.3 * math.exp(rng.gauss(0, 0.1))) for x in (1, 3, 10, 30, 100, 300)]
        )
        covered += noisy["ci"][0] <= 0.3 <= noisy["ci"][1]
    assert 180 <= covered <= 199
    few = power_fit([(1.0, 1.0), (2.0, 0.5)])
    assert few["exponent"] is None and "fewer than 3" in few["why"]


def point(size, n, tokens, train, direct, think, votes=()):
    """A measured checkpoint as the study records it (accuracies per difficulty "1")."""
    answer = lambda acc, flops, **kw: {"acc": acc, "flops": flops, "by_difficulty": {"1": acc}, **kw}  # noqa: E731
    return {
        "size": size,
        "n_params": n,
        "tokens": tokens,
        "train_flops": train,
        "direct": answer(*direct),
        "think": [answer(*think, budget=None)],
        "vote": [answer(a, f, k=k) for k, a, f in votes],
    }


def test_iso_accuracy_finds_the_cheapest_way_and_flips_with_the_queries():
    small = point(
        0, 1000, 1e4, train=1e9, direct=(0.2, 1e5), think=(0.8, 1e6), votes=[(1, 0.7, 1e6), (4, 0.9, 4e6)]
    )
    big = point(1, 10000, 1e5, train=1e11, direct=(0.85, 1e6), think=(0.95, 1e7))
    configs = families([small, big])
    assert {c["family"] for c in configs} == {"direct", "thinking"}
    assert (
        len(configs) == 2 + 2 + 1
    )  # direct, thinking (uncapped), the vote of 4 (a vote of 1 is not a family member)
    # at 1000 queries, 80%: the small model thinking costs 1e9 + 1e9; the big one answering directly
    # 1e11 + 1e9
    few = iso_accuracy(configs, 1000, targets=(0.8, 0.99))
    assert few[0]["winner"] == "thinking" and few[0]["thinking"]["total"] == pytest.approx(2e9)
    assert few[0]["ratio"] == pytest.approx((1e11 + 1e9) / 2e9)
    assert few[1]["winner"] is None and few[1]["ratio"] is None
    # at 1e6 queries inference dominates: direct 1e11 + 1e12, thinking 1e9 + 1e12: still thinking, by less
    many = iso_accuracy(configs, 10**6, targets=(0.8,))
    assert many[0]["ratio"] == pytest.approx((1e11 + 1e12) / (1e9 + 1e12))
    # 90%: only the small model's vote of 4 and the big model's thinking reach it
    assert cheapest([c for c in configs if c["family"] == "thinking"], 0.9, 1000)["label"].endswith(
        "vote of 4"
    )
    assert iso_accuracy(configs, 1000, targets=(0.9,))[0]["ratio"] is None  # direct never reaches 90%
    assert query_counts(100_000) == [1000, 100_000, 10_000_000]


def test_returns_are_the_accuracy_gained_per_ten_times_the_compute():
    gains = returns([(1e9, 0.1), (1e10, 0.5), (1e12, 0.7), (1e11, 0.4)])
    assert [round(g["gain_per_decade"], 6) for g in gains] == [0.4, 0.1]


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("compute") / "study"
    assert main(["study", "compute", "--quick", "--held-out", "20", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_study_ledger_sums_and_fits(quick_study):
    out, results = quick_study
    points, sizes = results["points"], results["sizes"]
    assert len(sizes) == 4 and len(points) == 12
    assert max(p["n_params"] for p in points) >= 30 * min(p["n_params"] for p in points)
    for i, size in enumerate(sizes):
        mine = [p for p in points if p["size"] == i]
        assert [p["steps"] for p in mine] == [size["steps"] // 9, size["steps"] // 3, size["steps"]]
        assert mine[0]["tokens"] < mine[1]["tokens"] < mine[2]["tokens"]
        # the ledger's stage is the run's FLOPs: its last checkpoint's, counted as 6N a token plus attention
        assert results["ledger"][f"size {i}: training"]["flops"] == mine[-1]["train_flops"]
        assert mine[-1]["train_flops"] > 6 * mine[-1]["n_params"] * mine[-1]["tokens"]
        for p in mine:
            votes = {v["k"]: v for v in p["vote"]}
            assert sorted(votes) == list(VOTES)
            for k in VOTES:  # k votes cost k answers
                assert votes[k]["flops"] == pytest.approx(k * votes[1]["flops"])
            assert p["direct"]["flops"] > 2 * p["n_params"]  # at least a prompt token and an answer token
    assert sum(v["seconds"] for v in results["ledger"].values()) <= results["seconds"]
    assert len([row for row in results["losses"]]) == 4 * 9
    assert results["fit"]["loss"]["exponent"] is not None and len(results["fit"]["loss"]["ci"]) == 2
    assert set(results["iso_accuracy"]["overall"]) == {str(q) for q in results["queries"]}
    assert (
        (out / "report.html").is_file()
        and (out / "total_compute.png").is_file()
        and (out / "scaling.png").is_file()
    )


def test_quick_study_resumes_and_refuses(quick_study, tmp_path, capsys):
    out, results = quick_study
    capsys.readouterr()
    # nothing left to train: the measured points kept, the analysis redone for other --queries
    assert (
        main(
            [
                "study",
                "compute",
                "--quick",
                "--held-out",
                "20",
                "--out",
                str(out),
                "--resume",
                "--queries",
                "1000",
            ]
        )
        == 0
    )
    again = json.loads((out / "results.json").read_text())
    assert again["points"] == results["points"] and "done in an earlier run" in capsys.readouterr().out
    assert again["queries"] == [10, 1000, 100_000] and set(again["iso_accuracy"]["overall"]) == {
        "10",
        "1000",
        "100000",
    }
    assert main(["study", "compute", "--quick", "--held-out", "30", "--out", str(out), "--resume"]) == 2
    assert "held_out=20" in capsys.readouterr().err
    assert main(["study", "compute", "--quick", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert main(["study", "compute", "--held-out", "3", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
