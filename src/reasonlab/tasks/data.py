"""Your own dataset as a task: `--data PATH` (the task ``data``), read through the `datasets` library.

What it reads: a JSONL, JSON, CSV or parquet file; a folder that `datasets`' ``save_to_disk``
wrote (a `Dataset` or a `DatasetDict`); a folder of ``train.*`` and ``test.*`` (or
``validation.*``) files; in Python, a `datasets.Dataset` itself (`DataTask.from_dataset`).

Columns: the prompt is `prompt_column`, else the first of ``prompt``, ``question``, ``problem``,
``input``, ``query`` (TRL's ``prompt`` included); the gold answer is `answer_column`, else the first
of ``answer``, ``solution``, ``ground_truth``, ``target``. A prompt may be a conversation (a list of
``{"role", "content"}`` messages, as TRL's conversational datasets hold): it is asked as that
conversation (`template.Question`). A GSM8K-style ``… #### 72`` answer is read as 72. Every
column of a row reaches the reward functions by name (`rewards.user_reward`).

Splits: the test split when there is one (a ``test``/``validation`` split or file, or `test`: a
file, folder or split name); else a share `eval_fraction` of the rows is held out, chosen by a
seeded hash of the row's prompt and answer, so the same rows are held out whatever their order.
Test rows that are also training rows are dropped (with a warning), and a test split made only of
training rows is refused: a held-out number is never measured on the training problems.

The verifier (`verifier`) is ``math`` (math-verify, as the ``math`` task), ``numeric`` (one number,
as ``gsm8k``), ``exact`` (the same text, white space aside), ``none`` (every answer wrong: your
reward functions alone judge), or any registered task's name (``countdown``, ``arithmetic``, …).

Prompts: `prompt_template`, a Jinja2 file, renders the text of the user's turn from the row: every
column by name, ``question`` (the prompt column's text: its last user message for a conversation)
and ``system_prompt``. The style then wraps it as any question (`template.build_prompt`: the chat
template, the R1 conversation, or, plain, the text with the trigger unless ``--no-trigger``).
`output` is what the model writes: ``template`` (``<think>…</think><answer>…</answer>``, asked
for by the style and scored strictly) or ``free`` (its own format: no tags asked for, the default
reward off, your reward functions alone judge (`output_rewards`), an evaluation reads the answer
from the reply as `template.read_free_answer` does).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from ..template import OUTPUTS, Question
from .base import Problem, Task, check_split, get_task, list_tasks, register_task

PROMPT_COLUMNS = ("prompt", "question", "problem", "input", "query")
ANSWER_COLUMNS = ("answer", "solution", "ground_truth", "target")
RATIONALE_COLUMNS = ("rationale", "solution")  # a worked solution, when it is not the answer column
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TEST_SPLITS = ("test", "validation", "eval")
VERIFIERS = ("math", "numeric", "exact", "none")  # and any registered task's name


def _datasets():
    try:
        import datasets
    except ImportError:
        raise UserError(
            "--data reads datasets with the `datasets` package (a dependency of reasonlab): "
            "pip install datasets"
        ) from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def read_splits(path) -> dict:
    """The splits at `path` (split name -> `datasets.Dataset`): a file is one ``train`` split, a
    ``save_to_disk`` folder its own splits, a folder of files one split a ``NAME.ext`` file."""
    ds = _datasets()
    if isinstance(path, ds.Dataset):
        return {"train": path}
    if isinstance(path, ds.DatasetDict):
        return dict(path)
    where = Path(path).expanduser()
    if not where.exists():
        raise UserError(f"--data {path}: no such file or folder")
    if not (where.is_file() or where.is_dir()):  # /dev/zero, a FIFO: reading it never ends
        raise UserError(f"--data {str(where)!r} is not a regular file")
    try:
        if where.is_dir() and any((where / f).is_file() for f in ("dataset_dict.json", "state.json")):
            loaded = ds.load_from_disk(str(where))
            return dict(loaded) if isinstance(loaded, ds.DatasetDict) else {"train": loaded}
        files = [where] if where.is_file() else split_files(where)
        return {
            (f.stem if where.is_dir() else "train"): ds.load_dataset(
                builder_of(f), data_files=str(f), split="train"
            )
            for f in files
        }
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader's failure is the file's: one line naming it
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--data {path}: cannot read it ({why[:200]})") from None


def read_rows(path, split: str = "train") -> list[dict]:
    """The rows of one split of the dataset at `path` (`read_splits`) as dicts: the ``train``
    split, or the only one there is."""
    found = read_splits(path)
    if split not in found and len(found) != 1:
        raise UserError(f"--data {path}: no {split!r} split (its splits: {', '.join(found)})")
    return (found[split] if split in found else next(iter(found.values()))).to_list()


def load_prompt_template(path: str):
    """A Jinja2 prompt template from its file (undefined names refused, not rendered empty)."""
    try:
        import jinja2
    except ImportError:
        raise UserError("--prompt-template needs jinja2: pip install 'jinja2>=3'") from None
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"--prompt-template {path}: no such file")
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
    try:
        return environment.from_string(file.read_text())
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"--prompt-template {path}:{e.lineno}: {e.message}") from None
    except UnicodeDecodeError:
        raise UserError(f"--prompt-template {path}: not UTF-8 text") from None


def builder_of(file: Path) -> str:
    if file.suffix.lower() not in BUILDERS:
        raise UserError(
            f"--data {file}: unknown file type {file.suffix or '(none)'!r}; give "
            f"{', '.join(BUILDERS)} or a save_to_disk folder"
        )
    return BUILDERS[file.suffix.lower()]


def split_files(folder: Path) -> list[Path]:
    """A folder's ``train.*`` and test files (``test.*``, ``validation.*``, ``eval.*``)."""
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and f.suffix.lower() in BUILDERS]
    named = [f for f in files if f.stem in ("train", *TEST_SPLITS)]
    if not any(f.stem == "train" for f in named):
        raise UserError(
            f"--data {folder} is a folder with no train file (train.jsonl, train.parquet, …) and not a "
            "save_to_disk folder: give a file, or such a folder"
        )
    return named


