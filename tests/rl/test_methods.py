"""Method 1 (rationale filtering) and Method 2 (GRPO runs) on tiny scripted and tiny real models.

Run: pytest tests/rl/test_methods.py"""

import json

import pytest
import torch

from reasonlab import compute
from reasonlab.model import new_builtin
from reasonlab.rl import GRPOConfig, train_grpo
from reasonlab.tasks import get_task
from reasonlab.template import parse_completion
from reasonlab.train.rationales import RationalesConfig, run_rationales, sample_rationales
from tests.conftest import BigramLM, constant_task, random_tag_writer

_, TOK = new_builtin()
ID = {s: TOK.encode(s)[0] for s in ["<think>", "</think>", "<answer>", "</answer>", "\n", ".", "a", "7"]}


def answers_seven():
    """Always writes <think>a</think><answer>7</answer> after the prompt's last newline, then ends
    (end-of-text: GRPO's rollouts run to it)."""
    script = {
        ID["\n"]: ID["<think>"],
        ID["<think>"]: ID["a"],
        ID["a"]: ID["</think>"],
        ID["</think>"]: ID["<answer>"],
        ID["<answer>"]: ID["7"],
        ID["7"]: ID["</answer>"],
        ID["</answer>"]: TOK.eos_id,
    }
    return BigramLM(len(TOK), script, default=ID["\n"])


def seven_or_eight(seven_logit: float):
    """`answers_seven`, but after <answer> it writes 7 or 8 (logit `seven_logit` for 7 against 0
    for 8), then </answer>."""
    eight = TOK.encode("8")[0]
    model = answers_seven()
    with torch.no_grad():
        model.table.weight[ID["<answer>"], ID["7"]] = seven_logit
        model.table.weight[ID["<answer>"], eight] = 0.0
        model.table.weight[eight].fill_(-10.0)
        model.table.weight[eight, ID["</answer>"]] = 10.0
    return model


def test_sample_rationales_keeps_only_verified_and_deduplicates():
    task = get_task("arithmetic", op="+", digits=1)
    problems = task.problems(40, seed=0)
    cfg = RationalesConfig(samples=3, temperature=0.0, max_new_tokens=20)
    kept, drawn = sample_rationales(answers_seven(), TOK, task, problems, cfg, seed=0)
    sevens = {p.question for p in problems if p.answer == "7"}
    assert drawn == 120
    assert {r["question"] for r in kept} == sevens and len(kept) == len(sevens)  # 3 identical samples -> 1
    assert all(r["completion"] == "<think>a</think><answer>7</answer>" for r in kept)


def test_method1_round_logs_yield_and_accuracy(tmp_path, tiny_gpt):
    model, tok = tiny_gpt
    task = get_task("arithmetic", op="+", digits=1)
    cfg = RationalesConfig(
        rounds=1,
        problems=30,
        samples=2,
        max_new_tokens=12,
        steps=3,
        batch_size=4,
        eval_problems=10,
        rationalize=True,
    )
    final, records = run_rationales(model, tok, task, cfg, generator=answers_seven(), out_dir=tmp_path)
    (record,) = records
    assert record["samples"] >= 60 and 0 < record["kept"] <= record["solved"] + record["rationalized"]
    assert 0 <= record["accuracy"] <= 1 and record["yield"] == pytest.approx(
        record["kept"] / record["samples"]
    )
    data = [json.loads(line) for line in (tmp_path / "round1_data.jsonl").read_text().splitlines()]
    assert len(data) == record["kept"] and all("hint" not in d["prompt"] for d in data)
    assert final is not model  # fine-tuned a copy: the base stays untouched for the next round


def test_grpo_runs_and_logs_namespaced_metrics(tmp_path, tiny_gpt):
    model, tok = tiny_gpt
    task = get_task("arithmetic", op="+", digits=1)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = GRPOConfig(
        steps=2,
        prompts_per_step=3,
        group_size=4,
        max_new_tokens=12,
        eval_every=2,
        eval_problems=5,
        updates=2,
        beta=0.1,
        lr=1e-3,
    )
    metrics = train_grpo(model, tok, task, cfg, out_dir=tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1, 2] and "eval/accuracy" in lines[
        0
    ]  # the start is on the curve
    for key in (
        "reward/mean",
        "reward/std",
        "reward/sampled_mean",
        "reward/sampled_std",
        "reward/format_rate",
        "reward/format_std",
        "reward/accuracy",
        "reward/accuracy_std",
        "frac_reward_zero_std",
        "completions/mean_length",
        "completions/mean_think_tokens",
        "clip_frac",
        "kl",
        "entropy",
        "grad_norm",
        "time/generate_s",
        "time/train_s",
        "eval/accuracy",
    ):
        assert key in metrics, key
    assert (tmp_path / "samples.jsonl").read_text().count("\n") >= 2
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # An untrained model earns 0 everywhere, so every group is flat and nothing may change...
    assert changed == (metrics["frac_reward_zero_std"] < 1)


