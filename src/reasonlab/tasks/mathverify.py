"""Symbolic answer checking with `math-verify` (LaTeX, fractions, ``\\boxed{}``, sets, intervals).

math-verify bounds its own work with ``signal.alarm``, which only works in the main thread: called
from a thread (a reward running in a thread pool, a web server), it raises or hangs. Here every check
runs in one long-lived worker *process* (started on first use with the ``spawn`` method, so it is
safe beside torch's threads), where math-verify's own alarms work, and the caller waits at most
`timeout` seconds: a worker that overruns is killed and replaced, and the answer counts as wrong.
This works from any thread, and a pathological input can never stall training.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import threading
from pathlib import Path

from ..jsonl import read_jsonl
from .base import Problem, Task, check_split, register_task

DEFAULT_TIMEOUT = 5.0
MAX_CHARS = 2000  # longer answers are not parsed at all


def _worker(conn) -> None:
    from math_verify import parse, verify  # imported here: the parent never pays for sympy

    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        predicted, gold, seconds = request
        budget = max(1, int(seconds))
        try:
            gold_parsed = parse(gold, parsing_timeout=budget)
            pred_parsed = parse(predicted, parsing_timeout=budget)
            ok = bool(gold_parsed) and bool(pred_parsed) and verify(gold_parsed, pred_parsed,
                                                                     timeout_seconds=budget)
        except BaseException:  # math-verify raises many kinds on odd input: all mean "not equal"
            ok = False
        conn.send(ok)


class _Checker:
    """One worker process behind a lock; restarted after a timeout or a crash."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None

    def _start(self):
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def stop(self):
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
            self._conn.close()
        self._proc = self._conn = None

    def check(self, predicted: str, gold: str, timeout: float) -> bool:
        with self._lock:
            wait = timeout
            if self._proc is None or not self._proc.is_alive():
                self._start()
                wait += 30.0  # the first call also waits for the worker to import sympy
            try:
                self._conn.send((predicted, gold, timeout))
                if self._conn.poll(wait):
                    return bool(self._conn.recv())
            except (EOFError, OSError):
                pass
            self.stop()  # overran or died: kill it; the next call starts a fresh one
            return False


_CHECKER = _Checker()
atexit.register(_CHECKER.stop)


def math_equal(predicted: str, gold: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """True when math-verify finds `predicted` equal to `gold`; False on any failure or timeout.

    >>> math_equal("0.5", "$\\\\frac{1}{2}$")
    True
    """
    if not predicted.strip() or len(predicted) > MAX_CHARS or len(gold) > MAX_CHARS:
        return False
    # Bare answers ("1/2", "\\frac12") parse best inside math delimiters.
    wrap = (lambda s: s if "$" in s or "\\boxed" in s or "\\(" in s else f"${s}$")
    return _CHECKER.check(wrap(predicted), wrap(gold), timeout)


@register_task("math")
class MathTask(Task):
    """Problems from a JSONL file (`problem` or `question`, and `answer`), checked by math-verify."""

    def __init__(self, path: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.path, self.timeout = path, timeout

    def problems(self, n: int | None = None, split: str = "train", seed: int = 0,
                 at_most: bool = False) -> list[Problem]:
        """The file's problems in order: the first `n`, or all of them when the file holds fewer
        (`at_most` is always true here; `seed` is unused: the file's order is the order)."""
        check_split(split)
        if not self.path:
            raise ValueError("the math task needs path=FILE.jsonl (or a folder with train/test.jsonl)")
        file = Path(self.path)
        file = file / f"{split}.jsonl" if file.is_dir() else file
        problems = []
        for lineno, r in read_jsonl(file):
            if not (r.get("problem") or r.get("question")) or "answer" not in r:
                raise ValueError(f"{file}:{lineno}: needs 'problem' (or 'question') and 'answer'")
            problems.append(Problem(r.get("problem") or r["question"], str(r["answer"]), r.get("solution")))
        return problems if n is None else problems[:n]

    def verify(self, predicted: str, gold: str) -> bool:
        return math_equal(predicted, gold, self.timeout)
