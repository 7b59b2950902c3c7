"""Shared test settings: float64 where exact maths is checked, quiet ArviZ."""

import warnings

import jax
import pytest

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")


@pytest.fixture
def x64():
    """Run a test in float64 (exact-maths checks use tight tolerances)."""
    enable = getattr(jax, "enable_x64", None)
    if enable is None:  # older jax
        from jax.experimental import enable_x64 as enable
    with enable(True):
        yield
