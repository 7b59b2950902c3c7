"""Proposal ``"tilted"``: a Gaussian (mixture) found by optax against the mechanistic estimate.

The input distribution is moved (mean shift and scale of every continuous
site, in the site's standard coordinates) to the least-KL distribution under
which ``mechanize(family="gaussian")`` gives the catastrophe probability
``target_probability`` -- the neighbourhood of the most likely way to fail,
which is where ``p * 1[C]`` (the zero-variance proposal) has its mass. With
``objective="variance"`` that search is polished by minimizing the
mechanistic second moment of the importance weights instead (see
``_search``). Scales are floored at ``min_scale`` (> 1/sqrt 2: below it the
weights of a Gaussian tail have infinite variance). Then plain importance
sampling from the found ``q``: unbiased whatever the mechanistic estimate got
wrong; only the variance depends on it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ._engine import Context, weighted_estimates
from ._family import GaussianMixture, Proposal, draw_with
from ._score import union_note
from ._search import (
    check_gaussian_space,
    minimize_kl_above,
    minimize_second_moment,
    zero_params,
)

OBJECTIVES = ("kl", "variance")


def run_tilted(
    ctx: Context,
    *,
    num_samples: int,
    target_probability: float = 0.3,
    objective: str = "kl",
    components: int = 1,
    defensive: float = 0.0,
    steps: int = 300,
    learning_rate: float = 0.3,
    min_scale: float = 0.75,
    fit_scale: bool | None = None,
    mechanize_samples: int = 4096,
):
    """Fit the tilted Gaussian (mixture) mechanistically, then importance-sample from it.

    Args:
        target_probability: mechanistic ``P_q[C]`` the search aims at (default 0.3).
        objective: ``"kl"`` (least KL from ``p`` reaching the target) or
            ``"variance"`` (then minimize the mechanistic second moment of the weights).
        components: Gaussians in the mixture; component 0 starts at ``p``, the
            others at random shifts, each searched separately, weighted by
            ``P_q[C] exp(-KL)`` (a large-deviations guess of its share of ``p * 1[C]``).
        defensive: share of ``p`` itself in the mixture (bounds weights by 1/defensive).
        steps, learning_rate: the optax search (norm-clipped gradient steps).
        min_scale: floor on the scales in standard coordinates.
        fit_scale: also fit the scales; default: only in the ``"variance"`` polish (the KL
            search shifts the mean: spending KL on scales makes the weights heavier).
        mechanize_samples: samples of minimax tilting per polytope in mechanize.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if int(components) < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    if not 0 <= defensive < 1:
        raise ValueError(f"defensive must be in [0, 1), got {defensive}")
    if min_scale <= math.sqrt(0.5):
        raise ValueError(
            f"min_scale={min_scale}: scales at or below 1/sqrt(2) give importance weights of infinite "
            "variance under a Gaussian input"
        )
    problem = ctx.problem(ctx.dynamic)
    check_gaussian_space(problem.space, "proposal 'tilted'")
    key = ctx.key(1)
    floor = math.log(min_scale)
    fitted, infos = [], []
    for c in range(int(components)):
        init = zero_params(problem.space)
        if c > 0:
            init = (
                {n: 2.0 * jax.random.normal(jax.random.fold_in(ctx.key(2), 100 * c + i), m.shape)
                 for i, (n, m) in enumerate(init[0].items())},
                init[1],
            )
        params, history = minimize_kl_above(
            ctx, target_probability, init=init, steps=steps, learning_rate=learning_rate, key=key,
            fit_scale=bool(fit_scale),
        )
        if objective == "variance":
            params, vhistory = minimize_second_moment(
                ctx, init=params, steps=steps, learning_rate=0.02, key=key,
                min_scale=min_scale, fit_scale=True if fit_scale is None else fit_scale,
            )
        params = (params[0], jax.tree.map(lambda r: jnp.maximum(r, floor), params[1]))
        fitted.append(params)
        info = {
            "log_probability_q": float(history["log_probability"][-1]),
            "kl": float(history["kl"][-1]),
            "shift_norm": float(np.sqrt(sum(np.sum(np.square(m)) for m in params[0].values()))),
        }
        if objective == "variance":
            # history starts at p itself (component 0): log P_p[C], mechanistically
            log_p = float(history["log_probability"][0])
            info["relative_variance"] = math.exp(float(vhistory["log_second_moment"][-1]) - 2 * log_p) - 1
        infos.append(info)
    log_share = np.array([i["log_probability_q"] - i["kl"] for i in infos])
    mixture = GaussianMixture(
        means={n: jnp.stack([p[0][n] for p in fitted]) for n in fitted[0][0]},
        log_scales={n: jnp.stack([p[1][n] for p in fitted]) for n in fitted[0][1]},
        logits=jnp.asarray(log_share - log_share.max(), jnp.float32),
        defensive=float(defensive),
    )
    diagnostics = {
        "kl": np.array([i["kl"] for i in infos]),
        "mechanistic_probability_q": np.exp([i["log_probability_q"] for i in infos]),
        "mean_shift_norm": np.array([i["shift_norm"] for i in infos]),
    }
    if objective == "variance":
        diagnostics["predicted_relative_variance"] = np.array([i["relative_variance"] for i in infos])
    notes = (
        f"tilted proposal: least-KL Gaussian with mechanistic P_q[{ctx.target}] = {target_probability}"
        + (", polished for minimum weight variance" if objective == "variance" else ""),
    ) + (union_note(problem.program, ctx.target, "tilted") if int(components) == 1 else ())
    return weighted_estimates(
        ctx, draw_with, Proposal(gaussian=mixture),
        num_samples=num_samples, key=ctx.key(3), method="importance[tilted]",
        diagnostics=diagnostics, notes=notes,
    )
