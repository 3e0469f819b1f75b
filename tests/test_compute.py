"""The compute ledger's attention term: query-key pairs, model shapes, what each call site counts,
the inference cost of one answer, and old states without pairs. Every expected count is worked out
here from the tokens, by explicit sums over positions, not from `compute`'s own formulas.

Run: pytest tests/test_compute.py"""

from types import SimpleNamespace

import pytest
import torch

from reasonlab import compute
from reasonlab.engine import SamplingParams, generate
from reasonlab.model import GPTConfig, new_builtin
from reasonlab.rl import GRPOConfig
from reasonlab.rl.batch import build_batch
from reasonlab.rl.types import Group, Policy
from reasonlab.rl.update import update
from reasonlab.run import Run
from reasonlab.run.optim import make_optimizer
from reasonlab.tasks import get_task
from reasonlab.train.loop import TrainConfig, tokenize_examples, train_supervised


def positions(first: int, last: int) -> int:
    """Σ t for t = first … last: the keys the tokens at those positions attend."""
    return sum(range(first, last + 1))


def test_pairs_sum_the_positions_of_the_tokens_counted():
    assert compute.pairs(0) == 0 and compute.pairs(1) == 1 and compute.pairs(4) == 1 + 2 + 3 + 4
    assert compute.pairs(7, 4) == 5 + 6 + 7 and compute.pairs(5, 5) == 0
    for P, G in [(1, 1), (3, 0), (12, 9)]:  # a prefill and its decoding make the whole sequence
        assert compute.pairs(P) + compute.pairs(P + G, P) == compute.pairs(P + G) == positions(1, P + G)
    with pytest.raises(ValueError):
        compute.pairs(3, 4)


def test_ledger_weighs_pairs_by_the_attention_cost_trained_ones_three_times():
    ledger = compute.Ledger()
    ledger.add("sampled", 10, 55)
    ledger.add("trained", 5, 15)
    ledger.add("scored", 2, 3)
    cost = compute.ModelCost(n_params=1000, attention=8)
    assert ledger.flops(cost) == 2 * 1000 * 10 + 8 * 55 + 6 * 1000 * 5 + 3 * 8 * 15 + 2 * 1000 * 2 + 8 * 3
    record = ledger.record(cost)
    assert record["sampled_pairs"] == 55 and record["n_params"] == 1000 and record["attention"] == 8
    assert record["flops"] == ledger.flops(cost)
    with pytest.raises(TypeError, match="ModelCost"):
        ledger.flops(1000)  # a bare N would leave attention out


def test_model_cost_of_the_builtin_model_and_its_wrappers():
    model, _ = new_builtin(GPTConfig(n_layer=3, n_head=4, n_kv_head=2, d_model=32, max_seq_len=64), seed=0)
    cost = compute.model_cost(model)
    assert cost.attention == 4 * 3 * (4 * 8)  # grouped-query attention: still n_head query heads of 8
    assert cost.n_params == sum(p.numel() for p in model.parameters())
    ddp_like = torch.nn.Module()
    ddp_like.module = model  # DDP's wrapper holds the model as `module`
    assert compute.model_cost(ddp_like) == cost
    with pytest.raises(compute.UnknownShape, match="Linear"):
        compute.model_cost(torch.nn.Linear(4, 4))  # no shape: an error, not 0
    with pytest.raises(ValueError):
        compute.model_cost(None)


