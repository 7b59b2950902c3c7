"""The polynomial method for two-layer MLPs: exact cumulants of a Hermite surrogate of the output.

For ``y = sum_j v_j f(z_j) + b`` with ``z = x @ W + c`` and Gaussian ``x ~ N(mean, cov)``,
each pre-activation is ``z_j = m_j + s_j u_j`` with standard normal ``u_j`` and
correlations ``R = corr(z)``. Replace each activation by its degree-d Hermite truncation
in the standardised variable,

    f(m_j + s_j u) ~ p_j(u) = sum_{m <= d} c_jm h_m(u),   h_m = He_m / sqrt(m!),
    c_jm = E[f(m_j + s_j U) h_m(U)]        (the L2-best degree-d polynomial under N(0, 1)),

so the *surrogate* ``y_d = b + sum_j v_j p_j(u_j)`` is a polynomial of the Gaussian input.
Its cumulants are exact tensor contractions over hidden units (Wick/diagram expansion:
``E prod_i He_{m_i}(u_{j_i}) = prod_i m_i! * sum over multigraphs with degree m_i at
vertex i, no self-loops, of prod_edges R^e / e!``):

    k1 = b + sum_j v_j c_j0
    k2 = sum_{e>=1} A_e^T (R^e / e!) A_e                                  (Mehler)
    k3 = sum over triangles (e12, e13, e23)      of  sum_{ijk}  A A A  P P P
    k4 = sum over *connected* 4-vertex multigraphs of sum_{ijkl} A A A A  P^6

with ``A_m = v * c_m * sqrt(m!)`` (H,), ``P_e = R^{o e} / e!`` (elementwise power; H x H),
vertex degrees in ``[1, d]``. Configurations equal up to relabelling the vertices give
the same sum (every vertex runs over the same units), so each class is computed once
and weighted by its size. Cost: ``O(#classes * H^3)`` for k3, plus ``O(#groups * H^4)`` for
k4 (the fourth vertex summed once per ``(e14, e24, e34)``): H = 64, d = 6 takes seconds.

What is exact and what is not: the four cumulants are exact *for the surrogate*
(checked in the tests against closed forms for polynomial activations, where the
surrogate is the network itself once ``d >=`` the activation's degree). The surrogate's
error is the Hermite truncation of f: ``sum_{m>d} c_jm^2`` per unit (returned as
``truncation_variance``). Tails from four cumulants go through
:func:`~ppl_mech.tails.saddlepoint_tail_from_cumulants` (polynomial CGF: see its
validity notes); for ``d = 2`` the surrogate is a quadratic form and
:func:`mlp_quadratic_form` gives its *exact* CGF instead.

Measured caveat (trained tanh MLP, ``examples/trained_mlp_tails.py``): the Hermite
truncation converges in L2 but *not* in L4 when pre-activations are wide (std ~ 2): its
fourth moment is dominated by rare large ``|u|`` where ``p_d`` grows like ``u^d``, so the
surrogate's k4 grows with d (0.55, 1.7, 2.3 at d = 5, 7, 9 against -0.10 by sampling)
while k1..k3 converge (k2 0.788, k3 0.220 vs 0.788, 0.215). Use k1..k3 (or small d) for
tails of such networks; the mean is exact at any d.

Hermite coefficients: ReLU in closed form (Stein: ``c_m = s^m E[f^(m)(z)] / sqrt(m!)`` with
:func:`ppl_mech.cumulants._wick.relu_wick`); any other activation by Gauss–Hermite
(:func:`ppl_mech.rules.mehler.hermite_coefficients`, exact for polynomials).
Everything is pure JAX: jit-able (``degree`` static) and differentiable in the weights.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..cumulants._wick import ACTIVATIONS, relu_wick
from ..rules.gauss_hermite import gauss_hermite_moments
from ..rules.mehler import hermite_coefficients
from ._exact_cgfs import eigen_quadratic_cgf, gaussian_input
from ._saddlepoint import CGF

__all__ = [
    "MLPSurrogate",
    "evaluate_surrogate",
    "mlp_polynomial_surrogate",
    "mlp_quadratic_form",
    "surrogate_cumulants",
]


class MLPSurrogate(NamedTuple):
    """Degree-d Hermite surrogate of a two-layer MLP's scalar output (module docstring)."""

    coefficients: jax.Array  # (H, d+1): c_jm, orthonormal Hermite, in the standardised z_j
    pre_mean: jax.Array  # (H,) m_j
    pre_std: jax.Array  # (H,) s_j
    correlation: jax.Array  # (H, H) corr(z)
    directions: jax.Array  # (n, H): omega_j = F^T w_j / s_j, u_j = omega_j . xi with x = mean + F xi
    readout: jax.Array  # (H,) v
    bias: jax.Array  # () b
    weights: jax.Array  # (n, H) first-layer weights (to evaluate the surrogate on samples)
    first_bias: jax.Array  # (H,)
    truncation_variance: jax.Array  # (H,) Var f(z_j) - sum_{1<=m<=d} c_jm^2 (the dropped part)


