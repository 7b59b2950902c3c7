"""Searching Gaussian input distributions against the mechanistic estimate (optax).

The input distribution ``p`` of every continuous site is written in standard
coordinates ``z ~ N(0, I)`` (see ``_space``); a candidate ``q`` is
``z ~ N(m, diag(exp(2 rho)))``, i.e. a mean shift ``m`` and a scale
``exp(rho)`` of the original distribution (``x = loc + scale * z`` for a
``Normal`` site, ``loc + L z`` for a multivariate one), so

    KL(q || p) = sum( exp(2 rho) + m^2 - 1 ) / 2 - sum(rho).

``log P_q[C]`` comes from ``handlers.mechanize(family="gaussian")`` run on the
model with the site's distribution replaced by ``q``; it is differentiable, so
optax can move ``q``. Three searches share this:

* :func:`maximize_within_kl` -- the attack: ``max log P_q[C]`` s.t.
  ``KL(q || p) <= B`` (projected Adam; the projection scales ``(m, rho)``
  towards 0 until the budget holds, which is monotone along that ray);
* :func:`minimize_kl_above` -- the ``tilted`` proposal: the least-surprising
  ``q`` (smallest KL from ``p``) under which the catastrophe has mechanistic
  probability ``target``, i.e. the neighbourhood of the most likely failure
  (the attack's ascent, with the budget walked to where ``P_q = target``); the
  mechanistic estimate is only ever evaluated where ``P_q`` is moderate, where
  Gaussian closure is at its most reliable;
* :func:`minimize_second_moment` -- the variance-optimal ``q``: for Gaussian
  ``p`` and ``q`` the second moment of the weight is itself a Gaussian
  probability, ``E_q[(p/q)^2 1_C] = c(m, s) P_{N(m', S')}[C]`` with
  ``S' = s^2/(2 s^2 - 1)``, ``m' = -m S'/s^2`` (needs ``s^2 > 1/2``), so it
  is mechanistic too; it also predicts the relative variance of the weights.
  It evaluates ``P`` far in the tail (at ``m'``), so it is as good as the
  mechanistic estimate is there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax
from numpyro.primitives import Messenger

from ppl_mech._errors import ModelError, UnsupportedDistributionError

from ._engine import Context, Problem
from ._space import LatentSpace

LOG_TINY = math.log(1e-37)  # float32 mechanistic probabilities underflow below ~1e-38


class replace_distributions(Messenger):
    """Replace the distribution of latent sites by name (the rest of the model is untouched)."""

    def __init__(self, fn=None, distributions: Mapping | None = None):
        self.distributions = dict(distributions or {})
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.distributions and not msg.get("is_observed"):
            msg["fn"] = self.distributions[msg["name"]]
            msg["kwargs"] = {**msg.get("kwargs", {}), "sample_shape": ()}


def check_gaussian_space(space: LatentSpace, what: str) -> None:
    """Raise naming the site when ``space`` has a site a Gaussian mechanistic search cannot move."""
    for name in space.discrete:
        raise UnsupportedDistributionError(
            f"{what}: latent site {name!r} is discrete ({type(site_dist(space, name)).__name__}); a "
            "Gaussian proposal needs continuous Normal/MultivariateNormal sites. Use proposal="
            "'cross-entropy', 'itgis', 'mhis' or 'ams', which handle discrete sites"
        )
    for name, site in space.continuous.items():
        if site.kind not in ("normal", "mvn"):
            raise UnsupportedDistributionError(
                f"{what}: latent site {name!r} is {type(site_dist(space, name)).__name__}, not Normal "
                "or MultivariateNormal; a Gaussian proposal on it would put mass outside its support "
                "and mechanize has no message for the shifted site. Use proposal='cross-entropy', "
                "'itgis', 'mhis' or 'ams', which propose in its standard-normal coordinates"
            )
    if not space.continuous:
        raise ModelError(f"{what}: the model has no continuous latent site to move")


def site_dist(space: LatentSpace, name: str):
    d = space.program.latents[name].distribution
    from ._space import _unwrap

    return _unwrap(d)


def mechanistic_log_probability(ctx: Context, problem: Problem, means: dict, log_scales: dict,
                                *, key: jax.Array, num_samples: int = 4096) -> jax.Array:
    """``log P_q[target]`` by ``mechanize(family="gaussian")`` with the sites' distributions ``q``."""
    from ppl_mech.mechanistic._estimate import propagate

    dists = {n: problem.space.continuous[n].gaussian(means[n], log_scales[n]) for n in means}
    model = replace_distributions(ctx.model, dists)
    estimates, _, _ = propagate(model, problem.args, problem.kwargs, family="gaussian",
                                sites=[ctx.target], key=key, num_samples=num_samples)
    value = jnp.reshape(estimates[ctx.target]["value"], ())
    return jnp.log(jnp.maximum(value, jnp.exp(LOG_TINY)))


