"""`reasonlab export`: GGUF files that transformers' own GGUF reader (and llama.cpp) runs, plain
Hugging Face folders, and a LoRA run's adapter in peft's format.

Every model is tiny and random, built here: the built-in model with its character tokenizer, and
HF Llama, Qwen2, Qwen3 and Gemma3 (text) from configs, with a byte-level BPE tokenizer trained here
on a few lines (Qwen2's split regex, Qwen's special tokens, <think> tags as added tokens). Norm
weights are randomised too, so a norm written wrong (Gemma's 1 + w) shows in the logits. The slow
test runs a real llama.cpp (llama-cpp-python) on an exported built-in model.
Run: pytest tests/model/test_export.py (-m slow for llama.cpp).
"""

import os
import stat

import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")

# the imports below come after the importorskips above: without gguf and accelerate the module is skipped
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from reasonlab.cli import main  # noqa: E402
from reasonlab.errors import UserError  # noqa: E402
from reasonlab.model import GPTConfig, HFCausalLM, TokenizerAdapter, load_model, new_builtin, save_checkpoint  # noqa: E402
from reasonlab.model.export import export_gguf, save_adapter  # noqa: E402
from reasonlab.template import TAGS, build_prompt  # noqa: E402

QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXT = "12+34\nLet's think step by step.\n<think>4+2=6, 3+1=4</think> <answer>46</answer>"


def bpe_tokenizer() -> TokenizerAdapter:
    """A byte-level BPE tokenizer as Qwen's is made (its split regex, <|endoftext|> as EOS), trained
    on a few lines; the template tags are added tokens, not special (as Qwen3's <think>)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([TEXT, "The answer is 46. What is 12 + 35? Think, then answer."] * 20, trainer)
    core.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAGS])
    hf = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", chat_template=CHATML)
    return TokenizerAdapter(hf)


def randomise(model, norm_center: float = 1.0):
    """Weights of a visible size, norms around `norm_center` (Gemma's are offsets from 1)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(norm_center + 0.2 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return model.eval()


SHAPE = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
)


def hf_model(kind: str, tokenizer: TokenizerAdapter) -> HFCausalLM:
    """A tiny HF model of `kind` with 5 embedding rows past the tokenizer (padded, as Qwen's are)."""
    rows = len(tokenizer) + 5
    ids = dict(eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, bos_token_id=None)
    if kind == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(vocab_size=rows, head_dim=16, tie_word_embeddings=False, **ids, **SHAPE)
        )
    elif (
        kind == "llama3"
    ):  # Llama 3's RoPE scaling from 16 positions: every frequency of a head of 16 changes
        rope = {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
        model = LlamaForCausalLM(
            LlamaConfig(vocab_size=rows, head_dim=16, rope_parameters=rope, **ids, **SHAPE)
        )
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=rows, tie_word_embeddings=True, **ids, **SHAPE))
    elif (
        kind == "qwen3"
    ):  # head_dim 128, as Qwen3's: transformers' GGUF reader takes it from Qwen3Config's default
        model = Qwen3ForCausalLM(
            Qwen3Config(vocab_size=rows, head_dim=128, tie_word_embeddings=True, **ids, **SHAPE)
        )
    else:  # gemma3: five layers slide over 4 positions, the sixth attends to all. Gemma3's own head_dim and
        # layer pattern: transformers' GGUF reader takes both from Gemma3TextConfig's defaults
        # (llama.cpp reads them)
        config = Gemma3TextConfig(
            vocab_size=rows,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=4,
            **ids,
            **{**SHAPE, "num_hidden_layers": 6},
        )
        return HFCausalLM(randomise(Gemma3ForCausalLM(config), norm_center=0.0))
    return HFCausalLM(randomise(model))


def builtin_model():
    model, tokenizer = new_builtin(GPTConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=128))
    return randomise(model), tokenizer


def reread(path):
    """transformers' own GGUF reader: the model (float32) and the tokenizer of file `path`."""
    where = dict(pretrained_model_name_or_path=path.parent, gguf_file=path.name)
    return AutoModelForCausalLM.from_pretrained(
        **where, dtype=torch.float32
    ).eval(), AutoTokenizer.from_pretrained(**where)


