"""WhestBench 2026 random ReLU MLPs, weights bit-for-bit from a seed.

The spec (ARC + AIcrowd, WhestBench 2026): ``depth`` matrices of shape
``(width, width)``, stored ``(in, out)``, drawn in sequence as
``(rng.standard_normal((width, width)) * sqrt(2 / width)).astype(float32)`` from
``rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[0])``; the
network is ``x = relu(x @ W)`` after every matrix (no biases, no readout), and
the input is ``x ~ N(0, I_width)``.

Verified against the public WhestBench code (github.com/AIcrowd/whestbench):
``src/whestbench/generation.py::sample_mlp`` draws exactly these matrices
(``scale = float(sqrt(2.0 / width))``, ``standard_normal((width, width)) * scale``,
``.astype(float32)``, ``depth`` times in sequence); ``src/whestbench/simulation.py``
runs ``x = relu(x @ w)`` for every matrix on ``N(0, 1)`` float32 inputs; and
``src/whestbench/dataset.py::create_dataset`` takes MLP ``i``'s weight stream as
``default_rng(SeedSequence(seed).spawn(3 * n_mlps)[3 * i])``. A spawned child
depends only on its position, so MLP 0 of any dataset baked with ``seed`` is
``SeedSequence(seed).spawn(3)[0]``; ``index=i`` here selects MLP ``i``.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ._registry import BuiltModel, ModelSpec, option_defaults, preset, register

PILOT_SEED = 20260101
"""Seed of the fixed pilot inputs that set the default thresholds of the random MLPs."""
PILOT_SAMPLES = 4096


def whestbench_weights(width: int, depth: int, seed: int, *, index: int = 0) -> list[np.ndarray]:
    """The ``depth`` float32 ``(width, width)`` matrices (stored ``(in, out)``) of a WhestBench MLP.

    ``index`` selects the ``index``-th MLP of a WhestBench dataset baked with ``seed``
    (``index=0`` is the spec's ``SeedSequence(seed).spawn(3)[0]`` stream).
    """
    return [w.copy() for w in _weights(int(width), int(depth), int(seed), int(index))]


@functools.lru_cache(maxsize=8)
def _weights(width: int, depth: int, seed: int, index: int) -> tuple[np.ndarray, ...]:
    if width < 1 or depth < 1 or index < 0:
        raise ValueError(f"need width >= 1, depth >= 1, index >= 0; got {width}, {depth}, {index}")
    stream = np.random.SeedSequence(seed).spawn(3 * (index + 1))[3 * index]
    rng = np.random.default_rng(stream)
    scale = np.sqrt(2.0 / width)
    return tuple(
        (rng.standard_normal((width, width)) * scale).astype(np.float32) for _ in range(depth)
    )


def round_threshold(value: float, digits: int = 4) -> float:
    """Round to ``digits`` significant digits, so a threshold does not depend on BLAS rounding."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    return float(f"{value:.{digits - 1}e}")


def pilot_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column float64 mean and standard deviation of pilot values ``(samples, ...)``."""
    values = np.asarray(values, np.float64)
    return values.mean(axis=0), values.std(axis=0)


def sigma_thresholds(mean, std, sigmas: float) -> np.ndarray:
    """``mean + sigmas * std``, elementwise, rounded by :func:`round_threshold`."""
    values = np.asarray(mean, np.float64) + sigmas * np.asarray(std, np.float64)
    return np.array([round_threshold(v) for v in values.ravel()]).reshape(values.shape)


def pilot_inputs(width: int, num: int = PILOT_SAMPLES) -> np.ndarray:
    """The fixed pilot inputs: ``num`` float32 ``N(0, I_width)`` draws from ``PILOT_SEED``."""
    return np.random.default_rng(PILOT_SEED).standard_normal((num, width)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _pilot_preactivation_moments(width: int, depth: int, seed: int, index: int,
                                 layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of every unit's pre-activation ``h_{layer-1} @ W_layer`` over the pilot."""
    weights = _weights(width, depth, seed, index)
    h = pilot_inputs(width)
    for w in weights[: layer - 1]:
        h = np.maximum(h @ w, 0.0)
    return pilot_moments(h @ weights[layer - 1])


def whestbench_model(
    weights, threshold, conjunction_thresholds, *, layer: int, unit: int,
    conjunction_units: tuple[int, int, int],
):
    """WhestBench MLP on ``x ~ N(0, I)``; detectors on units of ``layer_{layer}``.

    Sites: ``layer_1`` .. ``layer_{depth}`` (post-ReLU activations, ``(width,)``);
    ``catastrophe`` = ``layer_{layer}[unit] > threshold``; ``conjunction`` =
    ``layer_{layer}[u_i] > conjunction_thresholds[i]`` for all three ``u_i`` in
    ``conjunction_units``.
    """
    width = weights[0].shape[0]
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([width]).to_event(1))
    h = x
    layers = []
    for i, w in enumerate(weights, start=1):
        h = numpyro.deterministic(f"layer_{i}", jnp.maximum(h @ w, 0.0))
        layers.append(h)
    target = layers[layer - 1]
    numpyro.deterministic("catastrophe", target[unit] > threshold)
    u1, u2, u3 = conjunction_units
    t = conjunction_thresholds
    numpyro.deterministic(
        "conjunction", (target[u1] > t[0]) & (target[u2] > t[1]) & (target[u3] > t[2])
    )


