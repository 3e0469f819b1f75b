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
group, forces the close and ``<answer>``, and rewards the answer the model then writes. The
learning rate warms up linearly, then stays constant or decays by cosine or linearly over `steps`.

Cost, not math: the training pass computes each group's prompt once and packs the completions
(`shared_prompts`: the built-in model, and Hugging Face Llama/Mistral/Qwen2/Qwen3 models through
their KV cache, see `model.hf`); with β = 0 a group whose rewards are all equal has
advantage 0 on every token, adds nothing to the gradient, and skips the forward and backward
(`skip_flat_groups`) while its tokens still count in the normaliser: the same update (tested).
Where `rollout_dtype` takes bf16 the built-in engine samples from a bf16 copy of the weights,
refreshed at each step (`sampler`); the update and the evaluations stay float32.

A step, top to bottom (`train_grpo`): collect groups (`collect`) -> build the batch (`batch`) ->
update (`update`) -> its row (`log`) -> end the step (`run.Run.end_step`: budgets, evaluation,
logging, saving, stopping; resume and failure saves are the run's too, as for supervised training).
Under torchrun each rank does its P/W share of each; the losses are normalised by global counts and
DDP/FSDP2 average the gradients, so W ranks compute the single-process update. Save the result
with `runtime.plain_model(model)`.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial

import torch

from .. import compute, memory
from ..engine import SamplingParams
from ..errors import UserError
from ..evaluate import evaluate_problems
from ..outdir import RunFolder
from ..rewards import RewardPlan
from ..run import Run
from ..run.optim import lr_at, make_optimizer
from ..run.state import task_setting
from ..runtime import all_reduce_sum, gathered, prepare, rank_device, refuse_fsdp_states, unwrap, world
from ..tasks import Task
from ..tasks.base import problems_for
from .batch import batch_for_update
from .collect import Collector, ProblemStream
from .config import GRPOConfig
from .log import sample_rows, step_metrics, trl_names
from .sampler import rollout_sampler
from .types import Policy, Sampled, StepBatch, Update
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
    rewards: RewardPlan | None = None,
    eval_at_flops: Sequence[float] = (),
):
    """Run GRPO on `model` (in place); returns the last metrics. Logs one JSON line per step to
    out_dir/metrics.jsonl (and to its trackers: `out_dir` may be a `RunFolder` with `report_to`)
    and `cfg.log_completions` completions per step to out_dir/samples.jsonl. With
    `cfg.save_every`, a resumable state (weights, optimiser, reference, problem stream) goes to
    out_dir/state; `resume=True` continues from it: sampling seeds derive from the step, so the run
    goes on as if never stopped. A failure while a step samples (Ctrl-C included) saves the state
    at that step's start. Each row carries ``compute/flops``, what the run's sampling and updates
    have cost so far (`compute`); `cfg.max_flops` stops the run there, and `held_out` is evaluated
    too where that cost reaches each of `eval_at_flops`. `rewards`: your reward functions beside (or
    instead of) the method's (`rewards.rewards_given`); None: the method's."""
    size = checked_layout(cfg)
    torch.manual_seed(cfg.seed)
    held_out = held_out_problems(task, cfg, held_out, eval_at_flops)
    check_memory(model, cfg, size)
    policy, vllm = make_policy(model, tokenizer, cfg)
    sampler, dtype = rollout_sampler(policy, tokenizer, cfg)  # a bf16 copy to sample from, or None
    stream = ProblemStream(task, cfg.seed)
    collector = Collector(task, tokenizer, cfg, stream, sample=sampler, rewards=rewards)
    folder = out_dir if isinstance(out_dir, RunFolder) else RunFolder(out_dir, "rl") if out_dir else None
    run = start_run(policy, collector, task, cfg, folder, resume, log, progress, dtype, eval_at_flops)
    if vllm is not None:
        collector.sample = vllm_sampler(vllm, run.first)
    evaluate = partial(evaluate_policy, policy, tokenizer, task, held_out, cfg) if held_out else None
    shared = cfg.shared_prompts and getattr(policy.core, "shares_prompts", False)
    # the run's sampling and updates are counted (evaluations are not); the trackers closed at the end
    with run, compute.track(run.ledger):
        if evaluate and run.first == 0:  # the starting point, on the curve
            run.show({"step": 0, **evaluate(), "seconds": 0.0})
        for step in range(run.first, cfg.steps):
            run.mark(step)  # 1) collect (sampling leaves the weights be: a failure in it saves this point)
            with run.saving_on_failure():
                sampled = collect_groups(collector, policy.model, task, step)
            # 2) build the batch; None when some rank kept no group (every one flat): no update
            batch = batch_for_update(sampled.collected.groups, cfg, tokenizer.pad_id, shared)
            # 3) update
            result = train_on(policy, batch, cfg, lr_at(step, cfg)) if batch is not None else None
            if result is not None:
                run.updated(step + 1, finite=not result.skipped)
            # 4) end the step: its row and samples, then the run's evaluation, log, save, stop
            metrics = step_metrics(step + 1, sampled, batch, result, task, run.seconds(), run.flops())
            samples = partial(sample_rows, step + 1, sampled.collected, tokenizer, cfg)
            stop = run.end_step(step + 1, metrics, evaluate, samples, trained=batch is not None)
            collector.format_watch.check()  # after the row too: a model that never writes the template
            if stop:
                break
    return run.metrics


