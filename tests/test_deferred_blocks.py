"""Blocks without a per-primitive rule (softmax, logsumexp, layer norm, sort) are deferred and
statistically linearized over their Gaussian inputs; see ``ppl_mech.mechanistic._deferred``."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from ppl_mech import handlers
from ppl_mech.mechanistic._deferred import LINEARIZATION_POINTS

W = jnp.asarray(np.random.default_rng(0).standard_normal((8, 6)) * 0.6, jnp.float32)
V = jnp.asarray(np.random.default_rng(1).standard_normal((6, 3)), jnp.float32)
W_WIDE = jnp.asarray(np.random.default_rng(2).standard_normal((8, 64)) / np.sqrt(8), jnp.float32)


def blocks_model():
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([8]).to_event(1))
    logits = x @ W
    p = numpyro.deterministic("softmax", jax.nn.softmax(logits))
    numpyro.deterministic("logsumexp", jax.nn.logsumexp(logits))
    numpyro.deterministic("log_softmax", jax.nn.log_softmax(logits)[:2])
    numpyro.deterministic("sorted", jnp.sort(logits)[-2:])
    # the block's output mixed back with the block's own input: cross-covariances matter
    numpyro.deterministic("downstream", jnp.tanh(p @ V) + logits[:3])
    h = x @ W_WIDE
    normed = (h - h.mean()) / jnp.sqrt(h.var() + 1e-5)
    numpyro.deterministic("layer_norm", jnp.maximum(normed, 0.0)[:4])


@pytest.fixture(scope="module")
def reference():
    return handlers.sample(blocks_model, num_samples=2**18, rng_key=jax.random.PRNGKey(0))()


BLOCK_SITES = ["softmax", "logsumexp", "log_softmax", "sorted", "downstream", "layer_norm"]


@pytest.mark.parametrize("site", BLOCK_SITES)
def test_gaussian_family_matches_sampling_on_blocks_without_rules(reference, site):
    """The logits are exactly Gaussian, so only the linearization's Monte Carlo error remains."""
    r = handlers.mechanize(blocks_model, family="gaussian", sites=[site])()[site]
    s = reference[site]
    sd = np.sqrt(np.asarray(s.diagnostics["variance"]))
    tolerance = 5 * sd / np.sqrt(LINEARIZATION_POINTS) + 5 * np.asarray(s.stderr) + 1e-3
    np.testing.assert_array_less(np.abs(np.asarray(r.value) - np.asarray(s.value)), tolerance)
    # the variance too (the block's own covariance, then the covariance after mixing)
    np.testing.assert_allclose(np.asarray(r.diagnostics["variance"]), sd**2, rtol=0.1, atol=1e-4)
    assert any("statistical linearization" in note for note in r.notes)


def test_the_note_names_where_the_block_starts():
    r = handlers.mechanize(blocks_model, family="gaussian", sites=["softmax"])()["softmax"]
    assert any("'reduce_max' at" in note and "test_deferred_blocks" in note for note in r.notes)
    assert float(r.diagnostics["linearization_nonfinite_share"]) == 0.0


def test_diagonal_and_mean_families_defer_too(reference):
    diagonal = handlers.mechanize(blocks_model, family="diagonal", sites=["logsumexp"])()["logsumexp"]
    mean = handlers.mechanize(blocks_model, family="mean", sites=["logsumexp"])()["logsumexp"]
    # diagonal: the logits' covariance is dropped (independence presumption), still near
    assert abs(float(diagonal.value) - float(reference["logsumexp"].value)) < 0.15
    # mean family: the block at the mean logits, log(6)
    assert float(mean.value) == pytest.approx(np.log(6.0), rel=1e-5)


def test_independence_families_say_a_block_samples_its_inputs_independently():
    """Under diagonal, standardize's mean(x**2) - mean(x)**2 reads mean(x) as independent of x."""

    def model():
        x = numpyro.sample("x", dist.Normal(0.5, 1.0).expand([6]).to_event(1))
        numpyro.deterministic("h", jax.nn.standardize(x + jnp.arange(6.0) * 0.3))

    r = handlers.mechanize(model, family="diagonal")()["h"]
    assert any("samples its inputs as independent" in n for n in r.notes)
    r = handlers.mechanize(model, family="gaussian")()["h"]
    assert not any("samples its inputs as independent" in n for n in r.notes)


