"""The cumulant message: mean, covariance and memory-lean third and fourth cumulants.

Representation (after ARC's factored cumulant propagation, arXiv:2605.05179):

* ``mean``  (n,)   — first cumulant.
* ``cov``   (n, n) — second cumulant; at order K = 1 (the independence presumption) only
  the variances are kept, as an (n,) vector.
* ``third`` — the third cumulant as a symmetrised sum of rank-one terms,
  ``k3 = Sym(sum_r a[:, r] (x) b[:, r] (x) c[:, r])``; three (n, R) matrices instead of
  an n^3 tensor. A linear map multiplies each factor by W^T, so it stays exact; each
  nonlinear step appends 2n columns (path diagrams and repeated-index corrections).
* ``fourth`` — the fourth cumulant kept only through its pure-trace (radial) part,
  ``k4 = scale * Sym(G (x) G)``, a scalar and an (n, n) metric G. After a nonlinearity
  G = I and ``scale`` is the orthogonal projection of the true fourth cumulant onto
  Sym(I (x) I); a linear map sends G to W^T G W (exact for this form).

At order K = 4 (ARC's factored K = 4, SIMPLE term set) the message keeps the full third
and fourth cumulants instead:

* ``third`` — the dense (n, n, n) third cumulant (``None`` for zero, e.g. a Gaussian input);
* ``fourth`` — :class:`FactoredFourth`, ``k4 = Sym(sum_r p_r (x) q_r (x) B_r)`` with
  ``p, q`` (n, R) and ``B`` (n, n, R) symmetric in its first two axes; a linear map
  multiplies p and q by W^T and contracts B with W on both of its unit axes (exact).

The order K is read from the structure: ``cov.ndim == 1`` means K = 1, ``third is None``
means K = 2, a :class:`FactoredFourth` means K = 4, otherwise K = 3.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array


class FactoredThird(NamedTuple):
    """Third cumulant ``Sym(sum_r a_r (x) b_r (x) c_r)``; each factor has shape (n, R)."""

    a: Array
    b: Array
    c: Array


class RadialFourth(NamedTuple):
    """Fourth cumulant ``scale * Sym(metric (x) metric)`` (scale: scalar; metric: (n, n))."""

    scale: Array
    metric: Array


class FactoredFourth(NamedTuple):
    """Fourth cumulant ``Sym(sum_r p_r (x) q_r (x) B_r)``; p, q: (n, R); B: (n, n, R), B = B^T per r.

    The ``p (x) q`` half is rank one per column because every term K = 4 creates is an
    input-covariance edge ``(i, j)`` times a Kronecker delta (``q = I``), and linear maps
    keep that form; it costs (n, R) instead of ARC's (n, n, R).
    """

    p: Array
    q: Array
    b: Array


class CumulantMessage(NamedTuple):
    """Cumulants of a layer's units up to order K (see the module docstring)."""

    mean: Array
    cov: Array
    third: FactoredThird | Array | None = None
    fourth: RadialFourth | FactoredFourth | None = None


def message_order(message: CumulantMessage) -> int:
    """The order K a message carries (1 to 4), read from its structure."""
    if message.cov.ndim == 1:
        return 1
    if isinstance(message.fourth, FactoredFourth):
        return 4
    if message.third is None:
        return 2
    return 3


def variance(message: CumulantMessage) -> Array:
    """Per-unit variances (n,)."""
    return message.cov if message.cov.ndim == 1 else jnp.diagonal(message.cov)


def gaussian_input(mean: Array, cov: Array, order: int) -> CumulantMessage:
    """Message of a Gaussian N(mean, cov): higher cumulants zero.

    At ``order=1`` only the diagonal of ``cov`` is kept (independence presumption).
    """
    _check_order(order)
    mean = jnp.asarray(mean)
    cov = jnp.asarray(cov, dtype=mean.dtype)
    n = mean.shape[0]
    if order == 1:
        return CumulantMessage(mean, jnp.diagonal(cov) if cov.ndim == 2 else cov)
    if cov.ndim == 1:
        cov = jnp.diag(cov)
    if order == 2:
        return CumulantMessage(mean, cov)
    if order == 4:
        none = jnp.zeros((n, 0), mean.dtype)
        return CumulantMessage(mean, cov, None, FactoredFourth(none, none, jnp.zeros((n, n, 0), mean.dtype)))
    empty = jnp.zeros((n, 0), mean.dtype)
    third = FactoredThird(empty, empty, empty)
    fourth = RadialFourth(jnp.zeros((), mean.dtype), jnp.eye(n, dtype=mean.dtype))
    return CumulantMessage(mean, cov, third, fourth)


