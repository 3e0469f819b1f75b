"""The sampler's draw (`sample_next`): the distribution it samples under temperature, top-k and top-p,
one random number per row whatever the vocabulary, greedy at temperature 0, and the edges of the
inverse CDF. Every draw is seeded, so the statistical checks cannot flake. Run:
pytest tests/engine/test_sampling.py"""

import pytest
import torch

from reasonlab.engine import inverse_cdf, keyed_uniform, sample_next

LOGITS = torch.tensor([1.5, -0.3, 0.8, 2.1, -1.0, 0.0, 1.1, -2.5])
N = 20000  # draws per check: a 10% error in a 5% token is ~4 standard errors


def reference(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The documented distribution, the plain way: softmax(logits / T), keep the k largest, then
    the smallest most-likely prefix whose mass reaches top_p, renormalise."""
    probs = torch.softmax(logits.double() / temperature, -1)
    order = probs.argsort(descending=True)
    keep = order[:top_k] if top_k else order
    if top_p < 1:
        mass = (probs[keep] / probs[keep].sum()).cumsum(-1)
        keep = keep[: int((mass < top_p).sum()) + 1]
    out = torch.zeros_like(probs)
    out[keep] = probs[keep]
    return out / out.sum()


def chi_square_p(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    """The p-value of the draws' counts under `probs`; a token of probability 0 must never appear."""
    counts = torch.bincount(tokens, minlength=len(probs)).double()
    support = probs > 0
    assert counts[~support].sum() == 0, "drew a token of probability 0"
    expected = probs[support] * len(tokens)
    stat = ((counts[support] - expected) ** 2 / expected).sum()
    df = torch.tensor((int(support.sum()) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(df, stat / 2))


def draw(temperature, top_k, top_p, keyed: bool, seed: int = 0):
    """N draws from LOGITS: from a seeded generator, or from N row keys at one step (row_seeds)."""
    logits = LOGITS.expand(N, -1)
    if keyed:
        return sample_next(
            logits, temperature, top_k, top_p, None, keyed_uniform(torch.arange(N) * 7919 + seed, 3)
        )
    return sample_next(logits, temperature, top_k, top_p, torch.Generator().manual_seed(seed))


SETTINGS = [(1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 0, 1.0), (1.0, 3, 1.0), (0.7, 0, 0.8), (1.3, 5, 0.9)]


@pytest.mark.parametrize("keyed", [False, True], ids=["seed", "row_seeds"])
@pytest.mark.parametrize("temperature, top_k, top_p", SETTINGS)
def test_draws_follow_the_truncated_tempered_distribution(temperature, top_k, top_p, keyed):
    probs = reference(LOGITS, temperature, top_k, top_p)
    assert 2 <= int((probs > 0).sum())  # a truncation that leaves a choice
    tokens, logp = draw(temperature, top_k, top_p, keyed)
    assert chi_square_p(tokens, probs) > 1e-3
    # log-probs are those before truncation, of logits / T
    assert torch.allclose(logp, torch.log_softmax(LOGITS / temperature, -1).expand(N, -1), atol=1e-6)


def test_the_check_rejects_a_wrong_distribution():
    """The chi-square check has the power to see a missing temperature or a missed truncation."""
    tokens, _ = draw(0.7, 0, 1.0, keyed=False)
    assert chi_square_p(tokens, reference(LOGITS, 1.0, 0, 1.0)) < 1e-9
    tokens, _ = draw(1.0, 0, 1.0, keyed=False)
    with pytest.raises(AssertionError, match="probability 0"):
        chi_square_p(tokens, reference(LOGITS, 1.0, 3, 1.0))


def test_successive_seeded_draws_are_independent():
    """Two steps of one generator: the pair (first, second) is distributed as p x p."""
    g = torch.Generator().manual_seed(1)
    first, _ = sample_next(LOGITS.expand(N, -1), 1.0, 0, 1.0, g)
    second, _ = sample_next(LOGITS.expand(N, -1), 1.0, 0, 1.0, g)
    p = reference(LOGITS, 1.0, 0, 1.0)
    assert chi_square_p(first * len(p) + second, torch.outer(p, p).flatten()) > 1e-3


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (5, 1.0), (0, 0.9)])
def test_one_random_number_per_row_whatever_the_vocabulary(top_k, top_p):
    """The generator advances by one float64 uniform per row, the same for 8 or 50,000 tokens;
    with keyed uniforms (row_seeds) it is not touched."""
    B = 16
    states = []
    for V in (8, 50000):
        g = torch.Generator().manual_seed(0)
        sample_next(torch.randn(B, V, generator=torch.Generator().manual_seed(V)), 1.0, top_k, top_p, g)
        states.append(g.get_state())
    g = torch.Generator().manual_seed(0)
    torch.rand(B, dtype=torch.float64, generator=g)
    assert torch.equal(states[0], states[1]) and torch.equal(states[0], g.get_state())
    g = torch.Generator().manual_seed(0)
    sample_next(torch.randn(B, 50000), 1.0, top_k, top_p, g, keyed_uniform(torch.arange(B), 0))
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())


