"""Gradients of threshold probabilities through nonlinear chains, level sets and one-scalar unions.

The mission needs ``jax.grad`` of a catastrophe probability in the input distribution's
parameters. A threshold of a chain (``sigmoid(y) > 0.99``, ``abs(y) > 3``) is decided at a
crossing found by bisection; these tests pin the gradients to closed forms, so that a crossing
that silently moves with the input's moments (gradient 0) or a degenerate polytope (NaN) fails.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.special import ndtr
from scipy import stats

from ppl_mech import handlers

PARAMS = np.array([0.2, 1.0, 0.5])  # mu, s, a


def model(mu, s, a):
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    y = mu + s * x[0] + 0.3 * x[1]
    numpyro.deterministic("sigmoid", jax.nn.sigmoid(y) > 0.99)
    numpyro.deterministic("tanh_scaled", jnp.tanh(y) * a < -0.45)
    numpyro.deterministic("abs", jnp.abs(y) > 3.0)
    numpyro.deterministic("square", y**2 > 9.0 * a)
    numpyro.deterministic("band", jnp.exp(-((y - 1.0) ** 2)) > 0.5)
    numpyro.deterministic("two_tails", (y > 2.5) | (y < -2.0 * a))
    numpyro.deterministic("band_and", (y > 1.0) & (y < 2.0) & (x[2] > a))


def above(c, mu, sd):
    return ndtr((mu - c) / sd)


def between(lo, hi, mu, sd):
    return ndtr((hi - mu) / sd) - ndtr((lo - mu) / sd)


def exact(site, p):
    mu, s, a = p[0], p[1], p[2]
    sd = jnp.sqrt(s**2 + 0.09)
    half_width = jnp.sqrt(jnp.log(2.0))
    return {
        "sigmoid": above(jnp.log(0.99 / 0.01), mu, sd),
        "tanh_scaled": 1 - above(jnp.arctanh(-0.45 / a), mu, sd),
        "abs": above(3.0, mu, sd) + 1 - above(-3.0, mu, sd),
        "square": above(3.0 * jnp.sqrt(a), mu, sd) + 1 - above(-3.0 * jnp.sqrt(a), mu, sd),
        "band": between(1.0 - half_width, 1.0 + half_width, mu, sd),
        "two_tails": above(2.5, mu, sd) + 1 - above(-2.0 * a, mu, sd),
        "band_and": between(1.0, 2.0, mu, sd) * ndtr(-a),  # y and x[2] are independent
    }[site]


CHAIN_SITES = ["sigmoid", "tanh_scaled", "abs", "square", "band"]


@pytest.mark.parametrize("family", ["gaussian", "diagonal"])
@pytest.mark.parametrize("site", CHAIN_SITES)
def test_chain_threshold_gradients_match_the_closed_form(family, site):
    estimate = handlers.mechanize(model, family=family, sites=[site])
    value_and_grad = jax.jit(jax.value_and_grad(lambda p: estimate(p[0], p[1], p[2])[site].value))
    value, grad = value_and_grad(jnp.asarray(PARAMS))
    want_value, want_grad = jax.value_and_grad(lambda p: exact(site, p))(jnp.asarray(PARAMS))
    assert float(value) == pytest.approx(float(want_value), rel=2e-3)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=5e-3, atol=1e-6)


@pytest.mark.parametrize("site", ["two_tails", "band_and"])
def test_literals_on_one_scalar_are_exact_and_differentiable(site):
    """``(y > 2.5) | (y < -2a)`` is a union of two intervals of one scalar, not a degenerate polytope."""
    result = handlers.mechanize(model, family="gaussian", sites=[site])(*PARAMS)[site]
    assert float(result.stderr) == 0.0  # exact: no tilting draws
    grad = jax.jit(jax.grad(lambda p: handlers.mechanize(model, family="gaussian", sites=[site])(
        p[0], p[1], p[2])[site].value))(jnp.asarray(PARAMS))
    want_value, want_grad = jax.value_and_grad(lambda p: exact(site, p))(jnp.asarray(PARAMS))
    assert float(result.value) == pytest.approx(float(want_value), rel=2e-3)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=5e-3, atol=1e-6)


def test_overlapping_intervals_are_not_counted_twice(x64):
    def overlap():
        y = numpyro.sample("y", dist.Normal(0.0, 1.0))
        numpyro.deterministic("either", (y > 0.5) | (y > 1.0) | ((y > -1.0) & (y < 0.7)))

    value = handlers.mechanize(overlap, family="gaussian")()["either"].value
    assert float(value) == pytest.approx(float(ndtr(1.0)), rel=1e-10)  # y > -1


def test_two_slices_of_one_unit_are_one_scalar():
    """``(o[0] > a) & (o[0] < b)``: two slice equations, one unit; not a polytope with rho = -1 (NaN)."""
    w = jnp.array([[0.5, -0.3], [0.2, 0.8]])

    def band(mu):
        x = numpyro.sample("x", dist.Normal(mu, 1.0).to_event(1))
        o = jnp.tanh(x) @ w
        numpyro.deterministic("twice", (o[0] > 0.3) & (o[0] < 0.9))
        numpyro.deterministic("outside", (o[0] > 0.9) | (o[0] < 0.3))
        o0 = o[0]
        numpyro.deterministic("once", (o0 > 0.3) & (o0 < 0.9))

    mu = jnp.array([0.1, -0.2])
    values, grads = {}, {}
    for site in ("twice", "outside", "once"):
        est = handlers.mechanize(band, family="gaussian", sites=[site])
        values[site] = float(est(mu)[site].value)
        grads[site] = np.asarray(jax.jit(jax.grad(lambda m, s=site, e=est: e(m)[s].value))(mu))
    assert np.all(np.isfinite(grads["twice"]))
    assert values["twice"] == pytest.approx(values["once"], rel=1e-6)
    assert values["outside"] == pytest.approx(1 - values["once"], rel=1e-5)
    np.testing.assert_allclose(grads["twice"], grads["once"], rtol=1e-5)
    np.testing.assert_allclose(grads["outside"], -grads["once"], rtol=1e-5)


def test_an_any_of_six_thresholds_is_six_disjoint_orthants_in_one_vmapped_tilting(x64):
    """Parts 3..K are padded to K literals and share one minimax tilting (compiled once, not K times)."""
    w = np.random.default_rng(0).normal(size=(6, 6)) / np.sqrt(6)

    def anyof(mu):
        x = numpyro.sample("x", dist.Normal(mu, 1.0).to_event(1))
        numpyro.deterministic("any", jnp.any(x @ w > 2.0))

    mu = jnp.full(6, 0.1)
    estimate = handlers.mechanize(anyof, family="gaussian", sites=["any"])
    value_and_grad = jax.jit(jax.value_and_grad(lambda m: estimate(m)["any"].value))  # one compile

    def value(m):
        return float(value_and_grad(m)[0])

    cov = w.T @ w
    none = stats.multivariate_normal(np.asarray(mu) @ w, cov, abseps=1e-7, releps=1e-7).cdf(np.full(6, 2.0))
    assert value(mu) == pytest.approx(1.0 - none, rel=1e-4)
    eps = 1e-3
    fd = [(value(mu.at[i].add(eps)) - value(mu.at[i].add(-eps))) / (2 * eps) for i in range(2)]
    np.testing.assert_allclose(np.asarray(value_and_grad(mu)[1])[:2], fd, rtol=1e-3)


def test_an_or_of_thresholds_is_disjoint_orthants_with_exact_gradients(x64):
    """``(x0 > 2) | (x1 > 2)`` = ``x0 > 2`` + ``(x1 > 2) & (x0 < 2)``: no mixture, no biased gradient."""

    def either(mu):
        x = numpyro.sample("x", dist.Normal(mu, 1.0).to_event(1))
        numpyro.deterministic("or", (x[0] > 2.0) | (x[1] > 2.0))
        numpyro.deterministic("rare", (x[0] + 0.5 * x[2] > 6.0) | (x[1] - 0.3 * x[2] > 6.0) | (x[2] > 6.5))

    mu = jnp.array([0.0, 0.5, 0.0])
    only_or = handlers.mechanize(either, family="gaussian", sites=["or"])  # grad traces only "or"
    grad = jax.jit(jax.grad(lambda m: only_or(m)["or"].value))(mu)
    want = jax.grad(lambda m: 1 - ndtr(2 - m[0]) * ndtr(2 - m[1]))(mu)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want), rtol=1e-6, atol=1e-12)
    r = handlers.mechanize(either, family="gaussian")(mu)
    assert not any("jax.grad is biased" in note for note in r["or"].notes)
    # three far tails, nearly disjoint: the union is within 1% of the sum of the marginals
    marginals = ndtr(-6.0 / np.sqrt(1.25)) + ndtr(-5.5 / np.sqrt(1.09)) + ndtr(-6.5)
    assert float(r["rare"].value) == pytest.approx(float(marginals), rel=1e-2)
    assert float(r["rare"].value) <= float(marginals)


@pytest.mark.slow  # ~15 s: compiling the mixture estimator
def test_an_or_of_conjunctions_is_the_mixture_estimator_and_says_its_gradient_is_biased():
    def pair_or():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.deterministic("pair_or", ((x[0] > 1.0) & (x[1] > 1.0)) | (x[2] > 2.0))

    r = handlers.mechanize(pair_or, family="gaussian")()
    assert any("its jax.grad is biased" in note for note in r["pair_or"].notes)


@pytest.mark.parametrize("options", [{"family": "gaussian"}, {"family": "cumulant", "order": 2},
                                     {"family": "cumulant", "order": 4}])
def test_a_monotone_chain_of_a_traced_scale_is_decided_on_its_input(options):
    """``tanh(a x) > t`` with ``a`` traced: the sign of ``a x`` is unknown while tracing. The cumulant
    family used to lose the chain's direction and take a closure tail (value 0.0088 for 1e-7 under
    ``jit``, gradients 1e4x off or NaN)."""

    def tanh_model(a, t):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.deterministic("catastrophe", jnp.tanh(a * x) > t)

    def p(a, t):
        return handlers.mechanize(tanh_model, **options)(a, t)["catastrophe"].value

    a, t = 0.5, float(np.tanh(2.6))
    np.testing.assert_allclose(float(jax.jit(p)(a, t)), stats.norm.sf(5.2), rtol=1e-4)
    grad_a, grad_t = jax.grad(p, argnums=(0, 1))(a, t)
    np.testing.assert_allclose(float(grad_a), stats.norm.pdf(5.2) * 5.2 / a, rtol=1e-3)
    np.testing.assert_allclose(float(grad_t), -stats.norm.pdf(5.2) / (a * (1 - t * t)), rtol=1e-3)


@pytest.mark.parametrize("options", [{"family": "cumulant", "order": 2}])
def test_a_relu_chain_scaled_by_a_traced_factor_is_decided_on_its_input(options):
    """``a * relu(z) > t`` and ``tanh(a * relu(z)) > t`` with ``a`` traced: the chain's direction is
    unknown while tracing. The cumulant family took a closure tail under ``jax.grad`` (dP/da 0.247
    for 0.128 at order 2); it now decides such chains as intervals of their Gaussian input, as the
    gaussian family does (which was right, and is not repeated here: 25 s of compiling)."""
    w = jnp.array([0.6, -0.3, 0.2])
    sd = float(jnp.linalg.norm(w))

    def model(a):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        z = x @ w
        numpyro.deterministic("scaled", a * jax.nn.relu(z) > 0.4)
        numpyro.deterministic("squashed", jnp.tanh(a * jax.nn.relu(z)) > 0.4)

    def exact(a, cut):
        return stats.norm.sf(cut / a / sd), stats.norm.pdf(cut / a / sd) * cut / (a * a * sd)

    for site, cut in [("scaled", 0.4), ("squashed", float(np.arctanh(0.4)))]:
        p, dp = exact(1.5, cut)
        def p_hat(a, site=site):
            return handlers.mechanize(model, **options)(a)[site].value

        value, grad = jax.value_and_grad(p_hat)(1.5)
        np.testing.assert_allclose(float(value), p, rtol=1e-4)
        np.testing.assert_allclose(float(grad), dp, rtol=1e-3)
