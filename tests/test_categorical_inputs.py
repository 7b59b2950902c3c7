"""Categorical inputs under mechanize: one-hot and embedding lookups, exact moments."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from ppl_mech import UnsupportedPrimitiveError, handlers

K, L, D = 5, 3, 4
RNG = np.random.default_rng(0)
TABLE = RNG.standard_normal((K, D))
W = RNG.standard_normal((L * D, 2))
PROBS = RNG.dirichlet(np.ones(K), size=L)


def model(probs, table, w):
    x = numpyro.sample("x", dist.Categorical(probs).to_event(1))
    emb = numpyro.deterministic("emb", table[x])
    numpyro.deterministic("onehot", jax.nn.one_hot(x, K))
    numpyro.deterministic("h", emb.reshape(-1) @ w)
    numpyro.deterministic("take", jnp.take(table, x, axis=0).sum(-1))
    numpyro.deterministic("is3", x[0] == 3)
    numpyro.deterministic("both", (x[0] == 3) | (x[2] < 2))


def enumerate_exactly(probs, table, w):
    """Every site's mean (and h's covariance) by summing over all K^L token strings."""
    out = {"emb": 0, "onehot": 0, "h": 0, "take": 0, "is3": 0, "both": 0, "hh": 0}
    for xs in itertools.product(range(K), repeat=L):
        p = np.prod([probs[i, x] for i, x in enumerate(xs)])
        emb = table[list(xs)]
        h = emb.reshape(-1) @ w
        vals = {"emb": emb, "onehot": np.eye(K)[list(xs)], "h": h, "take": emb.sum(-1),
                "is3": xs[0] == 3, "both": xs[0] == 3 or xs[2] < 2, "hh": np.outer(h, h)}
        for k, v in vals.items():
            out[k] = out[k] + p * np.asarray(v, float)
    out["h_cov"] = out.pop("hh") - np.outer(out["h"], out["h"])
    return out


@pytest.mark.parametrize("family", ["gaussian", "diagonal", "mean"])
def test_means_and_probabilities_are_exact(x64, family):
    exact = enumerate_exactly(PROBS, TABLE, W)
    r = handlers.mechanize(model, family=family)(jnp.asarray(PROBS), jnp.asarray(TABLE), jnp.asarray(W))
    for site in ("emb", "onehot", "h", "take", "is3"):
        np.testing.assert_allclose(np.asarray(r[site].value), exact[site], rtol=1e-10, atol=1e-12)
    # (x0 == 3) | (x2 < 2) reads two different tokens: independent, so the product rule is exact
    assert float(r["both"].value) == pytest.approx(exact["both"], rel=1e-10)


def test_gaussian_family_gets_the_exact_covariance_of_a_linear_readout(x64):
    exact = enumerate_exactly(PROBS, TABLE, W)
    r = handlers.mechanize(model, sites=["h"])(jnp.asarray(PROBS), jnp.asarray(TABLE), jnp.asarray(W))
    variance = np.asarray(r["h"].diagnostics["variance"])
    np.testing.assert_allclose(variance, np.diag(exact["h_cov"]), rtol=1e-10)
    assert any("categorical site 'x'" in n for n in r["h"].notes)


def test_gradient_with_respect_to_probabilities(x64):
    def p_is3(probs):
        return handlers.mechanize(model, sites=["is3", "h"])(probs, jnp.asarray(TABLE), jnp.asarray(W))

    g = jax.grad(lambda p: p_is3(p)["is3"].value)(jnp.asarray(PROBS))
    expected = np.zeros_like(PROBS)
    expected[0, 3] = 1.0
    np.testing.assert_allclose(np.asarray(g), expected, atol=1e-12)
    g = jax.jit(jax.grad(lambda p: p_is3(p)["h"].value[0]))(jnp.asarray(PROBS))
    fd = np.zeros_like(PROBS)
    for i, j in itertools.product(range(L), range(K)):
        e = np.zeros_like(PROBS)
        e[i, j] = 1e-6
        fd[i, j] = (enumerate_exactly(PROBS + e, TABLE, W)["h"][0]
                    - enumerate_exactly(PROBS - e, TABLE, W)["h"][0]) / 2e-6
    # off the simplex the two extensions of E[h] differ; along it (rows summing to 0) they agree
    g = np.asarray(g)
    np.testing.assert_allclose(g - g.mean(1, keepdims=True), fd - fd.mean(1, keepdims=True),
                               rtol=1e-6, atol=1e-8)


def test_relu_network_on_embeddings_against_monte_carlo():
    table = jnp.asarray(RNG.standard_normal((50, 16)), jnp.float32)
    w1 = jnp.asarray(RNG.standard_normal((4 * 16, 64)) / 8, jnp.float32)

    def net():
        x = numpyro.sample("x", dist.Categorical(jnp.ones(50) / 50).expand([4]).to_event(1))
        h = jnp.maximum(table[x].reshape(-1) @ w1, 0.0)
        numpyro.deterministic("out", h.mean())

    mech = handlers.mechanize(net)()
    mc = handlers.sample(net, num_samples=100_000, rng_key=jax.random.PRNGKey(0))()
    assert abs(float(mech["out"].value) - float(mc["out"].value)) < 4 * float(mc["out"].stderr) + 1e-3


def test_two_tokens_in_one_unit_leave_the_exact_representation_with_a_note():
    def mixes():
        x = numpyro.sample("x", dist.Categorical(jnp.ones(3) / 3).expand([2]).to_event(1))
        numpyro.deterministic("y", jnp.sin(x[0] * 1.0 + x[1]))

    r = handlers.mechanize(mixes)()  # x0 + x1 has exact moments; sin of it a Gaussian closure
    assert any("exact mean and covariance, then a Gaussian" in n for n in r["y"].notes)

    def detector_mixed_with_gaussian():
        x = numpyro.sample("x", dist.Categorical(jnp.ones(3) / 3))
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.deterministic("y", (x == 1) & (z > 0.5))

    with pytest.raises(UnsupportedPrimitiveError, match="categorical site 'x' combined"):
        handlers.mechanize(detector_mixed_with_gaussian)()
    r = handlers.mechanize(detector_mixed_with_gaussian, family="diagonal")()
    assert float(r["y"].value) == pytest.approx(0.3085375 / 3, rel=1e-5)


@pytest.mark.parametrize("family", ["gaussian", "diagonal", "mean"])
def test_comparing_two_tokens_is_exact(family):
    """``t[0] == t[1]``, ``t[:-1] < t[1:]``: sums over class pairs (was refused as continuous)."""
    probs = jnp.array([0.5, 0.2, 0.2, 0.1])

    def tokens():
        t = numpyro.sample("t", dist.Categorical(probs).expand([3]).to_event(1))
        numpyro.deterministic("repeat", t[0] == t[1])
        numpyro.deterministic("rising", t[:-1] < t[1:])

    p = np.asarray(probs)
    rising = sum(p[i] * p[j] for i in range(4) for j in range(i + 1, 4))
    r = handlers.mechanize(tokens, family=family)()
    assert float(r["repeat"].value) == pytest.approx(float(np.sum(p * p)), rel=1e-6)
    np.testing.assert_allclose(np.asarray(r["rising"].value), [rising, rising], rtol=1e-6)

    def increasing():
        t = numpyro.sample("t", dist.Categorical(probs).expand([3]).to_event(1))
        numpyro.deterministic("sorted", jnp.all(t[:-1] < t[1:]))  # two pairs sharing t[1]

    if family == "gaussian":
        with pytest.raises(UnsupportedPrimitiveError, match="'reduce_and' combines two-point booleans"):
            handlers.mechanize(increasing, family=family)()
    else:
        r = handlers.mechanize(increasing, family=family)()
        assert any("independence presumption" in n for n in r["sorted"].notes)


def test_separate_paths_from_one_site_stay_correlated(x64):
    w = jnp.asarray(RNG.standard_normal((6, 2)))

    def two_paths(w):
        x = numpyro.sample("x", dist.Categorical(jnp.asarray([0.2, 0.3, 0.5])).expand([2]).to_event(1))
        a = numpyro.deterministic("a", jax.nn.one_hot(x, 3).reshape(-1) @ w)
        b = numpyro.deterministic("b", jnp.asarray([1.0, -2.0, 0.5])[x] @ w[:2])
        numpyro.deterministic("y", a - b)

    r = handlers.mechanize(two_paths)(w)
    p = np.asarray([0.2, 0.3, 0.5])
    ys = []
    for x0, x1 in itertools.product(range(3), repeat=2):
        onehot = np.concatenate([np.eye(3)[x0], np.eye(3)[x1]])
        y = onehot @ np.asarray(w) - np.asarray([1.0, -2.0, 0.5])[[x0, x1]] @ np.asarray(w)[:2]
        ys.append((p[x0] * p[x1], y))
    mean = sum(q * y for q, y in ys)
    var = sum(q * (y - mean) ** 2 for q, y in ys)
    np.testing.assert_allclose(np.asarray(r["y"].value), mean, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(r["y"].diagnostics["variance"]), var, rtol=1e-10)
