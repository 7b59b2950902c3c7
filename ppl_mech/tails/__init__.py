"""Tail probabilities: ``P(Y > t)`` for scalar Y from cumulants/CGFs, from samples, and polynomial methods.

* 1-D thresholds from cumulants: :func:`edgeworth_tail`; the saddlepoint
  (Lugannani–Rice) :func:`saddlepoint_tail` for any :class:`CGF`, with exact CGFs
  (:func:`quadratic_form_cgf`, :func:`gamma_cgf`, :func:`relu_gaussian_cgf`,
  :func:`normal_cgf`, :func:`sum_cgf`, :func:`affine_cgf`) or the polynomial CGF of
  finitely many cumulants (:func:`cumulant_series_cgf`,
  :func:`saddlepoint_tail_from_cumulants`), whose inconsistency far out is detected
  and flagged (``TailProbability.status``).
* Activation extrapolation after ARC (2024): :func:`gld` (Gaussian fit to margin
  samples) and :func:`qld_polytope` / :func:`qld` (quadratic logit decomposition).
* The polynomial method: :func:`halfspace_polynomial_probability` (Gaussian polytopes by
  sequential Hermite projection) and :func:`mlp_polynomial_surrogate` +
  :func:`surrogate_cumulants` (exact cumulants of a Hermite surrogate of a two-layer MLP).

Every function is pure JAX (``jit``-able; differentiable where the estimate is smooth).
"""

from ._edgeworth import edgeworth_tail as edgeworth_tail
from ._exact_cgfs import affine_cgf as affine_cgf
from ._exact_cgfs import eigen_quadratic_cgf as eigen_quadratic_cgf
from ._exact_cgfs import gamma_cgf as gamma_cgf
from ._exact_cgfs import normal_cgf as normal_cgf
from ._exact_cgfs import quadratic_form_cgf as quadratic_form_cgf
from ._exact_cgfs import relu_gaussian_cgf as relu_gaussian_cgf
from ._exact_cgfs import sum_cgf as sum_cgf
from ._gld import argmax_margin as argmax_margin
from ._gld import gld as gld
from ._halfspace_polynomial import HalfspacePolynomialEstimate as HalfspacePolynomialEstimate
from ._halfspace_polynomial import halfspace_polynomial_probability as halfspace_polynomial_probability
from ._halfspace_polynomial import indicator_hermite_coefficients as indicator_hermite_coefficients
from ._mlp_polynomial import MLPSurrogate as MLPSurrogate
from ._mlp_polynomial import evaluate_surrogate as evaluate_surrogate
from ._mlp_polynomial import mlp_polynomial_surrogate as mlp_polynomial_surrogate
from ._mlp_polynomial import mlp_quadratic_form as mlp_quadratic_form
from ._mlp_polynomial import surrogate_cumulants as surrogate_cumulants
from ._qld import argmax_constraints as argmax_constraints
from ._qld import qld as qld
from ._qld import qld_polytope as qld_polytope
from ._result import INCONSISTENT_CUMULANTS as INCONSISTENT_CUMULANTS
from ._result import NEGATIVE_DENSITY as NEGATIVE_DENSITY
from ._result import NO_SADDLEPOINT as NO_SADDLEPOINT
from ._result import NOT_CONVERGED as NOT_CONVERGED
from ._result import OUT_OF_RANGE as OUT_OF_RANGE
from ._result import ExtrapolatedTail as ExtrapolatedTail
from ._result import TailProbability as TailProbability
from ._result import describe_status as describe_status
from ._saddlepoint import CGF as CGF
from ._saddlepoint import cumulant_series_cgf as cumulant_series_cgf
from ._saddlepoint import saddlepoint_tail as saddlepoint_tail
from ._saddlepoint import saddlepoint_tail_from_cumulants as saddlepoint_tail_from_cumulants

__all__ = [
    "CGF",
    "INCONSISTENT_CUMULANTS",
    "NEGATIVE_DENSITY",
    "NOT_CONVERGED",
    "NO_SADDLEPOINT",
    "OUT_OF_RANGE",
    "ExtrapolatedTail",
    "HalfspacePolynomialEstimate",
    "MLPSurrogate",
    "TailProbability",
    "affine_cgf",
    "argmax_constraints",
    "argmax_margin",
    "cumulant_series_cgf",
    "describe_status",
    "edgeworth_tail",
    "eigen_quadratic_cgf",
    "evaluate_surrogate",
    "gamma_cgf",
    "gld",
    "halfspace_polynomial_probability",
    "indicator_hermite_coefficients",
    "mlp_polynomial_surrogate",
    "mlp_quadratic_form",
    "normal_cgf",
    "qld",
    "qld_polytope",
    "quadratic_form_cgf",
    "relu_gaussian_cgf",
    "saddlepoint_tail",
    "saddlepoint_tail_from_cumulants",
    "sum_cgf",
    "surrogate_cumulants",
]
