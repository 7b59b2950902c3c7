"""The shape every estimator handler shares: ``handler(model, **options)(*model_args)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
        results = self.estimate(args, kwargs)
        results.model = getattr(self.fn, "__name__", type(self.fn).__name__)
        return results

    def estimate(self, args: tuple, kwargs: dict) -> Results:
        raise NotImplementedError
