"""Thresholds of non-monotone elementwise chains: ``{f(z) > t}`` as intervals of the Gaussian ``z``.

``abs(y) > t``, ``y**2 > t``, ``cosh(y) > t`` or a band ``-(y - c)**2 > -w`` are
not halfspaces of the chain's output, and its moment-matched Gaussian has the
wrong tails (``abs(y) > 5`` for ``y ~ N(0, 1.25)`` came out 2e4 times too
low). Per unit they are unions of intervals of the chain's Gaussian input
``z``: this module finds them under ``jit``, on a grid of ``GRID`` points over
``mean +- 12 sd`` refined by bisection at each sign change, and returns up
to ``SLOTS`` intervals per unit, whose probabilities are then exact normal
interval probabilities (and, under the ``gaussian`` family, polytopes with
every other event). An interval that reaches the grid's end extends to ``mean
+- 40 sd`` (the rest of the line, to float precision). Beyond ``+-12 sd`` the
event has probability below 1e-32 and is ignored; intervals narrower than the
grid step (``24 sd / GRID``) can be missed. A unit with more than ``SLOTS``
intervals (``cos(3 y) > 0.9``) keeps its ``SLOTS`` most probable ones (by the
grid's normal density) and the count of dropped intervals is reported.

Gradients: a crossing ``c`` solves ``f(c) = t`` and does not depend on ``z``'s
mean or variance, but bisection between grid points (which move with them)
would say it does, and give every threshold probability a zero gradient.
:func:`implicit_crossing` cuts that path and differentiates ``c`` by the
implicit function theorem, ``dc = -(df(c) - dt) / f'(c)``, so gradients reach
the base's moments, the threshold and any parameter inside ``f``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

GRID = 1025
GRID_HALF_WIDTH = 12.0  # standard deviations
OPEN_END = 40.0  # standard deviations: an interval that reaches the grid's end
SLOTS = 3
HALVINGS = 40


def level_set_intervals(fn: Callable, threshold, sign: int, mean, variance, *, strict: bool = True):
    """``(lower, upper, dropped)``: ``{sign * (f(z) - t) > 0}`` (``>= 0`` unless ``strict``) per unit.

    ``lower``/``upper`` have shape ``(SLOTS,) + mean.shape``; an unused slot is the empty
    interval ``(c, c)``. A unit with more intervals keeps the ``SLOTS`` of largest
    probability. ``dropped`` is the largest number of intervals any unit had beyond ``SLOTS``
    (0 when every unit is represented exactly).
    """
    shape = mean.shape
    sd = jnp.sqrt(jnp.maximum(variance, 0.0)) + 1e-30
    u = jnp.linspace(-GRID_HALF_WIDTH, GRID_HALF_WIDTH, GRID, dtype=mean.dtype)
    z = mean[None] + sd[None] * u.reshape((-1,) + (1,) * mean.ndim)

    def inside(points):
        margin = sign * (fn(points) - threshold)
        return margin > 0 if strict else margin >= 0  # ``>=`` matters where f saturates (clip)

    grid_inside = jnp.reshape(jax.vmap(inside)(z), (GRID, -1)).T  # (units, GRID)
    grid_u = jnp.broadcast_to(u, grid_inside.shape)
    g_start, g_end, present, count = jax.vmap(_largest_intervals)(grid_inside, grid_u)
    z_flat = jnp.reshape(z, (GRID, -1)).T  # (units, GRID)

    def at(index):
        return jnp.take_along_axis(z_flat, jnp.clip(index, 0, GRID - 1), axis=1)  # (units, SLOTS)

    def per_slot(g):  # a function on the unit shape -> one on (units, SLOTS), slot by slot
        return lambda points: jnp.stack([jnp.reshape(g(jnp.reshape(points[:, k], shape)), (-1,))
                                         for k in range(SLOTS)], axis=1)

    fn_flat = per_slot(inside)
    implicit = per_slot(lambda c: implicit_crossing(fn, threshold, c))  # same values, f- and t-gradients

    mean_flat, sd_flat = jnp.reshape(mean, (-1, 1)), jnp.reshape(sd, (-1, 1))
    a = implicit(_crossing(fn_flat, at(g_start - 1), at(g_start), rising=True))
    a = jnp.where(g_start == 0, mean_flat - OPEN_END * sd_flat, a)
    b = implicit(_crossing(fn_flat, at(g_end), at(g_end + 1), rising=False))
    b = jnp.where(g_end == GRID - 1, mean_flat + OPEN_END * sd_flat, b)
    empty = mean_flat + OPEN_END * sd_flat
    lower = jnp.where(present, a, empty).T.reshape((SLOTS,) + shape)
    upper = jnp.where(present, b, empty).T.reshape((SLOTS,) + shape)
    # a zero-variance unit is a point: one interval around it if the event holds there, else none
    flat = jnp.reshape(variance <= 0, (1,) + shape)
    first = jnp.reshape(jnp.arange(SLOTS) == 0, (SLOTS,) + (1,) * len(shape))
    keep = first & inside(mean)[None]
    lower = jnp.where(flat, jnp.where(keep, mean - 1.0, mean + 1.0), lower)
    upper = jnp.where(flat, mean + 1.0, upper)
    dropped = jnp.max(jnp.maximum(count - SLOTS, 0))
    return lower, upper, dropped


def implicit_crossing(fn: Callable, threshold, crossing):
    """``crossing`` (a numerical root of ``f(c) = t``, unit by unit) with implicit-function gradients.

    The value is ``crossing`` unchanged; its derivative is ``-(df(c) - dt) / f'(c)`` with ``f``
    differentiated in everything it closes over. Where ``f'(c)`` is 0 or not finite (a flat or
    saturated stretch, or a crossing pinned at its bracket's end) the crossing has no gradient.
    """
    c = jax.lax.stop_gradient(crossing)
    value, slope = jax.jvp(fn, (c,), (jnp.ones_like(c),))
    slope = jax.lax.stop_gradient(slope)
    usable = jnp.isfinite(slope) & (jnp.abs(slope) > 0) & jnp.isfinite(value)
    step = -(value - threshold) / jnp.where(usable, slope, 1.0)
    step = jnp.where(usable, step, 0.0)
    return c + (step - jax.lax.stop_gradient(step))


def _largest_intervals(grid_inside, u):
    """For one unit: grid indices of the start/end of its ``SLOTS`` most probable runs of ``inside``."""
    before = jnp.concatenate([jnp.zeros((1,), bool), grid_inside[:-1]])
    after = jnp.concatenate([grid_inside[1:], jnp.zeros((1,), bool)])
    starts, ends = grid_inside & ~before, grid_inside & ~after
    run = jnp.cumsum(starts) - 1  # the run each inside point belongs to (< GRID // 2 + 1)
    unused = GRID - 1
    segment = jnp.where(grid_inside, run, unused)
    log_density = jnp.where(grid_inside, -0.5 * u**2, -jnp.inf)
    peak = jax.ops.segment_max(log_density, segment, GRID)
    finite_peak = jnp.where(jnp.isfinite(peak), peak, 0.0)  # no -inf - -inf on empty segments
    total = jax.ops.segment_sum(jnp.where(grid_inside, jnp.exp(log_density - finite_peak[segment]), 0.0),
                                segment, GRID)
    score = jnp.where(total > 0, peak + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)
    score = score.at[unused].set(-jnp.inf)
    best, ids = jax.lax.top_k(score, SLOTS)
    g_start = jnp.argmax(starts[None, :] & (run[None, :] == ids[:, None]), axis=1)
    g_end = jnp.argmax(ends[None, :] & (run[None, :] == ids[:, None]), axis=1)
    return g_start, g_end, best > -jnp.inf, jnp.sum(starts)


def _crossing(inside: Callable, left, right, *, rising: bool):
    """Bisection between ``left`` and ``right`` where ``inside`` changes (outside->inside if rising)."""

    def halve(_, bracket):
        a, b = bracket
        mid = 0.5 * (a + b)
        hit = inside(mid)
        in_left_half = ~hit if rising else hit  # the change lies to the right of mid
        return jnp.where(in_left_half, mid, a), jnp.where(in_left_half, b, mid)

    a, b = jax.lax.fori_loop(0, HALVINGS, halve, (left, right))
    return 0.5 * (a + b)


def interval_probability(lower, upper, mean, variance, at_mean):
    """``sum_k P[lower_k < z < upper_k]`` for ``z ~ N(mean, variance)`` (disjoint intervals).

    ``at_mean``: whether the event holds at the mean (the answer for zero-variance units).
    """
    sd = jnp.sqrt(jnp.maximum(variance, 0.0))
    safe = jnp.where(sd > 0, sd, 1.0)
    cdf = jax.scipy.special.ndtr
    a, b = (lower - mean) / safe, (upper - mean) / safe
    # above the mean use upper tails, so that far-tail intervals do not cancel to 0 in float32
    p = jnp.sum(jnp.where(a > 0, cdf(-a) - cdf(-b), cdf(b) - cdf(a)), axis=0)
    return jnp.where(sd > 0, jnp.clip(p, 0.0, 1.0), jnp.asarray(at_mean, mean.dtype))
