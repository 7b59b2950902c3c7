"""Quadratic Logit Decomposition (QLD): extrapolate a rare event from n samples to ~1/n^2.

After ARC, "Estimating the probabilities of rare outputs in language models" (2024;
code: alignment-research-center/low-probability-estimation, ``lpe/methods.py::QLD``).
Let ``h`` be the activation vector the detector reads (there: the residual stream
before the unembedding). Whiten the samples, ``h = mean + L u``; pick a unit direction
``d`` and split every whitened sample ``u = a d + b`` with ``a = u.d`` and ``b`` orthogonal
to ``d``. Presume ``a`` and ``b`` independent (exact for Gaussian ``h``: uncorrelated
jointly Gaussian parts) and pair every ``b_i`` with every ``a_j``:

    P ~ (1/n^2) sum_{i,j} 1[ detector fires at mean + L (a_j d + b_i) ]

— n^2 synthetic samples from n model evaluations, hence probabilities down to ~1/n^2.

In ppl_mech (margins instead of logits):

* :func:`qld_polytope` — the detector is a conjunction of *linear* margins of h,
  ``all(A h + c > 0)`` (a halfspace ``w.h + c > t``, an argmax ``target`` over a linear
  readout via :func:`argmax_constraints`, ...). For fixed ``b_i`` the accepted ``a`` form
  an interval, so the double sum costs one sort and two binary searches per sample (ARC's
  trick), O(n r + n log n) for r constraints.
* :func:`qld` — any scalar ``margin_fn(h) > threshold``; the double sum is evaluated
  literally (n^2 margin evaluations, in chunks): use n <= ~4096.

The direction: ARC's "shortest accepting vector", the point of the (whitened) event
closest to the mean; :func:`qld_polytope` computes it exactly as the projection of 0 on
the polytope (Dykstra's alternating projections) — if the mean itself is accepted (the
event is not rare) it falls back to the normal of the tightest constraint. :func:`qld`
takes the whitened gradient of the margin at the mean. A single linear margin depends on
``a`` alone, so QLD then reduces to the empirical tail of ``a`` (no gain over sampling):
it helps only when the event depends on several directions.

``stderr`` is the two-sample U-statistic approximation
``sqrt(Var_i(g1)/n + Var_j(g2)/n)`` with ``g1_i = mean_j K(i, j)``, ``g2_j = mean_i K(i, j)``
(sampling noise only; the independence presumption's bias is not included). Whitening
uses the sample covariance plus ``ridge`` times its mean variance. Everything is
``jit``-able; the estimate is piecewise constant in the inputs, so its gradient is 0.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

from ._result import ExtrapolatedTail

__all__ = ["argmax_constraints", "qld", "qld_polytope"]


def _whiten(samples, ridge):
    x = jnp.asarray(samples)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"samples must be (n, dim) with n >= 2 activation samples; got shape {x.shape}")
    dtype = jnp.result_type(x, float)
    x = x.astype(dtype)
    n, m = x.shape
    mean = jnp.mean(x, axis=0)
    xc = x - mean
    cov = xc.T @ xc / n
    jitter = ridge * jnp.maximum(jnp.mean(jnp.diagonal(cov)), jnp.finfo(dtype).tiny)
    L = jnp.linalg.cholesky(cov + jitter * jnp.eye(m, dtype=dtype))
    u = solve_triangular(L, xc.T, lower=True).T
    return mean, L, u


def argmax_constraints(W, bias, target: int) -> tuple[jax.Array, jax.Array]:
    """``(A, c)`` with ``all(A h + c > 0)`` iff ``argmax(h @ W + bias) == target`` (W: (dim, classes))."""
    W = jnp.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"W must be (dim, classes); got shape {W.shape}")
    v = W.shape[1]
    if not 0 <= int(target) < v:
        raise ValueError(f"target must be in [0, {v}); got {target}")
    bias = jnp.zeros(v, W.dtype) if bias is None else jnp.asarray(bias)
    others = [j for j in range(v) if j != int(target)]
    A = (W[:, target][:, None] - W[:, others]).T
    c = bias[target] - bias[jnp.asarray(others)]
    return A, c


def _min_norm_point(P, q, iters):
    """Projection of 0 on {u: P u + q >= 0} by Dykstra's alternating projections."""
    norms2 = jnp.sum(P * P, axis=1)
    safe = jnp.where(norms2 > 0, norms2, 1.0)

    def sweep(carry, _):
        def one(c, row):
            x, y = c
            p, qq, nn, k = row
            z = x + y[k]
            viol = p @ z + qq
            x_new = jnp.where(viol < 0, z - viol / nn * p, z)
            return (x_new, y.at[k].set(z - x_new)), None

        (x, y), _ = lax.scan(one, carry, (P, q, safe, jnp.arange(P.shape[0])))
        return (x, y), None

    x0 = jnp.zeros(P.shape[1], P.dtype)
    y0 = jnp.zeros_like(P)
    (x, _), _ = lax.scan(sweep, (x0, y0), None, length=iters)
    return x


def _unit_direction(direction, dim: int, dtype) -> jax.Array:
    """The user's whitened ``direction``, checked for shape and normalised."""
    d = jnp.asarray(direction, dtype)
    if d.shape != (dim,):
        raise ValueError(f"direction must have shape ({dim},); got {d.shape}")
    return d / jnp.linalg.norm(d)