def test_a_narrow_layer_norm_keeps_its_numerator_and_denominator_dependent():
    """The variance is read from its own roots (its provenance), not from its Gaussian closure.

    With 3 units the closure of ``var(x)`` is far from Gaussian and would go negative under the
    square root; rooted at ``x`` the block is exact up to Monte Carlo error.
    """

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.deterministic("y", jnp.abs((x[0] - x.mean()) / jnp.sqrt(x.var())))

    r = handlers.mechanize(model, family="gaussian")()["y"]
    s = handlers.sample(model, num_samples=2**18, rng_key=jax.random.PRNGKey(3))()["y"]
    assert float(r.value) == pytest.approx(float(s.value), abs=0.03)
    assert float(r.diagnostics["linearization_nonfinite_share"]) == 0.0


def test_points_outside_the_blocks_domain_are_dropped_and_counted():
    """``sqrt(max(x))`` is NaN where the max is negative (1/8 of the points for 3 units)."""

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.deterministic("y", jnp.sqrt(jnp.max(x)))

    r = handlers.mechanize(model, family="gaussian")()["y"]
    assert np.isfinite(float(r.value))
    assert float(r.diagnostics["linearization_nonfinite_share"]) == pytest.approx(1 / 8, abs=0.02)


def test_a_comparison_on_a_deferred_value_is_moment_matched():
    """``softmax(logits)[0] > 0.5``: the detector sees the block's Gaussian closure (a note says so)."""

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([8]).to_event(1))
        numpyro.deterministic("catastrophe", jax.nn.softmax(x @ W)[0] > 0.5)

    r = handlers.mechanize(model, family="gaussian")()["catastrophe"]
    s = handlers.sample(model, num_samples=2**16, rng_key=jax.random.PRNGKey(1))()["catastrophe"]
    assert 0.0 < float(r.value) < 1.0
    assert abs(float(r.value) - float(s.value)) < 0.1  # a closure, not an exact tail
    assert any("statistical linearization" in note for note in r.notes)


