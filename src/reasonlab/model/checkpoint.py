"""Checkpoints: one folder that is both a reasonlab checkpoint and a Hugging Face model.

A built-in model's folder holds ``model.safetensors`` (Llama parameter names), ``config.json`` (a
`LlamaConfig` plus a ``reasonlab`` entry with the `GPTConfig`), the tokenizer files, and
``train_config.json`` (the configuration that produced it), when given, and ``run.json`` (the command
that made it), when given. Folders are written atomically: to a temporary sibling first, then
renamed into place, so a crash never leaves a half-written checkpoint where a good one was (with the
modes a plain mkdir and open give under the umask). Only a
folder of checkpoint files is ever replaced: a folder holding anything else is written into (each
file replaced atomically) when the caller allows it, else refused; a file is never replaced.
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
from ..jsonl import RUN_MARKER, plain_mode, read_json
from ..outdir import TRAIN_CONFIG, is_checkpoint_folder
from .gpt import GPT, GPTConfig
from .hf import HFCausalLM, load_hf_model
from .tokenizer import TokenizerAdapter, build_char_tokenizer, load_tokenizer


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
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_kv_head,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=None,
        architectures=["LlamaForCausalLM"],
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


def save_checkpoint(
    path,
    model,
    tokenizer: TokenizerAdapter,
    train_config: dict | None = None,
    *,
    reasonlab_meta: bool = True,
    into: bool = False,
) -> Path:
    """Write `model` + `tokenizer` (+ `train_config`) to folder
    `path`, atomically. An existing `path` is replaced only when it is a checkpoint folder
    (`is_checkpoint_folder`); a folder holding other files is written into when `into` (its other
    files stay), else refused, and so is a file. A failed write (a full disk) leaves `path` as it
    was and no temporary folder behind, and is one `UserError`."""
    path = Path(path)
    if any(torch.isnan(p).any() or torch.isinf(p).any() for p in model.parameters()):
        raise ValueError("refusing to save a model with NaN or inf weights")
    replace = not path.exists() or is_checkpoint_folder(path)
    if not replace and not (into and path.is_dir() and not path.is_symlink()):
        what = "a file" if not path.is_dir() else "a folder holding files that are not a checkpoint's"
        raise UserError(f"refusing to save a checkpoint over {path}: it is {what}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        os.chmod(tmp, plain_mode(folder=True))  # what mkdir gives under the umask, not mkdtemp's 0700
    except OSError as e:
        raise UserError(f"cannot save the checkpoint {path}: {e.strerror or e}") from None
    try:
        _write_model(tmp, model, tokenizer, reasonlab_meta)
        if train_config is not None:
            (tmp / TRAIN_CONFIG).write_text(json.dumps(train_config, indent=2, default=str))
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fchmod(f.fileno(), plain_mode())  # safetensors writes its file 0600
                os.fsync(f.fileno())
        _swap_in(tmp, path) if replace else _move_files_into(tmp, path)
    except OSError as e:
        raise UserError(
            f"cannot save the checkpoint {path}: {e.strerror or e} (nothing was changed there)"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename folder `tmp` to `path`; a checkpoint folder already there is set aside under a
    fresh name first (put back if the rename fails), then deleted."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
    os.replace(path, old)  # onto the empty folder mkdtemp made
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _move_files_into(tmp: Path, path: Path) -> None:
    """Move each file of `tmp` into folder `path` (each replacing the file of its name atomically)."""
    for file in tmp.iterdir():
        os.replace(file, path / file.name)


def train_record(cfg, task=None) -> dict:
    """What a checkpoint's ``train_config.json`` records: the settings that made it, and the task
    with its options (`get_task`'s spec) when there was one."""
    from dataclasses import asdict

    return {**({"task": task.spec} if task is not None else {}), **asdict(cfg)}


def export_hf(model, tokenizer: TokenizerAdapter, path) -> Path:
    """A plain Hugging Face folder (`AutoModelForCausalLM.from_pretrained` loads it)."""
    return save_checkpoint(path, model, tokenizer, reasonlab_meta=False)


def load_model(path, dtype: torch.dtype | None = None):
    """(model, tokenizer) from a reasonlab checkpoint or any local Hugging Face causal LM folder. A
    folder that cannot be loaded (no config.json; a truncated, empty or foreign model.safetensors; a
    config.json of the wrong types or shapes; broken tokenizer files) raises one UserError naming it.
    A ``.gguf`` file loads from the folder `gguf.gguf_folder` converts it into, once."""
    path = model_folder(path)
    if path.suffix.lower() == ".gguf" and not path.is_dir():
        from .gguf import gguf_folder

        path = gguf_folder(path)
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

        weights, config = load_file(path / "model.safetensors"), GPTConfig(**meta["gpt"])
        check_shapes(path, config, weights)  # before any memory is allocated for the model
        model = GPT(config)
        model.load_state_dict(weights, strict=False)
        return model.to(dtype) if dtype else model, tokenizer
    return load_hf_model(path, dtype), tokenizer


def check_shapes(path, config: GPTConfig, weights: dict) -> None:
    """Refuse weights that do not fit `config` (names and shapes) before the model is built, so a
    config.json of absurd sizes is an error, never an attempt to allocate them."""
    layers = {k.split(".")[2] for k in weights if k.startswith("model.layers.")}
    if config.n_layer != len(layers):
        raise UserError(
            f"checkpoint {path} does not match its config: n_layer {config.n_layer}, "
            f"model.safetensors holds {len(layers)} layers"
        )
    with torch.device("meta"):  # shapes only: no memory
        expected = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    wrong = sorted(
        k
        for k in set(expected) | set(weights)
        if k != "lm_head.weight" and expected.get(k) != (tuple(weights[k].shape) if k in weights else None)
    )
    if wrong:
        raise UserError(
            f"checkpoint {path} does not match its config: {len(wrong)} tensors missing or of "
            f"other shapes ({', '.join(wrong[:3])}{', ...' if len(wrong) > 3 else ''})"
        )


def load_train_config(path) -> dict | None:
    """A checkpoint's train_config.json, or None without one; one that is not a JSON object is a UserError."""
    file = model_folder(path) / TRAIN_CONFIG
    return read_json(file) if file.is_file() else None


def recorded_task(path):
    """The task a checkpoint was trained on, as its train_config.json records it: a spec
    {"name", "options"} (a bare name in older checkpoints), or None."""
    return (load_train_config(path) or {}).get("task") if model_folder(path).is_dir() else None


def model_folder(path) -> Path:
    """The model folder `path` names: a training run's folder (``run.json`` and ``model/``, see
    `outdir.RunFolder`) stands for the model it wrote; any other path is itself."""
    path = Path(path)
    if (path / RUN_MARKER).is_file() and not (path / "config.json").is_file() and (path / "model").is_dir():
        return path / "model"
    return path
