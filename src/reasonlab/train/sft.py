"""Supervised fine-tuning on prompt/completion JSONL (TRL's `prompt`/`completion` columns, or
`messages` in the chat format). The loss covers completion tokens only."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

from ..errors import UserError
from ..jsonl import read_jsonl
from ..model import load_model, new_builtin, save_checkpoint, train_record
from ..model.export import save_adapter
from ..outdir import RunFolder, RunOptions, out_field
from ..runtime import (
    RuntimeOptions,
    load_dtype,
    plain_model,
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
    data: str = field(default="", metadata={"help": "training JSONL: prompt/completion or messages"})
    eval_data: str = field(
        default="", metadata={"help": "held-out JSONL for the loss every eval_every steps"}
    )
    out: str = out_field("runs/sft")


def read_sft_rows(path, tokenizer=None) -> list[dict]:
    """`{"prompt", "completion"}` rows from JSONL; `messages` rows go through the chat template."""
    rows, linenos = [], []
    for lineno, row in read_jsonl(path):
        linenos.append(lineno)
        if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
            rows.append({"prompt": row["prompt"], "completion": row["completion"]})
        elif isinstance(row.get("messages"), list) and row["messages"]:
            rows.append(_from_messages(row["messages"], tokenizer, f"{path}:{lineno}"))
        else:
            raise UserError(f"{path}:{lineno}: needs string 'prompt' and 'completion', or a 'messages' list")
    if tokenizer is not None:
        refuse_unknown_characters(path, list(zip(linenos, rows)), tokenizer)
    return rows


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


def run_sft(cfg: SFTConfig, log=None, progress=None, device: str = "auto") -> dict:
    """Fine-tune `cfg.model` (or a fresh built-in model) on `cfg.data`, on `device` (see
    `runtime.resolve_device`; under torchrun each rank takes its own GPU, or the CPU with gloo)."""
    if not cfg.data:
        raise UserError("--data is required (a JSONL file of prompt/completion or messages)")
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
    examples = tokenize_examples(tokenizer, read_sft_rows(cfg.data, tokenizer), cfg.max_seq_len)
    check_lengths(examples, tokenizer.eos_id, cfg.max_seq_len, cfg.data)
    evaluate = None
    if cfg.eval_data:
        held = tokenize_examples(tokenizer, read_sft_rows(cfg.eval_data, tokenizer), cfg.max_seq_len)

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
    if rank == 0:  # --lora-rank: the adapter alone, in peft's format, beside the merged model
        save_adapter(model, folder.path)
    final = plain_model(model)  # every rank: FSDP2 gathers its shards
    if rank == 0:
        save_checkpoint(folder.model, final, tokenizer, train_record(cfg), into=cfg.overwrite)
    shutdown_distributed()
    return metrics
