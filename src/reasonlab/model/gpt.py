"""The built-in model: a small Llama-shaped decoder (RoPE, RMSNorm, SwiGLU, optional tied embeddings).

Modules carry Hugging Face Llama's names (``model.layers.0.self_attn.q_proj`` …) and compute what
`LlamaForCausalLM` computes (RoPE in the rotate-half convention, RMSNorm in float32), so a
checkpoint is a Llama checkpoint: `transformers.AutoModelForCausalLM` loads an exported one and gives
the same logits.

Three entry points share the weights:
- ``forward(input_ids) -> logits`` for training (causal; right padding needs no mask);
- ``forward(GroupedBatch) -> logits`` for GRPO training: each group's prompt is computed once and
  the completions are packed (no padding), so a step costs what its distinct tokens cost;
- ``init_cache`` + ``decode`` for sampling with a preallocated KV cache and left-padded prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import value_fits
from .grouped import GroupedBatch
from .shared import SharedPrompts, take_rows

MAX_POSITIONS = 2**20


@dataclass
class GPTConfig:
    vocab_size: int = 102  # the built-in character tokenizer's size
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4  # fewer than n_head: grouped-query attention
    d_model: int = 128
    d_ff: int = 0  # SwiGLU hidden size; 0 means 8/3 * d_model rounded up to a multiple of 16
    max_seq_len: int = 512  # longest prompt + completion the RoPE tables cover
    rope_theta: float = 10000.0
    tie_embeddings: bool = True  # share the input embedding with the output layer
    norm_eps: float = 1e-5

    def __post_init__(self):
        kinds = {"int": int, "float": float, "bool": bool}  # a config.json may hold anything
        wrong = [f.name for f in fields(self) if not value_fits(kinds[f.type], getattr(self, f.name))]
        if wrong:
            raise ValueError(f"model config: {', '.join(wrong)} of the wrong type")
        if not (0 < self.rope_theta < math.inf and 0 < self.norm_eps < math.inf):
            raise ValueError("model config: rope_theta and norm_eps must be finite and > 0")
        if (
            min(self.vocab_size, self.n_layer, self.n_head, self.n_kv_head, self.d_model, self.max_seq_len)
            < 1
        ):
            raise ValueError(
                "model sizes (vocab_size, n_layer, n_head, n_kv_head, d_model, max_seq_len) must be >= 1"
            )
        if self.max_seq_len > MAX_POSITIONS:  # RoPE tables are built for every position
            raise ValueError(f"max_seq_len must be <= {MAX_POSITIONS}, got {self.max_seq_len}")
        if self.d_model % (2 * self.n_head) or self.n_head % self.n_kv_head:
            raise ValueError("d_model must divide by 2 * n_head (an even head size), and n_head by n_kv_head")
        if self.d_ff == 0:
            self.d_ff = 16 * math.ceil(8 * self.d_model / 3 / 16)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class SharedPrefix:
    """Per layer, the keys and values of the group prompts (recorded by the prompt pass) and how the
    packed completion tokens of the second pass are laid out to attend to them."""

    def __init__(self, batch: GroupedBatch, index: torch.Tensor, width: int):
        self.k, self.v = [], []
        self.group, self.index, self.rows, self.width = batch.group_size, index, len(batch), width
        Lp, device = batch.prompt_ids.shape[1], batch.prompt_ids.device
        prompt_keys = (
            torch.arange(Lp, device=device)[None, :]
            < batch.prompt_lens.repeat_interleave(self.group)[:, None]
        )
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        # (N, 1, width, Lp + width): a completion token sees its prompt's real tokens and its own past.
        self.mask = torch.cat(
            [
                prompt_keys[:, None, None, :].expand(-1, 1, width, Lp),
                causal[None, None].expand(self.rows, 1, width, width),
            ],
            dim=-1,
        )

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """(tokens, H, hd) packed -> (N, H, width, hd), zeros on padding."""
        out = packed.new_zeros((self.rows * self.width,) + packed.shape[1:]).index_copy(0, self.index, packed)
        return out.view(self.rows, self.width, *packed.shape[1:]).transpose(1, 2)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class KVCache:
    """Preallocated keys and values, [n_layer] x (B, n_kv_head, max_len, head_dim); `pos` = filled length.

    It also holds fused copies of each layer's q/k/v and gate/up weights (one matmul instead of
    three or two per decode step): weights do not change while a batch is being sampled.
    """

    def __init__(self, model: GPT, batch: int, max_len: int):
        c, p = model.config, model.lm_head.weight
        shape = (batch, c.n_kv_head, max_len, c.head_dim)
        # Uninitialised on purpose: only positions already written are ever read.
        self.k = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in range(c.n_layer)]
        self.v = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in range(c.n_layer)]
        self.pos = 0
        # Additive key mask (B, 1, 1, max_len): -inf on the prompt's left padding, 0 elsewhere; set
        # at prefill. Tokens appended after it are always visible.
        self.key_bias = torch.zeros((batch, 1, 1, max_len), dtype=p.dtype, device=p.device)
        with torch.no_grad():
            # Rows: q, k, v, then rotate_half(q), rotate_half(k) (rotate_half is a signed permutation
            # of each head's features, so it folds into the weight rows). Decoding takes all five
            # from one matmul; a prefill takes the first three (`qkv_rows`, a view).
            rot = lambda w: rotate_half(w.T.reshape(c.d_model, -1, c.head_dim)).reshape(c.d_model, -1).T  # noqa: E731
            self.w_qkv_rope = [
                torch.cat(
                    [
                        a.q_proj.weight,
                        a.k_proj.weight,
                        a.v_proj.weight,
                        rot(a.q_proj.weight),
                        rot(a.k_proj.weight),
                    ]
                )
                for a in (b.self_attn for b in model.model.layers)
            ]
            self.qkv_rows = (c.n_head + 2 * c.n_kv_head) * c.head_dim
            self.w_gate_up = [
                torch.cat([b.mlp.gate_proj.weight, b.mlp.up_proj.weight]) for b in model.model.layers
            ]

        self.start = 0  # positions before `start` live in the shared prompt cache (see `share_rows`)
        self.shared: SharedPrompts | None = None

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in `index` (finished rows leave the batch). Only the positions
        written so far are copied: the rest of the buffer is never read before it is written."""
        filled = self.pos - self.start
        self.k = [take_rows(k, index, filled) for k in self.k]
        self.v = [take_rows(v, index, filled) for v in self.v]
        if self.shared is None:
            self.key_bias = self.key_bias.index_select(0, index)
        else:
            self.shared.select(index)

    def share_rows(self, index: torch.Tensor) -> None:
        """Row b of the batch from now on continues prefilled row index[b] (GRPO: G rows a prompt):
        the prompts' keys and values stay one copy (`SharedPrompts`), each row's own tokens go to a
        per-row cache from position `start`."""
        B, P = index.shape[0], self.pos
        self.shared = SharedPrompts(
            index,
            [k[:, :, :P].contiguous() for k in self.k],
            [v[:, :, :P].contiguous() for v in self.v],
            self.key_bias[:, :, :, :P].contiguous(),
        )  # (U, 1, 1, P): the prompt padding
        shape = (B, self.k[0].shape[1], self.k[0].shape[2] - P, self.k[0].shape[3])
        self.k = [torch.empty(shape, dtype=k.dtype, device=k.device) for k in self.k]
        self.v = [torch.empty(shape, dtype=v.dtype, device=v.device) for v in self.v]
        self.start = P

    def attend(self, layer: int, q: torch.Tensor, end: int, bias: torch.Tensor | None) -> torch.Tensor:
        """One decode step's attention: q (B, H, hd) over positions [0, end) -> (B, H * hd).
        `bias` (B*H, 1, end): the padding mask of an unshared cache."""
        B, H, hd = q.shape
        keys, values = self.k[layer][:, :, : end - self.start], self.v[layer][:, :, : end - self.start]
        if self.shared is not None:
            Hk = keys.shape[1]
            return self.shared.attend(layer, q.view(B, Hk, H // Hk, hd), keys, values, hd**-0.5).reshape(
                B, H * hd
            )
        if keys.shape[1] != H:  # grouped-query attention: share each key/value head
            rep = H // keys.shape[1]
            keys, values = keys.repeat_interleave(rep, 1), values.repeat_interleave(rep, 1)
        t = end - self.start
        keys, values = keys.reshape(B * H, t, hd), values.reshape(B * H, t, hd)
        scores = torch.baddbmm(bias, q.reshape(B * H, 1, hd), keys.transpose(1, 2), alpha=hd**-0.5)
        return torch.bmm(torch.softmax(scores, dim=-1), values).view(B, H * hd)


class Attention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.d_model, c.n_head * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_head * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_head * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.n_head * c.head_dim, c.d_model, bias=False)

    def forward(
        self,
        x,
        cos,
        sin,
        mask=None,
        cache: KVCache | None = None,
        layer: int = 0,
        prefix: SharedPrefix | None = None,
    ):
        if prefix is not None and len(prefix.k) > layer:  # packed completions after their prompts
            return self._after_prefix(x, cos, sin, prefix, layer)
        B, T, _ = x.shape  # (B, T, d_model)
        c, hd = self.c, self.c.head_dim
        if cache is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            q, k, v = F.linear(x, cache.w_qkv_rope[layer][: cache.qkv_rows]).split(
                [c.n_head * hd, c.n_kv_head * hd, c.n_kv_head * hd], dim=-1
            )
        q = q.view(B, T, c.n_head, hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, c.n_kv_head, hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(B, T, c.n_kv_head, hd).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=c.n_kv_head != c.n_head
            )
            if prefix is not None:  # the prompt pass: keep its keys and values for the completions
                prefix.k.append(k)
                prefix.v.append(v)
        else:
            end = cache.pos + T
            cache.k[layer][:, :, cache.pos : end] = k
            cache.v[layer][:, :, cache.pos : end] = v
            keys, values = cache.k[layer][:, :, :end], cache.v[layer][:, :, :end]
            if mask is None:  # first call, no padding: the cache holds exactly these keys
                y = F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, enable_gqa=c.n_kv_head != c.n_head
                )
            else:
                y = _cached_attention(q, keys, values, mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    def _after_prefix(self, x, cos, sin, prefix: SharedPrefix, layer: int):
        """x (tokens, d_model): every completion token of the batch, packed; cos/sin (tokens, 1, hd)."""
        c, hd = self.c, self.c.head_dim
        q = self.q_proj(x).view(-1, c.n_head, hd)
        k = self.k_proj(x).view(-1, c.n_kv_head, hd)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        G = prefix.group
        keys = torch.cat([prefix.k[layer].repeat_interleave(G, 0), prefix.pad(k)], dim=2)
        values = torch.cat(
            [prefix.v[layer].repeat_interleave(G, 0), prefix.pad(self.v_proj(x).view(-1, c.n_kv_head, hd))],
            dim=2,
        )
        y = F.scaled_dot_product_attention(
            prefix.pad(q), keys, values, attn_mask=prefix.mask, enable_gqa=c.n_kv_head != c.n_head
        )  # (N, H, width, hd)
        y = y.transpose(1, 2).reshape(-1, c.n_head * hd).index_select(0, prefix.index)
        return self.o_proj(y)


def _cached_attention(q, k, v, bias):
    """Attention over the cache with an additive mask `bias` (B, 1, T, S).

    Plain matmuls: for one query token over a short cache they beat SDPA's masked CPU path.
    """
    if k.shape[1] != q.shape[1]:  # grouped-query attention: share each key/value head
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5) + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class MLP(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.up_proj = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.down_proj = nn.Linear(c.d_ff, c.d_model, bias=False)

    def forward(self, x, w_gate_up=None):
        if w_gate_up is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate, up = F.linear(x, w_gate_up).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask=None, cache=None, layer=0, prefix=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, prefix)
        fused = None if cache is None else cache.w_gate_up[layer]
        return x + self.mlp(self.post_attention_layernorm(x), fused)


