"""Qwen2 (Qwen2.5-Coder's architecture) and Gemma3 (Gemma-3-270m's: sliding-window layers between
full ones) through reasonlab's own engine and training forward, against transformers' full forward
without a cache on each unpadded sequence: greedy tokens and their log-probs from `generate` (prompts
of several lengths in one left-padded batch, repeated prompts prefilled once, rows leaving the batch),
and the per-token log-probs the RL update and SFT train on (right-padded rows, and the shared-prompt
layout where the model takes it), with every sequence several sliding windows long. Gemma3 refuses
the shared-prompt fast paths and says why. Tiny random models built here, nothing downloaded.
Run: pytest tests/model/test_hf_archs.py"""

import pytest
import torch
import torch.nn.functional as F

from reasonlab.engine import SamplingParams, generate
from reasonlab.model import GroupedBatch, HFCausalLM, build_char_tokenizer, load_model
from reasonlab.model.hf import grouped_unsupported
from reasonlab.rl.batch import build_batch
from reasonlab.rl.types import Group
from reasonlab.rl.update import token_logprobs
from reasonlab.train.loop import IGNORE, collate, lm_loss

ARCHS = ("qwen2", "gemma3")
WINDOW = 4  # Gemma3's sliding window: every sequence below is several windows long
G = 3  # rows per prompt (a GRPO group)
PROMPTS = ["12+34=", "Q: 7*8?\n<think>", "a longer prompt of many tokens:"]
ATOL = 1e-4


def tokenizer(arch: str):
    """The built-in character tokenizer; Gemma's writes a BOS before a prompt, as Gemma-3's does."""
    hf = build_char_tokenizer()
    if arch != "gemma3":
        return hf
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    core = hf.backend_tokenizer
    core.add_special_tokens(["<bos>"])
    bos = core.token_to_id("<bos>")
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )


def tiny_config(arch: str, tok):
    """Qwen2.5-Coder-0.5B's and Gemma-3-270m's configurations in miniature: tied embeddings, grouped-
    query attention; Qwen2's sliding window present in its config but off (use_sliding_window false, as
    in the real one); Gemma3's layers sliding (window 4), full, sliding."""
    import transformers

    shared = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        attn_implementation="eager",
    )
    if arch == "qwen2":
        return transformers.Qwen2Config(
            **shared,
            num_hidden_layers=2,
            num_key_value_heads=2,
            use_sliding_window=False,
            sliding_window=WINDOW,
            max_window_layers=1,
        )
    return transformers.Gemma3TextConfig(
        **shared,
        num_hidden_layers=3,
        num_key_value_heads=1,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    )


