"""``ppl-mech bench polytope``: a dimension-100 Gaussian polytope with P ~ 1e-10, by minimax tilting.

The polytope is {x : A x <= b} with x ~ N(mean, I_100), A = chol(S) Q (Q a fixed
random rotation, S equicorrelated with rho = 0.5) and b = A mean - 3: A(x - mean)
is N(0, S), so by symmetry P = P(z_i >= 3 for all i), z ~ N(0, S), which is the
1-D integral int phi(w) Q((3 - sqrt(rho) w)/sqrt(1 - rho))^100 dw (computed by
adaptive quadrature to ~1e-12 relative: the reference). Prints the relative error
and the seconds per estimate after compilation (median of repeats); the target is <= 1%
relative error in <= 0.5 s.

    ppl-mech bench polytope [--num-samples 10000] [--repeats 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate
from scipy.special import log_ndtr

from ._common import write_json

DIM = 100
RHO = 0.5
THRESHOLD = 3.0


def reference_log_probability(dim: int = DIM, rho: float = RHO, a: float = THRESHOLD) -> float:
    """log P(z_i >= a for all i), z equicorrelated N(0, (1-rho) I + rho 11^T): 1-D quadrature."""

    def log_integrand(w):
        return (
            -0.5 * w * w
            - 0.5 * np.log(2 * np.pi)
            + dim * log_ndtr(-(a - np.sqrt(rho) * w) / np.sqrt(1 - rho))
        )

    grid = np.linspace(-10.0, 40.0, 50001)
    values = log_integrand(grid)
    w0, top = grid[np.argmax(values)], values.max()
    val, _ = integrate.quad(
        lambda w: np.exp(log_integrand(w) - top),
        w0 - 12.0,
        w0 + 12.0,
        points=[w0],
        epsabs=0.0,
        epsrel=1e-13,
        limit=400,
    )
    return float(np.log(val) + top)


def problem(dim: int = DIM, rho: float = RHO, a: float = THRESHOLD, seed: int = 0):
    rng = np.random.default_rng(seed)
    S = (1 - rho) * np.eye(dim) + rho * np.ones((dim, dim))
    Q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    A = np.linalg.cholesky(S) @ Q
    mean = 0.1 * rng.standard_normal(dim)
    b = -a + A @ mean  # A x <= b  <=>  A (x - mean) <= -a  ~  z >= a by symmetry
    return A, b, mean, np.eye(dim)


def run(num_samples: int = 10_000, repeats: int = 5, seed: int = 0) -> dict:
    """Estimate the benchmark polytope; return errors and timings (float64)."""
    from ppl_mech._gaussian_polytope import gaussian_polytope_probability

    with jax.enable_x64(True):
        A, b, mean, cov = (jnp.asarray(x, jnp.float64) for x in problem(seed=seed))
        ref = reference_log_probability()
        fn = jax.jit(
            lambda key: gaussian_polytope_probability(A, b, mean, cov, key=key, num_samples=num_samples)
        )
        t0 = time.perf_counter()
        r = jax.block_until_ready(fn(jax.random.PRNGKey(seed)))
        compile_s = time.perf_counter() - t0
        times, results = [], []
        for i in range(repeats):
            t0 = time.perf_counter()
            r = jax.block_until_ready(fn(jax.random.PRNGKey(seed + 1 + i)))
            times.append(time.perf_counter() - t0)
            results.append(r)
        log_p = np.array([float(x.log_probability) for x in results])
        rel_se = np.array([float(x.stderr / x.probability) for x in results])
        rel_err = np.expm1(log_p - ref)
        return {
            "dimension": DIM,
            "num_samples": num_samples,
            "method": r.method,
            "reference_probability": float(np.exp(ref)),
            "estimates": np.exp(log_p).tolist(),
            "relative_errors": rel_err.tolist(),
            "median_abs_relative_error": float(np.median(np.abs(rel_err))),
            "median_reported_relative_stderr": float(np.median(rel_se)),
            "seconds_median": float(np.median(times)),
            "seconds_min": float(np.min(times)),
            "first_call_seconds_incl_compile": compile_s,
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ppl-mech bench polytope", description=__doc__.split("\n")[0])
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = run(num_samples=args.num_samples, repeats=args.repeats, seed=args.seed)
    print(f"dimension {out['dimension']}, P = {out['reference_probability']:.4g} (reference by quadrature), "
          f"{out['num_samples']} samples, method {out['method']}")
    print(f"{'repeat':>6} {'estimate':>12} {'rel. error':>11}")
    for i, (p, e) in enumerate(zip(out["estimates"], out["relative_errors"], strict=True)):
        print(f"{i:6d} {p:12.5g} {e:11.2%}")
    print(f"median |relative error| {out['median_abs_relative_error']:.2%} (target <= 1%), "
          f"reported relative stderr {out['median_reported_relative_stderr']:.2%}")
    print(f"seconds per estimate after compilation: median {out['seconds_median']:.3f} "
          f"(target <= 0.5), first call {out['first_call_seconds_incl_compile']:.1f}")
    print(f"wrote {write_json('polytope.json', out)}")
    return 0
