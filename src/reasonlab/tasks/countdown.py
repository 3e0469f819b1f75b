"""Countdown (as in TinyZero): reach a target with the given numbers, each used exactly once.

Question: ``Use 3 5 7 to make 22``. Gold answer: ``3 5 7 -> 22`` (the numbers and the target, since
many expressions are right). A predicted answer is an expression such as ``(7-3)*5+2``.

Verification parses the expression with a small recursive-descent parser over exact rationals
(`fractions.Fraction`): integers, ``+ - * /`` and parentheses, nothing else. It never calls `eval`
and never hands raw text to sympy. Division by zero, unknown characters, oversized inputs and
wrong numbers are all simply "not correct".

The reference rationale is a search trace: a few random attempts that fail (``no``), then the path
that reaches the target (``yes``), e.g. ``3+5=8,8*7=56 no;7-3=4,4*5=20 no;7*3=21,21+5=26 yes``.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction

from .base import Problem, Task, register_task

MAX_EXPR_CHARS = 200
MAX_DEPTH = 32
_GOLD = re.compile(r"\s*((?:\d+\s+)*\d+)\s*->\s*(\d+)\s*")
_TOKEN = re.compile(r"\s*(\d{1,9}|[-+*/()])")


class _Reject(Exception):
    pass


def parse_expression(text: str) -> tuple[Fraction, list[int]]:
    """Value and the list of integer literals of an arithmetic expression. Raises ValueError."""
    if len(text) > MAX_EXPR_CHARS:
        raise ValueError("expression too long")
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"unexpected character at {pos}")
        tokens.append(m.group(1))
        pos = m.end()
    numbers: list[int] = []
    state = {"i": 0}

    def peek():
        return tokens[state["i"]] if state["i"] < len(tokens) else None

    def take():
        token = peek()
        state["i"] += 1
        return token

    def expr(depth):
        value = term(depth)
        while peek() in ("+", "-"):
            value = value + term(depth) if take() == "+" else value - term(depth)
        return value

    def term(depth):
        value = factor(depth)
        while peek() in ("*", "/"):
            op, rhs = take(), factor(depth)
            if op == "/" and rhs == 0:
                raise _Reject("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def factor(depth):
        if depth > MAX_DEPTH:
            raise _Reject("nested too deeply")
        token = take()
        if token == "(":
            value = expr(depth + 1)
            if take() != ")":
                raise _Reject("unbalanced parentheses")
            return value
        if token is not None and token.isdigit():
            numbers.append(int(token))
            return Fraction(int(token))
        raise _Reject(f"unexpected token {token!r}")

    try:
        value = expr(0)
    except _Reject as e:
        raise ValueError(str(e)) from None
    if peek() is not None:
        raise ValueError(f"unexpected token {peek()!r}")
    return value, numbers


def parse_gold(gold: str) -> tuple[list[int], int]:
    m = _GOLD.fullmatch(gold)
    if not m:
        raise ValueError(f"countdown gold answer must look like '3 5 7 -> 22', got {gold!r}")
    return [int(x) for x in m.group(1).split()], int(m.group(2))


def check_expression(predicted: str, numbers: list[int], target: int) -> bool:
    expression = predicted.strip()
    if "=" in expression:  # accept a restated result, "(7-3)*5+2 = 22", when it is the target
        expression, _, stated = expression.rpartition("=")
        if stated.strip() != str(target):
            return False
    try:
        value, used = parse_expression(expression)
    except ValueError:
        return False
    return value == target and sorted(used) == sorted(numbers)


def _combine(rng: random.Random, x: tuple[int, str], y: tuple[int, str]):
    """Apply a random operator that keeps values non-negative integers; None if none fits."""
    (a, ea), (b, eb) = (x, y) if x[0] >= y[0] else (y, x)
    ops = ["+", "-", "*"] + (["/"] if b and a % b == 0 else [])
    op = rng.choice(ops)
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
    return value, f"({ea}{op}{eb})", f"{a}{op}{b}={value}"


def _random_path(rng: random.Random, numbers: list[int]):
    """Combine the numbers pairwise at random until one is left: (value, expression, steps)."""
    pool = [(n, str(n)) for n in numbers]
    steps = []
    while len(pool) > 1:
        i, j = sorted(rng.sample(range(len(pool)), 2))
        y, x = pool.pop(j), pool.pop(i)
        value, expression, step = _combine(rng, x, y)
        pool.append((value, expression))
        steps.append(step)
    value, expression = pool[0]
    if expression.startswith("(") and expression.endswith(")") and len(numbers) > 1:
        expression = expression[1:-1]
    return value, expression, steps


@register_task("countdown")
class CountdownTask(Task):
    """`count` numbers in 1..`max_number`; targets in 1..`max_target`; `attempts` failed tries shown."""

    def __init__(self, count: int = 3, max_number: int = 20, max_target: int = 100, attempts: int = 2):
        if count < 2:
            raise ValueError("countdown needs count >= 2 numbers")
        self.count, self.max_number, self.max_target, self.attempts = count, max_number, max_target, attempts

    def sample(self, rng: random.Random) -> Problem:
        while True:
            numbers = [rng.randint(1, self.max_number) for _ in range(self.count)]
            target, expression, steps = _random_path(rng, numbers)
            if 1 <= target <= self.max_target:
                break
        tries = []
        for _ in range(20 * self.attempts):
            if len(tries) == self.attempts:
                break
            value, _, wrong = _random_path(rng, numbers)
            if value != target:
                tries.append(",".join(wrong) + " no")
        rationale = ";".join(tries + [",".join(steps) + " yes"])
        gold = " ".join(map(str, numbers)) + f" -> {target}"
        question = f"Use {' '.join(map(str, numbers))} to make {target}"
        return Problem(question, gold, rationale, {"numbers": numbers, "target": target}, solution=expression)

    def verify(self, predicted: str, gold: str) -> bool:
        numbers, target = parse_gold(gold)
        return check_expression(predicted, numbers, target)
