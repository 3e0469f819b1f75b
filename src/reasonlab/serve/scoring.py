"""Scoring a prompt and its completion with one forward pass: the log-probs `echo` with `logprobs`
returns (what lm-evaluation-harness's ``local-completions`` reads for log-likelihood and
multiple-choice tasks). Any model the engine runs: the built-in GPT and the Hugging Face adapter
both give (B, T, vocab) logits from ``model(input_ids)``, as the trainers read them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..softmax import CHUNK_BYTES
from .protocol import Scored


@torch.inference_mode()
def score(model, prompt_ids: list[int], completion_ids: list[int], top: int) -> Scored:
    """Each token's log-probability given the tokens before it (the first has none), at
    temperature 1 (the model's own distribution, whatever the request sampled at), and the `top`
    best alternatives at each place.

    The pass reads the whole prompt and every completion token but the last (whose prediction
    nobody asks for), so with at most one completion token it is exactly a pass over the prompt:
    the numbers are those of ``model(prompt)`` (lm-eval asks for 1 token; the tests compare).
    The log-softmax runs a few places at a time: (T, vocab) float32 temporaries of a long prompt
    in a large vocabulary would be GBs (`softmax.CHUNK_BYTES`, as the entropy does)."""
    ids = prompt_ids + completion_ids
    fed = ids[: max(len(prompt_ids), len(ids) - 1)]
    device = next(model.parameters()).device
    # place j of the logits predicts ids[j + 1]
    logits = model(torch.tensor([fed], dtype=torch.long, device=device))[0, : len(ids) - 1]
    targets = torch.tensor(ids[1:], dtype=torch.long, device=device)
    step = max(1, CHUNK_BYTES // (logits.shape[-1] * 4))
    chosen, best = [], []
    for start in range(0, len(targets), step):
        logp = F.log_softmax(logits[start : start + step].float(), dim=-1)
        chosen += logp.gather(-1, targets[start : start + step, None]).squeeze(-1).tolist()
        if top:
            values, index = logp.topk(min(top, logp.shape[-1]), dim=-1)
            best += [list(zip(i, v)) for i, v in zip(index.tolist(), values.tolist())]
    return Scored(ids, len(prompt_ids), chosen, best)
