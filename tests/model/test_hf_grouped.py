"""GRPO's shared-prompt pass on Hugging Face models (`HFCausalLM.forward(GroupedBatch)`: each prompt
once into a KV cache, each group's completions packed into rows on it) against padded prompt +
completion rows: token log-probs, every parameter's gradient, whole runs (plain, LoRA, DDP and
FSDP2 wrappers); models that cannot take it train on padded rows.
Run: pytest tests/model/test_hf_grouped.py"""

import gc

import pytest
import torch

from reasonlab.engine import Rollout
from reasonlab.model import GroupedBatch, HFCausalLM, load_model
from reasonlab.model.hf import grouped_unsupported
from reasonlab.rl import GRPOConfig, train_grpo
from reasonlab.rl.batch import build_batch
from reasonlab.rl.types import Group
from reasonlab.rl.update import step_loss, token_logprobs
from reasonlab.tasks import get_task
from tests.model.test_hf_adapter import transformers_deprecations
from tests.model.test_model import make_tiny_hf

V, P, G = 64, 3, 3


def tiny(kind: str, **overrides) -> HFCausalLM:
    """A random 2-layer model of `kind`, 4 query heads sharing 2 key/value heads, in train mode."""
    import transformers

    name = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}[kind]
    settings = dict(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        sliding_window=None,
    )
    config = getattr(transformers, f"{name}Config")(**{**settings, **overrides})
    torch.manual_seed(0)
    return HFCausalLM(getattr(transformers, f"{name}ForCausalLM")(config)).train()


def groups(lens=(4, 1, 9, 0, 6, 2, 7, 7, 3)) -> list[Group]:
    """P groups of G rows: prompts of 3, 8 and 5 tokens; completions of 0 to 9 tokens, some forced
    (mask 0), one cut at max_new_tokens; rewards with a spread."""
    torch.manual_seed(1)
    prompt_lens, lens = [3, 8, 5], torch.tensor(lens)
    prompts = [torch.randint(3, V, (n,)).tolist() for n in prompt_lens]
    tokens = torch.randint(3, V, (P * G, 9)) * (torch.arange(9)[None, :] < lens[:, None])
    sampled = (torch.rand(P * G, 9) > 0.2).long() * (tokens > 0)
    finish = ["stop"] * (P * G)
    finish[2] = "length"
    rollout = Rollout(
        [p for p in prompts for _ in range(G)],
        tokens,
        torch.zeros(P * G, 9),
        sampled,
        lens,
        [0] * (P * G),
        finish,
    )
    return [Group(rollout, g, torch.tensor([0.0, 1.0, 3.0]).roll(g)) for g in range(P)]


