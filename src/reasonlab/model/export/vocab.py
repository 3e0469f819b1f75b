"""A tokenizer as GGUF metadata: the ``tokenizer.ggml.*`` keys llama.cpp builds its vocabulary from.

Three kinds of Hugging Face tokenizer are expressed, read from the fast tokenizer's own JSON:

- **a vocabulary of single characters** (the built-in tokenizer: a `WordLevel` model over printable
  ASCII and newline, the template tags as added tokens) → ``gpt2``, llama.cpp's byte-level BPE,
  with *no merges*. Each character is written in GPT-2's byte-to-unicode spelling (space ``Ġ``,
  newline ``Ċ``), so byte-level BPE splits any text into exactly those one-character tokens, and
  the tags (user-defined tokens) are matched whole before it, as the built-in tokenizer does. Why
  not the others llama.cpp reads: ``llama`` (SentencePiece) turns spaces into ``▁`` and aborts on
  a byte it has no token for (it needs ``<0xXX>`` byte tokens); ``bert`` lower-cases and splits on
  punctuation; ``rwkv`` and ``ugm`` are not read back by transformers; ``none`` has no text side
  at all. One difference remains: the built-in tokenizer reads a character outside its vocabulary
  as ``?``, llama.cpp drops it (reasonlab refuses such prompts anyway).
- **byte-level BPE** (Llama 3, Qwen2/Qwen3, SmolLM) → ``gpt2`` with the merges, and the
  pre-tokenizer named by its split regex (`pre_tokenizer_names`; one llama.cpp does not know is refused,
  since a wrong one silently tokenizes differently).
- **SentencePiece-style BPE** (``byte_fallback``, ``▁`` for spaces: Llama 2, Mistral, Gemma) →
  ``llama``, each token's score the negated rank of the merge that makes it (llama.cpp merges the
  highest-scoring pair first, which is BPE's order). A tokenizer whose normalizer prepends ``▁``
  (Llama 2's) prepends it again after each added token in Hugging Face; llama.cpp (and
  transformers' GGUF reader) only at the start: text right after a tag can tokenize differently.

Anything else is one `UserError`. Token types: special added tokens are CONTROL, other added
tokens USER_DEFINED (matched whole in any text), ``<0xXX>`` tokens BYTE. Embedding rows beyond the
tokenizer (Qwen pads its vocabulary to a multiple of 64) get ``[PADn]`` tokens of type UNUSED, as
llama.cpp wants one token per row.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field

from ...errors import UserError


@dataclass
class Vocab:
    """What goes under ``tokenizer.ggml.*``."""

    model: str  # "gpt2" or "llama"
    pre: str | None  # the pre-tokenizer's name (gpt2 only)
    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    merges: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    add_space_prefix: bool | None = None


def byte_spelling() -> dict[int, str]:
    """GPT-2's byte-to-unicode table: printable bytes stand for themselves, the others (space,
    newline, control bytes) for characters from U+0100 on."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def build_vocab(tokenizer, n_vocab: int) -> Vocab:
    """The `Vocab` of `tokenizer` (a `TokenizerAdapter`) for a model with `n_vocab` embedding rows."""
    hf = tokenizer.hf
    if not getattr(hf, "is_fast", False):
        raise UserError("GGUF export needs a fast tokenizer (a tokenizer.json); this model's is a slow one")
    spec = json.loads(hf.backend_tokenizer.to_str())
    model = spec["model"]
    added = {int(i): t for i, t in hf.added_tokens_decoder.items()}
    if model["type"] == "WordLevel":
        vocab = character_vocab(model["vocab"], added)
    elif model["type"] == "BPE" and model.get("byte_fallback"):
        vocab = sentencepiece_vocab(spec, added)
    elif model["type"] == "BPE":
        vocab = byte_level_vocab(spec, added)
    else:
        raise UserError(
            f"cannot express a {model['type']} tokenizer in GGUF (character, byte-level BPE and "
            "SentencePiece-style BPE vocabularies can be)"
        )
    return pad_vocab(vocab, n_vocab)


def token_types(n: int, added: dict, unk: str | None = None, tokens: list[str] | None = None) -> list[int]:
    """NORMAL for every id, then CONTROL for special added tokens and USER_DEFINED for the others."""
    from gguf import TokenType

    types = [int(TokenType.NORMAL)] * n
    for i, token in added.items():
        types[i] = int(TokenType.CONTROL if token.special else TokenType.USER_DEFINED)
    if tokens is not None:
        for i, text in enumerate(tokens):
            if unk is not None and text == unk:
                types[i] = int(TokenType.UNKNOWN)
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
                types[i] = int(TokenType.BYTE)
    return types


def ordered(vocab: dict[str, int], added: dict) -> list[str]:
    """The tokens in id order: the model's vocabulary and the added tokens, with no id missing."""
    tokens = {i: t for t, i in vocab.items()}
    tokens.update({i: t.content for i, t in added.items()})
    missing = [i for i in range(len(tokens)) if i not in tokens]
    if missing or len(tokens) != max(tokens) + 1:
        raise UserError(
            f"the tokenizer's ids are not contiguous (id {missing[0] if missing else max(tokens)} "
            "has no token or is out of order): cannot write a GGUF vocabulary"
        )
    return [tokens[i] for i in range(len(tokens))]