def logits_of(model, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return out if isinstance(out, torch.Tensor) else out.logits


def as_stored(model, type: str):
    """`model` with each matrix rounded as the file stores it in `type` (f16, bf16, or Q8_0's blocks
    of 32 along a row: row-wise, so the q/k row reordering does not change it): the logits the file
    must reproduce exactly, whatever the rounding costs."""
    import copy

    import numpy as np

    stored = copy.deepcopy(model)
    kinds = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    with torch.no_grad():
        for p in stored.parameters():
            if p.ndim < 2 or type == "f32":
                continue
            data = p.detach().numpy()
            if type == "f16" or (type == "q8_0" and data.shape[-1] % 32):
                rounded = data.astype(np.float16).astype(np.float32)
            else:
                rounded = gguf.quants.dequantize(gguf.quants.quantize(data, kinds[type]), kinds[type])
            p.copy_(torch.from_numpy(rounded.reshape(data.shape)))
    return stored


def model_and_tokenizer(kind):
    if kind == "builtin":
        return builtin_model()
    tokenizer = bpe_tokenizer()
    return hf_model(kind, tokenizer), tokenizer


@pytest.mark.parametrize("kind", ["builtin", "llama", "qwen2", "qwen3", "gemma3"])
@pytest.mark.parametrize("type", ["f32", "f16", "bf16", "q8_0"])
def test_transformers_reads_back_the_same_logits(tmp_path, kind, type):
    model, tokenizer = model_and_tokenizer(kind)
    path = tmp_path / f"{kind}.gguf"
    summary = export_gguf(model, tokenizer, path, type)
    assert summary["bytes"] == path.stat().st_size
    ids = tokenizer.encode(TEXT)
    back, _ = reread(path)
    want, got = logits_of(as_stored(model, type), ids), logits_of(back, ids)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    if type in ("f32", "f16"):  # the same greedy choice as the model itself, everywhere
        assert torch.equal(got.argmax(-1), logits_of(model, ids).argmax(-1))


@pytest.mark.parametrize("kind", ["builtin", "qwen2"])
def test_the_tokenizer_read_back_encodes_the_template_alike(tmp_path, kind):
    model, tokenizer = model_and_tokenizer(kind)
    path = tmp_path / "m.gguf"
    export_gguf(model, tokenizer, path, "f16")
    _, back = reread(path)
    for text in (TEXT, *TAGS, "a  b\n\n c", "x</answer>y<think>"):
        assert back.encode(text, add_special_tokens=False) == tokenizer.encode(text), text
        assert all(len(back.encode(tag, add_special_tokens=False)) == 1 for tag in TAGS)
    assert back.eos_token_id == tokenizer.eos_id
    messages = [{"role": "user", "content": "12+34"}]
    if kind == "builtin":  # the plain prompt the built-in model was trained on
        assert back.apply_chat_template(messages, tokenize=False) == build_prompt("12+34", "plain")
    else:
        assert back.chat_template == tokenizer.hf.chat_template


def sentencepiece_tokenizer() -> TokenizerAdapter:
    """A SentencePiece-style BPE as Llama 2's tokenizer.json has it: byte fallback (<0xXX> tokens),
    "▁" for spaces and one before the text, <s> and </s>; the template tags as added tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, trainers

    core = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    core.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials, show_progress=False)
    core.train_from_iterator([TEXT, "The answer is 46. What is 12 + 35? Think, then answer."] * 20, trainer)
    core.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAGS])
    return TokenizerAdapter(
        PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    )


def test_a_sentencepiece_vocabulary_reads_back(tmp_path):
    """SentencePiece-style BPE becomes llama.cpp's `llama` vocabulary, scored by merge order: the
    reader rebuilds the same merges. One difference stays, the reader's as llama.cpp's: text right
    after an added token gets no second "▁" prefix, which this tokenizer's Prepend normalizer gives."""
    tokenizer = sentencepiece_tokenizer()
    model = hf_model("llama", tokenizer)
    path = tmp_path / "m.gguf"
    export_gguf(model, tokenizer, path, "f32")
    back, back_tokenizer = reread(path)
    for text in ("12+34\nLet's think step by step.\n", "a  b\n\n c", "é ü", *TAGS):
        assert back_tokenizer.encode(text, add_special_tokens=False) == tokenizer.encode(text), text
    ids = tokenizer.encode(TEXT)
    assert (logits_of(back, ids) - logits_of(model, ids)).abs().max() <= 1e-4 * logits_of(
        model, ids
    ).abs().max()
    assert gguf.GGUFReader(path).fields["tokenizer.ggml.model"].contents() == "llama"


def test_pre_tokenizers_are_named_as_llama_cpp_names_them_or_refused():
    from reasonlab.model.export.vocab import pre_tokenizer_name

    def split(regex):
        return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    plain = {**byte_level, "use_regex": False}
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [split(QWEN_SPLIT), plain]}) == "qwen2"
    assert pre_tokenizer_name(byte_level) == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [digits, byte_level]}) == "smollm"
    for unknown in (
        {"type": "Sequence", "pretokenizers": [split(r"\w+"), plain]},
        {"type": "Sequence", "pretokenizers": [{**digits, "individual_digits": False}, byte_level]},
    ):
        with pytest.raises(UserError, match="llama.cpp knows no pre-tokenizer"):
            pre_tokenizer_name(unknown)