def collect_groups(collector: Collector, model, task: Task, step: int) -> Sampled:
    """Sample and score the step's groups (every rank: a collective call)."""
    model.eval()
    verify_before = Counter(task.counts)
    collected = collector.collect(model, step)
    return Sampled(collected, collector.drawn(collected), verify_before)


def train_on(policy: Policy, batch: StepBatch, cfg: GRPOConfig, lr: float) -> Update:
    """The update on the step's batch, the model in training mode for it and back in eval mode
    (sampling's) after; `Update.seconds` its wall time."""
    began = time.monotonic()
    device = next(policy.core.parameters()).device
    policy.model.train()
    result = update(policy, batch.batch.to(device), cfg, lr=lr, total=batch.total)
    policy.model.eval()
    result.seconds = time.monotonic() - began
    return result


def checked_layout(cfg: GRPOConfig) -> int:
    """The number of processes, refused where the step's problems cannot split among them evenly or
    where FSDP2 would be asked to keep states."""
    size = world()[1]
    if cfg.prompts_per_step % size:
        raise UserError(f"prompts_per_step {cfg.prompts_per_step} must divide by the {size} processes")
    refuse_fsdp_states(cfg.save_every, cfg.fsdp)
    return size


def held_out_problems(task: Task, cfg: GRPOConfig, given, marks: Sequence[float] = ()) -> list:
    """The problems evaluated every `eval_every` steps (and at FLOP `marks`): `given` (a study passes
    its own) or the task's test problems; none when the run never evaluates."""
    if not cfg.eval_every and not marks:
        return []
    if given is not None:
        return given
    return problems_for(task, cfg.eval_problems, "test", cfg.seed + 1, "--eval-problems")


def make_policy(model, tokenizer, cfg: GRPOConfig) -> tuple[Policy, object]:
    """The model prepared for training (LoRA, DDP/FSDP2), its optimiser and the frozen reference;
    and the vLLM engine when it samples there (started from the plain model, before adapters or
    sharding)."""
    reference = reference_model(model, cfg)
    vllm = start_vllm(model, tokenizer, cfg)
    train_model = prepare(model, cfg)
    return Policy(train_model, unwrap(train_model), make_optimizer(train_model, cfg.lr), reference), vllm


def start_run(
    policy: Policy,
    collector: Collector,
    task,
    cfg: GRPOConfig,
    folder,
    resume,
    log,
    progress,
    sampling=None,
    eval_at_flops: Sequence[float] = (),
) -> Run:
    """The run's lifecycle (`run.Run`): rank 0 logs, with TRL's names; the state holds the weights,
    optimiser, reference and where the collector stands. Resumed from the saved state when
    `resume`; the folder marked with the run's settings and, as ``sampling/dtype``, the dtype
    `sampling` the built-in engine samples in (not a setting a resume checks: auto measures it)."""
    config = {**asdict(cfg), **task_setting(task)}  # what a resume must not change (`check_resume`)
    run = Run(
        cfg,
        folder,
        config,
        cost=compute.model_cost(policy.core),
        position=lambda: collector_position(collector),
        weights=lambda: {
            "model": policy.core.state_dict(),
            "optimizer": policy.optimizer.state_dict(),
            "reference": policy.reference.state_dict() if policy.reference else None,
        },
        keeps_state=not cfg.fsdp,
        aliases=trl_names,
        log=log,
        progress=progress,
        eval_at_flops=eval_at_flops,
    )
    state = run.resume() if resume else None
    if state:
        load_state(state, policy, collector)
    if folder and run.rank == 0:
        folder.start(
            {**config, **({"sampling/dtype": str(sampling).removeprefix("torch.")} if sampling else {})}
        )
    run.start(state, resume)
    return run


def collector_position(collector: Collector) -> dict:
    """Where the collector stands at a step boundary (copied: the stream reshuffles its list in
    place): the problem stream, dynamic sampling's keep rate, the format watch."""
    stream = collector.stream.state()
    return {
        "stream": {**stream, "problems": list(stream["problems"])},
        "keep_rate": collector.keep_rate,
        "format_watch": collector.format_watch.state(),
    }


def load_state(state: dict, policy: Policy, collector: Collector) -> None:
    """Restore the trainer's part of a saved state (the run restores its step, clock and compute)."""
    policy.core.load_state_dict(state["model"])
    policy.optimizer.load_state_dict(state["optimizer"])
    collector.stream.load_state(state["stream"])
    collector.keep_rate = state.get("keep_rate", 1.0)
    collector.format_watch.load(state.get("format_watch"))
    if policy.reference is not None:
        policy.reference.load_state_dict(state["reference"])


def evaluate_policy(policy: Policy, tokenizer, task: Task, held_out: list, cfg: GRPOConfig) -> dict:
    """Held-out greedy accuracy of the whole model (FSDP2 gathers it; `sharded_evaluate`)."""
    with gathered(policy.model) as full:
        return sharded_evaluate(full, tokenizer, task, held_out, cfg)


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
