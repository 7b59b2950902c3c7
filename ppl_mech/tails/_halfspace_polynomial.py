"""The polynomial method for ``P(A x <= b)``, x Gaussian: Hermite-project the running product.

Our reading of the polynomial method in ARC's "Competing with sampling" (2025): represent
the indicator of the event by a low-degree polynomial in the Hermite basis of the
Gaussian input, building it one halfspace at a time,

    F_0 = 1,    F_j = Proj_{<= D}( F_{j-1} * 1[z_j <= s_j] ),    P ~ E F_k = constant term of F_k,

where ``z_j = (a_j.x - a_j.mean) / sd_j`` are the standardised constraint values (unit
normals, correlations ``R = corr(A x)``), ``s_j = (b_j - a_j.mean) / sd_j`` and
``Proj_{<= D}`` keeps the Wiener chaos (multivariate Hermite components) of degree
``<= D``. Each indicator enters through its exact Hermite coefficients
``E[1{Z <= s} He_m(Z)] = -phi(s) He_{m-1}(s)`` (``m >= 1``; ``Phi(s)`` for m = 0), and
``D = 0`` is the presumption of independence ``prod_j Phi(s_j)``; ``D -> inf`` is exact.
With two halfspaces the method is the Mehler series of the bivariate normal CDF summed
to order D.

Computation (no n-dimensional tensors; cost independent of dim x). The degree-r chaos
of F_j pairs, in the final expectation, only with the halfspaces still to come, so it is
determined by its contractions with their normals: a polynomial ``S_j(t_{j+1}, ..., t_k)``
whose monomial ``t^beta`` collects ``beta_l`` open legs bound for halfspace ``l``
(Wick/diagram expansion: ``E prod_i He_{m_i}(z_i) = prod_i m_i! [t^m] exp(sum_{i<l} R_il t_i t_l)``).
Adding halfspace j takes the legs bound for it and emits new ones:

    S_j = sum_{beta, e} a_{beta+e}(s_j) [t_j^beta] S_{j-1} * (sum_{l>j} R_jl t_l)^e / e!

truncated to total degree ``<= D`` (exactly ``Proj_{<= D}``: total degree = chaos degree).
``a_m(s)`` are the He-basis coefficients above (truncated at ``indicator_degree``, by
default ``2 D`` — no higher term can reach the truncated product, so the indicator is
used exactly). The state has ``C(k + D, D)`` coefficients; a step costs
``O(k D C(k + D, D))``: k = 10, D = 8 is 44k coefficients.

Accuracy (measured, see the report and tests): excellent when the correlations are
weak (random halfspaces in high dimension, ``|R| ~ 1/sqrt(dim)``), because the chaos
series converges like ``(|R| s^2)^D / D!``; poor for rare events with strong
correlations — with ``s ~ 4`` and ``R ~ 0.5`` the terms first grow like ``(R s^2)^D / D!``
and the truncated sum is far off (even negative) until D ~ 20, which is out of reach
for k >~ 5. There minimax tilting
(:func:`ppl_mech._gaussian_polytope.gaussian_polytope_probability`) wins by orders of
magnitude. The result depends on the order of the halfspaces (the truncation is by the
number of legs crossing each cut); ``change`` (the difference from degree ``D - 1``) is
a crude truncation indicator, not an error bound.

Pure JAX: ``jit``-able (``degree``/``indicator_degree`` static) and differentiable in
``A, b, mean, cov``.
"""

from __future__ import annotations

from functools import cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from ._result import OUT_OF_RANGE, TailProbability, _status

__all__ = [
    "HalfspacePolynomialEstimate",
    "halfspace_polynomial_probability",
    "indicator_hermite_coefficients",
]


class HalfspacePolynomialEstimate(NamedTuple):
    """Result of :func:`halfspace_polynomial_probability`."""

    probability: jax.Array  # E F_k at degree D
    change: jax.Array  # estimate(D) - estimate(D - 1): truncation indicator
    independence: jax.Array  # prod_j Phi(s_j) (the D = 0 estimate)
    tail: TailProbability  # the same value with status flags (OUT_OF_RANGE if not in [0, 1])


def indicator_hermite_coefficients(s, order: int) -> jax.Array:
    """``a_m = E[1{Z <= s} He_m(Z)]`` for ``m = 0..order`` (probabilists' He), shape ``s.shape + (order+1,)``.

    ``a_0 = Phi(s)``, ``a_m = -phi(s) He_{m-1}(s)``: closed form (quadrature would be poor
    for a step function).
    """
    s = jnp.asarray(s)
    phi = jnp.exp(-0.5 * s * s) / jnp.sqrt(2.0 * jnp.pi)
    he = [jnp.ones_like(s), s]
    for k in range(1, order):
        he.append(s * he[k] - k * he[k - 1])
    rows = [ndtr(s)] + [-phi * he[m - 1] for m in range(1, order + 1)]
    return jnp.stack(rows[: order + 1], axis=-1)


@cache
def _tables(k: int, degree: int):
    """Monomials of k variables with total degree <= degree, and the gather tables."""
    monos = [m for d in range(degree + 1) for m in _compositions(d, k)]
    index = {m: i for i, m in enumerate(monos)}
    N = len(monos)
    pad = N  # index of an appended zero
    # down[l, i]: index of monomial i divided by t_l (pad if its t_l exponent is 0)
    down = np.full((k, N), pad, np.int32)
    # take[j, beta, i]: for monomial i free of t_j, the index of i * t_j^beta (pad if too high)
    take = np.full((k, degree + 1, N), pad, np.int32)
    for i, m in enumerate(monos):
        for l in range(k):
            if m[l] > 0:
                down[l, i] = index[m[:l] + (m[l] - 1,) + m[l + 1 :]]
        tot = sum(m)
        for j in range(k):
            if m[j] != 0:
                continue
            for beta in range(degree + 1 - tot):
                take[j, beta, i] = index[m[:j] + (beta,) + m[j + 1 :]]
    return N, down, take


