"""One result type for every estimator: :class:`SiteResult` per site, :class:`Results` per run.

A :class:`SiteResult` is a JAX pytree whose numbers (``value``, ``stderr``,
``interval``, array diagnostics) are leaves, so that an estimate computed under
``jax.jit`` or differentiated with ``jax.grad`` comes back as the same type.
Its ``method`` and ``cost`` are static metadata.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Cost:
    """What an estimate cost.

    Attributes:
        flops: floating-point operations from XLA's compiled cost analysis of
            everything the estimator ran (``nan`` when not measured, e.g. under
            an outer ``jax.jit``).
        seconds: wall-clock seconds of the run, compilation excluded.
        evaluations: forward passes of the model (0 for a purely mechanistic
            estimate).
        compile_seconds: wall-clock seconds spent tracing and compiling.
    """

    flops: float = math.nan
    seconds: float = math.nan
    evaluations: int = 0
    compile_seconds: float = math.nan

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            flops=self.flops + other.flops,
            seconds=self.seconds + other.seconds,
            evaluations=self.evaluations + other.evaluations,
            compile_seconds=self.compile_seconds + other.compile_seconds,
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SiteResult:
    """The estimate of one site.

    Attributes:
        value: ``P[site]`` for a boolean site, ``E[site]`` otherwise; per unit for
            array-valued sites (same shape as the site).
        stderr: standard error of ``value`` (0 for an exact value; ``nan`` when
            the method gives none).
        interval: ``(lower, upper)`` arrays, a 95% interval by default. For
            sampled boolean sites it is exact (Clopper–Pearson), so it stays
            correct when no event was observed.
        cost: what the estimate cost (static metadata).
        method: the estimator's name, e.g. ``"sample"`` or ``"mechanize[gaussian]"``.
        diagnostics: estimator-specific extras (draws, log-weights, ESS, ...).
        is_probability: whether ``value`` is a probability (boolean site).
        notes: the approximations the method made (e.g. an independence presumption).
    """

    value: Any
    stderr: Any
    interval: tuple[Any, Any]
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)
    cost: Cost = dataclasses.field(default=Cost(), metadata=dict(static=True))
    method: str = dataclasses.field(default="", metadata=dict(static=True))
    is_probability: bool = dataclasses.field(default=False, metadata=dict(static=True))
    notes: tuple[str, ...] = dataclasses.field(default=(), metadata=dict(static=True))

    @property
    def relative_stderr(self) -> Any:
        """``stderr / |value|`` (``inf`` where the value is 0)."""
        value = np.abs(np.asarray(self.value, dtype=np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(value > 0, np.asarray(self.stderr) / value, np.inf)

    def replace(self, **changes: Any) -> SiteResult:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        value = np.asarray(self.value)
        if value.size == 1:
            lo, hi = (float(np.asarray(b)) for b in self.interval)
            return (
                f"SiteResult(value={float(value):.6g}, stderr={float(np.asarray(self.stderr)):.3g}, "
                f"interval=({lo:.3g}, {hi:.3g}), method={self.method!r}, "
                f"flops={self.cost.flops:.3g}, seconds={self.cost.seconds:.3g})"
            )
        return (
            f"SiteResult(value=<array {value.shape}>, method={self.method!r}, "
            f"flops={self.cost.flops:.3g}, seconds={self.cost.seconds:.3g})"
        )


class Results(Mapping[str, SiteResult]):
    """Site name -> :class:`SiteResult`, in the model's order; prints as a table.

    Registered as a pytree, so a handler called under ``jax.jit``/``jax.grad``
    returns one too.
    """

    def __init__(self, sites: Mapping[str, SiteResult], *, method: str = "", model: str = ""):
        self._sites = dict(sites)
        self.method = method
        self.model = model

    def __getitem__(self, name: str) -> SiteResult:
        try:
            return self._sites[name]
        except KeyError:
            raise KeyError(
                f"no site {name!r} in these results; sites are {list(self._sites)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._sites)

    def __len__(self) -> int:
        return len(self._sites)

    @property
    def cost(self) -> Cost:
        """The cost of the whole run (shared by its sites)."""
        costs = [r.cost for r in self._sites.values()]
        return costs[0] if costs else Cost()

    def table(self, max_units: int = 4) -> str:
        """A plain-text table: one row per site (per unit for small vector sites)."""
        from ._table import results_table

        return results_table(self, max_units=max_units)

    def __repr__(self) -> str:
        return self.table()

    def _tree_flatten(self):
        names = tuple(self._sites)
        return tuple(self._sites[n] for n in names), (names, self.method, self.model)

    @classmethod
    def _tree_unflatten(cls, aux, children):
        names, method, model = aux
        return cls(dict(zip(names, children, strict=True)), method=method, model=model)


jax.tree_util.register_pytree_node(Results, Results._tree_flatten, Results._tree_unflatten)
