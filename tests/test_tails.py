"""ppl_mech.tails: saddlepoint/Edgeworth tails, GLD/QLD, and the polynomial methods.

Exact cases first (tight tolerances, float64): tails with closed forms or exact numerical
inversion down to 1e-9, polynomial activations whose surrogate is the network itself,
halfspaces that are independent or two-dimensional. Monte Carlo checks use tolerances
derived from their standard errors, seeded.
"""

import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from scipy import integrate, optimize, stats

from ppl_mech.tails import (
    INCONSISTENT_CUMULANTS,
    NO_SADDLEPOINT,
    affine_cgf,
    argmax_constraints,
    argmax_margin,
    cumulant_series_cgf,
    describe_status,
    edgeworth_tail,
    evaluate_surrogate,
    gamma_cgf,
    gld,
    halfspace_polynomial_probability,
    mlp_polynomial_surrogate,
    mlp_quadratic_form,
    normal_cgf,
    qld,
    qld_polytope,
    quadratic_form_cgf,
    relu_gaussian_cgf,
    saddlepoint_tail,
    saddlepoint_tail_from_cumulants,
    sum_cgf,
    surrogate_cumulants,
)

pytestmark = pytest.mark.usefixtures("x64")

LEVELS = np.array([1e-2, 1e-5, 1e-9])


# ----------------------------------------------------------------------------- references


def _hypoexponential_sf(rates, t):
    """P(sum of independent Exp(rate_i) > t), distinct rates, in 40-digit arithmetic."""
    mpmath.mp.dps = 40
    out = mpmath.mpf(0)
    for i, ri in enumerate(rates):
        w = mpmath.mpf(1)
        for j, rj in enumerate(rates):
            if j != i:
                w *= mpmath.mpf(rj) / (mpmath.mpf(rj) - mpmath.mpf(ri))
        out += w * mpmath.exp(-mpmath.mpf(ri) * t)
    return float(out)


def _bivariate_cdf(h, k, rho):
    """P(X <= h, Y <= k), standard normals with correlation rho, by 1-D quadrature (~1e-12 relative)."""
    sd = math.sqrt(1 - rho * rho)
    val, _ = integrate.quad(lambda x: stats.norm.pdf(x) * stats.norm.cdf((k - rho * x) / sd), -np.inf, h,
                            epsabs=0, epsrel=1e-12, limit=200)
    return val


def _quadratic_form_sf(lam, d, const, t):
    """P(const + sum lam_i z_i^2 + d_i z_i > t) by exact inversion along Re s = saddlepoint.

    ``(1/pi) int_0^inf Re[exp(K(c + iu) - (c + iu) t) / (c + iu)] du`` with c > 0 the real
    saddlepoint (found here by brentq, independently of ppl_mech): no cancellation, so
    the quadrature is relatively accurate however small the probability.
    """
    lam, d = np.asarray(lam, float), np.asarray(d, float)

    def K(s):
        om = 1 - 2 * s * lam
        return const * s + np.sum(-0.5 * np.log(om) + s * s * d * d / (2 * om))

    def K1(s):
        om = 1 - 2 * s * lam
        return const + np.sum(lam / om + s * d * d / om + s * s * d * d * lam / om**2)

    hi = np.min(1 / (2 * lam[lam > 0]))
    c = optimize.brentq(lambda s: K1(s) - t, 1e-12, hi * (1 - 1e-12), xtol=1e-15)
    def f(u):
        return (np.exp(K(c + 1j * u) - (c + 1j * u) * t) / (c + 1j * u)).real / np.pi

    # beyond u = 50 the integrand is oscillating and < 1e-10 of its peak: bound that part by
    # the integral of its modulus (smooth and decreasing) instead of integrating it
    head, err_head = integrate.quad(f, 0, 50, limit=2000, epsabs=0, epsrel=1e-12)
    envelope, _ = integrate.quad(
        lambda u: abs(np.exp(K(c + 1j * u) - (c + 1j * u) * t) / (c + 1j * u)) / np.pi, 50, np.inf
    )
    assert err_head + envelope < 1e-6 * head  # far below the percent-level errors judged
    return head


