"""Minimax exponential tilting for Gaussian orthant probabilities (Botev 2017).

Z. I. Botev, "The normal law under linear restrictions: simulation and
estimation via minimax tilting", JRSS B 79 (2017) 125-148. We estimate

    P(lower <= z <= upper),   z ~ N(0, cov)  (m-dimensional, cov PSD),

in four steps, all in JAX (jit-able, float32/float64, differentiable):

1. ``tilting_plan``: Botev's variable reordering (at each step the remaining
   variable with the smallest conditional probability goes next) fused with a
   pivoted Cholesky factorisation ``z = L eta``, eta ~ N(0, I).
2. Rank deficiency. A row whose conditional variance vanishes (below
   ``1e3 * eps`` of its variance) is *degenerate*: it is an exact linear
   function of the etas already drawn. It gets no eta of its own; its
   constraint becomes an extra bound on the last eta it depends on (its
   *owner*). The bounds on one eta from several rows intersect to an interval,
   so the sequential sampler stays exact and no constraint is dropped or
   assumed independent. Rows with zero variance are constants: a 0/1 factor.
   This covers m > n polytopes and singular covariances.
3. ``solve_tilting``: the minimax saddle point ``grad psi(x, mu) = 0`` by
   damped Newton (backtracking on ||grad psi||, fixed iteration cap, under
   ``jit``). The tilt is treated as a constant (``stop_gradient``): the
   estimator is unbiased for *any* tilt, so a poorly converged tilt costs
   variance, never bias.
4. ``tilted_log_weights``: sequential inverse-CDF sampling of tilted truncated
   normals (log-space tail formulas, exact far in the tails), returning log
   importance weights whose mean is the probability.

Gradients flow through the factorisation and the reparameterised samples
(fixed uniforms), so ``jax.grad`` of the estimate is an unbiased estimate of
the gradient of the probability (common random numbers).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import log_ndtr, ndtr, ndtri

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# --------------------------------------------------------------------------
# Univariate pieces: log P(l <= N(0,1) <= u) and the truncated normal inverse CDF
# --------------------------------------------------------------------------


def _log_phi(x):
    """log of the standard normal density (-inf at +-inf, no NaN)."""
    return -0.5 * x * x - _LOG_SQRT_2PI


def _log1mexp(a):
    """log(1 - exp(a)) for a <= 0, accurate everywhere (Maechler 2012)."""
    a = jnp.minimum(a, 0.0)
    return jnp.where(a > -math.log(2.0), jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


def _log_normal_interval_value(l, u):
    # Upper tail (l > 0): log Q(l) + log(1 - Q(u)/Q(l)), Q(t) = Phi(-t).
    l_a = jnp.where(l > 0, l, 1.0)
    u_a = jnp.where(l > 0, u, 2.0)
    lq_l = log_ndtr(-l_a)
    lq_u = log_ndtr(-u_a)
    upper_tail = lq_l + _log1mexp(lq_u - lq_l)
    # Lower tail (u < 0): mirror image.
    l_b = jnp.where(u < 0, l, -2.0)
    u_b = jnp.where(u < 0, u, -1.0)
    lp_u = log_ndtr(u_b)
    lp_l = log_ndtr(l_b)
    lower_tail = lp_u + _log1mexp(lp_l - lp_u)
    # Interval around 0: the mass is not small unless the interval is narrow.
    middle = jnp.log1p(-(ndtr(l) + ndtr(-u)))
    out = jnp.where(l > 0, upper_tail, jnp.where(u < 0, lower_tail, middle))
    return jnp.where(l < u, out, -jnp.inf)


@jax.custom_jvp
def log_normal_interval(l, u):
    """log P(l <= X <= u) for X ~ N(0, 1): relative accuracy in both tails, -inf if empty."""
    return _log_normal_interval_value(l, u)


@log_normal_interval.defjvp
def _log_normal_interval_jvp(primals, tangents):
    l, u = primals
    dl, du = tangents
    out = _log_normal_interval_value(l, u)
    ok = jnp.isfinite(out)
    safe = jnp.where(ok, out, 0.0)
    d_u = jnp.where(ok, jnp.exp(_log_phi(u) - safe), 0.0)
    d_l = jnp.where(ok, jnp.exp(_log_phi(l) - safe), 0.0)
    return out, d_u * du - d_l * dl


def _ndtri_exp(y):
    """x with log Phi(x) = y, for y <= log(1/2); accurate down to y ~ -1e300."""
    y = jnp.minimum(y, -math.log(2.0))
    finfo = jnp.finfo(jnp.result_type(y))
    threshold = 0.9 * math.log(float(finfo.tiny))
    moderate = ndtri(jnp.exp(jnp.maximum(y, threshold)))
    # log Phi(x) ~ -x^2/2 - log(-x) - log(sqrt(2 pi)) as x -> -inf
    t = jnp.maximum(-2.0 * y, 1.0)
    asymptotic = -jnp.sqrt(jnp.maximum(t - jnp.log(t) - math.log(2.0 * math.pi), 1.0))
    x = jnp.where(y > threshold, moderate, asymptotic)
    for _ in range(2):  # Newton on log Phi(x) - y; f' = phi/Phi
        lp = log_ndtr(x)
        x = x - (lp - y) * jnp.exp(lp - _log_phi(x))
    return x


def _truncated_normal_icdf_value(v, l, u):
    # Upper tail: Q(x) = Q(l) * ((1 - v) + v * Q(u)/Q(l))
    l_a = jnp.where(l >= 0, l, 1.0)
    u_a = jnp.where(l >= 0, u, 2.0)
    lq_l = log_ndtr(-l_a)
    ratio = jnp.exp(log_ndtr(-u_a) - lq_l)
    x_upper = -_ndtri_exp(lq_l + jnp.log((1.0 - v) + v * ratio))
    # Lower tail: Phi(x) = Phi(u) * (v + (1 - v) * Phi(l)/Phi(u))
    l_b = jnp.where(u <= 0, l, -2.0)
    u_b = jnp.where(u <= 0, u, -1.0)
    lp_u = log_ndtr(u_b)
    ratio_b = jnp.exp(log_ndtr(l_b) - lp_u)
    x_lower = _ndtri_exp(lp_u + jnp.log(v + (1.0 - v) * ratio_b))
    # Around 0: invert whichever of Phi, Q is below 1/2.
    pl, pu = ndtr(l), ndtr(u)
    mass = pu - pl
    p = pl + v * mass
    q = ndtr(-u) + (1.0 - v) * mass
    x_middle = jnp.where(p < 0.5, ndtri(p), -ndtri(q))
    x = jnp.where(l >= 0, x_upper, jnp.where(u <= 0, x_lower, x_middle))
    x = jnp.clip(x, l, u)
    return jnp.where(jnp.isnan(x), jnp.where(jnp.isfinite(l), l, jnp.where(jnp.isfinite(u), u, 0.0)), x)


@jax.custom_jvp
def truncated_normal_icdf(v, l, u):
    """Inverse CDF of N(0, 1) truncated to [l, u] at v in [0, 1], accurate in far tails."""
    return _truncated_normal_icdf_value(v, l, u)


@truncated_normal_icdf.defjvp
def _truncated_normal_icdf_jvp(primals, tangents):
    # Implicit differentiation of Phi(x) = Phi(l) + v (Phi(u) - Phi(l)), in log space.
    v, l, u = primals
    dv, dl, du = tangents
    x = _truncated_normal_icdf_value(v, l, u)
    log_mass = _log_normal_interval_value(l, u)
    ok = jnp.isfinite(log_mass)
    base = jnp.where(ok, log_mass, 0.0) + _log_phi(x)
    d_v = jnp.exp(jnp.where(ok, log_mass, -jnp.inf) - _log_phi(x))
    d_l = jnp.exp(_log_phi(l) + _log_normal_interval_value(x, u) - base)
    d_u = jnp.exp(_log_phi(u) + _log_normal_interval_value(l, x) - base)
    d_v, d_l, d_u = (jnp.where(ok & jnp.isfinite(d), d, 0.0) for d in (d_v, d_l, d_u))
    return x, d_v * dv + d_l * dl + d_u * du


def truncated_normal_mean(l, u):
    """E[X | l <= X <= u] for X ~ N(0, 1) (0 for an empty interval)."""
    lz = _log_normal_interval_value(l, u)
    ok = jnp.isfinite(lz)
    lz = jnp.where(ok, lz, 0.0)
    out = jnp.exp(_log_phi(l) - lz) - jnp.exp(_log_phi(u) - lz)
    return jnp.where(ok, out, 0.0)


# --------------------------------------------------------------------------
# 1. Reordering + pivoted Cholesky, with rank deficiency
# --------------------------------------------------------------------------


class TiltingPlan(NamedTuple):
    """The sequential structure of P(lower <= z <= upper), rows in processing order.

    Row ``p`` constrains ``lower[p] <= eta[owner[p]] + coef[p] @ eta <= upper[p]``
    where ``coef[p]`` is supported on etas before ``owner[p]`` (``coef`` here is
    the strictly-lower part; the coefficient of the owner is 1 after scaling).
    Rows sharing an owner are contiguous (``is_first``/``is_last``); rows with
    ``owner == -1`` are constants folded into ``constant_ok``.
    """

    coef: jax.Array  # (m, m): strictly-lower normalised coefficients, columns = eta index
    lower: jax.Array  # (m,)
    upper: jax.Array  # (m,)
    owner: jax.Array  # (m,) int32, -1 for constant rows
    is_first: jax.Array  # (m,) bool
    is_last: jax.Array  # (m,) bool
    rank: jax.Array  # () int32: number of etas
    constant_ok: jax.Array  # () bool: every constant row is satisfied
    order: jax.Array  # (m,) int32: processing row -> original constraint index
    valid: jax.Array  # () bool: covariance passed the PSD check
    scale: jax.Array  # (m,) the owner coefficient that rows were divided by


def _rank_tolerance(dtype) -> float:
    return 1e3 * float(jnp.finfo(dtype).eps)


def tilting_plan(cov, lower, upper) -> TiltingPlan:
    """Botev's reordering + pivoted Cholesky of ``cov`` (m, m); see the module docstring."""
    m = cov.shape[0]
    dtype = cov.dtype
    rank_tol = _rank_tolerance(dtype)
    psd_tol = 100.0 * math.sqrt(float(jnp.finfo(dtype).eps))
    idx = jnp.arange(m)

    def step(j, state):
        sig, chol, lo, up, perm, var, zbar, deg, rank, valid = state
        remaining = idx >= j
        resid = var - jnp.sum(chol * chol, axis=1)
        valid = valid & jnp.all(jnp.where(remaining, resid >= -psd_tol * var, True))
        deg = remaining & (resid <= rank_tol * var)
        candidate = remaining & ~deg
        any_candidate = jnp.any(candidate)
        sd = jnp.sqrt(jnp.where(candidate, resid, 1.0))
        shift = chol @ zbar
        log_pr = log_normal_interval((lo - shift) / sd, (up - shift) / sd)
        k = jnp.where(any_candidate, jnp.argmin(jnp.where(candidate, log_pr, jnp.inf)), j)
        # swap j <-> k
        swap = idx.at[j].set(k).at[k].set(j)
        sig = sig[swap][:, swap]
        chol, lo, up, perm, var, deg = (a[swap] for a in (chol, lo, up, perm, var, deg))
        s_j = sig[j, j] - jnp.sum(chol[j] ** 2)
        c_jj = jnp.sqrt(jnp.maximum(s_j, jnp.finfo(dtype).tiny))
        col = (sig[:, j] - chol @ chol[j]) / c_jj
        col = jnp.where((idx > j) & ~deg, col, 0.0).at[j].set(c_jj)
        col = jnp.where(any_candidate, col, 0.0)
        chol = chol.at[:, j].set(col)
        t_shift = chol[j] @ zbar
        z_j = truncated_normal_mean((lo[j] - t_shift) / c_jj, (up[j] - t_shift) / c_jj)
        zbar = zbar.at[j].set(jnp.where(any_candidate, z_j, 0.0))
        rank = rank + any_candidate.astype(jnp.int32)
        return sig, chol, lo, up, perm, var, zbar, deg, rank, valid

    state = (
        cov,
        jnp.zeros_like(cov),
        lower,
        upper,
        idx.astype(jnp.int32),
        jnp.diagonal(cov),
        jnp.zeros((m,), dtype),
        jnp.zeros((m,), bool),
        jnp.zeros((), jnp.int32),
        jnp.all(jnp.isfinite(cov)) & jnp.all(jnp.diagonal(cov) >= 0),
    )
    _, chol, lo, up, perm, _, _, _, rank, valid = lax.fori_loop(0, m, step, state)

    nonzero = chol != 0
    owner = jnp.max(jnp.where(nonzero, idx[None, :], -1), axis=1).astype(jnp.int32)
    is_pivot = idx < rank
    constant = owner < 0
    constant_ok = jnp.all(jnp.where(constant, (lo <= 0) & (up >= 0), True))
    key = jnp.where(constant, 2 * m + 1, 2 * owner + (~is_pivot).astype(jnp.int32))
    proc = jnp.argsort(key, stable=True)
    chol, lo, up, owner = chol[proc], lo[proc], up[proc], owner[proc]
    order = perm[proc]
    a = jnp.take_along_axis(chol, jnp.maximum(owner, 0)[:, None], axis=1)[:, 0]
    a = jnp.where(owner >= 0, a, 1.0)
    lo_n = jnp.where(a > 0, lo / a, up / a)
    up_n = jnp.where(a > 0, up / a, lo / a)
    coef = jnp.where(idx[None, :] < owner[:, None], chol / a[:, None], 0.0)
    prev = jnp.concatenate([jnp.full((1,), -2, jnp.int32), owner[:-1]])
    nxt = jnp.concatenate([owner[1:], jnp.full((1,), -2, jnp.int32)])
    return TiltingPlan(
        coef=coef,
        lower=lo_n,
        upper=up_n,
        owner=owner,
        is_first=owner != prev,
        is_last=owner != nxt,
        rank=rank,
        constant_ok=constant_ok,
        order=order.astype(jnp.int32),
        valid=valid,
        scale=a,
    )


