"""The Monte Carlo baseline against exact answers, interval coverage, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

from ppl_mech import ModelError, Results, handlers
from ppl_mech._intervals import clopper_pearson, jeffreys, normal_interval, student_interval

KEY = jax.random.PRNGKey(0)
A = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]])
MU = np.array([0.3, -0.2, 1.0])
L = np.array([[1.0, 0.0, 0.0], [0.4, 0.8, 0.0], [-0.3, 0.2, 0.6]])


def linear_gaussian(a, mu, scale_tril, t):
    x = numpyro.sample("x", dist.MultivariateNormal(mu, scale_tril=scale_tril))
    y = numpyro.deterministic("y", a @ x)
    numpyro.deterministic("above", y[0] > t)
    numpyro.deterministic("both", (y[0] > t) & (y[1] > 0.0))


def within(result, exact, k=4.0):
    z = np.abs(np.asarray(result.value) - exact) / np.asarray(result.stderr)
    assert np.all(z < k), (result.value, exact, result.stderr)


def test_linear_gaussian_means_and_halfspaces():
    t = 1.0
    r = handlers.sample(linear_gaussian, num_samples=200_000, rng_key=KEY)(A, MU, L, t)
    assert isinstance(r, Results)
    cov = A @ L @ L.T @ A.T
    within(r["y"], A @ MU)
    mean = A @ MU
    p1 = stats.norm.sf(t, mean[0], np.sqrt(cov[0, 0]))
    within(r["above"], p1)
    # two halfspaces: P(y0 > t, y1 > 0) = P(-y0 < -t, -y1 < 0)
    p2 = stats.multivariate_normal(-mean, cov).cdf(np.array([-t, 0.0]))
    within(r["both"], p2)
    assert r["above"].is_probability and not r["y"].is_probability
    assert r["above"].cost.evaluations == 200_000 and r["above"].cost.flops > 0


def test_deterministic_for_a_key_whatever_the_chunking():
    def run(chunk):
        return handlers.sample(
            linear_gaussian, num_samples=10_000, rng_key=KEY, chunk_size=chunk
        )(A, MU, L, 0.5)
    a, b = run(1024), run(4096)
    assert int(a["above"].diagnostics["successes"]) == int(b["above"].diagnostics["successes"])
    np.testing.assert_allclose(a["y"].value, b["y"].value, rtol=1e-5)
    c = handlers.sample(linear_gaussian, num_samples=10_000, rng_key=jax.random.PRNGKey(1))(
        A, MU, L, 0.5
    )
    assert not np.allclose(a["y"].value, c["y"].value)


def test_zero_events_give_an_honest_interval():
    r = handlers.sample(linear_gaussian, num_samples=5_000, rng_key=KEY, sites=["above"])(
        A, MU, L, 50.0
    )
    res = r["above"]
    assert float(res.value) == 0.0
    lo, hi = res.interval
    assert float(lo) == 0.0
    np.testing.assert_allclose(float(hi), 1 - 0.025 ** (1 / 5_000), rtol=1e-9)


@pytest.mark.parametrize("rule", [clopper_pearson, jeffreys])
def test_bernoulli_interval_coverage_over_seeds(rule):
    # exact coverage by enumeration of the binomial distribution, then a sampled check
    n, p = 200, 0.01
    k = np.arange(n + 1)
    lo, hi = rule(k, n)
    coverage = stats.binom.pmf(k, n, p)[(lo <= p) & (p <= hi)].sum()
    assert coverage >= 0.93  # Jeffreys is approximate, Clopper-Pearson conservative


@pytest.mark.slow  # ~45 s: 60 sampler runs (the interval rule itself is checked exactly above)
def test_interval_coverage_of_the_sampler_over_repeated_seeds():
    p = stats.norm.sf(1.5)

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.deterministic("tail", x > 1.5)
        numpyro.deterministic("value", x)

    hits_p = hits_m = 0
    seeds = 60
    for s in range(seeds):
        r = handlers.sample(model, num_samples=2_000, rng_key=jax.random.PRNGKey(s), keep_draws=0)()
        lo, hi = r["tail"].interval
        hits_p += float(lo) <= p <= float(hi)
        lo, hi = r["value"].interval
        hits_m += float(lo) <= 0.0 <= float(hi)
    # 95% intervals over 60 seeds: Binomial(60, .95) is >= 52 with prob ~0.99
    assert hits_p >= 52 and hits_m >= 52, (hits_p, hits_m)


def test_discrete_inputs_and_return_value():
    def model(n):
        b = numpyro.sample("b", dist.Bernoulli(0.25).expand([n]).to_event(1))
        return b.sum()

    r = handlers.sample(model, num_samples=50_000, rng_key=KEY)(8)
    within(r["_return"], 2.0)


def test_dependent_latents_are_fine_for_sampling():
    def model():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        x = numpyro.sample("x", dist.Normal(z, 1.0))
        numpyro.deterministic("x_pos", x > 0)
        numpyro.deterministic("x_sq", x**2)

    r = handlers.sample(model, num_samples=100_000, rng_key=KEY)()
    within(r["x_pos"], 0.5)
    within(r["x_sq"], 2.0)


def test_prng_key_models_sample():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.deterministic("y", x + jax.random.normal(numpyro.prng_key()))

    r = handlers.sample(model, num_samples=20_000, rng_key=KEY)()
    np.testing.assert_allclose(r["y"].diagnostics["variance"], 2.0, rtol=0.05)


def test_decorator_form_and_errors():
    @handlers.sample(num_samples=1000, rng_key=KEY)
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.deterministic("y", x)

    assert "y" in model()
    with pytest.raises(ModelError, match="no output site"):
        handlers.sample(model.fn, num_samples=10, rng_key=KEY, sites=["nope"])()
    with pytest.raises(ValueError, match="num_samples"):
        handlers.sample(model.fn, num_samples=0, rng_key=KEY)()
    with pytest.raises(KeyError, match="sites are"):
        model()["nope"]
    with pytest.raises(ValueError, match="level"):
        handlers.sample(model.fn, num_samples=10, rng_key=KEY, level=1.5)()
    with pytest.raises(TypeError, match="rng_key must be a JAX random key"):
        handlers.sample(model.fn, num_samples=10, rng_key=0)()
    typed_key = jax.random.key(0)
    assert "y" in handlers.sample(model.fn, num_samples=10, rng_key=typed_key, level=np.float32(0.9))()
    with pytest.raises(ValueError, match="importance: level"):
        handlers.importance(model.fn, proposal="itgis", num_samples=64, rng_key=KEY, level=0.0)()


def test_gradient_free_results_are_pytrees():
    r = handlers.sample(linear_gaussian, num_samples=1000, rng_key=KEY)(A, MU, L, 0.5)
    leaves = jax.tree_util.tree_leaves(r)
    assert leaves and all(np.ndim(x) >= 0 for x in leaves)
    assert "sample" in repr(r) and "above" in repr(r)


def test_weights_are_jit_arguments_not_constants():
    # two different weight arrays of the same shape: same compiled program, different answers
    a = handlers.sample(linear_gaussian, num_samples=1000, rng_key=KEY)(A, MU, L, 0.5)
    b = handlers.sample(linear_gaussian, num_samples=1000, rng_key=KEY)(2 * A, MU, L, 0.5)
    np.testing.assert_allclose(b["y"].value, 2 * np.asarray(a["y"].value), rtol=1e-5)
    assert jnp.asarray(a["y"].value).shape == (2,)


def test_student_interval_widens_the_normal_one_for_few_replicas():
    """With R replicas the interval uses t with R - 1 dof (3.18 at 95% for R = 4), and tends to normal."""
    lo, hi = student_interval(1.0, 0.1, dof=3)
    assert hi - 1.0 == pytest.approx(0.1 * stats.t.ppf(0.975, 3))
    assert 1.0 - lo == pytest.approx(hi - 1.0)
    n_lo, n_hi = normal_interval(1.0, 0.1)
    assert (hi - lo) / (n_hi - n_lo) == pytest.approx(3.1824 / 1.95996, rel=1e-4)
    big_lo, big_hi = student_interval(1.0, 0.1, dof=10_000)
    assert big_hi == pytest.approx(n_hi, rel=1e-4)
    with pytest.raises(ValueError, match="dof"):
        student_interval(1.0, 0.1, dof=0)