def kl_to_prior(means: dict, log_scales: dict) -> jax.Array:
    """``KL(N(m, diag(exp(2 rho))) || N(0, I))`` summed over sites."""
    total = jnp.zeros(())
    for name, m in means.items():
        rho = log_scales[name]
        total = total + jnp.sum(0.5 * (jnp.exp(2 * rho) + m**2 - 1.0) - rho)
    return total


def project_kl(params: tuple[dict, dict], budget: float) -> tuple[dict, dict]:
    """Scale ``(m, rho)`` by the largest ``a`` in [0, 1] with ``KL(a m, a rho) <= budget`` (bisection).

    ``d KL(a m, a rho) / d a = sum(rho (exp(2 a rho) - 1)) + a |m|^2 >= 0``, so the
    KL is monotone along the ray and bisection finds the boundary.
    """
    means, log_scales = params

    def kl_at(a):
        return kl_to_prior(jax.tree.map(lambda m: a * m, means), jax.tree.map(lambda r: a * r, log_scales))

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = kl_at(mid) <= budget
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 40, body, (jnp.zeros(()), jnp.ones(())))
    a = jnp.where(kl_at(1.0) <= budget, 1.0, lo)
    return jax.tree.map(lambda m: a * m, means), jax.tree.map(lambda r: a * r, log_scales)


def zero_params(space: LatentSpace) -> tuple[dict, dict]:
    zeros = {n: jnp.zeros(s.shape) for n, s in space.continuous.items()}
    return zeros, dict(zeros)


def _run_scan(ctx: Context, name: str, step, init_state, steps: int):
    def run(dynamic, state):
        problem = ctx.problem(dynamic)

        def body(state, i):
            return step(problem, state, i)

        return jax.lax.scan(body, state, jnp.arange(steps))

    return ctx.meter(name, run, ctx.dynamic, init_state, loop_iterations=steps)


def maximize_within_kl(ctx: Context, budget: float, *, init: tuple[dict, dict], steps: int = 300,
                       learning_rate: float = 0.3, key: jax.Array, fit_scale: bool = True):
    """The attack: ``argmax log P_q[C]`` over ``q`` with ``KL(q || p) <= budget``.

    Returns ``(params, history)``: the best point visited, and ``log_probability`` and ``kl``
    per step.
    """
    if not isinstance(budget, jax.Array) and budget < 0:
        raise ValueError(f"kl_budget must be >= 0, got {budget}")
    # Plain (norm-clipped) gradient steps with a cosine-decayed rate: Adam's per-coordinate
    # scaling would spend the budget on directions the detector ignores, and on the
    # budget's boundary, where the maximum sits, a constant step bounces off the projection.
    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(schedule))

    def step(problem, state, i):
        params, opt_state, best, best_value = state

        def loss(params):
            return -mechanistic_log_probability(ctx, problem, *params, key=key)

        value, grads = jax.value_and_grad(loss)(params)
        # keep the best feasible point seen (the radial projection is not a Euclidean one,
        # so a step need not improve)
        better = -value > best_value
        best = jax.tree.map(lambda a, b: jnp.where(better, a, b), params, best)
        best_value = jnp.where(better, -value, best_value)
        if not fit_scale:
            grads = (grads[0], jax.tree.map(jnp.zeros_like, grads[1]))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = project_kl(optax.apply_updates(params, updates), budget)
        return (params, opt_state, best, best_value), {"log_probability": -value, "kl": kl_to_prior(*params)}

    init = project_kl(init, budget)
    state = (init, optimizer.init(init), init, jnp.asarray(-jnp.inf, jnp.float32))
    (params, _, best, best_value), history = _run_scan(ctx, f"attack-{steps}", step, state, steps)
    return best, history


