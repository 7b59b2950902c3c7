"""``P(Y > t)`` by the saddlepoint approximation (Lugannani–Rice) from a cumulant generating function.

Given the CGF ``K(s) = log E exp(s Y)`` solve ``K'(s_hat) = t`` and set
``w = sign(s_hat) sqrt(2 (s_hat t - K(s_hat)))``, ``u = s_hat sqrt(K''(s_hat))``:

    P(Y > t) ~ Q(w) + phi(w) (1/u - 1/w)                        (Lugannani & Rice 1980)

and, with ``order=2``, Daniels' (1987) second-order term
``+ phi(w) [ (1/u)(k4/8 - 5 k3^2/24) - 1/u^3 - k3/(2 u^2) + 1/w^3 ]`` with the
standardised ``k3 = K'''/K''^(3/2)``, ``k4 = K''''/K''^2`` at ``s_hat`` (Butler 2007, eq. 2.48).
The relative error of the first-order formula is typically 1e-3..1e-2 *uniformly* in
how far out t is (that is why it beats Edgeworth in the tails), and it is exact for
normal Y. Near the mean (``|w|`` below ``eps^(1/4)``) the formula is 0/0 and the
one-term Edgeworth expansion at ``K'(0), K''(0), K'''(0)`` is used instead (the two agree
there to that order).

Measured (exact CGFs, relative error at P = 1e-2 / 1e-5 / 1e-9; first order, second order):
Gamma(5) 0.1% / 0.2% / 0.3%, 0.01% / 0.02% / 0.02%; chi-square(4) 0.4 / 0.9 / 1.3%,
0.13 / 0.15 / 0.15%; chi-square(1) 1.9 / 5.3 / 7.3%, 3.4 / 3.3 / 3.2%; a noncentral
5-dimensional quadratic form dominated by one eigenvalue up to 11% (first) and 4%
(second order) at 5e-10 (tests/test_tails.py).

CGFs (:class:`CGF`): a scalar function ``K(s)`` (``K(0) = 0``) on an open interval
``(lower, upper)``; derivatives come from ``jax.grad``. Exact CGFs for quadratic forms of
Gaussians, gamma/chi-square/exponential sums, rectified Gaussians and sums of
independent terms are in :mod:`._exact_cgfs`; :func:`cumulant_series_cgf` is the
polynomial ``sum_r k_r s^r / r!`` from finitely many cumulants.

Validity of a cumulant-series CGF. A truncated cumulant series is the CGF of no
distribution in general: a quartic with ``k4 < 0`` has ``K''(s) < 0`` beyond some
``|s|``, so ``K'`` turns over and ``K'(s) = t`` has *no* real root for t past the turning
point; with ``k4 > 0`` and a large ``k3`` of the other sign ``K''`` can dip below zero
between two convex branches. The saddlepoint is searched only on the branch of ``K'' > 0``
through ``s = 0`` (the only one that corresponds to exponential tilting of Y); if t is not
reached there (or ``K''`` is not positive all the way from 0 to ``s_hat``, checked on a
grid of 64 points) the result is NaN with status ``NO_SADDLEPOINT``. Even where a
saddlepoint exists, the answer is only as good as the quartic's fit to the true CGF at
``s_hat``: trust it while the omitted terms ``k5 s^5/5!`` are small against
``k2 s^2/2`` — the returned ``saddlepoint`` lets the caller check.

Everything is pure JAX: ``jit``-able, and differentiable in ``t`` and in the parameters
the CGF closes over (the saddlepoint enters through one implicit Newton step, so its
derivative is the implicit-function one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._minimax_tilting import log_ndtr
from ._result import (
    INCONSISTENT_CUMULANTS,
    NO_SADDLEPOINT,
    NOT_CONVERGED,
    OUT_OF_RANGE,
    TailProbability,
    _status,
)

__all__ = ["CGF", "cumulant_series_cgf", "saddlepoint_tail", "saddlepoint_tail_from_cumulants"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_PROBES = 48  # bracket search: s = scale * 4^j, j < _PROBES
_PATH_POINTS = 64  # K'' > 0 is checked at this many points between 0 and s_hat


class CGF(NamedTuple):
    """A cumulant generating function ``K(s) = log E exp(s Y)`` on the open interval ``(lower, upper)``.

    ``fn(params, s)`` maps the parameter pytree and a scalar ``s`` to a scalar, with
    ``K(0) = 0``; ``fn`` is static (hashable; a module-level function), ``params`` are the
    arrays it reads, so a CGF is a pytree that can enter ``jit`` and ``grad``. ``lower``
    and ``upper`` may be infinite. ``cgf(s)`` evaluates ``fn(params, s)``. A custom CGF::

        def _laplace(b, s):  # Y ~ Laplace(0, b): E exp(sY) = 1 / (1 - b^2 s^2), |s| < 1/b
            return -jnp.log1p(-(b * s) ** 2)

        cgf = CGF(_laplace, jnp.asarray(2.0), -0.5, 0.5, "laplace")
    """

    fn: Callable[[Any, jax.Array], jax.Array]
    params: Any
    lower: Any = -math.inf
    upper: Any = math.inf
    name: str = "cgf"

    def __call__(self, s):
        return self.fn(self.params, s)

    def negated(self) -> CGF:
        """The CGF of ``-Y``: ``s -> K(-s)`` on ``(-upper, -lower)``."""
        return CGF(_Negated(self.fn), self.params, -jnp.asarray(self.upper), -jnp.asarray(self.lower),
                   self.name + "(-Y)")


jax.tree_util.register_pytree_node(
    CGF,
    lambda c: ((c.params, c.lower, c.upper), (c.fn, c.name)),
    lambda aux, children: CGF(aux[0], children[0], children[1], children[2], aux[1]),
)


@dataclass(frozen=True)
class _Negated:
    fn: Callable

    def __call__(self, params, s):
        return self.fn(params, -s)


def _series_fn(cumulants, s):
    """``sum_r k_r s^r / r!`` by Horner."""
    K = cumulants.shape[0]
    acc = jnp.zeros_like(s * cumulants[0])
    for r in range(K, 0, -1):
        acc = acc * s + cumulants[r - 1] / math.factorial(r)
    return acc * s


def cumulant_series_cgf(cumulants) -> CGF:
    """The polynomial CGF ``sum_{r=1}^K k_r s^r / r!`` of ``cumulants = (k1, ..., kK)`` (1-D).

    Entire, but the CGF of no distribution in general: see the module docstring.
    """
    cumulants = jnp.asarray(cumulants)
    if cumulants.ndim != 1 or cumulants.shape[0] < 2:
        raise ValueError(
            f"cumulants must be a vector (k1, k2, ...) with at least the mean and variance; "
            f"got shape {cumulants.shape} (use saddlepoint_tail_from_cumulants for batches)"
        )
    if not jnp.issubdtype(cumulants.dtype, jnp.floating):
        cumulants = cumulants.astype(jnp.result_type(float))
    return CGF(_series_fn, cumulants, -math.inf, math.inf, f"cumulant-series-{cumulants.shape[0]}")


def _taylor(fn, count):
    """``s -> [K(s), K'(s), ..., K^(count)(s)]`` from one nested forward-mode graph.

    Each level is a ``jvp`` whose primal output is the previous derivative (kept as aux):
    one graph per call site instead of one per derivative (compiles several times faster
    than nested ``grad``).
    """

    def level0(s):
        return fn(s), ()

    f = level0
    for _ in range(count):
        def f(s, g=f):
            out, tangent, aux = jax.jvp(g, (s,), (jnp.ones_like(s),), has_aux=True)
            return tangent, aux + (out,)

    def all_derivatives(s):
        top, lower = f(s)
        return jnp.stack(lower + (top,))

    return all_derivatives


def _solve(d2, t, mean, scale, lower, upper, max_iter, dtype):
    """Saddlepoint on the convex branch through 0; returns (s, have_bracket, converged).

    ``d2(s) = [K, K', K'']``.
    """
    eps = jnp.finfo(dtype).eps
    direction = jnp.where(t >= mean, 1.0, -1.0).astype(dtype)
    bound = jnp.where(direction > 0, upper, -lower).astype(dtype)  # > 0, may be inf
    probes = scale * 4.0 ** jnp.arange(_PROBES, dtype=dtype)
    inside = probes < bound
    sp = direction * jnp.where(inside, probes, 0.0)
    dp = jax.vmap(d2)(sp)
    k1p, k2p = dp[:, 1], dp[:, 2]
    reached = inside & jnp.isfinite(k1p) & (direction * (k1p - t) >= 0)
    convex = jnp.isfinite(k2p) & (k2p > 0)
    first = jnp.argmax(reached)
    any_reached = jnp.any(reached)
    nonconvex_before = jnp.cumsum((~convex) & inside)
    path_ok_to_first = nonconvex_before[first] == 0
    all_convex_inside = nonconvex_before[-1] == 0
    finite_bound = jnp.isfinite(bound)
    have_bracket = jnp.where(any_reached, path_ok_to_first, finite_bound & all_convex_inside)
    mag = jnp.where(any_reached, probes[first], jnp.where(finite_bound, bound, probes[-1]))
    lo0 = jnp.where(direction > 0, 0.0, -mag).astype(dtype)
    hi0 = jnp.where(direction > 0, mag, 0.0).astype(dtype)

    def body(_, state):
        s, lo, hi, _ = state
        d = d2(s)
        g = d[1] - t
        lo = jnp.where(g < 0, s, lo)
        hi = jnp.where(g > 0, s, hi)
        k2 = d[2]
        newton = s - g / jnp.where(k2 > 0, k2, 1.0)
        ok = jnp.isfinite(newton) & (k2 > 0) & (newton > lo) & (newton < hi)
        s_new = jnp.where(ok, newton, 0.5 * (lo + hi))
        s_new = jnp.where(g == 0, s, s_new)
        return s_new, lo, hi, jnp.abs(g)

    s0 = jnp.zeros((), dtype)
    s, lo, hi, resid = lax.fori_loop(0, max_iter, body, (s0, lo0, hi0, jnp.asarray(jnp.inf, dtype)))
    # resid is |K'(s) - t| at the last iterate before the final update: Newton is converged
    # once it is tiny, bisection once the bracket has collapsed
    tol = 1e3 * eps * (jnp.abs(t - mean) + 1.0 / scale)
    collapsed = (hi - lo) <= 8 * eps * jnp.maximum(jnp.abs(s), 1.0 / scale)
    converged = jnp.isfinite(resid) & ((resid <= tol) | collapsed)
    return s, have_bracket, converged


def _lugannani_rice_scalar(cgf: CGF, t, order: int, max_iter: int, dtype):
    fn = cgf.__call__
    d2 = _taylor(fn, 2)
    zero = jnp.zeros((), dtype)
    at0 = _taylor(fn, 3)(zero)
    mean, var0, k3_0 = at0[1], at0[2], at0[3]
    good_var = jnp.isfinite(var0) & (var0 > 0)
    sd0 = jnp.sqrt(jnp.where(good_var, var0, 1.0))
    scale = 1.0 / sd0
    lower = jnp.asarray(cgf.lower, dtype)
    upper = jnp.asarray(cgf.upper, dtype)

    s_raw, have_bracket, converged = _solve(d2, t, mean, scale, lower, upper, max_iter, dtype)
    s_raw = lax.stop_gradient(s_raw)
    # K'' > 0 all the way from 0 to s_hat (the convex branch through 0)
    grid = s_raw * jnp.linspace(0.0, 1.0, _PATH_POINTS + 1, dtype=dtype)[1:]
    path_ok = jnp.all(jax.vmap(d2)(grid)[:, 2] > 0)
    found = have_bracket & path_ok & good_var
    s_safe = jnp.where(found, s_raw, 0.0)
    # derivatives at s_safe, then one implicit Newton step s = s_safe - (K'(s_safe) - t)/K''(s_safe):
    # its value is s_safe, its derivative d s_hat / d(t, params); every K^(m)(s) is then taken
    # as K^(m)(s_safe) + K^(m+1)(s_safe) (s - s_safe), exact in value and to first order.
    top = 3 if order == 1 else 5
    D = _taylor(fn, top)(s_safe)
    k2_safe = jnp.where(D[2] > 0, D[2], 1.0)
    s = s_safe - (D[1] - t) / k2_safe
    delta = s - lax.stop_gradient(s)
    Kd = [D[m] + D[m + 1] * delta for m in range(top)]
    Kh = Kd[0]
    K2h = Kd[2]
    K2h_safe = jnp.where(K2h > 0, K2h, 1.0)
    w2 = jnp.maximum(2.0 * (s * t - Kh), 0.0)
    w = jnp.sign(s) * jnp.sqrt(jnp.where(w2 > 0, w2, 1.0)) * (w2 > 0)
    u = s * jnp.sqrt(K2h_safe)
    delta = jnp.finfo(dtype).eps ** 0.25
    small = (jnp.abs(w) < delta) | (jnp.abs(u) < delta)
    ws = jnp.where(small, 1.0, w)
    us = jnp.where(small, 1.0, u)
    corr = 1.0 / us - 1.0 / ws
    if order == 2:
        k3 = Kd[3] / K2h_safe**1.5
        k4 = Kd[4] / K2h_safe**2
        corr = corr + (k4 / 8.0 - 5.0 * k3 * k3 / 24.0) / us - 1.0 / us**3 - k3 / (2.0 * us**2) + 1.0 / ws**3
    log_q = log_ndtr(-ws)
    log_phi = -0.5 * ws * ws - _LOG_SQRT_2PI
    factor = 1.0 + jnp.exp(log_phi - log_q) * corr
    upper_side = ws > 0
    prob_up = jnp.exp(log_q) * factor
    log_up = log_q + jnp.log(jnp.where(factor > 0, factor, 1.0))
    log_up = jnp.where(factor > 0, log_up, jnp.nan)
    prob_lo = jnp.exp(log_q) + jnp.exp(log_phi) * corr
    prob = jnp.where(upper_side, prob_up, prob_lo)
    log_prob = jnp.where(upper_side, log_up, jnp.log(jnp.where(prob_lo > 0, prob_lo, 1.0)))
    log_prob = jnp.where(upper_side | (prob_lo > 0), log_prob, jnp.nan)

    # near the mean: one-term Edgeworth at s = 0 (the 0/0 limit of the formula above)
    wz = (t - mean) / sd0
    lam3 = k3_0 / sd0**3
    phiz = jnp.exp(-0.5 * wz * wz - _LOG_SQRT_2PI)
    prob_c = jnp.exp(log_ndtr(-wz)) + phiz * lam3 / 6.0 * (wz * wz - 1.0)
    prob = jnp.where(small, prob_c, prob)
    log_prob = jnp.where(small, jnp.log(jnp.where(prob_c > 0, prob_c, 1.0)), log_prob)

    # NaN where no saddlepoint was found, in the value *and* its gradient: a constant NaN branch
    # would send a zero cotangent back (a silent zero step for an optimiser)
    nan_unless_found = jnp.where(found, 1.0, jnp.nan)  # 1 where found: no 0 * NaN in that cotangent
    prob = jnp.where(found, prob, prob * nan_unless_found)
    log_prob = jnp.where(found, log_prob, log_prob * nan_unless_found)
    status = _status(
        (~good_var, INCONSISTENT_CUMULANTS),
        (~(have_bracket & path_ok), NO_SADDLEPOINT),
        (found & ~converged, NOT_CONVERGED),
        (found & ((prob < 0) | (prob > 1)), OUT_OF_RANGE),
    )
    return prob, log_prob, status, jnp.where(found, s, jnp.nan)


def saddlepoint_tail(
    t, cgf: CGF, *, lower: bool = False, order: int = 1, max_iter: int = 100
) -> TailProbability:
    """Lugannani–Rice ``P(Y > t)`` (``lower=True``: ``P(Y < t)``) for the CGF ``cgf`` of Y.

    ``t``: scalar or array (the CGF is shared). ``order``: 1 (Lugannani–Rice) or 2
    (with Daniels' second-order term). The saddlepoint is found by bracketed Newton on the
    convex branch of K through 0; no root there gives NaN and ``NO_SADDLEPOINT`` (see the
    module docstring). Example (chi-square with 4 degrees of freedom, exact 1.0e-9 at
    t = 45.36)::

        saddlepoint_tail(45.36, gamma_cgf(2.0, 2.0)).probability  # ~ 1.0e-9
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 (Lugannani-Rice) or 2 (with Daniels' correction); got {order}")
    if not isinstance(cgf, CGF):
        raise TypeError(f"cgf must be a ppl_mech.tails.CGF (e.g. gamma_cgf(...)); got {type(cgf).__name__}")
    t = jnp.asarray(t)
    dtype = jnp.result_type(t, float)
    t = t.astype(dtype)
    if lower:
        cgf = cgf.negated()
        t = -t
    prob, log_prob, status, s = _tail_core(t.reshape(-1), cgf, order, max_iter)
    if lower:
        s = -s
    shape = t.shape
    method = "saddlepoint" if order == 1 else "saddlepoint-2"
    return TailProbability(prob.reshape(shape), log_prob.reshape(shape), status.reshape(shape),
                           s.reshape(shape), method)


@partial(jax.jit, static_argnums=(2, 3))
def _tail_core(t_flat, cgf, order, max_iter):
    dtype = t_flat.dtype
    return jax.vmap(lambda tt: _lugannani_rice_scalar(cgf, tt, order, max_iter, dtype))(t_flat)


def saddlepoint_tail_from_cumulants(
    t, cumulants, *, lower: bool = False, order: int = 1, max_iter: int = 100
) -> TailProbability:
    """Saddlepoint ``P(Y > t)`` with the polynomial CGF of ``cumulants`` ``(..., K)`` (k1..kK).

    ``t`` broadcasts against ``cumulants[..., 0]``. Besides the saddlepoint flags,
    ``INCONSISTENT_CUMULANTS`` is set when ``k2 <= 0`` or (K >= 4) the kurtosis violates
    Pearson's bound ``l4 >= l3^2 - 2``.
    """
    cumulants = jnp.asarray(cumulants)
    if cumulants.ndim == 0 or cumulants.shape[-1] < 2:
        raise ValueError(
            "cumulants must have (k1, k2, ...) on the last axis, at least the mean and the variance; "
            f"got shape {cumulants.shape}"
        )
    dtype = jnp.result_type(cumulants, t, float)
    cumulants = cumulants.astype(dtype)
    t = jnp.asarray(t, dtype)
    shape = jnp.broadcast_shapes(t.shape, cumulants.shape[:-1])
    tb = jnp.broadcast_to(t, shape).reshape(-1)
    cb = jnp.broadcast_to(cumulants, shape + cumulants.shape[-1:]).reshape(-1, cumulants.shape[-1])

    prob, log_prob, status, s = _series_core(tb, cb, lower, order, max_iter)
    k2 = cb[:, 1]
    bad = k2 <= 0
    if cb.shape[1] >= 4:
        sd = jnp.sqrt(jnp.where(k2 > 0, k2, 1.0))
        l3 = cb[:, 2] / sd**3
        l4 = cb[:, 3] / sd**4
        bad = bad | (l4 < l3 * l3 - 2.0)
    status = status | jnp.where(bad, jnp.int32(INCONSISTENT_CUMULANTS), jnp.int32(0))
    method = "saddlepoint" if order == 1 else "saddlepoint-2"
    return TailProbability(prob.reshape(shape), log_prob.reshape(shape), status.reshape(shape),
                           s.reshape(shape), method)


@partial(jax.jit, static_argnums=(2, 3, 4))
def _series_core(tb, cb, lower, order, max_iter):
    dtype = tb.dtype

    def one(tt, cc):
        cgf = CGF(_series_fn, cc, -math.inf, math.inf, "series")
        if lower:
            cgf = cgf.negated()
            tt = -tt
        p, lp, st, s = _lugannani_rice_scalar(cgf, tt, order, max_iter, dtype)
        return p, lp, st, -s if lower else s

    return jax.vmap(one)(tb, cb)
