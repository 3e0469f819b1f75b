"""`reasonlab demo --quick`: the whole pipeline runs end to end and writes every result and plot.

It checks that each stage runs and reports, not the accuracies a full run reaches (see
docs/demo.md for those). Run: pytest tests/lab/test_demo.py"""

import json
import shutil

import pytest

from reasonlab.cli import main

KEYS = (
    "base_direct_acc",
    "base_cot_prompt_acc",
    "method1_acc",
    "method2_acc",
    "method2_format_rate",
    "budget_curve",
    "budget_curve_method1",
    "budget_aware",
    "length_control",
    "faithfulness",
    "seconds",
)


def test_quick_demo_writes_results_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for key in KEYS:
        assert key in results, key
    assert len(results["method1_acc"]) == 1
    for value in [
        results["base_direct_acc"],
        results["base_cot_prompt_acc"],
        results["method2_acc"],
        *results["method1_acc"],
    ]:
        assert 0.0 <= value <= 1.0
    curve = results["budget_curve"]
    assert [c["budget"] for c in curve] == sorted(c["budget"] for c in curve) and curve[0]["budget"] == 0
    assert all(set(c) >= {"budget", "acc", "mean_think_tokens"} for c in curve)
    # a cap of 0 leaves no thinking at all
    assert curve[0]["mean_think_tokens"] == 0
    # the dial: budget-aware GRPO from Method 1's model, both swept on the same budgets, per difficulty too
    # (chains of 2 to 4 variables: 1 to 3 hops)
    assert [c["budget"] for c in results["budget_curve_method1"]] == [c["budget"] for c in curve]
    assert all(0 <= c["format_rate"] <= 1 and set(c["by_difficulty"]) <= {"1", "2", "3"} for c in curve)
    aware = results["budget_aware"]
    assert aware["steps"] >= 1 and aware["budget_share"] == 0.5 and aware["budget_range"][0] == 0
    assert (out / "checkpoints" / "budget_aware" / "model.safetensors").is_file()
    assert (out / "grpo_budget" / "metrics.jsonl").is_file()
    control = results["length_control"]
    assert len(control["targets"]) == 3 and control["mean_abs_rel_error"] >= 0
    assert set(results["faithfulness"]) >= {"hint_follow_rate", "admit_rate"}
    html = (out / "report.html").read_text()
    for png in ("methods.png", "budget.png", "training.png", "faithfulness.png"):
        assert (out / png).stat().st_size > 5000 and png in html
    for folder in ("base", "method1", "method2"):
        assert (out / "checkpoints" / folder / "model.safetensors").is_file()
    assert (out / "method1" / "metrics.jsonl").is_file() and (out / "grpo" / "metrics.jsonl").is_file()
    printed = capsys.readouterr().out
    assert "Method 2" in printed and "report.html" in printed
    # One line a stage, each ending with its result, not cut to 80 columns in a log (no "…").
    stages = [line for line in printed.splitlines() if line[:4] in {f"{i}/8 " for i in range(1, 9)}]
    assert len(stages) == 8 and not any("…" in line for line in stages), stages
    assert "loss" in stages[0] and f"held-out {results['method2_acc']:.0%}" in stages[3], stages
    # the head-to-head from one base: Method 1 alone, Method 2 alone (from the base), Method 1 then 2
    assert set(results["methods"]) == {"method1", "method2", "method1_then_2"}
    assert all(len(m["acc"]) == 1 and m["flops"][0] > 0 for m in results["methods"].values())
    assert set(results["pass_at_k"]) == {"base", "method1", "method2", "method1_then_2"}
    assert results["r1_zero_format_curve"] and results["r1_zero"]["steps"] >= 1
    assert [set(s["replies"]) for s in results["stage_samples"]] == [
        set(results["stage_samples"][0]["replies"])
    ] * 3
    # the ledger: each stage's compute and time; training stages cost FLOPs, evaluations none
    ledger = results["ledger"]
    assert list(ledger) == [
        "pretrain",
        "prompting",
        "method1",
        "method1_then_2",
        "r1_zero",
        "head_to_head",
        "budget_aware",
        "faithfulness",
    ]
    assert all(
        ledger[s]["flops"] > 0 for s in ("pretrain", "method1", "method1_then_2", "r1_zero", "budget_aware")
    )
    assert all(ledger[s]["flops"] == 0 for s in ("prompting", "head_to_head", "faithfulness"))
    assert (
        ledger["method1"]["flops"] == results["methods"]["method1"]["flops"][0]
    )  # the same count, two views
    assert sum(s["seconds"] for s in ledger.values()) <= results["seconds"]
    for png in ("compute.png", "pass_at_k.png", "r1_zero.png"):
        assert (out / png).stat().st_size > 5000 and png in html
    assert "What the model writes at each stage" in html

    # Stopped during GRPO: --resume takes stages 1-3 from the folder (pretraining and Method 1 must
    # not run again) and runs the rest.
    import reasonlab.lab.arms as arms
    import reasonlab.lab.demo as demo

    done = ("task", "config", "seconds", "pretrain", "base_", "method1", "arm_method1")
    stopped = {k: v for k, v in results.items() if k.startswith(done) and not k.startswith("arm_method1_")}
    assert "method1_acc" in stopped and "arm_method1_then_2" not in stopped
    (out / "results.json").write_text(json.dumps(stopped))
    shutil.rmtree(out / "checkpoints" / "method2")
    fail = lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran again"))  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "pretrain", fail)
        mp.setattr(arms, "run_rationales", fail)
        assert main(["demo", "--quick", "--out", str(out), "--resume"]) == 0
    resumed = json.loads((out / "results.json").read_text())
    same = [k for k in stopped if k not in ("seconds", "config")]
    assert {k: resumed[k] for k in same} == {k: stopped[k] for k in same} and resumed["config"]["resume"]
    for key in KEYS:
        assert key in resumed, key
    assert (
        resumed["seconds"] > stopped["seconds"]
        and (out / "checkpoints" / "method2" / "config.json").is_file()
    )
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(out), "--resume", "--seed", "5"]) == 2
    assert "seed=0" in capsys.readouterr().err
    assert main(["demo", "--quick", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no demo run to go on with" in capsys.readouterr().err
    assert (
        main(["demo", "--quick", "--out", str(tmp_path / "t"), "--threads", "-1"]) == 2
    )  # not a torch traceback
    assert "threads must be >= 0" in capsys.readouterr().err


def test_training_plot_shows_every_sample_at_the_runs_temperature(tmp_path, monkeypatch):
    """The RL plot draws the reward of every row sampled (the groups trained on under dynamic
    sampling are the mixed ones, whose mean stays low however good the model gets) and labels the
    samples with the run's own temperature and reward points; older logs fall back to the kept mean."""
    from reasonlab.lab import plots

    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    steps = [
        {
            "step": s,
            "reward/mean": 2.5,
            "reward/sampled_mean": 2.75 + s / 8,
            "reward/accuracy": 0.75 + s / 8,
            "completions/mean_think_tokens": 40,
        }
        for s in (1, 2)
    ]
    plots.plot_training(
        steps + [{"step": 2, "eval/accuracy": 0.95}],
        tmp_path / "a.png",
        {"temperature": 0.7, "format_points": 4.0, "correct_points": 1.0},
    )
    reward, accuracy, _ = figures[-1].axes
    assert (
        list(reward.lines[0].get_ydata()) == [2.875, 3.0]
        and reward.get_title(loc="left") == "Reward (format 4 + correct 1)"
    )
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == [
        "samples (T=0.7)",
        "held-out (greedy)",
    ]
    old = [{k: v for k, v in m.items() if k != "reward/sampled_mean"} for m in steps]
    plots.plot_training(old, tmp_path / "b.png")
    reward, accuracy, _ = figures[-1].axes
    assert (
        list(reward.lines[0].get_ydata()) == [2.5, 2.5]
        and reward.get_ylabel() == "mean reward, groups trained on"
    )
    assert accuracy.get_legend().get_texts()[0].get_text() == "samples"


def test_report_reads_a_log_cut_by_a_kill_and_names_a_bad_file(tmp_path, capsys):
    """A run killed mid-write leaves a torn last line in its metrics log: the report leaves it out
    (with a warning) and still draws the rest. A bad line elsewhere, or a bad config, is one error
    naming the file, not a traceback."""
    from reasonlab.jsonl import read_log

    run = tmp_path / "run"
    (run / "grpo").mkdir(parents=True)
    (run / "results.json").write_text(
        json.dumps({"task": "chain", "base_direct_acc": 0.1, "method2_acc": 0.9})
    )
    steps = [
        {
            "step": s,
            "reward/mean": 2.5,
            "reward/sampled_mean": 2.8,
            "reward/accuracy": 0.8,
            "completions/mean_think_tokens": 40,
        }
        for s in (1, 2)
    ]
    log = run / "grpo" / "metrics.jsonl"
    log.write_text("".join(json.dumps(m) + "\n" for m in steps) + '{"step": 3, "reward/me')
    assert read_log(log) == steps and "torn last line" in capsys.readouterr().err
    assert read_log(run / "nothing.jsonl") == []
    # results.json as the demo leaves it between stages: only some methods measured so far
    assert main(["report", str(run)]) == 0 and (run / "training.png").stat().st_size > 5000
    assert (run / "methods.png").is_file()
    log.write_text(json.dumps(steps[0]) + "\n{oops\n" + json.dumps(steps[1]) + "\n")
    assert main(["report", str(run)]) == 2
    assert f"{log}:2: not valid JSON" in capsys.readouterr().err
    log.write_text(json.dumps(steps[0]) + "\n")
    (run / "grpo" / "grpo_config.json").write_text("{oops")
    assert main(["report", str(run)]) == 2
    assert "grpo_config.json: not valid JSON" in capsys.readouterr().err


def test_report_of_an_rl_run_folder(tmp_path, capsys):
    """`reasonlab report` on what `reasonlab rl --out DIR` writes: the training plot and the
    held-out accuracy where the run started and ended; a folder of neither kind is one error."""
    run = tmp_path / "rl"
    run.mkdir()
    (run / "run.json").write_text(
        json.dumps(
            {
                "command": "rl",
                "config": {
                    "prompts_per_step": 16,
                    "group_size": 8,
                    "temperature": 0.7,
                    "lr": 3e-4,
                    "format_points": 2.0,
                    "correct_points": 1.0,
                },
            }
        )
    )
    metrics = [{"step": 0, "eval/accuracy": 0.405, "eval/format_rate": 1.0}]
    metrics += [
        {
            "step": s,
            "reward/mean": 2.5,
            "reward/sampled_mean": 2.7,
            "reward/accuracy": 0.7,
            "reward/format_rate": 1.0,
            "completions/mean_think_tokens": 42,
            "seconds": 2.0 * s,
        }
        for s in (1, 2)
    ]
    metrics[-1].update({"eval/accuracy": 0.955, "eval/format_rate": 1.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    for row in (
        "<td>Steps run</td><td>2</td>",
        "<td>Held-out accuracy at step 0</td><td>40.5%</td>",
        "<td>Held-out accuracy at step 2</td><td>95.5%</td>",
        "16 prompts × 8 samples a step at T = 0.7",
    ):
        assert row in page, row
    assert (run / "training.png").stat().st_size > 5000
    assert main(["report", str(tmp_path)]) == 2 and "is not a run folder" in capsys.readouterr().err


def test_report_of_pretrain_sft_and_rationales_runs(tmp_path, capsys, monkeypatch):
    """`reasonlab report` on a supervised run's folder (and on a checkpoint written before run
    folders, with its step log in OUT.state) and on a Method 1 folder (one line a round); a missing
    path or a file is one error."""
    pre = tmp_path / "base"
    assert (
        main(
            [
                "pretrain",
                "--task",
                "chain",
                "--task-arg",
                "length=2",
                "--steps",
                "6",
                "--batch-size",
                "8",
                "--corpus-size",
                "60",
                "--eval-every",
                "3",
                "--check-problems",
                "4",
                "--out",
                str(pre),
            ]
        )
        == 0
    )
    steps = [json.loads(line) for line in (pre / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == list(range(1, 7)) and "trigger_acc" in steps[2]  # pretrain now logs
    assert main(["report", str(pre)]) == 0
    page = (pre / "report.html").read_text()
    assert "<td>Steps run</td><td>6</td>" in page and "Trigger accuracy at the end" in page
    assert (pre / "training.png").stat().st_size > 5000
    (pre / "report.html").unlink()
    monkeypatch.chdir(pre)
    assert (
        main(["report", "."]) == 0 and "<title>reasonlab: base</title>" in (pre / "report.html").read_text()
    )
    old = tmp_path / "old"  # a checkpoint OUT as pretrain wrote it before run folders: its log in OUT.state
    shutil.copytree(pre / "model", old)
    (old / "run.json").write_text('{"command": "pretrain"}')
    (tmp_path / "old.state").mkdir()
    shutil.copy(pre / "metrics.jsonl", tmp_path / "old.state")
    monkeypatch.chdir(old)  # `reasonlab report .` from inside it finds old.state beside it
    assert main(["report", "."]) == 0 and "<td>Steps run</td><td>6</td>" in (old / "report.html").read_text()
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "sft.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"{i}+1=", "completion": f"{i + 1}"}) + "\n" for i in range(8))
    )
    assert (
        main(
            [
                "sft",
                "--model",
                str(pre),
                "--data",
                str(data),
                "--eval-data",
                str(data),
                "--eval-every",
                "2",
                "--steps",
                "4",
                "--batch-size",
                "4",
                "--out",
                str(tmp_path / "sft"),
            ]
        )
        == 0
    )
    assert main(["report", str(tmp_path / "sft")]) == 0
    page = (tmp_path / "sft" / "report.html").read_text()
    assert "<td>Steps run</td><td>4</td>" in page and "Held-out loss at step 4" in page
    m1 = tmp_path / "m1"
    m1.mkdir()
    (m1 / "rationales_config.json").write_text(json.dumps({"samples": 4, "temperature": 0.6}))
    rounds = [
        {"round": r, "samples": 128, "kept": 40 * r, "yield": 40 * r / 128, "accuracy": a, "seconds": 10.0}
        for r, a in ((1, 0.7), (2, 0.88))
    ]
    (m1 / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    assert main(["report", str(m1)]) == 0
    page = (m1 / "report.html").read_text()
    assert "<td>Round 2: held-out accuracy (kept 80 of 128 samples)</td><td>88.0%</td>" in page
    assert (m1 / "rounds.png").stat().st_size > 5000
    assert main(["report", str(tmp_path / "missing")]) == 2 and "does not exist" in capsys.readouterr().err
    assert main(["report", str(data)]) == 2 and "is a file" in capsys.readouterr().err


def test_resume_refuses_a_run_made_on_one_length_of_chain_before_the_mix(tmp_path):
    """A demo folder written before problems of mixed length existed ran on one length: resuming it
    under today's default (2 to 4 variables) would mix two tasks, so it is refused in one line."""
    from reasonlab.errors import UserError
    from reasonlab.lab.demo_run import earlier_run
    from reasonlab.lab.settings import DemoConfig

    (tmp_path / "results.json").write_text(json.dumps({"config": {"seed": 0, "length": 4, "quick": True}}))
    with pytest.raises(UserError, match="min_length=0"):
        earlier_run(tmp_path, DemoConfig(quick=True))
    assert earlier_run(tmp_path, DemoConfig(quick=True, min_length=0))["config"]["length"] == 4
    (tmp_path / "results.json").write_text(
        json.dumps({"config": {"seed": 0, "quick": True, "model": "m.gguf"}})
    )
    assert earlier_run(
        tmp_path, DemoConfig(quick=True, model="m.gguf")
    )  # a real model's demo runs sums: no chain length
