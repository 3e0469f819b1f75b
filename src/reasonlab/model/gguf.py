"""GGUF files (llama.cpp, ollama) as models: each is converted once into a Hugging Face folder.

`gguf_folder(path)` dequantises a ``.gguf`` with transformers' GGUF loader and writes what
`load_model` reads: ``model.safetensors`` (float32), ``config.json``, ``generation_config.json`` and
the tokenizer files, the file's chat template among them. Every later call for the same file
returns that folder without converting again. Conversions live in

    $REASONLAB_CACHE                         when set, else
    $XDG_CACHE_HOME/reasonlab/gguf           when XDG_CACHE_HOME is set, else
    ~/.cache/reasonlab/gguf

one folder per file, named ``<file stem>-<16 hex digits>``: a hash of the file's absolute path,
size and modification time, so a file replaced or edited in place converts anew (the old folder
stays until deleted by hand). A folder is written under a temporary name beside it and renamed
into place once complete, so an interrupted conversion never leaves a folder that later loads.

Needs the packages ``gguf`` and ``accelerate`` (``pip install 'reasonlab[gguf]'``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..errors import UserError

MAGIC = b"GGUF"  # the first four bytes of every GGUF file
INSTALL = "pip install 'reasonlab[gguf]'"


def cache_root() -> Path:
    """The folder conversions go in: $REASONLAB_CACHE, else $XDG_CACHE_HOME/reasonlab/gguf, else
    ~/.cache/reasonlab/gguf (an empty variable counts as unset)."""
    if os.environ.get("REASONLAB_CACHE"):
        return Path(os.environ["REASONLAB_CACHE"]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().absolute() / "reasonlab" / "gguf"


def cache_name(path: Path) -> str:
    """``<stem>-<hash>``: the hash covers the absolute path, size and mtime, not the content, so
    finding a cached conversion costs one stat even for a file of many GB."""
    stat = path.stat()
    key = f"{path.absolute()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def gguf_folder(path) -> Path:
    """The Hugging Face folder converted from GGUF file `path`, converting it first when the cache
    ($REASONLAB_CACHE, else $XDG_CACHE_HOME/reasonlab/gguf, else ~/.cache/reasonlab/gguf) holds
    none for this file's path, size and mtime. Progress goes to stderr. A missing file, one that
    is not GGUF, missing packages, an architecture transformers cannot dequantise and an unwritable
    cache are each one `UserError`."""
    path = Path(path)
    check_gguf_file(path)
    folder = cache_root() / cache_name(path)
    if (folder / "config.json").is_file():
        return folder
    require_packages()
    print(f"converting {path.name} → {folder} (once) …", file=sys.stderr, flush=True)
    start = time.perf_counter()
    write_folder(path, folder)
    print(f"converted {path.name} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return folder


def check_gguf_file(path: Path) -> None:
    """Refuse a path that is not a readable file starting with the GGUF magic bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if head != MAGIC:
        raise UserError(f"{path} is not a GGUF file (it starts with {head!r}, not {MAGIC!r})")


def require_packages() -> None:
    """Refuse to start a conversion without the packages transformers' GGUF loader needs."""
    try:
        import accelerate  # noqa: F401
        import gguf  # noqa: F401
    except ImportError as e:
        missing = e.name or "gguf or accelerate"
        raise UserError(f"loading a .gguf model needs the packages gguf and accelerate ({missing} is not "
                        f"installed): {INSTALL}") from None


def write_folder(source: Path, folder: Path) -> None:
    """Convert `source` into a temporary sibling of `folder`, then rename it to `folder`. When
    another process renamed its own conversion into place first, that one is kept."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    except OSError as e:
        raise UserError(f"cannot write the GGUF cache {folder.parent}: {e.strerror or e} "
                        "(set REASONLAB_CACHE to a writable folder)") from None
    try:
        convert(source, tmp)
        for file in tmp.iterdir():  # on disk before the rename makes the folder visible
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        os.rename(tmp, folder)
    except OSError as e:
        if not (folder / "config.json").is_file():
            raise UserError(f"cannot write the GGUF cache {folder.parent}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert(source: Path, out: Path) -> None:
    """Write the dequantised model and the tokenizer of GGUF file `source` into folder `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    where = dict(pretrained_model_name_or_path=source.parent, gguf_file=source.name, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where)
        model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32, **dequantize_option())
    except ImportError as e:  # transformers refuses a gguf or accelerate older than it supports
        raise UserError(f"cannot convert {source.name}: {one_line(e)} ({INSTALL})") from None
    except Exception as e:  # an architecture or tokenizer type transformers cannot read, a corrupt file
        raise UserError(f"cannot convert {source.name} (GGUF architecture {architecture(source)!r}) with "
                        f"transformers: {type(e).__name__}: {one_line(e)}") from None
    plain_copy(model).save_pretrained(out)
    tokenizer.save_pretrained(out)


def dequantize_option() -> dict:
    """Ask for dense weights: transformers versions that can keep GGUF blocks packed (a
    `GgufConfig`) would otherwise leave them packed when the `kernels` package is installed."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantise
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def plain_copy(model):
    """`model`'s weights in a model of its class built from its config without the GGUF entry:
    transformers refuses to save a model it loaded from a GGUF. Built on the meta device and
    given the same tensors, so nothing is allocated or copied."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    return plain


def architecture(source: Path) -> str:
    """The ``general.architecture`` a GGUF file names, or "unknown" when it cannot be read."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(source).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception:
        return "unknown"


def one_line(error: Exception) -> str:
    """An error's message on one line, cut to 300 characters (transformers' run to paragraphs)."""
    return " ".join(str(error).split())[:300]
