"""Maps from a standard normal ``z`` to common univariate distributions, accurate in both tails.

The generic map ``x = icdf(Phi(z))`` loses the upper tail in float32: ``Phi(z)``
rounds to 1 beyond ``z ~ 5.3``, so every rarer quantile collapses onto one
value and an event rarer than ~1e-7 in that tail is estimated low or 0. For
the families below the quantile is written through the probability of the
nearer tail, ``Phi(-|z|)`` (or its logarithm), which float32 holds down to
~1e-38, so rare-event proposals see the tail as it is.

Each map takes the distribution (numpyro's, unwrapped from ``expand`` and
``to_event``) and returns ``z -> x``; ``None`` means "no closed form here, use
the generic map".
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import erfinv, log_ndtr, ndtr, ndtri


def log_phi(z: jax.Array) -> jax.Array:
    """``log Phi(z)``, with relative accuracy in the deficit ``1 - Phi(z)`` for ``z > 0`` too."""
    return jnp.where(z > 0, jnp.log1p(-ndtr(-jnp.abs(z))), log_ndtr(jnp.minimum(z, 0.0)))


def _log_upper(z):
    """``log(1 - Phi(z)) = log Phi(-z)``."""
    return log_phi(-z)


def _exponential(d: dist.Exponential):
    return lambda z: -_log_upper(z) / d.rate


def _laplace(d: dist.Laplace):
    def to_value(z):
        # The nearer tail has mass Phi(-|z|) = exp(-|x - loc| / scale) / 2.
        return d.loc - jnp.sign(z) * d.scale * (jnp.log(2.0) + log_ndtr(-jnp.abs(z)))

    return to_value


def _logistic(d: dist.Logistic):
    return lambda z: d.loc + d.scale * (log_phi(z) - _log_upper(z))


def _cauchy(d: dist.Cauchy):
    # tan(pi (u - 1/2)) = sign(z) / tan(pi Phi(-|z|)).
    return lambda z: d.loc + jnp.sign(z) * d.scale / jnp.tan(jnp.pi * ndtr(-jnp.abs(z)))


def _gumbel(d: dist.Gumbel):
    return lambda z: d.loc - d.scale * jnp.log(-log_phi(z))


def _half_normal(d: dist.HalfNormal):
    # x = scale * sqrt(2) erfinv(u); the upper tail as -Phi^-1(Phi(-z) / 2).
    def to_value(z):
        upper = -ndtri(ndtr(-jnp.maximum(z, 0.0)) / 2.0)
        lower = jnp.sqrt(2.0) * erfinv(ndtr(jnp.minimum(z, 0.0)))
        return d.scale * jnp.where(z > 0, upper, lower)

    return to_value


def _half_cauchy(d: dist.HalfCauchy):
    # x = scale * tan(pi u / 2); the upper tail as 1 / tan(pi Phi(-z) / 2).
    def to_value(z):
        upper = 1.0 / jnp.tan(jnp.pi * ndtr(-jnp.maximum(z, 0.0)) / 2.0)
        lower = jnp.tan(jnp.pi * ndtr(jnp.minimum(z, 0.0)) / 2.0)
        return d.scale * jnp.where(z > 0, upper, lower)

    return to_value


def _uniform(d: dist.Uniform):
    width = d.high - d.low
    return lambda z: jnp.where(z > 0, d.high - width * ndtr(-z), d.low + width * ndtr(z))


def _log_normal(d: dist.LogNormal):
    return lambda z: jnp.exp(d.loc + d.scale * z)


def _pareto(d: dist.Pareto):
    return lambda z: d.scale * jnp.exp(-_log_upper(z) / d.alpha)


def _weibull(d: dist.Weibull):
    return lambda z: d.scale * (-_log_upper(z)) ** (1.0 / d.concentration)


_MAPS: dict[type, Callable] = {
    dist.Exponential: _exponential,
    dist.Laplace: _laplace,
    dist.Logistic: _logistic,
    dist.Cauchy: _cauchy,
    dist.Gumbel: _gumbel,
    dist.HalfNormal: _half_normal,
    dist.HalfCauchy: _half_cauchy,
    dist.Uniform: _uniform,
    dist.LogNormal: _log_normal,
    dist.Pareto: _pareto,
    dist.Weibull: _weibull,
}


def tail_stable_map(base: dist.Distribution) -> Callable[[jax.Array], jax.Array] | None:
    """``z -> x`` pushing ``N(0, 1)`` forward to ``base`` exactly, or ``None`` if not a listed family.

    Only exact types are matched: a subclass may change the parametrisation.
    """
    make = _MAPS.get(type(base))
    return None if make is None else make(base)
