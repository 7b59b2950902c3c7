"""The shape every estimator handler shares: ``handler(model, **options)(*model_args)``."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ppl_mech._result import Results


class Estimator:
    """Base of the estimator handlers (``sample``, ``mechanize``, ``importance``).

    Like a NumPyro handler it takes ``fn=None`` first, so it works as a wrapper
    (``sample(model, ...)``) and as a decorator (``@sample(...)``). Unlike an
    effect handler it is not a context manager: an estimate runs the model many
    times (or traces it), which a ``with`` block cannot do. NumPyro's own
    handlers (``substitute``, ``condition``, ``scope``) compose by wrapping the
    model before it is given to the estimator.
    """

    method: str = ""

    def __init__(self, fn: Callable | None = None):
        if fn is not None and not callable(fn):
            raise TypeError(f"{type(self).__name__}: expected a model (a callable), got {fn!r}")
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Results | Estimator:
        if self.fn is None:
            if len(args) == 1 and not kwargs and callable(args[0]):
                self.fn = args[0]
                return self
            raise TypeError(f"{type(self).__name__} has no model: pass it first, or decorate one")
        check_common_options(type(self).__name__, getattr(self, "options", {}))
        results = self.estimate(args, kwargs)
        results.model = getattr(self.fn, "__name__", type(self.fn).__name__)
        return results

    def estimate(self, args: tuple, kwargs: dict) -> Results:
        raise NotImplementedError


def check_common_options(handler: str, options: dict) -> None:
    """Clear errors for the options every estimator shares (``level``, ``rng_key``)."""
    level = options.get("level")
    if level is not None and not (isinstance(level, numbers.Real) and not isinstance(level, bool)
                                  and 0 < level < 1):
        raise ValueError(f"{handler}: level (the interval's coverage) must be a number in (0, 1), "
                         f"got {level!r}")
    if "rng_key" in options and options["rng_key"] is not None:
        key = options["rng_key"]
        dtype = getattr(key, "dtype", None)
        typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
        raw = dtype is not None and jnp.ndim(key) == 1 and dtype == jnp.uint32  # (2,) threefry, (4,) rbg
        if not (typed or raw):
            raise TypeError(f"{handler}: rng_key must be a JAX random key, jax.random.PRNGKey(seed) or "
                            f"jax.random.key(seed); got {key!r}")