def test_grpo_learns_from_mixed_rewards():
    """A model that answers 7 or 8 at random, on a task whose answer is always 7: GRPO's signal
    (correct 3 points vs 2) must raise the accuracy."""
    model = seven_or_eight(0.0)
    cfg = GRPOConfig(
        steps=15,
        prompts_per_step=8,
        group_size=8,
        max_new_tokens=10,
        eval_every=0,
        lr=0.2,
        warmup_steps=1,
        seed=1,
    )
    history = []
    train_grpo(model, TOK, constant_task("7"), cfg, log=history.append)
    assert 0.3 < history[0]["reward/accuracy"] < 0.7 and history[-1]["reward/accuracy"] > 0.9
    assert history[-1]["reward/format_rate"] > 0.9
    for m in history:  # every row drawn is scored: 2 points for the format, 1 more when right
        if m["reward/format_rate"] == 1:
            assert m["reward/sampled_mean"] == pytest.approx(2 + m["reward/accuracy"])
            assert m["reward/format_std"] == 0 and m["reward/sampled_std"] == pytest.approx(
                m["reward/accuracy_std"]
            )
        p, n = (
            m["reward/accuracy"],
            64,
        )  # 8 x 8 rows drawn a step: the std of 0/1 outcomes (n - 1 in the denominator)
        assert m["reward/accuracy_std"] == pytest.approx((p * (1 - p) * n / (n - 1)) ** 0.5)
    assert any(m["reward/format_rate"] == 1 for m in history)


def test_grpo_config_validation():
    with pytest.raises(ValueError, match="--group-size must be >= 2, got 1"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError):
        GRPOConfig(advantage="nope")
    with pytest.raises(ValueError, match="--schedule must be one of cosine, linear, constant, got 'nope'"):
        GRPOConfig(schedule="nope")
    with pytest.raises(ValueError, match="--min-lr-ratio must be <= 1"):
        GRPOConfig(schedule="cosine", min_lr_ratio=1.5)


def test_resuming_a_finished_grpo_run_changes_nothing_and_reports_its_last_step(tmp_path):
    cfg = GRPOConfig(
        steps=4,
        prompts_per_step=2,
        group_size=2,
        max_new_tokens=8,
        eval_every=3,
        eval_problems=4,
        save_every=2,
        lr=0.1,
    )
    model = answers_seven()
    last = train_grpo(model, TOK, constant_task("7"), cfg, out_dir=tmp_path)
    log = (tmp_path / "metrics.jsonl").read_text()
    weights = [p.detach().clone() for p in model.parameters()]
    again = answers_seven()
    seen = []
    resumed = train_grpo(
        again, TOK, constant_task("7"), cfg, out_dir=tmp_path, resume=True, progress=seen.append
    )
    assert resumed == last and resumed["step"] == 4 and "eval/accuracy" in resumed
    assert seen == [last]  # the progress bar is told where the run stands
    assert all(torch.equal(a, b) for a, b in zip(weights, again.parameters()))  # the saved final weights
    assert (tmp_path / "metrics.jsonl").read_text() == log  # nothing run twice, nothing dropped


