"""The sampler: budget cap and extension, forced-token masks, determinism, stop rules, both model
kinds. Run: pytest tests/engine/test_engine.py"""

import pytest
import torch

from reasonlab.engine import SamplingParams, generate
from reasonlab.model import load_model, new_builtin
from tests.conftest import BigramLM, random_tag_writer
from tests.model.test_model import make_tiny_hf

_, TOK = new_builtin()
ID = {s: TOK.encode(s)[0] for s in ["<think>", "</think>", "<answer>", "</answer>", "a", "7", ",", "x"]}


def thinking_tokens(tokens: list[int], prefilled: bool) -> int:
    """Tokens between <think> and </think>, counted from the output itself (not the engine's count)."""
    start = -1 if prefilled else tokens.index(ID["<think>"])
    end = tokens.index(ID["</think>"]) if ID["</think>"] in tokens else len(tokens)
    return end - start - 1


def never_closes():
    """A model that thinks forever: after anything it writes 'x'."""
    return BigramLM(len(TOK), {}, default=ID["x"])


def closes_at_once():
    """A model that closes its thinking after one token and answers 7."""
    script = {
        ID["<think>"]: ID["a"],
        ID["a"]: ID["</think>"],
        ID["</think>"]: ID["<answer>"],
        ID["<answer>"]: ID["7"],
        ID["7"]: ID["</answer>"],
        ID[","]: ID["a"],
    }
    return BigramLM(len(TOK), script, default=ID["a"])


@pytest.mark.parametrize("budget", [0, 1, 5, 17])
def test_cap_is_exact_in_every_row(budget):
    prompts = ["1+1\n<think>", "22+3\n<think>", "5\n<think>"]
    r = generate(never_closes(), TOK, prompts, SamplingParams(max_new_tokens=40, think_budget=budget, seed=0))
    for i in range(3):
        tokens = r.tokens[i, : r.lengths[i]].tolist()
        assert thinking_tokens(tokens, prefilled=True) == budget == r.think_tokens[i]
        assert tokens[budget : budget + 2] == [ID["</think>"], ID["<answer>"]]
        assert r.sampled_mask[i, budget : budget + 2].tolist() == [0, 0]  # forced
        assert r.sampled_mask[i, :budget].all() and r.sampled_mask[i, budget + 2 : r.lengths[i]].all()
        assert r.finish_reason[i] == "length"  # the model never writes </answer>


def test_per_row_budgets_on_a_random_gpt(tiny_gpt):
    model, tok = tiny_gpt
    budgets = [0, 3, 8, 30]
    r = generate(
        model, tok, ["12+34\n<think>"] * 4, SamplingParams(max_new_tokens=50, think_budget=budgets, seed=3)
    )
    for i, b in enumerate(budgets):
        tokens = r.tokens[i, : r.lengths[i]].tolist()
        assert thinking_tokens(tokens, prefilled=True) <= b  # it may close or stop on its own first
        assert r.think_tokens[i] == thinking_tokens(tokens, prefilled=True) or ID["</think>"] not in tokens


@pytest.mark.parametrize("n", [0, 1, 3])
def test_extend_inserts_exactly_n_waits(n):
    r = generate(
        closes_at_once(), TOK, ["q\n<think>"], SamplingParams(max_new_tokens=80, extend=n, temperature=0)
    )
    text = r.texts[0]
    assert text == "a" + "Wait,a" * n + "</think><answer>7</answer>"
    assert text.count("Wait,") == n
    forced = (1 - r.sampled_mask[0, : r.lengths[0]]).sum().item()
    assert forced == n * len(TOK.wait_ids)
    assert r.finish_reason == ["stop"] and r.think_tokens == [1 + n * 6]


def test_extend_per_row():
    r = generate(
        closes_at_once(),
        TOK,
        ["q\n<think>"] * 3,
        SamplingParams(max_new_tokens=80, extend=[0, 1, 3], temperature=0),
    )
    assert r.texts == ["a" + "Wait,a" * n + "</think><answer>7</answer>" for n in (0, 1, 3)]
    with pytest.raises(ValueError, match="extend has 2 entries for 3"):
        generate(closes_at_once(), TOK, ["q\n<think>"] * 3, SamplingParams(extend=[1, 2]))
    with pytest.raises(ValueError):
        SamplingParams(extend=[1, -1])


