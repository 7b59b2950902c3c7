"""Shared test settings: float64 where exact maths is checked, quiet ArviZ."""

import os
import warnings
from pathlib import Path

import jax
import pytest

# Most of a cold test run is XLA compiling the many small estimator programs, not running them:
# LLVM's backend optimisations cost more than they save at test sizes (-18% on a cold run of the
# level-set and Gamma tests). Read when the backend starts, after this; library users keep XLA's
# defaults.
_FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), _FAST_COMPILE]).strip()

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")

# One compilation cache for the run (both xdist workers): tests that compile the same program
# (a built-in model under one family, a sampler) compile it once. It lives in the repository's
# ignored .pytest_cache, so a clean clone starts cold.
_CACHE = Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax-compilation"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


@pytest.fixture
def x64():
    """Run a test in float64 (exact-maths checks use tight tolerances)."""
    enable = getattr(jax, "enable_x64", None)
    if enable is None:  # older jax
        from jax.experimental import enable_x64 as enable
    with enable(True):
        yield
