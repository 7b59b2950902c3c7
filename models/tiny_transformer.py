"""A one-block pre-LN transformer on Gaussian token embeddings.

``x ~ N(0, I)`` of shape ``(tokens, dim)``: each row a token embedding. One
block, as in GPT-2 without dropout or biases:

* ``h = x + softmax(causal(q k^T / sqrt(dim))) v W_o`` with ``q, k, v`` linear maps of
  ``layer_norm(x)`` (one head, causal mask);
* ``y = h + gelu(layer_norm(h) W_1) W_2`` (MLP width ``4 dim``);
* ``logits = layer_norm(y) W_u`` (readout of ``vocab`` logits per token).

Weights ``N(0, 1/fan_in)`` from ``default_rng(seed)``. Sites: ``attention``
(the last token's attention weights), ``logits`` (the last token's), and
``catastrophe`` = ``logits[-1, unit] > threshold``. Every nonlinearity that has
no per-primitive Gaussian rule is here: the softmax (a ``reduce_max``, then a
ratio of random values), the layer norms (a division by a random standard
deviation) and a product of two random matrices (``q k^T``); the mechanize
families estimate them by statistical linearization (see
``ppl_mech.mechanistic._deferred``). There is no exact answer.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ._registry import BuiltModel, ModelSpec, option_defaults, register
from .whestbench import round_threshold

LAYER_NORM_EPS = 1e-5
PILOT = 65_536


def layer_norm(h):
    centred = h - h.mean(-1, keepdims=True)
    return centred / jnp.sqrt(h.var(-1, keepdims=True) + LAYER_NORM_EPS)


def tiny_transformer_logits(x, weights):
    """The block of the module docstring on one input ``(tokens, dim)``: logits ``(tokens, vocab)``."""
    wq, wk, wv, wo, w1, w2, wu = weights
    tokens, dim = x.shape
    a = layer_norm(x)
    scores = (a @ wq) @ (a @ wk).T / math.sqrt(dim)
    causal = np.tril(np.ones((tokens, tokens), bool))
    attention = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
    h = x + (attention @ (a @ wv)) @ wo
    y = h + jax.nn.gelu(layer_norm(h) @ w1) @ w2
    return layer_norm(y) @ wu, attention


def tiny_transformer_model(weights, threshold, *, tokens: int, unit: int):
    """``x ~ N(0, I)`` token embeddings through one transformer block; see the module docstring."""
    dim = weights[0].shape[0]
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([tokens, dim]).to_event(2))
    logits, attention = tiny_transformer_logits(x, weights)
    numpyro.deterministic("attention", attention[-1])
    last = numpyro.deterministic("logits", logits[-1])
    numpyro.deterministic("catastrophe", last[unit] > threshold)


@functools.lru_cache(maxsize=8)
def tiny_transformer_weights(dim: int, vocab: int, seed: int) -> tuple[np.ndarray, ...]:
    """``(W_q, W_k, W_v, W_o, W_1, W_2, W_u)``, float32, ``N(0, 1/fan_in)``."""
    rng = np.random.default_rng(seed)
    shapes = [(dim, dim)] * 4 + [(dim, 4 * dim), (4 * dim, dim), (dim, vocab)]
    return tuple((rng.standard_normal(s) / math.sqrt(s[0])).astype(np.float32) for s in shapes)


def build_tiny_transformer(tokens: int = 4, dim: int = 16, vocab: int = 8, seed: int = 0, unit: int = 0,
                           threshold: float | None = None, sigmas: float = 3.0) -> BuiltModel:
    """One pre-LN transformer block (module docstring) with a rare last-token logit detector.

    Options:
        tokens, dim, vocab, seed: the block (sequence length, width, readout size, weights).
        unit: the logit of ``catastrophe``.
        threshold: ``catastrophe`` fires when the last token's ``logits[unit]`` exceeds it.
            Default (``None``): ``mean + sigmas * std`` of that logit over 65,536 pilot inputs
            (seed 0), rounded to 4 significant digits.
    """
    tokens, dim, vocab, unit = int(tokens), int(dim), int(vocab), int(unit)
    if tokens < 1 or dim < 2 or vocab < 1:
        raise ValueError(f"need tokens >= 1, dim >= 2 and vocab >= 1, got {tokens}, {dim}, {vocab}")
    if not 0 <= unit < vocab:
        raise ValueError(f"unit {unit} is not a logit index (vocab {vocab})")
    weights = tuple(jnp.asarray(w) for w in tiny_transformer_weights(dim, vocab, int(seed)))
    if threshold is None:
        pilot = np.random.default_rng(0).standard_normal((PILOT, tokens, dim)).astype(np.float32)
        logits = jax.jit(jax.vmap(lambda x: tiny_transformer_logits(x, weights)[0][-1, unit]))(pilot)
        values = np.asarray(logits, np.float64)
        threshold = round_threshold(values.mean() + sigmas * values.std())
    return BuiltModel(
        "tiny-transformer", tiny_transformer_model, (weights, jnp.float32(threshold)),
        {"tokens": tokens, "unit": unit}, {},
        f"one pre-LN transformer block, {tokens} tokens x {dim}, logit {unit} > {threshold:.4g}",
    )


register(ModelSpec(
    "tiny-transformer", build_tiny_transformer,
    "one pre-LN transformer block (softmax attention, layer norms, gelu MLP) on Gaussian tokens",
    option_defaults(build_tiny_transformer),
))
