"""Any Hugging Face causal LM behind the built-in model's interface.

`HFCausalLM` wraps a `transformers` model so the engine and the trainers call it exactly as they call
`GPT`: ``forward(input_ids, position_ids, attention_mask) -> logits`` and ``init_cache`` + ``decode``
(the cache is a `transformers.DynamicCache`). Nothing is ever downloaded: models load from a local
folder.

Needs transformers >= 4.56 (``DynamicCache(config=...)``, ``from_pretrained(dtype=...)``). 5.24
renamed ``forward``'s ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40), so the
adapter passes the cache under whichever name the model's ``forward`` takes, and never reads it
back from the output (the cache is updated in place; the output's attribute was renamed too).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn


class HFCache:
    def __init__(self, config):
        from transformers import DynamicCache

        self.kv = DynamicCache(config=config)
        self.pos = 0


class HFCausalLM(nn.Module):
    kind = "hf"

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model
        self.cache_arg = cache_argument(hf_model)

    @property
    def config(self):
        return self.hf.config

    @property
    def max_seq_len(self) -> int | None:
        return getattr(self.hf.config, "max_position_embeddings", None)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids, position_ids=None, attention_mask=None):
        return self.hf(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                       use_cache=False).logits

    def init_cache(self, batch: int, max_len: int) -> HFCache:
        return HFCache(self.hf.config)

    def select_rows(self, cache: HFCache, index: torch.Tensor) -> None:
        cache.kv.reorder_cache(index)

    def decode(self, input_ids, position_ids, attention_mask, cache: HFCache):
        out = self.hf(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                      use_cache=True, **{self.cache_arg: cache.kv})
        cache.pos += input_ids.shape[1]
        return out.logits


def cache_argument(hf_model) -> str:
    """The name under which `hf_model.forward` takes its KV cache: ``cache`` from transformers 5.24,
    ``past_key_values`` before (and in remote-code models written before the rename). A peft wrapper
    passes keyword arguments through, so its base model's forward decides."""
    base = hf_model.get_base_model() if hasattr(hf_model, "get_base_model") else hf_model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def load_hf_model(path, dtype: torch.dtype | None = None) -> HFCausalLM:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, local_files_only=True)
    return HFCausalLM(model)