def build_whestbench(
    width: int = 256,
    depth: int = 8,
    seed: int = 0,
    index: int = 0,
    layer: int | None = None,
    unit: int = 0,
    threshold: float | None = None,
    sigmas: float = 4.5,
    conjunction_units: tuple[int, int, int] = (0, 1, 2),
    conjunction_thresholds: tuple[float, float, float] | None = None,
    conjunction_sigmas: float = 2.0,
) -> BuiltModel:
    """A WhestBench MLP (see the module docstring) with a rare single-unit detector.

    Options:
        width, depth, seed, index: the network (``index``: MLP ``index`` of a dataset
            baked with ``seed``; 0 is the spec's stream).
        layer: layer whose units the detectors read (1-based; default ``depth``).
        unit: the unit of ``catastrophe``.
        threshold: ``catastrophe`` fires when the unit exceeds it. Default (``None``):
            ``mean + sigmas * std`` of the unit's pre-activation over ``PILOT_SAMPLES``
            fixed pilot inputs (:func:`pilot_inputs`), rounded to 4 significant digits
            and clamped at 0. A ReLU unit exceeds ``t > 0`` exactly when its
            pre-activation does.
        sigmas: the rule's number of standard deviations. Deeper networks have
            heavier-than-Gaussian tails, so the presets set their own (seed 0,
            measured by sampling: events / samples):

            * ``whestbench-256x8``: sigmas 4.5, P[catastrophe] ~ 9.0e-6 (36 / 4e6);
              conjunction_sigmas 2.0, P[conjunction] ~ 7.0e-6 (28 / 4e6);
            * ``whestbench-256x32``: sigmas 6.0, ~ 4.0e-6 (24 / 6e6);
              conjunction_sigmas 2.75, ~ 5.2e-6 (31 / 6e6);
            * ``whestbench-1024x16``: sigmas 4.5, ~ 1.3e-5 (19 / 1.5e6);
              conjunction_sigmas 2.25, ~ 1.2e-5 (18 / 1.5e6).

        conjunction_units, conjunction_thresholds, conjunction_sigmas: the three
            units of ``conjunction`` (default units 0, 1, 2 of ``layer``) and their
            thresholds (default: the same rule, ``mean + conjunction_sigmas * std``
            of each unit's pre-activation over the pilot, rounded, clamped at 0).

    ``exact["layer_1"]``: the first pre-activation ``z_j = x . W[:, j]`` is exactly
    ``N(0, s_j^2)`` with ``s_j = ||W[:, j]||``, so ``E[relu(z_j)] = s_j / sqrt(2 pi)``
    (computed in float64 from the float32 weights). No other site has a known
    exact answer.
    """
    weights = _weights(int(width), int(depth), int(seed), int(index))
    layer = int(depth) if layer is None else int(layer)
    if not 1 <= layer <= depth:
        raise ValueError(f"layer must be in 1..{depth}, got {layer}")
    units = tuple(int(u) for u in conjunction_units)
    if len(units) != 3:
        raise ValueError(f"conjunction_units must be three unit indices, got {conjunction_units}")
    for u in (unit, *units):
        if not 0 <= u < width:
            raise ValueError(f"unit index {u} out of range for width {width}")
    if threshold is None or conjunction_thresholds is None:
        mean, std = _pilot_preactivation_moments(int(width), int(depth), int(seed), int(index),
                                                 layer)
    # A rule threshold below 0 would make the event certain (a ReLU is >= 0): clamp it
    # at 0, the event "the unit is active".
    if threshold is None:
        threshold = max(0.0, sigma_thresholds(mean[unit], std[unit], sigmas).item())
    if conjunction_thresholds is None:
        conjunction_thresholds = np.maximum(0.0, sigma_thresholds(
            mean[list(units)], std[list(units)], conjunction_sigmas))
    conjunction_thresholds = np.asarray(conjunction_thresholds, np.float32)
    if conjunction_thresholds.shape != (3,):
        raise ValueError("conjunction_thresholds must be three numbers")
    first = np.linalg.norm(weights[0].astype(np.float64), axis=0) / math.sqrt(2 * math.pi)
    return BuiltModel(
        name="whestbench",
        model=whestbench_model,
        args=(
            tuple(jnp.asarray(w) for w in weights),
            jnp.asarray(threshold, jnp.float32),
            jnp.asarray(conjunction_thresholds),
        ),
        kwargs=dict(layer=layer, unit=int(unit), conjunction_units=units),
        exact={"layer_1": first},
        description=(
            f"WhestBench random ReLU MLP {width}x{depth} (seed {seed}); catastrophe: "
            f"layer_{layer}[{unit}] > {float(threshold):.4g}"
        ),
    )


register(ModelSpec(
    "whestbench", build_whestbench,
    "WhestBench 2026 random ReLU MLP (He init, no biases), weights bit-for-bit from a seed",
    option_defaults(build_whestbench),
))
# Per-round sigma rules: deeper networks have heavier tails, so the 256x32 round
# needs more standard deviations for an event of the same rarity (see build_whestbench).
_PRESETS = {
    (256, 8): dict(sigmas=4.5, conjunction_sigmas=2.0),
    (256, 32): dict(sigmas=6.0, conjunction_sigmas=2.75),
    (1024, 16): dict(sigmas=4.5, conjunction_sigmas=2.25),
}
for (_width, _depth), _defaults in _PRESETS.items():
    register(preset(
        f"whestbench-{_width}x{_depth}", build_whestbench,
        f"WhestBench 2026 round network, width {_width}, depth {_depth}",
        fixed=dict(width=_width, depth=_depth), defaults=_defaults,
    ))
