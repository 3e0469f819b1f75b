"""What a GRPO run writes and reports: its folder's logs, and each step's metrics.

The folder (rank 0 only): ``run.json`` (the command), ``grpo_config.json`` (the settings),
``metrics.jsonl`` (one row a step: metrics first, then the state, so a resumed run finds its row),
``samples.jsonl`` (two completions a step), ``state/`` (resumable states) and, from the CLI, ``model/``.

Metric names follow TRL's where they exist: ``reward/*`` (over every row drawn, and over the
groups trained on), ``frac_reward_zero_std``, ``completions/*``, ``sampling/*``, ``verify/*``
(answers the verifier could not judge), ``eval/*`` (held-out greedy accuracy), ``time/*``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch

from ..jsonl import logged_step, trim_log
from ..outdir import mark
from ..rewards import Scores
from ..tasks.base import VERIFY_EVENTS
from ..template import parse_completion
from ..train.loop import discard_training_state
from ..runtime import all_gather_list, all_reduce_sum
from .types import Collected, Group, Update

SAMPLES_PER_STEP = 2


class RunLog:
    """Where a run's rows go: the folder's logs (when it has one), `log` and `progress`."""

    def __init__(self, folder, log=None, progress=None):
        self.folder = Path(folder) if folder else None
        self.log, self.progress = log, progress

    def start(self, cfg, first: int, resume: bool, state_dir) -> dict:
        """Mark the folder and save the settings; the logs keep only this run (a fresh start empties
        them and drops an earlier run's states, a resumed one drops what came after its state).
        Returns the metrics logged at the step resumed from ({} for a fresh run)."""
        if self.folder is None:
            return {}
        mark(self.folder, "rl")
        (self.folder / "grpo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        for name in ("metrics.jsonl", "samples.jsonl"):
            trim_log(self.folder / name, lambda row: first > 0 and row.get("step", 0) <= first)
        if not resume:
            discard_training_state(state_dir)
            return {}
        metrics = logged_step(self.folder / "metrics.jsonl", first) if first else {}
        if self.progress and metrics:
            self.progress(metrics)
        return metrics

    def emit(self, row: dict) -> None:
        if self.folder:
            with open(self.folder / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        for sink in (self.log, self.progress):
            if sink:
                sink(row)

    def samples(self, step: int, group: Group, G: int) -> None:
        if self.folder:
            with open(self.folder / "samples.jsonl", "a") as f:
                for i in range(group.index * G, group.index * G + min(G, SAMPLES_PER_STEP)):
                    text = group.rollout.texts[i]
                    f.write(json.dumps({"step": step, "completion": text,
                                        "format_ok": parse_completion(text).format_ok}) + "\n")


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
    if result.skipped:
        row["skipped"] = "non-finite loss or gradient"
    return {**row, **seconds}