@pytest.fixture(scope="module", params=ARCHS)
def saved(request, tmp_path_factory):
    """(arch, folder, reference): a tiny random model of `arch` saved with its tokenizer, and the same
    model in memory with eager attention, the ground truth."""
    from transformers import AutoModelForCausalLM

    arch = request.param
    tok = tokenizer(arch)
    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_config(tiny_config(arch, tok)).eval()
    with torch.no_grad():  # weights large enough that greedy choices are clear (no near-ties)
        for name, p in ref.named_parameters():
            # Qwen2's norms scale by their weight, Gemma3's by 1 + weight
            base = 1.0 if "norm" in name and arch == "qwen2" else 0.0
            p.copy_(base + 0.3 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp(arch)
    ref.save_pretrained(folder)
    tok.save_pretrained(folder)
    if arch == "qwen2":
        assert set(ref.config.layer_types) == {"full_attention"}
    else:
        assert ref.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
        assert ref.config.sliding_window == WINDOW
    return arch, folder, ref


def loaded(folder, attention: str):
    model, tok = load_model(folder)
    model.hf.config._attn_implementation = attention
    return model, tok


@torch.no_grad()
def hf_logprobs(ref, ids: list[int]) -> torch.Tensor:
    """(len(ids), V): log_softmax of transformers' full forward on the unpadded sequence, no cache."""
    logits = ref(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
    return F.log_softmax(logits.float(), dim=-1)


def hf_greedy(ref, prompt: list[int], limit: int, eos: int) -> list[int]:
    """Greedy continuation by transformers alone: the full forward on the whole sequence at every step,
    until EOS or `limit` tokens. Each choice must be clear (top two logits apart)."""
    ids, out = list(prompt), []
    while len(out) < limit and (not out or out[-1] != eos):
        top = hf_logprobs(ref, ids)[-1].topk(2)
        assert float(top.values[0] - top.values[1]) > ATOL, "a near-tie: the comparison would be fragile"
        out.append(int(top.indices[0]))
        ids.append(out[-1])
    return out


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_greedy_generation_is_transformers_greedy_with_its_logprobs(saved, attention, monkeypatch):
    """Greedy `generate` on a batch of prompts of different lengths (left-padded), each repeated for a
    group (prefilled once, then kept once for the group on Qwen2, copied to its rows on Gemma3), rows
    given different token limits (finished rows leave the batch): every row's tokens are transformers'
    own greedy continuation and every recorded log-prob is log_softmax of its full forward's logits,
    though prompt + completion spans many of Gemma3's sliding windows."""
    arch, folder, ref = saved
    model, tok = loaded(folder, attention)
    caches, selects = [], []
    share, select = HFCausalLM.share_rows, HFCausalLM.select_rows
    monkeypatch.setattr(HFCausalLM, "share_rows", lambda s, c, i: (share(s, c, i), caches.append(c))[0])
    monkeypatch.setattr(HFCausalLM, "select_rows", lambda s, c, i: (select(s, c, i), selects.append(i))[0])
    prompts = [p for p in PROMPTS for _ in range(G)]
    limits = [24, 9, 17, 30, 5, 30, 12, 30, 2]
    rollout = generate(
        model, tok, prompts, SamplingParams(temperature=0.0, max_new_tokens=limits, stop_at_answer=False)
    )
    assert rollout.prompt_ids == [tok.hf(p)["input_ids"] for p in prompts]  # Gemma: BOS first
    assert len({len(p) for p in rollout.prompt_ids}) == len(PROMPTS)
    worst, totals = 0.0, []
    for i, prompt in enumerate(rollout.prompt_ids):
        n = int(rollout.lengths[i])
        got = rollout.tokens[i, :n].tolist()
        assert got == hf_greedy(ref, prompt, limits[i], tok.eos_id), f"row {i}"
        want = hf_logprobs(ref, prompt + got)[len(prompt) - 1 : -1].gather(-1, torch.tensor(got)[:, None])
        worst = max(worst, float((rollout.logprobs[i, :n] - want.squeeze(-1)).abs().max()))
        totals.append(len(prompt) + n)
    assert worst < ATOL, f"{arch}/{attention}: log-probs off by {worst:.2e}"
    assert max(totals) >= 8 * WINDOW and min(totals) > WINDOW
    assert len(set(rollout.lengths.tolist())) > 2 and selects  # rows finished and left the batch
    (cache,) = caches  # the prompts were prefilled once each: shared on Qwen2, copied on Gemma3
    assert (cache.shared is not None) == (arch == "qwen2")


def sampled_groups(model, tok) -> list[Group]:
    """G sampled completions (temperature 1, row seeds) of each prompt, as GRPO's groups."""
    prompts = [p for p in PROMPTS for _ in range(G)]
    params = SamplingParams(
        temperature=1.0, max_new_tokens=[20, 7, 28] * len(PROMPTS), row_seeds=list(range(len(prompts)))
    )
    rollout = generate(model, tok, prompts, params)
    rewards = torch.tensor([0.0, 1.0, 2.0])
    return [Group(rollout, g, rewards.roll(g)) for g in range(len(PROMPTS))]


def hf_row_logprobs(ref, ids: list[int]) -> torch.Tensor:
    """(len(ids) - 1,): transformers' log-prob of each next token of the unpadded sequence."""
    return hf_logprobs(ref, ids)[:-1].gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@torch.no_grad()
def test_training_logprobs_are_transformers_logprobs(saved, attention):
    """What the RL update trains on (`token_logprobs` on `build_batch`'s right-padded rows, and on the
    shared-prompt `GroupedBatch` where the model takes it) and the sampling engine's log-probs are
    transformers' full-forward log-probs of each sequence, every position of it, sequences many
    sliding windows long."""
    arch, folder, ref = saved
    model, tok = loaded(folder, attention)
    groups = sampled_groups(model, tok)
    rollout = groups[0].rollout
    padded = build_batch(groups, G, tok.pad_id)
    logp_padded, _ = token_logprobs(model, padded.inputs)
    grouped = None
    if model.shares_prompts:
        grouped = build_batch(groups, G, tok.pad_id, shared=True)
        assert isinstance(grouped.inputs, GroupedBatch)
        logp_grouped, _ = token_logprobs(model, grouped.inputs)
    worst = {"padded": 0.0, "grouped": 0.0, "engine": 0.0}
    for i, prompt in enumerate(rollout.prompt_ids):
        n = int(rollout.lengths[i])
        ids = prompt + rollout.tokens[i, :n].tolist()
        want = hf_row_logprobs(ref, ids)
        assert padded.inputs[i, : len(ids)].tolist() == ids
        worst["padded"] = max(worst["padded"], float((logp_padded[i, : len(ids) - 1] - want).abs().max()))
        completion = want[len(prompt) - 1 :]
        worst["engine"] = max(worst["engine"], float((rollout.logprobs[i, :n] - completion).abs().max()))
        if grouped is not None:
            worst["grouped"] = max(worst["grouped"], float((logp_grouped[i, :n] - completion).abs().max()))
    assert all(v < ATOL for v in worst.values()), f"{arch}/{attention}: largest differences {worst}"
    assert max(len(p) + int(n) for p, n in zip(rollout.prompt_ids, rollout.lengths)) >= 8 * WINDOW
    assert (grouped is not None) == (arch == "qwen2")  # Gemma3 trains on padded rows (next test)


@torch.no_grad()
def test_sft_loss_is_transformers_cross_entropy(saved):
    """SFT's loss (`lm_loss` on `collate`'s right-padded rows, completion tokens only) is, token by
    token, the cross-entropy of transformers' full forward on each unpadded example."""
    arch, folder, ref = saved
    model, tok = loaded(folder, "sdpa")
    texts = [
        ("12+34=", "46, and a long completion after it"),
        ("a longer prompt, ", "then x"),
        ("7*8=", "56"),
    ]
    examples = [(tok.encode_prompts([p])[0], tok.encode(c) + [tok.eos_id]) for p, c in texts]
    input_ids, labels = collate(examples, tok.pad_id)
    assert int((labels != IGNORE).sum()) == sum(len(c) for _, c in examples)
    got = lm_loss(model, input_ids, labels, reduction="none").view(labels.shape)
    worst = 0.0
    for i, (p, c) in enumerate(examples):
        want = -hf_row_logprobs(ref, p + c)[len(p) - 1 :]
        worst = max(worst, float((got[i, len(p) - 1 : len(p) + len(c) - 1] - want).abs().max()))
    assert worst < ATOL, f"{arch}: token losses off by {worst:.2e}"
    assert max(len(p) + len(c) for p, c in examples) >= 8 * WINDOW


def test_qwen2_takes_the_shared_prompt_paths_gemma3_refuses_them_saying_why(saved):
    """Gemma3's type is not one the grouped GRPO pass is tested on, and its sliding-window layers cache
    a window of the padded prompt's slots: it says so, a grouped batch raises (the trainer builds
    padded rows), and the engine copies each prompt's cache to its rows instead of sharing it."""
    from reasonlab.engine.steps import _prefill
    from reasonlab.model import hf as hf_module

    arch, folder, _ = saved
    model, tok = loaded(folder, "sdpa")
    if arch == "qwen2":  # the real Qwen2.5's config: sliding window present but off: the fast paths run
        assert model.shares_prompts and grouped_unsupported(model.hf) is None
        return
    assert not model.shares_prompts
    assert "model type 'gemma3_text'" in grouped_unsupported(model.hf)
    with pytest.MonkeyPatch.context() as mp:  # were the type allowed, the sliding layers still refuse
        mp.setattr(hf_module, "GROUPED_MODEL_TYPES", (*hf_module.GROUPED_MODEL_TYPES, "gemma3_text"))
        assert "DynamicSlidingWindowLayer" in grouped_unsupported(model.hf)
    groups = sampled_groups(model, tok)
    with pytest.raises(ValueError, match="padded rows"):
        model(build_batch(groups, G, tok.pad_id, shared=True).inputs)
    prompts = tok.encode_prompts(PROMPTS[:2])
    cache, logits, _, _ = _prefill(
        model, tok.pad_id, [prompts[0]] * G + [prompts[1]], len(prompts[1]), 4, torch.device("cpu")
    )
    assert cache.shared is None and not cache.can_share() and logits.shape[0] == G + 1
    kinds = [type(layer).__name__ for layer in cache.kv.layers]
    assert kinds == ["DynamicSlidingWindowLayer", "ReservedLayer", "DynamicSlidingWindowLayer"]
    assert all(layer.keys.shape[0] == G + 1 for layer in cache.kv.layers)