def test_grpo_learning_rate_warms_up_then_follows_the_schedule():
    """Logged and applied: the optimiser's lr each step is the logged one."""
    seen = []
    cfg = GRPOConfig(
        steps=6,
        prompts_per_step=2,
        group_size=2,
        max_new_tokens=8,
        eval_every=0,
        lr=1.0,
        warmup_steps=2,
        schedule="linear",
        min_lr_ratio=0.0,
    )
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    history = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", spy)
        train_grpo(answers_seven(), TOK, constant_task("7"), cfg, log=history.append)
    expected = [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]  # warm-up 2 steps, then linear to 0 over steps 2..6
    assert [m["lr"] for m in history] == pytest.approx(expected)
    assert seen == pytest.approx(expected)
    constant = []
    train_grpo(
        answers_seven(),
        TOK,
        constant_task("7"),
        GRPOConfig(
            steps=3, prompts_per_step=2, group_size=2, max_new_tokens=8, eval_every=0, lr=1.0, warmup_steps=2
        ),
        log=constant.append,
    )
    assert [m["lr"] for m in constant] == pytest.approx(
        [0.5, 1.0, 1.0]
    )  # the default: constant after warm-up


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean", "constant"])
def test_grpo_micro_batches_give_the_same_update(agg):
    """Micro-batches of 3 rows accumulate exactly the whole batch's gradient (losses normalised by
    the batch's count), with clipping (μ = 2) and the KL term on."""
    from reasonlab.model import new_builtin

    runs = []
    # Whole batch and micro-batches, each with padded prompt + completion rows and with the shared
    # prompt layout (each prompt computed once, completions packed; micro-batches in whole groups).
    for micro, shared in ((0, False), (3, False), (0, True), (3, True)):
        model, tok = new_builtin(seed=3)
        cfg = GRPOConfig(
            steps=2,
            prompts_per_step=2,
            group_size=4,
            max_new_tokens=10,
            eval_every=0,
            lr=1e-2,
            warmup_steps=1,
            updates=2,
            beta=0.05,
            loss_agg=agg,
            length_target=4,
            length_alpha=0.1,
            micro_batch_size=micro,
            shared_prompts=shared,
        )
        history = []
        train_grpo(model, tok, get_task("arithmetic", op="+", digits=1), cfg, log=history.append)
        runs.append(history)
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert a["reward/mean"] == b["reward/mean"]
            for key in ("loss", "grad_norm", "kl", "entropy", "clip_frac"):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert any(m["grad_norm"] > 0 for m in runs[0])  # some step had a reward spread: a real update


@pytest.mark.parametrize("builtin,agg", [(False, "seq_mean"), (True, "token_mean"), (True, "constant")])
def test_skipping_flat_groups_gives_the_same_update(builtin, agg):
    """β = 0: groups whose rewards are all equal carry no gradient. Leaving them out of the forward
    and backward (their tokens still counted in the normaliser) gives the same losses, gradient
    norms and weights, with clipping (μ = 2) on; a step with no spread still moves AdamW."""
    runs = []
    for skip in (False, True):
        model, tok = new_builtin(seed=3) if builtin else (random_tag_writer(TOK, tag_boost=2.0), TOK)
        cfg = GRPOConfig(
            steps=4,
            prompts_per_step=4,
            group_size=3,
            max_new_tokens=8,
            eval_every=0,
            lr=1e-2,
            warmup_steps=1,
            updates=2,
            loss_agg=agg,
            length_target=2,
            length_alpha=0.5,
            skip_flat_groups=skip,
            seed=2,
        )
        history = []
        train_grpo(model, tok, constant_task("7"), cfg, log=history.append)
        runs.append((history, [p.detach().clone() for p in model.parameters()]))
    (off, weights_off), (on, weights_on) = runs
    assert all(m["sampling/groups_trained"] == 4 for m in off)
    assert any(0 < m["frac_reward_zero_std"] < 1 and m["sampling/groups_trained"] < 4 for m in on)
    for a, b in zip(off, on):
        assert a["reward/mean"] == b["reward/mean"]
        for key in ("loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert any(m["grad_norm"] > 0 for m in on)
    # AdamW moves each weight by ~lr = 1e-2 a step whatever its gradient's scale, so a wrong gradient
    # direction shows as differences of 1e-3 and more. Summation order differs with the batch's rows,
    # and AdamW turns that rounding into up to ~4e-5 on embedding entries whose gradient is near its
    # eps (1e-6 on an AVX-512 Xeon, 3.5e-5 on an AVX2 EPYC): the tolerance sits between the two.
    for a, b in zip(weights_off, weights_on):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-4)


