"""ppl_mech: estimate how often a neural network does something catastrophic.

Write the input distribution D, the network M and the detector C as one NumPyro
model; wrap it in an estimator handler from :mod:`ppl_mech.handlers`.
"""

from ._arviz import comparison_table as comparison_table
from ._arviz import plot_estimates as plot_estimates
from ._arviz import to_inference_data as to_inference_data
from ._capture import RETURN_SITE as RETURN_SITE
from ._capture import LatentSite as LatentSite
from ._capture import OutputSite as OutputSite
from ._capture import Program as Program
from ._capture import capture_program as capture_program
from ._errors import ModelError as ModelError
from ._errors import PPLMechError as PPLMechError
from ._errors import UnsupportedDistributionError as UnsupportedDistributionError
from ._errors import UnsupportedPrimitiveError as UnsupportedPrimitiveError
from ._layer_moments import LayerMoments as LayerMoments
from ._layer_moments import layer_moments as layer_moments
from ._result import Cost as Cost
from ._result import Results as Results
from ._result import SiteResult as SiteResult

__version__ = "0.1.0"

__all__ = [
    "RETURN_SITE",
    "Cost",
    "LatentSite",
    "LayerMoments",
    "ModelError",
    "OutputSite",
    "PPLMechError",
    "Program",
    "Results",
    "SiteResult",
    "UnsupportedDistributionError",
    "UnsupportedPrimitiveError",
    "capture_program",
    "comparison_table",
    "layer_moments",
    "plot_estimates",
    "to_inference_data",
]
