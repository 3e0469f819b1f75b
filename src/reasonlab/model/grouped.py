"""`GroupedBatch`: GRPO's training rows laid out by group, each group's prompt held once.

The one layout both model kinds train on when prompts are shared: the built-in GPT packs the
completions after one prompt pass (`model.gpt`), a Hugging Face model runs them on the prompts' KV
cache (`model.hf`); `rl.batch` builds it and `rl.update` reads its predictions back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GroupedBatch:
    """Training rows that share prompts in groups: P prompts and N = P·G completions, row i of the
    completions following prompt i // G. `GPT.forward(batch)` returns (N, Lc, vocab) logits where
    [i, j] predicts completion token j of row i (zeros past a row's length); with `packed`, only the
    rows of real predictions, (tokens, vocab), row k landing at `places()[k]` of the (N·Lc) grid."""

    prompt_ids: torch.Tensor  # (P, Lp) right-padded
    prompt_lens: torch.Tensor  # (P,)
    completion_ids: torch.Tensor  # (N, Lc) right-padded
    completion_lens: torch.Tensor  # (N,)
    group_size: int
    packed: bool = False

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def fed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The completion tokens fed to the model, all but each row's last (its prediction is not
        needed): columns 0 … width-1 of `completion_ids`, and the (N, width) mask of real ones."""
        fed = (self.completion_lens - 1).clamp(min=0)
        cols = torch.arange(max(int(fed.max()), 1), device=fed.device)
        return cols, cols[None, :] < fed[:, None]

    def places(self) -> torch.Tensor:
        """(tokens,) where each packed prediction goes in the flattened (N·Lc) grid: first [i, 0] of
        every non-empty row (predicted by its prompt's last token), then [i, j + 1] for every fed
        completion token j, row by row."""
        N, Lc = self.completion_ids.shape
        cols, keep = self.fed()
        rows = torch.arange(N, device=cols.device)
        return torch.cat(
            [rows[self.completion_lens > 0] * Lc, (rows[:, None] * Lc + cols[None, :] + 1)[keep]]
        )

    def __getitem__(self, rows: slice) -> GroupedBatch:
        """The rows of whole groups (`rows` must start and stop on a group boundary)."""
        G = self.group_size
        start, stop = rows.start or 0, len(self) if rows.stop is None else rows.stop
        if start % G or stop % G:
            raise ValueError(f"rows {start}:{stop} split a group of {G}")
        prompts = slice(start // G, stop // G)
        return GroupedBatch(
            self.prompt_ids[prompts],
            self.prompt_lens[prompts],
            self.completion_ids[start:stop],
            self.completion_lens[start:stop],
            G,
            self.packed,
        )

    def to(self, device) -> GroupedBatch:
        return GroupedBatch(
            self.prompt_ids.to(device),
            self.prompt_lens.to(device),
            self.completion_ids.to(device),
            self.completion_lens.to(device),
            self.group_size,
            self.packed,
        )