def test_method1_drops_right_answers_reached_by_wrong_steps():
    """A generator whose every answer is right, half of them by sound steps, half by luck: only the
    sound ones survive, the lucky ones are counted; without the step check both survive."""
    from reasonlab.remote import RemoteGenerator

    task = get_task("chain", length=3)
    problems = task.problems(6, "train", seed=0)

    class Scripted(RemoteGenerator):
        def complete(self, prompts, **_):
            out = []
            for i, prompt in enumerate(prompts):
                p = next(x for x in problems if prompt.startswith(x.question))
                think = p.rationale if i % 2 == 0 else p.rationale.replace("=", "=0", 1)  # a=07 misquotes a=7
                out.append(f"<think>{think}</think><answer>{p.answer}</answer>")
            return out

    cfg = RationalesConfig(samples=2, max_new_tokens=40)
    counts = {}
    kept, drawn = sample_rationales(
        Scripted("http://127.0.0.1:9"), TOK, task, problems, cfg, seed=0, counts=counts
    )
    assert drawn == 12 and len(kept) == 6 and counts["lucky"] == 6
    assert all(task.check_steps(k["question"], parse_completion(k["completion"]).think) for k in kept)
    loose, _ = sample_rationales(
        Scripted("http://127.0.0.1:9"),
        TOK,
        task,
        problems,
        RationalesConfig(samples=2, max_new_tokens=40, check_steps=False),
        seed=0,
    )
    assert len(loose) == 12


def test_dynamic_sampling_refills_missing_groups_within_a_budget():
    from reasonlab.rl.collect import refill_size

    assert refill_size(16, 1.0, 1.25, 96) == 20  # the missing groups plus a margin
    assert refill_size(16, 0.25, 1.25, 96) == 80  # a quarter of groups useful last step: draw 4x
    assert refill_size(16, 0.125, 1.25, 96) == 96 and refill_size(5, 0.5, 1.0, 0) == 0  # the step's budget
    # A model writing tags at random: thinking lengths, so length-target rewards, vary within most
    # groups but not all. Every step trains on P groups with a spread, drawn within 6 P problems.
    # None is well-formed in 8 tokens: the format watch is off, the spread is the length term's.
    model = random_tag_writer(TOK, tag_boost=2.0)
    cfg = GRPOConfig(
        steps=6,
        prompts_per_step=4,
        group_size=3,
        max_new_tokens=8,
        eval_every=0,
        lr=1e-3,
        dynamic_sampling=True,
        length_target=2,
        length_alpha=0.5,
        no_format_patience=0,
    )
    history = []
    train_grpo(model, TOK, constant_task("7"), cfg, log=history.append)
    assert len(history) == 6 and all("skipped" not in m for m in history)
    for m in history:
        assert m["sampling/groups_kept"] == 4 and 4 < m["sampling/groups_drawn"] <= 24
    assert 0 < max(m["frac_reward_zero_std"] for m in history) < 1