def test_greedy_is_the_argmax_of_the_raw_logits_and_draws_nothing():
    logits = torch.randn(32, 1000, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(0)
    tokens, logp = sample_next(logits, 0.0, 7, 0.5, g)
    assert torch.equal(tokens, logits.argmax(-1)) and torch.equal(logp, torch.log_softmax(logits, -1))
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())


def test_the_ends_of_the_uniform_land_on_tokens_of_positive_probability():
    """u = 0 draws the first token with weight, and u at the top (even exactly 1, or weights that sum
    to under 1) the last one: never a zero-weight token after it, which a clamp to V - 1 would give."""
    weights = torch.tensor([[0.0, 0.3, 0.0, 0.69, 0.0, 0.0]] * 4)  # sums to 0.99
    uniform = torch.tensor([0.0, 1 - 2**-53, 1.0, 0.5], dtype=torch.float64)
    assert inverse_cdf(weights, uniform).tolist() == [1, 3, 3, 3]
    # top-k truncation and a -inf logit (EOS before min_new_tokens) at the end of the vocabulary
    logits = torch.tensor([[0.0, 3.0, 2.0, -1.0, float("-inf")]] * 3)
    for top_k in (0, 2):
        tokens, _ = sample_next(
            logits, 1.0, top_k, 1.0, None, torch.tensor([0.0, 1 - 2**-53, 1.0], dtype=torch.float64)
        )
        assert tokens.tolist() == [0 if top_k == 0 else 1, 3 if top_k == 0 else 2, 3 if top_k == 0 else 2]


@pytest.mark.parametrize("V", [5, 255, 256, 257, 1000, 3000])
def test_the_two_level_search_draws_what_one_float64_running_sum_draws(V):
    """Vocabularies shorter than a block, of whole blocks and with a short last block, weights with
    zeros (truncated tokens): the token of a plain float64 inverse CDF, except for a uniform within
    rounding of a boundary, and never a zero-weight token."""
    g = torch.Generator().manual_seed(V)
    weights = torch.rand(2000, V, generator=g) ** 4 * (torch.rand(2000, V, generator=g) > 0.3)
    weights[:, 0] += 1e-3  # no row without weight
    uniform = torch.rand(2000, dtype=torch.float64, generator=g)
    cdf = weights.double().cumsum(-1)
    expected = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:], right=True).squeeze(-1)
    tokens = inverse_cdf(weights, uniform)
    assert (tokens == expected).float().mean() > 0.999
    assert bool((weights.gather(-1, tokens[:, None]) > 0).all())


def test_tokens_below_float32_resolution_keep_their_share():
    """After a token of weight 1, a float32 running sum no longer grows by 1e-9, so the 1000 tiny
    tokens behind it would have no interval of their own; summed by blocks, each keeps its 1e-9."""
    weights = torch.cat([torch.ones(1), torch.full((1000,), 1e-9)])[None]
    total = 1 + 1000 * 1e-9
    u = torch.tensor([(1 + 500.5e-9) / total], dtype=torch.float64)  # the middle of tiny token 501's interval
    assert inverse_cdf(weights, u).tolist() == [501]
    assert inverse_cdf(weights, torch.tensor([0.999], dtype=torch.float64)).tolist() == [0]


def test_extreme_logits_give_no_nan_and_no_stray_token():
    """A near-one-hot row at a low temperature, a row of equal logits, a row with -inf logits."""
    logits = torch.tensor([[30.0, -30.0, 0.0, -1e4], [1.0] * 4, [float("-inf"), 2.0, float("-inf"), 2.0]])
    g = torch.Generator().manual_seed(3)
    seen = [set() for _ in range(3)]
    for _ in range(200):
        tokens, logp = sample_next(logits, 0.05, 0, 1.0, g)
        for s, t in zip(seen, tokens.tolist()):
            s.add(t)
        assert not torch.isnan(logp).any()
    assert seen == [{0}, {0, 1, 2, 3}, {1, 3}]


