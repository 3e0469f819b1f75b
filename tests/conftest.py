"""Shared tiny things for the tests: a scripted bigram LM and small seeded GPTs. No downloads."""

import pytest
import torch
import torch.nn as nn

from reasonlab.model import GPTConfig, new_builtin


class BigramLM(nn.Module):
    """A real (tiny) language model whose next-token logits depend only on the last token.

    `script` maps a token id to the id it should be followed by, so tests can make a model that,
    say, always tries to close its thinking. Implements the engine's interface (init_cache/decode).
    """

    kind = "test"
    attention_shape = (0, 0)  # (n_layer, d_attn) for the compute ledger: no attention, 2N FLOPs a token

    def __init__(self, vocab_size: int, script: dict[int, int], default: int):
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)
        with torch.no_grad():
            self.table.weight.fill_(-10.0)
            for last in range(vocab_size):
                self.table.weight[last, script.get(last, default)] = 10.0

    def forward(self, input_ids, position_ids=None, attention_mask=None):
        return self.table(input_ids)

    def init_cache(self, batch, max_len):
        return None

    def select_rows(self, cache, index):
        pass  # no cache to trim

    def decode(self, input_ids, position_ids, attention_mask, cache):
        return self.table(input_ids)


def random_tag_writer(tokenizer, tag_boost: float, eos_boost: float = 0.0, seed: int = 0) -> BigramLM:
    """A bigram LM with random logits that writes the template tags (and EOS) often, at random:
    completions go through every phase of the template in varied orders and lengths."""
    torch.manual_seed(seed)
    model = BigramLM(len(tokenizer), {}, default=0)
    with torch.no_grad():
        model.table.weight.normal_()
        for tag in ("<think>", "</think>", "<answer>", "</answer>"):
            model.table.weight[:, tokenizer.encode(tag)[0]] += tag_boost
        model.table.weight[:, tokenizer.eos_id] += eos_boost
    return model


@pytest.fixture
def tiny_gpt():
    torch.manual_seed(0)
    return new_builtin(GPTConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=128), seed=0)


def constant_task(answer: str):
    """A task whose every problem (`q<random number>`) has the same gold answer."""
    from reasonlab.tasks import Problem, Task

    class Constant(Task):
        def sample(self, rng):
            return Problem(f"q{rng.randint(0, 10**6)}", answer)

        def verify(self, predicted, gold):
            return predicted.strip() == gold

    return Constant()
