"""The records a GRPO step passes from stage to stage: collect (`Collected`, `Sampled`) -> build
the batch (`StepBatch` of a `Batch`) -> update (`Policy` in, `Update` out) -> log.

Shapes: P problems a step (per rank), G completions a problem, N = P·G rows, T the longest
sequence (prompt + completion) of a batch, Lc its longest completion.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from ..engine import Rollout
from ..model.grouped import GroupedBatch
from ..rewards import Scores


@dataclass
class Group:
    """The G completions of one problem and their rewards: rows `rows(G)` of `rollout`."""

    rollout: Rollout  # the sampling call the rows came from (shared by the groups drawn together)
    index: int  # the group's place in that call: rows index·G … (index+1)·G - 1
    rewards: torch.Tensor  # (G,) total reward of each completion

    def rows(self, G: int) -> slice:
        return slice(self.index * G, (self.index + 1) * G)

    @property
    def flat(self) -> bool:
        """All rewards equal: advantage 0 everywhere, no gradient (with β = 0)."""
        return not bool((self.rewards != self.rewards[0]).any())


@dataclass
class Collected:
    """What a step's collection returns: the groups to train on and the scores of every row drawn."""

    groups: list[Group]  # at most P per rank, in draw order
    scores: list[Scores] = field(default_factory=list)  # one per sampling call, every row drawn
    flat: list[bool] = field(default_factory=list)  # per group drawn here: its rewards were all equal
    cut: list[bool] = field(
        default_factory=list
    )  # per row drawn here (as in `scores`): thinking cut at its budget
    flat_everywhere: list[bool] = field(default_factory=list)  # the same over every rank
    seconds: float = 0.0  # wall time of sampling and scoring


@dataclass
class Sampled:
    """What a step's collection stage hands on."""

    collected: Collected  # this rank's groups, and the scores of every row it drew
    drawn: Scores  # the scores of every row drawn this step, every rank's
    verify_before: Counter  # the task's verifier events before the step (the row logs the step's)


@dataclass
class Batch:
    """The groups as one training batch, in next-token coordinates."""

    inputs: torch.Tensor | GroupedBatch  # (N, T) ids (prompt + completion, right-padded), or each prompt once
    mask: torch.Tensor  # (N, T-1), or (N, Lc) for a GroupedBatch: 1 on *sampled* completion tokens
    advantages: torch.Tensor  # (N,) one per completion
    lengths: torch.Tensor  # (N,) completion lengths, forced tokens included
    think: list[int]  # (N,) thinking tokens of each completion
    tokens: torch.Tensor | None = None  # (N,) tokens each row puts through the model (compute ledger)
    pairs: torch.Tensor | None = None  # (N,) their causal attention's query-key pairs (`compute.pairs`)
    rollout_logp: torch.Tensor | None = None  # like `mask`: the engine's log-prob of each token (0 off it)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def group_rows(self) -> int:
        """The rows a micro-batch must keep together: a `GroupedBatch`'s groups share their prompt."""
        return self.inputs.group_size if isinstance(self.inputs, GroupedBatch) else 1

    def to(self, device) -> Batch:
        return Batch(
            self.inputs.to(device),
            self.mask.to(device),
            self.advantages.to(device),
            self.lengths,
            self.think,
            self.tokens,
            self.pairs,
            None if self.rollout_logp is None else self.rollout_logp.to(device),
        )


@dataclass
class StepBatch:
    """What a step trains on (`batch.batch_for_update`): a `Batch`, and what the loss and the log
    need to know of the groups around it."""

    batch: Batch  # the groups trained on (with `skip_flat_groups`, the flat ones left out)
    trained: list[Group]  # the groups in `batch`, this rank's
    total: float  # the loss's normaliser: tokens (token_mean) or rows of every group kept, every rank's
    kept: list[float]  # the rewards of every group kept (flat ones too), every rank's


@dataclass
class Policy:
    """The model being trained, as the update sees it."""

    model: torch.nn.Module  # what runs forward and backward: the DDP/FSDP2 wrapper of `core`, or it
    core: torch.nn.Module  # the model itself (its state is saved; LoRA: adapters off = the reference)
    optimizer: torch.optim.Optimizer
    reference: torch.nn.Module | None = None  # the frozen copy for the KL term (β > 0, no LoRA)


@dataclass
class Update:
    """What the update did: the loss summed over ranks, the clipped gradient's norm, token-weighted
    statistics of the last gradient step (clip_frac, entropy, kl), and whether it was skipped."""

    lr: float = 0.0  # the learning rate it stepped at
    seconds: float = 0.0  # its wall time, the model's mode switches included (set by the trainer)
    loss: float = 0.0
    grad_norm: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)
    skipped: bool = False  # a non-finite loss or gradient: no optimiser step
