"""``P(Y > t)`` from the first cumulants of Y by the Edgeworth expansion.

With ``w = (t - k1) / sqrt(k2)`` and standardised cumulants ``l_r = k_r / k2^(r/2)``,
the characteristic function of the standardised variable is
``exp(-u^2/2) exp(sum_{r>=3} l_r (iu)^r / r!)``; expanding the second factor with
``l_r`` counted as order ``eps^(r-2)`` and keeping every term up to ``eps^(K-2)``
(K = number of cumulants given) gives, since ``(iu)^p`` transforms to ``He_p(w) phi(w)``
and ``int_w^inf He_p phi = He_{p-1}(w) phi(w)``,

    P(Y > t) = Q(w) + phi(w) * sum_terms c * He_{p-1}(w),
    density   = phi(w) / sqrt(k2) * (1 + sum_terms c * He_p(w)),

summed over multisets ``{r_1, ..., r_q}`` (``r_i >= 3``, ``sum (r_i - 2) <= K - 2``) with
``c = prod l_r^{n_r} / (r!^{n_r} n_r!)`` and ``p = sum r_i``. With four cumulants this is
the classical ``Q(w) + phi(w) [l3/6 He2 + l4/24 He3 + l3^2/72 He5]``; cumulants beyond
K are taken as zero (not estimated).

Validity. The expansion is asymptotic in the *relative* error near the centre: its
error at ``w`` standard deviations grows like a polynomial in ``w`` times the first
omitted term, so far in the tail (a few sigma for visibly skewed Y) it is only good to
an order of magnitude and can turn negative. Flags (see :mod:`._result`):
``OUT_OF_RANGE`` when the value leaves [0, 1], ``NEGATIVE_DENSITY`` when the Edgeworth
density is negative at t (the approximation has broken down there),
``INCONSISTENT_CUMULANTS`` when ``k2 <= 0`` or ``l4 < l3^2 - 2`` (Pearson's bound: no
distribution has them). Prefer the saddlepoint approximation
(:func:`~ppl_mech.tails.saddlepoint_tail`) for tails; Edgeworth is the check near the bulk.
"""

from __future__ import annotations

import math
from functools import cache, partial

import jax
import jax.numpy as jnp

from .._minimax_tilting import log_ndtr
from ._result import INCONSISTENT_CUMULANTS, NEGATIVE_DENSITY, OUT_OF_RANGE, TailProbability, _status

