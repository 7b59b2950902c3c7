"""Exact Gaussian moments of elementwise nonlinearities other than ReLU.

For ``X ~ N(mu, v)`` (and pairs with covariance ``c``); every function broadcasts,
is ``jit``-able and differentiable, and treats ``v = 0`` as a point mass.

* probit ``Phi(x)``: ``E = Phi(a)``, ``a = mu / sqrt(1 + v)``;
  ``E Phi(X1) Phi(X2) = P(Z1 <= X1, Z2 <= X2) = Phi2(a1, a2; rho)`` with
  ``rho = c / sqrt((1 + v1)(1 + v2))``, so ``Cov = Phi2(a1, a2; rho) - Phi(a1) Phi(a2)``
  ``= int_0^rho phi2(a1, a2; r) dr`` (computed as that integral, no cancellation;
  Genz's form beyond ``|rho| = 0.925``). ``Var = (1/2pi) int_0^{asin rho}
  exp(-a^2 / (1 + sin t)) dt`` with ``rho = v/(1+v)`` (Owen 1980, Table 1 #10,010).
* erf: ``erf(x) = 2 Phi(sqrt(2) x) - 1``.
* exp (lognormal): ``E = exp(mu + v/2)``, ``Cov = E1 E2 expm1(c)``.
* square: ``E = mu^2 + v``, ``Cov(X1^2, X2^2) = 2 c^2 + 4 mu1 mu2 c`` (Isserlis).
* heaviside ``1{x > 0}`` and sign: ``E = Phi(mu/s)``, ``Cov = Phi2(a1, a2; rho) - Phi(a1) Phi(a2)``
  with ``a = mu/s``, ``rho = c/(s1 s2)`` (the probit with zero smoothing).
* abs: ``|x| = relu(x) + relu(-x)``, via the exact ReLU cross moments.

``*_input_output_covariance(mean, cov)`` give ``Cov(x_i, f(x_j)) = cov_ij E f'(X_j)``
(Stein's lemma) for the residual/skip paths.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from .._bivariate_normal import ndtr_product_excess
from .relu import relu_cross_moment, relu_moments

__all__ = [
    "abs_covariance",
    "abs_moments",
    "erf_covariance",
    "erf_input_output_covariance",
    "erf_moments",
    "exp_covariance",
    "exp_input_output_covariance",
    "exp_moments",
    "heaviside_covariance",
    "heaviside_moments",
    "probit_covariance",
    "probit_input_output_covariance",
    "probit_moments",
    "sign_covariance",
    "sign_moments",
    "square_covariance",
    "square_input_output_covariance",
    "square_moments",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_GL_X, _GL_W = np.polynomial.legendre.leggauss(32)


def _as_float(*xs):
    dtype = jnp.result_type(*xs, 1.0)
    return jnp.broadcast_arrays(*[jnp.asarray(x, dtype=dtype) for x in xs])


def _mean_cov(mean, cov):
    mean = jnp.asarray(mean)
    cov = jnp.asarray(cov)
    dtype = jnp.result_type(mean, cov, 1.0)
    return mean.astype(dtype), cov.astype(dtype)


def _diag(cov):
    return jnp.diagonal(cov, axis1=-2, axis2=-1)


def _outer(x, y=None):
    y = x if y is None else y
    return x[..., :, None] * y[..., None, :]


def _set_diag(mat, diag):
    eye = jnp.eye(mat.shape[-1], dtype=bool)
    return jnp.where(eye, diag[..., None, :], mat)


def _npdf(x):
    return jnp.exp(-0.5 * x * x - _LOG_SQRT_2PI)


def _std(var):
    pos = var > 0
    return jnp.sqrt(jnp.where(pos, var, 1.0)), pos


# ---------------------------------------------------------------------- probit


def _probit_variance(a, rho):
    """``Phi2(a, a; rho) - Phi(a)^2 = (1/2pi) int_0^{asin rho} exp(-a^2/(1 + sin t)) dt``.

    The integrand is smooth on the whole range (also at ``rho -> 1``), so a
    32-point Gauss–Legendre rule is accurate to ~1e-15 absolute.
    """
    x = jnp.asarray(_GL_X, a.dtype)
    w = jnp.asarray(_GL_W, a.dtype)
    top = jnp.arcsin(jnp.clip(rho, -1.0, 1.0))
    t = top[..., None] * (x + 1.0) / 2.0
    vals = jnp.exp(-(a * a)[..., None] / (1.0 + jnp.sin(t)))
    return jnp.sum(w * vals, axis=-1) * top / (4.0 * math.pi)


@jax.jit
def probit_moments(mean, var):
    """``(E Phi(X), Var Phi(X))`` for ``X ~ N(mean, var)``; exact."""
    mean, var = _as_float(mean, var)
    var = jnp.maximum(var, 0.0)
    a = mean / jnp.sqrt(1.0 + var)
    return ndtr(a), _probit_variance(a, var / (1.0 + var))


@jax.jit
def probit_covariance(mean, cov):
    """Exact mean ``(n,)`` and covariance ``(n, n)`` of ``Phi(x)``, ``x ~ N(mean, cov)``."""
    mean, cov = _mean_cov(mean, cov)
    var = jnp.maximum(_diag(cov), 0.0)
    scale = jnp.sqrt(1.0 + var)
    a = mean / scale
    rho = cov / _outer(scale)
    off = ndtr_product_excess(a[..., :, None], a[..., None, :], rho)
    mean_out, var_out = probit_moments(mean, var)
    return mean_out, _set_diag(off, var_out)


@jax.jit
def probit_input_output_covariance(mean, cov):
    """``Cov(x_i, Phi(x_j)) = cov_ij phi(a_j) / sqrt(1 + v_j)``."""
    mean, cov = _mean_cov(mean, cov)
    scale = jnp.sqrt(1.0 + jnp.maximum(_diag(cov), 0.0))
    return cov * (_npdf(mean / scale) / scale)[..., None, :]


# ------------------------------------------------------------------------- erf


@jax.jit
def erf_moments(mean, var):
    """``(E erf(X), Var erf(X))``, using ``erf(x) = 2 Phi(sqrt(2) x) - 1``."""
    mean, var = _as_float(mean, var)
    m, v = probit_moments(math.sqrt(2.0) * mean, 2.0 * var)
    return 2.0 * m - 1.0, 4.0 * v


@jax.jit
def erf_covariance(mean, cov):
    """Exact mean and covariance of ``erf(x)``, ``x ~ N(mean, cov)``."""
    mean, cov = _mean_cov(mean, cov)
    m, c = probit_covariance(math.sqrt(2.0) * mean, 2.0 * cov)
    return 2.0 * m - 1.0, 4.0 * c


@jax.jit
def erf_input_output_covariance(mean, cov):
    """``Cov(x_i, erf(x_j)) = cov_ij (2/sqrt(pi)) exp(-mu_j^2/(1 + 2 v_j)) / sqrt(1 + 2 v_j)``."""
    mean, cov = _mean_cov(mean, cov)
    d = 1.0 + 2.0 * jnp.maximum(_diag(cov), 0.0)
    slope = 2.0 / math.sqrt(math.pi) * jnp.exp(-mean * mean / d) / jnp.sqrt(d)
    return cov * slope[..., None, :]


# ------------------------------------------------------------------------- exp


@jax.jit
def exp_moments(mean, var):
    """``(E e^X, Var e^X) = (exp(mu + v/2), exp(2 mu + v) expm1(v))``."""
    mean, var = _as_float(mean, var)
    return jnp.exp(mean + 0.5 * var), jnp.exp(2.0 * mean + var) * jnp.expm1(var)


@jax.jit
def exp_covariance(mean, cov):
    """Mean ``exp(mu + v/2)`` and covariance ``E_i E_j expm1(cov_ij)`` of ``exp(x)``."""
    mean, cov = _mean_cov(mean, cov)
    m = jnp.exp(mean + 0.5 * _diag(cov))
    return m, _outer(m) * jnp.expm1(cov)


@jax.jit
def exp_input_output_covariance(mean, cov):
    """``Cov(x_i, exp(x_j)) = cov_ij E exp(X_j)``."""
    mean, cov = _mean_cov(mean, cov)
    return cov * jnp.exp(mean + 0.5 * _diag(cov))[..., None, :]


# ---------------------------------------------------------------------- square


@jax.jit
def square_moments(mean, var):
    """``(E X^2, Var X^2) = (mu^2 + v, 2 v^2 + 4 mu^2 v)``."""
    mean, var = _as_float(mean, var)
    return mean * mean + var, 2.0 * var * var + 4.0 * mean * mean * var


@jax.jit
def square_covariance(mean, cov):
    """Mean ``mu^2 + v`` and covariance ``2 c^2 + 4 mu_i mu_j c`` of ``x^2``."""
    mean, cov = _mean_cov(mean, cov)
    return mean * mean + _diag(cov), 2.0 * cov * cov + 4.0 * _outer(mean) * cov


@jax.jit
def square_input_output_covariance(mean, cov):
    """``Cov(x_i, x_j^2) = 2 mu_j cov_ij``."""
    mean, cov = _mean_cov(mean, cov)
    return cov * (2.0 * mean)[..., None, :]


# ----------------------------------------------------------- heaviside / sign


@jax.jit
def heaviside_moments(mean, var):
    """``(E 1{X > 0}, Var 1{X > 0}) = (Phi(a), Phi(a) Phi(-a))``, ``a = mu/s``."""
    mean, var = _as_float(mean, var)
    s, pos = _std(var)
    a = mean / s
    p = jnp.where(pos, ndtr(a), (mean > 0).astype(mean.dtype))
    return p, jnp.where(pos, ndtr(a) * ndtr(-a), 0.0)


@jax.jit
def heaviside_covariance(mean, cov):
    """Mean and covariance of ``1{x > 0}``: ``Cov = Phi2(a_i, a_j; rho_ij) - Phi(a_i) Phi(a_j)``."""
    mean, cov = _mean_cov(mean, cov)
    var = _diag(cov)
    s, pos = _std(var)
    both = _outer(pos.astype(mean.dtype)) > 0
    rho = jnp.where(both, cov / _outer(s), 0.0)
    a = mean / s
    off = ndtr_product_excess(a[..., :, None], a[..., None, :], rho)
    off = jnp.where(both, off, 0.0)
    m, v = heaviside_moments(mean, var)
    return m, _set_diag(off, v)


@jax.jit
def sign_moments(mean, var):
    """``(E sign X, Var sign X)`` (``sign = 2 * 1{x > 0} - 1`` almost surely)."""
    m, v = heaviside_moments(mean, var)
    mean, var = _as_float(mean, var)
    m = jnp.where(var > 0, 2.0 * m - 1.0, jnp.sign(mean))
    return m, 4.0 * v


@jax.jit
def sign_covariance(mean, cov):
    """Mean and covariance of ``sign(x)``."""
    mean, cov = _mean_cov(mean, cov)
    m, v = sign_moments(mean, _diag(cov))
    _, c = heaviside_covariance(mean, cov)
    return m, 4.0 * c


# ------------------------------------------------------------------------- abs


@jax.jit
def abs_moments(mean, var):
    """``(E|X|, Var|X|)`` via ``|x| = relu(x) + relu(-x)`` (no ``mu^2`` cancellation)."""
    mean, var = _as_float(mean, var)
    mp, vp = relu_moments(mean, var)
    mn, vn = relu_moments(-mean, var)
    # Cov(relu(X), relu(-X)) = -E relu(X) E relu(-X) since the product is 0.
    return mp + mn, jnp.maximum(vp + vn - 2.0 * mp * mn, 0.0)


@jax.jit
def abs_covariance(mean, cov):
    """Exact mean and covariance of ``|x|`` from four ReLU cross moments."""
    mean, cov = _mean_cov(mean, cov)
    var = _diag(cov)
    mp, _ = relu_moments(mean, var)
    mn, _ = relu_moments(-mean, var)
    mi, mj = mean[..., :, None], mean[..., None, :]
    vi, vj = var[..., :, None], var[..., None, :]
    # the four sign combinations stacked into one call (one compiled Phi2)
    si = jnp.array([1.0, -1.0, 1.0, -1.0], mean.dtype).reshape((4,) + (1,) * cov.ndim)
    sj = jnp.array([1.0, -1.0, -1.0, 1.0], mean.dtype).reshape((4,) + (1,) * cov.ndim)
    second = jnp.sum(relu_cross_moment(si * mi, sj * mj, vi, vj, si * sj * cov), axis=0)
    m = mp + mn
    _, v = abs_moments(mean, var)
    return m, _set_diag(second - _outer(m), v)
