"""Detectors on ReLU outputs are decided on the pre-activation (mechanistic/_thresholds.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.stats

from ppl_mech import handlers

MU, SIGMA = 0.3, 1.7


def one_unit(threshold, op):
    x = numpyro.sample("x", dist.Normal(MU, SIGMA))
    numpyro.deterministic("event", op(jnp.maximum(x, 0.0), threshold))


def exact_one_unit(threshold, op_name):
    """P[op(relu(x), t)] for x ~ N(MU, SIGMA^2), by cases."""
    above = scipy.stats.norm.sf(threshold, MU, SIGMA)  # P(x > t)
    if op_name == "gt":
        return 1.0 if threshold < 0 else above
    if op_name == "ge":
        return 1.0 if threshold <= 0 else above
    if op_name == "lt":
        return 0.0 if threshold <= 0 else 1 - above
    return 0.0 if threshold < 0 else 1 - above  # le


OPS = {"gt": jnp.greater, "ge": jnp.greater_equal, "lt": jnp.less, "le": jnp.less_equal}


@pytest.mark.parametrize("family", ["gaussian", "diagonal"])
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("threshold", [-0.5, 0.0, 0.8, 6.0])
def test_relu_threshold_is_exact_on_the_preactivation(x64, family, op_name, threshold):
    r = handlers.mechanize(one_unit, family=family)(threshold, OPS[op_name])
    assert float(r["event"].value) == pytest.approx(exact_one_unit(threshold, op_name), rel=1e-10, abs=1e-300)


def test_traced_threshold_under_jit_and_grad(x64):
    def p(t):
        return handlers.mechanize(one_unit)(t, jnp.greater)["event"].value

    for t in (-1.0, 0.5, 3.0):
        assert float(jax.jit(p)(t)) == pytest.approx(exact_one_unit(t, "gt"), rel=1e-10)
    grad = jax.grad(p)(2.0)
    assert float(grad) == pytest.approx(-scipy.stats.norm.pdf(2.0, MU, SIGMA), rel=1e-8)


def test_scaled_and_shifted_relu_and_reversed_comparison(x64):
    def model():
        x = numpyro.sample("x", dist.Normal(MU, SIGMA))
        y = -2.0 * jnp.maximum(x - 0.5, 0.0) + 1.0  # y > 0 iff relu(x - 0.5) < 0.5 iff x < 1
        numpyro.deterministic("event", 0.0 < y)

    r = handlers.mechanize(model)()
    assert float(r["event"].value) == pytest.approx(scipy.stats.norm.cdf(1.0, MU, SIGMA), rel=1e-10)


def two_layer(w1, w2, thresholds):
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([w1.shape[0]]).to_event(1))
    h = jnp.maximum(x @ w1, 0.0)
    out = numpyro.deterministic("layer_2", jnp.maximum(h @ w2, 0.0))
    numpyro.deterministic("unit", out[1] > thresholds[0])
    numpyro.deterministic("both", (out[1] > thresholds[0]) & (out[3] > thresholds[1]))
    numpyro.deterministic("tail", out[2] > thresholds[2])


def test_layer_detectors_against_monte_carlo():
    rng = np.random.default_rng(0)
    w1 = jnp.asarray(rng.standard_normal((64, 256)) * np.sqrt(2 / 64), jnp.float32)
    w2 = jnp.asarray(rng.standard_normal((256, 4)) * np.sqrt(2 / 256), jnp.float32)
    thresholds = jnp.asarray([0.5, 0.4, 0.0])
    mech = handlers.mechanize(two_layer)(w1, w2, thresholds)
    mc = handlers.sample(two_layer, num_samples=200_000, rng_key=jax.random.PRNGKey(1))(w1, w2, thresholds)
    for site in ("unit", "both", "tail"):
        # Gaussian closure of a wide layer's pre-activation: a few percent of bias at most.
        p, q, se = float(mech[site].value), float(mc[site].value), float(mc[site].stderr)
        assert abs(p - q) < 4 * se + 0.05 * q, (site, p, q, se)


def test_whestbench_catastrophe_is_not_decided_on_the_moment_matched_output():
    from ppl_mech.models import get_model

    b = get_model("whestbench", width=64, depth=3, sigmas=3.0)
    r = handlers.mechanize(b.model, sites=["catastrophe"])(*b.args, **b.kwargs)
    mc = handlers.sample(b.model, num_samples=400_000, rng_key=jax.random.PRNGKey(0),
                         sites=["catastrophe"])(*b.args, **b.kwargs)
    p, q = float(r["catastrophe"].value), float(mc["catastrophe"].value)
    assert q > 0 and 1 / 3 < p / q < 3, (p, q)


def test_certain_and_impossible_units_inside_a_conjunction(x64):
    cov = jnp.asarray([[1.0, 0.6, 0.2], [0.6, 1.0, 0.3], [0.2, 0.3, 1.0]])

    def model(t):
        x = numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(3), cov))
        r = jnp.maximum(x, 0.0)
        numpyro.deterministic("event", jnp.all(r > t))

    exact = scipy.stats.multivariate_normal(np.zeros(2), np.asarray(cov)[1:, 1:]).cdf(-np.asarray([0.5, 0.2]))
    r = handlers.mechanize(model)(jnp.asarray([-1.0, 0.5, 0.2]))  # unit 0 is certain
    assert float(r["event"].value) == pytest.approx(exact, rel=1e-4)
    r = handlers.mechanize(model)(jnp.asarray([-1.0, 0.5, -0.2]))  # a plain 1-D tail
    assert float(r["event"].value) == pytest.approx(scipy.stats.norm.sf(0.5), rel=1e-10)

    def impossible(t):
        x = numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(3), cov))
        numpyro.deterministic("event", jnp.all(jnp.maximum(x, 0.0) < t))

    r = handlers.mechanize(impossible)(jnp.asarray([-0.1, 0.5, 0.2]))
    assert float(r["event"].value) == 0.0


def test_a_lost_preimage_is_noted_not_silent():
    """Concatenating ReLU units with constants drops their pre-activation form: a note says so."""

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        padded = jnp.concatenate([jnp.maximum(x, 0.0), jnp.ones(2)])
        numpyro.deterministic("catastrophe", padded[0] > 1.0)

    r = handlers.mechanize(model)()["catastrophe"]
    assert any("pre-activation does not follow" in note and "concatenate" in note for note in r.notes)


@pytest.mark.parametrize("family", ["gaussian", "diagonal"])
def test_a_function_of_a_sliced_relu_unit_is_decided_on_its_pre_activation(family):
    """``tanh(s * relu(z)[2]) > t``: the slice forces the ReLU layer (its units keep their preimage),
    and the chain after it was decided on the unit's closure (0.367 for 0.275). It is now re-based on
    the pre-activation and decided as intervals of it, the ReLU's flat part included."""
    w = jnp.array([[0.5, -0.4, 0.3], [0.3, 0.6, -0.2], [-0.2, 0.1, 0.4]])
    sd = float(jnp.linalg.norm(w[:, 2]))

    def model(s):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        h = jax.nn.relu(x @ w)
        numpyro.deterministic("squashed", jnp.tanh(s * h[2]) > 0.4)
        numpyro.deterministic("plateau", jnp.tanh(s * h[2]) > -0.1)  # certain: tanh(relu) >= 0
        numpyro.deterministic("below", jax.nn.sigmoid(h[2]) < 0.6)  # relu(z) < logit(0.6)

    r = handlers.mechanize(model, family=family)(1.5)
    cut = float(np.arctanh(0.4))
    np.testing.assert_allclose(float(r["squashed"].value), scipy.stats.norm.sf(cut / 1.5 / sd), rtol=1e-4)
    np.testing.assert_allclose(float(r["plateau"].value), 1.0, atol=1e-6)
    logit = float(np.log(0.6 / 0.4))
    np.testing.assert_allclose(float(r["below"].value), scipy.stats.norm.cdf(logit / sd), rtol=1e-4)
    if family == "diagonal":  # the gradient once (compiling it under gaussian costs ~20 s more)
        grad = jax.grad(lambda s: handlers.mechanize(model, family=family, sites=["squashed"])(s)
                        ["squashed"].value)(1.5)
        np.testing.assert_allclose(float(grad), scipy.stats.norm.pdf(cut / 1.5 / sd) * cut / (1.5**2 * sd),
                                   rtol=1e-3)
