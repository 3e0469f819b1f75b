"""Exports: a model as one GGUF file (llama.cpp, ollama), as a plain Hugging Face folder, and a
LoRA run's adapter in peft's format.

`export_gguf(model, tokenizer, path, type)` writes, with ``gguf.GGUFWriter``:
- the weights under llama.cpp's names for the model's architecture (`arch`: the built-in model as
  ``llama``, HF Llama, Qwen2, Qwen3, Gemma3), as ``f32``, ``f16``, ``bf16`` or ``q8_0`` (norms and
  other 1-D tensors stay float32, as llama.cpp keeps them; a matrix whose rows are not a multiple
  of Q8_0's 32-value blocks is written f16);
- the tokenizer (`vocab`), its special ids, the chat template (the built-in model gets one that
  writes the plain prompt it was trained on: the question, then "Let's think step by step.");
- the reasoning template's stop: EOS, and ``</answer>`` as the end-of-turn token when it is one
  token (the built-in tokenizer's), so llama.cpp stops where reasonlab's engine stops; the stop
  strings also go under ``reasonlab.stop_strings`` for runners that stop on text (ollama's
  ``PARAMETER stop``).

The file is written beside `path` under a temporary name and renamed into place when complete,
with the mode a plain open gives under the umask.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ...errors import UserError
from ...jsonl import plain_mode
from ...template import ANSWER_CLOSE, TRIGGER
from .arch import arch_of, check_config, gguf_tensors, write_hparams
from .vocab import build_vocab, write_vocab

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
HF_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
Q8_BLOCK = 32  # values in one Q8_0 block, along a row
INSTALL = "pip install 'reasonlab[gguf]'"

# The built-in model's prompt (template.build_prompt's plain style) as a chat template.
PLAIN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ message['content'] + " + json.dumps(f"\n{TRIGGER}\n") + " }}"
    "{%- elif message['role'] == 'assistant' -%}{{ message['content'] }}"
    "{%- endif -%}{%- endfor -%}"
)


def source_view(model, tokenizer):
    """(HF config, state dict with HF names) of a built-in or HF model."""
    if getattr(model, "kind", "") == "hf":
        return model.hf.config, model.hf.state_dict()
    from ..checkpoint import llama_config

    return llama_config(model.config, tokenizer), model.state_dict()


def export_gguf(model, tokenizer, path, type: str = "f16", overwrite: bool = False) -> dict:
    """Write `model` + `tokenizer` as GGUF file `path`; returns a summary (architecture, tensor
    counts by type, bytes). Unsupported architectures, tokenizers and types are one `UserError`."""
    if type not in GGUF_TYPES:
        raise UserError(f"--type must be one of {', '.join(GGUF_TYPES)}, got {type!r}")
    gguf = require_gguf()
    path = output_file(path, overwrite)
    config, state = source_view(model, tokenizer)
    arch = arch_of(config)
    check_config(config, arch)
    vocab = build_vocab(tokenizer, config.vocab_size)
    tmp = temporary_sibling(path)
    try:
        writer = writer_class()(tmp, arch.gguf)
        write_general(writer, gguf, model, type)
        write_hparams(writer, config, arch)
        write_vocab(writer, vocab)
        write_specials(writer, tokenizer, model)
        counts = write_tensors(writer, gguf, gguf_tensors(state, config, arch), type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        finish(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e} (nothing was written there)") from None
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "architecture": arch.gguf, "tensors": counts, "bytes": path.stat().st_size}


def require_gguf():
    """The gguf package, new enough to write every key the export writes (0.19 was tested; 0.17
    lacks Gemma3's sliding-window keys)."""
    try:
        import gguf
    except ImportError:
        raise UserError(f"GGUF export needs the gguf package: {INSTALL}") from None
    missing = [
        m for m in ("add_sliding_window_pattern", "add_rope_freq_base_swa") if not hasattr(gguf.GGUFWriter, m)
    ]
    if missing:
        raise UserError(
            f"GGUF export needs a newer gguf package (this one has no GGUFWriter.{missing[0]}): "
            "pip install -U 'gguf>=0.19'"
        )
    return gguf


def output_file(path, overwrite: bool) -> Path:
    """`path` (``~`` expanded) ready to be written: its folder made; a folder, a link, a device, or
    an existing file without `overwrite`, refused."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the GGUF file's name")
    if path.is_symlink() or (
        path.exists() and not path.is_file()
    ):  # the rename would replace the link, or a device
        raise UserError(f"{path} is not a regular file (a link, a device or a pipe): give another name")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder of {path}: {e.strerror or e}") from None
    return path


def temporary_sibling(path: Path) -> Path:
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    return Path(name)


def finish(tmp: Path, path: Path) -> None:
    """On disk, with a plain file's mode (mkstemp's is 0600), then renamed to `path`."""
    with open(tmp, "rb") as f:
        os.fchmod(f.fileno(), plain_mode())
        os.fsync(f.fileno())
    os.replace(tmp, path)


@functools.cache
def writer_class():
    """``gguf.GGUFWriter``, but writing an empty array of a stated item type: the format allows one
    (a count of 0 after the item type) and llama.cpp reads it, but gguf's writer refuses it, and a
    character vocabulary's list of merges is one."""
    from gguf import GGUFValueType, GGUFWriter

    class Writer(GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer


def write_general(writer, gguf, model, type: str) -> None:
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer.add_type("model")
    name = getattr(getattr(getattr(model, "hf", None), "config", None), "_name_or_path", "") or "reasonlab"
    writer.add_name(Path(str(name)).name or "reasonlab")
    writer.add_file_type(file_types[type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_specials(writer, tokenizer, model) -> None:
    """Special ids, BOS/EOS insertion, the chat template and the reasoning template's stops."""
    hf = tokenizer.hf
    writer.add_eos_token_id(tokenizer.eos_id)
    if tokenizer.pad_id is not None:
        writer.add_pad_token_id(tokenizer.pad_id)
    if hf.bos_token_id is not None:
        writer.add_bos_token_id(hf.bos_token_id)
    if hf.unk_token_id is not None:
        writer.add_unk_token_id(hf.unk_token_id)
    plain, full = hf.encode("a", add_special_tokens=False), hf.encode("a")
    writer.add_add_bos_token(len(full) > len(plain) and full[0] == hf.bos_token_id)
    writer.add_add_eos_token(len(full) > len(plain) and full[-1] == hf.eos_token_id)
    template = hf.chat_template if isinstance(hf.chat_template, str) else None
    if template is None and getattr(model, "kind", "") != "hf":
        template = PLAIN_CHAT_TEMPLATE
    if template:
        writer.add_chat_template(template)
    close = tokenizer.tags[ANSWER_CLOSE]
    if len(close) == 1:  # llama.cpp ends generation at EOS and at the end-of-turn token
        writer.add_eot_token_id(close[0])
    writer.add_array("reasonlab.stop_strings", [ANSWER_CLOSE])


def write_tensors(writer, gguf, tensors, type: str) -> dict[str, int]:
    """Add each (name, float32 array) in the file's type; returns how many tensors got each type."""
    counts: dict[str, int] = {}
    for name, data in tensors:
        array, raw_dtype, kind = encode(gguf, data, type)
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def encode(gguf, data, type: str):
    """(array, raw ggml type or None, type name) of float32 `data` in `type`: 1-D tensors stay
    float32; Q8_0 needs rows of whole blocks, else f16."""
    import numpy as np

    if data.ndim == 1 or type == "f32":
        return data.astype(np.float32), None, "f32"
    if type == "f16" or (type == "q8_0" and data.shape[-1] % Q8_BLOCK):
        return data.astype(np.float16), None, "f16"
    qtype = gguf.GGMLQuantizationType.BF16 if type == "bf16" else gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(data, qtype), qtype, type


# ---- the command -----------------------------------------------------------------------------


def run_export(opts) -> dict:
    """`reasonlab export` (`options.ExportOptions`): the model of --model to --gguf and/or --hf.
    Both outputs are checked before the model loads. Returns what was written: "gguf" (the summary
    of `export_gguf`), "hf" (the folder), "adapter" (a LoRA run's adapter folder, when there is one)."""
    from ..checkpoint import load_model

    if not opts.model:
        raise UserError("--model is required (a checkpoint, run folder or Hugging Face model folder)")
    if not opts.gguf and not opts.hf:
        raise UserError("nothing to write: give --gguf OUT.gguf and/or --hf OUT_DIR")
    if opts.gguf:
        output_file(opts.gguf, opts.overwrite)
    if opts.hf:
        check_hf_output(Path(opts.hf).expanduser(), opts.overwrite)
    model, tokenizer = load_model(opts.model)
    done = {}
    if opts.gguf:
        done["gguf"] = export_gguf(model, tokenizer, opts.gguf, opts.type, overwrite=True)  # checked above
    if opts.hf:
        done["hf"] = export_hf_folder(model, tokenizer, opts.hf, opts.dtype)
    if (adapter := Path(opts.model).expanduser() / ADAPTER).is_dir():
        done["adapter"] = adapter
    return done


def check_hf_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not (path.is_dir() and not any(path.iterdir())) and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it (only a model folder is replaced)")


def export_summary(done: dict) -> list[str]:
    """One line per thing `run_export` wrote."""
    lines = []
    if "gguf" in done:
        s = done["gguf"]
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(s["tensors"].items()))
        lines.append(
            f"wrote {s['path']}: {s['architecture']}, {sum(s['tensors'].values())} tensors ({kinds}), "
            f"{s['bytes'] / 1e6:.1f} MB"
        )
    if "hf" in done:
        lines.append(f"wrote {done['hf']} (Hugging Face safetensors)")
    if "adapter" in done:
        lines.append(f"this run's LoRA adapter alone, in peft's format: {done['adapter']}")
    return lines


# ---- Hugging Face folder, LoRA adapter --------------------------------------------------------


def export_hf_folder(model, tokenizer, path, dtype: str = "bf16") -> Path:
    """A plain Hugging Face folder (safetensors in `dtype`, no reasonlab entries), written
    atomically with plain modes (`checkpoint.save_checkpoint`)."""
    from ..checkpoint import export_hf

    if dtype not in HF_DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(HF_DTYPES)}, got {dtype!r}")
    return export_hf(model.to(HF_DTYPES[dtype]), tokenizer, Path(path).expanduser())


ADAPTER = "adapter"  # a LoRA run's folder: adapter/ (peft's format) beside model/ (merged)
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"}


def save_adapter(model, run_folder) -> Path | None:
    """When `model` trains LoRA adapters: save them alone, in peft's format
    (``PeftModel.from_pretrained(base, RUN/adapter)`` loads them), to RUN/adapter, atomically and
    with plain modes. Call before `runtime.plain_model` merges them. None when there is no adapter."""
    from ...runtime import has_lora, unwrap

    core = unwrap(model)
    if not has_lora(core):
        return None
    target = Path(run_folder) / ADAPTER
    if target.exists() and not (target.is_dir() and {p.name for p in target.iterdir()} <= ADAPTER_FILES):
        raise UserError(f"refusing to save the LoRA adapter over {target}: it holds other files")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{ADAPTER}.tmp-"))
    try:
        os.chmod(tmp, plain_mode(folder=True))
        core.hf.save_pretrained(tmp)
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fchmod(f.fileno(), plain_mode())  # safetensors writes its file 0600
                os.fsync(f.fileno())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as e:
        raise UserError(f"cannot save the LoRA adapter to {target}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
