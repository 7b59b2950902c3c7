"""Wick (Gaussian-derivative) coefficients ``c(k, p) = E[d^k/dz^k f(z)^p]``, z ~ N(mu, s^2).

These are the only way a scalar activation f enters the nonlinear step: every diagram of
the Wick/Edgeworth expansion around the matched Gaussian multiplies a product of input
cumulants by one ``c(k, p)`` per unit it touches.

ReLU has closed forms; any other activation goes through Gauss–Hermite quadrature with
Stein's identity ``E[g^(k)(z)] = s^-k E[He_k(u) g(mu + s u)]``, u ~ N(0, 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import ndtr

_VAR_FLOOR = 1e-12


def _std(var: Array) -> Array:
    # Clamp: a zero variance would give nan gradients through sqrt and divisions.
    return jnp.sqrt(jnp.maximum(var, _VAR_FLOOR))


def norm_pdf(x: Array) -> Array:
    return jnp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def hermite_he(m: int, x: Array) -> Array:
    """Probabilists' Hermite polynomial He_m(x) by the three-term recursion."""
    if m == 0:
        return jnp.ones_like(x)
    prev, cur = jnp.ones_like(x), x
    for j in range(1, m):
        prev, cur = cur, x * cur - j * prev
    return cur


def relu_power_mean(mean: Array, std: Array, m: int) -> Array:
    """``E[relu(z)^m]`` for m >= 0 (m = 0 means ``P(z > 0)``).

    Uses truncated standard-normal moments ``T_j = E[u^j 1(u > -a)]``, a = mu/s, with
    ``T_j = (-a)^(j-1) phi(a) + (j-1) T_(j-2)`` (integration by parts).
    """
    a = mean / std
    pdf, cdf = norm_pdf(a), ndtr(a)
    t = [cdf, pdf]
    for j in range(2, m + 1):
        t.append((-a) ** (j - 1) * pdf + (j - 1) * t[j - 2])
    return sum(math.comb(m, j) * mean ** (m - j) * std**j * t[j] for j in range(m + 1))


def relu_wick(mean: Array, var: Array, k: int, p: int) -> Array:
    """``E[d^k relu(z)^p]`` in closed form.

    Integrating ``He_k(u) phi(u) = (-1)^k phi^(k)(u)`` by parts k times against
    ``(mu + s u)^p 1(u > -a)``: every boundary term vanishes except the p-th, so
      k <= p: ``p!/(p-k)! E[relu(z)^(p-k)]``,
      k >  p: ``(-1)^(k+p+1) p! s^(p-k) He_(k-p-1)(a) phi(a)``.
    """
    std = _std(var)
    if k <= p:
        return math.perm(p, k) * relu_power_mean(mean, std, p - k)
    a = mean / std
    sign = -1.0 if (k + p + 1) % 2 else 1.0
    return sign * math.factorial(p) * std ** (p - k) * hermite_he(k - p - 1, a) * norm_pdf(a)


def relu_wick_table(mean: Array, var: Array, max_k: int, max_p: int) -> dict[tuple[int, int], Array]:
    """:func:`relu_wick` for all k <= max_k, 1 <= p <= max_p, sharing a, phi(a), Phi(a)."""
    std = _std(var)
    a = mean / std
    pdf, cdf = norm_pdf(a), ndtr(a)
    t = [cdf, pdf]
    for j in range(2, max_p + 1):
        t.append((-a) ** (j - 1) * pdf + (j - 1) * t[j - 2])
    power_mean = [
        sum(math.comb(m, j) * mean ** (m - j) * std**j * t[j] for j in range(m + 1))
        for m in range(max_p + 1)
    ]
    he = [hermite_he(m, a) * pdf for m in range(max(max_k - 1, 0) + 1)]
    out = {}
    for p in range(1, max_p + 1):
        for k in range(max_k + 1):
            if k <= p:
                out[(k, p)] = math.perm(p, k) * power_mean[p - k]
            else:
                sign = -1.0 if (k + p + 1) % 2 else 1.0
                out[(k, p)] = sign * math.factorial(p) * std ** (p - k) * he[k - p - 1]
    return out


