"""Proposal families in the standardized latent space (see ``_space``).

:class:`GaussianMixture` covers every continuous site jointly: component ``c``
is ``z ~ N(mean_c, diag(exp(2 log_scale_c)))`` over all continuous sites, with
mixture weights ``softmax(logits)``, plus an optional *defensive* share of the
prior ``N(0, I)`` (Hesterberg 1995), which bounds every weight by
``1/defensive``. :class:`CategoricalTable` covers every discrete site: one
independent categorical per element. :class:`Proposal` is the product of the
two; where a family is absent its sites are drawn from ``p`` itself.

All are pytrees (parameters are leaves), so fitted proposals pass through
``jax.jit`` as arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from ._space import LatentSpace


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """Mixture of diagonal Gaussians over the standardized continuous sites.

    Attributes:
        means: site -> ``(C, *shape)``.
        log_scales: site -> ``(C, *shape)``.
        logits: ``(C,)`` mixture logits.
        defensive: share of the prior ``N(0, I)`` in the mixture (static).
    """

    means: dict[str, Any]
    log_scales: dict[str, Any]
    logits: Any
    defensive: float = dataclasses.field(default=0.0, metadata=dict(static=True))

    @classmethod
    def prior(cls, space: LatentSpace, components: int = 1, defensive: float = 0.0) -> GaussianMixture:
        means = {n: jnp.zeros((components,) + s.shape) for n, s in space.continuous.items()}
        log_scales = {n: jnp.zeros((components,) + s.shape) for n, s in space.continuous.items()}
        return cls(means, log_scales, jnp.zeros(components), defensive)

    @property
    def num_components(self) -> int:
        return int(self.logits.shape[0])

    def component_log_probs(self, z: dict) -> jax.Array:
        """``log N(z; mean_c, scale_c)`` per component, ``(C,)``."""
        total = jnp.zeros(self.logits.shape)
        for name, mean in self.means.items():
            lp = dist.Normal(mean, jnp.exp(self.log_scales[name])).log_prob(z[name][None])
            total = total + jnp.sum(jnp.reshape(lp, (lp.shape[0], -1)), axis=1)
        return total

    def log_prob(self, z: dict) -> jax.Array:
        log_mix = jax.nn.log_softmax(self.logits) + self.component_log_probs(z)
        if self.defensive > 0:
            log_prior = sum(jnp.sum(dist.Normal(0.0, 1.0).log_prob(v)) for v in z.values())
            return jnp.logaddexp(
                jnp.log1p(-self.defensive) + jax.nn.logsumexp(log_mix), jnp.log(self.defensive) + log_prior
            )
        return jax.nn.logsumexp(log_mix)

    def sample(self, key: jax.Array) -> dict:
        k_comp, k_def, k_noise = jax.random.split(key, 3)
        c = jax.random.categorical(k_comp, self.logits)
        use_prior = jax.random.uniform(k_def) < self.defensive
        z = {}
        for i, (name, mean) in enumerate(self.means.items()):
            eps = jax.random.normal(jax.random.fold_in(k_noise, i), mean.shape[1:])
            value = mean[c] + jnp.exp(self.log_scales[name][c]) * eps
            z[name] = jnp.where(use_prior, eps, value)
        return z

    def kl_components(self) -> jax.Array:
        """``KL(component_c || N(0, I))`` per component, ``(C,)``."""
        total = jnp.zeros(self.logits.shape)
        for name, mean in self.means.items():
            s2 = jnp.exp(2 * self.log_scales[name])
            kl = 0.5 * (s2 + mean**2 - 1.0) - self.log_scales[name]
            total = total + jnp.sum(jnp.reshape(kl, (kl.shape[0], -1)), axis=1)
        return total

    def kl_bound(self) -> jax.Array:
        """``sum_c pi_c KL(q_c || p) >= KL(q || p)`` (convexity); exact for one component."""
        return jnp.sum(jax.nn.softmax(self.logits) * self.kl_components())


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CategoricalTable:
    """Independent categoricals over the support index of every discrete element.

    Attributes:
        logits: site -> ``shape + (K,)``; ``-inf`` marks a value never proposed
            (allowed only where ``p`` is 0 too; checked by the estimator).
    """

    logits: dict[str, Any]

    @classmethod
    def prior(cls, space: LatentSpace) -> CategoricalTable:
        return cls({n: s.log_p for n, s in space.discrete.items()})

    def log_prob(self, k: dict) -> jax.Array:
        total = jnp.zeros(())
        for name, logits in self.logits.items():
            lp = jax.nn.log_softmax(logits, axis=-1)
            total = total + jnp.sum(jnp.take_along_axis(lp, k[name][..., None], -1))
        return total

    def sample(self, key: jax.Array) -> dict:
        return {
            name: jax.random.categorical(jax.random.fold_in(key, i), logits)
            for i, (name, logits) in enumerate(self.logits.items())
        }


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Proposal:
    """``q(z, k) = q_gaussian(z) q_categorical(k)``; a missing family means ``p`` for those sites."""

    gaussian: GaussianMixture | None = None
    categorical: CategoricalTable | None = None

    def sample_point(self, space: LatentSpace, key: jax.Array) -> tuple[dict, dict, jax.Array]:
        """One draw in standard coordinates: ``(z, k, log p - log q)``."""
        k_z, k_k, k_p = jax.random.split(key, 3)
        z, k = space.prior_point(k_p)
        log_w = jnp.zeros(())
        if self.gaussian is not None and space.continuous:
            z = self.gaussian.sample(k_z)
            log_w = log_w + sum(jnp.sum(dist.Normal(0.0, 1.0).log_prob(v)) for v in z.values())
            log_w = log_w - self.gaussian.log_prob(z)
        if self.categorical is not None and space.discrete:
            k = self.categorical.sample(k_k)
            log_w = log_w - self.categorical.log_prob(k)
            for name, site in space.discrete.items():
                log_w = log_w + jnp.sum(jnp.take_along_axis(site.log_p, k[name][..., None], -1))
        return z, k, log_w

    def draw(self, space: LatentSpace, key: jax.Array) -> tuple[dict, jax.Array]:
        """One draw: ``(latent values x, log p(x) - log q(x))``."""
        z, k, log_w = self.sample_point(space, key)
        return space.values(z, k), log_w


def draw_with(problem, proposal: Proposal, key: jax.Array):
    """``draw`` for :func:`~._engine.weighted_estimates`."""
    return proposal.draw(problem.space, key)
