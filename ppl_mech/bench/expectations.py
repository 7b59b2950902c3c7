"""``ppl-mech bench expectations``: final-layer MSE of every estimator against Monte Carlo at equal cost.

For each network (WhestBench 256x8, 256x32, 1024x16; ARC-setup MLPs of width
64/128/256 with 4 hidden relu/gelu layers) and seed, and each estimator
(``mechanize`` families, cumulant orders where registered, ``hybrid`` at several
FLOP budgets, and plain sampling at the same budgets as a check) it measures:

* the final layer's MSE against a ground truth (averaged over units), with the
  truth's own noise subtracted (``E[(v - t_hat)^2] = MSE + Var(t_hat)``);
* FLOPs (XLA's compiled cost analysis, ``SiteResult.cost``) and wall seconds
  (compilation excluded);
* Monte Carlo's MSE at the same FLOPs and at the same seconds:
  ``MSE_MC(F) = mean_j Var_j / (F / flops_per_sample)`` with ``Var_j`` the measured
  per-unit variance and ``flops_per_sample`` / ``seconds_per_sample`` measured by
  ``handlers.sample`` on the same site (so the reference is plain sampling as
  the library runs it, not an idealised count).

Ground truth is computed once per network and seed by antithetic-pair sampling
(unbiased; the pairs cancel odd parts exactly), cached under
``results_dir()/expectations_truth``, with its standard error. It is sized so
that its noise is 10x below the smallest error it will judge (the smallest
predicted error of the sampled runs), within ``--truth-max`` evaluations; every
row says whether the truth was >= 10x finer than that row's MSE, and the
summary flags rows where it was not.

Headline: the crossover budget per network, the smallest budget beyond which
Monte Carlo at equal FLOPs beats the best estimator that fits in that budget
(``> max`` when the best estimator is still ahead at the costliest run), the
FLOPs Monte Carlo needs to match the best MSE measured, and the same in
seconds. Cumulant order 4 is skipped by default (3.3e12 FLOPs, ~10 min per run
at 256x8 on a CPU); ``--mechanize`` selects variants. Writes ``expectations.csv``,
``expectations_summary.csv`` and ``expectations.png`` (MSE vs FLOPs and vs seconds,
medians over seeds).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ._common import machine_description, results_dir


@dataclasses.dataclass(frozen=True)
class Network:
    """A benchmark network: ``get_model(model, seed=seed, **options)`` and its final site."""

    label: str
    model: str
    options: dict
    site: str


FULL_NETWORKS = (
    Network("whestbench-256x8", "whestbench-256x8", {}, "layer_8"),
    Network("whestbench-256x32", "whestbench-256x32", {}, "layer_32"),
    Network("whestbench-1024x16", "whestbench-1024x16", {}, "layer_16"),
    *(Network(f"arc-{w}-{a}", "arc-mlp", dict(width=w, hidden_layers=4, activation=a), "output")
      for a in ("relu", "gelu") for w in (64, 128, 256)),
)
QUICK_NETWORKS = (
    Network("whestbench-64x4", "whestbench", dict(width=64, depth=4), "layer_4"),
    Network("arc-64-relu", "arc-mlp", dict(width=64, hidden_layers=4, activation="relu"), "output"),
)
FULL_BUDGETS = (1e6, 1e7, 1e8, 1e9, 1e10, 1e11)
QUICK_BUDGETS = (1e6, 1e7, 1e8)
BUDGET_TOLERANCE = 1.05  # a hybrid sized for a budget may overshoot it by its bookkeeping FLOPs
HYBRID_MIN_SAMPLES = 32  # below 16 antithetic pairs the hybrid is the mechanistic estimate


@dataclasses.dataclass
class Config:
    networks: Sequence[Network] = FULL_NETWORKS
    seeds: Sequence[int] = (0, 1, 2)
    budgets: Sequence[float] = FULL_BUDGETS
    mechanize: Sequence[str] | None = None  # mechanize variants; None: all registered but `skip`
    skip: Sequence[str] = ("cumulant4",)  # 3.3e12 FLOPs and ~10 min per run at 256x8 on a CPU
    hybrid_bases: Sequence[str] | None = None  # None: diagonal, gaussian and cumulant variants
    sample_budgets: bool = True
    mc_samples: int = 2**14
    truth_min: int = 2**18
    truth_max: int = 2**24
    truth_factor: float = 10.0
    out: Path | None = None
    plot: bool = True
    verbose: bool = True


@dataclasses.dataclass
class Reference:
    """Monte Carlo on the final site: per-unit variance and cost per sample."""

    variance: np.ndarray
    mean: np.ndarray
    flops_per_sample: float
    seconds_per_sample: float

    @property
    def mean_variance(self) -> float:
        return float(np.mean(self.variance))

    def mse_at_flops(self, flops: float) -> float:
        return self.mean_variance * self.flops_per_sample / flops

    def mse_at_seconds(self, seconds: float) -> float:
        return self.mean_variance * self.seconds_per_sample / seconds


def _log(config: Config, text: str) -> None:
    if config.verbose:
        print(text, flush=True)


def mechanize_variants(config: Config) -> list[str]:
    from ppl_mech._methods import METHODS

    registered = list(METHODS["mechanize"][1])
    if config.mechanize is None:
        return [v for v in registered if v not in config.skip]
    unknown = [v for v in config.mechanize if v not in registered]
    if unknown:
        raise ValueError(f"--mechanize: unknown variant(s) {unknown}; registered: {registered}")
    return list(config.mechanize)


def hybrid_bases(config: Config, variants: Sequence[str]) -> list[str]:
    if config.hybrid_bases is not None:
        missing = [b for b in config.hybrid_bases if b not in variants]
        if missing:
            raise ValueError(f"--hybrid-bases {missing} must also be among the mechanize variants run")
        return list(config.hybrid_bases)
    return [v for v in variants if v in ("diagonal", "gaussian", "cumulant2", "cumulant3", "cumulant4")]


def measure_reference(built, site: str, num_samples: int, seed: int) -> Reference:
    from ppl_mech import handlers

    r = handlers.sample(built.model, num_samples=num_samples, rng_key=jax.random.PRNGKey(7919 + seed),
                        sites=[site], keep_draws=0, progress_bar=False)(*built.args, **built.kwargs)[site]
    return Reference(np.asarray(r.diagnostics["variance"], np.float64), np.asarray(r.value, np.float64),
                     r.cost.flops / num_samples, r.cost.seconds / num_samples)


def ground_truth(built, network: Network, seed: int, evaluations: int, shift, config: Config) -> dict:
    """Antithetic-pair means of the final site, cached and extended on demand.

    Returns ``{'mean', 'se2', 'evaluations'}``. A cached truth with fewer evaluations
    is extended by fresh pairs (key ``fold_in(key, part)``) and the parts merged.
    """
    from ppl_mech import capture_program
    from ppl_mech._hybrid import sampled_statistics

    folder = (config.out or results_dir()) / "expectations_truth"
    folder.mkdir(parents=True, exist_ok=True)
    options = "-".join(f"{k}{v}" for k, v in sorted(network.options.items()))
    path = folder / f"{network.model}{'-' + options if options else ''}-seed{seed}.npz"
    truth = None
    if path.exists():
        cached = np.load(path)
        truth = {k: cached[k] for k in ("mean", "se2", "evaluations", "parts")}
        if int(truth["evaluations"]) >= evaluations:
            return truth
    have = 0 if truth is None else int(truth["evaluations"])
    part = 0 if truth is None else int(truth["parts"])
    pairs = -(-(evaluations - have) // 2)
    program = capture_program(built.model, built.args, built.kwargs)
    sites = {network.site: program.outputs[network.site]}
    start = time.perf_counter()
    key = jax.random.fold_in(jax.random.PRNGKey(1_000_003 + seed), part)
    stats, _ = sampled_statistics(
        built.model, built.args, built.kwargs, sites=sites, shifts={network.site: np.ravel(shift)},
        num_obs=pairs, num_groups=1, rng_key=key, antithetic=True)
    s = stats[network.site]
    n = float(s["n"].sum())
    r = s["s1"].sum(axis=0) / n
    var = np.maximum(s["s2"].sum(axis=0) - n * r * r, 0) / (n - 1)
    new = {"mean": np.ravel(shift) + r, "se2": var / n, "evaluations": np.asarray(2 * pairs)}
    if truth is not None:  # merge two independent estimates, weighted by their evaluations
        w1, w2 = float(truth["evaluations"]), float(new["evaluations"])
        new = {"mean": (w1 * truth["mean"] + w2 * new["mean"]) / (w1 + w2),
               "se2": (w1**2 * truth["se2"] + w2**2 * new["se2"]) / (w1 + w2) ** 2,
               "evaluations": np.asarray(int(w1 + w2))}
    new["parts"] = np.asarray(part + 1)
    np.savez(path, **new)
    _log(config, f"    truth: +{2 * pairs} evaluations in {time.perf_counter() - start:.1f}s, now "
                 f"{int(new['evaluations'])}, mean se^2 {np.mean(new['se2']):.3g} -> {path}")
    return new


def _judge(rows: Sequence[dict], truth: dict) -> float:
    """Fill in each row's MSE against ``truth``; return the smallest (it may be <= 0)."""
    noise = float(np.mean(truth["se2"]))
    for r in rows:
        raw = float(np.mean((r["value"] - truth["mean"]) ** 2))
        r.update(mse=raw - noise, mse_raw=raw, truth_se2=noise,
                 truth_evaluations=int(truth["evaluations"]), truth_ok=bool(noise * 10 <= raw - noise))
    return min((r["mse"] for r in rows), default=0.0)