# --------------------------------------------------------------------------
# 2. The minimax saddle point
# --------------------------------------------------------------------------


def _owner_bounds(plan: TiltingPlan, x):
    """Interval for each eta_j given eta_{<j} = x_{<j}: intersection over the rows it owns."""
    m = plan.coef.shape[0]
    shift = plan.coef @ x
    lo = plan.lower - shift
    hi = plan.upper - shift
    mine = plan.owner[None, :] == jnp.arange(m)[:, None]  # (owner j, row p)
    lt = jnp.max(jnp.where(mine, lo[None, :], -jnp.inf), axis=1)
    ut = jnp.min(jnp.where(mine, hi[None, :], jnp.inf), axis=1)
    return lt, ut


def psi(plan: TiltingPlan, x, mu):
    """Botev's psi(x; mu) = sum_j -x_j mu_j + mu_j^2/2 + log P(lt_j - mu_j <= Z <= ut_j - mu_j)."""
    lt, ut = _owner_bounds(plan, x)
    return jnp.sum(-x * mu + 0.5 * mu * mu + log_normal_interval(lt - mu, ut - mu))


def solve_tilting(plan: TiltingPlan, *, max_iter: int = 40) -> jax.Array:
    """Tilt ``mu`` (m,) at the saddle point of psi; zero past the last tilted eta."""
    plan = jax.tree_util.tree_map(lax.stop_gradient, plan)
    m = plan.coef.shape[0]
    dtype = plan.coef.dtype
    active = jnp.arange(m) < plan.rank - 1
    active2 = jnp.concatenate([active, active])
    tol = 1e-10 if dtype == jnp.float64 else 1e-4

    def residual(y):
        y = jnp.where(active2, y, 0.0)
        gx, gm = jax.grad(psi, argnums=(1, 2))(plan, y[:m], y[m:])
        g = jnp.concatenate([gx, gm])
        g = jnp.where(active2, g, y)
        return jnp.where(jnp.isfinite(g), g, jnp.inf)

    def norm(y):
        return jnp.sqrt(jnp.sum(residual(y) ** 2))

    steps = 2.0 ** -jnp.arange(12, dtype=dtype)

    def cond(state):
        _, r, it = state
        return (it < max_iter) & (r > tol)

    def body(state):
        y, r, it = state
        g = residual(y)
        jac = jax.jacfwd(residual)(y)
        jac = jnp.where(active2[:, None] | active2[None, :], jac, jnp.eye(2 * m, dtype=dtype))
        step = jnp.linalg.solve(jac, -g)
        step = jnp.where(jnp.isfinite(step), step, 0.0)
        cands = y[None, :] + steps[:, None] * step[None, :]
        norms = jax.vmap(norm)(cands)
        norms = jnp.where(jnp.isfinite(norms), norms, jnp.inf)
        good = norms < (1.0 - 1e-4 * steps) * r
        pick = jnp.where(jnp.any(good), jnp.argmax(good), jnp.argmin(norms))
        improved = norms[pick] < r
        y = jnp.where(improved, cands[pick], y)
        # stop if no progress is possible
        it = jnp.where(improved, it + 1, max_iter)
        return y, jnp.minimum(norms[pick], r), it

    y0 = jnp.zeros((2 * m,), dtype)
    y, _, _ = lax.while_loop(cond, body, (y0, norm(y0), jnp.zeros((), jnp.int32)))
    return jnp.where(active, y[m:], 0.0)


