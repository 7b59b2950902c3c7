"""Random k-CNF formulas under uniformly random assignments.

``x ~ Bernoulli(1/2)^n`` (values 0./1.); ``m`` clauses, each the OR of ``k``
literals on ``k`` distinct variables chosen uniformly (signs uniform), from a
seeded rng. The catastrophe is that the assignment satisfies every clause, so
``P[catastrophe]`` is the number of satisfying assignments over ``2^n``.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ._registry import BuiltModel, ModelSpec, option_defaults, register

BRUTE_FORCE_MAX_VARIABLES = 22


def random_kcnf(n: int, m: int, k: int, seed: int) -> tuple[tuple[int, ...], ...]:
    """``m`` random clauses in DIMACS style: literal ``+v`` / ``-v`` for variable ``v`` (1-based)."""
    if not 1 <= k <= n or m < 1:
        raise ValueError(f"need 1 <= k <= n and m >= 1, got n={n}, m={m}, k={k}")
    rng = np.random.default_rng(seed)
    clauses = []
    for _ in range(m):
        variables = rng.choice(n, size=k, replace=False) + 1
        signs = rng.integers(0, 2, size=k) * 2 - 1
        clauses.append(tuple(int(v * s) for v, s in zip(variables, signs, strict=True)))
    return tuple(clauses)


def _clause_arrays(clauses) -> tuple[np.ndarray, np.ndarray]:
    literals = np.asarray(clauses, np.int64)
    return np.abs(literals) - 1, (literals > 0)


def kcnf_model(*, num_variables: int, clauses: tuple[tuple[int, ...], ...]):
    """``x ~ Bernoulli(1/2)^n``; ``clauses`` (per-clause satisfied); ``catastrophe`` = all.

    The clause list is static (a constant of the program): literal ``+v`` is true
    when ``x[v-1] = 1``, ``-v`` when ``x[v-1] = 0``.
    """
    index, positive = _clause_arrays(clauses)
    x = numpyro.sample("x", dist.Bernoulli(probs=0.5).expand([num_variables]).to_event(1))
    # A literal's truth value as a number: x for +v, 1 - x for -v, i.e. the affine
    # map offset + sign * x with constant offset (0 or 1) and sign (+1 or -1).
    sign = np.where(positive, 1.0, -1.0).astype(np.float32)
    offset = np.where(positive, 0.0, 1.0).astype(np.float32)
    literal = offset + sign * x[index]  # (m, k)
    satisfied = numpyro.deterministic("clauses", jnp.any(literal > 0.5, axis=-1))
    numpyro.deterministic("catastrophe", jnp.all(satisfied))


def count_satisfying(n: int, clauses, chunk_bits: int = 16) -> int:
    """Number of satisfying assignments of ``clauses`` over ``n`` variables, by enumeration.

    Vectorised over chunks of ``2^chunk_bits`` assignments (bit ``i`` of the
    assignment's index is variable ``i + 1``).
    """
    if n > BRUTE_FORCE_MAX_VARIABLES + 8:
        raise ValueError(f"brute force over 2^{n} assignments is too slow")
    index, positive = _clause_arrays(clauses)
    chunk = 1 << min(chunk_bits, n)
    shifts = np.arange(n, dtype=np.int64)
    total = 0
    for start in range(0, 1 << n, chunk):
        codes = np.arange(start, start + chunk, dtype=np.int64)
        bits = ((codes[:, None] >> shifts) & 1).astype(bool)  # (chunk, n)
        literal = bits[:, index] == positive  # (chunk, m, k)
        total += int(np.count_nonzero(literal.any(axis=-1).all(axis=-1)))
    return total


@functools.lru_cache(maxsize=16)
def _exact_probability(n: int, clauses) -> float:
    return count_satisfying(n, clauses) / 2.0**n


def build_kcnf(n: int = 20, m: int = 80, k: int = 3, seed: int = 0) -> BuiltModel:
    """Random ``k``-CNF with ``m`` clauses over ``n`` variables; catastrophe = satisfied.

    Options:
        n: number of variables. m: number of clauses. k: literals per clause.
        seed: seed of the formula.
        (Default 20 variables, 80 clauses of 3: ``(7/8)^80 = 2.3e-5`` under a
        clause-independence heuristic; the seed-0 formula has 3 satisfying
        assignments, exact probability ``3 / 2^20 = 2.9e-6``.)

    ``exact``: ``clauses``: each clause has ``k`` distinct variables, so it is
    satisfied with probability ``1 - 2^-k``; ``catastrophe`` (when
    ``n <= 22``): the number of satisfying assignments, counted by enumerating all
    ``2^n`` assignments (vectorised, in chunks), divided by ``2^n``.
    """
    n, m, k, seed = int(n), int(m), int(k), int(seed)
    clauses = random_kcnf(n, m, k, seed)
    exact: dict = {"clauses": np.full(m, 1.0 - 2.0**-k)}
    if n <= BRUTE_FORCE_MAX_VARIABLES:
        exact["catastrophe"] = _exact_probability(n, clauses)
    return BuiltModel(
        name="kcnf",
        model=kcnf_model,
        kwargs=dict(num_variables=n, clauses=clauses),
        exact=exact,
        description=f"random {k}-CNF, {m} clauses over {n} uniform bits (seed {seed}); "
        "catastrophe: all clauses satisfied",
    )


register(ModelSpec(
    "kcnf", build_kcnf,
    "random k-CNF satisfied by a uniformly random assignment (exact by enumeration, n <= 22)",
    option_defaults(build_kcnf),
))
