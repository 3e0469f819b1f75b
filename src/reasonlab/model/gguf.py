"""GGUF files (llama.cpp, ollama) as models: each is converted once into a Hugging Face folder.

`gguf_folder(path)` dequantises a ``.gguf`` with transformers' GGUF loader and writes what
`load_model` reads: ``model.safetensors`` (float32), ``config.json``, ``generation_config.json`` and
the tokenizer files, the file's chat template among them. Every later call for the same file
returns that folder without converting again. Conversions live in

    $REASONLAB_CACHE                         when set, else
    $XDG_CACHE_HOME/reasonlab/gguf           when XDG_CACHE_HOME is set, else
    ~/.cache/reasonlab/gguf

one folder per file, named ``<file stem>-<8 hex digits>-<16 hex digits>``: a hash of the file's
absolute path, then one of its size and content (the first and last MiB and 16 blocks of 64 KiB
spread between: a few MB read whatever the file's size), so touching a file converts nothing, and a
file replaced or edited in place converts anew; that new folder then replaces (deletes) the
folders of the same path's earlier contents. A folder is written under a temporary name beside it
and renamed into place once complete, so an interrupted or failed conversion (a full disk: one line
saying how much room it needs and how much there is) never leaves a folder that later loads, nor
any partial one. Before converting, the file is checked whole: a truncated or corrupt file is
refused in one line with its size. Folders and files get the modes a plain mkdir and open give
under the umask.

Needs the packages ``gguf`` and ``accelerate`` (``pip install 'reasonlab[gguf]'``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..errors import UserError
from ..jsonl import plain_mode

MAGIC = b"GGUF"  # the first four bytes of every GGUF file
INSTALL = "pip install 'reasonlab[gguf]'"


def cache_root() -> Path:
    """The folder conversions go in: $REASONLAB_CACHE, else $XDG_CACHE_HOME/reasonlab/gguf, else
    ~/.cache/reasonlab/gguf (an empty variable counts as unset)."""
    if os.environ.get("REASONLAB_CACHE"):
        return Path(os.environ["REASONLAB_CACHE"]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().absolute() / "reasonlab" / "gguf"


EDGE = 1 << 20  # bytes of content hashed at each end of the file
PROBES, PROBE = 16, 64 << 10  # blocks hashed between the ends, and their size
CONTENT_KEY = re.compile(r"[0-9a-f]{16}")


def cache_name(path: Path) -> str:
    """``<stem>-<path hash>-<content hash>``. The content hash covers the size, the first and last
    `EDGE` bytes (a GGUF's header, tensor table and first weights; its last weights) and `PROBES`
    blocks spread between: a few MB read for a file of many GB, and no modification time, so a
    touched file keeps its conversion. A change of the same size confined to bytes between the
    blocks goes unseen (delete the folder to convert again)."""
    source = hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:8]
    return f"{path.stem}-{source}-{content_key(path)}"


def content_key(path: Path) -> str:
    """16 hex digits of a hash of `path`'s size and sampled content (see `cache_name`)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h = hashlib.sha256(str(size).encode() + b"\0")
        if size <= 2 * EDGE + PROBES * PROBE:
            h.update(f.read())
        else:
            h.update(f.read(EDGE))
            for i in range(1, PROBES + 1):
                f.seek(EDGE + i * (size - 2 * EDGE - PROBE) // (PROBES + 1))
                h.update(f.read(PROBE))
            f.seek(size - EDGE)
            h.update(f.read(EDGE))
    return h.hexdigest()[:16]


def gguf_folder(path) -> Path:
    """The Hugging Face folder converted from GGUF file `path`, converting it first when the cache
    ($REASONLAB_CACHE, else $XDG_CACHE_HOME/reasonlab/gguf, else ~/.cache/reasonlab/gguf) holds
    none for this file's path, size and content; a new conversion replaces those of the path's
    earlier contents. Progress goes to stderr. A missing file, one that is not GGUF, a truncated or
    corrupt one, missing packages, an architecture transformers cannot dequantise and a cache that
    cannot be written (full, read-only) are each one `UserError`."""
    path = Path(path)
    check_gguf_file(path)
    try:
        folder = cache_root() / cache_name(path)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if (folder / "config.json").is_file():
        return folder
    require_packages()
    needed = check_whole(path)
    check_room(folder.parent, needed)
    print(f"converting {path.name} → {folder} (once) …", file=sys.stderr, flush=True)
    start = time.perf_counter()
    write_folder(path, folder, needed)
    print(f"converted {path.name} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    evict_replaced(folder)
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
        raise UserError(
            f"loading a .gguf model needs the packages gguf and accelerate ({missing} is not "
            f"installed): {INSTALL}"
        ) from None


def check_whole(path: Path) -> int:
    """Refuse a GGUF file that gguf's reader cannot read or whose tensor data runs past its end (a
    download or copy cut short) in one line naming it and its size. Returns the bytes its tensors
    take dequantised to float32: about what the conversion writes."""
    size = path.stat().st_size
    try:
        from gguf import GGUFReader

        tensors = GGUFReader(path).tensors
    except Exception as e:
        if isinstance(e, ValueError) and "GGMLQuantizationType" in str(e):
            raise UserError(
                f"cannot read {path}: it holds a tensor type the installed gguf package does not know "
                f"({one_line(e)}; pip install -U gguf)"
            ) from None
        raise UserError(
            f"cannot read {path} ({size:,} bytes): the file is truncated or corrupt (gguf's reader: "
            f"{type(e).__name__}: {one_line(e)})"
        ) from None
    end = max((t.data_offset + t.n_bytes for t in tensors), default=0)
    if end > size:
        raise UserError(
            f"cannot read {path} ({size:,} bytes): the file is truncated, its tensor data runs to "
            f"byte {end:,}"
        )
    return 4 * sum(int(t.n_elements) for t in tensors)


def write_folder(source: Path, folder: Path, needed: int = 0) -> None:
    """Convert `source` into a temporary sibling of `folder`, then rename it to `folder`. When
    another process renamed its own conversion into place first, that one is kept. A failed write
    removes everything it wrote and is one `UserError` saying how much room the conversion needs
    (`needed` bytes, about; 0: unknown) and how much there is."""
    root = folder.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}.tmp-"))
        os.chmod(tmp, plain_mode(folder=True))  # what mkdir gives under the umask, not mkdtemp's 0700
    except OSError as e:
        raise UserError(
            f"cannot write the GGUF cache {root}: {e.strerror or e} "
            "(set REASONLAB_CACHE to a writable folder)"
        ) from None
    try:
        convert(source, tmp)
        for file in tmp.iterdir():  # on disk before the rename makes the folder visible
            with open(file, "rb") as f:
                os.fchmod(f.fileno(), plain_mode())  # safetensors writes its file 0600
                os.fsync(f.fileno())
        os.rename(tmp, folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # the partial entry: nothing of it stays
        if isinstance(e, OSError) and (folder / "config.json").is_file():
            return  # another process's conversion was renamed into place first
        if not isinstance(e, UserError) and is_write_error(e):
            raise UserError(cache_write_error(root, write_reason(e), needed, free_bytes(root))) from None
        raise


def is_write_error(error: BaseException) -> bool:
    """Whether a conversion failed writing its files: an OSError, safetensors' SafetensorError (a
    full disk reads "… No space left on device …"), or a Rust library's error naming an OS error."""
    return (
        isinstance(error, OSError)
        or type(error).__name__ == "SafetensorError"
        or (
            isinstance(error, Exception)
            and re.search(r"\(os error \d+\)|No space left on device", str(error)) is not None
        )
    )


def write_reason(error: BaseException) -> str:
    """Why a write failed, in a few words: the OS's words for its error number where there is one."""
    text = str(error)
    if (
        getattr(error, "errno", None) == errno.ENOSPC
        or "No space left on device" in text
        or "StorageFull" in text
    ):
        return os.strerror(errno.ENOSPC)
    if getattr(error, "errno", None) == errno.EDQUOT or "Disk quota exceeded" in text:
        return os.strerror(errno.EDQUOT)
    return getattr(error, "strerror", None) or one_line(error)


def cache_write_error(root: Path, reason: str, needed: int, free: int | None) -> str:
    """One line: the cache folder, why it cannot take the conversion, the room it needs and has."""
    room = []
    if needed:
        room.append(f"the conversion needs about {megabytes(needed)}")
    if free is not None:
        room.append(f"{megabytes(free)} free there")
    room = f" ({', '.join(room)})" if room else ""
    return (
        f"cannot write the GGUF cache {root}: {reason}{room}; set REASONLAB_CACHE to a folder on a disk with "
        "room (export REASONLAB_CACHE=/path/with/room)"
    )


def check_room(root: Path, needed: int) -> None:
    """Refuse, before converting, a conversion of about `needed` bytes into cache folder `root`
    when its disk has less free room than that."""
    free = free_bytes(root)
    if needed and free is not None and free < needed:
        raise UserError(cache_write_error(root, "not enough free space", needed, free))


def free_bytes(folder: Path) -> int | None:
    """The bytes this user may still write under `folder` (or under its nearest existing parent,
    where it is still to be made), or None when that cannot be told."""
    for where in (folder, *folder.parents):
        try:
            if where.is_dir():
                return shutil.disk_usage(where).free
        except OSError:
            return None
    return None


def megabytes(n: int) -> str:
    """`n` bytes in GB, MB or kB, to a tenth (a whole kB)."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def evict_replaced(folder: Path) -> None:
    """Delete the cache folders of earlier contents of the same file (same stem and path hash,
    another content hash): a file replaced in place leaves one conversion, not one per version.
    Each is renamed aside first, so no half-deleted folder is ever found under a cache name; one
    that cannot be removed is said on stderr."""
    prefix = folder.name[:-16]  # "<stem>-<path hash>-"
    try:
        entries = [
            e
            for e in folder.parent.iterdir()
            if e != folder
            and e.name.startswith(prefix)
            and CONTENT_KEY.fullmatch(e.name[len(prefix) :])
            and e.is_dir()
            and not e.is_symlink()
        ]
    except OSError:
        entries = []
    for entry in entries:
        try:
            aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{entry.name}.old-"))
            os.replace(entry, aside)  # onto the empty folder mkdtemp made
            shutil.rmtree(aside)
            print(
                f"removed {entry.name}, the conversion of this file's earlier content",
                file=sys.stderr,
                flush=True,
            )
        except OSError as e:
            print(
                f"warning: could not remove {entry}, the conversion of this file's earlier content: "
                f"{e.strerror or e} (delete it by hand)",
                file=sys.stderr,
                flush=True,
            )


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
        raise UserError(
            f"cannot convert {source.name} (GGUF architecture {architecture(source)!r}) with "
            f"transformers: {type(e).__name__}: {one_line(e)}"
        ) from None
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