__all__ = ["edgeworth_terms", "edgeworth_tail"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@cache
def edgeworth_terms(num_cumulants: int) -> tuple[tuple[float, tuple[int, ...], int], ...]:
    """The expansion's terms for K cumulants: ``(coefficient, r-multiset, p)`` with ``p = sum r``.

    The coefficient excludes the ``l_r`` factors: term value = coefficient * prod l_r * He(.).
    """
    top = num_cumulants - 2  # highest power of eps kept
    out = []

    def rec(start, remaining, chosen):
        if chosen:
            counts = {r: chosen.count(r) for r in set(chosen)}
            coef = 1.0
            for r, n in counts.items():
                coef /= math.factorial(r) ** n * math.factorial(n)
            out.append((coef, tuple(chosen), sum(chosen)))
        for r in range(start, num_cumulants + 1):
            if r - 2 <= remaining:
                rec(r, remaining - (r - 2), chosen + [r])

    rec(3, top, [])
    return tuple(out)


def _hermite_table(w, top):
    """``He_0(w) .. He_top(w)`` stacked on a new last axis."""
    rows = [jnp.ones_like(w), w]
    for k in range(1, top):
        rows.append(w * rows[k] - k * rows[k - 1])
    return jnp.stack(rows[: top + 1], axis=-1)


def _check_cumulants(cumulants):
    cumulants = jnp.asarray(cumulants)
    if not jnp.issubdtype(cumulants.dtype, jnp.floating):
        cumulants = cumulants.astype(jnp.result_type(float))
    if cumulants.ndim == 0 or cumulants.shape[-1] < 2:
        raise ValueError(
            "cumulants must have the cumulants (k1, k2, k3, ...) on its last axis, at least the mean "
            f"and the variance; got shape {cumulants.shape}"
        )
    return cumulants


def edgeworth_tail(t, cumulants, *, lower: bool = False) -> TailProbability:
    """Edgeworth approximation of ``P(Y > t)`` (``lower=True``: ``P(Y < t)``).

    ``cumulants``: ``(..., K)`` with ``(k1, k2, k3, ..., kK)`` on the last axis, K >= 2
    (K = 2 is the Gaussian ``Q(w)``); ``t`` broadcasts against ``cumulants[..., 0]``.
    Pure ``jnp``: jit-able and differentiable in ``t`` and the cumulants. See the module
    docstring for the terms kept and the validity flags.

        edgeworth_tail(3.0, jnp.array([0.0, 1.0, 0.2, 0.1])).probability  # ~ 1.9e-3
    """
    cumulants = _check_cumulants(cumulants)
    t = jnp.asarray(t, cumulants.dtype)
    return _edgeworth(t, cumulants, bool(lower))


@partial(jax.jit, static_argnums=2)
def _edgeworth(t, cumulants, lower):
    K = cumulants.shape[-1]
    k = [cumulants[..., i] for i in range(K)]
    if lower:  # P(Y < t) = P(-Y > -t): odd cumulants change sign
        k = [(-1.0) ** (i + 1) * ki for i, ki in enumerate(k)]
        t = -t
    var = k[1]
    pos = var > 0
    sd = jnp.sqrt(jnp.where(pos, var, 1.0))
    w = (t - k[0]) / sd
    lam = {r: k[r - 1] / sd**r for r in range(3, K + 1)}

    terms = edgeworth_terms(K)
    top = max((p for _, _, p in terms), default=0)
    He = _hermite_table(w, max(top, 1))
    tail_sum = jnp.zeros_like(w)
    dens_sum = jnp.zeros_like(w)
    for coef, rs, p in terms:
        c = jnp.asarray(coef, cumulants.dtype)
        for r in rs:
            c = c * lam[r]
        tail_sum = tail_sum + c * He[..., p - 1]
        dens_sum = dens_sum + c * He[..., p]

    log_q = log_ndtr(-w)
    log_phi = -0.5 * w * w - _LOG_SQRT_2PI
    # upper side: P = Q(w) (1 + (phi/Q) S), in log space; elsewhere directly
    mills = jnp.exp(log_phi - log_q)
    factor = 1.0 + mills * tail_sum
    prob = jnp.exp(log_q) * factor
    log_prob = jnp.where(factor > 0, log_q + jnp.log(jnp.where(factor > 0, factor, 1.0)), jnp.nan)
    direct = jnp.exp(log_q) + jnp.exp(log_phi) * tail_sum
    use_direct = w <= 0
    prob = jnp.where(use_direct, direct, prob)
    log_direct = jnp.where(direct > 0, jnp.log(jnp.where(direct > 0, direct, 1.0)), jnp.nan)
    log_prob = jnp.where(use_direct, log_direct, log_prob)

    inconsistent = ~pos
    if K >= 4:
        inconsistent = inconsistent | (lam[4] < lam[3] ** 2 - 2.0)
    status = _status(
        (inconsistent, INCONSISTENT_CUMULANTS),
        ((prob < 0) | (prob > 1), OUT_OF_RANGE),
        (1.0 + dens_sum < 0, NEGATIVE_DENSITY),
    )
    prob = jnp.where(pos, prob, jnp.nan)
    log_prob = jnp.where(pos, log_prob, jnp.nan)
    nan = jnp.full_like(prob, jnp.nan)
    return TailProbability(prob, log_prob, jnp.broadcast_to(status, prob.shape), nan, "edgeworth")

