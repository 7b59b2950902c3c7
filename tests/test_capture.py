"""Capture: sites, shapes, composition with NumPyro's handlers, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.handlers import condition, scope, seed, substitute

from ppl_mech import RETURN_SITE, ModelError, capture_program


def mlp(w, threshold=1.0):
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    h = numpyro.deterministic("h", jnp.maximum(x @ w, 0.0))
    numpyro.deterministic("catastrophe", h[0] > threshold)
    return h.sum()


W = jnp.arange(6.0).reshape(3, 2) / 6


def test_sites_shapes_and_event_dims():
    program = capture_program(mlp, (W,))
    assert list(program.latents) == ["x"]
    x = program.latents["x"]
    assert x.shape == (3,) and x.event_dim == 1 and not x.is_discrete
    assert list(program.outputs) == ["h", "catastrophe", RETURN_SITE]
    assert program.outputs["h"].shape == (2,)
    assert program.outputs["catastrophe"].is_boolean


def test_program_function_is_the_model():
    program = capture_program(mlp, (W,))
    xv = jnp.array([1.0, -2.0, 0.5])
    out = program.fn({"x": xv})
    np.testing.assert_allclose(out["h"], np.maximum(np.asarray(xv) @ np.asarray(W), 0), rtol=1e-6)
    jaxpr = program.make_jaxpr(["catastrophe"])
    assert len(jaxpr.jaxpr.invars) == 1 and len(jaxpr.jaxpr.outvars) == 1


def test_several_latents_plates_and_sample_shape():
    def model():
        with numpyro.plate("units", 4):
            a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        b = numpyro.sample("b", dist.Bernoulli(0.5), sample_shape=(2,))
        numpyro.deterministic("s", a.sum() + b.sum())

    program = capture_program(model)
    assert program.latents["a"].shape == (4,) and program.latents["a"].plates == ("units",)
    assert program.latents["b"].shape == (2,) and program.latents["b"].sample_shape == (2,)
    assert program.latents["b"].is_discrete


def test_substitute_fixes_a_site_and_scope_prefixes():
    def model():
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        b = numpyro.sample("b", dist.Normal(0.0, 1.0))
        numpyro.deterministic("s", a + b)

    program = capture_program(substitute(model, {"a": 3.0}))
    assert list(program.latents) == ["b"]
    assert float(program.fn({"b": jnp.array(1.0)})["s"]) == 4.0
    scoped = capture_program(scope(model, "net"))
    assert list(scoped.latents) == ["net/a", "net/b"]
    assert "net/s" in scoped.outputs


def test_condition_on_an_input_is_a_constant():
    def model():
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        b = numpyro.sample("b", dist.Normal(0.0, 1.0))
        numpyro.deterministic("s", a + b)

    program = capture_program(condition(model, {"a": 2.0}))
    assert list(program.latents) == ["b"] and program.observed == ("a",)
    assert float(program.fn({"b": jnp.array(1.0)})["s"]) == 3.0


def test_seed_inside_is_harmless():
    program = capture_program(seed(mlp, 3), (W,))
    assert list(program.latents) == ["x"]


def test_observed_site_that_depends_on_a_latent_is_refused():
    def model():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=0.3)

    with pytest.raises(ModelError, match="observed site 'y'"):
        capture_program(model)


def test_model_without_latents_is_refused():
    def model():
        numpyro.deterministic("c", jnp.ones(()))

    with pytest.raises(ModelError, match="no latent"):
        capture_program(model)


def test_subsampled_plate_names_the_site():
    def model():
        with numpyro.plate("data", 100, subsample_size=10):
            numpyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ModelError, match="plate 'data' is subsampled"):
        capture_program(model)


def test_unknown_output_is_named():
    program = capture_program(mlp, (W,))
    with pytest.raises(ModelError, match="no output site"):
        program.make_jaxpr(["nope"])


def test_prng_key_use_is_flagged():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        noise = jax.random.normal(numpyro.prng_key())
        numpyro.deterministic("y", x + noise)

    assert capture_program(model).uses_prng_key
