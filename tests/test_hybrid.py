"""The hybrid estimator: calibration over seeds where the truth is exact, limits, jit, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

from ppl_mech import handlers
from ppl_mech._hybrid import empirical_bayes
from ppl_mech._methods import MethodOptions, make_estimator, method_names

D_IN, D = 16, 64
W = np.random.default_rng(0).standard_normal((D_IN, D)) / 4
B = np.random.default_rng(1).standard_normal(D) / 2


def product_model(w):
    """``y_j = z_j z_{j-1} + 2 z_j`` with ``z = x W``: the diagonal family drops Cov(z_j, z_{j-1})."""
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([D_IN]).to_event(1))
    z = x @ w
    numpyro.deterministic("y", z * jnp.roll(z, 1) + 2 * z)


PRODUCT_TRUTH = np.sum(W * np.roll(W, 1, axis=1), axis=0)  # E[z_j z_{j-1}] = W_j . W_{j-1}


def tanh_model(w, b):
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([D_IN]).to_event(1))
    h = numpyro.deterministic("h", jnp.tanh(x @ w + b))
    numpyro.deterministic("top", h[0] > 0.5)
    numpyro.deterministic("lin", x @ w)


def tanh_truth():
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    scale = np.linalg.norm(W, axis=0)
    return np.array([np.sum(weights * np.tanh(B[j] + scale[j] * nodes)) for j in range(D)]) / np.sqrt(
        2 * np.pi)


def test_calibrated_over_seeds_where_the_truth_is_exact():
    """Mean squared error and average coverage over 40 seeds, bias comparable to noise."""
    for n in (32, 1024):
        run = jax.jit(lambda key, n=n: handlers.hybrid(
            product_model, base="diagonal", num_samples=n, rng_key=key, sites=["y"])(W)["y"])
        errors, predicted, covered, sampled_errors = [], [], [], []
        for seed in range(40):
            r = run(jax.random.PRNGKey(seed))
            value, stderr = np.asarray(r.value), np.asarray(r.stderr)
            errors.append(np.mean((value - PRODUCT_TRUTH) ** 2))
            predicted.append(np.mean(stderr**2))
            covered.append(np.mean(np.abs(value - PRODUCT_TRUTH) <= 1.96 * stderr))
            sampled_errors.append(np.mean((np.asarray(r.diagnostics["sampled_value"]) - PRODUCT_TRUTH) ** 2))
        mech_error = np.mean((np.asarray(r.diagnostics["mechanistic_value"]) - PRODUCT_TRUTH) ** 2)
        # honest: the realized error is not above the reported one (loose: 40 seeds)
        assert np.mean(errors) <= 1.25 * np.mean(predicted), (n, np.mean(errors), np.mean(predicted))
        assert np.mean(covered) >= 0.88, (n, np.mean(covered))
        # never much worse than the better of its two parts
        assert np.mean(errors) <= 1.15 * min(mech_error, np.mean(sampled_errors)), (
            n, np.mean(errors), mech_error, np.mean(sampled_errors))


def test_few_samples_give_the_mechanistic_estimate_many_the_sampled_one():
    few = handlers.hybrid(product_model, base="diagonal", num_samples=16,
                          rng_key=jax.random.PRNGKey(0))(W)["y"]
    np.testing.assert_array_equal(few.value, few.diagnostics["mechanistic_value"])
    assert float(few.diagnostics["shrinkage"]) == 0.0
    truth = tanh_truth()
    many = handlers.hybrid(tanh_model, base="mean", num_samples=2**15, rng_key=jax.random.PRNGKey(1),
                           sites=["h"])(W, B)["h"]
    assert float(many.diagnostics["shrinkage"]) > 0.95
    sampled = np.asarray(many.diagnostics["sampled_value"])
    atol = 3 * float(np.max(many.diagnostics["sampled_stderr"]))
    np.testing.assert_allclose(many.value, sampled, atol=atol)
    z = np.abs(np.asarray(many.value) - truth) / np.asarray(many.stderr)
    assert np.mean(z < 1.96) > 0.85 and np.max(z) < 5
    mech_error = np.mean((np.asarray(many.diagnostics["mechanistic_value"]) - truth) ** 2)
    assert np.mean((np.asarray(many.value) - truth) ** 2) < mech_error / 100


def test_jit_matches_eager_and_cost_adds_up():
    key = jax.random.PRNGKey(3)
    eager = handlers.hybrid(tanh_model, base="diagonal", num_samples=256, rng_key=key)(W, B)
    jitted = jax.jit(lambda w, b, k: handlers.hybrid(
        tanh_model, base="diagonal", num_samples=256, rng_key=k)(w, b))(jnp.asarray(W), jnp.asarray(B), key)
    for site in ("h", "lin"):
        np.testing.assert_allclose(jitted[site].value, eager[site].value, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(jitted[site].stderr, eager[site].stderr, rtol=1e-4, atol=1e-7)
    mech = handlers.mechanize(tanh_model, family="diagonal")(W, B)
    cost = eager["h"].cost
    assert cost.evaluations == 256 and cost.flops > mech["h"].cost.flops > 0 and cost.seconds > 0
    assert eager["h"].method == "hybrid[diagonal]"


def test_antithetic_pairs_are_exact_for_odd_sites():
    r = handlers.hybrid(tanh_model, base="mean", num_samples=64, rng_key=jax.random.PRNGKey(0),
                        sites=["lin"])(W, B)["lin"]
    np.testing.assert_allclose(r.diagnostics["sampled_value"], 0.0, atol=1e-6)
    assert np.max(np.asarray(r.diagnostics["sampled_stderr"])) < 1e-6
    plain = handlers.hybrid(tanh_model, base="mean", num_samples=64, rng_key=jax.random.PRNGKey(0),
                            sites=["lin"], antithetic=False)(W, B)["lin"]
    assert np.min(np.asarray(plain.diagnostics["sampled_stderr"])) > 1e-3
    assert r.diagnostics["antithetic"] and not plain.diagnostics["antithetic"]


def test_a_scalar_site_gets_the_sampled_estimate_with_exact_bounds():
    r = handlers.hybrid(tanh_model, base="diagonal", num_samples=4000, rng_key=jax.random.PRNGKey(2),
                        sites=["top"])(W, B)["top"]
    assert r.is_probability and any("min_units" in note for note in r.notes)
    assert float(r.value) == float(r.diagnostics["sampled_value"])
    exact = stats.norm.sf(np.arctanh(0.5), B[0], np.linalg.norm(W[:, 0]))
    lo, hi = (float(np.asarray(b)) for b in r.interval)
    assert lo <= exact <= hi and 0 <= lo < hi <= 1
    rare = handlers.hybrid(tanh_model, base="diagonal", num_samples=64, rng_key=jax.random.PRNGKey(2),
                           sites=["top"], mechanize_options={})(W, B - 10)["top"]  # never fires
    assert float(rare.value) == 0.0 and float(np.asarray(rare.interval[1])) > 0.0


def test_empirical_bayes_is_pure_and_jittable():
    rng = np.random.default_rng(0)
    mech = rng.standard_normal(32).astype(np.float32)
    stats_ = {"n": np.full(16, 8.0, np.float32), "s1": rng.standard_normal((16, 32)).astype(np.float32),
              "s2": (10 + rng.random((16, 32))).astype(np.float32)}
    eager = empirical_bayes(mech, stats_)
    jitted = jax.jit(empirical_bayes)(mech, stats_)
    for k in ("value", "mse", "gamma"):
        np.testing.assert_allclose(eager[k], jitted[k], rtol=1e-5, atol=1e-7)
    assert 0 <= float(eager["gamma"]) <= 1 and np.all(np.asarray(eager["mse"]) >= 0)


def bernoulli_model():
    x = numpyro.sample("x", dist.Bernoulli(0.3).expand([20]).to_event(1))
    numpyro.deterministic("y", x * 2.0)


@pytest.mark.parametrize("options, match", [
    (dict(base="bogus"), "base"),
    (dict(base="diagonal", num_samples=7), "num_samples"),
    (dict(base="diagonal", num_samples=4), "num_samples"),
    (dict(base="diagonal", num_samples=2.5), "num_samples"),
    (dict(base="diagonal", min_units=1), "min_units"),
])
def test_bad_arguments_are_named(options, match):
    options = {"num_samples": 64, **options}
    with pytest.raises(ValueError, match=match):
        handlers.hybrid(tanh_model, rng_key=jax.random.PRNGKey(0), **options)(W, B)


def test_antithetic_needs_symmetric_inputs():
    with pytest.raises(ValueError, match="antithetic.*x"):
        handlers.hybrid(bernoulli_model, base="diagonal", num_samples=64, rng_key=jax.random.PRNGKey(0),
                        antithetic=True)()
    r = handlers.hybrid(bernoulli_model, base="diagonal", num_samples=63, rng_key=jax.random.PRNGKey(0))()
    assert not r["y"].diagnostics["antithetic"] and r["y"].cost.evaluations == 63


def test_registered_as_methods():
    assert {"hybrid:gaussian", "hybrid:diagonal", "hybrid:mean"} <= set(method_names())
    estimator = make_estimator("hybrid:diagonal", tanh_model, MethodOptions(num_samples=64, sites=("h",)))
    r = estimator(W, B)
    assert r["h"].method == "hybrid[diagonal]" and r["h"].cost.evaluations == 64
