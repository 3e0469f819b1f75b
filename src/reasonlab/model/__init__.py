"""Models behind one interface: the built-in tiny GPT and any Hugging Face causal LM.

Both give ``forward(input_ids, position_ids=None, attention_mask=None) -> logits`` for training and
``init_cache(batch, max_len)`` + ``decode(input_ids, position_ids, attention_mask, cache)`` for the
engine; `load_model(path)` returns ``(model, TokenizerAdapter)`` for either kind.
"""

from .checkpoint import export_hf, load_model, load_train_config, new_builtin, save_checkpoint, train_record
from .gpt import GPT, GPTConfig
from .grouped import GroupedBatch
from .hf import HFCausalLM
from .tokenizer import TokenizerAdapter, build_char_tokenizer

__all__ = [
    "GPT",
    "GPTConfig",
    "GroupedBatch",
    "HFCausalLM",
    "TokenizerAdapter",
    "build_char_tokenizer",
    "export_hf",
    "load_model",
    "load_train_config",
    "new_builtin",
    "save_checkpoint",
    "train_record",
]
