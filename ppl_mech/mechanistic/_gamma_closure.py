"""Nonnegative values read through a Gamma law instead of a Gaussian closure.

A sum of squares (``sum(y * y)``, ``norm(y)**2``, a variance) is moment-matched by
the families like any other value, but a Gaussian of its mean and variance puts
mass below 0 and has the wrong tails: for ``y`` a 4-vector of affine Gaussians,
``E sqrt(sum y^2)`` came out 4% high from the Gaussian (integrated where the
root is defined: 2.45 for 2.35) and ``P(sum y^2 > 36)`` 1.6e-12 for 4.9e-4. A
Gamma law of the same mean and variance is the classical (Satterthwaite)
approximation of a quadratic form of Gaussians: on the same case it gives the
root's mean 0.8% low and that tail as 8.5e-5 (exact for a central chi-square;
two moments cannot see the heaviest direction of a form whose directions differ).

The value ``q`` keeps its Gaussian closure ``b ~ N(m, v)`` as the carrier of its
correlations with everything else; it is read as ``q = G^-1(Phi((b - m) / sqrt(v)))``
with ``G`` the Gamma(m^2 / v, v / m) distribution function, a monotone map, so
chains on ``q`` (``sqrt``, ``log``) are integrated and thresholds of ``q`` are
inverted through it like any other chain of a Gaussian. The quantile is found by
Newton steps in ``log q`` on the regularised incomplete gamma function (the lower
one below the median, the upper one above it), with implicit-function gradients
in ``b``, ``m`` and ``v``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammainc, gammaincc, gammaln, log_ndtr, ndtr

from ._data_movement import STRUCTURAL
from ._state import Handle

NEWTON_STEPS = 16
GAMMA_NOTE = (
    "a nonnegative value (a sum of squares, a squared norm, an exp...) read again after moment "
    "matching is given a Gamma law of its mean and variance instead of a Gaussian (Satterthwaite; "
    "exact for a central chi-square; the norm of a 4-d affine Gaussian: mean 0.8% low, P(norm > 6) "
    "8.5e-5 for 4.9e-4, where the Gaussian closure gave 1.6e-12); its tails can still be far off "
    "either way: too light for forms with unequal directions, 5x too heavy for norm(tanh(x @ W)) > t "
    "in one sweep model; check rare events with handlers.importance"
)


def gamma_quantile_of_normal(z, shape):
    """``x`` with ``P(Gamma(shape, 1) <= x) = Phi(z)``, elementwise, differentiable in ``z`` and ``shape``."""
    k = jax.lax.stop_gradient(shape)
    lower = z <= 0
    zs = jax.lax.stop_gradient(z)
    log_target = jnp.where(lower, log_ndtr(zs), log_ndtr(-zs))
    # start: Wilson–Hilferty, or the small-x series P ~ x^k / Gamma(k + 1) deep in the lower tail
    c = 1.0 / (9.0 * k)
    cube = 1.0 - c + zs * jnp.sqrt(c)
    small = (log_target + gammaln(k + 1.0)) / k
    y = jnp.where(cube > 0.2, jnp.log(k) + 3.0 * jnp.log(jnp.maximum(cube, 0.2)), small)

    def newton(_, y):
        x = jnp.exp(y)
        tail = jnp.where(lower, gammainc(k, x), gammaincc(k, x))
        log_tail = jnp.log(jnp.maximum(tail, 1e-37))
        slope = jnp.exp(k * y - x - gammaln(k) - log_tail)  # d log tail / d y, up to sign
        step = (log_tail - log_target) / jnp.where(lower, slope, -slope)
        return y - jnp.clip(step, -2.0, 2.0)

    root = jax.lax.stop_gradient(jnp.exp(jax.lax.fori_loop(0, NEWTON_STEPS, newton, y)))
    # implicit function: F(x) = P(k, x) - Phi(z) = 0 (or the upper tails), dF/dx = density
    residual = jnp.where(lower, gammainc(shape, root) - ndtr(z), ndtr(-z) - gammaincc(shape, root))
    density = jnp.exp((k - 1.0) * jnp.log(root) - root - gammaln(k))
    step = -residual / jnp.where(density > 0, density, 1.0)
    step = jnp.where(density > 0, step, 0.0)
    return root + (step - jax.lax.stop_gradient(step))


def gamma_map(mean, variance):
    """``b -> q``: the Gaussian closure ``b ~ N(mean, variance)`` of a nonnegative value, mapped
    to the Gamma law of the same mean and variance (identity where the variance is 0)."""
    usable = (variance > 0) & (mean > 0)
    m = jnp.where(usable, mean, 1.0)
    v = jnp.where(usable, variance, 1.0)
    shape, scale, sd = m * m / v, v / m, jnp.sqrt(v)

    def q(b):
        z = (b - m) / sd
        return jnp.where(usable, scale * gamma_quantile_of_normal(z, jnp.broadcast_to(shape, z.shape)), b)

    return q


def keeps_nonnegative(eqn, values, random) -> bool:
    """Whether an affine ``eqn`` maps nonnegative operands to a nonnegative value: sums
    (``reduce_sum``, ``add``), data movement, and products with concretely nonnegative constants
    (a mean, a ``dot_general`` with a nonnegative matrix)."""
    if not random or not all(values[i].data.get("nonnegative") for i in random):
        return False
    constants = [v for i, v in enumerate(values) if i not in random]
    if any(isinstance(c, jax.core.Tracer) for c in constants):
        return False
    name = eqn.primitive.name
    if name in ("reduce_sum", "add", "add_any", "cumsum") or name in STRUCTURAL and name not in (
            "pad", "concatenate", "select_n", "dynamic_update_slice", "stack"):
        return not constants or name in ("reduce_sum", "cumsum") or all(
            np.all(np.asarray(c) >= 0) for c in constants)
    if name in ("mul", "dot_general") or (name == "div" and random == [0]):
        return all(np.all(np.asarray(c) >= 0) for c in constants)
    return False


def reads_as_gamma(h: Handle) -> bool:
    """A moment-matched nonnegative value (its Gaussian closure misplaces its mass and tails)."""
    return h.kind == "moments" and bool(h.data.get("nonnegative")) and bool(h.data.get("closure"))


def gamma_chain(h: Handle, base: Handle, variance) -> Handle:
    """``h`` (``base`` itself, or a lazy chain on it) as a chain on ``base`` read through its Gamma law."""
    q = gamma_map(base.data["mean"], variance)

    def through(f):
        return lambda z: f(q(z))

    if h is base:
        data = {"fn": q, "structure": ("generic",), "monotone": 1, "jumps": (), "soft": (),
                "stairs": False, "domain": False, "nonnegative": True, "gamma": True}
    else:
        data = {"fn": through(h.data["fn"]), "structure": ("generic",),
                "monotone": h.data.get("monotone", 0),
                "jumps": tuple(through(j) for j in h.data.get("jumps", ())),
                "soft": tuple((through(g), d, c) for g, d, c in h.data.get("soft", ())),
                "stairs": h.data.get("stairs", False), "domain": False,
                "nonnegative": h.data.get("nonnegative", False), "gamma": True}
    return Handle(h.shape, h.dtype, "lazy", {"base": base, **data}, h.origin)
