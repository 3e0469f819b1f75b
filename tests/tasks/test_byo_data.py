"""Bring your own data: `--data` (the ``data`` task) reads JSONL with its own column names, parquet,
`save_to_disk` folders and train/test folders through `datasets`; holds rows out by hash; refuses to
evaluate on training rows; the checkpoint records the dataset, so `eval --model OUT` finds it.

Run: OMP_NUM_THREADS=1 pytest tests/tasks/test_byo_data.py
"""

import json
import os

import pytest

datasets = pytest.importorskip("datasets")

from reasonlab.cli import main  # noqa: E402
from reasonlab.errors import UserError  # noqa: E402
from reasonlab.model import load_train_config, new_builtin, save_checkpoint  # noqa: E402
from reasonlab.model.gpt import GPTConfig  # noqa: E402
from reasonlab.tasks import get_task  # noqa: E402
from reasonlab.template import build_prompt  # noqa: E402

TINY = GPTConfig(n_layer=1, n_head=2, n_kv_head=1, d_model=16, max_seq_len=96)
RL = [
    *("--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4", "--steps", "1"),
    *("--eval-every", "1", "--eval-problems", "3", "--no-format-patience", "0", "--device", "cpu"),
]


@pytest.fixture
def ck(tmp_path):
    model, tok = new_builtin(TINY, seed=0)
    save_checkpoint(tmp_path / "ck", model, tok, {"task": {"name": "arithmetic", "options": {"digits": 1}}})
    return str(tmp_path / "ck")


def sums(n: int) -> list[dict]:
    return [{"q": f"{i}+{i % 7}", "a": i + i % 7, "level": i % 3} for i in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_with_its_own_column_names_and_a_hash_held_out_split(tmp_path):
    file = write_jsonl(tmp_path / "my.jsonl", sums(200))
    task = get_task("data", path=str(file), prompt_column="q", answer_column="a", verifier="numeric")
    train, test = task.problems(split="train"), task.problems(split="test")
    assert len(train) + len(test) == 200 and 5 <= len(test) <= 40  # about --eval-fraction 0.1
    assert not {p.question for p in train} & {p.question for p in test}
    assert train[0].meta["row"] == {"q": "0+0", "a": 0, "level": 0}  # every column, for rewards
    assert task.verify_batch(["12", "x"], ["12", "12"]) == [True, False]
    # the split depends on the rows, not their order
    shuffled = write_jsonl(tmp_path / "shuffled.jsonl", sums(200)[::-1])
    again = get_task("data", path=str(shuffled), prompt_column="q", answer_column="a")
    assert {p.question for p in again.problems(split="test")} == {p.question for p in test}


def test_trl_prompt_column_parquet_and_a_conversation(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"{i}*2"}], "solution": str(2 * i)} for i in range(30)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    task = get_task("data", path=str(tmp_path / "d.parquet"), verifier="exact", system_prompt="Be brief.")
    problem = task.problems(split="train")[0]
    assert problem.question == "0*2" and problem.answer == "0"
    assert problem.question.messages == [{"role": "user", "content": "0*2"}]
    assert build_prompt(problem.question, "r1") == "Be brief. User: 0*2 Assistant:"


def test_save_to_disk_folders_and_train_test_files(tmp_path):
    data = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(
                [{"question": f"{i}+1", "answer": str(i + 1)} for i in range(20)]
            ),
            "test": datasets.Dataset.from_list(
                [{"question": f"{i}+2", "answer": str(i + 2)} for i in range(5)]
            ),
        }
    )
    data.save_to_disk(str(tmp_path / "dict"))
    data["train"].save_to_disk(str(tmp_path / "one"))
    task = get_task("data", path=str(tmp_path / "dict"))
    assert (len(task.problems(split="train")), len(task.problems(split="test"))) == (20, 5)
    assert len(get_task("data", path=str(tmp_path / "one")).problems(split="train")) < 20  # some held out
    folder = tmp_path / "files"
    folder.mkdir()
    data["train"].to_csv(str(folder / "train.csv"), index=False)
    write_jsonl(folder / "test.jsonl", data["test"].to_list())
    task = get_task("data", path=str(folder), verifier="numeric")
    assert (len(task.problems(split="train")), len(task.problems(split="test"))) == (20, 5)


def test_bad_data_is_one_clear_line(tmp_path):
    file = write_jsonl(tmp_path / "my.jsonl", sums(10))
    with pytest.raises(UserError, match="no prompt column.*--prompt-column"):
        get_task("data", path=str(file)).problems()
    with pytest.raises(UserError, match="no answer column 'b'; its columns: q, a, level"):
        get_task("data", path=str(file), prompt_column="q", answer_column="b").problems()
    with pytest.raises(UserError, match="unknown --verifier 'fuzzy'"):
        get_task("data", path=str(file), verifier="fuzzy")
    with pytest.raises(UserError, match="no such file"):
        get_task("data", path=str(tmp_path / "nope.jsonl")).problems()
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(UserError, match="unknown file type '.txt'"):
        get_task("data", path=str(tmp_path / "x.txt")).problems()
    # a test file that is the training file: every held-out number would be on training rows
    with pytest.raises(UserError, match="every one of the 10 test rows is a training row"):
        get_task("data", path=str(file), test=str(file), prompt_column="q", answer_column="a").problems()


def test_rl_on_data_then_eval_finds_it_and_refuses_training_rows(tmp_path, ck, capsys):
    file = write_jsonl(tmp_path / "my.jsonl", sums(60))
    out = tmp_path / "out"
    argv = ["rl", "--model", ck, "--data", str(file), "--prompt-column", "q", "--answer-column", "a"]
    assert main([*argv, "--verifier", "numeric", "--out", str(out), *RL]) == 0
    recorded = load_train_config(out)["task"]
    assert recorded["name"] == "data" and recorded["options"]["prompt_column"] == "q"
    capsys.readouterr()
    # eval on the checkpoint alone: the same dataset, its held-out rows
    assert main(["eval", "--model", str(out), "--problems", "3", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "task: data" in captured.err and "3 test problems" in captured.out
    # the same file with another held-out share: some of its test rows are training rows
    again = ["eval", "--model", str(out), "--data", str(file), "--prompt-column", "q", "--answer-column", "a"]
    assert main([*again, "--eval-fraction", "0.5", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "held-out rows are rows" in err and "was trained on" in err and len(err.strip().splitlines()) == 1
    assert (
        main(
            ["rl", "--model", ck, "--data", str(file), "--task", "arithmetic", "--out", str(tmp_path / "o2")]
        )
        == 2
    )
    assert "give --task or --data, not both" in capsys.readouterr().err


def test_a_file_too_small_to_hold_out_a_row_says_so(tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    task = get_task("data", path=str(one), verifier="numeric")
    assert len(task.problems(split="train")) == 1
    with pytest.raises(UserError, match=r"no test rows \(--eval-fraction 0.1 of 1 rows held out none\)"):
        task.problems(split="test")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="is not a regular file"):
        get_task("data", path=str(fifo)).problems()