def test_extend_then_cap_never_exceeds_budget():
    r = generate(
        closes_at_once(),
        TOK,
        ["q\n<think>"],
        SamplingParams(max_new_tokens=80, extend=5, think_budget=9, temperature=0),
    )
    assert r.think_tokens == [9] and thinking_tokens(r.tokens[0, : r.lengths[0]].tolist(), True) == 9
    assert r.finish_reason == ["budget"] and r.texts[0].endswith("<answer>7</answer>")


def test_stop_rules():
    r = generate(
        closes_at_once(), TOK, ["q\n<think>", "q\n"], SamplingParams(max_new_tokens=30, temperature=0)
    )
    assert r.texts[0] == "a</think><answer>7</answer>" and r.finish_reason[0] == "stop"
    assert r.lengths[0] == 5 and (r.tokens[0, 5:] == TOK.pad_id).all()
    r = generate(closes_at_once(), TOK, ["q\n<think>"], SamplingParams(max_new_tokens=3, temperature=0))
    assert r.lengths.tolist() == [3] and r.finish_reason == ["length"]
    r = generate(
        closes_at_once(),
        TOK,
        ["q\n<think>"],
        SamplingParams(max_new_tokens=30, temperature=0, stop_at_answer=False),
    )
    assert r.lengths[0] == 30
    eos = BigramLM(len(TOK), {}, default=TOK.eos_id)
    r = generate(eos, TOK, ["q\n"], SamplingParams(max_new_tokens=10, temperature=0))
    assert r.lengths.tolist() == [1] and r.finish_reason == ["stop"] and r.texts == [""]


def test_greedy_is_deterministic_and_seeds_reproduce(tiny_gpt):
    model, tok = tiny_gpt
    prompts = ["12+34\n", "7*8\n", "100-1\n"]
    greedy = SamplingParams(max_new_tokens=20, temperature=0)
    assert generate(model, tok, prompts, greedy).texts == generate(model, tok, prompts, greedy).texts
    a = generate(model, tok, prompts, SamplingParams(max_new_tokens=20, seed=7))
    b = generate(model, tok, prompts, SamplingParams(max_new_tokens=20, seed=7))
    c = generate(model, tok, prompts, SamplingParams(max_new_tokens=20, seed=8))
    assert a.texts == b.texts and torch.equal(a.logprobs, b.logprobs)
    assert a.texts != c.texts
    top1 = generate(model, tok, prompts, SamplingParams(max_new_tokens=20, top_k=1, seed=1))
    assert top1.texts == generate(model, tok, prompts, greedy).texts


def test_batching_does_not_change_greedy_output(tiny_gpt):
    model, tok = tiny_gpt
    params = SamplingParams(max_new_tokens=15, temperature=0)
    alone = [generate(model, tok, [p], params).texts[0] for p in ["1\n", "12345+678\n"]]
    assert generate(model, tok, ["1\n", "12345+678\n"], params).texts == alone


def test_logprobs_match_a_recomputation(tiny_gpt):
    model, tok = tiny_gpt
    r = generate(model, tok, ["3+4\n"], SamplingParams(max_new_tokens=12, seed=0, temperature=0.7))
    ids = torch.tensor([r.prompt_ids[0] + r.tokens[0].tolist()])
    logp = torch.log_softmax(model(ids)[0] / 0.7, -1)
    P = len(r.prompt_ids[0])
    expected = logp[P - 1 : -1].gather(-1, ids[0, P:, None]).squeeze(-1)
    assert torch.allclose(r.logprobs[0], expected, atol=1e-4)


def test_hf_model_through_the_same_engine(tmp_path):
    make_tiny_hf(tmp_path / "m")
    model, tok = load_model(tmp_path / "m")
    prompts = ["12+34\n<think>", "5\n<think>"]
    r = generate(model, tok, prompts, SamplingParams(max_new_tokens=20, think_budget=4, seed=0))
    for i in range(2):
        assert thinking_tokens(r.tokens[i, : r.lengths[i]].tolist(), True) <= 4
    greedy = SamplingParams(max_new_tokens=10, temperature=0)
    assert generate(model, tok, prompts, greedy).texts == generate(model, tok, prompts, greedy).texts
    # Same greedy text as transformers' own generate.
    ids = torch.tensor([tok.encode(prompts[0])])
    ref = model.hf.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_id)
    assert generate(model, tok, prompts[:1], greedy).texts[0] == tok.decode(ref[0, ids.shape[1] :].tolist())


