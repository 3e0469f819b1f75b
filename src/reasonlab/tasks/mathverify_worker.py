"""The math-verify worker: a plain script the `math` task runs as a subprocess (never imported).

Started as ``python mathverify_worker.py`` by `mathverify.WorkerPool`, so it needs no
``if __name__ == "__main__":`` guard in the user's program, works from a notebook, from standard
input and from any thread, and runs math-verify in its own main thread, where its
``signal.alarm`` timeouts work. The parent pins ``PYTHONHASHSEED=0`` so that sympy's set orders,
and with them the rare answers whose verdict depends on them, are the same in every run.

Protocol, one JSON document a line: the worker first writes ``{"ready": true}`` (or
``{"fatal": "..."}`` and exits when math-verify cannot be imported); then for each request
``{"pairs": [[predicted, gold], ...], "timeout": seconds}`` it writes one outcome a pair, in
order, as soon as it is known: ``"correct"``, ``"wrong"``, ``"unparsed_gold"``, ``"timeout"``
(math-verify's own alarm fired) or ``"error: <exception type>"``. A line per pair lets the parent
tell which pair a stuck worker was on.
"""

import json
import logging
import math
import sys

if sys.path and sys.path[0]:  # the script's own folder: its modules must not shadow real ones
    sys.path.pop(0)

GOLD_CACHE_SIZE = 4096  # GRPO checks a group's G completions against one gold: parse it once


def _has_undefined(parsed) -> bool:
    """True when a parse holds nan or a complex infinity (0/0, 1/0): such an answer is not a value,
    and comparing one is where sympy's verdicts depended on the hash seed."""
    import sympy

    for item in parsed:
        if isinstance(item, sympy.Basic):
            try:
                item = item.doit()  # (0*0)/0 is kept unevaluated until asked
            except Exception:  # noqa: BLE001 - some relations (a = b = c) cannot: judge them as written
                pass
            if item.has(sympy.nan, sympy.zoo):
                return True
    return False


def judge(parse, verify, timeout_error, golds: dict, predicted: str, gold: str, budget: int) -> str:
    """One outcome. math-verify's own calls swallow timeouts and errors into "no parse" or False;
    here they are asked to raise, so a timeout is reported as one. After any other error the call is
    made again the default way, so the verdict is math-verify's, and an error is reported only when
    that verdict is False (an error may have hidden a match)."""

    def call(fn, *args, **kwargs):
        try:
            return fn(*args, raise_on_error=True, **kwargs), None
        except timeout_error:
            raise
        except Exception as e:  # noqa: BLE001 - judged again below, and reported if it cost a match
            return fn(*args, raise_on_error=False, **kwargs), type(e).__name__

    if gold not in golds:
        if len(golds) >= GOLD_CACHE_SIZE:
            golds.pop(next(iter(golds)))
        golds[gold] = call(parse, gold, parsing_timeout=budget)[0]
    gold_parsed = golds[gold]
    if not gold_parsed or _has_undefined(gold_parsed):
        return "unparsed_gold"
    pred_parsed, _ = call(parse, predicted, parsing_timeout=budget)  # unreadable: the answer's fault
    if not pred_parsed or _has_undefined(pred_parsed):
        return "wrong"
    ok, error = call(verify, gold_parsed, pred_parsed, timeout_seconds=budget)
    return "correct" if ok else f"error: {error}" if error else "wrong"


def main() -> None:
    out = sys.stdout
    try:
        from math_verify import parse, verify
        from math_verify.errors import TimeoutException
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        out.write(json.dumps({"fatal": f"cannot import math_verify: {type(e).__name__}: {e}"}) + "\n")
        out.flush()
        sys.exit(1)
    logging.disable(logging.WARNING)  # what math-verify logs is reported as outcomes instead
    verify(
        parse("$\\frac{1}{2}$"), parse("$0.5$")
    )  # warm up (the LaTeX parser loads on first use) before timing anything
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    golds: dict[str, list] = {}
    for line in sys.stdin:
        request = json.loads(line)
        budget = max(1, math.ceil(request["timeout"]))
        for predicted, gold in request["pairs"]:
            try:
                outcome = judge(parse, verify, TimeoutException, golds, predicted, gold, budget)
            except TimeoutException:
                outcome = "timeout"
            except Exception as e:  # noqa: BLE001 - counted by the parent, never silent
                outcome = f"error: {type(e).__name__}"
            out.write(json.dumps(outcome) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