def grads_of(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def loss_and_grads(model, batch, cfg: GRPOConfig):
    """The training step's loss on `batch` and the gradient of every trainable parameter."""
    model.zero_grad(set_to_none=True)
    loss, _ = step_loss(
        model, batch.inputs, batch.mask, batch.advantages, None, None, cfg, float(batch.mask.sum())
    )
    loss.backward()
    return loss.detach(), grads_of(model)


def completion_logprobs(model, padded, grouped) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of every real completion token (sampled or forced), row by row, in both layouts."""
    lens = grouped.completion_lens
    logp_padded, _ = token_logprobs(model, padded)
    logp_grouped, _ = token_logprobs(model, grouped)
    starts = grouped.prompt_lens.repeat_interleave(G) - 1
    per_row = [logp_padded[i, starts[i] : starts[i] + lens[i]] for i in range(len(lens))]
    real = torch.arange(grouped.completion_ids.shape[1])[None, :] < lens[:, None]
    return torch.cat(per_row), logp_grouped[real]


def assert_same_gradients(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """Equal to float32 rounding: each parameter's gradient within 1e-5 of its norm."""
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert float((x - y).norm()) <= 1e-5 * float(y.norm()) + 1e-9


@pytest.mark.parametrize(
    "kind,attention",
    [("llama", "sdpa"), ("llama", "eager"), ("mistral", "sdpa"), ("qwen2", "sdpa"), ("qwen3", "sdpa")],
)
def test_grouped_pass_gives_the_padded_rows_logprobs_and_gradients(kind, attention):
    """Each prompt once and its G completions packed on its cache computes what N padded rows
    compute: every completion token's log-prob (the first from the prompt's last logit), the
    (N, Lc) logits grid, the loss and every parameter's gradient (it reaches the prompt pass
    through the cache). Completions of length 0 and 1, forced and truncated rows included."""
    model = tiny(kind, attn_implementation=attention)
    assert model.shares_prompts and model.hf.config._attn_implementation == attention
    cfg = GRPOConfig(mask_truncated=True, max_new_tokens=9)
    padded = build_batch(groups(), G, pad_id=0, mask_truncated=True)
    grouped = build_batch(groups(), G, pad_id=0, shared=True, mask_truncated=True)
    assert isinstance(grouped.inputs, GroupedBatch) and grouped.inputs.prompt_ids.shape == (P, 8)
    with transformers_deprecations() as notes:
        want, got = completion_logprobs(model, padded.inputs, grouped.inputs)
    assert notes == [] and len(got) == 39
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    grid = model(grouped.inputs)  # (N, Lc, V): zeros past each row's end
    assert grid.shape == (P * G, 9, V) and (grid[3] == 0).all() and (grid[1, 1:] == 0).all()
    loss_padded, grads_padded = loss_and_grads(model, padded, cfg)
    loss_grouped, grads_grouped = loss_and_grads(model, grouped, cfg)
    assert float(loss_padded) != 0
    torch.testing.assert_close(loss_grouped, loss_padded, rtol=1e-5, atol=1e-7)
    assert_same_gradients(grads_grouped, grads_padded)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "lens,packed",
    [
        (
            (4, 1, 9, 0, 6, 2, 7, 7, 3),
            (5, 8),
        ),  # fed 3 0 8 | 0 5 1 | 6 6 2 into rows of 8: [3] [8] [5 1] [6] [6 2]
        ((4, 1, 9, 1, 0, 1, 7, 7, 3), (4, 8)),  # group 1 has nothing to feed: no row of its own
        ((1, 0, 1, 1, 1, 0, 0, 1, 1), None),  # nothing to feed at all: the prompt pass alone
    ],
)
def test_grouped_pass_packs_each_groups_completions_into_rows_of_the_longest(attention, lens, packed):
    """The token-wise layers see the P prompts, then each group's completions' fed tokens back to
    back in rows as wide as the longest (next fit, in order; groups never share a row): fewer rows
    than the padded N, logits and gradients those of the padded rows, no NaN from an empty slot."""
    model = tiny("llama", attn_implementation=attention)
    shapes = []
    model.hf.model.embed_tokens.register_forward_hook(
        lambda m, args, out: shapes.append(tuple(args[0].shape))
    )
    cfg = GRPOConfig(max_new_tokens=9)
    loss_padded, grads_padded = loss_and_grads(model, build_batch(groups(lens), G, 0), cfg)
    shapes.clear()
    loss_grouped, grads_grouped = loss_and_grads(model, build_batch(groups(lens), G, 0, shared=True), cfg)
    assert shapes == [(P, 8)] + ([packed] if packed else [])
    assert torch.isfinite(loss_grouped) and all(torch.isfinite(g).all() for g in grads_grouped)
    torch.testing.assert_close(loss_grouped, loss_padded, rtol=1e-5, atol=1e-7)
    assert_same_gradients(grads_grouped, grads_padded)


def test_lora_grouped_pass_trains_the_adapters_as_padded_rows_do():
    """peft's LoRA wrapper passes the cache through: the adapters get the padded rows' gradients,
    and with the adapters off (the KL reference) the log-probs are the base model's."""
    from peft import LoraConfig, get_peft_model

    model = tiny("qwen2")
    base_padded = token_logprobs(model, build_batch(groups(), G, 0).inputs)[0].detach()
    model.hf = get_peft_model(
        model.hf,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM"
        ),
    )
    for name, p in model.named_parameters():  # B = 0 at the start: no gradient reaches A
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    assert model.shares_prompts
    cfg = GRPOConfig(max_new_tokens=9)
    padded, grouped = build_batch(groups(), G, 0), build_batch(groups(), G, 0, shared=True)
    loss_padded, grads_padded = loss_and_grads(model, padded, cfg)
    loss_grouped, grads_grouped = loss_and_grads(model, grouped, cfg)
    assert len(grads_grouped) == 8  # lora_A and lora_B of q_proj and v_proj in 2 layers: nothing else trains
    torch.testing.assert_close(loss_grouped, loss_padded, rtol=1e-5, atol=1e-7)
    assert_same_gradients(grads_grouped, grads_padded)
    with model.hf.disable_adapter(), torch.no_grad():
        want, got = completion_logprobs(model, padded.inputs, grouped.inputs)
        torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
        torch.testing.assert_close(token_logprobs(model, padded.inputs)[0], base_padded, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "case,reason",
    [
        ("sliding window", "DynamicSlidingWindowLayer"),
        ("flex attention", "attention 'flex_attention'"),
        ("checkpointing", "gradient checkpointing"),
        ("gpt2", "model type 'gpt2'"),
    ],
)
def test_models_that_cannot_share_prompts_say_why_and_refuse(case, reason):
    """A sliding-window cache keeps its window of the padded prompt's cache slots, not of the
    real tokens; other attention kernels and model types are untested; checkpointing turns the
    cache off. Each says why, and a grouped batch raises instead of computing something else."""
    if case == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        model = HFCausalLM(
            GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64))
        )
    elif case == "sliding window":
        model = tiny("mistral", sliding_window=4096)
    elif case == "flex attention":
        model = tiny("llama")
        model.hf.config._attn_implementation = "flex_attention"
    else:
        model = tiny("llama")
        model.hf.gradient_checkpointing_enable()
    assert not model.shares_prompts and reason in grouped_unsupported(model.hf)
    with pytest.raises(ValueError, match="padded rows"):
        model(build_batch(groups(), G, 0, shared=True).inputs)