def test_bad_params():
    for kwargs in (
        {"max_new_tokens": 0},
        {"temperature": -1},
        {"top_p": 0},
        {"think_budget": -1},
        {"extend": -2},
    ):
        with pytest.raises(ValueError):
            SamplingParams(**kwargs)
    with pytest.raises(ValueError, match="2 entries for 1"):
        generate(never_closes(), TOK, ["q"], SamplingParams(think_budget=[1, 2]))


def test_row_seeds_make_a_row_independent_of_its_batch(tiny_gpt):
    model, tok = tiny_gpt
    prompts = ["12+34\n", "7*8\n", "100-1\n", "5\n"]
    full = generate(model, tok, prompts, SamplingParams(max_new_tokens=20, row_seeds=[10, 11, 12, 13]))
    # the same rows split over two "ranks", in another order: the same completions
    left = generate(model, tok, prompts[2:][::-1], SamplingParams(max_new_tokens=20, row_seeds=[13, 12]))
    right = generate(model, tok, prompts[:2], SamplingParams(max_new_tokens=20, row_seeds=[10, 11]))
    assert right.texts + left.texts[::-1] == full.texts
    other = generate(model, tok, prompts, SamplingParams(max_new_tokens=20, row_seeds=[20, 21, 22, 23]))
    assert other.texts != full.texts
    with pytest.raises(ValueError, match="row_seeds has 1 entries for 4"):
        generate(model, tok, prompts, SamplingParams(row_seeds=[1]))


def test_keyed_noise_samples_the_right_distribution():
    from reasonlab.engine import keyed_uniform, sample_next

    torch.manual_seed(0)
    logits = torch.randn(5) * 2
    n = 40000
    keys = torch.arange(n) * 7919 + 3  # many rows, one step each
    table = keyed_uniform(keys[:, None], torch.arange(6))  # what `generate` draws from: (rows, steps)
    assert torch.equal(table[:, 4], keyed_uniform(keys, 4)) and torch.equal(
        table[:, 5], keyed_uniform(keys, 5)
    )
    assert 0 < float(table.min()) and float(table.max()) < 1
    tokens, _ = sample_next(logits.expand(n, 5), 1.0, 0, 1.0, None, table[:, 4])
    freq = torch.bincount(tokens, minlength=5).float() / n
    expected = torch.softmax(logits, -1)
    assert (freq - expected).abs().max() < 0.01  # ~4 standard errors at n = 40000
    # the next step's draw is independent of this one: two independent draws differ w.p. 1 - Σp²
    later, _ = sample_next(logits.expand(n, 5), 1.0, 0, 1.0, None, table[:, 5])
    assert abs((later != tokens).float().mean() - (1 - (expected**2).sum())) < 0.015
    # truncation: top-2 never draws the other tokens and keeps their ratio
    top2, _ = sample_next(logits.expand(n, 5), 1.0, 2, 1.0, None, table[:, 4])
    best = torch.topk(logits, 2).indices
    assert set(top2.tolist()) == set(best.tolist())
    share = (top2 == best[0]).float().mean()
    assert abs(share - torch.softmax(logits[best], -1)[0]) < 0.01


