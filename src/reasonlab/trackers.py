"""Experiment trackers beside a run's metrics.jsonl (`--report-to`): TensorBoard, Weights & Biases,
Trackio.

Every row a trainer logs to its folder's metrics.jsonl (`RunFolder.log`) goes, on rank 0, to each
tracker asked for too: its numeric values under their own names (``loss``, ``reward/format_rate``,
``compute/flops``, ...) at the row's step; text (``skipped``), nested tables and the step itself are
left out. TensorBoard writes event files under ``OUT/tensorboard`` (``tensorboard --logdir OUT``
shows every run and stage folder below OUT), wandb its files under ``OUT/wandb``, trackio into its
own local store (``trackio show``). The trackers of a run are closed when its training ends, on
an error too, so the event file is complete.

`--report-to` takes ``auto`` (TensorBoard when the ``tensorboard`` package is installed, else
nothing), ``none``, or names, comma-separated. A tracker asked for by name whose package is missing
is one `UserError` line naming the pip command, before any work.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from .errors import UserError

# name -> (module imported, pip command)
TRACKERS = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "wandb": ("wandb", "pip install wandb"),
    "trackio": ("trackio", "pip install trackio"),
}
REPORT_TO_HELP = (
    "where each step's metrics go besides metrics.jsonl: auto (tensorboard when installed, "
    "else none), none, or any of tensorboard (OUT/tensorboard), wandb, trackio, comma-separated"
)
PROJECT = "reasonlab"  # the wandb / trackio project, unless WANDB_PROJECT / TRACKIO_PROJECT names one


def installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve(report_to: str | tuple | list) -> tuple[str, ...]:
    """The trackers `report_to` asks for, checked: an unknown name, or a tracker named whose package
    is not installed, is one `UserError` line (`auto`: tensorboard when installed, else none)."""
    if isinstance(report_to, (tuple, list)):  # names resolved before (none: an empty tuple)
        if not report_to:
            return ()
        names = [str(n) for n in report_to]
    else:
        names = [n.strip() for n in str(report_to).split(",") if n.strip()]
    if not names:
        raise UserError(f"--report-to names no tracker: give auto, none, or any of {', '.join(TRACKERS)}")
    unknown = [n for n in names if n not in (*TRACKERS, "auto", "none")]
    if unknown:
        raise UserError(
            f"--report-to: unknown tracker {unknown[0]!r}: give auto, none, or any of "
            f"{', '.join(TRACKERS)}, comma-separated"
        )
    if len(names) > 1 and {"auto", "none"} & set(names):
        raise UserError(f"--report-to {','.join(names)}: auto and none stand alone")
    if names == ["none"]:
        return ()
    if names == ["auto"]:
        return ("tensorboard",) if installed(TRACKERS["tensorboard"][0]) else ()
    for name in names:
        module, pip = TRACKERS[name]
        if not installed(module):
            raise UserError(f"--report-to {name} needs the {module} package: {pip}")
    return tuple(dict.fromkeys(names))


def scalars(row: dict) -> dict[str, float]:
    """A row's numeric values, by their names (not its step; no text, booleans or nested tables)."""
    return {
        k: float(v)
        for k, v in row.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


_open_wandb_runs = 0  # a second wandb run while one is open (rationales' rounds) needs reinit="create_new"


class Trackers:
    """The trackers `names` (from `resolve`) of the run in `folder`, with settings `config`; `log`
    each row, then `close` (or use it as a context manager). A run resumed at step `purge_step`
    hides the TensorBoard events an earlier run logged from that step on (they are logged again)."""

    def __init__(self, names, folder, config: dict | None = None, purge_step: int | None = None):
        self.folder, self.purge_step, self.writers = Path(folder), purge_step, []
        try:
            for name in names:
                self.writers.append((name, getattr(self, f"_open_{name}")(config or {})))
        except BaseException:
            self.close()
            raise

    def _open_tensorboard(self, config):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(
            log_dir=str(self.folder / "tensorboard"), purge_step=self.purge_step, flush_secs=10
        )

    def _open_wandb(self, config):
        global _open_wandb_runs
        import wandb

        again = {"reinit": "create_new"} if _open_wandb_runs else {}
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PROJECT,
            name=str(self.folder),
            dir=str(self.folder),
            config=config,
            **again,
        )
        _open_wandb_runs += 1
        return run

    def _open_trackio(self, config):
        import trackio

        return trackio.init(
            project=os.environ.get("TRACKIO_PROJECT") or PROJECT, name=str(self.folder), config=config
        )

    def log(self, row: dict, step: int | None = None) -> None:
        """`row`'s numeric values at `step` (default: the row's "step")."""
        step = row.get("step") if step is None else step
        values = scalars(row)
        if not values or step is None:
            return
        for name, writer in self.writers:
            if name == "tensorboard":
                for key, value in values.items():
                    writer.add_scalar(key, value, global_step=int(step))
            else:  # wandb and trackio runs take a dict at a step
                writer.log(values, step=int(step))

    def close(self) -> None:
        """Flush and close every tracker (again: nothing)."""
        global _open_wandb_runs
        writers, self.writers = self.writers, []
        error = None
        for name, writer in writers:
            try:
                writer.close() if name == "tensorboard" else writer.finish()
            except Exception as e:  # noqa: BLE001 - the others still close; the first error is raised after
                error = error or e
            finally:
                _open_wandb_runs -= name == "wandb"
        if error is not None:
            raise error

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
