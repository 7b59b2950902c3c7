"""Cumulant propagation to order K through MLPs (after ARC, arXiv:2605.05179).

Messages carry the mean, covariance, a factored third cumulant and the pure-trace part of
the fourth (K = 3), or a dense third and a factored fourth cumulant (K = 4); see
``docs/cumulant_propagation.md`` for the algorithm and its truncation.
"""

from ._bivariate import bivariate_normal_cdf as bivariate_normal_cdf
from ._bivariate import gaussian_covariance as gaussian_covariance
from ._bivariate import relu_bivariate_covariance as relu_bivariate_covariance
from ._fourth import diagram_classes as diagram_classes
from ._linear import linear as linear
from ._linear import linear_map as linear_map
from ._message import ORDERS as ORDERS
from ._message import CumulantMessage as CumulantMessage
from ._message import FactoredFourth as FactoredFourth
from ._message import FactoredThird as FactoredThird
from ._message import RadialFourth as RadialFourth
from ._message import dense_fourth as dense_fourth
from ._message import dense_third as dense_third
from ._message import gaussian_input as gaussian_input
from ._message import marginal_cumulants as marginal_cumulants
from ._message import message_order as message_order
from ._message import third_from_dense as third_from_dense
from ._message import variance as variance
from ._mlp import propagate_mlp as propagate_mlp
from ._nonlinear import elementwise as elementwise
from ._wick import Activation as Activation

__all__ = [
    "Activation",
    "CumulantMessage",
    "FactoredFourth",
    "ORDERS",
    "FactoredThird",
    "RadialFourth",
    "bivariate_normal_cdf",
    "dense_fourth",
    "dense_third",
    "diagram_classes",
    "elementwise",
    "gaussian_covariance",
    "gaussian_input",
    "linear",
    "linear_map",
    "marginal_cumulants",
    "message_order",
    "propagate_mlp",
    "relu_bivariate_covariance",
    "third_from_dense",
    "variance",
]