@pytest.mark.parametrize("kind", ["builtin", "hf"])
def test_repeated_prompts_are_prefilled_once_with_the_same_result(tiny_gpt, tmp_path, kind):
    """A group's G copies of a prompt share one prefill; each copy still samples on its own and
    the completions are those of prompts prefilled one by one."""
    model, tok = tiny_gpt
    if kind == "hf":
        make_tiny_hf(tmp_path / "m")
        model, tok = load_model(tmp_path / "m")
    calls = []
    decode = model.decode
    model.decode = lambda ids, *a: (calls.append(ids.shape), decode(ids, *a))[1]
    prompts = ["12+34\n"] * 3 + ["7*8\n"] * 3
    seeds = list(range(6))
    grouped = generate(model, tok, prompts, SamplingParams(max_new_tokens=12, row_seeds=seeds))
    assert calls[0][0] == 2  # two distinct prompts went through the prefill
    singles = [
        generate(model, tok, [p], SamplingParams(max_new_tokens=12, row_seeds=[s])).texts[0]
        for p, s in zip(prompts, seeds)
    ]
    assert grouped.texts == singles and len(set(grouped.texts[:3])) > 1  # copies sample independently


def test_shared_prompt_cache_samples_what_copied_caches_sample(tiny_gpt, monkeypatch):
    """The built-in model keeps one cache per distinct prompt and attends to it once per group; the
    completions, log-probs and finish reasons equal those of copying each prompt's cache to its
    rows, also after finished rows leave the batch (groups of unequal sizes, out of order)."""
    from reasonlab.model import GPT

    model, tok = tiny_gpt
    prompts = ["12+34\n"] * 3 + ["7*8\n"] * 5 + ["12+34\n", "9\n"]
    params = SamplingParams(max_new_tokens=40, row_seeds=list(range(10)), temperature=1.5)
    shares = []
    share = GPT.share_rows
    monkeypatch.setattr(
        GPT,
        "share_rows",
        lambda self, cache, index: (shares.append(index.tolist()), share(self, cache, index))[1],
    )
    shared = generate(model, tok, prompts, params)
    assert shares == [[0, 0, 0, 1, 1, 1, 1, 1, 0, 2]]
    monkeypatch.delattr(GPT, "share_rows")
    copied = generate(model, tok, prompts, params)
    assert shared.texts == copied.texts and shared.finish_reason == copied.finish_reason
    assert len(set(shared.lengths.tolist())) > 2  # rows ended at different steps: compaction ran
    assert torch.allclose(shared.logprobs, copied.logprobs, atol=1e-5)


def test_dense_groups_sample_what_copied_caches_sample(tiny_gpt, monkeypatch):
    """GRPO's layout (every prompt repeated G times, in order) takes the dense path, where a group's
    queries are a view rather than a scatter; it samples what copied caches sample."""
    from reasonlab.model import GPT
    from reasonlab.model.gpt import KVCache

    model, tok = tiny_gpt
    prompts = ["12+34\n"] * 4 + ["7*8\n"] * 4 + ["9\n"] * 4
    params = SamplingParams(max_new_tokens=40, row_seeds=list(range(12)), temperature=1.5)
    dense = []
    share = KVCache.share_rows
    monkeypatch.setattr(
        KVCache, "share_rows", lambda self, index: (share(self, index), dense.append(self.shared.dense))
    )
    shared = generate(model, tok, prompts, params)
    assert dense == [True]
    monkeypatch.delattr(GPT, "share_rows")
    copied = generate(model, tok, prompts, params)
    assert shared.texts == copied.texts and shared.finish_reason == copied.finish_reason
    assert torch.allclose(shared.logprobs, copied.logprobs, atol=1e-5)


def test_vectorized_decoding_equals_the_row_state_machine(monkeypatch):
    """With nothing to force, the engine tracks phases and stop rules as tensor ops over the batch;
    it must emit what the per-row state machine emits: tokens, log-probs, thinking counts, finish
    reasons, on a model that writes tags (and EOS, and </answer> inside its thinking) at random."""
    from reasonlab.engine import generation as engine  # where `generate` looks `_vectorizable` up

    model = random_tag_writer(TOK, tag_boost=2.5, eos_boost=0.5)
    prompts = ["1+1\n", "2+2\n<think>", "33\n", "x\n<think>"] * 8
    runs = []
    for vectorized in (True, False):
        monkeypatch.setattr(engine, "_vectorizable", lambda *a, v=vectorized: v)
        runs.append(
            [
                generate(model, TOK, prompts, SamplingParams(max_new_tokens=24, seed=s, min_new_tokens=m))
                for s, m in ((0, 0), (1, 3), (2, 0))
            ]
        )
    for fast, slow in zip(*runs):
        assert fast.tokens.tolist() == slow.tokens.tolist() and fast.texts == slow.texts
        assert fast.think_tokens == slow.think_tokens and fast.finish_reason == slow.finish_reason
        assert torch.equal(fast.sampled_mask, slow.sampled_mask) and torch.allclose(
            fast.logprobs, slow.logprobs
        )
    reasons = {r for rollout in runs[0] for r in rollout.finish_reason}
    assert reasons == {"stop", "length"} and len({t for r in runs[0] for t in r.think_tokens}) > 3


