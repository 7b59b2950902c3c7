"""Proposal ``"mhis"``: Metropolis-Hastings importance sampling, after ARC (2024).

ARC's MHIS (``lpe/methods.py``) runs Markov chains on the tempered target
``pi(x) ∝ p(x) exp(s(x)/T)`` and reweights by ``exp(-s/T)``:

    P[C] = Z E_pi[1_C exp(-s/T)],    Z = E_p[exp(s/T)].

Everything hinges on the normaliser ``Z``. Two ways to get it:

* ``normaliser="annealed"`` (default, honest and unbiased): annealed importance
  sampling (Neal 2001). Each particle starts from ``p`` and passes through
  ``pi_j ∝ p exp(lambda_j g(s))``, ``0 = lambda_0 < ... < lambda_J = 1/T``, with
  Metropolis-Hastings moves that leave ``pi_j`` invariant; its weight
  ``W = prod_j exp((lambda_j - lambda_{j-1}) g(s(x_{j-1})))`` has ``E[W h(x_J)] =
  Z E_pi[h]`` exactly, so ``W exp(-g(s(x_J))/T) 1_C(x_J)`` is an unbiased
  estimate of ``P[C]``. Particles are resampled by their incremental weights at
  every level (an SMC sampler; the product of the levels' mean weights stays an
  unbiased estimate of ``Z``, Del Moral 2004), and ``num_replicas`` independent
  runs give the standard error. The same identity holds for any other site,
  but its weights ``exp(-g/T)`` are astronomically large in the bulk of ``p``,
  which the last target hardly visits, so other sites are estimated by plain
  Monte Carlo over the runs' initial draws from ``p`` (a note says so). The tempering uses the score
  capped at the boundary, ``g(s) = min(s, 0)``: beyond the boundary the target is
  ``p`` itself (no push deeper into the catastrophe, and the final reweighting
  factor is 1 on it), and for large ``1/T`` the last target approaches
  ``p | C``, the zero-variance proposal.
* ``normaliser="chains"`` (ARC's): ``1/Z ≈ mean_pi exp(-s/T)`` from the same
  chains, with the raw score; a ratio estimator, consistent but not unbiased,
  with a standard error across independent chains. It is only as good as the
  chains' visits to the *bulk* of ``p``, whose ``exp(-s/T)`` is huge: with an
  unbounded score (a margin under a Gaussian input) and a small ``T`` it can be
  wrong by orders of magnitude while looking precise. Kept for comparison.

Moves (Metropolis-Hastings steps for the current target):

* continuous sites: MALA (Langevin proposals, gradient of the score) in
  standard coordinates; its step is tuned level by level (or during burn-in)
  towards ``target_acceptance`` -- ARC's moves use the score's gradient too;
* discrete sites: ARC's move -- pick an element ``i`` uniformly, propose ``v`` with
  probability ``∝ p_i(v) exp(lambda score_i(v))`` from first-order score changes
  at the current state (``_relax``), corrected by the reverse proposal computed
  at the proposed state.

``temperature=None``: ``1/T = 4 (-mean_p s) / var_p(s)`` from a pilot batch
(annealed; for a linear score under a Gaussian that is 4x the tilt that centres
``p exp(s/T)`` on the boundary), or that centring tilt walked during burn-in
towards ``target_fraction`` of chain states in the catastrophe (chains).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ppl_mech._intervals import student_interval
from ppl_mech._result import SiteResult

from ._ams import dominant_replica_note
from ._engine import (
    Context,
    effective_sample_size,
    nonfinite_note,
    pareto_khat,
    plain_monte_carlo,
    widen_where_no_event,
)


def _set_element(k: jax.Array, position, value) -> jax.Array:
    return jnp.reshape(jnp.reshape(k, (-1,)).at[position].set(value), k.shape)


def _select(accept, new, old):
    return jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)


class _Moves:
    """Metropolis-Hastings moves for ``p(x) exp(lam g(s(x)))``, one chain (vmapped by callers)."""

    def __init__(self, ctx: Context, capped: bool, exact: bool):
        self.ctx, self.capped, self.exact = ctx, capped, exact

    def g(self, s):
        return jnp.minimum(s, 0.0) if self.capped else s

    def evaluate(self, problem, z, k):
        return problem.evaluate(problem.space.values(z, k))

    def evaluate_grad(self, problem, z, k):
        """``(outputs, detector, s, d g(s) / d z)``."""

        def f(z):
            out, c, s = problem.evaluate(problem.space.values(z, k))
            return self.g(s), (out, c, s)

        grad, (out, c, s) = jax.grad(f, has_aux=True)(z)
        return out, c, s, grad

    def start(self, problem, key):
        z, k = problem.space.prior_point(key)
        if problem.space.continuous:
            out, c, s, grad = self.evaluate_grad(problem, z, k)
        else:
            (out, c, s), grad = self.evaluate(problem, z, k), {}
        return z, k, out, c, s, grad

    def step(self, problem, chain, key, lam, log_step):
        z, k, out, c, s, grad = chain
        accept_c = jnp.zeros((), bool)
        key_c, key_d = jax.random.split(key)
        if problem.space.continuous:
            # MALA in standard coordinates on log pi(z) = -|z|^2/2 + lam g(s(z))
            k1, k2 = jax.random.split(key_c)
            eps = jnp.exp(log_step)
            drift = jax.tree.map(lambda zz, gg: zz + 0.5 * eps**2 * (-zz + lam * gg), z, grad)
            noise = {n: jax.random.normal(jax.random.fold_in(k1, i), v.shape)
                     for i, (n, v) in enumerate(z.items())}
            z_new = jax.tree.map(lambda d, e: d + eps * e, drift, noise)
            out_new, c_new, s_new, grad_new = self.evaluate_grad(problem, z_new, k)
            back = jax.tree.map(lambda zz, gg: zz + 0.5 * eps**2 * (-zz + lam * gg), z_new, grad_new)

            def sq(tree):
                return sum(jnp.sum(v**2) for v in jax.tree.leaves(tree))

            log_pi = -0.5 * sq(z) + lam * self.g(s)
            log_pi_new = -0.5 * sq(z_new) + lam * self.g(s_new)
            log_fwd = -sq(jax.tree.map(jnp.subtract, z_new, drift)) / (2 * eps**2)
            log_rev = -sq(jax.tree.map(jnp.subtract, z, back)) / (2 * eps**2)
            log_a = log_pi_new - log_pi + log_rev - log_fwd
            accept_c = jnp.log(jax.random.uniform(k2)) < jnp.where(jnp.isnan(log_a), -jnp.inf, log_a)
            z, out = _select(accept_c, z_new, z), _select(accept_c, out_new, out)
            grad = _select(accept_c, grad_new, grad)
            c, s = jnp.where(accept_c, c_new, c), jnp.where(accept_c, s_new, s)
        accepted_d = []
        for i, (name, site) in enumerate(problem.space.discrete.items()):
            k_pos, k_val, k_acc = jax.random.split(jax.random.fold_in(key_d, i), 3)
            size = math.prod(site.shape)
            position = jax.random.randint(k_pos, (), 0, size)
            log_p = jnp.reshape(site.log_p, (size, -1))[position]
            current = jnp.reshape(k[name], (-1,))[position]
            fwd = problem.discrete_changes(z, k, exact=self.exact, site=name, position=position)[name]
            fwd_logits = jax.nn.log_softmax(log_p + lam * (self.g(s + fwd) - self.g(s)))
            value = jax.random.categorical(k_val, fwd_logits)
            k_new = {**k, name: _set_element(k[name], position, value)}
            out_new, c_new, s_new = self.evaluate(problem, z, k_new)
            rev = problem.discrete_changes(z, k_new, exact=self.exact, site=name, position=position)[name]
            rev_logits = jax.nn.log_softmax(log_p + lam * (self.g(s_new + rev) - self.g(s_new)))
            log_a = (lam * (self.g(s_new) - self.g(s)) + log_p[value] - log_p[current]
                     + rev_logits[current] - fwd_logits[value])
            accept = jnp.log(jax.random.uniform(k_acc)) < log_a
            accepted_d.append(accept)
            k, out = _select(accept, k_new, k), _select(accept, out_new, out)
            c, s = jnp.where(accept, c_new, c), jnp.where(accept, s_new, s)
        if problem.space.continuous and problem.space.discrete:
            grad = self.evaluate_grad(problem, z, k)[3]  # k may have moved
        # the continuous acceptance tunes the MALA step; without continuous sites, report the discrete one
        acceptance = accept_c if problem.space.continuous else jnp.mean(jnp.stack(accepted_d).astype(float))
        return (z, k, out, c, s, grad), acceptance

    def sweep(self, problem, chains, key, lam, log_step):
        n = chains[3].shape[0]
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(n))
        return jax.vmap(lambda ch, kk: self.step(problem, ch, kk, lam, log_step))(chains, keys)


def run_mhis(
    ctx: Context,
    *,
    num_samples: int,
    normaliser: str = "annealed",
    temperature: float | None = None,
    num_levels: int = 32,
    steps_per_level: int = 2,
    num_replicas: int = 4,
    num_chains: int = 16,
    burn_in_fraction: float = 0.5,
    step_size: float = 0.5,
    target_acceptance: float = 0.57,
    target_fraction: float = 0.5,
    adapt_rate: float = 0.3,
    discrete_scores: str = "gradient",
):
    """MHIS with an annealed (default) or chain-based normaliser; ``num_samples`` evaluations in all.

    Args:
        normaliser: ``"annealed"`` (unbiased, see the module docstring) or ``"chains"`` (ARC).
        temperature: ``T`` (fixed), or ``None`` to choose it.
        num_levels, steps_per_level: the annealing ladder ``lambda_j = (j/J)^2 / T`` and
            Metropolis-Hastings sweeps per level (annealed).
        num_replicas: independent annealed runs (the standard error is computed across them).
        num_chains, burn_in_fraction: independent chains and the share of their steps
            spent on burn-in and tuning (chains).
        step_size: initial MALA step (standard coordinates), > 0.
        target_acceptance: MALA acceptance rate aimed at (0.57, Roberts & Rosenthal 1998).
        target_fraction: catastrophe fraction aimed at by the automatic temperature (chains).
        adapt_rate: step of the burn-in adaptation of ``log T`` and ``log beta`` (chains).
        discrete_scores: ``"gradient"`` (ARC) or ``"exact"`` score changes for discrete moves.
    """
    if normaliser not in ("annealed", "chains"):
        raise ValueError(f"normaliser must be 'annealed' or 'chains', got {normaliser!r}")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not step_size > 0:
        raise ValueError(f"step_size (MALA step) must be > 0, got {step_size}")
    if discrete_scores not in ("gradient", "exact"):
        raise ValueError(f"discrete_scores must be 'gradient' or 'exact', got {discrete_scores!r}")
    moves = _Moves(ctx, capped=normaliser == "annealed", exact=discrete_scores == "exact")
    if normaliser == "annealed":
        return _annealed(ctx, moves, num_samples=num_samples, temperature=temperature,
                         num_levels=int(num_levels), steps_per_level=int(steps_per_level),
                         step_size=step_size, target_acceptance=target_acceptance,
                         num_replicas=int(num_replicas))
    return _chains(ctx, moves, num_samples=num_samples, temperature=temperature, num_chains=int(num_chains),
                   burn_in_fraction=burn_in_fraction, step_size=step_size,
                   target_acceptance=target_acceptance, target_fraction=target_fraction,
                   adapt_rate=adapt_rate)


def _moves_per_step(ctx: Context) -> int:
    space = ctx.problem(ctx.dynamic).space
    return int(bool(space.continuous)) + len(space.discrete)


def _pilot_inverse_temperature(ctx: Context, moves: _Moves, factor: float, size: int = 256):
    """``factor * (-mean_p s) / var_p(s)`` from ``size`` draws from ``p``."""

    def pilot(dynamic, key):
        problem = ctx.problem(dynamic)
        chains = jax.vmap(lambda i: moves.start(problem, jax.random.fold_in(key, i)))(jnp.arange(size))
        s = chains[4]
        return factor * jnp.maximum(-jnp.mean(s), 1e-3) / jnp.maximum(jnp.var(s), 1e-12)

    return ctx.meter("mhis-pilot", pilot, ctx.dynamic, ctx.key(19), evaluations=size)


def _annealed(ctx, moves, *, num_samples, temperature, num_levels, steps_per_level, step_size,
              target_acceptance, num_replicas):
    if num_levels < 1 or steps_per_level < 1:
        raise ValueError(f"num_levels and steps_per_level must be >= 1, got {num_levels}, {steps_per_level}")
    if num_replicas < 2:
        raise ValueError("num_replicas must be >= 2 (the standard error is computed across them)")
    per_move = _moves_per_step(ctx)
    pilot = 0 if temperature is not None else 256
    cost_per_particle = 1 + num_levels * steps_per_level * per_move
    particles = max(8, (num_samples - pilot) // (cost_per_particle * num_replicas))
    if temperature is None:
        lam_max = _pilot_inverse_temperature(ctx, moves, 4.0, pilot)
    else:
        lam_max = jnp.asarray(1.0 / temperature, jnp.float32)
    sites = list(ctx.sites)

    def replica(problem, lam_max, key):
        chains = jax.vmap(lambda i: moves.start(problem, jax.random.fold_in(key, i)))(jnp.arange(particles))
        initial = {n: chains[2][n] for n in sites}
        ladder = lam_max * (jnp.arange(num_levels + 1) / num_levels) ** 2

        def level(carry, j):
            chains, log_z, log_step = carry
            key_j = jax.random.fold_in(key, j)
            # incremental weights use the states *before* this level's moves; resample by them
            inc = (ladder[j] - ladder[j - 1]) * moves.g(chains[4])
            log_z = log_z + jax.nn.logsumexp(inc) - math.log(particles)
            ess = jnp.exp(2 * jax.nn.logsumexp(inc) - jax.nn.logsumexp(2 * inc)) / particles
            index = jax.random.categorical(jax.random.fold_in(key_j, 1 << 20), inc, shape=(particles,))
            chains = jax.tree.map(lambda a: a[index], chains)

            def sweep(carry, m):
                chains, accepted = carry
                chains, acc = moves.sweep(problem, chains, jax.random.fold_in(key_j, m), ladder[j], log_step)
                return (chains, accepted + jnp.mean(acc)), None

            (chains, accepted), _ = jax.lax.scan(sweep, (chains, 0.0), jnp.arange(steps_per_level))
            rate = accepted / steps_per_level
            if problem.space.continuous:  # tune the next level's step from this level's acceptance
                log_step = jnp.clip(log_step + (rate - target_acceptance), jnp.log(0.02), jnp.log(2.0))
            return (chains, log_z, log_step), (rate, ess)

        start = (chains, jnp.zeros(()), jnp.log(jnp.asarray(step_size, jnp.float32)))
        (chains, log_z, _), (rates, level_ess) = jax.lax.scan(level, start, jnp.arange(1, num_levels + 1))
        _, _, out, c, s, _ = chains
        # unnormalized estimate: Z_hat * mean_i h_i f_i, with h = exp(-lam g(s))
        log_terms = log_z - lam_max * moves.g(s) - math.log(particles) - math.log(num_replicas)
        return log_terms, log_z, {n: out[n] for n in sites}, c, (rates, jnp.min(level_ess)), initial

    def run(dynamic, lam_max, key):
        problem = ctx.problem(dynamic)
        return jax.vmap(lambda r: replica(problem, lam_max, jax.random.fold_in(key, r)))(
            jnp.arange(num_replicas)
        )

    log_terms, log_z, out, c, rates, initial = ctx.meter(
        "mhis-annealed", run, ctx.dynamic, lam_max, ctx.key(22),
        evaluations=num_replicas * particles * cost_per_particle,
        loop_iterations=num_levels * steps_per_level,
    )
    log_terms, log_z, out, c, (rates, level_ess), initial = jax.device_get(
        (log_terms, log_z, out, c, rates, initial))
    weakest_level = float(np.min(level_ess))
    log_terms = np.asarray(log_terms, np.float64)  # (replicas, particles)
    shift = float(np.max(log_terms))
    h = np.exp(log_terms - shift)
    lam = float(lam_max)
    flat = log_terms.ravel()
    common = {
        "num_samples": particles * num_replicas,
        "num_replicas": num_replicas,
        "temperature": 1.0 / lam,
        "num_levels": num_levels,
        "acceptance": float(np.mean(rates)),
        "ess": effective_sample_size(flat),
        "khat": pareto_khat(flat),
        "log_normaliser": np.asarray(log_z, np.float64),
        "min_level_ess": weakest_level,
    }
    kept = min(ctx.keep_draws, flat.size)
    if ctx.keep_draws:
        common["log_weights"] = flat[:kept]
    cost = ctx.meter.cost()
    results = {}
    for name, site in ctx.sites.items():
        if name != ctx.target:
            # exp(-lam g) is astronomically large in the bulk of p, which the last target
            # hardly visits: unbiased, but useless for sites other than the target
            draws = np.reshape(np.asarray(initial[name]), (-1,) + site.shape)
            results[name] = plain_monte_carlo(
                site, draws, level=ctx.level, cost=cost, method="importance[mhis]",
                keep_draws=ctx.keep_draws, extra=common,
                note=f"mhis: site {name!r} is not the target; plain Monte Carlo over the {draws.shape[0]} "
                "initial draws from p",
            )
            continue
        f = np.asarray(out[name], np.float64)  # (replicas, particles, *shape)
        per_replica = np.sum(h.reshape(h.shape + (1,) * (f.ndim - 2)) * f, axis=1) * num_replicas
        with np.errstate(over="ignore", invalid="ignore"):  # exp(shift) may overflow: inf, noted
            scale = np.exp(np.float64(shift))
            value = per_replica.mean(axis=0) * scale
            stderr = per_replica.std(axis=0, ddof=1) / math.sqrt(num_replicas) * scale
        lo, hi = student_interval(value, stderr, num_replicas - 1, ctx.level)
        diag = dict(common)
        if ctx.keep_draws:
            diag["draws"] = np.reshape(np.asarray(out[name]), (-1,) + f.shape[2:])[:kept]
        warnings = collapse_notes(np.reshape(per_replica, (num_replicas, -1)))
        if weakest_level < max(DEGENERATE_LEVEL_ESS, 2.0 / particles):  # or fewer than 2 particles
            lo, hi = np.zeros_like(lo), np.ones_like(hi)  # the target is a probability
            warnings += (degenerate_note(weakest_level, particles),)
        if not np.all(np.isfinite(value)):
            warnings += (nonfinite_note(name, "mhis"),)
        if site.is_boolean:
            lo, hi = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
            diag["events"] = np.sum(np.asarray(out[name]), axis=(0, 1))
            hi, unseen = widen_where_no_event(name, diag["events"], hi,
                                              f"the final particles of the {num_replicas} runs")
            warnings += unseen
            lost = (np.asarray(diag["events"]) > 0) & (np.asarray(value) == 0)
            if np.any(lost):  # events seen, but their weights underflowed
                hi = np.where(lost, 1.0, hi)
                warnings += (f"{name}: final particles are events but their weights underflowed to 0 "
                             "(the tempered normaliser left float range; exp(4 x) > e^20 did this); the "
                             "estimate 0 is uninformative and its interval is [0, 1]",)
        results[name] = SiteResult(
            value, stderr, (lo, hi), diag, cost, "importance[mhis]", site.is_boolean,
            (f"mhis (annealed): {num_replicas} independent SMC runs of {particles} particles through "
             f"{num_levels} levels x {steps_per_level} sweeps up to 1/T = {lam:.3g} on the capped score "
             "min(s, 0), resampling every level; unbiased, standard error across runs",) + warnings,
        )
    return results


DEGENERATE_LEVEL_ESS = 0.02
"""A tempering step whose incremental weights keep less than this share of the particles
(effective sample size) has collapsed onto a few of them: the score's scale dwarfs the
ladder (e.g. a detector margin exp(x0 + x1) - 2390, whose run returned 3e-217 for 1.9e-8
with an interval claiming precision, 0.4% at its worst step); healthy runs kept 64-91%
(a 1-D halfspace and the 12 random-MLP thresholds of ``bench rare``)."""


def degenerate_note(share: float, particles: int) -> str:
    return (f"mhis: a tempering step kept an effective {share:.1%} of its {particles} particles: the "
            "ladder is far too coarse for the score's scale, so the estimate is meaningless and the "
            "interval is the trivial one; pass temperature= (larger) or use proposal='ams', whose "
            "levels do not depend on the score's scale")


def collapse_notes(per_replica: np.ndarray) -> tuple[str, ...]:
    """A note when one annealed run holds most of the total (``dominant_replica_note``).

    The runs are unbiased but heavy-tailed when they collapse onto different event
    regions (the built-in k-CNF: one run held 63-87% and the estimates were 0.25x-26x
    at z = -5.5..1.2), so the standard error across 4 runs understates the error. The
    final weights' ESS is no such signal: healthy runs on a 1e-6 halfspace had ESS 3-13 of 248.
    """
    totals = np.sum(per_replica, axis=1)
    dominant = dominant_replica_note(totals, "mhis") if np.all(totals >= 0) else None
    return (dominant,) if dominant else ()


def _chains(ctx, moves, *, num_samples, temperature, num_chains, burn_in_fraction, step_size,
            target_acceptance, target_fraction, adapt_rate):
    if num_chains < 2:
        raise ValueError("num_chains must be >= 2 (the standard error is computed across chains)")
    per_move = _moves_per_step(ctx)
    total_steps = max(4, num_samples // (num_chains * per_move))
    burn = max(1, int(burn_in_fraction * total_steps))
    steps = max(1, total_steps - burn)
    sites = list(ctx.sites)
    if temperature is None:
        lam0 = _pilot_inverse_temperature(ctx, moves, 1.0, 256)
    else:
        lam0 = jnp.asarray(1.0 / temperature, jnp.float32)
    fixed = temperature is not None

    def burn_in(dynamic, lam0, key):
        problem = ctx.problem(dynamic)
        chains = jax.vmap(lambda i: moves.start(problem, jax.random.fold_in(key, i)))(jnp.arange(num_chains))
        log_lam0 = jnp.log(lam0)

        def body(carry, i):
            chains, log_lam, log_step = carry
            chains, acc = moves.sweep(problem, chains, jax.random.fold_in(key, i + 1), jnp.exp(log_lam),
                                      log_step)
            rate = adapt_rate / jnp.sqrt(1.0 + i / 10.0)
            if not fixed:
                # only once the chains had time to reach the tempered target (second half)
                fraction = jnp.mean(chains[3].astype(jnp.float32))
                walked = jnp.clip(log_lam - rate * (fraction - target_fraction), log_lam0 - 4, log_lam0 + 4)
                log_lam = jnp.where(i >= burn // 2, walked, log_lam)
            if problem.space.continuous:
                log_step = jnp.clip(log_step + rate * (jnp.mean(acc) - target_acceptance), jnp.log(0.02),
                                    jnp.log(2.0))
            return (chains, log_lam, log_step), None

        start = (chains, log_lam0, jnp.log(jnp.asarray(step_size, jnp.float32)))
        (chains, log_lam, log_step), _ = jax.lax.scan(body, start, jnp.arange(burn))
        return chains, log_lam, log_step

    def sample(dynamic, chains, log_lam, log_step, key):
        problem = ctx.problem(dynamic)
        lam = jnp.exp(log_lam)
        shift = jnp.median(chains[4])

        def body(carry, i):
            chains, sums = carry
            chains, acc = moves.sweep(problem, chains, jax.random.fold_in(key, i), lam, log_step)
            _, _, out, c, s, _ = chains
            w = jnp.exp(-(s - shift) * lam)  # (chains,)
            new = {"den": sums["den"] + w}
            for name in sites:
                f = out[name].astype(jnp.float32)
                new[name] = sums[name] + w.reshape((-1,) + (1,) * (f.ndim - 1)) * f
            return (chains, new), (c, s, acc)

        out = chains[2]
        sums = {"den": jnp.zeros(num_chains)}
        for name in sites:
            sums[name] = jnp.zeros(out[name].shape, jnp.float32)
        (chains, sums), (c, s, acc) = jax.lax.scan(body, (chains, sums), jnp.arange(steps))
        return chains, sums, c, s, acc, shift

    meter = ctx.meter
    chains, log_lam, log_step = meter("mhis-burn-in", burn_in, ctx.dynamic, lam0, ctx.key(21),
                                      evaluations=num_chains * (1 + burn * per_move), loop_iterations=burn)
    chains, sums, c, s, acc, shift = meter(
        "mhis-sample", sample, ctx.dynamic, chains, log_lam, log_step, ctx.key(22),
        evaluations=steps * num_chains * per_move, loop_iterations=steps,
    )
    chains, sums, c, s, acc = jax.device_get((chains, sums, c, s, acc))
    lam = float(np.exp(log_lam))
    den = np.asarray(sums["den"], np.float64) / steps  # per-chain mean of exp(-(s - shift)/T)
    log_w = -(np.asarray(s, np.float64) - float(shift)) * lam
    common = {
        "num_samples": steps * num_chains,
        "num_chains": num_chains,
        "temperature": 1.0 / lam,
        "mala_step": float(np.exp(log_step)),
        "acceptance": float(np.mean(acc)),
        "ess": effective_sample_size(log_w),
        "khat": pareto_khat(log_w),
        "chain_catastrophe_fraction": float(np.mean(c)),
    }
    out_final, s_final = chains[2], chains[4]
    kept = min(ctx.keep_draws, num_chains)
    if ctx.keep_draws:
        common["log_weights"] = -(np.asarray(s_final, np.float64)[:kept] - float(shift)) * lam
    cost = ctx.meter.cost()
    results = {}
    for name, site in ctx.sites.items():
        num = np.asarray(sums[name], np.float64) / steps  # (chains, *shape)
        ratio = num.sum(axis=0) / den.sum()
        # delta method over independent chains: var(mean(num) - R mean(den)) / mean(den)^2
        resid = num - ratio * den.reshape((-1,) + (1,) * (num.ndim - 1))
        stderr = np.sqrt(np.var(resid, axis=0, ddof=1) / num_chains) / den.mean()
        lo, hi = student_interval(ratio, stderr, num_chains - 1, ctx.level)
        diag = dict(common)
        if ctx.keep_draws:
            diag["draws"] = np.asarray(out_final[name])[:kept]
        if site.is_boolean:
            lo, hi = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
        if name == ctx.target:
            diag["events"] = int(np.sum(c))
        results[name] = SiteResult(
            ratio, stderr, (lo, hi), diag, cost, "importance[mhis]", site.is_boolean,
            (f"mhis (chains): {num_chains} chains x {steps} steps after {burn} burn-in steps at "
             f"T = {1 / lam:.3g}; ratio estimator (normaliser from the same chains, ARC), standard "
             "error across chains",),
        )
    return results
