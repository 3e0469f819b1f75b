"""JSONL in and out: line-numbered errors on the way in, atomic writes on the way out."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import tempfile
from pathlib import Path

from .errors import UserError


def input_file(path, what: str = "file") -> Path:
    """`path` if it is a file; else one UserError saying it is a folder, or not there."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder, not a file")
    if path.exists() and not path.is_file():  # /dev/zero, a FIFO: reading it never ends
        raise UserError(f"{what} {str(path)!r} is not a regular file")
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} not found")
    return path


def iter_jsonl(path):
    """(line number, object) for every non-blank line, read one line at a time (a file of any size);
    a bad line (not UTF-8, not JSON, not an object) raises UserError naming it."""
    path = input_file(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path}:{lineno}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, row


def read_jsonl(path) -> list[tuple[int, dict]]:
    """Every row of `iter_jsonl`, as a list; an input with no rows is a UserError."""
    rows = list(iter_jsonl(path))
    if not rows:
        raise UserError(f"{path}: no input lines")
    return rows


def read_log(path) -> list[dict]:
    """The objects of an append-only log a run writes line by line (``metrics.jsonl``): [] when the
    file is not there; a torn last line (the run was killed while writing it) is left out with a
    warning; a bad line anywhere else raises UserError naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if lineno == len(lines):
                print(
                    f"warning: {path}:{lineno}: left out a torn last line (the run stopped while writing it)",
                    file=sys.stderr,
                )
                break
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(rows[-1], dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object")
    return rows


def logged_step(path, step: int) -> dict:
    """The row a run logged for `step` in its log (the last such row), or {}: where a resumed run
    picks up its metrics (all there is when the run had already finished)."""
    return next((row for row in reversed(read_log(path)) if row.get("step") == step), {})


def trim_log(path, keep) -> None:
    """Rewrite an append-only log with only the rows `keep(row)` accepts (torn or bad lines go too):
    a run resuming from a saved state drops what it logged after that state, before it logs again."""
    path = Path(path)
    if not path.is_file():
        return
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and keep(row):
            rows.append(row)
    write_jsonl_atomic(path, rows)


def read_json(path) -> dict:
    """One JSON object from a file, or UserError naming the file."""
    try:
        data = json.loads(input_file(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def write_jsonl_atomic(path, rows) -> None:
    """Write JSONL to a temporary file beside `path`, fsync, then rename: never a half file."""
    with jsonl_writer(path) as write:
        for row in rows:
            write(row)


@contextlib.contextmanager
def jsonl_writer(path):
    """``with jsonl_writer(path) as write: write(row)...``: rows stream to a temporary file beside
    `path`, fsynced and renamed onto `path` when the block ends; an error inside the block leaves
    `path` as it was and no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, existing_mode(path, plain_mode()))  # not mkstemp's 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield lambda row: f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.cache
def current_umask() -> int:
    """The process's umask, read once (`os.umask` can only be read by setting it, then restored)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plain_mode(folder: bool = False) -> int:
    """The mode a plain ``open(path, "w")`` (or ``mkdir``, `folder`) gives under the current umask:
    what a file or folder made with `tempfile.mkstemp` / `mkdtemp` (always 0600 / 0700) and renamed
    into place is set to, so outputs written atomically look like any other."""
    return (0o777 if folder else 0o666) & ~current_umask()


def existing_mode(path, default: int) -> int:
    """The permission bits of the file at `path` when there is one (a file rewritten in place keeps
    them), else `default`."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return default


RUN_MARKER = "run.json"  # {"command", "config"}: which reasonlab command made a folder, how (see `outdir`)


def run_marker(folder) -> dict:
    """What `folder`'s run marker holds ({} when it has none, or one that is not a JSON object)."""
    try:
        marker = json.loads((Path(folder) / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def made_by(folder) -> str | None:
    """The command whose run marker `folder` holds, or None."""
    return run_marker(folder).get("command")


def run_config(folder) -> dict | None:
    """The settings a run recorded in its folder's run marker, or None."""
    config = run_marker(folder).get("config")
    return config if isinstance(config, dict) else None
