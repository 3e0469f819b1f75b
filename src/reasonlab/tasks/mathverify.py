"""Symbolic answer checking with `math-verify` (LaTeX, fractions, ``\\boxed{}``, sets, intervals).

Every answer meets one of three checks, in this order:

1. **Words compare as text.** When either side is plain words (letters only, two or more, maybe
   inside ``\\text{}``), both sides are compared as case-folded text: ``silent`` is not ``listen``
   (math-verify alone reads both as the product of their letters and finds them equal).
2. **Plain numbers compare exactly**, in this process: integers, decimals (``.5`` too) and
   ``a/b`` equal as fractions are correct, and two different integers are wrong. Everything else
   (``0.333333`` against ``1/3``, where math-verify rounds) goes on to math-verify, so this shortcut
   never disagrees with it; it only saves the worker a trip for the common case.
3. **math-verify**, in worker processes (`WorkerPool`): a bare answer is wrapped in ``$…$`` so that
   math-verify reads all of it (unwrapped, it reads ``1 + \\frac{1}{e}`` as ``1``); prose (``The
   answer is …``) is left to math-verify's own extraction. Before that, space or thin-space
   thousands (``1 000``) are joined and mixed numbers (``4 4/9``) written as one fraction.

The workers are plain scripts started with ``subprocess`` (see `mathverify_worker.py`): no
``__main__`` guard needed, usable from a notebook, standard input or any thread, and math-verify's
``signal.alarm`` timeouts work in them. A check that overruns its timeout kills its worker (a fresh
one takes the next check) and counts as wrong, with outcome ``timeout``. A worker that cannot start,
or dies twice on the same answer, raises `VerifierError`: a verifier that cannot run never scores
answers wrong in silence.

Outcomes: ``correct``, ``wrong``, ``timeout``, ``too_long`` (an answer over `MAX_CHARS`),
``unparsed_gold`` (a gold math-verify cannot read, or one that is not a value such as 0/0), and
``error: <type>`` (math-verify raised). `MathTask.verify_batch` counts all but the first two in
`task.counts` (as ``timeouts``, ``too_long``, ``unparsed_gold``, ``errors``), which the trainers log
as ``verify/<name>``.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

from .base import Problem, Task, check_split, register_task

DEFAULT_TIMEOUT = 5.0
MAX_CHARS = 2000  # longer answers (and golds) are not parsed at all
STARTUP_SECONDS = 60.0  # a worker's first import of sympy and math-verify
BATCH_PER_WORKER = 16  # below this many checks a batch goes to one worker, not all of them
# seconds past `timeout` before a check's worker is killed (math-verify's own alarms are whole seconds)
CHECK_MARGIN = 0.5


class VerifierError(RuntimeError):
    """The verifier could not run (its worker did not start, or kept dying): no answer was judged."""


# ---- the checks made in this process ----------------------------------------------------------

_TEXT_WRAPPERS = re.compile(r"^\$?\s*(?:\\(?:text|textbf|mathrm|boxed)\{(.*)\})\s*\$?$", re.S)
_MATH_MODE = re.compile(r"\$\s*([^$]*?)\s*\$|\\\(\s*(.*?)\s*\\\)", re.S)
_WORDS = re.compile(r"[^\W\d_]{2,}(?:[\s'-]+[^\W\d_]+)*")
_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)")
_RATIO = re.compile(r"[-+]?\d+/\d+")
_SPACE_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:[ \u2009\u202f\u00a0]\d{3})+(?![\d.]\d)")
_MIXED = re.compile(r"(?<![\w.\\/{])(\d+)\s+(\d+)/(\d+)(?![\w/{]|\.\d)")
_PROSE = re.compile(r"(?<![\\\w])[A-Za-z]{2,}\s+[A-Za-z]{2,}")


def plain_words(text: str) -> str | None:
    """The case-folded words of an answer that is words only (``\\text{Yes}``, ``$odd$``), or of the
    last ``\\boxed{}`` in a longer text when that is words only; else None."""
    text = text.strip().rstrip(".").strip()
    while (m := _TEXT_WRAPPERS.match(text) or _MATH_MODE.fullmatch(text)) is not None:
        text = m.group(m.lastindex or 1).strip()
    if _WORDS.fullmatch(text):
        return " ".join(text.casefold().split())
    boxed = text[text.rfind("\\boxed{") :].partition("$")[0] if "\\boxed{" in text else text
    return plain_words(boxed) if boxed != text else None


def plain_number(text: str) -> Fraction | None:
    """The exact value of an integer, a decimal or ``a/b`` written plainly, else None."""
    text = text.strip()
    if _DECIMAL.fullmatch(text):
        return Fraction(text)
    if _RATIO.fullmatch(text) and not text.endswith("/0") and int(text.rpartition("/")[2]):
        return Fraction(text)
    return None


def _is_integer(text: str) -> bool:
    return "." not in text and "/" not in text


def quick_outcome(predicted: str, gold: str) -> str | None:
    """The outcome when it needs no math-verify (empty, too long, words, plain numbers), else None."""
    if len(gold) > MAX_CHARS:
        return "unparsed_gold"
    if not predicted.strip():
        return "wrong"
    if len(predicted) > MAX_CHARS:
        return "too_long"
    if " ".join(predicted.split()) == " ".join(gold.split()):
        return "correct"  # the gold itself, even one math-verify cannot read ($12:00$ is 12/0 to it)
    words = plain_words(predicted), plain_words(gold)
    if words != (None, None):
        return "correct" if words[0] == words[1] else "wrong"
    a, b = plain_number(predicted), plain_number(gold)
    if a is not None and b is not None:
        if a == b:
            return "correct"
        if _is_integer(predicted) and _is_integer(gold):
            return "wrong"
    return None


def _mixed(m: re.Match) -> str:
    whole, numerator, denominator = (int(g) for g in m.groups())
    if not 0 < numerator < denominator:
        return m.group(0)  # not a proper mixed number (4 0/0, 3 5/4): leave it as written
    return f"{whole * denominator + numerator}/{denominator}"


def prepare(text: str) -> str:
    """The text math-verify is given: thousands joined, mixed numbers as one fraction, and a bare
    answer wrapped in ``$…$`` (prose and answers with their own delimiters are left unwrapped)."""
    text = _SPACE_THOUSANDS.sub(lambda m: re.sub(r"\D", "", m.group(0)), text.strip())
    text = _MIXED.sub(_mixed, text)
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text or _PROSE.search(text):
        return text
    return f"${text.rstrip('.')}$"


# ---- the math-verify workers -----------------------------------------------------------------


class _Worker:
    """One worker process and the pipe to it; restarted after a timeout or a death."""

    SCRIPT = Path(__file__).with_name("mathverify_worker.py")

    def __init__(self):
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.buffer = b""
        self.stderr = None  # the worker's stderr, kept in a file for the message if it fails

    def start(self) -> None:
        self.close_log()
        self.stderr = tempfile.TemporaryFile()
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # a verdict must not depend on the process
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(self.SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.stderr,
                env=env,
            )
        except OSError as e:
            raise VerifierError(f"cannot start the math-verify worker ({sys.executable}): {e}") from None
        self.buffer = b""
        try:
            hello = self.readline(time.monotonic() + STARTUP_SECONDS)
        except EOFError:
            hello = None
        if not isinstance(hello, dict) or not hello.get("ready"):
            why = hello.get("fatal") if isinstance(hello, dict) else None
            self.stop()
            raise VerifierError(f"the math-verify worker did not start: {why or self.stderr_tail()}")

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no answer and no error message"

    def close_log(self) -> None:
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                pipe.close()
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def readline(self, deadline: float):
        """The next JSON line, or None when `deadline` passes first; EOFError when the worker died."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def run(self, pairs: list[tuple[str, str]], timeout: float) -> list[str]:
        """One outcome a pair; a pair that overruns `timeout` is ``timeout`` and its worker replaced."""
        out: list[str] = []
        died_on = None
        with self.lock:
            while len(out) < len(pairs):
                if not self.alive():
                    self.start()
                rest = pairs[len(out) :]
                try:
                    self.proc.stdin.write((json.dumps({"pairs": rest, "timeout": timeout}) + "\n").encode())
                    self.proc.stdin.flush()
                    for _ in rest:
                        outcome = self.readline(time.monotonic() + timeout + CHECK_MARGIN)
                        if outcome is None:  # stuck past math-verify's own alarms
                            self.stop()
                            out.append("timeout")
                            break
                        out.append(outcome)
                        died_on = None
                except (EOFError, BrokenPipeError):
                    self.stop()
                    if died_on == len(out):
                        raise VerifierError(
                            f"the math-verify worker died twice checking "
                            f"{pairs[len(out)][0][:80]!r}: {self.stderr_tail()}"
                        ) from None
                    died_on = len(out)  # try that pair once more on a fresh worker
        return out


