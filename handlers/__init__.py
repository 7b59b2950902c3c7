"""Estimator handlers: wrap a NumPyro model, call it, get a :class:`~ppl_mech.Results`.

``handler(model, **options)(*model_args)`` is the whole interface; swapping one
handler for another is the whole comparison.
"""

from ppl_mech._capture import capture as capture

from ._estimator import Estimator as Estimator
from ._hybrid import hybrid as hybrid
from ._importance import importance as importance
from ._mechanize import mechanize as mechanize
from ._sample import sample as sample

__all__ = ["Estimator", "capture", "hybrid", "importance", "mechanize", "sample"]
