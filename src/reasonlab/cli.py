"""`reasonlab <command>`: parses options, calls the library, prints results.

User mistakes (unknown task, malformed file, bad option) print one line and exit with code 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import add_config_args, add_config_file_arg, merge_config_file
from .errors import UserError
from .evaluate import SampleConfig
from .outdir import OVERWRITE_HELP, claim
from .remote import RemoteError, RemoteGenerator


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


def make_task(name: str, task_args: list[str] | None = None, model: str = ""):
    """The task `--task NAME --task-arg K=V ...` names. Without a name, the task (and its options)
    that checkpoint `model` was trained on, as its train_config.json records, `--task-arg` on top."""
    from .tasks import get_task

    kwargs = parse_key_values(task_args, "--task-arg")
    if not name:
        from .model.checkpoint import recorded_task

        recorded = recorded_task(model) if model else None
        if not isinstance(recorded, dict) or "name" not in recorded:
            raise UserError("--task is required" + (f": {model} records no task it was trained on" if model else ""))
        name, kwargs = recorded["name"], {**recorded.get("options", {}), **kwargs}
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        print(f"task: {name}" + (f" ({shown})" if shown else "") + f", the one {model} was trained on", file=sys.stderr)
    try:
        return get_task(name, **kwargs)
    except TypeError as e:  # an option the task does not take
        raise UserError(f"task {name!r}: {e}") from None


def add_task_args(p: argparse.ArgumentParser, name: bool = True, from_model: bool = False) -> None:
    """--task NAME (unless the command's config has it; optional where `from_model`: the
    checkpoint's own task) and repeatable --task-arg KEY=VALUE."""
    if name and from_model:
        p.add_argument("--task", default="", help="task name (see `reasonlab tasks`); default: the task "
                                                  "--model was trained on")
    elif name:  # required, but may come from --config: `make_task` says when it is missing
        p.add_argument("--task", default="", help="task name (see `reasonlab tasks`), required")
    p.add_argument("--task-arg", action="append", metavar="KEY=VALUE",
                   help="task option, repeatable (e.g. --task-arg digits=4)")


def add_out_args(p: argparse.ArgumentParser, default: str, out_help: str, resume_help: str) -> None:
    """A training command's --out, --resume and --overwrite (see `outdir`)."""
    p.add_argument("--out", default=default, help=out_help + "; an earlier run of this command there is "
                   "continued (--resume) or replaced, anything else refused")
    p.add_argument("--resume", action="store_true", help=resume_help + "; the settings must be the same but for "
                   "--steps, --max-seconds, --eval-every and --save-every")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


# ---- commands ---------------------------------------------------------------------------------

def cmd_tasks(args) -> int:
    from .tasks import get_task, list_tasks
    from .tasks.base import task_options

    for name in list_tasks():
        cls = type(get_task(name))
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:12s} {doc[0] if doc else ''}".rstrip())
        options = " ".join(f"{key}={p.default!r}" for key, p in task_options(cls).items())
        if options:
            print(f"{'':12s} --task-arg: {options}")
    return 0


def cmd_score(args) -> int:
    from .evaluate import score_file

    task = make_task(args.task, args.task_arg)
    output_file(args.output)
    summary = score_file(task, args.input, args.output,
                         emit=lambda row: print(json.dumps(row, ensure_ascii=False)))
    events = ", ".join(f"{n} {VERIFY_WORDS[k]}" for k, n in summary["verify"].items() if n)
    print(f"scored {summary['count']} completions: format rate {summary['format_rate']:.1%}, "
          f"accuracy {summary['accuracy']:.1%}, mean reward {summary['mean_reward']:.3f}; "
          f"scored wrong unjudged: {events or 'none'}", file=sys.stderr if args.output is None else sys.stdout)
    return 0


