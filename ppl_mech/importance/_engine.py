"""What every proposal shares: the problem inside a trace, cost metering, and weighted estimates.

:func:`weighted_estimates` is the importance-sampling estimator proper. Given a
fixed proposal ``q`` it draws ``x_i ~ q`` (draw ``i`` from ``fold_in(key, i)``,
so the answer does not depend on chunking), weights ``w_i = p(x_i)/q(x_i)``
and reports, per output site, the unbiased ``mean(w_i f(x_i))`` (``f`` the
indicator for boolean sites) with its standard error ``sd(w f)/sqrt(n)``. The
weights are kept in log space and each chunk is rescaled by its largest
weight; the host merges chunks in float64 (Chan et al.), so probabilities far
below float32's range (1e-38) are still exact to rounding.

Diagnostics: ``ess`` = ``(sum w)^2 / sum w^2`` (Kish), ``khat`` = ArviZ's PSIS
Pareto k-hat of all log-weights, ``khat_site`` = the k-hat of the nonzero
terms ``w f`` of a scalar site (what decides whether *that* estimate is
reliable: a mean-shifted Gaussian proposal has heavy-tailed weights far from
the catastrophe, where ``f = 0``), and ``events`` (draws where a boolean site
fired).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppl_mech._arviz import import_arviz
from ppl_mech._capture import ModelArgs, OutputSite, capture_program
from ppl_mech._cost import compiled_flops
from ppl_mech._intervals import bernoulli_interval, normal_interval
from ppl_mech._result import Cost, SiteResult

from ._score import score_function
from ._space import LatentSpace

CHUNK_BYTES = 1 << 27
MIN_DRAWS_FOR_KHAT = 20


KHAT_RELIABLE = 0.7  # PSIS (Vehtari et al. 2024): above it, importance-sampling estimates are unreliable


def effective_sample_size(log_weights) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of (unnormalized) log-weights."""
    lw = np.asarray(log_weights, np.float64).ravel()
    lw = lw[np.isfinite(lw)]
    if lw.size == 0:
        return 0.0
    w = np.exp(lw - lw.max())
    return float(w.sum() ** 2 / np.sum(w**2))


def pareto_khat(log_weights) -> float:
    """ArviZ's PSIS Pareto k-hat of log-weights (``arviz.psislw``); ``nan`` with too few draws.

    Non-finite entries (zero weights) are dropped first. ``k < 0.5``: the
    weights have finite variance; ``k > 0.7``: estimates are unreliable
    (Vehtari et al. 2024).
    """
    lw = np.asarray(log_weights, np.float64).ravel()
    lw = lw[np.isfinite(lw)]
    if lw.size < MIN_DRAWS_FOR_KHAT:
        return math.nan
    az = import_arviz()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, khat = az.psislw(lw - lw.max(), reff=1.0)
    return float(np.asarray(khat))


class CostMeter:
    """Compile each step once, then count FLOPs (XLA cost analysis) and seconds of every call."""

    def __init__(self):
        self.flops = 0.0
        self.seconds = 0.0
        self.compile_seconds = 0.0
        self.evaluations = 0
        self.compile_log: dict[str, float] = {}
        self._compiled: dict[str, Any] = {}

    def __call__(self, name: str, fn: Callable, *args, evaluations: int = 0, loop_iterations: int = 1):
        """Run ``jit(fn)(*args)``; compiled once per ``(name, fn)``, every call's FLOPs counted.

        XLA's cost analysis counts the body of a loop once; ``loop_iterations``
        scales the FLOPs of a call whose work is one ``scan`` of that many steps.
        """
        cached = self._compiled.get(name)
        if cached is None or cached[0] is not fn:
            start = time.perf_counter()
            compiled = jax.jit(fn).lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
            self.compile_log[name] = time.perf_counter() - start
            cached = self._compiled[name] = (fn, compiled, compiled_flops(compiled))
        _, compiled, flops = cached
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        self.seconds += time.perf_counter() - start
        self.flops += flops * loop_iterations
        self.evaluations += int(evaluations)
        return out

    def cost(self) -> Cost:
        return Cost(self.flops, self.seconds, self.evaluations, self.compile_seconds)