# --------------------------------------------------------------------------
# 3. Importance sampling from the tilted sequential proposal
# --------------------------------------------------------------------------


def tilted_log_weights(plan: TiltingPlan, mu, uniforms) -> tuple[jax.Array, jax.Array]:
    """Log importance weights (n,) and the etas (m, n) drawn from ``uniforms`` (m, n).

    Row p (processing order) intersects its bounds into the running interval
    of its owner; at the owner's last row we draw eta_owner from N(mu, 1)
    truncated to the interval, and multiply the weight by
    P(interval) * exp(mu^2/2 - mu eta) (Botev 2017, eq. 9).
    """
    m, n = uniforms.shape
    dtype = plan.coef.dtype
    coef_cols = plan.coef.T  # (eta index, row)

    def body(carry, p):
        partial, cur_lo, cur_hi, logw, etas = carry
        c = partial[p]
        lo = plan.lower[p] - c
        hi = plan.upper[p] - c
        first = plan.is_first[p]
        cur_lo = jnp.where(first, lo, jnp.maximum(cur_lo, lo))
        cur_hi = jnp.where(first, hi, jnp.minimum(cur_hi, hi))
        o = plan.owner[p]
        oi = jnp.maximum(o, 0)
        mu_o = mu[oi]
        tl, tu = cur_lo - mu_o, cur_hi - mu_o
        lz = log_normal_interval(tl, tu)
        eta = mu_o + truncated_normal_icdf(uniforms[oi], tl, tu)
        eta = jnp.where(jnp.isfinite(eta), eta, 0.0)
        take = plan.is_last[p] & (o >= 0)
        logw = logw + jnp.where(take, lz + 0.5 * mu_o * mu_o - mu_o * eta, 0.0)
        eta = jnp.where(take, eta, 0.0)
        partial = partial + coef_cols[oi][:, None] * eta[None, :]
        etas = etas.at[oi].add(eta)
        return (partial, cur_lo, cur_hi, logw, etas), None

    init = (
        jnp.zeros((m, n), dtype),
        jnp.full((n,), -jnp.inf, dtype),
        jnp.full((n,), jnp.inf, dtype),
        jnp.zeros((n,), dtype),
        jnp.zeros((m, n), dtype),
    )
    (_, _, _, logw, etas), _ = lax.scan(body, init, jnp.arange(m))
    logw = jnp.where(plan.constant_ok, logw, -jnp.inf)
    logw = jnp.where(jnp.isnan(logw), -jnp.inf, logw)
    return logw, etas


