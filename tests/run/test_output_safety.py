"""A run writes only into its own output folder and never deletes what it did not write: an --out
holding other files is refused before any work (or written into with --overwrite, the other files
kept), as are `.`, an empty name, a file and a place that cannot be written; a checkpoint replaces
only a checkpoint. Run: pytest tests/run/test_output_safety.py"""

import json
import re

import pytest

from reasonlab.cli import main
from reasonlab.errors import UserError
from reasonlab.model import load_model, new_builtin, save_checkpoint
from reasonlab.outdir import LOCK

# The end of a lock file's holder line ("pid N, reasonlab COMMAND, since DATE TIME"): when the lock
# was last taken. A run refused after it took the lock (a --resume whose checkpoint is unusable)
# rewrote it, so it may change; the rest of the line (who holds the folder) may not.
LOCK_SINCE = re.compile(rb", since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


def snapshot(root) -> dict:
    """Every file under `root`: its bytes, by relative path; a lock file's bytes without the time its
    holder took it (`LOCK_SINCE`)."""
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == LOCK:
                data, n = LOCK_SINCE.subn(b", since <time>", data)
                assert n == 1, f"{p}: {data!r} is not a holder line"
            files[str(p.relative_to(root))] = data
    return files


def precious(tmp_path):
    """A folder `d` holding the user's training data and notes, and the user's files beside it."""
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    rows = [{"prompt": f"{i}+1=", "completion": f"<think></think><answer>{i + 1}</answer>"} for i in range(8)]
    (d / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "notes.txt").write_text("three weeks of notes")
    (d / "sub" / "deep.txt").write_text("more")
    (tmp_path / "beside.txt").write_text("beside")
    (tmp_path / ".d.old").mkdir()  # the name an earlier save_checkpoint set an old folder aside under
    (tmp_path / ".d.old" / "mine.txt").write_text("mine")
    return d


SFT = ["--steps", "2", "--batch-size", "4", "--eval-every", "0"]


def test_save_checkpoint_replaces_only_a_checkpoint(tmp_path):
    d = precious(tmp_path)
    model, tok = new_builtin()
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="holding files that are not a checkpoint"):
        save_checkpoint(d, model, tok)
    with pytest.raises(UserError, match="it is a file"):
        save_checkpoint(d / "notes.txt", model, tok)
    assert snapshot(tmp_path) == before  # and no temporary folder left
    save_checkpoint(d, model, tok, into=True)  # written into: the other files stay
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before
    assert load_model(d)[0].config == model.config
    ck = tmp_path / "ck"
    save_checkpoint(ck, model, tok, {"lr": 1})
    save_checkpoint(ck, model, tok)  # a checkpoint folder is replaced whole (no train_config.json now)
    assert sorted(p.name for p in ck.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_training_commands_refuse_an_out_they_did_not_make(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = precious(tmp_path)
    (tmp_path / "file.txt").write_text("a file")
    before = snapshot(tmp_path)
    data = str(d / "sft.jsonl")
    missing = str(tmp_path / "no-model")  # the folder check comes first: no model is loaded
    refused = [
        ["sft", "--data", data, "--out", "d", *SFT],
        ["pretrain", "--task", "chain", "--out", "d"],
        ["rl", "--model", missing, "--task", "chain", "--out", "d"],
        ["rationales", "--model", missing, "--task", "chain", "--out", "d"],
        ["demo", "--quick", "--out", "d"],
        ["sft", "--data", data, "--out", "d", "--resume", *SFT],
    ]
    for argv in refused:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "--out d already holds files that are not an earlier" in err and "--overwrite" in err, argv
        assert len(err.strip().splitlines()) == 1
    for out, says in (
        (".", "names no folder of its own"),
        ("", "names no folder of its own"),
        ("file.txt", "is a file"),
    ):
        for command in (["sft", "--data", data], ["rl", "--model", missing, "--task", "chain"]):
            assert main([*command, "--out", out, *SFT[:2]]) == 2
            assert says in capsys.readouterr().err
    assert snapshot(tmp_path) == before

    # --overwrite writes the run's files into the folder; every file that was there stays as it was.
    assert main(["sft", "--data", data, "--out", "d", "--overwrite", *SFT]) == 0
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before
    assert load_model(d)[0].kind == "builtin"


def test_an_earlier_run_of_the_same_command_may_be_replaced_but_not_another_commands(tmp_path, capsys):
    d = precious(tmp_path)
    data = str(d / "sft.jsonl")
    ck = tmp_path / "ck"
    assert main(["sft", "--data", data, "--out", str(ck), *SFT]) == 0
    capsys.readouterr()
    base = snapshot(ck)
    # its own earlier run: never replaced unasked (its log and model are results), replaced with --overwrite
    assert main(["sft", "--data", data, "--out", str(ck), *SFT, "--lr", "1e-4"]) == 2
    assert (
        "holds an earlier `reasonlab sft` run: --resume to continue it, --overwrite"
        in capsys.readouterr().err
    )
    assert snapshot(ck) == base
    assert main(["sft", "--data", data, "--out", str(ck), *SFT, "--overwrite"]) == 0
    capsys.readouterr()
    base = snapshot(ck)
    assert main(["pretrain", "--task", "chain", "--out", str(ck)]) == 2  # another command's checkpoint
    assert main(["rl", "--model", str(ck), "--task", "chain", "--out", str(ck)]) == 2
    assert "not an earlier `reasonlab rl` run" in capsys.readouterr().err
    assert snapshot(ck) == base
    (ck / "notes.txt").write_text("my notes on this run")  # beside the run's files: a rerun keeps it
    assert main(["sft", "--data", data, "--out", str(ck), *SFT, "--overwrite"]) == 0
    assert (ck / "notes.txt").read_text() == "my notes on this run"
    (ck / "model" / "notes.txt").write_text("x")  # the model folder no longer holds checkpoint files only
    capsys.readouterr()
    base = snapshot(ck)
    assert main(["sft", "--data", data, "--out", str(ck), *SFT, "--resume"]) == 2  # refused before any work
    assert f"{ck / 'model'} holds files that are not a checkpoint's" in capsys.readouterr().err
    assert snapshot(ck) == base
    assert (
        main(["sft", "--data", data, "--out", str(ck), *SFT, "--overwrite"]) == 0
    )  # written into: notes stay
    assert (ck / "model" / "notes.txt").read_text() == "x"


def test_an_out_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import reasonlab.outdir

    d = precious(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(
        reasonlab.outdir.os, "access", lambda path, mode: str(path) != str(ro)
    )  # as if read-only
    for argv in (
        ["sft", "--data", str(d / "sft.jsonl"), *SFT],
        ["rl", "--model", "nowhere", "--task", "chain"],
    ):
        assert main([*argv, "--out", str(ro / "run")]) == 2
        assert f"cannot write --out {ro / 'run'}: {ro} is not a writable folder" in capsys.readouterr().err
