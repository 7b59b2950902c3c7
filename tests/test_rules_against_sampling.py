"""Every propagation rule of mechanize against Monte Carlo, with tolerances from the standard error.

Each case is one rule applied to a correlated Gaussian input, where the rule is exact
under the ``gaussian`` family (one nonlinearity of a Gaussian: exact means, variances
and covariances up to the documented quadrature/Mehler truncation; detectors: exact
polytope probabilities up to minimax tilting's own reported error). The tolerance is
``5 * sqrt(se_mc^2 + se_mech^2)`` per unit plus a tiny absolute slack for float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from ppl_mech import handlers

MEAN = jnp.asarray([0.3, -0.5, 1.0, 0.0])
COV = jnp.asarray([[1.0, 0.5, 0.2, -0.3],
                   [0.5, 1.5, 0.4, 0.1],
                   [0.2, 0.4, 0.8, 0.2],
                   [-0.3, 0.1, 0.2, 1.2]])
W = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
NUM_SAMPLES = 200_000

REAL_RULES = {
    "linear": lambda x: x @ W + 1.0,
    "relu": lambda x: jax.nn.relu(x),
    "shifted_relu": lambda x: jnp.maximum(2 * x - 0.5, 0.0) * 3 + 1,
    "exp": lambda x: jnp.exp(0.5 * x),
    "square": lambda x: x * x,
    "erf": lambda x: jax.scipy.special.erf(x),
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "sigmoid": jax.nn.sigmoid,
    "sin": jnp.sin,
    "softplus": jax.nn.softplus,
    "product": lambda x: x[:2] * x[2:],
    "relu_then_linear": lambda x: jax.nn.relu(x) @ W,
    "where": lambda x: jnp.where(jnp.asarray([True, False, True, False]), x, 2 * x),
    "reduce_sum": lambda x: jnp.sum(jnp.tanh(x)),
}
DETECTORS = {
    "halfspace": lambda x: x[0] + x[1] > 1.0,
    "and": lambda x: (x[0] > 0.5) & (x[3] < -0.2),
    "or": lambda x: (x[1] > 1.0) | (x[2] < 0.0),
    "not": lambda x: ~(x[2] > 1.2),
    "all": lambda x: jnp.all(x > -0.5),
    "any": lambda x: jnp.any(x @ W > 2.0),
    "argmax": lambda x: jnp.argmax(x) == 2,
    "relu_threshold": lambda x: jax.nn.relu(x @ W)[1] > 0.7,
}


def model(rule):
    x = numpyro.sample("x", dist.MultivariateNormal(MEAN, COV))
    numpyro.deterministic("y", rule(x))


def _check(name, rule, variance: bool):
    mech = handlers.mechanize(model)(rule)["y"]
    mc = handlers.sample(model, num_samples=NUM_SAMPLES, rng_key=jax.random.PRNGKey(7))(rule)["y"]
    value, se = np.asarray(mech.value, np.float64), np.asarray(mech.stderr, np.float64)
    truth, se_mc = np.asarray(mc.value, np.float64), np.asarray(mc.stderr, np.float64)
    tolerance = 5 * np.sqrt(se**2 + se_mc**2) + 1e-4
    assert np.all(np.abs(value - truth) <= tolerance), (name, value, truth, tolerance)
    if variance:
        var, var_mc = np.asarray(mech.diagnostics["variance"]), np.asarray(mc.diagnostics["variance"])
        # relative standard error of a sampled variance: sqrt((kurtosis - 1) / n), <= ~0.02 here
        np.testing.assert_allclose(var, var_mc, rtol=0.03, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("name", list(REAL_RULES))
def test_real_valued_rule(name):
    _check(name, REAL_RULES[name], variance=True)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_detector_rule(name):
    _check(name, DETECTORS[name], variance=False)