def proposal_log_ratio(plan: TiltingPlan, mu, z) -> jax.Array:
    """log(p/q) at points z (m, n) in the plan's original constraint coordinates (centred).

    p is N(0, cov) restricted to the plan's subspace, q the tilted proposal.
    Returns -inf where z violates a constraint (q = 0 there is irrelevant: the
    caller multiplies by the indicator) — used by the union estimator.
    """
    m, n = z.shape
    zp = z[plan.order] / plan.scale[:, None]  # normalised rows
    coef_cols = plan.coef.T

    def body(carry, p):
        partial, cur_lo, cur_hi, logw, inside, eta_cur = carry
        c = partial[p]
        lo = plan.lower[p] - c
        hi = plan.upper[p] - c
        first = plan.is_first[p]
        o = plan.owner[p]
        oi = jnp.maximum(o, 0)
        eta_cur = jnp.where(first, zp[p] - c, eta_cur)
        cur_lo = jnp.where(first, lo, jnp.maximum(cur_lo, lo))
        cur_hi = jnp.where(first, hi, jnp.minimum(cur_hi, hi))
        mu_o = mu[oi]
        take = plan.is_last[p] & (o >= 0)
        lz = log_normal_interval(cur_lo - mu_o, cur_hi - mu_o)
        ok = (eta_cur >= cur_lo) & (eta_cur <= cur_hi)
        inside = inside & jnp.where(take, ok, True)
        logw = logw + jnp.where(take, lz + 0.5 * mu_o * mu_o - mu_o * eta_cur, 0.0)
        eta = jnp.where(take, eta_cur, 0.0)
        partial = partial + coef_cols[oi][:, None] * eta[None, :]
        return (partial, cur_lo, cur_hi, logw, inside, eta_cur), None

    dtype = plan.coef.dtype
    init = (
        jnp.zeros((m, n), dtype),
        jnp.full((n,), -jnp.inf, dtype),
        jnp.full((n,), jnp.inf, dtype),
        jnp.zeros((n,), dtype),
        jnp.ones((n,), bool),
        jnp.zeros((n,), dtype),
    )
    (_, _, _, logw, inside, _), _ = lax.scan(body, init, jnp.arange(m))
    # constant rows: the indicator on the actual values
    const_rows = plan.owner < 0
    const_ok = jnp.all(
        jnp.where(const_rows[:, None], (zp >= plan.lower[:, None]) & (zp <= plan.upper[:, None]), True),
        axis=0,
    )
    return jnp.where(inside & const_ok & plan.constant_ok, logw, -jnp.inf)