# ----------------------------------------------------------------------------- saddlepoint, exact CGFs


@pytest.mark.parametrize(
    "shape, scale, err1, err2",
    [(2.0, 2.0, 0.015, 0.002),  # chi-square, 4 degrees of freedom
     (5.0, 1.0, 0.004, 3e-4),  # Erlang
     (0.5, 2.0, 0.08, 0.035)],  # chi-square, 1 degree of freedom: the hardest case
)
def test_saddlepoint_gamma_tails_to_1e9(shape, scale, err1, err2):
    t = stats.gamma.isf(LEVELS, a=shape, scale=scale)
    for order, tol in ((1, err1), (2, err2)):
        r = saddlepoint_tail(t, gamma_cgf(shape, scale), order=order)
        assert np.all(np.asarray(r.status) == 0)
        rel = np.asarray(r.probability) / LEVELS - 1
        assert np.max(np.abs(rel)) < tol, (order, rel)
        p, log_p = np.asarray(r.probability), np.asarray(r.log_probability)
        np.testing.assert_allclose(np.exp(log_p), p, rtol=1e-12)


def test_saddlepoint_lower_tail_and_normal_is_exact():
    t = stats.gamma.ppf(LEVELS, a=5.0)
    r = saddlepoint_tail(t, gamma_cgf(5.0, 1.0), lower=True)
    assert np.max(np.abs(np.asarray(r.probability) / LEVELS - 1)) < 0.01
    assert np.all(np.asarray(r.saddlepoint) < 0)
    tn = 1.5 + 2.0 * stats.norm.isf(LEVELS)
    rn = saddlepoint_tail(tn, normal_cgf(1.5, 4.0))
    np.testing.assert_allclose(np.asarray(rn.probability), LEVELS, rtol=1e-10)
    # affine map of a CGF: P(-2Y + 1 < -2t + 1) = P(Y > t)
    ra = saddlepoint_tail(-2 * t + 1, affine_cgf(gamma_cgf(5.0, 1.0), -2.0, 1.0))
    np.testing.assert_allclose(np.asarray(ra.probability), np.asarray(r.probability), rtol=1e-9)


def test_saddlepoint_hypoexponential_sum_of_exponentials():
    rates = [1.0, 1.7, 2.9]
    cgf = sum_cgf(*[gamma_cgf(1.0, 1.0 / r) for r in rates])
    ts = np.array([4.0, 12.0, 23.0])
    exact = np.array([_hypoexponential_sf(rates, t) for t in ts])
    assert exact[-1] < 1e-9
    r1 = saddlepoint_tail(ts, cgf)
    r2 = saddlepoint_tail(ts, cgf, order=2)
    assert np.max(np.abs(np.asarray(r1.probability) / exact - 1)) < 0.04
    assert np.max(np.abs(np.asarray(r2.probability) / exact - 1)) < 0.01


def test_saddlepoint_quadratic_form_of_gaussians():
    """Noncentral quadratic form of a correlated Gaussian, vs exact contour inversion (to ~1e-10)."""
    rng = np.random.default_rng(3)
    n = 5
    A = rng.standard_normal((n, n))
    A = A @ A.T / n + 0.2 * np.eye(n)
    b = rng.standard_normal(n)
    mean = 0.3 * rng.standard_normal(n)
    M = rng.standard_normal((n, n))
    cov = M @ M.T / n + 0.3 * np.eye(n)
    cgf = quadratic_form_cgf(A, b, 0.7, mean, cov)
    # the same form in eigen-coordinates, for the independent reference
    vals, vecs = np.linalg.eigh(cov)
    F = vecs * np.sqrt(vals)
    lam, Q = np.linalg.eigh(F.T @ A @ F)
    d = Q.T @ F.T @ (b + 2 * A @ mean)
    const = mean @ A @ mean + b @ mean + 0.7
    ts = np.array([30.0, 150.0, 330.0])
    exact = np.array([_quadratic_form_sf(lam, d, const, t) for t in ts])
    assert exact[-1] < 1e-9 < exact[0]
    for order in (1, 2):  # one eigenvalue dominates (chi-square-1-like): 10% / 4%, as for gamma(1/2)
        r = saddlepoint_tail(ts, cgf, order=order)
        assert np.all(np.asarray(r.status) == 0)
        assert np.max(np.abs(np.asarray(r.probability) / exact - 1)) < (0.12 if order == 1 else 0.05)
    # CGF derivatives at 0 are the cumulants: mean and variance of a quadratic form
    k1 = jax.grad(cgf)(0.0)
    k2 = jax.grad(jax.grad(cgf))(0.0)
    np.testing.assert_allclose(k1, np.trace(A @ cov) + mean @ A @ mean + b @ mean + 0.7, rtol=1e-12)
    Ab = b + 2 * A @ mean
    np.testing.assert_allclose(k2, 2 * np.trace(A @ cov @ A @ cov) + Ab @ cov @ Ab, rtol=1e-12)