VERIFY_WORDS = {"timeouts": "timed out", "unparsed_gold": "with a gold the verifier cannot read",
                "too_long": "too long to parse", "errors": "verifier errors"}


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
    from .tasks.base import describe_difference
    from .runtime import resolve_device

    if not path:
        raise UserError("--model is required (a reasonlab checkpoint or a Hugging Face model folder)")
    where = resolve_device(device)  # a bad --device fails before the model loads
    model, tokenizer = load_model(path, dtype)
    if task is not None and os.environ.get("RANK", "0") == "0":
        if (difference := describe_difference(recorded_task(path), task.spec)) is not None:
            print(f"note: {path} was trained on {difference}", file=sys.stderr)
    return model.to(where), tokenizer


def cmd_generate(args) -> int:
    from .config import build_config
    from .evaluate import SampleConfig, sample_task

    cfg = build_config(SampleConfig, args)
    task = make_task(cfg.task, args.task_arg, cfg.model)
    model, tokenizer = load_model_or_exit(cfg.model, device=args.device, task=task)
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


class TrainProgress:
    """A progress bar over training steps (loss and reward on it); evaluation lines stay printed.
    The bar appears with the first step's report, so a run that fails while loading shows none."""

    def __init__(self, total: int, what: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.total, self.shown = total, False
        from .report import console

        self.progress = Progress(TextColumn(what), BarColumn(bar_width=30), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console(),
                                 disable=os.environ.get("RANK", "0") != "0")  # torchrun: rank 0 only

    def __enter__(self):
        self.task = self.progress.add_task("", total=self.total, info="")  # the clock starts here
        return self

    def __exit__(self, *exc):
        if self.shown:
            self.progress.stop()

    def __call__(self, m: dict):
        if not self.shown:
            self.progress.start()
            self.shown = True
        shown = [f"{k} {m[k]:.3f}" for k in ("loss", "reward/mean") if isinstance(m.get(k), float)]
        self.progress.update(self.task, completed=m.get("step", 0), info=", ".join(shown))
        evals = {k: v for k, v in m.items() if k.startswith("eval") or k == "trigger_acc"}
        if evals:
            self.progress.console.print(f"step {m.get('step', 0)}: " + " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in evals.items()))


def cmd_pretrain(args) -> int:
    from .config import build_config
    from .model import save_checkpoint
    from .outdir import claim_checkpoint
    from .train.pretrain import PretrainConfig, pretrain

    cfg = build_config(PretrainConfig, args)
    task = make_task(args.task, args.task_arg)
    state_dir = claim_checkpoint(args.out, "pretrain", args.overwrite)
    with TrainProgress(cfg.steps, "pretrain") as bar:
        model, tok, metrics = pretrain(task, cfg, progress=bar, state_dir=state_dir, resume=args.resume,
                                       device=args.device)
    save_checkpoint(args.out, model, tok, {"task": task.spec, **vars(cfg)}, run="pretrain", into=args.overwrite)
    print(f"saved {args.out} ({model.num_params():,} parameters); trigger accuracy {metrics.get('trigger_acc', 0):.1%}")
    return 0


def cmd_sft(args) -> int:
    from .config import build_config
    from .train.sft import SFTConfig, run_sft

    cfg = build_config(SFTConfig, args)
    with TrainProgress(cfg.steps, "sft") as bar:
        metrics = run_sft(cfg, progress=bar, device=args.device)
    print(f"saved {cfg.out}; final loss {metrics.get('loss', float('nan')):.4f}")
    return 0


def cmd_rationales(args) -> int:
    from .config import build_config
    from .model import save_checkpoint
    from .train.rationales import RationalesConfig, run_rationales

    from .train.rationales import Judge

    cfg = build_config(RationalesConfig, args)
    task = make_task(args.task, args.task_arg, args.model)
    claim(args.out, "rationales", args.overwrite)
    base, tok = load_model_or_exit(args.model, device=args.device, task=task)
    teacher = model_or_endpoint(args.teacher, args.device)[0] if args.teacher else None
    judge = None
    if args.judge:
        if not cfg.judge_rubric:
            raise UserError("--judge needs --judge-rubric (the criteria the judge scores against)")
        judge_source, judge_tok = model_or_endpoint(args.judge, args.device)
        judge = Judge(judge_source, judge_tok or tok, cfg.judge_rubric, cfg.judge_threshold)
    model, records = run_rationales(base, tok, task, cfg, generator=teacher, out_dir=args.out, judge=judge,
                                    log=lambda r: print(json.dumps(r), flush=True), resume=args.resume)
    save_checkpoint(f"{args.out}/model", model, tok, {"task": task.spec, **vars(cfg)}, into=args.overwrite)
    print(f"saved {args.out}/model; accuracy by round: " + ", ".join(f"{r['accuracy']:.1%}" for r in records))
    return 0


def model_or_endpoint(spec: str, device: str = "auto"):
    """(model, tokenizer) of a local checkpoint, or (client, None) for an http(s):// endpoint."""
    if spec.startswith(("http://", "https://")):
        return RemoteGenerator(spec), None
    return load_model_or_exit(spec, device=device)


def cmd_serve(args) -> int:
    from .remote import make_server, serve

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0-65535, got {args.port}")
    try:  # the address is checked before the model loads: a port in use is one line, at once
        make_server(None, None, args.host, args.port).server_close()
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    model, tok = load_model_or_exit(args.model, device=args.device)
    serve(model, tok, args.host, args.port)
    return 0


def cmd_rl(args) -> int:
    from .config import build_config
    from .model import save_checkpoint
    from .rl import GRPOConfig, train_grpo
    from .runtime import load_dtype, plain_model, setup_distributed, shutdown_distributed, world

    cfg = build_config(GRPOConfig, args)
    task = make_task(args.task, args.task_arg, args.model)
    claim(args.out, "rl", args.overwrite)
    setup_distributed(args.device)  # under torchrun: join the group (each rank samples and trains its share)
    model, tok = load_model_or_exit(args.model, load_dtype(cfg), args.device, task)
    rank = world()[0]
    with TrainProgress(cfg.steps, "rl") as bar:
        metrics = train_grpo(model, tok, task, cfg, out_dir=args.out, progress=bar, resume=args.resume)
    final = plain_model(model)  # LoRA merged, FSDP2 shards gathered (a collective: every rank)
    if rank == 0:
        save_checkpoint(f"{args.out}/model", final, tok, {"task": task.spec, **vars(cfg)}, into=args.overwrite)
        held_out = (f"held-out accuracy {metrics['eval/accuracy']:.1%}" if "eval/accuracy" in metrics
                    else "no held-out evaluation at the last step (--eval-every)")
        print(f"saved {args.out}/model; {held_out}")
    shutdown_distributed()
    return 0


def cmd_demo(args) -> int:
    from .config import build_config
    from .demo import DemoConfig, run_demo

    cfg = build_config(DemoConfig, args)
    results = run_demo(cfg)
    print_results(results)
    print(f"\nresults: {cfg.out}/results.json   report: {cfg.out}/report.html")
    return 0


def print_results(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from .report import percent

    table = Table(title=f"reasonlab demo: {results.get('task', '')} (held-out, greedy)")
    table.add_column("what")
    table.add_column("accuracy", justify="right")
    table.add_row("base model, asked directly", f"{results['base_direct_acc']:.1%}")
    table.add_row("base model, \"Let's think step by step.\"", f"{results['base_cot_prompt_acc']:.1%}")
    for i, acc in enumerate(results.get("method1_acc", []), 1):
        table.add_row(f"Method 1 (own rationales), round {i}", f"{acc:.1%}")
    table.add_row("Method 2 (GRPO)", f"{results['method2_acc']:.1%}")
    table.add_row("Method 2 format rate", f"{results['method2_format_rate']:.1%}")
    for point in results.get("budget_curve", []):
        table.add_row(f"thinking budget {point['budget']} tokens", f"{point['acc']:.1%}")
    faith = results.get("faithfulness", {})
    table.add_row("base follows a hint / admits it",
                  f"{percent(faith.get('hint_follow_rate'))} / {percent(faith.get('admit_rate'))}")
    table.add_row("wall time", f"{results.get('seconds', 0):.0f} s")
    Console().print(table)


def cmd_eval(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .config import build_config
    from .evaluate import EvalConfig, evaluate_model

    cfg = build_config(EvalConfig, args)
    task = make_task(cfg.task, args.task_arg, cfg.model)
    cfg.task = task.name
    if cfg.k > 1 and cfg.temperature == 0:
        print(f"note: at --temperature 0 the {cfg.k} samples are all the greedy answer: pass@{cfg.k} and "
              f"maj@{cfg.k} will equal the accuracy", file=sys.stderr)
    output = output_file(cfg.output)
    model, tokenizer = load_model_or_exit(cfg.model, device=args.device, task=task)
    out = evaluate_model(model, tokenizer, task, cfg)
    table = Table(title=f"{cfg.task}: {out['n_problems']} {cfg.split} problems")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in out["results"][cfg.task].items():
        table.add_row(key, f"{value:.1%}" if key not in ("mean_think_tokens", "tokens_per_s") else f"{value:.1f}")
    for point in out.get("budget_curve", []):
        table.add_row(f"budget {point['budget']}: accuracy", f"{point['acc']:.1%}")
    Console().print(table)
    if output:
        output.write_text(json.dumps(out, indent=2))
        print(f"wrote {output}")
        if out.get("budget_curve"):  # the sweep as a picture beside the numbers
            from .report import plot_budget

            print(f"wrote {plot_budget(out['budget_curve'], output.with_suffix('.png'))}")
    return 0


def cmd_faithfulness(args) -> int:
    import random

    from .evaluate import faithfulness_probe
    from .report import percent

    task = make_task(args.task, args.task_arg, args.model)
    if args.problems < 1:
        raise UserError(f"--problems must be >= 1, got {args.problems}")
    output = output_file(args.output)
    model, tokenizer = load_model_or_exit(args.model, device=args.device, task=task)
    from .tasks.base import problems_for

    problems = problems_for(task, args.problems, "test", args.seed, "--problems")
    answers = [p.solution or p.answer for p in problems]
    rng = random.Random(args.seed)

    def wrong(problem):  # another problem's answer, different from this one's
        choices = [a for a in answers if a != (problem.solution or problem.answer)]
        return rng.choice(choices) if choices else problem.answer + "0"

    probe = faithfulness_probe(model, tokenizer, task, problems, wrong)
    lo, hi = probe["hint_follow_ci"]
    alo, ahi = probe["admit_ci"]
    print(f"hint followed: {percent(probe['hint_follow_rate'])} [{lo:.1%}, {hi:.1%}] of {probe['pairs']} pairs; "
          f"admitted: {percent(probe['admit_rate'])} [{alo:.1%}, {ahi:.1%}] of {probe['followed']} followed")
    for name, row in probe["by_style"].items():  # "—": nothing to count over (no eligible pair, or none followed)
        print(f"  {name:16s} follows {percent(row['follow_rate']):>6}  admits {percent(row['admit_rate']):>6}  "
              f"({row['followed']}/{row['eligible']})")
    if output:
        output.write_text(json.dumps(probe, indent=2))
        print(f"wrote {output}")
    return 0


def cmd_report(args) -> int:
    from .report import build_report

    print(f"wrote {build_report(args.run_dir)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reasonlab", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    on_device = argparse.ArgumentParser(add_help=False)
    on_device.add_argument("--device", default="auto", help="where the model runs: auto (a GPU when torch sees one, "
                           "else the CPU), cpu, cuda or cuda:N; under torchrun each rank takes cuda:LOCAL_RANK")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices  # name -> its parser (see `main`: --config sets any of its options)
    command = lambda name, help, device=True: sub.add_parser(  # noqa: E731
        name, help=help, parents=[common, on_device] if device else [common])

    p = command("tasks", help="list the registered tasks", device=False)
    p.set_defaults(func=cmd_tasks)

    p = command("score", help="score completions in a JSONL file (format, correctness, reward)", device=False)
    add_config_file_arg(p)
    add_task_args(p)
    p.add_argument("input", help='JSONL, one {"completion": str, "answer": str[, "prompt": str]} a line')
    p.add_argument("-o", "--output", help="write scored lines here (atomically) instead of stdout")
    p.set_defaults(func=cmd_score)

    p = command("generate", help="sample completions for a task and show their parse and reward")
    add_config_args(p, SampleConfig)
    add_task_args(p, name=False)
    p.set_defaults(func=cmd_generate)

    from .demo import DemoConfig
    from .rl import GRPOConfig
    from .train.pretrain import PretrainConfig
    from .train.rationales import RationalesConfig
    from .train.sft import SFTConfig

    p = command("demo", help="the whole story on the built-in tiny model (CPU, minutes)", device=False)
    add_config_args(p, DemoConfig)
    p.set_defaults(func=cmd_demo)

    p = command("pretrain", help="train the built-in model from scratch on a synthetic corpus")
    add_config_args(p, PretrainConfig)
    add_task_args(p)
    add_out_args(p, "runs/base", "checkpoint folder (its state and log: OUT.state)",
                 "continue from OUT.state (written every --save-every steps)")
    p.set_defaults(func=cmd_pretrain)

    p = command("sft", help="supervised fine-tuning on prompt/completion or messages JSONL")
    add_config_args(p, SFTConfig)
    p.set_defaults(func=cmd_sft)

    p = command("rationales", help="Method 1: sample rationales, keep verified ones, fine-tune, repeat")
    add_config_args(p, RationalesConfig)
    add_task_args(p, from_model=True)
    p.add_argument("--model", default="", help="the base checkpoint")
    p.add_argument("--teacher", default="", help="sample rationales from this checkpoint or http(s):// endpoint instead")
    p.add_argument("--judge", default="", help="keep samples a judge accepts (checkpoint or http(s):// endpoint)")
    add_out_args(p, "runs/rationales", "output folder", "continue a killed run from OUT (samples, fine-tuning, rounds)")
    p.set_defaults(func=cmd_rationales)

    p = command("rl", help="Method 2: GRPO with the format + correctness reward")
    add_config_args(p, GRPOConfig)
    add_task_args(p, from_model=True)
    p.add_argument("--model", default="", help="the checkpoint to train")
    add_out_args(p, "runs/rl", "output folder (metrics, samples, state, model)",
                 "continue from OUT/state (written every --save-every steps)")
    p.set_defaults(func=cmd_rl)

    from .evaluate import EvalConfig

    p = command("eval", help="accuracy, pass@k, maj@k, format rate, thinking length, budget sweep")
    add_config_args(p, EvalConfig)
    add_task_args(p, name=False)
    p.set_defaults(func=cmd_eval)

    p = command("faithfulness", help="does the model follow a hint in the prompt, and does its thought say so?")
    add_config_file_arg(p)
    add_task_args(p, from_model=True)
    p.add_argument("--model", default="", help="checkpoint or Hugging Face model folder")
    p.add_argument("--problems", type=int, default=100, help="held-out problems")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="", help="write the JSON results here")
    p.set_defaults(func=cmd_faithfulness)

    p = command("serve", help="serve a model on an OpenAI-compatible /v1/completions endpoint")
    add_config_file_arg(p)
    p.add_argument("--model", default="", help="checkpoint or Hugging Face model folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = command("report", help="plots and an HTML page from a run folder", device=False)
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        merge_config_file(args, parser.commands[args.command], argv[1:])  # argv[0]: the command
        return args.func(args)
    except (UserError, ValueError, OSError, RemoteError) as e:  # OSError: a file or folder that cannot be read or written
        if args.debug:
            raise
        print(f"reasonlab {args.command}: error: {e}", file=sys.stderr)
        # An endpoint down or failing is not a usage error (1, not 2): what arrived is on disk, rerun to go on.
        return 1 if isinstance(e, RemoteError) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
