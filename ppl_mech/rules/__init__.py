"""Moment rules for elementwise nonlinearities of Gaussian variables.

Pure JAX functions (broadcasting, ``jit``-able, differentiable) that the
interpreter calls on a Gaussian message ``(mean, var)`` or ``(mean, cov)``:

* :mod:`.relu` -- exact ReLU moments, cross moments and covariances;
* :mod:`.closed_forms` -- probit/erf, exp, square, heaviside/sign, abs;
* :mod:`.gauss_hermite` -- ``E f(X)``, ``Var f(X)`` for any elementwise ``f``;
* :mod:`.mehler` -- ``Cov(f(x_i), f(x_j))`` by the Hermite (Mehler) series.
"""

from .closed_forms import abs_covariance as abs_covariance
from .closed_forms import abs_moments as abs_moments
from .closed_forms import erf_covariance as erf_covariance
from .closed_forms import erf_input_output_covariance as erf_input_output_covariance
from .closed_forms import erf_moments as erf_moments
from .closed_forms import exp_covariance as exp_covariance
from .closed_forms import exp_input_output_covariance as exp_input_output_covariance
from .closed_forms import exp_moments as exp_moments
from .closed_forms import heaviside_covariance as heaviside_covariance
from .closed_forms import heaviside_moments as heaviside_moments
from .closed_forms import probit_covariance as probit_covariance
from .closed_forms import probit_input_output_covariance as probit_input_output_covariance
from .closed_forms import probit_moments as probit_moments
from .closed_forms import sign_covariance as sign_covariance
from .closed_forms import sign_moments as sign_moments
from .closed_forms import square_covariance as square_covariance
from .closed_forms import square_input_output_covariance as square_input_output_covariance
from .closed_forms import square_moments as square_moments
from .gauss_hermite import gauss_hermite_expectation as gauss_hermite_expectation
from .gauss_hermite import gauss_hermite_input_covariance as gauss_hermite_input_covariance
from .gauss_hermite import gauss_hermite_moments as gauss_hermite_moments
from .gauss_hermite import gauss_hermite_rule as gauss_hermite_rule
from .mehler import bivariate_gauss_hermite_covariance as bivariate_gauss_hermite_covariance
from .mehler import bivariate_gauss_hermite_expectation as bivariate_gauss_hermite_expectation
from .mehler import hermite_coefficients as hermite_coefficients
from .mehler import mehler_covariance as mehler_covariance
from .mehler import mehler_covariance_with_bound as mehler_covariance_with_bound
from .mehler import mehler_moments as mehler_moments
from .relu import relu_covariance as relu_covariance
from .relu import relu_cross_moment as relu_cross_moment
from .relu import relu_input_output_covariance as relu_input_output_covariance
from .relu import relu_mean as relu_mean
from .relu import relu_moments as relu_moments
from .relu import relu_second_moment as relu_second_moment

__all__ = [
    "abs_covariance",
    "abs_moments",
    "bivariate_gauss_hermite_covariance",
    "bivariate_gauss_hermite_expectation",
    "erf_covariance",
    "erf_input_output_covariance",
    "erf_moments",
    "exp_covariance",
    "exp_input_output_covariance",
    "exp_moments",
    "gauss_hermite_expectation",
    "gauss_hermite_input_covariance",
    "gauss_hermite_moments",
    "gauss_hermite_rule",
    "heaviside_covariance",
    "heaviside_moments",
    "hermite_coefficients",
    "mehler_covariance",
    "mehler_covariance_with_bound",
    "mehler_moments",
    "probit_covariance",
    "probit_input_output_covariance",
    "probit_moments",
    "relu_covariance",
    "relu_cross_moment",
    "relu_input_output_covariance",
    "relu_mean",
    "relu_moments",
    "relu_second_moment",
    "sign_covariance",
    "sign_moments",
    "square_covariance",
    "square_input_output_covariance",
    "square_moments",
]
