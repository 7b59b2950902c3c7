"""Input messages: what each family knows about a latent site's distribution.

Exact where the family can be exact (Normal and multivariate normals under
``gaussian``; Bernoulli as a two-point law under the independence families and as a
two-class categorical under ``gaussian``);
a moment-matched Gaussian elsewhere, which the result's diagnostics report.
Any other distribution raises an error naming the site.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpyro.distributions as dist

from ppl_mech._capture import LatentSite
from ppl_mech._errors import UnsupportedDistributionError

from ._categorical import categorical_input
from ._state import Handle, State


def _unwrap(fn):
    while isinstance(fn, dist.Independent | dist.ExpandedDistribution):
        fn = fn.base_dist
    return fn


def _full_covariance(event_cov, shape) -> jnp.ndarray:
    """Covariance of all units of a value of ``shape`` whose last axis has ``event_cov``.

    Units in different batch/sample positions are independent (block diagonal).
    """
    d = shape[-1]
    outer = math.prod(shape[:-1])
    blocks = jnp.broadcast_to(event_cov, shape[:-1] + (d, d)).reshape(outer, d, d)
    eye = jnp.eye(outer, dtype=blocks.dtype)
    return jnp.einsum("ij,iab->iajb", eye, blocks).reshape(outer * d, outer * d)


def input_handle(site: LatentSite, state: State) -> Handle:
    fn = site.distribution
    base = _unwrap(fn)
    shape = site.shape
    origin = f"site {site.name!r}"
    dtype = site.dtype

    def moments(mean, var=None, cov=None, exact=True):
        mean = jnp.broadcast_to(jnp.asarray(mean, jnp.result_type(float)), shape)
        if not exact:
            state.note(
                f"site {site.name!r} ({type(base).__name__}) enters as a moment-matched Gaussian"
            )
        h = Handle(shape, mean.dtype, "moments", {"mean": mean}, origin)
        if not exact:
            h.data["closure"] = True
        if state.family == "gaussian":
            if cov is None:
                cov = jnp.diag(jnp.reshape(jnp.broadcast_to(var, shape), (-1,)))
            state.set_cov(h, h, cov)
            state.activate(h)
        else:
            if var is None:
                var = jnp.reshape(jnp.diagonal(cov), shape)
                state.note(
                    f"site {site.name!r}: correlations between units dropped "
                    f"(independence presumption of family {state.family!r})"
                )
            h.data["var"] = jnp.broadcast_to(var, shape)
        return h

    if isinstance(base, dist.Normal):
        return moments(fn.mean, var=fn.variance)
    if isinstance(base, dist.MultivariateNormal | dist.LowRankMultivariateNormal):
        if isinstance(fn, dist.Independent):
            raise UnsupportedDistributionError(
                f"site {site.name!r}: a multivariate normal with extra event dimensions "
                "(to_event on top) is not supported; reshape the model"
            )
        cov = _full_covariance(base.covariance_matrix, shape) if state.family == "gaussian" else None
        var = None if state.family == "gaussian" else jnp.broadcast_to(fn.variance, shape)
        if var is not None and shape[-1] > 1:
            state.note(
                f"site {site.name!r}: correlations between units dropped "
                f"(independence presumption of family {state.family!r})"
            )
        return moments(fn.mean, var=var, cov=cov)
    if isinstance(base, dist.Uniform):
        return moments(fn.mean, var=fn.variance, exact=False)
    if isinstance(base, dist.BernoulliProbs | dist.BernoulliLogits):
        p = jnp.broadcast_to(jnp.asarray(fn.mean, jnp.result_type(float)), shape)
        if state.family == "gaussian":  # a two-class categorical: exact through one-hot images
            return categorical_input(site.name, jnp.stack([1 - p, p], axis=-1), shape, dtype)
        zero = jnp.zeros(shape, dtype)
        return Handle(shape, dtype, "two_point", {"lo": zero, "hi": zero + 1, "p": p}, origin)
    if isinstance(base, dist.CategoricalProbs | dist.CategoricalLogits):
        return categorical_input(site.name, base.probs, shape, dtype)
    if isinstance(base, dist.Delta):
        raise UnsupportedDistributionError(
            f"site {site.name!r} is a Delta: make it a constant (substitute or plain jnp) instead"
        )
    raise UnsupportedDistributionError(
        f"site {site.name!r}: no input message for {type(base).__name__}; mechanize supports "
        "Normal, MultivariateNormal, LowRankMultivariateNormal, Uniform, Bernoulli and "
        "Categorical inputs"
    )
