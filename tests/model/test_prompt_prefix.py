"""Prompts start the way the tokenizer starts a text (BOS for Gemma and Llama), completions do not.

Gemma-3-270m given its prompts without BOS writes '<h2><h2>...' (llama.cpp does the same); with BOS
its logits match llama.cpp's on the same GGUF file (docs/real-model.md).

Run: pytest tests/model/test_prompt_prefix.py"""

import torch

from reasonlab.engine import SamplingParams, generate
from reasonlab.model.tokenizer import TokenizerAdapter, build_char_tokenizer
from reasonlab.train.loop import tokenize_examples
from tests.conftest import BigramLM


def bos_tokenizer() -> TokenizerAdapter:
    """A character tokenizer that, like Gemma's and Llama's, writes <s> before every text by default."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<s>", "?"] + list("abc+=0123456789\n"))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(["<pad>", "</s>", "<s>"])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    hf = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    return TokenizerAdapter(hf)


def test_a_prompt_gets_the_tokenizers_bos_once_and_a_completion_none():
    tok = bos_tokenizer()
    assert tok.prompt_prefix == [2]
    assert tok.encode("ab") == [4, 5]  # plain encoding: no specials
    assert tok.encode_prompts(["ab", "<s>ab", "ab"]) == [[2, 4, 5], [2, 4, 5], [2, 4, 5]]  # never twice
    pairs = tokenize_examples(tok, [{"prompt": "1+2=", "completion": "3"}], 16)
    assert pairs[0][0][0] == 2 and 2 not in pairs[0][1] and pairs[0][1][-1] == tok.eos_id


def test_the_builtin_tokenizer_has_no_prefix():
    tok = TokenizerAdapter(build_char_tokenizer())
    assert tok.prompt_prefix == [] and tok.encode_prompts(["1+2\n"]) == [tok.encode("1+2\n")]


def test_generation_feeds_the_model_the_bos_the_tokenizer_writes():
    tok = bos_tokenizer()
    seen = []

    class Recording(BigramLM):
        def decode(self, input_ids, position_ids, attention_mask, cache):
            seen.append(input_ids[:, 0].tolist())
            return super().decode(input_ids, position_ids, attention_mask, cache)

    model = Recording(len(tok), {}, default=4)
    out = generate(model, tok, ["b+1", "b+1"], SamplingParams(temperature=0.0, max_new_tokens=3))
    assert all(ids == [2] + tok.encode("b+1") for ids in out.prompt_ids)
    assert seen and set(seen[0]) == {2}  # the prefill's first position: BOS in every row
    torch.testing.assert_close(out.lengths, torch.tensor([3, 3]))
