"""Bring your own SFT data: `sft --data` reads parquet, CSV, JSON and save_to_disk folders through the
data task's loader (JSONL as before, line by line), with its own prompt/completion column names.

Run: OMP_NUM_THREADS=1 pytest tests/test_byo_sft.py
"""

import json

import pytest

datasets = pytest.importorskip("datasets")

from reasonlab.errors import UserError  # noqa: E402
from reasonlab.model import new_builtin, save_checkpoint  # noqa: E402
from reasonlab.model.gpt import GPTConfig  # noqa: E402
from reasonlab.train.sft import SFTConfig, read_sft_rows, run_sft  # noqa: E402

TINY = GPTConfig(n_layer=1, n_head=2, n_kv_head=1, d_model=16, max_seq_len=64)
ROWS = [{"q": f"{i}+1=", "a": f"{i + 1}", "level": i % 3} for i in range(24)]


def test_sft_on_a_parquet_file_with_its_own_column_names(tmp_path):
    model, tok = new_builtin(TINY, seed=0)
    save_checkpoint(tmp_path / "ck", model, tok, {})
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    cfg = SFTConfig(
        model=str(tmp_path / "ck"),
        data=str(tmp_path / "d.parquet"),
        eval_data=str(tmp_path / "d.parquet"),
        out=str(tmp_path / "sft"),
        steps=2,
        batch_size=4,
        eval_every=2,
        report_to="none",
    )
    metrics = run_sft(cfg, device="cpu", prompt_column="q", completion_column="a")
    assert "eval_loss" in metrics and (tmp_path / "sft" / "model").is_dir()
    from reasonlab.cli import main

    flags = [
        "--data",
        str(tmp_path / "d.parquet"),
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--report-to",
        "none",
    ]
    argv = ["sft", "--model", str(tmp_path / "ck"), *flags, "--device", "cpu", "--out", str(tmp_path / "cli")]
    assert main([*argv, "--prompt-column", "q", "--completion-column", "a"]) == 0
    assert (tmp_path / "cli" / "model").is_dir()
    with pytest.raises(
        UserError, match=r"d.parquet:1: needs string 'prompt' and 'completion'.*its columns: q, a"
    ):
        run_sft(
            SFTConfig(model=str(tmp_path / "ck"), data=str(tmp_path / "d.parquet"), out=str(tmp_path / "x"))
        )


def test_every_format_gives_the_same_rows(tmp_path):
    rows = [{"prompt": r["q"], "completion": r["a"]} for r in ROWS]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = datasets.Dataset.from_list(rows)
    ds.to_csv(str(tmp_path / "d.csv"), index=False)
    ds.to_json(str(tmp_path / "d.json"), lines=False)
    datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(str(tmp_path / "saved"))
    expected = read_sft_rows(tmp_path / "d.jsonl")
    assert expected == rows
    for name in ("d.csv", "d.json", "saved"):
        assert read_sft_rows(tmp_path / name) == expected, name
    renamed = [{"in": r["prompt"], "out": r["completion"]} for r in rows]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in renamed))
    assert read_sft_rows(tmp_path / "r.jsonl", prompt_column="in", completion_column="out") == expected
    with pytest.raises(UserError, match="unknown file type '.txt'"):
        (tmp_path / "d.txt").write_text("x")
        read_sft_rows(tmp_path / "d.txt")
