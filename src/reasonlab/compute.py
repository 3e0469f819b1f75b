"""The compute ledger: tokens a run pushes through its model, and the FLOPs they cost.

Kaplan et al.'s approximation, the one compute-matched comparisons use: a token through a forward
pass costs 2·N FLOPs, a trained token (forward and backward) 6·N, with N the model's parameter
count (attention's sequence-length term is left out). Three counts:

- ``sampled``: tokens the engine processes to sample (each row's prompt in the prefill, each new
  token in decoding);
- ``trained``: tokens of training passes (supervised fine-tuning, pretraining, the RL update);
- ``scored``: forward-only passes outside sampling (GRPO's old or reference log-probs).

Evaluations are measurements, not training: `evaluate.evaluate_problems` runs under `not_counted`.
Counting is process-wide: every ledger open (`track`) when tokens pass counts them, so a stage's
ledger holds what the trainers under it spent.

>>> with track() as ledger:
...     count("sampled", 10); count("trained", 5)
>>> ledger.flops(1000)
50000.0
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

KINDS = ("sampled", "trained", "scored")
FLOPS_PER_TOKEN = {"sampled": 2, "trained": 6, "scored": 2}  # times N


@dataclass
class Ledger:
    sampled: int = 0
    trained: int = 0
    scored: int = 0

    def add(self, kind: str, tokens: int) -> None:
        setattr(self, kind, getattr(self, kind) + int(tokens))

    def flops(self, n_params: int) -> float:
        return float(sum(FLOPS_PER_TOKEN[k] * getattr(self, k) for k in KINDS) * n_params)

    def record(self, n_params: int) -> dict:
        """The counts and their FLOPs, as results keep them."""
        return {**asdict(self), "n_params": n_params, "flops": self.flops(n_params)}


_open: list[Ledger] = []
_paused = 0


def count(kind: str, tokens: int) -> None:
    """`tokens` of `kind` (`KINDS`) went through the model: every open ledger counts them."""
    if kind not in FLOPS_PER_TOKEN:
        raise ValueError(f"unknown compute kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not _paused:
        for ledger in _open:
            ledger.add(kind, tokens)


@contextmanager
def track(ledger: Ledger | None = None):
    """Count into `ledger` (a new one by default) while the block runs."""
    ledger = ledger if ledger is not None else Ledger()
    _open.append(ledger)
    try:
        yield ledger
    finally:  # this very ledger (another open one may hold equal counts)
        del _open[next(i for i in range(len(_open) - 1, -1, -1) if _open[i] is ledger)]


@contextmanager
def not_counted():
    """Nothing passing through a model in this block counts (evaluations)."""
    global _paused
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1


def n_params(model) -> int:
    """N: the parameters a token passes (LoRA adapters included)."""
    return sum(p.numel() for p in model.parameters())