def test_llama3_rope_scaling_goes_in_as_frequency_divisors(tmp_path):
    """llama.cpp divides each RoPE frequency by `rope_freqs`: the plain frequencies over those of
    transformers' rotary embedding give its own. (transformers' GGUF reader ignores the tensor: only
    llama.cpp can check the logits, in the slow test.)"""
    tokenizer = bpe_tokenizer()
    model = hf_model("llama3", tokenizer)
    path = tmp_path / "m.gguf"
    export_gguf(model, tokenizer, path, "f16")
    divisors = {t.name: t for t in gguf.GGUFReader(path).tensors}["rope_freqs.weight"].data
    plain = 1.0 / 10000.0 ** (torch.arange(0, 16, 2).float() / 16)
    scaled = model.hf.model.rotary_emb.inv_freq
    assert torch.allclose(plain / torch.from_numpy(divisors.copy()), scaled, rtol=1e-6)
    assert 1 < divisors[0] < 8 and (divisors[1:] == 8).all()  # the shortest wavelength is between the bounds


def test_metadata_names_the_stops(tmp_path):
    model, tokenizer = builtin_model()
    path = tmp_path / "m.gguf"
    export_gguf(model, tokenizer, path, "f32")
    fields = gguf.GGUFReader(path).fields

    def value(key):
        return fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.merges") == []
    assert value("tokenizer.ggml.eos_token_id") == tokenizer.eos_id
    assert value("tokenizer.ggml.eot_token_id") == tokenizer.tags["</answer>"][0]
    assert value("reasonlab.stop_strings") == ["</answer>"]
    assert value("tokenizer.ggml.add_bos_token") is False
    assert len(value("tokenizer.ggml.tokens")) == model.config.vocab_size


def test_an_architecture_llama_cpp_would_run_differently_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = bpe_tokenizer()
    other = HFCausalLM(GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)))
    with pytest.raises(UserError, match="cannot export a 'gpt2' model to GGUF"):
        export_gguf(other, tokenizer, tmp_path / "m.gguf")
    yarn = hf_model("qwen2", tokenizer)
    yarn.hf.config.rope_parameters = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}
    with pytest.raises(UserError, match="RoPE scaling 'yarn'"):
        export_gguf(yarn, tokenizer, tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())  # nothing written, no temporary file left


def write_run(tmp_path):
    model, tokenizer = builtin_model()
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, model, tokenizer)
    return folder