@pytest.mark.parametrize(
    "spread", [0.5, 8.0]
)  # flat rows: a nucleus wider than the candidates; peaked: inside
def test_top_p_among_the_top_candidates_keeps_what_a_full_sort_keeps(spread):
    from reasonlab.engine import TOP_P_CANDIDATES, truncate

    g = torch.Generator().manual_seed(int(spread))
    logits = torch.randn(16, 5000, generator=g) * spread
    logits[::2] *= 16  # every other row peaked: rows of both kinds in one batch
    probs = torch.softmax(logits, -1)
    kept = truncate(logits, probs, 0, 0.9)
    order = torch.sort(probs, descending=True, dim=-1)
    share = order.values / probs.sum(-1, keepdim=True)
    width = ((share.cumsum(-1) - share) <= 0.9).sum(-1)  # the nucleus of each row, by a full sort
    assert (width > TOP_P_CANDIDATES).any() == (spread < 1) and (
        width <= TOP_P_CANDIDATES
    ).any()  # both paths
    expected = torch.zeros_like(probs).scatter(
        -1, order.indices, order.values * (torch.arange(5000) < width[:, None])
    )
    assert torch.equal(kept, expected)


def test_floored_exp_and_the_entropy():
    """`floored_exp` is exp above its floor, exactly 0 at and below it and at -inf, never a denormal;
    `probs_entropy` is the softmax's entropy, on logits in range and on a confident model's kind
    (most of the vocabulary far below the top, where torch's exp is slow), with -inf entries."""
    import torch.nn.functional as F

    from reasonlab.softmax import FLOOR, floored_exp, probs_entropy

    z = torch.tensor([0.0, -1.0, -50.0, -86.9, -87.0, -87.5, -200.0, float("-inf")])
    e = floored_exp(z)
    assert (e[4:] == 0).all() and torch.allclose(e[:3], z[:3].exp(), rtol=1e-6) and e[3] > 0
    assert ((e == 0) | (e >= torch.finfo(torch.float32).tiny)).all() and FLOOR < -80
    g = torch.Generator().manual_seed(0)
    far = torch.rand(16, 3000, generator=g) * -300
    far[:, :50] = torch.randn(16, 50, generator=g)
    far[:, 7] = float("-inf")
    for x in (torch.randn(16, 3000, generator=g), far):
        logp = F.log_softmax(x, dim=-1)
        assert torch.allclose(floored_exp(logp).sum(-1), torch.ones(16), atol=1e-5)
        expected = -(logp.exp() * logp.nan_to_num(0, 0, 0)).sum(-1)
        assert torch.allclose(probs_entropy(logp), expected, atol=1e-5)


def test_the_sampler_draws_the_same_tokens_as_an_unfloored_softmax():
    """Flooring changes no draw: keyed uniforms on LM-like logits (and top-k, top-p) give the tokens
    an exact float64 softmax's inverse CDF gives."""
    g = torch.Generator().manual_seed(1)
    B, V = 256, 5000
    logits = torch.rand(B, V, generator=g) * -150
    logits[:, :40] += 150 + torch.randn(B, 40, generator=g) * 2
    u = keyed_uniform(torch.arange(B) * 31 + 5, 0)
    for temperature, top_k, top_p in ((1.0, 0, 1.0), (0.7, 20, 1.0), (1.3, 0, 0.9)):
        tokens, logp = sample_next(logits, temperature, top_k, top_p, None, u)
        exact = torch.softmax(logits.double() / temperature, -1)
        from reasonlab.engine import truncate

        expected = inverse_cdf(truncate(logits.double() / temperature, exact, top_k, top_p), u)
        assert (
            tokens == expected
        ).float().mean() > 0.995  # float32 against float64 weights: a boundary may move
        assert torch.allclose(
            logp.gather(-1, tokens[:, None]).double(), exact.log().gather(-1, tokens[:, None]), atol=1e-4
        )


@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 1e-6])
@pytest.mark.parametrize("keyed", [False, True], ids=["seed", "row_seeds"])
def test_a_tiny_temperature_samples_its_limit_greedy_with_finite_logprobs(temperature, keyed):
    """logits / 1e-40 overflows to inf (and 1e-300 is 0 in float32): the softmax was NaN and the
    draw ran off the vocabulary. Its limit is greedy: all the mass on the argmax."""
    logits = torch.stack(
        [LOGITS, -LOGITS, LOGITS * 1e4, torch.tensor([float("-inf"), 2.0, 1.0, 2.0, 0, 0, 0, 0])]
    )
    for seed in range(20):
        uniform = keyed_uniform(torch.arange(4) + 100 * seed, 0) if keyed else None
        tokens, logp = sample_next(logits, temperature, 0, 1.0, torch.Generator().manual_seed(seed), uniform)
        assert tokens[:3].tolist() == logits[:3].argmax(-1).tolist()
        assert tokens[3].item() in (1, 3)  # an exact tie: split as at any positive temperature
        assert torch.isfinite(logp).all()
        assert logp.gather(-1, tokens[:, None]).squeeze(-1).tolist() == pytest.approx([0, 0, 0, -0.6931472])
    for top_k, top_p in ((3, 1.0), (0, 0.5)):
        tokens, _ = sample_next(logits[:3], temperature, top_k, top_p, torch.Generator().manual_seed(0))
        assert tokens.tolist() == logits[:3].argmax(-1).tolist()
