"""mechanize(family="cumulant", order=K): exact cases, agreement with the other families,
Monte Carlo, jit/grad and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from ppl_mech.models import get_model
from scipy import stats

from ppl_mech import cumulants, handlers
from ppl_mech._capture import capture_program
from ppl_mech._errors import PPLMechError, UnsupportedDistributionError, UnsupportedPrimitiveError
from ppl_mech._methods import MethodOptions, make_estimator, parse_method
from ppl_mech.mechanistic._cumulant_family import CumulantInterpreter, propagate_cumulants


def _spd(rng, n, jitter=0.3):
    a = rng.normal(size=(n, n))
    return a @ a.T / n + jitter * np.eye(n)


def _messages(model, order, args=()):
    """Full output messages (mean, cov, k3, k4) of every output site, eagerly."""
    program = capture_program(model, args, {})
    jaxpr = program.make_jaxpr()
    interp = CumulantInterpreter(order)
    outs = interp.run(jaxpr.jaxpr, jaxpr.consts, interp.inputs(program.latents))
    return {name: interp.message(interp.force(h)) for name, h in zip(program.outputs, outs, strict=True)}


def _quadratic_model(mu, S, A, c, B):
    """x ~ N(mu, S); z = x A + c; y = (z * z) B: exact cumulants of every order known."""

    def model():
        x = numpyro.sample("x", dist.MultivariateNormal(mu, S))
        z = numpyro.deterministic("z", (x @ A + c).reshape(2, -1).reshape(-1))
        numpyro.deterministic("y", (z * z) @ B)

    return model


def _square_cumulants(mu, S):
    """Cumulants 1..3 of z*z, z ~ N(mu, S) (Isserlis): see test_cumulants."""
    k1 = mu**2 + np.diag(S)
    k2 = 2 * S**2 + 4 * np.outer(mu, mu) * S
    tri = 8 * np.einsum("ij,jk,ki->ijk", S, S, S)
    paths = 8 * (
        np.einsum("i,j,ik,jk->ijk", mu, mu, S, S)
        + np.einsum("j,k,ji,ki->ijk", mu, mu, S, S)
        + np.einsum("i,k,ij,kj->ijk", mu, mu, S, S)
    )
    return k1, k2, tri + paths, paths


def _contract(k, B):
    letters = "abcd"[: k.ndim]
    outs = "ijkl"[: k.ndim]
    spec = letters + "," + ",".join(f"{a}{o}" for a, o in zip(letters, outs, strict=True))
    return np.einsum(f"{spec}->{outs}", k, *([B] * k.ndim), optimize=True)


# --- exact cases ----------------------------------------------------------------------------


@pytest.mark.parametrize("order", [3, 4])
def test_linear_maps_of_gaussians_and_square_are_exact(x64, order):
    """Affine chains (matmul, bias, reshapes) are exact at every order for every cumulant
    kept; the square of a Gaussian written as ``z * z`` (fused, Gauss–Hermite) has exact
    mean and covariance at K >= 2 and exact third cumulant at K = 4; K = 3 drops exactly
    the cost-3 triangle 8 S S S of the distinct-index slice."""
    rng = np.random.default_rng(0)
    n, m = 4, 3
    mu, S = rng.normal(size=n), _spd(rng, n)
    A, c, B = rng.normal(size=(n, n)) / 2, rng.normal(size=n), rng.normal(size=(n, m))
    msgs = _messages(_quadratic_model(*(jnp.asarray(v) for v in (mu, S, A, c, B))), order)
    zm, zS = mu @ A + c, A.T @ S @ A
    np.testing.assert_allclose(msgs["z"].mean, zm, atol=1e-12)
    np.testing.assert_allclose(msgs["z"].cov, zS, atol=1e-12)
    if order >= 3 and msgs["z"].third is not None:  # K = 4 keeps a zero k3 as None
        np.testing.assert_allclose(cumulants.dense_third(msgs["z"].third), 0.0, atol=1e-12)
    k1, k2, k3, k3_without_triangle = _square_cumulants(zm, zS)
    y = msgs["y"]
    np.testing.assert_allclose(y.mean, k1 @ B, rtol=1e-10)
    np.testing.assert_allclose(y.cov, B.T @ k2 @ B, rtol=1e-9)
    if order == 4:
        np.testing.assert_allclose(y.third, _contract(k3, B), rtol=1e-8, atol=1e-9)
    if order == 3:
        i, j, k = np.indices((n,) * 3)
        want = np.where((i != j) & (j != k) & (i != k), k3_without_triangle, k3)
        np.testing.assert_allclose(cumulants.dense_third(y.third), _contract(want, B), rtol=1e-8,
                                   atol=1e-9)


def test_cube_mean_and_variance_are_wick(x64):
    """x^3 as jnp code (integer_pow), z ~ N(mu, diag s^2): E = mu^3 + 3 mu s^2 and
    Var = E z^6 - (E z^3)^2 = 9 mu^4 s^2 + 36 mu^2 s^4 + 15 s^6 (Wick), at every order."""
    mu, s = jnp.asarray([0.3, -1.2, 0.8]), jnp.asarray([1.0, 0.5, 1.5])

    def model():
        z = numpyro.sample("z", dist.Normal(mu, s).to_event(1))
        numpyro.deterministic("cube", z**3)

    for order in (1, 2):
        out = propagate_cumulants(model, (), {}, order=order)[0]["cube"]
        np.testing.assert_allclose(out["value"], mu**3 + 3 * mu * s**2, rtol=1e-10)
        np.testing.assert_allclose(out["variance"], 9 * mu**4 * s**2 + 36 * mu**2 * s**4 + 15 * s**6,
                                   rtol=1e-10)


def test_two_sites_combine_exactly_before_a_nonlinearity(x64):
    """Latent sites share one input message, so ``x + e`` is exact (they are independent)."""
    def model():
        x = numpyro.sample("x", dist.Normal(0.5, 1.0).expand([3]).to_event(1))
        e = numpyro.sample("e", dist.Normal(0.0, 0.5).expand([3]).to_event(1))
        numpyro.deterministic("relu", jnp.maximum(x + e, 0.0))

    s = np.sqrt(1.25)
    a = 0.5 / s
    from scipy import stats

    want = 0.5 * stats.norm.cdf(a) + s * stats.norm.pdf(a)
    for order in (1, 2):
        out = propagate_cumulants(model, (), {}, order=order)[0]["relu"]
        np.testing.assert_allclose(out["value"], np.full(3, want), rtol=1e-10)


# --- agreement with the other families and with Monte Carlo ---------------------------------


@pytest.fixture(scope="module")
def relu_mlp():
    """ARC relu MLP, width 32, 2 hidden layers: every family once, and a 2^22-sample reference."""
    built = get_model("arc-mlp", width=32, hidden_layers=2, activation="relu", seed=1)
    sites = ["hidden_1", "hidden_2", "output"]
    runs = {}
    for family, order in [("diagonal", None), ("gaussian", None), *[("cumulant", k) for k in (1, 2, 3, 4)]]:
        options = {} if order is None else {"order": order}
        runs[(family, order)] = handlers.mechanize(built.model, family=family, sites=sites, **options)(
            *built.args, **built.kwargs
        )
    weights = [jnp.asarray(w) for w in built.args[0]]

    @jax.jit
    def chunk(key):
        x = jax.random.normal(key, (2**16, 32))
        for w in weights[:-1]:
            x = jax.nn.relu(x @ w)
        y = (x @ weights[-1]).astype(jnp.float64) if jax.config.jax_enable_x64 else x @ weights[-1]
        return y.sum(0), (y * y).sum(0)

    s1 = s2 = 0.0
    num = 2**22
    for c in range(num // 2**16):
        a, b = chunk(jax.random.PRNGKey(c))
        s1, s2 = s1 + np.asarray(a, np.float64), s2 + np.asarray(b, np.float64)
    mean = s1 / num
    return runs, mean, s2 / num - mean**2, num


def test_order1_is_diagonal_and_order2_is_gaussian(relu_mlp):
    runs = relu_mlp[0]
    for order, family in [(1, "diagonal"), (2, "gaussian")]:
        for site in ("hidden_1", "hidden_2", "output"):
            got, want = runs[("cumulant", order)][site], runs[(family, None)][site]
            np.testing.assert_allclose(got.value, want.value, rtol=2e-5, atol=2e-6)
            np.testing.assert_allclose(got.diagnostics["variance"], want.diagnostics["variance"],
                                       rtol=2e-4, atol=2e-6)


def test_orders_against_monte_carlo(relu_mlp):
    """The readout mean's error falls with K (power counting: MSE ~ n^-K); the reference's
    own expected MSE (variance / N) is below every error compared (5x for K = 4, whose
    truncation error is still resolved at width 32)."""
    runs, ref_mean, ref_var, num = relu_mlp
    noise = ref_var.mean() / num
    mse = {k: float(np.mean((np.asarray(runs[("cumulant", k)]["output"].value) - ref_mean) ** 2))
           for k in (1, 2, 3, 4)}
    assert mse[4] > 5 * noise  # the truncation error is resolved at this width
    assert mse[4] < 0.4 * mse[3] < 0.4 * 0.4 * mse[2] < 0.4 * 0.4 * 0.5 * mse[1]
    # the variance improves with K as well
    var_err = {k: float(np.mean(np.abs(np.asarray(runs[("cumulant", k)]["output"].diagnostics["variance"])
                                       / ref_var - 1))) for k in (1, 2, 4)}
    assert var_err[4] < var_err[2] < var_err[1]


def test_method_cost_and_notes(relu_mlp):
    runs = relu_mlp[0]
    for k in (1, 2, 3, 4):
        r = runs[("cumulant", k)]["output"]
        assert r.method == f"mechanize[cumulant{k}]"
        assert r.cost.flops > 0 and r.cost.seconds >= 0 and r.cost.evaluations == 0
        assert float(np.max(r.stderr)) == 0.0
        assert any(f"order {k}" in note for note in r.notes)
    flops = [runs[("cumulant", k)]["output"].cost.flops for k in (1, 2, 3, 4)]
    assert flops == sorted(flops)
    assert parse_method("mechanize:cumulant4") == ("mechanize", "cumulant4")


@pytest.mark.parametrize("activation", ["gelu", "tanh"])
def test_smooth_activations_fuse_and_improve_with_order(activation):
    """gelu traces to erf arithmetic, tanh is one primitive: both are fused into one scalar
    function; for gelu K = 2 equals the gaussian family; K = 3 beats K = 1 against sampling
    (biased layers: with zero biases the tanh network is odd and every mean is 0)."""
    built = get_model("arc-mlp", width=16, hidden_layers=2, activation=activation, seed=2,
                      bias_mean=0.5, bias_var=0.25)
    runs = [("cumulant", 1), ("cumulant", 3)]
    if activation == "gelu":
        runs += [("cumulant", 2), ("gaussian", None)]
    run = {}
    for family, order in runs:
        options = {} if order is None else {"order": order}
        run[order or family] = handlers.mechanize(built.model, family=family, sites=["output"], **options)(
            *built.args, **built.kwargs)["output"]
    if activation == "gelu":
        np.testing.assert_allclose(run[2].value, run["gaussian"].value, rtol=1e-4, atol=1e-5)
    ref = handlers.sample(built.model, num_samples=2**18, rng_key=jax.random.PRNGKey(3),
                          sites=["output"])(*built.args, **built.kwargs)["output"]
    err = {k: float(np.mean((np.asarray(run[k].value) - np.asarray(ref.value)) ** 2)) for k in (1, 3)}
    assert err[3] < err[1]
    assert float(np.mean(np.asarray(ref.stderr) ** 2)) < 0.2 * err[1]


# --- jit and grad --------------------------------------------------------------------------


def test_jit_and_grad_match_finite_differences(x64):
    """Order 4 through two ReLU layers (dense k3, factored k4, correction terms) under
    ``jax.jit(jax.value_and_grad(...))``, against central finite differences."""
    built = get_model("arc-mlp", width=5, hidden_layers=2, activation="relu", seed=4)
    weights, _, threshold = built.args
    weights = [jnp.asarray(w, jnp.float64) for w in weights]

    def loss(w0):
        r = handlers.mechanize(built.model, family="cumulant", order=4, sites=["output"])(
            (w0, *weights[1:]), None, threshold, **built.kwargs)
        return jnp.sum(r["output"].value ** 2) + jnp.sum(r["output"].diagnostics["variance"])

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    value, grad = value_and_grad(weights[0])
    assert np.all(np.isfinite(grad))
    eps = 1e-6
    for i, j in [(2, 3), (0, 4)]:
        d = jnp.zeros_like(weights[0]).at[i, j].set(eps)
        plus, _ = value_and_grad(weights[0] + d)
        minus, _ = value_and_grad(weights[0] - d)
        assert float(grad[i, j]) == pytest.approx(float((plus - minus) / (2 * eps)), rel=1e-6, abs=1e-9)


# --- errors --------------------------------------------------------------------------------


def _chi_square_model(d, t, lower=False):
    """y = |x|^2, x ~ N(0, I_d), chi-square with d degrees of freedom: catastrophe y > t,
    written as t < y, or (lower) as -y < -t (the same event through the lower tail)."""

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
        y = numpyro.deterministic("y", jnp.sum(x * x))
        numpyro.deterministic("catastrophe", (-y < -t) if lower else (t < y))

    return model


def test_thresholds_of_a_linear_gaussian_are_the_exact_normal_tail():
    built = get_model("linear-gaussian", sigmas=6.0)
    for order in (2, 3, 4):
        r = handlers.mechanize(built.model, family="cumulant", order=order,
                               sites=["catastrophe"])(*built.args, **built.kwargs)["catastrophe"]
        assert r.is_probability and int(r.diagnostics["tail_status"]) == 0
        assert float(r.value) == pytest.approx(built.exact["catastrophe"], rel=1e-4)
        assert float(r.diagnostics["log_probability"]) == pytest.approx(np.log(built.exact["catastrophe"]),
                                                                         abs=1e-4)


@pytest.mark.parametrize("lower", [False, True])
def test_threshold_tails_improve_with_order_on_a_chi_square(lower):
    """P(chi2_8 > 30) = 2.1e-4: K = 4 is far closer than the Gaussian K = 2 (a factor 2.1 vs 1e4)."""
    from scipy import stats

    t = 30.0
    exact = stats.chi2.sf(t, 8)
    errors = {}
    for order in (2, 4):
        r = handlers.mechanize(_chi_square_model(8, t, lower), family="cumulant", order=order,
                               sites=["catastrophe"])()["catastrophe"]
        errors[order] = abs(np.log(float(r.value) / exact))
    # the unit's cumulants are exact (8 * 2^(n-1) (n-1)!); only the 4-term CGF is approximate
    signs = np.array([-1.0, 1.0, -1.0, 1.0]) if lower else np.ones(4)
    np.testing.assert_allclose(r.diagnostics["cumulants"], signs * [8.0, 16.0, 64.0, 384.0], rtol=1e-5)
    assert errors[4] < 0.2 * errors[2] and errors[4] < np.log(2.5), errors


def test_threshold_probability_is_differentiable_in_the_threshold():
    built = get_model("arc-mlp", width=8, hidden_layers=2, sigmas=3.0)
    weights, biases, threshold = built.args

    def p(t):
        r = handlers.mechanize(built.model, family="cumulant", order=3, sites=["catastrophe"])(
            weights, biases, t, **built.kwargs)
        return r["catastrophe"].value

    g = jax.jit(jax.grad(p))(threshold)
    fd = (p(threshold + 1e-2) - p(threshold - 1e-2)) / 2e-2
    assert float(g) < 0 and float(g) == pytest.approx(float(fd), rel=0.05)


def test_normal_tails_of_a_nonlinear_value_say_they_can_be_far_off():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        numpyro.deterministic("catastrophe", jnp.sum(x * x) > 20.0)

    r = handlers.mechanize(model, family="cumulant", order=2)()["catastrophe"]
    assert any("far tails can be far off" in n for n in r.notes)


def test_a_threshold_without_a_saddlepoint_is_nan_and_flagged():
    """At width 8 the order-4 cumulants of this unit have no saddlepoint: NaN, status 1, not a guess."""
    built = get_model("arc-mlp", width=8, hidden_layers=2, sigmas=3.0)
    r = handlers.mechanize(built.model, family="cumulant", order=4,
                           sites=["catastrophe"])(*built.args, **built.kwargs)["catastrophe"]
    assert np.isnan(float(r.value)) and int(r.diagnostics["tail_status"]) & 1


def test_combined_detectors_are_refused_with_a_pointer_to_the_gaussian_family():
    built = get_model("halfspaces")
    with pytest.raises(UnsupportedPrimitiveError, match=r"reduce_and.*family='gaussian'"):
        handlers.mechanize(built.model, family="cumulant", sites=["catastrophe"])(*built.args)

    def two_sided():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        numpyro.deterministic("catastrophe", x[0] > x[1])

    with pytest.raises(UnsupportedPrimitiveError, match=r"two random values.*\(a - b\) > 0"):
        handlers.mechanize(two_sided, family="cumulant")()


@pytest.mark.parametrize("order", [0, 5, "3", 2.0, True])
def test_order_is_validated(order):
    built = get_model("arc-mlp", width=4, hidden_layers=1)
    with pytest.raises(ValueError, match="order"):
        handlers.mechanize(built.model, family="cumulant", order=order, sites=["output"])(
            *built.args, **built.kwargs)


def test_order_without_cumulant_family_is_refused():
    built = get_model("arc-mlp", width=4, hidden_layers=1)
    with pytest.raises(ValueError, match="family='cumulant' only"):
        handlers.mechanize(built.model, family="gaussian", order=3, sites=["output"])(
            *built.args, **built.kwargs)


def test_non_gaussian_input_names_the_site():
    def model():
        u = numpyro.sample("u", dist.Uniform(0.0, 1.0).expand([3]).to_event(1))
        numpyro.deterministic("y", jnp.tanh(u))

    with pytest.raises(UnsupportedDistributionError, match="site 'u'.*Uniform"):
        propagate_cumulants(model, (), {}, order=3)


def test_residual_connection_around_a_nonlinearity_is_refused():
    w = jnp.eye(3) * 0.5

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.deterministic("y", jnp.tanh(x @ w) @ w + x)

    with pytest.raises(UnsupportedPrimitiveError, match="'add'.*different messages"):
        propagate_cumulants(model, (), {}, order=1)


def test_primitive_without_a_rule_is_named():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.deterministic("y", jnp.sort(x))

    with pytest.raises(PPLMechError, match="'sort'"):
        propagate_cumulants(model, (), {}, order=3)


def test_cli_variants_build_the_cumulant_family():
    built = get_model("arc-mlp", width=4, hidden_layers=1)
    est = make_estimator("mechanize:cumulant2", built.model, MethodOptions(sites=("output",)))
    assert est.options["family"] == "cumulant" and est.options["order"] == 2
    r = est(*built.args, **built.kwargs)
    assert r["output"].method == "mechanize[cumulant2]"


def test_whestbench_layers_order2_is_gaussian():
    built = get_model("whestbench", width=8, depth=2)
    sites = ["layer_1", "layer_2"]
    got = handlers.mechanize(built.model, family="cumulant", order=2, sites=sites)(*built.args,
                                                                                     **built.kwargs)
    want = handlers.mechanize(built.model, family="gaussian", sites=sites)(*built.args, **built.kwargs)
    for site in sites:
        np.testing.assert_allclose(got[site].value, want[site].value, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(got[site].diagnostics["variance"], want[site].diagnostics["variance"],
                                   rtol=2e-4, atol=2e-6)


def test_a_nonlinearity_after_a_nonlinearity_at_order_two_notes_the_closure():
    """cumulant order 2 on a two-layer gelu MLP was 10-20% off with only the family-wide note."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(3, 8)), rng.normal(size=(8, 8))

    def model():
        x = numpyro.sample("x", dist.Normal(0.2, 1.0).expand([3]).to_event(1))
        h1 = jax.nn.gelu(x @ w1 / 10)
        numpyro.deterministic("one", h1.sum())
        numpyro.deterministic("two", jax.nn.gelu(h1 @ w2 / 3).sum())

    for order, noted in ((2, True), (3, False)):
        r = handlers.mechanize(model, family="cumulant", order=order)()
        assert not any("moment-matched Gaussians" in n for n in r["one"].notes)
        assert any("moment-matched Gaussians" in n for n in r["two"].notes) == noted