def _hermite_table(u, order):
    rows = [jnp.ones_like(u), u]
    for k in range(1, order):
        rows.append((u * rows[k] - math.sqrt(k) * rows[k - 1]) / math.sqrt(k + 1))
    return jnp.stack(rows[: order + 1], axis=-1)


def _activation(activation):
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            known = sorted(ACTIVATIONS)
            raise ValueError(f"unknown activation {activation!r}; known: {known} (or pass a callable)")
        return activation, ACTIVATIONS[activation]
    if not callable(activation):
        raise TypeError(f"activation must be a name or a callable; got {type(activation).__name__}")
    return getattr(activation, "__name__", "callable"), activation


def mlp_polynomial_surrogate(
    w1,
    b1,
    w2,
    b2,
    activation: str | Callable[[jax.Array], jax.Array],
    input_mean=None,
    input_cov=None,
    *,
    degree: int = 6,
    quadrature_degree: int = 128,
) -> MLPSurrogate:
    """Build the degree-``degree`` surrogate of ``y = f(x @ w1 + b1) @ w2 + b2``, ``x ~ N(mean, cov)``.

    ``w1`` (n, H), ``b1`` (H,) or None, ``w2`` (H,) (or (H, 1)), ``b2`` scalar; input
    defaults ``N(0, I_n)``. ``activation``: a name in ``ppl_mech.cumulants._wick.ACTIVATIONS``
    (``"tanh"``, ``"relu"``, ``"square"``, ...) or a callable.
    """
    degree = int(degree)
    if degree < 1:
        raise ValueError(f"degree must be >= 1; got {degree}")
    name, fn = _activation(activation)
    w1 = jnp.asarray(w1)
    if w1.ndim != 2:
        raise ValueError(f"w1 must be (n_in, hidden); got shape {w1.shape}")
    n, H = w1.shape
    dtype = jnp.result_type(w1, float)
    w1 = w1.astype(dtype)
    b1 = jnp.zeros(H, dtype) if b1 is None else jnp.asarray(b1, dtype)
    w2 = jnp.asarray(w2, dtype)
    if w2.shape == (H, 1):
        w2 = w2[:, 0]
    if b1.shape != (H,):
        raise ValueError(f"b1 must have shape ({H},) to match w1; got {b1.shape}")
    if w2.shape != (H,):
        raise ValueError(f"w2 must have shape ({H},) (a scalar readout) to match w1; got {w2.shape}")
    b2 = jnp.asarray(0.0 if b2 is None else b2, dtype).reshape(())
    mean, F = gaussian_input(input_mean, input_cov, n, dtype, names=("input_mean", "input_cov"),
                             against="w1")

    return _build(w1, b1, w2, b2, mean, F, name, fn, degree, quadrature_degree)


@partial(jax.jit, static_argnums=(6, 7, 8, 9))
def _build(w1, b1, w2, b2, mean, F, name, fn, degree, quadrature_degree):
    m = mean @ w1 + b1
    proj = F.T @ w1  # (n, H)
    var = jnp.sum(proj * proj, axis=0)
    pos = var > 0
    s = jnp.where(pos, jnp.sqrt(jnp.where(pos, var, 1.0)), 0.0)
    omega = proj / jnp.where(pos, s, 1.0)[None, :]
    R = omega.T @ omega
    R = jnp.where(pos[:, None] & pos[None, :], R, 0.0)

    if name == "relu":
        # Stein: E[f(m + s U) He_k(U)] = s^k E[f^(k)(z)]; closed forms for relu
        coefs = [s**k * relu_wick(m, var, k, 1) / math.sqrt(math.factorial(k)) for k in range(degree + 1)]
        c = jnp.stack(coefs, axis=-1)
        ef2 = relu_wick(m, var, 0, 2)
    else:
        c = hermite_coefficients(fn, m, var, order=degree, degree=quadrature_degree)
        mean_f, var_f = gauss_hermite_moments(fn, m, var, degree=quadrature_degree)
        ef2 = var_f + mean_f**2
    c = jnp.where(pos[:, None], c, jnp.zeros_like(c).at[:, 0].set(fn(m)))
    trunc = jnp.maximum(ef2 - jnp.sum(c * c, axis=-1), 0.0)
    trunc = jnp.where(pos, trunc, 0.0)
    return MLPSurrogate(c, m, s, R, omega, w2, b2, w1, b1, trunc)


