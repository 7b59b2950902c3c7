"""Exact cumulant generating functions for :func:`~ppl_mech.tails.saddlepoint_tail`.

Each returns a :class:`~ppl_mech.tails.CGF` whose ``fn`` closes over the (possibly
traced) parameters, so tails computed from them are ``jit``-able and differentiable.

* :func:`normal_cgf` — ``N(mean, var)``: ``mean s + var s^2 / 2`` (Lugannani–Rice is exact).
* :func:`gamma_cgf` — ``sum_i Gamma(shape_i, scale_i)``, independent: ``-sum_i shape_i log(1 - scale_i s)``.
  Exponentials (shape 1), Erlang/chi-square (``chi2_k = Gamma(k/2, 2)``) and central
  quadratic forms (``lam chi2_1 = Gamma(1/2, 2 lam)``); a negative scale is a negated gamma.
* :func:`quadratic_form_cgf` — ``Y = x^T A x + b.x + c`` for ``x ~ N(mean, cov)``:
  with ``x = mean + F z`` (``F F^T = cov``) and ``F^T A F = Q diag(lam) Q^T``,
  ``Y = c' + sum_i (lam_i z_i^2 + d_i z_i)`` with ``d = Q^T F^T (b + 2 A mean)``, so
  ``K(s) = c' s + sum_i [ -log(1 - 2 s lam_i)/2 + s^2 d_i^2 / (2 (1 - 2 s lam_i)) ]``
  on ``1 - 2 s lam_i > 0`` (Imhof 1961). Any degree-2 polynomial of a Gaussian, e.g. a
  two-layer network whose activations are replaced by their degree-2 Hermite
  truncation (:func:`~ppl_mech.tails.mlp_quadratic_form`).
* :func:`relu_gaussian_cgf` — ``sum_j w_j relu(z_j)`` with *independent*
  ``z_j ~ N(mean_j, std_j^2)``: ``E exp(a relu(z)) = Phi(-mu/s) + exp(a mu + a^2 s^2/2) Phi(mu/s + a s)``.
  (Exact for a ReLU layer under the independence presumption, i.e. the diagonal family.)
* :func:`sum_cgf` (independent sum: CGFs add, domains intersect) and
  :func:`affine_cgf` (``a Y + c``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from ._saddlepoint import CGF

__all__ = [
    "affine_cgf",
    "eigen_quadratic_cgf",
    "gamma_cgf",
    "normal_cgf",
    "quadratic_form_cgf",
    "relu_gaussian_cgf",
    "sum_cgf",
]


def _float(*xs):
    dtype = jnp.result_type(*xs, float)
    return [jnp.asarray(x, dtype) for x in xs]


def _normal_fn(p, s):
    mean, var = p
    return mean * s + 0.5 * var * s * s


def normal_cgf(mean, var) -> CGF:
    """``N(mean, var)`` (scalars); ``var = 0`` is the constant ``mean``."""
    mean, var = _float(mean, var)
    if mean.ndim or var.ndim:
        raise ValueError(f"normal_cgf takes scalars; got mean {mean.shape}, var {var.shape} (use sum_cgf)")
    return CGF(_normal_fn, (mean, var), -math.inf, math.inf, "normal")


def _gamma_fn(p, s):
    shape, scale = p
    return -jnp.sum(shape * jnp.log1p(-scale * s))


def gamma_cgf(shape, scale) -> CGF:
    """``sum_i Gamma(shape_i, scale_i)`` (independent; broadcasting arrays or scalars).

    ``scale_i < 0`` means ``-Gamma(shape_i, |scale_i|)``; ``shape_i > 0``.
    Domain ``max_{scale<0} 1/scale < s < min_{scale>0} 1/scale``.
    """
    shape, scale = _float(shape, scale)
    shape, scale = jnp.broadcast_arrays(shape, scale)
    inv = 1.0 / jnp.where(scale != 0, scale, 1.0)
    upper = jnp.min(jnp.where(scale > 0, inv, jnp.inf))
    lower = jnp.max(jnp.where(scale < 0, inv, -jnp.inf))
    return CGF(_gamma_fn, (shape, scale), lower, upper, "gamma")


def _psd_factor(cov):
    vals, vecs = jnp.linalg.eigh(0.5 * (cov + cov.T))
    return vecs * jnp.sqrt(jnp.maximum(vals, 0.0))[None, :]


def gaussian_input(mean, cov, n: int, dtype, *, names=("mean", "cov"), against: str = "A"):
    """``(mean, F)`` of ``x ~ N(mean, F F^T)`` in ``n`` dimensions (defaults 0 and I).

    ``cov`` may be singular (PSD); shapes are checked, naming the arguments ``names`` and
    the array ``against`` whose size ``n`` they must match.
    """
    mean_name, cov_name = names
    mean = jnp.zeros(n, dtype) if mean is None else jnp.asarray(mean, dtype)
    if mean.shape != (n,):
        raise ValueError(f"{mean_name} must have shape ({n},) to match {against}; got {mean.shape}")
    if cov is None:
        return mean, jnp.eye(n, dtype=dtype)
    cov = jnp.asarray(cov, dtype)
    if cov.shape != (n, n):
        raise ValueError(f"{cov_name} must have shape ({n}, {n}) to match {against}; got {cov.shape}")
    return mean, _psd_factor(cov)


def quadratic_form_cgf(A, b=None, c=0.0, mean=None, cov=None) -> CGF:
    """Exact CGF of ``Y = x^T A x + b.x + c``, ``x ~ N(mean, cov)`` (defaults: 0 and I).

    ``A`` (n, n) is symmetrised; ``cov`` may be singular (PSD). See the module docstring.
    """
    A = jnp.asarray(A)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix; got shape {A.shape}")
    n = A.shape[0]
    dtype = jnp.result_type(A, float)
    A = 0.5 * (A + A.T).astype(dtype)
    b = jnp.zeros(n, dtype) if b is None else jnp.asarray(b, dtype)
    if b.shape != (n,):
        raise ValueError(f"b must have shape ({n},) to match A; got {b.shape}")
    mean, F = gaussian_input(mean, cov, n, dtype)
    lam, Q = jnp.linalg.eigh(F.T @ A @ F)
    d = Q.T @ (F.T @ (b + 2.0 * A @ mean))
    const = mean @ A @ mean + b @ mean + jnp.asarray(c, dtype)
    return eigen_quadratic_cgf(lam, d, const)


def _quadratic_fn(p, s):
    lam, d, const = p
    one_minus = 1.0 - 2.0 * s * lam
    return const * s + jnp.sum(-0.5 * jnp.log1p(-2.0 * s * lam) + 0.5 * s * s * d * d / one_minus)


def eigen_quadratic_cgf(lam, d, const) -> CGF:
    """CGF of ``const + sum_i (lam_i z_i^2 + d_i z_i)``, z standard normal (the canonical form)."""
    lam, d, const = _float(lam, d, const)
    inv = 1.0 / (2.0 * jnp.where(lam != 0, lam, 1.0))
    upper = jnp.min(jnp.where(lam > 0, inv, jnp.inf))
    lower = jnp.max(jnp.where(lam < 0, inv, -jnp.inf))
    return CGF(_quadratic_fn, (lam, d, const), lower, upper, "quadratic-form")


def _relu_fn(p, s):
    weights, mean, sd, pos = p
    ratio = mean / sd
    a = s * weights
    log_off = log_ndtr(-ratio)
    log_on = a * mean + 0.5 * a * a * sd * sd + log_ndtr(ratio + a * sd)
    m = jnp.maximum(log_off, log_on)
    k = m + jnp.log(jnp.exp(log_off - m) + jnp.exp(log_on - m))
    return jnp.sum(jnp.where(pos, k, a * jnp.maximum(mean, 0.0)))


def relu_gaussian_cgf(weights, mean, std) -> CGF:
    """``sum_j weights_j relu(z_j)``, independent ``z_j ~ N(mean_j, std_j^2)`` (arrays broadcast).

    Entire in s; ``std_j = 0`` is the constant ``weights_j relu(mean_j)``.
    """
    weights, mean, std = _float(weights, mean, std)
    weights, mean, std = jnp.broadcast_arrays(weights, mean, std)
    pos = std > 0
    sd = jnp.where(pos, std, 1.0)
    return CGF(_relu_fn, (weights, mean, sd, pos), -math.inf, math.inf, "relu-gaussian")


@dataclass(frozen=True)
class _Sum:
    fns: tuple

    def __call__(self, params, s):
        return sum(f(p, s) for f, p in zip(self.fns, params, strict=True))


def sum_cgf(*cgfs: CGF) -> CGF:
    """The CGF of a sum of *independent* variables: the CGFs add, the domains intersect."""
    if not cgfs:
        raise ValueError("sum_cgf needs at least one CGF")
    for i, c in enumerate(cgfs):
        if not isinstance(c, CGF):
            raise TypeError(f"argument {i} of sum_cgf is a {type(c).__name__}, not a CGF")
    lower = jnp.asarray(cgfs[0].lower)
    upper = jnp.asarray(cgfs[0].upper)
    for c in cgfs[1:]:
        lower = jnp.maximum(lower, c.lower)
        upper = jnp.minimum(upper, c.upper)
    return CGF(_Sum(tuple(c.fn for c in cgfs)), tuple(c.params for c in cgfs), lower, upper,
               "+".join(c.name for c in cgfs))


@dataclass(frozen=True)
class _Affine:
    fn: Callable

    def __call__(self, params, s):
        inner, scale, shift = params
        return self.fn(inner, scale * s) + shift * s


def affine_cgf(cgf: CGF, scale, shift=0.0) -> CGF:
    """The CGF of ``scale * Y + shift``: ``s -> K(scale s) + shift s`` (``scale != 0``)."""
    scale, shift = _float(scale, shift)
    lo = jnp.asarray(cgf.lower, scale.dtype)
    hi = jnp.asarray(cgf.upper, scale.dtype)
    safe = jnp.where(scale != 0, scale, 1.0)
    lower = jnp.where(scale > 0, lo / safe, hi / safe)
    upper = jnp.where(scale > 0, hi / safe, lo / safe)
    return CGF(_Affine(cgf.fn), (cgf.params, scale, shift), lower, upper, f"affine({cgf.name})")