def test_relu_gaussian_cgf_matches_relu_moments_and_sampling():
    from ppl_mech.rules.relu import relu_moments

    w = jnp.array([0.7, -0.4, 1.2, 0.5])
    mu = jnp.array([0.3, -0.2, 0.0, 1.0])
    sd = jnp.array([1.0, 0.5, 2.0, 0.8])
    cgf = relu_gaussian_cgf(w, mu, sd)
    m, v = relu_moments(mu, sd**2)
    k1, k2 = jax.jit(lambda c: (jax.grad(c)(0.0), jax.grad(jax.grad(c))(0.0)))(cgf)
    np.testing.assert_allclose(k1, jnp.sum(w * m), rtol=1e-12)
    np.testing.assert_allclose(k2, jnp.sum(w * w * v), rtol=1e-10)
    z = mu + sd * jax.random.normal(jax.random.PRNGKey(0), (2**18, 4), jnp.float64)
    y = np.asarray(jax.nn.relu(z) @ w)
    t = np.quantile(y, 1 - 1e-2)
    p_mc = np.mean(y > t)
    r = saddlepoint_tail(t, cgf)
    assert abs(float(r.probability) / p_mc - 1) < 5 * math.sqrt(1 / (p_mc * y.size)) + 0.02


def test_saddlepoint_is_differentiable():
    def logp(shape, t):
        return saddlepoint_tail(t, gamma_cgf(shape, 1.0)).log_probability

    g_shape, g_t = jax.grad(logp, argnums=(0, 1))(4.0, 20.0)
    h = 1e-5
    fd_shape = (logp(4.0 + h, 20.0) - logp(4.0 - h, 20.0)) / (2 * h)
    fd_t = (logp(4.0, 20.0 + h) - logp(4.0, 20.0 - h)) / (2 * h)
    np.testing.assert_allclose(g_shape, fd_shape, rtol=1e-6)
    np.testing.assert_allclose(g_t, fd_t, rtol=1e-6)
    # d/dt log P ~ -(density)/P: exact gamma value within the approximation's accuracy
    exact = -stats.gamma.pdf(20.0, 4.0) / stats.gamma.sf(20.0, 4.0)
    assert abs(float(g_t) / exact - 1) < 0.01


# ----------------------------------------------------------------------------- cumulant series, Edgeworth