def row_key(prompt, answer, seed: int = 0) -> int:
    """A seeded hash of a row's prompt and answer: which split it falls in, and how test rows are
    matched to training rows."""
    text = json.dumps([seed, prompt, answer], sort_keys=True, ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def pick_column(given: str | None, names: Sequence[str], defaults: Sequence[str], what: str) -> str | None:
    if given:
        if given not in names:
            raise UserError(f"--data has no {what} column {given!r}; its columns: {', '.join(names)}")
        return given
    return next((c for c in defaults if c in names), None)


@register_task("data")
class DataTask(Task):
    """Your dataset (JSONL, JSON, CSV, parquet, save_to_disk, train/test files), checked by `verifier`."""

    prompt_columns: tuple[str, ...] = PROMPT_COLUMNS  # the prompt column when none is named, in order

    def __init__(
        self,
        path: str | None = None,
        prompt_column: str | None = None,
        answer_column: str | None = None,
        verifier: str = "math",
        test: str | None = None,
        eval_fraction: float = 0.1,
        split_seed: int = 0,
        system_prompt: str | None = None,
        prompt_template: str | None = None,
        output: str = "template",
    ):
        if not 0 < eval_fraction < 1:
            raise UserError(f"--eval-fraction must be between 0 and 1, got {eval_fraction}")
        if output not in OUTPUTS:
            raise UserError(f"unknown output {output!r}; choose one of {', '.join(OUTPUTS)}")
        self.output, self.prompt_template = output, prompt_template
        self.jinja = load_prompt_template(prompt_template) if prompt_template else None
        self.path, self.test, self.eval_fraction, self.split_seed = path, test, eval_fraction, split_seed
        self.prompt_column, self.answer_column, self.system_prompt = (
            prompt_column,
            answer_column,
            system_prompt,
        )
        self.verifier = verifier
        self.checker = checker_of(verifier, self)
        self.source = None  # a datasets.Dataset given in Python (`from_dataset`), else read from `path`
        self._splits: dict[str, list[Problem]] | None = None

    @classmethod
    def from_dataset(cls, dataset, eval_dataset=None, **options) -> DataTask:
        """A task over an in-memory `datasets.Dataset` (or `DatasetDict`); `eval_dataset`: its test split."""
        task = get_task("data", **options)
        task.source = (dataset, eval_dataset)
        return task

    # ---- reading ----------------------------------------------------------------------------------

    def splits(self) -> dict[str, list[Problem]]:
        """The train and test problems (read once)."""
        if self._splits is None:
            self._splits = self._read()
        return self._splits

    def _read(self) -> dict[str, list[Problem]]:
        if self.source is not None:
            train_source, test_source = self.source
            found = read_splits(train_source)
            if test_source is not None:
                found["test"] = read_splits(test_source)["train"]
        elif self.path:
            found = read_splits(self.path)
        else:
            raise UserError("the data task needs a dataset: --data PATH (or path=PATH)")
        test_name = None
        if self.test:
            if self.test in found:
                test_name = self.test
            else:
                test_splits = read_splits(self.test)
                found["__test__"] = test_splits.get("train") or next(iter(test_splits.values()))
                test_name = "__test__"
        else:
            test_name = next((s for s in TEST_SPLITS if s in found), None)
        train_name = "train" if "train" in found else next(s for s in found if s != test_name)
        columns = list(found[train_name].column_names)
        prompt = pick_column(self.prompt_column, columns, self.prompt_columns, "prompt")
        if prompt is None:
            raise UserError(
                f"--data has no prompt column ({', '.join(self.prompt_columns)}); its columns: "
                f"{', '.join(columns)}: name it with --prompt-column"
            )
        answer = pick_column(self.answer_column, columns, ANSWER_COLUMNS, "answer")
        if answer is None and self.verifier != "none":
            raise UserError(
                f"--data has no answer column ({', '.join(ANSWER_COLUMNS)}); its columns: "
                f"{', '.join(columns)}: name it with --answer-column (or --verifier none: rewards alone)"
            )
        self.columns = (prompt, answer)
        train = [self._problem(row, i) for i, row in enumerate(found[train_name].to_list())]
        if test_name is None:  # hold out a share by hash
            cut = self.eval_fraction * 2**64
            held = [row_key(p.meta["row"][prompt], p.answer, self.split_seed) < cut for p in train]
            test = [p for p, h in zip(train, held) if h]
            train = [p for p, h in zip(train, held) if not h]
        else:
            test = self._without_training_rows(
                [self._problem(row, i) for i, row in enumerate(found[test_name].to_list())], train
            )
        if not train:
            raise UserError(f"--data {self.path or 'dataset'}: no training rows")
        return {"train": train, "test": test}

    def _without_training_rows(self, test: list[Problem], train: list[Problem]) -> list[Problem]:
        trained = {p.meta["key"] for p in train}
        kept = [p for p in test if p.meta["key"] not in trained]
        if test and not kept:
            raise UserError(
                f"every one of the {len(test)} test rows is a training row: give another test file, "
                "or none (then --eval-fraction of the rows is held out)"
            )
        if len(kept) < len(test):
            warnings.warn(
                f"{len(test) - len(kept)} of the {len(test)} test rows are also training rows: left out",
                stacklevel=3,
            )
        return kept

    def _problem(self, row: dict, index: int) -> Problem:
        prompt_column, answer_column = self.columns
        prompt, gold = row.get(prompt_column), row.get(answer_column) if answer_column else ""
        if prompt is None or (answer_column and gold is None):
            raise UserError(
                f"--data row {index + 1}: no {prompt_column if prompt is None else answer_column!r} value"
            )
        rationale = next(
            (row[c] for c in RATIONALE_COLUMNS if c != answer_column and isinstance(row.get(c), str)), None
        )
        return Problem(
            self._question(prompt, index, row),
            self._gold(gold),
            rationale,
            {"row": row, "index": index, "key": row_key(prompt, gold)},
        )

    def _question(self, prompt, index: int, row: dict | None = None) -> Question:
        if isinstance(prompt, str):
            question = Question(prompt, None, self.system_prompt, self.output)
        elif (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt)
        ):
            last_user = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
            question = Question(str(last_user), [dict(m) for m in prompt], self.system_prompt, self.output)
        else:
            question = None
        if question is not None:
            return question if self.jinja is None else self._rendered(question, row or {}, index)
        raise UserError(
            f"--data row {index + 1}: the prompt must be text or a list of {{role, content}} messages, "
            f"got {type(prompt).__name__}"
        )

    def _rendered(self, question: Question, row: dict, index: int) -> Question:
        """`question` with its user turn rendered by the prompt template from `row`."""
        import jinja2

        values = {**row, "question": str(question), "system_prompt": self.system_prompt or ""}
        try:
            return question.with_text(self.jinja.render(**values))
        except jinja2.TemplateError as e:
            raise UserError(f"--prompt-template {self.prompt_template}, row {index + 1}: {e}") from None

    def _gold(self, gold) -> str:
        text = (
            gold
            if isinstance(gold, str)
            else json.dumps(gold)
            if isinstance(gold, list | dict)
            else str(gold)
        )
        if self.verifier == "numeric" and "####" in text:  # a GSM8K worked solution
            from .gsm8k import gold_from_solution

            return gold_from_solution(text)
        return text

    # ---- the Task interface -----------------------------------------------------------------------

    def problems(
        self, n: int | None = None, split: str = "train", seed: int = 0, at_most: bool = False
    ) -> list[Problem]:
        """The split's rows in the dataset's order: the first `n`, or all of them when there are
        fewer (`at_most` is always true here; the training stream shuffles them itself)."""
        check_split(split)
        rows = self.splits()[split]
        if not rows:  # a small file whose hash held out no row: say so, not "no prompts" later
            raise UserError(
                f"--data {self.path or 'dataset'}: no {split} rows (--eval-fraction {self.eval_fraction:g} "
                f"of {len(self.splits()['train'])} rows held out none): give --test-data or a larger "
                "--eval-fraction"
            )
        return rows if n is None else rows[:n]

    def data_files(self) -> list[Path]:
        files = []
        for where in (self.path, self.test, self.prompt_template):
            if isinstance(where, str) and Path(where).expanduser().exists():
                where = Path(where).expanduser()
                files += [where] if where.is_file() else sorted(f for f in where.rglob("*") if f.is_file())
        return files

    def verify(self, predicted: str, gold: str) -> bool:
        return self.verify_batch([predicted], [gold])[0]

    def verify_batch(self, predicted: Sequence[str], golds: Sequence[str]) -> list[bool]:
        return self.checker(list(predicted), list(golds))


