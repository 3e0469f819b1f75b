"""Variable chains: multi-hop evaluation, where thinking step by step is the only way to the answer.

Question: ``c=b-2;a=7;e=d+1;b=a+4;d=c+5;e?`` (definitions shuffled). Gold: the value of the last
variable. Reference rationale: each variable in turn, its definition restated and evaluated::

    a=7;b=a+4=7+4=11;c=b-2=11-2=9;d=c+5=9+5=14;e=d+1=14+1=15

Every lookup in the rationale is by content (find ``b=`` in the question, find ``a=…;`` in the
thought), which small transformers with relative positions learn quickly, while answering directly
needs as many hops as there are variables: more than a two-layer model can do in one pass. That
makes it the demo's task. Values stay in 0..`max_value`.

**Mixed difficulty** (`min_length` < `length`): each problem's number of variables is drawn
uniformly from `min_length`..`length`, and `meta["difficulty"]` records its hops (variables - 1),
so a thinking budget can buy part of the accuracy (the short chains fit a small one) and every
evaluation reports accuracy and thinking length per difficulty.
"""

from __future__ import annotations

import random
import string

from .arithmetic import parse_int
from .base import Problem, Task, register_task


@register_task("chain")
class ChainTask(Task):
    """`length` variables a, b, c… (or between `min_length` and `length`, drawn per problem); each
    after the first is the previous one plus or minus 1..9."""

    def __init__(self, length: int = 5, max_value: int = 20, min_length: int | None = None):
        min_length = length if min_length is None else min_length
        if not 2 <= length <= 26:
            raise ValueError("chain length must be between 2 and 26")
        if not 2 <= min_length <= length:
            raise ValueError(f"chain min_length must be between 2 and length ({length})")
        if max_value < 9:
            raise ValueError("chain max_value must be >= 9")
        self.length, self.max_value, self.min_length = length, max_value, min_length

    def sample(self, rng: random.Random) -> Problem:
        length = self.length if self.min_length == self.length else rng.randint(self.min_length, self.length)
        names = string.ascii_lowercase[:length]
        value = rng.randint(0, self.max_value)
        definitions, steps = [f"{names[0]}={value}"], [f"{names[0]}={value}"]
        for prev, name in zip(names, names[1:]):
            ops = [op for op in "+-" if 0 <= (value + 1 if op == "+" else value - 1) <= self.max_value]
            op = rng.choice(ops)
            room = self.max_value - value if op == "+" else value
            k = rng.randint(1, min(9, room))
            new = value + k if op == "+" else value - k
            definitions.append(f"{name}={prev}{op}{k}")
            steps.append(f"{name}={prev}{op}{k}={value}{op}{k}={new}")
            value = new
        rng.shuffle(definitions)
        question = ";".join(definitions) + f";{names[-1]}?"
        return Problem(question, str(value), ";".join(steps), meta={"difficulty": length - 1})

    def verify(self, predicted: str, gold: str) -> bool:
        value = parse_int(predicted)
        return value is not None and value == parse_int(gold)

    def check_steps(self, question: str, think: str) -> bool:
        """Each step restates a definition of the question and evaluates it with a value the thought
        has already established (``b=a+4=7+4=11``, or ``a=7`` for the literal); the asked variable
        ends up evaluated. Checks the steps, not the answer: no reference rationale is used. The steps
        are the thought's first line; a sentence after it ("The answer is 15.", as free text ends) is
        not a step."""
        *definitions, asked = question.split(";")
        defs = dict(d.split("=", 1) for d in definitions if "=" in d)
        values: dict[str, int] = {}
        for step in think.strip().split("\n")[0].split(";"):
            parts = step.strip().split("=")
            name = parts[0]
            if name not in defs or parts[1:2] != [defs[name]]:
                return False
            if len(parts) == 2:  # a literal: a=7
                if parse_int(defs[name]) is None:
                    return False
                values[name] = parse_int(defs[name])
                continue
            if len(parts) != 4 or len(defs[name]) < 3 or defs[name][0] not in values:
                return False
            prev, op, k = defs[name][0], defs[name][1], parse_int(defs[name][2:])
            result = values[prev] + k if op == "+" else values[prev] - k
            if parts[2] != f"{values[prev]}{op}{k}" or parse_int(parts[3]) != result:
                return False
            values[name] = result
        return asked.rstrip("?") in values
