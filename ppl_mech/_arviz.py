"""ArviZ bridge: results as ``InferenceData``, comparison tables and forest plots.

``to_inference_data`` puts every kept draw of every site into the ``posterior``
group (so ``az.summary``, ``az.ess`` and ``az.plot_forest`` work), importance
log-weights into ``sample_stats.log_weight``, and the estimates themselves
(value, stderr, interval) into an ``estimates`` group. Draws of an estimator
are independent, so splitting them into ``chains`` is arbitrary; we use 4 so
that ArviZ's split-R-hat is defined (it should be ~1; anything else is a bug).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._result import Results


def import_arviz():
    """Import ArviZ without its once-a-day FutureWarning about the 1.0 refactor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def _as_chains(draws: np.ndarray, chains: int) -> np.ndarray:
    draws = np.asarray(draws)
    if draws.dtype == np.bool_:
        draws = draws.astype(np.int8)
    n = (draws.shape[0] // chains) * chains
    if n == 0:
        return draws[None]
    return draws[:n].reshape((chains, n // chains) + draws.shape[1:])


def to_inference_data(results: Results, *, chains: int = 4) -> Any:
    """Convert :class:`Results` to ``arviz.InferenceData``.

    Groups: ``posterior`` (kept draws per site, where the estimator kept any),
    ``sample_stats`` (``log_weight`` for importance sampling), ``estimates``
    (``value``, ``stderr``, ``lower``, ``upper`` per site). Sites without draws
    (e.g. purely mechanistic estimates) appear in ``estimates`` only.
    """
    az = import_arviz()
    import xarray as xr

    posterior, sample_stats = {}, {}
    for name, result in results.items():
        draws = result.diagnostics.get("draws")
        if draws is not None:
            posterior[name] = _as_chains(np.asarray(draws), chains)
        log_weights = result.diagnostics.get("log_weights")
        if log_weights is not None and "log_weight" not in sample_stats:
            sample_stats["log_weight"] = _as_chains(np.asarray(log_weights), chains)
    idata = az.from_dict(posterior=posterior or None, sample_stats=sample_stats or None)
    estimates = {}
    for name, result in results.items():
        value = np.asarray(result.value, dtype=np.float64)
        dims = [f"{name}_dim_{i}" for i in range(value.ndim)]
        for field, data in (
            ("value", value),
            ("stderr", result.stderr),
            ("lower", result.interval[0]),
            ("upper", result.interval[1]),
        ):
            estimates[f"{name}.{field}"] = (dims, np.broadcast_to(np.asarray(data, np.float64), value.shape))
    dataset = xr.Dataset(estimates, attrs={"method": results.method, "model": results.model})
    idata.add_groups({"estimates": dataset})
    return idata


def comparison_table(
    runs: Mapping[str, Results],
    site: str,
    *,
    reference: Any = None,
    unit: Any = None,
):
    """One row per estimator for ``site``: value ± stderr, interval, cost, and error.

    Args:
        runs: label -> results of the same model.
        site: the site to compare.
        reference: the true value (e.g. an exact answer); adds absolute error,
            relative error and ``|log10(value/reference)|`` columns.
        unit: index into a vector site (default: the site must be scalar, or the
            table reports the mean squared error over units against ``reference``).

    Returns:
        a ``pandas.DataFrame`` indexed by label.
    """
    import pandas as pd

    rows = []
    for label, results in runs.items():
        r = results[site]
        value = np.asarray(r.value, np.float64)
        stderr = np.asarray(r.stderr, np.float64)
        lo, hi = (np.asarray(b, np.float64) for b in r.interval)
        if unit is not None:
            value, stderr, lo, hi = value[unit], stderr[unit], lo[unit], hi[unit]
        row: dict[str, Any] = {"method": r.method}
        if value.ndim == 0:
            row.update(value=float(value), stderr=float(stderr), lower=float(lo), upper=float(hi))
        else:
            row.update(value=f"<{value.size} units>", stderr=float(np.sqrt(np.mean(stderr**2))))
        row.update(flops=r.cost.flops, seconds=r.cost.seconds, evaluations=r.cost.evaluations)
        if reference is not None:
            ref = np.asarray(reference, np.float64)
            if unit is not None and ref.ndim:
                ref = ref[unit]
            if value.ndim == 0:
                row["abs_error"] = float(abs(value - ref))
                row["rel_error"] = float(abs(value - ref) / abs(ref)) if ref != 0 else np.nan
                with np.errstate(divide="ignore"):
                    row["abs_log10_error"] = float(abs(np.log10(value / ref))) if ref > 0 else np.nan
            else:
                row["mse"] = float(np.mean((value - ref) ** 2))
        rows.append(row)
        rows[-1] = {"label": label, **rows[-1]}
    return pd.DataFrame(rows).set_index("label")


def plot_estimates(runs: Mapping[str, Results], site: str, *, reference: Any = None, ax=None):
    """Forest plot of several estimators' value and interval for one scalar site.

    Probabilities are drawn on a log axis (an interval whose lower end is 0 is
    drawn as an arrow to the axis' edge).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(runs)))
    labels = list(runs)
    is_probability = all(runs[k][site].is_probability for k in labels)
    for i, label in enumerate(labels):
        r = runs[label][site]
        value = float(np.asarray(r.value))
        lo, hi = (float(np.asarray(b)) for b in r.interval)
        ax.plot([max(lo, 1e-300) if is_probability else lo, hi], [i, i], color="C0", lw=2)
        ax.plot([value], [i], "o", color="C0")
    if reference is not None:
        ax.axvline(float(np.asarray(reference)), color="C3", ls="--", label="reference")
        ax.legend(loc="best")
    if is_probability:
        ax.set_xscale("log")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel(f"P[{site}]" if is_probability else f"E[{site}]")
    return ax