ORDERS = (1, 2, 3, 4)


def _check_order(order: int) -> None:
    if order not in ORDERS:
        raise NotImplementedError(
            f"cumulant order K={order!r} is not implemented; choose K in {ORDERS} "
            "(see docs/cumulant_propagation.md)"
        )


# --- slices and dense forms -------------------------------------------------------------


def third_diagonal(third: FactoredThird) -> Array:
    """``k3[i, i, i]`` (n,)."""
    return jnp.sum(third.a * third.b * third.c, axis=1)


def marginal_cumulants(message: CumulantMessage) -> Array:
    """Each unit's own cumulants ``(n, K)``: ``k1..kK`` of unit ``i`` alone (``K >= 2``).

    The diagonals ``k3[i, i, i]`` and ``k4[i, i, i, i]`` of whichever representation the
    message carries; a message of order 1 or 2 gives mean and variance.
    """
    columns = [message.mean, variance(message)]
    third, fourth = message.third, message.fourth
    if isinstance(third, FactoredThird):
        columns.append(third_diagonal(third))
    elif third is not None:
        columns.append(jnp.einsum("iii->i", third))
    elif isinstance(fourth, FactoredFourth):
        columns.append(jnp.zeros_like(message.mean))
    if isinstance(fourth, FactoredFourth):
        columns.append(jnp.einsum("ir,ir,iir->i", fourth.p, fourth.q, fourth.b))
    elif isinstance(fourth, RadialFourth):
        columns.append(fourth_diagonal(fourth))
    return jnp.stack(columns, axis=-1)


def third_pair_slice(third: FactoredThird) -> Array:
    """``k3[i, i, j]`` as an (n, n) matrix (the diagonal is ``k3[i, i, i]``)."""
    a, b, c = third
    # Sym averages the 6 leg orders; the three distinct ones put the lone index on c, b, a.
    return ((a * b) @ c.T + (a * c) @ b.T + (b * c) @ a.T) / 3.0


def fourth_diagonal(fourth: RadialFourth) -> Array:
    """``k4[i, i, i, i]`` (n,)."""
    g = jnp.diagonal(fourth.metric)
    return fourth.scale * g * g


def fourth_pair_slice(fourth: RadialFourth) -> Array:
    """``k4[i, i, j, j]`` as an (n, n) matrix."""
    g = fourth.metric
    d = jnp.diagonal(g)
    return fourth.scale * (d[:, None] * d[None, :] + 2.0 * g * g) / 3.0


def symmetrize(t: Array) -> Array:
    """Average a dense tensor over all permutations of its axes."""
    import itertools

    perms = list(itertools.permutations(range(t.ndim)))
    return sum(jnp.transpose(t, p) for p in perms) / len(perms)


def dense_third(third: FactoredThird | Array) -> Array:
    """Materialise the (n, n, n) third cumulant (tests and small n only)."""
    if not isinstance(third, FactoredThird):
        return jnp.asarray(third)
    return symmetrize(jnp.einsum("ir,jr,kr->ijk", *third))


def dense_fourth(fourth: RadialFourth | FactoredFourth) -> Array:
    """Materialise the (n, n, n, n) fourth cumulant (tests and small n only)."""
    if isinstance(fourth, FactoredFourth):
        return symmetrize(jnp.einsum("ir,jr,klr->ijkl", *fourth))
    return fourth.scale * symmetrize(jnp.einsum("ij,kl->ijkl", fourth.metric, fourth.metric))


def third_from_dense(k3: Array) -> FactoredThird:
    """Exact factored form of a dense symmetric 3-tensor (rank n: slice along the last axis)."""
    n = k3.shape[0]
    # k3[i,j,k] = sum_r k3[i,j,r] d_kr: a = k3 reshaped (n, n*n) does not fit the (n, R)
    # rank-one form directly, so expand with R = n^2 columns: a = e_i, b = e_j, c = k3[i, j, :].
    eye = jnp.eye(n, dtype=k3.dtype)
    a = jnp.repeat(eye, n, axis=1)  # column (i, j) -> e_i
    b = jnp.tile(eye, (1, n))  # column (i, j) -> e_j
    c = k3.reshape(n * n, n).T  # column (i, j) -> k3[i, j, :]
    return FactoredThird(a, b, c)
