"""Any Hugging Face causal LM behind the built-in model's interface.

`HFCausalLM` wraps a `transformers` model so the engine and the trainers call it exactly as they call
`GPT`: ``forward(input_ids, position_ids, attention_mask) -> logits`` and ``init_cache`` + ``decode``
(the cache is a `transformers.DynamicCache`), plus ``share_rows``: after a prefill, GRPO's groups
decode on one copy of each prompt's keys and values (`SharedPrompts`), through an attention function
registered with transformers' `AttentionInterface` for those steps. Nothing is ever downloaded:
models load from a local folder.

``forward(GroupedBatch)`` is GRPO's shared-prompt pass, through transformers' own interfaces: the P
distinct prompts are run once into a `DynamicCache` that keeps its graph, then each group's G
completions run back to back in rows as wide as the longest, each row on its prompt's cache, with
their real positions and a 4D mask (a token sees its prompt's real tokens and its own completion
up to itself), so the token-wise layers compute less padding than one row per completion and the
attention no more scores. The gradient reaches the prompt pass through the cache, so loss and
gradient are those of N padded prompt + completion rows (tested). It runs on the model types in
`GROUPED_MODEL_TYPES` whose every layer caches plainly (`grouped_unsupported` says why not
otherwise, and the trainer then builds padded rows).

Declared for transformers 5.24 to 6 (pyproject: the versions CI tests); the engine's path and the
grouped pass also run on 4.56 (``DynamicCache(config=...)``, ``from_pretrained(dtype=...)``), which
CI does not test. 5.24 renamed ``forward``'s ``past_key_values`` to ``cache`` (the old name warns,
and goes in 5.40), so the adapter passes the cache under whichever name the model's ``forward``
takes, and never reads it back from the output (the cache is updated in place; the output's
attribute was renamed too).
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
import torch.nn as nn

from .grouped import GroupedBatch
from .shared import SharedPrompts, take_rows

# Tested by tests/model/test_hf_grouped.py: decoder-only, RoPE from position_ids, a 4D attention mask
# taken as given, the decoder and the lm_head reachable apart (base_model, get_output_embeddings).
GROUPED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
GROUPED_ATTENTION = ("eager", "sdpa")


class HFCache:
    """The engine's KV cache for an HF model: a `transformers.DynamicCache` whose plain layers are
    `ReservedLayer`s holding `capacity` positions (the prompt and every new token), so a decoding
    step writes its token in place instead of concatenating a copy of the whole cache per layer.

    After `share` (GRPO's groups), the prompts' keys and values are kept once in `shared`
    (`SharedPrompts`) and the layers hold each row's own tokens only, from position `pos`."""

    def __init__(self, config, capacity: int | None = None):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        self.kv = DynamicCache(config=config)
        self.capacity = capacity
        if capacity is not None:
            reserved = reserved_layer_class()
            self.kv.layers = [
                reserved(capacity) if type(layer) is DynamicLayer else layer for layer in self.kv.layers
            ]
        self.pos = 0
        self.prompt_mask: torch.Tensor | None = None  # (U, P) of the prefill: 1 on real prompt tokens
        self.shared: SharedPrompts | None = None

    def can_share(self) -> bool:
        """Prefilled, every layer reserved (a plain full-attention layer), not yet shared."""
        reserved = reserved_layer_class()
        return (
            self.shared is None
            and self.prompt_mask is not None
            and self.capacity is not None
            and all(type(layer) is reserved and layer.length == self.pos for layer in self.kv.layers)
        )

    def share(self, index: torch.Tensor) -> None:
        """Row b continues prefilled row index[b]: the prompts' keys and values move to one shared
        copy and every layer starts a per-row cache of the tokens after them."""
        if not self.can_share():
            raise ValueError("only a prefilled cache of reserved layers can share its prompts")
        P, layers = self.pos, self.kv.layers
        keys = [layer.keys.contiguous() for layer in layers]  # (U, Hk, P, hd)
        bias = torch.zeros(self.prompt_mask.shape, dtype=keys[0].dtype, device=keys[0].device)
        bias.masked_fill_(self.prompt_mask == 0, float("-inf"))
        self.shared = SharedPrompts(
            index.to(keys[0].device),
            keys,
            [layer.values.contiguous() for layer in layers],
            bias[:, None, None, :],
        )
        reserved = reserved_layer_class()
        self.kv.layers = [reserved(self.capacity - P, offset=P) for _ in layers]

    def select(self, index: torch.Tensor) -> None:
        self.kv.reorder_cache(index)
        if self.shared is not None:
            self.shared.select(index.to(self.shared.slot[0].device))


class _ReservedLayerMethods:
    """What `ReservedLayer` changes in transformers' `DynamicLayer` (mixed in before it by
    `reserved_layer_class`): keys and values written into buffers reserved at the first update."""

    def __init__(self, capacity: int, offset: int = 0):
        super().__init__()
        self.capacity, self.length = capacity, 0
        self.offset = offset  # positions before these, kept elsewhere (`SharedPrompts`)
        self.key_buffer = self.value_buffer = None

    def lazy_initialization(self, key_states, value_states=None):  # transformers 4.56 passes the keys only
        value_states = key_states if value_states is None else value_states
        self.device, self.dtype = key_states.device, key_states.dtype
        B, H, _, D = key_states.shape
        self.key_buffer = key_states.new_empty(B, H, self.capacity, D)
        self.value_buffer = value_states.new_empty(B, H, self.capacity, value_states.shape[-1])
        self.is_initialized = True
        self._views()

    def update(self, key_states, value_states, *args, **kwargs):
        if self.key_buffer is None:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self.length + n > self.key_buffer.shape[-2]:  # past what was reserved: grow (copies once)
            extra = max(n, self.key_buffer.shape[-2])
            grow = lambda b: torch.cat([b, b.new_empty(*b.shape[:2], extra, b.shape[-1])], dim=-2)  # noqa: E731
            self.key_buffer, self.value_buffer = grow(self.key_buffer), grow(self.value_buffer)
        self.key_buffer[:, :, self.length : self.length + n] = key_states
        self.value_buffer[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def _views(self):
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def get_seq_length(self, *args) -> int:
        return self.offset + self.length

    def reorder_cache(self, index):
        if self.key_buffer is not None:
            index = index.to(self.key_buffer.device)
            self.key_buffer = take_rows(self.key_buffer, index, self.length)
            self.value_buffer = take_rows(self.value_buffer, index, self.length)
            self._views()

    batch_select_indices = reorder_cache

    def batch_repeat_interleave(self, repeats: int):
        if self.key_buffer is not None:
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._views()

    def crop(self, tokens_to_remove: int):
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if self.key_buffer is not None and tokens_to_remove:
            self.length = max(0, self.length + tokens_to_remove)
            self._views()

    def reset(self):
        self.key_buffer = self.value_buffer = self.keys = self.values = None
        self.length, self.is_initialized = 0, False


@functools.cache
def reserved_layer_class():
    """`ReservedLayer`, built on first use (it subclasses a transformers class; transformers is
    imported only when an HF model is used)."""
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(_ReservedLayerMethods, DynamicLayer):
        """A `DynamicLayer` (keys and values of shape (batch, heads, length, head_dim)) whose keys and
        values are views of buffers reserved for `capacity` positions at the first update: the next
        tokens are written into them (more than `capacity` falls back to growing by concatenation).
        Attention reads exactly the filled length, as with the plain layer."""

    return ReservedLayer


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

    @property
    def shares_prompts(self) -> bool:
        """Whether `forward(GroupedBatch)` runs on this model (the trainer asks before building batches)."""
        return grouped_unsupported(self.hf) is None

    def forward(self, input_ids, position_ids=None, attention_mask=None):
        if isinstance(input_ids, GroupedBatch):
            return self.grouped_forward(input_ids)
        return self.hf(
            input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
        ).logits

    def init_cache(self, batch: int, max_len: int) -> HFCache:
        return HFCache(self.hf.config, capacity=max_len)

    def select_rows(self, cache: HFCache, index: torch.Tensor) -> None:
        cache.select(index)

    def share_rows(self, cache: HFCache, index: torch.Tensor) -> None:
        """After a prefill: row b continues prefilled row index[b]. On a model the shared-prompt
        attention runs on (`shares_prompts`), the prompts' cache is kept once and each decode step
        attends to it once per prompt (`SharedPrompts`); otherwise each row gets a copy."""
        if self.shares_prompts and cache.can_share():
            cache.share(index)
        else:
            cache.select(index)

    def decode(self, input_ids, position_ids, attention_mask, cache: HFCache):
        if cache.shared is None:
            if cache.pos == 0:
                cache.prompt_mask = attention_mask
            out = self.hf(
                input_ids=input_ids,
                position_ids=position_ids,
                attention_mask=attention_mask,
                use_cache=True,
                **{self.cache_arg: cache.kv},
            )
        else:
            if input_ids.shape[1] != 1:
                raise ValueError("a shared-prompt cache takes one token per row a step")
            with attention_implementation(
                self.hf, SHARED_ATTENTION
            ):  # no mask: the prompts' padding is in `shared`
                out = self.hf(
                    input_ids=input_ids,
                    position_ids=position_ids,
                    use_cache=True,
                    shared_prompts=cache.shared,
                    **{self.cache_arg: cache.kv},
                )
        cache.pos += input_ids.shape[1]
        return out.logits

    def grouped_forward(self, b: GroupedBatch) -> torch.Tensor:
        """Logits of a `GroupedBatch` as `GPT` gives them: (N, Lc, vocab), or with `b.packed` the
        real predictions only, (tokens, vocab) in `b.places()` order. Raises on a model that cannot."""
        reason = grouped_unsupported(self.hf)
        if reason is not None:
            raise ValueError(f"grouped GRPO pass: {reason}; train on padded rows (--no-shared-prompts)")
        from transformers import DynamicCache

        (P, _), (N, Lc), G = b.prompt_ids.shape, b.completion_ids.shape, b.group_size
        if N != P * G:
            raise ValueError(f"{N} completions for {P} prompts in groups of {G}")
        core = unwrapped(self.hf)  # LoRA's layers sit inside it
        cache, decoder = DynamicCache(config=self.hf.config), core.base_model
        first = self._prompt_pass(decoder, b, cache)  # (P, d): the states that predict completion token 0
        rest = self._completion_pass(
            decoder, b, cache
        )  # (fed tokens, d); gradients reach pass 1 through the cache
        hidden = torch.cat([first.repeat_interleave(G, 0)[b.completion_lens > 0], rest])
        logits = core.get_output_embeddings()(hidden)  # the lm_head once, on the real predictions only
        if b.packed:
            return logits
        return logits.new_zeros(N * Lc, logits.shape[-1]).index_copy(0, b.places(), logits).view(N, Lc, -1)

    def _prompt_pass(self, decoder, b: GroupedBatch, cache) -> torch.Tensor:
        """The P right-padded prompts through the decoder into `cache`; (P, d) final hidden states
        at each prompt's last token. No attention mask: causal attention alone keeps real tokens off
        the padding to their right (the completions' mask hides it from them)."""
        P, Lp = b.prompt_ids.shape
        positions = torch.arange(Lp, device=b.prompt_ids.device).expand(P, Lp)
        out = decoder(
            input_ids=b.prompt_ids, position_ids=positions, use_cache=True, **{self.cache_arg: cache}
        )
        if cache.get_seq_length() != Lp:  # a model that dropped the cache: pass 2 would see no prompt
            raise RuntimeError("grouped GRPO pass: the prompt pass left no KV cache")
        return out.last_hidden_state[torch.arange(P, device=positions.device), b.prompt_lens - 1]

    def _completion_pass(self, decoder, b: GroupedBatch, cache) -> torch.Tensor:
        """The N completions (all but each row's last token, `b.fed()`) on their prompts' cached
        keys, packed: a group's rows go back to back into rows as wide as the longest (next fit, in
        order), each on its prompt's cache, with their real positions and a 4D mask (a token sees
        its prompt's real tokens and its own completion up to itself). So the token-wise layers
        compute less padding than one row per completion, and no attention score more. Returns the
        (fed tokens, d) final hidden states, row by row, of the real fed tokens only."""
        G, Lp = b.group_size, b.prompt_ids.shape[1]
        device = b.prompt_ids.device
        cols, fed = b.fed()  # (W,), (N, W)
        counts = fed.sum(1).tolist()
        width = len(cols)
        bins, segments, starts = next_fit(
            counts, G, width
        )  # per packed row: its group; per fed row: row, offset
        if not bins:
            return b.completion_lens.new_zeros(0, self.hf.config.hidden_size, dtype=self.hf.dtype)
        rows = torch.arange(len(b), device=device)[:, None].expand_as(fed)[
            fed
        ]  # each fed token's row, row by row
        col = cols.expand_as(fed)[fed]  # and its place in that row
        where = torch.tensor(segments, device=device)[rows]  # its packed row
        slot = torch.tensor(starts, device=device)[rows] + col
        group = torch.tensor(bins, device=device)  # (K,) each packed row's prompt
        K = len(bins)
        ids = b.completion_ids.new_zeros(K, width)
        ids[where, slot] = b.completion_ids[:, :width][fed]
        positions = torch.zeros(K, width, dtype=torch.long, device=device)
        positions[where, slot] = b.prompt_lens[rows // G] + col
        segment = torch.full((K, width), -1, dtype=torch.long, device=device)
        segment[where, slot] = rows
        kept = segment >= 0
        t = torch.arange(width, device=device)
        prompt_keys = (torch.arange(Lp, device=device)[None, :] < b.prompt_lens[group, None])[
            :, None, :
        ] & kept[:, :, None]
        own = (segment[:, :, None] == segment[:, None, :]) & (t[:, None] >= t[None, :]) & kept[:, :, None]
        own |= torch.eye(
            width, dtype=torch.bool, device=device
        )  # an empty slot sees itself (no all-masked softmax)
        allowed = torch.cat([prompt_keys, own], dim=2)[
            :, None
        ]  # (K, 1, W, Lp + W), returned as-is by transformers
        mask = (
            allowed
            if self.hf.config._attn_implementation == "sdpa"
            else torch.zeros(allowed.shape, dtype=self.hf.dtype, device=device).masked_fill(
                ~allowed, torch.finfo(self.hf.dtype).min
            )
        )
        cache.reorder_cache(group)  # each packed row on its prompt's keys and values (differentiable)
        out = decoder(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            use_cache=True,
            **{self.cache_arg: cache},
        )
        return out.last_hidden_state[kept]


SHARED_ATTENTION = "reasonlab_shared_prompts"


def shared_prompt_attention(
    module,
    query,
    key,
    value,
    attention_mask=None,
    scaling=None,
    dropout=0.0,
    shared_prompts: SharedPrompts | None = None,
    **kwargs,
):
    """transformers' attention interface for a decode step on a shared-prompt cache: query
    (B, H, 1, hd); key, value (B, Hk, t, hd), each row's own tokens; the prompts' keys from
    `shared_prompts` at the module's layer. Returns (B, 1, H, hd), as the other interfaces do."""
    if shared_prompts is None:
        raise ValueError(f"attention {SHARED_ATTENTION!r} runs only on a shared-prompt cache")
    B, H, T, hd = query.shape
    Hk = key.shape[1]
    if T != 1 or H % Hk or kwargs.get("sliding_window") or kwargs.get("softcap"):
        raise ValueError("shared-prompt attention takes one query a row, full attention, no softcap")
    scale = hd**-0.5 if scaling is None else scaling
    y = shared_prompts.attend(module.layer_idx, query.view(B, Hk, H // Hk, hd), key, value, scale)
    return y.reshape(B, 1, H, hd), None


@functools.cache
def _register_shared_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(SHARED_ATTENTION, shared_prompt_attention)


@contextlib.contextmanager
def attention_implementation(hf_model, name: str):
    """Run `hf_model` with the attention interface `name` for the duration (no mask is built for
    it: transformers builds masks only for the implementations it knows)."""
    if name == SHARED_ATTENTION:
        _register_shared_attention()
    config = unwrapped(hf_model).config
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


def next_fit(counts: list[int], group_size: int, width: int) -> tuple[list[int], list[int], list[int]]:
    """Rows of `counts[i]` tokens packed in order into rows of `width`, a group's rows never sharing a
    packed row with another group's: each packed row's group, and each row's packed row and offset
    (rows of 0 tokens take no room). The order of the tokens, row by row, is kept."""
    bins, segments, starts, used = [], [], [], width
    for i, n in enumerate(counts):
        if n and (used + n > width or i // group_size != bins[-1]):
            bins.append(i // group_size)
            used = 0
        segments.append(len(bins) - 1 if bins else 0)
        starts.append(used)
        used += n
    return bins, segments, starts


def grouped_unsupported(hf_model) -> str | None:
    """Why `HFCausalLM.forward(GroupedBatch)` cannot run on `hf_model` (a transformers model, maybe
    peft-wrapped), or None when it can: a model type in `GROUPED_MODEL_TYPES`, eager or SDPA
    attention, LoRA as the only peft method, no gradient checkpointing (it turns the cache off),
    and a `DynamicCache` of plain layers (a sliding-window layer keeps only its window of the
    padded prompt's cache slots)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    base = unwrapped(hf_model)
    config = base.config
    methods = {
        str(getattr(c.peft_type, "value", c.peft_type)) for c in getattr(hf_model, "peft_config", {}).values()
    }
    if config.model_type not in GROUPED_MODEL_TYPES:
        return f"model type {config.model_type!r} is not one of {', '.join(GROUPED_MODEL_TYPES)}"
    if config._attn_implementation not in GROUPED_ATTENTION:
        return f"attention {config._attn_implementation!r} is not one of {', '.join(GROUPED_ATTENTION)}"
    if methods - {"LORA"}:
        return f"peft method {', '.join(sorted(methods - {'LORA'}))}"
    if any(getattr(m, "gradient_checkpointing", False) for m in base.modules()):
        return "gradient checkpointing turns the KV cache off"
    kinds = {
        type(layer).__name__
        for layer in DynamicCache(config=config).layers
        if type(layer) is not DynamicLayer
    }
    if kinds:
        return f"cache layers {', '.join(sorted(kinds))} (only plain DynamicLayer caches are supported)"
    return None


def unwrapped(hf_model):
    """The transformers model inside a peft wrapper, or `hf_model` itself (transformers 4.56's
    bare decoders have a `get_base_model` that returns None)."""
    get = getattr(hf_model, "get_base_model", None)
    return (get() if get is not None else None) or hf_model


def cache_argument(hf_model) -> str:
    """The name under which `hf_model.forward` takes its KV cache: ``cache`` from transformers 5.24,
    ``past_key_values`` before (and in remote-code models written before the rename). A peft wrapper
    passes keyword arguments through, so its base model's forward decides."""
    base = unwrapped(hf_model)
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def load_hf_model(path, dtype: torch.dtype | None = None) -> HFCausalLM:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, local_files_only=True)
    return HFCausalLM(model)
