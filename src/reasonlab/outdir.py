"""Output folders: a run writes into its own folder only, and never deletes what it did not write.

A run marks its folder with ``run.json`` (``{"command": "rl"}``). Before any work, `claim` checks
`--out`: an empty name, ``.``, ``..`` or an existing file is refused; so is an existing folder
holding files, unless it is an earlier run of the same command (which the run may continue with
``--resume`` or replace with its own files) or ``--overwrite`` is given, which means "write this
run's files into it" (files of the same names are replaced, nothing else there is touched); so is
a place that cannot be written. sft and pretrain write their checkpoint as OUT and their training
state and logs beside it, in OUT.state (`claim_checkpoint`): both are checked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserError
from .jsonl import RUN_MARKER, made_by
from .model.checkpoint import is_checkpoint_folder

OVERWRITE_HELP = "write into an --out that holds other files (they stay; files of this run's names are replaced)"


def claim(path, command: str, overwrite: bool = False, checkpoint: bool = False, flag: str = "--out") -> Path:
    """`path` checked as the folder a `reasonlab command` run writes (see the module docstring);
    one `UserError` line otherwise. With `checkpoint`, `path` is the checkpoint folder itself: an
    earlier run's is taken only while it holds nothing but checkpoint files (else its final save
    would have to refuse)."""
    text = str(path)
    out = Path(text)
    if not text.strip() or out.name in ("", ".", ".."):
        raise UserError(f"{flag} {text!r} names no folder of its own: give a new folder (e.g. {flag} runs/{command})")
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file: give a folder name")
    ours = made_by(out) == command and (not checkpoint or is_checkpoint_folder(out))
    if out.is_dir() and not overwrite and not ours and any(out.iterdir()):
        raise UserError(f"{flag} {out} already holds files that are not an earlier `reasonlab {command}` run: "
                        f"give another folder, or --overwrite to write this run's files into it (nothing else "
                        f"there is deleted)")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {flag} {out}: {existing} is not a writable folder")
    return out


def mark(folder, command: str) -> None:
    """Create `folder` (a claimed one) and record that a `command` run writes there."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if made_by(folder) != command:
            (folder / RUN_MARKER).write_text(json.dumps({"command": command}) + "\n")
    except OSError as e:
        raise UserError(f"cannot write {folder}: {e.strerror or e}") from None


def claim_checkpoint(out, command: str, overwrite: bool = False) -> Path:
    """sft and pretrain: claim checkpoint folder OUT and state folder OUT.state; returns the state
    folder (`mark` it when training starts: OUT itself is written at the end, with its marker)."""
    out = claim(out, command, overwrite, checkpoint=True)
    return claim(out.with_name(out.name + ".state"), command, overwrite, flag="the state folder")
