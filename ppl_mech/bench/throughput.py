"""``ppl-mech bench throughput``: Monte Carlo samples/s against this machine's matmul rate.

The sampler's useful work on a ReLU MLP is its matrix products, so its ceiling
is the machine's float32 GEMM rate. We measure that rate with jitted GEMMs
(the best of a few shapes, including the sampler's own (batch, w) @ (w, w)),
then run ``handlers.sample`` on the WhestBench network and report the
fraction of the GEMM rate it achieves, counting 2*depth*w^2 useful FLOPs per
sample (the rest, random numbers and ReLUs, is overhead by this measure).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from ._common import median_seconds, write_json


def matmul_rate(width: int, batch: int, repeats: int = 5) -> dict[str, float]:
    """Median float32 GFLOP/s of jitted GEMMs: the sampler's shape and a square one."""
    rates = {}
    for label, (m, k, n) in {
        f"({batch},{width})@({width},{width})": (batch, width, width),
        "(2048,2048)@(2048,2048)": (2048, 2048, 2048),
    }.items():
        a = jax.random.normal(jax.random.PRNGKey(1), (m, k), jnp.float32)
        b = jax.random.normal(jax.random.PRNGKey(2), (k, n), jnp.float32)
        f = jax.jit(lambda a, b: a @ b)
        seconds = median_seconds(lambda f=f, a=a, b=b: f(a, b), repeats)
        rates[label] = 2.0 * m * k * n / seconds / 1e9
    return rates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ppl-mech bench throughput", description=__doc__)
    parser.add_argument("--model", default="whestbench-256x8")
    parser.add_argument("--num-samples", type=int, default=2**21)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from ppl_mech import handlers
    from ppl_mech.models import get_model

    built = get_model(args.model)
    weights = built.args[0]
    depth, width = len(weights), weights[0].shape[0]
    rates = matmul_rate(width, batch=2**14)
    peak = max(rates.values())
    runs = []
    for seed in range(args.repeats):
        r = handlers.sample(
            built.model,
            num_samples=args.num_samples,
            rng_key=jax.random.PRNGKey(seed),
            sites=[built.catastrophe],
            keep_draws=0,
            progress_bar=False,
        )(*built.args, **built.kwargs)
        runs.append(r.cost)
    seconds = sorted(c.seconds for c in runs)[len(runs) // 2]
    samples_per_second = args.num_samples / seconds
    useful_gflops = samples_per_second * 2 * depth * width**2 / 1e9
    xla_gflops = runs[0].flops / seconds / 1e9
    print(f"model {built.name}: depth {depth}, width {width}, {args.num_samples} samples x "
          f"{args.repeats} runs, devices {jax.devices()}")
    for label, rate in rates.items():
        print(f"  float32 GEMM {label:28s} {rate:8.1f} GFLOP/s")
    print(f"  sampler: {samples_per_second:,.0f} samples/s (median), "
          f"{useful_gflops:.1f} GFLOP/s of matmul work, {xla_gflops:.1f} GFLOP/s by XLA's count")
    print(f"  efficiency: {useful_gflops / peak:.1%} of the best GEMM rate "
          f"(goal >= 60%)")
    path = write_json("throughput.json", {
        "model": built.name, "num_samples": args.num_samples, "gemm_gflops": rates,
        "samples_per_second": samples_per_second, "useful_gflops": useful_gflops,
        "xla_gflops": xla_gflops, "efficiency": useful_gflops / peak,
        "seconds": [c.seconds for c in runs],
    })
    print(f"wrote {path}")
    return 0