def test_a_fresh_run_in_a_used_folder_starts_clean(tmp_path):
    """Rerunning without --resume into a folder an earlier run left: Method 1 must not reuse that
    run's sample caches (they came from another model), GRPO's logs hold the new run only, and
    neither keeps the old training state for a later --resume to pick up."""
    from reasonlab.run.state import save_training_state

    task = constant_task("7")
    out = tmp_path / "m1"
    out.mkdir()
    stale = {"start": 0, "texts": ["<think>a</think><answer>8</answer>"] * 512}  # an earlier model's samples
    (out / "round1_samples.jsonl").write_text(json.dumps(stale) + "\n")
    (out / "metrics.jsonl").write_text(json.dumps({"round": 1, "kept": 0}) + "\n")
    save_training_state(out / "state", {"model": {"w": torch.ones(1)}, "records": [], "round": 5})
    save_training_state(
        out / "round3_train" / "state", {"model": {"w": torch.ones(1)}, "step": 9}
    )  # a round this run won't reach
    cfg = RationalesConfig(
        rounds=1, problems=6, samples=2, max_new_tokens=12, steps=2, batch_size=4, eval_problems=4
    )
    _, records = run_rationales(answers_seven(), TOK, task, cfg, out_dir=out)
    assert records[0]["kept"] > 0  # its own samples: all right (the stale ones were all wrong)
    assert [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    state = torch.load(out / "state" / "state.pt", weights_only=False)
    assert (
        state["round"] == 1 and not (out / "state" / "state.prev.pt").exists()
    )  # the old round-5 state is gone
    assert not (
        out / "round3_train" / "state" / "state.pt"
    ).exists()  # so --resume can never pick it up later

    model, tok = new_builtin(seed=0)
    grpo = GRPOConfig(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=6, eval_every=0)
    for _ in range(2):
        train_grpo(model, tok, get_task("arithmetic", op="+", digits=1), grpo, out_dir=tmp_path / "rl")
    steps = [json.loads(x)["step"] for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_sample_cache_is_reused_only_for_the_same_generator_prompts_and_settings(tmp_path, monkeypatch):
    """A rerun takes a round's samples from its cache only when the same model (weights), prompts and
    sampling settings made them; anything else samples afresh and replaces the cache."""
    from reasonlab.train import rationales

    task = get_task("arithmetic", op="+", digits=1)
    problems = task.problems(10, seed=0)
    cfg = RationalesConfig(samples=2, temperature=1.0, max_new_tokens=12)
    cache, model = tmp_path / "round1_samples.jsonl", answers_seven()
    with compute.track() as sampled:
        first, _ = sample_rationales(model, TOK, task, problems, cfg, seed=0, cache=cache)
    calls = []
    sample = rationales.sample_texts
    monkeypatch.setattr(rationales, "sample_texts", lambda *a: (calls.append(1), sample(*a))[1])
    with compute.track() as reused:
        again, _ = sample_rationales(model, TOK, task, problems, cfg, seed=0, cache=cache)
    assert again == first and calls == []  # the same run again: all from the cache
    assert reused.sampled == sampled.sampled > 0  # and the compute those samples cost counts again
    assert reused.sampled_pairs == sampled.sampled_pairs > sampled.sampled  # their attention too
    sample_rationales(model, TOK, task, problems, cfg, seed=1, cache=cache)
    assert calls  # another seed: sampled afresh
    calls.clear()
    sample_rationales(model, TOK, task, problems, cfg, seed=1, cache=cache)
    assert calls == []  # and the cache now holds that run's samples
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1.0
    sample_rationales(model, TOK, task, problems, cfg, seed=1, cache=cache)
    assert calls  # other weights: sampled afresh


@pytest.mark.parametrize("dynamic", [False, True])
def test_grpo_stops_a_model_that_never_writes_the_format(tmp_path, dynamic):
    """Every completion 'aaaa' (no tag): every reward 0, every group flat. After 5 such steps the
    run stops with one line, the 5 rows logged; with dynamic sampling every step is a skipped row."""
    from reasonlab.errors import UserError

    cfg = GRPOConfig(
        steps=8, prompts_per_step=2, group_size=2, max_new_tokens=4, eval_every=0, dynamic_sampling=dynamic
    )
    never = BigramLM(len(TOK), {}, default=ID["a"])
    drawn = r"\d+" if dynamic else "20"  # 5 steps x 2 problems x 2 (dynamic sampling draws more)
    with pytest.raises(
        UserError,
        match=rf"no sample earned a format point in 5 steps \(0 of {drawn} completions "
        r"well-formed\): warm up with Method 1 \(reasonlab rationales\) or SFT",
    ):
        train_grpo(never, TOK, constant_task("7"), cfg, out_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["reward/format_rate"] == 0 and r["reward/sampled_mean"] == 0 for r in rows)
    assert all(("skipped" in r) == dynamic for r in rows)
    assert (tmp_path / "samples.jsonl").is_file() or dynamic  # what was logged stays
    history = []
    train_grpo(
        never,
        TOK,
        constant_task("7"),
        GRPOConfig(
            steps=8, prompts_per_step=2, group_size=2, max_new_tokens=4, eval_every=0, no_format_patience=0
        ),
        log=history.append,
    )
    assert len(history) == 8  # 0: never stops


def test_grpo_is_not_stopped_by_a_model_that_writes_the_format():
    history = []
    train_grpo(
        answers_seven(),
        TOK,
        constant_task("7"),
        GRPOConfig(steps=7, prompts_per_step=2, group_size=2, max_new_tokens=8, eval_every=0, lr=1e-3),
        log=history.append,
    )
    assert [m["step"] for m in history] == list(range(1, 8)) and history[0]["reward/format_rate"] == 1


def test_format_watch_counts_from_the_start_only_and_across_a_resume(tmp_path):
    """One well-formed completion early ends the watch for good; a resumed run counts on from its
    state: 3 steps then a resume to 8 stops at step 5, not 8."""
    from reasonlab.errors import UserError
    from reasonlab.rl.collect import FormatWatch

    watch = FormatWatch(2)
    watch.observe([False, False])
    watch.observe([False, True])
    for _ in range(10):
        watch.observe([False])
        watch.check()
    stuck = FormatWatch(2)
    for _ in range(2):
        stuck.observe([False] * 3)
    with pytest.raises(UserError, match=r"in 2 steps \(0 of 6 completions"):
        stuck.check()
    never = BigramLM(len(TOK), {}, default=ID["a"])
    cfg = dict(prompts_per_step=2, group_size=2, max_new_tokens=4, eval_every=0, save_every=1)
    train_grpo(never, TOK, constant_task("7"), GRPOConfig(steps=3, **cfg), out_dir=tmp_path)
    with pytest.raises(UserError, match="in 5 steps"):
        train_grpo(never, TOK, constant_task("7"), GRPOConfig(steps=8, **cfg), out_dir=tmp_path, resume=True)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]


def free_text_endpoint(problems):
    """A stand-in endpoint that solves each problem in free text, as an instruct model prompted to
    reason does: no tags, the answer in its last sentence (the first sample of a problem right,
    the second wrong), then a new question it makes up. `.seen` holds the prompts it was given."""
    from reasonlab.remote import RemoteGenerator

    class FreeText(RemoteGenerator):
        def complete(self, prompts, **_):
            self.seen = getattr(self, "seen", []) + list(prompts)
            out = []
            for i, prompt in enumerate(prompts):
                p = next(
                    x for x in problems if x.question in prompt
                )  # one-digit sums: no question holds another
                a, b = p.question.split("+")
                answer = p.answer if i % 2 == 0 else int(p.answer) + 1
                out.append(
                    f"We add {a} and {b}: {a} + {b} = {answer}. So the final answer is {answer}.\n"
                    "Question: what is 1+1?"
                )
            return out

    return FreeText("http://127.0.0.1:9")


def test_method1_free_form_samples_are_read_verified_and_rewritten(tmp_path):
    """Free-text samples with the right answer become rows in the template (the template's prompt,
    <think>the text</think><answer>the answer</answer>), parsing well-formed with the gold answer;
    wrong ones are dropped. Without `free_form` the same samples are all dropped (strict format)."""
    task = get_task("arithmetic", op="+", digits=1)
    cfg = RationalesConfig(
        rounds=1,
        problems=6,
        samples=2,
        max_new_tokens=40,
        steps=1,
        batch_size=4,
        eval_problems=4,
        free_form=True,
    )
    problems = task.problems(6, "train", cfg.seed + 1000)
    generator = free_text_endpoint(problems)
    _, (record,) = run_rationales(
        answers_seven(), TOK, task, cfg, generator=generator, out_dir=tmp_path / "free"
    )
    assert record["samples"] == 12 and record["kept"] == 6 and record["unread"] == 0
    assert all(
        "<" not in prompt and prompt.endswith("Let's think step by step.\n") for prompt in generator.seen
    )
    rows = [json.loads(line) for line in (tmp_path / "free" / "round1_data.jsonl").read_text().splitlines()]
    gold = {p.question: p.answer for p in problems}
    assert len(rows) == 6
    for row in rows:
        question = row["prompt"].split("\n")[0]
        assert row["prompt"] == f"{question}\nLet's think step by step.\n"
        parsed = parse_completion(row["completion"], row["prompt"])
        assert parsed.format_ok and parsed.answer == gold[question]
        assert (
            parsed.think.endswith(f"So the final answer is {gold[question]}.")
            and "Question:" not in parsed.think
        )
    strict = RationalesConfig(
        rounds=1, problems=6, samples=2, max_new_tokens=40, steps=1, batch_size=4, eval_problems=4
    )
    _, (record,) = run_rationales(
        answers_seven(), TOK, task, strict, generator=free_text_endpoint(problems), out_dir=tmp_path / "s"
    )
    assert record["kept"] == 0 and "unread" not in record
    assert (tmp_path / "s" / "round1_data.jsonl").read_text() == ""


def test_method1_chat_style_prompts_sampling_training_and_evaluation(tmp_path, monkeypatch):
    """`style="chat"`: the generator is asked through the chat template (free form: the question
    followed by the step-by-step instruction, no tags), the fine-tuning rows and the held-out
    evaluation use the template's chat prompt."""
    from reasonlab.model import load_model
    from reasonlab.template import CHAT_SYSTEM, FREE_FORM_INSTRUCTION
    from reasonlab.train import rationales
    from tests.model.test_model import make_tiny_hf

    make_tiny_hf(tmp_path / "hf")
    model, tok = load_model(tmp_path / "hf")
    task = get_task("arithmetic", op="+", digits=1)
    cfg = RationalesConfig(
        rounds=1,
        problems=4,
        samples=2,
        max_new_tokens=40,
        steps=1,
        batch_size=4,
        eval_problems=3,
        free_form=True,
        style="chat",
    )
    problems = task.problems(4, "train", cfg.seed + 1000)
    generator = free_text_endpoint(problems)
    styles = []
    evaluate = rationales.evaluate_problems
    monkeypatch.setattr(
        rationales, "evaluate_problems", lambda *a, **k: (styles.append(k["style"]), evaluate(*a, **k))[1]
    )
    _, (record,) = run_rationales(model, tok, task, cfg, generator=generator, out_dir=tmp_path / "chat")
    assert record["kept"] == 4 and styles == ["chat"]
    assert all(
        p.startswith("[user]") and p.endswith(f" {FREE_FORM_INSTRUCTION}\n[assistant]")
        for p in generator.seen
    )
    for line in (tmp_path / "chat" / "round1_data.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert (
            row["prompt"].startswith(f"[system]{CHAT_SYSTEM}\n[user]")
            and parse_completion(row["completion"]).format_ok
        )


def thinks_forever():
    """Thinks "a" until cut: writes <think>aaa… and never closes it itself; after a forced
    </think><answer> it answers 7, closes and ends."""
    script = {
        ID["\n"]: ID["<think>"],
        ID["<think>"]: ID["a"],
        ID["a"]: ID["a"],
        ID["<answer>"]: ID["7"],
        ID["7"]: ID["</answer>"],
        ID["</answer>"]: TOK.eos_id,
    }
    return BigramLM(len(TOK), script, default=ID["\n"])


def test_grpo_rollouts_run_to_end_of_text_which_trains_and_text_after_the_answer_breaks_the_format():
    """By default a rollout ends at the model's end-of-text token, not at </answer>: the token that
    ends a formatted answer is sampled, in the loss mask and trained like any other (as TRL and verl
    do; stopping at </answer> trained only the end-of-text of unformatted completions). A model that
    writes on after </answer> earns nothing; `stop_at_answer` cuts it there instead."""
    from reasonlab.rl.batch import batch_for_update
    from reasonlab.rl.collect import Collector, ProblemStream

    task = constant_task("7")
    writes_on = answers_seven()
    with torch.no_grad():  # after </answer> it goes on with a newline (and answers again), never ending
        writes_on.table.weight[ID["</answer>"]].fill_(-10.0)
        writes_on.table.weight[ID["</answer>"], ID["\n"]] = 10.0
    runs = {}
    for stop in (False, True):
        for name, model in (("ends", answers_seven()), ("writes_on", writes_on)):
            cut = {"stop_at_answer": True} if stop else {}  # the default: to end-of-text
            cfg = GRPOConfig(prompts_per_step=3, group_size=2, max_new_tokens=16, eval_every=0, **cut)
            runs[stop, name] = Collector(task, TOK, cfg, ProblemStream(task, 0)).collect(model, step=0)
    answer = TOK.encode("<think>a</think><answer>7</answer>")
    for group in runs[False, "ends"].groups:
        r = group.rollout
        for i in range(len(r.prompt_ids)):
            n = int(r.lengths[i])
            assert (
                r.tokens[i, :n].tolist() == answer + [TOK.eos_id]
                and r.sampled_mask[i, :n].tolist() == [1] * n
            )
        assert group.rewards.tolist() == [3.0, 3.0]
    # the end-of-text token's position is in the batch's loss mask (the rewards differ: one group's
    # first row is made wrong so the group has a gradient)
    group = runs[False, "ends"].groups[0]
    group.rewards = torch.tensor([0.0, 3.0])
    batch = batch_for_update([group], GRPOConfig(prompts_per_step=1, group_size=2), TOK.pad_id, shared=False)
    mask, ids = batch.batch.mask, batch.batch.inputs
    assert int(mask[0].sum()) == len(answer) + 1
    last = int(mask[0].nonzero().max())  # mask[t] is 1 where token t + 1 is a trained completion token
    assert int(ids[0, last + 1]) == TOK.eos_id
    for group in runs[True, "ends"].groups:  # cut at </answer>: the end-of-text never sampled
        r = group.rollout
        assert all(r.tokens[i, : int(r.lengths[i])].tolist() == answer for i in range(len(r.prompt_ids)))
    assert all(g.rewards.tolist() == [0.0, 0.0] for g in runs[False, "writes_on"].groups)
    assert all(g.rewards.tolist() == [3.0, 3.0] for g in runs[True, "writes_on"].groups)


def test_budget_aware_rl_cuts_a_share_of_groups_at_a_drawn_budget_and_rewards_the_answer_after():
    """A share of groups is cut at one budget drawn per group from the range; the forced close and
    <answer> stay out of the loss, and the answer written after them earns the full reward."""
    from reasonlab.rl.collect import Collector, ProblemStream

    cfg = GRPOConfig(
        prompts_per_step=40,
        group_size=2,
        max_new_tokens=12,
        temperature=1.0,
        budget_share=0.5,
        budget_min=1,
        budget_max=4,
        eval_every=0,
    )
    task = constant_task("7")
    collected = Collector(task, TOK, cfg, ProblemStream(task, 0)).collect(thinks_forever(), step=0)
    budgets = []
    for group in collected.groups:
        rollout, rows = group.rollout, group.rows(2)
        think = rollout.think_tokens[rows]
        if rollout.finish_reason[rows.start] == "budget":  # cut: both rows at the group's one budget
            assert think[0] == think[1] and 1 <= think[0] <= 4
            budgets.append(think[0])
            text = rollout.texts[rows.start]
            assert text == "<think>" + "a" * think[0] + "</think><answer>7</answer>"
            mask = rollout.sampled_mask[rows.start].tolist()
            forced = [i for i, m in enumerate(mask[: int(rollout.lengths[rows.start])]) if m == 0]
            assert forced == [1 + think[0], 2 + think[0]]  # </think> and <answer>, right after the budget
            assert group.rewards.tolist() == [3.0, 3.0]
        else:  # not cut: it thinks until the tokens run out, unformatted, no reward
            assert rollout.finish_reason[rows.start] == "length" and group.rewards.tolist() == [0.0, 0.0]
    assert 10 < len(budgets) < 30 and set(budgets) == {
        1,
        2,
        3,
        4,
    }  # about half the groups; every budget drawn
    assert sum(collected.cut) == 2 * len(budgets)


def test_budget_aware_grpo_logs_the_cut_rows():
    cfg = GRPOConfig(
        steps=2,
        prompts_per_step=8,
        group_size=2,
        max_new_tokens=10,
        budget_share=0.5,
        budget_min=0,
        budget_max=3,
        eval_every=0,
        lr=1e-3,
        no_format_patience=0,
    )
    history = []
    train_grpo(thinks_forever(), TOK, constant_task("7"), cfg, log=history.append)
    for m in history:
        assert 0 < m["budget/cut_share"] < 1 and m["budget/format_rate"] == 1 and m["budget/accuracy"] == 1
        assert m["reward/format_rate"] == pytest.approx(
            m["budget/cut_share"]
        )  # only the cut rows are well-formed


def test_length_control_draws_a_target_per_group_and_rewards_the_distance_to_it():
    from reasonlab.rl.collect import Collector, ProblemStream

    cfg = GRPOConfig(
        prompts_per_step=30,
        group_size=2,
        max_new_tokens=10,
        length_target=2,
        length_target_max=6,
        length_alpha=0.5,
        eval_every=0,
    )
    task = constant_task("7")
    collected = Collector(task, TOK, cfg, ProblemStream(task, 0)).collect(answers_seven(), step=0)
    scores = collected.scores[0]
    targets = []
    for group in collected.groups:
        prompts = {
            TOK.decode(group.rollout.prompt_ids[i]) for i in range(group.index * 2, group.index * 2 + 2)
        }
        (prompt,) = prompts  # one target a group
        target = int(prompt.split("(think for ")[1].split(" tokens)")[0])
        targets.append(target)
        assert 2 <= target <= 6
        # answers_seven thinks 1 token ("a"): -alpha |1 - N| on top of the 3 points
        assert scores.parts["length_target"][group.index * 2] == pytest.approx(-0.5 * abs(1 - target))
    assert set(targets) == {2, 3, 4, 5, 6}


def test_budget_and_length_ranges_are_checked():
    from reasonlab.errors import UserError

    with pytest.raises(UserError, match="--budget-share needs --budget-max > 0"):
        GRPOConfig(budget_share=0.5)
    with pytest.raises(UserError, match="--budget-share needs"):
        GRPOConfig(budget_share=0.5, budget_min=9, budget_max=4)
    with pytest.raises(UserError, match="vLLM rollouts cannot"):
        GRPOConfig(budget_share=0.5, budget_max=4, rollout_engine="vllm")
    with pytest.raises(UserError, match="--length-target-max 8 needs 0 < --length-target <= it"):
        GRPOConfig(length_target_max=8)
    with pytest.raises(ValueError, match="--budget-share must be <= 1"):
        GRPOConfig(budget_share=1.5, budget_max=4)
    assert GRPOConfig(budget_share=1.0, budget_min=4, budget_max=4).budget_max == 4
