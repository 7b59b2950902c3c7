"""The polynomial method for Gaussian polytopes vs minimax tilting (and exact 2-D), honestly.

P(A x <= b) for x ~ N(0, I_n), k random unit normals (rows of A), every b_i = level.
Reference: ``ppl_mech._gaussian_polytope.gaussian_polytope_probability`` (exact for k = 2;
minimax tilting with 20000 samples otherwise, its relative standard error printed).
The polynomial method (:func:`ppl_mech.tails.halfspace_polynomial_probability`) at
chaos degree D; "indep." is D = 0, the presumption of independence. Random unit normals
have correlations ~ 1/sqrt(n): the method is excellent at n = 100 and fails at n = 10
for rare events (correlated, k large).

Run: ``python examples/halfspace_polynomial_accuracy.py`` (1-2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from ppl_mech._gaussian_polytope import gaussian_polytope_probability  # noqa: E402
from ppl_mech.tails import halfspace_polynomial_probability  # noqa: E402

DEGREES = (2, 4, 6, 8)


def main():
    rng = np.random.default_rng(0)
    head = (f"{'n':>4s}{'k':>4s}{'level':>7s}{'P reference':>13s}{'ref se':>8s}{'max|rho|':>9s}{'indep.':>9s}"
            + "".join(f"{'D=' + str(d):>9s}" for d in DEGREES) + f"{'sec D=8':>9s}{'sec ref':>9s}")
    print(head)
    print("-" * len(head))
    for n in (10, 30, 100):
        for k in (2, 5, 10):
            A = rng.standard_normal((k, n))
            A /= np.linalg.norm(A, axis=1, keepdims=True)
            rho = np.abs(A @ A.T - np.eye(k)).max()
            for level in (0.0, -1.0, -2.0):
                b = np.full(k, level)
                t0 = time.perf_counter()
                ref = gaussian_polytope_probability(A, b, np.zeros(n), np.eye(n), key=jax.random.PRNGKey(1),
                                                    num_samples=20000)
                p_ref = float(ref.probability)
                t_ref = time.perf_counter() - t0
                errs = []
                t_poly = 0.0
                indep = None
                for d in DEGREES:
                    t0 = time.perf_counter()
                    est = halfspace_polynomial_probability(A, b, np.zeros(n), np.eye(n), degree=d,
                                                           check=False)
                    p = float(est.probability)
                    t_poly = time.perf_counter() - t0
                    indep = float(est.independence)
                    errs.append(p / p_ref - 1)
                cells = "".join(f"{e:+9.1e}" if abs(e) < 1e3 else f"{e:+9.0e}" for e in errs)
                print(f"{n:4d}{k:4d}{level:7.1f}{p_ref:13.3e}{float(ref.stderr) / p_ref:8.0e}{rho:9.2f}"
                      f"{indep / p_ref - 1:+9.1e}{cells}{t_poly:9.2f}{t_ref:9.2f}")
    print("cells: relative error (estimate / reference - 1); 'sec' includes compilation on first use")


if __name__ == "__main__":
    main()
