"""Method 2: GRPO-family reinforcement learning from the model's own samples.

Each step draws P problems, samples G completions for each (one *group*) with the engine, scores
them with the reward (default: the method's format 2 + correct 1, nothing when the format breaks),
and takes gradient steps on

    J(θ) = agg_{i,t} [ min(ρ_it A_i, clip(ρ_it, 1-ε_low, 1+ε_high) A_i) ] - β · agg_{i,t} KL_k3(π_θ ‖ π_ref)

with ρ_it = π_θ(o_it | q, o_i<t) / π_old(o_it | q, o_i<t) and A_i = (r_i - mean(r_group)) / scale.
The pieces are chosen by name (`algos`): the advantage estimator (`advantage`: group std as in GRPO,
batch std, or none as in Dr. GRPO), the policy loss (`policy_loss`), the aggregation (`loss_agg`:
token_mean as in DAPO, seq_mean as in GRPO, constant as in Dr. GRPO). Clipping only matters with
μ > 1 updates per batch; with μ = 1 the gradient is the plain policy gradient A·∇log π. The KL term
and its frozen reference exist only when β > 0.

Departures from GRPO as published: token log-probs use the sampling temperature (as TRL does);
forced tokens (thinking-budget cap, "Wait," extensions) never enter the loss; truncated completions
can be masked out (`mask_truncated`); groups whose rewards are all equal can be dropped and refilled
(`dynamic_sampling`, DAPO); length control (L1, Aggarwal & Welleck 2025) asks each prompt to
"think for N tokens" (N fixed or drawn per group) and adds the length-target reward; budget-aware
RL (Elastic Reasoning, Xu et al. 2025) cuts the thinking of a share of groups at a budget drawn per
group, forces the close and ``<answer>``, and rewards the answer the model then writes. The learning rate warms up linearly, then stays constant or decays
by cosine or linearly over `steps`.

Cost, not math: the training pass computes each group's prompt once and packs the completions
(`shared_prompts`: the built-in model, and Hugging Face Llama/Mistral/Qwen2/Qwen3 models through
their KV cache, see `model.hf`); with β = 0 a group whose rewards are all equal has
advantage 0 on every token, adds nothing to the gradient, and skips the forward and backward
(`skip_flat_groups`) while its tokens still count in the normaliser: the same update (tested).

A step, top to bottom (`train_grpo`): collect groups (`collect`) -> build the batch (`batch`) ->
update (`update`) -> log (`log`). Under torchrun each rank does its P/W share of each; the losses
are normalised by global counts and DDP/FSDP2 average the gradients, so W ranks compute the
single-process update. Save the result with `parallel.plain_model(model)`.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import asdict

import torch

from .. import compute, memory
from ..engine import SamplingParams
from ..errors import UserError
from ..evaluate import evaluate_problems
from ..outdir import RunFolder
from ..runtime import (
    all_gather_list,
    all_reduce_sum,
    any_rank,
    broadcast_flag,
    gathered,
    prepare,
    rank_device,
    refuse_fsdp_states,
    unwrap,
    world,
)
from ..tasks import Task
from ..tasks.base import problems_for
from ..train.loop import (
    SaveClock,
    failed_run,
    lr_at,
    make_optimizer,
    resumable_state,
    save_training_state,
    stop_if_diverged,
    task_setting,
)
from .batch import build_batch
from .collect import Collector, ProblemStream
from .config import GRPOConfig
from .log import RunLog, step_metrics
from .types import Group
from .update import update


def train_grpo(
    model,
    tokenizer,
    task: Task,
    cfg: GRPOConfig,
    out_dir=None,
    log=None,
    progress=None,
    resume: bool = False,
    held_out=None,
):
    """Run GRPO on `model` (in place); returns the last metrics. Logs one JSON line per step to
    out_dir/metrics.jsonl (and to its trackers: `out_dir` may be a `RunFolder` with `report_to`)
    and `cfg.log_completions` completions per step to out_dir/samples.jsonl. With
    `cfg.save_every`, a resumable state (weights, optimiser, reference, problem stream) goes to
    out_dir/state; `resume=True` continues from it: sampling seeds derive from the step, so the run
    goes on as if never stopped. A failure while a step samples (Ctrl-C included) saves the state
    at that step's start. Each row carries ``compute/flops``, what the run's sampling and updates
    have cost so far (`compute`); `cfg.max_flops` stops the run there."""
    rank, size = world()
    if cfg.prompts_per_step % size:
        raise UserError(f"prompts_per_step {cfg.prompts_per_step} must divide by the {size} processes")
    refuse_fsdp_states(cfg.save_every, cfg.fsdp)
    torch.manual_seed(cfg.seed)
    if held_out is None:  # the problems evaluated every `eval_every` steps (a study passes its own)
        held_out = (
            problems_for(task, cfg.eval_problems, "test", cfg.seed + 1, "--eval-problems")
            if cfg.eval_every
            else []
        )
    held_out = held_out if cfg.eval_every else []
    check_memory(model, cfg, size)
    ref_model = reference_model(model, cfg)
    vllm = start_vllm(model, tokenizer, cfg)  # from the plain model, before adapters or sharding
    train_model = prepare(model, cfg)
    core = unwrap(train_model)
    optimizer = make_optimizer(train_model, cfg.lr)
    collector = Collector(task, tokenizer, cfg, ProblemStream(task, cfg.seed))
    folder = out_dir if isinstance(out_dir, RunFolder) else RunFolder(out_dir, "rl") if out_dir else None
    state_dir = folder.state if folder else None
    config = {**asdict(cfg), **task_setting(task)}  # what a resume must not change (`check_resume`)
    first, elapsed, ledger, cost = 0, 0.0, compute.Ledger(), compute.model_cost(core)
    if resume and state_dir and (state := resumable_state(state_dir, config)) is not None:
        first, elapsed = load_state(state, core, optimizer, collector, ref_model, ledger)
    if vllm is not None:
        collector.sample = vllm_sampler(vllm, first)
    run = RunLog(folder if rank == 0 else None, log if rank == 0 else None, progress if rank == 0 else None)
    metrics = run.start(config, first, resume)
    start = time.monotonic() - elapsed  # elapsed time (and so --max-seconds) counts on across a resume

    def evaluate():
        with gathered(train_model) as full:
            return sharded_evaluate(full, tokenizer, task, held_out, cfg)

    def save(at: dict) -> None:
        if rank == 0 and state_dir:
            save_training_state(
                state_dir,
                {
                    "model": core.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "config": config,
                    **at,
                    "reference": ref_model.state_dict() if ref_model else None,
                },
            )

    clock = SaveClock(
        cfg, enabled=state_dir is not None and not cfg.fsdp
    )  # every --save-every steps / minutes
    bad_in_a_row, G, shared = 0, cfg.group_size, cfg.shared_prompts and getattr(core, "shares_prompts", False)
    # what this run's sampling and updates cost (evaluations are not counted); the trackers closed at the end
    with run, compute.track(ledger):
        if held_out and first == 0:  # the starting point, on the curve
            metrics = {"step": 0, **evaluate(), "seconds": 0.0}
            run.emit(metrics)
        device = next(core.parameters()).device
        for step in range(first, cfg.steps):
            good = boundary(
                collector, step, time.monotonic() - start, ledger
            )  # what a failure before the update saves
            try:
                train_model.eval()
                verify_before = Counter(task.counts)
                collected = collector.collect(train_model, step)  # sample and score the groups
                drawn = collector.drawn(collected)
            except (Exception, KeyboardInterrupt) as e:
                stop = failed_run(
                    e,
                    (lambda: save(good)) if state_dir and rank == 0 and not cfg.fsdp else None,
                    state_dir,
                    step,
                )
                if stop is e:
                    raise
                raise stop from e
            if any_rank(not collected.groups):
                metrics = {
                    "step": step + 1,
                    "skipped": "every group had equal rewards",
                    **drawn.log(),
                    "compute/flops": all_reduce_sum(ledger.flops(cost)),
                }
                run.emit(metrics)
                collector.format_watch.check()
                if cfg.max_flops and metrics["compute/flops"] >= cfg.max_flops:
                    break
                continue
            batch, trained, total, kept = batch_for_update(collected.groups, cfg, tokenizer.pad_id, shared)
            t1, lr = time.monotonic(), lr_at(step, cfg)
            train_model.train()
            result = update(
                train_model, core, ref_model, optimizer, batch.to(device), cfg, lr, total, G if shared else 1
            )
            train_model.eval()
            bad_in_a_row = bad_in_a_row + 1 if result.skipped else 0
            metrics = step_metrics(
                step + 1,
                lr,
                collected,
                drawn,
                kept,
                trained,
                result,
                verify_before,
                task,
                {
                    "time/generate_s": collected.seconds,
                    "time/train_s": time.monotonic() - t1,
                    "seconds": time.monotonic() - start,
                    "compute/flops": all_reduce_sum(ledger.flops(cost)),
                },
            )
            last = broadcast_flag(
                step == cfg.steps - 1
                or bool(cfg.max_seconds and metrics["seconds"] >= cfg.max_seconds)
                or bool(cfg.max_flops and metrics["compute/flops"] >= cfg.max_flops)
            )
            if held_out and ((step + 1) % cfg.eval_every == 0 or last):
                metrics.update(evaluate())
            run.samples(step + 1, collected, tokenizer)  # cfg.log_completions rows
            run.emit(metrics)  # before the state: a run resumed from it finds this step's row
            if clock.due(step + 1):
                clock.save(lambda: save(boundary(collector, step + 1, metrics["seconds"], ledger)))
            stop_if_diverged(bad_in_a_row, step + 1)  # after the log row: the 5th skipped step is logged too
            collector.format_watch.check()  # after the row too: a model that never writes the template
            if last:
                break
        return metrics


def check_memory(model, cfg: GRPOConfig, size: int) -> None:
    """Refuse, before any step, a batch whose training pass cannot fit when completions reach
    `max_new_tokens` (`memory.step_bytes`)."""
    rows = cfg.micro_batch_size or cfg.prompts_per_step * cfg.group_size // size
    memory.check_fits(
        memory.step_bytes(model, rows, cfg.max_new_tokens, None if not cfg.lora_rank else 0),
        f"a training pass of {rows} completions of {cfg.max_new_tokens} tokens",
        "lower --micro-batch-size (the update stays the same), --prompts-per-step, --group-size or "
        "--max-new-tokens",
        next(model.parameters()).device,
    )


def batch_for_update(groups: list[Group], cfg: GRPOConfig, pad_id: int, shared: bool):
    """The batch the update trains on, the groups in it, the loss's global normaliser (tokens or
    rows of *every* group kept, on every rank) and the kept rewards of every rank."""
    kept = all_gather_list(torch.cat([g.rewards for g in groups]).tolist())
    batch_std = float(torch.tensor(kept).std()) if cfg.advantage == "batch" else None
    batch = build_batch(
        groups,
        cfg.group_size,
        pad_id,
        advantage=cfg.advantage,
        batch_std=batch_std,
        shared=shared,
        mask_truncated=cfg.mask_truncated,
    )
    total = (
        all_reduce_sum(float(batch.mask.sum()))
        if cfg.loss_agg == "token_mean"
        else all_reduce_sum(len(batch))
    )
    trained = groups
    if cfg.skip_flat_groups and cfg.beta == 0:  # no gradient from them (module docstring); one kept at least
        trained = [g for g in groups if not g.flat] or groups[:1]
        if len(trained) < len(groups):
            batch = build_batch(
                trained,
                cfg.group_size,
                pad_id,
                advantage=cfg.advantage,
                batch_std=batch_std,
                shared=shared,
                mask_truncated=cfg.mask_truncated,
            )
    return batch, trained, total, kept


def boundary(collector: Collector, step: int, seconds: float, ledger: compute.Ledger) -> dict:
    """The state at a step boundary but for the weights, optimiser and reference (copied: the
    stream reshuffles its list in place)."""
    stream = collector.stream.state()
    return {
        "stream": {**stream, "problems": list(stream["problems"])},
        "step": step,
        "keep_rate": collector.keep_rate,
        "format_watch": collector.format_watch.state(),
        "seconds": seconds,
        "compute": asdict(ledger),
    }


def load_state(
    state: dict, core, optimizer, collector: Collector, ref_model, ledger: compute.Ledger
) -> tuple[int, float]:
    """Restore a saved state (the compute spent before it into `ledger`: a state saved before
    attention was counted holds no pairs, restored as 0); returns (step, elapsed seconds)."""
    core.load_state_dict(state["model"])
    ledger.restore(state.get("compute", {}))
    optimizer.load_state_dict(state["optimizer"])
    collector.stream.load_state(state["stream"])
    collector.keep_rate = state.get("keep_rate", 1.0)
    collector.format_watch.load(state.get("format_watch"))
    if ref_model is not None:
        ref_model.load_state_dict(state["reference"])
    return state["step"], state.get("seconds", 0.0)


def reference_model(model, cfg: GRPOConfig):
    """A frozen copy for the KL term when β > 0 (with LoRA the reference is the model with its
    adapters off: no copy); on this rank's device."""
    if cfg.beta == 0 or cfg.lora_rank:
        return None
    ref = copy.deepcopy(model).eval()
    return ref.to(rank_device()) if world()[1] > 1 else ref


