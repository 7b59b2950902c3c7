"""Nonlinear step ``x_i = f(z_i)``: Wick/Edgeworth expansion around the matched Gaussian.

The density of z is written as ``exp(sum_d (-1)^d/d! k'_d . d^d) G`` where G is the
*product* Gaussian with the exact means and variances of z, ``k'_2`` is the off-diagonal
covariance and ``k'_d = k_d`` for d >= 3. A joint (power) cumulant of the x's is then a
sum over connected diagrams: each block is one input cumulant entry with its legs on
units, and each unit i touched by k legs contributes ``c_i(k, p) = E_G[d^k f(z_i)^p]``.

Power counting (ARC, eq. (14)): in a wide random network a block with leg-count vector v
has entries of size n^(-cost(v)/2), ``cost(v) = |v| - 1 - [all v even]``: an off-diagonal
covariance costs 1; every third-cumulant slice and the (4) and (2, 2) slices of the
fourth cost 2. Order K keeps the diagrams with ``sum cost <= K - 1``. Cumulants with
repeated indices follow from the power cumulants (e.g. ``k(x_i, x_i, x_j) =
k(x_i^2, x_j) - 2 E[x_i] k(x_i, x_j)``), computed with the same diagram set so the
conversion is exact order by order.

Beyond the paper: at K >= 2 the two-unit Gaussian part of the covariance is resummed to
all orders (the exact bivariate-Gaussian covariance), so K = 2 is exact moment matching
of a Gaussian input.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax import Array

from ._bivariate import gaussian_covariance
from ._fourth import fourth_order_step
from ._message import (
    CumulantMessage,
    FactoredFourth,
    FactoredThird,
    RadialFourth,
    _check_order,
    fourth_diagonal,
    fourth_pair_slice,
    third_diagonal,
    third_pair_slice,
    variance,
)
from ._wick import Activation

_MAX_LEGS = 5
"""Most legs on one unit in a diagram of cost <= 3 (e.g. k4[iiii] plus an edge)."""


def elementwise(
    message: CumulantMessage,
    activation: str | Callable[[Array], Array] | Activation,
    order: int,
    *,
    mehler_degree: int = 16,
) -> CumulantMessage:
    """Cumulants of ``f(z)`` (f elementwise) kept to order ``order`` (K = 1, 2, 3, 4).

    ``activation``: "relu" (closed forms), "gelu", "tanh", "sigmoid", "erf", "square",
    "cube", "identity", or any scalar callable (Gauss–Hermite quadrature; at K >= 2 the
    covariance uses Mehler's series to ``mehler_degree``).
    """
    _check_order(order)
    act = activation if isinstance(activation, Activation) else Activation(activation)
    mean = message.mean
    var = variance(message)

    cache: dict[tuple[int, int], Array] = {}

    def c(k: int, p: int) -> Array:
        if (k, p) not in cache:
            if order >= 3 and not cache:  # every coefficient the step needs, in one go
                cache.update(act.wick_table(mean, var, _MAX_LEGS, 4))
            if (k, p) not in cache:
                cache[(k, p)] = act.wick(mean, var, k, p)
        return cache[(k, p)]

    if order == 1:
        m1 = c(0, 1)
        return CumulantMessage(m1, c(0, 2) - m1 * m1)

    cov_in = message.cov if message.cov.ndim == 2 else jnp.diag(message.cov)
    gauss_cov = gaussian_covariance(act, mean, cov_in, mehler_degree)
    if order == 2:
        return CumulantMessage(c(0, 1), gauss_cov)
    if order == 4:
        if not isinstance(message.fourth, FactoredFourth):
            message = _as_fourth_order(message)
        return fourth_order_step(message, cov_in, gauss_cov, c)
    return _third_order_step(message, cov_in, gauss_cov, c)


def _as_fourth_order(message: CumulantMessage) -> CumulantMessage:
    """A K <= 2 message (no higher cumulants) in the K = 4 representation."""
    if message.third is not None or message.fourth is not None:
        raise ValueError("order 4 needs a K = 4 message (dense k3, FactoredFourth) or a Gaussian one")
    n, dtype = message.mean.shape[0], message.mean.dtype
    none = jnp.zeros((n, 0), dtype)
    return message._replace(fourth=FactoredFourth(none, none, jnp.zeros((n, n, 0), dtype)))


def _third_order_step(
    message: CumulantMessage,
    cov_in: Array,
    gauss_cov: Array,
    c: Callable[[int, int], Array],
) -> CumulantMessage:
    """K = 3: diagrams of total cost <= 2 (see module docstring)."""
    n = message.mean.shape[0]
    dtype = message.mean.dtype
    eye = jnp.eye(n, dtype=dtype)
    off = 1.0 - eye

    third = message.third
    if third is None:
        empty = jnp.zeros((n, 0), dtype)
        third = FactoredThird(empty, empty, empty)
    fourth = message.fourth
    if fourth is None:
        fourth = RadialFourth(jnp.zeros((), dtype), eye)

    # Input blocks: k3[iii] and k4[iiii] (cost 2, single unit); the off-diagonal
    # covariance (cost 1), k3[iij] and k4[iijj] (cost 2) on unit pairs.
    t3 = third_diagonal(third)
    q4 = fourth_diagonal(fourth)
    sig = cov_in * off
    s21 = third_pair_slice(third) * off  # s21[i, j] = k3[i, i, j]
    q22 = fourth_pair_slice(fourth) * off

    # One-unit power moments E[x_i^p] with the single-unit Edgeworth corrections.
    m = {p: c(0, p) + t3 * c(3, p) / 6.0 + q4 * c(4, p) / 24.0 for p in range(1, 5)}
    m1, m2, m3, m4 = m[1], m[2], m[3], m[4]
    var = m2 - m1 * m1
    k3_diag = m3 - 3.0 * m2 * m1 + 2.0 * m1**3
    k4_diag = m4 - 4.0 * m3 * m1 - 3.0 * m2 * m2 + 12.0 * m2 * m1 * m1 - 6.0 * m1**4

    def outer(u: Array, v: Array) -> Array:
        return u[:, None] * v[None, :]

    def non_gaussian_pair(p: int, q: int) -> Array:
        # k3[iij] enters 3 ways out of 3!: 1/2; k4[iijj] 6 ways out of 4!: 1/4.
        return (
            0.5 * s21 * outer(c(2, p), c(1, q))
            + 0.5 * s21.T * outer(c(1, p), c(2, q))
            + 0.25 * q22 * outer(c(2, p), c(2, q))
        )

    def pair(p: int, q: int) -> Array:
        # Joint cumulant k(x_i^p, x_j^q), i != j: one edge, a double edge (1/2!), and
        # the non-Gaussian blocks above. Zero on the diagonal.
        gauss = sig * outer(c(1, p), c(1, q)) + 0.5 * sig * sig * outer(c(2, p), c(2, q))
        return gauss + non_gaussian_pair(p, q)

    # Covariance: resummed Gaussian part plus the non-Gaussian two-unit blocks.
    cov = gauss_cov * off + non_gaussian_pair(1, 1) + jnp.diag(var)

    # Third cumulant, repeated indices: k(x_i, x_i, x_j) = k(x_i^2, x_j) - 2 E[x_i] k(x_i, x_j).
    p11 = pair(1, 1)
    k21 = pair(2, 1) - 2.0 * m1[:, None] * p11

    # Third cumulant, distinct indices, in factored form:
    #  (a) the input k3 with c(1,1) on each leg; (b) two-edge paths i - j - k with
    #  c(1,1) c(2,1) c(1,1): factors (c1 sig, 3 diag(c2), c1 sig) -- Sym averages the
    #  three choices of middle unit, the 3 turns that average into their sum;
    #  (c) a rank-n correction supported on repeated indices that replaces whatever
    #  (a) and (b) put there by the exact slices k21 and k3_diag.
    c1, c2 = c(1, 1), c(2, 1)
    scaled = FactoredThird(*(c1[:, None] * f for f in third))
    path_a = c1[:, None] * sig
    path = FactoredThird(path_a, jnp.diag(3.0 * c2), path_a)
    # Repeated-index slices of (a) + (b): from (a) c1^2 c1 k3[iij]; from (b) only the
    # path i - j - i (middle j) survives: c1_i^2 c2_j sig_ij^2.
    have_diag = c1**3 * t3
    have_21 = outer(c1 * c1, c1) * s21 + outer(c1 * c1, c2) * sig * sig
    delta_21 = (k21 - have_21) * off
    delta_diag = k3_diag - have_diag
    # Sym(A (x) I (x) I)[x, x, y] = A[y, x] / 3 and [x, x, x] = A[x, x].
    correction = FactoredThird(jnp.diag(delta_diag) + 3.0 * delta_21.T, eye, eye)
    third_out = FactoredThird(
        *(jnp.concatenate(parts, axis=1) for parts in zip(scaled, path, correction, strict=True))
    )

    # Fourth cumulant: only its pure-trace part is kept, scale * Sym(I (x) I), the
    # orthogonal projection fixed by the double trace sum_ij k4[i, i, j, j].
    # k(X, X, Y, Y) = k(X^2, Y^2) - 2 k(X, X, Y) E[Y] - 2 k(X, Y, Y) E[X]
    #                 - 2 k(X, Y)^2 - 4 k(X, Y) E[X] E[Y].
    k22 = (
        pair(2, 2)
        - 2.0 * k21 * m1[None, :]
        - 2.0 * k21.T * m1[:, None]
        - 2.0 * p11 * p11
        - 4.0 * p11 * outer(m1, m1)
    ) * off
    double_trace = jnp.sum(k4_diag) + jnp.sum(k22)
    scale = 3.0 * double_trace / (n * (n + 2.0))
    fourth_out = RadialFourth(scale, eye)
    return CumulantMessage(m1, cov, third_out, fourth_out)
