"""Importance sampling of rare catastrophes: proposals fitted to the detector, unbiased weights.

One file per proposal (``_tilted``, ``_cross_entropy``, ``_itgis``, ``_mhis``,
``_ams``, ``_given``); ``_space`` standardizes the latent sites, ``_score``
reads a continuous score off the detector's jaxpr, ``_relax`` gives
first-order score changes for discrete inputs, ``_search`` moves Gaussian input
distributions against the mechanistic estimate (shared with the attack), and
``_engine`` turns draws and log-weights into :class:`~ppl_mech.SiteResult`.
"""

from ._engine import effective_sample_size as effective_sample_size
from ._engine import pareto_khat as pareto_khat
from ._estimate import PROPOSALS as PROPOSALS
from ._estimate import importance_estimate as importance_estimate
from ._score import margin_function as margin_function

__all__ = ["PROPOSALS", "effective_sample_size", "importance_estimate", "margin_function", "pareto_khat"]
