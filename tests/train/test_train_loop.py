"""The shared supervised loop: schedule, labels, packing, batching, learning, NaN guard.

Run: pytest tests/train/test_train_loop.py"""

import random

import pytest
import torch

from reasonlab.errors import UserError
from reasonlab.outdir import RunFolder
from reasonlab.run.optim import lr_at
from reasonlab.train.loop import (
    IGNORE,
    BatchStream,
    TrainConfig,
    collate,
    collate_packed,
    pack,
    tokenize_examples,
    train_supervised,
)


def test_lr_schedule_shapes():
    cfg = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(110, cfg) == pytest.approx(0.1)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # cosine halfway: min + (1-min)/2
    linear = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.0, schedule="linear")
    assert lr_at(35, linear) == pytest.approx(0.75)
    assert lr_at(100, TrainConfig(steps=110, lr=1.0, schedule="constant")) == 1.0
    with pytest.raises(ValueError):
        TrainConfig(schedule="nope")


def test_collate_labels_cover_the_completion_only():
    input_ids, labels = collate([([1, 2], [3, 4, 5]), ([6], [7])], pad_id=0)
    assert input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]
    # position t predicts token t+1: row 0 predicts 3,4,5 from positions 1,2,3
    assert labels.tolist() == [[IGNORE, 3, 4, 5, IGNORE], [7, IGNORE, IGNORE, IGNORE, IGNORE]]


def test_packing_keeps_completion_labels():
    rows = pack([([1], [2, 3]), ([4, 5], [6]), ([7], [8, 9, 10])], max_len=6)
    assert [len(r) for r in rows] == [2, 1]
    input_ids, labels = collate_packed(rows, pad_id=0)
    assert input_ids[0].tolist() == [1, 2, 3, 4, 5, 6]
    assert labels[0].tolist() == [2, 3, IGNORE, IGNORE, 6, IGNORE]


def test_batch_stream_groups_lengths_and_covers_everything():
    units = [([1] * n, [2]) for n in range(1, 65)]
    stream = BatchStream(units, 8, random.Random(0), length=lambda u: len(u[0]), window=8)
    batches = [stream.next() for _ in range(8)]
    assert sorted(len(u[0]) for b in batches for u in b) == list(range(1, 65))  # one epoch, each once
    assert all(max(len(u[0]) for u in b) - min(len(u[0]) for u in b) == 7 for b in batches)


def test_training_learns_a_tiny_mapping(tiny_gpt):
    model, tok = tiny_gpt
    rows = [{"prompt": f"{i}\n", "completion": f"<answer>{(i * 7) % 10}</answer>"} for i in range(10)]
    examples = tokenize_examples(tok, rows, 64)
    cfg = TrainConfig(steps=150, batch_size=10, lr=1e-2, warmup_steps=5, eval_every=0)
    first = train_supervised(
        model, tok, examples, TrainConfig(steps=1, batch_size=10, lr=1e-9, warmup_steps=1)
    )["loss"]
    last = train_supervised(model, tok, examples, cfg)
    assert last["loss"] < first / 10
    # what the steps cost: 150 steps of the 10 examples, each 6N a token plus its attention pairs
    lengths = [len(p) + len(c) for p, c in examples]
    layers, width = model.config.n_layer, model.config.n_head * (model.config.d_model // model.config.n_head)
    n = sum(p.numel() for p in model.parameters())
    per_step = sum(6 * n * t + 12 * layers * width * t * (t + 1) // 2 for t in lengths)
    assert last["compute/flops"] == pytest.approx(150 * per_step)


def test_non_finite_losses_skip_and_then_stop(tiny_gpt):
    model, tok = tiny_gpt
    examples = tokenize_examples(tok, [{"prompt": "1\n", "completion": "2"}], 16)
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(float("nan"))
    skipped = []
    with pytest.raises(UserError, match="step 5: 5 non-finite"):
        train_supervised(
            model,
            tok,
            examples,
            TrainConfig(steps=10, batch_size=1, warmup_steps=1),
            log=lambda m: skipped.append(m.get("skipped")),
        )
    assert skipped == ["non-finite loss or gradient"] * 5


def test_resuming_a_finished_run_changes_nothing_and_reports_its_last_step(tmp_path, tiny_gpt):
    import copy

    model, tok = tiny_gpt
    fresh = copy.deepcopy(model)
    rows = [{"prompt": f"{i}\n", "completion": f"<answer>{i}</answer>"} for i in range(8)]
    examples = tokenize_examples(tok, rows, 32)
    cfg = TrainConfig(steps=4, batch_size=4, lr=1e-2, warmup_steps=1, save_every=2, eval_every=0)
    folder = RunFolder(tmp_path, "sft")
    last = train_supervised(model, tok, examples, cfg, folder=folder)
    log = (tmp_path / "metrics.jsonl").read_text()
    seen = []
    resumed = train_supervised(fresh, tok, examples, cfg, folder=folder, resume=True, progress=seen.append)
    assert resumed == last and resumed["step"] == 4 and seen == [last]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    assert (tmp_path / "metrics.jsonl").read_text() == log
