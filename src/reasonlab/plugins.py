"""Your own code on the command line: `--import MODULE` (tasks, verifiers, rewards it registers) and
``MODULE:FUNCTION`` rewards.

A module is imported by name (``my_tasks``, ``pkg.rewards``) or from a file (``path/to/my_tasks.py``);
the working folder is searched first, as ``python -m`` does. A run records what it imported in its
checkpoint (``train_config.json``: ``task.imports``), so ``eval`` and ``serve`` on the checkpoint
import the same modules again before they look for its task.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from .errors import UserError


def import_module(name: str, flag: str = "--import"):
    """The module `name` (a dotted name or a ``.py`` file), imported once; one UserError line when it
    cannot be found or fails to import."""
    if os.getcwd() not in sys.path and "" not in sys.path:  # `reasonlab` is a script: cwd is not on the path
        sys.path.insert(0, os.getcwd())
    try:
        if name.endswith(".py"):
            return import_file(Path(name))
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise UserError(
                f"{flag} {name}: no module {e.name!r} (run from its folder, or pip install it)"
            ) from None
        raise UserError(f"{flag} {name}: importing it failed: {e}") from None
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing: one line naming it
        raise UserError(f"{flag} {name}: importing it failed ({type(e).__name__}: {e})") from None


def import_file(path: Path):
    if not path.is_file():
        raise UserError(f"--import {path}: no such file")
    name = path.stem
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_modules(names) -> list[str]:
    """Import each of `names` (``--import``, repeatable); returns them as a checkpoint records them
    (files by their absolute path, so a later command finds them from any folder)."""
    recorded = []
    for name in names or []:
        import_module(name)
        recorded.append(str(Path(name).resolve()) if name.endswith(".py") else name)
    return recorded


def recorded_imports(model: str) -> list[str]:
    """The modules a checkpoint's run imported (``--import``), from its train_config.json."""
    if not model:
        return []
    from .model.checkpoint import recorded_task

    try:
        spec = recorded_task(model)
    except (UserError, OSError, ValueError):
        return []
    return list(spec.get("imports", [])) if isinstance(spec, dict) else []
