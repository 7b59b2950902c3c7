"""Moment rules for elementwise nonlinearities and the bivariate normal CDF.

Two tiers (STYLE.md): exact maths against high-precision references (mpmath,
scipy quadrature in float64) at 1e-10..1e-6; Monte Carlo cross-checks, seeded,
at <= 4 standard errors.
"""

import math

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from scipy import integrate, special

from ppl_mech._bivariate_normal import (
    bivariate_normal_cdf,
    bivariate_normal_cdf_genz,
    log_bivariate_normal_cdf,
    log_ndtr_diff,
)
from ppl_mech.rules import (
    abs_covariance,
    bivariate_gauss_hermite_covariance,
    erf_covariance,
    erf_moments,
    exp_covariance,
    exp_input_output_covariance,
    exp_moments,
    gauss_hermite_expectation,
    gauss_hermite_input_covariance,
    gauss_hermite_moments,
    heaviside_covariance,
    hermite_coefficients,
    mehler_covariance,
    mehler_covariance_with_bound,
    probit_covariance,
    probit_input_output_covariance,
    probit_moments,
    relu_covariance,
    relu_cross_moment,
    relu_input_output_covariance,
    relu_moments,
    relu_second_moment,
    sign_covariance,
    square_covariance,
    square_moments,
)

# --------------------------------------------------------------- references


def _mp_phi2(h, k, rho, dps=30):
    """High-precision P(X <= h, Y <= k): mpmath quadrature of phi(x) Phi((k - rho x)/s),
    split around the integrand's mode on its own length scale (robust in the far tails)."""
    with mp.workdps(dps):
        h, k, rho = mp.mpf(h), mp.mpf(k), mp.mpf(rho)
        if rho == 1:
            return mp.ncdf(min(h, k))
        if rho == -1:
            return max(mp.mpf(0), mp.ncdf(h) - mp.ncdf(-k))
        s = mp.sqrt((1 - rho) * (1 + rho))

        def lf(x):
            return -x * x / 2 + mp.log(mp.ncdf((k - rho * x) / s))

        def d(x):
            return mp.diff(lf, x)

        if d(h) >= 0:
            m = h
        else:
            lo, hi = h - 1, h
            while d(lo) < 0:
                lo = h - 2 * (h - lo)
            for _ in range(120):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if d(mid) > 0 else (lo, mid)
            m = (lo + hi) / 2
        c = -mp.diff(lf, m, 2)
        sl = d(m)
        w = 2 / (abs(sl) + mp.sqrt(sl * sl + 2 * c))
        pts = {h}
        for j in [0, 0.5, 1, 2, 4, 8, 16, 32, 64, 128]:
            for sg in (-1, 1):
                if m + sg * j * w <= h:
                    pts.add(m + sg * j * w)
        if rho != 0 and k / rho < h:
            pts.add(k / rho)
        pts = sorted(pts)
        lm = lf(m)

        def f(x):
            return mp.exp(lf(x) - lm)

        val = mp.quad(f, [-mp.inf, pts[0]])
        val += sum(mp.quad(f, [pts[i], pts[i + 1]]) for i in range(len(pts) - 1))
        return val * mp.exp(lm) / mp.sqrt(2 * mp.pi)


def _quad_expect(f, mean, var):
    """E f(X), X ~ N(mean, var), by scipy quad in float64 (the kink at 0 as a break point)."""
    s = math.sqrt(var)

    def g(z):
        return f(mean + s * z) * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    pts = [-mean / s] if abs(mean / s) < 30 else []
    lo, hi = -40.0, 40.0
    edges = sorted([lo, *pts, hi])
    return sum(
        integrate.quad(g, edges[i], edges[i + 1], epsabs=1e-15, epsrel=1e-13, limit=200)[0]
        for i in range(len(edges) - 1)
    )


def _mc_normal(mean, cov, n, seed):
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(np.asarray(mean), np.asarray(cov), size=n)


