"""The compute ledger, pass@k curves, the free-text base corpus, and `reasonlab study methods`.

Run: pytest tests/lab/test_study.py"""

import json

import pytest

from reasonlab import compute
from reasonlab.cli import main
from reasonlab.engine import SamplingParams, generate
from reasonlab.evaluate import evaluate_problems, k_samples, pass_at_k, pass_curve, read_row
from reasonlab.rl import GRPOConfig, train_grpo
from reasonlab.tasks import get_task
from reasonlab.template import free_form_completion, parse_completion
from reasonlab.train.loop import TrainConfig, tokenize_examples, train_supervised
from reasonlab.train.pretrain import PretrainConfig, build_corpus


def test_ledger_counts_sampled_prompts_once_and_every_generated_token(tiny_gpt):
    model, tok = tiny_gpt
    prompts = ["1+2\n", "1+2\n", "33+4\n"]  # a repeated prompt is prefilled once
    with compute.track() as ledger:
        rollout = generate(model, tok, prompts, SamplingParams(max_new_tokens=7, temperature=1.0, seed=0))
    assert ledger.sampled == len(tok.encode("1+2\n")) + len(tok.encode("33+4\n")) + int(rollout.lengths.sum())
    assert ledger.trained == ledger.scored == 0
    assert ledger.flops(compute.ModelCost(1000, 8)) == 2 * 1000 * ledger.sampled + 8 * ledger.sampled_pairs
    with compute.track() as outer:
        evaluate_problems(
            model,
            tok,
            get_task("arithmetic", digits=1),
            get_task("arithmetic", digits=1).problems(3),
            params=SamplingParams(temperature=0.0, max_new_tokens=5),
        )
        with compute.track() as inner:
            compute.count("trained", 4)
    assert outer.sampled == 0 and outer.trained == inner.trained == 4  # evaluations are not counted
    with compute.track() as a, compute.track() as b:  # equal counts, still two ledgers
        with compute.track():
            pass
        compute.count("scored", 2)
    assert a.scored == b.scored == 2 and not compute._open
    with pytest.raises(ValueError, match="unknown compute kind"):
        compute.count("guessed", 1)


def test_ledger_counts_each_trained_token_of_supervised_steps(tiny_gpt):
    model, tok = tiny_gpt
    rows = [
        {"prompt": "1+2\n", "completion": "<think></think><answer>3</answer>"},  # of one length: any
        {"prompt": "4+5\n", "completion": "<think></think><answer>9</answer>"},
    ]  # batch of 2 has 2 of it
    examples = tokenize_examples(tok, rows, 64)
    per_pass = sum(len(p) + len(c) for p, c in examples)
    with compute.track() as ledger:
        train_supervised(model, tok, examples, TrainConfig(steps=3, batch_size=2, lr=1e-3, warmup_steps=0))
    assert ledger.trained == 3 * per_pass and ledger.sampled == 0


def six_small_steps() -> GRPOConfig:
    """Six GRPO steps of 2 x 2 short completions, no periodic evaluation."""
    return GRPOConfig(
        steps=6,
        prompts_per_step=2,
        group_size=2,
        max_new_tokens=8,
        eval_every=0,
        lr=1e-3,
        no_format_patience=0,
    )


def test_grpo_logs_its_flops_and_stops_at_max_flops(tmp_path, tiny_gpt):
    model, tok = tiny_gpt
    task = get_task("arithmetic", op="+", digits=1)
    cfg = six_small_steps()  # an untrained model: every reward 0, every step still spends
    with compute.track() as outside:
        train_grpo(model, tok, task, cfg, out_dir=tmp_path / "a")
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    flops = [r["compute/flops"] for r in rows]
    assert len(rows) == 6 and all(b > a > 0 for a, b in zip(flops, flops[1:]))
    assert flops[-1] == outside.flops(compute.model_cost(model))  # the run's own count is what it spent
    assert outside.sampled and outside.trained and not outside.scored  # μ = 1, β = 0: no forward-only pass
    assert outside.sampled_pairs > outside.sampled and outside.trained_pairs > outside.trained
    cap = (flops[1] + flops[2]) / 2  # reached during step 3
    train_grpo(model, tok, task, GRPOConfig(**{**vars(cfg), "max_flops": cap}), out_dir=tmp_path / "b")
    capped = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert len(capped) == 3 and capped[-2]["compute/flops"] < cap <= capped[-1]["compute/flops"]


