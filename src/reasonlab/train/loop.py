"""What every trainer shares: tokenised examples, batches with completion-only labels, the
optimiser and learning-rate schedule, one supervised training loop, and atomic training state.

An *example* is ``(prompt_ids, completion_ids)``; the loss covers completion tokens only (pretraining
passes the whole document as the completion). Batches are right-padded: every row starts at
position 0, so no attention mask is needed (padding sits after the real tokens).
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import compute, memory
from ..config import FRACTION, MAX_ROWS, SEED, check_options
from ..errors import UserError
from ..jsonl import logged_step
from ..outdir import RunFolder
from ..runtime import (
    all_reduce_sum,
    autocast,
    broadcast_flag,
    clip_grad_norm,
    gathered,
    grads_finite,
    is_fsdp,
    refuse_fsdp_states,
    unwrap,
    world,
)

# the resumable state (train/state.py): imported here too, where the trainers have always found it
from .state import (
    NOT_SETTINGS,
    PREVIOUS,
    RESUMABLE,
    STATE,
    SaveClock,
    check_resume,
    data_fingerprint,  # noqa: F401
    discard_training_state,
    files_fingerprint,
    load_training_state,
    nothing_to_resume,
    resumable_state,
    save_training_state,
    task_setting,
    write_failure,
)

IGNORE = -100  # label of tokens that carry no loss (prompt, padding)
MAX_CHARS_PER_TOKEN = 64  # no tokenizer's token covers more characters (the longest BPE tokens: ~16-32)
MAX_STEPS = 10**9  # the most steps (and step counts: warm-up, cadences) any option takes
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    """What every trainer (supervised and RL) shares: how many steps, the learning-rate schedule
    (`lr_at`), gradient clipping, the seed, and when it evaluates, saves and stops. A trainer sets
    its own defaults with `default_of`."""

    steps: int = field(default=500, metadata={"help": "optimiser steps at most", "min": 1, "max": MAX_STEPS})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate", "above": 0})
    warmup_steps: int = field(
        default=20, metadata={"help": "linear warm-up steps", "min": 0, "max": MAX_STEPS}
    )
    schedule: str = field(
        default="cosine",
        metadata={
            "help": "after warm-up: cosine or linear decay over `steps` (not over max_seconds), or constant",
            "choices": SCHEDULES,
        },
    )
    min_lr_ratio: float = field(
        default=0.1, metadata={"help": "cosine / linear: final lr as a fraction of the peak", **FRACTION}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm (0 = off)", "min": 0})
    eval_every: int = field(
        default=100, metadata={"help": "evaluate every N steps (0 = never)", "min": 0, "max": MAX_STEPS}
    )
    save_every: int = field(
        default=0,
        metadata={
            "help": "write a resumable training state every N steps (0 = never)",
            "min": 0,
            "max": MAX_STEPS,
        },
    )
    save_minutes: float = field(
        default=2.0,
        metadata={  # no percent sign in a help: argparse formats it (--help failed)
            "help": "also write it every N minutes of training, so a kill loses at most that (stretched to keep saving "
            "under 5 percent of the time; 0 = only --save-every)",
            "min": 0,
            "max": 10**6,
        },
    )
    max_seconds: float = field(
        default=0.0, metadata={"help": "stop after this much wall time (0 = no limit)", "min": 0}
    )
    seed: int = field(default=0, metadata={"help": "data order, initialisation and sampling seed", **SEED})

    def __post_init__(self):
        check_options(self)


def default_of(name: str, default, help: str | None = None):
    """`OptimConfig`'s field `name` (its limits and help) with another default, for a trainer's
    own config."""
    metadata = dict(OptimConfig.__dataclass_fields__[name].metadata)
    if help:
        metadata["help"] = help
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig(OptimConfig):
    """Supervised training (pretrain, sft, Method 1's fine-tuning): `OptimConfig` and the batches."""

    batch_size: int = field(
        default=32, metadata={"help": "sequences per micro-batch", "min": 1, "max": MAX_ROWS}
    )
    grad_accum: int = field(
        default=1, metadata={"help": "micro-batches per optimiser step", "min": 1, "max": MAX_ROWS}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "min": 0})
    max_seq_len: int = field(
        default=256, metadata={"help": "longer examples are cut", "min": 2, "max": 10**7}
    )
    packing: bool = field(default=False, metadata={"help": "pack several examples into each row"})
    group_by_length: bool = field(
        default=True, metadata={"help": "batch examples of similar length (less padding)"}
    )


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Warm-up then cosine / linear decay over `cfg.steps` to `min_lr_ratio` of the peak (or
    constant). `cfg`: an `OptimConfig` (supervised `TrainConfig` or `GRPOConfig`)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def make_optimizer(model, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def tokenize_examples(
    tokenizer, rows: list[dict], max_len: int, eos: bool = True
) -> list[tuple[list[int], list[int]]]:
    """`{"prompt", "completion"}` rows to id pairs, EOS after the completion, cut to `max_len`.
    Texts are cut to `max_len` x `MAX_CHARS_PER_TOKEN` characters first: tokenising a 50 MB line
    whole took gigabytes for the 256 tokens kept."""
    chars = max_len * MAX_CHARS_PER_TOKEN
    prompts = tokenizer.encode_batch([r["prompt"][:chars] for r in rows])
    completions = tokenizer.encode_batch([r["completion"][:chars] for r in rows])
    out = []
    for p, c in zip(prompts, completions):
        c = c + [tokenizer.eos_id] if eos and tokenizer.eos_id is not None else c
        out.append((p[:max_len], c[: max(0, max_len - len(p))]))
    return out


def fit_to_model(cfg, model) -> None:
    """Lower `cfg.max_seq_len` to the positions `model` has, saying so: examples are then cut to what
    the model can take before training, never refused in the middle of it."""
    positions = getattr(unwrap(model), "max_seq_len", None)
    if positions and cfg.max_seq_len > positions:
        if world()[0] == 0:
            print(
                f"note: --max-seq-len {cfg.max_seq_len} is more than the model's {positions} positions: "
                f"using {positions}",
                file=sys.stderr,
            )
        cfg.max_seq_len = positions


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels), both (B, T): labels are the next token, IGNORE outside completions."""
    T = max(len(p) + len(c) for p, c in examples)
    input_ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for i, (p, c) in enumerate(examples):
        ids = p + c
        input_ids[i, : len(ids)] = torch.tensor(ids)
        # label at position t is token t+1; the completion's tokens are predicted from t = len(p)-1
        labels[i, max(len(p) - 1, 0) : len(ids) - 1] = torch.tensor(ids[max(len(p), 1) :])
    return input_ids, labels


def pack(
    examples: list[tuple[list[int], list[int]]], max_len: int
) -> list[list[tuple[list[int], list[int]]]]:
    """Group examples, in order, into rows of at most `max_len` tokens; `collate_packed` lays each
    row's examples end to end (loss still on completions only)."""
    rows, current = [], []
    for p, c in examples:
        if current and sum(len(a) + len(b) for a, b in current) + len(p) + len(c) > max_len:
            rows.append(current)
            current = []
        current.append((p, c))
    if current:
        rows.append(current)
    return rows


