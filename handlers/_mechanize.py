"""``handlers.mechanize``: estimates from the model's structure, without sampling."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from ppl_mech._result import Results
from ppl_mech.mechanistic import mechanistic_estimate

from ._estimator import Estimator


class mechanize(Estimator):
    """Estimate every output site by walking the model's jaxpr with messages.

    Families, cheapest first:
        ``"mean"``: means only; real units are point masses, booleans independent
        Bernoullis (the independence presumption).
        ``"diagonal"``: mean and variance per unit, units independent.
        ``"gaussian"``: full joint covariance (Gaussian closure); detectors become
        Gaussian polytopes whose probabilities are exact in 1-D/2-D and computed
        by minimax tilting beyond (that is the only randomness, and its standard
        error is reported).

    ``stderr`` is the numerical error of the computation under the family's
    presumption; it does not include the presumption's own error (compare with
    ``handlers.sample`` to see that). The result's ``notes`` list every
    presumption made. Runs under ``jax.jit`` and ``jax.grad``.

    Args:
        fn: the NumPyro model.
        family: ``"gaussian"`` (default), ``"diagonal"`` or ``"mean"``.
        sites: output sites to estimate (default: all).
        rng_key: key for minimax tilting of polytopes (default ``PRNGKey(0)``).
        num_samples: samples of the tilted estimator per polytope (default 10_000).

    Example::

        >>> import numpyro, numpyro.distributions as dist
        >>> from ppl_mech import handlers
        >>> def model():
        ...     x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        ...     numpyro.deterministic("tail", x.sum() > 4.0)
        >>> r = handlers.mechanize(model)()
        >>> round(float(r["tail"].value), 6)  # P(N(0, 2) > 4) exactly
        0.002339
    """

    method = "mechanize"

    def __init__(
        self,
        fn: Callable | None = None,
        *,
        family: str = "gaussian",
        sites: Sequence[str] | None = None,
        rng_key: jax.Array | None = None,
        num_samples: int = 10_000,
    ):
        super().__init__(fn)
        self.options = dict(family=family, sites=sites, rng_key=rng_key, num_samples=num_samples)

    def estimate(self, args: tuple, kwargs: dict) -> Results:
        return mechanistic_estimate(self.fn, args, kwargs, **self.options)