def test_vectorized_budget_cap_equals_the_row_state_machine(monkeypatch):
    """The thinking cap on the tensor path: the forced </think><answer> (masked out, with the
    log-probs the row path records), the thinking counts and "budget" finish reasons equal the
    per-row state machine's, for one budget for all rows (0 too) and per-row budgets with None."""
    from reasonlab.engine import generation as engine  # where `generate` looks `_vectorizable` up

    assert engine._vectorizable(
        TOK, [None, 3], SamplingParams(think_budget=[None, 3])
    )  # budgets go the fast way
    assert not engine._vectorizable(TOK, [3], SamplingParams(think_budget=3, extend=1))
    model = random_tag_writer(TOK, tag_boost=1.0, eos_boost=-1.0)
    prompts = ["1+1\n", "2+2\n<think>", "33\n", "x\n<think>"] * 8
    cases = [
        dict(think_budget=0, seed=0),
        dict(think_budget=2, seed=1, min_new_tokens=3),
        dict(think_budget=[None, 0, 1, 4, None, 6, 2, 9] * 4, seed=2),
        dict(think_budget=[3, None] * 16, row_seeds=list(range(32)), temperature=0.8, top_k=20),
        dict(think_budget=[None, 5] * 16, temperature=0),
        dict(think_budget=0, seed=3, max_new_tokens=1),
    ]
    runs = []
    for vectorized in (True, False):
        monkeypatch.setattr(engine, "_vectorizable", lambda *a, v=vectorized: v)
        runs.append(
            [generate(model, TOK, prompts, SamplingParams(**{"max_new_tokens": 24, **kw})) for kw in cases]
        )
    for fast, slow in zip(*runs):
        assert fast.tokens.tolist() == slow.tokens.tolist() and fast.texts == slow.texts
        assert fast.think_tokens == slow.think_tokens and fast.finish_reason == slow.finish_reason
        assert torch.equal(fast.sampled_mask, slow.sampled_mask) and torch.allclose(
            fast.logprobs, slow.logprobs
        )
        assert torch.equal(fast.lengths, slow.lengths)
    reasons = {r for rollout in runs[0] for r in rollout.finish_reason}
    assert reasons == {"stop", "budget", "length"}
    assert all(
        ((1 - r.sampled_mask) * r.attention_mask).sum() > 0 for r in runs[0]
    )  # every run forced tokens


@pytest.mark.parametrize("vectorized", [True, False])
def test_per_row_max_new_tokens_cut_each_row_at_its_own_limit(monkeypatch, vectorized):
    """`max_new_tokens` as a list: each row ends at its own limit ("length") and writes what it
    writes alone with that limit (row seeds: a row's samples never depend on its batch); a row that
    stops on its last allowed token says "stop"."""
    from reasonlab.engine import generation as engine  # where `generate` looks `_vectorizable` up

    monkeypatch.setattr(engine, "_vectorizable", lambda *a, v=vectorized: v)
    model = random_tag_writer(TOK, tag_boost=2.5, eos_boost=0.5)
    prompts = ["1+1\n", "2+2\n<think>", "33\n", "x\n<think>"] * 4
    limits, seeds = [1, 3, 7, 24] * 4, list(range(100, 116))
    mixed = generate(
        model, TOK, prompts, SamplingParams(max_new_tokens=limits, row_seeds=seeds, think_budget=5)
    )
    for i, (prompt, n, seed) in enumerate(zip(prompts, limits, seeds)):
        alone = generate(
            model, TOK, [prompt], SamplingParams(max_new_tokens=n, row_seeds=[seed], think_budget=5)
        )
        assert mixed.texts[i] == alone.texts[0] and mixed.finish_reason[i] == alone.finish_reason[0]
        assert int(mixed.lengths[i]) <= n and (
            mixed.finish_reason[i] != "length" or int(mixed.lengths[i]) == n
        )
    assert "length" in [r for r, n in zip(mixed.finish_reason, limits) if n in (1, 3)]
    assert "length" in mixed.finish_reason and {"stop", "budget"} & set(mixed.finish_reason)
    with pytest.raises(ValueError, match="max_new_tokens has 2 entries for 16"):
        generate(model, TOK, prompts, SamplingParams(max_new_tokens=[4, 5]))
    with pytest.raises(ValueError):
        SamplingParams(max_new_tokens=[3, 0])


