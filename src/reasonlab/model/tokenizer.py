"""Tokenizers: the built-in character tokenizer, and one adapter over any Hugging Face tokenizer.

The built-in tokenizer is a `tokenizers` WordLevel model over single characters (printable ASCII
and newline) in which the template tags ``<think> </think> <answer> </answer>`` are single special
tokens. It is wrapped in `transformers.PreTrainedTokenizerFast`, so it saves and loads like any
Hugging Face tokenizer and an exported model needs nothing of reasonlab.

`TokenizerAdapter` gives the engine and the trainers one interface over both kinds: encode and
decode without special-token surprises, the id sequence of each tag (one id for the built-in
tokenizer, several for most pretrained vocabularies), EOS and pad ids.
"""

from __future__ import annotations

from ..template import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

PAD, EOS, UNK = "<pad>", "<eos>", "?"
SPECIALS = [PAD, EOS, THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE]
CHARS = ["\n"] + [chr(i) for i in range(32, 127)]


def build_char_tokenizer():
    """A character-level `PreTrainedTokenizerFast` with the template tags as single tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))  # unknown characters read as '?'
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([PAD, EOS])
    # The tags are whole tokens but not "special": code that decodes with skip_special_tokens=True
    # (TRL, vLLM, most user code) keeps them, as Qwen3 does for its <think> tags.
    core.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in SPECIALS[2:]])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS)


class TokenizerAdapter:
    """One interface over a Hugging Face tokenizer (the built-in one is one too)."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        if self.hf.pad_token_id is None:  # many causal LMs have no pad token: reuse EOS
            self.hf.pad_token = self.hf.eos_token
        self.eos_id = self.hf.eos_token_id
        self.pad_id = self.hf.pad_token_id
        self.tags = {tag: self.encode(tag) for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)}
        self.prompt_prefix = default_prefix(self.hf)
        self.wait_ids = self.encode("Wait,")  # what budget extension forces (s1)

    def __len__(self) -> int:
        return len(self.hf)

    @property
    def unk_token(self) -> str | None:
        """The token unknown characters become (the built-in tokenizer's is '?'), or None."""
        backend = getattr(getattr(self.hf, "backend_tokenizer", None), "model", None)
        return self.hf.unk_token or getattr(backend, "unk_token", None)

    def unknown_characters(self, chars) -> set[str]:
        """The characters among `chars` this tokenizer cannot encode, reading them as its unknown
        token (the built-in one knows printable ASCII and newline); none for byte-level vocabularies."""
        unk = self.unk_token
        if unk is None:
            return set()
        unk_id = self.hf.convert_tokens_to_ids(unk)
        return {c for c in set(chars) if c != unk and unk_id in self.encode(c)}

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text; a text repeated (a GRPO group) is encoded once."""
        distinct = list(dict.fromkeys(texts))
        ids = dict(zip(distinct, self.hf(distinct, add_special_tokens=False)["input_ids"]))
        return [list(ids[t]) for t in texts]

    def encode_prompts(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each prompt: `encode_batch`'s after `prompt_prefix`, the tokens the
        tokenizer writes before a text by default (BOS for Gemma and Llama; none for Qwen or the
        built-in tokenizer), as transformers, vLLM and llama.cpp start a prompt; not twice where
        the text begins with it already (a chat template that writes BOS). Completions get none."""
        p = self.prompt_prefix
        return [ids if not p or ids[: len(p)] == p else p + ids for ids in self.encode_batch(texts)]

    def decode(self, ids) -> str:
        """Text of `ids`, keeping the template tags, dropping pad and EOS."""
        return self.decode_batch([ids])[0]

    def decode_batch(self, rows) -> list[str]:
        """`decode` of each row, in one call."""
        drop = {self.pad_id, self.eos_id}
        rows = [[i for i in ids if i not in drop] for ids in rows]
        if getattr(self.hf, "is_fast", False) and not self.hf.clean_up_tokenization_spaces:
            # What batch_decode returns when it has no clean-up pass to make, without its per-row
            # Python overhead (benchmarks/README.md).
            return self.hf.backend_tokenizer.decode_batch(rows, skip_special_tokens=False)
        return self.hf.batch_decode(rows, skip_special_tokens=False)

    def save(self, path) -> None:
        self.hf.save_pretrained(path)


def default_prefix(hf) -> list[int]:
    """The special tokens `hf` puts before a text when asked to add them ([] where none: the
    built-in tokenizer, Qwen's). Gemma-3 without its BOS writes '<h2><h2>...' (llama.cpp too)."""
    plain, full = hf.encode("a", add_special_tokens=False), hf.encode("a")
    cut = len(full) - len(plain)
    return list(full[:cut]) if cut > 0 and list(full[cut:]) == list(plain) else []


def load_tokenizer(path) -> TokenizerAdapter:
    from transformers import AutoTokenizer

    return TokenizerAdapter(AutoTokenizer.from_pretrained(path))
