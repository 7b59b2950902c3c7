"""Proposal ``"itgis"``: independent (token) gradient importance sampling, after ARC (2024).

ARC's ITGIS ("Estimating the probabilities of rare outputs in language
models", code ``alignment-research-center/low-probability-estimation``,
``lpe/methods.py``) proposes every input element independently from ``p``
tilted by a score: ``q_i(v) ∝ p_i(v) exp(score_i(v) / T)``, where
``score_i(v)`` is an exponential moving average (decay 0.9) over batches of
the first-order change of the detector's continuous score when element ``i``
becomes ``v`` (the gradient with respect to the token embedding, dotted with
the embedding of ``v``), evaluated at draws from the current proposal.

Here the score is the detector's margin (``_score``) and:

* discrete sites (Categorical, Bernoulli, ...) use exactly that rule, with the
  first-order changes of ``_relax`` (or exact changes, ``discrete_scores="exact"``);
* continuous sites, in standard coordinates ``z ~ N(0, I)``, tilt by the
  averaged gradient ``g``: ``p(z) exp(g . z / T) ∝ N(z; g/T, I)``, a mean shift.

``temperature=None`` chooses ``T`` itself. With continuous sites, every step
sets the mean ``g/T`` where the score linearized at the current proposal
(batch means of ``s`` and of its gradient) crosses 0: ``T = |g|^2 / (g . mu -
mean s)``, the Hasofer-Lind-Rackwitz-Fiessler iteration of FORM, damped (half
steps in ``log T``, at most 0.7 per step; the mean's norm grows by at most
``max_step`` a step and stays within ``max_shift``: HL-RF overshoots on
saturating scores); for a linear score it walks straight to the design point.
With only discrete sites, ``T`` starts at the Newton step from ``p``
(``|g|^2 / (-mean s)``) and walks ``log T`` (Robbins-Monro) towards a fraction
``target_fraction`` of catastrophes among the proposal's draws. ARC keeps
adapting and averages every batch; here the first ``adapt_fraction`` of the
budget adapts and the rest samples from the fixed final proposal, so that the
weights are i.i.d. (clean standard errors, ESS and k-hat) and early, poor
proposals do not dominate the variance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._engine import Context, weighted_estimates
from ._family import CategoricalTable, GaussianMixture, Proposal, draw_with
from ._score import union_note


def _proposal(problem, state, defensive: float = 0.0) -> Proposal:
    norm = jnp.maximum(state["norm"], 1e-12)
    temperature = jnp.exp(state["log_t"])
    active = state["norm"] > 0
    gaussian = categorical = None
    if problem.space.continuous:
        means = {n: jnp.where(active, g / norm / temperature, 0.0)[None] for n, g in state["g"].items()}
        log_scales = {n: jnp.zeros_like(m) for n, m in means.items()}
        gaussian = GaussianMixture(means, log_scales, jnp.zeros(1), defensive)
    if problem.space.discrete:
        logits = {
            n: site.log_p + jnp.where(active, state["s"][n] / norm / temperature, 0.0)
            for n, site in problem.space.discrete.items()
        }
        categorical = CategoricalTable(logits)
    return Proposal(gaussian, categorical)


def run_itgis(
    ctx: Context,
    *,
    num_samples: int,
    temperature: float | None = None,
    decay: float = 0.9,
    batch_size: int | None = None,
    adapt_fraction: float = 0.25,
    target_fraction: float = 0.5,
    adapt_rate: float = 1.0,
    discrete_scores: str = "gradient",
    max_shift: float = 10.0,
    max_step: float = 1.5,
):
    """Adapt the gradient-tilted proposal on ``adapt_fraction`` of the budget, then importance-sample.

    Args:
        temperature: ARC's ``T`` (fixed), or ``None`` to choose it (see the module docstring).
        decay: decay of the moving average of the scores (ARC: 0.9).
        batch_size: draws per adaptation step (default ``max(64, num_samples // 64)``).
        adapt_fraction: share of ``num_samples`` spent adapting.
        target_fraction: catastrophe fraction under ``q`` that the automatic ``T`` aims at
            (discrete sites only).
        adapt_rate: step of the Robbins-Monro walk of ``log T`` (discrete sites only).
        discrete_scores: ``"gradient"`` (ARC's first-order changes) or ``"exact"``
            (one evaluation per element and value).
        max_shift: cap on the norm of the continuous mean shift (standard coordinates).
        max_step: cap on the growth of that norm per adaptation step.
    """
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if discrete_scores not in ("gradient", "exact"):
        raise ValueError(f"discrete_scores must be 'gradient' or 'exact', got {discrete_scores!r}")
    if not 0 < adapt_fraction < 1:
        raise ValueError(f"adapt_fraction must be in (0, 1), got {adapt_fraction}")
    batch = int(batch_size or max(64, num_samples // 64))
    steps = max(1, int(adapt_fraction * num_samples) // batch)
    problem = ctx.problem(ctx.dynamic)
    space = problem.space
    state = {
        "g": {n: jnp.zeros(s.shape) for n, s in space.continuous.items()},
        "s": {n: jnp.zeros(s.log_p.shape) for n, s in space.discrete.items()},
        "norm": jnp.zeros(()),
        "log_t": jnp.asarray(np.log(temperature) if temperature else np.nan, jnp.float32),
        "start": jnp.asarray(np.nan, jnp.float32),
    }
    exact = discrete_scores == "exact"

    def adapt_step(dynamic, state, key):
        problem = ctx.problem(dynamic)
        q = _proposal(problem, state)

        def one(i):
            z, k, _ = q.sample_point(problem.space, jax.random.fold_in(key, i))
            c, s, grad = problem.score_and_grad(z, k)
            changes = problem.discrete_changes(z, k, exact=exact) if problem.space.discrete else {}
            return c, s, grad, changes

        c, s, grad, changes = jax.vmap(one)(jnp.arange(batch))
        mean_grad = {n: jnp.mean(g, axis=0) for n, g in grad.items()}
        mean_changes = {n: jnp.mean(v, axis=0) for n, v in changes.items()}
        new = {
            "g": {n: decay * state["g"][n] + mean_grad[n] for n in state["g"]},
            "s": {n: decay * state["s"][n] + mean_changes[n] for n in state["s"]},
            "norm": decay * state["norm"] + 1.0,
        }
        fraction = jnp.mean(c.astype(jnp.float32))
        if temperature is None:
            g_avg = {n: g / new["norm"] for n, g in new["g"].items()}
            g2 = sum(jnp.sum(g**2) for g in g_avg.values())
            g2 = g2 + sum(jnp.sum(jnp.var(v, axis=-1)) for v in mean_changes.values())
            if problem.space.continuous:
                # Hasofer-Lind-Rackwitz-Fiessler (FORM) step on the linearized score: the mean
                # g/T should sit where s(mu) + g.(z - mu) = 0, i.e. T = |g|^2 / (g.mu - mean s)
                mean_now = q.gaussian.means
                g_mu = sum(jnp.sum(g * mean_now[n][0]) for n, g in g_avg.items())
                target_t = jnp.log(g2 / jnp.maximum(g_mu - jnp.mean(s), 1e-3 * jnp.sqrt(g2) + 1e-12))
                # trust region: log T moves by at most 0.7 a step after the first, and the
                # mean |g|/T stays within max_shift (HL-RF diverges on saturating scores)
                damped = state["log_t"] + jnp.clip(0.5 * (target_t - state["log_t"]), -0.7, 0.7)
                log_t = jnp.where(jnp.isnan(state["log_t"]), target_t, damped)
                mu_norm = jnp.sqrt(sum(jnp.sum(m**2) for m in mean_now.values()))
                reach = jnp.minimum(max_shift, mu_norm + max_step)
                new["log_t"] = jnp.maximum(log_t, 0.5 * jnp.log(g2) - jnp.log(reach))
                new["start"] = state["start"]
            else:
                # Newton step from p (linear score): |g|^2 / (-mean s), then a walk on the fraction
                first = jnp.log(jnp.maximum(g2 / jnp.maximum(-jnp.mean(s), 1e-3), 1e-6))
                start = jnp.where(jnp.isnan(state["start"]), first, state["start"])
                walked = state["log_t"] + adapt_rate * (fraction - target_fraction)
                # the walk stays within e^{+-4} of the Newton guess
                new["log_t"] = jnp.where(jnp.isnan(state["log_t"]), first,
                                         jnp.clip(walked, start - 4, start + 4))
                new["start"] = start
        else:
            new["log_t"] = state["log_t"]
            new["start"] = state["start"]
        return new, fraction

    fractions, log_ts = [], []
    for t in range(steps):
        state, fraction = ctx.meter("itgis-adapt", adapt_step, ctx.dynamic, state, ctx.key(10 + t),
                                    evaluations=batch)
        fractions.append(float(fraction))
        log_ts.append(float(state["log_t"]))
    if temperature is None and not space.continuous and steps >= 4:
        # The Robbins-Monro walk on log T jumps (a near-deterministic proposal sees all or no
        # catastrophes); its last iterate can be a point mass off the event. Polyak averaging
        # over the second half of the walk is the stable answer.
        state = {**state, "log_t": jnp.asarray(np.mean(log_ts[steps // 2:]), jnp.float32)}
    q = _proposal(problem, state)
    used = steps * batch
    diagnostics = {
        "temperature": float(np.exp(state["log_t"])),
        "adapt_catastrophe_fraction": np.asarray(fractions),
        "fit_evaluations": used,
    }
    notes = (f"itgis: {steps} adaptation step(s) of {batch} draws, then a fixed proposal",) \
        + union_note(problem.program, ctx.target, "itgis")
    return weighted_estimates(
        ctx, draw_with, q, num_samples=max(1, num_samples - used), key=ctx.key(3),
        method="importance[itgis]", diagnostics=diagnostics, notes=notes,
    )