def _counts_and_stderr(lower, upper, a):
    n = a.shape[0]
    dtype = a.dtype
    empty = ~(lower < upper)
    lower = jnp.where(empty, jnp.inf, lower)
    upper = jnp.where(empty, jnp.inf, upper)
    a_sorted = jnp.sort(a)
    count = jnp.searchsorted(a_sorted, upper, side="left") - jnp.searchsorted(a_sorted, lower, side="right")
    g1 = jnp.maximum(count, 0).astype(dtype) / n
    below = jnp.searchsorted(jnp.sort(lower), a, side="left")  # #{i: lower_i < a_j}
    inside = below - jnp.searchsorted(jnp.sort(upper), a, side="right")  # minus #{i: upper_i <= a_j}
    g2 = inside.astype(dtype) / n
    p = jnp.mean(g1)
    stderr = jnp.sqrt(jnp.var(g1) / n + jnp.var(g2) / n)
    return p, stderr


def _result(p, stderr):
    log_p = jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf)
    return ExtrapolatedTail(p, log_p, stderr, "qld")


def qld_polytope(
    samples,
    A,
    c,
    *,
    direction=None,
    ridge: float = 1e-5,
    projection_sweeps: int = 200,
) -> ExtrapolatedTail:
    """QLD estimate of ``P(all(A h + c > 0))`` from activation ``samples`` (n, dim).

    ``A`` (r, dim), ``c`` (r,). ``direction``: a whitened-space direction (dim,) to split
    along, or ``None`` for the shortest accepting vector (module docstring).
    """
    mean, L, u = _whiten(samples, ridge)
    dtype = u.dtype
    dim = u.shape[1]
    A = jnp.asarray(A, dtype)
    c = jnp.asarray(c, dtype)
    if A.ndim != 2 or A.shape[1] != dim:
        raise ValueError(f"A must be (constraints, {dim}) to match the samples; got shape {A.shape}")
    if c.shape != (A.shape[0],):
        raise ValueError(f"c must have shape ({A.shape[0]},) to match A; got {c.shape}")
    P = A @ L
    q = A @ mean + c
    if direction is None:
        x = _min_norm_point(P, q, projection_sweeps)
        norm_x = jnp.linalg.norm(x)
        row_norm = jnp.linalg.norm(P, axis=1)
        tight = jnp.argmin(q / jnp.where(row_norm > 0, row_norm, jnp.inf))
        fallback = P[tight] / jnp.where(row_norm[tight] > 0, row_norm[tight], 1.0)
        d = jnp.where(norm_x > 1e-8, x / jnp.where(norm_x > 0, norm_x, 1.0), fallback)
    else:
        d = _unit_direction(direction, dim, dtype)
    a = u @ d
    den = P @ d  # (r,)
    num = u @ P.T + q - a[:, None] * den[None, :]  # P b_i + q, (n, r)
    pos = den > 0
    neg = den < 0
    ratio = -num / jnp.where(pos | neg, den, 1.0)
    lower = jnp.max(jnp.where(pos, ratio, -jnp.inf), axis=1)
    upper = jnp.min(jnp.where(neg, ratio, jnp.inf), axis=1)
    blocked = jnp.any(~(pos | neg) & (num <= 0), axis=1)
    upper = jnp.where(blocked, lower, upper)
    p, stderr = _counts_and_stderr(lower, upper, a)
    return _result(p, stderr)


def qld(
    samples,
    margin_fn: Callable[[jax.Array], jax.Array],
    threshold=0.0,
    *,
    direction=None,
    ridge: float = 1e-5,
    chunk: int = 256,
) -> ExtrapolatedTail:
    """QLD estimate of ``P(margin_fn(h) > threshold)`` by the literal n^2 double sum.

    ``margin_fn`` maps one activation vector (dim,) to a scalar. ``direction``: whitened
    direction, or ``None`` for the whitened gradient of the margin at the sample mean.
    """
    mean, L, u = _whiten(samples, ridge)
    n, dim = u.shape
    dtype = u.dtype
    thr = jnp.asarray(threshold, dtype)
    if direction is None:
        g = L.T @ jax.grad(lambda h: jnp.asarray(margin_fn(h), dtype))(mean)
        d = g / jnp.linalg.norm(g)
    else:
        d = _unit_direction(direction, dim, dtype)
    a = u @ d
    b = u - a[:, None] * d[None, :]

    def fires(bi, aj):
        return margin_fn(mean + L @ (bi + aj * d)) > thr

    def row(bi):
        return jax.vmap(lambda aj: fires(bi, aj))(a).astype(dtype)  # (n,) over j

    pad = (-n) % chunk
    bp = jnp.concatenate([b, jnp.zeros((pad, dim), dtype)]) if pad else b
    real = (jnp.arange(n + pad) < n).astype(dtype).reshape(-1, chunk)

    def block(col_sum, xs):  # K(i, j) is never stored: row means out, column sums carried
        blk, keep = xs
        K = jax.vmap(row)(blk) * keep[:, None]
        return col_sum + jnp.sum(K, axis=0), jnp.mean(K, axis=1)

    col_sum, g1 = lax.scan(block, jnp.zeros(n, dtype), (bp.reshape(-1, chunk, dim), real))
    g1 = g1.reshape(-1)[:n]
    g2 = col_sum / n
    p = jnp.mean(g1)
    stderr = jnp.sqrt(jnp.var(g1) / n + jnp.var(g2) / n)
    return _result(p, stderr)
