"""`reasonlab <command>`: parses options, calls the library, prints results.

User mistakes (unknown task, malformed file, bad option) print one line and exit with code 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import add_config_args
from .errors import UserError
from .evaluate import SampleConfig


def parse_value(text: str):
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_key_values(items: list[str] | None, what: str) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{what} must look like KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = parse_value(value)
    return out


def make_task(name: str, task_args: list[str] | None = None):
    from .tasks import get_task

    kwargs = parse_key_values(task_args, "--task-arg")
    try:
        return get_task(name, **kwargs)
    except TypeError as e:  # an option the task does not take
        raise UserError(f"task {name!r}: {e}") from None


def add_task_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--task", required=required, help="task name (see `reasonlab tasks`)")
    p.add_argument("--task-arg", action="append", metavar="KEY=VALUE",
                   help="task option, repeatable (e.g. --task-arg digits=4)")


# ---- commands ---------------------------------------------------------------------------------

def cmd_tasks(args) -> int:
    from .tasks import get_task, list_tasks

    for name in list_tasks():
        doc = (type(get_task(name)).__doc__ or "").strip().splitlines()[0]
        print(f"{name:12s} {doc}")
    return 0


def cmd_score(args) -> int:
    from .evaluate import score_file

    task = make_task(args.task, args.task_arg)
    rows, summary = score_file(task, args.input, args.output)
    if args.output is None:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    print(f"scored {summary['count']} completions: format rate {summary['format_rate']:.1%}, "
          f"accuracy {summary['accuracy']:.1%}, mean reward {summary['mean_reward']:.3f}",
          file=sys.stderr if args.output is None else sys.stdout)
    return 0


def load_model_or_exit(path: str):
    from .model import load_model

    if not path:
        raise UserError("--model is required (a reasonlab checkpoint or a Hugging Face model folder)")
    return load_model(path)


def cmd_generate(args) -> int:
    from .config import build_config
    from .evaluate import SampleConfig, sample_task

    cfg = build_config(SampleConfig, args)
    task = make_task(cfg.task, args.task_arg)
    model, tokenizer = load_model_or_exit(cfg.model)
    rows = sample_task(model, tokenizer, task, cfg)
    for i, row in enumerate(rows):
        verdict = ("correct" if row["correct"] else "wrong") if row["format_ok"] else "broken format"
        print(f"[{i}] {row['question']!r} gold {row['answer']!r}")
        print(f"    {row['completion']!r}")
        print(f"    {verdict} | reward {row['reward']:g} | thinking {row['think_tokens']} tokens | "
              f"{row['tokens']} tokens | {row['finish_reason']}")
    n = len(rows)
    print(f"{n} completions: accuracy {sum(r['correct'] for r in rows) / n:.1%}, "
          f"format rate {sum(r['format_ok'] for r in rows) / n:.1%}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reasonlab", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = lambda name, help: sub.add_parser(name, help=help, parents=[common])  # noqa: E731

    p = command("tasks", help="list the registered tasks")
    p.set_defaults(func=cmd_tasks)

    p = command("score", help="score completions in a JSONL file (format, correctness, reward)")
    add_task_args(p)
    p.add_argument("input", help='JSONL, one {"completion": str, "answer": str[, "prompt": str]} a line')
    p.add_argument("-o", "--output", help="write scored lines here (atomically) instead of stdout")
    p.set_defaults(func=cmd_score)

    p = command("generate", help="sample completions for a task and show their parse and reward")
    add_config_args(p, SampleConfig)
    p.add_argument("--task-arg", action="append", metavar="KEY=VALUE", help="task option, repeatable")
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ValueError, FileNotFoundError) as e:
        if args.debug:
            raise
        print(f"reasonlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
