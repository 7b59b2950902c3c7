"""``handlers.sample``: the Monte Carlo baseline every other estimator is compared with."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from ppl_mech._monte_carlo import monte_carlo
from ppl_mech._result import Results

from ._estimator import Estimator


class sample(Estimator):
    """Estimate every output site of a model by plain Monte Carlo.

    Boolean sites get ``P[site]`` with an exact Clopper–Pearson interval (so a run
    that sees no event still reports an honest upper bound); other sites get
    their mean with a normal interval. The run is ``jit``-compiled, chunked (a
    1e9-sample run needs the memory of one chunk), sharded over all
    ``jax.devices()``, deterministic for a given key whatever the chunking or
    device count, and shows a progress bar when it will take more than a few
    seconds.

    Args:
        fn: the NumPyro model.
        num_samples: number of forward samples.
        rng_key: a ``jax.random.PRNGKey``.
        sites: output sites to estimate (default: all deterministic sites and the
            return value). Fewer sites compile to less work.
        chunk_size: samples per compiled call (default: sized to ~256 MB).
        keep_draws: how many draws of each site to keep for ArviZ (default 1000).
        level: interval coverage (default 0.95).
        interval: ``"clopper-pearson"`` (default) or ``"jeffreys"`` for boolean sites.
        progress_bar: ``True``/``False``, or ``None`` to show one for long runs.

    Example::

        >>> import jax, numpyro, numpyro.distributions as dist
        >>> from ppl_mech import handlers
        >>> def model():
        ...     x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        ...     numpyro.deterministic("tail", x > 2.0)
        >>> r = handlers.sample(model, num_samples=100_000, rng_key=jax.random.PRNGKey(0))()
        >>> round(float(r["tail"].value), 2)
        0.02
    """

    method = "sample"

    def __init__(
        self,
        fn: Callable | None = None,
        *,
        num_samples: int,
        rng_key: jax.Array,
        sites: Sequence[str] | None = None,
        chunk_size: int | None = None,
        keep_draws: int = 1000,
        level: float = 0.95,
        interval: str = "clopper-pearson",
        progress_bar: bool | None = None,
    ):
        super().__init__(fn)
        self.options = dict(
            num_samples=num_samples,
            rng_key=rng_key,
            sites=sites,
            chunk_size=chunk_size,
            keep_draws=keep_draws,
            level=level,
            interval=interval,
            progress_bar=progress_bar,
        )

    def estimate(self, args: tuple, kwargs: dict) -> Results:
        return monte_carlo(self.fn, args, kwargs, **self.options)
