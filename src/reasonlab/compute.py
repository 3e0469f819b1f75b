"""The compute ledger: tokens a run pushes through its model, the attention they compute, and the
FLOPs they cost.

FLOPs are counted as Kaplan et al. (2020) and nanochat count them. A token through a forward pass
costs 2·N FLOPs for its matrix products with the weights (N: the model's parameter count,
`n_params`), and causal attention adds, per (query, key) pair, 4·n_layer·d_attn (2 for QKᵀ, 2 for
the weighted sum of V; d_attn = n_head · head_dim, the query heads' width): `ModelCost.attention`.
A trained token (forward and backward) costs three times its forward pass. So a token at position
t (1-based: it attends t keys, itself included) costs

- forward (sampled, scored): 2·N + 4·n_layer·d_attn·t,
- trained: 6·N + 12·n_layer·d_attn·t.

The ledger keeps, per kind, the tokens and their query-key pairs (`pairs`: Σ t over the tokens);
`Ledger.flops(cost)` weighs them with a `ModelCost` (`model_cost(model)`). Counts are of real
tokens: padding, the logits' softmax, norms and the like are left out, and attention is taken as
full causal attention (a sliding window is not modelled). Three kinds:

- ``sampled``: tokens the engine processes to sample (each distinct prompt once in the prefill,
  each new token in decoding, at its position after its row's prompt);
- ``trained``: tokens of training passes (supervised fine-tuning, pretraining, the RL update);
- ``scored``: forward-only passes outside sampling (GRPO's old or reference log-probs).

Evaluations are measurements, not training: `evaluate.evaluate_problems` runs under `not_counted`
(and reports the inference cost of one answer instead, `answer_flops`). Counting is process-wide:
every ledger open (`track`) when tokens pass counts them, so a stage's ledger holds what the
trainers under it spent.

>>> with track() as ledger:
...     count("sampled", 10, pairs(10)); count("trained", 5, pairs(5))
>>> ledger.flops(ModelCost(n_params=1000, attention=8))  # 2·1000·10 + 8·55 + 6·1000·5 + 3·8·15
50800.0
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

KINDS = ("sampled", "trained", "scored")
FLOPS_PER_TOKEN = {"sampled": 2, "trained": 6, "scored": 2}  # times N
PASSES = {"sampled": 1, "trained": 3, "scored": 1}  # times a forward pass's attention FLOPs
COUNTED = (
    "FLOPs: 2N a sampled or scored token and 6N a trained one (N parameters), plus attention: "
    "4·layers·d_attn a query-key pair forward, 3× that trained; evaluations not counted"
)


@dataclass(frozen=True)
class ModelCost:
    """What a token costs a model: `n_params` (N: 2·N FLOPs a token forward) and `attention`, the
    forward FLOPs of one causal-attention (query, key) pair, 4·n_layer·d_attn."""

    n_params: int
    attention: int


@dataclass
class Ledger:
    """Tokens of each kind and their query-key pairs (``<kind>_pairs``)."""

    sampled: int = 0
    trained: int = 0
    scored: int = 0
    sampled_pairs: int = 0
    trained_pairs: int = 0
    scored_pairs: int = 0

    def add(self, kind: str, tokens: int, pairs: int = 0) -> None:
        setattr(self, kind, getattr(self, kind) + int(tokens))
        setattr(self, f"{kind}_pairs", getattr(self, f"{kind}_pairs") + int(pairs))

    def restore(self, counts: dict) -> None:
        """Add the counts a saved ledger (`asdict`, or a `record`) holds; a count it lacks (a state
        saved before pairs were counted) adds 0, and its other keys are ignored."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + int(counts.get(f.name, 0)))

    def flops(self, cost: ModelCost) -> float:
        """Σ over kinds: FLOPS_PER_TOKEN·N·tokens + PASSES·cost.attention·pairs."""
        if not isinstance(cost, ModelCost):
            raise TypeError(
                f"Ledger.flops takes a ModelCost (compute.model_cost(model)), not {type(cost).__name__}"
            )
        return float(
            sum(
                FLOPS_PER_TOKEN[k] * cost.n_params * getattr(self, k)
                + PASSES[k] * cost.attention * getattr(self, f"{k}_pairs")
                for k in KINDS
            )
        )

    def record(self, cost: ModelCost) -> dict:
        """The counts, the cost they were weighed with (n_params, attention) and their FLOPs, as
        results keep them."""
        return {**asdict(self), **asdict(cost), "flops": self.flops(cost)}


_open: list[Ledger] = []
_paused = 0