@pytest.fixture
def grouped_calls(monkeypatch) -> list[int]:
    """Grows by one at every forward that takes the grouped pass."""
    calls, grouped_forward = [], HFCausalLM.grouped_forward
    monkeypatch.setattr(
        HFCausalLM, "grouped_forward", lambda self, b: calls.append(1) or grouped_forward(self, b)
    )
    return calls


def run(path, **settings) -> list[dict]:
    """The logged rows of a 2-step GRPO run on the tiny HF model saved at `path`."""
    model, tok = load_model(path)
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
        length_target=4,
        length_alpha=0.1,
        seed=2,
        **settings,
    )
    history = []
    train_grpo(model, tok, get_task("arithmetic", op="+", digits=1), cfg, log=history.append)
    return history


def assert_same_runs(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert x["reward/mean"] == y["reward/mean"]
        for key in ("loss", "grad_norm", "kl", "entropy", "clip_frac"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key
    assert any(m["grad_norm"] > 0 for m in a)  # some step had a reward spread: a real update


@pytest.mark.parametrize("kind,lora", [("llama", 0), ("qwen2", 4)])
def test_grpo_on_hf_models_is_the_same_with_shared_prompts_on_and_off(tmp_path, grouped_calls, kind, lora):
    """Whole runs (μ = 2 with clipping, the KL term on, micro-batches of one group): the losses,
    gradient norms, KL, entropy and clip fractions of shared prompts on equal those of padded
    rows; with LoRA the reference is the model with its adapters off, in both layouts."""
    make_tiny_hf(tmp_path, kind)
    off = run(tmp_path, shared_prompts=False, lora_rank=lora, micro_batch_size=4)
    assert grouped_calls == []
    on = run(tmp_path, shared_prompts=True, lora_rank=lora, micro_batch_size=4)
    assert len(grouped_calls) > 0
    assert_same_runs(off, on)


def test_grpo_falls_back_to_padded_rows_on_a_model_that_cannot_share(tmp_path, grouped_calls):
    """A sliding-window Qwen2: shared prompts on trains on padded rows, the run of shared prompts off."""
    from transformers import AutoConfig, AutoModelForCausalLM

    make_tiny_hf(tmp_path, "qwen2")
    config = AutoConfig.from_pretrained(tmp_path)
    config.use_sliding_window, config.sliding_window = True, 64
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    AutoModelForCausalLM.from_pretrained(tmp_path, config=config).save_pretrained(tmp_path)
    assert not load_model(tmp_path)[0].shares_prompts
    on = run(tmp_path, shared_prompts=True)
    assert grouped_calls == []
    assert_same_runs(run(tmp_path, shared_prompts=False), on)


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
def test_ddp_and_fsdp2_wrappers_reach_the_grouped_pass(tmp_path, wrapper):
    """The grouped batch goes through the wrapper's forward (DDP, or FSDP2 with one unit per block,
    here in a one-process gloo group): the gradient is the plain model's on padded rows."""
    import torch.distributed as dist

    model, cfg = tiny("llama"), GRPOConfig(max_new_tokens=9)
    padded, grouped = build_batch(groups(), G, 0), build_batch(groups(), G, 0, shared=True)
    _, want = loss_and_grads(model, padded, cfg)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    wrapped = loss = None
    try:
        if wrapper == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(model)
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (1,))
            for block in model.hf.model.layers:
                fully_shard(block, mesh=mesh)
            wrapped = fully_shard(model, mesh=mesh)
        wrapped.zero_grad(set_to_none=True)
        loss, _ = step_loss(
            wrapped,
            grouped.inputs,
            grouped.mask,
            grouped.advantages,
            None,
            None,
            cfg,
            float(grouped.mask.sum()),
        )
        loss.backward()
        got = [g.full_tensor() if hasattr(g, "full_tensor") else g for g in grads_of(model)]
    finally:
        # DDP's reducer holds the gloo group: freed after the group is destroyed, its destructor
        # can hang joining gloo's threads (seen once in CI), so it goes first.
        wrapped = loss = None
        gc.collect()
        dist.destroy_process_group()
    assert_same_gradients(got, want)


@pytest.mark.parametrize("kind,attention", [("llama", "sdpa"), ("qwen2", "eager")])
@pytest.mark.parametrize(
    "prompts",
    [
        ["12+34\n"] * 4 + ["7*8\n"] * 4 + ["9\n"] * 4,  # GRPO's layout: the dense path
        ["12+34\n"] * 3 + ["7*8\n"] * 5 + ["12+34\n", "9\n"],  # groups of unequal sizes, out of order
    ],
)
def test_decoding_on_one_copy_of_each_prompt_samples_what_copied_caches_sample(
    tmp_path, monkeypatch, kind, attention, prompts
):
    """The engine keeps each distinct prompt's keys and values once for an HF model (the layers
    hold each row's own tokens) and attends to them once per prompt through the shared-prompt
    attention interface: completions, log-probs and finish reasons equal those of copying each
    prompt's cache to its rows, also after finished rows leave the batch; the model's attention
    setting is as it was after each step."""
    from reasonlab.engine import SamplingParams, generate
    from reasonlab.model.hf import SHARED_ATTENTION

    make_tiny_hf(tmp_path, kind)
    model, tok = load_model(tmp_path)
    model.hf.config._attn_implementation = attention
    params = SamplingParams(max_new_tokens=40, row_seeds=list(range(len(prompts))), temperature=1.5)
    caches, seen, share = [], [], HFCausalLM.share_rows
    monkeypatch.setattr(
        HFCausalLM, "share_rows", lambda self, cache, index: (share(self, cache, index), caches.append(cache))
    )
    decode = HFCausalLM.decode
    monkeypatch.setattr(
        HFCausalLM,
        "decode",
        lambda self, *a: (decode(self, *a), seen.append(self.hf.config._attn_implementation))[0],
    )
    shared = generate(model, tok, prompts, params)
    (cache,) = caches
    assert cache.shared is not None and cache.kv.layers[0].offset == cache.shared.prefix_k[0].shape[2]
    assert cache.shared.prefix_k[0].shape[0] == len(set(prompts))  # one copy of each prompt
    assert set(seen) == {attention} and SHARED_ATTENTION not in seen
    monkeypatch.delattr(HFCausalLM, "share_rows")
    copied = generate(model, tok, prompts, params)
    assert shared.texts == copied.texts and shared.finish_reason == copied.finish_reason
    assert len(set(shared.lengths.tolist())) > 2  # rows ended at different steps: compaction ran
    torch.testing.assert_close(shared.logprobs, copied.logprobs, rtol=0, atol=1e-5)


def test_a_model_that_cannot_share_prompts_decodes_on_copies(tmp_path):
    """A sliding-window Qwen2 keeps a copy of its prompt's cache per row (and samples the same)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from reasonlab.engine.steps import _prefill

    make_tiny_hf(tmp_path, "qwen2")
    config = AutoConfig.from_pretrained(tmp_path)
    config.use_sliding_window, config.sliding_window = True, 64
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    AutoModelForCausalLM.from_pretrained(tmp_path, config=config).save_pretrained(tmp_path)
    model, tok = load_model(tmp_path)
    cache, logits, _, _ = _prefill(model, tok.pad_id, [[5, 6, 7], [5, 6, 7], [8]], 3, 4, torch.device("cpu"))
    assert cache.shared is None and cache.kv.layers[0].keys.shape[0] == 3 and logits.shape[0] == 3
    with pytest.raises(ValueError, match="reserved layers"):
        cache.share(torch.tensor([0, 0, 1]))
