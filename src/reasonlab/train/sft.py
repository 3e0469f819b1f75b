"""Supervised fine-tuning on prompt/completion rows (TRL's `prompt`/`completion` columns, or
`messages` in the chat format). The loss covers completion tokens only.

A JSONL file is read line by line (no `datasets` needed; errors name the file:line); a JSON, CSV or
parquet file, a save_to_disk folder or a folder of train/test files is read by the data task's
loader (`tasks.data.read_rows`, its train split). `prompt_column`/`completion_column` name other
columns than ``prompt``/``completion``."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

from ..errors import UserError
from ..jsonl import read_jsonl
from ..model import load_model, new_builtin, train_record
from ..outdir import RunFolder, RunOptions, out_field
from ..run.final import save_trained
from ..runtime import (
    RuntimeOptions,
    load_dtype,
    prepare,
    resolve_device,
    setup_distributed,
    shutdown_distributed,
    world,
)
from .loop import TrainConfig, fit_to_model, held_out_loss, tokenize_examples, train_supervised


@dataclass
class SFTConfig(TrainConfig, RuntimeOptions, RunOptions):
    model: str = field(
        default="",
        metadata={
            "help": "checkpoint, run folder, HF folder or .gguf file to start from "
            "('' = a new built-in model)"
        },
    )
    data: str = field(
        default="",
        metadata={
            "help": "training data: prompt/completion or messages rows in a JSONL, JSON, CSV or parquet "
            "file, a save_to_disk folder or a folder of train/test files"
        },
    )
    eval_data: str = field(
        default="", metadata={"help": "held-out data (as --data) for the loss every eval_every steps"}
    )
    out: str = out_field("runs/sft")


def read_sft_rows(
    path, tokenizer=None, prompt_column: str | None = None, completion_column: str | None = None
) -> list[dict]:
    """`{"prompt", "completion"}` rows from `path` (see the module docstring); `messages` rows go
    through the chat template. A column named but absent is refused in one line."""
    prompt_key, completion_key = prompt_column or "prompt", completion_column or "completion"
    rows, linenos = [], []
    for lineno, row in _records(path):
        linenos.append(lineno)
        if isinstance(row.get(prompt_key), str) and isinstance(row.get(completion_key), str):
            rows.append({"prompt": row[prompt_key], "completion": row[completion_key]})
        elif isinstance(row.get("messages"), list) and row["messages"] and not prompt_column:
            rows.append(_from_messages(row["messages"], tokenizer, f"{path}:{lineno}"))
        else:
            raise UserError(
                f"{path}:{lineno}: needs string {prompt_key!r} and {completion_key!r}"
                + ("" if prompt_column else ", or a 'messages' list")
                + f" (its columns: {', '.join(row)})"
            )
    if tokenizer is not None:
        refuse_unknown_characters(path, list(zip(linenos, rows)), tokenizer)
    return rows


def _records(path):
    """(line or row number, row) pairs: JSONL line by line, any other dataset through `datasets`
    (whose numbers, as a CSV reader infers a column of "4" or "12" to be, are read as text)."""
    if str(path).lower().endswith(".jsonl"):
        return read_jsonl(path)
    from ..tasks.data import read_rows

    return (
        (i, {k: str(v) if type(v) in (int, float) else v for k, v in row.items()})
        for i, row in enumerate(read_rows(path), start=1)
    )


def refuse_unknown_characters(path, numbered_rows, tokenizer) -> None:
    """One UserError naming the first character (and its file:line) that `tokenizer` would silently
    read as its unknown token: the built-in one knows printable ASCII and newline only."""
    lost = tokenizer.unknown_characters(
        {c for _, row in numbered_rows for text in row.values() for c in text}
    )
    for lineno, row in numbered_rows if lost else []:
        if bad := next((c for c in row["prompt"] + row["completion"] if c in lost), None):
            raise UserError(
                f"{path}:{lineno}: character {bad!r} (U+{ord(bad):04X}) is not in the model's vocabulary: "
                f"its tokenizer would read it as {tokenizer.unk_token!r} (the built-in model knows "
                "printable ASCII and newline)"
            )


def _from_messages(messages: list, tokenizer, where: str) -> dict:
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise UserError(f"{where}: the last message must be the assistant's")
    if tokenizer is None or not getattr(tokenizer.hf, "chat_template", None):
        raise UserError(f"{where}: 'messages' rows need a model whose tokenizer has a chat template")
    prompt = tokenizer.hf.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    return {"prompt": prompt, "completion": last["content"]}


def check_lengths(examples, eos_id, max_seq_len: int, where: str) -> None:
    """Say when examples were cut to `max_seq_len` (their completions lose their end, or all of it);
    refuse a set where no example keeps a completion token to learn from."""
    empty = sum(1 for _, c in examples if not c)
    if examples and empty == len(examples):  # (no examples at all: the trainer says so)
        raise UserError(
            f"{where}: every prompt fills --max-seq-len {max_seq_len}: no completion token left to train on"
        )
    cut = sum(1 for _, c in examples if not c or (eos_id is not None and c[-1] != eos_id))
    if cut and world()[0] == 0:
        print(
            f"note: {cut} of {len(examples)} examples in {where} are longer than --max-seq-len "
            f"{max_seq_len} and were cut ({empty} of them down to the prompt alone, which carry no loss)",
            file=sys.stderr,
        )


def run_sft(
    cfg: SFTConfig,
    log=None,
    progress=None,
    device: str = "auto",
    *,
    prompt_column: str | None = None,
    completion_column: str | None = None,
) -> dict:
    """Fine-tune `cfg.model` (or a fresh built-in model) on `cfg.data`, on `device` (see
    `runtime.resolve_device`; under torchrun each rank takes its own GPU, or the CPU with gloo).
    `prompt_column`/`completion_column`: the data's columns, when not ``prompt``/``completion``."""
    if not cfg.data:
        raise UserError("--data is required (prompt/completion or messages rows: a JSONL, parquet, … file)")
    columns = {"prompt_column": prompt_column, "completion_column": completion_column}
    folder = RunFolder.claim(
        cfg.out, "sft", cfg.overwrite, cfg.report_to, cfg.resume
    )  # before any work: the save at the end will work
    where = resolve_device(device)
    setup_distributed(device)
    model, tokenizer = load_model(cfg.model, load_dtype(cfg)) if cfg.model else new_builtin(seed=cfg.seed)
    model = model.to(where)
    rank = world()[0]
    fit_to_model(cfg, model)
    model = prepare(model, cfg)
    examples = tokenize_examples(tokenizer, read_sft_rows(cfg.data, tokenizer, **columns), cfg.max_seq_len)
    check_lengths(examples, tokenizer.eos_id, cfg.max_seq_len, cfg.data)
    evaluate = None
    if cfg.eval_data:
        held = tokenize_examples(
            tokenizer, read_sft_rows(cfg.eval_data, tokenizer, **columns), cfg.max_seq_len
        )

        def evaluate(m):
            return {"eval_loss": held_out_loss(m, tokenizer.pad_id, held)}

    if rank == 0:
        folder.start(asdict(cfg))
    metrics = train_supervised(
        model,
        tokenizer,
        examples,
        cfg,
        evaluate=evaluate,
        log=log,
        progress=progress if rank == 0 else None,
        folder=folder,
        resume=cfg.resume,
    )
    save_trained(model, tokenizer, folder, train_record(cfg), into=cfg.overwrite)
    shutdown_distributed()
    return metrics