class WorkerPool:
    """`size` workers (default: ``$REASONLAB_VERIFY_WORKERS``, else up to 2); a large batch is split
    between them, each part on its own thread (they wait on pipes, so the GIL is free)."""

    def __init__(self, size: int | None = None):
        size = size or int(os.environ.get("REASONLAB_VERIFY_WORKERS", 0)) or min(2, os.cpu_count() or 1)
        self.workers = [_Worker() for _ in range(size)]
        self.next = 0
        self.threads = ThreadPoolExecutor(max_workers=size) if size > 1 else None

    def check(self, pairs: list[tuple[str, str]], timeout: float = DEFAULT_TIMEOUT) -> list[str]:
        if not pairs:
            return []
        if self.threads is None or len(pairs) < BATCH_PER_WORKER * 2:
            self.next = (self.next + 1) % len(self.workers)
            return self.workers[self.next].run(pairs, timeout)
        step = math.ceil(len(pairs) / len(self.workers))
        parts = [pairs[i : i + step] for i in range(0, len(pairs), step)]
        futures = [self.threads.submit(w.run, part, timeout) for w, part in zip(self.workers, parts)]
        return [outcome for f in futures for outcome in f.result()]

    def stop(self) -> None:
        for worker in self.workers:
            with worker.lock:
                worker.stop()
                worker.close_log()