def _mc_cov_check(y, mean_rule, cov_rule, nse=4.0):
    """Rule mean/cov within nse standard errors of the Monte Carlo estimates."""
    n = y.shape[0]
    m = y.mean(0)
    yc = y - m
    c = yc.T @ yc / (n - 1)
    se_m = y.std(0) / math.sqrt(n)
    prod = yc[:, :, None] * yc[:, None, :]
    se_c = prod.std(0) / math.sqrt(n)
    np.testing.assert_array_less(np.abs(np.asarray(mean_rule) - m), nse * se_m + 1e-12)
    np.testing.assert_array_less(np.abs(np.asarray(cov_rule) - c), nse * se_c + 1e-12)


def _random_cov(n, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n + 2))
    return scale * a @ a.T / (n + 2)


def _fd_grad(f, x, eps=1e-6):
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = eps
        out.flat[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return out


# ------------------------------------------------------ bivariate normal CDF


def test_bvn_special_values(x64):
    # one call over all cases (each new shape is a new compilation)
    rho0 = np.array([-0.99, -0.5, 0.0, 0.3, 0.93, 0.999])
    hk = np.array([-3.0, -0.4, 0.2, 2.5])
    kk = np.array([1.0, -2.0, 0.7, -0.1])
    cases = [
        (np.zeros(6), np.zeros(6), rho0, 0.25 + np.arcsin(rho0) / (2 * np.pi)),
        (hk, kk, np.zeros(4), special.ndtr(hk) * special.ndtr(kk)),
        (hk, kk, np.ones(4), special.ndtr(np.minimum(hk, kk))),  # rho = 1
        (hk, kk, -np.ones(4), np.maximum(special.ndtr(hk) - special.ndtr(-kk), 0.0)),  # rho = -1
        (np.full(4, np.inf), kk, np.full(4, 0.7), special.ndtr(kk)),  # infinite limits
        (np.array([-np.inf, 1.0]), np.array([1.0, -np.inf]), np.array([0.3, -0.3]), np.zeros(2)),
    ]
    h, k, rho, exact = (np.concatenate(v) for v in zip(*cases, strict=True))
    np.testing.assert_allclose(bivariate_normal_cdf(h, k, rho), exact, rtol=0, atol=1e-15)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(log_bivariate_normal_cdf(h, k, rho), np.log(exact), rtol=1e-13, atol=1e-15)
    # symmetry in (h, k)
    np.testing.assert_allclose(bivariate_normal_cdf(h, k, rho), bivariate_normal_cdf(k, h, rho), atol=1e-15)


def test_bvn_bulk_against_mpmath(x64):
    rng = np.random.default_rng(0)
    h = rng.uniform(-4, 4, 16)
    k = rng.uniform(-4, 4, 16)
    rho = np.concatenate([rng.uniform(-0.99, 0.99, 10), [-0.9999, 0.95, -0.93, 0.99999, 0.5, 0.0]])
    ref = np.array([float(_mp_phi2(*t)) for t in zip(h, k, rho, strict=True)])
    np.testing.assert_allclose(bivariate_normal_cdf(h, k, rho), ref, rtol=0, atol=1e-14)
    np.testing.assert_allclose(bivariate_normal_cdf_genz(h, k, rho), ref, rtol=0, atol=1e-14)
    np.testing.assert_allclose(np.exp(log_bivariate_normal_cdf(h, k, rho)), ref, rtol=1e-12)


# (h, k, rho): far tails, anti-correlated rare events, |rho| -> 1, P near 1
_TAIL_CASES = [
    (-8.0, -8.0, 0.3),
    (-12.0, -12.0, -0.5),
    (-40.0, -40.0, 0.2),
    (-5.0, -5.0, -0.9),
    (3.0, -12.0, -0.9),
    (-2.0, -2.0, -0.99),
    (-40.0, 0.7, -0.5),
    (-12.0, -40.0, 0.6),
    (-6.0, -6.0, 0.999999),
    (-25.0, -30.0, 0.95),
    (-1.0, -30.0, -0.1),
    (6.0, 6.0, 0.5),
    (9.0, 8.0, -0.7),
    (-100.0, -120.0, 0.3),  # P ~ exp(-1e4): no underflow in log-space
    (0.5, -0.5, 0.0),
    (1.0, 1.0, 0.9),
]


def test_bvn_log_tail_against_mpmath(x64):
    h, k, rho = (np.array(v) for v in zip(*_TAIL_CASES, strict=True))
    ref = np.array([float(mp.log(_mp_phi2(*t, dps=40))) for t in _TAIL_CASES])
    lp = np.asarray(jax.jit(log_bivariate_normal_cdf)(h, k, rho))  # under an outer jit too
    # |d log P| = relative error of P; ask for 1e-10 (the brief's target is 1e-8)
    np.testing.assert_allclose(lp, ref, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(log_bivariate_normal_cdf(h, k, rho), lp, rtol=1e-14)
    # the plain CDF: relative 1e-9 or better down to 1e-300
    p = np.asarray(bivariate_normal_cdf(h, k, rho))
    small = ref > math.log(1e-300)
    np.testing.assert_allclose(p[small], np.exp(ref[small]), rtol=1e-9)


def test_log_ndtr_diff(x64):
    b = np.array([-30.0, 31.0, 0.5, 12.0, 1.0])
    a = np.array([-31.0, 30.0, -0.5, -40.0, 2.0])
    with mp.workdps(300):
        ref = [float(mp.log(mp.ncdf(u) - mp.ncdf(v))) for u, v in zip(b[:4], a[:4], strict=True)]
    got = np.asarray(log_ndtr_diff(b, a))
    np.testing.assert_allclose(got[:4], ref, rtol=1e-12)
    assert got[4] == -np.inf


def _bvn_grads(fn):
    return jax.jit(jax.vmap(jax.grad(lambda v: fn(v[0], v[1], v[2]))))


def test_bvn_gradients_match_finite_differences(x64):
    rhos = (-0.97, -0.4, 0.0, 0.6, 0.95)
    pts = np.array([[-0.7, 0.4, r] for r in rhos] + [[-15.0, -14.0, -0.3]])
    eps = 1e-6
    for fn in (bivariate_normal_cdf, log_bivariate_normal_cdf):
        g = np.asarray(_bvn_grads(fn)(jnp.asarray(pts)))
        fd = np.zeros_like(pts)
        for i in range(3):
            e = np.zeros(3)
            e[i] = eps
            plus = np.asarray(fn(*(pts + e).T))
            minus = np.asarray(fn(*(pts - e).T))
            fd[:, i] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-9)
        assert np.all(np.isfinite(g))


def test_bvn_float32_sanity():
    h = np.array([-3.0, 0.0, 1.0, -10.0, 5.0, -2.0], np.float32)
    k = np.array([-2.0, 0.0, 1.5, -10.0, -1.0, 2.0], np.float32)
    rho = np.array([0.3, 0.5, -0.95, 0.9, 1.0, 0.999], np.float32)
    p = bivariate_normal_cdf(h, k, rho)
    lp = log_bivariate_normal_cdf(h, k, rho)
    assert p.dtype == jnp.float32 and lp.dtype == jnp.float32
    with jax.enable_x64(True):
        ref = np.asarray(bivariate_normal_cdf(*(v.astype(np.float64) for v in (h, k, rho))))
    np.testing.assert_allclose(p, ref, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(np.exp(lp), ref, rtol=2e-5)
    g = jax.grad(lambda x: jnp.sum(log_bivariate_normal_cdf(x, k, rho)))(h)
    assert np.all(np.isfinite(g))


# ----------------------------------------------------------------------- ReLU


@pytest.mark.parametrize("mean,var", [(0.0, 1.0), (0.7, 0.3), (-1.5, 2.0), (3.0, 0.5)])
def test_relu_moments_against_quadrature(x64, mean, var):
    m, v = relu_moments(mean, var)
    e1 = _quad_expect(lambda x: max(x, 0.0), mean, var)
    e2 = _quad_expect(lambda x: max(x, 0.0) ** 2, mean, var)
    np.testing.assert_allclose(m, e1, rtol=1e-12)
    np.testing.assert_allclose(v, e2 - e1 * e1, rtol=1e-10)
    np.testing.assert_allclose(relu_second_moment(mean, var), e2, rtol=1e-12)


def test_relu_moments_extremes(x64):
    # far negative: relative accuracy against mpmath (the naive form returns noise)
    for a in [-5.0, -12.0, -40.0]:
        with mp.workdps(40):
            A = mp.mpf(a)
            m1 = A * mp.ncdf(A) + mp.npdf(A)
            m2 = (A * A + 1) * mp.ncdf(A) + A * mp.npdf(A)
            var = m2 - m1 * m1
        m, v = relu_moments(a * 2.0, 4.0)
        np.testing.assert_allclose(m, 2.0 * float(m1), rtol=1e-12)
        np.testing.assert_allclose(v, 4.0 * float(var), rtol=1e-10)
    # far positive: relu is the identity
    m, v = relu_moments(1e3, 1.0)
    np.testing.assert_allclose([m, v], [1e3, 1.0], rtol=1e-14)
    # point mass
    m, v = relu_moments(jnp.array([-1.0, 0.0, 2.0]), 0.0)
    np.testing.assert_array_equal(m, [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(v, [0.0, 0.0, 0.0])


def _relu_cross_by_quad(m1, m2, v1, v2, c):
    """E relu(X1) relu(X2) = int relu(x1) phi E[relu(X2) | x1] dx1 (1-D quad, 1-D closed form)."""
    s1 = math.sqrt(v1)
    vc = v2 - c * c / v1

    def g(z):
        x1 = m1 + s1 * z
        mc = m2 + c / s1 * z
        if vc <= 1e-300:
            inner = max(mc, 0.0)
        else:
            a = mc / math.sqrt(vc)
            inner = mc * special.ndtr(a) + math.sqrt(vc) * math.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
        return max(x1, 0.0) * inner * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    return integrate.quad(g, -m1 / s1, 40.0, epsabs=1e-15, epsrel=1e-13, limit=200)[0]


@pytest.mark.parametrize(
    "m1,m2,v1,v2,rho",
    [
        (0.3, -0.2, 1.0, 0.5, 0.4),
        (-1.0, 1.5, 2.0, 1.0, -0.7),
        (2.0, 1.0, 0.5, 0.3, 0.95),
        (0.1, 0.2, 1.0, 1.0, -0.96),
        (-2.0, -2.5, 1.0, 1.5, 0.2),
    ],
)
def test_relu_cross_moment_against_quadrature(x64, m1, m2, v1, v2, rho):
    c = rho * math.sqrt(v1 * v2)
    ref = _relu_cross_by_quad(m1, m2, v1, v2, c)
    np.testing.assert_allclose(relu_cross_moment(m1, m2, v1, v2, c), ref, rtol=1e-10, atol=1e-15)


def test_relu_cross_moment_special_cases(x64):
    rho = np.array([-0.9, -0.3, 0.0, 0.5, 0.99])
    s1, s2 = 1.3, 0.7
    arccos = s1 * s2 * (np.sqrt(1 - rho**2) + rho * (np.pi - np.arccos(rho))) / (2 * np.pi)
    np.testing.assert_allclose(relu_cross_moment(0.0, 0.0, s1**2, s2**2, rho * s1 * s2), arccos, rtol=1e-13)
    # rho = +1: X2 = m2 + s2 Z with the same Z; rho = -1: X2 = m2 - s2 Z
    for r in (1.0, -1.0):
        ref = _quad_expect(lambda x, r=r: max(x, 0.0) * max(0.4 + r * 0.7 * (x - 0.2) / 1.1, 0.0), 0.2, 1.21)
        got = relu_cross_moment(0.2, 0.4, 1.21, 0.49, r * 1.1 * 0.7)
        np.testing.assert_allclose(got, ref, rtol=1e-6)
    # point masses
    np.testing.assert_allclose(
        relu_cross_moment(1.5, 0.3, 0.0, 2.0, 0.0), 1.5 * relu_moments(0.3, 2.0)[0], rtol=1e-14
    )
    assert float(relu_cross_moment(-1.0, 0.3, 0.0, 2.0, 0.0)) == 0.0
    assert float(relu_cross_moment(2.0, 3.0, 0.0, 0.0, 0.0)) == 6.0


def test_relu_covariance_monte_carlo(x64):
    mean = np.array([0.3, -0.5, 1.2, 0.0])
    cov = _random_cov(4, 1)
    y = np.maximum(_mc_normal(mean, cov, 200_000, seed=2), 0.0)
    m, c = jax.jit(relu_covariance)(mean, cov)
    _mc_cov_check(y, m, c)
    m2, c2 = relu_covariance(mean, cov)  # non-jit agrees
    np.testing.assert_allclose(c2, c, atol=1e-14)
    np.testing.assert_allclose(np.diag(c), relu_moments(mean, np.diag(cov))[1], rtol=1e-14)
    # symmetric and positive semi-definite
    np.testing.assert_allclose(c, c.T, atol=1e-15)
    assert np.linalg.eigvalsh(np.asarray(c)).min() > -1e-12


def test_relu_input_output_covariance(x64):
    mean = np.array([0.3, -0.5, 1.2])
    cov = _random_cov(3, 3)
    x = _mc_normal(mean, cov, 200_000, seed=4)
    y = np.maximum(x, 0.0)
    got = np.asarray(relu_input_output_covariance(mean, cov))
    xc = x - x.mean(0)
    yc = y - y.mean(0)
    prod = xc[:, :, None] * yc[:, None, :]
    mc = prod.mean(0)
    se = prod.std(0) / math.sqrt(x.shape[0])
    np.testing.assert_array_less(np.abs(got - mc), 4 * se)


def test_relu_gradients(x64):
    def f(v):
        m, var = relu_moments(v[0], v[1])
        return m + 0.3 * var + relu_cross_moment(v[0], v[2], v[1], v[3], v[4])

    pt = np.array([0.4, 0.8, -0.3, 1.3, 0.5])
    g = np.array(jax.jit(jax.grad(f))(jnp.asarray(pt)))
    f_jit = jax.jit(f)
    np.testing.assert_allclose(g, _fd_grad(lambda v: float(f_jit(v)), pt), rtol=1e-6, atol=1e-9)
    # var = 0 gives a finite gradient (double-where), never NaN
    g0 = jax.jit(jax.grad(lambda m, v: sum(relu_moments(m, v)), argnums=(0, 1)))(0.5, 0.0)
    assert np.all(np.isfinite(np.array(g0)))
    gcov = jax.jit(jax.grad(lambda c: jnp.sum(relu_covariance(jnp.zeros(3), c)[1])))(jnp.eye(3))
    assert np.all(np.isfinite(np.asarray(gcov)))


def test_relu_float32_sanity():
    mean = np.array([0.3, -0.5, 1.2, -30.0], np.float32)
    cov = _random_cov(4, 5).astype(np.float32)
    m, c = relu_covariance(mean, cov)
    assert m.dtype == jnp.float32 and c.dtype == jnp.float32
    with jax.enable_x64(True):
        m64, c64 = relu_covariance(mean.astype(np.float64), cov.astype(np.float64))
    np.testing.assert_allclose(m, m64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, c64, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------- closed forms


@pytest.mark.parametrize("mean,var", [(0.0, 1.0), (0.8, 0.2), (-2.0, 3.0), (1.5, 20.0)])
def test_probit_and_erf_moments_against_quadrature(x64, mean, var):
    m, v = probit_moments(mean, var)
    e1 = _quad_expect(lambda x: special.ndtr(x), mean, var)
    e2 = _quad_expect(lambda x: special.ndtr(x) ** 2, mean, var)
    np.testing.assert_allclose(m, e1, rtol=1e-12)
    np.testing.assert_allclose(v, e2 - e1 * e1, rtol=1e-9, atol=1e-15)
    m, v = erf_moments(mean, var)
    e1 = _quad_expect(special.erf, mean, var)
    e2 = _quad_expect(lambda x: special.erf(x) ** 2, mean, var)
    np.testing.assert_allclose(m, e1, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(v, e2 - e1 * e1, rtol=1e-9, atol=1e-15)


def test_probit_var_zero_and_exp_square_exact(x64):
    m, v = probit_moments(jnp.array([-1.0, 0.5]), 0.0)
    np.testing.assert_allclose(m, special.ndtr([-1.0, 0.5]), rtol=1e-15)
    np.testing.assert_array_equal(v, [0.0, 0.0])
    m, v = exp_moments(0.3, 0.5)
    np.testing.assert_allclose([m, v], [math.exp(0.55), math.exp(1.1) * math.expm1(0.5)])
    m, v = square_moments(0.3, 0.5)
    np.testing.assert_allclose([m, v], [0.59, 2 * 0.25 + 4 * 0.09 * 0.5])


@pytest.mark.parametrize(
    "name,f,rule",
    [
        ("probit", special.ndtr, probit_covariance),
        ("erf", special.erf, erf_covariance),
        ("exp", np.exp, exp_covariance),
        ("square", np.square, square_covariance),
        ("heaviside", lambda x: (x > 0).astype(float), heaviside_covariance),
        ("sign", np.sign, sign_covariance),
        ("abs", np.abs, abs_covariance),
    ],
)
def test_closed_form_covariances_monte_carlo(x64, name, f, rule):
    mean = np.array([0.3, -0.5, 0.9])
    cov = _random_cov(3, 7, scale=0.5)
    y = f(_mc_normal(mean, cov, 200_000, seed=8))
    m, c = jax.jit(rule)(mean, cov)
    _mc_cov_check(y, m, c)
    np.testing.assert_allclose(c, np.asarray(c).T, atol=1e-14)


def test_probit_covariance_against_quadrature(x64):
    # E Phi(X1) Phi(X2) = int Phi(x1) phi E[Phi(X2) | x1] dx1, the inner one closed form
    m1, m2, v1, v2, c = 0.4, -0.3, 1.5, 2.5, 1.6
    s1 = math.sqrt(v1)
    vc = v2 - c * c / v1

    def g(z):
        return (
            special.ndtr(m1 + s1 * z)
            * special.ndtr((m2 + c / s1 * z) / math.sqrt(1 + vc))
            * math.exp(-0.5 * z * z)
            / math.sqrt(2 * math.pi)
        )

    e12 = integrate.quad(g, -40, 40, epsabs=1e-15, epsrel=1e-13)[0]
    mean, cov = probit_covariance(np.array([m1, m2]), np.array([[v1, c], [c, v2]]))
    np.testing.assert_allclose(cov[0, 1], e12 - mean[0] * mean[1], rtol=1e-10)


def test_input_output_covariances_exact(x64):
    mean = np.array([0.3, -0.5])
    cov = np.array([[1.0, 0.4], [0.4, 0.7]])
    # exp: Cov(x_i, e^{x_j}) = cov_ij E e^{x_j}
    np.testing.assert_allclose(
        exp_input_output_covariance(mean, cov), cov * np.exp(mean + 0.5 * np.diag(cov))[None, :]
    )
    # probit via Stein against Gauss–Hermite
    stein = gauss_hermite_input_covariance(jax.scipy.special.ndtr, mean, np.diag(cov), degree=64)
    np.testing.assert_allclose(
        probit_input_output_covariance(mean, cov), cov * np.asarray(stein)[None, :], rtol=1e-12
    )


# ----------------------------------------------------------- Gauss–Hermite


def _gelu(x):
    return jax.nn.gelu(x, approximate=True)


def _gelu_np(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("f,fnp", [(jnp.tanh, np.tanh), (_gelu, _gelu_np)])
@pytest.mark.parametrize("mean,var", [(0.0, 1.0), (0.7, 0.3), (-1.2, 2.0)])
def test_gauss_hermite_against_quadrature(x64, f, fnp, mean, var):
    # tanh's poles at +-i pi/2 slow Gauss–Hermite down (see the module's table): 128 nodes
    m, v = jax.jit(gauss_hermite_moments, static_argnums=(0, 3))(f, mean, var, 128)
    e1 = _quad_expect(fnp, mean, var)
    e2 = _quad_expect(lambda x: fnp(x) ** 2, mean, var)
    np.testing.assert_allclose(m, e1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(v, e2 - e1 * e1, rtol=1e-8)
    # atol: E tanh = 0 at mean 0
    np.testing.assert_allclose(gauss_hermite_expectation(f, mean, var, 128), m, rtol=1e-14, atol=1e-15)


def test_gauss_hermite_relu_and_monte_carlo(x64):
    mean = np.array([-0.5, 0.0, 0.8])
    var = np.array([1.0, 0.5, 2.0])
    m_exact, v_exact = relu_moments(mean, var)
    m, v = gauss_hermite_moments(jax.nn.relu, mean, var, degree=64)
    # a kink converges only algebraically: ~1e-3 relative at 64 nodes
    np.testing.assert_allclose(m, m_exact, rtol=1e-2)
    np.testing.assert_allclose(v, v_exact, rtol=1e-2)
    rng = np.random.default_rng(11)
    x = mean + np.sqrt(var) * rng.standard_normal((200_000, 3))
    y = np.tanh(x)
    m, v = gauss_hermite_moments(jnp.tanh, mean, var)
    se_m = y.std(0) / math.sqrt(len(y))
    yc = (y - y.mean(0)) ** 2
    se_v = yc.std(0) / math.sqrt(len(y))
    np.testing.assert_array_less(np.abs(m - y.mean(0)), 4 * se_m)
    np.testing.assert_array_less(np.abs(v - y.var(0)), 4 * se_v)


def test_gauss_hermite_input_covariance(x64):
    mean = np.array([-0.5, 0.0, 0.8])
    var = np.array([1.0, 0.0, 2.0])
    # Stein coefficient of tanh = E tanh'(X); var = 0 -> tanh'(mean)
    got = gauss_hermite_input_covariance(jnp.tanh, mean, var, degree=128)
    ref = [
        _quad_expect(lambda x: 1 - np.tanh(x) ** 2, mean[0], var[0]),
        1 - np.tanh(0.0) ** 2,
        _quad_expect(lambda x: 1 - np.tanh(x) ** 2, mean[2], var[2]),
    ]
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    # ReLU: the exact coefficient is Phi(mean/s)
    got = gauss_hermite_input_covariance(jax.nn.relu, 0.4, 1.3, degree=64)
    np.testing.assert_allclose(got, special.ndtr(0.4 / math.sqrt(1.3)), rtol=1e-2)
    # point mass, gradients finite
    m, v = gauss_hermite_moments(jnp.tanh, 0.3, 0.0)
    np.testing.assert_allclose([m, v], [np.tanh(0.3), 0.0], atol=1e-15)
    g = jax.grad(lambda s2: gauss_hermite_moments(jnp.tanh, 0.3, s2)[1])(0.0)
    assert np.isfinite(g)


def test_gauss_hermite_gradient(x64):
    def f(v):
        m, var = gauss_hermite_moments(jnp.tanh, v[0], v[1])
        return m + var

    pt = np.array([0.3, 0.7])
    g = np.array(jax.grad(f)(jnp.asarray(pt)))
    np.testing.assert_allclose(g, _fd_grad(lambda v: float(f(v)), pt), rtol=1e-7)


# ------------------------------------------------------------------- Mehler


def test_hermite_coefficients_of_polynomials(x64):
    mu, s = 0.4, 1.3
    c = hermite_coefficients(lambda x: x**2, mu, s * s, order=5, degree=16)
    # (mu + s z)^2 = mu^2 + s^2 + 2 mu s He_1 + s^2 He_2, with h_2 = He_2 / sqrt(2)
    ref = [mu**2 + s**2, 2 * mu * s, s * s * math.sqrt(2), 0.0, 0.0, 0.0]
    np.testing.assert_allclose(c, ref, atol=1e-13)
    # Mehler is exact for polynomials: square covariance
    mean = np.array([0.3, -0.5, 0.9])
    cov = _random_cov(3, 12)
    np.testing.assert_allclose(
        mehler_covariance(jnp.square, mean, cov, order=4, degree=16),
        square_covariance(mean, cov)[1],
        atol=1e-12,
    )


@pytest.mark.parametrize("f,quad_tol", [(jnp.tanh, 1e-8), (_gelu, 1e-12)])
def test_mehler_against_bivariate_gauss_hermite(x64, f, quad_tol):
    mean = np.array([0.3, -0.5, 0.9, 0.1])
    cov = _random_cov(4, 13)
    cov[0, 3] = cov[3, 0] = 0.995 * math.sqrt(cov[0, 0] * cov[3, 3])  # |rho| near 1
    cov[1, 2] = cov[2, 1] = -0.98 * math.sqrt(cov[1, 1] * cov[2, 2])
    got, bound = jax.jit(mehler_covariance_with_bound, static_argnums=(0, 3, 4))(f, mean, cov, 16, 128)
    plain, plain_bound = mehler_covariance_with_bound(f, mean, cov, 16, 128, tail=None)
    var = np.diag(cov)
    i, j = np.triu_indices(4, 1)
    ref = bivariate_gauss_hermite_covariance(f, f, mean[i], mean[j], var[i], var[j], cov[i, j], 128)
    err = np.abs(np.asarray(got)[i, j] - ref)
    err_plain = np.abs(np.asarray(plain)[i, j] - ref)
    # The documented truncation bound holds for both (up to the quadrature error of
    # coefficients and reference), and the endpoint-matched tail is tighter near |rho| = 1.
    assert np.all(err <= np.asarray(bound)[i, j] + quad_tol)
    assert np.all(err_plain <= np.asarray(plain_bound)[i, j] + quad_tol)
    assert err.max() < 1e-5
    assert err.max() * 10 < err_plain.max()
    np.testing.assert_allclose(np.diag(got), gauss_hermite_moments(f, mean, var, 128)[1], rtol=1e-14)


def test_mehler_monte_carlo(x64):
    mean = np.array([0.3, -0.5, 0.9])
    cov = _random_cov(3, 14)
    y = np.tanh(_mc_normal(mean, cov, 200_000, seed=15))
    m, _ = gauss_hermite_moments(jnp.tanh, mean, np.diag(cov), 64)
    c = mehler_covariance(jnp.tanh, mean, cov)
    _mc_cov_check(y, m, c)


def test_mehler_gradient(x64):
    mean = np.array([0.3, -0.5])

    def f(v):
        cov = jnp.array([[1.0, v[0]], [v[0], 0.8]])
        return mehler_covariance(jnp.tanh, mean, cov)[0, 1]

    pt = np.array([0.4])
    g = np.array(jax.jit(jax.grad(f))(jnp.asarray(pt)))
    f_jit = jax.jit(f)
    np.testing.assert_allclose(g, _fd_grad(lambda v: float(f_jit(v)), pt), rtol=1e-7)


def test_mehler_float32():
    mean = np.array([0.3, -0.5, 0.9], np.float32)
    cov = _random_cov(3, 16).astype(np.float32)
    c = mehler_covariance(jnp.tanh, mean, cov)
    assert c.dtype == jnp.float32
    with jax.enable_x64(True):
        c64 = mehler_covariance(jnp.tanh, mean.astype(np.float64), cov.astype(np.float64))
    np.testing.assert_allclose(c, c64, atol=1e-6)


def test_relu_hermite_covariance_is_within_its_bound(x64):
    from ppl_mech.rules.mehler import hermite_coefficients
    from ppl_mech.rules.relu import relu_covariance, relu_covariance_hermite, relu_hermite_coefficients

    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 6))
    cov = a @ a.T / 6
    mean = 0.7 * rng.standard_normal(6)
    exact_mean, exact_cov = relu_covariance(mean, cov)
    for order in (4, 8, 16, 32):
        c, bound = relu_covariance_hermite(mean, cov, order)[1:]
        np.testing.assert_allclose(relu_covariance_hermite(mean, cov, order)[0], exact_mean, rtol=1e-14)
        np.testing.assert_allclose(np.diag(c), np.diag(exact_cov), rtol=1e-12)
        assert np.max(np.abs(c - exact_cov)) <= float(bound) + 1e-14
    # closed-form coefficients against quadrature (which the kink, 6 sd away, limits to ~1e-9)
    coeffs = relu_hermite_coefficients(jnp.asarray([3.0]), jnp.asarray([0.25]), 5)[:, 0]
    quad = hermite_coefficients(jax.nn.relu, jnp.asarray([3.0]), jnp.asarray([0.25]), 5, degree=100)[0]
    np.testing.assert_allclose(coeffs, quad, atol=1e-8)


def test_mechanize_relu_hermite_matches_exact_on_a_random_net(x64):
    from ppl_mech.models import get_model

    from ppl_mech import handlers

    b = get_model("whestbench", width=32, depth=3)
    exact = handlers.mechanize(b.model, sites=["layer_3"])(*b.args, **b.kwargs)["layer_3"]
    fast = handlers.mechanize(b.model, sites=["layer_3"], relu="hermite")(*b.args, **b.kwargs)["layer_3"]
    assert fast.method == "mechanize[gaussian,relu=hermite]"
    assert float(fast.diagnostics["mehler_truncation_bound"]) < 1e-3
    np.testing.assert_allclose(np.asarray(fast.value), np.asarray(exact.value), atol=1e-4)
