"""What a GRPO run writes and reports: its folder's logs, and each step's metrics.

The folder (rank 0 only) is a `RunFolder`: ``run.json`` (the command and its settings),
``metrics.jsonl`` (one row a step: metrics first, then the state, so a resumed run finds its row;
the same rows go to the folder's trackers, `trackers`),
``samples.jsonl`` (two completions a step), ``state/`` (resumable states) and, from the CLI, ``model/``.

Metric names follow TRL's where they exist: ``reward/*`` (over every row drawn, and over the
groups trained on), ``frac_reward_zero_std``, ``completions/*``, ``sampling/*``, ``verify/*``
(answers the verifier could not judge), ``eval/*`` (held-out greedy accuracy), ``time/*``;
``budget/*`` in budget-aware RL (the rows cut at their budget: their share, format rate, accuracy).
"""

from __future__ import annotations

from collections import Counter

import torch

from ..jsonl import logged_step
from ..outdir import RunFolder
from ..rewards import Scores
from ..tasks.base import VERIFY_EVENTS
from ..template import parse_completion
from ..train.loop import discard_training_state
from ..runtime import all_gather_list, all_reduce_sum
from .types import Collected, Group, Update

SAMPLES_PER_STEP = 2


class RunLog:
    """Where a run's rows go: the folder's logs and trackers (when it has one: `RunFolder.log`),
    `log` and `progress`. As a context manager it closes the folder's trackers at the end."""

    def __init__(self, folder: RunFolder | None, log=None, progress=None):
        self.folder, self.log, self.progress = folder, log, progress

    def start(self, config: dict, first: int, resume: bool) -> dict:
        """Mark the folder with the settings; the logs keep only this run (a fresh start empties
        them and drops an earlier run's states, a resumed one drops what came after its state).
        Returns the metrics logged at the step resumed from ({} for a fresh run)."""
        if self.folder is None:
            return {}
        self.folder.start(config)
        self.folder.restart_logs(first or None)
        if not resume:
            discard_training_state(self.folder.state)
            return {}
        metrics = logged_step(self.folder.metrics, first) if first else {}
        if self.progress and metrics:
            self.progress(metrics)
        return metrics

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        if self.folder:
            self.folder.close()

    def emit(self, row: dict) -> None:
        if self.folder:
            self.folder.log(row)
        for sink in (self.log, self.progress):
            if sink:
                sink(row)

    def samples(self, step: int, group: Group, G: int) -> None:
        if self.folder:
            texts = group.rollout.texts[group.index * G:group.index * G + min(G, SAMPLES_PER_STEP)]
            self.folder.append(self.folder.samples, [{"step": step, "completion": text,
                                                      "format_ok": parse_completion(text).format_ok} for text in texts])


def step_metrics(step: int, lr: float, collected: Collected, drawn: Scores, kept: list[float],
                 trained: list[Group], result: Update, verify_before: Counter, task, seconds: dict) -> dict:
    """One step's row (a collective call under torchrun: every rank gathers the same things)."""
    G = len(trained[0].rewards)
    groups = collected.groups  # every group kept, trained on or skipped as flat
    lengths = all_gather_list(torch.cat([g.rollout.lengths[g.rows(G)] for g in groups]).tolist())
    think = all_gather_list([t for g in groups for t in g.rollout.think_tokens[g.rows(G)]])
    flat = collected.flat_everywhere
    reward_all = torch.tensor(kept)
    row = {
        "step": step, "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
        "reward/mean": float(reward_all.mean()), "reward/std": float(reward_all.std()),  # the groups trained on
        **drawn.log(),  # over every row drawn (before dynamic sampling)
        "frac_reward_zero_std": sum(flat) / max(len(flat), 1),
        "sampling/groups_drawn": len(flat), "sampling/groups_kept": len(kept) // G,
        "sampling/groups_trained": int(all_reduce_sum(len(trained))),
        # answers scored wrong because the verifier could not judge them (never in silence)
        **{f"verify/{k}": int(all_reduce_sum(task.counts[k] - verify_before[k])) for k in VERIFY_EVENTS},
        "completions/mean_length": sum(lengths) / len(lengths),
        "completions/mean_think_tokens": sum(think) / len(think),
        **result.stats,
    }
    cut = all_gather_list(collected.cut)  # in the order of `drawn`'s rows
    if any(cut):  # budget-aware RL: how the rows cut at their budget answered after the forced close
        row.update({"budget/cut_share": sum(cut) / len(cut),
                    "budget/format_rate": sum(f for f, c in zip(drawn.format_ok, cut) if c) / sum(cut),
                    "budget/accuracy": sum(a for a, c in zip(drawn.correct, cut) if c) / sum(cut)})
    if result.skipped:
        row["skipped"] = "non-finite loss or gradient"
    return {**row, **seconds}