def _row(network, seed, estimator, family, budget, result, site, reference) -> dict[str, Any]:
    value = np.ravel(np.asarray(result.value, np.float64))
    stderr = np.ravel(np.asarray(result.stderr, np.float64))
    return {
        "network": network.label, "seed": seed, "estimator": estimator, "family": family,
        "budget": budget, "flops": float(result.cost.flops), "seconds": float(result.cost.seconds),
        "compile_seconds": float(result.cost.compile_seconds),
        "evaluations": int(result.cost.evaluations), "value": value,
        "predicted_mse": float(np.mean(stderr**2)) if np.all(np.isfinite(stderr)) else math.nan,
    }


def run_network(network: Network, seed: int, config: Config) -> list[dict[str, Any]]:
    from ppl_mech import handlers
    from ppl_mech._hybrid import hybrid_estimate
    from ppl_mech._methods import MethodOptions, make_estimator
    from ppl_mech.models import get_model

    built = get_model(network.model, seed=seed, **network.options)
    site = network.site
    args, kwargs = built.args, built.kwargs
    reference = measure_reference(built, site, config.mc_samples, seed)
    _log(config, f"  {network.label} seed {seed}: MC {reference.flops_per_sample:.3g} FLOPs/sample, "
                 f"{1 / reference.seconds_per_sample:,.0f} samples/s, mean Var {reference.mean_variance:.3g}")
    rows = []
    mechanistic = {}
    variants = mechanize_variants(config)
    for variant in variants:
        estimator = make_estimator(f"mechanize:{variant}", built.model,
                                   MethodOptions(sites=(site,), seed=seed))
        results = estimator(*args, **kwargs)
        mechanistic[variant] = results
        rows.append(_row(network, seed, f"mechanize:{variant}", f"mechanize:{variant}", math.nan,
                         results[site], site, reference))
        _log(config, f"    mechanize:{variant}: {results[site].cost.flops:.3g} FLOPs, "
                     f"{results[site].cost.seconds:.3g}s")
    for base in hybrid_bases(config, variants):
        base_flops = mechanistic[base][site].cost.flops
        for i, budget in enumerate(config.budgets):
            n = int((budget - base_flops) / reference.flops_per_sample) // 2 * 2
            if n < HYBRID_MIN_SAMPLES:
                continue
            results = hybrid_estimate(built.model, args, kwargs, base=base, num_samples=n,
                                      rng_key=jax.random.PRNGKey(seed * 1000 + i), sites=[site],
                                      mechanistic=mechanistic[base])
            rows.append(_row(network, seed, f"hybrid:{base}@{budget:.0e}", f"hybrid:{base}", budget,
                             results[site], site, reference))
    if config.sample_budgets:
        for i, budget in enumerate(config.budgets):
            n = int(budget / reference.flops_per_sample)
            if n < 2:
                continue
            key = jax.random.PRNGKey(seed * 1000 + 500 + i)
            results = handlers.sample(built.model, num_samples=n, rng_key=key, sites=[site], keep_draws=0,
                                      progress_bar=False)(*args, **kwargs)
            rows.append(_row(network, seed, f"sample@{budget:.0e}", "sample", budget, results[site], site,
                             reference))
    # Ground truth 10x finer than the smallest error the sampled runs predict for themselves.
    predicted = [r["predicted_mse"] for r in rows if r["family"] != "sample" and r["predicted_mse"] > 0]
    predicted += [reference.mean_variance / max(r["evaluations"], 1) for r in rows if r["family"] == "sample"]
    smallest = min([p for p in predicted if math.isfinite(p)],
                   default=reference.mean_variance / config.truth_min)
    wanted = int(math.ceil(config.truth_factor * reference.mean_variance / smallest))
    evaluations = min(config.truth_max, max(config.truth_min, wanted))
    truth = ground_truth(built, network, seed, evaluations, reference.mean, config)
    smallest = _judge(rows, truth)
    noise = float(np.mean(truth["se2"]))
    have = int(truth["evaluations"])
    if 10 * noise > smallest and have < config.truth_max:
        # Some estimate is closer to the truth than the truth's noise allows judging: extend it.
        target = smallest / 10 if smallest > 0 else noise / 100
        wanted = min(config.truth_max, int(math.ceil(2 * have * noise / target)))
        truth = ground_truth(built, network, seed, wanted, reference.mean, config)
        _judge(rows, truth)
    for r in rows:
        del r["value"]
        r.update(
            mc_mse_at_flops=reference.mse_at_flops(r["flops"]),
            mc_mse_at_seconds=reference.mse_at_seconds(r["seconds"]),
            mc_flops_per_sample=reference.flops_per_sample,
            mc_seconds_per_sample=reference.seconds_per_sample, mc_mean_variance=reference.mean_variance,
        )
        # Where the truth is not 10x finer, judge by the raw error (MSE + truth noise): an
        # upper bound in expectation, so the gain reported is a lower bound.
        judged = r["mse"] if r["truth_ok"] else r["mse_raw"]
        r["mse_judged"] = judged
        r["gain_at_flops"] = r["mc_mse_at_flops"] / judged
        r["gain_at_seconds"] = r["mc_mse_at_seconds"] / judged
    return rows


