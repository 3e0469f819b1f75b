"""Method 2: GRPO-family reinforcement learning from the model's own samples.

Each step draws P problems, samples G completions for each (one *group*) with the engine, scores
them with the reward (default: the method's format 2 + correct 1, nothing when the format breaks),
and takes gradient steps on

    J(θ) = agg_{i,t} [ min(ρ_it A_i, clip(ρ_it, 1-ε_low, 1+ε_high) A_i) ] - β · agg_{i,t} KL_k3(π_θ ‖ π_ref)

with ρ_it = π_θ(o_it | q, o_i<t) / π_old(o_it | q, o_i<t) and A_i = (r_i - mean(r_group)) / scale:

- **advantage**: r minus the group mean, divided by the group's std (`scale="group"`, GRPO), the
  batch std (`"batch"`), or nothing (`"none"`, Dr. GRPO); the std gets +1e-4 against zero division.
- **aggregation** `agg`: `"token_mean"` averages over all completion tokens of the batch (DAPO),
  `"seq_mean"` averages each completion's tokens then the completions (GRPO), `"constant"` sums
  tokens and divides by P·G·max_new_tokens (Dr. GRPO, no length bias).
- **clipping** only matters with μ > 1 updates per batch (`updates`); with μ = 1 the ratio is 1 and
  the gradient is the plain policy gradient A·∇log π.
- **KL** to a frozen reference (k3 estimator, Schulman 2020) only when β > 0; with β = 0 no
  reference model is kept in memory.

Departures from GRPO as published: token log-probs use the sampling temperature (as TRL does);
forced tokens (thinking-budget cap, "Wait," extensions) never enter the loss; truncated completions
can be masked out (`mask_truncated`); groups whose rewards are all equal carry no signal and can be
dropped and refilled from new problems (`dynamic_sampling`, DAPO); an optional length-conditioned
mode asks for "think for N tokens" and adds the length-target reward. The learning rate warms up
linearly, then stays constant (the default) or decays by cosine or linearly over `steps`
(`schedule`, `min_lr_ratio`: the supervised trainers' `lr_at`).

Cost, not math: with the built-in model the training pass computes each group's prompt once and
packs the completions (`model.GroupedBatch`, `shared_prompts`); the loss and gradient are those
of the padded rows (tested). With β = 0, a group whose rewards are all equal has advantage 0 on
every token, so its surrogate is 0 whatever the ratio and it adds nothing to the gradient:
`skip_flat_groups` (on by default) leaves such groups out of the forward and backward while their
tokens still count in the normaliser, so the update is the same up to rounding (tested, one
process and two) and a step where every group is flat still takes its optimiser step (AdamW's
momentum and weight decay move the weights; each rank keeps one group). Logged entropy and clip
fraction then cover the groups trained on (`sampling/groups_trained`). Under torchrun, ranks
holding fewer micro-batches than others repeat their last one with its loss weighted 0, so
every rank makes the same collective calls.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..engine import Rollout, SamplingParams, generate
from ..config import FRACTION, SEED, check_options
from ..errors import UserError
from ..evaluate import evaluate_problems
from ..jsonl import logged_step, trim_log
from ..outdir import mark
from ..rewards import check_batch, length_target_reward, reasoning_points
from ..tasks import Task
from ..tasks.base import VERIFY_EVENTS, problems_for
from ..template import PROMPT_STYLES, build_prompt, parse_completion
from ..model.gpt import GPT
from .grpo_math import aggregate, group_advantages, group_batch, policy_loss, rollout_batch, token_logprobs
from .loop import (SCHEDULES, discard_training_state, lr_at, make_optimizer, resumable_state, save_training_state,
                   stop_if_diverged, task_setting)
from .parallel import (ScaleOptions, all_gather_list, all_reduce_sum, any_rank, broadcast_flag, clip_grad_norm,
                       gathered, gradient_sync, grads_finite, prepare, rank_device, refuse_fsdp_states, unwrap,
                       world)

# ---- the trainer ---------------------------------------------------------------------------------


@dataclass
class GRPOConfig(ScaleOptions):
    steps: int = field(default=200, metadata={"help": "RL steps at most", "min": 1})
    prompts_per_step: int = field(default=16, metadata={"help": "P: problems per step", "min": 1})
    group_size: int = field(default=8, metadata={"help": "G: completions per problem (>= 2)", "min": 2})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate", "above": 0})
    warmup_steps: int = field(default=5, metadata={"help": "linear warm-up steps", "min": 0})
    schedule: str = field(default="constant", metadata={
        "help": "after warm-up: constant, or cosine / linear decay over `steps` (not over max_seconds)",
        "choices": SCHEDULES})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine / linear: final lr as a fraction of the peak",
                                                        **FRACTION})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature", "above": 0})
    max_new_tokens: int = field(default=160, metadata={"help": "tokens per completion at most", "min": 1})
    updates: int = field(default=1, metadata={"help": "μ: gradient steps per batch (ratio clipping applies when > 1)", "min": 1})
    eps_low: float = field(default=0.2, metadata={"help": "clip ratio below at 1 - eps_low", **FRACTION})
    eps_high: float = field(default=0.28, metadata={"help": "clip ratio above at 1 + eps_high (DAPO clip-higher)", "min": 0})
    beta: float = field(default=0.0, metadata={"help": "KL weight to a frozen reference (0 = no reference kept)", "min": 0})
    scale: str = field(default="group", metadata={"help": "advantage scale: group, batch or none",
                                                     "choices": ("group", "batch", "none")})
    loss_agg: str = field(default="token_mean", metadata={"help": "token_mean, seq_mean or constant",
                                                          "choices": ("token_mean", "seq_mean", "constant")})
    mask_truncated: bool = field(default=False, metadata={"help": "leave truncated completions out of the loss"})
    dynamic_sampling: bool = field(default=False, metadata={"help": "drop groups with equal rewards, refill"})
    skip_flat_groups: bool = field(default=True, metadata={
        "help": "beta = 0: groups with equal rewards (advantage 0, no gradient) skip the forward and "
                "backward; their tokens still count in the loss's normaliser, so the update is the same"})
    oversample: float = field(default=1.25, metadata={"help": "dynamic sampling: problems drawn per attempt, as a multiple of the groups still missing, divided by the last step's share of groups with a reward spread", "min": 1})
    format_points: float = field(default=2.0, metadata={"help": "reward for the format"})
    correct_points: float = field(default=1.0, metadata={"help": "reward for a correct answer"})
    length_target: int = field(default=0, metadata={"help": "length-conditioned mode: ask for N thinking tokens (0 = off)",
                                                       "min": 0})
    length_alpha: float = field(default=1e-3, metadata={"help": "weight of the length-target reward", "min": 0})
    style: str = field(default="plain", metadata={"help": "prompt style: plain, r1 or chat (instruct models)",
                                                     "choices": PROMPT_STYLES})
    trigger: bool = field(default=True, metadata={"help": "plain prompts: add the trigger phrase"})
    micro_batch_size: int = field(default=0, metadata={
        "help": "rows per forward/backward (gradients accumulate to the same update; 0 = the whole batch)",
        "min": 0})
    shared_prompts: bool = field(default=True, metadata={
        "help": "built-in model: compute each group's prompt once and pack the completions (same loss, fewer FLOPs)"})
    rollout_engine: str = field(default="builtin", metadata={"help": "who samples the groups: builtin, or vllm (GPUs, extra reasonlab[vllm])",
                                                               "choices": ("builtin", "vllm")})
    vllm_gpu_memory: float = field(default=0.3, metadata={"help": "vllm: share of GPU memory it may take",
                                                            "above": 0, "max": 1})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm", "above": 0})
    eval_every: int = field(default=20, metadata={"help": "held-out accuracy every N steps (0 = never)", "min": 0})
    eval_problems: int = field(default=200, metadata={"help": "held-out problems per evaluation", "min": 1})
    save_every: int = field(default=0, metadata={"help": "write a resumable state every N steps (0 = never)", "min": 0})
    max_seconds: float = field(default=0.0, metadata={"help": "stop after this much wall time (0 = no limit)",
                                                        "min": 0})
    seed: int = field(default=0, metadata={"help": "problem order and sampling seed", **SEED})

    def __post_init__(self):
        check_options(self)


def length_prompt(question: str, target: int) -> str:
    return f"{question} (think for {target} tokens)"


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


def score_rollout(rollout: Rollout, problems, prompts, task: Task, cfg: GRPOConfig) -> tuple[torch.Tensor, list, list, list]:
    """Rewards (N,), and per row: format ok, correct, length-target term (0 when off)."""
    format_ok, correct = zip(*check_batch(rollout.texts, [p.answer for p in problems], task, prompts))
    rewards = [reasoning_points(f, c, cfg.format_points, cfg.correct_points) for f, c in zip(format_ok, correct)]
    extra = [0.0] * len(rewards)
    if cfg.length_target:
        extra = length_target_reward(rollout.texts, think_lengths=rollout.think_tokens,
                                     target_lengths=[cfg.length_target] * len(rewards), alpha=cfg.length_alpha)
        rewards = [r + e for r, e in zip(rewards, extra)]
    return torch.tensor(rewards), list(format_ok), list(correct), list(extra)


def refill_size(missing: int, keep_rate: float, oversample: float, budget: int) -> int:
    """Dynamic sampling: problems to draw for `missing` groups when a share `keep_rate` of groups
    has a reward spread, with `oversample` margin, within the step's remaining `budget`."""
    return max(0, min(math.ceil(missing * oversample / keep_rate), budget))


