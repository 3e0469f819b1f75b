"""GSM8K (Cobbe et al. 2021): grade-school word problems with a numeric answer.

Data: JSONL lines ``{"question": ..., "answer": "worked solution ... #### 72"}``, read from `path` (a
folder holding ``train.jsonl``/``test.jsonl``, or one file), from ``$REASONLAB_GSM8K``, from
``shared/data/gsm8k`` or ``../shared/data/gsm8k`` relative to the working directory, or, where the
`datasets` package and hub access exist, from ``openai/gsm8k``.

Verification is numeric: ``$1,234.50``, ``-3``, ``18 dollars``, ``72.0``, ``= 72``, ``.4``,
``$.50``, ``1 000`` (space or thin-space thousands), ``12 m²`` and ``1000.99€`` are read as numbers
and compared exactly (as fractions). The answer must be one number (with an optional currency sign
before it and units after it, up to 40 characters of letters, %, °, ², /, currency signs): a list
of numbers is not an answer. Answers over 200 characters are not read. A gold that is not one
number is counted (``task.counts["unparsed_gold"]``) and warned about once.
"""

from __future__ import annotations

import os
import random
import re
from fractions import Fraction
from pathlib import Path

from ..jsonl import read_jsonl
from .base import Problem, Task, TooFewProblems, check_split, register_task

_CURRENCY = "$€£¥₹"
_UNIT_START = rf"(?:[^\W\d_]|[%°{_CURRENCY}])"  # a letter (m, kg, dollars, m²), %, °, a currency sign
_NUMBER = re.compile(
    rf"\s*=?\s*(?P<sign>[-+\u2212]?)\s*[{_CURRENCY}]?\s*(?P<sign2>-?)"
    # thousands grouped by commas, spaces or thin spaces (one kind within a number), or plain digits
    r"(?P<int>\d{1,3}(?P<sep>[,\u2009\u202f\u00a0 ])\d{3}(?:(?P=sep)\d{3})*|\d{1,30})?"
    r"(?P<frac>\.\d{1,30})?"
    rf"\s*(?:{_UNIT_START}(?:[^\W\d_]|[%°/.·^'\s{_CURRENCY}]){{0,40}})?\.?\s*"
)
_CALC = re.compile(r"<<[^>]*>>")
_DEFAULT_DIRS = ("shared/data/gsm8k", "../shared/data/gsm8k")


def parse_number(text: str) -> Fraction | None:
    """The single number `text` states, allowing $, thousands commas, a sign and trailing units."""
    if len(text) > 200:  # an answer is short; this also bounds the regex's work
        return None
    m = _NUMBER.fullmatch(text)
    if not m or not (m.group("int") or m.group("frac")):
        return None
    value = Fraction(re.sub(r"\D", "", m.group("int") or "0") + (m.group("frac") or ""))
    negative = (m.group("sign") in ("-", "\u2212")) != (m.group("sign2") == "-")
    return -value if negative else value


def gold_from_solution(solution: str) -> str:
    """The number after ``####`` in a GSM8K answer, commas removed."""
    _, sep, tail = solution.rpartition("####")
    if not sep:
        raise ValueError("GSM8K answer has no '#### N' line")
    return tail.strip().replace(",", "")


def rationale_from_solution(solution: str) -> str:
    """The worked solution without its final line and without calculator annotations <<…>>."""
    body = solution.rpartition("####")[0]
    return " ".join(line.strip() for line in _CALC.sub("", body).splitlines() if line.strip())


def find_data_dir(path: str | None = None) -> Path | None:
    candidates = [path] if path else [os.environ.get("REASONLAB_GSM8K"), *_DEFAULT_DIRS]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    if path:
        raise ValueError(f"GSM8K path {path!r} does not exist")
    return None


def read_jsonl_rows(file: Path) -> list[dict]:
    rows = []
    for lineno, row in read_jsonl(file):
        if "question" not in row or "answer" not in row:
            raise ValueError(f"{file}:{lineno}: needs 'question' and 'answer' fields")
        rows.append(row)
    return rows


def _load_rows(path: str | None, split: str) -> list[dict]:
    data = find_data_dir(path)
    if data is not None:
        return read_jsonl_rows(data / f"{split}.jsonl" if data.is_dir() else data)
    try:
        import datasets  # optional: needs hub access
    except ImportError:
        raise ValueError(
            "no GSM8K data found: pass path=DIR (a folder with train.jsonl/test.jsonl), "
            "set REASONLAB_GSM8K, or install `datasets` with hub access"
        ) from None
    try:
        return list(datasets.load_dataset("openai/gsm8k", "main", split=split))
    except Exception as e:  # no network, no cache: the hub is the last resort, say what to do instead
        raise ValueError(
            f"no GSM8K data found locally and the hub failed ({type(e).__name__}): pass "
            "path=DIR (a folder with train.jsonl/test.jsonl) or set REASONLAB_GSM8K"
        ) from None


@register_task("gsm8k")
class GSM8KTask(Task):
    """GSM8K word problems, numeric answers; data from `path`, $REASONLAB_GSM8K, shared/data/gsm8k or
    the hub."""

    def __init__(self, path: str | None = None):
        self.path = path
        self._rows: dict[str, list[dict]] = {}

    def data_files(self) -> list[Path]:
        data = find_data_dir(self.path)
        if data is None or not data.is_dir():
            return [data] if data else []
        return [data / f"{split}.jsonl" for split in ("train", "test") if (data / f"{split}.jsonl").is_file()]

    def rows(self, split: str) -> list[dict]:
        check_split(split)
        if split not in self._rows:
            self._rows[split] = _load_rows(self.path, split)
        return self._rows[split]

    def problems(
        self, n: int | None = None, split: str = "train", seed: int = 0, at_most: bool = False
    ) -> list[Problem]:
        rows = self.rows(split)
        if n is not None and n > len(rows) and not at_most:
            raise TooFewProblems(f"GSM8K {split} has {len(rows)} problems, fewer than {n}")
        order = list(range(len(rows)))
        random.Random(f"gsm8k:{split}:{seed}").shuffle(order)
        picked = order if n is None else order[:n]
        return [
            Problem(
                rows[i]["question"],
                gold_from_solution(rows[i]["answer"]),
                rationale_from_solution(rows[i]["answer"]),
                {"index": i},
            )
            for i in picked
        ]

    def verify(self, predicted: str, gold: str) -> bool:
        expected = parse_number(gold)
        if expected is None:
            self.count("unparsed_gold", gold)
            return False
        return parse_number(predicted) == expected
