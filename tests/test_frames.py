"""Antithetic orthogonal frames: each draw exact, quadratic parts balanced, used by the hybrid."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from ppl_mech import handlers
from ppl_mech._frames import FrameLayout, auto_frame_size, frame_layout, frame_noise

DIM = 12


def test_a_frame_is_orthogonal_antithetic_and_each_draw_is_standard_normal():
    noise = np.asarray(frame_noise(jax.random.PRNGKey(0), 5, DIM), np.float64)
    assert noise.shape == (10, DIM)
    np.testing.assert_allclose(noise[5:], -noise[:5])
    gram = noise[:5] @ noise[:5].T
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-4)
    # marginally N(0, I): the first draw of many frames
    first = np.asarray(jax.vmap(lambda k: frame_noise(k, 5, DIM)[0])(
        jax.random.split(jax.random.PRNGKey(1), 20000)), np.float64)
    np.testing.assert_allclose(first.mean(0), 0.0, atol=0.04)
    np.testing.assert_allclose(np.cov(first.T), np.eye(DIM), atol=0.05)
    squared = np.sum(first**2, axis=1)  # chi^2 with DIM degrees of freedom
    assert abs(squared.mean() - DIM) < 0.15 and abs(squared.var() - 2 * DIM) < 1.5


def test_a_full_frame_balances_every_quadratic_form():
    """``z^T B z`` over a full frame varies only through the radii: below i.i.d. draws.

    For traceless ``B`` the frame mean's variance is about ``4 tr(B^2) / DIM^2`` against
    ``tr(B^2) / DIM`` for ``2 DIM`` i.i.d. draws: ``DIM / 4 = 3`` times less here.
    """
    b = np.random.default_rng(0).standard_normal((DIM, DIM))
    b = b + b.T
    b -= np.trace(b) / DIM * np.eye(DIM)

    def quad(z):
        return jnp.einsum("ni,ij,nj->n", z, b, z)

    keys = jax.random.split(jax.random.PRNGKey(2), 4000)
    framed = np.asarray(jax.vmap(lambda k: quad(frame_noise(k, DIM, DIM)).mean())(keys), np.float64)
    iid = np.asarray(jax.vmap(lambda k: quad(jax.random.normal(k, (2 * DIM, DIM))).mean())(keys),
                     np.float64)
    se = framed.std() / np.sqrt(len(framed))
    assert abs(framed.mean() - np.trace(b)) < 4 * se
    assert framed.var() < iid.var() / 2.4, (framed.var(), iid.var())


def two_inputs(w):
    x = numpyro.sample("x", dist.Normal(1.0, 2.0).expand([6]).to_event(1))
    u = numpyro.sample("u", dist.Uniform(-1.0, 1.0).expand([4]).to_event(1))
    h = jax.nn.relu(jnp.concatenate([x, 3 * u]) @ w)
    numpyro.deterministic("h", h)
    numpyro.deterministic("fired", h[0] > 4.0)


W = np.random.default_rng(1).standard_normal((10, 32)) / 3


def test_layout_covers_all_continuous_inputs_and_refuses_what_cannot_rotate():
    layout = frame_layout(two_inputs, (W,), {})
    assert isinstance(layout, FrameLayout) and layout.dim == 10 and layout.names == ("x", "u")

    def discrete():
        b = numpyro.sample("b", dist.Bernoulli(0.5).expand([3]).to_event(1))
        numpyro.deterministic("s", b.sum())

    def dependent():
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        numpyro.deterministic("y", numpyro.sample("y", dist.Normal(0.0, s)))

    assert "'b'" in frame_layout(discrete, (), {})
    assert "'y'" in frame_layout(dependent, (), {})
    assert auto_frame_size(256, 2**20, 16) == 256 and auto_frame_size(256, 1000, 16) == 31
    assert auto_frame_size(256, 10, 16) == 1


def test_hybrid_draws_frames_for_real_sites_and_stays_unbiased():
    truth = handlers.sample(two_inputs, num_samples=2**20, rng_key=jax.random.PRNGKey(9),
                            sites=["h"])(W)["h"]
    run = jax.jit(lambda key: handlers.hybrid(two_inputs, base="mean", num_samples=640, rng_key=key,
                                              sites=["h"])(W)["h"])
    first = run(jax.random.PRNGKey(0))
    assert int(first.diagnostics["frame_size"]) == 10  # full: 640 >= 16 frames of 20 draws
    sampled = np.array([np.asarray(run(jax.random.PRNGKey(s)).diagnostics["sampled_value"])
                        for s in range(30)])
    se = np.sqrt(sampled.var(0) / len(sampled) + np.asarray(truth.stderr) ** 2)
    z = (sampled.mean(0) - np.asarray(truth.value)) / se
    assert np.max(np.abs(z)) < 4.5, z
    eager = handlers.hybrid(two_inputs, base="mean", num_samples=640, rng_key=jax.random.PRNGKey(0),
                            sites=["h"])(W)["h"]
    assert eager.cost.evaluations == 640 and any("orthogonal frames" in n for n in eager.notes)


def test_frames_beat_pairs_on_a_relu_layer():
    def sampled(frames):
        def one(key):
            return handlers.hybrid(two_inputs, base="mean", num_samples=2560, rng_key=key, sites=["h"],
                                   frames=frames)(W)["h"].diagnostics["sampled_value"]

        run = jax.jit(one)
        return np.array([np.asarray(run(jax.random.PRNGKey(s))) for s in range(12)])

    assert np.mean(np.var(sampled(None), axis=0)) < np.mean(np.var(sampled(False), axis=0)) / 1.5


def test_boolean_sites_keep_pairs_and_bad_frames_are_named():
    r = handlers.hybrid(two_inputs, base="diagonal", num_samples=640, rng_key=jax.random.PRNGKey(0),
                        sites=["fired", "h"])(W)
    assert int(r["h"].diagnostics["frame_size"]) == 0
    forced = handlers.hybrid(two_inputs, base="diagonal", num_samples=640, rng_key=jax.random.PRNGKey(0),
                             sites=["fired"], frames=4)(W)["fired"]
    lo, hi = (float(np.asarray(b)) for b in forced.interval)
    assert int(forced.diagnostics["frame_size"]) == 4 and 0 <= lo <= float(forced.value) <= hi <= 1

    def discrete():
        b = numpyro.sample("b", dist.Bernoulli(0.5).expand([20]).to_event(1))
        numpyro.deterministic("s", b * 1.0)

    with pytest.raises(ValueError, match="'b'"):
        handlers.hybrid(discrete, base="diagonal", num_samples=640, rng_key=jax.random.PRNGKey(0),
                        frames=True)()
    with pytest.raises(ValueError, match="frame size 11"):
        handlers.hybrid(two_inputs, base="mean", num_samples=640, rng_key=jax.random.PRNGKey(0),
                        frames=11)(W)
    with pytest.raises(ValueError, match="frames must be"):
        handlers.hybrid(two_inputs, base="mean", num_samples=640, rng_key=jax.random.PRNGKey(0),
                        frames="yes")(W)
