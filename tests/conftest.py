"""Shared test settings: float64 where exact maths is checked, quiet ArviZ."""

import warnings

import jax
import pytest

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")


@pytest.fixture
def x64():
    """Run a test in float64 (exact-maths checks use tight tolerances)."""
    with jax.experimental.enable_x64():
        yield
