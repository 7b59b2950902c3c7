"""Plain-text tables of results (what ``print(results)`` shows)."""

from __future__ import annotations

import math

import numpy as np


def format_number(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4g}"


def render(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def site_rows(name: str, result, max_units: int) -> list[list[str]]:
    value = np.atleast_1d(np.asarray(result.value, dtype=np.float64)).ravel()
    stderr = np.atleast_1d(np.asarray(result.stderr, dtype=np.float64)).ravel()
    lo, hi = (np.atleast_1d(np.asarray(b, dtype=np.float64)).ravel() for b in result.interval)
    scalar = np.ndim(result.value) == 0
    rows = []
    for i in range(min(value.size, max_units)):
        index = ",".join(str(int(j)) for j in np.unravel_index(i, np.shape(result.value)))
        label = name if scalar else f"{name}[{index}]"
        rows.append([
            label, format_number(value[i]), format_number(stderr[i]),
            f"[{format_number(lo[i])}, {format_number(hi[i])}]",
        ])
    if value.size > max_units:
        rows.append([f"{name}[...]", f"({value.size} units)", "", ""])
    return rows


def results_table(results, max_units: int = 4) -> str:
    rows = []
    for name, result in results.items():
        rows += site_rows(name, result, max_units)
    cost = results.cost
    title = (
        f"{results.method or 'results'}"
        + (f" on {results.model}" if results.model else "")
        + f": flops={format_number(cost.flops)} seconds={format_number(cost.seconds)} "
        f"evaluations={cost.evaluations}"
    )
    return title + "\n" + render(["site", "value", "stderr", "interval"], rows)