def crossover(rows: Sequence[dict], cost: str) -> dict[str, Any]:
    """Smallest budget beyond which MC at equal ``cost`` beats the best estimator within it.

    ``best(F)`` is the lowest MSE among non-sampling runs costing at most ``F``;
    ``MC(F)`` the reference. Scanned on a grid of 40 points per decade from the
    cheapest run to the costliest; ``inf`` when the best estimator is still ahead
    at the costliest run (MC catches up only beyond what was measured).
    """
    runs = sorted((r[cost], r["mse_judged"]) for r in rows if r["family"] != "sample"
                  and math.isfinite(r[cost]) and r[cost] > 0)
    if not runs:
        return {"crossover": math.nan, "gain_at_max": math.nan, "max_cost": math.nan, "match_best": math.nan}
    per_cost = rows[0]["mc_mean_variance"] * rows[0][
        "mc_flops_per_sample" if cost == "flops" else "mc_seconds_per_sample"]
    lo, hi = runs[0][0], runs[-1][0]
    grid = np.logspace(math.log10(lo), math.log10(hi), max(2, int(40 * math.log10(hi / lo)) + 1))
    ahead = []
    for budget in grid:
        best = min(m for c, m in runs if c <= budget * (1 + 1e-9))
        ahead.append(per_cost / budget >= best)
    gain_at_max = per_cost / hi / min(m for _, m in runs)
    common = {"gain_at_max": gain_at_max, "max_cost": hi, "match_best": per_cost / min(m for _, m in runs)}
    if ahead[-1]:
        return {"crossover": math.inf, **common}
    last_ahead = max((i for i, a in enumerate(ahead) if a), default=None)
    if last_ahead is None:
        return {"crossover": lo, **common}
    # MC catches up inside the last interval where the estimator was ahead: F = per_cost / best.
    best = min(m for c, m in runs if c <= grid[last_ahead] * (1 + 1e-9))
    return {"crossover": per_cost / best, **common}