def test_cumulant_series_saddlepoint_and_its_flags():
    s_star = math.sqrt(2.0 / 0.5)  # k4 < 0: K' turns over where K''(s*) = 0 ...
    t_max = s_star - 0.5 * s_star**3 / 6  # ... at K'(s*); beyond it there is no saddlepoint
    kg = [2.0, 2.0, 4.0, 12.0]  # gamma(2) cumulants
    cases = [  # (t, cumulants), one batched call (one compilation)
        *[(1.0 + 3.0 * z, [1.0, 9.0, 0.0, 0.0]) for z in stats.norm.isf(LEVELS)],  # Gaussian: exact
        (0.5 * t_max, [0.0, 1.0, 0.0, -0.5]),
        (1.01 * t_max, [0.0, 1.0, 0.0, -0.5]),
        (1.0, [0.0, 1.0, 2.0, 1.0]),  # kurtosis < skewness^2 - 2: no distribution has these
        *[(t, kg) for t in stats.gamma.isf(np.array([1e-2, 1e-5]), a=2.0)],
    ]
    r = saddlepoint_tail_from_cumulants(jnp.array([c[0] for c in cases]), jnp.array([c[1] for c in cases]))
    p, status = np.asarray(r.probability), np.asarray(r.status)
    np.testing.assert_allclose(p[:3], LEVELS, rtol=1e-9)
    assert status[3] == 0 and np.isfinite(p[3])
    assert status[4] & NO_SADDLEPOINT and np.isnan(p[4])
    assert "no real saddlepoint on the convex branch of the CGF" in describe_status(status[4])
    # no saddlepoint: the gradient is NaN too, not a silent zero step for an optimiser
    grad = jax.grad(lambda t: saddlepoint_tail_from_cumulants(
        t[None], jnp.array([[0.0, 1.0, 0.0, -0.5]])).probability[0])(jnp.asarray(1.01 * t_max))
    assert np.isnan(float(grad))
    assert status[5] & INCONSISTENT_CUMULANTS
    # the quartic series of a gamma is close to the exact CGF near the bulk, far off in the tail
    rel = p[6:] / np.array([1e-2, 1e-5]) - 1
    assert abs(rel[0]) < 0.1 and rel[1] < -0.5  # honest: the polynomial CGF misses the tail
    cgf = cumulant_series_cgf(jnp.array(kg))
    x = 0.3
    np.testing.assert_allclose(cgf(x), 2 * x + 2 * x**2 / 2 + 4 * x**3 / 6 + 12 * x**4 / 24, rtol=1e-14)