def test_model_cost_of_a_hugging_face_llama_plain_with_its_own_head_dim_and_with_lora():
    from transformers import LlamaConfig, LlamaForCausalLM

    from reasonlab.model.hf import HFCausalLM

    def tiny(**extra):
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            **extra,
        )
        return HFCausalLM(LlamaForCausalLM(config).eval())

    model = tiny()
    assert compute.model_cost(model) == compute.ModelCost(
        sum(p.numel() for p in model.parameters()), 4 * 2 * 32
    )
    assert compute.model_cost(model.hf).attention == 4 * 2 * 32  # the bare transformers model too
    assert compute.model_cost(tiny(head_dim=16)).attention == 4 * 2 * (
        4 * 16
    )  # heads wider than hidden / heads
    pytest.importorskip("peft")
    from reasonlab.runtime import RuntimeOptions, add_lora

    lora = add_lora(tiny(), RuntimeOptions(lora_rank=4, lora_targets="q_proj,v_proj"))
    cost = compute.model_cost(lora)
    assert (
        cost.attention == 4 * 2 * 32 and cost.n_params > compute.model_cost(model).n_params
    )  # adapters counted


def test_answer_flops_is_a_prefill_and_its_decoding():
    cost = compute.ModelCost(n_params=500, attention=12)
    assert compute.answer_flops(cost, 3, 2) == 2 * 500 * 5 + 12 * (1 + 2 + 3 + 4 + 5)
    assert compute.answer_flops(cost, 4, 0) == 2 * 500 * 4 + 12 * positions(1, 4)


def test_a_generate_call_counts_each_prompt_once_and_each_new_token_at_its_position(tiny_gpt):
    model, tok = tiny_gpt
    prompts = ["1+2\n", "1+2\n", "33+4\n"]
    with compute.track() as ledger:
        rollout = generate(model, tok, prompts, SamplingParams(max_new_tokens=7, temperature=1.0, seed=0))
    lengths = [len(tok.encode(p)) for p in prompts]
    new = rollout.lengths.tolist()
    assert ledger.sampled == lengths[0] + lengths[2] + sum(new)
    assert ledger.sampled_pairs == (
        positions(1, lengths[0])
        + positions(1, lengths[2])  # the two distinct prefills
        + sum(positions(P + 1, P + G) for P, G in zip(lengths, new))
    )
    assert ledger.trained == ledger.trained_pairs == ledger.scored_pairs == 0


@pytest.mark.parametrize("packing", [False, True])
def test_a_supervised_step_counts_each_sequence_it_trains(tiny_gpt, packing):
    """Without packing each example is a sequence; a packed row is one sequence (its examples
    attend across one another)."""
    model, tok = tiny_gpt
    rows = [
        {"prompt": "1+2\n", "completion": "<think></think><answer>3</answer>"},
        {"prompt": "14+25\n", "completion": "<think>4+5=9</think><answer>39</answer>"},
    ]
    examples = tokenize_examples(tok, rows, 64)
    a, b = (len(p) + len(c) for p, c in examples)
    assert a != b
    cfg = TrainConfig(
        steps=1,
        batch_size=2,
        lr=1e-3,
        warmup_steps=0,
        group_by_length=False,
        packing=packing,
        max_seq_len=128,
    )
    with compute.track() as ledger:
        train_supervised(model, tok, examples, cfg)
    if packing:  # one packed row a + b long; the batch of 2 holds it twice
        assert ledger.trained == 2 * (a + b) and ledger.trained_pairs == 2 * positions(1, a + b)
    else:
        assert ledger.trained == a + b and ledger.trained_pairs == positions(1, a) + positions(1, b)
    assert ledger.sampled == ledger.sampled_pairs == 0


