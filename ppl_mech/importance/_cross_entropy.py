"""Proposal ``"cross-entropy"``: the multilevel cross-entropy method for rare events.

Rubinstein's CE method (Rubinstein & Kroese, *The Cross-Entropy Method*, 2004,
ch. 3): with the detector's score ``s`` (``C`` iff ``s > 0``, see ``_score``),
iterate

1. draw ``n`` points from the current ``q_t`` (weights ``w = p/q_t``);
2. level ``g_t = min(0, (1 - rho)-quantile of s)``; the elite are the draws with
   ``s >= g_t`` (the catastrophes themselves once ``g_t`` reaches 0);
3. ``q_{t+1}`` = the weighted maximum-likelihood fit to the elite with weights
   ``w`` -- the member of the family closest in KL to ``p(x) 1[s(x) >= g_t]``:
   a diagonal Gaussian in standard coordinates for continuous sites (scales
   floored at ``min_scale``, above 1/sqrt 2 so the weights keep a finite
   variance), weighted frequencies per element for discrete sites (smoothed,
   and mixed with ``p`` at ``prior_mix`` so that no value ``p`` allows gets
   probability 0);

until the level reaches 0, then ``refine_levels`` more fits to the catastrophes
(drawn from the catastrophe-centred ``q``, so most draws count). The rest of
the budget is plain importance sampling from the final ``q`` (unbiased; the
fitting draws are not reused, so the estimate does not depend on them).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ._engine import Context, weighted_estimates
from ._family import CategoricalTable, GaussianMixture, Proposal, draw_with
from ._score import union_note


def _ce_fit(problem, q: Proposal, z, k, log_w, elite, *, min_scale, smoothing, prior_mix, fit_scale):
    w = jnp.where(elite, jnp.exp(log_w - jnp.max(jnp.where(elite, log_w, -jnp.inf))), 0.0)
    total = jnp.sum(w)
    ok = total > 0
    v = w / jnp.where(ok, total, 1.0)
    gaussian, categorical = q.gaussian, q.categorical
    if gaussian is not None:
        means, log_scales = {}, {}
        for name, zs in z.items():
            vb = v.reshape((-1,) + (1,) * (zs.ndim - 1))
            mean = jnp.sum(vb * zs, axis=0)
            var = jnp.sum(vb * (zs - mean) ** 2, axis=0)
            scale = jnp.maximum(jnp.sqrt(var), min_scale) if fit_scale else jnp.ones_like(mean)
            means[name] = jnp.where(ok, mean, gaussian.means[name][0])[None]
            log_scales[name] = jnp.where(ok, jnp.log(scale), gaussian.log_scales[name][0])[None]
        gaussian = GaussianMixture(means, log_scales, gaussian.logits, gaussian.defensive)
    if categorical is not None:
        logits = {}
        for name, ks in k.items():
            site = problem.space.discrete[name]
            onehot = jax.nn.one_hot(ks, site.num_values)
            vb = v.reshape((-1,) + (1,) * (onehot.ndim - 1))
            freq = jnp.sum(vb * onehot, axis=0)
            old = jax.nn.softmax(categorical.logits[name], axis=-1)
            probs = jnp.where(ok, smoothing * freq + (1 - smoothing) * old, old)
            probs = (1 - prior_mix) * probs + prior_mix * jnp.exp(site.log_p)
            logits[name] = jnp.log(probs)
        categorical = CategoricalTable(logits)
    return Proposal(gaussian, categorical)


def run_cross_entropy(
    ctx: Context,
    *,
    num_samples: int,
    elite_fraction: float = 0.1,
    batch_size: int | None = None,
    max_levels: int | None = None,
    min_scale: float = 0.75,
    fit_scale: bool = False,
    smoothing: float = 0.7,
    prior_mix: float = 0.01,
    refine_levels: int = 1,
):
    """Fit ``q`` by multilevel CE on ``batch_size`` draws per level, then importance-sample.

    Args:
        elite_fraction: ``rho``, the fraction of draws above each level (default 0.1).
        batch_size: draws per CE level (default ``max(512, num_samples // 8)``).
        max_levels: cap on CE levels (default: as many as half the budget allows).
        min_scale: floor of the Gaussian scales (standard coordinates).
        fit_scale: also fit the scales (default: mean shift only; with few elites in
            more than a few dimensions the fitted scales are noisy, and a scale below 1
            in a tail direction makes the weights heavy-tailed).
        smoothing: CE smoothing of the categorical updates.
        prior_mix: share of ``p`` mixed into every categorical (keeps the support).
        refine_levels: extra fits at level 0 once it is reached.
    """
    if not 0 < elite_fraction < 1:
        raise ValueError(f"elite_fraction must be in (0, 1), got {elite_fraction}")
    if min_scale <= math.sqrt(0.5):
        raise ValueError(f"min_scale={min_scale} must exceed 1/sqrt(2) (finite weight variance)")
    if not 0 < prior_mix < 1:
        raise ValueError(f"prior_mix must be in (0, 1) so that q covers p, got {prior_mix}")
    batch = int(batch_size or max(512, num_samples // 8))
    levels_allowed = max(1, (num_samples // 2) // batch)
    max_levels = levels_allowed if max_levels is None else min(int(max_levels), levels_allowed)
    problem = ctx.problem(ctx.dynamic)
    q = Proposal(
        GaussianMixture.prior(problem.space) if problem.space.continuous else None,
        CategoricalTable.prior(problem.space) if problem.space.discrete else None,
    )

    def level_step(dynamic, q, key):
        problem = ctx.problem(dynamic)

        def one(i):
            z, k, log_w = q.sample_point(problem.space, jax.random.fold_in(key, i))
            c, s = problem.point_score(z, k)
            return z, k, log_w, c, s

        z, k, log_w, c, s = jax.vmap(one)(jnp.arange(batch))
        level = jnp.minimum(jnp.quantile(s, 1.0 - elite_fraction), 0.0)
        reached = level >= 0
        elite = jnp.where(reached, c, s >= level)
        new_q = _ce_fit(problem, q, z, k, log_w, elite, min_scale=min_scale, smoothing=smoothing,
                        prior_mix=prior_mix, fit_scale=fit_scale)
        return new_q, level, reached, jnp.sum(c)

    levels, used, reached, extra = [], 0, False, 0
    for t in range(max_levels):
        q, level, reached, _ = ctx.meter("ce-level", level_step, ctx.dynamic, q, ctx.key(10 + t),
                                         evaluations=batch)
        used += batch
        levels.append(float(level))
        if bool(reached):
            # Refit from the catastrophe-centred q: now about half the draws are elite,
            # so the fit no longer rests on the few catastrophes of the last level.
            extra += 1
            if extra > refine_levels:
                break
    notes = [f"cross-entropy: {len(levels)} level(s) of {batch} draws, elite fraction {elite_fraction}"]
    if not bool(reached):
        notes.append(
            f"cross-entropy did not reach the catastrophe level within {len(levels)} levels (last level "
            f"{levels[-1]:.3g}); the estimate is still unbiased but may have a large variance"
        )
    if problem.space.continuous:
        notes.extend(union_note(problem.program, ctx.target, "cross-entropy"))
    diagnostics = {"levels": np.asarray(levels), "fit_evaluations": used}
    return weighted_estimates(
        ctx, draw_with, q, num_samples=max(1, num_samples - used), key=ctx.key(3),
        method="importance[cross-entropy]", diagnostics=diagnostics, notes=tuple(notes),
    )
