"""Confidence intervals for Monte Carlo estimates.

Bernoulli sites get the exact Clopper–Pearson interval (or Jeffreys), which
stays correct with zero observed events: with ``k = 0`` of ``n`` the upper end
is ``1 - (alpha/2)**(1/n)``, about ``3.7/n`` at 95%, never 0. Real-valued sites
get the normal interval ``value ± z * stderr``, or Student's ``t`` with ``R - 1``
degrees of freedom when the standard error comes from ``R`` independent replicas
(splitting, annealed MHIS): with 4 replicas the normal quantile understates
the interval by 1.6x (AMS coverage on the MLP-threshold bench: 79% normal,
92% Student).
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats


def clopper_pearson(successes, trials, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact (conservative) binomial interval for ``successes`` out of ``trials``."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    alpha = 1.0 - level
    with np.errstate(invalid="ignore"):
        lower = np.where(k > 0, special.betaincinv(k, n - k + 1, alpha / 2), 0.0)
        upper = np.where(k < n, special.betaincinv(k + 1, n - k, 1 - alpha / 2), 1.0)
    return lower, upper


def jeffreys(successes, trials, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Jeffreys interval: quantiles of Beta(k + 1/2, n - k + 1/2), ends pinned at 0 and 1."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    alpha = 1.0 - level
    lower = np.where(k > 0, special.betaincinv(k + 0.5, n - k + 0.5, alpha / 2), 0.0)
    upper = np.where(k < n, special.betaincinv(k + 0.5, n - k + 0.5, 1 - alpha / 2), 1.0)
    return lower, upper


def normal_interval(value, stderr, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """``value ± z_{(1+level)/2} * stderr``."""
    z = stats.norm.ppf(0.5 + level / 2)
    value = np.asarray(value, dtype=np.float64)
    stderr = np.asarray(stderr, dtype=np.float64)
    return value - z * stderr, value + z * stderr


def student_interval(value, stderr, dof: int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """``value ± t_{dof, (1+level)/2} * stderr``, for a standard error from ``dof + 1`` replicas."""
    if int(dof) < 1:
        raise ValueError(f"a Student interval needs dof >= 1 (two or more replicas), got {dof}")
    t = stats.t.ppf(0.5 + level / 2, int(dof))
    value = np.asarray(value, dtype=np.float64)
    stderr = np.asarray(stderr, dtype=np.float64)
    return value - t * stderr, value + t * stderr


BERNOULLI_INTERVALS = {"clopper-pearson": clopper_pearson, "jeffreys": jeffreys}


def bernoulli_interval(successes, trials, level: float = 0.95, kind: str = "clopper-pearson"):
    """Dispatch to a named Bernoulli interval (``clopper-pearson`` or ``jeffreys``)."""
    try:
        rule = BERNOULLI_INTERVALS[kind]
    except KeyError:
        raise ValueError(
            f"unknown interval {kind!r}; choose one of {sorted(BERNOULLI_INTERVALS)}"
        ) from None
    return rule(successes, trials, level)
