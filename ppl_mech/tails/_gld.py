"""Gaussian Logit Difference (GLD): fit a Gaussian to samples of the margin, read off its tail.

After ARC, "Estimating the probabilities of rare outputs in language models" (2024;
code: alignment-research-center/low-probability-estimation, ``lpe/methods.py::GLD``).
There the margin is ``logit[target] - max_j logit[j]`` of samples of the activations
before the unembedding, and the estimate is the probability that a normal with the
sample mean and standard deviation of that margin is ``>= 0``.

In ppl_mech the detector is ``margin > threshold`` for a scalar margin *site* (a network
output above a level, a logit difference, ...): :func:`gld` fits ``N(m, sd^2)`` to the
margin samples and returns ``Q((threshold - m) / sd)``, in log space. For an argmax
detector use :func:`argmax_margin`, which is ``logit[target] - max_{j != target} logit[j]``
(the *runner-up* margin, which is ``> 0`` exactly when target wins; ARC's
``target - max over all`` is ``<= 0`` always and is censored at 0, so its Gaussian fit
is a cruder proxy — a deliberate difference).

Validity: exact when the margin is Gaussian (a linear function of a Gaussian input —
the cases in the tests); otherwise its error is the Gaussian fit's tail error, which
sampling does not reduce. ``stderr`` is the delta-method sampling error of the fitted
mean and standard deviation only (``Var m = sd^2/n``, ``Var sd ~ sd^2/(2n)``).
Differentiable in the samples and the threshold.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .._minimax_tilting import log_ndtr
from ._result import ExtrapolatedTail

__all__ = ["argmax_margin", "gld"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def argmax_margin(logits, target: int) -> jax.Array:
    """``logits[..., target] - max_{j != target} logits[..., j]``: positive iff ``target`` is the argmax."""
    logits = jnp.asarray(logits)
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise ValueError(f"logits must have at least 2 classes on the last axis; got shape {logits.shape}")
    v = logits.shape[-1]
    if not 0 <= int(target) < v:
        raise ValueError(f"target must be in [0, {v}); got {target}")
    others = jnp.where(jnp.arange(v) == target, -jnp.inf, logits)
    return logits[..., target] - jnp.max(others, axis=-1)


def gld(margin_samples, threshold=0.0) -> ExtrapolatedTail:
    """``P(margin > threshold)`` from a Gaussian fit to ``margin_samples`` (1-D, n >= 2)."""
    x = jnp.asarray(margin_samples)
    if x.ndim != 1 or x.shape[0] < 2:
        raise ValueError(f"margin_samples must be a 1-D array of at least 2 samples; got shape {x.shape}")
    dtype = jnp.result_type(x, float)
    x = x.astype(dtype)
    n = x.shape[0]
    m = jnp.mean(x)
    sd = jnp.sqrt(jnp.sum((x - m) ** 2) / (n - 1))
    z = (jnp.asarray(threshold, dtype) - m) / sd
    log_p = log_ndtr(-z)
    p = jnp.exp(log_p)
    # d log p / dz = -phi(z)/Q(z) =: -r;  z = (t - m)/sd: dz/dm = -1/sd, dz/dsd = -z/sd
    r = jnp.exp(-0.5 * z * z - _LOG_SQRT_2PI - log_p)
    var_log = (r / sd) ** 2 * sd**2 / n + (r * z / sd) ** 2 * sd**2 / (2 * n)
    return ExtrapolatedTail(p, log_p, p * jnp.sqrt(var_log), "gld")
