"""Configs are dataclasses: settable from a file (`--config run.toml` or `.json`) and from the
command line (each field is a `--flag`), with the command line winning. Help text comes from each
field's ``metadata={"help": ...}``; the resolved config is saved beside every checkpoint.

Each field states its limits once, in the same metadata, and `check_options` enforces them before
any work starts: ``"min"`` / ``"max"`` (inclusive), ``"above"`` (exclusive lower bound),
``"choices"``, ``"nonempty"`` (a string that may not be ""); every float must be finite, and
within float32's range.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path

from .errors import UserError
from .jsonl import input_file


FRACTION = {"min": 0, "max": 1}  # limits of a share: **FRACTION in a field's metadata
SEED = {"min": 0, "max": 2**32 - 1}
FLOAT32_MAX = 3.4028234663852886e38


def unwrap_optional(hint):
    """(type, optional): `int | None` -> (int, True), `int` -> (int, False)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0], True
    return hint, False


def value_fits(kind, value) -> bool:
    """Whether a parsed value (from a file or KEY=VALUE) suits an option of type `kind`: an int
    takes no bool, a float takes ints too; other types are not checked."""
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (str, bool):
        return isinstance(value, kind)
    return True


def _field_type(cls, f: dataclasses.Field):
    return unwrap_optional(typing.get_type_hints(cls)[f.name])


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_file_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="read options from a .toml or .json file (any of this "
                        "command's options, by their names with _ for -; the command line wins)")


def add_config_args(parser: argparse.ArgumentParser, cls) -> None:
    """One `--flag` per field of dataclass `cls` (default: unset, so files and defaults apply)."""
    add_config_file_arg(parser)
    for f in dataclasses.fields(cls):
        kind, _ = _field_type(cls, f)
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            base = kind if kind in (int, float, str) else str
            parser.add_argument(_flag(f.name), dest=f.name, type=base, default=None,
                                metavar=f.name.upper(), help=help_text)


def _coerce(cls, f: dataclasses.Field, value, source: str):
    kind, optional = _field_type(cls, f)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not value_fits(kind, value):
        raise UserError(f"{source}: option {f.name!r} must be {kind.__name__}, got {value!r}")
    return value


def _limit_error(f: dataclasses.Field, value) -> str | None:
    """What is wrong with `value` for field `f` by its metadata's limits, or None."""
    limits = f.metadata
    if isinstance(value, float) and not abs(value) <= FLOAT32_MAX:  # NaN too; tensors hold float32
        return "must be a finite number (at most 3.4e38 in size)"
    if "choices" in limits and value not in limits["choices"]:
        return "must be one of " + ", ".join(map(str, limits["choices"]))
    if limits.get("nonempty") and value == "":
        return "must not be empty"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if "min" in limits and value < limits["min"]:
        return f"must be >= {limits['min']}"
    if "above" in limits and value <= limits["above"]:
        return f"must be > {limits['above']}"
    if "max" in limits and value > limits["max"]:
        return f"must be <= {limits['max']}"
    return None


def check_options(config) -> None:
    """Refuse, with one line, any field of dataclass `config` outside its metadata's limits."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is not None and (problem := _limit_error(f, value)) is not None:
            raise UserError(f"{_flag(f.name)} {problem}, got {value!r}")


def build_config(cls, args: argparse.Namespace | None = None, file: str | Path | None = None, **overrides):
    """Defaults <- file <- command-line flags <- overrides; unknown keys and wrong types are errors."""
    values: dict = {}
    file = file or (getattr(args, "config", None) if args else None)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if file:
        values.update(_read_file(Path(file), fields))
    if args is not None:
        values.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    values.update(overrides)
    for name, value in values.items():
        values[name] = _coerce(cls, fields[name], value, str(file) if file else "option")
    try:
        config = cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    check_options(config)
    return config


def _read_file(path: Path, known) -> dict:
    """The options in config file `path` (TOML, or JSON); a key not in `known` is a UserError."""
    text = input_file(path, "config file").read_text(encoding="utf-8", errors="replace")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"config file {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a table of options")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"config file {path}: unknown option(s) {', '.join(unknown)}; "
                        f"known: {', '.join(known)}")
    return data


def merge_config_file(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """`--config FILE` for any command: each option of `parser` (the command's own, such as
    ``--device``, ``--task-arg`` or ``--model``, as well as its config's fields) that the command line
    `argv` did not give takes the file's value, type-checked as the option's own. The file is then
    consumed (``args.config`` = None), so `build_config` takes every value from `args`."""
    if not getattr(args, "config", None):
        return
    path = Path(args.config)
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config", "debug")}
    data = _read_file(path, actions)
    given = _given_on_command_line(parser, argv, actions)
    for key, value in data.items():
        value = None if value is None else _option_value(actions[key], value, path)  # checked even when overridden
        if key not in given and value is not None:
            setattr(args, key, value)
    args.config = None


def _given_on_command_line(parser, argv: list[str], actions: dict) -> set[str]:
    """The dests in `actions` that `argv` sets (a default, even one equal to the value, is not)."""
    unset = {dest: [] for dest in actions}  # fresh objects: a value that is one was never parsed
    saved = {dest: action.default for dest, action in actions.items()}
    for dest, action in actions.items():
        action.default = unset[dest]
    try:
        parsed = parser.parse_args(argv)
    finally:
        for dest, action in actions.items():
            action.default = saved[dest]
    return {dest for dest in actions if getattr(parsed, dest) is not unset[dest]}


def _option_value(action: argparse.Action, value, source: Path):
    """A config file's `value` for argparse option `action`, checked against what its flag takes."""
    if isinstance(action, argparse._AppendAction):  # --task-arg: a list of "KEY=VALUE", or a table
        items = [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) else value
        if isinstance(items, list) and all(isinstance(v, str) for v in items):
            return items
        raise UserError(f"{source}: option {action.dest!r} must be a list of KEY=VALUE strings or a table, got {value!r}")
    kind = bool if action.nargs == 0 else (action.type or str)
    if not value_fits(kind, value):
        raise UserError(f"{source}: option {action.dest!r} must be {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
