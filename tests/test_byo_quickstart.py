"""docs/quickstart.md's snippet, run as written on a tiny Hugging Face model built here: only the
model's name and the run's size change (two steps of two groups, not fifty of eight). It must train,
log both rewards, write TensorBoard files, save the model, and `eval` must find the dataset again.

Run: OMP_NUM_THREADS=1 pytest tests/test_byo_quickstart.py
"""

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("datasets")
pytest.importorskip("tensorboard")

from reasonlab.cli import main  # noqa: E402
from tests.model.test_model import make_tiny_hf  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"
SMALL = (
    "config=GRPOConfig(steps=2, style='chat', max_new_tokens=8, prompts_per_step=2, group_size=2, "
    "eval_problems=3),\n"
)


def test_quickstart_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    make_tiny_hf(tmp_path / "tiny")
    model_line = 'MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"'
    config_line = re.compile(r"config=GRPOConfig\(.*?\),\n")
    assert model_line in code and config_line.search(code)
    code = code.replace(model_line, f"MODEL = {str(tmp_path / 'tiny')!r}")
    code = config_line.sub(SMALL, code)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {"__name__": "quickstart"})
    run = tmp_path / "runs" / "quickstart"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"reward/brevity", "reward/says_the_answer", "reward/reasoning"} <= set(rows[-1])
    assert list((run / "tensorboard").rglob("events.out.tfevents*"))
    assert (run / "model" / "config.json").is_file() and (run / "data").is_dir()
    capsys.readouterr()
    assert main(["eval", "--model", str(run), "--problems", "2", "--device", "cpu"]) == 0
    assert "task: data" in capsys.readouterr().err
