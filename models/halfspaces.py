"""Intersections of random halfspaces under a standard Gaussian.

``x ~ N(0, I_n)``; ``k`` unit normals ``a_i`` (uniform on the sphere, seeded) and
offsets ``b_i``; the catastrophe is ``a_i . x >= b_i`` for every ``i``. Each
``a_i . x`` is exactly ``N(0, 1)`` and ``corr(a_i . x, a_j . x) = a_i . a_j``.

Through the origin (all ``b_i = 0``) the event depends on the direction of ``x``
only, and the direction of a standard Gaussian is uniform on the sphere, so the
probability equals the fraction of the sphere ``S^{n-1}`` inside the polyhedral
cone ``{a_i . u >= 0}``: the sphere-uniform problem.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from scipy import integrate, special

from ._registry import BuiltModel, ModelSpec, option_defaults, register


def normal_upper_tail(b) -> np.ndarray:
    """``P[Z >= b]`` for ``Z ~ N(0, 1)``, accurate in the far tail (``ndtr(-b)``)."""
    return special.ndtr(-np.asarray(b, np.float64))


def bivariate_normal_upper(b1: float, b2: float, rho: float) -> float:
    """``P[Z1 >= b1, Z2 >= b2]`` for standard normals with correlation ``rho``.

    Through the origin this is Sheppard's ``1/4 + arcsin(rho) / (2 pi)``. Otherwise
    it is the 1-D integral ``int_{b1}^inf phi(y) Phi((rho y - b2) / sqrt(1 - rho^2)) dy``
    (condition on ``Z1 = y``), whose integrand is positive, so adaptive quadrature
    with a relative tolerance stays accurate at probabilities far below 1e-10.
    ``|rho| = 1`` is handled in closed form.
    """
    b1, b2, rho = float(b1), float(b2), float(np.clip(rho, -1.0, 1.0))
    if b1 == 0.0 and b2 == 0.0:
        return 0.25 + math.asin(rho) / (2 * math.pi)
    if rho >= 1.0 - 1e-15:
        return float(special.ndtr(-max(b1, b2)))
    if rho <= -1.0 + 1e-15:  # Z2 = -Z1: b1 <= Z1 <= -b2
        return float(max(0.0, special.ndtr(-b2) - special.ndtr(b1)))
    r = math.sqrt(1.0 - rho * rho)
    # Integrate the more restrictive coordinate, so the integrand's mass sits near b.
    if b2 > b1:
        b1, b2 = b2, b1

    def integrand(y):
        return math.exp(-0.5 * y * y) / math.sqrt(2 * math.pi) * special.ndtr((rho * y - b2) / r)

    # Past b1 + 40 the Gaussian factor is below exp(-800) relative to its value at b1.
    lower = b1
    upper = max(b1, 0.0) + 40.0
    scale = float(integrand(lower)) or 1e-300
    value, _ = integrate.quad(
        lambda y: integrand(y) / scale, lower, upper, epsabs=0.0, epsrel=1e-12, limit=400,
        points=[max(lower, 0.0)] if lower < 0.0 < upper else None,
    )
    return value * scale


def halfspace_normals(n: int, k: int, seed: int) -> np.ndarray:
    """``k`` seeded unit vectors in ``R^n`` (rows), uniform on the sphere."""
    a = np.random.default_rng(seed).standard_normal((k, n))
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def halfspaces_model(normals, offsets):
    """``x ~ N(0, I_n)``; ``margins = A x - b``; ``catastrophe`` = all margins ``>= 0``."""
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([normals.shape[1]]).to_event(1))
    projections = normals @ x
    numpyro.deterministic("margins", projections - offsets)
    numpyro.deterministic("catastrophe", jnp.all(projections >= offsets))


def build_halfspaces(
    n: int = 16,
    k: int = 2,
    offset: float | tuple[float, ...] = 3.5,
    seed: int = 0,
) -> BuiltModel:
    """Intersection of ``k`` random halfspaces ``a_i . x >= b_i`` in ``n`` dimensions.

    Options:
        n: dimension.
        k: number of halfspaces.
        offset: ``b``, a scalar for all halfspaces or one number per halfspace
            (3.5: each halfspace alone has probability 2.3e-4; with the default
            ``n=16, k=2, seed=0``, ``rho = 0.243`` and the intersection has exact
            probability 9.0e-7).
        seed: seed of the normals.

    ``exact``: ``margins`` mean ``-b``; ``catastrophe`` for ``k = 1``:
    ``Phi(-b)`` (``scipy.special.ndtr``, accurate in the tail); for ``k = 2``: the
    bivariate normal orthant probability with ``rho = a_1 . a_2``
    (:func:`bivariate_normal_upper`). For ``k > 2`` no exact value is given (it is a
    Gaussian polytope probability; scipy's Genz routine is not exact in the tail).
    """
    n, k, seed = int(n), int(k), int(seed)
    if n < 1 or k < 1:
        raise ValueError(f"need n >= 1 and k >= 1, got n={n}, k={k}")
    if np.ndim(offset) == 0:
        offsets = np.full(k, float(offset))
    else:
        offsets = np.asarray(offset, np.float64)
    if offsets.shape != (k,):
        raise ValueError(f"offset must be a scalar or {k} numbers, got {offset!r}")
    normals = halfspace_normals(n, k, seed).astype(np.float32)
    offsets = offsets.astype(np.float32)
    # Exact answers for the float32 arrays the model uses: a_i . x ~ N(0, |a_i|^2).
    a, b = normals.astype(np.float64), offsets.astype(np.float64)
    norms = np.linalg.norm(a, axis=1)
    standard = b / norms
    exact: dict = {"margins": -b}
    if k == 1:
        exact["catastrophe"] = float(normal_upper_tail(standard[0]))
    elif k == 2:
        rho = float(a[0] @ a[1] / (norms[0] * norms[1]))
        exact["catastrophe"] = bivariate_normal_upper(standard[0], standard[1], rho)
    return BuiltModel(
        name="halfspaces",
        model=halfspaces_model,
        args=(jnp.asarray(normals), jnp.asarray(offsets)),
        exact=exact,
        description=f"intersection of {k} random halfspaces in {n} dimensions, offsets {offset}",
    )


register(ModelSpec(
    "halfspaces", build_halfspaces,
    "intersection of k random halfspaces a_i.x >= b_i under x ~ N(0, I_n)",
    option_defaults(build_halfspaces),
))
