"""`SharedPrompts`: decoding rows that continue prompts whose keys and values are kept once.

GRPO samples G completions of every prompt. After the prefill, row b of the batch continues prompt
``index[b]``; instead of copying each prompt's cache G times, the prompt's keys and values stay one
copy and each decode step attends to them once per prompt, with the queries of all its rows as one
matrix (a group reads its prompt's cache once, not G times), and to each row's own tokens in a
per-row cache. Both scores go through one softmax, so the result is that of attending to a copied
cache (tested against it for both model kinds). The built-in model's `KVCache` and the Hugging Face
adapter's `HFCache` both decode through it.
"""

from __future__ import annotations

import torch


class SharedPrompts:
    """The prompts' keys and values, one copy per distinct prompt, and where each decoding row sits.

    `prefix_k[layer]`, `prefix_v[layer]`: (U, Hk, P, hd) for U distinct prompts; `prefix_bias`:
    (U, 1, 1, P) additive, -inf on each prompt's padding. `index` (B,): row b's prompt."""

    def __init__(self, index: torch.Tensor, prefix_k: list, prefix_v: list, prefix_bias: torch.Tensor):
        self.prefix_k, self.prefix_v, self.prefix_bias = prefix_k, prefix_v, prefix_bias
        U, B = prefix_k[0].shape[0], index.shape[0]
        counts = torch.bincount(index, minlength=U)
        self.width = int(counts.max())  # most rows any one prompt has
        firsts = torch.cumsum(counts, 0) - counts  # rows are grouped by prompt in any order: rank them
        order = torch.argsort(index, stable=True)
        rank = torch.empty_like(index)
        rank[order] = torch.arange(B, device=index.device) - firsts[index[order]]
        self.slot = (index, rank)  # the row's prompt and its place among that prompt's rows
        # Rows in prompt order, `width` rows each (GRPO's layout): a group's queries are a view.
        self.dense = B == U * self.width and torch.equal(
            index, torch.arange(U, device=index.device).repeat_interleave(self.width)
        )

    def select(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in `index` (finished rows leave the batch)."""
        self.slot = tuple(x.index_select(0, index) for x in self.slot)
        self.dense = False

    def attend(
        self, layer: int, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """One decode step's attention for every row: q (B, Hk, r, hd), the r query heads of each
        key/value head (grouped-query attention without repeating keys); keys and values
        (B, Hk, t, hd), each row's own tokens after its prompt. Returns (B, Hk, r, hd)."""
        pk, pv = self.prefix_k[layer], self.prefix_v[layer]  # (U, Hk, P, hd)
        P = pk.shape[2]
        s_row = torch.matmul(q, keys.transpose(-1, -2)) * scale  # (B, Hk, r, t)
        s_pre = (
            torch.matmul(self._to_groups(q), pk.transpose(-1, -2)) * scale + self.prefix_bias
        )  # (U, Hk, W r, P)
        probs = torch.softmax(torch.cat([self._from_groups(s_pre, q.shape[2]), s_row], dim=-1), dim=-1)
        y_pre = self._from_groups(torch.matmul(self._to_groups(probs[..., :P]), pv), q.shape[2])
        return y_pre + torch.matmul(probs[..., P:], values)

    def _to_groups(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hk, r, n) per row -> (U, Hk, W·r, n): each prompt's rows as one matrix per key head
        (zeros where a prompt has fewer than W rows). Dense layout: a view before the copy."""
        U, W = self.prefix_k[0].shape[0], self.width
        B, Hk, r, n = x.shape
        if self.dense:
            grouped = x.view(U, W, Hk, r, n)
        else:
            grouped = x.new_zeros(U, W, Hk, r, n)
            grouped[self.slot] = x
        return grouped.transpose(1, 2).reshape(U, Hk, W * r, n)

    def _from_groups(self, y: torch.Tensor, r: int) -> torch.Tensor:
        """The inverse of `_to_groups`: (U, Hk, W·r, n) -> (B, Hk, r, n)."""
        U, Hk, _, n = y.shape
        y = y.view(U, Hk, self.width, r, n).transpose(1, 2)  # (U, W, Hk, r, n)
        return y.reshape(-1, Hk, r, n) if self.dense else y[self.slot]


def take_rows(x: torch.Tensor, index: torch.Tensor, filled: int) -> torch.Tensor:
    """Rows `index` of a preallocated (B, heads, capacity, hd) cache buffer of which the first
    `filled` positions are written: only those are copied when they are under half of it (the rest
    is never read before it is written)."""
    if 2 * filled >= x.shape[2]:
        return x.index_select(0, index)
    out = x.new_empty((len(index),) + x.shape[1:])
    out[:, :, :filled] = x[:, :, :filled].index_select(0, index)
    return out
