"""Checkpoints: one folder that is both a reasonlab checkpoint and a Hugging Face model.

A built-in model's folder holds ``model.safetensors`` (Llama parameter names), ``config.json`` (a
`LlamaConfig` plus a ``reasonlab`` entry with the `GPTConfig`), the tokenizer files, and
``train_config.json`` (the configuration that produced it), when given. Folders are written
atomically: to a temporary sibling first, then renamed into place, so a crash never leaves a
half-written checkpoint where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import UserError
from ..jsonl import read_json
from .gpt import GPT, GPTConfig
from .hf import HFCausalLM, load_hf_model
from .tokenizer import TokenizerAdapter, build_char_tokenizer, load_tokenizer

TRAIN_CONFIG = "train_config.json"


def new_builtin(config: GPTConfig | None = None, seed: int = 0) -> tuple[GPT, TokenizerAdapter]:
    """A freshly initialised built-in model and its character tokenizer."""
    tokenizer = TokenizerAdapter(build_char_tokenizer())
    config = config or GPTConfig()
    config.vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    return GPT(config), tokenizer


def llama_config(config: GPTConfig, tokenizer: TokenizerAdapter):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
        num_key_value_heads=config.n_kv_head, head_dim=config.head_dim, hidden_act="silu",
        max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta, tie_word_embeddings=config.tie_embeddings,
        attention_bias=False, mlp_bias=False, eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id, bos_token_id=None, architectures=["LlamaForCausalLM"],
    )


def _write_model(folder: Path, model, tokenizer: TokenizerAdapter, reasonlab_meta: bool) -> None:
    from safetensors.torch import save_file

    if isinstance(model, HFCausalLM):
        model.hf.save_pretrained(folder)
    else:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_embeddings:
            state.pop("lm_head.weight")  # tied: HF re-ties it from the embedding
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        config = llama_config(model.config, tokenizer).to_dict()
        if reasonlab_meta:
            config["reasonlab"] = {"kind": "builtin", "gpt": asdict(model.config)}
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save(folder)


def save_checkpoint(path, model, tokenizer: TokenizerAdapter, train_config: dict | None = None,
                    *, reasonlab_meta: bool = True) -> Path:
    """Write `model` + `tokenizer` (+ `train_config`) to folder `path`, atomically."""
    path = Path(path)
    if any(torch.isnan(p).any() or torch.isinf(p).any() for p in model.parameters()):
        raise ValueError("refusing to save a model with NaN or inf weights")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        _write_model(tmp, model, tokenizer, reasonlab_meta)
        if train_config is not None:
            (tmp / TRAIN_CONFIG).write_text(json.dumps(train_config, indent=2, default=str))
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def export_hf(model, tokenizer: TokenizerAdapter, path) -> Path:
    """A plain Hugging Face folder (`AutoModelForCausalLM.from_pretrained` loads it)."""
    return save_checkpoint(path, model, tokenizer, reasonlab_meta=False)


def load_model(path, dtype: torch.dtype | None = None):
    """(model, tokenizer) from a reasonlab checkpoint or any local Hugging Face causal LM folder. A
    folder that cannot be loaded (no config.json; a truncated, empty or foreign model.safetensors; a
    config.json of the wrong types or shapes; broken tokenizer files) raises one UserError naming it."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{str(path)!r} is not a model folder (no config.json)")
    try:
        return _load_model(path, dtype)
    except UserError:
        raise
    except Exception as e:  # safetensors, json, torch shape and transformers errors alike
        detail = " ".join(str(e).split())[:300]  # one line
        raise UserError(f"cannot load the model in {path}: {type(e).__name__}: {detail}") from e


def _load_model(path: Path, dtype):
    meta = read_json(path / "config.json").get("reasonlab")
    tokenizer = load_tokenizer(path)
    if isinstance(meta, dict) and meta.get("kind") == "builtin":
        from safetensors.torch import load_file

        model = GPT(GPTConfig(**meta["gpt"]))
        missing, unexpected = model.load_state_dict(load_file(path / "model.safetensors"), strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise UserError(f"checkpoint {path} does not match its config "
                            f"(missing {missing}, unexpected {unexpected})")
        return model.to(dtype) if dtype else model, tokenizer
    return load_hf_model(path, dtype), tokenizer


def load_train_config(path) -> dict | None:
    """A checkpoint's train_config.json, or None without one; one that is not a JSON object is a UserError."""
    file = Path(path) / TRAIN_CONFIG
    return read_json(file) if file.is_file() else None


def recorded_task(path):
    """The task a checkpoint was trained on, as its train_config.json records it: a spec
    {"name", "options"} (a bare name in older checkpoints), or None."""
    return (load_train_config(path) or {}).get("task") if Path(path).is_dir() else None
