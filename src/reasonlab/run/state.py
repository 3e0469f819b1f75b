"""A run's resumable state on disk: atomic saves (and why a write failed), when to save
(`SaveClock`), loading with a fall-back to the previous state, and the checks that a resume
continues the same run on the same data (`check_resume`, the content hashes). `lifecycle.Run`
decides what goes in a state and when; `train.rationales` keeps its rounds with these too."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import UserError
from ..runtime import broadcast_flag, world

if TYPE_CHECKING:
    from .optim import OptimConfig


STATE, PREVIOUS = "state.pt", "state.prev.pt"


def save_training_state(folder, state: dict) -> None:
    """Write `state` to folder/state.pt atomically, keeping the previous one as state.prev.pt. A
    failed write (a full disk, a read-only folder) removes its temporary file, leaves the saved
    states as they were, and is one `UserError`."""
    folder = Path(folder)
    if any(not torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()):
        raise ValueError("refusing to save a training state with NaN or inf weights")
    tmp = folder / f"{STATE}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if (folder / STATE).exists():
            os.replace(folder / STATE, folder / PREVIOUS)
        os.replace(tmp, folder / STATE)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        written = tmp.stat().st_size if tmp.exists() else 0
        _remove_quietly(tmp)
        raise UserError(
            f"cannot write the training state {folder / STATE}: {write_failure(e, folder, written)} "
            "(the states saved before are kept)"
        ) from None


class SaveClock:
    """When a trainer writes its resumable state: after every `save_every`-th step, and once
    `save_minutes` of wall time have passed since the last save (the interval stretched to 20x the
    last save's duration: saving stays under 5% of the run). Off (`enabled` False) where no state
    can be kept (no run folder; FSDP2). Every rank must call `due` at every step: rank 0's clock
    decides for all (a collective)."""

    def __init__(self, cfg: OptimConfig, enabled: bool = True):
        self.every, self.enabled = cfg.save_every, enabled
        self.interval = 60 * getattr(cfg, "save_minutes", 0.0)
        self.last, self.cost = time.monotonic(), 0.0

    def due(self, step: int) -> bool:
        if not self.enabled:
            return False
        by_steps = bool(self.every) and step % self.every == 0
        by_time = bool(self.interval) and time.monotonic() - self.last >= max(self.interval, 20 * self.cost)
        return broadcast_flag(by_steps or by_time)

    def save(self, write: Callable[[], None]) -> None:
        """Run `write` (a state save), timing it."""
        began = time.monotonic()
        write()
        self.last = time.monotonic()
        self.cost = self.last - began


def data_fingerprint(examples: list[tuple[list[int], list[int]]]) -> str:
    """A hash of the training examples' token ids: a resume on data whose content changed (even at
    the same size) is refused (`check_resume`)."""
    digest = hashlib.sha256()
    for prompt, completion in examples:
        digest.update(array("q", prompt).tobytes() + b"|" + array("q", completion).tobytes() + b";")
    return digest.hexdigest()[:16]


def write_failure(error: BaseException, folder: Path, written: int = 0) -> str:
    """Why a write into `folder` failed, in words: torch.save's RuntimeError on a full disk reads
    "[enforce fail at inline_container.cc] unexpected pos", which names no cause."""
    if getattr(error, "strerror", None):
        return error.strerror
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return str(error)
    if free < max(written, 1 << 20):
        return (
            f"no space left on the device ({free / 2**20:.0f} MB free after {written / 2**20:.0f} MB written)"
        )
    if "unexpected pos" in str(error):
        return f"the write stopped short, as on a full disk ({free / 2**20:.0f} MB free now)"
    return str(error)


def _remove_quietly(file: Path) -> None:
    try:
        file.unlink(missing_ok=True)
    except OSError:
        pass


# What a resumed run may change: how far it goes, and how often it evaluates and saves. `resume`,
# `overwrite`, `out`, `report_to` and `log_completions` are how a run is started and watched, not
# settings of the run.
RESUMABLE = ("steps", "max_seconds", "max_flops", "eval_every", "save_every", "save_minutes")
NOT_SETTINGS = ("resume", "overwrite", "out", "report_to", "log_completions")


def task_setting(task) -> dict:
    """A run's task as a setting `check_resume` compares: its name and options (`get_task`'s spec),
    and a hash of the content of the files it reads its problems from, if any."""
    setting = {"task": getattr(task, "spec", None) or {"name": getattr(task, "name", type(task).__name__)}}
    files = task.data_files() if hasattr(task, "data_files") else []
    if files:
        setting["task_data"] = files_fingerprint(files)
    return setting


def files_fingerprint(files) -> str:
    """A hash of the files' content (read in 1 MB blocks)."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def check_resume(saved: dict | None, now: dict, where) -> None:
    """Refuse, with one line naming each setting and both values, to resume a run saved with
    settings `saved` under other settings `now` (beyond `RESUMABLE`): it would mix two runs."""
    saved = saved or {}
    changed = [k for k in now if k in saved and k not in RESUMABLE + NOT_SETTINGS and saved[k] != now[k]]
    if changed:
        shown = ", ".join(f"{k} {saved[k]!r} (now {now[k]!r})" for k in changed)
        flags = ["--" + k.replace("_", "-") for k in RESUMABLE if k in now]
        raise UserError(
            f"--resume: the run in {where} was made with {shown}; only {', '.join(flags[:-1])} and "
            f"{flags[-1]} may change on a resume: give the same settings, or start afresh without --resume"
        )


def resumable_state(state_dir, config: dict) -> dict | None:
    """`--resume`: the newest state in `state_dir`, made with the same `config` (`check_resume`);
    None, said on stderr, when there is none."""
    state = load_training_state(state_dir)
    if state is None:
        nothing_to_resume(state_dir)
        return None
    check_resume(state.get("config"), config, state_dir)
    return state


def nothing_to_resume(where) -> None:
    if world()[0] == 0:
        print(f"note: nothing to resume in {where}: starting fresh", file=sys.stderr)


def discard_training_state(folder) -> None:
    """A run starting afresh drops the states an earlier run left in its folder, so a later
    `resume` never picks up that other run."""
    for name in (STATE, PREVIOUS):
        Path(folder, name).unlink(missing_ok=True)


def load_training_state(folder) -> dict | None:
    """The newest readable state in `folder` (state.pt, else state.prev.pt), or None if there is
    none. A corrupt file is reported on stderr and skipped."""
    folder = Path(folder)
    for name in (STATE, PREVIOUS):
        file = folder / name
        if not file.exists():
            continue
        try:
            return torch.load(file, map_location="cpu", weights_only=False)  # loaders move it to the model
        except Exception as e:  # truncated or corrupt: fall back to the previous good one
            print(
                f"warning: training state {file} is unreadable ({type(e).__name__}); trying an older one",
                file=sys.stderr,
            )
    return None
