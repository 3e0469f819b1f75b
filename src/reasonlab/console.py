"""Terminal output: the console progress lines go to, rates as text, the training progress bar and
the demo's results table (`demo_rows`, which the HTML report shows too).

rich is imported inside the functions that draw, so importing this module costs nothing."""

from __future__ import annotations

import functools
import math
import os
import time


def console():
    """A rich Console for progress lines: the terminal's width, or 120 columns when writing to a
    file or a pipe (a CI log, `| tee`), where rich would assume 80 and cut each line's text short."""
    from rich.console import Console

    return Console() if Console().is_terminal else Console(width=120)


def percent(value: float | None) -> str:
    """A rate as a percentage with one decimal; "—" for an unknown one (None: `evaluate.rate` of 0/0)."""
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "—"


LINES_PER_RUN = 200  # redirected output: a line every ceil(steps / 200) steps at most (see TrainProgress)
PROGRESS_RULE = (
    "Progress: on a terminal, a bar with the elapsed time and an ETA; redirected to a file or a pipe, one "
    "line a step (step/total, loss, reward, accuracy when evaluated, format rate, lr, tokens/s or "
    "steps/s, elapsed, ETA), every ceil(steps/200)-th step when a run has more than 200 steps (at "
    "most about 200 lines), and always the first, every evaluated and the last step."
)


class TrainProgress:
    """Training progress on rank 0, fed one metrics row a step; evaluation lines are printed too.

    On a terminal: a rich bar over the steps (loss and reward on it, elapsed time and ETA).
    Redirected (a file, a pipe, a CI log: rich would print one bar at the very end): one flushed
    line a step (`step_line`), every `every`-th step (at most ~`LINES_PER_RUN` a run), and always
    the first row reported, every evaluated step and the last one (at exit when the run stopped
    early). Nothing appears before the first row, so a run that fails while loading shows none. A
    step lower than the last starts over (Method 1 fine-tunes each round from step 1)."""

    def __init__(self, total: int, what: str):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.total, self.what, self.shown = total, what, False
        self.every = max(1, math.ceil(total / LINES_PER_RUN))
        enabled = os.environ.get("RANK", "0") == "0"  # torchrun: rank 0 only
        self.lines = enabled and not console().is_terminal
        self.progress = Progress(
            TextColumn(what),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console(),
            disable=not enabled or self.lines,
        )
        self.last: dict = {}  # the last row reported (lines: with its elapsed "seconds")
        self.pending = False  # lines: the last row's line is not printed yet
        self.mark = None  # lines: (step, seconds, num_tokens) at the last line printed; None before the first
        self.offset = -time.monotonic()

    def __enter__(self):
        self.task = self.progress.add_task("", total=self.total, info="")  # the clock starts here
        self.offset = (
            -time.monotonic()
        )  # elapsed = monotonic + offset, until a row brings the run's own clock
        return self

    def __exit__(self, *exc):
        if self.pending:  # the run stopped before its last step (--max-seconds, a target reached, an error)
            self._print_line(self.last)
        if self.shown:
            self.progress.stop()

    def __call__(self, m: dict):
        step = m.get("step", 0)
        if step < self.last.get("step", 0):  # a new run of steps (Method 1's next round): from step 1 again
            if self.pending:  # the last round's last step first
                self._print_line(self.last)
            self.mark = None
            self.progress.reset(self.task)
        elapsed = self._elapsed(m)
        evals = {k: v for k, v in m.items() if k.startswith("eval") or k == "trigger_acc"}
        if self.lines:
            self._line({**m, "seconds": elapsed}, due=bool(evals))
        else:
            self._bar(m)
        if evals:
            text = f"step {step}: " + " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in evals.items()
            )
            if self.lines:
                print(text, flush=True)
            else:
                self.progress.console.print(text)

    def _elapsed(self, m: dict) -> float:
        """The run's elapsed seconds at row `m`: its "seconds" (the run's clock, which counts on across
        a resume), else our clock, set to agree with the last row that had one."""
        now = time.monotonic()
        if _number(m, "seconds"):
            self.offset = m["seconds"] - now
        return now + self.offset

    def _line(self, m: dict, due: bool) -> None:
        """Print `m`'s line if it is due (`due`: it was evaluated); else keep it for `__exit__`.
        Step 0 (the evaluation before any training) has its evaluation line only."""
        step = m.get("step", 0)
        self.last, self.pending = m, False
        if step >= 1 and (due or self.mark is None or step % self.every == 0 or step >= self.total):
            self._print_line(m)
        else:
            self.pending = step >= 1

    def _print_line(self, m: dict) -> None:
        print(step_line(self.what, self.total, m, self.mark or (0, 0.0, 0)), flush=True)
        self.mark, self.pending = (m.get("step", 0), m["seconds"], m.get("num_tokens", 0)), False

    def _bar(self, m: dict) -> None:
        if not self.shown:
            self.progress.start()
            self.shown = True
        shown = [f"{k} {m[k]:.3f}" for k in ("loss", "reward") if isinstance(m.get(k), float)]
        self.progress.update(self.task, completed=m.get("step", 0), info=", ".join(shown))
        self.last = m


def _number(m: dict, key: str) -> bool:
    return isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool)


