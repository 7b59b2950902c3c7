"""Blocks without a propagation rule: defer them, then linearize them statistically.

Some computations have no per-primitive rule in the Gaussian-message families:
``jax.nn.softmax`` starts with a ``reduce_max`` and ends with a ratio of two
random values, ``logsumexp`` and ``log_softmax`` likewise, and a layer norm
divides by a random standard deviation. Moment-matching after each of those
primitives would compound errors (the max of the logits is far from
Gaussian). Instead the interpreter *defers*: the value becomes a function of
the Gaussian messages it came from (its *roots*), and later equations on it
compose into that function, whatever their primitive, the way elementwise
chains fuse into lazy handles. Softmax becomes one function of the logits.

A deferred value is *forced* into a Gaussian message when

* a unit-mixing linear map (``dot_general``, ``conv_general_dilated``)
  consumes it: after a matmul the Gaussian closure is the family's own
  presumption again (many units summed);
* a comparison decides on it (the detector sees its moment-matched margin);
* it meets a random value that cannot join its roots, or is reported.

A reduction of an elementwise chain to a few units (the variance inside a layer
norm, a pooled value) is moment-matched at once, as usual, but also remembers
its exact function of the chain's input (its *provenance*, up to
``PROVENANCE_MAX_SIZE`` units): a block that later reads it is rooted there, so
``(h - mean(h)) / sqrt(var(h))`` keeps the dependence between numerator and
denominator that a Gaussian closure of ``var(h)`` would lose (the two are
uncorrelated but far from independent).

Forcing is statistical linearization (the unscented/Kalman idea, with Monte
Carlo points): draw ``M`` points of the roots from their joint Gaussian
message (exactly whitened, so the points' covariance is the message's), push
them through the block, and keep the block's mean and covariance and the
regression ``B`` of the block on the whitened roots. Cross-covariances with
every other live value follow as ``B L^-1 Cov(roots, u)`` (``L`` the Cholesky factor of the
roots' covariance, its correlation matrix jittered by 1e-5), exact for jointly
Gaussian values (a Gaussian ``u`` given the roots is linear in them plus
independent noise). The moments carry Monte Carlo error of order
``1/sqrt(M)``; each forcing adds a note naming the block's first equation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from ppl_mech._bind import bind_eqn
from ppl_mech._errors import UnsupportedPrimitiveError

from ._state import Handle, State

LINEARIZATION_POINTS = 4096  # Monte Carlo points per forcing (at least 4 per root unit)
JITTER = 1e-5  # added to the roots' correlation matrix before its Cholesky factor
MAX_ROOT_SIZE = 4096  # root units a block may read; beyond it the block is forced first
UNIT_MIXING = {"dot_general", "conv_general_dilated"}
PROVENANCE_MAX_SIZE = 64  # reductions (not matmuls) up to this many units remember their inputs

DEFER_NOTE = ("{where}: no propagation rule for {name!r}; the block from here on is a deferred function of "
              "its Gaussian inputs, moment-matched by statistical linearization ({points} Monte Carlo "
              "points per forcing, error ~ 1/sqrt(points); points where the block is not finite are dropped, "
              "their share is diagnostics['linearization_nonfinite_share']); downstream tail probabilities "
              "are those of the Gaussian closure, which can be far off for bounded blocks (softmax, "
              "layer norm): check rare events with handlers.importance")

INDEPENDENT_ROOTS_NOTE = ("{where}: under the {family} family a deferred block samples its inputs as "
                          "independent; a normalisation of dependent values (layer norm, "
                          "jax.nn.standardize: mean(x**2) - mean(x)**2 of independent parts) can be "
                          "badly off (means 30x too large in one sweep model): prefer family='gaussian'")


def root_part(h: Handle) -> tuple[list[Handle], Callable]:
    """The roots of a random operand and its value as a function of ``{root id: value}``.

    A lazy chain reads its base; a small reduction of one (``data['provenance']``,
    e.g. the variance inside a layer norm) reads the roots it was computed from.
    """
    if h.kind == "deferred":
        return list(h.data["roots"]), h.data["fn"]
    if h.kind == "lazy":
        roots, base_fn = root_part(h.data["base"])
        lazy_fn = h.data["fn"]
        return roots, lambda env: lazy_fn(base_fn(env))
    if "provenance" in h.data:
        return list(h.data["provenance"]["roots"]), h.data["provenance"]["fn"]
    return [h], lambda env: env[h.id]


def defer(eqn, values: list, random: Sequence[int], where: str) -> list[Handle]:
    """The deferred handles of ``eqn``'s outputs, as functions of its operands' roots."""
    roots: dict[int, Handle] = {}
    parts = {}
    for i in random:
        rs, fn = root_part(values[i])
        for r in rs:
            roots.setdefault(r.id, r)
        parts[i] = fn

    def block(env):
        operands = list(values)
        for i, fn in parts.items():
            operands[i] = fn(env)
        return bind_eqn(eqn, operands)

    outs = []
    for k, var in enumerate(eqn.outvars):
        aval = var.aval
        outs.append(Handle(aval.shape, aval.dtype, "deferred",
                           {"roots": list(roots.values()), "fn": (lambda env, k=k: block(env)[k]),
                            "start": where}, where))
    return outs


def root_size(values: list, random: Sequence[int]) -> int:
    roots = {}
    for i in random:
        for r in root_part(values[i])[0]:
            roots[r.id] = r.size
    return sum(roots.values())


def linearize(state: State, h: Handle, key) -> Handle:
    """A ``moments`` handle for the deferred ``h`` (its roots must be ``moments`` handles)."""
    roots: list[Handle] = h.data["roots"]
    for r in roots:
        if r.kind != "moments":
            raise UnsupportedPrimitiveError(f"{h.origin}: a deferred block reads a {r.kind} value")
    dtype = roots[0].data["mean"].dtype
    sizes = [r.size for r in roots]
    n = sum(sizes)
    mean = jnp.concatenate([jnp.reshape(r.data["mean"], (-1,)) for r in roots]).astype(dtype)
    if state.family == "gaussian":
        cov = jnp.concatenate(
            [jnp.concatenate([state.get_cov(a, b) for b in roots], axis=1) for a in roots], axis=0)
        cov = 0.5 * (cov + cov.T)
        # the correlation matrix plus a jitter keeps the Cholesky factor (and its gradient)
        # defined when roots are linearly dependent (two affine images of one input); each
        # root's variance grows by the factor 1 + JITTER, whatever its scale
        sd = jnp.sqrt(jnp.maximum(jnp.diagonal(cov), 0.0))
        inv_sd = jnp.where(sd > 0, 1.0 / jnp.where(sd > 0, sd, 1.0), 0.0)
        corr = cov * inv_sd[:, None] * inv_sd[None, :]
        corr_factor = jnp.linalg.cholesky(corr + JITTER * jnp.eye(n, dtype=dtype))
        scale = sd[:, None] * corr_factor  # roots = mean + scale z
    elif state.family == "diagonal":
        scale = jnp.diag(jnp.sqrt(jnp.concatenate([jnp.reshape(r.data["var"], (-1,)) for r in roots])))
    else:  # mean family: the roots are points
        scale = jnp.zeros((n, n), dtype)
    points = max(LINEARIZATION_POINTS, 4 * n) if state.family != "mean" else 1
    if points == 1:
        z = jnp.zeros((1, n), dtype)
    else:
        z = _whitened_normals(key, points, n, dtype)
    r = mean[None, :] + z @ scale.T

    def evaluate(flat_roots):
        env, start = {}, 0
        for root, size in zip(roots, sizes, strict=True):
            env[root.id] = jnp.reshape(flat_roots[start:start + size], root.shape).astype(root.dtype)
            start += size
        return jnp.reshape(jnp.asarray(h.data["fn"](env), dtype), (-1,))

    # points where the block is not finite (its domain ends: sqrt of a negative max) are
    # dropped and their share recorded; they are swapped for a finite point before the
    # evaluation that is differentiated, so that they leave no NaN in gradients
    finite = jax.lax.stop_gradient(jnp.all(jnp.isfinite(jax.vmap(evaluate)(r)), axis=1))
    safe_point = r[jnp.argmax(finite)]
    y = jax.vmap(evaluate)(jnp.where(finite[:, None], r, safe_point[None, :]))
    if not jnp.issubdtype(y.dtype, jnp.floating):
        y = y.astype(dtype)
    weight = finite.astype(dtype) / jnp.maximum(jnp.sum(finite), 1)
    state.record("linearization_nonfinite_share", 1.0 - jnp.mean(finite.astype(dtype)))
    y = jnp.where(finite[:, None], y, 0.0)
    y_mean = jnp.where(jnp.any(finite), weight @ y, jnp.nan)  # no finite point: NaN, not 0
    centred = jnp.where(finite[:, None], y - y_mean, 0.0)
    new = Handle(h.shape, dtype, "moments", {"mean": jnp.reshape(y_mean, h.shape), "closure": True},
                 h.origin)
    if state.family == "gaussian":
        regression = (centred * weight[:, None]).T @ z  # B = Cov(block, z), z exactly whitened
        # Cov(z, u) = L^-1 Cov(roots, u), so Cov(block, u) = B L^-1 Cov(roots, u)
        to_roots = jax.scipy.linalg.solve_triangular(corr_factor, regression.T, lower=True, trans="T").T
        to_roots = to_roots * inv_sd[None, :]  # B L^-1 with L = diag(sd) corr_factor
        for u in list(state.active.values()):
            block = jnp.concatenate([state.get_cov(root, u) for root in roots], axis=0)
            state.set_cov(new, u, to_roots @ block)
        own = (centred * weight[:, None]).T @ centred
        state.set_cov(new, new, 0.5 * (own + own.T))
        state.activate(new)
    elif state.family == "diagonal":
        new.data["var"] = jnp.reshape(weight @ centred**2, h.shape)
    return new


def _whitened_normals(key, points: int, n: int, dtype) -> jax.Array:
    """``points x n`` normals centred and rotated so that ``z^T z / points = I`` exactly."""
    z = jax.random.normal(key, (points, n), dtype)
    z = z - jnp.mean(z, axis=0, keepdims=True)
    q, r = jnp.linalg.qr(z)  # z = q r, q^T q = I
    sign = jnp.sign(jnp.diagonal(r))
    return q * jnp.where(sign == 0, 1.0, sign)[None, :] * math.sqrt(points)
