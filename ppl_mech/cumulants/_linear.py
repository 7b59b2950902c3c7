"""Linear step ``y = x @ W + b``: every kept cumulant is contracted with W on each leg.

Exact at every order for the representation: mean -> mean W + b, cov -> W^T cov W,
third-cumulant factors -> W^T a (each of the three), fourth-cumulant metric -> W^T G W.
At K = 1 only variances are propagated: ``var_out = (W * W)^T var_in``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from ._message import CumulantMessage, FactoredThird, RadialFourth


def linear(message: CumulantMessage, W: Array, b: Array | None = None) -> CumulantMessage:
    """Cumulants of ``x @ W + b`` (W stored (in, out)); FLOPs O(n^2 (n + R))."""
    mean = message.mean @ W
    if b is not None:
        mean = mean + b
    if message.cov.ndim == 1:  # K = 1: independence presumption
        return CumulantMessage(mean, message.cov @ (W * W))
    cov = W.T @ message.cov @ W
    third = fourth = None
    if message.third is not None:
        third = FactoredThird(*(W.T @ f for f in message.third))
    if message.fourth is not None:
        metric = W.T @ message.fourth.metric @ W
        fourth = RadialFourth(message.fourth.scale, metric)
    return CumulantMessage(mean, cov, third, fourth)


def dense_linear(k: Array, W: Array) -> Array:
    """Reference contraction of a dense d-tensor with W on every leg (tests)."""
    letters = "abcdefgh"[: k.ndim]
    outs = "ijklmnop"[: k.ndim]
    spec = letters + "," + ",".join(f"{a}{o}" for a, o in zip(letters, outs, strict=True))
    return jnp.einsum(f"{spec}->{outs}", k, *([W] * k.ndim))
