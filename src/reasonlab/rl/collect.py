"""Collecting a step's groups: the problem stream, each row's sampling seed, scoring, and dynamic
sampling (DAPO: groups whose rewards are all equal are dropped and refilled from new problems).

Under torchrun every rank draws the same problem stream and takes its slice, and each row's seed is
a function of its place in the *global* batch, so W ranks sample what one process would.
"""

from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import Callable

import torch

from ..engine import SamplingParams, generate
from ..errors import NoFormatError, UserError
from ..rewards import RewardPlan, Scores, length_target_reward, named, reasoning_reward, score
from ..runtime import all_gather_list, any_rank, gathered, world
from ..tasks import Task
from ..tasks.data import output_rewards
from ..template import build_prompt, length_prompt
from .config import GRPOConfig
from .types import Collected, Group

MAX_ATTEMPTS = 4  # dynamic sampling: sampling calls a step makes at most
DRAW_BUDGET = 6  # dynamic sampling: problems a step may draw in all, as a multiple of P


class ProblemStream:
    """An endless, seeded stream of training problems."""

    def __init__(self, task: Task, seed: int, pool: int = 20000):
        if "at_most" in inspect.signature(task.problems).parameters:  # all of a space smaller than `pool`
            self.problems = task.problems(pool, "train", seed, at_most=True)
        else:  # a task written before `at_most`: halve the pool until it fits
            while True:
                try:
                    self.problems = task.problems(pool, "train", seed)
                    break
                except ValueError:
                    if pool == 1:
                        raise
                    pool //= 2
        if not self.problems:
            raise UserError(f"task {task.name!r} has no train problems")
        self.rng, self.i = random.Random(seed), 0
        self.rng.shuffle(self.problems)

    def state(self) -> dict:
        return {"problems": self.problems, "rng": self.rng.getstate(), "i": self.i}

    def load_state(self, state: dict) -> None:
        self.problems, self.i = state["problems"], state["i"]
        self.rng.setstate(state["rng"])

    def take(self, n: int) -> list:
        out = []
        for _ in range(n):
            if self.i == len(self.problems):
                self.rng.shuffle(self.problems)
                self.i = 0
            out.append(self.problems[self.i])
            self.i += 1
        return out


def row_seed(seed: int, step: int, attempt: int, row: int) -> int:
    """The sampling seed of one completion: a function of its place in the *global* batch, so a
    rollout sharded over ranks draws what one process would (see `SamplingParams.row_seeds`)."""
    return (((seed * 1_000_003 + step) * 8 + attempt) * 2**20 + row) % 2**62


def refill_size(missing: int, keep_rate: float, oversample: float, budget: int) -> int:
    """Dynamic sampling: problems to draw for `missing` groups when a share `keep_rate` of groups
    has a reward spread, with `oversample` margin, within the step's remaining `budget`."""
    return max(0, min(math.ceil(missing * oversample / keep_rate), budget))


def group_plan(cfg: GRPOConfig, seed: int) -> tuple[int, int | None]:
    """One group's length target N (0: length control off) and thinking budget (None: not cut),
    drawn from a seed of the group's place in the global batch, so W ranks draw what one process would."""
    rng = random.Random(seed)
    target = (
        rng.randint(cfg.length_target, cfg.length_target_max) if cfg.length_target_max else cfg.length_target
    )
    budget = rng.randint(cfg.budget_min, cfg.budget_max) if rng.random() < cfg.budget_share else None
    return target, budget


def step_rewards(cfg: GRPOConfig, plan: RewardPlan | None = None) -> list:
    """The weighted rewards a completion earns: the method's format + correctness points (unless
    `plan` turns it off), the rewards you wrote (`plan.funcs`: `--reward`, `reward_funcs=`), and the
    length-target term in length-conditioned mode."""
    rewards = []
    if plan is None or plan.default:
        reasoning = named(
            reasoning_reward, "reasoning", format_points=cfg.format_points, correct_points=cfg.correct_points
        )
        rewards.append((reasoning, 1.0))
    if plan is not None:
        rewards += plan.funcs
    if cfg.length_target:
        rewards.append((named(length_target_reward, "length_target", alpha=cfg.length_alpha), 1.0))
    return rewards


class FormatWatch:
    """Stops a run whose model never writes the template. Until one completion is well-formed every
    reward is 0 (the format gates the points), every group is flat, and the run trains on nothing:
    after `patience` steps from the start of the run with no well-formed completion drawn, `check`
    says so in one line. Once one is, it watches no more (a later collapse is the metrics' to show).
    Its counts go in the training state, so a resumed run counts on. `patience` 0: never stops."""

    def __init__(self, patience: int):
        self.patience, self.steps, self.completions, self.seen = patience, 0, 0, False

    def observe(self, format_ok: list[bool]) -> None:
        """One step's completions, every rank's (the same on each, so every rank stops together)."""
        if not self.seen:
            self.seen = any(format_ok)
            self.steps, self.completions = self.steps + (not self.seen), self.completions + len(format_ok)

    def check(self) -> None:
        if self.patience and not self.seen and self.steps >= self.patience:
            raise NoFormatError(
                f"no sample earned a format point in {self.steps} steps (0 of {self.completions} "
                "completions well-formed): warm up with Method 1 (reasonlab rationales) or SFT first, "
                "or check --style (--no-format-patience 0: never stop)"
            )

    def state(self) -> dict:
        return {"steps": self.steps, "completions": self.completions, "seen": self.seen}

    def load(self, state: dict | None) -> None:
        """Restore `state()`; a state saved before the watch existed leaves it fresh."""
        if state:
            self.steps, self.completions, self.seen = state["steps"], state["completions"], state["seen"]


