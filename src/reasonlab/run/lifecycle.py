"""`Run`: one training run from start to stop, the same for every trainer.

A trainer (`train.loop.train_supervised`, `rl.trainer.train_grpo`) owns its model, optimiser and
data; the run owns the bookkeeping around them, nanoGPT's `train.py` loop less the model:

1. start or resume (`resume`, `start`): the saved state checked against the run's settings, the
   step, clock and compute carried on, the logs trimmed to the steps kept;
2. after each update (`updated`): count non-finite updates in a row, remember the step boundary
   (`mark`: what a failure saves);
3. end each step (`end_step`): the time and FLOP budgets and the last step (one decision, rank
   0's, for every rank), the evaluation cadence, the log (metrics file, trackers, `log`,
   `progress`), the periodic save (`SaveClock`), the divergence stop;
4. on a failure (`saving_on_failure`), save the last boundary and say how to resume;
5. at the end (the context manager), close the trackers, on an error too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict

from .. import compute
from ..errors import UserError
from ..jsonl import logged_step
from ..outdir import RunFolder
from ..runtime import all_reduce_sum, broadcast_flag, world
from .optim import OptimConfig
from .state import SaveClock, discard_training_state, resumable_state, save_training_state

NON_FINITE = "non-finite loss or gradient"  # what a skipped update's row says
MAX_NON_FINITE = 5  # skipped updates in a row that stop a run


class Run:
    """The lifecycle of one run (module docstring). The trainer gives:

    - `cfg`: steps, eval and save cadences, `max_seconds` (and `max_flops` where it has one);
    - `folder`: the run folder (every rank: its state/ is where states go), or None;
    - `config`: the settings a resume must not change (`check_resume`), kept in every state;
    - `cost`: the model's `compute.ModelCost`, weighing the `ledger`'s tokens as FLOPs;
    - `position()`: where the trainer's data and RNGs stand at a step boundary (copied);
    - `weights()`: the state dicts of its model and optimiser (and any reference), taken at a save;
    - `keeps_state`: False where no state can be kept (FSDP2's sharded weights);
    - `every_rank_logs`: each rank logs to its own metrics file (rank r > 0: metrics.rank{r}.jsonl);
      else rank 0 alone logs, calls `log` and `progress`;
    - `aliases(row)`: other names for a row's values, added to every row logged (GRPO: TRL's);
    - `eval_at_flops`: FLOP marks to evaluate at besides the cadence, each at the first step whose
      cost reaches it (where a run with that `max_flops` would stop: a study reads several budgets
      off one run).
    """

    def __init__(
        self,
        cfg: OptimConfig,
        folder: RunFolder | None,
        config: dict,
        *,
        cost: compute.ModelCost,
        position: Callable[[], dict],
        weights: Callable[[], dict],
        keeps_state: bool = True,
        every_rank_logs: bool = False,
        aliases: Callable[[dict], dict] | None = None,
        log: Callable[[dict], None] | None = None,
        progress: Callable[[dict], None] | None = None,
        eval_at_flops: Sequence[float] = (),
    ):
        self.cfg, self.config, self.cost = cfg, config, cost
        self.marks = sorted(eval_at_flops)  # the FLOP marks not yet evaluated at
        self.position, self.weights, self.aliases = position, weights, aliases
        self.rank = world()[0]
        logs_here = every_rank_logs or self.rank == 0
        self.logs = folder if logs_here else None  # where this rank's rows go
        self.log, self.progress = (log, progress) if logs_here else (None, None)
        self.state_dir = folder.state if folder else None
        self.clock = SaveClock(cfg, enabled=folder is not None and keeps_state)
        self.can_save = folder is not None and keeps_state and self.rank == 0
        self.ledger = compute.Ledger()  # what the run's steps cost (`compute/flops`), across resumes
        self.first, self.bad_in_a_row, self.started = 0, 0, time.monotonic()
        self.metrics: dict = {}  # the last row shown: what the trainer returns
        self.good: dict = {}  # the state at the last step boundary, but for the weights (`mark`)

    # ---- 1) start or resume -----------------------------------------------------------------------

    def resume(self) -> dict | None:
        """`--resume`: the saved state, checked against `config` (`check_resume`), or None (said on
        stderr) when there is none. The trainer loads its parts from it, then calls `start`."""
        return resumable_state(self.state_dir, self.config) if self.state_dir else None

    def start(self, state: dict | None, resume: bool) -> None:
        """Start the run at step 0, or carry on from `state` (its step, elapsed time, compute and
        non-finite count); then make the logs this run's: a fresh run empties them and drops an
        earlier run's states, a resumed one keeps the rows up to its state and shows the last."""
        elapsed = 0.0
        if state:
            self.first, self.bad_in_a_row = state["step"], state.get("bad_in_a_row", 0)
            self.ledger.restore(state.get("compute", {}))  # an old state without pairs restores 0
            elapsed = state.get("seconds", 0.0)
            if self.marks:  # those passed before the stop are done
                self.marks = [m for m in self.marks if m > self.flops()]
        if self.logs:
            self.logs.path.mkdir(parents=True, exist_ok=True)
            self.logs.restart_logs(self.first or None, self.rank)
            if not resume and self.rank == 0:
                discard_training_state(self.logs.state)  # a later --resume never takes another run's
            if self.first:  # all there is to return when the run had already finished
                self.metrics = logged_step(self.logs.log_file(self.rank), self.first)
                if self.progress and self.metrics:
                    self.progress(self.metrics)
        self.started = time.monotonic() - elapsed  # --max-seconds counts on across a resume
        self.mark(self.first)

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def flops(self) -> float:
        """What every rank's steps have cost so far (a collective call)."""
        return all_reduce_sum(self.ledger.flops(self.cost))

    # ---- 2) step boundaries and failures ----------------------------------------------------------

    def mark(self, step: int, seconds: float | None = None) -> None:
        """Remember the state after `step` steps, but for the weights (taken when it is saved): call
        it where the weights and the trainer's position agree."""
        self.good = {
            **self.position(),
            "step": step,
            "bad_in_a_row": self.bad_in_a_row,
            "config": self.config,
            "seconds": self.seconds() if seconds is None else seconds,
            "compute": asdict(self.ledger),
        }

    def updated(self, done: int, finite: bool) -> None:
        """Step `done`'s update was applied, or skipped (`finite` False: a NaN/inf loss or gradient):
        count the skipped ones in a row, and mark the new boundary."""
        self.bad_in_a_row = 0 if finite else self.bad_in_a_row + 1
        self.mark(done)

    @contextmanager
    def saving_on_failure(self):
        """Turn an error in the block into one line that says how to resume, after saving the last
        boundary (`failed_run`; rank 0, where a state can be kept)."""
        try:
            yield
        except (Exception, KeyboardInterrupt) as e:
            save = self.save if self.can_save else None
            stop = failed_run(e, save, self.state_dir, self.good["step"])
            if stop is e:
                raise
            raise stop from e

    def save(self) -> None:
        """Write the state at the last boundary, with the weights as they are now."""
        save_training_state(self.state_dir, {**self.weights(), **self.good})

    # ---- 3) the end of a step ---------------------------------------------------------------------

    def end_step(self, done: int, metrics: dict, evaluate=None, samples=None, trained: bool = True) -> bool:
        """After step `done`: decide whether it is the last, evaluate when due, log its `metrics`
        (and `samples()`'s rows, if any, to samples.jsonl), save when due, stop a diverging run. Returns True
        when the run stops here. A step that `trained` nothing (GRPO: every group flat) is logged
        and stops on the FLOP budget alone: no evaluation, no save."""
        if not trained:  # the weights are the last step's: a mark passed here is evaluated on them
            if evaluate and self._passed_mark(metrics):
                metrics.update({**evaluate(), "seconds": self.seconds()})
            self.show(metrics)
            return self._over_flops(metrics)
        self.mark(done, metrics["seconds"])  # what a save now writes
        # every rank stops together: rank 0's clock decides (a collective call)
        last = broadcast_flag(
            done == self.cfg.steps
            or bool(self.cfg.max_seconds and metrics["seconds"] >= self.cfg.max_seconds)
            or self._over_flops(metrics)
        )
        marked = self._passed_mark(metrics)
        if evaluate and ((self.cfg.eval_every and done % self.cfg.eval_every == 0) or last or marked):
            metrics.update(evaluate())
        if samples and self.logs and (rows := samples()):
            self.logs.append(self.logs.samples, rows)
        self.show(metrics)  # before the state: a run resumed from it finds this step's row
        if self.clock.due(done) and self.rank == 0:  # every rank asks: a collective call
            self.clock.save(self.save)
        stop_if_diverged(self.bad_in_a_row, done)  # after the row: the 5th skipped step is logged too
        return last

    def skip_update(self, done: int) -> None:
        """Step `done`'s update was skipped before it had metrics (a non-finite loss or gradient):
        one row says so, in the log only, and `MAX_NON_FINITE` in a row stop the run."""
        self.write({"step": done, "skipped": NON_FINITE})
        stop_if_diverged(self.bad_in_a_row, done)

    def _passed_mark(self, metrics: dict) -> bool:
        """Has this step's cost reached an `eval_at_flops` mark not yet evaluated at (dropped now)?"""
        if not self.marks:
            return False
        passed = [m for m in self.marks if metrics["compute/flops"] >= m]
        self.marks = self.marks[len(passed) :]
        return bool(passed)

    def _over_flops(self, metrics: dict) -> bool:
        limit = getattr(self.cfg, "max_flops", 0.0)  # GRPO's budget; supervised runs have none
        return bool(limit and metrics["compute/flops"] >= limit)

    # ---- the log ----------------------------------------------------------------------------------

    def write(self, row: dict) -> None:
        """`row` to the folder's log and trackers (`RunFolder.log`) and to `log`, with its `aliases`
        added in place (the caller's copy has them too)."""
        if self.aliases:
            row.update(self.aliases(row))
        if self.logs:
            self.logs.log(row, self.rank)
        if self.log:
            self.log(row)

    def show(self, row: dict) -> None:
        """`write` it, hand it to `progress`, and keep it as the run's last metrics."""
        self.write(row)
        if self.progress:
            self.progress(row)
        self.metrics = row

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        if self.logs:
            self.logs.close()  # the trackers: complete event files, on an error too


def stop_if_diverged(bad_in_a_row: int, step: int) -> None:
    """Stop a run whose last `MAX_NON_FINITE` updates were all skipped for a NaN/inf loss or gradient,
    with one line (a UserError: exit code 2); the states saved before it are intact for `--resume`."""
    if bad_in_a_row >= MAX_NON_FINITE:
        raise UserError(
            f"step {step}: {MAX_NON_FINITE} non-finite losses or gradients in a row: stopping (lower --lr?)"
        )


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
