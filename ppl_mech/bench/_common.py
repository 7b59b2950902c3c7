"""Shared pieces of the benchmarks: timing medians, the results folder, table printing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax


def results_dir() -> Path:
    """Where benchmarks write: ``$PPL_MECH_RESULTS`` or ``./results``."""
    path = Path(os.environ.get("PPL_MECH_RESULTS", "results"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def median_seconds(fn: Callable[[], Any], repeats: int = 5) -> float:
    """Median wall time of ``fn()`` (blocked until ready) over ``repeats`` calls, after a warm-up."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_description() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
    }


def write_json(name: str, payload: dict[str, Any]) -> Path:
    path = results_dir() / name
    path.write_text(json.dumps({"machine": machine_description(), **payload}, indent=1))
    return path