def summarize(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Medians over seeds per (network, estimator), with the spread of the MSE."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["network"], r["estimator"]), []).append(r)
    out = []
    for (network, estimator), rs in groups.items():
        mses = [r["mse"] for r in rs]
        out.append({
            "network": network, "estimator": estimator, "family": rs[0]["family"],
            "budget": rs[0]["budget"], "seeds": len(rs),
            **{k: statistics.median(r[k] for r in rs) for k in (
                "flops", "seconds", "mse", "mse_judged", "mc_mse_at_flops", "mc_mse_at_seconds",
                "gain_at_flops", "gain_at_seconds", "predicted_mse", "truth_se2")},
            "mse_min": min(mses), "mse_max": max(mses),
            "truth_ok": all(r["truth_ok"] for r in rs),
        })
    return out


def crossovers(rows: Sequence[dict]) -> list[dict[str, Any]]:
    out = []
    for network in dict.fromkeys(r["network"] for r in rows):
        per_seed = {}
        for seed in sorted({r["seed"] for r in rows if r["network"] == network}):
            these = [r for r in rows if r["network"] == network and r["seed"] == seed]
            per_seed[seed] = {cost: crossover(these, cost) for cost in ("flops", "seconds")}
        entry = {"network": network, "seeds": len(per_seed)}
        for cost in ("flops", "seconds"):
            values = [v[cost]["crossover"] for v in per_seed.values()]
            entry[f"crossover_{cost}"] = statistics.median(values)
            entry[f"crossover_{cost}_range"] = (min(values), max(values))
            entry[f"gain_at_max_{cost}"] = statistics.median(
                v[cost]["gain_at_max"] for v in per_seed.values())
            entry[f"max_{cost}"] = statistics.median(v[cost]["max_cost"] for v in per_seed.values())
            entry[f"match_best_{cost}"] = statistics.median(v[cost]["match_best"] for v in per_seed.values())
        out.append(entry)
    return out


def targets(summary: Sequence[dict], rows: Sequence[dict], budgets: Sequence[float]) -> list[str]:
    """The acceptance targets of issue 4, checked on the medians (printed, not enforced)."""
    lines = []

    def best_within(network, budget):
        runs = [s for s in summary if s["network"] == network and s["family"] != "sample"
                and s["flops"] <= budget * BUDGET_TOLERANCE]
        return min(runs, key=lambda s: s["mse_judged"]) if runs else None

    nets = {s["network"] for s in summary}
    if "arc-256-relu" in nets:
        runs = [s for s in summary if s["network"] == "arc-256-relu" and s["family"] != "sample"]
        flop_best = max(runs, key=lambda s: s["gain_at_flops"])
        sec_best = max(runs, key=lambda s: s["gain_at_seconds"])
        lines.append(f"ARC 256 relu: best gain at equal FLOPs {flop_best['gain_at_flops']:.3g}x "
                     f"({flop_best['estimator']}; target >= 100x) -> "
                     f"{'PASS' if flop_best['gain_at_flops'] >= 100 else 'FAIL'}; best at equal seconds "
                     f"{sec_best['gain_at_seconds']:.3g}x ({sec_best['estimator']}; target > 1x) -> "
                     f"{'PASS' if sec_best['gain_at_seconds'] > 1 else 'FAIL'}")
    for network, needed, upto, ahead_at in (("whestbench-256x8", 10, 1e9, 1e10),
                                            ("whestbench-256x32", 1, 1e9, None),
                                            ("whestbench-1024x16", 1, 1e9, None)):
        if network not in nets:
            continue
        parts, ok = [], True
        fps = next(r["mc_flops_per_sample"] for r in rows if r["network"] == network)
        for budget in [b for b in budgets if b <= upto] + ([ahead_at] if ahead_at in budgets else []):
            best = best_within(network, budget)
            if best is None and budget < fps:
                parts.append(f"{budget:.0e}: n/a (below one MC sample)")
                continue
            mc = None
            if best is not None:
                mc = best["mc_mse_at_flops"] * best["flops"] / budget  # MC at the budget itself
            gain = mc / best["mse_judged"] if best else 0.0
            need = needed if budget <= upto else 1
            ok &= gain >= need
            parts.append(f"{budget:.0e}: {gain:.3g}x ({best['estimator'] if best else 'none'})")
        lines.append(f"{network}: MC MSE / best MSE at equal FLOPs (target >= {needed}x up to "
                     f"{upto:.0e}{', > 1x at ' + format(ahead_at, '.0e') if ahead_at else ''}) -> "
                     f"{'PASS' if ok else 'FAIL'}: " + "; ".join(parts))
    return lines


CSV_FIELDS = ["network", "seed", "estimator", "family", "budget", "flops", "seconds", "compile_seconds",
              "evaluations", "mse", "mse_raw", "mse_judged", "predicted_mse", "truth_se2",
              "truth_evaluations", "truth_ok",
              "mc_mse_at_flops", "mc_mse_at_seconds", "gain_at_flops", "gain_at_seconds",
              "mc_flops_per_sample", "mc_seconds_per_sample", "mc_mean_variance"]


def write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def plot(path: Path, summary: Sequence[dict], rows: Sequence[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = list(dict.fromkeys(s["network"] for s in summary))
    fig, axes = plt.subplots(len(networks), 2, figsize=(12, 3.6 * len(networks)), squeeze=False)
    for i, network in enumerate(networks):
        these = [s for s in summary if s["network"] == network]
        first = next(r for r in rows if r["network"] == network)
        for j, cost in enumerate(("flops", "seconds")):
            ax = axes[i, j]
            per = first["mc_flops_per_sample" if cost == "flops" else "mc_seconds_per_sample"]
            xs = [s[cost] for s in these if s[cost] > 0 and math.isfinite(s[cost])]
            if xs:
                grid = np.logspace(math.log10(min(xs)) - 0.5, math.log10(max(xs)) + 0.5, 50)
                ax.plot(grid, first["mc_mean_variance"] * per / grid, "k--", lw=1, label="MC (measured Var)")
            for family in dict.fromkeys(s["family"] for s in these):
                pts = [(s[cost], s["mse_judged"]) for s in sorted(
                    (s for s in these if s["family"] == family), key=lambda s: (s["budget"], s["flops"]))]
                if not pts:
                    continue
                x, y = zip(*pts, strict=True)
                style = "o" if family.startswith("mechanize") else ("kx" if family == "sample" else "o-")
                ax.plot(x, y, style, label=family, ms=5)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("FLOPs" if cost == "flops" else "seconds")
            ax.set_ylabel("final-layer MSE")
            ax.set_title(f"{network} (median over seeds)")
            ax.grid(True, which="major", alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x == math.inf:
        return "inf"
    return f"{x:.3g}"


def print_tables(summary, cross, target_lines) -> None:
    from ppl_mech._table import render

    header = ["network", "estimator", "FLOPs", "seconds", "MSE", "MSE range", "MC@FLOPs", "gain", "MC@sec",
              "gain(s)", "truth 10x"]
    rows = [[s["network"], s["estimator"], _fmt(s["flops"]), _fmt(s["seconds"]), _fmt(s["mse"]),
             f"{_fmt(s['mse_min'])}..{_fmt(s['mse_max'])}", _fmt(s["mc_mse_at_flops"]),
             _fmt(s["gain_at_flops"]), _fmt(s["mc_mse_at_seconds"]), _fmt(s["gain_at_seconds"]),
             "yes" if s["truth_ok"] else "NO"] for s in summary]
    print(render(header, rows))
    print()
    header = ["network", "crossover FLOPs", "range", "gain at max FLOPs", "MC FLOPs to match best",
              "crossover s", "range", "gain at max s", "MC s to match best"]
    rows = [[c["network"],
             _fmt(c["crossover_flops"]) if c["crossover_flops"] != math.inf else f"> {_fmt(c['max_flops'])}",
             "..".join(_fmt(v) for v in c["crossover_flops_range"]), _fmt(c["gain_at_max_flops"]),
             _fmt(c["match_best_flops"]),
             _fmt(c["crossover_seconds"]) if c["crossover_seconds"] != math.inf
             else f"> {_fmt(c['max_seconds'])}",
             "..".join(_fmt(v) for v in c["crossover_seconds_range"]), _fmt(c["gain_at_max_seconds"]),
             _fmt(c["match_best_seconds"])]
            for c in cross]
    print("Crossover: the budget beyond which Monte Carlo at equal cost beats the best estimator that "
          "fits in it ('> max': still ahead at the costliest run); 'MC ... to match best': the cost at "
          "which MC reaches the best MSE measured (medians over seeds)")
    print(render(header, rows))
    bad = [s for s in summary if not s["truth_ok"]]
    if bad:
        print(f"\nWARNING: for {len(bad)} row(s) the ground truth was NOT >= 10x finer (in MSE) than the "
              "error judged (column 'truth 10x'); raise --truth-max to judge them.")
    if target_lines:
        print("\nTargets (issue 4):")
        for line in target_lines:
            print("  " + line)


def run(config: Config) -> dict[str, Path]:
    out = config.out or results_dir()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for network in config.networks:
        for seed in config.seeds:
            rows += run_network(network, seed, config)
    summary = summarize(rows)
    cross = crossovers(rows)
    paths = {"csv": out / "expectations.csv", "summary": out / "expectations_summary.csv"}
    write_csv(paths["csv"], rows, CSV_FIELDS)
    write_csv(paths["summary"], summary + [{"network": c["network"], "estimator": "CROSSOVER",
                                            "flops": c["crossover_flops"], "seconds": c["crossover_seconds"]}
                                           for c in cross]
              + [{"network": c["network"], "estimator": "MC_TO_MATCH_BEST", "flops": c["match_best_flops"],
                  "seconds": c["match_best_seconds"]} for c in cross],
              ["network", "estimator", "family", "budget", "seeds", "flops", "seconds", "mse", "mse_judged",
               "mse_min", "mse_max", "predicted_mse", "mc_mse_at_flops", "gain_at_flops", "mc_mse_at_seconds",
               "gain_at_seconds", "truth_se2", "truth_ok"])
    if config.plot:
        paths["png"] = out / "expectations.png"
        plot(paths["png"], summary, rows)
    if config.verbose:
        print()
        print_tables(summary, cross, targets(summary, rows, config.budgets))
        print(f"\n{len(rows)} runs in {time.perf_counter() - start:.0f}s on "
              f"{machine_description()['devices']}; wrote " + ", ".join(str(p) for p in paths.values()))
    return paths


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ppl-mech bench expectations", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small networks (whestbench 64x4, arc 64 relu), 2 seeds, budgets up to 1e8")
    parser.add_argument("--seeds", default=None,
                        help="number of seeds (N: seeds 0..N-1) or a comma list (default 3; quick 2)")
    parser.add_argument("--networks", default=None,
                        help="comma list of network labels: " + ", ".join(n.label for n in FULL_NETWORKS))
    parser.add_argument("--budgets", default=None,
                        help="comma list of FLOP budgets (default 1e6..1e11 by decades)")
    parser.add_argument("--mechanize", default=None,
                        help="comma list of mechanize variants (default: all registered but cumulant4; "
                             "quick: also not gaussian-hermite)")
    parser.add_argument("--hybrid-bases", default=None,
                        help="comma list (default diagonal,gaussian,cumulant*)")
    parser.add_argument("--no-sample-runs", action="store_true", help="skip the measured MC check runs")
    parser.add_argument("--truth-max", type=int, default=None, help="most evaluations for ground truth")
    parser.add_argument("--out", default=None, help="output folder (default: results dir)")
    args = parser.parse_args(argv)

    config = Config()
    if args.quick:
        config = Config(networks=QUICK_NETWORKS, seeds=(0, 1), budgets=QUICK_BUDGETS, truth_min=2**16,
                        truth_max=2**22, mc_samples=2**13, skip=("cumulant4", "gaussian-hermite"))
    if args.seeds is not None:
        try:
            items = [int(x) for x in args.seeds.split(",") if x]
        except ValueError:
            parser.error(f"--seeds: expected N or a comma list of integers, got {args.seeds!r}")
        if not items or (len(items) == 1 and items[0] < 1):
            parser.error(f"--seeds: need at least one seed, got {args.seeds!r}")
        config.seeds = tuple(range(items[0])) if len(items) == 1 else tuple(items)
    if args.networks is not None:
        known = {n.label: n for n in FULL_NETWORKS + QUICK_NETWORKS}
        chosen = [x for x in args.networks.split(",") if x]
        unknown = [x for x in chosen if x not in known]
        if unknown or not chosen:
            parser.error(f"--networks: unknown {unknown}; choose from {', '.join(known)}")
        config.networks = tuple(known[x] for x in chosen)
    if args.budgets is not None:
        try:
            config.budgets = _floats(args.budgets)
        except ValueError:
            parser.error(f"--budgets: expected a comma list of numbers, got {args.budgets!r}")
        if not config.budgets or min(config.budgets) <= 0:
            parser.error(f"--budgets: need positive FLOP budgets, got {args.budgets!r}")
    if args.mechanize is not None:
        config.mechanize = tuple(x for x in args.mechanize.split(",") if x)
    if args.hybrid_bases is not None:
        config.hybrid_bases = tuple(x for x in args.hybrid_bases.split(",") if x)
    if args.truth_max is not None:
        if args.truth_max < 2:
            parser.error(f"--truth-max must be >= 2, got {args.truth_max}")
        config.truth_max = args.truth_max
        config.truth_min = min(config.truth_min, args.truth_max)
    config.sample_budgets = not args.no_sample_runs
    if args.out is not None:
        config.out = Path(args.out)
    try:
        mechanize_variants(config)
        hybrid_bases(config, mechanize_variants(config))
    except ValueError as e:
        parser.error(str(e))
    run(config)
    return 0
