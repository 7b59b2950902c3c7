"""The latent space a proposal works in: standard normals for continuous sites, tables for discrete ones.

Every continuous latent site is written as ``x = T(z)`` with ``z ~ N(0, I)`` of
the site's shape (the Rosenblatt/Nataf map of reliability analysis):

* ``Normal`` (through ``expand``/``to_event``): ``x = loc + scale * z``;
* ``MultivariateNormal`` (and the low-rank one): ``x = loc + L z``;
* ``Exponential``, ``Laplace``, ``Logistic``, ``Cauchy``, ``Gumbel``,
  ``HalfNormal``, ``HalfCauchy``, ``Uniform``, ``LogNormal``, ``Pareto``,
  ``Weibull``: their quantile function written through ``Phi(-|z|)``, which
  keeps both tails in float32 (``_normal_maps``);
* any other univariate continuous distribution with an ``icdf``:
  ``x = icdf(Phi(z))``, whose upper tail saturates in float32 beyond
  ``z ~ 5.3`` (events rarer than ~1e-7 there need ``jax_enable_x64``).

Because ``T`` pushes ``N(0, I)`` forward to ``p`` exactly, a Gaussian proposal
``q_z`` on ``z`` has weights ``p(x)/q(x) = N(z; 0, I)/q_z(z)``: the Jacobians
cancel, and the proposal's support is the site's support by construction (a
Gaussian proposal for a ``Uniform`` site never leaves the interval).

Every discrete latent site with an enumerable support (``Categorical``,
``Bernoulli``, ``DiscreteUniform``, ...) is a table: its support values
``v_1..v_K`` (shared by all elements) and per element ``log p(v_k)`` from the
site's own numpyro ``log_prob``. A discrete proposal is a table of logits of
the same shape; a draw is an index ``k`` per element.

Latent sites must be independent (no site's distribution may depend on another
latent site): a proposal replaces each site's distribution on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import ndtr

from ppl_mech._capture import LatentSite, Program
from ppl_mech._errors import ModelError, UnsupportedDistributionError
from ppl_mech.importance._normal_maps import tail_stable_map


def _unwrap(fn):
    while isinstance(fn, dist.Independent | dist.ExpandedDistribution):
        fn = fn.base_dist
    return fn


@dataclasses.dataclass(frozen=True)
class ContinuousSite:
    """A continuous latent site as ``x = to_value(z)``, ``z ~ N(0, I)`` of ``shape``.

    ``kind`` is ``"normal"``, ``"mvn"`` (both affine, so the mechanistic
    interpreter sees them exactly) or ``"icdf"``.
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    to_value: Callable[[jax.Array], jax.Array]
    distribution: Any
    loc: Any = None
    scale: Any = None  # the standard deviations ("normal") or the Cholesky factor ("mvn")

    def gaussian(self, mean: jax.Array, log_scale: jax.Array) -> dist.Distribution:
        """The distribution of ``x = T(z)`` for ``z ~ N(mean, diag(exp(2 log_scale)))`` (affine sites)."""
        if self.kind == "normal":
            return dist.Normal(self.loc + self.scale * mean, self.scale * jnp.exp(log_scale)).to_event(
                len(self.shape)
            )
        if self.kind == "mvn":
            loc = self.loc + jnp.einsum("...ij,...j->...i", self.scale, mean)
            return dist.MultivariateNormal(loc, scale_tril=self.scale * jnp.exp(log_scale)[..., None, :])
        raise UnsupportedDistributionError(
            f"site {self.name!r} ({type(_unwrap(self.distribution)).__name__}) is not a Normal or "
            "MultivariateNormal, so a Gaussian proposal for it has no mechanistic estimate"
        )


@dataclasses.dataclass(frozen=True)
class DiscreteSite:
    """A discrete latent site: ``support`` (K,) values and ``log_p`` of shape ``shape + (K,)``."""

    name: str
    shape: tuple[int, ...]
    support: jax.Array
    log_p: jax.Array
    dtype: Any

    @property
    def num_values(self) -> int:
        return int(self.support.shape[0])

    def to_value(self, index: jax.Array) -> jax.Array:
        return self.support[index].astype(self.dtype)