def checker_of(verifier: str, task: Task):
    """`verify_batch` for a verifier's name; a task's checker counts its events in `task.counts`."""
    if verifier == "exact":
        return lambda predicted, golds: [
            " ".join(p.split()) == " ".join(g.split()) for p, g in zip(predicted, golds)
        ]
    if verifier == "none":
        return lambda predicted, golds: [False] * len(predicted)
    name = {"numeric": "gsm8k"}.get(verifier, verifier)
    if name == "data" or name not in list_tasks():
        known = [*VERIFIERS, *(t for t in list_tasks() if t not in ("data", "math", "gsm8k"))]
        raise UserError(f"unknown --verifier {verifier!r}; choose one of {', '.join(known)}")
    checker = get_task(name)
    checker.__dict__["_counts"] = task.counts  # its timeouts and unreadable golds are the data task's
    checker.__dict__["_warned"] = task.__dict__.setdefault("_warned", set())
    return checker.verify_batch


def data_task_options(opts) -> dict:
    """The ``data`` task's options from a command's `DataOptions` (`--data`, `--prompt-column`, …),
    paths made absolute so that `eval --model OUT` finds the data from anywhere."""

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path

    options = {
        "path": absolute(opts.data),
        "prompt_column": opts.prompt_column or None,
        "answer_column": opts.answer_column or None,
        "verifier": opts.verifier,
        "test": absolute(opts.test_data) if opts.test_data else None,
        "eval_fraction": opts.eval_fraction,
        "system_prompt": opts.system_prompt or None,
        "prompt_template": absolute(opts.prompt_template) if opts.prompt_template else None,
        "output": opts.output_format if opts.output_format != "template" else None,
    }
    return {k: v for k, v in options.items() if v is not None}


