"""Built-in GPT, tokenizer, checkpoints, HF export and the HF adapter.
Run: pytest tests/model/test_model.py"""

import dataclasses
import json

import pytest
import torch

from reasonlab.model import (
    GPT,
    GPTConfig,
    export_hf,
    load_model,
    load_train_config,
    new_builtin,
    save_checkpoint,
)
from reasonlab.model.tokenizer import SPECIALS


def test_tags_are_single_tokens_and_text_round_trips(tiny_gpt):
    _, tok = tiny_gpt
    for tag in SPECIALS[2:]:
        assert len(tok.tags[tag]) == 1
    text = "12+34\nLet's think step by step.\n<think>4+2=6</think><answer>46</answer>"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("a") + [tok.pad_id, tok.eos_id]) == "a"
    # Other libraries decode with skip_special_tokens=True: the tags must survive it.
    assert tok.hf.decode(tok.encode(text) + [tok.eos_id], skip_special_tokens=True) == text


def test_kv_cache_decode_matches_full_forward(tiny_gpt):
    model, tok = tiny_gpt
    ids = torch.tensor([tok.encode("123+456\n<think>3+6")])
    full = model(ids)
    cache = model.init_cache(1, 32)
    attn = torch.ones(1, 5, dtype=torch.long)
    step = [model.decode(ids[:, :5], torch.arange(5)[None], attn, cache)]
    for t in range(5, ids.shape[1]):
        attn = torch.ones(1, t + 1, dtype=torch.long)
        step.append(model.decode(ids[:, t : t + 1], torch.tensor([[t]]), attn, cache))
    assert torch.allclose(torch.cat(step, 1), full, atol=1e-5)


def test_left_padding_does_not_change_logits(tiny_gpt):
    model, tok = tiny_gpt
    ids = tok.encode("9+9\n")
    alone = model(torch.tensor([ids]))[0, -1]
    padded = torch.tensor([[tok.pad_id] * 3 + ids])
    mask = torch.tensor([[0] * 3 + [1] * len(ids)])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    got = model(padded, position_ids=pos, attention_mask=mask)[0, -1]
    assert torch.allclose(alone, got, atol=1e-5)


def test_checkpoint_round_trip_keeps_config(tiny_gpt, tmp_path):
    model, tok = tiny_gpt
    save_checkpoint(tmp_path / "ck", model, tok, {"lr": 1e-3})
    loaded, tok2 = load_model(tmp_path / "ck")
    assert isinstance(loaded, GPT) and loaded.config == model.config
    ids = torch.tensor([tok.encode("1+2\n")])
    assert torch.equal(loaded(ids), model(ids))
    assert load_train_config(tmp_path / "ck") == {"lr": 1e-3}
    assert tok2.encode("<think>") == tok.encode("<think>")
    # Saving again over it replaces it atomically and leaves no temporary folders behind.
    save_checkpoint(tmp_path / "ck", model, tok)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_refuses_to_save_nan_weights(tiny_gpt, tmp_path):
    model, tok = tiny_gpt
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        save_checkpoint(tmp_path / "bad", model, tok)
    assert not (tmp_path / "bad").exists()


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_model(tmp_path)


