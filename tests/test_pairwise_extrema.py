"""A threshold of ``jnp.maximum(a, b)`` (or ``jnp.where(a > b, a, b)``) is ``(a > t) | (b > t)``,
as ``jnp.max`` of a stack is: the pair is kept and decided unit by unit, not through a closure of the max."""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

from ppl_mech import handlers
from ppl_mech._errors import UnsupportedPrimitiveError

RHO = 0.5
COV = np.array([[1.0, RHO], [RHO, 1.0]])


def pair_model(t):
    x = numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(2), jnp.asarray(COV)))
    a, b = x[0], x[1]
    numpyro.deterministic("maximum", jnp.maximum(a, b) > t)
    numpyro.deterministic("where_max", jnp.where(a > b, a, b) > t)
    numpyro.deterministic("where_max_lt", jnp.where(a < b, b, a) > t)
    numpyro.deterministic("minimum", jnp.minimum(a, b) < -t)
    numpyro.deterministic("where_min", jnp.where(a >= b, b, a) < -t)
    numpyro.deterministic("max_below", jnp.maximum(a, b) < t)


def both_below(t):
    return float(stats.multivariate_normal(np.zeros(2), COV).cdf([t, t]))


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_gaussian_family_is_exact_for_a_pair(t):
    r = handlers.mechanize(pair_model, family="gaussian")(t)
    union = 1.0 - both_below(t)  # P(max > t); by symmetry also P(min < -t)
    for site in ("maximum", "where_max", "where_max_lt", "minimum", "where_min"):
        assert float(r[site].value) == pytest.approx(union, rel=2e-3), site
    assert float(r["max_below"].value) == pytest.approx(both_below(t), rel=2e-3)


def test_other_families_read_the_choice_as_the_max():
    r = handlers.mechanize(pair_model, family="diagonal")(2.0)
    independent = 1.0 - stats.norm.cdf(2.0) ** 2  # the diagonal family's presumption
    for site in ("maximum", "where_max", "where_max_lt", "minimum", "where_min"):
        assert float(r[site].value) == pytest.approx(independent, rel=2e-3), site


def test_max_of_two_layers_outputs_through_a_relu_network():
    """``maximum(o[0], o[1]) > t`` agrees with ``max(o[:2]) > t`` (it was a closure of the max)."""
    rng = np.random.default_rng(0)
    w1 = jnp.asarray(rng.standard_normal((6, 12)) / np.sqrt(6), jnp.float32)
    w2 = jnp.asarray(rng.standard_normal((12, 3)) / np.sqrt(12), jnp.float32)

    def net():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([6]).to_event(1))
        o = jnp.maximum(x @ w1, 0.0) @ w2
        numpyro.deterministic("pair", jnp.maximum(o[0], o[1]) > 1.5)
        numpyro.deterministic("stack", jnp.max(o[:2]) > 1.5)

    r = handlers.mechanize(net, family="gaussian")()
    assert float(r["pair"].value) == pytest.approx(float(r["stack"].value), rel=1e-4)


def test_a_choice_between_other_values_is_still_refused():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.deterministic("y", jnp.where(x[0] > x[1], x[1] + 1.0, x[0]) > 1.0)

    with pytest.raises(UnsupportedPrimitiveError, match="chooses between random real values"):
        handlers.mechanize(model, family="gaussian")()


def test_the_expected_larger_of_two_values():
    """``E[where(x0 > x1, x0, x1)]`` is ``E[max(x0, x1)]`` = 1/sqrt(pi) for independent unit normals."""

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        numpyro.deterministic("larger", jnp.where(x[0] > x[1], x[0], x[1]))
        numpyro.deterministic("maximum", jnp.maximum(x[0], x[1]))

    r = handlers.mechanize(model, family="gaussian")()
    # two deferred blocks, each linearized at its own points
    assert float(r["larger"].value) == pytest.approx(float(r["maximum"].value), rel=0.02)
    assert float(r["larger"].value) == pytest.approx(1 / np.sqrt(np.pi), rel=0.02)


def test_relu_units_stacked_keep_their_pre_activations():
    """``stack([relu(a), relu(b)])`` carries both ReLU preimages: thresholds stay exact."""

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        a, b = jnp.maximum(x[0] - 1.0, 0.0), jnp.maximum(x[1], 0.0)
        numpyro.deterministic("second", jnp.stack([a, b])[1] > 1.5)
        numpyro.deterministic("either", jnp.maximum(a, b) > 1.5)
        numpyro.deterministic("joined", jnp.max(jnp.concatenate([a[None], b[None]])) > 1.5)

    for family in ("gaussian", "diagonal"):
        r = handlers.mechanize(model, family=family)()
        either = 1.0 - stats.norm.cdf(2.5) * stats.norm.cdf(1.5)
        assert float(r["second"].value) == pytest.approx(stats.norm.sf(1.5), rel=1e-4)
        assert float(r["either"].value) == pytest.approx(either, rel=1e-4)
        assert float(r["joined"].value) == pytest.approx(either, rel=1e-4)
