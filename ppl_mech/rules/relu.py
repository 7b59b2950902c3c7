"""Exact moments of ``relu(X)`` for Gaussian ``X``.

For ``X ~ N(mu, s^2)`` and ``a = mu / s`` (``phi``, ``Phi``: standard normal pdf, cdf):

* ``E relu(X) = mu Phi(a) + s phi(a)``
* ``E relu(X)^2 = (mu^2 + s^2) Phi(a) + mu s phi(a)``
* ``Var relu(X) = s^2 [a^2 Phi(a) Phi(-a) + Phi(a) + a phi(a) (1 - 2 Phi(a)) - phi(a)^2]``
  (the centred form: no ``mu^2`` cancellation when ``a >> 0``). For ``a < -3`` the
  bracket suffers ``eps * a^4`` cancellation, so a continued fraction for the
  Mills ratio is used there instead (``E = s phi(a) g1``, ``E relu^2 = s^2 phi(a) g2``).
* For a pair with correlation ``rho`` (Rosenbaum 1961, "Moments of a truncated
  bivariate normal distribution"; Frey & Hinton 1999):
  ``E[relu(X1) relu(X2)] = (mu1 mu2 + c) Phi2(a1, a2; rho)
  + mu1 s2 phi(a2) Phi(b1) + mu2 s1 phi(a1) Phi(b2) + s1 s2 (1 - rho^2) phi2(a1, a2; rho)``
  with ``b1 = (a1 - rho a2)/sqrt(1 - rho^2)``, ``b2 = (a2 - rho a1)/sqrt(1 - rho^2)``;
  at ``mu = 0`` it is the arc-cosine kernel ``s1 s2 (sqrt(1-rho^2) + rho (pi - arccos rho)) / (2 pi)``.
* ``Cov(X_i, relu(X_j)) = Cov(X_i, X_j) Phi(a_j)`` (Stein's lemma).

``var = 0`` is a point mass (``relu(mu)``, zero variance), with gradients kept
finite by the double-``where`` trick. ``|rho| = 1`` is handled by clipping
``rho`` to ``1 - 4 eps``, which the formula is continuous at (error ``O(eps)``).
In float32 the covariance of two units with ``|mu/s| >> 1`` is a difference of
numbers of size ``mu1 mu2``: absolute error ``~ 6e-8 mu1 mu2``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr

from .._bivariate_normal import bivariate_normal_cdf_genz
from .mehler import truncated_mehler_covariance

__all__ = [
    "relu_covariance",
    "relu_cross_moment",
    "relu_input_output_covariance",
    "relu_mean",
    "relu_moments",
    "relu_second_moment",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# Below a = -3 use the continued fraction (60 terms: < 1e-15 relative error there;
# the direct form's eps * a^4 loss is < 1e-13 above).
_SERIES_SWITCH = -3.0
_SERIES_TERMS = 60


def _as_float(*xs):
    dtype = jnp.result_type(*xs, 1.0)
    return jnp.broadcast_arrays(*[jnp.asarray(x, dtype=dtype) for x in xs])


def _npdf(x):
    return jnp.exp(-0.5 * x * x - _LOG_SQRT_2PI)


def _std(var):
    """``sqrt(var)`` with a safe value (1) where ``var <= 0``, and the mask."""
    pos = var > 0
    return jnp.sqrt(jnp.where(pos, var, 1.0)), pos


def _tail_series(a):
    """``g1 = 1 + a R(a)`` and ``g2 = (a^2 + 1) R(a) + a`` for ``a << 0``, ``R = Phi(a)/phi(a)``.

    From the continued fraction ``1/R = t + 1/(t + 2/(t + 3/(t + ...)))``,
    ``t = -a`` (Abramowitz & Stegun 26.2.14): writing ``A_j = t + j / A_{j+1}``
    and ``c = 1/A_2`` gives ``g1 = c / (t + c)`` and ``g2 = 2 / ((t A_3 + 2)(t + c))``
    with no cancellation (the direct forms lose ``eps * a^4``).
    """
    t = -a

    def step(i, acc):  # j = _SERIES_TERMS, ..., 4 (a loop keeps the compiled graph small)
        return t + (_SERIES_TERMS - i) / acc

    acc = jax.lax.fori_loop(0, _SERIES_TERMS - 3, step, t)
    a3 = t + 3.0 / acc
    c = 1.0 / (t + 2.0 / a3)
    g1 = c / (t + c)
    g2 = 2.0 / ((t * a3 + 2.0) * (t + c))
    return g1, g2


def _standard_relu_moments(a):
    """``E relu(Z + a)``, ``E relu(Z + a)^2`` and ``Var relu(Z + a)`` for ``Z ~ N(0, 1)``."""
    p = ndtr(a)
    q = ndtr(-a)
    d = _npdf(a)
    m1 = a * p + d
    m2 = (a * a + 1.0) * p + a * d
    v = a * a * p * q + p + a * d * (q - p) - d * d
    # far negative a: continued fraction (the direct forms cancel like eps * a^4)
    a_s = jnp.minimum(a, _SERIES_SWITCH)
    g1, g2 = _tail_series(a_s)
    d_s = _npdf(a_s)
    tail = a < _SERIES_SWITCH
    m1 = jnp.where(tail, d_s * g1, m1)
    m2 = jnp.where(tail, d_s * g2, m2)
    v = jnp.where(tail, d_s * g2 - (d_s * g1) ** 2, v)
    return m1, m2, jnp.maximum(v, 0.0)


@jax.jit
def relu_moments(mean, var):
    """``(E relu(X), Var relu(X))`` for ``X ~ N(mean, var)``; broadcasts; exact."""
    mean, var = _as_float(mean, var)
    s, pos = _std(var)
    m1, _, v = _standard_relu_moments(mean / s)
    point = jnp.maximum(mean, 0.0)
    return jnp.where(pos, s * m1, point), jnp.where(pos, s * s * v, 0.0)


@jax.jit
def relu_mean(mean, var):
    """``E relu(X)`` for ``X ~ N(mean, var)``."""
    return relu_moments(mean, var)[0]


@jax.jit
def relu_second_moment(mean, var):
    """``E relu(X)^2 = (mu^2 + s^2) Phi(mu/s) + mu s phi(mu/s)``; exact."""
    mean, var = _as_float(mean, var)
    s, pos = _std(var)
    _, m2, _ = _standard_relu_moments(mean / s)
    point = jnp.maximum(mean, 0.0) ** 2
    return jnp.where(pos, s * s * m2, point)


def _clip_rho(rho):
    eps = jnp.finfo(rho.dtype).eps
    return jnp.clip(rho, -1.0 + 4 * eps, 1.0 - 4 * eps)


@jax.jit
def relu_cross_moment(mean1, mean2, var1, var2, cov):
    """``E[relu(X1) relu(X2)]`` for jointly Gaussian ``X1, X2``; exact (Phi2 closed form).

    Broadcasts; ``var = 0`` (point masses) and ``|rho| = 1`` are handled.
    """
    mean1, mean2, var1, var2, cov = _as_float(mean1, mean2, var1, var2, cov)
    s1, pos1 = _std(var1)
    s2, pos2 = _std(var2)
    both = pos1 & pos2
    rho = _clip_rho(jnp.where(both, cov / (s1 * s2), 0.0))
    a1 = mean1 / s1
    a2 = mean2 / s2
    om = (1.0 - rho) * (1.0 + rho)
    sq = jnp.sqrt(om)
    b1 = (a1 - rho * a2) / sq
    b2 = (a2 - rho * a1) / sq
    p2 = bivariate_normal_cdf_genz(a1, a2, rho)
    dens = jnp.exp(-(a1 * a1 - 2.0 * rho * a1 * a2 + a2 * a2) / (2.0 * om)) / (2.0 * math.pi)
    cross = (
        (mean1 * mean2 + rho * s1 * s2) * p2
        + mean1 * s2 * _npdf(a2) * ndtr(b1)
        + mean2 * s1 * _npdf(a1) * ndtr(b2)
        + s1 * s2 * sq * dens
    )
    # point masses: relu(mu1) E relu(X2), etc.
    e1 = relu_mean(mean1, var1)
    e2 = relu_mean(mean2, var2)
    degenerate = jnp.where(pos1, e1 * jnp.maximum(mean2, 0.0), jnp.maximum(mean1, 0.0) * e2)
    return jnp.where(both, cross, degenerate)


@jax.jit
def relu_covariance(mean, cov):
    """Exact mean ``(n,)`` and covariance ``(n, n)`` of ``relu(x)``, ``x ~ N(mean, cov)``.

    The diagonal is the exact variance from :func:`relu_moments` (centred form).
    """
    mean = jnp.asarray(mean)
    cov = jnp.asarray(cov)
    dtype = jnp.result_type(mean, cov, 1.0)
    mean = mean.astype(dtype)
    cov = cov.astype(dtype)
    var = jnp.diagonal(cov, axis1=-2, axis2=-1)
    mean_out, var_out = relu_moments(mean, var)
    cross = relu_cross_moment(
        mean[..., :, None], mean[..., None, :], var[..., :, None], var[..., None, :], cov
    )
    cov_out = cross - mean_out[..., :, None] * mean_out[..., None, :]
    n = mean.shape[-1]
    eye = jnp.eye(n, dtype=bool)
    cov_out = jnp.where(eye, var_out[..., None, :] * jnp.ones_like(cov_out), cov_out)
    return mean_out, cov_out


@jax.jit
def relu_input_output_covariance(mean, cov):
    """``Cov(x_i, relu(x_j)) = cov_ij Phi(mean_j / s_j)`` (Stein's lemma), shape ``(n, n)``."""
    mean = jnp.asarray(mean)
    cov = jnp.asarray(cov)
    dtype = jnp.result_type(mean, cov, 1.0)
    mean = mean.astype(dtype)
    cov = cov.astype(dtype)
    var = jnp.diagonal(cov, axis1=-2, axis2=-1)
    s, pos = _std(var)
    slope = jnp.where(pos, ndtr(mean / s), (mean > 0).astype(dtype))
    return cov * slope[..., None, :]


def relu_hermite_coefficients(mean, var, order: int):
    """Orthonormal Hermite coefficients of ``relu(mean + s Z)``, ``c_0..c_order`` on a leading axis.

    Closed form by Stein's identity ``c_k = E[g^(k)(Z)] / sqrt(k!)`` with
    ``g(z) = relu(mean + s z)``: ``c_0 = E relu``, ``c_1 = s Phi(a)`` and, for ``k >= 2``
    (``g''`` is ``s`` times a point mass at ``z = -a``), ``c_k = s phi(a) He_{k-2}(-a) / sqrt(k!)``,
    with ``a = mean / s``.
    """
    mean, var = _as_float(mean, var)
    s, pos = _std(var)
    a = jnp.where(pos, mean / s, 0.0)
    pdf = _npdf(a)
    coefficients = [relu_mean(mean, var), jnp.where(pos, s * ndtr(a), 0.0)]
    he_prev, he = jnp.zeros_like(a), jnp.ones_like(a)  # He_{-1}, He_0 at -a
    for k in range(2, order + 1):
        coefficients.append(jnp.where(pos, s * pdf * he / math.sqrt(math.factorial(k)), 0.0))
        he_prev, he = he, -a * he - (k - 2) * he_prev  # He_{m+1}(x) = x He_m - m He_{m-1}
    return jnp.stack(coefficients)


def relu_covariance_hermite(mean, cov, order: int = 16):
    """``(mean, cov, bound)`` of ``relu(x)`` by the Mehler series, with its truncation bound.

    ``Cov = sum_{k=1..order} c_k(i) c_k(j) rho_ij^k`` off the diagonal, the exact variance
    on it. Each off-diagonal entry is within ``sqrt(T_i T_j) |rho_ij|^(order+1)`` of the
    exact (Phi_2) covariance, ``T_i = Var_i - sum_k c_k(i)^2``; ``bound`` is the largest.
    About ``3 * order`` FLOPs per pair, against a few hundred for the exact form.
    """
    dtype = jnp.result_type(mean, cov, 1.0)
    mean, cov = jnp.asarray(mean, dtype), jnp.asarray(cov, dtype)
    var = jnp.diagonal(cov)
    mean_out, var_out = relu_moments(mean, var)
    c = relu_hermite_coefficients(mean, var, order)[1:]  # (order, n)
    cov_out, bound = truncated_mehler_covariance(c, cov, var_out)
    return mean_out, cov_out, bound