def step_line(what: str, total: int, m: dict, mark: tuple[int, float, int] = (0, 0.0, 0)) -> str:
    """One step's progress line, its fields in a fixed order, those a row lacks left out:
    ``rl step=12/114 loss=0.0123 reward=2.310 accuracy=45.0% format=98.0% lr=1.00e-04 steps/s=0.85
    elapsed=0:00:14 eta=0:01:58``. `m["seconds"]` is the run's elapsed time; tokens/s (rows with
    ``num_tokens``, a running count) or steps/s are measured since `mark`, (step, seconds,
    num_tokens) at the line before; the ETA is the steps left at the run's mean time a step so far."""
    step, elapsed = m.get("step", 0), m["seconds"]
    number = functools.partial(_number, m)
    accuracy = next((k for k in ("eval/accuracy", "trigger_acc") if number(k)), None)
    lr = next(
        (k for k in ("learning_rate", "lr") if number(k)), None
    )  # "lr" alone: a row logged before the alias
    fields = [
        f"step={step}/{total}",
        f"loss={m['loss']:.4g}" if number("loss") else None,
        f"reward={m['reward']:.3f}" if number("reward") else None,
        f"accuracy={percent(m[accuracy])}" if accuracy else None,
        f"format={percent(m['reward/format_rate'])}" if number("reward/format_rate") else None,
        f"lr={m[lr]:.2e}" if lr else None,
    ]
    seconds = elapsed - mark[1]
    if seconds > 0 and step > mark[0]:
        fields.append(
            f"tokens/s={(m['num_tokens'] - mark[2]) / seconds:.0f}"
            if number("num_tokens")
            else f"steps/s={(step - mark[0]) / seconds:.3g}"
        )
    fields += [
        f"elapsed={clock(elapsed)}",
        f"eta={clock(elapsed / step * (total - step)) if step > 0 else '?'}",
        "skipped" if "skipped" in m else None,
    ]
    return f"{what} " + " ".join(f for f in fields if f)


def clock(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def demo_rows(results: dict) -> list[tuple[str, str]]:
    """A demo's `results` (its results.json, complete or as a stopped run left it) as (what, value)
    rows: every accuracy held-out and greedy; "—" for what is not measured yet."""
    rows = [
        ("base model, asked directly", percent(results.get("base_direct_acc"))),
        ('base model, "Let\'s think step by step."', percent(results.get("base_cot_prompt_acc"))),
    ]
    if "base_template_acc" in results:  # a pretrained model (demo --model): asked for the template too
        rows.append(
            (
                "base model, asked for the template (format rate)",
                f"{percent(results['base_template_acc'])} ({percent(results.get('base_format_rate'))})",
            )
        )
    rows += [
        (f"Method 1 (own rationales), round {i}", percent(acc))
        for i, acc in enumerate(results.get("method1_acc", []), 1)
    ]
    rows += [
        ("Method 2 (GRPO)", percent(results.get("method2_acc"))),
        ("Method 2 format rate", percent(results.get("method2_format_rate"))),
    ]
    if "r1_zero" in results:
        rows.append(("GRPO from the raw model (R1-Zero)", results["r1_zero"]["summary"]))
    for m in results.get("methods", {}).values():  # the head-to-head, at Method 1's FLOPs
        rows.append((f"equal compute ({m['flops'][0]:.2g} FLOPs): {m['label']}", percent(m["acc"][0])))
    for name, curve in results.get("pass_at_k", {}).items():
        k = max(curve, key=int)
        rows.append((f"pass@1 / pass@{k}: {name}", f"{percent(curve['1'])} / {percent(curve[k])}"))
    if "cold_start" in results:
        rows.append(("cold start: SFT on reference rationales", percent(results["cold_start"]["acc"])))
    before = {p["budget"]: p for p in results.get("budget_curve_method1", [])}
    aware = "budget_aware" in results  # the curve is the budget-aware model's; Method 1's beside it
    for point in results.get("budget_curve", []):
        value = f"{percent(point['acc'])} (format {percent(point['format_rate'])})"
        if point["budget"] in before:
            old = before[point["budget"]]
            value += f"; Method 1: {percent(old['acc'])} ({percent(old['format_rate'])})"
        rows.append(
            (f"thinking budget {point['budget']} tokens" + (", budget-aware" if aware else ""), value)
        )
    if results.get("length_control"):
        control = results["length_control"]
        rows.append(
            (
                '"think for N tokens": mean |n - N| / N at N = '
                + ", ".join(str(t["target"]) for t in control["targets"]),
                percent(control["mean_abs_rel_error"]),
            )
        )
    faith = results.get("faithfulness", {})
    rows += [
        (
            f"{'final' if faith.get('model') else 'base'} model follows a hint / admits it",
            f"{percent(faith.get('hint_follow_rate'))} / {percent(faith.get('admit_rate'))}",
        ),
        ("wall time", f"{results.get('seconds', 0):.0f} s"),
    ]
    return rows


def print_results(results: dict) -> None:
    """The demo's results table, on the terminal."""
    print_table(
        f"reasonlab demo: {results.get('task', '')} (held-out, greedy)", "accuracy", demo_rows(results)
    )


def print_table(title: str, value_header: str, rows: list[tuple[str, str]]) -> None:
    """(what, value) rows as a table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("what")
    table.add_column(value_header, justify="right")
    for what, value in rows:
        table.add_row(what, value)
    Console().print(table)
