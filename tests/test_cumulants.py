"""Cumulant propagation: exact cases first (closed forms, Wick/Isserlis), then Monte Carlo."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from ppl_mech.cumulants import (
    CumulantMessage,
    FactoredFourth,
    FactoredThird,
    RadialFourth,
    bivariate_normal_cdf,
    dense_fourth,
    dense_third,
    diagram_classes,
    elementwise,
    gaussian_input,
    linear,
    message_order,
    propagate_mlp,
    relu_bivariate_covariance,
    third_from_dense,
)
from ppl_mech.cumulants._fourth import correction_fourth, factored_fourth_slices
from ppl_mech.cumulants._linear import dense_linear
from ppl_mech.cumulants._message import symmetrize, third_diagonal, third_pair_slice
from ppl_mech.cumulants._wick import relu_wick


@pytest.fixture
def x64():
    """float64 for the exact-maths checks (``jax.enable_x64``; jax >= 0.9 spelling)."""
    with jax.enable_x64(True):
        yield


_elementwise = jax.jit(elementwise, static_argnums=(1, 2))
_propagate = jax.jit(propagate_mlp, static_argnums=(2, 5))


def _spd(rng, n, jitter=0.3):
    a = rng.normal(size=(n, n))
    return a @ a.T / n + jitter * np.eye(n)


def _random_message(rng, n, rank=4):
    """A K = 3 message with an arbitrary (non-Gaussian) third and radial fourth cumulant."""
    k3 = FactoredThird(*(jnp.asarray(rng.normal(size=(n, rank)) * 0.3) for _ in range(3)))
    fourth = RadialFourth(jnp.asarray(0.2), jnp.asarray(_spd(rng, n)))
    return CumulantMessage(
        jnp.asarray(rng.normal(size=n)), jnp.asarray(_spd(rng, n)), k3, fourth
    )


# --- Wick coefficients and bivariate closed forms (tight) -------------------------------


@pytest.mark.parametrize("mu,s", [(0.4, 1.3), (-1.1, 0.7)])
def test_relu_wick_matches_numerical_integration(x64, mu, s):
    def expect(g):
        return integrate.quad(lambda u: g(u) * stats.norm.pdf(u), -12, 12, points=[-mu / s])[0]

    for p in (1, 2, 3, 4):
        for k in range(5):
            got = float(relu_wick(jnp.asarray(mu), jnp.asarray(s * s), k, p))
            # Stein: E[d^k g(z)] = s^-k E[He_k(u) g(mu + s u)]
            he = np.polynomial.hermite_e.HermiteE.basis(k)
            want = expect(lambda u, he=he, p=p: he(u) * max(mu + s * u, 0.0) ** p) / s**k
            assert got == pytest.approx(want, rel=1e-7, abs=1e-9), (k, p)


def test_bivariate_normal_cdf_matches_scipy(x64):
    for h, k, r in [(0.3, -0.5, 0.7), (1.2, 0.4, -0.9), (-2.0, 1.5, 0.99), (0.0, 0.0, 0.5)]:
        want = stats.multivariate_normal(cov=[[1, r], [r, 1]]).cdf([h, k])
        got = float(bivariate_normal_cdf(jnp.asarray(h), jnp.asarray(k), jnp.asarray(r)))
        assert got == pytest.approx(want, abs=1e-8)


def test_relu_covariance_is_arccos_kernel_at_zero_mean(x64):
    rng = np.random.default_rng(0)
    cov = _spd(rng, 5)
    got = np.asarray(relu_bivariate_covariance(jnp.zeros(5), jnp.asarray(cov)))
    s = np.sqrt(np.diag(cov))
    r = np.clip(cov / np.outer(s, s), -1, 1)
    second = np.outer(s, s) * (np.sqrt(1 - r**2) + r * (np.pi - np.arccos(r))) / (2 * np.pi)
    want = second - np.outer(s, s) / (2 * np.pi)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_relu_covariance_nonzero_mean_matches_quadrature(x64):
    mu = np.array([0.5, -0.3])
    cov = np.array([[1.1, 0.6], [0.6, 0.8]])
    s1 = np.sqrt(cov[0, 0])
    cond_sd = np.sqrt(cov[1, 1] - cov[0, 1] ** 2 / cov[0, 0])

    def integrand(x):  # x * E[relu(z_2) | z_1 = x] * density of z_1
        m = mu[1] + cov[0, 1] / cov[0, 0] * (x - mu[0])
        inner = m * stats.norm.cdf(m / cond_sd) + cond_sd * stats.norm.pdf(m / cond_sd)
        return x * inner * stats.norm.pdf(x, mu[0], s1)

    second = integrate.quad(integrand, 0, mu[0] + 14 * s1, epsabs=1e-13, epsrel=1e-12)[0]
    m = [float(relu_wick(jnp.asarray(mu[i]), jnp.asarray(cov[i, i]), 0, 1)) for i in (0, 1)]
    got = np.asarray(relu_bivariate_covariance(jnp.asarray(mu), jnp.asarray(cov)))
    assert got[0, 1] == pytest.approx(second - m[0] * m[1], abs=1e-9)


# --- representation and linear step (exact) ---------------------------------------------


def test_factored_third_slices_and_roundtrip(x64):
    rng = np.random.default_rng(1)
    msg = _random_message(rng, 6)
    k3 = np.asarray(dense_third(msg.third))
    np.testing.assert_allclose(third_diagonal(msg.third), np.einsum("iii->i", k3), atol=1e-12)
    np.testing.assert_allclose(third_pair_slice(msg.third), np.einsum("iij->ij", k3), atol=1e-12)
    np.testing.assert_allclose(dense_third(third_from_dense(jnp.asarray(k3))), k3, atol=1e-12)


@pytest.mark.parametrize("jit", [False, True])
def test_linear_step_is_exact_tensor_contraction(x64, jit):
    rng = np.random.default_rng(2)
    n_in, n_out = 5, 4
    msg = _random_message(rng, n_in)
    W, b = jnp.asarray(rng.normal(size=(n_in, n_out))), jnp.asarray(rng.normal(size=n_out))
    out = (jax.jit(linear) if jit else linear)(msg, W, b)
    np.testing.assert_allclose(out.mean, msg.mean @ W + b, atol=1e-12)
    np.testing.assert_allclose(out.cov, dense_linear(msg.cov, W), atol=1e-12)
    np.testing.assert_allclose(
        dense_third(out.third), dense_linear(dense_third(msg.third), W), atol=1e-12
    )
    np.testing.assert_allclose(
        dense_fourth(out.fourth), dense_linear(dense_fourth(msg.fourth), W), atol=1e-12
    )
    # K = 1 keeps variances only: exactly the diagonal propagation.
    k1 = linear(gaussian_input(msg.mean, msg.cov, 1), W)
    np.testing.assert_allclose(k1.cov, np.diag(np.asarray(W.T @ jnp.diag(jnp.diag(msg.cov)) @ W)))
    assert [message_order(m) for m in (k1, out)] == [1, 3]


# --- nonlinear step: Wick / Isserlis closed forms (exact) --------------------------------


def test_square_of_gaussian_third_cumulant_is_wick_minus_triangle(x64):
    """z ~ N(mu, S), x = z^2. Isserlis: k3(x_i,x_j,x_k) = 8 S_ij S_jk S_ki
    + 8 (mu_i mu_j S_ik S_jk + mu_j mu_k S_ji S_ki + mu_i mu_k S_ij S_kj). K = 3 keeps every
    diagram of cost <= 2: all of it except the distinct-index triangle (cost 3)."""
    rng = np.random.default_rng(3)
    n = 5
    mu, S = rng.normal(size=n), _spd(rng, n)
    out = _elementwise(gaussian_input(jnp.asarray(mu), jnp.asarray(S), 3), "square", 3)
    tri = 8 * np.einsum("ij,jk,ki->ijk", S, S, S)
    paths = 8 * (
        np.einsum("i,j,ik,jk->ijk", mu, mu, S, S)
        + np.einsum("j,k,ji,ki->ijk", mu, mu, S, S)
        + np.einsum("i,k,ij,kj->ijk", mu, mu, S, S)
    )
    i, j, k = np.indices((n, n, n))
    distinct = (i != j) & (j != k) & (i != k)
    want = np.where(distinct, paths, tri + paths)
    np.testing.assert_allclose(dense_third(out.third), want, atol=1e-10)
    np.testing.assert_allclose(out.mean, mu**2 + np.diag(S), atol=1e-12)
    np.testing.assert_allclose(out.cov, 2 * S**2 + 4 * np.outer(mu, mu) * S, atol=1e-10)


def _check_square_and_cube(msg, k3, step):
    """Mean and covariance of z^2 and mean of z^3 from mean, cov, k3 and k4: moment identities."""
    mu, S = np.asarray(msg.mean), np.asarray(msg.cov)
    k4 = np.asarray(dense_fourth(msg.fourth))
    sq = step(msg, "square")
    np.testing.assert_allclose(sq.mean, mu**2 + np.diag(S), atol=1e-10)
    k_iij = np.einsum("iij->ij", k3)
    want_cov = (
        4 * np.outer(mu, mu) * S
        + 2 * S**2
        + 2 * mu[:, None] * k_iij.T
        + 2 * mu[None, :] * k_iij
        + np.einsum("iijj->ij", k4)
    )
    np.testing.assert_allclose(sq.cov, want_cov, atol=1e-9)
    cube = step(msg, "cube")
    want_mean = mu**3 + 3 * mu * np.diag(S) + np.einsum("iii->i", k3)
    np.testing.assert_allclose(cube.mean, want_mean, atol=1e-9)


def test_square_and_cube_exact_for_non_gaussian_input(x64):
    """With arbitrary input k3 and (radial) k4, the K = 3 mean and covariance of z^2 and the
    mean of z^3 are exact moment identities."""
    rng = np.random.default_rng(4)
    n = 5
    msg = _random_message(rng, n)
    _check_square_and_cube(msg, np.asarray(dense_third(msg.third)), lambda m, a: _elementwise(m, a, 3))


def test_identity_activation_leaves_message_unchanged(x64):
    rng = np.random.default_rng(5)
    msg = _random_message(rng, 5)
    msg = msg._replace(fourth=RadialFourth(jnp.asarray(0.3), jnp.eye(5)))
    out = _elementwise(msg, "identity", 3)
    np.testing.assert_allclose(out.mean, msg.mean, atol=1e-10)
    np.testing.assert_allclose(out.cov, msg.cov, atol=1e-10)
    np.testing.assert_allclose(dense_third(out.third), dense_third(msg.third), atol=1e-10)
    assert float(out.fourth.scale) == pytest.approx(0.3, abs=1e-10)


# --- agreement with the mean-field and Gaussian families ---------------------------------


def test_order1_is_diagonal_propagation(x64):
    rng = np.random.default_rng(6)
    n = 8
    Ws = [rng.normal(size=(n, n)) / np.sqrt(n) for _ in range(2)]
    bs = [rng.normal(size=n) * 0.1 for _ in range(2)]
    m0, c0 = rng.normal(size=n), _spd(rng, n)
    mean, var = m0, np.diag(c0)
    for W, b in zip(Ws, bs, strict=True):  # mean-field: units independent, E relu / E relu^2
        m, v = mean @ W + b, var @ (W * W)
        s, a = np.sqrt(v), m / np.sqrt(v)
        e1 = m * stats.norm.cdf(a) + s * stats.norm.pdf(a)
        e2 = (m**2 + v) * stats.norm.cdf(a) + m * s * stats.norm.pdf(a)
        mean, var = e1, e2 - e1**2
    out = propagate_mlp(
        [jnp.asarray(W) for W in Ws],
        [jnp.asarray(b) for b in bs],
        "relu",
        jnp.asarray(m0),
        jnp.asarray(c0),
        1,
    )
    np.testing.assert_allclose(out[-1].mean, mean, rtol=1e-10)
    np.testing.assert_allclose(out[-1].cov, var, rtol=1e-10)


def test_order2_single_relu_layer_is_exact_gaussian_moments(x64):
    rng = np.random.default_rng(7)
    n = 4
    mu, S = rng.normal(size=n) * 0.5, _spd(rng, n)
    out = _elementwise(gaussian_input(jnp.asarray(mu), jnp.asarray(S), 2), "relu", 2)
    s = np.sqrt(np.diag(S))
    a = mu / s
    np.testing.assert_allclose(out.mean, mu * stats.norm.cdf(a) + s * stats.norm.pdf(a), rtol=1e-12)
    np.testing.assert_allclose(out.cov, relu_bivariate_covariance(jnp.asarray(mu), jnp.asarray(S)))
    # ... and against seeded Monte Carlo, within 4 standard errors per entry.
    z = rng.multivariate_normal(mu, S, size=400_000)
    x = np.maximum(z, 0.0)
    xc = x - x.mean(0)
    prods = xc[:, :, None] * xc[:, None, :]
    se = prods.std(0) / np.sqrt(len(x))
    assert np.all(np.abs(np.cov(x.T) - np.asarray(out.cov)) < 4 * se + 1e-12)
    assert np.all(np.abs(x.mean(0) - np.asarray(out.mean)) < 4 * x.std(0) / np.sqrt(len(x)))


@pytest.mark.parametrize("activation,fn", [("tanh", np.tanh), ("gelu", None)])
def test_order2_smooth_activations_match_monte_carlo(x64, activation, fn):
    if fn is None:
        fn = lambda z: z * stats.norm.cdf(z)  # noqa: E731
    rng = np.random.default_rng(8)
    n = 4
    mu, S = rng.normal(size=n) * 0.5, _spd(rng, n)
    out = _elementwise(gaussian_input(jnp.asarray(mu), jnp.asarray(S), 2), activation, 2)
    x = fn(rng.multivariate_normal(mu, S, size=400_000))
    xc = x - x.mean(0)
    se = (xc[:, :, None] * xc[:, None, :]).std(0) / np.sqrt(len(x))
    assert np.all(np.abs(np.cov(x.T) - np.asarray(out.cov)) < 4 * se)
    assert np.all(np.abs(x.mean(0) - np.asarray(out.mean)) < 4 * x.std(0) / np.sqrt(len(x)))


# --- small MLP against Monte Carlo -------------------------------------------------------


def test_small_relu_mlp_against_monte_carlo(x64):
    """Width 32, 3 hidden ReLU layers (He init), against 2^20 seeded samples. Truncation
    error is not zero at this width, so the check is that the reference's own expected MSE
    (per-unit variance / N) is >= 20x below the errors compared, and that the error falls
    with K as power counting says (MSE ~ n^-K)."""
    n, depth, N = 32, 3, 2**20
    rng = np.random.default_rng(9)
    Ws = [jnp.asarray(rng.standard_normal((n, n)) * np.sqrt(2 / n)) for _ in range(depth)]

    @jax.jit
    def stats_chunk(key):
        x = jax.random.normal(key, (2**17, n), jnp.float64)
        for W in Ws:
            x = jax.nn.relu(x @ W)
        return x.sum(0), (x * x).sum(0)

    s1 = s2 = 0.0
    for c in range(N // 2**17):
        a, b = stats_chunk(jax.random.PRNGKey(c))
        s1, s2 = s1 + np.asarray(a), s2 + np.asarray(b)
    ref = s1 / N
    noise = (s2 / N - ref**2).mean() / N  # expected MSE of the reference itself
    mse = {}
    for K in (1, 2, 3):
        est = _propagate(Ws, None, "relu", jnp.zeros(n), jnp.eye(n), K)[-1].mean
        mse[K] = float(np.mean((np.asarray(est) - ref) ** 2))
    assert mse[3] > 20 * noise
    assert mse[3] < 0.3 * mse[2] and mse[2] < 0.5 * mse[1]
    assert mse[3] < 2e-4


# --- jit, grad, shapes -------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2, 3])
def test_jit_and_grad_match_finite_differences(x64, order):
    rng = np.random.default_rng(10)
    n = 6
    Ws = [jnp.asarray(rng.normal(size=(n, n)) * np.sqrt(2 / n)) for _ in range(2)]
    m0, c0 = jnp.asarray(rng.normal(size=n) * 0.3), jnp.asarray(_spd(rng, n))

    def loss(Ws, m0, c0):
        return jnp.sum(propagate_mlp(Ws, None, "relu", m0, c0, order)[-1].mean ** 2)

    loss = jax.jit(loss)
    gW, gm, gc = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(Ws, m0, c0)
    assert all(np.all(np.isfinite(g)) for g in (*gW, gm, gc))
    eps = 1e-6
    d = jnp.zeros((n, n)).at[1, 2].set(eps)
    fd = (loss([Ws[0] + d, Ws[1]], m0, c0) - loss([Ws[0] - d, Ws[1]], m0, c0)) / (2 * eps)
    assert float(gW[0][1, 2]) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)
    dm = jnp.zeros(n).at[0].set(eps)
    fd = (loss(Ws, m0 + dm, c0) - loss(Ws, m0 - dm, c0)) / (2 * eps)
    assert float(gm[0]) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


def test_third_cumulant_rank_grows_2n_per_layer_and_readout():
    n, depth = 8, 2
    rng = np.random.default_rng(11)
    Ws = [jnp.asarray(rng.normal(size=(n, n)) / math.sqrt(n), jnp.float32) for _ in range(depth)]
    readout = (jnp.asarray(rng.normal(size=(n, 2)), jnp.float32), None)
    msgs = propagate_mlp(Ws, None, "gelu", jnp.zeros(n), jnp.eye(n), 3, readout=readout)
    assert len(msgs) == depth + 1
    assert [m.third.a.shape for m in msgs] == [(n, 2 * n * (i + 1)) for i in range(depth)] + [
        (2, 2 * n * depth)
    ]
    assert msgs[-1].mean.dtype == jnp.float32
    assert all(np.all(np.isfinite(np.asarray(m.cov))) for m in msgs)


def test_orders_beyond_four_are_refused():
    with pytest.raises(NotImplementedError, match="K=5"):
        gaussian_input(jnp.zeros(3), jnp.eye(3), 5)
    with pytest.raises(NotImplementedError, match="K=0"):
        elementwise(gaussian_input(jnp.zeros(3), jnp.eye(3), 2), "relu", 0)


# --- order K = 4: dense k3, factored k4 ---------------------------------------------------


def _random_fourth(rng, n, rank):
    b = rng.normal(size=(n, n, rank)) * 0.3
    return FactoredFourth(
        jnp.asarray(rng.normal(size=(n, rank)) * 0.5),
        jnp.asarray(rng.normal(size=(n, rank)) * 0.5),
        jnp.asarray(b + b.transpose(1, 0, 2)),
    )


def _random_order4_message(rng, n, rank=3):
    k3 = symmetrize(jnp.asarray(rng.normal(size=(n, n, n)) * 0.2))
    return CumulantMessage(
        jnp.asarray(rng.normal(size=n)), jnp.asarray(_spd(rng, n)), k3, _random_fourth(rng, n, rank)
    )


def _quadratic_cumulants(mu, S):
    """Exact cumulants (orders 1..4) of x = z^2, z ~ N(mu, S), by Wick's theorem for
    z = mu + y: a joint cumulant of the x's is a sum over Hamiltonian cycles (every vertex
    y^2) and paths (ends 2 mu y, inner vertices y^2) through its indices, each cycle or
    path carrying 2 leg choices per y^2 vertex."""
    import itertools

    def over_orders(base):
        d = base.ndim
        return sum(np.transpose(base, pi) for pi in itertools.permutations(range(d)))

    k1 = mu**2 + np.diag(S)
    k2 = 2 * S**2 + 4 * np.outer(mu, mu) * S
    # 3 indices: one triangle (8 leg choices, 6 orderings), 3 paths (8 each, 2 orderings).
    k3 = (8 / 6) * over_orders(np.einsum("ab,bc,ca->abc", S, S, S)) + 4 * over_orders(
        np.einsum("a,ab,bc,c->abc", mu, S, S, mu)
    )
    # 4 indices: 3 cycles (16 each, 8 orderings), 12 paths (16 each, 2 orderings).
    k4 = 2 * over_orders(np.einsum("ab,bc,cd,da->abcd", S, S, S, S)) + 8 * over_orders(
        np.einsum("a,ab,bc,cd,d->abcd", mu, S, S, S, mu)
    )
    return [k1, k2, k3, k4]


def test_order4_diagram_classes_are_the_trees():
    """The all-distinct fourth-cumulant diagrams of cost <= 3: the input k4 block (1 labelled
    diagram), the covariance star (4), path (12) and k3-plus-edge (12)."""
    classes = dict(diagram_classes((1, 1, 1, 1)))
    by_shape = sorted((sorted(sum(v) for v in blocks), count) for blocks, count in classes.items())
    assert by_shape == [([2, 2, 2], 4), ([2, 2, 2], 12), ([2, 3], 12), ([4], 1)]
    # Pairs: every diagram of cost <= 3 (pure covariance up to a triple edge).
    assert sum(count for _, count in diagram_classes((1, 1))) == 15


def test_factored_fourth_slices_and_correction_match_dense(x64):
    rng = np.random.default_rng(20)
    n = 5
    fourth = _random_fourth(rng, n, 4)
    k4 = np.asarray(dense_fourth(fourth))
    s = factored_fourth_slices(fourth)
    np.testing.assert_allclose(s[(4,)], np.einsum("iiii->i", k4), atol=1e-12)
    np.testing.assert_allclose(s[(3, 1)], np.einsum("iiij->ij", k4), atol=1e-12)
    np.testing.assert_allclose(s[(2, 2)], np.einsum("iijj->ij", k4), atol=1e-12)
    np.testing.assert_allclose(s[(2, 1, 1)], np.einsum("iijk->ijk", k4), atol=1e-12)
    # The correction reproduces given repeated-index slices and has no all-distinct part.
    i, j, k, l = np.indices((n,) * 4)
    distinct = (i != j) & (i != k) & (i != l) & (j != k) & (j != l) & (k != l)
    masked = {
        key: v * (np.ones(n) if len(key) == 1 else _distinct(len(key), n))
        for key, v in s.items()
    }
    corr = np.asarray(dense_fourth(correction_fourth(masked, n, jnp.float64)))
    np.testing.assert_allclose(np.where(distinct, 0.0, k4), corr, atol=1e-12)


def _distinct(d, n):
    idx = np.indices((n,) * d)
    out = np.ones((n,) * d, bool)
    for a in range(d):
        for b in range(a + 1, d):
            out &= idx[a] != idx[b]
    return out


def test_order4_linear_step_is_exact(x64):
    rng = np.random.default_rng(21)
    n_in, n_out = 5, 4
    msg = _random_order4_message(rng, n_in)
    W, b = jnp.asarray(rng.normal(size=(n_in, n_out))), jnp.asarray(rng.normal(size=n_out))
    out = linear(msg, W, b)
    assert message_order(out) == 4
    W = np.asarray(W)
    np.testing.assert_allclose(out.cov, W.T @ np.asarray(msg.cov) @ W, atol=1e-12)
    k3 = np.einsum("abc,ai,bj,ck->ijk", np.asarray(msg.third), W, W, W, optimize=True)
    np.testing.assert_allclose(out.third, k3, atol=1e-12)
    k4 = np.einsum("abcd,ai,bj,ck,dl->ijkl", np.asarray(dense_fourth(msg.fourth)), W, W, W, W,
                   optimize=True)
    np.testing.assert_allclose(dense_fourth(out.fourth), k4, atol=1e-12)


def test_order4_square_of_gaussian_is_exact_up_to_cost4_diagrams(x64):
    """x = z^2, z ~ N(mu, S). K = 4 keeps every power-cumulant diagram of cost <= 3, so
    mean, covariance and third cumulant are exact (the cost-3 triangle included, unlike
    K = 3), the (4) and (3,1) slices of k4 too; what is left out is known in closed form:
    the three 4-cycles 16 S S S S of the all-distinct slice (cost 4), and in the power
    cumulants k(z_i^4, z_j^2, z_k^2) and k(z_i^4, z_j^4) the double-double edges
    S_ij^2 S_ik^2 / (2! 2!) c_i(4,2) c_j(2,1) c_k(2,1) = 24 S_ij^2 S_ik^2 and
    S_ij^4 / 4! c(4,2)^2 = 24 S_ij^4."""
    rng = np.random.default_rng(22)
    n = 5
    mu, S = rng.normal(size=n), _spd(rng, n)
    exact = _quadratic_cumulants(mu, S)
    out = elementwise(gaussian_input(jnp.asarray(mu), jnp.asarray(S), 4), "square", 4)
    np.testing.assert_allclose(out.mean, exact[0], atol=1e-10)
    np.testing.assert_allclose(out.cov, exact[1], atol=1e-10)
    np.testing.assert_allclose(out.third, exact[2], atol=1e-9)
    dropped = np.asarray(exact[3]) - np.asarray(dense_fourth(out.fourth))
    i, j, k, l = np.indices((n,) * 4)
    cycles = 16 * (
        np.einsum("ij,jk,kl,li->ijkl", S, S, S, S)
        + np.einsum("ij,jl,lk,ki->ijkl", S, S, S, S)
        + np.einsum("ik,kj,jl,li->ijkl", S, S, S, S)
    )
    want = np.zeros((n,) * 4)
    want = np.where(_distinct(4, n), cycles, want)
    want = np.where((i == j) & (k != l) & (k != i) & (l != i), 24 * S[i, k] ** 2 * S[i, l] ** 2, want)
    want = np.where((i == j) & (k == l) & (i != k), 24 * S[i, k] ** 4, want)
    # symmetric placements of the repeated pair are covered by symmetry of both tensors
    sym_dropped = np.asarray(symmetrize(jnp.asarray(dropped)))
    np.testing.assert_allclose(dropped, sym_dropped, atol=1e-9)
    mask = (i == j) | _distinct(4, n)
    np.testing.assert_allclose(np.where(mask, dropped, 0.0), want, atol=1e-8)


def test_order4_mean_and_covariance_of_square_exact_for_non_gaussian_input(x64):
    rng = np.random.default_rng(23)
    n = 5
    msg = _random_order4_message(rng, n)
    _check_square_and_cube(msg, np.asarray(msg.third), lambda m, a: elementwise(m, a, 4))


# Order 4 against Monte Carlo and under jax.grad: tests/test_cumulant_family.py (through the
# jaxpr interpreter, which uses these functions).
