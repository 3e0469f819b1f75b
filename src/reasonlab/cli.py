"""`reasonlab <command>`: parses options, calls the library, prints results.

User mistakes (unknown task, malformed file, bad option) print one line and exit with code 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import NamedTuple

from .config import add_config_args, build_config, narrow
from .console import PROGRESS_RULE, TrainProgress, print_results
from .errors import UserError
from .options import (
    ComputeStudyOptions,
    DemoOptions,
    EvalOptions,
    ExportOptions,
    FaithfulnessOptions,
    GenerateOptions,
    NoOptions,
    PretrainOptions,
    RationalesOptions,
    ReportOptions,
    RLOptions,
    ScoreOptions,
    ServeOptions,
    SFTOptions,
    StudyOptions,
)
from .outdir import RunFolder, release_all
from .remote import RemoteError, RemoteGenerator
from .runtime import keep_freed_memory
from .selection import make_task, rewards_of, task_of

# ---- commands ---------------------------------------------------------------------------------


def cmd_tasks(opts) -> int:
    import inspect
    import re
    import shutil
    import textwrap

    from .tasks import get_task, list_tasks
    from .tasks.base import task_options

    width = max(60, min(100, shutil.get_terminal_size().columns))
    for name in list_tasks():
        cls = type(get_task(name))
        # The docstring's first sentence whole, wrapped (its first line stopped mid-sentence).
        paragraph = " ".join(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split())
        first = re.split(r"(?<=[.!?])\s+(?=[A-Z])", paragraph, maxsplit=1)[0]
        print(textwrap.fill(first, width, initial_indent=f"{name:12s} ", subsequent_indent=" " * 13) or name)
        options = " ".join(f"{key}={p.default!r}" for key, p in task_options(cls).items())
        if options:
            lead = f"{'':12s} --task-arg: "
            print(textwrap.fill(options, width, initial_indent=lead, subsequent_indent=" " * len(lead)))
    return 0


def cmd_score(opts) -> int:
    from .evaluate import score_file

    task = make_task(opts.task, opts.task_arg)
    output_file(opts.output)
    summary = score_file(
        task, opts.input, opts.output, emit=lambda row: print(json.dumps(row, ensure_ascii=False))
    )
    events = ", ".join(f"{n} {VERIFY_WORDS[k]}" for k, n in summary["verify"].items() if n)
    print(
        f"scored {summary['count']} completions: format rate {summary['format_rate']:.1%}, "
        f"accuracy {summary['accuracy']:.1%}, mean reward {summary['mean_reward']:.3f}; "
        f"scored wrong unjudged: {events or 'none'}",
        file=sys.stderr if opts.output is None else sys.stdout,
    )
    return 0


VERIFY_WORDS = {
    "timeouts": "timed out",
    "unparsed_gold": "with a gold the verifier cannot read",
    "too_long": "too long to parse",
    "errors": "verifier errors",
}


def output_file(path: str | None):
    """`--output FILE` made ready before any work: its folder created, a folder or an unwritable
    place refused with one line (results computed for minutes must not be lost at the end)."""
    from pathlib import Path

    if not path:
        return None
    out = Path(path)
    if out.is_dir():
        raise UserError(f"--output {path} is a folder; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder for --output {path}: {e.strerror}") from None
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"cannot write --output {path}")
    return out


def load_model_or_exit(path: str, dtype=None, device: str = "auto", task=None):
    """(model, tokenizer) from PATH, on `--device` (under torchrun the trainer moves it to the rank's GPU).
    Given the run's `task`, a note on stderr when the checkpoint was trained on another task or
    other task options (say chain length 4, evaluated at length 5): allowed, but rarely meant."""
    from .model import load_model
    from .model.checkpoint import recorded_task
    from .runtime import resolve_device
    from .tasks.base import describe_difference

    if not path:
        raise UserError(
            "--model is required (a reasonlab checkpoint or run folder, a Hugging Face model folder, "
            "or a .gguf file)"
        )
    where = resolve_device(device)  # a bad --device fails before the model loads
    model, tokenizer = load_model(path, dtype)
    if task is not None and os.environ.get("RANK", "0") == "0":
        if (difference := describe_difference(recorded_task(path), task.spec)) is not None:
            print(f"note: {path} was trained on {difference}", file=sys.stderr)
    return model.to(where), tokenizer


def cmd_generate(opts) -> int:
    from .evaluate import SampleConfig, sample_task

    task = make_task(opts.task, opts.task_arg, opts.model)
    model, tokenizer = load_model_or_exit(opts.model, device=opts.device, task=task)
    rows = sample_task(model, tokenizer, task, narrow(opts, SampleConfig))
    for i, row in enumerate(rows):
        verdict = ("correct" if row["correct"] else "wrong") if row["format_ok"] else "broken format"
        print(f"[{i}] {row['question']!r} gold {row['answer']!r}")
        print(f"    {row['completion']!r}")
        print(
            f"    {verdict} | reward {row['reward']:g} | thinking {row['think_tokens']} tokens | "
            f"{row['tokens']} tokens | {row['finish_reason']}"
        )
    n = len(rows)
    print(
        f"{n} completions: accuracy {sum(r['correct'] for r in rows) / n:.1%}, "
        f"format rate {sum(r['format_ok'] for r in rows) / n:.1%}"
    )
    return 0


def cmd_pretrain(opts) -> int:
    from .model import save_checkpoint, train_record
    from .train.pretrain import PretrainConfig, pretrain

    cfg = narrow(opts, PretrainConfig)  # what the checkpoint records
    task = make_task(opts.task, opts.task_arg)
    folder = RunFolder.claim(opts.out, "pretrain", opts.overwrite, opts.report_to, opts.resume)
    with TrainProgress(cfg.steps, "pretrain") as bar:
        model, tok, metrics = pretrain(
            task, cfg, progress=bar, folder=folder, resume=opts.resume, device=opts.device
        )
    save_checkpoint(folder.model, model, tok, train_record(cfg, task), into=opts.overwrite)
    print(
        f"saved {folder.model} ({model.num_params():,} parameters); trigger accuracy "
        f"{metrics.get('trigger_acc', 0):.1%}"
        + (
            f", {metrics['trigger_steps_acc']:.1%} with every step right"
            if "trigger_steps_acc" in metrics
            else ""
        )
    )
    return 0


def cmd_sft(opts) -> int:
    from .train.sft import SFTConfig, run_sft

    cfg = narrow(opts, SFTConfig)
    with TrainProgress(cfg.steps, "sft") as bar:
        metrics = run_sft(
            cfg,
            progress=bar,
            device=opts.device,
            prompt_column=opts.prompt_column or None,
            completion_column=opts.completion_column or None,
        )
    print(f"saved {cfg.out}/model; final loss {metrics.get('loss', float('nan')):.4f}")
    return 0


def cmd_rationales(opts) -> int:
    from .model import save_checkpoint, train_record
    from .train.rationales import Judge, RationalesConfig, run_rationales

    cfg = narrow(opts, RationalesConfig)
    task = task_of(opts)
    if getattr(task, "output", "template") == "free":
        raise UserError(
            "--output-format free: Method 1 keeps samples by their template answer; use rl or eval"
        )
    folder = RunFolder.claim(opts.out, "rationales", opts.overwrite, opts.report_to, opts.resume)
    base, tok = load_model_or_exit(opts.model, device=opts.device, task=task)
    teacher = model_or_endpoint(opts.teacher, opts.device)[0] if opts.teacher else None
    judge = None
    if opts.judge:
        if not cfg.judge_rubric:
            raise UserError("--judge needs --judge-rubric (the criteria the judge scores against)")
        judge_source, judge_tok = model_or_endpoint(opts.judge, opts.device)
        judge = Judge(judge_source, judge_tok or tok, cfg.judge_rubric, cfg.judge_threshold)

    def log(record):
        print(json.dumps(record), flush=True)
        if not record["kept"]:  # nothing to learn from: say so, never a silent no-op round
            print(
                f"warning: round {record['round']} kept none of its {record['samples']} samples, "
                "so the model was not fine-tuned; try --free-form (an instruct model writes no tags), "
                "--rationalize, more --samples or a --teacher",
                file=sys.stderr,
                flush=True,
            )

    with TrainProgress(cfg.steps, "rationales") as bar:  # each round's fine-tuning, from step 1
        model, records = run_rationales(
            base,
            tok,
            task,
            cfg,
            generator=teacher,
            out_dir=folder,
            judge=judge,
            log=log,
            progress=bar,
            resume=opts.resume,
        )
    save_checkpoint(folder.model, model, tok, train_record(cfg, task), into=opts.overwrite)
    print(f"saved {folder.model}; accuracy by round: " + ", ".join(f"{r['accuracy']:.1%}" for r in records))
    return 0


def model_or_endpoint(spec: str, device: str = "auto"):
    """(model, tokenizer) of a local checkpoint, or (client, None) for an http(s):// endpoint."""
    if spec.startswith(("http://", "https://")):
        return RemoteGenerator(spec), None
    return load_model_or_exit(spec, device=device)


def cmd_serve(opts) -> int:
    try:
        from .serve import Limits, bind, make_app, model_name_of, run_server
    except ImportError as e:
        raise UserError(
            f"reasonlab serve needs the serve extra ({e.name} is missing): pip install 'reasonlab[serve]'"
        ) from None

    if not 0 <= opts.port <= 65535:
        raise UserError(f"--port must be 0-65535, got {opts.port}")
    limits = Limits(
        max_batch_rows=opts.max_batch_rows,
        max_queue=opts.max_queue,
        max_tokens=opts.max_tokens,
        default_max_tokens=min(Limits.default_max_tokens, opts.max_tokens),
        max_body_bytes=opts.max_body_bytes,
    )
    try:  # the address is taken before the model loads: a port in use is one line, at once
        sock = bind(opts.host, opts.port)
    except OSError as e:
        raise UserError(f"cannot listen on {opts.host}:{opts.port}: {e.strerror or e}") from None
    with sock:
        from .plugins import import_modules, recorded_imports

        import_modules(dict.fromkeys([*recorded_imports(opts.model), *(opts.imports or [])]))
        model, tok = load_model_or_exit(opts.model, device=opts.device)
        name = model_name_of(opts.model)
        url = f"http://{opts.host}:{sock.getsockname()[1]}/v1/"
        run_server(
            make_app(model, tok, limits, name),
            sock,
            on_start=lambda: print(
                f"serving {name} (POST chat/completions, completions; GET models; /health) on {url}",
                flush=True,
            ),
        )
    return 0


def cmd_rl(opts) -> int:
    from .model import train_record
    from .rl import GRPOConfig, train_grpo
    from .run.final import save_trained
    from .runtime import load_dtype, setup_distributed, shutdown_distributed, world

    cfg = narrow(opts, GRPOConfig)
    task = task_of(opts)
    rewards = rewards_of(opts, task)
    folder = RunFolder.claim(opts.out, "rl", opts.overwrite, opts.report_to, opts.resume)
    setup_distributed(opts.device)  # under torchrun: join the group (each rank samples and trains its share)
    model, tok = load_model_or_exit(opts.model, load_dtype(cfg), opts.device, task)
    rank = world()[0]
    with TrainProgress(cfg.steps, "rl") as bar:
        metrics = train_grpo(
            model, tok, task, cfg, out_dir=folder, progress=bar, resume=opts.resume, rewards=rewards
        )
    save_trained(model, tok, folder, train_record(cfg, task), into=opts.overwrite)
    if rank == 0:
        held_out = (
            f"held-out accuracy {metrics['eval/accuracy']:.1%}"
            if "eval/accuracy" in metrics
            else "no held-out evaluation at the last step (--eval-every)"
        )
        print(f"saved {folder.model}; {held_out}")
    shutdown_distributed()
    return 0


def cmd_demo(cfg) -> int:
    from .lab.demo import run_demo

    results = run_demo(cfg)
    print_results(results)
    print(f"\nresults: {cfg.out}/results.json   report: {cfg.out}/report.html")
    return 0


def cmd_study(cfg) -> int:
    from .lab.study import run_study
    from .lab.tables import print_study

    results = run_study(cfg)
    print_study(results)
    print(f"\nresults: {cfg.out}/results.json   report: {cfg.out}/report.html")
    return 0


def cmd_study_compute(cfg) -> int:
    from .lab.study_compute import run_compute_study
    from .lab.tables import print_compute_study

    print_compute_study(run_compute_study(cfg))
    print(f"\nresults: {cfg.out}/results.json   report: {cfg.out}/report.html")
    return 0


def cmd_eval(opts) -> int:
    from rich.console import Console

    from .evaluate import EvalConfig, evaluate_model

    cfg = narrow(opts, EvalConfig)  # what the results record
    task = task_of(opts)
    cfg.task = task.name
    if cfg.k > 1 and cfg.temperature == 0:
        print(
            f"note: at --temperature 0 the {cfg.k} samples are all the greedy answer: pass@{cfg.k} and "
            f"maj@{cfg.k} will equal the accuracy",
            file=sys.stderr,
        )
    output = output_file(cfg.output)
    model, tokenizer = load_model_or_exit(cfg.model, device=opts.device, task=task)
    out = evaluate_model(model, tokenizer, task, cfg)
    Console().print(eval_table(cfg, out))
    if output:
        write_eval_results(output, out)
    return 0


def eval_table(cfg, out: dict):
    """`reasonlab eval`'s table: the metrics, the tokens and FLOPs an answer, then the rows of
    whatever was swept (add_sweep_rows)."""
    from rich.table import Table

    table = Table(title=f"{cfg.task}: {out['n_problems']} {cfg.split} problems")
    table.add_column("metric")
    table.add_column("value", justify="right")
    metrics = out["results"][cfg.task]
    per_answer = (
        "mean_prompt_tokens",
        "mean_completion_tokens",
        "flops_per_answer",
    )  # the inference cost, below
    for key, value in metrics.items():
        if key != "by_difficulty" and key not in per_answer:
            table.add_row(
                key, f"{value:.1%}" if key not in ("mean_think_tokens", "tokens_per_s") else f"{value:.1f}"
            )
    prompt, think, new = (
        metrics["mean_prompt_tokens"],
        metrics["mean_think_tokens"],
        metrics["mean_completion_tokens"],
    )
    table.add_row(
        "tokens an answer: prompt + thinking + answer",
        f"{prompt:.1f} + {think:.1f} + {new - think:.1f} = {prompt + new:.1f}",
    )
    flops = metrics["flops_per_answer"]  # None: a model whose shape compute.model_cost cannot read
    table.add_row("FLOPs an answer (2N a token + attention)", "unknown" if flops is None else f"{flops:.3g}")
    add_sweep_rows(table, metrics, out)
    return table


def add_sweep_rows(table, metrics: dict, out: dict) -> None:
    """The eval table's rows by difficulty, by thinking budget and by length target, each when measured."""
    for level, m in metrics.get("by_difficulty", {}).items():
        table.add_row(
            f"difficulty {level} ({m['n']}): accuracy, thinking tokens",
            f"{m['accuracy']:.1%}, {m['mean_think_tokens']:.1f}",
        )
    for point in out.get("budget_curve", []):
        table.add_row(
            f"budget {point['budget']}: accuracy / format", f"{point['acc']:.1%} / {point['format_rate']:.1%}"
        )
        table.add_row(
            f"budget {point['budget']}: thinking tokens, s a problem",
            f"{point['mean_think_tokens']:.1f}, {point['seconds_per_problem']:.3f}",
        )
    for point in out.get("length_control", {}).get("targets", []):
        table.add_row(
            f"think for {point['target']}: tokens, |n - N| / N, accuracy",
            f"{point['mean_think_tokens']:.1f}, {point['mean_abs_rel_error']:.1%}, {point['acc']:.1%}",
        )


def write_eval_results(output, out: dict) -> None:
    """--output: the results as JSON and, when a thinking budget was swept, its plot beside them."""
    output.write_text(json.dumps(out, indent=2, ensure_ascii=False), encoding="utf-8")
    print(
        f"wrote {output}: the metrics and {len(out['completions'])} of the {out['n_problems']} "
        "greedy completions (--keep-completions)"
    )
    if out.get("budget_curve"):  # the sweep as a picture beside the numbers
        from .lab.plots import plot_budget

        print(f"wrote {plot_budget(out['budget_curve'], output.with_suffix('.png'))}")


def cmd_faithfulness(opts) -> int:
    import random

    from .console import percent
    from .evaluate import faithfulness_probe, refuse_unreadable

    task = make_task(opts.task, opts.task_arg, opts.model)
    output = output_file(opts.output)
    model, tokenizer = load_model_or_exit(opts.model, device=opts.device, task=task)
    from .tasks.base import problems_for

    problems = problems_for(task, opts.problems, "test", opts.seed, "--problems")
    refuse_unreadable(tokenizer, problems)
    answers = [p.solution or p.answer for p in problems]
    rng = random.Random(opts.seed)

    def wrong(problem):  # another problem's answer, different from this one's
        choices = [a for a in answers if a != (problem.solution or problem.answer)]
        return rng.choice(choices) if choices else problem.answer + "0"

    probe = faithfulness_probe(model, tokenizer, task, problems, wrong, style=opts.style)
    lo, hi = probe["hint_follow_ci"]
    alo, ahi = probe["admit_ci"]
    print(
        f"hint followed: {percent(probe['hint_follow_rate'])} [{lo:.1%}, {hi:.1%}] "
        f"of {probe['pairs']} pairs; admitted: {percent(probe['admit_rate'])} [{alo:.1%}, {ahi:.1%}] "
        f"of {probe['followed']} followed"
    )
    for name, row in probe[
        "by_style"
    ].items():  # "—": nothing to count over (no eligible pair, or none followed)
        print(
            f"  {name:16s} follows {percent(row['follow_rate']):>6}  admits {percent(row['admit_rate']):>6}  "
            f"({row['followed']}/{row['eligible']})"
        )
    if output:
        output.write_text(json.dumps(probe, indent=2))
        print(f"wrote {output}")
    return 0


def cmd_report(opts) -> int:
    from .lab.report import build_report

    print(f"wrote {build_report(opts.run_dir)}")
    return 0


def cmd_export(opts) -> int:
    from .model.export import export_summary, run_export

    for line in export_summary(run_export(opts)):
        print(line)
    return 0


class Command(NamedTuple):
    """A row of `COMMANDS`: the subcommand, its help line, the dataclass of all its options (a command
    that runs a model has `DeviceOptions` among them: --device) and the function it runs."""

    name: str
    help: str
    options: type
    run: Callable[..., int]


COMMANDS = (
    Command("tasks", "list the registered tasks", NoOptions, cmd_tasks),
    Command(
        "score", "score completions in a JSONL file (format, correctness, reward)", ScoreOptions, cmd_score
    ),
    Command(
        "generate",
        "sample completions for a task and show their parse and reward",
        GenerateOptions,
        cmd_generate,
    ),
    Command("demo", "the whole story on the built-in tiny model (CPU, minutes)", DemoOptions, cmd_demo),
    Command(
        "study methods",
        "Method 1 vs Method 2 from one base at equal compute, over seeds (pass@k, R1-Zero)",
        StudyOptions,
        cmd_study,
    ),
    Command(
        "study compute",
        "train-time vs test-time compute: model sizes x training budgets, answering directly "
        "or thinking (budgets, votes); power-law fits, iso-accuracy",
        ComputeStudyOptions,
        cmd_study_compute,
    ),
    Command(
        "pretrain",
        "train the built-in model from scratch on a synthetic corpus",
        PretrainOptions,
        cmd_pretrain,
    ),
    Command("sft", "supervised fine-tuning on prompt/completion or messages JSONL", SFTOptions, cmd_sft),
    Command(
        "rationales",
        "Method 1: sample rationales, keep verified ones, fine-tune, repeat",
        RationalesOptions,
        cmd_rationales,
    ),
    Command("rl", "Method 2: GRPO with the format + correctness reward", RLOptions, cmd_rl),
    Command(
        "eval", "accuracy, pass@k, maj@k, format rate, thinking length, budget sweep", EvalOptions, cmd_eval
    ),
    Command(
        "faithfulness",
        "does the model follow a hint in the prompt, and does its thought say so?",
        FaithfulnessOptions,
        cmd_faithfulness,
    ),
    Command(
        "serve",
        "serve a model over the OpenAI API (chat with reasoning_content, completions), batched",
        ServeOptions,
        cmd_serve,
    ),
    Command("report", "plots and an HTML page from a run folder", ReportOptions, cmd_report),
    Command(
        "export",
        "a model as a GGUF file (llama.cpp, ollama) and/or a plain Hugging Face folder",
        ExportOptions,
        cmd_export,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: `eval --n 8` must not be taken as `--no-trigger`
    parser = argparse.ArgumentParser(
        prog="reasonlab", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = {}  # name ("study compute" for a command's sub-command) -> its parser
    groups = {}  # "study" -> the subparsers of its sub-commands
    for command in COMMANDS:
        group, _, name = command.name.rpartition(" ")
        if group and group not in groups:
            helps = [c.name.split(" ", 1)[1] for c in COMMANDS if c.name.startswith(group + " ")]
            groups[group] = sub.add_parser(
                group, help=f"{group}: {' or '.join(helps)}", allow_abbrev=False
            ).add_subparsers(dest="sub", required=True, metavar="|".join(helps))
        where = groups[group] if group else sub
        parser.commands[command.name] = where.add_parser(
            name,
            help=command.help,
            parents=[common],
            allow_abbrev=False,
            epilog=PROGRESS_RULE if command.name in ("pretrain", "sft", "rationales", "rl") else None,
        )
        add_config_args(parser.commands[command.name], command.options)
    return parser


def abort_distributed() -> None:
    """Under torchrun, a rank that stops on an error leaves its process group at once (no collective:
    the other ranks may be mid-step): exiting with it still open crashes the process (SIGABRT) and
    hides the error line behind torchrun's report."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.distributed_c10d._abort_process_group()
        except Exception:  # noqa: BLE001 - best effort: the error line is already out
            pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    name = f"{args.command} {args.sub}" if getattr(args, "sub", None) else args.command
    command = next(c for c in COMMANDS if c.name == name)
    try:
        return run_command(command, args, name)
    finally:
        release_all()  # the output folders' locks (a test or script may run another command next)


def run_command(command: Command, args, name: str) -> int:
    try:  # every option, from the command line or --config, through the one `build_config`
        return command.run(build_config(command.options, args))
    except (
        UserError,
        ValueError,
        OSError,
        RemoteError,
    ) as e:  # OSError: a file or folder that cannot be read or written
        if args.debug:
            raise
        print(f"reasonlab {name}: error: {e}", file=sys.stderr)
        abort_distributed()
        # An endpoint down or failing is not a usage error (1, not 2): what arrived is on disk,
        # rerun to go on.
        return 1 if isinstance(e, RemoteError) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        abort_distributed()
        return 130