class Problem:
    """The model as a program, its latent space and its detector's score, inside one trace."""

    def __init__(self, ctx: Context, dynamic):
        args, kwargs = ctx.layout.merge(dynamic)
        self.args, self.kwargs = args, kwargs
        self.program = capture_program(ctx.model, args, kwargs)
        self.space = LatentSpace.from_program(self.program)
        self.names = list(self.program.latents)
        self._score = None
        self._evaluate = None
        self._ctx = ctx
        self._relaxation = None

    def outputs(self, values: dict) -> dict:
        return self.program.fn(values)

    def detector_score(self, values: dict):
        """``(detector value, score)`` at latent values."""
        if self._score is None:
            self._score = score_function(self.program, self._ctx.target, self._ctx.score)
        c, s = self._score(values)
        return c, jnp.asarray(s, jnp.float32)

    def evaluate(self, values: dict):
        """``(outputs of ctx.sites, detector, score)`` from one evaluation of the program."""
        if self._evaluate is None:
            self._evaluate = score_function(self.program, self._ctx.target, self._ctx.score,
                                            outputs=list(self._ctx.sites))
        c, s, out = self._evaluate(values)
        return out, c, jnp.asarray(s, jnp.float32)

    def point_score(self, z: dict, k: dict):
        return self.detector_score(self.space.values(z, k))

    def score_and_grad(self, z: dict, k: dict):
        """``(detector, score, d score / d z)`` for the continuous sites."""

        def f(z):
            c, s = self.point_score(z, k)
            return s, c

        (s, c), g = jax.value_and_grad(f, has_aux=True)(z)
        return c, s, g

    def discrete_changes(self, z: dict, k: dict, *, exact: bool = False, site: str | None = None,
                         position=None):
        """First-order (or exact) score changes per discrete site: ``shape + (K,)``.

        With ``site`` and ``position``: only that flat element of that site, ``(K,)``.
        """
        from ._relax import DiscreteRelaxation, exact_changes, exact_changes_at

        values = self.space.values(z, k)
        leaves = [values[n] for n in self.names]

        def score_flat(*leaves):
            return self.detector_score(dict(zip(self.names, leaves, strict=True)))[1]

        if not exact and self._relaxation is None:
            discrete = [i for i, n in enumerate(self.names) if n in self.space.discrete]
            self._relaxation = DiscreteRelaxation(score_flat, leaves, discrete)
        wanted = self.space.discrete if site is None else {site: self.space.discrete[site]}
        out = {}
        for name, dsite in wanted.items():
            leaf = self.names.index(name)
            if position is not None:
                if exact:
                    out[name] = exact_changes_at(score_flat, leaves, leaf, position, dsite.support)
                else:
                    rel = self._relaxation
                    _, grads = rel.boundary_gradient(leaves)
                    base = rel.boundary_values(leaves)
                    out[name] = rel.changes_at(leaves, leaf, position, dsite.support, grads, base)
            elif exact:
                out[name] = exact_changes(score_flat, leaves, leaf, dsite.support)
            else:
                out[name] = self._relaxation.changes(leaves, leaf, dsite.support)
        return out


@dataclasses.dataclass
class Context:
    """A model, its arguments and the estimator's options, shared by the phases of one run."""

    model: Callable
    layout: ModelArgs
    dynamic: list
    target: str
    score: Any
    sites: dict[str, OutputSite]
    rng_key: jax.Array
    level: float = 0.95
    keep_draws: int = 1000
    chunk_size: int | None = None
    meter: CostMeter = dataclasses.field(default_factory=CostMeter)

    def problem(self, dynamic) -> Problem:
        return Problem(self, dynamic)

    def key(self, tag: int) -> jax.Array:
        return jax.random.fold_in(self.rng_key, tag)