class Collector:
    """Samples and scores a step's groups: P/W problems per rank, G completions each.

    `sample(model, prompts, params, step)` runs the model (the built-in engine by default; the trainer
    passes vLLM's when it rolls out there). `keep_rate` (the last step's share of groups with a reward
    spread) sizes dynamic sampling's refills and is kept in the training state, as is `format_watch`
    (`drawn` feeds it). `rewards` (a `RewardPlan`) adds your rewards (`step_rewards`).
    """

    def __init__(
        self,
        task: Task,
        tokenizer,
        cfg: GRPOConfig,
        stream: ProblemStream,
        sample: Callable | None = None,
        rewards: RewardPlan | None = None,
    ):
        self.task, self.tokenizer, self.cfg, self.stream = task, tokenizer, cfg, stream
        self.sample = sample or (
            lambda model, prompts, params, step: generate(model, tokenizer, prompts, params)
        )
        self.keep_rate = 1.0
        self.plan = output_rewards(task, rewards)  # your rewards, if any (alone, for output=free)
        self.rewards = step_rewards(cfg, self.plan)
        # with rewards of your own a model that never writes the template still has a signal
        self.format_watch = FormatWatch(
            0 if self.plan is not None and self.plan.funcs else cfg.no_format_patience
        )

    def prompt(self, problem, target: int = 0) -> str:
        """The problem's prompt; with a length target N, it asks to "think for N tokens"."""
        question = length_prompt(problem.question, target) if target else problem.question
        return build_prompt(question, self.cfg.style, trigger=self.cfg.trigger, tokenizer=self.tokenizer.hf)

    def collect(self, model, step: int) -> Collected:
        """This rank's groups for `step` (every rank calls it: the refill decisions are collective)."""
        cfg, (rank, size) = self.cfg, world()
        P_local = cfg.prompts_per_step // size
        out, attempt, budget, t0 = Collected([]), 0, DRAW_BUDGET * P_local, time.monotonic()
        while True:  # with dynamic sampling, refill dropped groups (every rank draws every attempt)
            attempt += 1
            need, draw = P_local - len(out.groups), P_local
            if cfg.dynamic_sampling:  # sized for the rank that needs most, the same on every rank
                draw = refill_size(max(all_gather_list([need])), self.keep_rate, cfg.oversample, budget)
                budget -= draw
            problems = self.stream.take(draw * size)
            mine = problems[rank * draw : (rank + 1) * draw] if need > 0 else []
            if mine:
                self._sample_groups(model, mine, step, attempt, rank * draw, P_local, out)
            if (
                not cfg.dynamic_sampling
                or attempt >= MAX_ATTEMPTS
                or budget <= 0
                or not any_rank(len(out.groups) < P_local)
            ):
                break
        out.seconds = time.monotonic() - t0
        out.flat_everywhere = flat = all_gather_list(out.flat)
        self.keep_rate = max(1 / 8, 1 - sum(flat) / max(len(flat), 1))
        return out

    def _sample_groups(
        self, model, problems, step: int, attempt: int, first_row: int, P_local: int, out: Collected
    ) -> None:
        cfg, G = self.cfg, self.cfg.group_size
        seeds = [
            row_seed(cfg.seed, step, attempt, (first_row + j) * G + g)
            for j in range(len(problems))
            for g in range(G)
        ]
        plans = [group_plan(cfg, seeds[j * G]) for j in range(len(problems))]
        targets = [target for target, _ in plans for _ in range(G)]
        budgets = [budget for _, budget in plans for _ in range(G)]
        prompts = [self.prompt(p, target) for p, (target, _) in zip(problems, plans) for _ in range(G)]
        params = SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            row_seeds=seeds,
            think_budget=budgets if cfg.budget_share else None,
            stop_at_answer=cfg.stop_at_answer,
        )
        with gathered(model) as full:
            rollout = self.sample(full, prompts, params, step)
        columns = {}
        if self.plan is not None and self.plan.funcs:  # what your rewards read; nothing on the default run
            columns["problems"] = [p for p in problems for _ in range(G)]
            columns["completion_ids"] = [
                rollout.tokens[i, : int(n)].tolist() for i, n in enumerate(rollout.lengths)
            ]
        scores = score(
            rollout.texts,
            [p.answer for p in problems for _ in range(G)],
            self.task,
            prompts,
            self.rewards,
            gate=self.plan is not None and self.plan.format_gate,
            think_lengths=rollout.think_tokens,
            target_lengths=targets,
            **columns,
        )
        out.scores.append(scores)
        # rows whose thinking the budget cut: what budget-aware RL trains to answer after
        out.cut += [b is not None and n >= b for b, n in zip(budgets, rollout.think_tokens)]
        rewards = torch.tensor(scores.total).view(-1, G)
        for g in range(len(problems)):
            out.flat.append(bool(rewards[g].std() == 0))
            if not (cfg.dynamic_sampling and out.flat[-1]) and len(out.groups) < P_local:
                out.groups.append(Group(rollout, g, rewards[g]))

    def drawn(self, collected: Collected) -> Scores:
        """The scores of every row drawn this step, on every rank (a collective call, once a step:
        it also tells `format_watch` whether any was well-formed)."""
        parts = [fn.__name__ for fn, _ in self.rewards]
        local = (
            Scores.merged(collected.scores)
            if collected.scores
            else Scores([], [], {n: [] for n in parts}, [])
        )
        drawn = Scores(
            all_gather_list(local.format_ok),
            all_gather_list(local.correct),
            {n: all_gather_list(local.parts[n]) for n in parts},
            all_gather_list(local.total),
        )
        self.format_watch.observe(drawn.format_ok)
        return drawn