def test_rationale_rounds_record_cumulative_compute(tmp_path, tiny_gpt):
    from reasonlab.train.rationales import RationalesConfig, run_rationales

    model, tok = tiny_gpt
    task = get_task("arithmetic", op="+", digits=1)
    seen = []
    cfg = RationalesConfig(
        rounds=2,
        problems=6,
        samples=2,
        max_new_tokens=10,
        steps=2,
        batch_size=2,
        eval_problems=4,
        temperature=1.0,
        check_steps=False,
    )
    _, records = run_rationales(
        model, tok, task, cfg, out_dir=tmp_path, on_round=lambda r, m: seen.append((r, m))
    )
    assert [r for r, _ in seen] == records
    first, second = (r["compute"] for r in records)
    assert 0 < first["sampling"]["sampled"] < second["sampling"]["sampled"]  # cumulative, round by round
    assert first["flops"] == first["sampling"]["flops"] + first["training"]["flops"]
    assert first["sampling"]["n_params"] == compute.n_params(model)
    assert first["sampling"]["attention"] == 4 * 2 * 32  # tiny_gpt: 2 layers of 4 heads of 8
    assert (
        0 < first["sampling"]["sampled"] < first["sampling"]["sampled_pairs"]
    )  # a token at t attends t keys
    assert all(r["training"]["trained_pairs"] >= r["training"]["trained"] for r in (first, second))


def test_pass_curve_is_the_unbiased_estimator_averaged_over_problems():
    correct = [0, 1, 4]
    curve = pass_curve(correct, 4, [1, 2, 4])
    assert curve[1] == pytest.approx((0 + 0.25 + 1) / 3)
    assert curve[2] == pytest.approx((0 + 0.5 + 1) / 3)  # 1 - C(3,2)/C(4,2) = 0.5 for one correct of four
    assert curve[4] == pytest.approx(2 / 3)
    assert pass_at_k(64, 1, 64) == 1.0 and pass_at_k(64, 0, 1) == 0.0


def test_k_samples_counts_correct_samples_per_problem(tiny_gpt):
    model, tok = tiny_gpt
    task = get_task("arithmetic", op="+", digits=1)
    problems = task.problems(3, "test", seed=0)
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3)
    correct, votes = k_samples(model, tok, task, problems, 5, params)
    assert len(correct) == len(votes) == 3 and all(0 <= c <= 5 for c in correct)
    assert k_samples(model, tok, task, problems, 5, params) == (correct, votes)  # seeded


def test_free_text_corpus_writes_the_template_in_its_share_and_reads_back():
    task = get_task("chain", length=4)
    cfg = PretrainConfig(corpus_size=2000, worked_fraction=0.5, hint_fraction=0.2, template_fraction=0.15)
    docs = build_corpus(task, cfg)
    tagged = sum("<think>" in d["completion"] for d in docs) / len(docs)
    assert 0.11 < tagged < 0.19
    free = [d for d in docs if "<think>" not in d["completion"]]
    assert all(d["completion"].endswith(".") and "The answer is " in d["completion"] for d in free)
    problems = {p.question: p for p in task.problems(2000, "train", seed=cfg.seed)}
    worked = [d for d in free if d["completion"].startswith("Let's think")]
    assert len(worked) > 300
    for doc in worked:  # read as Method 1 reads a free-text sample: the answer, and the steps still check out
        problem = problems[doc["prompt"].strip()]
        parsed = parse_completion(free_form_completion(doc["completion"].split("\n", 1)[1]))
        assert parsed.format_ok and parsed.think.startswith(problem.rationale)
        if parsed.answer == problem.answer:  # (a share of documents ends on a wrong answer)
            assert task.check_steps(problem.question, parsed.think)
    unchanged = build_corpus(task, PretrainConfig(corpus_size=50, template_fraction=1.0))
    assert all("<think>" in d["completion"] for d in unchanged)  # the default: every document in the template


def test_chain_steps_check_ignores_the_closing_sentence():
    task = get_task("chain", length=3)
    problem = task.problems(1, seed=4)[0]
    think = f"{problem.rationale}\nThe answer is {problem.answer}."
    assert task.check_steps(problem.question, think)
    assert not task.check_steps(problem.question, "a=1\nThe answer is 3.")


