"""Gaussian polytope / orthant / union probabilities: exact cases tight, tilting within standard errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import log_ndtr

from ppl_mech._gaussian_polytope import (
    gaussian_orthant_probability,
    gaussian_polytope_probability,
    gaussian_union_probability,
)
from ppl_mech._minimax_tilting import log_normal_interval, truncated_normal_icdf


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _log_quad(log_f, lo, hi, points=()):
    """log of int_lo^hi exp(log_f), robust for tiny values: peak-normalised adaptive quad."""
    grid = np.linspace(max(lo, -60.0), min(hi, 60.0), 20001)
    vals = log_f(grid)
    top, t0 = float(np.max(vals)), float(grid[np.argmax(vals)])
    cuts = [lo, *sorted(p for p in {t0, *points} if lo < p < hi), hi]
    total = sum(
        integrate.quad(lambda t: np.exp(log_f(t) - top), a, b, epsabs=0.0, epsrel=1e-12, limit=500)[0]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    )
    return math.log(total) + top


def ref_log_cdf2(h, k, rho):
    """log P(z1 <= h, z2 <= k), standard bivariate normal: 1-D quadrature of phi(t) Phi(...)."""
    s = math.sqrt(1 - rho * rho)

    def log_f(t):
        return stats.norm.logpdf(t) + log_ndtr((k - rho * np.asarray(t)) / s)

    return _log_quad(log_f, -np.inf, h)


def ref_log_equicorrelated_upper(d, a, rho):
    """log P(z_i >= a for all i), z ~ N(0, (1-rho) I + rho 11^T), d-dimensional."""

    def log_f(w):
        w = np.asarray(w)
        return stats.norm.logpdf(w) + d * log_ndtr(-(a - math.sqrt(rho) * w) / math.sqrt(1 - rho))

    return _log_quad(log_f, -np.inf, np.inf)


# ---------------------------------------------------------------- exact 1-D


@pytest.mark.parametrize("a", [-1.0, 0.0, 2.5, 5.0, 7.0, 30.0])
def test_exact_1d_matches_scipy(a):
    A = jnp.array([[2.0, -1.0]])
    mean = jnp.array([0.3, -0.2])
    cov = jnp.array([[1.0, 0.3], [0.3, 2.0]])
    sd = math.sqrt(float(A[0] @ cov @ A[0]))
    b = jnp.array([float(A[0] @ mean) - a * sd])
    r = gaussian_polytope_probability(A, b, mean, cov)
    assert r.method == "exact-1d" and float(r.stderr) == 0.0
    ref = float(log_ndtr(-a))
    assert abs(float(r.log_probability) - ref) <= 1e-10 * abs(ref) + 1e-13
    if ref > -700:
        np.testing.assert_allclose(float(r.probability), math.exp(ref), rtol=1e-9)


def test_log_normal_interval_tails_and_empty():
    refs = {
        (5.0, 6.0): math.log(stats.norm.sf(5.0) - stats.norm.sf(6.0)),
        (-6.0, -5.0): math.log(stats.norm.sf(5.0) - stats.norm.sf(6.0)),
        (-1.0, 2.0): math.log(stats.norm.cdf(2.0) - stats.norm.cdf(-1.0)),
        (38.0, np.inf): float(log_ndtr(-38.0)),
        (-np.inf, -38.0): float(log_ndtr(-38.0)),
    }
    for (lo, hi), ref in refs.items():
        assert abs(float(log_normal_interval(lo, hi)) - ref) < 1e-10 * abs(ref)
    assert float(log_normal_interval(3.0, 3.0)) == -np.inf
    assert float(log_normal_interval(4.0, 3.0)) == -np.inf
    g = jax.grad(log_normal_interval, argnums=(0, 1))(30.0, jnp.inf)
    assert np.all(np.isfinite(np.asarray(g)))


def test_truncated_normal_icdf_far_tail():
    for lo, hi in [(30.0, np.inf), (-np.inf, -40.0), (5.0, 5.1), (-3.0, 9.0)]:
        for v in [0.1, 0.5, 0.9]:
            x = float(truncated_normal_icdf(v, lo, hi))
            frac = math.exp(float(log_normal_interval(lo, x) - log_normal_interval(lo, hi)))
            assert abs(frac - v) < 1e-9


# ---------------------------------------------------------------- exact 2-D


@pytest.mark.parametrize("rho", [-0.999, -0.9, -0.5, 0.0, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("h,k", [(-5.0, -5.0), (-6.5, -2.0), (-3.0, 4.0), (2.0, 2.0), (-1.0, -6.0)])
def test_exact_2d_cdf(h, k, rho):
    ref = ref_log_cdf2(h, k, rho)
    cov = jnp.array([[4.0, 2.0 * 3.0 * rho], [2.0 * 3.0 * rho, 9.0]])
    mean = jnp.array([1.0, -2.0])
    lower = jnp.full(2, -jnp.inf)
    upper = mean + jnp.array([2.0 * h, 3.0 * k])
    r = gaussian_orthant_probability(lower, upper, mean, cov)
    assert r.method == "exact-2d"
    assert abs(math.expm1(float(r.log_probability) - ref)) < 1e-7


def test_exact_2d_closed_forms():
    for rho in [-0.7, 0.0, 0.3, 0.95]:
        cov = jnp.array([[1.0, rho], [rho, 1.0]])
        r = gaussian_orthant_probability(jnp.zeros(2), jnp.full(2, jnp.inf), jnp.zeros(2), cov)
        np.testing.assert_allclose(float(r.probability), 0.25 + math.asin(rho) / (2 * math.pi), rtol=1e-10)
    # a two-sided box with rho = 0 factorises
    lo, hi = jnp.array([-1.0, 4.0]), jnp.array([0.5, 4.5])
    r = gaussian_orthant_probability(lo, hi, jnp.zeros(2), jnp.eye(2))
    ref = (stats.norm.cdf(0.5) - stats.norm.cdf(-1.0)) * (stats.norm.sf(4.0) - stats.norm.sf(4.5))
    np.testing.assert_allclose(float(r.probability), ref, rtol=1e-9)
    # general two-sided box vs scipy's Genz routine (moderate probability)
    cov = jnp.array([[1.0, 0.6], [0.6, 2.0]])
    lo, hi, mean = jnp.array([-0.5, -1.0]), jnp.array([1.5, 2.0]), jnp.array([0.2, 0.1])
    r = gaussian_orthant_probability(lo, hi, mean, cov)
    ref = stats.multivariate_normal(np.asarray(mean), np.asarray(cov)).cdf(
        np.asarray(hi), lower_limit=np.asarray(lo)
    )
    np.testing.assert_allclose(float(r.probability), ref, rtol=1e-5)


def test_exact_2d_far_tail_and_degenerate():
    # P ~ 1e-300: log space stays finite and matches the reference
    r = gaussian_orthant_probability(
        jnp.full(2, -jnp.inf), jnp.array([-26.0, -3.0]), jnp.zeros(2), jnp.array([[1.0, 0.4], [0.4, 1.0]])
    )
    ref = ref_log_cdf2(-26.0, -3.0, 0.4)
    assert abs(float(r.log_probability) - ref) < 1e-8 * abs(ref)
    # perfectly correlated: the intersection of the two intervals
    cov = jnp.ones((2, 2))
    r = gaussian_orthant_probability(jnp.full(2, -jnp.inf), jnp.array([-3.0, -4.0]), jnp.zeros(2), cov)
    np.testing.assert_allclose(float(r.probability), stats.norm.cdf(-4.0), rtol=1e-9)
    # a zero-variance coordinate is an indicator
    cov = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    r = gaussian_orthant_probability(jnp.array([2.0, -1.0]), jnp.array([jnp.inf, 1.0]), jnp.zeros(2), cov)
    np.testing.assert_allclose(float(r.probability), stats.norm.sf(2.0), rtol=1e-10)


def test_exact_gradients_match_finite_differences():
    cov = jnp.array([[1.0, 0.35], [0.35, 1.5]])
    mean = jnp.array([0.1, -0.3])
    upper = jnp.array([-2.5, -1.0])
    lower = jnp.full(2, -jnp.inf)

    def f(upper, mean, cov):
        return gaussian_orthant_probability(lower, upper, mean, cov).log_probability

    grads = jax.grad(f, argnums=(0, 1, 2))(upper, mean, cov)
    eps = 1e-6
    for i, arg in enumerate((upper, mean, cov)):
        flat = np.asarray(arg).ravel()
        for j in range(flat.size):
            e = np.zeros_like(flat)
            e[j] = eps
            if i == 2:  # keep cov symmetric: perturb the pair, compare with the pair's gradient
                e = (e.reshape(2, 2) + e.reshape(2, 2).T).ravel() / (2 if j in (1, 2) else 1)
            args = [upper, mean, cov]
            args[i] = jnp.asarray((flat + e).reshape(arg.shape))
            hi = float(f(*args))
            args[i] = jnp.asarray((flat - e).reshape(arg.shape))
            lo = float(f(*args))
            fd = (hi - lo) / (2 * eps)
            an = float(np.sum(np.asarray(grads[i]).ravel() * e) / eps)
            assert abs(fd - an) < 1e-6 * max(1.0, abs(fd)), (i, j, fd, an)

    # 1-D polytope gradient w.r.t. b
    A = jnp.array([[1.0, 2.0]])
    g = jax.grad(lambda b: gaussian_polytope_probability(A, b, mean, cov).probability)(jnp.array([-4.0]))
    sd = math.sqrt(float(A[0] @ cov @ A[0]))
    t = (-4.0 - float(A[0] @ mean)) / sd
    np.testing.assert_allclose(float(g[0]), stats.norm.pdf(t) / sd, rtol=1e-9)


# ---------------------------------------------------------------- minimax tilting


def test_tilting_independent_is_exact_product():
    a = jnp.array([2.0, 3.0, 4.0, 5.0])
    r = gaussian_orthant_probability(
        a, jnp.full(4, jnp.inf), jnp.zeros(4), jnp.eye(4), key=jax.random.PRNGKey(0)
    )
    assert r.method == "minimax-tilting"
    ref = float(np.sum(log_ndtr(-np.asarray(a))))
    assert abs(float(r.log_probability) - ref) < 1e-10 * abs(ref)
    assert float(r.stderr) <= 1e-10 * float(r.probability)


def _equicorrelated(d, rho):
    return (1 - rho) * jnp.eye(d) + rho * jnp.ones((d, d))


@pytest.mark.parametrize("d,a,rho", [(3, 1.0, 0.5), (4, 3.0, 0.3), (10, 2.0, 0.5)])
def test_tilting_equicorrelated_within_stderr(d, a, rho):
    ref = ref_log_equicorrelated_upper(d, a, rho)
    cov = _equicorrelated(d, rho)
    zs = []
    for seed in range(4):
        r = gaussian_orthant_probability(
            jnp.full(d, a), jnp.full(d, jnp.inf), jnp.zeros(d), cov, key=jax.random.PRNGKey(seed)
        )
        zs.append((float(r.probability) - math.exp(ref)) / float(r.stderr))
        assert float(r.stderr) < 0.02 * float(r.probability)
    assert max(abs(z) for z in zs) < 4.0, zs
    if d == 3:  # scipy's Genz routine agrees at this moderate probability
        genz = stats.multivariate_normal(np.zeros(d), np.asarray(cov)).cdf(-np.full(d, a))
        np.testing.assert_allclose(genz, math.exp(ref), rtol=2e-3)  # Genz: abseps 1e-5


def test_tilting_stderr_coverage():
    # the standard error is honest: ~95% of 40 seeds within 2 s.e. (t with 15 d.o.f.)
    d, a, rho = 4, 2.0, 0.6
    ref = math.exp(ref_log_equicorrelated_upper(d, a, rho))
    cov = _equicorrelated(d, rho)
    z = []
    for seed in range(40):
        r = gaussian_orthant_probability(
            jnp.full(d, a), jnp.full(d, jnp.inf), jnp.zeros(d), cov, key=jax.random.PRNGKey(100 + seed)
        )
        z.append((float(r.probability) - ref) / float(r.stderr))
    z = np.asarray(z)
    assert np.mean(np.abs(z) < 2.0) > 0.8, z
    assert abs(np.mean(z)) < 0.6, z


def test_tilting_rank_deficient_duplicates_and_m_greater_than_n():
    mean = jnp.zeros(2)
    cov = jnp.array([[1.0, 0.3], [0.3, 1.0]])
    key = jax.random.PRNGKey(0)
    # duplicated and scaled-duplicate rows: same set as the 2-D problem
    A2 = jnp.array([[-1.0, 0.0], [0.0, -1.0]])
    b2 = jnp.array([-2.0, -2.5])
    exact = gaussian_polytope_probability(A2, b2, mean, cov)
    A4 = jnp.concatenate([A2, 3.0 * A2[:1], A2[1:]])
    b4 = jnp.concatenate([b2, 3.0 * b2[:1] + 0.5, b2[1:]])
    r = gaussian_polytope_probability(A4, b4, mean, cov, key=key)
    assert abs(float(r.probability) - float(exact.probability)) < 4 * float(r.stderr)
    assert float(r.stderr) < 1e-3 * float(r.probability)
    # m = 3 > n = 2 with a binding third constraint: x1 >= 1, x2 >= 1, x1 + x2 >= 3.5 (iid)
    A3 = jnp.array([[-1.0, 0.0], [0.0, -1.0], [-1.0, -1.0], [-1.0, 0.0]])
    b3 = jnp.array([-1.0, -1.0, -3.5, -0.5])  # the last row is redundant

    def log_f(t):
        t = np.asarray(t)
        return stats.norm.logpdf(t) + log_ndtr(-np.maximum(1.0, 3.5 - t))

    ref = math.exp(_log_quad(log_f, 1.0, 40.0, points=(2.5,)))
    vals = [
        gaussian_polytope_probability(A3, b3, mean, jnp.eye(2), key=jax.random.PRNGKey(s)) for s in range(3)
    ]
    for v in vals:
        assert abs(float(v.probability) - ref) < 4 * float(v.stderr) + 1e-12 * ref
        assert float(v.stderr) < 0.05 * ref


def test_tilting_singular_covariance():
    # rank-1 covariance: x = s v, s ~ N(0, 1): three constraints on one latent variable
    v = jnp.array([1.0, 2.0, -1.0])
    cov = jnp.outer(v, v)
    A = jnp.eye(3)
    b = jnp.array([-3.0, -5.0, 10.0])  # s <= -3, s <= -2.5, -s <= 10  ->  -10 <= s <= -3
    r = gaussian_polytope_probability(A, b, jnp.zeros(3), cov, key=jax.random.PRNGKey(0))
    ref = stats.norm.cdf(-3.0) - stats.norm.cdf(-10.0)
    np.testing.assert_allclose(float(r.probability), ref, rtol=1e-10)
    # an infeasible constant row (zero variance) gives exactly 0
    A = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    r = gaussian_polytope_probability(
        A, jnp.array([0.0, -1.0, 0.0]), jnp.zeros(3), jnp.eye(3), key=jax.random.PRNGKey(0)
    )
    assert float(r.probability) == 0.0


@pytest.mark.slow  # ~20 s: compiling reverse mode through the sampler
def test_tilting_gradient_matches_common_random_numbers_fd():
    d = 4
    key = jax.random.PRNGKey(3)

    @jax.jit
    def f(A, b, mean, cov):
        return gaussian_polytope_probability(A, b, mean, cov, key=key).log_probability

    grad_f = jax.jit(jax.grad(f, argnums=(1, 2, 3)))
    A = jnp.eye(d) - 0.2
    cov = _equicorrelated(d, 0.4) + 0.1 * jnp.diag(jnp.arange(d, dtype=jnp.float64))
    b, mean = jnp.full(d, -1.5), jnp.linspace(0.0, 0.3, d)
    grads = grad_f(A, b, mean, cov)
    eps = 1e-5
    for i, arg in enumerate((b, mean)):
        for j in range(d):
            e = jnp.zeros(d).at[j].set(eps)
            hi, lo = [A, b, mean, cov], [A, b, mean, cov]
            hi[i + 1], lo[i + 1] = arg + e, arg - e
            fd = (float(f(*hi)) - float(f(*lo))) / (2 * eps)
            assert abs(fd - float(grads[i][j])) < 1e-4 * max(1.0, abs(fd)), (i, j, fd, grads[i][j])
    E = jnp.zeros((d, d)).at[0, 1].set(1.0).at[1, 0].set(1.0)  # symmetric covariance direction
    fd = (float(f(A, b, mean, cov + eps * E)) - float(f(A, b, mean, cov - eps * E))) / (2 * eps)
    assert abs(fd - float(jnp.sum(grads[2] * E))) < 1e-4 * max(1.0, abs(fd))
    # independent coordinates: tilting is exact, and so is its gradient
    b = jnp.array([-2.0, -3.0, -1.0, 0.5])
    g = grad_f(jnp.eye(d), b, jnp.zeros(d), jnp.eye(d))[0]
    exact = stats.norm.pdf(np.asarray(b)) / stats.norm.cdf(np.asarray(b))
    np.testing.assert_allclose(np.asarray(g), exact, rtol=1e-8)


def test_float32_tilting_and_exact():
    with jax.enable_x64(False):
        d = 4
        cov = jnp.asarray(_equicorrelated(d, 0.3), jnp.float32)
        r = gaussian_orthant_probability(
            jnp.full(d, 3.0, jnp.float32),
            jnp.full(d, jnp.inf, jnp.float32),
            jnp.zeros(d, jnp.float32),
            cov,
            key=jax.random.PRNGKey(0),
        )
        assert r.log_probability.dtype == jnp.float32
        ref = ref_log_equicorrelated_upper(d, 3.0, 0.3)
        assert abs(float(r.probability) - math.exp(ref)) < 4 * float(r.stderr) + 1e-4 * math.exp(ref)
        r2 = gaussian_orthant_probability(
            jnp.full(2, -jnp.inf, jnp.float32),
            jnp.array([-5.0, -5.0], jnp.float32),
            jnp.zeros(2, jnp.float32),
            jnp.array([[1.0, 0.5], [0.5, 1.0]], jnp.float32),
        )
        assert abs(float(r2.log_probability) - ref_log_cdf2(-5.0, -5.0, 0.5)) < 1e-4 * 30


def test_jit_matches_eager():
    cov = _equicorrelated(4, 0.2)
    args = (jnp.full(4, 1.0), jnp.full(4, jnp.inf), jnp.zeros(4), cov)
    key = jax.random.PRNGKey(0)
    eager = gaussian_orthant_probability(*args, key=key)
    jitted = jax.jit(lambda *a: gaussian_orthant_probability(*a, key=key))(*args)
    assert jitted.method == eager.method == "minimax-tilting"
    np.testing.assert_allclose(float(jitted.probability), float(eager.probability), rtol=1e-10)


# ---------------------------------------------------------------- validation


def test_validation_errors():
    with pytest.raises(ValueError, match="positive semi-definite"):
        gaussian_polytope_probability(
            jnp.eye(2), jnp.zeros(2), jnp.zeros(2), jnp.array([[1.0, 2.0], [2.0, 1.0]])
        )
    with pytest.raises(ValueError, match="shape"):
        gaussian_polytope_probability(jnp.eye(2), jnp.zeros(3), jnp.zeros(2), jnp.eye(2))
    with pytest.raises(ValueError, match="shape"):
        gaussian_polytope_probability(jnp.eye(3)[:, :2], jnp.zeros(3), jnp.zeros(3), jnp.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        gaussian_orthant_probability(
            jnp.zeros(2), jnp.ones(2), jnp.zeros(2), jnp.array([[1.0, 0.1], [0.0, 1.0]])
        )
    with pytest.raises(ValueError, match="key"):
        gaussian_polytope_probability(jnp.eye(3), jnp.zeros(3), jnp.zeros(3), jnp.eye(3))


# ---------------------------------------------------------------- unions


def test_union_of_overlapping_orthants():
    # {x1 >= a, x2 >= a} U {x2 >= a, x3 >= a}, iid: P = 2 Q(a)^2 - Q(a)^3
    a = 2.5
    q = stats.norm.sf(a)
    ref = 2 * q * q - q**3
    A1 = -jnp.eye(3)[:2]
    A2 = -jnp.eye(3)[1:]
    b = jnp.full(2, -a)
    r = gaussian_union_probability([(A1, b), (A2, b)], jnp.zeros(3), jnp.eye(3), key=jax.random.PRNGKey(0))
    assert r.method == "mixture-tilting"
    assert abs(float(r.probability) - ref) < 4 * float(r.stderr)
    assert float(r.stderr) < 0.05 * ref
    # a union with itself is the polytope
    r1 = gaussian_union_probability([(A1, b), (A1, b)], jnp.zeros(3), jnp.eye(3), key=jax.random.PRNGKey(1))
    np.testing.assert_allclose(float(r1.probability), q * q, rtol=1e-8)


def test_union_of_polytopes_with_different_face_counts():
    """Polytopes are grouped by face count and vmapped; the strata must still line up with their
    own proposals. {x1 > a} U {x2 > a, x3 > a} U {x4 > a}, iid: 1 - (1 - q)^2 (1 - q^2)."""
    a = 2.0
    q = stats.norm.sf(a)
    ref = 1 - (1 - q) ** 2 * (1 - q * q)
    eye = jnp.eye(4)
    polys = [(-eye[:1], jnp.full(1, -a)), (-eye[1:3], jnp.full(2, -a)), (-eye[3:], jnp.full(1, -a))]
    r = gaussian_union_probability(polys, jnp.zeros(4), eye, key=jax.random.PRNGKey(2))
    assert abs(float(r.probability) - ref) < 4 * float(r.stderr)
    assert float(r.stderr) < 0.03 * ref
