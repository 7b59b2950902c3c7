"""Linear step ``y = L x + c``: every kept cumulant is contracted with L on each leg.

Exact at every order for the representation: mean -> L mean + c, cov -> L cov L^T,
third-cumulant factors -> L a (each of the three) or the dense k3 contracted on its three
legs (K = 4), radial fourth metric -> L G L^T, factored fourth -> (L p, L q, B contracted
with L on both unit axes). At K = 1 only variances are propagated: ``var_out = (L * L) var``.

``L`` is either a matrix (:func:`linear`, W stored (in, out), ``L = W^T``) or any linear
callable on unit vectors (:func:`linear_map`, used by the jaxpr interpreter: the linear
part of a traced equation chain, applied column by column with ``jax.vmap``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array

from ._message import CumulantMessage, FactoredFourth, FactoredThird, RadialFourth

LinearFn = Callable[[Array], Array]
"""A linear map from an (n,) unit vector to an (m,) unit vector."""


def linear(message: CumulantMessage, W: Array, b: Array | None = None) -> CumulantMessage:
    """Cumulants of ``x @ W + b`` (W stored (in, out)); FLOPs O(n^2 (n + R)) (K = 4: O(n^3 R + n^4))."""
    mean = message.mean @ W
    if b is not None:
        mean = mean + b
    if message.cov.ndim == 1:  # K = 1: independence presumption
        return CumulantMessage(mean, message.cov @ (W * W))
    return linear_map(message, lambda v: v @ W, mean)


def map_axis(lin: LinearFn, t: Array, axis: int) -> Array:
    """Apply the linear map ``lin`` ((n,) -> (m,)) along ``axis`` of ``t``."""
    t = jnp.moveaxis(t, axis, 0)
    rest = t.shape[1:]
    flat = t.reshape(t.shape[0], -1)
    if flat.shape[1] == 0:  # vmap needs a non-empty axis
        m = jax.eval_shape(lin, jax.ShapeDtypeStruct((t.shape[0],), t.dtype)).shape[0]
        out = jnp.zeros((m, 0), t.dtype)
    else:
        out = jax.vmap(lin, in_axes=1, out_axes=1)(flat)
    return jnp.moveaxis(out.reshape((out.shape[0],) + rest), 0, axis)


def linear_map(
    message: CumulantMessage,
    lin: LinearFn,
    mean: Array,
    variance: Array | None = None,
    *,
    through: int = 4,
) -> CumulantMessage:
    """Cumulants of ``y = L x + c`` for a linear callable ``lin`` (``v -> L v``).

    Args:
        mean: ``E[y] = L E[x] + c`` (the caller has it from the affine map itself).
        variance: at K = 1 (variances only), the variance image ``(L * L) var``, which a
            black-box linear map cannot give cheaply; required there.
        through: map cumulants up to this degree only (2: mean and covariance, for
            reporting an output without paying for the higher cumulants).
    """
    if message.cov.ndim == 1:
        if variance is None:
            raise ValueError("an order-1 message needs the variance image of the linear map")
        return CumulantMessage(mean, variance)
    cov = map_axis(lin, map_axis(lin, message.cov, 0), 1)
    if through <= 2:
        return CumulantMessage(mean, cov)
    third, fourth = message.third, message.fourth
    if isinstance(third, FactoredThird):
        third = FactoredThird(*(map_axis(lin, f, 0) for f in third))
    elif third is not None:  # dense (K = 4)
        for axis in range(3):
            third = map_axis(lin, third, axis)
    if isinstance(fourth, RadialFourth):
        fourth = RadialFourth(fourth.scale, map_axis(lin, map_axis(lin, fourth.metric, 0), 1))
    elif isinstance(fourth, FactoredFourth):
        p, q, b = fourth
        fourth = FactoredFourth(
            map_axis(lin, p, 0), map_axis(lin, q, 0), map_axis(lin, map_axis(lin, b, 0), 1)
        )
    return CumulantMessage(mean, cov, third, fourth)


def dense_linear(k: Array, W: Array) -> Array:
    """Reference contraction of a dense d-tensor with W on every leg (tests)."""
    letters = "abcdefgh"[: k.ndim]
    outs = "ijklmnop"[: k.ndim]
    spec = letters + "," + ",".join(f"{a}{o}" for a, o in zip(letters, outs, strict=True))
    return jnp.einsum(f"{spec}->{outs}", k, *([W] * k.ndim))