def continuous_site(site: LatentSite) -> ContinuousSite | None:
    """The standardizing map of a continuous site, or ``None`` for a discrete site.

    Raises:
        UnsupportedDistributionError: naming the site, for a continuous
            distribution with no map to a standard normal.
    """
    fn = site.distribution
    if site.is_discrete:
        return None
    base = _unwrap(fn)
    shape = site.shape
    if isinstance(base, dist.Normal):
        loc = jnp.broadcast_to(fn.mean, shape)
        scale = jnp.broadcast_to(jnp.sqrt(fn.variance), shape)
        return ContinuousSite(site.name, shape, "normal", lambda z: loc + scale * z, fn, loc, scale)
    if isinstance(base, dist.MultivariateNormal | dist.LowRankMultivariateNormal):
        if isinstance(fn, dist.Independent):
            raise UnsupportedDistributionError(
                f"site {site.name!r}: a multivariate normal with extra event dimensions (to_event) "
                "is not supported by importance proposals; reshape the model"
            )
        loc = jnp.broadcast_to(fn.loc, shape)
        tril = jnp.broadcast_to(fn.scale_tril, shape + shape[-1:])
        return ContinuousSite(
            site.name, shape, "mvn", lambda z: loc + jnp.einsum("...ij,...j->...i", tril, z), fn, loc,
            tril,
        )
    if base.event_shape == ():
        stable = tail_stable_map(base)
        if stable is not None:
            return ContinuousSite(site.name, shape, "icdf", lambda z: jnp.broadcast_to(stable(z), shape), fn)
        try:
            jax.eval_shape(base.icdf, jnp.full(base.batch_shape, 0.5))
        except (NotImplementedError, ImportError):  # numpyro's Beta/Gamma/StudentT icdf need TFP
            pass
        else:
            def to_value(z, base=base):
                # Phi(z) rounds to 1 for z > ~5.4 in float32: clip so icdf stays finite.
                u = jnp.clip(ndtr(z), 1e-30, 1.0 - jnp.finfo(z.dtype).epsneg)
                return base.icdf(u)

            return ContinuousSite(site.name, shape, "icdf", to_value, fn)
    raise UnsupportedDistributionError(
        f"site {site.name!r}: {type(base).__name__} has no map to a standard normal; importance "
        "proposals support Normal, MultivariateNormal, univariate distributions with an icdf "
        "(Uniform, Exponential, Laplace, LogNormal, Weibull, ...) and enumerable discrete distributions "
        "(Categorical, Bernoulli, ...)"
    )


def discrete_site(site: LatentSite) -> DiscreteSite:
    fn = site.distribution
    base = _unwrap(fn)
    if not getattr(base, "has_enumerate_support", False):
        raise UnsupportedDistributionError(
            f"site {site.name!r}: discrete {type(base).__name__} has no enumerable support; "
            "importance proposals support Categorical, Bernoulli, DiscreteUniform and other "
            "distributions with enumerate_support"
        )
    if base.event_shape != ():
        raise UnsupportedDistributionError(
            f"site {site.name!r}: a discrete distribution with event shape {base.event_shape} "
            "(e.g. OneHotCategorical, Multinomial) is not supported; use Categorical"
        )
    try:
        support = jnp.reshape(base.enumerate_support(expand=False), (-1,))
    except Exception as e:  # e.g. heterogeneous supports across the batch
        raise UnsupportedDistributionError(
            f"site {site.name!r}: cannot enumerate the support of {type(base).__name__}: {e}"
        ) from None
    k = support.shape[0]
    # log p(v_k) per element: the site's own numpyro log_prob, broadcast over its shape.
    values = jnp.reshape(support, (k,) + (1,) * len(base.batch_shape))
    log_p = base.log_prob(values)  # (K, *batch)
    log_p = jnp.moveaxis(jnp.broadcast_to(log_p, (k,) + tuple(base.batch_shape)), 0, -1)
    log_p = jnp.broadcast_to(log_p, site.shape + (k,))
    return DiscreteSite(site.name, site.shape, support, log_p, site.dtype)


@dataclasses.dataclass(frozen=True)
class LatentSpace:
    """All latent sites of a program, standardized. Built inside a trace (parameters may be tracers)."""

    program: Program
    continuous: dict[str, ContinuousSite]
    discrete: dict[str, DiscreteSite]

    @classmethod
    def from_program(cls, program: Program) -> LatentSpace:
        if program.uses_prng_key:
            raise ModelError(
                "the model draws randomness with numpyro.prng_key(), which a proposal cannot "
                "replace; make it a numpyro.sample site"
            )
        continuous, discrete = {}, {}
        for name, site in program.latents.items():
            c = continuous_site(site)
            if c is None:
                discrete[name] = discrete_site(site)
            else:
                continuous[name] = c
        return cls(program, continuous, discrete)

    @property
    def names(self) -> list[str]:
        return list(self.program.latents)

    def values(self, z: Mapping[str, jax.Array], k: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Latent values ``x`` of one point ``(z, k)`` (in the model's site order)."""
        out = {}
        for name in self.names:
            if name in self.continuous:
                out[name] = self.continuous[name].to_value(z[name])
            else:
                out[name] = self.discrete[name].to_value(k[name])
        return out

    def log_p(self, z: Mapping[str, jax.Array], k: Mapping[str, jax.Array]) -> jax.Array:
        """``log p`` of one point: ``N(z; 0, I)`` for continuous sites, the table for discrete ones."""
        total = jnp.zeros((), jnp.float32)
        for name in self.continuous:
            total = total + jnp.sum(dist.Normal(0.0, 1.0).log_prob(z[name]))
        for name, site in self.discrete.items():
            total = total + jnp.sum(jnp.take_along_axis(site.log_p, k[name][..., None], -1))
        return total

    def prior_point(self, key: jax.Array) -> tuple[dict, dict]:
        """One draw of ``(z, k)`` from ``p``."""
        z, k = {}, {}
        for name, site in self.continuous.items():
            key, sub = jax.random.split(key)
            z[name] = jax.random.normal(sub, site.shape)
        for name, site in self.discrete.items():
            key, sub = jax.random.split(key)
            k[name] = jax.random.categorical(sub, site.log_p)
        return z, k

    def example_point(self) -> tuple[dict, dict]:
        z = {n: jnp.zeros(s.shape) for n, s in self.continuous.items()}
        k = {n: jnp.zeros(s.shape, jnp.int32) for n, s in self.discrete.items()}
        return z, k
