"""A proposal the user writes down: ``{site: numpyro distribution}`` replacing those sites' ``p``.

Weights are ``p(x)/q(x)`` from the two distributions' numpyro ``log_prob``,
with ``p(x) = 0`` outside ``p``'s support (numpyro does not check supports by
default, e.g. ``Uniform.log_prob`` is constant everywhere). Before sampling,
each ``q`` is checked and rejected with an error naming the site when it
cannot work: wrong shape, discrete for a continuous site or the reverse,
zero/negative scale or variance, or zero density where ``p`` has mass (checked
exactly over an enumerable support, else at draws from ``p``). A ``q`` wider
than ``p`` (a Gaussian for a ``Uniform`` site) is fine: draws outside ``p``'s
support get weight 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from ppl_mech._capture import LatentSite
from ppl_mech._errors import ModelError

from ._engine import Context, Problem, weighted_estimates

SUPPORT_CHECK_DRAWS = 512


def _site_log_prob(d: dist.Distribution, value) -> jax.Array:
    lp = jnp.sum(d.log_prob(value))
    inside = jnp.all(d.support(value)) if callable(d.support) else True
    return jnp.where(inside, lp, -jnp.inf)


def check_given_proposal(name: str, site: LatentSite, q) -> None:
    """Raise (naming the site) when ``q`` cannot serve as a proposal for ``site``."""
    if not isinstance(q, dist.Distribution):
        raise TypeError(f"proposal for site {name!r} must be a numpyro distribution, got {q!r}")
    shape = tuple(q.batch_shape) + tuple(q.event_shape)
    if shape != site.shape:
        raise ModelError(
            f"proposal for site {name!r} has shape {shape} (batch + event), the site has shape "
            f"{site.shape}; use .expand(...)/.to_event(...)"
        )
    p = site.distribution
    if bool(getattr(q, "is_discrete", False)) != site.is_discrete:
        kind = "discrete" if site.is_discrete else "continuous"
        raise ModelError(
            f"proposal for site {name!r} is {type(q).__name__}, but the site is {kind} "
            f"({type(p).__name__}): a {'continuous' if site.is_discrete else 'discrete'} proposal "
            "has no density on its values"
        )
    base = q
    while isinstance(base, dist.Independent | dist.ExpandedDistribution):
        base = base.base_dist
    for attribute in ("scale", "scale_tril"):
        if hasattr(base, attribute):
            scale = np.asarray(getattr(base, attribute))
            if attribute == "scale_tril":
                scale = np.diagonal(scale, axis1=-2, axis2=-1)
            if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
                raise ModelError(
                    f"proposal for site {name!r} ({type(base).__name__}) has zero, negative or "
                    f"non-finite {attribute} (min {float(np.min(scale)):.3g}); its variance must be > 0"
                )
    if not site.is_discrete:
        try:
            variance = np.asarray(q.variance)
        except (NotImplementedError, AttributeError):
            variance = None
        if variance is not None and (np.any(variance <= 0) or np.any(np.isnan(variance))):
            raise ModelError(
                f"proposal for site {name!r} ({type(base).__name__}) has zero or negative variance "
                f"(min {float(np.nanmin(variance)):.3g})"
            )
    _check_support(name, site, q)


def _check_support(name: str, site: LatentSite, q) -> None:
    p = site.distribution
    pbase = p
    while isinstance(pbase, dist.Independent | dist.ExpandedDistribution):
        pbase = pbase.base_dist
    if site.is_discrete and getattr(pbase, "has_enumerate_support", False):
        support = jnp.reshape(pbase.enumerate_support(expand=False), (-1,))
        values = jnp.broadcast_to(
            jnp.reshape(support, (-1,) + (1,) * len(site.shape)), (support.shape[0],) + site.shape
        )
        qbase = q
        while isinstance(qbase, dist.Independent | dist.ExpandedDistribution):
            qbase = qbase.base_dist
        p_elem = jnp.broadcast_to(pbase.log_prob(values.astype(site.dtype)), values.shape)
        q_elem = jnp.broadcast_to(qbase.log_prob(values.astype(site.dtype)), values.shape)
        bad = np.asarray((p_elem > -jnp.inf) & ~(q_elem > -jnp.inf))
        if np.any(bad):
            where = np.argwhere(bad)[0]
            raise ModelError(
                f"proposal for site {name!r} gives probability 0 to value {support[where[0]]} at "
                f"element {tuple(int(i) for i in where[1:])}, where the site's distribution does not: "
                "the estimate would miss that part of the space"
            )
        return
    draws = p.sample(jax.random.PRNGKey(0), (SUPPORT_CHECK_DRAWS,) + site.sample_shape)
    lq = jax.vmap(lambda v: _site_log_prob(q, v))(draws)
    bad = ~np.isfinite(np.asarray(lq))
    if np.any(bad):
        raise ModelError(
            f"proposal for site {name!r} ({type(q).__name__}, support {q.support}) gives zero density "
            f"at {int(bad.sum())} of {SUPPORT_CHECK_DRAWS} draws from the site's distribution "
            f"({type(pbase).__name__}, support {p.support}): its support must contain the site's"
        )


def run_given(ctx: Context, proposals: Mapping[str, dist.Distribution], *, num_samples: int):
    """Importance sampling with the user's per-site proposals (other sites drawn from ``p``)."""
    problem = ctx.problem(ctx.dynamic)
    latents = problem.program.latents
    for name, q in proposals.items():
        if name not in latents:
            raise ModelError(
                f"proposal names site {name!r}, but the model's latent sites are {list(latents)}"
            )
        check_given_proposal(name, latents[name], q)

    def draw(problem: Problem, params, key):
        values, log_w = {}, jnp.zeros(())
        for i, (name, site) in enumerate(problem.program.latents.items()):
            k = jax.random.fold_in(key, i)
            p = site.distribution
            if name in proposals:
                q = proposals[name]
                x = q.sample(k)
                log_w = log_w + _site_log_prob(p, x) - jnp.sum(q.log_prob(x))
            else:
                x = p.sample(k, site.sample_shape)
            values[name] = x
        return values, log_w

    return weighted_estimates(ctx, draw, None, num_samples=num_samples, key=ctx.key(3),
                              method="importance[given]", fitted_to_target=False)