def choose_chunk(sites: dict[str, OutputSite], num_samples: int) -> int:
    bytes_per_sample = sum(4 * max(1, math.prod(s.shape)) for s in sites.values()) + 64
    chunk = 2 ** int(math.log2(max(256, min(1 << 16, CHUNK_BYTES // bytes_per_sample))))
    return min(chunk, 2 ** math.ceil(math.log2(max(num_samples, 1))))


class _SiteStats:
    """Float64 running mean and centred sum of squares of ``w f`` (Chan et al.'s merge)."""

    def __init__(self, site: OutputSite):
        self.site = site
        self.n = 0
        self.mean = np.zeros(site.shape)
        self.m2 = np.zeros(site.shape)
        self.events = np.zeros(site.shape, np.int64)
        self.log_terms: list[np.ndarray] = []

    def merge(self, n: int, scale: float, stats: dict) -> None:
        mean_b = np.asarray(stats["mean"], np.float64) * scale
        m2_b = np.asarray(stats["m2"], np.float64) * scale**2
        total = self.n + n
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n / total)
        self.n = total
        if "events" in stats:
            self.events += np.asarray(stats["events"], np.int64)
        if "log_terms" in stats:
            self.log_terms.append(np.asarray(stats["log_terms"], np.float64)[:n])


def weighted_estimates(
    ctx: Context,
    draw: Callable[[Problem, Any, jax.Array], tuple[dict, jax.Array]],
    params: Any,
    *,
    num_samples: int,
    key: jax.Array,
    method: str,
    diagnostics: dict | None = None,
    notes: Sequence[str] = (),
    fitted_to_target: bool = True,
) -> dict[str, SiteResult]:
    """Importance-sampling estimates of ``ctx.sites`` with ``draw(problem, params, key) -> (x, log w)``.

    ``fitted_to_target``: the proposal was fitted to ``ctx.target`` (every other site gets a note).
    """
    sites = ctx.sites
    chunk = ctx.chunk_size or choose_chunk(sites, num_samples)

    def chunk_stats(dynamic, params, key, index):
        problem = ctx.problem(dynamic)

        def one(i):
            x, log_w = draw(problem, params, jax.random.fold_in(key, i))
            out = problem.outputs(x)
            return log_w, {n: out[n] for n in sites}

        log_w, outs = jax.vmap(one)(index)
        valid = (index < num_samples) & ~jnp.isnan(log_w)
        log_w = jnp.where(valid, log_w, -jnp.inf)
        shift = jnp.max(log_w)
        shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
        w = jnp.exp(log_w - shift)
        n = jnp.sum(index < num_samples)
        stats = {}
        for name, site in sites.items():
            f = outs[name]
            wb = w.reshape((-1,) + (1,) * len(site.shape))
            f = f.astype(jnp.float32)
            term = jnp.where(wb > 0, wb * f, 0.0)  # 0 * nan (x outside p's support) is 0
            mask = (index < num_samples).reshape(wb.shape)
            mean = jnp.sum(jnp.where(mask, term, 0.0), axis=0) / n
            m2 = jnp.sum(jnp.where(mask, (term - mean) ** 2, 0.0), axis=0)
            stats[name] = {"mean": mean, "m2": m2}
            if site.is_boolean:
                stats[name]["events"] = jnp.sum(jnp.where(mask, outs[name], False), axis=0)
            if site.shape == ():
                stats[name]["log_terms"] = jnp.where(term > 0, log_w + jnp.log(jnp.abs(f)), -jnp.inf)
        kept = {n: v[: min(chunk, ctx.keep_draws)] for n, v in outs.items()}
        return {"log_w": log_w, "shift": shift, "stats": stats, "kept": kept}

    num_chunks = -(-num_samples // chunk)
    accumulators = {n: _SiteStats(s) for n, s in sites.items()}
    log_weights, kept_draws = [], None
    for c in range(num_chunks):
        index = jnp.arange(c * chunk, (c + 1) * chunk, dtype=jnp.uint32)
        n = min(chunk, num_samples - c * chunk)
        out = ctx.meter("importance-chunk", chunk_stats, ctx.dynamic, params, key, index, evaluations=n)
        out = jax.device_get(out)
        shift = float(out["shift"])
        lw = np.asarray(out["log_w"], np.float64)[:n]
        log_weights.append(lw)
        for name, acc in accumulators.items():
            acc.merge(n, math.exp(shift) if shift < 700 else math.inf, out["stats"][name])
        if kept_draws is None:
            kept_draws = out["kept"]

    log_w = np.concatenate(log_weights)
    ess = effective_sample_size(log_w)
    khat = pareto_khat(log_w)
    kept = min(ctx.keep_draws, num_samples, chunk)
    base_diagnostics = {
        "num_samples": num_samples,
        "ess": ess,
        "khat": khat,
        "log_weights": log_w[:kept] if ctx.keep_draws else None,
        **(diagnostics or {}),
    }
    results = {}
    cost = ctx.meter.cost()
    for name, acc in accumulators.items():
        site = acc.site
        stderr = np.sqrt(acc.m2 / max(acc.n - 1, 1) / acc.n)
        lo, hi = normal_interval(acc.mean, stderr, ctx.level)
        diag = dict(base_diagnostics)
        if ctx.keep_draws:
            diag["draws"] = np.asarray(kept_draws[name])[:kept]
        else:
            diag.pop("log_weights")
        site_notes = list(notes)
        no_events = False
        if site.is_boolean:
            lo, hi = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
            diag["events"] = acc.events
            no_events = bool(np.all(np.asarray(acc.events) == 0))
            hi, unseen = widen_where_no_event(name, acc.events, hi,
                                              f"the {num_samples} draws from the proposal")
            site_notes.extend(unseen)
        if acc.log_terms:
            terms = np.concatenate(acc.log_terms)
            diag["khat_site"] = pareto_khat(terms)
            diag["ess_site"] = effective_sample_size(terms)
        if fitted_to_target and name != ctx.target:
            site_notes.append(
                f"{name}: reweighted from a proposal fitted to {ctx.target!r}, not to this site; its "
                "standard error holds only if the weights suit it too (see diagnostics['ess_site'] / "
                "['khat_site'] for scalar sites; estimate it with target=" + repr(name) + " to be sure)"
            )
        khat_here = diag.get("khat_site", khat)
        if khat_here > KHAT_RELIABLE and not no_events:
            site_notes.append(
                f"{name}: Pareto k-hat {khat_here:.2f} > {KHAT_RELIABLE}: the importance weights are "
                "heavy-tailed, so the estimate and its standard error are unreliable (likely too low); "
                "try another proposal or more samples"
            )
        results[name] = SiteResult(acc.mean, stderr, (lo, hi), diag, cost, method, site.is_boolean,
                                   tuple(site_notes))
    return results


def widen_where_no_event(name: str, events, hi, among: str) -> tuple[Any, tuple[str, ...]]:
    """``(hi, notes)``: where a boolean site saw no event among ``among``, its interval is [0, 1].

    Zero events bound nothing (the draws may have missed the event region), so the upper
    end becomes 1 and a note says the estimate 0 is uninformative.
    """
    unseen = np.asarray(events) == 0
    if not np.any(unseen):
        return hi, ()
    hi = np.where(unseen, 1.0, hi)
    hi = float(hi) if np.ndim(hi) == 0 else hi
    return hi, (f"{name}: no event among {among}; the estimate 0 is uninformative and its interval is "
                "[0, 1]",)


def nonfinite_note(name: str, method: str) -> str:
    return (f"{name}: the {method} estimate is not finite (the weights overflowed, or the detector's "
            "score is NaN on part of the space, e.g. sqrt or log of a negative value); it is not usable")


def plain_monte_carlo(site: OutputSite, draws, *, level: float, cost: Cost, method: str, note: str,
                      keep_draws: int, extra: dict | None = None) -> SiteResult:
    """A site estimated from i.i.d. draws from ``p`` (splitting and annealing use these for
    the sites they do not target)."""
    draws = np.asarray(draws)
    total = draws.shape[0]
    diag = {"num_samples": total, **(extra or {})}
    if keep_draws:
        diag["draws"] = draws[:keep_draws]
        diag["log_weights"] = np.zeros(min(keep_draws, total))
    if site.is_boolean:
        count = draws.sum(axis=0)
        p = count / total
        diag["events"] = count
        return SiteResult(p, np.sqrt(p * (1 - p) / total), bernoulli_interval(count, total, level), diag,
                          cost, method, True, (note,))
    values = draws.astype(np.float64)
    mean = values.mean(axis=0)
    stderr = values.std(axis=0, ddof=1) / math.sqrt(total)
    return SiteResult(mean, stderr, normal_interval(mean, stderr, level), diag, cost, method, False, (note,))