@pytest.mark.parametrize("vectorized", [True, False])
def test_on_step_streams_every_token_and_ends_rows_it_names(monkeypatch, vectorized):
    """`generate(..., on_step=)` hears each step's rows and tokens: put together per row they are
    the rollout's tokens, in order. The rows it returns end at once ("stop", or "budget" when
    capped) and their tokens stop there; the other rows sample exactly what they sample without it."""
    from reasonlab.engine import generation as engine  # where `generate` looks `_vectorizable` up

    monkeypatch.setattr(engine, "_vectorizable", lambda *a, v=vectorized: v)
    model = random_tag_writer(TOK, tag_boost=1.0, eos_boost=-2.0)
    prompts = ["1+1\n", "2+2\n<think>", "33\n", "x\n<think>"] * 3
    params = SamplingParams(max_new_tokens=30, row_seeds=list(range(12)), think_budget=[None, 2] * 6)
    heard = {i: [] for i in range(len(prompts))}

    def listen(rows, tokens):
        assert len(rows) == len(tokens) == len(set(rows))
        for i, t in zip(rows, tokens):
            heard[i].append(t)

    plain = generate(model, TOK, prompts, params, on_step=listen)
    assert [heard[i] for i in range(len(prompts))] == [
        r[:n].tolist() for r, n in zip(plain.tokens, plain.lengths)
    ]

    ends = {0: 4, 3: 6, 5: 1}  # row -> the step after which it is ended
    seen = {i: 0 for i in range(len(prompts))}

    def stopper(rows, tokens):
        for i in rows:
            seen[i] += 1
        return [i for i in rows if seen[i] == ends.get(i)]

    cut = generate(model, TOK, prompts, params, on_step=stopper)
    for i in range(len(prompts)):
        n = ends.get(i)
        if n is None or int(plain.lengths[i]) <= n:
            assert cut.texts[i] == plain.texts[i] and cut.finish_reason[i] == plain.finish_reason[i]
        else:
            assert int(cut.lengths[i]) == n and cut.tokens[i, :n].tolist() == plain.tokens[i, :n].tolist()
            assert cut.finish_reason[i] in ("stop", "budget")
    assert any(int(plain.lengths[i]) > n for i, n in ends.items())


@pytest.mark.parametrize("temperature", [1e-40, 1e-300])
def test_a_tiny_temperature_generates_what_greedy_generates(tiny_gpt, tmp_path, temperature):
    """`generate --temperature 1e-40` crashed (index 512 is out of bounds): the NaN softmax of
    logits / 1e-40. It is greedy in the limit, for the built-in model and for an HF model."""
    make_tiny_hf(tmp_path / "hf")
    prompts = ["12+34\n", "7*8\n<think>"]
    for model, tok in (tiny_gpt, load_model(tmp_path / "hf")):
        greedy = generate(model, tok, prompts, SamplingParams(max_new_tokens=12, temperature=0))
        for extra in ({"seed": 3}, {"row_seeds": [5, 6]}, {"extend": 1}):  # extend: the row state machine
            tiny = generate(
                model, tok, prompts, SamplingParams(max_new_tokens=12, temperature=temperature, **extra)
            )
            if "extend" not in extra:
                assert tiny.texts == greedy.texts
                assert torch.equal(tiny.tokens, greedy.tokens)
            assert torch.isfinite(tiny.logprobs).all()
            assert (tiny.logprobs[tiny.sampled_mask.bool()] == 0).all()  # all the mass on the sampled token