@pytest.mark.parametrize("tie", [True, False])
def test_export_loads_in_transformers_with_equal_logits(tmp_path, tie):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = new_builtin(
        GPTConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, tie_embeddings=tie), seed=1
    )
    export_hf(model, tok, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "llama" and "reasonlab" not in config
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "123+45\n<think>3+5+0=08</think><answer>"
    ids = torch.tensor([hf_tok.encode(text, add_special_tokens=False)])
    assert ids[0].tolist() == tok.encode(text)
    assert (hf(ids).logits - model(ids)).abs().max() < 1e-4


def make_tiny_hf(path, kind="llama"):
    """A 2-layer HF model built in the test, saved with the built-in tokenizer and a chat template."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    _, tok = new_builtin()
    Config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind]
    config = Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tok.hf.chat_template = (
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    tok.save(path)
    return model


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hf_adapter_parity_and_cache(tmp_path, kind):
    hf = make_tiny_hf(tmp_path / kind, kind)
    model, tok = load_model(tmp_path / kind)
    assert model.kind == "hf"
    ids = torch.tensor([tok.encode("12+34\n<think>")])
    assert torch.allclose(model(ids), hf(ids).logits, atol=1e-5)
    cache = model.init_cache(1, 16)
    n = ids.shape[1]
    first = model.decode(
        ids[:, :-1], torch.arange(n - 1)[None], torch.ones(1, n - 1, dtype=torch.long), cache
    )
    last = model.decode(ids[:, -1:], torch.tensor([[n - 1]]), torch.ones(1, n, dtype=torch.long), cache)
    assert torch.allclose(torch.cat([first, last], 1), hf(ids).logits, atol=1e-5)


def test_grouped_batch_gives_each_rows_logits_and_gradients(tiny_gpt):
    """GRPO's layout (each prompt once, completions packed) computes what a causal pass over every
    prompt + completion row computes: logits and gradients, with prompts of different lengths, a
    completion of length 0 and grouped-query attention (the fixture has 2 key heads for 4)."""
    from reasonlab.model import GroupedBatch

    model, _ = tiny_gpt
    torch.manual_seed(1)
    P, G = 3, 4
    prompt_lens = torch.tensor([5, 9, 7])
    lens = torch.tensor([4, 1, 6, 3, 8, 2, 5, 5, 0, 3, 7, 2])
    prompts, completions = torch.randint(6, 90, (P, 9)), torch.randint(6, 90, (P * G, 8))
    batch = GroupedBatch(prompts, prompt_lens, completions, lens, G)
    weights = torch.randn(P * G, 8, model.config.vocab_size)
    model.zero_grad()
    grouped = model(batch)
    (grouped * weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = torch.zeros_like(grouped)
    for i in range(P * G):
        p, n = i // G, int(lens[i])
        row = torch.cat([prompts[p, : prompt_lens[p]], completions[i, :n]])[None]
        expected[i, :n] = model(row)[0, prompt_lens[p] - 1 : prompt_lens[p] - 1 + n]
    (expected * weights).sum().backward()
    assert torch.allclose(grouped, expected, atol=1e-5)
    assert (grouped[8] == 0).all() and grouped[0, 4:].abs().sum() == 0  # nothing past a row's end
    # packed: the real predictions only, one per completion token, in the order `places` gives
    packed = model(dataclasses.replace(batch, packed=True))
    assert packed.shape == (int(lens.sum()), model.config.vocab_size) and len(batch.places()) == int(
        lens.sum()
    )
    assert torch.allclose(
        packed, grouped.detach().view(-1, model.config.vocab_size)[batch.places()], atol=1e-6
    )
    assert batch[4:12].packed is False and dataclasses.replace(batch, packed=True)[4:12].packed
    for a, p in zip(grads, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-5)
    with pytest.raises(ValueError, match="split a group"):
        batch[2:6]
    assert len(batch[4:12]) == 8 and batch[4:12].prompt_ids.shape[0] == 2


def test_decode_batch_matches_transformers_with_and_without_clean_up(tiny_gpt):
    """The fast path (the Rust tokenizer directly) must give what `batch_decode` gives; a tokenizer
    that asks for the clean-up pass (`hello , world` -> `hello, world`) keeps going through it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from reasonlab.model.tokenizer import TokenizerAdapter

    _, tok = tiny_gpt
    rows = [
        tok.encode("<think>1+2=3</think><answer>3</answer>") + [tok.eos_id, tok.pad_id],
        tok.encode(" a , b "),
    ]
    drop = {tok.pad_id, tok.eos_id}
    assert tok.decode_batch(rows) == tok.hf.batch_decode([[i for i in r if i not in drop] for r in rows])

    vocab = {
        w: i
        for i, w in enumerate(
            [
                "[PAD]",
                "[UNK]",
                "[EOS]",
                "hello",
                ",",
                "world",
                "<think>",
                "</think>",
                "<answer>",
                "</answer>",
                "Wait",
            ]
        )
    }
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece(cleanup=False)  # the clean-up, if any, is transformers' pass
    for clean in (True, False):
        hf = PreTrainedTokenizerFast(
            tokenizer_object=core,
            pad_token="[PAD]",
            eos_token="[EOS]",
            unk_token="[UNK]",
            clean_up_tokenization_spaces=clean,
        )
        adapter = TokenizerAdapter(hf)
        ids = [hf.encode("hello, world", add_special_tokens=False)]
        assert adapter.decode_batch(ids) == hf.batch_decode(ids)
        assert adapter.decode_batch(ids) == ["hello, world" if clean else "hello , world"]


@pytest.mark.parametrize("shared", [False, True])
def test_dropping_rows_from_the_cache_keeps_the_rest_exact(tiny_gpt, shared):
    """`select_rows` early in a long buffer copies only the positions written so far; the rows kept
    then decode exactly what they decode without the drop (plain and shared-prompt caches)."""
    model, _ = tiny_gpt
    torch.manual_seed(0)
    B, P, steps = 4, 6, 3
    prompts = torch.randint(6, 90, (2 if shared else B, P))
    tokens = torch.randint(6, 90, (B, steps + 1))

    def run(keep):
        cache = model.init_cache(len(prompts), P + 40)  # most of the buffer never written
        with torch.no_grad():
            model.decode(prompts, torch.arange(P).expand(len(prompts), P), torch.ones_like(prompts), cache)
            if shared:
                model.share_rows(cache, torch.tensor([0, 0, 1, 1]))
            for t in range(steps):
                model.decode(tokens[:, t : t + 1], torch.full((B, 1), P + t), None, cache)
            rows = torch.arange(B) if keep is None else keep
            if keep is not None:
                model.select_rows(cache, keep)
            return model.decode(tokens[rows, steps:], torch.full((len(rows), 1), P + steps), None, cache)

    full, kept = run(None), run(torch.tensor([3, 0, 2]))
    assert torch.allclose(kept, full[[3, 0, 2]], atol=1e-6)


@pytest.mark.parametrize("mask, files, folders", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_checkpoint_modes_follow_the_umask(tiny_gpt, tmp_path, mask, files, folders):
    """Checkpoints were written into a mkdtemp folder: 0700 whatever the umask."""
    import os

    from reasonlab.jsonl import current_umask

    model, tok = tiny_gpt
    old = os.umask(mask)
    current_umask.cache_clear()
    try:
        for path in (tmp_path / "run" / "model", tmp_path / "run" / "model"):  # new, then replacing itself
            save_checkpoint(path, model, tok, {"steps": 1})
            assert (
                os.stat(path).st_mode & 0o777 == folders and os.stat(path.parent).st_mode & 0o777 == folders
            )
            assert {p.name: os.stat(p).st_mode & 0o777 for p in path.iterdir()} == {
                p.name: files for p in path.iterdir()
            }
            assert {"model.safetensors", "config.json", "train_config.json"} <= {
                p.name for p in path.iterdir()
            }
    finally:
        os.umask(old)
        current_umask.cache_clear()
