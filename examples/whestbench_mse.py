"""Issue-3 acceptance: WhestBench 256x8 final-layer MSE of each mechanize family.

Reference: 2^22 (4.2M) Monte Carlo samples of ``layer_8`` (its own MSE, the mean
squared standard error, is printed and is ~1000x below the errors it judges).

    python examples/whestbench_mse.py [--samples 4194304] [--seed 0]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from ppl_mech.models import get_model

from ppl_mech import handlers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2**22)
    parser.add_argument("--seed", type=int, default=0, help="the network's seed")
    args = parser.parse_args()
    built = get_model("whestbench-256x8", seed=args.seed)
    site = "layer_8"
    mc = handlers.sample(built.model, num_samples=args.samples, rng_key=jax.random.PRNGKey(123),
                         sites=[site])(*built.args, **built.kwargs)[site]
    reference = np.asarray(mc.value, np.float64)
    noise = float(np.mean(np.asarray(mc.stderr, np.float64) ** 2))
    variance = float(np.mean(np.asarray(mc.diagnostics["variance"])))
    flops_per_sample = mc.cost.flops / args.samples
    print(f"{built.name} seed {args.seed}: reference {args.samples} samples, its MSE {noise:.2e}; "
          f"mean unit variance {variance:.4f}")
    print(f"{'method':36s} {'MSE':>9s} {'FLOPs':>9s} {'seconds':>8s} {'MC MSE at equal FLOPs':>22s}")
    for family, relu in (("mean", "exact"), ("diagonal", "exact"), ("gaussian", "exact"),
                         ("gaussian", "hermite")):
        r = handlers.mechanize(built.model, family=family, relu=relu, sites=[site])(
            *built.args, **built.kwargs)[site]
        mse = float(np.mean((np.asarray(r.value, np.float64) - reference) ** 2)) - noise
        mc_mse = variance / max(r.cost.flops / flops_per_sample, 1.0)
        print(f"{r.method:36s} {mse:9.3g} {r.cost.flops:9.3g} {r.cost.seconds:8.3g} {mc_mse:22.3g}")


if __name__ == "__main__":
    main()
