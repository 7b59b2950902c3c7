"""Moves that leave the input distribution ``p`` invariant, for MHIS and splitting.

In standard coordinates ``p`` is ``N(0, I)`` for continuous sites, so the
preconditioned Crank-Nicolson move ``z' = sqrt(1 - beta^2) z + beta eps`` is
``p``-reversible in any dimension (Cotter et al. 2013): a Metropolis-Hastings
test against ``p(x) g(x)`` then needs only the ratio ``g(x')/g(x)``. For
discrete sites, redrawing a random subset of elements from their own ``p`` is
``p``-reversible too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._space import LatentSpace


def pcn_move(z: dict, key: jax.Array, beta) -> dict:
    """``sqrt(1 - beta^2) z + beta eps`` per continuous site."""
    out = {}
    for i, (name, value) in enumerate(z.items()):
        eps = jax.random.normal(jax.random.fold_in(key, i), value.shape)
        out[name] = jnp.sqrt(1.0 - beta**2) * value + beta * eps
    return out


def resample_move(space: LatentSpace, k: dict, key: jax.Array, fraction) -> dict:
    """Redraw each discrete element from ``p`` with probability ``fraction``."""
    out = {}
    for i, (name, site) in enumerate(space.discrete.items()):
        k_mask, k_new = jax.random.split(jax.random.fold_in(key, i))
        mask = jax.random.uniform(k_mask, site.shape) < fraction
        out[name] = jnp.where(mask, jax.random.categorical(k_new, site.log_p), k[name])
    return out


def num_discrete_elements(space: LatentSpace) -> int:
    return sum(int(jnp.size(s.log_p) // s.num_values) for s in space.discrete.values())
