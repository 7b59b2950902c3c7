"""Thresholds of non-monotone elementwise chains (``abs(y) > t``, ``y**2 > t``, bands, ``cos``)
are unions of intervals of the chain's Gaussian input; see ``ppl_mech.mechanistic._level_sets``."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

from ppl_mech import handlers

SD = np.sqrt(1.25)  # y = x0 + 0.5 x1 + 0.3
MEAN = 0.3


def model(t):
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    y = x[0] + 0.5 * x[1] + 0.3
    numpyro.deterministic("abs", jnp.abs(y) > t)
    numpyro.deterministic("square", y**2 > t**2)
    numpyro.deterministic("band", jnp.exp(-((y - 1.0) ** 2)) > 0.5)
    numpyro.deterministic("abs_and", (jnp.abs(y) > 3.0) & (x[2] > 1.0))
    numpyro.deterministic("abs_and_positive", (jnp.abs(y) > 3.0) & (y > 0.0))
    numpyro.deterministic("cos", jnp.cos(3.0 * y) > 0.9)


def normal_mass(inside, lo=-15.0, hi=15.0, n=2_000_001):
    y = np.linspace(MEAN + lo * SD, MEAN + hi * SD, n)
    return float(np.sum(stats.norm.pdf(y, MEAN, SD) * inside(y)) * (y[1] - y[0]))


EXACT = {
    # ~1e-5: a rare two-sided tail
    "abs": stats.norm.sf(5.0, MEAN, SD) + stats.norm.cdf(-5.0, MEAN, SD),
    "band": np.diff(stats.norm.cdf(1 + np.sqrt(np.log(2)) * np.array([-1, 1]), MEAN, SD))[0],
    "abs_and": (stats.norm.sf(3.0, MEAN, SD) + stats.norm.cdf(-3.0, MEAN, SD)) * stats.norm.sf(1.0),
    "abs_and_positive": stats.norm.sf(3.0, MEAN, SD),
}
EXACT["square"] = EXACT["abs"]


@pytest.fixture(scope="module", params=["gaussian", "diagonal"])
def estimates(request):
    # the threshold is a traced argument: the intervals are found under jit
    estimate = handlers.mechanize(model, family=request.param)
    run = jax.jit(lambda t: {k: v.value for k, v in estimate(t).items()})
    return request.param, run(5.0)


@pytest.mark.parametrize("site", ["abs", "square", "band", "abs_and", "abs_and_positive"])
def test_two_sided_thresholds_and_bands_are_exact(estimates, site):
    family, values = estimates
    if family == "diagonal" and site == "abs_and_positive":
        pytest.skip("two events on one unit: the independence presumption does not apply")
    assert float(values[site]) == pytest.approx(EXACT[site], rel=1e-3)


def test_many_intervals_keep_the_most_probable_ones(estimates):
    _, values = estimates
    exact = normal_mass(lambda y: np.cos(3 * y) > 0.9)
    assert float(values["cos"]) == pytest.approx(exact, rel=0.01)


def test_dropped_intervals_are_counted_and_noted():
    r = handlers.mechanize(model, family="gaussian", sites=["cos"])(5.0)["cos"]
    assert int(r.diagnostics["level_set_dropped_intervals"]) > 0
    assert any("non-monotone elementwise function" in note for note in r.notes)

    def two_sided():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        numpyro.deterministic("abs", jnp.abs(x) > 2.0)

    r = handlers.mechanize(two_sided, family="gaussian")()["abs"]
    assert int(r.diagnostics["level_set_dropped_intervals"]) == 0


def test_an_abs_detector_on_a_relu_network_is_the_union_of_its_two_tails():
    """``|y - c| > t`` equals ``(y > c + t) | (y < c - t)`` in the same family (both on the closure of y)."""
    w1 = jnp.asarray(np.random.default_rng(0).standard_normal((6, 6)) / np.sqrt(6), jnp.float32)
    w2 = jnp.asarray(np.random.default_rng(1).standard_normal((6,)) / np.sqrt(6), jnp.float32)

    def net():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([6]).to_event(1))
        y = jnp.maximum(x @ w1, 0.0) @ w2
        numpyro.deterministic("catastrophe", jnp.abs(y - 0.2) > 1.2)
        numpyro.deterministic("tails", (y > 1.4) | (y < -1.0))

    r = handlers.mechanize(net, family="gaussian")()
    assert float(r["catastrophe"].value) == pytest.approx(float(r["tails"].value), rel=1e-4)


def test_saturating_thresholds_and_constant_units():
    """``clip(|y|, 0, 2) >= 2`` holds on a set of positive mass; a constant unit is 0 or 1."""

    def saturating():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        numpyro.deterministic("clipped", jnp.clip(jnp.abs(x[0]), 0.0, 2.0) >= 2.0)
        numpyro.deterministic("constant", jnp.abs(jnp.concatenate([x, jnp.array([3.0])])) > 2.0)

    for family in ("gaussian", "diagonal"):
        r = handlers.mechanize(saturating, family=family)()
        assert float(r["clipped"].value) == pytest.approx(2 * stats.norm.sf(2.0), rel=1e-3)
        np.testing.assert_allclose(np.asarray(r["constant"].value), [2 * stats.norm.sf(2.0)] * 2 + [1.0],
                                   rtol=1e-3)


def test_a_threshold_of_a_max_is_any_unit_above_it():
    """``max(x) > t`` is ``any(x > t)``, ``max(x) < t`` is ``all(x < t)``: exact, also through a ReLU."""

    def extremes(t):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([6]).to_event(1))
        numpyro.deterministic("max_above", jnp.max(x) > t)
        numpyro.deterministic("max_below", jnp.max(x) < 1.0)
        numpyro.deterministic("min_above", jnp.min(x) > -1.0)
        numpyro.deterministic("rows", jnp.max(jnp.maximum(x, 0.0).reshape(2, 3), axis=1) > 2.0)

    for family in ("gaussian", "diagonal"):
        sites = ["max_above", "max_below", "min_above"] + (["rows"] if family == "diagonal" else [])
        r = handlers.mechanize(extremes, family=family, sites=sites)(4.0)
        assert float(r["max_above"].value) == pytest.approx(1 - stats.norm.cdf(4.0) ** 6, rel=1e-3)
        assert float(r["max_below"].value) == pytest.approx(stats.norm.cdf(1.0) ** 6, rel=1e-3)
        assert float(r["min_above"].value) == pytest.approx(stats.norm.cdf(1.0) ** 6, rel=1e-3)
    np.testing.assert_allclose(np.asarray(r["rows"].value), 1 - stats.norm.cdf(2.0) ** 3, rtol=1e-2)


@pytest.mark.slow  # ~25 s: compiling the mixture estimator of a union of three polytopes
def test_a_row_wise_max_threshold_is_a_union_of_polytopes_under_the_gaussian_family():
    def rows():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([6]).to_event(1))
        numpyro.deterministic("rows", jnp.max(jnp.maximum(x, 0.0).reshape(2, 3), axis=1) > 2.0)

    r = handlers.mechanize(rows, family="gaussian")()
    # a union of three polytopes: the gaussian family estimates it by (quasi) Monte Carlo
    np.testing.assert_allclose(np.asarray(r["rows"].value), 1 - stats.norm.cdf(2.0) ** 3, rtol=1e-2)


def test_max_pooling_thresholds_are_any_of_the_window():
    """A pooled unit (reshape + max, or ``reduce_window``), indexed after the pool, is any of its window."""
    kernel = jnp.asarray(np.random.default_rng(0).standard_normal((2, 1, 3, 3)) / 3.0, jnp.float32)

    def convnet(t):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([1, 1, 6, 6]).to_event(4))
        pre = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME")
        h = jax.nn.relu(pre)
        pooled = h.reshape(1, 2, 3, 2, 3, 2).max(axis=(3, 5))
        window = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        numpyro.deterministic("pooled", pooled[0, 1, 1, 2] > t)
        numpyro.deterministic("window", window.reshape(-1)[2 * 9 // 2 + 5] > t)
        numpyro.deterministic("direct", (pre[0, 1, 2:4, 4:6] > t).any())

    for family in ("gaussian", "diagonal"):
        r = handlers.mechanize(convnet, family=family)(2.5)
        direct = float(r["direct"].value)
        assert 1e-4 < direct < 1e-1
        assert float(r["pooled"].value) == pytest.approx(direct, rel=1e-6)
        assert float(r["window"].value) == pytest.approx(direct, rel=1e-6)
