"""Thresholds of ReLU outputs, decided on the pre-activation.

``relu(u) > s`` is the event ``u > s`` when ``s >= 0`` and certain when
``s < 0``. A detector on a ReLU layer (``layer[k] > t``) is therefore a
halfspace of the *pre-activation*, which the ``gaussian`` family models far
better than the ReLU output: the pre-activation is a sum of many terms (close
to Gaussian), while the output is a point mass at 0 plus a half-Gaussian that
a moment-matched Gaussian misrepresents in exactly the tail a detector looks
at (on WhestBench 256x8 the difference is 1e-30 against 1e-5).

A :class:`ReluPreimage` remembers, for every unit of a value, that it equals
``post_scale * relu(pre_scale * base[index] + pre_shift) + post_shift`` for a
Gaussian ``base``. It is attached when a fused ``relu`` chain is forced into
moments, and follows the value through data-movement primitives (slices,
reshapes, gathers with constant indices), so ``relu(h @ W)[k] > t`` is
compared on ``(h @ W)[k]``. Comparisons with constants then become margins on
``base``. The cases where the event is certain or impossible are encoded as
zero-variance margins, so that the event structure stays static under ``jit``
when thresholds are traced.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._state import Handle


@dataclasses.dataclass(frozen=True)
class ReluPreimage:
    """``value.ravel() = post_scale * relu(pre_scale * base.ravel()[index] + pre_shift) + post_shift``.

    All arrays are flat, one entry per unit of the value.
    """

    base: Handle
    index: np.ndarray
    pre_scale: Any
    pre_shift: Any
    post_scale: Any
    post_shift: Any

    def select(self, index: np.ndarray) -> ReluPreimage:
        """The preimage of ``value.ravel()[index]``."""
        return ReluPreimage(self.base, self.index[index], self.pre_scale[index], self.pre_shift[index],
                            self.post_scale[index], self.post_shift[index])

    def then_affine(self, scale, shift) -> ReluPreimage:
        """The preimage of ``scale * value + shift`` (elementwise, flat)."""
        return dataclasses.replace(self, post_scale=scale * self.post_scale,
                                   post_shift=scale * self.post_shift + shift)


def flat_affine(fn, shape, dtype) -> tuple[Any, Any]:
    """``(a, b)`` with ``fn(z) = a * z + b`` for an elementwise affine ``fn`` (flat arrays)."""
    b = fn(jnp.zeros(shape, dtype))
    a = fn(jnp.ones(shape, dtype)) - b
    return jnp.reshape(jnp.broadcast_to(a, shape), (-1,)), jnp.reshape(jnp.broadcast_to(b, shape), (-1,))


def relu_preimage(base: Handle, pre, post) -> ReluPreimage:
    """The preimage of the fused chain ``post(relu(pre(base)))`` (``pre``/``post`` affine)."""
    dtype = base.data["mean"].dtype
    a, b = flat_affine(pre, base.shape, dtype)
    pa, pb = flat_affine(post, base.shape, dtype)
    return ReluPreimage(base, np.arange(base.size), a, b, pa, pb)


def threshold_margin(pre: ReluPreimage, threshold, sign: int, strict: bool):
    """``(fn, var_fn)`` of a margin ``m`` on ``base`` with ``{m > 0} = {sign * (value - t) > 0}``.

    ``fn(base_value)`` and ``var_fn(base_variance)`` return flat arrays; ``threshold``
    is flat (broadcast to the units). Writing the value as ``pa * relu(u) + pb``:
    ``sign * (value - t) > 0`` iff ``c * relu(u) > d`` with ``c = sign * pa`` and
    ``d = sign * (t - pb)``. For ``c > 0`` this is ``u > d / c`` when ``d / c >= 0``
    (certain otherwise); for ``c < 0`` it is ``u < d / c`` when ``d / c > 0``
    (impossible otherwise); for ``c = 0`` it is the constant ``0 > d``. ``>=``/``<=``
    differ from ``>``/``<`` only at ``d / c = 0`` (``relu(u) >= 0`` is certain).
    """
    c = sign * pre.post_scale
    d = sign * (threshold - pre.post_shift)
    positive, negative = c > 0, c < 0
    s = d / jnp.where(c != 0, c, 1.0)
    if strict:
        certain = (positive & (s < 0)) | ((c == 0) & (d < 0))
        impossible = (negative & (s <= 0)) | ((c == 0) & (d >= 0))
    else:
        certain = (positive & (s <= 0)) | ((c == 0) & (d <= 0))
        impossible = (negative & (s < 0)) | ((c == 0) & (d > 0))
    halfspace = ~(certain | impossible)
    orientation = jnp.where(negative, -1.0, 1.0)
    slope = jnp.where(halfspace, orientation * pre.pre_scale, 0.0)
    offset = jnp.where(halfspace, orientation * (pre.pre_shift - s), jnp.where(certain, 1.0, -1.0))
    index = pre.index

    def fn(z):
        return slope * jnp.reshape(z, (-1,))[index] + offset

    def var_fn(v):
        return jnp.square(slope) * jnp.reshape(v, (-1,))[index]

    return fn, var_fn
