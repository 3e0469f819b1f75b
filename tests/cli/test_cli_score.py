"""`reasonlab score`: scoring JSONL, summaries, clear errors, no half-written output.

Run: pytest tests/cli/test_cli_score.py
"""

import json
import subprocess
import sys

from reasonlab.cli import main

ROWS = [
    {"completion": "<think>7+5=12</think><answer>12</answer>", "answer": "12"},
    {"completion": "<think>7+5=13</think><answer>13</answer>", "answer": "12"},
    {"completion": "<think>7+5=12</think>12", "answer": "12"},
    {"completion": "the answer is 12", "answer": "12", "prompt": "7+5\n"},
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_writes_fields_and_summary(tmp_path, capsys):
    inp, out = write(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    assert main(["score", "--task", "arithmetic", str(inp), "-o", str(out)]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["format_ok"], r["correct"], r["reward"]) for r in got] == [
        (True, True, 3.0),
        (True, False, 2.0),
        (False, False, 0.0),
        (False, False, 0.0),
    ]
    assert [r["think_len"] for r in got] == [6, 6, 6, None]
    assert got[3]["prompt"] == "7+5\n"  # input fields are repeated
    summary = capsys.readouterr().out
    assert "scored 4" in summary and "format rate 50.0%" in summary and "accuracy 25.0%" in summary
    assert "mean reward 1.250" in summary


def test_score_to_stdout(tmp_path, capsys):
    inp = write(tmp_path / "in.jsonl", ROWS[:1])
    assert main(["score", "--task", "arithmetic", str(inp)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["reward"] == 3.0 and "scored 1" in captured.err


def test_malformed_line_names_it_and_writes_nothing(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(ROWS[0]) + "\n" + '{"completion": 1, "answer": "2"}\n')
    out = tmp_path / "out.jsonl"
    assert main(["score", "--task", "arithmetic", str(inp), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "in.jsonl:2" in err and "'completion' must be a string" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [inp]  # no partial or temporary file
    inp.write_text("{not json\n")
    assert main(["score", "--task", "arithmetic", str(inp)]) == 2
    assert "in.jsonl:1: not valid JSON" in capsys.readouterr().err


def test_other_user_errors(tmp_path, capsys):
    inp = write(tmp_path / "in.jsonl", ROWS)
    assert main(["score", "--task", "nope", str(inp)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["score", "--task", "arithmetic", str(tmp_path / "missing.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["score", "--task", "arithmetic", "--task-arg", "colour=red", str(inp)]) == 2
    assert "colour" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("\n")
    assert main(["score", "--task", "arithmetic", str(tmp_path / "empty.jsonl")]) == 2
    assert "no input lines" in capsys.readouterr().err
    bad_gold = write(tmp_path / "cd.jsonl", [{"completion": ROWS[0]["completion"], "answer": "12"}])
    assert main(["score", "--task", "countdown", str(bad_gold)]) == 2
    assert "cd.jsonl:1" in capsys.readouterr().err


def test_console_entry_point_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "reasonlab", "score", "--task", "nope", "x.jsonl"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "unknown task" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "reasonlab", "score", "--task", "nope", "x.jsonl", "--debug"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_task_options_from_the_command_line(tmp_path, capsys):
    inp = write(
        tmp_path / "in.jsonl",
        [{"completion": "<think>x</think><answer>(7-3)*5+2</answer>", "answer": "2 3 5 7 -> 22"}],
    )
    assert main(["score", "--task", "countdown", "--task-arg", "count=4", str(inp)]) == 0
    assert json.loads(capsys.readouterr().out)["correct"] is True


def test_output_modes_follow_the_umask_and_an_overwritten_file_keeps_its_own(tmp_path, capsys):
    """The output went through mkstemp: always 0600, and `-o` onto its own input turned 0644 into 0600."""
    import os

    from reasonlab.jsonl import current_umask

    old = os.umask(0o022)
    current_umask.cache_clear()
    try:
        inp, out = write(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
        assert main(["score", "--task", "arithmetic", str(inp), "-o", str(out)]) == 0
        assert os.stat(out).st_mode & 0o777 == 0o644  # what `open(out, "w")` gives under umask 022
        for mode in (0o644, 0o640):
            os.chmod(inp, mode)
            assert main(["score", "--task", "arithmetic", str(inp), "-o", str(inp)]) == 0
            assert os.stat(inp).st_mode & 0o777 == mode and '"reward"' in inp.read_text()
    finally:
        os.umask(old)
        current_umask.cache_clear()
