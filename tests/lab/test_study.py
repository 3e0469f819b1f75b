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


def test_grpo_logs_its_flops_and_stops_at_max_flops(tmp_path, tiny_gpt):
    model, tok = tiny_gpt
    task = get_task("arithmetic", op="+", digits=1)
    cfg = GRPOConfig(
        steps=6,
        prompts_per_step=2,
        group_size=2,
        max_new_tokens=8,
        eval_every=0,
        lr=1e-3,
        no_format_patience=0,
    )  # an untrained model: every reward 0, every step still spends
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
    assert set(methods) == {"method1", "method2", "method1_then_2"}
    for m in methods.values():
        assert len(m["acc"]) == len(m["format_rate"]) == len(m["flops"]) == 2
        assert all(0 <= a <= 1 for a in m["acc"]) and all(f > 0 for f in m["flops"])
    for seed in results["per_seed"]:  # each GRPO arm spends Method 1's FLOPs (or its 3 quick steps)
        for arm in ("method2", "method1_then_2"):
            assert seed[arm]["flops"] >= seed["method1"]["flops"] or seed[arm]["steps"] == 3
    assert set(results["pass_at_k"]) >= {"base", "method1", "method2"}
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