def _compositions(total: int, k: int):
    if k == 1:
        yield (total,)
        return
    for first in range(total, -1, -1):
        for rest in _compositions(total - first, k - 1):
            yield (first,) + rest


@partial(jax.jit, static_argnums=(2, 3))
def _sequential_projection(s, R, degree: int, indicator_degree: int):
    """E F_k for standardised thresholds s (k,) and correlations R (k, k)."""
    k = s.shape[0]
    dtype = s.dtype
    N, down, take = _tables(k, degree)
    down = jnp.asarray(down)
    take = jnp.asarray(take)
    a = indicator_hermite_coefficients(s, indicator_degree)  # (k, I+1)
    e_max = min(degree, indicator_degree)
    # coef[e, beta] = a_{beta + e} where beta + e <= indicator_degree (B = coef @ A_beta)
    eb = np.arange(e_max + 1)[:, None] + np.arange(degree + 1)[None, :]
    valid = jnp.asarray(eb <= indicator_degree)
    eb = np.minimum(eb, indicator_degree)
    S = jnp.zeros(N + 1, dtype).at[0].set(1.0)  # constant 1, plus the zero pad slot

    def add_halfspace(j, S):
        A_beta = S[take[j]]  # (D+1, N): coefficient of t_j^beta, as a polynomial in the rest
        coef = jnp.where(valid, a[j][eb], 0.0)
        B = coef @ A_beta  # (E+1, N)
        r = jnp.where(jnp.arange(k) > j, R[j], 0.0)  # legs from j go only to later halfspaces
        acc = B[e_max]
        for e in range(e_max - 1, -1, -1):  # Horner: sum_e B_e L^e / e!
            padded = jnp.concatenate([acc, jnp.zeros(1, dtype)])
            acc = B[e] + (r @ padded[down]) / (e + 1)
        return jnp.concatenate([acc, jnp.zeros(1, dtype)])

    S = jax.lax.fori_loop(0, k, add_halfspace, S)
    return S[0]


def halfspace_polynomial_probability(
    A, b, mean, cov, *, degree: int = 6, indicator_degree: int | None = None, check: bool = True
) -> HalfspacePolynomialEstimate:
    """``P(A x <= b)`` for ``x ~ N(mean, cov)`` by sequential Hermite projection (module docstring).

    ``A`` (k, n), ``b`` (k,), ``cov`` (n, n). ``degree`` D >= 1: chaos truncation of the
    running product; ``indicator_degree``: Hermite degree of each indicator (default 2 D,
    i.e. exact). ``check``: also run degree D - 1 for ``change`` (else NaN; halves the cost).
    Each row of A must have ``a.cov.a > 0``. Example::

        r = halfspace_polynomial_probability(jnp.eye(2), jnp.zeros(2), jnp.zeros(2), jnp.eye(2))
        r.probability  # 0.25
    """
    degree = int(degree)
    if degree < 1:
        raise ValueError(f"degree must be >= 1; got {degree}")
    indicator_degree = 2 * degree if indicator_degree is None else int(indicator_degree)
    if indicator_degree < 0:
        raise ValueError(f"indicator_degree must be >= 0; got {indicator_degree}")
    A = jnp.asarray(A)
    dtype = jnp.result_type(A, b, mean, cov, float)
    A, b, mean, cov = (jnp.asarray(v, dtype) for v in (A, b, mean, cov))
    if mean.ndim != 1:
        raise ValueError(f"mean must be a vector; got shape {mean.shape}")
    n = mean.shape[0]
    if A.ndim != 2 or A.shape[1] != n:
        raise ValueError(f"A must have shape (k, {n}) to match mean; got {A.shape}")
    if b.shape != (A.shape[0],):
        raise ValueError(f"b must have shape ({A.shape[0]},) to match A; got {b.shape}")
    if cov.shape != (n, n):
        raise ValueError(f"cov must have shape ({n}, {n}); got {cov.shape}")
    zc = A @ cov @ A.T
    var = jnp.diagonal(zc)
    if not isinstance(var, jax.core.Tracer) and bool(jnp.any(var <= 0)):
        bad = [int(i) for i in np.flatnonzero(np.asarray(var) <= 0)]
        raise ValueError(f"rows {bad} of A have zero variance under cov (a deterministic constraint)")
    sd = jnp.sqrt(var)
    R = zc / (sd[:, None] * sd[None, :])
    s = (b - A @ mean) / sd
    p = _sequential_projection(s, R, degree, indicator_degree)
    if check:
        p_prev = _sequential_projection(s, R, degree - 1, min(indicator_degree, 2 * (degree - 1)))
    else:
        p_prev = jnp.full_like(p, jnp.nan)
    indep = jnp.prod(ndtr(s))
    log_p = jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), jnp.nan)
    status = _status(((p < 0) | (p > 1), OUT_OF_RANGE))
    tail = TailProbability(p, log_p, status, jnp.asarray(jnp.nan, dtype), "halfspace-polynomial")
    return HalfspacePolynomialEstimate(p, p - p_prev, indep, tail)

