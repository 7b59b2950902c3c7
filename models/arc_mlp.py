"""ARC-style random MLPs, after ARC's cumulant-propagation paper and code.

Setup of ARC, "Estimating the expected output of wide random MLPs more
efficiently than sampling" (2026), code ``alignment-research-center/
mlp_cumulant_propagation`` (``src/mlp_kprop/mlp.py``, ``MLP(init_kind="he")``),
which this module follows:

* input ``x ~ N(0, I_width)``; ``hidden_layers`` hidden layers of size ``width``
  then a linear readout of size ``width`` (ARC: ``num_layers = hidden_layers + 1``
  linear layers, ``input_dim = hidden_dim = output_dim``, no activation after
  the last);
* weights ``N(0, w_var / fan_in)`` with ``w_var = 1`` for the first layer (the
  input has unit variance) and, after an activation ``g``, ``w_var = 1 /
  E[g(Z)^2]`` with ``Z ~ N(bias_mean, 1)`` (ARC's ``he_w_var``; 2 for ReLU at zero
  bias), so that every pre-activation has second moment about 1;
* optional biases ``N(bias_mean, bias_var)`` on every linear layer (ARC's
  ``b_mean``/``b_var``; none when both are 0, ARC's default);
* activations ``relu``, ``gelu`` (exact, erf-based, as ``torch.nn.GELU``),
  ``tanh``, ``sigmoid``.

Weights are drawn with NumPy (``default_rng(seed)``), not torch, so they are not
ARC's bit-for-bit; the distribution is the same.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from scipy import integrate, special

from ._registry import BuiltModel, ModelSpec, option_defaults, register
from .whestbench import pilot_inputs, pilot_moments, sigma_thresholds

ACTIVATIONS = {
    "relu": lambda z: jnp.maximum(z, 0.0),
    "gelu": lambda z: jax.nn.gelu(z, approximate=False),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}
"""Activation name -> ``jnp`` function used inside the models."""

_NUMPY_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "gelu": lambda z: z * special.ndtr(z),
    "tanh": np.tanh,
    "sigmoid": special.expit,
}


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {list(ACTIVATIONS)}")


def gaussian_expectation(f, mean: float, std: float) -> float:
    """``E[f(mean + std * Z)]``, ``Z ~ N(0, 1)``, by adaptive quadrature (float64)."""
    if std == 0:
        return float(f(mean))

    def integrand(z):
        return f(mean + std * z) * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    # Split at 0 and integrate over +-40 sd: beyond that the Gaussian weight is < 1e-340.
    left, _ = integrate.quad(integrand, -40.0, 0.0, epsabs=1e-14, epsrel=1e-12, limit=200)
    right, _ = integrate.quad(integrand, 0.0, 40.0, epsabs=1e-14, epsrel=1e-12, limit=200)
    return left + right


def activation_mean(activation: str, mean, std) -> np.ndarray:
    """``E[g(z)]`` for ``z ~ N(mean, std^2)`` elementwise: closed forms for relu and gelu.

    ReLU: ``mu Phi(a) + s phi(a)`` with ``a = mu / s``. GELU ``z Phi(z)``:
    ``E = mu Phi(b) + s^2 phi(b) / sqrt(1 + s^2)`` with ``b = mu / sqrt(1 + s^2)``
    (Stein's lemma and ``E[Phi(z)] = Phi(b)``). tanh, sigmoid: quadrature.
    """
    _check_activation(activation)
    mean, std = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(std, np.float64))
    if activation == "relu":
        with np.errstate(divide="ignore", invalid="ignore"):
            a = mean / std
            value = mean * special.ndtr(a) + std * np.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
        return np.where(std > 0, value, np.maximum(mean, 0.0))
    if activation == "gelu":
        r = np.sqrt(1.0 + std**2)
        b = mean / r
        return mean * special.ndtr(b) + std**2 * np.exp(-0.5 * b * b) / (
            math.sqrt(2 * math.pi) * r
        )
    g = _NUMPY_ACTIVATIONS[activation]
    flat = [gaussian_expectation(g, m, s) for m, s in zip(mean.ravel(), std.ravel(), strict=True)]
    return np.array(flat).reshape(mean.shape)


@functools.lru_cache(maxsize=32)
def he_weight_variance(activation: str, bias_mean: float = 0.0) -> float:
    """ARC's ``he_w_var``: ``1 / E[g(Z)^2]`` for ``Z ~ N(bias_mean, 1)`` (2 for ReLU at 0)."""
    _check_activation(activation)
    if activation == "relu":
        a = bias_mean
        second = (a * a + 1.0) * special.ndtr(a) + a * math.exp(-0.5 * a * a) / math.sqrt(
            2 * math.pi
        )
        return 1.0 / second
    g = _NUMPY_ACTIVATIONS[activation]
    return 1.0 / gaussian_expectation(lambda z: g(z) ** 2, bias_mean, 1.0)


@functools.lru_cache(maxsize=8)
def arc_mlp_parameters(width: int, hidden_layers: int, activation: str, bias_mean: float,
                       bias_var: float, seed: int):
    """``(weights, biases)`` as float32 NumPy arrays, weights stored ``(in, out)``.

    ``biases`` is ``None`` when ``bias_mean == bias_var == 0``.
    """
    _check_activation(activation)
    if width < 1 or hidden_layers < 1:
        raise ValueError(f"need width >= 1 and hidden_layers >= 1, got {width}, {hidden_layers}")
    if bias_var < 0:
        raise ValueError(f"bias_var must be >= 0, got {bias_var}")
    rng = np.random.default_rng(seed)
    has_bias = bias_var > 0 or bias_mean != 0
    later = he_weight_variance(activation, bias_mean)
    weights, biases = [], []
    for i in range(hidden_layers + 1):
        w_var = 1.0 if i == 0 else later
        w = rng.standard_normal((width, width)) * math.sqrt(w_var / width)
        weights.append(w.astype(np.float32))
        if has_bias:
            b = bias_mean + math.sqrt(bias_var) * rng.standard_normal(width)
            biases.append(b.astype(np.float32))
    return tuple(weights), (tuple(biases) if has_bias else None)


def arc_mlp_model(weights, biases, threshold, *, activation: str, unit: int):
    """Random MLP on ``x ~ N(0, I)``: ``hidden_i = g(h @ W_i + b_i)``, linear ``output``.

    Sites: ``hidden_1`` .. ``hidden_L`` (post-activation), ``output`` (readout),
    ``catastrophe`` = ``output[unit] > threshold``.
    """
    g = ACTIVATIONS[activation]
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([weights[0].shape[0]]).to_event(1))
    h = x
    for i, w in enumerate(weights[:-1]):
        z = h @ w if biases is None else h @ w + biases[i]
        h = numpyro.deterministic(f"hidden_{i + 1}", g(z))
    out = h @ weights[-1] if biases is None else h @ weights[-1] + biases[-1]
    out = numpyro.deterministic("output", out)
    numpyro.deterministic("catastrophe", out[unit] > threshold)