def test_read_row_takes_a_free_text_reply_as_read():
    row = {
        "completion": "a=2;b=a+1=2+1=3\nThe answer is 3.",
        "prompt": "q\n",
        "read_as": free_form_completion("a=2;b=a+1=2+1=3\nThe answer is 3."),
    }
    assert read_row(row).answer == "3" and "b=a+1" in read_row(row).think
    assert read_row({"completion": "<think>x</think><answer>4</answer>", "prompt": "q\n"}).answer == "4"


def test_study_methods_quick_writes_the_head_to_head(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "methods", "--quick", "--seeds", "2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert list(methods) == ["method1", "method1_answer_only", "method2", "method1_then_2"]
    assert results["budgets"] == ["0.5", "1", "2"]
    for m in methods.values():
        assert len(m["acc"]) == len(m["format_rate"]) == len(m["flops"]) == 2
        assert all(0 <= a <= 1 for a in m["acc"]) and all(f > 0 for f in m["flops"])
        assert list(m["at_budget"]) == ["0.5", "1", "2"] and m["at_budget"]["1"]["acc"] == m["acc"]
    for seed in results["per_seed"]:
        # quick Method 1: C is its one round; to 2 x C it runs two, both ways
        for arm in ("method1", "method1_answer_only"):
            rounds = seed[arm]["rounds"]
            assert len(rounds) == 2 and seed[arm]["flops"] == rounds[-1]["compute"]["flops"]
            assert seed[arm]["at_budget"]["1"] == seed[arm]["curve"][1][1]  # round 1, at C exactly
            assert seed[arm]["at_budget"]["0.5"] == seed[arm]["curve"][0][1]  # the base: no round yet
        c = seed["method1"]["rounds"][0]["compute"]["flops"]
        for arm in ("method2", "method1_then_2"):  # each GRPO arm spends 2 x C (or its 3 quick steps)
            assert seed[arm]["flops"] >= 2 * c or seed[arm]["steps"] == 3
    assert set(results["pass_at_k"]) >= {"base", "method1", "method1_answer_only", "method2"}
    assert all(set(c) == {"1", "2", "4"} for c in results["pass_at_k"].values())
    curve = results["r1_zero_format_curve"]
    assert curve and all(len(p) == 2 and 0 <= p[1] <= 1 for p in curve)
    html = (out / "report.html").read_text()
    for png in ("compute.png", "pass_at_k.png", "r1_zero.png"):
        assert (out / png).stat().st_size > 5000 and png in html
    assert "Method 1 alone" in capsys.readouterr().out
    # Stopped after seed 0: --resume takes the base and seed 0 from the folder and runs seed 1 (and
    # --seeds may grow); other settings are refused.
    import reasonlab.lab.study as study

    first = results["per_seed"][0]
    (out / "results.json").write_text(json.dumps({**results, "per_seed": [first]}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            study, "pretrain", lambda *a, **k: (_ for _ in ()).throw(AssertionError("pretrained again"))
        )
        assert main(["study", "methods", "--quick", "--seeds", "2", "--out", str(out), "--resume"]) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["per_seed"][0] == first and resumed["per_seed"][1]["seed"] == 1
    assert resumed["base"] == results["base"] and len(resumed["methods"]["method1"]["acc"]) == 2
    capsys.readouterr()
    assert main(["study", "methods", "--quick", "--length", "5", "--out", str(out), "--resume"]) == 2
    assert "length=4" in capsys.readouterr().err
    assert main(["study", "methods", "--quick", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no study to go on with" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert (
        main(["study", "methods", "--quick", "--out", str(other)]) == 2
    )  # another's files are never written over
    assert "--overwrite" in capsys.readouterr().err and (other / "notes.txt").read_text() == "mine"
    assert main(["study", "methods", "--quick", "--pass-problems", "500", "--out", str(tmp_path / "x")]) == 2
    assert "--pass-problems 500 is more than --held-out 200" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # argparse: not a study
        main(["study", "budgets", "--out", str(tmp_path / "y")])
    assert refused.value.code == 2
    assert not (tmp_path / "y").exists()


def test_grpo_evaluates_where_each_flop_mark_is_reached(tmp_path, tiny_gpt):
    """`eval_at_flops`: an evaluation at the first step whose cost reaches each mark (where a run with
    that `max_flops` stops), besides the start and the last step; nowhere else with eval_every 0."""
    model, tok = tiny_gpt
    task = get_task("arithmetic", op="+", digits=1)
    cfg = six_small_steps()
    held_out = task.problems(2, "test")
    train_grpo(model, tok, task, cfg, out_dir=tmp_path / "a")
    flops = [
        json.loads(line)["compute/flops"]
        for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    marks = [(flops[1] + flops[2]) / 2, flops[4]]  # reached at steps 3 and 5
    train_grpo(model, tok, task, cfg, out_dir=tmp_path / "b", held_out=held_out, eval_at_flops=marks)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 3, 5, 6]
    assert all("seconds" in r for r in rows if "eval/accuracy" in r)


def test_budget_readings_take_the_model_each_arm_had_at_the_budget():
    from reasonlab.lab.arms import budget_key, first_from, last_within

    curve = [[0.0, 0.1, 0], [3.0, 0.5, 1], [6.0, 0.9, 2]]  # Method 1: a point a round
    assert (
        last_within(curve, 2.9) == 0.1 and last_within(curve, 3.0) == 0.5 and last_within(curve, 100) == 0.9
    )
    grpo = [[0.0, 0.1, 0], [2.0, 0.2, 1], [3.1, 0.4, 2], [6.05, 0.6, 3]]  # evaluated where a mark was passed
    assert first_from(grpo, 1, 3.0) == 0.4 and first_from(grpo, 1, 6.0) == 0.6
    assert first_from(grpo, 1, 9.0) == 0.6  # stopped sooner: its last
    assert [budget_key(b) for b in (0.5, 1.0, 2.0, 0.25)] == ["0.5", "1", "2", "0.25"]


def test_study_budgets_are_checked_on_the_command_line(tmp_path, capsys):
    for bad, said in (("0,1", "above 0"), ("1,x", "numbers separated by commas"), ("", "must not be empty")):
        assert main(["study", "methods", "--quick", "--budgets", bad, "--out", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_tuning_validation_is_outside_what_the_runs_train_on_and_ties_go_to_the_default():
    from reasonlab.lab.study_tuning import best, validation_problems

    task = get_task("chain", length=4)
    excluded = {p.question for p in task.problems(3000, "train", 1000)}
    val = validation_problems(task, 300, excluded)
    assert len(val) == 300 and not {p.question for p in val} & excluded
    small = get_task("arithmetic", op="+", digits=1)
    with pytest.raises(ValueError, match="validation problems outside"):
        validation_problems(small, 5, {p.question for p in small.problems(1000, "train", at_most=True)})
    assert best({0.5: 0.8, 1.0: 0.8, 2.0: 0.7}) == 1.0 and best({0.5: 0.9, 1.0: 0.8, 2.0: 0.9}) == 0.5
    assert best({0.5: 0.1, 1.0: 0.2, 2.0: 0.3}) == 2.0


def test_study_tune_gives_every_arm_three_learning_rates_and_runs_the_seeds_with_the_choice(tmp_path):
    out = tmp_path / "study"
    assert (
        main(["study", "methods", "--quick", "--seeds", "1", "--tune", "--budgets", "1", "--out", str(out)])
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    tuning = results["tuning"]
    arms = ["method1", "method1_answer_only", "method2", "method1_then_2"]
    assert list(tuning["scores"]) == arms and all(
        list(by) == ["0.5", "1", "2"] for by in tuning["scores"].values()
    )
    assert tuning["validation"] == 200 and results["lr_scale"] == tuning["chosen"]
    for arm, default in (("method1", 2e-3), ("method2", 3e-4), ("method1_then_2", 3e-4)):
        for scale in (0.5, 2.0):  # each configuration ran, at its learning rate
            run = json.loads((out / "tuning" / f"lr_x{scale:g}" / arm / "run.json").read_text())
            assert run["config"]["lr"] == pytest.approx(default * scale)
        final = json.loads((out / "seed0" / arm / "run.json").read_text())  # the seeds: the chosen one
        assert final["config"]["lr"] == pytest.approx(default * tuning["chosen"][arm])
