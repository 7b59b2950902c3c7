"""Exact Gaussian covariance of f(z_i), f(z_j): the resummed two-unit part of the expansion.

At K >= 2 the covariance after a nonlinearity keeps *all* powers of the off-diagonal
input covariance between two units (the multi-edge diagrams), i.e. the covariance of
f(z_i), f(z_j) under the bivariate Gaussian with the message's mean and covariance.
ReLU: closed form through the bivariate normal CDF (Rosenbaum 1961). Anything else:
Mehler's series ``sum_{m=1}^M rho^m h_m(i) h_m(j)`` with quadrature Hermite coefficients.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import ndtr

from ._wick import Activation, _std, norm_pdf, quadrature_hermite_coefficients, relu_wick

_RHO_MAX = 1.0 - 1e-7
_LEGENDRE = np.polynomial.legendre.leggauss(48)


def bivariate_normal_cdf(h: Array, k: Array, rho: Array) -> Array:
    """``P(U < h, V < k)`` for standard normals with correlation rho (|rho| < 1).

    ``Phi2 = Phi(h) Phi(k) + (1/2pi) int_0^{asin rho}
    exp(-(h^2 + k^2 - 2 h k sin t) / (2 cos^2 t)) dt`` (the substitution r = sin t
    removes the 1/sqrt(1 - r^2) endpoint singularity), by 48-point Gauss–Legendre.
    """
    nodes, weights = _LEGENDRE
    nodes = jnp.asarray(nodes, h.dtype)
    weights = jnp.asarray(weights, h.dtype)
    upper = jnp.arcsin(rho)[..., None]
    theta = 0.5 * upper * (nodes + 1.0)
    sin_t, cos_t = jnp.sin(theta), jnp.cos(theta)
    hh, kk = h[..., None], k[..., None]
    integrand = jnp.exp(-(hh * hh + kk * kk - 2.0 * hh * kk * sin_t) / (2.0 * cos_t * cos_t))
    integral = 0.5 * upper[..., 0] * jnp.sum(weights * integrand, axis=-1)
    return ndtr(h) * ndtr(k) + integral / (2.0 * math.pi)


def relu_bivariate_covariance(mean: Array, cov: Array) -> Array:
    """Exact ``Cov(relu(z_i), relu(z_j))`` for z ~ N(mean, cov); (n, n), exact diagonal too.

    With a_i = mu_i / s_i, s = sqrt(1 - rho^2), L = Phi2(a_i, a_j; rho):
      E[z_i+ z_j+] = mu_i mu_j L + mu_i s_j E[V 1] + mu_j s_i E[U 1] + s_i s_j E[U V 1],
      E[U 1] = phi(a_i) Phi((a_j - rho a_i)/s) + rho phi(a_j) Phi((a_i - rho a_j)/s),
      E[U V 1] = rho L - rho a_i phi(a_i) Phi((a_j - rho a_i)/s)
                 - rho a_j phi(a_j) Phi((a_i - rho a_j)/s) + s^2 phi2(a_i, a_j; rho).
    """
    var = jnp.diagonal(cov)
    std = _std(var)
    n = mean.shape[0]
    eye = jnp.eye(n, dtype=bool)
    rho = cov / (std[:, None] * std[None, :])
    # The diagonal is replaced below; keep it away from |rho| = 1 so gradients stay finite.
    rho = jnp.where(eye, 0.0, jnp.clip(rho, -_RHO_MAX, _RHO_MAX))
    a = mean / std
    ai, aj = a[:, None], a[None, :]
    si, sj = std[:, None], std[None, :]
    mi, mj = mean[:, None], mean[None, :]
    s = jnp.sqrt(1.0 - rho * rho)
    big_l = bivariate_normal_cdf(jnp.broadcast_to(ai, rho.shape), jnp.broadcast_to(aj, rho.shape), rho)
    cdf_j_given_i = ndtr((aj - rho * ai) / s)
    cdf_i_given_j = ndtr((ai - rho * aj) / s)
    pdf_i, pdf_j = norm_pdf(ai), norm_pdf(aj)
    e_u = pdf_i * cdf_j_given_i + rho * pdf_j * cdf_i_given_j
    e_v = pdf_j * cdf_i_given_j + rho * pdf_i * cdf_j_given_i
    pdf2 = jnp.exp(-(ai * ai - 2.0 * rho * ai * aj + aj * aj) / (2.0 * s * s)) / (2.0 * math.pi * s)
    e_uv = (
        rho * big_l
        - rho * ai * pdf_i * cdf_j_given_i
        - rho * aj * pdf_j * cdf_i_given_j
        + s * s * pdf2
    )
    second = mi * mj * big_l + mi * sj * e_v + mj * si * e_u + si * sj * e_uv
    first = relu_wick(mean, var, 0, 1)
    off = second - first[:, None] * first[None, :]
    diag = relu_wick(mean, var, 0, 2) - first * first
    return jnp.where(eye, jnp.diag(diag), off)


def mehler_covariance(activation: Activation, mean: Array, cov: Array, degree: int = 16) -> Array:
    """Gaussian ``Cov(f(z_i), f(z_j))`` by Mehler's series to ``degree`` (exact diagonal).

    Exact for polynomial f of degree <= ``degree``; otherwise the tail is bounded by
    ``sum_{m > degree} |rho|^m |h_m(i) h_m(j)|``.
    """
    var = jnp.diagonal(cov)
    std = _std(var)
    eye = jnp.eye(mean.shape[0], dtype=bool)
    rho = jnp.where(eye, 0.0, cov / (std[:, None] * std[None, :]))
    h = quadrature_hermite_coefficients(
        activation.fn, mean, var, degree, activation.quadrature_degree
    )
    off = jnp.zeros_like(cov)
    rho_m = jnp.ones_like(cov)
    for m in range(1, degree + 1):
        rho_m = rho_m * rho
        off = off + rho_m * (h[m][:, None] * h[m][None, :])
    first = activation.wick(mean, var, 0, 1)
    diag = activation.wick(mean, var, 0, 2) - first * first
    return jnp.where(eye, jnp.diag(diag), off)


def gaussian_covariance(
    activation: Activation, mean: Array, cov: Array, mehler_degree: int = 16
) -> Array:
    """Covariance of f(z) under the Gaussian with the given mean and covariance."""
    if activation.is_relu:
        return relu_bivariate_covariance(mean, cov)
    return mehler_covariance(activation, mean, cov, mehler_degree)
