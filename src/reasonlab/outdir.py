"""Output folders: one layout for every run, and a run never deletes what it did not write.

Every training command (`pretrain`, `sft`, `rl`, `rationales`) writes its ``--out`` folder, and
each stage of a demo or of a Method 1 round writes its own, in one layout (`RunFolder`)::

    run.json       {"command": "rl", "config": {...}}: the command that made the folder, and its settings
    metrics.jsonl  one row a step (a round, for rationales); under torchrun rank r > 0 writes
                   metrics.rank{r}.jsonl
    samples.jsonl  completions sampled along the way (rl: --log-completions groups a step, with
                   their prompts, reward parts and verdicts)
    state/         the resumable training state (state.pt, and the one before it, state.prev.pt)
    model/         the trained checkpoint, written at the end (`--model OUT` finds it)
    report.html    `reasonlab report OUT`
    tensorboard/   TensorBoard event files of metrics.jsonl's rows (`--report-to`, see `trackers`)

Before any work, `claim` checks ``--out`` (``~`` expanded): an empty name, ``.``, ``..``, an
existing file or a broken symbolic link is refused; so is an existing folder holding files, unless
it is an earlier run of the same command, which the run continues with ``--resume`` or replaces
with ``--overwrite`` (a fresh run never deletes an earlier run's results unasked), or
``--overwrite`` is given, which means "write this run's files into it" (files of the same names are
replaced, nothing else there is touched); so is a place that cannot be written.

A folder is owned by one run at a time: `claim` takes an exclusive lock (``flock``) on its
``.lock`` file, which the kernel releases when the process ends however it ends (a `kill -9` leaves
no stale lock), so a second run into the same folder is refused in one line naming the first.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import trackers
from .errors import UserError
from .jsonl import RUN_MARKER, made_by, trim_log

TRAIN_CONFIG = "train_config.json"
# What a checkpoint folder may hold (ours, or a Hugging Face model's): only such a folder is replaced.
CHECKPOINT_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    TRAIN_CONFIG,
    RUN_MARKER,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
}
SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")


def is_checkpoint_folder(path) -> bool:
    """Whether `path` is a folder `save_checkpoint` may replace: empty, or only checkpoint files
    (config.json among them)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    entries = list(path.iterdir())
    return not entries or (
        (path / "config.json").is_file()
        and all(e.is_file() and (e.name in CHECKPOINT_FILES or SHARD.fullmatch(e.name)) for e in entries)
    )


OVERWRITE_HELP = (
    "write into an --out that holds other files (they stay; files of this run's names are replaced)"
)


def out_field(default: str):
    """`--out`, defaulting to `default` (each command has its own)."""
    return field(
        default=default,
        metadata={
            "help": "the run's folder (run.json, metrics.jsonl, state/, model/); an "
            "earlier run of this command there is continued (--resume) or "
            "replaced, anything else refused"
        },
    )


@dataclass
class RunOptions:
    """--out, --resume, --overwrite and --report-to: where a training command writes (a command sets
    its own `out = out_field(...)` default), and which trackers get its metrics too."""

    out: str = out_field("runs/run")
    resume: bool = field(
        default=False,
        metadata={
            "action": "store_true",
            "help": "continue a stopped run from OUT/state (saved every --save-minutes and "
            "--save-every steps, and when a step fails); the settings must be the same but for "
            "--steps, --max-seconds, --eval-every and --save-every (and --report-to)",
        },
    )
    overwrite: bool = field(default=False, metadata={"action": "store_true", "help": OVERWRITE_HELP})
    report_to: str = field(default="auto", metadata={"help": trackers.REPORT_TO_HELP, "metavar": "TRACKERS"})


def claim(path, command: str, overwrite: bool = False, flag: str = "--out", resume: bool = False) -> Path:
    """`path` checked as the folder a `reasonlab command` run writes (see the module docstring) and
    locked for this process; one `UserError` line otherwise."""
    text = os.path.expanduser(str(path))
    out = Path(text)
    if not text.strip() or out.name in ("", ".", ".."):
        raise UserError(
            f"{flag} {text!r} names no folder of its own: give a new folder (e.g. {flag} runs/{command})"
        )
    if out.is_symlink() and not out.exists():
        raise UserError(
            f"{flag} {out} is a symbolic link to {os.readlink(out)}, which does not exist: "
            "remove the link or give another folder"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file: give a folder name")
    if out.is_dir() and not overwrite and made_by(out) != command and _entries(out):
        raise UserError(
            f"{flag} {out} already holds files that are not an earlier `reasonlab {command}` run: "
            f"give another folder, or --overwrite to write this run's files into it (nothing else "
            f"there is deleted)"
        )
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {flag} {out}: {existing} is not a writable folder")
    if not primary_process():  # under torchrun rank 0 checks the earlier run and holds the lock
        return out
    lock(out, flag)
    if (
        out.is_dir()
        and not (overwrite or resume)
        and made_by(out) == command
        and _entries(out) - {RUN_MARKER}
    ):
        release(out)
        raise UserError(
            f"{flag} {out} holds an earlier `reasonlab {command}` run: --resume to continue it, "
            f"--overwrite to replace its results, or give another folder"
        )
    fd = _held[out.absolute()][0]  # who holds it, for a run refused while this one goes on
    os.ftruncate(fd, 0)
    os.write(
        fd, f"pid {os.getpid()}, reasonlab {command}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode()
    )
    return out


LOCK = ".lock"  # in a run folder: flock()ed by the process that writes the folder
_held: dict[
    Path, tuple[int, bool, bool]
] = {}  # folder -> (the lock's descriptor, whether it made the folder, the file)


def _entries(folder: Path) -> set[str]:
    """The names in `folder`, but for its lock file."""
    return {p.name for p in folder.iterdir()} - {LOCK}


def primary_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def lock(folder, flag: str = "--out") -> None:
    """Lock `folder` (created if need be) for this process, or one `UserError` line naming the
    process that holds it. Taken again by the process that holds it, it is a no-op. A lock file
    this call created is removed again by `release` (a refused run leaves nothing behind)."""
    folder = Path(folder)
    key = folder.absolute()
    if key in _held:
        return
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        made_file = not (folder / LOCK).exists()
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"cannot write {flag} {folder}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 300).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise UserError(
            f"{flag} {folder} is in use by another run ({holder}): wait for it to end, or give another folder"
        ) from None
    _held[key] = (fd, made, made_file)