def evaluate_surrogate(surrogate: MLPSurrogate, x) -> jax.Array:
    """The surrogate output ``y_d(x)`` for inputs ``x`` (..., n) (compare with the network)."""
    x = jnp.asarray(x, surrogate.weights.dtype)
    z = x @ surrogate.weights + surrogate.first_bias
    s = surrogate.pre_std
    u = (z - surrogate.pre_mean) / jnp.where(s > 0, s, 1.0)
    d = surrogate.coefficients.shape[-1] - 1
    h = _hermite_table(u, d)  # (..., H, d+1)
    return jnp.einsum("...hm,hm,h->...", h, surrogate.coefficients, surrogate.readout) + surrogate.bias


# --------------------------------------------------------------------------- diagrams

_EDGES4 = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _canonical(edges, k):
    """Lexicographically smallest relabelling of a multigraph on k vertices (edge dict)."""
    best = None
    for perm in itertools.permutations(range(k)):
        key = tuple(
            edges.get(tuple(sorted((perm[a], perm[b]))), 0) for a, b in itertools.combinations(range(k), 2)
        )
        if best is None or key < best:
            best = key
    return best


@cache
def _triangle_classes(d: int):
    """Classes of (e12, e13, e23) with vertex degrees in [1, d]: (rep rows, class sizes)."""
    counts: dict = {}
    for e in itertools.product(range(d + 1), repeat=3):
        m = (e[0] + e[1], e[0] + e[2], e[1] + e[2])
        if not all(1 <= x <= d for x in m):
            continue
        key = _canonical({(0, 1): e[0], (0, 2): e[1], (1, 2): e[2]}, 3)
        counts[key] = counts.get(key, 0) + 1
    reps = np.array(sorted(counts), np.int32).reshape(-1, 3)
    sizes = np.array([counts[tuple(r)] for r in reps], np.float64)
    return reps, sizes


def _connected(e):
    parent = list(range(4))

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for (a, b), v in zip(_EDGES4, e, strict=True):
        if v:
            parent[find(a)] = find(b)
    return len({find(i) for i in range(4)}) == 1


@cache
def _quad_classes(d: int):
    """Connected 4-vertex multigraphs with degrees in [1, d], up to relabelling.

    Returns (groups (G, 3) of (e14, e24, e34), per-group padded rows (G, M, 3) of
    (e12, e13, e23), per-row weights (G, M) = class sizes, 0 for padding).
    """
    counts: dict = {}
    for e in itertools.product(range(d + 1), repeat=6):
        e12, e13, e14, e23, e24, e34 = e
        m = (e12 + e13 + e14, e12 + e23 + e24, e13 + e23 + e34, e14 + e24 + e34)
        if not all(1 <= x <= d for x in m) or not _connected(e):
            continue
        key = _canonical(dict(zip(_EDGES4, e, strict=True)), 4)
        counts[key] = counts.get(key, 0) + 1
    by_group: dict = {}
    for key, size in counts.items():
        e12, e13, e14, e23, e24, e34 = key
        by_group.setdefault((e14, e24, e34), []).append(((e12, e13, e23), size))
    groups = sorted(by_group)
    width = max(len(v) for v in by_group.values())
    rows = np.zeros((len(groups), width, 3), np.int32)
    weights = np.zeros((len(groups), width), np.float64)
    for g, key in enumerate(groups):
        for r, (row, size) in enumerate(by_group[key]):
            rows[g, r] = row
            weights[g, r] = size
    return np.array(groups, np.int32), rows, weights


def surrogate_cumulants(surrogate: MLPSurrogate, order: int = 4) -> jax.Array:
    """Exact cumulants ``(k1, ..., k_order)`` (order 2..4) of the surrogate output (module docstring)."""
    if order not in (2, 3, 4):
        raise ValueError(f"order must be 2, 3 or 4; got {order}")
    if not isinstance(surrogate, MLPSurrogate):
        kind = type(surrogate).__name__
        raise TypeError(f"surrogate must be an MLPSurrogate (from mlp_polynomial_surrogate); got {kind}")
    return _cumulants(surrogate, order)