def test_the_rl_update_counts_each_row_or_a_groups_prompt_once_when_shared(tiny_gpt):
    model, tok = tiny_gpt
    G, questions = 2, ["1+2\n", "33+4\n"]
    rollout = generate(
        model,
        tok,
        [q for q in questions for _ in range(G)],
        SamplingParams(max_new_tokens=6, temperature=1.0, seed=1),
    )
    groups = [Group(rollout, i, torch.tensor([0.0, 1.0])) for i in range(len(questions))]
    P = [len(tok.encode(q)) for q in questions for _ in range(G)]
    C = rollout.lengths.tolist()
    plain = build_batch(groups, G, tok.pad_id)
    assert plain.tokens.tolist() == [p + c for p, c in zip(P, C)]
    assert plain.pairs.tolist() == [positions(1, p + c) for p, c in zip(P, C)]
    shared = build_batch(groups, G, tok.pad_id, shared=True)  # row 0 of a group carries its prompt
    assert shared.pairs.tolist() == [
        positions(1 if i % G == 0 else p + 1, p + c) for i, (p, c) in enumerate(zip(P, C))
    ]
    cfg = GRPOConfig(
        updates=2, beta=0.0, group_size=G, max_new_tokens=6
    )  # one forward-only pass, two trained
    with compute.track() as ledger:
        update(
            Policy(model, model, make_optimizer(model, 1e-3)),
            plain,
            cfg,
            lr=1e-3,
            total=float(plain.mask.sum()),
        )
    assert ledger.trained == 2 * sum(P + c for P, c in zip(P, C)) and ledger.scored == ledger.trained // 2
    assert ledger.trained_pairs == 2 * sum(positions(1, p + c) for p, c in zip(P, C))
    assert ledger.scored_pairs == ledger.trained_pairs // 2


def test_an_rl_state_saved_before_pairs_were_counted_restores():
    from reasonlab.rl.trainer import load_state

    core = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(core.parameters(), lr=0.1)
    loaded = {}
    collector = SimpleNamespace(
        stream=SimpleNamespace(load_state=lambda s: loaded.update(stream=s)),
        keep_rate=1.0,
        format_watch=SimpleNamespace(load=lambda s: loaded.update(watch=s)),
    )
    old = {
        "model": core.state_dict(),
        "optimizer": optimizer.state_dict(),
        "stream": {"at": 3},
        "step": 4,
        "seconds": 9.0,
        "compute": {"sampled": 100, "trained": 40, "scored": 0},
    }  # no *_pairs: an old state
    load_state(old, Policy(core, core, optimizer), collector)  # the trainer's part; the run's:
    run = Run(GRPOConfig(), None, {}, cost=None, position=dict, weights=dict)
    run.start(old, resume=True)
    assert run.first == 4 and run.seconds() >= 9.0
    assert run.ledger == compute.Ledger(sampled=100, trained=40)
    new = {**old, "compute": {**old["compute"], "sampled_pairs": 7, "trained_pairs": 5}}
    again = Run(GRPOConfig(), None, {}, cost=None, position=dict, weights=dict)
    again.start(new, resume=True)
    assert (again.ledger.sampled_pairs, again.ledger.trained_pairs, again.ledger.scored_pairs) == (7, 5, 0)


def test_evaluate_problems_reports_the_inference_cost_of_an_answer(tiny_gpt):
    from reasonlab.evaluate import evaluate_problems

    model, tok = tiny_gpt
    task = get_task("arithmetic", digits=1)
    params = SamplingParams(temperature=0.0, max_new_tokens=9)
    out = evaluate_problems(model, tok, task, task.problems(1, "test", 0), params=params)
    P = len(tok.encode(out["rows"][0]["prompt"]))
    G = int(
        generate(model, tok, [out["rows"][0]["prompt"]], params).lengths[0]
    )  # greedy: the same completion
    assert out["mean_prompt_tokens"] == P and out["mean_completion_tokens"] == G
    N, attention = sum(p.numel() for p in model.parameters()), 4 * 2 * 32  # tiny_gpt: 2 layers, d_model 32
    assert out["flops_per_answer"] == 2 * N * (P + G) + attention * positions(1, P + G)
    assert out["flops_per_answer"] == compute.answer_flops(compute.model_cost(model), P, G)
    chain = get_task(
        "chain", length=3, min_length=2
    )  # problems of 1 and 2 hops: each difficulty its own cost
    out = evaluate_problems(model, tok, chain, chain.problems(6, "test", 0), params=params)
    by = out["by_difficulty"].values()
    assert len(by) == 2 and sum(d["n"] * d["flops_per_answer"] for d in by) / 6 == pytest.approx(
        out["flops_per_answer"]
    )
