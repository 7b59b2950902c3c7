"""Result types of the tail estimators and the status flags they raise.

Analytic approximations (Edgeworth, saddlepoint, the polynomial methods) return a
:class:`TailProbability`: the estimate, its log, and a ``status`` bitmask that is 0
when no problem was detected. A nonzero status never silently changes the number:
``probability`` is the raw value of the formula (NaN when it cannot be evaluated,
e.g. no saddlepoint exists), and the flags say why it should not be trusted.

Sample-based extrapolations (GLD, QLD) return an :class:`ExtrapolatedTail` with a
standard error that covers the *sampling* noise only, not the model error of the
extrapolation (a Gaussian fit to a non-Gaussian margin is biased however many samples).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "INCONSISTENT_CUMULANTS",
    "NEGATIVE_DENSITY",
    "NOT_CONVERGED",
    "NO_SADDLEPOINT",
    "OUT_OF_RANGE",
    "ExtrapolatedTail",
    "TailProbability",
    "describe_status",
]

# Status bits (combine with |).
NO_SADDLEPOINT = 1  # K'(s) = t has no root on the branch through s = 0 where K'' > 0
NOT_CONVERGED = 2  # the saddlepoint equation was not solved to tolerance
OUT_OF_RANGE = 4  # the estimate is outside [0, 1] (Edgeworth and Lugannani-Rice can be)
NEGATIVE_DENSITY = 8  # the approximating density is negative at the threshold
INCONSISTENT_CUMULANTS = 16  # no distribution has these cumulants (var <= 0, kurtosis < skew^2 - 2)

_FLAG_NAMES = {
    NO_SADDLEPOINT: "no real saddlepoint on the convex branch of the CGF",
    NOT_CONVERGED: "saddlepoint equation not solved to tolerance",
    OUT_OF_RANGE: "estimate outside [0, 1]",
    NEGATIVE_DENSITY: "approximating density negative at the threshold",
    INCONSISTENT_CUMULANTS: "cumulants of no distribution (variance <= 0 or kurtosis < skewness^2 - 2)",
}


def describe_status(status) -> list[str]:
    """Human-readable reasons for a (concrete, scalar) status bitmask; ``[]`` means valid."""
    s = int(np.asarray(status))
    return [text for bit, text in _FLAG_NAMES.items() if s & bit]


class TailProbability(NamedTuple):
    """``P(Y > t)`` (or ``P(Y < t)``) from an analytic approximation, with validity flags."""

    probability: jax.Array  # the formula's value; NaN where it cannot be evaluated
    log_probability: jax.Array  # log of it (computed in log space where the formula allows)
    status: jax.Array  # int32 bitmask of the flags above; 0 = no problem detected
    saddlepoint: jax.Array  # the saddlepoint s (NaN for methods without one)
    method: str  # static: "edgeworth", "saddlepoint", "saddlepoint-2", "halfspace-polynomial", ...

    @property
    def valid(self) -> jax.Array:
        """``status == 0``."""
        return self.status == 0


jax.tree_util.register_pytree_node(
    TailProbability,
    lambda r: ((r.probability, r.log_probability, r.status, r.saddlepoint), r.method),
    lambda method, children: TailProbability(*children, method),
)


class ExtrapolatedTail(NamedTuple):
    """A tail probability extrapolated from samples (GLD, QLD)."""

    probability: jax.Array
    log_probability: jax.Array
    stderr: jax.Array  # sampling standard error of ``probability`` (not the model error)
    method: str  # static: "gld" or "qld"


jax.tree_util.register_pytree_node(
    ExtrapolatedTail,
    lambda r: ((r.probability, r.log_probability, r.stderr), r.method),
    lambda method, children: ExtrapolatedTail(*children, method),
)


def _status(*pairs) -> jax.Array:
    """Combine ``(condition, bit)`` pairs into an int32 bitmask."""
    out = None
    for cond, bit in pairs:
        term = jnp.where(cond, jnp.int32(bit), jnp.int32(0))
        out = term if out is None else out | term
    return out
