"""Proposal ``"ams"``: adaptive multilevel splitting (subset simulation) on the detector's score.

Generalized AMS (Cerou & Guyader 2007; Brehier, Gazeau, Goudenege, Lelievre &
Rousset 2016, "Unbiasedness of some generalized adaptive multilevel splitting
algorithms"), for a static rare event ``C`` with score ``s`` (``C => s >= 0``):

1. draw ``N`` particles from ``p``;
2. level ``L`` = the ``k``-th smallest score (``k = kill_fraction * N``); if
   ``L >= 0`` stop; kill *every* particle with ``s <= L`` (``K >= k`` of them when
   there are ties, e.g. clones that have not moved yet); multiply the estimate
   by ``1 - K/N``. Scores are ordered together with an auxiliary ``U(0, 1)`` per
   particle (lexicographically, resampled by the moves like any input), so a
   discrete score's plateaus do not kill the whole population at once;
3. replace each killed particle by a copy of a survivor chosen uniformly, and
   move the copy with ``mcmc_steps`` Metropolis steps that leave ``p`` restricted
   to ``{s > L}`` invariant: a ``p``-reversible proposal (preconditioned
   Crank-Nicolson in standard coordinates for continuous sites, redrawing a few
   elements from ``p`` for discrete sites, a fresh ``U``), accepted iff
   ``(s, U)`` stays above the level;
4. repeat; at the end ``P[C] = prod (1 - K_j/N) * (1/N) sum 1_C(x_i)``.

Counting every tie as killed keeps the level bookkeeping exact (Brehier et al.
2016); with *exact* conditional draws in step 3 the estimator is unbiased
(Guyader, Hengartner & Matzner-Lober 2011). With a few Metropolis steps the
regenerated particles stay correlated with their parents, which biases the
estimate low by O(1/N): measured on ``halfspaces`` (P = 9.0e-7), about -70% at
N = 32 particles per replica and within one standard error at N = 246. The
estimate is consistent; raise ``num_particles``/``mcmc_steps`` for accuracy.
Where the event is a union of many separate regions (deep, narrow ReLU
networks) the replicas' estimates are heavy-tailed at small N: on a 64x8 ReLU
MLP (P = 7.6e-9) with 129 particles and 5 steps, 16 replicas had a relative
variance of 3.9 (a few replicas find rich regions, most miss them), against
0.06 on a 128x2 MLP at the same cost, where the splitting variance is at its
ideal ``-log P / N``. A replica that holds most of the total gets a note.
``num_replicas`` independent runs (vmapped) give the standard error from their
spread (with few replicas that standard error is itself rough, so it is never
taken below the ideal-splitting one, ``ideal_stderr``). The pCN step is tuned between levels from
the previous level's acceptance. Only the target site gets the splitting
estimate; every other site is estimated by plain Monte Carlo from the
replicas' initial i.i.d. populations (a note says so).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ppl_mech._errors import ModelError
from ppl_mech._intervals import student_interval
from ppl_mech._result import SiteResult

from ._engine import Context, effective_sample_size, plain_monte_carlo, widen_where_no_event
from ._mcmc import num_discrete_elements, pcn_move, resample_move
from ._score import check_score_implies

PILOT_PARTICLES = 16
PILOT_REPLICAS = 2
PILOT_MARGIN = 1.1  # levels beyond the pilot's guess: its log(1/P) is itself noisy
MIN_PARTICLES = 32


def run_ams(
    ctx: Context,
    *,
    num_samples: int,
    num_particles: int | None = None,
    num_replicas: int = 4,
    kill_fraction: float = 0.1,
    mcmc_steps: int = 5,
    step_size: float = 0.5,
    resample_fraction: float | None = None,
    max_levels: int = 2000,
):
    """Adaptive multilevel splitting of the target site; other sites from the initial populations.

    Args:
        num_particles: particles per replica (default: sized by a small pilot run so that
            the whole run, pilot included, costs about ``num_samples`` evaluations; the
            true cost, which grows with ``log(1/P)``, is reported in ``cost.evaluations``).
        num_replicas: independent runs (standard error across them; >= 2).
        kill_fraction: share of the particles killed per level (``k/N``).
        mcmc_steps: Metropolis steps per regenerated particle.
        step_size: initial pCN ``beta`` in (0, 1].
        resample_fraction: share of discrete elements redrawn per step (default ``min(0.5, 2/D)``).
        max_levels: cap on levels per run (an error if a run has not finished by then).
    """
    if not 0 < kill_fraction < 1:
        raise ValueError(f"kill_fraction must be in (0, 1), got {kill_fraction}")
    if int(num_replicas) < 2:
        raise ValueError("num_replicas must be >= 2 (the standard error is computed across them)")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size (pCN beta) must be in (0, 1], got {step_size}")
    if int(mcmc_steps) < 1:
        raise ValueError(f"mcmc_steps must be >= 1, got {mcmc_steps}")
    replicas = int(num_replicas)
    steps = int(mcmc_steps)
    problem = ctx.problem(ctx.dynamic)
    space = problem.space
    d_discrete = num_discrete_elements(space)
    fraction = resample_fraction if resample_fraction is not None else min(0.5, 2.0 / max(d_discrete, 1))
    sites = list(ctx.sites)

    def splitting(n: int, replicas: int, key) -> dict:
        """``replicas`` independent AMS runs of ``n`` particles; FLOPs and evaluations metered."""
        kill = max(1, int(round(kill_fraction * n)))
        buffer = kill  # one pass per level unless ties kill more
        return _splitting(ctx, sites, n, kill, buffer, replicas, steps, step_size, fraction, max_levels,
                          key)

    pilot_note = ""
    if num_particles is None:
        n, pilot_note = _size_particles(splitting, num_samples, replicas, kill_fraction, steps)
    else:
        n = int(num_particles)
    out = splitting(n, replicas, ctx.key(30))
    if not np.all(out["done"]):
        raise ModelError(
            f"ams: {int(np.sum(~out['done']))} replica(s) did not reach the catastrophe level within "
            f"max_levels={max_levels} levels; raise max_levels or kill_fraction (or the detector's "
            "score is NaN on part of the space, e.g. sqrt or log of a negative value)"
        )
    check_score_implies(out["final_c"], out["final_s"], ctx.target)
    return _results(ctx, out, n, replicas, kill_fraction, steps, pilot_note)


def _size_particles(splitting, num_samples: int, replicas: int, kill_fraction: float,
                    steps: int) -> tuple[int, str]:
    """Particles per replica so that the whole run costs about ``num_samples`` evaluations.

    A run's cost is ``N (1 + kill_fraction * steps * levels)`` per replica and
    ``levels ~ log(1/P) / -log(1 - kill_fraction)`` grows with the unknown
    ``log(1/P)``; a pilot (2 replicas of 16 particles, its cost counted, its
    estimate discarded) measures ``log(1/P)`` first.
    """
    pilot = splitting(PILOT_PARTICLES, PILOT_REPLICAS, None)
    spent = int(np.sum(pilot["evaluations"]))
    log_factors = np.asarray(pilot["log_factor"], np.float64)
    if np.all(pilot["done"]) and not np.any(pilot["extinct"]):
        log_inverse_p = float(-np.mean(log_factors))
        source = (f"pilot ({PILOT_REPLICAS}x{PILOT_PARTICLES} particles, {spent} evaluations) found "
                  f"log(1/P) ~ {log_inverse_p:.1f}")
    else:
        log_inverse_p = math.log(1e9)
        source = f"pilot ({spent} evaluations) did not finish; sized for P ~ 1e-9"
    levels = max(1.0, log_inverse_p / -math.log1p(-kill_fraction))
    per_particle = 1 + kill_fraction * steps * levels * PILOT_MARGIN
    remaining = max(num_samples - spent, 0)
    n = max(MIN_PARTICLES, int(remaining / (replicas * per_particle)))
    return n, f"{source}; {n} particles per replica for num_samples={num_samples}"


def _splitting(ctx, sites, n, kill, buffer, replicas, steps, step_size, fraction, max_levels, key):

    def replica(problem, key):
        k_init, k_loop = jax.random.split(key)

        def start(i):
            z, kk = problem.space.prior_point(jax.random.fold_in(k_init, i))
            out, c, s = problem.evaluate(problem.space.values(z, kk))
            return z, kk, c, s, out

        z, kk, c, s, out = jax.vmap(start)(jnp.arange(n))
        # an independent U(0, 1) per particle breaks ties of the score (lexicographic order)
        u = jax.random.uniform(jax.random.fold_in(k_init, n), (n,))
        initial = {name: out[name] for name in sites}

        def regenerate(state, level, survivors, key, beta):
            """Regenerate up to ``buffer`` of the killed particles (not yet redone) from ``survivors``."""
            z, kk, c, s, u, todo, accepted, evaluations = state
            level_s, level_u = level
            order = jnp.argsort(~todo)  # killed-and-not-redone first
            slots = order[:buffer]
            active = todo[slots]
            k_parent, k_move = jax.random.split(key)
            parents = jax.random.categorical(
                k_parent, jnp.where(survivors, 0.0, -jnp.inf), shape=(buffer,)
            )
            pz = jax.tree.map(lambda a: a[parents], z)
            pk = jax.tree.map(lambda a: a[parents], kk)
            pc, ps, pu = c[parents], s[parents], u[parents]

            def move(carry, m):
                pz, pk, pc, ps, pu, acc, used = carry
                key_m = jax.random.fold_in(k_move, m)
                nz = pcn_move(pz, jax.random.fold_in(key_m, 0), beta) if problem.space.continuous else pz
                nk = jax.vmap(lambda kk_, kkey: resample_move(problem.space, kk_, kkey, fraction))(
                    pk, jax.random.split(jax.random.fold_in(key_m, 1), buffer)
                ) if problem.space.discrete else pk
                nc, ns = jax.vmap(lambda a, b: problem.point_score(a, b))(nz, nk)
                nu = jax.random.uniform(jax.random.fold_in(key_m, 2), (buffer,))
                ok = (ns > level_s) | ((ns == level_s) & (nu > level_u))
                sel = lambda new, old: jax.tree.map(  # noqa: E731
                    lambda x, y: jnp.where(ok.reshape((-1,) + (1,) * (x.ndim - 1)), x, y), new, old
                )
                return (sel(nz, pz), sel(nk, pk), jnp.where(ok, nc, pc), jnp.where(ok, ns, ps),
                        jnp.where(ok, nu, pu), acc + jnp.sum(ok & active), used + buffer), None

            (pz, pk, pc, ps, pu, acc, used), _ = jax.lax.scan(
                move, (pz, pk, pc, ps, pu, 0, 0), jnp.arange(steps)
            )

            def put(full, part):
                mask = active.reshape((-1,) + (1,) * (part.ndim - 1))
                return full.at[slots].set(jnp.where(mask, part, full[slots]))

            z = jax.tree.map(put, z, pz)
            kk = jax.tree.map(put, kk, pk)
            c, s, u = put(c, pc), put(s, ps), put(u, pu)
            todo = todo.at[slots].set(False)
            return z, kk, c, s, u, todo, accepted + acc, evaluations + used

        def level_body(state):
            z, kk, c, s, u, log_factor, beta, count, done, evaluations, extinct = state
            index = jnp.lexsort((u, s))[kill - 1]
            level = (s[index], u[index])
            finished = level[0] >= 0
            killed = (s < level[0]) | ((s == level[0]) & (u <= level[1]))
            k_j = jnp.sum(killed)
            extinct_now = (k_j >= n) & ~finished
            key = jax.random.fold_in(k_loop, count)

            def regen(_):
                inner = (z, kk, c, s, u, killed, 0, evaluations)

                def cond(st):
                    return jnp.any(st[5])

                def body_(st):
                    return regenerate(st, level, ~killed, jax.random.fold_in(key, jnp.sum(st[5])), beta)

                out = jax.lax.while_loop(cond, body_, inner)
                return out

            go = ~finished & ~extinct_now
            nz, nk, nc, ns, nu, _, accepted, new_evals = jax.lax.cond(
                go, regen, lambda _: (z, kk, c, s, u, killed, 0, evaluations), None
            )
            rate = accepted / jnp.maximum(k_j * steps, 1)
            new_beta = jnp.clip(beta * jnp.exp(rate - 0.3), 0.02, 1.0).astype(beta.dtype)  # x64 too
            log_factor = jnp.where(go, log_factor + jnp.log1p(-k_j / n), log_factor).astype(log_factor.dtype)
            return (nz, nk, nc, ns, nu, log_factor, jnp.where(go, new_beta, beta), count + 1,
                    finished | extinct_now, new_evals, extinct | extinct_now)

        def level_cond(state):
            return ~state[8] & (state[7] < max_levels)

        state = (z, kk, c, s, u, jnp.zeros(()), jnp.asarray(step_size, jnp.float32), 0, False, n, False)
        z, kk, c, s, u, log_factor, beta, count, done, evaluations, extinct = jax.lax.while_loop(
            level_cond, level_body, state
        )
        estimate = jnp.where(extinct, 0.0, jnp.exp(log_factor) * jnp.mean(c.astype(jnp.float32)))
        return {"estimate": estimate, "log_factor": log_factor, "levels": count, "done": done,
                "extinct": extinct,
                "evaluations": evaluations, "initial": initial, "final_c": c, "final_s": s, "beta": beta}

    def run(dynamic, key):
        problem = ctx.problem(dynamic)
        return jax.vmap(lambda r: replica(problem, jax.random.fold_in(key, r)))(jnp.arange(replicas))

    flops_before = ctx.meter.flops
    key = ctx.key(31) if key is None else key
    out = jax.device_get(ctx.meter(f"ams-{n}x{replicas}", run, ctx.dynamic, key))
    evaluations = int(np.sum(out["evaluations"]))
    ctx.meter.evaluations += evaluations
    # XLA counts a while loop's body once: scale the compiled FLOPs (initial draws plus
    # one regeneration pass per replica) to the evaluations actually done.
    # The scan over the pCN moves is a loop too: the compiled pass holds one move's evaluations.
    compiled_evaluations = replicas * (n + buffer)
    ctx.meter.flops = flops_before + (ctx.meter.flops - flops_before) * evaluations / compiled_evaluations
    return out


def _results(ctx, out, n, replicas, kill_fraction, steps, pilot_note):
    estimates = np.asarray(out["estimate"], np.float64)
    value = float(estimates.mean())
    spread = float(estimates.std(ddof=1) / math.sqrt(replicas))
    killed = max(1, round(kill_fraction * n)) / n
    ideal = value * math.sqrt(ideal_relative_variance(value, n, killed) / replicas)
    stderr = max(spread, ideal)
    cost = ctx.meter.cost()
    log_particle = np.repeat(np.asarray(out["log_factor"], np.float64), n) - math.log(n * replicas)
    final_c = np.asarray(out["final_c"]).ravel()
    particle_log_weights = np.where(final_c, log_particle, -np.inf)
    common = {
        "num_particles": n,
        "num_replicas": replicas,
        "levels": np.asarray(out["levels"]),
        "replica_estimates": estimates,
        "pcn_beta": np.asarray(out["beta"]),
        "largest_replica_share": largest_replica_share(estimates),
        "replica_stderr": spread,
        "ideal_stderr": ideal,
    }
    dominant = dominant_replica_note(estimates)
    results = {}
    lo, hi = student_interval(value, stderr, replicas - 1, ctx.level)
    hi, empty = widen_where_no_event(
        ctx.target, final_c.sum(), hi, "the final particles (splitting on a discrete site with few "
        "values can stall on ties of the score; try proposal='itgis' or 'mhis')")
    results[ctx.target] = SiteResult(
        np.asarray(value), np.asarray(stderr), (np.clip(lo, 0, 1), np.clip(hi, 0, 1)),
        {**common, "ess": effective_sample_size(particle_log_weights), "khat": math.nan,
         "events": int(final_c.sum())},
        cost, "importance[ams]", True,
        (f"ams: {replicas} replicas x {n} particles, kill fraction {kill_fraction}, {steps} pCN steps; "
         "consistent, biased low by O(1/N) when the pCN steps mix poorly; standard error across "
         f"replicas, Student-t interval ({replicas - 1} dof); k-hat does not apply",)
        + ((pilot_note,) if pilot_note else ()) + ((dominant,) if dominant else ())
        + ((_floor_note(spread, ideal),) if ideal > spread else ()) + empty,
    )
    total = replicas * n
    for name, site in ctx.sites.items():
        if name == ctx.target:
            continue
        draws = np.reshape(np.asarray(out["initial"][name]), (total,) + site.shape)
        results[name] = plain_monte_carlo(
            site, draws, level=ctx.level, cost=cost, method="importance[ams]", keep_draws=ctx.keep_draws,
            note=f"ams: site {name!r} is not the splitting target; plain Monte Carlo over the {total} "
            "initial draws from p", extra=common,
        )
    return {name: results[name] for name in ctx.sites}


def ideal_relative_variance(p: float, n: int, kill_fraction: float) -> float:
    """Relative variance of one replica's estimate if every level's draws were exact.

    Each level keeps a fraction ``p0 = 1 - kill_fraction`` of ``n`` particles and
    contributes about ``(1 - p0) / (p0 n)``; it takes ``log(1/p) / log(1/p0)`` levels.
    For ``kill_fraction -> 0`` this is the last-particle variance ``log(1/p) / n``
    (Guyader, Hengartner & Matzner-Lober 2011). Moves that mix imperfectly only add
    to it, so it bounds the standard error from below.
    """
    if not 0.0 < p < 1.0:
        return 0.0
    p0 = 1.0 - kill_fraction
    return math.log(1.0 / p) / math.log(1.0 / p0) * (1.0 - p0) / (p0 * n)


def _floor_note(spread: float, ideal: float) -> str:
    return (f"ams: the spread of the replicas ({spread:.3g}) is below what ideal splitting allows at this "
            f"particle count ({ideal:.3g}): few replicas understate the error, so the standard error is "
            "the ideal one (a lower bound; the true error may be larger)")


def largest_replica_share(estimates: np.ndarray) -> float:
    """The largest replica's share of the summed estimates (``1/R`` when they agree)."""
    total = float(np.sum(estimates))
    return float(np.max(estimates)) / total if total > 0 else math.nan


def dominant_replica_note(estimates: np.ndarray, method: str = "ams") -> str | None:
    """A note when one replica holds more than ``2/R`` of the total (needs ``R >= 3``).

    Light-tailed replicas (relative spread below ~0.5) stay well under that share;
    a replica above it means the estimator is heavy-tailed at this ``N`` (the
    event has regions most replicas never reach), so the mean rests on one run and
    the standard error across replicas understates the error.
    """
    replicas = len(estimates)
    share = largest_replica_share(estimates)
    if replicas < 3 or not share > 2.0 / replicas:
        return None
    return (f"{method}: one replica holds {share:.0%} of the total over {replicas} replicas: heavy-tailed "
            "at this particle count (separate event regions most replicas miss); the standard error is "
            "unreliable; raise num_samples or num_particles")