@functools.lru_cache(maxsize=16)
def _pilot_output_moments(width, hidden_layers, activation, bias_mean, bias_var, seed):
    """Mean and std of every readout unit over the fixed pilot inputs."""
    weights, biases = arc_mlp_parameters(width, hidden_layers, activation, bias_mean, bias_var,
                                         seed)
    g = _NUMPY_ACTIVATIONS[activation]
    h = pilot_inputs(width)
    for i, w in enumerate(weights):
        z = h @ w if biases is None else h @ w + biases[i]
        h = g(z).astype(np.float32) if i < len(weights) - 1 else z
    return pilot_moments(h)


def build_arc_mlp(
    width: int = 256,
    hidden_layers: int = 4,
    activation: str = "relu",
    bias_mean: float = 0.0,
    bias_var: float = 0.0,
    seed: int = 0,
    unit: int = 0,
    threshold: float | None = None,
    sigmas: float = 4.0,
) -> BuiltModel:
    """An ARC-style random MLP (module docstring) with a rare readout detector.

    Options:
        width, hidden_layers, activation, bias_mean, bias_var, seed: the network
            (defaults: ARC's ReLU setting at width 256 with 4 hidden layers).
        unit: the readout unit of ``catastrophe``.
        threshold: ``catastrophe`` fires when ``output[unit]`` exceeds it. Default
            (``None``): ``mean + sigmas * std`` of that unit over the fixed pilot
            inputs of :func:`ppl_mech.models.whestbench.pilot_inputs`, rounded to 4
            significant digits.
        sigmas: the rule's number of standard deviations. At the defaults (width
            256, 4 hidden layers, seed 0) 4.0 gives ``P[catastrophe]`` about 1.5e-6
            for relu, 1.3e-6 for gelu and 1.6e-5 for tanh (4e6 samples each; the
            readout's upper tail is lighter than Gaussian for relu/gelu).

    ``exact["hidden_1"]``: the first pre-activation is exactly
    ``N(b_j, ||W[:, j]||^2)``, so ``E[g(z_j)]`` is a 1-D Gaussian integral, in
    closed form for relu/gelu and by adaptive quadrature for tanh/sigmoid.
    """
    width, hidden_layers, seed, unit = int(width), int(hidden_layers), int(seed), int(unit)
    bias_mean, bias_var = float(bias_mean), float(bias_var)
    weights, biases = arc_mlp_parameters(width, hidden_layers, activation, bias_mean, bias_var,
                                         seed)
    if not 0 <= unit < width:
        raise ValueError(f"unit {unit} out of range for width {width}")
    if threshold is None:
        mean, std = _pilot_output_moments(width, hidden_layers, activation, bias_mean, bias_var,
                                          seed)
        threshold = sigma_thresholds(mean[unit], std[unit], sigmas).item()
    w0 = weights[0].astype(np.float64)
    first_mean = np.zeros(width) if biases is None else biases[0].astype(np.float64)
    exact_hidden = activation_mean(activation, first_mean, np.linalg.norm(w0, axis=0))
    return BuiltModel(
        name="arc-mlp",
        model=arc_mlp_model,
        args=(
            tuple(jnp.asarray(w) for w in weights),
            None if biases is None else tuple(jnp.asarray(b) for b in biases),
            jnp.asarray(threshold, jnp.float32),
        ),
        kwargs=dict(activation=activation, unit=unit),
        exact={"hidden_1": exact_hidden},
        description=(
            f"ARC random {activation} MLP, width {width}, {hidden_layers} hidden layers "
            f"(seed {seed}); catastrophe: output[{unit}] > {float(threshold):.4g}"
        ),
    )


register(ModelSpec(
    "arc-mlp", build_arc_mlp,
    "ARC-style random MLP (He init, optional biases, relu/gelu/tanh/sigmoid), linear readout",
    option_defaults(build_arc_mlp),
))
