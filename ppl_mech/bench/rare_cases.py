"""The rare-event suites of ``ppl-mech bench rare``: models with a known (or carefully estimated) ``P``.

Four suites, each a list of :class:`RareCase`:

* ``mlp-threshold``: ARC-style random ReLU MLPs (``models.arc_mlp``: He
  initialisation, no biases, ``x ~ N(0, I_width)``), widths 32..256 and 2..8
  hidden layers; the catastrophe is ``output[0] > t`` with ``t = mean + sigmas *
  std`` of that unit over the fixed pilot inputs. ``sigmas`` per depth is chosen
  so that the true ``P`` spreads over about 1e-9..1e-4 (ReLU readouts have
  lighter-than-Gaussian upper tails, lighter the deeper the network).
* ``mlp-conjunction``: the same networks, catastrophe ``output[0] > t_0`` and
  ``output[1] > t_1``.
* ``polytope``: ``{x : A x >= a 1}`` under ``x ~ N(0, I_d)``, ``d`` = 10..100,
  ``A = chol(S) Q`` with ``S`` equicorrelated (``rho = 0.5``) and ``Q`` a random
  rotation, so ``A x ~ N(0, S)`` and ``P`` is the 1-D integral of
  :func:`ppl_mech.bench.polytope.reference_log_probability` (exact to ~1e-12).
* ``kcnf``: random 3-CNF formulas on ``n <= 22`` uniform bits, ``P`` by
  enumerating all ``2^n`` assignments (exact).

The MLP suites have no closed form; their truth is a long run of adaptive
multilevel splitting (``handlers.importance(proposal="ams")``, consistent, with
many more particles and pCN steps than the runs it judges), extended until its
relative standard error is <= 2% (see ``ppl_mech.bench.rare``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist


@dataclasses.dataclass(frozen=True)
class RareCase:
    """One model of a suite: ``model(*args, **kwargs)`` with a boolean ``catastrophe`` site.

    ``exact`` is the exact ``P`` where one is known, else ``None`` (estimated truth).
    ``options`` is what identifies the case in the truth cache.
    """

    suite: str
    label: str
    model: Callable
    args: tuple
    kwargs: dict
    exact: float | None
    options: dict[str, Any]


def mlp_conjunction_model(weights, thresholds, *, units: tuple[int, ...]):
    """Random ReLU MLP on ``x ~ N(0, I)``; ``catastrophe`` = every ``output[u] > t_u``."""
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([weights[0].shape[0]]).to_event(1))
    h = x
    for w in weights[:-1]:
        h = jnp.maximum(h @ w, 0.0)
    out = numpyro.deterministic("output", (h @ weights[-1])[jnp.asarray(units)])
    numpyro.deterministic("catastrophe", jnp.all(out > thresholds))


# (width, hidden layers, sigmas): for each seed-0 network, sigmas was set from two short
# splitting runs (log P is close to linear in sigmas^2) so that the cases spread over
# P ~ 1e-9..1e-4; the truth runs measure the P each case actually has (see the README).
MLP_THRESHOLD_NETWORKS = (
    (32, 2, 5.22), (64, 2, 4.97), (128, 2, 6.09), (256, 2, 5.9),
    (32, 4, 5.89), (64, 4, 4.36), (128, 4, 4.92), (256, 4, 5.03),
    (32, 8, 6.05), (64, 8, 3.73), (128, 8, 3.94), (256, 8, 4.9),
)
MLP_CONJUNCTION_NETWORKS = ((32, 2, 3.82), (64, 4, 2.86), (128, 4, 3.58), (32, 8, 5.08))
POLYTOPES = ((10, 2.5), (10, 3.5), (30, 2.5), (30, 3.0), (100, 2.5), (100, 3.0))
# (variables, clauses, seed), 3-CNF; P from 1.9e-6 to 1.9e-5 (n <= 22 keeps enumeration exact)
KCNF = ((20, 80, 0), (20, 84, 3), (22, 80, 1), (22, 92, 3))


def mlp_threshold_case(width: int, depth: int, sigmas: float, seed: int = 0) -> RareCase:
    from ppl_mech.models import get_model

    built = get_model("arc-mlp", width=width, hidden_layers=depth, activation="relu", seed=seed,
                      sigmas=sigmas)
    return RareCase(
        "mlp-threshold", f"mlp-{width}x{depth}-{sigmas}s", built.model, built.args, built.kwargs, None,
        dict(kind="mlp-threshold", width=width, depth=depth, sigmas=sigmas, seed=seed),
    )


def mlp_conjunction_case(width: int, depth: int, sigmas: float, seed: int = 0,
                         units: tuple[int, ...] = (0, 1)) -> RareCase:
    from ppl_mech.models import get_model

    thresholds, weights = [], None
    for unit in units:
        built = get_model("arc-mlp", width=width, hidden_layers=depth, activation="relu", seed=seed,
                          sigmas=sigmas, unit=unit)
        weights = built.args[0]
        thresholds.append(float(built.args[2]))
    return RareCase(
        "mlp-conjunction", f"mlp-{width}x{depth}-and{len(units)}-{sigmas}s", mlp_conjunction_model,
        (weights, jnp.asarray(thresholds, jnp.float32)), dict(units=tuple(units)), None,
        dict(kind="mlp-conjunction", width=width, depth=depth, sigmas=sigmas, seed=seed,
             units=list(units)),
    )


def polytope_case(dim: int, level: float, rho: float = 0.5, seed: int = 0) -> RareCase:
    """``A x >= level`` componentwise with ``A x ~ N(0, S)``, ``S`` equicorrelated (``rho``)."""
    from ppl_mech.models.halfspaces import halfspaces_model

    from .polytope import reference_log_probability

    rng = np.random.default_rng(seed)
    S = (1 - rho) * np.eye(dim) + rho * np.ones((dim, dim))
    Q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    A = (np.linalg.cholesky(S) @ Q).astype(np.float32)
    offsets = np.full(dim, level, np.float32)
    exact = math.exp(reference_log_probability(dim, rho, float(np.float32(level))))
    return RareCase(
        "polytope", f"polytope-{dim}d-{level}", halfspaces_model, (jnp.asarray(A), jnp.asarray(offsets)),
        {}, exact, dict(kind="polytope", dim=dim, level=level, rho=rho, seed=seed),
    )


def kcnf_case(n: int, m: int, seed: int, k: int = 3) -> RareCase:
    from ppl_mech.models import get_model

    built = get_model("kcnf", n=n, m=m, k=k, seed=seed)
    return RareCase(
        "kcnf", f"kcnf-{n}v-{m}c-s{seed}", built.model, built.args, built.kwargs,
        float(built.exact["catastrophe"]), dict(kind="kcnf", n=n, m=m, k=k, seed=seed),
    )


def full_cases() -> list[RareCase]:
    return [
        *(mlp_threshold_case(w, d, s) for w, d, s in MLP_THRESHOLD_NETWORKS),
        *(mlp_conjunction_case(w, d, s) for w, d, s in MLP_CONJUNCTION_NETWORKS),
        *(polytope_case(d, a) for d, a in POLYTOPES),
        *(kcnf_case(n, m, s) for n, m, s in KCNF),
    ]


def quick_cases() -> list[RareCase]:
    """One small case per suite (seconds of truth each), for tests and a first look."""
    return [
        mlp_threshold_case(32, 2, 4.0),
        mlp_conjunction_case(32, 2, 2.5),
        polytope_case(10, 2.5),
        kcnf_case(14, 50, 0),
    ]
