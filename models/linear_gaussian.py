"""A linear map of a Gaussian: every site has an exact answer (the tests' reference).

``x ~ N(mu, Sigma)`` in ``dim`` dimensions (``MultivariateNormal``, or an
independent ``Normal`` when ``diagonal``); ``y = A x + b``; ``score = c . y``;
``catastrophe = score > t``; ``both = (c . y > t) & (d . y > s)``. ``y``, ``score``
and ``(c . y, d . y)`` are exactly Gaussian, so means and probabilities are
closed forms (the bivariate one by :func:`~ppl_mech.models.halfspaces.bivariate_normal_upper`).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ._registry import BuiltModel, ModelSpec, option_defaults, register
from .halfspaces import bivariate_normal_upper, normal_upper_tail


def linear_gaussian_model(loc, scale, A, b, c, t, d, s, *, diagonal: bool):
    """``x ~ N(loc, scale scale^T)`` (``scale`` a vector of sds when ``diagonal``).

    Sites: ``y = A x + b``, ``score = c . y``, ``catastrophe = score > t``,
    ``both = (score > t) & (d . y > s)``.
    """
    if diagonal:
        x = numpyro.sample("x", dist.Normal(loc, scale).to_event(1))
    else:
        x = numpyro.sample("x", dist.MultivariateNormal(loc, scale_tril=scale))
    y = numpyro.deterministic("y", A @ x + b)
    score = numpyro.deterministic("score", c @ y)
    numpyro.deterministic("catastrophe", score > t)
    numpyro.deterministic("both", (score > t) & (d @ y > s))


def build_linear_gaussian(
    dim: int = 4,
    out_dim: int = 3,
    diagonal: bool = False,
    seed: int = 0,
    sigmas: float = 3.0,
    threshold: float | None = None,
    second_sigmas: float | None = None,
) -> BuiltModel:
    """A seeded linear-Gaussian program with exact answers for every site.

    Options:
        dim: dimension of ``x``. out_dim: dimension of ``y``.
        diagonal: ``Sigma`` diagonal (``Normal``) instead of dense (``MultivariateNormal``).
        seed: seed of ``mu, Sigma, A, b, c, d``.
        sigmas: ``t = E[score] + sigmas * sd(score)`` (3.0: ``P[catastrophe] = 1.35e-3``).
        threshold: ``t`` directly (overrides ``sigmas``).
        second_sigmas: ``s = E[d . y] + second_sigmas * sd(d . y)`` (default: ``sigmas``).

    ``exact``: ``y``: ``A mu + b``; ``score``: ``c . (A mu + b)``; ``catastrophe``:
    ``Phi((E[score] - t) / sd(score))`` with ``sd^2 = c^T A Sigma A^T c``;
    ``both``: the bivariate normal upper orthant of the standardised
    ``(c . y, d . y)`` with their exact correlation. All computed in float64 from
    the float32 parameters the model uses.
    """
    dim, out_dim, seed = int(dim), int(out_dim), int(seed)
    if dim < 1 or out_dim < 1:
        raise ValueError(f"need dim >= 1 and out_dim >= 1, got {dim}, {out_dim}")
    rng = np.random.default_rng(seed)
    f32 = np.float32
    loc = rng.standard_normal(dim).astype(f32)
    if diagonal:
        scale = np.exp(0.3 * rng.standard_normal(dim)).astype(f32)
        cov = np.diag(scale.astype(np.float64) ** 2)
    else:
        m = rng.standard_normal((dim, dim)) / math.sqrt(dim)
        sigma = m @ m.T + 0.5 * np.eye(dim)
        scale = np.linalg.cholesky(sigma).astype(f32)
        cov = scale.astype(np.float64) @ scale.astype(np.float64).T
    A = (rng.standard_normal((out_dim, dim)) / math.sqrt(dim)).astype(f32)
    b = rng.standard_normal(out_dim).astype(f32)
    c = rng.standard_normal(out_dim).astype(f32)
    # d = c + noise: a second halfspace that overlaps the first (a useful "both" event).
    d = (c + rng.standard_normal(out_dim)).astype(f32)

    A64 = A.astype(np.float64)
    mean_y = A64 @ loc.astype(np.float64) + b.astype(np.float64)
    cov_y = A64 @ cov @ A64.T
    c64, d64 = c.astype(np.float64), d.astype(np.float64)
    mean_score, sd_score = c64 @ mean_y, math.sqrt(c64 @ cov_y @ c64)
    mean_second, sd_second = d64 @ mean_y, math.sqrt(d64 @ cov_y @ d64)
    rho = float(c64 @ cov_y @ d64) / (sd_score * sd_second)
    t = f32(mean_score + sigmas * sd_score if threshold is None else threshold)
    second = sigmas if second_sigmas is None else second_sigmas
    s = f32(mean_second + second * sd_second)
    z_t = (float(t) - mean_score) / sd_score
    z_s = (float(s) - mean_second) / sd_second
    exact = {
        "y": mean_y,
        "score": float(mean_score),
        "catastrophe": float(normal_upper_tail(z_t)),
        "both": bivariate_normal_upper(z_t, z_s, rho),
    }
    return BuiltModel(
        name="linear-gaussian",
        model=linear_gaussian_model,
        args=tuple(jnp.asarray(v) for v in (loc, scale, A, b, c, t, d, s)),
        kwargs=dict(diagonal=bool(diagonal)),
        exact=exact,
        description=(
            f"linear map of a {'diagonal' if diagonal else 'dense'} Gaussian in {dim} "
            f"dimensions; catastrophe: c.y > {float(t):.4g} (exact)"
        ),
    )


register(ModelSpec(
    "linear-gaussian", build_linear_gaussian,
    "y = A x + b of a Gaussian x; halfspace detectors with exact probabilities",
    option_defaults(build_linear_gaussian),
))