def minimize_kl_above(ctx: Context, target: float, *, init: tuple[dict, dict], steps: int = 300,
                      learning_rate: float = 0.3, key: jax.Array, fit_scale: bool = False,
                      budget_rate: float = 0.05):
    """The least-KL ``q`` with mechanistic ``P_q[C] >= target``, by continuation on the KL budget.

    The dual of the attack: projected gradient ascent on ``log P_q`` within ``KL <= B`` (as in
    :func:`maximize_within_kl`), while ``log B`` walks towards the budget at which the maximum
    is ``target`` (up when ``P_q`` is below it, down when above). Ascent at a fixed budget
    converges in a few tens of steps, so the walk is slow and stable.
    """
    if not 0 < target < 1:
        raise ValueError(f"target_probability must be in (0, 1), got {target}")
    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(schedule))
    log_target = math.log(target)

    def step(problem, state, i):
        params, opt_state, log_budget = state
        log_p, grads = jax.value_and_grad(
            lambda p: mechanistic_log_probability(ctx, problem, *p, key=key)
        )(params)
        grads = jax.tree.map(jnp.negative, grads)
        if not fit_scale:
            grads = (grads[0], jax.tree.map(jnp.zeros_like, grads[1]))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        log_budget = log_budget + budget_rate * jnp.clip(log_target - log_p, -1.0, 1.0)
        params = project_kl(optax.apply_updates(params, updates), jnp.exp(log_budget))
        return (params, opt_state, log_budget), {"log_probability": log_p, "kl": kl_to_prior(*params)}

    init = project_kl(init, 0.5)
    state = (init, optimizer.init(init), jnp.asarray(math.log(0.5), jnp.float32))
    (params, _, log_budget), history = _run_scan(ctx, f"tilt-kl-{steps}", step, state, steps)
    history["budget"] = jnp.exp(log_budget)
    return params, history


def second_moment_log(ctx: Context, problem: Problem, means: dict, log_scales: dict, *,
                      key: jax.Array) -> jax.Array:
    """``log E_q[(p/q)^2 1_C]`` for ``p = N(0, I)``, ``q = N(m, s^2)`` (diagonal, ``s^2 > 1/2``)."""
    log_c = jnp.zeros(())
    reflected_means, reflected_log_scales = {}, {}
    for name, m in means.items():
        rho = log_scales[name]
        s2 = jnp.exp(2 * rho)
        a = 1.0 - 0.5 / s2
        var = 0.5 / a
        mean = -m * var / s2
        log_c = log_c + jnp.sum(rho + 0.5 * jnp.log(var) + a * mean**2 + m**2 / (2 * s2))
        reflected_means[name] = mean
        reflected_log_scales[name] = 0.5 * jnp.log(var)
    return log_c + mechanistic_log_probability(ctx, problem, reflected_means, reflected_log_scales, key=key)


def minimize_second_moment(ctx: Context, *, init: tuple[dict, dict], steps: int = 400,
                           learning_rate: float = 0.02, key: jax.Array, min_scale: float = 0.75,
                           fit_scale: bool = True):
    """The ``q`` that minimizes the mechanistic second moment of the importance weights."""
    if min_scale <= math.sqrt(0.5):
        raise ValueError(f"min_scale must exceed 1/sqrt(2) for the second moment to exist, got {min_scale}")
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(learning_rate))
    floor = math.log(min_scale)

    def step(problem, state, i):
        params, opt_state = state
        value, grads = jax.value_and_grad(lambda p: second_moment_log(ctx, problem, *p, key=key))(params)
        if not fit_scale:
            grads = (grads[0], jax.tree.map(jnp.zeros_like, grads[1]))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        means, log_scales = optax.apply_updates(params, updates)
        log_scales = jax.tree.map(lambda r: jnp.maximum(r, floor), log_scales)
        return ((means, log_scales), opt_state), {"log_second_moment": value}

    init = (init[0], jax.tree.map(lambda r: jnp.maximum(r, floor), init[1]))
    (params, _), history = _run_scan(ctx, f"tilt-variance-{steps}", step, (init, optimizer.init(init)), steps)
    return params, history
