"""Measuring cost: FLOPs from XLA's compiled cost analysis, and wall-clock time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax


def compiled_flops(compiled: Any) -> float:
    """FLOPs of one call of a compiled XLA executable (``jit(f).lower(...).compile()``).

    Returns ``nan`` where the backend reports no cost analysis, and 0 for a program
    whose analysis has no ``flops`` entry (XLA omits zero counts: integer-only
    programs). XLA does not see inside custom calls: LAPACK factorizations
    (``cholesky``, ``eigh``) on the CPU count as 0, so the FLOPs of estimators that
    factorize covariances (polytope probabilities) are a lower bound.
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return math.nan
    if isinstance(analysis, list | tuple):  # older jax: one dict per device program
        analysis = analysis[0] if analysis else {}
    if not analysis:
        return math.nan
    return float(analysis.get("flops", 0.0))


def compile_with_cost(fn: Callable, *args: Any, **jit_kwargs: Any):
    """``jax.jit`` and compile ``fn`` for ``args``; return ``(compiled, flops, compile_seconds)``."""
    start = time.perf_counter()
    compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
    return compiled, compiled_flops(compiled), time.perf_counter() - start


def block(tree: Any) -> Any:
    """Wait for every array in ``tree`` (so timings measure the computation, not dispatch)."""
    return jax.block_until_ready(tree)


def is_traced(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is a tracer (we are inside jit/grad/vmap)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))