# --------------------------------------------------------------------------
# 4. The estimator
# --------------------------------------------------------------------------


class TiltingEstimate(NamedTuple):
    log_probability: jax.Array
    probability: jax.Array
    stderr: jax.Array
    log_weights: jax.Array


def summarize_log_weights(logw) -> TiltingEstimate:
    """Mean of exp(logw) and its standard error, computed stably in log space."""
    n = logw.shape[0]
    top = lax.stop_gradient(jnp.max(logw))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    w = jnp.exp(logw - top)
    mean_w = jnp.mean(w)
    var_w = jnp.sum((w - mean_w) ** 2) / max(n - 1, 1)
    log_p = jnp.log(mean_w) + top
    stderr = jnp.sqrt(var_w / n) * jnp.exp(top)
    return TiltingEstimate(log_p, jnp.exp(log_p), stderr, logw)


def minimax_tilting(lower, upper, cov, *, key, num_samples: int = 10_000) -> TiltingEstimate:
    """Estimate P(lower <= z <= upper), z ~ N(0, cov), by minimax tilting (Botev 2017)."""
    m = cov.shape[0]
    plan = tilting_plan(cov, lower, upper)
    mu = solve_tilting(plan)
    uniforms = jax.random.uniform(key, (m, num_samples), dtype=cov.dtype)
    logw, _ = tilted_log_weights(plan, mu, uniforms)
    est = summarize_log_weights(logw)
    nan = jnp.asarray(jnp.nan, cov.dtype)
    return TiltingEstimate(
        jnp.where(plan.valid, est.log_probability, nan),
        jnp.where(plan.valid, est.probability, nan),
        jnp.where(plan.valid, est.stderr, nan),
        logw,
    )