@pytest.mark.parametrize("order", [2, 3])
def test_a_threshold_on_a_slice_of_a_layer_is_decided_on_the_pre_activation(order):
    """``relu(z)[1] > t`` (a slice between the layer and the threshold) used to be decided on the
    moment-matched cumulants of relu(z)[1]: 0.54 for 0.37 at order 2, NaN at order 3. The moved chain
    stays a chain on z[1], so the threshold is exact; a single-unit sum moves the unit too."""
    w = jnp.array([[0.5, -0.4], [0.3, 0.6], [-0.2, 0.1]])

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        h = jax.nn.relu(x @ w)
        numpyro.deterministic("slice", h[1] > 0.3)
        numpyro.deterministic("one_unit_sum", h[1:2].sum() > 0.3)

    r = handlers.mechanize(model, family="cumulant", order=order)()
    exact = stats.norm.sf(0.3 / float(jnp.linalg.norm(w[:, 1])))
    np.testing.assert_allclose(float(r["slice"].value), exact, rtol=1e-5)
    np.testing.assert_allclose(float(r["one_unit_sum"].value), exact, rtol=1e-5)


def test_slices_of_a_layer_that_meet_again_keep_one_joint_message():
    """``h[:3] @ v + h[3:] @ v`` equals ``h @ [v, v]``: the moved chains are forced through the unmoved
    layer's message, so the parts keep their joint cumulants (and no 'different messages' error)."""
    w = jnp.asarray(np.random.default_rng(3).normal(size=(4, 6)) / 1.5)
    v = jnp.array([0.7, -1.1, 0.4])

    def model():
        x = numpyro.sample("x", dist.Normal(0.3, 1.0).expand([4]).to_event(1))
        h = jnp.tanh(x @ w)
        numpyro.deterministic("parts", h[:3] @ v + h[3:] @ v)
        numpyro.deterministic("whole", h @ jnp.concatenate([v, v]))

    for order in (2, 3):
        r = handlers.mechanize(model, family="cumulant", order=order)()
        np.testing.assert_allclose(float(r["parts"].value), float(r["whole"].value), rtol=1e-5)
        np.testing.assert_allclose(float(r["parts"].diagnostics["variance"]),
                                   float(r["whole"].diagnostics["variance"]), rtol=1e-5)


def test_an_explicit_leaky_relu_slope_stays_a_constant():
    """``jax.nn.leaky_relu(z, 0.1)`` passes its slope into a jit call; evaluated there as a traced value,
    the slope's sign was unknown, ``0.1 * z`` became a separate message, and the branch choice was
    refused as "select_n with a random predicate". Constant-only equations are now evaluated
    concretely (as the other families do), so the choice composes into one chain."""
    w = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8)) / 3)

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([8]).to_event(1))
        numpyro.deterministic("y", jax.nn.leaky_relu(x @ w, 0.1))

    r = handlers.mechanize(model, family="cumulant", order=2)()
    sd = np.linalg.norm(np.asarray(w), axis=0)
    want = 0.9 * sd * stats.norm.pdf(0.0)  # E leaky(z) = E relu(z) + 0.1 E min(z, 0) = 0.9 sd / sqrt(2 pi)
    np.testing.assert_allclose(np.asarray(r["y"].value), want, rtol=1e-4)