def character_vocab(vocab: dict[str, int], added: dict) -> Vocab:
    """A WordLevel vocabulary of single ASCII characters (plus added tokens) as byte-level BPE with
    no merges (see the module docstring)."""
    spelling = byte_spelling()
    tokens = ordered(vocab, added)
    for i, text in enumerate(tokens):
        if i in added:
            continue
        if len(text) != 1 or ord(text) > 127:  # one byte each, or byte-level BPE would split it
            raise UserError(
                f"cannot write the word-level tokenizer as GGUF: token {i} ({text!r}) is not one ASCII "
                "character (only character vocabularies can be expressed)"
            )
        tokens[i] = spelling[ord(text)]
    # "default": GPT-2's split regex. Without merges it changes nothing: every byte is a token.
    return Vocab("gpt2", "default", tokens, token_types(len(tokens), added))


def byte_level_vocab(spec: dict, added: dict) -> Vocab:
    """Byte-level BPE: the vocabulary and merges as they are, the pre-tokenizer by its regex."""
    model = spec["model"]
    if not has_byte_level(spec.get("pre_tokenizer")):
        raise UserError(
            "cannot express this BPE tokenizer in GGUF: it is neither byte-level nor SentencePiece-style "
            "(byte_fallback)"
        )
    tokens = ordered(model["vocab"], added)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return Vocab(
        "gpt2", pre_tokenizer_name(spec.get("pre_tokenizer")), tokens, token_types(len(tokens), added), merges
    )


def has_byte_level(pre: dict | None) -> bool:
    if not pre:
        return False
    if pre["type"] == "Sequence":
        return any(has_byte_level(p) for p in pre["pretokenizers"])
    return pre["type"] == "ByteLevel"


def pre_tokenizer_name(pre: dict | None) -> str:
    """The name llama.cpp gives the way `pre` splits text before the merges: a Split's regex is
    looked up in transformers' table of each name's regex (so the file reads back as written);
    GPT-2's own regex (ByteLevel's use_regex) is "gpt-2", with single digits split first (SmolLM)
    "smollm". Anything else is refused: a wrong name tokenizes differently without a word."""
    parts = pre["pretokenizers"] if pre["type"] == "Sequence" else [pre]
    shape = [
        (p["type"], p.get("use_regex", True) if p["type"] == "ByteLevel" else p.get("individual_digits"))
        for p in parts
    ]
    if [t for t, _ in shape] == ["Split", "ByteLevel"] and not shape[1][1]:
        regex = parts[0]["pattern"].get("Regex") or re.escape(parts[0]["pattern"].get("String", ""))
        if regex in pre_tokenizer_names():
            return pre_tokenizer_names()[regex]
        raise UserError(
            f"cannot express this tokenizer in GGUF: llama.cpp knows no pre-tokenizer with its split regex "
            f"{regex[:60]!r}... (a wrong one would tokenize differently)"
        )
    known = {(("ByteLevel", True),): "gpt-2", (("Digits", True), ("ByteLevel", True)): "smollm"}
    if tuple(shape) in known:
        return known[tuple(shape)]
    raise UserError(
        f"cannot express this tokenizer in GGUF: llama.cpp knows no pre-tokenizer that splits text as "
        f"{' + '.join(t for t, _ in shape)} does"
    )


@functools.cache
def pre_tokenizer_names() -> dict[str, str]:
    """regex -> the first name transformers' GGUF reader gives it (llama.cpp knows each of them)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    table = {}
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        table.setdefault(regex, name)
    return table


def sentencepiece_vocab(spec: dict, added: dict) -> Vocab:
    """SentencePiece-style BPE (byte_fallback): tokens as spelt (``▁`` for a space), each scored
    by the merge that makes it: a merge of rank r gives -r, a base character 0; llama.cpp merges the
    highest-scoring pair first."""
    model = spec["model"]
    tokens = ordered(model["vocab"], added)
    rank = {}
    for r, m in enumerate(model.get("merges", [])):
        left, right = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(left + right, r)
    scores = [-float(rank[t] + 1) if t in rank else 0.0 for t in tokens]
    prefix = "Prepend" in json.dumps(spec.get("normalizer")) or '"prepend_scheme": "always"' in json.dumps(
        spec.get("pre_tokenizer")
    )
    return Vocab(
        "llama",
        None,
        tokens,
        token_types(len(tokens), added, model.get("unk_token"), tokens),
        scores=scores,
        add_space_prefix=prefix,
    )


def pad_vocab(vocab: Vocab, n_vocab: int) -> Vocab:
    """One token per embedding row: rows past the tokenizer get unused ``[PADn]`` tokens."""
    from gguf import TokenType

    extra = n_vocab - len(vocab.tokens)
    if extra < 0:
        raise UserError(
            f"the tokenizer has {len(vocab.tokens)} tokens but the model only {n_vocab} embedding rows"
        )
    vocab.tokens += [f"[PAD{i}]" for i in range(len(vocab.tokens), n_vocab)]
    vocab.types += [int(TokenType.UNUSED)] * extra
    if vocab.scores is not None:
        vocab.scores += [-1e9] * extra
    return vocab


def write_vocab(writer, vocab: Vocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.model == "gpt2":
        # llama.cpp refuses a gpt2 vocabulary without the key: a character vocabulary writes an empty list
        writer.add_key_value("tokenizer.ggml.merges", vocab.merges, *_string_array())
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)


def _string_array():
    from gguf import GGUFValueType

    return GGUFValueType.ARRAY, GGUFValueType.STRING
