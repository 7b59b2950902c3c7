"""Antithetic orthogonal frames: Monte Carlo draws that are each exact and jointly balanced.

Write every continuous input as ``x = T(z)`` with ``z ~ N(0, I_D)`` (the standard
coordinates of ``importance._space``: ``loc + scale z`` for Gaussians, a
quantile map otherwise). A *frame* of size ``m <= D`` is ``2m`` draws

    z = +r_k q_k  and  z = -r_k q_k,   k = 1..m,

with ``q_1..q_m`` orthonormal and uniformly oriented (QR of a Gaussian matrix,
signs fixed by ``R``'s diagonal) and radii ``r_k ~ chi_D`` independent. Each
draw is exactly ``N(0, I_D)`` (a uniform direction times an independent
``chi_D`` length), so the mean over a frame is unbiased for any function of the
inputs, smooth or not. Jointly, the pairs cancel every odd part of ``f(T(z))``
(the antithetic control variate) and, in a full frame (``m = D``),
``sum_k q_k^T B q_k = tr B`` for every matrix ``B``, so a quadratic part
``z^T B z`` varies only through the radii. This is the stochastic
spherical-radial idea of Genz & Monahan (1998) and "orthogonal Monte Carlo"
(Choromanski et al. 2017; Lin et al. 2020).

Frames are independent, so the spread of frame means gives an honest standard
error. How much they gain depends on how much of ``f``'s variance sits in its
degree-1 and degree-2 Hermite parts. Measured per model evaluation against
i.i.d. draws (mean over the final layer's units; frames of size 256,
``python examples/frame_gains.py``, seed 0): WhestBench 256x2 9.0x, ARC-setup 256x4 ReLU
4.4x and GELU 4.2x, WhestBench 256x8 2.6x (antithetic pairs alone: 1.22x), 256x32 1.8x.
Partial frames gain less (256x8: 1.32x at ``m = 32``, 1.66x at ``m = 128``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from ._capture import Program, capture_program, check_independent_latents
from ._errors import ModelError, UnsupportedDistributionError


@dataclasses.dataclass(frozen=True)
class FrameLayout:
    """Where each continuous latent site sits in the flat standard coordinate ``z`` (length ``dim``)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def dim(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def split(self, z: jax.Array) -> dict[str, jax.Array]:
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = math.prod(shape)
            out[name] = jnp.reshape(z[start:start + size], shape)
            start += size
        return out


def frame_layout(model: Callable, args: Sequence, kwargs: Mapping,
                 program: Program | None = None) -> FrameLayout | str:
    """The layout of the model's inputs, or why frames do not apply (a sentence).

    Frames need every latent site continuous, independent of the others and written
    through standard normals (see ``importance._space``); no ``numpyro.prng_key()``.
    ``program``: the model's captured program, if the caller has it already.
    """
    from ppl_mech.importance._space import LatentSpace

    program = capture_program(model, args, kwargs) if program is None else program
    if not program.latents:
        return "the model has no latent site"
    try:
        space = LatentSpace.from_program(program)
        check_independent_latents(model, args, kwargs, program, "frames rotate all inputs together")
    except (ModelError, UnsupportedDistributionError) as err:
        return str(err)
    if space.discrete:
        return f"discrete latent site(s) {', '.join(map(repr, space.discrete))} cannot be rotated"
    return FrameLayout(tuple(space.continuous), tuple(space.continuous[n].shape for n in space.continuous))


def frame_noise(key: jax.Array, size: int, dim: int) -> jax.Array:
    """``(2 size, dim)`` standard-normal draws: ``size`` orthonormal directions times chi radii, then
    their negatives."""
    if not 1 <= size <= dim:
        raise ValueError(f"frame size must be in [1, {dim}], got {size}")
    k_dir, k_rad = jax.random.split(key)
    gauss = jax.random.normal(k_dir, (dim, size))
    q, r = jnp.linalg.qr(gauss)  # (dim, size), orthonormal columns
    q = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)[None, :]  # uniform (Haar) orientation
    radii = jnp.sqrt(jax.random.chisquare(k_rad, dim, (size,)))
    plus = (q * radii[None, :]).T
    return jnp.concatenate([plus, -plus])


def frame_outputs(program: Program, layout: FrameLayout, key: jax.Array, size: int) -> dict[str, jax.Array]:
    """Every output site at the ``2 size`` draws of one frame (leading axis: the draws)."""
    from ppl_mech.importance._space import LatentSpace

    space = LatentSpace.from_program(program)
    noise = frame_noise(key, size, layout.dim)

    def one(z):
        return program.fn(space.values(layout.split(z), {}))

    return jax.vmap(one)(noise)


def auto_frame_size(dim: int, num_samples: int, min_frames: int) -> int:
    """The largest frame (at most ``dim``) that leaves ``min_frames`` whole frames in ``num_samples``."""
    return max(1, min(dim, num_samples // (2 * min_frames)))
