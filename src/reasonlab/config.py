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
import os
import tomllib
import types
import typing
from pathlib import Path

from .errors import UserError
from .jsonl import input_file

FRACTION = {"min": 0, "max": 1}  # limits of a share: **FRACTION in a field's metadata
SEED = {"min": 0, "max": 2**32 - 1}
# Upper limits of sizes, checked before any work (a run may still not fit: `memory.check_fits`)
MAX_ROWS = 65536  # sequences in one batch: a micro-batch, problems per step
MAX_PROBLEMS = 10**6  # problems one evaluation draws
FLOAT32_MAX = 3.4028234663852886e38
# options naming files or folders: a leading ~ is the home folder, as in a shell
PATH_OPTIONS = {"out", "model", "data", "eval_data", "output", "input", "teacher", "judge", "run_dir"}


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
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="read options from a .toml or .json file (any of this "
        "command's options, by their names with _ for -; the command line wins)",
    )


def add_config_args(parser: argparse.ArgumentParser, cls) -> None:
    """One `--flag` per field of dataclass `cls` (default: unset, so files and defaults apply), and
    `--config` where there is an option to set. A field's metadata may give its ``"flags"``, an
    ``"action"`` (``store_true``, ``append``), a ``"metavar"``, or make it ``"positional"``."""
    fields = dataclasses.fields(cls)
    if any(not f.metadata.get("positional") for f in fields):
        add_config_file_arg(parser)
    for f in fields:
        kind, _ = _field_type(cls, f)
        meta = f.metadata
        help_text = meta.get("help", "").replace("%", "%%")  # argparse formats help with %
        if meta.get("positional"):
            parser.add_argument(f.name, help=help_text or None)
            continue
        flags = meta.get("flags", (_flag(f.name),))
        if "action" in meta:
            extra = {"metavar": meta["metavar"]} if "metavar" in meta else {}
            parser.add_argument(
                *flags, dest=f.name, action=meta["action"], default=None, help=help_text, **extra
            )
        elif kind is bool:
            parser.add_argument(
                *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            base = kind if kind in (int, float, str) else str
            parser.add_argument(
                *flags,
                dest=f.name,
                type=base,
                default=None,
                metavar=meta.get("metavar", f.name.upper()),
                help=help_text,
            )


def _coerce(cls, f: dataclasses.Field, value, source: str):
    kind, optional = _field_type(cls, f)
    if value is None and optional:
        return None
    if f.metadata.get("action") == "append":  # --task-arg: a list of "KEY=VALUE", or (in a file) a table
        items = [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) else value
        if isinstance(items, list) and all(isinstance(v, str) for v in items):
            return items
        raise UserError(
            f"{source}: option {f.name!r} must be a list of KEY=VALUE strings or a table, got {value!r}"
        )
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
    """Defaults <- file <- command-line flags <- overrides; unknown keys and wrong types are errors
    (a file's value is checked even where the command line overrides it)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    file = file or (getattr(args, "config", None) if args else None)
    values: dict = {}
    if file:
        settable = {name: f for name, f in fields.items() if not f.metadata.get("positional")}
        data = _read_file(Path(file), settable)
        values.update({k: _coerce(cls, fields[k], v, str(file)) for k, v in data.items() if v is not None})
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None} if args is not None else {}
    for name, value in {**given, **overrides}.items():
        values[name] = _coerce(cls, fields[name], value, "option")
    for name in PATH_OPTIONS & values.keys():  # `out = "~/x"` in a file: no shell expanded it
        if isinstance(values[name], str):
            values[name] = os.path.expanduser(values[name])
    try:
        config = cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    check_options(config)
    return config


def narrow(config, cls):
    """The `cls` part of `config` (a command's options holding `cls`'s fields: `flat_options`)."""
    try:
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


def _copied(f: dataclasses.Field) -> dataclasses.Field:
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory, metadata=f.metadata)
    return dataclasses.field(default=f.default, metadata=f.metadata)


def flat_options(name: str, *parts: type, doc: str, **own) -> type:
    """A command's options as one flat dataclass, no base classes: the fields of each dataclass in
    `parts`, in order, then `own`. An `own` entry is either a part's field with this command's
    default or help (a `dataclasses.field`, e.g. ``out=out_field("runs/rl")``) or a field only this
    command has (a ``(type, field)`` pair). A name two parts both declare is an error: with mixins,
    the last base silently won. Each part's own checks (its ``__post_init__``) run on the values
    when the options are built; `narrow(options, part)` gives the part back."""
    spec: dict[str, tuple] = {}
    for part in parts:
        hints = typing.get_type_hints(part)
        for f in dataclasses.fields(part):
            if f.name in spec and f.name not in own:
                raise TypeError(f"{name}: {spec[f.name][0].__name__} and {part.__name__} both set {f.name!r}")
            spec[f.name] = (part, hints[f.name], _copied(f))
    for key, value in own.items():
        if isinstance(value, tuple):
            spec[key] = (None, *value)
        elif key in spec:
            spec[key] = (spec[key][0], spec[key][1], value)
        else:
            raise TypeError(f"{name}: {key!r} is in none of its parts: give it as (type, field)")
    checked = [part for part in parts if hasattr(part, "__post_init__")]

    def __post_init__(self):
        check_options(self)
        for part in checked:  # e.g. GRPOConfig's cross-field checks, on this command's values
            narrow(self, part)

    fields = [(key, kind, f) for key, (_, kind, f) in spec.items()]
    namespace = {"__post_init__": __post_init__, "__doc__": doc, "parts": parts}
    cls = dataclasses.make_dataclass(name, fields, namespace=namespace)
    cls.__module__ = "reasonlab.options"
    return cls


def _read_file(path: Path, known) -> dict:
    """The options in config file `path` (TOML, or JSON); a key not in `known` is a UserError."""
    path = Path(os.path.expanduser(str(path)))
    if path.suffix.lower() in (".yaml", ".yml"):
        raise UserError(
            f"config file {path}: YAML is not read; write the options as TOML (.toml) or JSON (.json)"
        )
    text = input_file(path, "config file").read_text(encoding="utf-8", errors="replace")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path}: not valid TOML ({e})") from None
    except json.JSONDecodeError as e:
        kind = "JSON" if path.suffix == ".json" else "JSON (a config file is .toml, or else JSON)"
        raise UserError(f"config file {path}: not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a table of options")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(
            f"config file {path}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return data


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