def release(folder) -> None:
    """Give up this process's lock on `folder`. A folder the lock made that holds nothing else is
    removed, and so is a lock file it made in a folder where no run wrote (a run that stopped or was
    refused before writing anything leaves nothing behind)."""
    key = Path(folder).absolute()
    if key not in _held:
        return
    fd, made, made_file = _held.pop(key)
    try:
        if made_file and not (key / RUN_MARKER).exists():
            (key / LOCK).unlink(missing_ok=True)
        if made and not _entries(key):
            (key / LOCK).unlink(missing_ok=True)
            key.rmdir()
    except OSError:
        pass
    os.close(fd)


def release_all() -> None:
    """Every lock this process holds (the CLI calls it as a command ends)."""
    for folder in list(_held):
        release(folder)


def mark(folder, command: str, config: dict | None = None) -> None:
    """Create `folder` (a claimed one) and record that a `command` run, with settings `config`,
    writes there."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        marker = {"command": command, **({"config": config} if config is not None else {})}
        if config is not None or made_by(folder) != command:
            tmp = folder / f"{RUN_MARKER}.tmp"
            try:
                tmp.write_text(json.dumps(marker, indent=2, default=str) + "\n")
                os.replace(tmp, folder / RUN_MARKER)
            finally:
                tmp.unlink(missing_ok=True)  # a full disk left it, and it marks the folder as not a run's
    except OSError as e:
        raise UserError(f"cannot write {folder}: {e.strerror or e}") from None


class RunFolder:
    """One run's (or one stage's) folder in the layout of the module docstring. Its step rows go
    through `log`: to metrics.jsonl, and on rank 0 to the trackers `report_to` names (`trackers`;
    default none), opened at the first row and closed by `close` (the trainers close them when
    their training ends)."""

    def __init__(self, path, command: str, report_to: str | tuple = "none"):
        self.path, self.command = Path(path), command
        self.metrics = self.path / "metrics.jsonl"
        self.samples = self.path / "samples.jsonl"
        self.state = self.path / "state"
        self.model = self.path / "model"
        self.report_to = trackers.resolve(report_to)
        self.config: dict | None = None  # the settings `start` recorded: what wandb / trackio show
        self._purge_step: int | None = (
            None  # a resumed run's first step: TensorBoard hides what came from it on
        )
        self._trackers: trackers.Trackers | None = None

    @classmethod
    def claim(
        cls, path, command: str, overwrite: bool = False, report_to: str = "none", resume: bool = False
    ) -> RunFolder:
        """The folder `--out PATH` names, checked (`claim`) before any work, and so is its model/:
        the save at the end replaces only a folder of checkpoint files (or writes into it, with
        `overwrite`); and so is `report_to` (`trackers.resolve`)."""
        folder = cls(claim(path, command, overwrite, resume=resume), command, report_to)
        if folder.model.exists() and not overwrite and not is_checkpoint_folder(folder.model):
            raise UserError(
                f"{folder.model} holds files that are not a checkpoint's: give another --out, or "
                f"--overwrite to write the model into it (nothing else there is deleted)"
            )
        return folder

    def start(self, config: dict | None = None) -> None:
        """Create the folder and write run.json with the run's settings."""
        mark(self.path, self.command, config)
        self.config = config

    def restart_logs(self, resumed_at: int | None, rank: int = 0) -> None:
        """Make the logs this run's only: a fresh run (`resumed_at` None) empties them (and drops the
        TensorBoard event files an earlier run left), a run resumed from the state after step
        `resumed_at` drops the rows logged after it (and TensorBoard hides those steps: `purge_step`)."""
        self._purge_step = None if resumed_at is None else resumed_at + 1
        for path in [self.log_file(rank)] + ([self.samples] if rank == 0 else []):
            if resumed_at is None:
                path.unlink(missing_ok=True)
            else:
                trim_log(path, lambda row: row.get("step", 0) <= resumed_at)
        if resumed_at is None and rank == 0:
            for events in (self.path / "tensorboard").glob("events.out.tfevents.*"):
                events.unlink(missing_ok=True)

    def log_file(self, rank: int = 0) -> Path:
        return self.metrics if rank == 0 else self.path / f"metrics.rank{rank}.jsonl"

    def append(self, path: Path, rows: list[dict]) -> None:
        with open(path, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")

    def log(self, row: dict, rank: int = 0, step: int | None = None) -> None:
        """One row of the run's log (a step's metrics): appended to rank `rank`'s metrics file and,
        on rank 0, given to the trackers (at `step`, default the row's "step")."""
        self.append(self.log_file(rank), [row])
        if rank == 0 and self.report_to:
            if self._trackers is None:
                purge, self._purge_step = self._purge_step, None  # once: the steps logged again stay
                self._trackers = trackers.Trackers(self.report_to, self.path, self.config, purge)
            self._trackers.log(row, step)

    def close(self) -> None:
        """Flush and close the trackers (a later `log` opens them again)."""
        opened, self._trackers = self._trackers, None
        if opened is not None:
            opened.close()