@cache
def _hermegauss(deg: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.hermite_e.hermegauss(deg)
    return nodes, weights / math.sqrt(2.0 * math.pi)


def quadrature_wick(
    fn: Callable[[Array], Array], mean: Array, var: Array, k: int, p: int, deg: int = 80
) -> Array:
    """``E[d^k f(z)^p]`` by Gauss–Hermite quadrature (exact for polynomials of degree < 2 deg - k)."""
    nodes, weights = _hermegauss(deg)
    nodes = jnp.asarray(nodes, mean.dtype)
    weights = jnp.asarray(weights, mean.dtype)
    std = _std(var)
    z = mean[..., None] + std[..., None] * nodes
    vals = fn(z) ** p * hermite_he(k, nodes) * weights
    return jnp.sum(vals, axis=-1) / std**k


def quadrature_hermite_coefficients(
    fn: Callable[[Array], Array], mean: Array, var: Array, degree: int, deg: int = 80
) -> Array:
    """Normalised Hermite coefficients ``E[f(mu + s u) He_m(u)] / sqrt(m!)``, m = 0..degree.

    Returns shape (degree + 1, n). With them the Gaussian covariance of f(z_i), f(z_j) is
    Mehler's series ``sum_{m>=1} rho_ij^m h_m(i) h_m(j)``.
    """
    nodes, weights = _hermegauss(deg)
    nodes = jnp.asarray(nodes, mean.dtype)
    weights = jnp.asarray(weights, mean.dtype)
    std = _std(var)
    fz = fn(mean[..., None] + std[..., None] * nodes) * weights
    # Normalised recursion h_{m+1} = (u h_m - sqrt(m) h_{m-1}) / sqrt(m + 1) stays O(1).
    prev, cur = jnp.zeros_like(nodes), jnp.ones_like(nodes)
    out = []
    for m in range(degree + 1):
        out.append(jnp.sum(fz * cur, axis=-1))
        prev, cur = cur, (nodes * cur - math.sqrt(m) * prev) / math.sqrt(m + 1)
    return jnp.stack(out)


def _gelu(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": _gelu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "erf": jax.scipy.special.erf,
    "square": jnp.square,
    "cube": lambda x: x * x * x,
    "identity": lambda x: x,
}


class Activation:
    """A scalar activation and how to take Gaussian expectations of it."""

    def __init__(
        self,
        activation: str | Callable[[Array], Array],
        quadrature_degree: int = 80,
        power_rule: Callable[[Array, Array], tuple[Array, Array]] | None = None,
    ):
        """``power_rule(mean, std) -> (nodes, weights)`` (standardized nodes on a trailing axis),
        if given, replaces Gauss–Hermite for the power moments ``E[f(z)^p]`` (``k = 0``): a
        function with jumps needs its rule cut at them. Derivative coefficients (``k >= 1``)
        stay on Gauss–Hermite, which weights Hermite polynomials better.
        """
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(
                    f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)} "
                    "(or pass a callable)"
                )
            self.name = activation
            self.fn = ACTIVATIONS[activation]
        else:
            self.name = getattr(activation, "__name__", "callable")
            self.fn = activation
        self.is_relu = self.name == "relu"
        self.quadrature_degree = quadrature_degree
        self.power_rule = power_rule

    def _power_moments(self, mean: Array, var: Array, max_p: int) -> list[Array]:
        """``[E f(z), ..., E f(z)^max_p]`` by ``power_rule``."""
        std = _std(var)
        nodes, weights = self.power_rule(mean, std)
        fz = self.fn(mean[..., None] + std[..., None] * nodes)
        fz = jnp.where(weights > 0, fz, 0.0)
        return [jnp.sum(fz**p * weights, axis=-1) for p in range(1, max_p + 1)]

    def wick(self, mean: Array, var: Array, k: int, p: int) -> Array:
        """``E[d^k f(z)^p]`` for z ~ N(mean, var), elementwise."""
        if self.is_relu:
            return relu_wick(mean, var, k, p)
        if k == 0 and self.power_rule is not None:
            return self._power_moments(mean, var, p)[-1]
        return quadrature_wick(self.fn, mean, var, k, p, self.quadrature_degree)

    def wick_table(self, mean: Array, var: Array, max_k: int, max_p: int) -> dict[tuple[int, int], Array]:
        """``{(k, p): E[d^k f(z)^p]}`` for k <= max_k, 1 <= p <= max_p, sharing the work
        (one evaluation of f at the quadrature nodes; one set of ReLU truncated moments)."""
        if self.is_relu:
            return relu_wick_table(mean, var, max_k, max_p)
        nodes, weights = _hermegauss(self.quadrature_degree)
        nodes = jnp.asarray(nodes, mean.dtype)
        weights = jnp.asarray(weights, mean.dtype)
        std = _std(var)
        fz = self.fn(mean[..., None] + std[..., None] * nodes)
        powers = [fz]
        for _ in range(1, max_p):
            powers.append(powers[-1] * fz)
        he = jnp.stack([hermite_he(k, nodes) for k in range(max_k + 1)]) * weights  # (K+1, Q)
        table = jnp.einsum("pnq,kq->kpn", jnp.stack(powers), he)
        inv_std = 1.0 / std
        out = {}
        for k in range(max_k + 1):
            scale = inv_std**k
            for p in range(1, max_p + 1):
                out[(k, p)] = table[k, p - 1] * scale
        if self.power_rule is not None:
            for p, moment in enumerate(self._power_moments(mean, var, max_p), start=1):
                out[(0, p)] = moment
        return out