def output_rewards(task: Task, plan, default: bool | None = None):
    """The reward plan of a run on `task`. A task whose model answers in its own format
    (``output="free"``) is judged by your reward functions alone: the default reward (which scores
    the template) is off, a `default` of True and the format gate are refused in one line, and a
    plan without reward functions is refused. Any other task keeps `plan` as it is."""
    if getattr(task, "output", "template") != "free":
        return plan
    if default:
        raise UserError(
            "--default-reward scores the <think>/<answer> template, which output=free does not ask for: "
            "leave it out (your --reward functions alone judge)"
        )
    if plan is None or not plan.funcs:
        raise UserError("output=free needs at least one --reward: nothing else judges a free-form answer")
    if plan.format_gate:
        raise UserError("--format-gate checks the template, which output=free does not ask for: leave it out")
    return dataclasses.replace(plan, default=False)


def refuse_training_rows(task: Task, trained_spec, model: str) -> None:
    """`eval` of a model on a dataset: refused in one line when held-out rows are rows the model
    was trained on (its checkpoint records its data task); nothing to check otherwise."""
    if (
        not isinstance(task, DataTask)
        or not isinstance(trained_spec, dict)
        or trained_spec.get("name") != "data"
    ):
        return
    try:
        trained = get_task("data", **trained_spec.get("options", {}))
        trained_keys = {p.meta["key"] for p in trained.problems(split="train")}
    except (UserError, ValueError, OSError):  # the training data moved: nothing to compare with
        return
    test = task.problems(split="test")
    seen = sum(p.meta["key"] in trained_keys for p in test)
    if seen:
        raise UserError(
            f"{seen} of the {len(test)} held-out rows are rows {model} was trained on: evaluate without "
            "--data (the rows it held out) or on a test file it never saw"
        )
