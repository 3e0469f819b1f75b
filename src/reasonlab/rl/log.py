"""What a GRPO step reports: its metrics row (`step_metrics`), its sample completions
(`sample_rows`) and TRL's names for our metrics (`trl_names`). `run.Run` writes them (rank 0 only)
to the run's `RunFolder`: ``run.json`` (the command and its settings), ``metrics.jsonl`` (one row
a step: metrics first, then the state, so a resumed run finds its row; the same rows go to the
folder's trackers, `trackers`), ``samples.jsonl`` (`log_completions` completions a step: prompt,
completion, reward parts, verdict), ``state/`` (resumable states) and, from the CLI, ``model/``.

Metrics: ``reward/*`` (over every row drawn, and over the groups trained on), ``frac_reward_zero_std``,
``completions/*``, ``sampling/*``, ``verify/*`` (answers the verifier could not judge), ``eval/*``
(held-out greedy accuracy), ``time/*``; ``budget/*`` in budget-aware RL (the rows cut at their
budget: their share, format rate, accuracy). Where TRL's GRPOTrainer logs the same quantity under
another name, each row carries TRL's name too (`trl_names`; the table is in docs/methods.md,
"Logged metrics").
"""

from __future__ import annotations

import torch

from ..rewards import Scores
from ..run.lifecycle import NON_FINITE
from ..runtime import all_gather_list, all_reduce_sum
from ..tasks.base import VERIFY_EVENTS
from .config import GRPOConfig
from .types import Collected, Group, Sampled, StepBatch, Update

# Our name -> TRL GRPOTrainer's, for the same quantity (over the same rows: `reward` is TRL's mean over
# every completion generated, so our `reward/sampled_mean`, not `reward/mean` over the groups trained on).
TRL_NAMES = {
    "lr": "learning_rate",
    "reward/sampled_mean": "reward",
    "reward/sampled_std": "reward_std",
    "clip_frac": "clip_ratio/region_mean",
}
SCORE_COLUMNS = ("sampled_mean", "sampled_std", "format_rate", "format_std", "accuracy", "accuracy_std")


def trl_names(row: dict) -> dict:
    """`row`'s values under TRL's names where ours differ: `TRL_NAMES`, and each reward part's
    ``reward/<part>`` and ``reward/<part>_std`` (`Scores.log`) as ``rewards/<part>/mean`` and ``/std``."""
    out = {trl: row[ours] for ours, trl in TRL_NAMES.items() if ours in row}
    parts = [
        k[len("reward/") : -len("_std")]
        for k in row
        if k.startswith("reward/") and k.endswith("_std") and k[len("reward/") :] not in SCORE_COLUMNS
    ]
    for part in (p for p in parts if f"reward/{p}" in row):
        out.update(
            {f"rewards/{part}/mean": row[f"reward/{part}"], f"rewards/{part}/std": row[f"reward/{part}_std"]}
        )
    return out


FLAT = "every group had equal rewards"  # a step with nothing to train on says so


def sample_rows(step: int, collected: Collected, tokenizer, cfg: GRPOConfig) -> list[dict]:
    """The first `log_completions` completions of the step's groups (whole groups first, this
    rank's: rank 0's under torchrun), for samples.jsonl: prompt, completion, reward parts, verdict."""
    n, G = cfg.log_completions, cfg.group_size
    if not n:
        return []
    rows = []
    for k, (group, scores) in enumerate(group_scores(collected, G)):
        if len(rows) == n:
            break
        for i in range(group.index * G, (group.index + 1) * G)[: n - len(rows)]:
            rows.append(
                {
                    "step": step,
                    "group": k,
                    "prompt": tokenizer.decode(group.rollout.prompt_ids[i]),
                    "completion": group.rollout.texts[i],
                    **verdict(scores, i, cfg),
                }
            )
    return rows


def verdict(scores: Scores, i: int, cfg: GRPOConfig) -> dict:
    """Row `i`'s reward in parts (format and correct points, each other part by name, the total),
    its verdict (correct, wrong or broken format) and format_ok."""
    ok, correct = scores.format_ok[i], scores.correct[i]
    parts = {
        "format": cfg.format_points if ok else 0.0,  # the "reasoning" part, split
        "correct": cfg.correct_points if correct else 0.0,
        **{name: values[i] for name, values in scores.parts.items() if name != "reasoning"},
        "total": scores.total[i],
    }
    return {
        "reward": parts,
        "verdict": ("correct" if correct else "wrong") if ok else "broken format",
        "format_ok": ok,
    }