_POOL = WorkerPool()
atexit.register(_POOL.stop)


def verify_outcomes(pairs: Sequence[tuple[str, str]], timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """The outcome of each (predicted, gold) pair: ``correct``, ``wrong`` or an event (module doc)."""
    outcomes = [quick_outcome(p, g) for p, g in pairs]
    prepared = {
        i: (prepare(p), prepare(g)) for i, ((p, g), o) in enumerate(zip(pairs, outcomes)) if o is None
    }
    todo = list(dict.fromkeys(prepared.values()))  # each distinct pair once: a group's answers often agree
    checked = dict(zip(todo, _POOL.check(todo, timeout)))
    return [checked[prepared[i]] if o is None else o for i, o in enumerate(outcomes)]


def math_equal(predicted: str, gold: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """True when `predicted` equals `gold` (a timeout or an unreadable gold is False; `MathTask`
    counts those, this function does not).

    >>> math_equal("0.5", "$\\\\frac{1}{2}$")
    True
    """
    return verify_outcomes([(predicted, gold)], timeout)[0] == "correct"


@register_task("math")
class MathTask(Task):
    """Problems from a dataset (`problem` or `question`, and `answer`), checked by math-verify.

    `path` is read by the data task's loader (`tasks.data`): a JSONL, JSON, CSV or parquet file, a
    save_to_disk folder, or a folder of train/test files. Without a test split, `eval_fraction` of
    the rows is held out by a seeded hash of the row (as ``--data`` does), so the test split is never
    the training file; test rows that are also training rows are left out."""

    def __init__(self, path: str | None = None, timeout: float = DEFAULT_TIMEOUT, eval_fraction: float = 0.1):
        self.path, self.timeout, self.eval_fraction = path, timeout, eval_fraction
        self._data = None

    def problems(
        self, n: int | None = None, split: str = "train", seed: int = 0, at_most: bool = False
    ) -> list[Problem]:
        """The split's problems in the dataset's order: the first `n`, or all of them when there are
        fewer (`at_most` is always true here; `seed` is unused: the file's order is the order)."""
        check_split(split)
        if not self.path:
            raise ValueError("the math task needs path=FILE (or a folder with train/test files)")
        if self._data is None:
            from .data import PROMPT_COLUMNS, DataTask

            data = DataTask(
                str(self.path), answer_column="answer", verifier="exact", eval_fraction=self.eval_fraction
            )
            data.prompt_columns = tuple(dict.fromkeys(("problem", "question", *PROMPT_COLUMNS)))
            self._data = data
        problems = self._data.problems(split=split)
        return problems if n is None else problems[:n]

    def data_files(self) -> list[Path]:
        if not self.path:
            return []
        file = Path(self.path)
        return sorted(f for f in file.rglob("*") if f.is_file()) if file.is_dir() else [file]

    def verify(self, predicted: str, gold: str) -> bool:
        return self.verify_batch([predicted], [gold])[0]

    def verify_batch(self, predicted: Sequence[str], golds: Sequence[str]) -> list[bool]:
        outcomes = verify_outcomes(list(zip(predicted, golds, strict=True)), self.timeout)
        for outcome, gold in zip(outcomes, golds):
            if outcome not in ("correct", "wrong"):
                self.count(_EVENTS.get(outcome.partition(":")[0], outcome), gold)
        return [o == "correct" for o in outcomes]


_EVENTS = {"timeout": "timeouts", "error": "errors"}  # outcome -> its counter in `task.counts`