class Decoder(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.norm = nn.RMSNorm(c.d_model, eps=c.norm_eps)


class GPT(nn.Module):
    kind = "builtin"
    shares_prompts = True  # forward takes a GroupedBatch (GRPO's shared-prompt pass)

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim)
        angles = torch.outer(torch.arange(config.max_seq_len).float(), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)  # (max_seq_len, head_dim), HF's layout
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def _run(self, input_ids, position_ids, mask, cache):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        if int(position_ids.max()) >= self.config.max_seq_len:
            raise ValueError(f"sequence longer than max_seq_len={self.config.max_seq_len}")
        cos, sin = self.cos[position_ids], self.sin[position_ids]
        x = self.model.embed_tokens(input_ids)
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, mask, cache, i)
        return self.lm_head(self.model.norm(x))

    def _decode_one(self, input_ids, position_ids, cache: KVCache):
        """One new token per row: the hot loop of sampling, written as plain tensor calls.

        Same math as `_run` with fused weights and batched (B*H) attention; `decode` tests check
        that both give the same logits.
        """
        c, (B, _) = self.config, input_ids.shape
        H, Hk, hd, pos = c.n_head, c.n_kv_head, c.head_dim, cache.pos
        end = pos + 1
        cos, sin = self.cos[position_ids], self.sin[position_ids]  # (B, 1, hd)
        bias = (
            None
            if cache.shared is not None
            else cache.key_bias[:, :, :, :end].expand(B, H, 1, end).reshape(B * H, 1, end)
        )
        x = self.model.embed_tokens(input_ids)  # (B, 1, d)
        for i, block in enumerate(self.model.layers):
            h = F.rms_norm(x, (c.d_model,), block.input_layernorm.weight, c.norm_eps)
            qkv = F.linear(h, cache.w_qkv_rope[i]).view(B, 2 * H + 3 * Hk, hd)
            qk = torch.addcmul(qkv[:, : H + Hk] * cos, qkv[:, H + 2 * Hk :], sin)  # RoPE on q and k at once
            cache.k[i][:, :, pos - cache.start] = qk[:, H:]
            cache.v[i][:, :, pos - cache.start] = qkv[:, H + Hk : H + 2 * Hk]
            y = cache.attend(i, qk[:, :H], end, bias)
            x = x + F.linear(y, block.self_attn.o_proj.weight)[:, None]
            h = F.rms_norm(x, (c.d_model,), block.post_attention_layernorm.weight, c.norm_eps)
            gate, up = F.linear(h, cache.w_gate_up[i]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, block.mlp.down_proj.weight)
        x = F.rms_norm(x, (c.d_model,), self.model.norm.weight, c.norm_eps)
        return F.linear(x, self.lm_head.weight)

    def _grouped(self, b: GroupedBatch) -> torch.Tensor:
        """Logits (N, Lc, vocab) of a `GroupedBatch`: the same numbers as a causal pass over each
        prompt + completion row, computing each prompt once and no padding in the token-wise layers."""
        P, Lp = b.prompt_ids.shape
        N, Lc = b.completion_ids.shape
        G, device = b.group_size, b.prompt_ids.device
        if N != P * G:
            raise ValueError(f"{N} completions for {P} prompts in groups of {G}")
        cols, keep = b.fed()  # (width,), (N, width)
        width = len(cols)
        index = (torch.arange(N, device=device)[:, None] * width + cols[None, :])[keep]
        prefix = SharedPrefix(b, index, width)
        if int(b.prompt_lens.max()) + width > self.config.max_seq_len:
            raise ValueError(f"sequence longer than max_seq_len={self.config.max_seq_len}")
        # Pass 1: the prompts (right-padded: causal attention alone keeps real tokens off the padding).
        x = self.model.embed_tokens(b.prompt_ids)
        cos, sin = self.cos[:Lp].expand(P, Lp, -1), self.sin[:Lp].expand(P, Lp, -1)
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, None, None, i, prefix)
        last = x[torch.arange(P, device=device), b.prompt_lens - 1]  # (P, d): predicts completion token 0
        # Pass 2: the completions, packed into one run of tokens.
        positions = (b.prompt_lens.repeat_interleave(G)[:, None] + cols[None, :])[keep]
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (tokens, 1, hd)
        x = self.model.embed_tokens(b.completion_ids[:, :width][keep])
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, None, None, i, prefix)
        # Row i: [i, 0] from its prompt's last token, [i, j + 1] from its completion token j (`places`).
        rows = torch.arange(N, device=device)[b.completion_lens > 0]
        logits = self.lm_head(self.model.norm(torch.cat([last[rows // G], x])))
        if b.packed:
            return logits
        return logits.new_zeros(N * Lc, logits.shape[-1]).index_copy(0, b.places(), logits).view(N, Lc, -1)

    def forward(self, input_ids, position_ids=None, attention_mask=None):
        """Logits (B, T, vocab) for a causal pass. `attention_mask` (B, T), 1 = real, for left padding.
        Given a `GroupedBatch` instead of ids: see `_grouped`."""
        if isinstance(input_ids, GroupedBatch):
            return self._grouped(input_ids)
        mask = None if attention_mask is None else _mask(attention_mask.bool(), input_ids.shape[1], 0)
        return self._run(input_ids, position_ids, mask, None)

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(self, batch, max_len)

    def select_rows(self, cache: KVCache, index: torch.Tensor) -> None:
        cache.select_rows(index)

    def share_rows(self, cache: KVCache, index: torch.Tensor) -> None:
        """After a prefill: row b continues prefilled row index[b], the prompt cache kept once."""
        cache.share_rows(index)

    def decode(self, input_ids, position_ids, attention_mask, cache: KVCache):
        """Logits for `input_ids` (B, T) appended to the cache. `attention_mask` (B, cache.pos + T).

        Single-token steps reuse the padding mask recorded by the multi-token (prefill) calls:
        a new token sees every real key, so only the prompt's padding needs masking.
        """
        T, end = input_ids.shape[1], cache.pos + input_ids.shape[1]
        if T == 1:
            logits = self._decode_one(input_ids, position_ids, cache)
            cache.pos += 1
            return logits
        if cache.shared is not None:
            raise ValueError("a shared-prompt cache takes one token per row a step")
        keys = attention_mask.bool()
        cache.key_bias[:, 0, 0, :end].masked_fill_(~keys, float("-inf"))
        bias = None  # no padding in a first call: plain causal attention (SDPA's fast path)
        if cache.pos > 0 or not keys.all():
            bias = torch.zeros((keys.shape[0], 1, T, end), dtype=cache.key_bias.dtype, device=keys.device)
            bias.masked_fill_(~_mask(keys, T, cache.pos), float("-inf"))
        logits = self._run(input_ids, position_ids, bias, cache)
        cache.pos += input_ids.shape[1]
        return logits


def _mask(key_mask: torch.Tensor, T: int, start: int) -> torch.Tensor:
    """(B, 1, T, S) boolean: query start+i sees real keys up to itself, and always itself.

    Seeing itself keeps every row of the softmax non-empty, so pad positions stay finite (an
    all-masked row would give NaN, which a later layer would spread through the values).
    """
    S = key_mask.shape[1]
    q_pos = torch.arange(start, start + T, device=key_mask.device)[:, None]
    k_pos = torch.arange(S, device=key_mask.device)[None, :]
    causal = k_pos <= q_pos  # (T, S)
    return (key_mask[:, None, None, :] & causal) | (k_pos == q_pos)
