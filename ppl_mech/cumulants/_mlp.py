"""Layer-by-layer cumulant propagation through an MLP."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from jax import Array

from ._linear import linear
from ._message import CumulantMessage, gaussian_input
from ._nonlinear import elementwise
from ._wick import Activation


def propagate_mlp(
    weights: Sequence[Array],
    biases: Sequence[Array | None] | None,
    activation: str | Callable[[Array], Array],
    input_mean: Array,
    input_cov: Array,
    order: int,
    readout: tuple[Array, Array | None] | None = None,
) -> list[CumulantMessage]:
    """Propagate N(input_mean, input_cov) through ``x -> f(x @ W_l + b_l)`` for each layer.

    Returns one message per hidden layer (after its activation) and, if ``readout = (W, b)``
    is given, a last message for the linear readout ``x @ W + b``. Weights are (in, out).
    """
    act = Activation(activation) if not isinstance(activation, Activation) else activation
    if biases is None:
        biases = [None] * len(weights)
    if len(biases) != len(weights):
        raise ValueError(f"{len(weights)} weight matrices but {len(biases)} biases")
    message = gaussian_input(input_mean, input_cov, order)
    out = []
    for W, b in zip(weights, biases, strict=True):
        message = elementwise(linear(message, W, b), act, order)
        out.append(message)
    if readout is not None:
        out.append(linear(message, *readout))
    return out