def group_scores(collected: Collected, G: int) -> list[tuple[Group, Scores]]:
    """Each group kept, with the scores of the sampling call it came from. `collected.scores` has one
    entry a call, in call order, and the groups come in that order too, but a call may keep no group
    (dynamic sampling dropped them all, every one flat): a call is the next one whose rows number
    the group's rollout's and whose rewards at the group's rows are the group's (a kept group is not
    flat under dynamic sampling, so a dropped call never matches it)."""
    out, calls = [], iter(collected.scores)
    scores, rollout = None, None
    for group in collected.groups:
        if group.rollout is not rollout:
            rollout = group.rollout
            scores = next(
                (
                    s
                    for s in calls
                    if len(s.total) == len(rollout.texts)  # float32, as `rewards` is
                    and torch.equal(torch.tensor(s.total[group.rows(G)]), group.rewards.cpu())
                ),
                None,
            )
            if scores is None:
                raise RuntimeError(
                    f"samples.jsonl: no sampling call's scores match group {group.index}'s rewards"
                )
        out.append((group, scores))
    return out


def step_metrics(
    step: int,
    sampled: Sampled,
    batch: StepBatch | None,
    result: Update | None,
    task,
    seconds: float,
    flops: float,
) -> dict:
    """One step's row (a collective call under torchrun: every rank gathers the same things); with
    no `batch` (every group flat on some rank: nothing trained), the rewards drawn and that it was
    skipped."""
    if batch is None:
        return {"step": step, "skipped": FLAT, **sampled.drawn.log(), "compute/flops": flops}
    collected, drawn, G = sampled.collected, sampled.drawn, len(batch.trained[0].rewards)
    flat = collected.flat_everywhere
    reward_all = torch.tensor(batch.kept)
    row = {
        "step": step,
        "loss": result.loss,
        "lr": result.lr,
        "grad_norm": result.grad_norm,
        "reward/mean": float(reward_all.mean()),
        "reward/std": float(reward_all.std()),  # the groups trained on
        **drawn.log(),  # over every row drawn (before dynamic sampling)
        "frac_reward_zero_std": sum(flat) / max(len(flat), 1),
        "sampling/groups_drawn": len(flat),
        "sampling/groups_kept": len(batch.kept) // G,
        "sampling/groups_trained": int(all_reduce_sum(len(batch.trained))),
        # answers scored wrong because the verifier could not judge them (never in silence)
        **{
            f"verify/{k}": int(all_reduce_sum(task.counts[k] - sampled.verify_before[k]))
            for k in VERIFY_EVENTS
        },
        **completion_stats(collected.groups, G),  # every group kept, trained on or skipped as flat
        **result.stats,
        **budget_stats(collected, drawn),
    }
    if result.skipped:
        row["skipped"] = NON_FINITE
    timing = {"time/generate_s": collected.seconds, "time/train_s": result.seconds, "seconds": seconds}
    return {**row, **timing, "compute/flops": flops}


def budget_stats(collected: Collected, drawn: Scores) -> dict:
    """Budget-aware RL: how the rows cut at their budget answered after the forced close (a
    collective call; nothing when no row was cut)."""
    cut = all_gather_list(collected.cut)  # in the order of `drawn`'s rows
    if not any(cut):
        return {}
    return {
        "budget/cut_share": sum(cut) / len(cut),
        "budget/format_rate": sum(f for f, c in zip(drawn.format_ok, cut) if c) / sum(cut),
        "budget/accuracy": sum(a for a, c in zip(drawn.correct, cut) if c) / sum(cut),
    }


def completion_stats(groups: list[Group], G: int) -> dict:
    """The lengths of the groups' completions (every rank's): mean, min and max, the mean of those
    that ended on their own, the share cut at max_new_tokens (`clipped_ratio`, TRL's: finish
    reason "length") and the mean thinking tokens."""
    lengths = all_gather_list(torch.cat([g.rollout.lengths[g.rows(G)] for g in groups]).tolist())
    clipped = all_gather_list([r == "length" for g in groups for r in g.rollout.finish_reason[g.rows(G)]])
    think = all_gather_list([t for g in groups for t in g.rollout.think_tokens[g.rows(G)]])
    ended = [n for n, cut in zip(lengths, clipped) if not cut] or [0]  # none ended: 0, as TRL logs it
    return {
        "completions/mean_length": sum(lengths) / len(lengths),
        "completions/min_length": min(lengths),
        "completions/max_length": max(lengths),
        "completions/mean_terminated_length": sum(ended) / len(ended),
        "completions/clipped_ratio": sum(clipped) / len(clipped),
        "completions/mean_think_tokens": sum(think) / len(think),
    }