def test_the_built_in_transformer_block_under_the_gaussian_family():
    """Softmax attention, three layer norms, q k^T and gelu: moments within a few percent of sampling.

    The tail of the detector is another matter (a layer norm bounds the logits; the Gaussian
    closure's tail is far heavier), which the README reports; here only the moments are checked.
    """
    from ppl_mech import models

    built = models.get_model("tiny-transformer", tokens=3, dim=8, vocab=5)
    r = handlers.mechanize(built.model, family="gaussian", sites=["logits", "attention"])(
        *built.args, **built.kwargs)
    s = handlers.sample(built.model, num_samples=2**17, rng_key=jax.random.PRNGKey(4),
                        sites=["logits", "attention"])(*built.args, **built.kwargs)
    for site in ("logits", "attention"):
        sd = np.sqrt(np.asarray(s[site].diagnostics["variance"]))
        error = np.abs(np.asarray(r[site].value) - np.asarray(s[site].value))
        np.testing.assert_array_less(error, 0.1 * sd + 5 * np.asarray(s[site].stderr))
        np.testing.assert_allclose(np.asarray(r[site].diagnostics["variance"]), sd**2, rtol=0.15)
    assert float(np.sum(r["attention"].value)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("family", ["gaussian", "diagonal"])
def test_gradients_through_a_linearized_block_match_finite_differences(family):
    """The linearization points are fixed by the key, so the estimate is smooth in the weights.

    ``x`` has equal variances: a factorization by eigenvectors would have no gradient here.
    """
    def model(w):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        numpyro.deterministic("p", jax.nn.softmax(x @ w)[0])

    def estimate(w):
        return handlers.mechanize(model, family=family)(w)["p"].value

    w = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
    gradient = jax.grad(estimate)(w)
    assert bool(jnp.all(jnp.isfinite(gradient)))
    step = 1e-2
    finite_difference = (estimate(w.at[0, 0].add(step)) - estimate(w.at[0, 0].add(-step))) / (2 * step)
    assert float(gradient[0, 0]) == pytest.approx(float(finite_difference), rel=0.02, abs=1e-4)


def test_rmsnorm_and_a_gate_read_from_another_unit():
    """``x * rsqrt(mean(x^2))`` (a broadcast product) and ``where(x @ a > 0, x, 0.1 x)`` are blocks."""
    a = jnp.asarray(np.random.default_rng(5).standard_normal((4, 4)), jnp.float32)

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        rms = x * jax.lax.rsqrt(jnp.mean(x**2, keepdims=True) + 1e-6)
        numpyro.deterministic("rms", rms[0] + 1.0)
        numpyro.deterministic("gated", jnp.where(x @ a > 0, x, 0.1 * x).sum())

    r = handlers.mechanize(model, family="gaussian")()
    s = handlers.sample(model, num_samples=2**17, rng_key=jax.random.PRNGKey(6))()
    for site in ("rms", "gated"):
        sd = float(np.sqrt(s[site].diagnostics["variance"]))
        assert abs(float(r[site].value) - float(s[site].value)) < 0.1 * sd + 5 * float(s[site].stderr)
    assert float(r["rms"].diagnostics["linearization_nonfinite_share"]) == 0.0


def test_a_threshold_on_a_moment_matched_value_says_so():
    def product():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        numpyro.deterministic("catastrophe", x[0] * x[1] > 6.0)

    def linear():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        numpyro.deterministic("catastrophe", x[0] + x[1] > 3.0)

    closure = handlers.mechanize(product, family="gaussian")()["catastrophe"]
    assert any("Gaussian closure" in note for note in closure.notes)
    exact = handlers.mechanize(linear, family="gaussian")()["catastrophe"]
    assert not any("Gaussian closure" in note for note in exact.notes)


def test_review_regressions_scales_argmax_and_gradients_at_the_domain_edge():
    """Roots of very different scales; argmax of a softmax; a gradient where some points are NaN."""

    def scales():
        x = numpyro.sample("x", dist.Normal(0.0, 100.0))
        y = numpyro.sample("y", dist.Normal(0.0, 0.01))
        numpyro.deterministic("m", jnp.maximum(x * 1e-4, y))

    r = handlers.mechanize(scales, family="gaussian")()["m"]
    # E[max(a, b)] for independent N(0, 0.01^2): 0.01 / sqrt(pi)
    assert float(r.value) == pytest.approx(0.01 / np.sqrt(np.pi), rel=0.05)

    def first_is_largest():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        numpyro.deterministic("catastrophe", jnp.argmax(jax.nn.softmax(x)) == 0)

    r = handlers.mechanize(first_is_largest, family="gaussian")()["catastrophe"]
    assert float(r.value) == pytest.approx(0.25, abs=0.01)

    def root_of_max(w):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.deterministic("q", jnp.sqrt(jnp.max(x * w)))  # NaN where the max is negative

    def estimate(w):
        return handlers.mechanize(root_of_max, family="gaussian")(w)["q"].value

    w = jnp.ones(3)
    gradient = jax.grad(estimate)(w)
    finite_difference = (estimate(w.at[0].add(1e-2)) - estimate(w.at[0].add(-1e-2))) / 2e-2
    assert float(gradient[0]) == pytest.approx(float(finite_difference), rel=0.05)


@pytest.mark.parametrize("family", ["diagonal", "gaussian"])
def test_a_block_read_after_a_matmul_forced_it_is_still_the_block(family):
    """log(softmax(x)[1]) after p @ V read the block's Gaussian closure (-1.40 for -1.72)."""
    v = np.random.default_rng(0).normal(size=(4, 3))

    def model(matmul_first):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        p = jax.nn.softmax(x)
        if matmul_first:
            numpyro.deterministic("pv", (p @ v).sum())
        numpyro.deterministic("log_p", jnp.log(p[1]))
        if not matmul_first:
            numpyro.deterministic("pv", (p @ v).sum())

    after = handlers.mechanize(model, family=family)(True)["log_p"]
    before = handlers.mechanize(model, family=family)(False)["log_p"]
    assert float(after.value) == pytest.approx(float(before.value), rel=1e-6)
    assert float(after.value) == pytest.approx(-1.7228, abs=0.01)  # 1e6-draw Monte Carlo
