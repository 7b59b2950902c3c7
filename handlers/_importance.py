"""``handlers.importance``: importance sampling with a proposal fitted to the catastrophe."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from ppl_mech._result import Results
from ppl_mech.importance import importance_estimate

from ._estimator import Estimator


class importance(Estimator):
    """Estimate every output site by importance sampling from a proposal ``q``.

    Every estimate is ``mean(w_i f(x_i))`` with ``x_i ~ q`` and
    ``w_i = p(x_i)/q(x_i)`` (numpyro log-densities), which is unbiased whatever
    ``q`` is, as long as ``q`` covers ``p``; the proposal decides only the
    variance. ``P[site]`` for boolean sites, ``E[site]`` otherwise, with a
    standard error, a normal interval, the cost (XLA FLOPs, seconds, model
    evaluations -- fitting the proposal included) and diagnostics: ``ess``
    (``(sum w)^2/sum w^2``), ``khat`` (ArviZ's PSIS Pareto k-hat of the
    log-weights; ``khat_site`` for the terms ``w f`` of a scalar site, which is
    what decides that site's reliability), ``events``, ``log_weights`` and
    ``draws`` (so ``to_inference_data`` works), and the proposal's own numbers.

    Proposals are fitted to one scalar boolean ``target`` site (default
    ``"catastrophe"``); continuous latent sites are handled in standard-normal
    coordinates (``Normal``/``MultivariateNormal`` by their affine map, other
    univariate ones by ``icdf(Phi(z))``), discrete ones (``Categorical``,
    ``Bernoulli``, ...) as per-element categoricals:

    * ``"tilted"``: a Gaussian (mixture) found by optax against
      ``mechanize(family="gaussian")``: the least-KL shift/scale of the inputs
      under which the mechanistic ``P_q[C]`` reaches ``target_probability``
      (``objective="variance"`` then minimizes the mechanistic second moment of
      the weights). Normal/MultivariateNormal sites only.
    * ``"cross-entropy"``: multilevel cross-entropy (Rubinstein): Gaussian
      mean shift (``fit_scale=True``: and scales) for continuous sites, categorical tables for discrete ones,
      levels on the detector's score.
    * ``"itgis"``: ARC's independent (token) gradient importance sampling: the
      proposal is ``p`` tilted by the averaged gradient of the detector's score
      (first-order score changes of each element for discrete sites).
    * ``"mhis"``: ARC's Metropolis-Hastings importance sampling on
      ``p(x) exp(s(x)/T)`` (MALA moves for continuous sites, ARC's gradient-informed
      single-element moves for discrete ones). The normaliser ``E_p[exp(s/T)]`` is
      estimated honestly by annealing from ``p`` (an SMC sampler, unbiased, standard
      error across independent runs); ``normaliser="chains"`` gives ARC's ratio
      estimator from the chains themselves, for comparison.
    * ``"ams"``: adaptive multilevel splitting on the score (consistent; biased
      low by O(1/N) when its pCN moves mix poorly; other sites from its initial
      i.i.d. population). Its cost grows with ``log(1/P)``: a small pilot run
      measures that first and sizes the particles to ``num_samples`` (the
      pilot's cost is counted); the evaluations spent are reported.
    * a dict ``{site: numpyro distribution}``: your own proposal, checked for
      shape, support, discreteness and positive variance.

    The score ``s(x)`` of the target is its margin, read off the detector's
    jaxpr (``y > t`` gives ``y - t``; ``&``/``all`` min or summed violation,
    ``|``/``any`` max, ``argmax == k`` the logit gap); or pass ``score=`` naming
    a real site with ``target => score >= 0``.

    Args:
        fn: the NumPyro model.
        proposal: a proposal name or a dict of distributions (see above).
        num_samples: model evaluations for the estimate (and, for the adaptive
            proposals, their adaptation; see each proposal).
        rng_key: a ``jax.random.PRNGKey``.
        target: the boolean site the proposal is fitted to (default ``"catastrophe"``).
        score: a real output site name (or a function of the outputs dict) to use
            as the target's score instead of the inferred margin.
        sites: output sites to estimate (default all).
        keep_draws: draws (and their log-weights) kept for ArviZ.
        level: interval coverage.
        **options: the proposal's own options (e.g. ``target_probability``,
            ``temperature``, ``num_particles``); an unknown one is an error that
            lists the valid ones.

    Example::

        >>> import jax, numpyro, numpyro.distributions as dist
        >>> from ppl_mech import handlers
        >>> def model():
        ...     x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        ...     numpyro.deterministic("catastrophe", x.sum() > 8.0)   # P = 7.709e-9
        >>> r = handlers.importance(model, proposal="tilted", num_samples=4096,
        ...                         rng_key=jax.random.PRNGKey(0))()
        >>> abs(float(r["catastrophe"].value) / 7.709e-9 - 1) < 0.2   # relative stderr ~4%
        True
    """

    method = "importance"

    def __init__(
        self,
        fn: Callable | None = None,
        *,
        proposal: str | Mapping[str, Any] = "tilted",
        num_samples: int,
        rng_key: jax.Array,
        target: str | None = None,
        score: str | Callable | None = None,
        sites: Sequence[str] | None = None,
        keep_draws: int = 1000,
        level: float = 0.95,
        **options: Any,
    ):
        super().__init__(fn)
        self.options = dict(
            proposal=proposal, num_samples=num_samples, rng_key=rng_key, target=target, score=score,
            sites=sites, keep_draws=keep_draws, level=level, **options,
        )

    def estimate(self, args: tuple, kwargs: dict) -> Results:
        return importance_estimate(self.fn, args, kwargs, **self.options)
