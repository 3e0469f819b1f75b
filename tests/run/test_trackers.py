"""`--report-to`: every trainer's metrics.jsonl rows go to TensorBoard (OUT/tensorboard), wandb or
trackio too, under the same names at the same steps; a tracker asked for whose package is missing,
or an unknown name, is one line and exit code 2 before any work. Run: pytest tests/run/test_trackers.py"""

import json
import sys
import types

import pytest

from reasonlab.cli import main
from reasonlab.errors import UserError
from reasonlab.outdir import RunFolder
from reasonlab.trackers import Trackers, resolve, scalars
from tests.model.test_model import make_tiny_hf

PRETRAIN = [
    "pretrain",
    "--task",
    "chain",
    "--task-arg",
    "length=2",
    "--steps",
    "4",
    "--batch-size",
    "8",
    "--corpus-size",
    "100",
    "--eval-every",
    "2",
    "--check-problems",
    "4",
    "--max-new-tokens",
    "16",
]
SFT = ["--steps", "3", "--batch-size", "4", "--eval-every", "0"]


def rows_of(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def logged(rows, step: str = "step") -> dict:
    """{name: {step: value}}: what a tracker should hold for metrics.jsonl's `rows`."""
    out: dict = {}
    for row in rows:
        for key, value in scalars(row).items():
            out.setdefault(key, {})[row[step]] = value
    return out


def tensorboard_scalars(folder) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    out = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    assert all(len(events.Scalars(tag)) == len(steps) for tag, steps in out.items())  # a step once
    return out


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, steps in want.items():
        assert sorted(got[name]) == sorted(steps), name
        for step, value in steps.items():
            assert got[name][step] == pytest.approx(value, rel=1e-6, abs=1e-6), (name, step)


def sft_data(path):
    path.write_text(
        "".join(
            json.dumps({"prompt": f"{i}+1\n", "completion": f"<think></think><answer>{i + 1}</answer>"})
            + "\n"
            for i in range(12)
        )
    )
    return path


def test_pretrain_writes_tensorboard_scalars_equal_to_its_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "base"
    assert main([*PRETRAIN, "--out", str(out), "--report-to", "tensorboard"]) == 0
    rows = rows_of(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "trigger_acc" in rows[1]
    assert_same(tensorboard_scalars(out), logged(rows))
    assert {"loss", "lr", "grad_norm", "trigger_acc", "seconds"} <= set(tensorboard_scalars(out))


def test_rl_writes_its_namespaced_metrics_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    make_tiny_hf(tmp_path / "hf")
    out = tmp_path / "rl"
    assert (
        main(
            [
                "rl",
                "--model",
                str(tmp_path / "hf"),
                "--task",
                "arithmetic",
                "--task-arg",
                "digits=1",
                "--steps",
                "2",
                "--prompts-per-step",
                "2",
                "--group-size",
                "2",
                "--max-new-tokens",
                "8",
                "--eval-every",
                "0",
                "--out",
                str(out),
                "--report-to",
                "tensorboard",
            ]
        )
        == 0
    )
    rows = rows_of(out)
    assert [r["step"] for r in rows] == [1, 2]
    got = tensorboard_scalars(out)
    assert {"reward/format_rate", "compute/flops", "sampling/groups_drawn", "time/generate_s"} <= set(got)
    assert_same(got, logged(rows))


def test_rationales_reports_its_rounds_and_each_rounds_fine_tuning(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from reasonlab.model import new_builtin, save_checkpoint
    from reasonlab.train import rationales

    def keeps_the_gold(
        source, tokenizer, task, problems, cfg, **kwargs
    ):  # every round has data to fine-tune on
        return [
            {"question": p.question, "completion": f"<think></think><answer>{p.answer}</answer>"}
            for p in problems
        ], len(problems)

    monkeypatch.setattr(rationales, "sample_rationales", keeps_the_gold)
    model, tok = new_builtin(seed=0)
    save_checkpoint(tmp_path / "raw", model, tok)
    out = tmp_path / "r"
    assert (
        main(
            [
                "rationales",
                "--model",
                str(tmp_path / "raw"),
                "--task",
                "arithmetic",
                "--task-arg",
                "digits=1",
                "--rounds",
                "2",
                "--problems",
                "4",
                "--samples",
                "1",
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--eval-every",
                "0",
                "--eval-problems",
                "2",
                "--max-new-tokens",
                "8",
                "--out",
                str(out),
                "--report-to",
                "tensorboard",
            ]
        )
        == 0
    )
    records = rows_of(out)
    assert [r["round"] for r in records] == [1, 2]
    assert_same(tensorboard_scalars(out), logged(records, "round"))  # a round record at step = round
    assert {"accuracy", "yield", "kept"} <= set(tensorboard_scalars(out))
    for round_ in (1, 2):
        train = out / f"round{round_}_train"
        assert [r["step"] for r in rows_of(train)] == [1, 2]
        assert_same(tensorboard_scalars(train), logged(rows_of(train)))


def test_report_to_none_auto_and_a_resume_with_other_trackers(tmp_path):
    data = sft_data(tmp_path / "d.jsonl")
    out = tmp_path / "none"
    assert main(["sft", "--data", str(data), *SFT, "--out", str(out), "--report-to", "none"]) == 0
    assert (out / "metrics.jsonl").is_file() and not (out / "tensorboard").exists()
    pytest.importorskip("tensorboard")
    out = tmp_path / "auto"  # the default, with tensorboard installed
    assert main(["sft", "--data", str(data), *SFT, "--save-every", "2", "--out", str(out)]) == 0
    assert (out / "tensorboard").is_dir()
    # --report-to is not a setting of the run: a resume may change it; TensorBoard hides step 3,
    # logged after the state of step 2, and holds what metrics.jsonl holds
    assert (
        main(
            [
                "sft",
                "--data",
                str(data),
                *SFT[2:],
                "--steps",
                "4",
                "--resume",
                "--out",
                str(out),
                "--report-to",
                "tensorboard",
            ]
        )
        == 0
    )
    assert [r["step"] for r in rows_of(out)] == [1, 2, 3, 4]
    assert_same(tensorboard_scalars(out), logged(rows_of(out)))
    assert (
        main(
            [
                "sft",
                "--data",
                str(data),
                *SFT[2:],
                "--steps",
                "5",
                "--resume",
                "--out",
                str(out),
                "--report-to",
                "none",
            ]
        )
        == 0
    )
    assert [r["step"] for r in rows_of(out)] == [1, 2, 3, 4, 5]
    assert max(tensorboard_scalars(out)["loss"]) == 4
    # a fresh run replacing the earlier one (--overwrite) drops the event files it left
    assert main(["sft", "--data", str(data), *SFT[2:], "--steps", "2", "--out", str(out), "--overwrite"]) == 0
    assert_same(tensorboard_scalars(out), logged(rows_of(out)))


def test_a_tracker_not_installed_or_unknown_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not importable, even where it is installed
    out = tmp_path / "base"
    assert main([*PRETRAIN, "--out", str(out), "--report-to", "wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["reasonlab pretrain: error: --report-to wandb needs the wandb package: pip install wandb"]
    assert not out.exists()  # nothing trained, nothing written
    data = sft_data(tmp_path / "d.jsonl")
    for bad, words in (
        ("tensorbord", "unknown tracker 'tensorbord'"),
        ("none,tensorboard", "stand alone"),
        ("", "names no tracker"),
        ("tensorboard,wandb", "needs the wandb package"),
    ):
        assert main(["sft", "--data", str(data), *SFT, "--out", str(out), "--report-to", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
        assert not out.exists()
    # checked before the model loads: the missing model is not what it says
    assert (
        main(
            [
                "rl",
                "--model",
                str(tmp_path / "missing"),
                "--task",
                "arithmetic",
                "--out",
                str(out),
                "--report-to",
                "wandb",
            ]
        )
        == 2
    )
    assert "needs the wandb package" in capsys.readouterr().err and not out.exists()
    with pytest.raises(UserError, match="unknown tracker"):
        RunFolder(tmp_path / "x", "rl", "mlflow")


class FakeWandb(types.ModuleType):
    """Records what a run asked of wandb: init's arguments, each log call, finish."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logs, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, values, step=None):
                fake.logs.append((step, dict(values)))

            def finish(self):
                fake.finished += 1

        return Run()


def test_wandb_gets_the_same_rows_at_their_steps_and_is_finished(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    data = sft_data(tmp_path / "d.jsonl")
    out = tmp_path / "sft"
    assert (
        main(
            [
                "sft",
                "--data",
                str(data),
                *SFT,
                "--eval-data",
                str(data),
                "--eval-every",
                "2",
                "--out",
                str(out),
                "--report-to",
                "wandb",
            ]
        )
        == 0
    )
    assert fake.finished == 1 and len(fake.inits) == 1
    init = fake.inits[0]
    assert init["dir"] == str(out) and init["config"]["steps"] == 3 and init["config"]["data"] == str(data)
    rows = rows_of(out)
    assert fake.logs == [(r["step"], scalars(r)) for r in rows]
    assert "eval_loss" in fake.logs[1][1] and not (out / "tensorboard").exists()


def test_the_trackers_are_closed_when_training_fails(tmp_path, monkeypatch):
    from reasonlab.train.sft import SFTConfig, run_sft

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)

    def fails_at_step_2(metrics):
        if metrics["step"] == 2:
            raise RuntimeError("boom")

    cfg = SFTConfig(
        data=str(sft_data(tmp_path / "d.jsonl")),
        out=str(tmp_path / "sft"),
        steps=3,
        batch_size=4,
        eval_every=0,
        report_to="wandb",
    )
    with pytest.raises(UserError, match="boom"):
        run_sft(cfg, progress=fails_at_step_2)
    assert [step for step, _ in fake.logs] == [1, 2] and fake.finished == 1


def test_trackers_log_numbers_only_and_close_once(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    assert resolve("none") == () and resolve(" wandb , wandb ") == ("wandb",)
    with Trackers(resolve("wandb"), tmp_path, {"lr": 1}) as trackers:
        trackers.log(
            {"step": 3, "loss": 0.5, "skipped": "non-finite", "ok": True, "compute": {"flops": 1}, "n": 2}
        )
        trackers.log({"round": 1, "accuracy": 0.25}, step=1)
        trackers.log({"step": 4, "note": "text only"})  # nothing numeric: nothing logged
    trackers.close()
    assert fake.logs == [(3, {"loss": 0.5, "n": 2.0}), (1, {"round": 1.0, "accuracy": 0.25})]
    assert fake.finished == 1 and fake.inits[0]["config"] == {"lr": 1}