def start_vllm(model, tokenizer, cfg: GRPOConfig):
    if cfg.rollout_engine != "vllm":
        return None
    from ..rollout_vllm import VLLMEngine, VLLMOptions

    return VLLMEngine.from_model(model, tokenizer, VLLMOptions(gpu_memory_utilization=cfg.vllm_gpu_memory))


def vllm_sampler(engine, first: int):
    """Sampling through vLLM, its weights synced once a step (the last step's update)."""

    def sample(model, prompts, params, step):
        if engine.syncs <= step - first:
            engine.sync_weights(model)
        return engine.generate(prompts, params)

    return sample


def sharded_evaluate(model, tokenizer, task: Task, problems, cfg: GRPOConfig) -> dict:
    """Greedy held-out accuracy; each rank takes every W-th problem, the counts are summed."""
    rank, size = world()
    mine = problems[rank::size]
    result = (
        evaluate_problems(
            model,
            tokenizer,
            task,
            mine,
            trigger=cfg.trigger,
            style=cfg.style,
            params=SamplingParams(temperature=0.0, max_new_tokens=cfg.max_new_tokens),
        )
        if mine
        else {"accuracy": 0.0, "format_rate": 0.0, "mean_think_tokens": 0.0}
    )
    n = all_reduce_sum(len(mine))
    return {
        f"eval/{k}": all_reduce_sum(result[k] * len(mine)) / max(n, 1)
        for k in ("accuracy", "format_rate", "mean_think_tokens")
    }
