"""Supervised training, shared by pretraining, SFT and Method 1's fine-tuning: tokenised examples,
batches with completion-only labels, and the loop (`train_supervised`). The optimiser, schedule
and the run's lifecycle (resume, saves, budgets, logging) are `run`'s, as for GRPO.

An *example* is ``(prompt_ids, completion_ids)``; the loss covers completion tokens only (pretraining
passes the whole document as the completion). Batches are right-padded: every row starts at
position 0, so no attention mask is needed (padding sits after the real tokens).
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import compute, memory
from ..config import MAX_ROWS
from ..errors import UserError
from ..outdir import RunFolder
from ..run import Run
from ..run.optim import OptimConfig, lr_at, make_optimizer, set_lr
from ..run.state import data_fingerprint
from ..runtime import (
    all_reduce_sum,
    autocast,
    clip_grad_norm,
    gathered,
    grads_finite,
    is_fsdp,
    refuse_fsdp_states,
    unwrap,
    world,
)

IGNORE = -100  # label of tokens that carry no loss (prompt, padding)
MAX_CHARS_PER_TOKEN = 64  # no tokenizer's token covers more characters (the longest BPE tokens: ~16-32)


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


def tokenize_examples(
    tokenizer, rows: list[dict], max_len: int, eos: bool = True
) -> list[tuple[list[int], list[int]]]:
    """`{"prompt", "completion"}` rows to id pairs, EOS after the completion, cut to `max_len`.
    Texts are cut to `max_len` x `MAX_CHARS_PER_TOKEN` characters first: tokenising a huge line
    whole takes memory for the whole line, not for the few tokens kept (benchmarks/README.md)."""
    chars = max_len * MAX_CHARS_PER_TOKEN
    prompts = tokenizer.encode_prompts([r["prompt"][:chars] for r in rows])
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
    _check_examples(examples)
    size = world()[1]
    refuse_fsdp_states(cfg.save_every, is_fsdp(model))
    if cfg.batch_size % size:
        raise ValueError(f"batch_size {cfg.batch_size} must divide by the {size} processes")
    units = pack(examples, cfg.max_seq_len) if cfg.packing else examples
    batches = _batch_stream(units, cfg)
    _check_step_fits(model, examples, cfg, size)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    run = _start_run(model, optimizer, batches, examples, cfg, folder, resume, settings, log, progress)
    evaluate_now = _in_eval_mode(model, evaluate)
    model.train()
    with run, run.saving_on_failure():  # a failed step saves the last good one and says how to resume
        for step in range(run.first, cfg.steps):
            set_lr(optimizer, lr_at(step, cfg))
            with compute.track(run.ledger):
                loss = _forward_backward(model, tokenizer.pad_id, batches, cfg)
            grad_norm = _apply_gradient(model, optimizer, loss, cfg)
            run.updated(step + 1, finite=grad_norm is not None)
            if grad_norm is None:  # a NaN/inf loss or gradient: nothing learned, a row says so
                run.skip_update(step + 1)
                continue
            metrics = _step_metrics(run, step, loss, grad_norm, cfg, len(units))
            if run.end_step(step + 1, metrics, evaluate_now) or (stop_when and stop_when(metrics)):
                break
    model.eval()
    return run.metrics


def _check_examples(examples: list[tuple[list[int], list[int]]]) -> None:
    if not examples:
        raise ValueError("no training examples")
    if not any(map(trainable_tokens, examples)):
        raise UserError(
            "no example has a completion token to train on (empty completions, or prompts that fill "
            "--max-seq-len)"
        )


def _start_run(model, optimizer, batches, examples, cfg, folder, resume, settings, log, progress) -> Run:
    """The run's lifecycle (`Run`), started afresh or from the saved state (weights, optimiser,
    data position, RNG) when `resume`."""
    config = {  # what a resume must not change (`check_resume`)
        **dataclasses.asdict(cfg),
        **(settings or {}),
        "examples": len(examples),
        "data": data_fingerprint(examples),
    }
    run = Run(
        cfg,
        folder,
        config,
        cost=compute.model_cost(model),
        position=lambda: {"batches": batches.state(), "torch_rng": torch.get_rng_state()},
        weights=lambda: {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict()},
        keeps_state=not is_fsdp(model),
        every_rank_logs=True,  # rank r > 0: metrics.rank{r}.jsonl
        log=log,
        progress=progress,
    )
    state = run.resume() if resume else None
    if state:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.load_state(state["batches"])
        torch.set_rng_state(state["torch_rng"])
    run.start(state, resume)
    return run


def _batch_stream(units: list, cfg: TrainConfig) -> BatchStream:
    """The run's batches: examples, or packed rows, grouped by length unless packed."""
    by_length = cfg.group_by_length and not cfg.packing
    length = (lambda u: len(u[0]) + len(u[1])) if by_length else None
    return BatchStream(units, cfg.batch_size, random.Random(cfg.seed), length=length)


def _check_step_fits(model, examples, cfg: TrainConfig, size: int) -> None:
    """Refuse, before any step, a batch whose training pass cannot fit (`memory.step_bytes`)."""
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


def _apply_gradient(model, optimizer, loss: float, cfg: TrainConfig) -> float | None:
    """The optimiser step on the clipped gradient, returning its norm; None, and no step, when the
    loss or a gradient is NaN/inf (the update is skipped, not the run)."""
    if not math.isfinite(loss) or not grads_finite(model):
        optimizer.zero_grad(set_to_none=True)
        return None
    grad_norm = clip_grad_norm(model, cfg.grad_clip or float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _step_metrics(run: Run, step: int, loss: float, grad_norm: float, cfg: TrainConfig, units: int) -> dict:
    """Step `step`'s row (a collective call: the counts are summed over ranks)."""
    return {
        "step": step + 1,
        "loss": loss,
        "lr": lr_at(step, cfg),
        "grad_norm": float(grad_norm),
        "seconds": run.seconds(),
        "compute/flops": run.flops(),
        # TRL's names: lr's, the tokens trained on so far, the passes over the examples
        "learning_rate": lr_at(step, cfg),
        "num_tokens": int(all_reduce_sum(run.ledger.trained)),
        "epoch": (step + 1) * cfg.batch_size * cfg.grad_accum / units,
    }


def _in_eval_mode(model, evaluate: Callable[[object], dict] | None):
    """`evaluate(model)` as the run calls it: in eval mode, on the whole model (FSDP2 gathers it)."""
    if evaluate is None:
        return None

    def run_evaluation() -> dict:
        model.eval()  # every rank evaluates the same model: the same stop decision everywhere
        with gathered(model) as full:
            result = evaluate(full)
        model.train()
        return result

    return run_evaluation


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