def pairs(length: int, start: int = 0) -> int:
    """The (query, key) pairs causal attention computes for the tokens at positions start+1 …
    length of one sequence (the token at position t attends t keys): Σ t = (length·(length+1) -
    start·(start+1)) / 2. A prefill of P tokens is pairs(P), decoding tokens P+1 … P+G after it
    pairs(P+G, P), a training sequence of T tokens pairs(T)."""
    length, start = int(length), int(start)
    if not 0 <= start <= length:
        raise ValueError(f"positions {start}+1..{length}: need 0 <= start <= length")
    return (length * (length + 1) - start * (start + 1)) // 2


def count(kind: str, tokens: int, pairs: int = 0) -> None:
    """`tokens` of `kind` (`KINDS`), computing `pairs` query-key pairs of attention (`pairs()`), went
    through the model: every open ledger counts them."""
    if kind not in FLOPS_PER_TOKEN:
        raise ValueError(f"unknown compute kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not _paused:
        for ledger in _open:
            ledger.add(kind, tokens, pairs)


@contextmanager
def track(ledger: Ledger | None = None):
    """Count into `ledger` (a new one by default) while the block runs."""
    ledger = ledger if ledger is not None else Ledger()
    _open.append(ledger)
    try:
        yield ledger
    finally:  # this very ledger (another open one may hold equal counts)
        del _open[next(i for i in range(len(_open) - 1, -1, -1) if _open[i] is ledger)]


@contextmanager
def not_counted():
    """Nothing passing through a model in this block counts (evaluations)."""
    global _paused
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1


def n_params(model) -> int:
    """N: the parameters a token passes (LoRA adapters included)."""
    return sum(p.numel() for p in model.parameters())


class UnknownShape(ValueError):
    """`model_cost` found no shape to count a model's attention by."""


def model_cost(model) -> ModelCost:
    """A model's `ModelCost`: N = `n_params(model)` and attention = 4·n_layer·d_attn forward FLOPs a
    query-key pair, d_attn = n_head·head_dim (grouped-query attention shares keys and values, not
    their products with the queries). The shape comes from the model's config: the built-in
    `GPTConfig` (n_layer, n_head, head_dim = d_model // n_head) or a Hugging Face config
    (num_hidden_layers, num_attention_heads, head_dim or hidden_size // num_attention_heads; a
    multimodal one's text config), found on the model or inside its wrappers (DDP's ``module``,
    `HFCausalLM`'s ``hf``, peft's base model, ``torch.compile``'s original). A model of another kind
    states its shape as ``attention_shape = (n_layer, d_attn)`` ((0, 0): it has no attention). No
    shape found is an `UnknownShape` error (a ValueError), never a silent 0."""
    layers, d_attn = attention_shape(model)
    return ModelCost(n_params=n_params(model), attention=4 * layers * d_attn)


def attention_shape(model) -> tuple[int, int]:
    """(n_layer, d_attn) of `model` (see `model_cost`)."""
    seen, todo = set(), [model]
    while todo:
        obj = todo.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        stated = getattr(obj, "attention_shape", None)
        if isinstance(stated, tuple) and len(stated) == 2 and all(_count(v) for v in stated):
            return stated
        shape = _config_shape(getattr(obj, "config", None))
        if shape is not None:
            return shape
        inner = [getattr(obj, name, None) for name in ("module", "hf", "_orig_mod", "base_model", "model")]
        base = getattr(obj, "get_base_model", None)
        todo += inner + ([base()] if callable(base) else [])
    raise UnknownShape(
        f"cannot count the attention FLOPs of a {type(model).__name__}: no built-in or Hugging Face "
        "config (n_layer/num_hidden_layers, n_head/num_attention_heads, head size) on it or inside it; "
        "a model of another kind states attention_shape = (n_layer, d_attn)"
    )


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _config_shape(config) -> tuple[int, int] | None:
    """(n_layer, n_head·head_dim) from a built-in or Hugging Face config, or None if it gives no shape."""
    if config is None:
        return None
    text = getattr(config, "get_text_config", None)
    if callable(text):
        config = text()
    get = lambda *names: next((v for v in (getattr(config, n, None) for n in names) if _count(v) and v), None)  # noqa: E731
    layers, heads = get("num_hidden_layers", "n_layer"), get("num_attention_heads", "n_head")
    if layers is None or heads is None:
        return None
    width = get("hidden_size", "d_model", "n_embd")
    head_dim = get("head_dim") or (width // heads if width else None)
    return None if head_dim is None else (layers, heads * head_dim)


def answer_flops(cost: ModelCost, prompt_tokens: int, new_tokens: int) -> float:
    """The inference FLOPs of one answer: a prefill of its P prompt tokens and the decoding of its G
    new ones, 2·N·(P + G) + cost.attention·pairs(P + G)."""
    total = int(prompt_tokens) + int(new_tokens)
    return float(2 * cost.n_params * total + cost.attention * pairs(total))
