"""Adversarial input distributions: make D as catastrophic as possible within a KL budget.

``attack(model, kl_budget=B)`` searches Gaussian input distributions ``q``
(mean shift and scale of every continuous Normal/MultivariateNormal latent
site, in the site's own standard coordinates) for

    max  log P_q[C]   s.t.  KL(q || p) <= B,

with ``P_q[C]`` the differentiable mechanistic estimate
(``mechanize(family="gaussian")``), by projected, norm-clipped gradient ascent (optax); the projection
scales the shift and log-scale towards ``p`` until the budget holds (see
``ppl_mech.importance._search``). ``restarts > 1`` repeats the search from
random shifts and keeps the best. (A *mixture* of such ``q`` cannot beat its
best component: ``P_q[C]`` is linear in the mixture weights while the KL
bound holds componentwise, so restarts are the useful form of "several
Gaussians" here.)

The found ``q`` is then checked by sampling: ``P_q[C]`` from ``num_samples``
draws of ``q`` (plain Monte Carlo, exact Clopper-Pearson interval: the
*verified* number, the catastrophe rate under the found distribution), and,
from draws of ``q`` weighted by ``p/q``, an importance-sampling estimate of the
original ``P_p[C]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._capture import ModelArgs, capture_program, check_independent_latents
from ._errors import ModelError
from ._result import Cost, SiteResult
from .importance._engine import Context, CostMeter
from .importance._estimate import default_target, importance_estimate
from .importance._search import (
    check_gaussian_space,
    kl_to_prior,
    maximize_within_kl,
    mechanistic_log_probability,
    replace_distributions,
    zero_params,
)
from .importance._space import LatentSpace


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """What :func:`attack` found.

    Attributes:
        distributions: site -> the found numpyro distribution ``q`` of that site.
        mean_shift: site -> ``E_q[x] - E_p[x]``.
        scale: site -> the scale multiplier (standard coordinates; 1 = unchanged).
        kl: ``KL(q || p)`` (exact for Gaussian ``p`` and ``q``).
        kl_budget: the budget it was found within.
        mechanistic_probability_p: mechanistic ``P_p[C]`` of the original distribution.
        mechanistic_probability_q: mechanistic ``P_q[C]`` of the found one.
        verified: ``P_q[C]`` by sampling from ``q`` (Monte Carlo).
        importance: ``P_p[C]`` by importance sampling from ``q`` (weights ``p/q``).
        history: per search step, ``log_probability`` and ``kl`` (best restart).
        cost: FLOPs/seconds of the search (mechanistic; no model evaluations).
        target: the catastrophe site.
    """

    distributions: dict[str, Any]
    mean_shift: dict[str, np.ndarray]
    scale: dict[str, np.ndarray]
    kl: float
    kl_budget: float
    mechanistic_probability_p: float
    mechanistic_probability_q: float
    verified: SiteResult | None
    importance: SiteResult | None
    history: dict[str, np.ndarray]
    cost: Cost
    target: str

    def model(self, model: Callable) -> Callable:
        """``model`` with its latent sites drawn from the found ``q``."""
        return replace_distributions(model, self.distributions)

    def summary(self) -> str:
        lines = [f"attack on site {self.target!r} within KL(q || p) <= {self.kl_budget:g}:"]
        for name, shift in self.mean_shift.items():
            scale = self.scale[name]
            lines.append(
                f"  site {name!r}: mean shift |.| = {float(np.linalg.norm(shift)):.4g} "
                f"(max |.| {float(np.max(np.abs(shift))):.4g}), scale in "
                f"[{float(np.min(scale)):.3g}, {float(np.max(scale)):.3g}]"
            )
            flat = np.ravel(shift)
            if flat.size <= 8:
                lines.append(f"    shift = {np.array2string(flat, precision=3)}")
        lines.append(f"  KL(q || p) = {self.kl:.4g}")
        lines.append(f"  mechanistic P_p[C] = {self.mechanistic_probability_p:.4g}  (original distribution)")
        lines.append(f"  mechanistic P_q[C] = {self.mechanistic_probability_q:.4g}  (found distribution)")
        if self.verified is not None:
            v = self.verified
            lo, hi = (float(np.asarray(b)) for b in v.interval)
            lines.append(
                f"  sampled     P_q[C] = {float(np.asarray(v.value)):.4g}  [{lo:.4g}, {hi:.4g}]  "
                f"({v.cost.evaluations} draws from q: the verified number)"
            )
        if self.importance is not None:
            value = float(np.asarray(self.importance.value))
            stderr = float(np.asarray(self.importance.stderr))
            lines.append(
                f"  importance  P_p[C] = {value:.4g} +- {stderr:.2g}  (the same q as proposal, weights p/q)"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def attack(
    model: Callable,
    args: Sequence = (),
    kwargs: Mapping | None = None,
    *,
    kl_budget: float,
    target: str | None = None,
    steps: int = 300,
    learning_rate: float = 0.3,
    fit_scale: bool = True,
    restarts: int = 1,
    num_samples: int = 2**14,
    rng_key: jax.Array | None = None,
    verify: bool = True,
) -> AttackResult:
    """Find the Gaussian input distribution within ``KL <= kl_budget`` that maximizes ``P[target]``.

    Args:
        model: a NumPyro model whose latent sites are Normal/MultivariateNormal.
        kl_budget: ``B`` in ``KL(q || p) <= B`` (nats).
        target: the scalar boolean catastrophe site (default ``"catastrophe"``).
        steps, learning_rate: the projected gradient search (step norm <= learning_rate).
        fit_scale: also move the scales (else mean shift only).
        restarts: searches from random initial shifts (the first starts at ``p``); the best wins.
        num_samples: draws from ``q`` for the verification (each of the two estimates).
        rng_key: key for the restarts and the verification.
        verify: run the sampling checks.

    Raises:
        UnsupportedDistributionError: naming a latent site that is discrete or not Gaussian.
    """
    kwargs = dict(kwargs or {})
    if not kl_budget >= 0 or not math.isfinite(kl_budget):
        raise ValueError(f"kl_budget must be a finite number >= 0, got {kl_budget}")
    if int(restarts) < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    program = capture_program(model, args, kwargs)
    space = LatentSpace.from_program(program)
    check_gaussian_space(space, "attack")
    check_independent_latents(model, args, kwargs, program,
                              "the attack shifts each site's distribution on its own, so it needs "
                              "independent latent sites")
    target = default_target(program) if target is None else target
    program.check_outputs([target])
    if not program.outputs[target].is_boolean or program.outputs[target].shape != ():
        raise ModelError(f"target site {target!r} must be a scalar boolean")
    layout, dynamic = ModelArgs.split(args, kwargs)
    ctx = Context(model=model, layout=layout, dynamic=dynamic, target=target, score=None,
                  sites={target: program.outputs[target]}, rng_key=rng_key, meter=CostMeter())
    key = jax.random.PRNGKey(0)  # minimax tilting's key: fixed, so the objective is deterministic

    def evaluate(dynamic, params):
        problem = ctx.problem(dynamic)
        return (mechanistic_log_probability(ctx, problem, *params, key=key), kl_to_prior(*params))

    best = None
    for r in range(int(restarts)):
        init = zero_params(space)
        if r > 0:
            init = ({n: 3.0 * jax.random.normal(jax.random.fold_in(rng_key, 1000 + 17 * r + i), m.shape)
                     for i, (n, m) in enumerate(init[0].items())}, init[1])
        # Mean shift first: at p the tail rewards scale so strongly that a joint search spends
        # the budget on scales and stalls; then both, from the shifted distribution.
        first = int(steps) if not fit_scale else max(1, int(steps) // 2)
        params, history = maximize_within_kl(ctx, float(kl_budget), init=init, steps=first,
                                             learning_rate=learning_rate, key=key, fit_scale=False)
        if fit_scale:
            params, more = maximize_within_kl(ctx, float(kl_budget), init=params, steps=int(steps) - first,
                                              learning_rate=learning_rate / 3, key=key, fit_scale=True)
            history = {k: jnp.concatenate([history[k], more[k]]) for k in history}
        log_p, kl = ctx.meter("attack-evaluate", evaluate, ctx.dynamic, params)
        if best is None or float(log_p) > best[1]:
            best = (params, float(log_p), float(kl), history)
    params, log_p_q, kl, history = best
    log_p_p, _ = ctx.meter("attack-evaluate", evaluate, ctx.dynamic, zero_params(space))

    means, log_scales = params
    distributions, shifts, scales = {}, {}, {}
    for name, site in space.continuous.items():
        q = site.gaussian(means[name], log_scales[name])
        distributions[name] = q
        shifts[name] = np.asarray(q.mean - jnp.broadcast_to(site.distribution.mean, site.shape))
        scales[name] = np.exp(np.asarray(log_scales[name]))
    verified = importance = None
    if verify:
        from ppl_mech.handlers import sample

        k_sample, k_is = jax.random.split(jax.random.fold_in(rng_key, 7))
        verified = sample(replace_distributions(model, distributions), num_samples=num_samples,
                          rng_key=k_sample, sites=[target], keep_draws=0)(*args, **kwargs)[target]
        importance = importance_estimate(model, args, kwargs, proposal=distributions,
                                         num_samples=num_samples, rng_key=k_is, target=target,
                                         sites=[target], keep_draws=0)[target]
    return AttackResult(
        distributions=distributions, mean_shift=shifts, scale=scales, kl=kl, kl_budget=float(kl_budget),
        mechanistic_probability_p=math.exp(float(log_p_p)), mechanistic_probability_q=math.exp(log_p_q),
        verified=verified, importance=importance,
        history={k: np.asarray(v) for k, v in history.items()}, cost=ctx.meter.cost(), target=target,
    )
