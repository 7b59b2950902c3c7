"""The mechanistic estimator: propagate messages through the model's jaxpr, draw nothing."""

from ._estimate import FAMILIES as FAMILIES
from ._estimate import mechanistic_estimate as mechanistic_estimate