def collate_packed(rows, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(sum(len(p) + len(c) for p, c in row) for row in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for i, row in enumerate(rows):
        pos = 0
        for p, c in row:
            ids = p + c
            input_ids[i, pos : pos + len(ids)] = torch.tensor(ids)
            start = pos + max(len(p), 1)
            labels[i, start - 1 : pos + len(ids) - 1] = torch.tensor(ids[max(len(p), 1) :])
            pos += len(ids)
    return input_ids, labels


class BatchStream:
    """Endless shuffled batches. With `length`, each window of 32 batches is sorted by length
    before it is cut, so batches hold similar lengths and little padding (then batch order is
    shuffled again)."""

    def __init__(self, units: list, batch_size: int, rng: random.Random, length=None, window: int = 32):
        self.units, self.batch_size, self.rng, self.length, self.window = (
            units,
            batch_size,
            rng,
            length,
            window,
        )
        self.queue: list[list[int]] = []  # batches of unit indices still to serve
        self.order: list[int] = []

    def state(self) -> dict:
        """Where the stream stands (a copy: later batches leave it as it is)."""
        return {"rng": self.rng.getstate(), "queue": list(self.queue), "order": list(self.order)}

    def load_state(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.queue, self.order = state["queue"], state["order"]

    def next(self) -> list:
        if not self.queue:
            need = self.batch_size * self.window
            while len(self.order) < need:
                more = list(range(len(self.units)))
                self.rng.shuffle(more)
                self.order += more
            chunk, self.order = self.order[:need], self.order[need:]
            if self.length:
                chunk.sort(key=lambda i: self.length(self.units[i]))
            self.queue = [chunk[j : j + self.batch_size] for j in range(0, need, self.batch_size)]
            self.rng.shuffle(self.queue)
        return [self.units[i] for i in self.queue.pop()]


def trainable_tokens(example: tuple[list[int], list[int]]) -> int:
    """The tokens an example's loss covers: its completion's, less the first when there is no prompt
    to predict it from."""
    prompt, completion = example
    return max(0, len(completion) - (0 if prompt else 1))


MAX_NON_FINITE = 5


def stop_if_diverged(bad_in_a_row: int, step: int) -> None:
    """Stop a run whose last `MAX_NON_FINITE` updates were all skipped for a NaN/inf loss or gradient,
    with one line (a UserError: exit code 2); the states saved before it are intact for `--resume`."""
    if bad_in_a_row >= MAX_NON_FINITE:
        raise UserError(
            f"step {step}: {MAX_NON_FINITE} non-finite losses or gradients in a row: stopping (lower --lr?)"
        )


@torch.no_grad()
def held_out_loss(
    model, pad_id: int, examples: list[tuple[list[int], list[int]]], batch_size: int = 64
) -> float:
    """The mean loss per completion token on `examples` (the same for any batch size)."""
    total, n = 0.0, 0
    for i in range(0, len(examples), batch_size):
        input_ids, labels = collate(examples[i : i + batch_size], pad_id)
        total += float(lm_loss(model, input_ids, labels, reduction="sum"))
        n += int((labels != IGNORE).sum())
    return total / max(n, 1)


def lm_loss(
    model, input_ids: torch.Tensor, labels: torch.Tensor, reduction: str = "mean", precision: str = "auto"
) -> torch.Tensor:
    """Next-token cross-entropy over labelled tokens (their mean, or their sum); `precision`: the
    forward's autocast (`runtime.autocast`)."""
    device = next(model.parameters()).device
    input_ids, labels = input_ids.to(device), labels.to(device)
    with autocast(device, precision):
        logits = model(input_ids)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction=reduction,
    )


def train_supervised(
    model,
    tokenizer,
    examples: list[tuple[list[int], list[int]]],
    cfg: TrainConfig,
    evaluate: Callable[[object], dict] | None = None,
    stop_when: Callable[[dict], bool] | None = None,
    log: Callable[[dict], None] | None = None,
    progress=None,
    folder: RunFolder | None = None,
    resume: bool = False,
    settings: dict | None = None,
) -> dict:
    """Train on `examples` (completion-only loss). Returns the last metrics.

    `evaluate(model)` runs every `cfg.eval_every` steps (and at the end); training stops early when
    `stop_when(metrics)` is true, or after `cfg.max_seconds`. NaN/inf losses or gradients skip the
    update; 5 in a row stop the run with an error. With a run `folder` and `cfg.save_every`, the whole
    training state (weights, optimiser, data position, RNGs, elapsed time, and the settings: `cfg`,
    `settings` such as the task, the number of examples) is written to its state/ atomically every
    `save_every` steps, and when a step fails (the error then says how to resume); `resume=True`
    continues from it, so the remaining steps see exactly the batches and updates an uninterrupted
    run would have, after checking the settings are the same (`check_resume`). With `folder`, every
    step's metrics also go to its metrics.jsonl (rank r > 0: metrics.rank{r}.jsonl), before the
    state, which `reasonlab report` draws, and to the folder's trackers (`RunFolder.log`), closed
    when training ends; a resumed run drops the lines logged after its saved state.
    """
    if not examples:
        raise ValueError("no training examples")
    if not any(map(trainable_tokens, examples)):
        raise UserError(
            "no example has a completion token to train on (empty completions, or prompts that fill "
            "--max-seq-len)"
        )
    rank, size = world()
    refuse_fsdp_states(cfg.save_every, is_fsdp(model))
    if cfg.batch_size % size:
        raise ValueError(f"batch_size {cfg.batch_size} must divide by the {size} processes")
    rng = random.Random(cfg.seed)
    units = pack(examples, cfg.max_seq_len) if cfg.packing else examples
    by_length = cfg.group_by_length and not cfg.packing
    batches = BatchStream(
        units, cfg.batch_size, rng, length=(lambda u: len(u[0]) + len(u[1])) if by_length else None
    )
    longest = cfg.max_seq_len if cfg.packing else max(len(p) + len(c) for p, c in examples)
    memory.check_fits(
        memory.step_bytes(
            model,
            max(1, cfg.batch_size // size),
            min(longest, cfg.max_seq_len),
            sum(p.numel() for p in model.parameters() if p.requires_grad),
        ),
        f"a step of {cfg.batch_size} sequences of up to {longest} tokens",
        "lower --batch-size (--grad-accum keeps the batch) or --max-seq-len",
        next(model.parameters()).device,
    )
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    config = {
        **dataclasses.asdict(cfg),
        **(settings or {}),
        "examples": len(examples),
        "data": data_fingerprint(examples),
    }
    clock = SaveClock(cfg, enabled=folder is not None and not is_fsdp(model))
    start, bad_in_a_row, metrics, first = time.monotonic(), 0, {}, 0
    ledger, cost = compute.Ledger(), compute.model_cost(model)  # what the run's steps cost (`compute/flops`)
    state_dir = folder.state if folder else None
    if state_dir and not resume and rank == 0:
        discard_training_state(state_dir)
    if resume and state_dir and (state := _resume_from(state_dir, model, optimizer, batches, config)):
        first, bad_in_a_row = state["step"], state["bad_in_a_row"]
        start -= state.get("seconds", 0.0)  # elapsed time (and so --max-seconds) counts on
        ledger.restore(state.get("compute", {}))  # and so does the compute
    if folder:
        log = _step_log(folder, rank, first if resume else None, log)
        if (
            resume and first
        ):  # start from the saved step's logged metrics (all there is when the run had finished)
            metrics = logged_step(folder.log_file(rank), first)
            if progress and metrics:
                progress(metrics)

    def point(step: int) -> dict:  # the state after `step` steps, but for the weights and optimiser
        return {
            "batches": batches.state(),
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "bad_in_a_row": bad_in_a_row,
            "config": config,
            "seconds": time.monotonic() - start,
            "compute": dataclasses.asdict(ledger),
        }

    def save(at: dict) -> None:
        save_training_state(
            state_dir, {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), **at}
        )

    good = point(first)  # the last step boundary: what a failure saves
    model.train()
    try:
        for step in range(first, cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            with compute.track(ledger):
                total = _forward_backward(model, tokenizer.pad_id, batches, cfg)
            if not math.isfinite(total) or not grads_finite(model):
                optimizer.zero_grad(set_to_none=True)
                bad_in_a_row += 1
                if log:
                    log(
                        {"step": step + 1, "skipped": "non-finite loss or gradient"}
                    )  # numbered as metrics are
                stop_if_diverged(bad_in_a_row, step + 1)
                good = point(step + 1)
                continue
            bad_in_a_row = 0
            grad_norm = clip_grad_norm(model, cfg.grad_clip or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            good = point(step + 1)
            metrics = {
                "step": step + 1,
                "loss": total,
                "lr": lr_at(step, cfg),
                "grad_norm": float(grad_norm),
                "seconds": good["seconds"],
                "compute/flops": all_reduce_sum(ledger.flops(cost)),
                # TRL's names: lr's, the tokens trained on so far, the passes over the examples
                "learning_rate": lr_at(step, cfg),
                "num_tokens": int(all_reduce_sum(ledger.trained)),
                "epoch": (step + 1) * cfg.batch_size * cfg.grad_accum / len(units),
            }
            last = broadcast_flag(
                step == cfg.steps - 1 or bool(cfg.max_seconds and metrics["seconds"] >= cfg.max_seconds)
            )
            if evaluate and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last):
                model.eval()  # every rank evaluates the same model: the same stop decision everywhere
                with gathered(model) as full:
                    metrics.update(evaluate(full))
                model.train()
            if log:  # before the state: a run resumed from it finds this step's row
                log(metrics)
            if clock.due(step + 1) and rank == 0:
                clock.save(lambda: save(good))
            if progress:
                progress(metrics)
            if last or (stop_when and stop_when(metrics)):
                break
    except (Exception, KeyboardInterrupt) as e:
        can_save = state_dir and rank == 0 and not is_fsdp(model)
        stop = failed_run(e, (lambda: save(good)) if can_save else None, state_dir, good["step"])
        if stop is e:
            raise
        raise stop from e
    finally:
        if folder:
            folder.close()  # the trackers: complete event files, on an error too
    model.eval()
    return metrics


def _forward_backward(model, pad_id: int, batches: BatchStream, cfg: TrainConfig) -> float:
    """One optimiser step's forward and backward passes over `cfg.grad_accum` micro-batches; returns
    the loss. Every rank builds the same global micro-batch and trains on its rows; the loss is
    normalised by the global token count, so the summed gradient (DDP averages, hence the factor
    `size`) equals the single-process one."""
    rank, size = world()
    total = 0.0
    for _ in range(cfg.grad_accum):
        batch = batches.next()
        input_ids, labels = collate_packed(batch, pad_id) if cfg.packing else collate(batch, pad_id)
        n_tokens = max(1, int((labels != IGNORE).sum()))
        loss_sum = lm_loss(
            model,
            input_ids[rank::size],
            labels[rank::size],
            reduction="sum",
            precision=getattr(cfg, "autocast", "auto"),
        )  # RuntimeOptions' (sft), else auto
        # a sequence each: an example, or a packed row (its examples attend across one another)
        lengths = [
            sum(len(p) + len(c) for p, c in (row if cfg.packing else [row])) for row in batch[rank::size]
        ]
        compute.count("trained", sum(lengths), sum(map(compute.pairs, lengths)))
        (loss_sum * size / n_tokens / cfg.grad_accum).backward()
        total += loss_sum.item() / n_tokens / cfg.grad_accum
    return all_reduce_sum(total)


def _resume_from(state_dir, model, optimizer, batches: BatchStream, config: dict) -> dict | None:
    """The state saved in `state_dir`, loaded into the run (after `check_resume`), or None (said
    on stderr) when there is none."""
    state = resumable_state(state_dir, config)
    if state is None:
        return None
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    batches.load_state(state["batches"])
    torch.set_rng_state(state["torch_rng"])
    return state


def failed_run(error: BaseException, save: Callable[[], None] | None, where, step: int) -> BaseException:
    """What a training loop raises when `error` stopped it after `step` good steps. With `save`
    (it writes the state after those steps): a `UserError` line that says how to resume, or, for
    a KeyboardInterrupt, the interrupt itself with those words on stderr. A `UserError` (already
    one clear line, e.g. a full disk) or anything without `save` stays as it is."""
    if save is None or isinstance(error, UserError):
        return error
    try:
        save()
        kept = f"the state after step {step} is saved in {where}: rerun with --resume to go on"
    except Exception as e:  # noqa: BLE001 - a full disk, say: the original error still matters most
        kept = f"its state could not be saved ({e})"
    if isinstance(error, KeyboardInterrupt):
        print(f"interrupted: {kept}", file=sys.stderr)
        return error
    if is_out_of_memory(error):  # resuming with the same settings would fail the same way
        return UserError(
            f"out of memory after step {step}: this run needs more memory than the machine has: lower "
            "--batch-size, --max-seq-len or --max-new-tokens (or set --micro-batch-size) and start "
            f"again ({kept.split(':')[0]})"
        )
    return UserError(f"training stopped by {type(error).__name__}: {error}; {kept}")


def is_out_of_memory(error: BaseException) -> bool:
    """A MemoryError, or torch's allocator failing (CPU: "DefaultCPUAllocator: can't allocate";
    CUDA: OutOfMemoryError)."""
    text = str(error)
    return (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in text
        or "not enough memory" in text
    )


def _step_log(folder: RunFolder, rank: int, resumed_at: int | None, then=None):
    """A `log` callback appending each step's metrics to the folder's log (after `then`). A fresh
    run starts the log empty; a resumed one keeps the steps up to its saved state."""
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.restart_logs(resumed_at, rank)

    def log(m):
        folder.log(m, rank)
        if then:
            then(m)

    return log
