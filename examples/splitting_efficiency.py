"""How far adaptive multilevel splitting is from its ideal variance on the MLP-threshold cases.

For each random-ReLU-MLP case of ``ppl-mech bench rare`` with P in [1e-9, 1e-6],
run ``--replicas`` independent splitting replicas of ``--per-replica`` model
evaluations each (the bench's AMS runs 4 replicas of 2^14) and report, against
the cached truth:

* the relative bias of their mean and its standard error;
* the relative variance of one replica;
* ``efficiency = relvar * evaluations / log(P)^2``. Ideal splitting (exact
  conditional draws, ``m`` pCN steps per regenerated particle) has a relative
  variance ``-log P / N`` at a cost of about ``N m (-log P)`` evaluations, so
  its efficiency is about ``m`` (5 by default); more means the pCN moves mix
  worse than independent draws;
* the median |log10 error| that the bench's 4-replica mean would have if the
  replicas were log-normal with this relative variance.

    python examples/splitting_efficiency.py [--replicas 16] [--per-replica 16384] [--seed 0]

The truths come from the bench's cache (``$PPL_MECH_RESULTS/rare_truth``); a
missing one is computed first (minutes per case).
"""

from __future__ import annotations

import argparse
import math

import jax
import numpy as np

from ppl_mech import handlers
from ppl_mech.bench.rare import ACCEPTANCE_RANGE, Config, truth_for
from ppl_mech.bench.rare_cases import MLP_THRESHOLD_NETWORKS, mlp_threshold_case

BENCH_REPLICAS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--per-replica", type=int, default=2**14, help="model evaluations per replica")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mcmc-steps", type=int, default=5)
    args = parser.parse_args()
    print("| case | P | particles | bias | relvar / replica | efficiency (ideal ~ steps) "
          "| predicted median abs log10 error, 4 replicas | largest replica share |")
    print("|---|---|---|---|---|---|---|---|")
    for width, depth, sigmas in MLP_THRESHOLD_NETWORKS:
        case = mlp_threshold_case(width, depth, sigmas)
        p = truth_for(case, Config(cases=[case], verbose=False))["p"]
        if not ACCEPTANCE_RANGE[0] <= p <= ACCEPTANCE_RANGE[1]:
            continue
        result = handlers.importance(
            case.model, proposal="ams", num_samples=args.replicas * args.per_replica,
            num_replicas=args.replicas, mcmc_steps=args.mcmc_steps, rng_key=jax.random.PRNGKey(args.seed),
            sites=["catastrophe"], keep_draws=0,
        )(*case.args, **case.kwargs)["catastrophe"]
        estimates = np.asarray(result.diagnostics["replica_estimates"], np.float64)
        relvar = float(estimates.var(ddof=1) / p**2)
        per_replica = result.cost.evaluations / args.replicas
        bias = estimates.mean() / p - 1
        bias_se = estimates.std(ddof=1) / p / math.sqrt(args.replicas)
        sigma_log10 = math.sqrt(math.log1p(relvar / BENCH_REPLICAS)) / math.log(10)
        particles = result.diagnostics["num_particles"]
        print(f"| {case.label} | {p:.2g} | {particles} | {bias:+.2f} +- {bias_se:.2f} "
              f"| {relvar:.3f} | {relvar * per_replica / math.log(p) ** 2:.1f} | {0.6745 * sigma_log10:.3f} "
              f"| {result.diagnostics['largest_replica_share']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
