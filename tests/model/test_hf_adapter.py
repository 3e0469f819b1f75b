"""The Hugging Face adapter against the installed transformers: prefill, decode and select_rows as the
engine calls them give a full forward's logits, and nothing in that path is deprecated. Run:
pytest tests/model/test_hf_adapter.py"""

import logging
import sys
import warnings
from contextlib import contextmanager

import pytest
import torch

from reasonlab.engine.steps import _next_step, _prefill
from reasonlab.model.hf import HFCausalLM, cache_argument, load_hf_model


def tiny_hf(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    Config, Model = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[kind]
    torch.manual_seed(0)
    config = Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return Model(config).eval()


@contextmanager
def transformers_deprecations():
    """The deprecations transformers reports while the block runs, as a list of messages: its
    FutureWarning/DeprecationWarning, told apart by the module that calls `warnings.warn` (its
    deprecate_kwarg attributes the warning to its caller, torch's Module.__call__, so a
    ``filterwarnings(module="transformers")`` filter never sees it; torch's own warnings pass), and
    the "deprecated" notes it logs (its warning_once cache is cleared first, so a note that an
    earlier test triggered is logged again)."""
    from transformers.utils import logging as hf_logging

    notes, warn = [], warnings.warn

    def spy(message, category=UserWarning, stacklevel=1, **kwargs):
        category = type(message) if isinstance(message, Warning) else category
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("transformers") and issubclass(category, (FutureWarning, DeprecationWarning)):
            notes.append(f"{category.__name__}: {message}")
        warn(message, category, stacklevel + 1, **kwargs)

    class Notes(logging.Handler):
        def emit(self, record):
            if "deprecat" in record.getMessage().lower():
                notes.append(f"log: {record.getMessage()}")

    handler, logger = Notes(logging.WARNING), logging.getLogger("transformers")
    hf_logging.warning_once.cache_clear()
    logger.addHandler(handler)
    warnings.warn = spy
    try:
        yield notes
    finally:
        warnings.warn = warn
        logger.removeHandler(handler)


def test_the_deprecation_catcher_sees_both_channels():
    """The checker first: a deprecated keyword (a warning attributed to torch) and a logged note."""
    from transformers import DynamicCache

    model = tiny_hf("llama")
    if cache_argument(model) != "cache":
        pytest.skip("transformers before 5.24: past_key_values is the current name")
    with warnings.catch_warnings(), transformers_deprecations() as notes:
        warnings.simplefilter("ignore")  # seen by the catcher, not shown (nor raised under -W error)
        out = model(
            input_ids=torch.tensor([[1, 2, 3]]),
            past_key_values=DynamicCache(config=model.config),
            use_cache=True,
        )
        _ = out.past_key_values
    assert any("FutureWarning" in n for n in notes) and any(n.startswith("log:") for n in notes)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_decode_equals_a_full_forward_with_nothing_deprecated(tmp_path, kind):
    """The engine's own prefill (a repeated prompt is computed once and its cache kept once,
    share_rows) and decode steps (a finished row is dropped with select_rows) give, row by row, the
    logits of a forward over the row's whole sequence; loading, forward and decode raise no
    deprecation from transformers."""
    tiny_hf(kind).save_pretrained(tmp_path)
    prompts = [[5, 9, 2, 7], [3, 1], [5, 9, 2, 7], [8, 8, 4, 6, 1]]
    P, N = 5, 4
    with transformers_deprecations() as notes:
        model = load_hf_model(tmp_path)
        cache, logits, attn, next_pos = _prefill(model, 0, prompts, P, N, torch.device("cpu"))
        seqs, live = [list(p) for p in prompts], list(range(len(prompts)))
        for step in range(N):
            assert_logits_of_full_forwards(model, logits, [seqs[i] for i in live])
            token = logits.argmax(-1)
            for j, i in enumerate(live):
                seqs[i].append(int(token[j]))
            keep = torch.tensor([j for j in range(len(live)) if (step, j) != (1, 1)])  # row 1 ends at step 1
            logits, next_pos, attn, _, index = _next_step(
                model, cache, token, next_pos, attn, None, keep, P, step
            )
            if index is not None:
                live = [live[j] for j in index.tolist()]
        assert_logits_of_full_forwards(model, logits, [seqs[i] for i in live])
    assert live == [0, 2, 3]  # the finished row left the batch
    assert notes == []


@pytest.mark.parametrize("capacity", [3, 16])
def test_reserved_cache_layers_write_in_place_and_grow_past_capacity(tmp_path, capacity):
    """The engine's HF cache reserves its positions: a step writes into the buffers (the same
    storage from step to step) and reads exactly the filled length; a sequence past the capacity
    grows the buffers and stays right. Logits equal full forwards either way."""
    from reasonlab.model.hf import HFCache, reserved_layer_class

    tiny_hf("llama").save_pretrained(tmp_path)
    model = load_hf_model(tmp_path)
    cache = HFCache(model.config, capacity=capacity)
    assert all(type(layer) is reserved_layer_class() for layer in cache.kv.layers)
    seq = [5, 9, 2, 7]
    ids = torch.tensor([seq])
    logits = model.decode(ids, torch.arange(4)[None], torch.ones(1, 4, dtype=torch.long), cache)[:, -1]
    buffers = []
    for _ in range(6):
        assert_logits_of_full_forwards(model, logits, [seq])
        assert cache.kv.get_seq_length() == len(seq) == cache.kv.layers[0].keys.shape[-2]
        buffers.append(cache.kv.layers[0].key_buffer.data_ptr())
        token = int(logits.argmax(-1))
        seq.append(token)
        n = len(seq)
        logits = model.decode(
            torch.tensor([[token]]), torch.tensor([[n - 1]]), torch.ones(1, n, dtype=torch.long), cache
        )[:, -1]
    assert_logits_of_full_forwards(model, logits, [seq])
    if capacity >= len(seq):
        assert len(set(buffers)) == 1  # written in place: never reallocated
    else:
        assert cache.kv.layers[0].key_buffer.shape[-2] >= len(seq)


def assert_logits_of_full_forwards(model, logits, seqs):
    """logits (B, V) are, row by row, the last-position logits of a forward over each whole sequence."""
    for row, seq in zip(logits, seqs):
        assert torch.allclose(row, model(torch.tensor([seq]))[0, -1], atol=1e-5)


def test_the_cache_goes_under_the_name_forward_takes():
    """transformers 5.24 renamed forward's past_key_values to cache; older models (or remote code)
    still take past_key_values, and a peft wrapper's base model decides."""

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs): ...

    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs): ...

    class Wrapper(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def get_base_model(self):
            return self.base

        def forward(self, input_ids=None, **kwargs): ...

    assert HFCausalLM(Old()).cache_arg == "past_key_values" and HFCausalLM(New()).cache_arg == "cache"
    assert HFCausalLM(Wrapper(New())).cache_arg == "cache"
