"""The hybrid estimator behind ``handlers.hybrid``: a mechanistic estimate plus a sampled correction.

For an array site with units ``j = 1..d`` (e.g. the 256 neurons of a layer) there
are two estimates of ``theta_j = E[y_j]``:

* ``m_j`` from ``mechanize`` (a message family): cheap, free of noise, with an
  unknown bias ``b_j = theta_j - m_j``;
* ``s_j``, the mean of ``n`` i.i.d. sampled observations: unbiased, with variance
  ``sigma_j^2 = v_j / n`` (``v_j`` the per-observation variance, measured). Where
  every input is symmetric about its mean (Normal, multivariate normal,
  Uniform) an observation is an antithetic pair mean ``(y(x) + y(2 mu - x))/2``:
  an exact control variate (``E y(2 mu - x) = E y(x)``) that cancels every odd
  part of ``y``; on the random ReLU MLPs here it removes 55-62% of the variance
  per pair, 10-24% per model evaluation.

They are combined by empirical Bayes across the units of the site. The biases
are treated as random with a spread proportional to each unit's own spread,
``Var b_j = tau^2 v_j`` (on WhestBench 256x8 the squared bias of a unit
correlates with its variance, 0.4 for ``diagonal``, 0.6 for ``gaussian``; this
model beat a common bias variance there at every budget). The Bayes weight on
the samples is then the same for every unit, ``gamma = tau^2 / (tau^2 + 1/n)``,
and the method of moments (``E sum_j (s_j - m_j)^2 = sum_j b_j^2 + sum_j
sigma_j^2``, exact even though the units' sampling errors are correlated)
estimates ``tau^2 = (sum_j (s_j - m_j)^2 - sum_j sigma_j^2) / sum_j v_j``. Used
as is, this gives

    gamma = max(0, 1 - sum_j sigma_j^2 / sum_j (s_j - m_j)^2),   value_j = m_j + gamma (s_j - m_j),

the positive-part James–Stein estimator shrinking the samples toward the
mechanistic estimate (James & Stein 1961; Efron & Morris 1973). We lower
``tau^2`` by one (Student-t) jackknife standard deviation first
(``WEIGHT_MARGIN``): the units of a layer share their draws, so a few draws
that move many units together can fake a bias, and the lowered weight keeps
the hybrid near the better of its two parts at every budget. Few samples
(noise above the bias) give ``gamma ~ 0``, the mechanistic estimate; many give
``gamma ~ 1``, the sampled one; in between the site's mean squared error is
about ``B^2 sigma^2 / (B^2 + sigma^2)``, below both (``B^2`` the mean squared
bias). Below ``JACKKNIFE_GROUPS`` observations nothing sampled is trusted
(``gamma = 0``): a handful of draws cannot tell bias from noise.

Why the standard error is honest. The network is fixed, so the biases are
fixed numbers and the only randomness is the draws. The reported mean squared
error of unit ``j`` is

    var_J(value_j) + (1 - gamma)^2 tau_up^2 v_j,

where ``var_J`` is the delete-a-group jackknife variance (16 groups) of the
*whole procedure* (``gamma`` re-estimated without each group), which measures
the sampling error with the units' correlations and the randomness of
``gamma`` included, and the second term is the remaining squared bias with
``tau^2`` at its upper one-sigma (Student-t) jackknife bound, so that where the
draws cannot resolve the bias the error bar stays conservative rather than
claim it is zero. It is honest *on average over the units of a site* (the
final-layer MSE a benchmark scores), not a per-unit guarantee for one unit
whose bias is far above its siblings'; ``diagnostics["sampled_value"]`` and
``["sampled_stderr"]`` hold the unbiased per-unit estimate for that. Intervals
``value ± z stderr`` aim at average coverage over units (empirical-Bayes
intervals, Morris 1983): measured 0.92 over seeds on the test model of
``tests/test_hybrid.py`` and 0.86-0.96 on WhestBench 256x8, where plain Monte
Carlo's own normal intervals reach 0.88 (its units are heavy-tailed).

Sites with fewer than ``min_units`` units give too few residuals to estimate
``gamma``: they get the sampled estimate alone (unbiased, with its own standard
error and, for boolean sites with few events, exact binomial bounds), and a note
says so.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import scipy.stats
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from numpyro.primitives import Messenger

from ._capture import ModelArgs, OutputSite, _return_outputs, capture, capture_program
from ._cost import compile_with_cost, is_traced
from ._frames import FrameLayout, auto_frame_size, frame_layout, frame_outputs
from ._intervals import clopper_pearson
from ._result import Cost, Results, SiteResult

SYMMETRIC_DISTRIBUTIONS = (dist.Normal, dist.MultivariateNormal, dist.LowRankMultivariateNormal,
                           dist.Uniform)
"""Input distributions symmetric about their mean: ``2 mu - x`` has the law of ``x``."""

CHUNK_OBSERVATIONS = 1 << 13
JACKKNIFE_GROUPS = 16
"""Observation ``i`` goes to group ``i % 16`` of the delete-a-group jackknife; with fewer
observations than groups the samples get no weight."""
MIN_OBSERVATIONS = 4
WEIGHT_MARGIN = 1.0
"""The weights use ``tau^2`` lowered by this many (Student-t) jackknife sd: a handful of
draws whose errors move together can fake a bias; measured on WhestBench 256x8 this keeps
the hybrid within ~5% of the better of its two parts at every budget."""
RARE_EVENTS = 30
"""Scalar boolean sites use exact binomial bounds while fewer events than this were seen."""


def base_options(base: str) -> dict[str, Any]:
    """``mechanize`` keyword options for a hybrid ``base``: a family name or ``cumulantK``."""
    from ppl_mech.mechanistic import FAMILIES

    if base in FAMILIES:
        return {"family": base}
    if base == "gaussian-hermite":  # ReLU covariances by the Mehler series
        return {"family": "gaussian", "relu": "hermite"}
    match = re.fullmatch(r"cumulant([1-9])", str(base))
    if match:
        return {"family": "cumulant", "order": int(match.group(1))}
    raise ValueError(
        f"hybrid: unknown base {base!r}; choose a mechanize family ({', '.join(FAMILIES)}), "
        "'gaussian-hermite' or 'cumulantK' (K = 1..4)"
    )


# --- drawing ---------------------------------------------------------------------------


class reflect(Messenger):
    """Draw each latent site from its own key; with ``sign=-1`` reflect it through its mean.

    Keys are split in site order from ``rng_key``, so the ``+1`` and ``-1`` runs use
    the same noise: a site whose distribution depends on an earlier latent is
    drawn with the same standard noise under its own (reflected run's)
    parameters and reflected through its own mean, which is the antithetic
    partner for location-scale laws.
    """

    def __init__(self, fn=None, *, rng_key: jax.Array, sign: int = 1):
        self.rng_key = rng_key
        self.sign = sign
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample" or msg.get("is_observed") or msg.get("value") is not None:
            return
        self.rng_key, key = jax.random.split(self.rng_key)
        fn = msg["fn"]
        value = fn(rng_key=key, sample_shape=tuple(msg["kwargs"].get("sample_shape", ())))
        if self.sign < 0:
            value = 2 * jnp.broadcast_to(fn.mean, jnp.shape(value)).astype(value.dtype) - value
        msg["value"] = value


def _unwrap(fn):
    while isinstance(fn, dist.Independent | dist.ExpandedDistribution):
        fn = fn.base_dist
    return fn


def asymmetric_inputs(model: Callable, args: Sequence, kwargs: Mapping) -> list[str]:
    """Latent sites whose law is not (known to be) symmetric about its mean."""
    program = capture_program(model, args, kwargs)
    return [
        f"{name} ({type(_unwrap(site.distribution)).__name__})"
        for name, site in program.latents.items()
        if not isinstance(_unwrap(site.distribution), SYMMETRIC_DISTRIBUTIONS)
    ]


def _draw(model, args, kwargs, key, sign, sites) -> dict:
    recorder = capture(rng_key=jax.random.PRNGKey(0))  # draws nothing: `reflect` supplies latents
    with recorder:
        returned = reflect(model, rng_key=key, sign=sign)(*args, **kwargs)
    out = {**recorder.outputs, **_return_outputs(returned)}
    return {n: out[n] for n in sites}


def observation(model, args, kwargs, key, *, sites: Mapping[str, OutputSite],
                antithetic: bool) -> dict:
    """One observation per site: a draw, or an antithetic pair's mean (as floats).

    Boolean sites also get ``any``/``both`` indicators of the pair (for exact bounds).
    """
    plus = _draw(model, args, kwargs, key, 1, sites)
    minus = _draw(model, args, kwargs, key, -1, sites) if antithetic else None
    out = {}
    for name, site in sites.items():
        real = jnp.promote_types(jnp.result_type(float), jnp.float32)
        y = jnp.asarray(plus[name]).astype(real)
        entry = {"y": y if minus is None else (y + jnp.asarray(minus[name]).astype(real)) / 2}
        if site.is_boolean:
            if minus is None:
                entry["any"] = entry["both"] = jnp.asarray(plus[name])
            else:
                entry["any"] = plus[name] | minus[name]
                entry["both"] = plus[name] & minus[name]
        out[name] = entry
    return out


def frame_observation(program, frames: tuple[FrameLayout, int], key, *,
                      sites: Mapping[str, OutputSite]) -> dict:
    """One observation per site from one antithetic orthogonal frame (``ppl_mech._frames``): the mean
    over its ``2 m`` draws, and for boolean sites whether any / all of them hit."""
    layout, size = frames
    outs = frame_outputs(program, layout, key, size)
    real = jnp.promote_types(jnp.result_type(float), jnp.float32)
    out = {}
    for name, site in sites.items():
        draws = jnp.asarray(outs[name])
        entry = {"y": jnp.mean(draws.astype(real), axis=0)}
        if site.is_boolean:
            entry["any"], entry["both"] = jnp.any(draws, axis=0), jnp.all(draws, axis=0)
        out[name] = entry
    return out


def observer(model, args, kwargs, *, sites, antithetic: bool,
             frames: tuple[FrameLayout, int] | None) -> Callable:
    """``key -> observation``: a frame, an antithetic pair or a single draw."""
    if frames is None:
        return lambda key: observation(model, args, kwargs, key, sites=sites, antithetic=antithetic)
    program = capture_program(model, args, kwargs)
    return lambda key: frame_observation(program, frames, key, sites=sites)


def group_statistics(obs: dict, shifts: Mapping[str, jax.Array], index: jax.Array, mask: jax.Array,
                     num_groups: int) -> dict:
    """Per site and group ``g = i % num_groups``: the observation count and the sums of
    ``c = y - shift`` and ``c^2`` per unit (one-hot matmuls; ``shift`` keeps float32 sums exact)."""
    onehot = ((index[:, None] % num_groups == jnp.arange(num_groups)[None, :]) & mask[:, None])
    stats = {}
    for name, entry in obs.items():
        y = entry["y"].reshape(entry["y"].shape[0], -1)
        hot = onehot.astype(y.dtype)
        c = jnp.where(mask[:, None], y - jnp.reshape(shifts[name], (1, -1)).astype(y.dtype), 0)
        s = {"n": jnp.sum(hot, axis=0), "s1": hot.T @ c, "s2": hot.T @ (c * c)}
        if "any" in entry:
            w = mask.reshape((-1,) + (1,) * (entry["any"].ndim - 1))
            s["any"] = jnp.sum(jnp.where(w, entry["any"], False), axis=0, dtype=jnp.int32)
            s["both"] = jnp.sum(jnp.where(w, entry["both"], False), axis=0, dtype=jnp.int32)
        stats[name] = s
    return stats


def sampled_statistics(model, args, kwargs, *, sites: Mapping[str, OutputSite], shifts: Mapping,
                       num_obs: int, num_groups: int, rng_key: jax.Array, antithetic: bool,
                       frames: tuple[FrameLayout, int] | None = None, chunk_size: int | None = None,
                       devices: Sequence[jax.Device] | None = None) -> tuple[dict, Cost]:
    """Chunked, compiled, sharded draws: per-site group sums (float64) and what they cost.

    Observation ``i`` uses key ``fold_in(rng_key, i)``: the result depends on the key
    and ``num_obs`` only, not on chunking or devices.
    """
    layout, dynamic = ModelArgs.split(args, kwargs)
    devices = list(jax.devices() if devices is None else devices)
    mesh = Mesh(np.array(devices), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    if chunk_size is None:  # equal chunks of at most CHUNK_OBSERVATIONS: little padding to pay for
        chunks = -(-num_obs // CHUNK_OBSERVATIONS)
        step = 8 * len(devices)
        step = step if num_obs >= step else len(devices)
        chunk_size = -(-num_obs // chunks // step) * step
    chunk = max(len(devices), chunk_size - chunk_size % len(devices))

    def chunk_stats(dyn, shift, key, index):
        a, k = layout.merge(dyn)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
        observe = observer(model, a, k, sites=sites, antithetic=antithetic, frames=frames)
        return group_statistics(jax.vmap(observe)(keys), shift, index, index < num_obs, num_groups)

    shifts = {n: jnp.asarray(v) for n, v in shifts.items()}
    first = jax.device_put(jnp.arange(chunk, dtype=jnp.uint32), sharding)
    compiled, flops, compile_seconds = compile_with_cost(chunk_stats, dynamic, shifts, rng_key, first)
    totals: dict[str, dict[str, np.ndarray]] = {}
    num_chunks = -(-num_obs // chunk)
    start = time.perf_counter()
    for c in range(num_chunks):
        index = jax.device_put(jnp.arange(c * chunk, (c + 1) * chunk, dtype=jnp.uint32), sharding)
        stats = jax.device_get(compiled(dynamic, shifts, rng_key, index))
        for name, site_stats in stats.items():
            into = totals.setdefault(name, {})
            for key, value in site_stats.items():
                value = np.asarray(value, np.int64 if key in ("any", "both") else np.float64)
                into[key] = into[key] + value if key in into else value
    seconds = time.perf_counter() - start
    evaluations = num_obs * draws_per_observation(antithetic, frames)
    cost = Cost(flops=flops * num_chunks, seconds=seconds, evaluations=evaluations,
                compile_seconds=compile_seconds)
    return totals, cost


def traced_statistics(model, args, kwargs, *, sites, shifts, num_obs, num_groups, rng_key,
                      antithetic, frames=None) -> dict:
    """The same group sums in one ``vmap`` (for use under an outer ``jit``/``grad``)."""
    index = jnp.arange(num_obs, dtype=jnp.uint32)
    keys = jax.vmap(lambda i: jax.random.fold_in(rng_key, i))(index)
    observe = observer(model, args, kwargs, sites=sites, antithetic=antithetic, frames=frames)
    return group_statistics(jax.vmap(observe)(keys), shifts, index, jnp.ones(num_obs, bool), num_groups)


def draws_per_observation(antithetic: bool, frames: tuple[FrameLayout, int] | None) -> int:
    if frames is not None:
        return 2 * frames[1]
    return 2 if antithetic else 1



# --- combining ---------------------------------------------------------------------------


def _shrink(mech, n, s1, s2, margin=0.0, *, boolean_evaluations: int):
    """The James–Stein combination from pooled sums of ``c = y - mech`` (module docstring)."""
    r = s1 / n
    var = jnp.maximum(s2 - n * r * r, 0.0) / (n - 1)
    if boolean_evaluations:
        # 0/1 sites: a floor p~(1 - p~) per evaluation, p~ = (k + 1/2)/(N + 1), so that a
        # unit with no observed event does not claim zero variance.
        per_obs = boolean_evaluations / n
        p = (jnp.clip(mech + r, 0, 1) * boolean_evaluations + 0.5) / (boolean_evaluations + 1)
        var = jnp.maximum(var, p * (1 - p) / per_obs)
    noise = jnp.sum(var) / n  # E sum_j (s_j - m_j)^2 = sum_j b_j^2 + noise
    spread = jnp.sum(r * r)
    tau2 = (spread - noise) / jnp.maximum(jnp.sum(var), jnp.finfo(var.dtype).tiny)
    # gamma = tau^2 / (tau^2 + 1/n) with tau^2 lowered by `margin` (0: positive-part James-Stein)
    tau2_low = jnp.maximum(tau2 - margin, 0.0)
    gamma = tau2_low * n / (tau2_low * n + 1)
    return {"value": mech + gamma * r, "gamma": gamma, "tau2": tau2, "r": r, "var": var}


def _jackknife_variance(estimates):
    """Delete-a-group jackknife variance from the leave-one-group-out ``estimates`` (axis 0)."""
    g = estimates.shape[0]
    return (g - 1) / g * jnp.sum((estimates - jnp.mean(estimates, axis=0)) ** 2, axis=0)


def empirical_bayes(mech, stats: Mapping[str, Any], *, boolean_evaluations: int = 0) -> dict[str, Any]:
    """Combine ``mech`` with sampled group sums; mean squared errors by the jackknife.

    Args:
        mech: ``(d,)`` mechanistic estimates (also the shift of the sums).
        stats: group sums: ``n`` ``(G,)`` observations, ``s1``/``s2`` ``(G, d)`` of
            ``c = y - mech`` and ``c^2``.
        boolean_evaluations: for 0/1 sites the number of model evaluations (it sets a
            variance floor); 0 for real sites.

    Returns ``value``, ``mse`` (per unit), ``gamma``, ``tau2``, ``sampled`` and
    ``sampled_var`` (the unbiased estimate and its variance). Pure ``jnp``; ``jit``-able.
    """
    mech = jnp.reshape(mech, (-1,))
    n_g = jnp.asarray(stats["n"])
    groups = n_g.shape[0]
    s1_g = jnp.reshape(jnp.asarray(stats["s1"]), (groups, -1))
    s2_g = jnp.reshape(jnp.asarray(stats["s2"]), (groups, -1))
    total = [jnp.sum(x, axis=0) for x in (n_g, s1_g, s2_g)]
    leave_out = [t[None] - x for t, x in zip(total, (n_g, s1_g, s2_g), strict=True)]
    options = dict(boolean_evaluations=boolean_evaluations)
    loo_plain = jax.vmap(lambda *sums: _shrink(mech, *sums, **options))(*leave_out)
    t = float(scipy.stats.t.ppf(0.84, groups - 1))
    tau2_sd = t * jnp.sqrt(_jackknife_variance(loo_plain["tau2"]))
    margin = WEIGHT_MARGIN * tau2_sd
    full = _shrink(mech, *total, margin, **options)
    loo = jax.vmap(lambda *sums: _shrink(mech, *sums, margin, **options))(*leave_out)
    if groups < JACKKNIFE_GROUPS:  # too few draws to tell bias from noise: no weight on them
        gamma, value, variance = jnp.zeros_like(full["gamma"]), mech, jnp.zeros_like(mech)
    else:
        gamma, value = full["gamma"], full["value"]
        variance = _jackknife_variance(loo["value"])
    # tau^2 at its upper one-sigma bound (Student-t, groups - 1 degrees of freedom).
    tau2_up = jnp.maximum(full["tau2"] + tau2_sd, 0.0)
    mse = variance + (1 - gamma) ** 2 * tau2_up * full["var"]
    return {"value": value, "mse": mse, "gamma": gamma, "tau2": full["tau2"],
            "sampled": mech + full["r"], "sampled_var": full["var"] / total[0]}


def combine_site(mech: SiteResult, stats: Mapping[str, Any], site: OutputSite, *, num_obs: int,
                 min_units: int, draws_per_obs: int, level: float,
                 combine: Callable) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Value, stderr, interval and diagnostics of one site (arrays in the site's shape)."""
    shape = site.shape
    d = max(1, math.prod(shape))
    evaluations = num_obs * draws_per_obs
    grouped = draws_per_obs > 1  # pairs or frames: any/all of an observation's draws bound p
    out = combine(jnp.asarray(mech.value), stats,
                  boolean_evaluations=evaluations if site.is_boolean else 0)
    sampled = jnp.reshape(out["sampled"], shape)
    sampled_stderr = jnp.reshape(jnp.sqrt(out["sampled_var"]), shape)
    z = float(scipy.stats.norm.ppf(0.5 + level / 2))
    diagnostics: dict[str, Any] = {
        "mechanistic_value": mech.value, "sampled_value": sampled, "sampled_stderr": sampled_stderr,
        "num_samples": evaluations,
    }
    if d < min_units:
        note = (f"{d} unit(s) < min_units={min_units}: the bias of the mechanistic estimate cannot "
                "be estimated across units, so the sampled estimate is used alone")
        value, stderr = sampled, sampled_stderr
        lo, hi = value - z * stderr, value + z * stderr
        if site.is_boolean and not is_traced(sampled):
            # Exact bounds where events are few (a normal interval is not honest there):
            # Clopper-Pearson, and for pairs or frames (each draw exactly from p)
            # P[all of an observation's draws] <= p <= P[any of them], each a binomial
            # proportion over observations. With many events, normal.
            hits = np.rint(np.asarray(sampled, np.float64) * num_obs)
            hits_hi = np.asarray(stats["any"]) if grouped else hits
            hits_lo = np.asarray(stats["both"]) if grouped else hits
            few = (hits_hi < RARE_EVENTS) | (num_obs - hits_lo < RARE_EVENTS)
            lo = np.where(few, clopper_pearson(hits_lo, num_obs, level)[0], np.clip(lo, 0, 1))
            hi = np.where(few, clopper_pearson(hits_hi, num_obs, level)[1], np.clip(hi, 0, 1))
        return {"value": value, "stderr": stderr, "interval": (lo, hi),
                "diagnostics": diagnostics}, (note,)
    value = jnp.reshape(out["value"], shape)
    stderr = jnp.reshape(jnp.sqrt(out["mse"]), shape)
    lo, hi = value - z * stderr, value + z * stderr
    if site.is_boolean:
        lo, hi = jnp.clip(lo, 0, 1), jnp.clip(hi, 0, 1)
    diagnostics.update(
        shrinkage=out["gamma"], bias_ratio=out["tau2"], predicted_mse=jnp.mean(out["mse"]),
        sampled_mse=jnp.mean(out["sampled_var"]),
    )
    note = ("stderr: jackknife variance plus remaining squared bias, honest on average over the "
            "site's units, not per unit")
    return {"value": value, "stderr": stderr, "interval": (lo, hi), "diagnostics": diagnostics}, (note,)


def hybrid_estimate(
    model: Callable,
    args: Sequence = (),
    kwargs: Mapping | None = None,
    *,
    base: str = "gaussian",
    num_samples: int,
    rng_key: jax.Array,
    sites: Sequence[str] | None = None,
    antithetic: bool | None = None,
    frames: bool | int | None = None,
    min_units: int = 16,
    level: float = 0.95,
    chunk_size: int | None = None,
    mechanize_options: Mapping[str, Any] | None = None,
    mechanistic: Results | None = None,
) -> Results:
    """See ``handlers.hybrid``.

    ``mechanistic``: a ``mechanize`` result of the same model, arguments, ``base`` and
    ``sites`` to reuse (benchmarks sweeping budgets); its cost is charged as if run here.
    """
    from ppl_mech.handlers import mechanize

    kwargs = dict(kwargs or {})
    options = base_options(base)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer):
        raise ValueError(f"hybrid: num_samples must be an integer, got {num_samples!r}")
    num_samples = int(num_samples)
    if isinstance(min_units, bool) or not isinstance(min_units, int | np.integer) or min_units < 2:
        raise ValueError(f"hybrid: min_units must be an integer >= 2, got {min_units!r}")
    asymmetric = asymmetric_inputs(model, args, kwargs) if antithetic is not False else []
    if antithetic is None:
        antithetic = not asymmetric
    elif antithetic and asymmetric:
        raise ValueError(
            "hybrid: antithetic=True needs inputs symmetric about their mean; not symmetric: "
            + ", ".join(asymmetric)
        )
    too_few = (num_samples < MIN_OBSERVATIONS * 2 or num_samples % 2) if antithetic else (
        num_samples < MIN_OBSERVATIONS)
    if too_few:
        need = (f"an even number >= {2 * MIN_OBSERVATIONS} (antithetic pairs)" if antithetic
                else f"an integer >= {MIN_OBSERVATIONS}")
        raise ValueError(f"hybrid: num_samples must be {need}, got {num_samples}")

    mech_key, sample_key = jax.random.split(rng_key)
    if mechanistic is None:
        mech = mechanize(model, **options, **dict(mechanize_options or {}), sites=sites,
                         rng_key=mech_key).estimate(tuple(args), kwargs)
    else:
        mech = mechanistic
        if sites is not None and list(sites) != list(mech):
            raise ValueError(f"hybrid: mechanistic has sites {list(mech)}, not the sites {list(sites)}")
        if not mech.method.startswith("mechanize"):
            raise ValueError(f"hybrid: mechanistic must be a mechanize result, got method {mech.method!r}")
    wanted = list(mech)
    program = capture_program(model, args, kwargs)
    chosen = {n: program.outputs[n] for n in wanted}
    _, dynamic = ModelArgs.split(args, kwargs)
    traced = is_traced((dynamic, rng_key))
    shifts = {}
    for name in wanted:
        value = mech[name].value
        if not is_traced(value) and not np.all(np.isfinite(np.asarray(value))):
            raise ValueError(f"hybrid: the {base!r} mechanistic estimate of site {name!r} is not finite")
        shifts[name] = jnp.reshape(jnp.asarray(value, jnp.result_type(float)), (-1,))
    frame_choice = _frames_for(model, args, kwargs, program, frames, antithetic, chosen, num_samples)
    per_obs = draws_per_observation(antithetic, frame_choice)
    num_obs = num_samples // per_obs
    num_groups = min(JACKKNIFE_GROUPS, num_obs)
    common = dict(sites=chosen, shifts=shifts, num_obs=num_obs, num_groups=num_groups,
                  rng_key=sample_key, antithetic=antithetic, frames=frame_choice)
    if traced:
        stats, sample_cost = traced_statistics(model, args, kwargs, **common), Cost()
    else:
        stats, sample_cost = sampled_statistics(model, args, kwargs, **common, chunk_size=chunk_size)

    method = f"hybrid[{base}]"
    combine_costs: list[Cost] = []
    combine = empirical_bayes if traced else _measured(empirical_bayes, combine_costs)
    pieces = {
        name: combine_site(mech[name], stats[name], site, num_obs=num_obs, min_units=int(min_units),
                           draws_per_obs=per_obs, level=level, combine=combine)
        for name, site in chosen.items()
    }
    cost = Cost() if traced else sum(combine_costs, mech.cost + sample_cost)
    notes = tuple(mech[wanted[0]].notes) if wanted else ()
    if frame_choice is not None:
        notes += (f"antithetic orthogonal frames of {per_obs} draws in the inputs' standard coordinates "
                  f"({frame_choice[1]} of {frame_choice[0].dim} directions): odd parts cancel exactly, "
                  "quadratic parts too in a full frame",)
    elif antithetic:
        notes += ("antithetic pairs (x, 2*mean - x): odd parts of every site cancel exactly",)
    results = {}
    for name, site in chosen.items():
        piece, site_notes = pieces[name]
        piece["diagnostics"]["antithetic"] = antithetic or frame_choice is not None  # frames are antithetic
        piece["diagnostics"]["frame_size"] = 0 if frame_choice is None else frame_choice[1]
        results[name] = SiteResult(
            piece["value"], piece["stderr"], piece["interval"], piece["diagnostics"], cost, method,
            site.is_boolean, notes + site_notes,
        )
    return Results(results, method=method)


