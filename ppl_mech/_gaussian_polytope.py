"""Probabilities of Gaussian polytopes, orthants and unions of polytopes.

The detector algebra reduces "and" of halfspace tests on a Gaussian message
to P(A x <= b), x ~ N(mean, cov); this module computes it:

* one constraint: the exact normal tail (``log_ndtr``), method ``"exact-1d"``;
* two constraints: exact bivariate normal probability, ``"exact-2d"`` —
  a Gauss-Legendre quadrature of phi(t) P(z2 in I | z1 = t) in log space,
  in the coordinates of the truncated normal of the more restrictive
  variable, split where the conditional probability changes fastest;
* three or more: Botev's (2017) minimax tilting, ``"minimax-tilting"``
  (see :mod:`ppl_mech._minimax_tilting`), which needs a ``key``.

Unions (``gaussian_union_probability``) use multiple importance sampling
over the polytopes' tilted proposals with the balance heuristic.

Everything is jit-able and differentiable in ``b``/``lower``/``upper``,
``mean`` and ``cov``; the method is chosen from static shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._minimax_tilting import (
    bound_div,
    log_normal_interval,
    minimax_tilting,
    proposal_log_ratio,
    solve_tilting,
    summarize_log_weights,
    tilted_log_weights,
    tilting_plan,
)


class PolytopeProbability(NamedTuple):
    """A Gaussian polytope/orthant/union probability and how sure we are of it."""

    probability: jax.Array  # estimate of P
    log_probability: jax.Array  # log of the estimate; finite even when P underflows
    stderr: jax.Array  # standard error of ``probability`` (0 for exact formulas)
    method: str  # "exact-1d", "exact-2d", "minimax-tilting", "mixture-tilting" (static)


# ``method`` is static pytree metadata, so a PolytopeProbability can leave ``jax.jit``.
jax.tree_util.register_pytree_node(
    PolytopeProbability,
    lambda r: ((r.probability, r.log_probability, r.stderr), r.method),
    lambda method, children: PolytopeProbability(*children, method),
)


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _float_dtype(*xs):
    dtype = jnp.result_type(*xs)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.zeros((), float).dtype  # default float (float32 unless x64)
    return dtype


def _check_cov(cov, n: int, name: str = "cov") -> None:
    if cov.ndim != 2 or cov.shape != (n, n):
        raise ValueError(f"{name} must have shape ({n}, {n}); got {cov.shape}")
    if _is_concrete(cov):
        c = np.asarray(cov, dtype=np.float64)
        if not np.all(np.isfinite(c)):
            raise ValueError(f"{name} has non-finite entries")
        scale = max(float(np.max(np.abs(c))), np.finfo(np.float64).tiny)
        eps = float(jnp.finfo(cov.dtype).eps)
        if np.max(np.abs(c - c.T)) > 100 * eps * scale:
            raise ValueError(f"{name} is not symmetric")
        eig_min = float(np.linalg.eigvalsh(0.5 * (c + c.T))[0]) if n else 0.0
        if eig_min < -1e3 * n * eps * scale:
            raise ValueError(f"{name} is not positive semi-definite (smallest eigenvalue {eig_min:.3g})")


def _validate_orthant(lower, upper, mean, cov):
    dtype = _float_dtype(lower, upper, mean, cov)
    lower, upper, mean, cov = (jnp.asarray(a, dtype) for a in (lower, upper, mean, cov))
    if mean.ndim != 1:
        raise ValueError(f"mean must be a vector; got shape {mean.shape}")
    m = mean.shape[0]
    for name, a in (("lower", lower), ("upper", upper)):
        if a.shape != (m,):
            raise ValueError(f"{name} must have shape ({m},) like mean; got {a.shape}")
    _check_cov(cov, m)
    if _is_concrete(lower, upper) and np.any(np.isnan(np.asarray(lower)) | np.isnan(np.asarray(upper))):
        raise ValueError("lower/upper contain NaN")
    return lower, upper, mean, cov


# --------------------------------------------------------------------------
# Exact 1-D and 2-D
# --------------------------------------------------------------------------


def _exact(log_p, method: str) -> PolytopeProbability:
    return PolytopeProbability(jnp.exp(log_p), log_p, jnp.zeros_like(log_p), method)


def _log_interval_1d(lower, upper, mean, var):
    """log P(lower <= N(mean, var) <= upper); var may be 0 (an indicator)."""
    tiny = jnp.finfo(var.dtype).tiny
    positive = var > tiny
    sd = jnp.sqrt(jnp.where(positive, var, 1.0))
    log_p = log_normal_interval(bound_div(lower - mean, sd), bound_div(upper - mean, sd))
    point = jnp.where((lower <= mean) & (mean <= upper), 0.0, -jnp.inf)
    return jnp.where(positive, log_p, point)


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(48)
_LEVEL_DROP = {4: 24.0, 8: 45.0}  # log-density drop (by float size) beyond which mass is dropped
_SEARCH_RADIUS = 60.0  # |outer coordinate| searched when unbounded: log phi(60) ~ -1800


def _log_box_2d(l1, u1, l2, u2, rho):
    """log P(l1<=z1<=u1, l2<=z2<=u2), (z1, z2) standard bivariate normal with correlation rho.

    Rotate to independent coordinates a = (z1+z2)/sqrt(2(1+rho)), b = (z1-z2)/sqrt(2(1-rho))
    and integrate over the one whose coefficients are small (b if rho >= 0, else a):
    P = int phi(t) P(inner in I(t)) dt, where I(t) is the intersection of the two
    constraints' intervals for the inner coordinate (coefficient >= 1/sqrt 2, so
    well conditioned, and exact via log_ndtr). The integrand is log-concave
    (Prekopa) and analytic between the four points where the intersection's
    active bounds switch; we find its mode and the range where it is within
    e^-45 of the mode (golden-section/bisection, stop_gradient: the integral
    does not depend on them to quadrature accuracy), split there and at the
    switch points, and apply 48-point Gauss-Legendre per panel in log space.
    Relative accuracy ~1e-10 in float64, at any |rho| <= 1 and far into the tails.
    """
    dtype = jnp.result_type(l1, u1, l2, u2, rho)
    drop = _LEVEL_DROP.get(jnp.dtype(dtype).itemsize, 45.0)
    rho = jnp.clip(rho, -1.0, 1.0)
    tiny = jnp.finfo(dtype).tiny  # |rho| = 1: c = 0 with a finite (zero) derivative, not inf * 0
    c = jnp.sqrt(jnp.maximum((1.0 - jnp.abs(rho)) / 2.0, tiny))  # small coefficient, outer coordinate
    d = jnp.sqrt((1.0 + jnp.abs(rho)) / 2.0)  # large coefficient (>= 1/sqrt 2), inner
    # z1 = d*inner + c*outer ; z2 = sign(rho)*(d*inner - c*outer) for rho >= 0 rotated;
    # for rho < 0 flip z2 -> -z2 (bounds swap and negate), which makes rho positive.
    neg = rho < 0
    l2, u2 = jnp.where(neg, -u2, l2), jnp.where(neg, -l2, u2)
    beta1, beta2 = c, -c

    def inner_bounds(t):
        lo = jnp.maximum(bound_div(l1 - beta1 * t, d), bound_div(l2 - beta2 * t, d))
        hi = jnp.minimum(bound_div(u1 - beta1 * t, d), bound_div(u2 - beta2 * t, d))
        return lo, hi

    def log_f(t):
        lo, hi = inner_bounds(t)
        return -0.5 * t * t + log_normal_interval(lo, hi)

    # where the active bounds switch or the interval empties: linear in t
    delta = beta1 - beta2  # = 2c >= 0
    safe_delta = jnp.where(delta > 0, delta, 1.0)
    switch = jnp.stack([l1 - l2, u1 - u2, l1 - u2, u1 - l2]) / safe_delta
    switch = jnp.where((delta > 0) & jnp.isfinite(switch), switch, jnp.nan)
    # support in t: (u1 - l2)/delta >= t >= (l1 - u2)/delta  (interval non-empty)
    t_min = jnp.where(delta > 0, (l1 - u2) / safe_delta, -jnp.inf)
    t_max = jnp.where(delta > 0, (u1 - l2) / safe_delta, jnp.inf)
    t_min = jnp.where(jnp.isnan(t_min), -jnp.inf, t_min)
    t_max = jnp.where(jnp.isnan(t_max), jnp.inf, t_max)
    r = _SEARCH_RADIUS
    lo = jnp.where(jnp.isfinite(t_min), t_min, jnp.minimum(t_max, 0.0) - r)
    hi = jnp.where(jnp.isfinite(t_max), t_max, jnp.maximum(t_min, 0.0) + r)
    lo, hi = jax.lax.stop_gradient((lo, hi))
    stopped_log_f = lambda t: log_f(jax.lax.stop_gradient(t))  # noqa: E731

    # golden-section search for the mode of the (unimodal) integrand
    g = (math.sqrt(5.0) - 1.0) / 2.0

    def golden(_, ab):
        a, b = ab
        x1 = b - g * (b - a)
        x2 = a + g * (b - a)
        left = jax.lax.stop_gradient(stopped_log_f(x1) >= stopped_log_f(x2))
        return jnp.where(left, a, x1), jnp.where(left, x2, b)

    a, b = jax.lax.fori_loop(0, 90, golden, (lo, hi))
    mode = jax.lax.stop_gradient(0.5 * (a + b))
    peak = jax.lax.stop_gradient(
        jnp.maximum(stopped_log_f(mode), jnp.maximum(stopped_log_f(lo), stopped_log_f(hi)))
    )
    level = peak - drop

    def level_point(inside, outside):
        # bisection between a point above the level and one below it
        def body(_, io):
            i, o = io
            mid = 0.5 * (i + o)
            above = stopped_log_f(mid) >= level
            return jnp.where(above, mid, i), jnp.where(above, o, mid)

        i, o = jax.lax.fori_loop(0, 70, body, (inside, outside))
        return jnp.where(stopped_log_f(outside) >= level, outside, o)

    left = jax.lax.stop_gradient(level_point(mode, lo))
    right = jax.lax.stop_gradient(level_point(mode, hi))
    inner_edges = jnp.clip(jnp.where(jnp.isnan(switch), left, switch), left, right)
    edges = jnp.sort(jnp.concatenate([jnp.stack([left, right, mode]), inner_edges]))
    edges = jax.lax.stop_gradient(edges)
    x = jnp.asarray(_GL_NODES, dtype)
    w = jnp.asarray(_GL_WEIGHTS, dtype)
    ea, eb = edges[:-1, None], edges[1:, None]
    half = 0.5 * (eb - ea)
    nodes = 0.5 * (ea + eb) + half * x[None, :]
    log_terms = jnp.log(jnp.where(half > 0, half, 1.0)) + jnp.log(w)[None, :] + log_f(nodes)
    log_terms = jnp.where(half > 0, log_terms, -jnp.inf)
    log_p = jax.nn.logsumexp(log_terms) - 0.5 * math.log(2.0 * math.pi)
    return jnp.where(jnp.isfinite(peak), log_p, -jnp.inf)


def _log_orthant_2d(lower, upper, mean, cov):
    var = jnp.diagonal(cov)
    tiny = jnp.finfo(cov.dtype).tiny
    positive = var > tiny
    sd = jnp.sqrt(jnp.where(positive, var, 1.0))
    lo = bound_div(lower - mean, sd)
    hi = bound_div(upper - mean, sd)
    rho = jnp.clip(cov[0, 1] / (sd[0] * sd[1]), -1.0, 1.0)
    both = _log_box_2d(lo[0], hi[0], lo[1], hi[1], rho)
    # a zero-variance coordinate is a constant: indicator times the other marginal
    m0 = _log_interval_1d(lower[0], upper[0], mean[0], var[0])
    m1 = _log_interval_1d(lower[1], upper[1], mean[1], var[1])
    return jnp.where(positive[0] & positive[1], both, m0 + m1)


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


def _orthant(lower, upper, mean, cov, key, num_samples) -> PolytopeProbability:
    m = mean.shape[0]
    if m == 0:
        zero = jnp.zeros((), cov.dtype)
        return _exact(zero, "exact-0d")
    if m == 1:
        return _exact(_log_interval_1d(lower[0], upper[0], mean[0], cov[0, 0]), "exact-1d")
    if m == 2:
        return _exact(_log_orthant_2d(lower, upper, mean, cov), "exact-2d")
    est = minimax_tilting(lower - mean, upper - mean, cov, key=key, num_samples=num_samples)
    return PolytopeProbability(est.probability, est.log_probability, est.stderr, "minimax-tilting")


# Compiled once per shape/dtype/num_samples, so eager calls do not re-trace the loops;
# under an outer jit these simply inline.
_orthant_jit = jax.jit(_orthant, static_argnames=("num_samples",))


def _require_key(m: int, key) -> None:
    if m >= 3 and key is None:
        raise ValueError(
            f"{m} constraints need minimax tilting, a Monte Carlo method: pass key=jax.random.PRNGKey(...)"
        )


def _polytope(A, b, mean, cov, key, num_samples) -> PolytopeProbability:
    m = A.shape[0]
    z_mean = A @ mean
    z_cov = A @ cov @ A.T
    z_cov = 0.5 * (z_cov + z_cov.T)
    lower = jnp.full((m,), -jnp.inf, A.dtype)
    return _orthant(lower, b, z_mean, z_cov, key, num_samples)


_polytope_jit = jax.jit(_polytope, static_argnames=("num_samples",))


def gaussian_orthant_probability(
    lower, upper, mean, cov, *, key: jax.Array | None = None, num_samples: int = 10_000
) -> PolytopeProbability:
    """P(lower <= z <= upper) for z ~ N(mean, cov) (m-dim; +-inf bounds allowed).

    m = 1, 2 are exact; m >= 3 uses minimax tilting with ``num_samples`` draws
    from ``key``. ``cov`` may be singular. Example::

        r = gaussian_orthant_probability(jnp.full(3, 4.0), jnp.full(3, jnp.inf),
                                         jnp.zeros(3), jnp.eye(3), key=jax.random.PRNGKey(0))
        r.probability  # ~ (3.17e-5) ** 3
    """
    lower, upper, mean, cov = _validate_orthant(lower, upper, mean, cov)
    _require_key(mean.shape[0], key)
    return _orthant_jit(lower, upper, mean, cov, key, num_samples=num_samples)


def _validate_polytope(A, b, mean, cov):
    dtype = _float_dtype(A, b, mean, cov)
    A, b, mean, cov = (jnp.asarray(a, dtype) for a in (A, b, mean, cov))
    if mean.ndim != 1:
        raise ValueError(f"mean must be a vector; got shape {mean.shape}")
    n = mean.shape[0]
    if A.ndim != 2 or A.shape[1] != n:
        raise ValueError(f"A must have shape (m, {n}) to match mean; got {A.shape}")
    if b.shape != (A.shape[0],):
        raise ValueError(f"b must have shape ({A.shape[0]},) to match A; got {b.shape}")
    _check_cov(cov, n)
    return A, b, mean, cov


def gaussian_polytope_probability(
    A, b, mean, cov, *, key: jax.Array | None = None, num_samples: int = 10_000
) -> PolytopeProbability:
    """P(A x <= b) for x ~ N(mean, cov); A (m, n), b (m,), cov (n, n) PSD, possibly singular.

    Reduces to the orthant z = A x ~ N(A mean, A cov A^T) <= b; m > rank is fine
    (see :mod:`ppl_mech._minimax_tilting`). Example::

        A = jnp.array([[1.0, 1.0], [1.0, -1.0]])
        gaussian_polytope_probability(A, jnp.zeros(2), jnp.zeros(2), jnp.eye(2)).probability  # 0.25
    """
    A, b, mean, cov = _validate_polytope(A, b, mean, cov)
    _require_key(A.shape[0], key)
    return _polytope_jit(A, b, mean, cov, key, num_samples=num_samples)


def _psd_factor(cov):
    """F with F F^T = cov for PSD (possibly singular) cov, via eigh."""
    vals, vecs = jnp.linalg.eigh(cov)
    tiny = jnp.finfo(vals.dtype).tiny  # a zero eigenvalue: no infinite sqrt derivative
    return vecs * jnp.sqrt(jnp.maximum(vals, tiny))[None, :]


def _pivot_rows(plan):
    """For each eta index j < rank, the processing row that introduced it (its pivot row)."""
    m = plan.owner.shape[0]
    rows = jnp.arange(m)
    target = jnp.where(plan.is_first & (plan.owner >= 0), plan.owner, m)
    return jnp.zeros((m + 1,), jnp.int32).at[target].set(rows.astype(jnp.int32))[:m]


def gaussian_union_probability(
    polytopes: Sequence[tuple[jax.Array, jax.Array]],
    mean,
    cov,
    *,
    key: jax.Array,
    num_samples: int = 10_000,
) -> PolytopeProbability:
    """P(x in union_k {A_k x <= b_k}) for x ~ N(mean, cov), by mixture importance sampling.

    Each polytope k gets Botev's tilted proposal q_k (lifted from its
    constraint coordinates to x by the exact Gaussian conditional). Draw
    ``num_samples // K`` points from each q_k and weight every point by the
    balance heuristic (Veach & Guibas 1995)

        w(x) = 1[x in union] / sum_j alpha_j q_j(x) / p(x),   alpha_j = 1/K,

    where q_j(x)/p(x) = 1/(tilting weight of x under polytope j), or 0 if
    x is outside polytope j. The estimate (1/N) sum w is unbiased; its standard
    error is that of a stratified sample (one stratum per proposal). Overlaps
    are counted once: no inclusion-exclusion, no independence assumption.
    A single polytope reduces to the polytope estimator.
    """
    if key is None:
        raise ValueError("gaussian_union_probability is a Monte Carlo method: pass key=...")
    if len(polytopes) == 0:
        raise ValueError("need at least one polytope")
    checked = [_validate_polytope(A, b, mean, cov) for A, b in polytopes]
    mean, cov = checked[0][2], checked[0][3]
    dtype = mean.dtype
    polys = [(A.astype(dtype), b.astype(dtype)) for A, b, _, _ in checked]
    if len(polys) == 1:
        A, b = polys[0]
        return gaussian_polytope_probability(A, b, mean, cov, key=key, num_samples=num_samples)
    return _union_jit(polys, mean, cov, key, num_samples=num_samples)


def _union(polys, mean, cov, key, num_samples) -> PolytopeProbability:
    dtype = mean.dtype
    K = len(polys)
    n = mean.shape[0]
    per = max(num_samples // K, 2)
    factor = _psd_factor(cov)  # x = mean + factor @ xi, xi ~ N(0, I_n)

    def proposal(A, b):
        """Polytope ``A x <= b``'s tilting plan, tilt and lift to ``xi``."""
        m = A.shape[0]
        B = A @ factor
        z_cov = B @ B.T
        z_cov = 0.5 * (z_cov + z_cov.T)
        plan = tilting_plan(z_cov, jnp.full((m,), -jnp.inf, dtype), b - A @ mean)
        mu = solve_tilting(plan)
        # eta = E xi, E = T^{-1} diag(1/scale) B[pivot rows]; rows past the rank are zero
        piv = _pivot_rows(plan)
        has = jnp.arange(m) < plan.rank
        T = jnp.eye(m, dtype=dtype) + plan.coef[piv]
        T = jnp.where(has[:, None] & has[None, :], T, jnp.eye(m, dtype=dtype))
        rhs = B[plan.order[piv]] / plan.scale[piv][:, None]
        E = jax.scipy.linalg.solve_triangular(T, rhs, lower=True)
        return plan, mu, jnp.where(has[:, None], E, 0.0)

    def draw(plan, mu, E, key):
        """``per`` points of the polytope's proposal, and their own log tilting weights."""
        k_u, k_free = jax.random.split(key)
        u = jax.random.uniform(k_u, (E.shape[0], per), dtype=dtype)
        logw, etas = tilted_log_weights(plan, mu, u)
        free = jax.random.normal(k_free, (n, per), dtype=dtype)
        xi = E.T @ etas + free - E.T @ (E @ free)
        return mean[:, None] + factor @ xi, logw

    # polytopes with equal face counts are stacked and vmapped: one compiled scan per face count,
    # not one per polytope and per pair (18 one-face polytopes compiled for 100 s)
    groups: dict[int, list[int]] = {}
    for k, (A, _) in enumerate(polys):
        groups.setdefault(A.shape[0], []).append(k)
    keys = jax.random.split(key, K)
    stacked = []
    for members in groups.values():
        As = jnp.stack([polys[k][0] for k in members])
        bs = jnp.stack([polys[k][1] for k in members])
        plans, mus, Es = jax.vmap(proposal)(As, bs)
        xs, own = jax.vmap(draw)(plans, mus, Es, keys[jnp.asarray(members)])
        stacked.append((members, As, plans, mus, xs, own))
    # strata in group order, not the caller's: they are exchangeable in the estimate
    xs = jnp.concatenate([g[4] for g in stacked])  # (K, n, per)
    own = jnp.concatenate([g[5] for g in stacked])  # (K, per)
    points = jnp.reshape(jnp.moveaxis(xs, 1, 0), (n, K * per)) - mean[:, None]

    def log_q_over_p(A, plan, mu):
        log_ratio = proposal_log_ratio(plan, mu, A @ points)
        return jnp.where(jnp.isfinite(log_ratio), -log_ratio, -jnp.inf)

    ratios = jnp.concatenate([jax.vmap(log_q_over_p)(As, plans, mus)
                              for _, As, plans, mus, _, _ in stacked])  # (K, K * per)
    in_union = jnp.any(jnp.isfinite(ratios), axis=0) & jnp.isfinite(jnp.reshape(own, (-1,)))
    log_w = -(jax.nn.logsumexp(ratios, axis=0) - math.log(K))
    log_ws = jnp.reshape(jnp.where(in_union, log_w, -jnp.inf), (K, per))
    valid = jnp.all(jnp.concatenate([jnp.atleast_1d(g[2].valid) for g in stacked]))

    # stratified mean and standard error
    summaries = jax.vmap(summarize_log_weights)(log_ws)
    log_p = jax.nn.logsumexp(summaries.log_probability) - math.log(K)
    stderr = jnp.sqrt(jnp.sum(summaries.stderr**2)) / K
    nan = jnp.asarray(jnp.nan, dtype)
    log_p = jnp.where(valid, log_p, nan)
    return PolytopeProbability(jnp.exp(log_p), log_p, jnp.where(valid, stderr, nan), "mixture-tilting")


_union_jit = jax.jit(_union, static_argnames=("num_samples",))