def test_cli_exports_gguf_and_hf(tmp_path, capsys):
    folder = write_run(tmp_path)
    out, hf = tmp_path / "out" / "m.gguf", tmp_path / "hf"
    assert (
        main(
            [
                "export",
                "--model",
                str(folder),
                "--gguf",
                str(out),
                "--type",
                "q8_0",
                "--hf",
                str(hf),
                "--dtype",
                "bf16",
            ]
        )
        == 0
    )
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert {stat.S_IMODE(p.stat().st_mode) for p in hf.iterdir()} == {0o666 & ~umask}
    printed = capsys.readouterr().out
    assert "m.gguf" in printed and "q8_0" in printed
    from safetensors import safe_open

    with safe_open(hf / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    reloaded, _ = load_model(hf)
    original, tokenizer = load_model(folder)
    with torch.no_grad():
        for p in original.parameters():
            p.copy_(p.to(torch.bfloat16).float())  # what the folder holds
    ids = tokenizer.encode(TEXT)
    want = logits_of(original, ids)
    assert (logits_of(reloaded, ids) - want).abs().max() <= 1e-4 * want.abs().max()


def test_cli_refusals_are_one_line_and_exit_2(tmp_path, capsys):
    folder = write_run(tmp_path)
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep")
    assert main(["export", "--model", str(folder), "--gguf", str(out)]) == 2
    assert out.read_bytes() == b"keep"
    assert main(["export", "--model", str(folder)]) == 2
    assert main(["export", "--model", str(folder), "--gguf", str(tmp_path / "x.gguf"), "--type", "q4"]) == 2
    (tmp_path / "link.gguf").symlink_to(out)
    assert main(["export", "--model", str(folder), "--gguf", str(tmp_path / "link.gguf"), "--overwrite"]) == 2
    assert main(["export", "--model", str(folder), "--gguf", "/dev/null", "--overwrite"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 5 and all(line.startswith("reasonlab export: error:") for line in errors)
    assert "--overwrite" in errors[0] and "--gguf" in errors[1] and "q8_0" in errors[2]
    assert all("not a regular file" in line for line in errors[3:])
    assert out.read_bytes() == b"keep" and os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_a_lora_adapter_is_saved_alone_in_peft_format(tmp_path):
    peft = pytest.importorskip("peft")
    from reasonlab.runtime import RuntimeOptions, add_lora, plain_model

    tokenizer = bpe_tokenizer()
    model = add_lora(hf_model("llama", tokenizer), RuntimeOptions(lora_rank=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)  # a trained adapter: not the zero update it starts as
    ids = tokenizer.encode(TEXT)
    tuned = logits_of(model, ids)
    adapter = save_adapter(model, tmp_path)
    assert adapter == tmp_path / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    merged = plain_model(model)
    base = randomise(LlamaForCausalLM(merged.hf.config))  # the same seeded base weights
    loaded = peft.PeftModel.from_pretrained(base, adapter).eval()
    assert torch.allclose(logits_of(loaded, ids), tuned, atol=1e-4)
    assert save_adapter(merged, tmp_path / "other") is None  # merged: no adapter left to save


def test_a_lora_sft_run_keeps_its_adapter_beside_the_merged_model(tmp_path, capsys):
    """sft --lora-rank writes OUT/adapter (peft) and OUT/model (merged): the base plus the adapter
    computes what the merged model computes, and `export` of the run names the adapter."""
    import json

    peft = pytest.importorskip("peft")
    tokenizer = bpe_tokenizer()
    save_checkpoint(tmp_path / "base", hf_model("llama", tokenizer), tokenizer)
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"{i}+1=", "completion": f"<answer>{i + 1}</answer>"}) + "\n"
            for i in range(8)
        )
    )
    assert (
        main(
            [
                "sft",
                "--model",
                str(tmp_path / "base"),
                "--data",
                str(data),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--lr",
                "1e-2",
                "--lora-rank",
                "4",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    merged, _ = load_model(tmp_path / "run")
    base, _ = load_model(tmp_path / "base")
    ids = tokenizer.encode(TEXT)
    assert not torch.allclose(logits_of(base, ids), logits_of(merged, ids), atol=1e-4)  # it trained
    tuned = peft.PeftModel.from_pretrained(base.hf, tmp_path / "run" / "adapter").eval()
    assert torch.allclose(logits_of(tuned, ids), logits_of(merged, ids), atol=1e-4)
    capsys.readouterr()
    assert main(["export", "--model", str(tmp_path / "run"), "--gguf", str(tmp_path / "m.gguf")]) == 0
    assert f"peft's format: {tmp_path / 'run' / 'adapter'}" in capsys.readouterr().out


@pytest.mark.slow
def test_llama_cpp_runs_the_exported_file_as_reasonlab_does(tmp_path):
    """llama.cpp on a built-in model trained a few dozen steps: the same greedy completions (f32,
    f16) on >= 95% of 50 held-out prompts, stopping where reasonlab stops (benchmarks/
    bench_export_llamacpp.py measures it; q8_0's numbers are printed, not asserted)."""
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip('needs llama.cpp: CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python')
    bench = Path(__file__).parents[2] / "benchmarks" / "bench_export_llamacpp.py"
    spec = importlib.util.spec_from_file_location("bench_export_llamacpp", bench)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert main(["pretrain", "--task", "chain", "--steps", "60", "--out", str(tmp_path / "run")]) == 0
    results = module.compare(tmp_path / "run", ("f32", "f16", "q8_0"), n_prompts=50, max_new=64)
    module.print_table(results)
    for type in ("f32", "f16"):
        assert results[type]["same_prompt_tokens"]
        assert results[type]["identical_greedy"] >= 0.95, (type, results[type])
    assert results["f32"]["max_top5_logprob_diff"] < 2e-2  # llama.cpp keeps its KV cache in f16


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["builtin", "llama", "llama3", "qwen2", "qwen3", "gemma3"])
def test_llama_cpp_computes_each_architecture_as_reasonlab_does(tmp_path, kind):
    """Each exported architecture in llama.cpp itself (f32 weights and KV cache): the logits of
    every position of a text with the template tags, tokenized by llama.cpp from the text."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason='needs llama.cpp: CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python'
    )
    model, tokenizer = model_and_tokenizer(kind)
    path = tmp_path / "m.gguf"
    export_gguf(model, tokenizer, path, "f32")
    f32 = 0  # ggml's type id
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=128, n_threads=2, logits_all=True, type_k=f32, type_v=f32, verbose=False
    )
    ids = tokenizer.encode(TEXT)
    assert llm.tokenize(TEXT.encode()) == ids
    llm.eval(ids)
    got, want = torch.tensor(llm.scores[: len(ids)]), logits_of(model, ids)[0]
    llm.close()
    # llama.cpp's GELU (Gemma) reads a table of f16 values: 1e-3 there, float32 rounding elsewhere
    assert (got - want).abs().max() <= (1e-3 if kind == "gemma3" else 1e-4) * want.abs().max()
