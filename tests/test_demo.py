"""`reasonlab demo --quick`: the whole pipeline runs end to end and writes every result and plot.

It checks that each stage runs and reports, not the accuracies a full run reaches (see
docs/demo.md for those). Run: pytest tests/test_demo.py"""

import json

from reasonlab.cli import main

KEYS = ("base_direct_acc", "base_cot_prompt_acc", "method1_acc", "method2_acc", "method2_format_rate",
        "budget_curve", "faithfulness", "seconds")


def test_quick_demo_writes_results_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for key in KEYS:
        assert key in results, key
    assert len(results["method1_acc"]) == 1
    for value in [results["base_direct_acc"], results["base_cot_prompt_acc"], results["method2_acc"],
                  *results["method1_acc"]]:
        assert 0.0 <= value <= 1.0
    curve = results["budget_curve"]
    assert [c["budget"] for c in curve] == sorted(c["budget"] for c in curve) and curve[0]["budget"] == 0
    assert all(set(c) >= {"budget", "acc", "mean_think_tokens"} for c in curve)
    # a cap of 0 leaves no thinking at all
    assert curve[0]["mean_think_tokens"] == 0
    assert set(results["faithfulness"]) >= {"hint_follow_rate", "admit_rate"}
    html = (out / "report.html").read_text()
    for png in ("methods.png", "budget.png", "training.png", "faithfulness.png"):
        assert (out / png).stat().st_size > 5000 and png in html
    for folder in ("base", "method1", "method2"):
        assert (out / "checkpoints" / folder / "model.safetensors").is_file()
    assert (out / "method1" / "metrics.jsonl").is_file() and (out / "grpo" / "metrics.jsonl").is_file()
    printed = capsys.readouterr().out
    assert "Method 2" in printed and "report.html" in printed
