"""Covariances of elementwise functions of correlated Gaussians by the Hermite (Mehler) series.

Write ``f_i(z) = f(mu_i + s_i z)`` in the orthonormal probabilists' Hermite
basis ``h_k = He_k / sqrt(k!)``: ``c_k(i) = E[f_i(Z) h_k(Z)]``. For standard
normals ``Z_i, Z_j`` with correlation ``rho`` Mehler's formula gives
``E[h_k(Z_i) h_l(Z_j)] = delta_kl rho^k``, hence

    Cov(f(x_i), f(x_j)) = sum_{k >= 1} c_k(i) c_k(j) rho_ij^k,     Var f(x_i) = sum_{k>=1} c_k(i)^2.

Truncation (documented choice). The series is summed to ``k = order`` (16 by
default) and the remainder ``R = sum_{k > K} c_k(i) c_k(j) rho^k`` is replaced
by its *endpoint-matched* estimate ``T_even rho^e + T_odd rho^o`` (``e``/``o``:
the first even/odd order above ``K``), where ``T_even``/``T_odd`` are the even
and odd parts of the remainder, known exactly from the ``rho = +1`` and
``rho = -1`` covariances ``E[f_i(Z) f_j(+-Z)] - E f_i E f_j`` (1-D
Gauss–Hermite, one matrix product). The estimate is exact at ``rho = -1, 0, 1``
-- precisely where the plain series converges worst (``|rho| -> 1``) -- and in
between its error, like the plain truncation's, is at most
``|rho|^(K+1) sqrt(tail_i tail_j)`` with ``tail_i = Var f(x_i) - sum_{k<=K} c_k(i)^2``
(Cauchy–Schwarz; computable, returned by :func:`mehler_covariance_with_bound`;
it assumes exact coefficients, so the Gauss–Hermite error of the coefficients,
see :mod:`.gauss_hermite`, comes on top).
The diagonal is the Gauss–Hermite variance itself, so truncation never touches it.

:func:`bivariate_gauss_hermite_covariance` (a ``degree^2`` tensor rule on the
Cholesky factor) is the independent cross-check; it is exact for polynomials
and accurate for smooth ``f`` at any ``|rho| <= 1``, but costs ``degree^2``
evaluations per pair, so it is offered per pair rather than for whole layers.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .gauss_hermite import gauss_hermite_rule

__all__ = [
    "bivariate_gauss_hermite_covariance",
    "bivariate_gauss_hermite_expectation",
    "hermite_coefficients",
    "mehler_covariance",
    "mehler_covariance_with_bound",
    "mehler_moments",
    "truncated_mehler_covariance",
]

DEFAULT_ORDER = 16
# Coefficients by Gauss–Hermite: 96 nodes keep tanh/gelu coefficients at ~1e-7
# or better up to var ~ 4 (see :mod:`.gauss_hermite` for the convergence table).
DEFAULT_DEGREE = 96


def _hermite_table(z, order):
    """``h_k(z) = He_k(z) / sqrt(k!)`` for ``k = 0..order``, shape ``(order + 1, len(z))``.

    Recurrence ``h_{k+1} = (z h_k - sqrt(k) h_{k-1}) / sqrt(k + 1)``.
    """
    rows = [jnp.ones_like(z), z]
    for k in range(1, order):
        rows.append((z * rows[k] - jnp.sqrt(float(k)) * rows[k - 1]) / jnp.sqrt(float(k + 1)))
    return jnp.stack(rows[: order + 1])


def _nodes_values(f, mean, var, degree):
    dtype = jnp.result_type(mean, var, 1.0)
    mean, var = jnp.broadcast_arrays(jnp.asarray(mean, dtype), jnp.asarray(var, dtype))
    pos = var > 0
    s = jnp.where(pos, jnp.sqrt(jnp.where(pos, var, 1.0)), 0.0)
    z, w = gauss_hermite_rule(degree, dtype)
    fx = f(mean[..., None] + s[..., None] * z)
    return fx, z, w, s, pos


def hermite_coefficients(
    f: Callable[[jax.Array], jax.Array],
    mean,
    var,
    order: int = DEFAULT_ORDER,
    degree: int = DEFAULT_DEGREE,
) -> jax.Array:
    """``c_k = E[f(mean + s Z) h_k(Z)]``, ``k = 0..order`` (orthonormal Hermite), shape ``(..., order+1)``.

    ``c_0`` is the mean of ``f(X)``; ``sum_{k>=1} c_k^2`` is its variance.
    Needs ``degree > order``: the rule integrates ``f h_k`` exactly only for
    polynomial ``f`` of degree ``< 2 degree - order``.
    """
    fx, z, w, _, _ = _nodes_values(f, mean, var, degree)
    table = _hermite_table(z, order)
    return jnp.einsum("...d,kd->...k", fx * w, table)


def truncated_mehler_covariance(coefficients, cov, variance):
    """``(covariance, bound)`` of ``f_i(x_i)`` from their Hermite coefficients, plain truncation.

    Args:
        coefficients: ``(K, n)`` orthonormal Hermite coefficients ``c_1..c_K`` of each unit.
        cov: ``(n, n)`` covariance of the Gaussian inputs ``x``.
        variance: ``(n,)`` exact variances of the outputs (put on the diagonal).

    Off the diagonal ``sum_k c_k(i) c_k(j) rho_ij^k``; each entry is within
    ``sqrt(T_i T_j) |rho_ij|^(K+1)`` of the exact covariance, ``T_i = Var_i - sum_k c_k(i)^2``;
    ``bound`` is the largest such bound.
    """
    s = jnp.sqrt(jnp.maximum(jnp.diagonal(cov), 0.0))
    denom = s[:, None] * s[None, :]
    rho = jnp.clip(jnp.where(denom > 0, cov / jnp.where(denom > 0, denom, 1.0), 0.0), -1.0, 1.0)
    out = jnp.zeros_like(cov)
    power = jnp.ones_like(cov)
    for ck in coefficients:
        power = power * rho
        out = out + ck[:, None] * ck[None, :] * power
    tail = jnp.maximum(variance - jnp.sum(jnp.square(coefficients), axis=0), 0.0)
    off = ~jnp.eye(cov.shape[0], dtype=bool)
    bound = jnp.max(jnp.where(off, jnp.sqrt(tail[:, None] * tail[None, :]) * jnp.abs(power * rho), 0.0))
    return jnp.where(off, out, jnp.diag(variance)), bound


def _mehler(f, mean, cov, order, degree, tail):
    mean = jnp.asarray(mean)
    cov = jnp.asarray(cov)
    dtype = jnp.result_type(mean, cov, 1.0)
    mean = mean.astype(dtype)
    cov = cov.astype(dtype)
    var = jnp.diagonal(cov, axis1=-2, axis2=-1)
    fx, z, w, s, pos = _nodes_values(f, mean, var, degree)
    table = _hermite_table(z, order)
    coef = jnp.einsum("...d,kd->...k", fx * w, table)  # (..., n, K+1)
    m = coef[..., 0]
    centred = fx - m[..., None]
    var_out = jnp.sum(w * centred * centred, axis=-1)

    both = pos[..., :, None] & pos[..., None, :]
    denom = jnp.where(both, s[..., :, None] * s[..., None, :], 1.0)
    rho = jnp.clip(jnp.where(both, cov / denom, 0.0), -1.0, 1.0)

    c = coef[..., 1:]  # (..., n, K)
    series = jnp.zeros_like(cov)
    partial_plus = jnp.zeros_like(cov)
    partial_minus = jnp.zeros_like(cov)
    power = jnp.ones_like(cov)
    for k in range(1, order + 1):
        power = power * rho
        ck = c[..., k - 1]
        outer = ck[..., :, None] * ck[..., None, :]
        series = series + outer * power
        partial_plus = partial_plus + outer
        partial_minus = partial_minus + outer * (-1.0) ** k

    # tails at rho = +1 and rho = -1 from 1-D quadrature (nodes are symmetric,
    # so reversing them maps z -> -z)
    weighted = centred * w
    cov_plus = jnp.einsum("...id,...jd->...ij", weighted, centred)
    cov_minus = jnp.einsum("...id,...jd->...ij", weighted, centred[..., ::-1])
    tail_plus = cov_plus - partial_plus
    tail_minus = cov_minus - partial_minus
    if tail == "endpoint":
        even = 0.5 * (tail_plus + tail_minus)
        odd = 0.5 * (tail_plus - tail_minus)
        e = order + 1 if (order + 1) % 2 == 0 else order + 2
        o = order + 1 if (order + 1) % 2 == 1 else order + 2
        series = series + even * rho**e + odd * rho**o
    elif tail is not None:
        raise ValueError(f"tail must be 'endpoint' or None, got {tail!r}")

    tail_var = jnp.maximum(var_out - jnp.sum(c * c, axis=-1), 0.0)
    bound = jnp.abs(rho) ** (order + 1) * jnp.sqrt(tail_var[..., :, None] * tail_var[..., None, :])
    eye = jnp.eye(mean.shape[-1], dtype=bool)
    cov_out = jnp.where(eye, var_out[..., None, :], jnp.where(both, series, 0.0))
    bound = jnp.where(eye | ~both, 0.0, bound)
    return m, cov_out, bound


def mehler_covariance(
    f: Callable[[jax.Array], jax.Array],
    mean,
    cov,
    order: int = DEFAULT_ORDER,
    degree: int = DEFAULT_DEGREE,
    tail: str | None = "endpoint",
) -> jax.Array:
    """``Cov(f(x_i), f(x_j))`` ``(n, n)`` for ``x ~ N(mean, cov)`` by the truncated Mehler series.

    The diagonal is the Gauss–Hermite variance; ``tail='endpoint'`` adds the
    endpoint-matched remainder (exact at ``rho = +-1``), ``tail=None`` is the
    plain truncation at ``order``. See the module docstring for the error bound.
    """
    return _mehler(f, mean, cov, order, degree, tail)[1]


def mehler_covariance_with_bound(
    f: Callable[[jax.Array], jax.Array],
    mean,
    cov,
    order: int = DEFAULT_ORDER,
    degree: int = DEFAULT_DEGREE,
    tail: str | None = "endpoint",
) -> tuple[jax.Array, jax.Array]:
    """``(covariance, truncation bound |rho|^(K+1) sqrt(tail_i tail_j))``, both ``(n, n)``."""
    _, c, b = _mehler(f, mean, cov, order, degree, tail)
    return c, b


def mehler_moments(
    f: Callable[[jax.Array], jax.Array],
    mean,
    cov,
    order: int = DEFAULT_ORDER,
    degree: int = DEFAULT_DEGREE,
    tail: str | None = "endpoint",
) -> tuple[jax.Array, jax.Array]:
    """``(E f(x), Cov f(x))``: the Gauss–Hermite mean and :func:`mehler_covariance`."""
    m, c, _ = _mehler(f, mean, cov, order, degree, tail)
    return m, c


def _bivariate_grid(mean1, mean2, var1, var2, cov, degree):
    dtype = jnp.result_type(mean1, mean2, var1, var2, cov, 1.0)
    mean1, mean2, var1, var2, cov = jnp.broadcast_arrays(
        *[jnp.asarray(v, dtype) for v in (mean1, mean2, var1, var2, cov)]
    )
    z, w = gauss_hermite_rule(degree, dtype)
    pos1 = var1 > 0
    pos2 = var2 > 0
    s1 = jnp.where(pos1, jnp.sqrt(jnp.where(pos1, var1, 1.0)), 0.0)
    s2 = jnp.where(pos2, jnp.sqrt(jnp.where(pos2, var2, 1.0)), 0.0)
    both = pos1 & pos2
    rho = jnp.clip(jnp.where(both, cov / jnp.where(both, s1 * s2, 1.0), 0.0), -1.0, 1.0)
    om = (1.0 - rho) * (1.0 + rho)
    sq = jnp.where(om > 0, jnp.sqrt(jnp.where(om > 0, om, 1.0)), 0.0)
    e = lambda v: v[..., None, None]  # noqa: E731
    z1 = z[:, None]
    z2 = z[None, :]
    x1 = e(mean1) + e(s1) * z1
    x2 = e(mean2) + e(s2) * (e(rho) * z1 + e(sq) * z2)
    ww = w[:, None] * w[None, :]
    return x1, x2, ww


def bivariate_gauss_hermite_expectation(
    f: Callable[[jax.Array], jax.Array],
    g: Callable[[jax.Array], jax.Array],
    mean1,
    mean2,
    var1,
    var2,
    cov,
    degree: int = 32,
) -> jax.Array:
    """``E[f(X1) g(X2)]`` by the ``degree x degree`` tensor Gauss–Hermite rule (broadcasts)."""
    x1, x2, ww = _bivariate_grid(mean1, mean2, var1, var2, cov, degree)
    return jnp.sum(ww * f(x1) * g(x2), axis=(-2, -1))


def bivariate_gauss_hermite_covariance(
    f: Callable[[jax.Array], jax.Array],
    g: Callable[[jax.Array], jax.Array],
    mean1,
    mean2,
    var1,
    var2,
    cov,
    degree: int = 32,
) -> jax.Array:
    """``Cov(f(X1), g(X2))`` by the tensor rule, summed centred."""
    x1, x2, ww = _bivariate_grid(mean1, mean2, var1, var2, cov, degree)
    fx = f(x1)
    gx = g(x2)
    mf = jnp.sum(ww * fx, axis=(-2, -1), keepdims=True)
    mg = jnp.sum(ww * gx, axis=(-2, -1), keepdims=True)
    return jnp.sum(ww * (fx - mf) * (gx - mg), axis=(-2, -1))
