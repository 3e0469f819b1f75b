"""Any Hugging Face causal LM behind the built-in model's interface.

`HFCausalLM` wraps a `transformers` model so the engine and the trainers call it exactly as they call
`GPT`: ``forward(input_ids, position_ids, attention_mask) -> logits`` and ``init_cache`` + ``decode``
(the cache is a `transformers.DynamicCache`). Nothing is ever downloaded: models load from a local
folder.
"""

from __future__ import annotations

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
                      past_key_values=cache.kv, use_cache=True)
        cache.kv = out.past_key_values
        cache.pos += input_ids.shape[1]
        return out.logits


def load_hf_model(path, dtype: torch.dtype | None = None) -> HFCausalLM:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, local_files_only=True)
    return HFCausalLM(model)
