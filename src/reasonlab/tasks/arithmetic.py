"""Integer arithmetic: addition, subtraction, multiplication with configurable digit counts.

The reference rationale works digit by digit from the ones place, as a person does on paper:

- addition ``4+8+0=12`` per column: digit of a, digit of b, carry in, column sum (two digits: the
  first is the carry out, the second the answer digit);
- subtraction ``14-8-0=6`` per column: a leading ``1`` on the top digit means "borrowed ten", so the
  next column subtracts a borrow of 1; when a < b the rationale says ``swap`` and negates;
- multiplication: one partial product per digit of b, each column ``3*6+1=19`` (digit, digit,
  carry in, value), the partial shifted (``>7380``), then the partials added column by column.
"""

from __future__ import annotations

import random
import re

from .base import Problem, Task, register_task

OPS = ("+", "-", "*")
_INT = re.compile(r"[+-]?\d{1,200}")


def parse_int(text: str) -> int | None:
    """The integer `text` spells (surrounding spaces allowed), else None."""
    text = text.strip()
    return int(text) if _INT.fullmatch(text) else None


def _digits(n: int, width: int) -> list[int]:
    """Digits of n from the ones place, padded with zeros to `width`."""
    return [int(c) for c in str(n).zfill(width)[::-1]]


def add_steps(a: int, b: int) -> list[str]:
    width = max(len(str(a)), len(str(b)))
    steps, carry = [], 0
    for x, y in zip(_digits(a, width), _digits(b, width)):
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total:02d}")
        carry = total // 10
    return steps


def sub_steps(a: int, b: int) -> list[str]:
    """Column steps of a - b for a >= b >= 0."""
    width = len(str(a))
    steps, borrow = [], 0
    for x, y in zip(_digits(a, width), _digits(b, width)):
        value = x - y - borrow
        if value < 0:
            steps.append(f"1{x}-{y}-{borrow}={value + 10}")
            borrow = 1
        else:
            steps.append(f"{x}-{y}-{borrow}={value}")
            borrow = 0
    return steps


def mul_steps(a: int, b: int) -> list[str]:
    steps, partials = [], []
    for shift, y in enumerate(_digits(b, len(str(b)))):
        carry = 0
        for x in _digits(a, len(str(a))):
            value = x * y + carry
            steps.append(f"{x}*{y}+{carry}={value:02d}")
            carry = value // 10
        partial = a * y * 10**shift
        steps.append(f">{partial}")
        partials.append(partial)
    total = partials[0]
    for partial in partials[1:]:
        steps += add_steps(total, partial)
        total += partial
        steps.append(f">{total}")
    return steps


def rationale_for(a: int, op: str, b: int) -> str:
    if op == "+":
        return ";".join(add_steps(a, b))
    if op == "-":
        return ";".join(sub_steps(a, b)) if a >= b else ";".join(["swap"] + sub_steps(b, a) + ["neg"])
    if op == "*":
        return ";".join(mul_steps(a, b))
    raise ValueError(f"unknown operator {op!r}")


@register_task("arithmetic")
class ArithmeticTask(Task):
    """`a op b` with `digits`-digit operands (`digits_b` for the second, default the same).

    `op` is one of ``+ - *``, or several of them (e.g. ``"+-"``) to mix. `ask` poses each problem
    in words, the expression put where ``{}`` is (``"What is {}?"`` gives ``What is 12+34?``):
    SmolLM2-135M-Instruct, asked for only the answer, solved 18% of 100 two-digit sums so and 0%
    as bare expressions. The train/test split hashes the question as asked.
    """

    def __init__(self, op: str = "+", digits: int = 3, digits_b: int | None = None, ask: str = ""):
        if ask and ask.count("{}") != 1:
            raise ValueError(f"arithmetic ask must hold one {{}} where the expression goes, got {ask!r}")
        if not op or any(o not in OPS for o in op):
            raise ValueError(f"arithmetic op must be made of {' '.join(OPS)}, got {op!r}")
        if digits < 1 or (digits_b is not None and digits_b < 1):
            raise ValueError("arithmetic digits must be >= 1")
        if digits + (digits_b or digits) > 200:  # a gold answer's digits at most; `_INT` reads up to 200
            raise ValueError(
                f"arithmetic digits + digits_b must be <= 200 (answers are checked up to 200 digits), "
                f"got {digits} + {digits_b or digits}"
            )
        self.ops, self.digits, self.digits_b, self.ask = op, digits, digits_b or digits, ask

    @staticmethod
    def _operand(rng: random.Random, digits: int) -> int:
        low = 0 if digits == 1 else 10 ** (digits - 1)
        return rng.randint(low, 10**digits - 1)

    def sample(self, rng: random.Random) -> Problem:
        op = rng.choice(self.ops)
        a, b = self._operand(rng, self.digits), self._operand(rng, self.digits_b)
        value = a + b if op == "+" else a - b if op == "-" else a * b
        expression = f"{a}{op}{b}"
        question = self.ask.replace("{}", expression) if self.ask else expression
        return Problem(question, str(value), rationale_for(a, op, b), {"a": a, "b": b, "op": op})

    def verify(self, predicted: str, gold: str) -> bool:
        value = parse_int(predicted)
        return value is not None and value == parse_int(gold)