@partial(jax.jit, static_argnums=1)
def _cumulants(surrogate: MLPSurrogate, order: int) -> jax.Array:
    c = surrogate.coefficients
    d = c.shape[-1] - 1
    dtype = c.dtype
    v = surrogate.readout
    R = surrogate.correlation
    sqrt_fact = jnp.asarray([math.sqrt(math.factorial(m)) for m in range(d + 1)], dtype)
    A = (v[:, None] * c * sqrt_fact).T  # (d+1, H); A[0] unused (vertex degrees >= 1)
    A = A.at[0].set(0.0)
    inv_fact = jnp.asarray([1.0 / math.factorial(e) for e in range(d + 1)], dtype)
    P = jnp.stack([R**e for e in range(d + 1)]) * inv_fact[:, None, None]  # (d+1, H, H)

    k1 = surrogate.bias + v @ c[:, 0]
    k2 = jnp.einsum("eh,ehg,eg->", A[1:], P[1:], A[1:])
    out = [k1, k2]
    if order >= 3:
        reps, sizes = _triangle_classes(d)
        reps = jnp.asarray(reps)
        sizes = jnp.asarray(sizes, dtype)

        def tri(acc, xs):
            (e12, e13, e23), w = xs
            a1, a2, a3 = A[e12 + e13], A[e12 + e23], A[e13 + e23]
            M = (P[e13] * a3[None, :]) @ P[e23].T  # M_ij = sum_k P13_ik a3_k P23_jk
            return acc + w * jnp.sum(a1[:, None] * a2[None, :] * P[e12] * M), None

        k3, _ = lax.scan(tri, jnp.zeros((), dtype), ((reps[:, 0], reps[:, 1], reps[:, 2]), sizes))
        out.append(k3)
    if order >= 4:
        groups, rows, weights = _quad_classes(d)
        groups = jnp.asarray(groups)
        rows = jnp.asarray(rows)
        weights = jnp.asarray(weights, dtype)

        def quad_group(acc, xs):
            (e14, e24, e34), row_block, w_block = xs
            a4 = A[e14 + e24 + e34]
            Y = jnp.einsum("il,jl,kl->ijk", P[e14] * a4[None, :], P[e24], P[e34])

            def one(acc2, ys):
                (e12, e13, e23), w = ys
                a1 = A[e12 + e13 + e14]
                a2 = A[e12 + e23 + e24]
                a3 = A[e13 + e23 + e34]
                T = jnp.einsum("ik,jk,ijk->ij", P[e13] * a3[None, :], P[e23], Y)
                return acc2 + w * jnp.sum(a1[:, None] * a2[None, :] * P[e12] * T), None

            tot, _ = lax.scan(one, jnp.zeros((), dtype),
                              ((row_block[:, 0], row_block[:, 1], row_block[:, 2]), w_block))
            return acc + tot, None

        k4, _ = lax.scan(quad_group, jnp.zeros((), dtype),
                         ((groups[:, 0], groups[:, 1], groups[:, 2]), rows, weights))
        out.append(k4)
    return jnp.stack(out)


def mlp_quadratic_form(surrogate: MLPSurrogate) -> CGF:
    """Exact CGF of the surrogate truncated at degree 2 (a quadratic form of the whitened input).

    With ``u_j = omega_j . xi`` (xi standard normal): ``y_2 = b + sum_j v_j [c_j0 + c_j1 u_j
    + c_j2 (u_j^2 - 1)/sqrt(2)]`` = ``xi^T M xi + beta . xi + const``; uses the first three
    coefficients of ``surrogate`` whatever its degree.
    """
    c = surrogate.coefficients
    if c.shape[-1] < 3:
        raise ValueError("the surrogate must have degree >= 2 for its quadratic part")
    v = surrogate.readout
    om = surrogate.directions
    q = v * c[:, 2] / math.sqrt(2.0)
    M = (om * q[None, :]) @ om.T
    beta = om @ (v * c[:, 1])
    const = surrogate.bias + v @ c[:, 0] - jnp.sum(q)
    lam, Q = jnp.linalg.eigh(0.5 * (M + M.T))
    return eigen_quadratic_cgf(lam, Q.T @ beta, const)