def _frames_for(model, args, kwargs, program, frames: bool | int | None, antithetic: bool,
                sites: Mapping[str, OutputSite], num_samples: int) -> tuple[FrameLayout, int] | None:
    """The frame layout and size to draw with, or ``None`` for pairs / single draws.

    ``frames=None`` (default): frames when the draws are antithetic anyway, every input
    can be rotated and no chosen site is boolean (a frame's draws hit or miss a rare
    event together, which widens the exact bounds of boolean sites), of the largest
    size that leaves ``JACKKNIFE_GROUPS`` frames. ``True``: the same size, required.
    An integer: that size.
    """
    if frames is False or (frames is None and (not antithetic or any(s.is_boolean for s in sites.values()))):
        return None
    if isinstance(frames, bool | None):
        size = None
    elif isinstance(frames, int | np.integer):
        size = int(frames)
    else:
        raise ValueError(f"hybrid: frames must be None, True, False or a frame size, got {frames!r}")
    layout = frame_layout(model, args, kwargs, program)
    if isinstance(layout, str):
        if frames is None:
            return None
        raise ValueError(f"hybrid: frames need every input continuous and independent: {layout}")
    if size is None:
        size = auto_frame_size(layout.dim, num_samples, JACKKNIFE_GROUPS)
    if not 1 <= size <= layout.dim or num_samples < 2 * size * MIN_OBSERVATIONS:
        raise ValueError(
            f"hybrid: frame size {size} must be in [1, {layout.dim}] (the inputs' dimension) with "
            f"num_samples >= {2 * MIN_OBSERVATIONS} frames' draws, got num_samples={num_samples}")
    return layout, size


def _measured(combine: Callable, costs: list[Cost]) -> Callable:
    """``combine`` compiled per call, its FLOPs and seconds appended to ``costs``."""

    def run(mech, stats, **options):
        arrays = {k: stats[k] for k in ("n", "s1", "s2")}
        compiled, flops, compile_seconds = compile_with_cost(
            lambda m, st: combine(m, st, **options), mech, arrays)
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(mech, arrays))
        costs.append(Cost(flops=flops, seconds=time.perf_counter() - start,
                          compile_seconds=compile_seconds))
        return out

    return run
