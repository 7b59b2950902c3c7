"""A small MLP trained with optax on a synthetic regression task (seeded, a few seconds).

The task: ``x ~ N(0, I_n)``, ``y(x) = sin(1.5 u.x) + 0.3 ((v.x)^2 - 1) + 0.5 tanh(w.x)``
with ``u, v, w`` seeded unit vectors. The network ``n -> hidden -> 1``
(``tanh`` by default) is fitted by full-batch Adam on ``train_size`` seeded
points for ``steps`` steps; the trained weights are cached per options.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax

from ._registry import BuiltModel, ModelSpec, option_defaults, register
from .arc_mlp import _NUMPY_ACTIVATIONS, ACTIVATIONS, _check_activation, activation_mean
from .whestbench import PILOT_SEED, round_threshold


def regression_target(x: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The synthetic task ``y(x)`` (module docstring); ``directions`` rows are ``u, v, w``."""
    u, v, w = (x @ d for d in directions)
    return np.sin(1.5 * u) + 0.3 * (v**2 - 1.0) + 0.5 * np.tanh(w)


def _task(n: int, seed: int, train_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    directions = rng.standard_normal((3, n))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    x = rng.standard_normal((train_size, n)).astype(np.float32)
    y = regression_target(x.astype(np.float64), directions).astype(np.float32)
    return directions, x, y


@functools.lru_cache(maxsize=8)
def train_mlp(n: int = 16, hidden: int = 64, activation: str = "tanh", seed: int = 0,
              steps: int = 1500, train_size: int = 2048, learning_rate: float = 1e-2):
    """Fit the two-layer MLP; returns ``(params, train_loss)``, params as float32 NumPy arrays.

    ``params = (w1 (n, hidden), b1 (hidden,), w2 (hidden,), b2 ())``.
    """
    _check_activation(activation)
    g = ACTIVATIONS[activation]
    _, x, y = _task(n, seed, train_size)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    params = (
        jnp.asarray(rng.standard_normal((n, hidden)) / np.sqrt(n), jnp.float32),
        jnp.zeros(hidden, jnp.float32),
        jnp.asarray(rng.standard_normal(hidden) / np.sqrt(hidden), jnp.float32),
        jnp.zeros((), jnp.float32),
    )
    optimizer = optax.adam(learning_rate)
    x, y = jnp.asarray(x), jnp.asarray(y)

    def loss(p):
        w1, b1, w2, b2 = p
        return jnp.mean((g(x @ w1 + b1) @ w2 + b2 - y) ** 2)

    def step(carry, _):
        p, state = carry
        value, grads = jax.value_and_grad(loss)(p)
        updates, state = optimizer.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), value

    @jax.jit
    def fit(p):
        (p, _), _ = jax.lax.scan(step, (p, optimizer.init(p)), None, length=steps)
        return p, loss(p)

    params, final_loss = fit(params)
    return tuple(np.asarray(a) for a in params), float(final_loss)


PILOT_SIZE = 1 << 20


@functools.lru_cache(maxsize=8)
def _pilot_top_outputs(params_key: tuple, count: int) -> np.ndarray:
    """The ``count`` largest outputs over ``PILOT_SIZE`` fixed pilot inputs, descending."""
    params, _ = train_mlp(*params_key)
    activation = params_key[2]
    w1, b1, w2, b2 = params
    g = _NUMPY_ACTIVATIONS[activation]
    rng = np.random.default_rng(PILOT_SEED)
    top = np.empty(0, np.float32)
    chunk = 1 << 17
    for _ in range(PILOT_SIZE // chunk):
        x = rng.standard_normal((chunk, w1.shape[0]), dtype=np.float32)
        out = g(x @ w1 + b1).astype(np.float32) @ w2 + b2
        top = np.concatenate([top, out])
        top = np.partition(top, len(top) - count)[-count:]
    return np.sort(top)[::-1]


def trained_mlp_model(w1, b1, w2, b2, threshold, *, activation: str):
    """``x ~ N(0, I)``; ``hidden = g(x @ w1 + b1)``; ``output = hidden . w2 + b2``.

    Sites: ``hidden`` ``(hidden,)``, ``output`` (scalar), ``catastrophe`` =
    ``output > threshold``.
    """
    g = ACTIVATIONS[activation]
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([w1.shape[0]]).to_event(1))
    h = numpyro.deterministic("hidden", g(x @ w1 + b1))
    out = numpyro.deterministic("output", h @ w2 + b2)
    numpyro.deterministic("catastrophe", out > threshold)


def build_trained_mlp(
    n: int = 16,
    hidden: int = 64,
    activation: str = "tanh",
    seed: int = 0,
    steps: int = 1500,
    threshold: float | None = None,
    tail_probability: float = 1e-5,
) -> BuiltModel:
    """A trained ``n -> hidden -> 1`` MLP (module docstring) with a rare high-output detector.

    Options:
        n, hidden, activation, seed, steps: the network and its training.
        threshold: ``catastrophe`` fires when ``output`` exceeds it. Default
            (``None``): the empirical ``1 - tail_probability`` quantile of the output
            over ``2^20`` fixed pilot inputs (the ``ceil(tail_probability * 2^20)``-th
            largest output), rounded to 4 significant digits; so ``P[catastrophe]``
            is about ``tail_probability`` (within the pilot's ~30% at 1e-5; at the
            defaults the threshold is 4.685 and sampling 3.4e7 inputs gives 7.9e-6).
        tail_probability: the rule's target probability (needs ``>= 2^-20``).

    ``exact``: ``hidden``: the pre-activation ``x @ w1 + b1`` is exactly
    ``N(b1_j, ||w1[:, j]||^2)``, so ``E[g]`` per unit is a 1-D Gaussian integral
    (closed form for relu/gelu, adaptive quadrature for tanh/sigmoid); ``output``:
    ``E[hidden] . w2 + b2`` (linearity).
    """
    n, hidden, seed, steps = int(n), int(hidden), int(seed), int(steps)
    key = (n, hidden, activation, seed, steps)
    params, _ = train_mlp(*key)
    w1, b1, w2, b2 = params
    if threshold is None:
        count = int(np.ceil(float(tail_probability) * PILOT_SIZE))
        if not 1 <= count <= PILOT_SIZE // 2:
            raise ValueError(
                f"tail_probability must be in [2^-20, 0.5] for the pilot rule, got "
                f"{tail_probability}; pass threshold= instead"
            )
        threshold = round_threshold(float(_pilot_top_outputs(key, count)[-1]))
    w1_64 = w1.astype(np.float64)
    hidden_mean = activation_mean(activation, b1.astype(np.float64), np.linalg.norm(w1_64, axis=0))
    return BuiltModel(
        name="trained-mlp",
        model=trained_mlp_model,
        args=tuple(jnp.asarray(a) for a in params) + (jnp.asarray(threshold, jnp.float32),),
        kwargs=dict(activation=activation),
        exact={
            "hidden": hidden_mean,
            "output": float(hidden_mean @ w2.astype(np.float64) + float(b2)),
        },
        description=(
            f"{activation} MLP {n}->{hidden}->1 trained with Adam on a synthetic regression "
            f"(seed {seed}); catastrophe: output > {float(threshold):.4g}"
        ),
    )


register(ModelSpec(
    "trained-mlp", build_trained_mlp,
    "two-layer MLP trained with optax on a synthetic regression task; rare high output",
    option_defaults(build_trained_mlp),
))
