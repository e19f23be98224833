"""The candidates-only top-k draw (`decoding.top_k_draw`) against the vocabulary-wide warpers it replaces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnirrm_jax.decoding import sampler as SM
from tests.chi2 import chi2_pvalue
from omnirrm_jax.decoding import top_k_draw as T


def test_sliced_top_k_is_exact_with_ties_and_masked_tokens():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 40, size=(4, 8000)).astype(np.float32)  # many ties
    x[1, 30:] = -np.inf  # fewer than k finite values (a constraint mask)
    x[2, ::7] = -np.inf
    for k in (5, 50, 63):  # 1024 slices of 8: the sliced path
        vals, idx = (np.asarray(a) for a in T.top_k(jnp.asarray(x), k))
        np.testing.assert_array_equal(vals, np.asarray(jax.lax.top_k(jnp.asarray(x), k)[0]))
        finite = np.isfinite(vals)
        assert (idx[finite] < x.shape[1]).all()
        np.testing.assert_array_equal(np.take_along_axis(x, np.minimum(idx, x.shape[1] - 1), 1)[finite],
                                      vals[finite])
        for r in range(4):
            assert len(set(idx[r][finite[r]].tolist())) == finite[r].sum(), "a token listed twice"


CASES = [(0.7, 20, 0.9), (1.3, 50, 1.0), (1.0, 5, 0.3), (0.8, 10, 0.7), (1.0, 3, 0.95), (1.0, 40, 0.0)]


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("temperature,top_k,top_p", CASES)
def test_draw_follows_the_filtered_distribution(temperature, top_k, top_p, ties):
    """Same support, log-probabilities and frequencies as `filter_logits` (HF's warpers; tested in test_sampler),
    including rows where hundreds of tokens tie with the k-th value (drawn as one group, then uniformly)."""
    V, n = 8000, 20000
    rng = np.random.default_rng(top_k)
    logits = ((rng.integers(0, 12, size=V) / 2) if ties else rng.normal(size=V) * 2.5).astype(np.float32)
    want = np.asarray(SM.filter_logits(jnp.asarray(logits[None]), temperature, top_k, top_p))[0]
    tok, lp = jax.jit(T.sample, static_argnums=(2, 3, 4))(
        jax.random.key(1), jnp.broadcast_to(jnp.asarray(logits), (n, V)), temperature, top_k, top_p)
    tok, lp = np.asarray(tok), np.asarray(lp)
    assert np.isfinite(want[tok]).all(), "drew a token outside the filtered support"
    np.testing.assert_allclose(lp, want[tok], atol=2e-5)
    counts = np.bincount(tok, minlength=V)
    if ties:
        assert (counts[np.isfinite(want)] > 0).mean() > 0.95, "tied tokens are not all reachable"
    p = chi2_pvalue(counts, np.exp(want.astype(np.float64)))
    assert p > 1e-4, f"frequencies do not fit the filtered distribution (chi-square p = {p:.2e})"


@pytest.mark.parametrize("top_p", [1.0, 0.95, 0.9, 0.5, 0.2])
def test_tied_group_below_the_top_kept_or_cut_by_top_p(top_p):
    """10 distinct values above the k-th and 600 tokens tied at it: the group's mass is 600 x one token's, so
    top-p keeps it (drawn about 2/3 of the time) or, at small top_p, cuts it whole, as `filter_logits`."""
    V, k, n = 8000, 20, 20000
    logits = np.full(V, -5.0, np.float32)
    logits[np.arange(600) * 13 % V] = 1.0  # the tied group, spread over the slices
    logits[[7001, 7003, 7005, 7007, 7009, 7011, 7013, 7015, 7017, 7019]] = 4.0 + np.arange(10) * 0.1
    want = np.asarray(SM.filter_logits(jnp.asarray(logits[None]), 1.0, k, top_p))[0]
    tok, lp = T.sample(jax.random.key(2), jnp.broadcast_to(jnp.asarray(logits), (n, V)), 1.0, k, top_p)
    tok, lp = np.asarray(tok), np.asarray(lp)
    assert np.isfinite(want[tok]).all()
    np.testing.assert_allclose(lp, want[tok], atol=2e-5)
    group = logits[tok] == 1.0
    want_group = np.exp(want[logits == 1.0].astype(np.float64)).sum() if np.isfinite(want[logits == 1.0]).any() else 0
    assert abs(group.mean() - want_group) < 0.02, (group.mean(), want_group)
    assert (want_group > 0.5) == (top_p >= 0.5)  # both branches are exercised
    p = chi2_pvalue(np.bincount(tok, minlength=V), np.exp(want.astype(np.float64)))
    assert p > 1e-4, f"chi-square p = {p:.2e}"


def test_masked_rows_with_fewer_than_k_allowed_tokens():
    """A constraint leaving 3 tokens: only they are drawn, at their renormalised probabilities."""
    V, n = 4096, 6000
    logits = np.full((n, V), -np.inf, np.float32)
    logits[:, [7, 100, 4000]] = np.log([0.5, 0.3, 0.2])
    tok, lp = T.sample(jax.random.key(0), jnp.asarray(logits), 1.0, 50, 0.95)
    tok, lp = np.asarray(tok), np.asarray(lp)
    assert set(tok.tolist()) == {7, 100, 4000}
    np.testing.assert_allclose(lp, logits[0, tok], atol=1e-6)
    np.testing.assert_allclose(np.bincount(tok, minlength=V)[[7, 100, 4000]] / n, [0.5, 0.3, 0.2], atol=0.03)


def test_sample_tokens_uses_it_only_with_top_k_on():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(64, 3000)).astype(np.float32))
    key = jax.random.key(5)
    cand = SM.sample_tokens(key, logits, SM.SamplingConfig(1, top_k=50, top_p=0.9))
    want = T.sample(key, logits, 1.0, 50, 0.9)
    np.testing.assert_array_equal(np.asarray(cand[0]), np.asarray(want[0]))
    vocab = SM.sample_tokens(key, logits, SM.SamplingConfig(1, top_k=50, top_p=0.9, draw="vocab"))
    assert not np.array_equal(np.asarray(vocab[0]), np.asarray(cand[0]))  # the other draw (same distribution)
    with pytest.raises(ValueError, match="draw"):
        SM.SamplingConfig(1, draw="fast")


@pytest.mark.parametrize("top_k", [0, 20])
def test_per_row_temperature_and_top_p_equal_the_static_settings(top_k):
    """`SamplingConfig(per_row=True)` with `RowSampling`: each row draws exactly what a program compiled for its
    own temperature / top_p draws with the same key (the noise of a row does not depend on the other rows)."""
    values = [(0.7, 0.9), (1.0, 1.0), (1.3, 0.5), (0.5, 1.0), (1.0, 0.3), (2.0, 0.99)]
    logits = jnp.asarray(np.random.default_rng(4).normal(size=(len(values), 512)).astype(np.float32) * 3)
    key = jax.random.key(9)
    rows = SM.RowSampling.make([t for t, _ in values], [p for _, p in values])
    tok, lp = SM.sample_tokens(key, logits, SM.SamplingConfig(1, top_k=top_k, per_row=True), rows)
    for r, (t, p) in enumerate(values):
        want_tok, want_lp = SM.sample_tokens(key, logits, SM.SamplingConfig(1, temperature=t, top_p=p, top_k=top_k))
        assert int(tok[r]) == int(want_tok[r]), (r, t, p)
        np.testing.assert_allclose(float(lp[r]), float(want_lp[r]), atol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        SM.RowSampling.make([0.0], [1.0])