def row_seed(seed: int, step: int, attempt: int, row: int) -> int:
    """The sampling seed of one completion: a function of its place in the *global* batch, so a
    rollout sharded over ranks draws what one process would (see `SamplingParams.row_seeds`)."""
    return (((seed * 1_000_003 + step) * 8 + attempt) * 2**20 + row) % 2**62


def reference_logprobs(core, ref_model, input_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Token log-probs under the frozen reference: a kept copy, or the LoRA model with adapters off."""
    with torch.no_grad():
        if ref_model is not None:
            return token_logprobs(ref_model, input_ids, temperature)[0]
        with core.hf.disable_adapter():
            return token_logprobs(core, input_ids, temperature)[0]


def grpo_step_loss(model, ref_logp, input_ids, mask, advantages, old_logp, cfg: GRPOConfig, total=None):
    logp, entropy = token_logprobs(model, input_ids, cfg.temperature)
    old = logp.detach() if old_logp is None else old_logp
    loss, stats = policy_loss(logp, old, advantages, mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                              agg=cfg.loss_agg, max_tokens=cfg.max_new_tokens, ref_logp=ref_logp, beta=cfg.beta,
                              total=total)
    stats["entropy"] = float(aggregate(entropy.detach(), mask, "token_mean"))
    return loss, stats


def micro_batches(n: int, size: int, group: int = 1) -> list[slice]:
    """Row slices of at most `size` (all rows in one when size is 0), in whole groups of `group`
    rows (at least one group a slice)."""
    size = max(group, size // group * group) if size else n
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def sharded_evaluate(model, tokenizer, task: Task, problems, cfg: GRPOConfig) -> dict:
    """Greedy held-out accuracy; each rank takes every W-th problem, the counts are summed."""
    rank, size = world()
    mine = problems[rank::size]
    result = evaluate_problems(model, tokenizer, task, mine, trigger=cfg.trigger, style=cfg.style,
                               params=SamplingParams(temperature=0.0, max_new_tokens=cfg.max_new_tokens)) \
        if mine else {"accuracy": 0.0, "format_rate": 0.0, "mean_think_tokens": 0.0}
    n = all_reduce_sum(len(mine))
    return {f"eval/{k}": all_reduce_sum(result[k] * len(mine)) / max(n, 1)
            for k in ("accuracy", "format_rate", "mean_think_tokens")}


def train_grpo(model, tokenizer, task: Task, cfg: GRPOConfig, out_dir=None, log=None, progress=None,
               resume: bool = False):
    """Run GRPO on `model` (in place); returns the last metrics. Logs one JSON line per step to
    out_dir/metrics.jsonl and a few sample completions per step to out_dir/samples.jsonl. With
    `cfg.save_every`, a resumable state (weights, optimiser, reference, problem stream) goes to
    out_dir/state; `resume=True` continues from it: sampling seeds derive from the step, so the run
    goes on as if never stopped.

    Under torchrun each rank samples, scores and trains on its P/W problems of the step (every rank
    draws the same problem stream and takes its slice); losses are normalised by global counts and
    the gradients averaged by DDP/FSDP2, so W ranks compute the single-process update. Save the
    result with `parallel.plain_model(model)` (LoRA merged, FSDP2 shards gathered)."""
    rank, size = world()
    P, G = cfg.prompts_per_step, cfg.group_size
    if P % size:
        raise UserError(f"prompts_per_step {P} must divide by the {size} processes")
    refuse_fsdp_states(cfg.save_every, cfg.fsdp)
    P_local = P // size
    # Dynamic sampling draws oversample × n / q problems per attempt to find the n groups still
    # missing, q being the share of groups with a reward spread in the last step: late in training
    # most groups are all right, and one large draw costs less than several small ones. A step
    # draws 6 P problems at most (4 attempts at most): past that it trains on the groups it has.
    keep_rate = 1.0
    torch.manual_seed(cfg.seed)
    stream = ProblemStream(task, cfg.seed)
    held_out = problems_for(task, cfg.eval_problems, "test", cfg.seed + 1, "--eval-problems") if cfg.eval_every else []
    ref_model = None
    if cfg.beta > 0 and cfg.lora_rank == 0:  # with LoRA the reference is the model with its adapters off
        ref_model = copy.deepcopy(model).eval()  # on the model's device (torchrun: moved to the rank's below)
        if size > 1:
            ref_model = ref_model.to(rank_device())
    vllm_engine = None
    if cfg.rollout_engine == "vllm":  # started from the plain model, before adapters or sharding
        from ..rollout_vllm import VLLMEngine, VLLMOptions

        vllm_engine = VLLMEngine.from_model(model, tokenizer, VLLMOptions(gpu_memory_utilization=cfg.vllm_gpu_memory))
    train_model = prepare(model, cfg)
    core = unwrap(train_model)
    shared = cfg.shared_prompts and isinstance(core, GPT)  # each group's prompt computed once
    device = next(core.parameters()).device
    optimizer = make_optimizer(train_model, cfg.lr)
    out = Path(out_dir) if out_dir and rank == 0 else None
    start, metrics, first, bad_in_a_row = time.monotonic(), {}, 0, 0
    state_dir = Path(out_dir) / "state" if out_dir else None
    config = {**asdict(cfg), **task_setting(task)}  # what a resume must not change (`check_resume`)
    if resume and state_dir and (state := resumable_state(state_dir, config)) is not None:
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        stream.load_state(state["stream"])
        if ref_model is not None:
            ref_model.load_state_dict(state["reference"])
        first = state["step"]
        keep_rate = state.get("keep_rate", 1.0)
        start -= state.get("seconds", 0.0)  # elapsed time (and so --max-seconds) counts on
    if out:
        mark(out, "rl")
        (out / "grpo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if out:  # the logs hold this run only: a fresh start empties them, a resumed one drops what
        for name in ("metrics.jsonl", "samples.jsonl"):  # was logged after its saved state
            trim_log(out / name, lambda row: first > 0 and row.get("step", 0) <= first)
        if not resume:
            discard_training_state(state_dir)
        elif first:  # resumed: start from the saved step's logged metrics (all there is when the run had finished)
            metrics = logged_step(out / "metrics.jsonl", first)
            if progress and metrics:
                progress(metrics)

    def prompt_of(problem):
        question = length_prompt(problem.question, cfg.length_target) if cfg.length_target else problem.question
        return build_prompt(question, cfg.style, trigger=cfg.trigger, tokenizer=tokenizer.hf)

    def evaluate():
        with gathered(train_model) as full:
            return sharded_evaluate(full, tokenizer, task, held_out, cfg)

    def emit(m):
        if out:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(m) + "\n")
        if log and rank == 0:
            log(m)
        if progress and rank == 0:
            progress(m)

    if held_out and first == 0:  # the starting point, on the curve
        metrics = {"step": 0, **evaluate(), "seconds": 0.0}
        emit(metrics)
    for step in range(first, cfg.steps):
        t0 = time.monotonic()
        train_model.eval()
        groups, attempt, rows = [], 0, {"format": [], "correct": [], "extra": [], "zero_std": [], "reward": []}
        verify_before = Counter(task.counts)
        budget = 6 * P_local  # dynamic sampling: problems a step may draw in all (per rank)
        while True:  # with dynamic sampling, refill dropped groups (every rank draws every attempt)
            attempt += 1
            need = P_local - len(groups)
            draw = P_local
            if cfg.dynamic_sampling:  # sized for the rank that needs most, the same on every rank
                draw = refill_size(max(all_gather_list([need])), keep_rate, cfg.oversample, budget)
                budget -= draw
            problems = stream.take(draw * size)
            mine = problems[rank * draw:(rank + 1) * draw] if need > 0 else []
            if mine:
                prompts = [prompt_of(p) for p in mine for _ in range(G)]
                seeds = [row_seed(cfg.seed, step, attempt, (rank * draw + j) * G + g)
                         for j in range(len(mine)) for g in range(G)]
                params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, row_seeds=seeds)
                with gathered(train_model) as gen_model:
                    if vllm_engine is None:
                        rollout = generate(gen_model, tokenizer, prompts, params)
                    else:
                        if vllm_engine.syncs <= step - first:  # once per step: last step's update
                            vllm_engine.sync_weights(gen_model)
                        rollout = vllm_engine.generate(prompts, params)
                rewards, fmt, ok, extra = score_rollout(rollout, [p for p in mine for _ in range(G)], prompts, task, cfg)
                rewards = rewards.view(-1, G)
                flat = (rewards.std(dim=1) == 0).tolist()
                rows["format"] += fmt
                rows["correct"] += ok
                rows["extra"] += extra
                rows["reward"] += rewards.flatten().tolist()
                rows["zero_std"] += flat
                for g in range(len(mine)):
                    if not (cfg.dynamic_sampling and flat[g]) and len(groups) < P_local:
                        groups.append((rollout, g, rewards[g]))
            if not cfg.dynamic_sampling or attempt >= 4 or budget <= 0 or not any_rank(len(groups) < P_local):
                break
        gen_seconds = time.monotonic() - t0
        everywhere = {k: all_gather_list(v) for k, v in rows.items()}
        keep_rate = max(1 / 8, 1 - sum(everywhere["zero_std"]) / max(len(everywhere["zero_std"]), 1))
        if any_rank(not groups):
            metrics = {"step": step + 1, "skipped": "every group had equal rewards"}
            emit(metrics)
            continue
        kept = all_gather_list(torch.cat([r for _, _, r in groups]).tolist())
        batch_std = float(torch.tensor(kept).std()) if cfg.scale == "batch" else None
        input_ids, mask, advantages, lengths, think = _stack(groups, G, tokenizer.pad_id, cfg, batch_std, shared)
        total = all_reduce_sum(float(mask.sum())) if cfg.loss_agg == "token_mean" else all_reduce_sum(len(input_ids))
        trained = groups
        if cfg.skip_flat_groups and cfg.beta == 0:  # see the module docstring
            trained = [x for x in groups if bool((x[2] != x[2][0]).any())] or groups[:1]
            if len(trained) < len(groups):
                input_ids, mask, advantages, _, _ = _stack(trained, G, tokenizer.pad_id, cfg, batch_std, shared)
        input_ids, mask, advantages = input_ids.to(device), mask.to(device), advantages.to(device)
        t1 = time.monotonic()
        train_model.train()
        chunks = micro_batches(len(input_ids), cfg.micro_batch_size, G if shared else 1)
        real = len(chunks)
        if size > 1:  # ranks may hold different numbers of groups (flat ones skipped, refills cut short), but
            # DDP and FSDP2 need the same forward and backward calls on every rank: repeat the last
            # chunk, its loss weighted 0.
            chunks += [chunks[-1]] * (max(all_gather_list([real])) - real)
        old_logp = ref_logp = None
        if cfg.updates > 1:
            with torch.no_grad():
                old_logp = torch.cat([token_logprobs(train_model, input_ids[c], cfg.temperature)[0] for c in chunks][:real])
        if cfg.beta > 0:
            ref_logp = torch.cat([reference_logprobs(core, ref_model, input_ids[c], cfg.temperature)
                                  for c in chunks][:real])
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        grad_norm, loss_sum = 0.0, 0.0
        pick = lambda t, c: None if t is None else t[c]
        for _ in range(cfg.updates):
            optimizer.zero_grad(set_to_none=True)
            local, weighted, skipped = 0.0, {}, False  # weighted: token-weighted sums of the chunks' means
            for k, c in enumerate(chunks):  # every chunk's loss is over the global count: they sum up
                with gradient_sync(train_model, k == len(chunks) - 1):
                    loss, chunk_stats = grpo_step_loss(train_model, pick(ref_logp, c), input_ids[c], mask[c],
                                                       advantages[c], pick(old_logp, c), cfg, total)
                    weight = size if k < real else 0.0  # a repeated chunk (see above) adds nothing
                    (loss * weight).backward()  # DDP/FSDP2 average over ranks; local losses sum to the global one
                if k >= real:
                    continue
                local += loss.item()
                n = float(mask[c].sum())
                for key, v in chunk_stats.items():
                    weighted[key] = weighted.get(key, 0.0) + v * n
            loss_sum = all_reduce_sum(local)
            if not math.isfinite(loss_sum) or not grads_finite(train_model):
                optimizer.zero_grad(set_to_none=True)
                skipped = True
                break
            grad_norm = clip_grad_norm(train_model, cfg.grad_clip)
            optimizer.step()
        train_model.eval()
        n_tokens = max(all_reduce_sum(float(mask.sum())), 1.0)
        loss_stats = {k: all_reduce_sum(v) / n_tokens for k, v in weighted.items()}
        if skipped:
            loss_stats["skipped"] = "non-finite loss or gradient"
        bad_in_a_row = bad_in_a_row + 1 if skipped else 0
        all_lengths = all_gather_list(lengths.tolist())
        all_think = all_gather_list(think)
        reward_all = torch.tensor(kept)
        # Over every row drawn (before dynamic sampling): the reward and each of its components, mean and std.
        drawn = [("sampled_mean", "sampled_std", everywhere["reward"]), ("format_rate", "format_std", everywhere["format"]),
                 ("accuracy", "accuracy_std", everywhere["correct"])]
        if cfg.length_target:
            drawn.append(("length_target", "length_target_std", everywhere["extra"]))
        components = {}
        for mean_key, std_key, values in drawn:
            v = torch.tensor(values, dtype=torch.float64)
            components.update({f"reward/{mean_key}": float(v.mean()), f"reward/{std_key}": float(v.std())})
        metrics = {
            "step": step + 1, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
            "reward/mean": float(reward_all.mean()), "reward/std": float(reward_all.std()),  # the groups trained on
            **components,
            "frac_reward_zero_std": sum(everywhere["zero_std"]) / max(len(everywhere["zero_std"]), 1),
            "sampling/groups_drawn": len(everywhere["zero_std"]), "sampling/groups_kept": len(kept) // G,
            "sampling/groups_trained": int(all_reduce_sum(len(trained))),
            # answers scored wrong because the verifier could not judge them (never in silence)
            **{f"verify/{k}": int(all_reduce_sum(task.counts[k] - verify_before[k])) for k in VERIFY_EVENTS},
            "completions/mean_length": sum(all_lengths) / len(all_lengths),
            "completions/mean_think_tokens": sum(all_think) / len(all_think),
            **loss_stats, "time/generate_s": gen_seconds, "time/train_s": time.monotonic() - t1,
            "seconds": time.monotonic() - start,
        }
        last = broadcast_flag(step == cfg.steps - 1 or bool(cfg.max_seconds and metrics["seconds"] >= cfg.max_seconds))
        if held_out and ((step + 1) % cfg.eval_every == 0 or last):
            metrics.update(evaluate())
        if out:
            rollout, g, _ = groups[0]
            with open(out / "samples.jsonl", "a") as f:
                for i in range(g * G, g * G + min(G, 2)):
                    f.write(json.dumps({"step": step + 1, "completion": rollout.texts[i],
                                        "format_ok": parse_completion(rollout.texts[i]).format_ok}) + "\n")
        emit(metrics)  # before the state: a run resumed from it finds this step's row
        if state_dir and cfg.save_every and (step + 1) % cfg.save_every == 0 and rank == 0:
            save_training_state(state_dir, {"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                                            "stream": stream.state(), "step": step + 1, "config": config,
                                            "keep_rate": keep_rate, "seconds": metrics["seconds"],
                                            "reference": ref_model.state_dict() if ref_model else None})
        stop_if_diverged(bad_in_a_row, step + 1)  # after the log row: the 5th skipped step is logged too
        if last:
            break
    return metrics


def _stack(groups, G: int, pad_id: int, cfg: GRPOConfig, batch_std: float | None = None, shared: bool = False):
    """The kept groups as one batch: inputs (a `GroupedBatch` when `shared`, else (N, T) ids),
    loss mask, advantages, completion lengths, thinking lengths."""
    advantages = group_advantages(torch.stack([r for _, _, r in groups]), cfg.scale, batch_std=batch_std).flatten()
    lengths = torch.cat([rollout.lengths[g * G:(g + 1) * G] for rollout, g, _ in groups])
    think = [t for rollout, g, _ in groups for t in rollout.think_tokens[g * G:(g + 1) * G]]
    if shared:
        inputs, mask = group_batch([(rollout, g) for rollout, g, _ in groups], G, pad_id, cfg.mask_truncated)
        return inputs, mask, advantages, lengths, think
    seqs, masks = [], []
    batches = {}  # one rollout_batch per rollout (dynamic sampling may draw several)
    for rollout, g, _ in groups:
        if id(rollout) not in batches:
            batches[id(rollout)] = rollout_batch(rollout, pad_id, cfg.mask_truncated)
        ids, m = batches[id(rollout)]
        seqs += list(ids[g * G:(g + 1) * G])
        masks += list(m[g * G:(g + 1) * G])
    T = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T - 1))
    for i, (s, m) in enumerate(zip(seqs, masks)):
        input_ids[i, :len(s)] = s
        mask[i, :len(m)] = m
    return input_ids, mask, advantages, lengths, think