def test_edgeworth_formula_and_limits():
    w = np.array([-1.0, 0.5, 2.0, 3.0])
    l3, l4 = 0.3, 0.2
    r = edgeworth_tail(w, jnp.array([0.0, 1.0, l3, l4]))
    he2, he3, he5 = w**2 - 1, w**3 - 3 * w, w**5 - 10 * w**3 + 15 * w
    classical = stats.norm.sf(w) + stats.norm.pdf(w) * (l3 / 6 * he2 + l4 / 24 * he3 + l3**2 / 72 * he5)
    np.testing.assert_allclose(np.asarray(r.probability), classical, rtol=1e-12)
    # K = 2 is the Gaussian; lower tail by symmetry
    g = edgeworth_tail(np.array([1.0, 4.0]), jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(np.asarray(g.probability), stats.norm.sf([1.0, 4.0]), rtol=1e-12)
    lo = edgeworth_tail(-w, jnp.array([0.0, 1.0, -l3, l4]), lower=True)
    np.testing.assert_allclose(np.asarray(lo.probability), classical, rtol=1e-12)
    # the relative error in the bulk shrinks like 1/shape for gammas (CLT)
    errs = []
    for shape in (10.0, 100.0):
        t = stats.gamma.isf(1e-3, a=shape)
        e = edgeworth_tail(t, jnp.array([shape, shape, 2 * shape, 6 * shape]))
        errs.append(abs(float(e.probability) / 1e-3 - 1))
    assert errs[1] < errs[0] / 5 and errs[1] < 0.01
    # a negative density / probability is flagged, not hidden
    neg = edgeworth_tail(-2.5, jnp.array([0.0, 1.0, 1.5, 0.0]))
    assert int(neg.status) != 0


def test_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="cumulants"):
        edgeworth_tail(1.0, jnp.array([1.0]))
    with pytest.raises(ValueError, match="order"):
        saddlepoint_tail(1.0, normal_cgf(0.0, 1.0), order=3)
    with pytest.raises(TypeError, match="cgf"):
        saddlepoint_tail(1.0, lambda s: s)
    with pytest.raises(ValueError, match="A must be a square"):
        quadratic_form_cgf(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        halfspace_polynomial_probability(jnp.array([[1.0, 0.0], [0.0, 0.0]]), jnp.zeros(2), jnp.zeros(2),
                                         jnp.eye(2))
    with pytest.raises(ValueError, match="samples"):
        qld_polytope(jnp.ones(5), jnp.ones((1, 5)), jnp.zeros(1))
    with pytest.raises(ValueError, match="w2"):
        mlp_polynomial_surrogate(jnp.ones((3, 4)), None, jnp.ones(5), 0.0, "tanh")


# ----------------------------------------------------------------------------- GLD, QLD


def _gaussian_samples(key, n, mean, cov):
    return jax.random.multivariate_normal(key, jnp.asarray(mean), jnp.asarray(cov), (n,), dtype=jnp.float64)


def test_gld_is_exact_for_a_gaussian_margin():
    rng = np.random.default_rng(0)
    m = 6
    M = rng.standard_normal((m, m))
    cov = M @ M.T / m + 0.2 * np.eye(m)
    mean = 0.3 * rng.standard_normal(m)
    w = rng.standard_normal(m)
    sd = math.sqrt(w @ cov @ w)
    thr = w @ mean + 5.0 * sd  # exact P = Q(5) = 2.9e-7
    exact = stats.norm.sf(5.0)
    zs = []
    for seed in range(4):
        h = _gaussian_samples(jax.random.PRNGKey(seed), 2**14, mean, cov)
        r = jax.jit(gld)(h @ w, thr)
        zs.append((float(r.probability) - exact) / float(r.stderr))
    assert np.all(np.abs(zs) < 4), zs
    logits = jnp.array([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    np.testing.assert_allclose(argmax_margin(logits, 1), [1.0, -5.0])


def test_qld_reduces_to_the_empirical_tail_for_one_halfspace_and_generic_matches_polytope():
    m = 5
    h = jax.random.normal(jax.random.PRNGKey(1), (2048, m), jnp.float64)
    A = jnp.array([[1.0, 0.5, 0.0, 0.0, -0.2]])
    c = jnp.array([-2.5])
    r = qld_polytope(h, A, c)
    # one linear margin depends on a alone: QLD is the empirical fraction of the samples
    np.testing.assert_allclose(float(r.probability), float(jnp.mean(h @ A[0] + c[0] > 0)), rtol=1e-12)
    # the literal n^2 double sum (generic margin) equals the interval/searchsorted version
    A2 = jnp.array([[1.0, 0.3, 0.0, 0.0, 0.0], [0.8, -0.5, 0.2, 0.0, 0.0]])
    c2 = jnp.array([-2.0, -1.8])
    d = jnp.array([0.9, -0.1, 0.1, 0.0, 0.3])
    hs = h[:256]
    poly = qld_polytope(hs, A2, c2, direction=d)
    gen = qld(hs, lambda x: jnp.min(A2 @ x + c2), 0.0, direction=d, chunk=128)
    np.testing.assert_allclose(float(gen.probability), float(poly.probability), rtol=1e-12)
    np.testing.assert_allclose(float(gen.stderr), float(poly.stderr), rtol=1e-9)


def test_qld_on_a_gaussian_polytope_is_unbiased():
    """Two correlated margins at ~3 sigma (P = 4.2e-4): mean over seeds vs the exact 2-D value."""
    m = 8
    theta = 0.6
    A = np.zeros((2, m))
    A[0, 0] = 1.0
    A[1, 0], A[1, 1] = math.cos(theta), math.sin(theta)
    b = np.array([3.0, 3.0])
    exact = _bivariate_cdf(-3.0, -3.0, math.cos(theta))  # P(z0 > 3, cos z0 + sin z1 > 3)
    run = jax.jit(lambda h: qld_polytope(h, A, -b))
    ests = np.array([float(run(jax.random.normal(jax.random.PRNGKey(s), (2**14, m), jnp.float64)).probability)
                     for s in range(8)])
    spread = ests.std(ddof=1) / math.sqrt(len(ests))
    assert abs(ests.mean() - exact) < 3 * spread + 0.05 * exact, (ests / exact, spread / exact)
    # argmax constraints: the polytope is exactly "target wins"
    W = jax.random.normal(jax.random.PRNGKey(2), (m, 4), jnp.float64)
    Ac, cc = argmax_constraints(W, jnp.arange(4.0), 2)
    x = jax.random.normal(jax.random.PRNGKey(3), (1000, m), jnp.float64)
    wins = jnp.argmax(x @ W + jnp.arange(4.0), axis=1) == 2
    np.testing.assert_array_equal(np.asarray(jnp.all(x @ Ac.T + cc > 0, axis=1)), np.asarray(wins))


# ----------------------------------------------------------------------------- halfspace polynomial method


def test_halfspace_polynomial_exact_cases():
    # independent halfspaces: every degree gives the product (presumption of independence is exact)
    s = jnp.array([0.3, -1.0, 2.0])
    r = halfspace_polynomial_probability(jnp.eye(3), s, jnp.zeros(3), jnp.eye(3), degree=2)
    np.testing.assert_allclose(float(r.probability), float(jnp.prod(jax.scipy.stats.norm.cdf(s))), rtol=1e-13)
    assert abs(float(r.change)) < 1e-15 and float(r.independence) == pytest.approx(float(r.probability))
    # two halfspaces: the Mehler series converges to the exact bivariate normal probability
    for rho, lev in ((0.3, -3.5), (0.7, -2.0)):
        cov = jnp.array([[1.0, rho], [rho, 1.0]])
        b = jnp.array([lev, lev])
        exact = _bivariate_cdf(lev, lev, rho)
        est = halfspace_polynomial_probability(jnp.eye(2), b, jnp.zeros(2), cov, degree=20, check=False)
        assert abs(float(est.probability) / exact - 1) < 1e-4


# P(A x <= -1.2), x ~ N(0, I_100), the 10 unit rows of A below: minimax tilting
# (gaussian_polytope_probability, 3 keys x 200000 samples) gives 1.16879e-9 with a
# relative spread of 3e-5 across keys — the stored ground truth (computing it live costs 12 s).
_MINIMAX_REFERENCE = 1.16879e-9


def test_halfspace_polynomial_high_dimension_weak_correlations_vs_minimax_tilting():
    rng = np.random.default_rng(0)
    n, k = 100, 10
    A = rng.standard_normal((k, n))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    b = np.full(k, -1.2)
    est = halfspace_polynomial_probability(A, b, np.zeros(n), np.eye(n), degree=6)
    assert abs(float(est.probability) / _MINIMAX_REFERENCE - 1) < 0.005  # measured: -0.23%
    assert abs(float(est.change)) < 0.01 * float(est.probability)
    assert abs(float(est.independence) / _MINIMAX_REFERENCE - 1) > 0.5  # independence alone is off
    # differentiable in the thresholds: d log P / d b_0 against a finite difference
    f = lambda bb: jnp.log(halfspace_polynomial_probability(A[:3], bb, np.zeros(n), np.eye(n),  # noqa: E731
                                                            degree=3, check=False).probability)
    g = jax.grad(f)(jnp.asarray(b[:3]))
    e0 = jnp.zeros(3).at[0].set(1e-5)
    np.testing.assert_allclose(g[0], (f(b[:3] + e0) - f(b[:3] - e0)) / 2e-5, rtol=1e-6)


# ----------------------------------------------------------------------------- MLP polynomial surrogate


def _exact_moments_2d(y_fn, nodes=40):
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / math.sqrt(2 * math.pi)
    X = np.stack(np.meshgrid(z, z, indexing="ij"), -1).reshape(-1, 2)
    W = np.outer(w, w).reshape(-1)
    y = np.asarray(y_fn(X))
    m = W @ y
    yc = y - m
    m2, m3, m4 = W @ yc**2, W @ yc**3, W @ yc**4
    return np.array([m, m2, m3, m4 - 3 * m2**2])


def test_surrogate_cumulants_exact_for_polynomial_activations():
    rng = np.random.default_rng(0)
    # square activation: the output is a quadratic form; its exact CGF gives the cumulants
    n, H = 5, 7
    w1 = rng.standard_normal((n, H)) / 2
    b1 = 0.3 * rng.standard_normal(H)
    w2 = rng.standard_normal(H)
    mu = 0.2 * rng.standard_normal(n)
    M = rng.standard_normal((n, n))
    cov = M @ M.T / n + 0.1 * np.eye(n)
    sur = mlp_polynomial_surrogate(w1, b1, w2, 0.4, "square", mu, cov, degree=3)
    k = np.asarray(surrogate_cumulants(sur))
    cgf = quadratic_form_cgf((w1 * w2) @ w1.T, 2 * w1 @ (w2 * b1), 0.4 + np.sum(w2 * b1**2), mu, cov)
    f, exact = cgf, []
    for _ in range(4):
        f = jax.grad(f)
        exact.append(float(f(0.0)))
    np.testing.assert_allclose(k, exact, rtol=1e-12)
    q = mlp_quadratic_form(sur)  # the degree-2 part is the whole network here
    np.testing.assert_allclose(jax.grad(jax.grad(q))(0.0), exact[1], rtol=1e-12)
    # cube activation (degree-3 output in 2 inputs): cumulants vs exact tensor Gauss-Hermite
    w1 = rng.standard_normal((2, 6))
    b1 = 0.3 * rng.standard_normal(6)
    w2 = rng.standard_normal(6)
    sur = mlp_polynomial_surrogate(w1, b1, w2, 0.1, "cube", degree=3)
    exact = _exact_moments_2d(lambda X: (X @ w1 + b1) ** 3 @ w2 + 0.1)
    np.testing.assert_allclose(np.asarray(surrogate_cumulants(sur)), exact, rtol=1e-11)
    X = rng.standard_normal((50, 2))
    np.testing.assert_allclose(evaluate_surrogate(sur, X), (X @ w1 + b1) ** 3 @ w2 + 0.1, rtol=1e-9)
    # tanh: the surrogate's own cumulants, exact (degree 5 surrogate: output degree 5, 40^2 nodes exact)
    sur = mlp_polynomial_surrogate(w1, b1, w2, 0.1, "tanh", degree=5)
    exact = _exact_moments_2d(lambda X: evaluate_surrogate(sur, X))
    np.testing.assert_allclose(np.asarray(surrogate_cumulants(sur)), exact, rtol=1e-10)


@pytest.fixture(scope="module")
def trained_mlp_samples():
    from ppl_mech.models import get_model

    with jax.enable_x64(True):
        model = get_model("trained-mlp")
        w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in model.args[:4])
        x = jax.random.normal(jax.random.PRNGKey(7), (2**19, w1.shape[0]), jnp.float64)
        y = np.asarray(jnp.tanh(x @ w1 + b1) @ w2 + b2)
    return (w1, b1, w2, b2), y, model.exact["output"]


def test_surrogate_on_the_trained_mlp_vs_monte_carlo(trained_mlp_samples):
    (w1, b1, w2, b2), y, exact_mean = trained_mlp_samples
    sur = mlp_polynomial_surrogate(w1, b1, w2, b2, "tanh", degree=7)
    k = np.asarray(surrogate_cumulants(sur, order=3))
    n = y.size
    yc = y - y.mean()
    np.testing.assert_allclose(k[0], exact_mean, atol=1e-6)  # the mean is exact at any degree
    var_se = np.std(yc**2) / math.sqrt(n)
    assert abs(k[1] - np.mean(yc**2)) < 4 * var_se + float(np.sum(sur.truncation_variance * w2**2))
    k3_se = np.std(yc**3) / math.sqrt(n)
    assert abs(k[2] - np.mean(yc**3)) < 4 * k3_se + 0.02
    # tail at ~1e-2 from three cumulants (saddlepoint), against the samples
    t = np.quantile(y, 1 - 1e-2)
    p = float(saddlepoint_tail_from_cumulants(t, jnp.asarray(k)).probability)
    assert abs(p / 1e-2 - 1) < 0.15
