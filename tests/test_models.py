"""The built-in model zoo: registry, sites and shapes, WhestBench weights, exact answers.

Exact maths is checked tightly; exact answers against Monte Carlo within a few
standard errors (4 for one number; 4.5 per unit for vector sites, a Bonferroni
allowance over the units), at fixed seeds and non-rare option settings.
"""

from __future__ import annotations

import itertools
import math

import jax
import numpy as np
import numpyro
import pytest
from scipy import special
from scipy.stats import multivariate_normal

from ppl_mech import handlers, models

ALL_NAMES = {
    "whestbench", "whestbench-256x8", "whestbench-256x32", "whestbench-1024x16",
    "arc-mlp", "halfspaces", "trained-mlp", "kcnf", "linear-gaussian", "tiny-transformer",
}


def assert_matches_exact(result, exact, z_max: float = 4.0):
    value = np.asarray(result.value, np.float64)
    stderr = np.asarray(result.stderr, np.float64)
    exact = np.asarray(exact, np.float64)
    assert value.shape == exact.shape
    assert np.all(stderr > 0)
    z = np.abs(value - exact) / stderr
    assert np.max(z) < z_max, (value, exact, stderr)


# --- registry ---------------------------------------------------------------------------


def test_registry_lists_every_model():
    names = [spec.name for spec in models.list_models()]
    assert ALL_NAMES <= set(names)
    assert list(models.MODELS) == names
    for spec in models.list_models():
        assert isinstance(spec, models.ModelSpec)
        assert spec.description and callable(spec.build)
        assert isinstance(spec.defaults, dict)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'nope'") as info:
        models.get_model("nope")
    for name in ALL_NAMES:
        assert name in str(info.value)


def test_unknown_option_names_it_and_lists_the_valid_ones():
    with pytest.raises(TypeError, match="'depht'") as info:
        models.get_model("whestbench", depht=3)
    assert "depth=8" in str(info.value)
    # A preset fixes its network size: width is no longer an option.
    with pytest.raises(TypeError, match="'width'"):
        models.get_model("whestbench-256x8", width=32)


def test_preset_is_the_base_model_with_fixed_size():
    preset = models.get_model("whestbench-256x8")
    base = models.get_model("whestbench", width=256, depth=8)
    assert preset.name == "whestbench-256x8" and base.name == "whestbench"
    assert len(preset.args[0]) == 8 and preset.args[0][0].shape == (256, 256)
    for a, b in zip(preset.args[0], base.args[0], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert models.MODELS["whestbench-256x32"].defaults["sigmas"] == 6.0


# --- sites, shapes, and exact answers against sampling ------------------------------------
# One sampled run per case checks the documented sites and shapes and, at a
# non-rare setting, every exact answer listed (4 standard errors for a number,
# 4.5 per unit for a vector site: a Bonferroni allowance over its units).

CASES = [
    ("whestbench", dict(width=32, depth=2), {
        "layer_1": (32,), "layer_2": (32,), "catastrophe": (), "conjunction": ()}),
    ("arc-mlp", dict(width=16, hidden_layers=2), {
        "hidden_1": (16,), "hidden_2": (16,), "output": (16,), "catastrophe": ()}),
    ("arc-mlp", dict(width=16, hidden_layers=1, activation="gelu", bias_mean=0.3, bias_var=0.5),
     {"hidden_1": (16,), "output": (16,), "catastrophe": ()}),
    ("arc-mlp", dict(width=16, hidden_layers=1, activation="tanh", bias_mean=0.5), {
        "hidden_1": (16,), "output": (16,), "catastrophe": ()}),
    ("halfspaces", dict(n=16, k=2, offset=0.0, seed=1), {"margins": (2,), "catastrophe": ()}),
    ("halfspaces", dict(n=6, k=2, offset=(0.5, 1.0), seed=2), {
        "margins": (2,), "catastrophe": ()}),
    ("trained-mlp", dict(n=4, hidden=8, steps=50), {
        "hidden": (8,), "output": (), "catastrophe": ()}),
    ("kcnf", dict(n=12, m=12, k=3, seed=1), {"clauses": (12,), "catastrophe": ()}),
    ("linear-gaussian", dict(sigmas=1.0, second_sigmas=0.5, seed=4), {
        "y": (3,), "score": (), "catastrophe": (), "both": ()}),
    ("linear-gaussian", dict(dim=3, out_dim=2, diagonal=True, sigmas=1.0, second_sigmas=0.5,
                             seed=4), {"y": (2,), "score": (), "catastrophe": (), "both": ()}),
    ("tiny-transformer", dict(tokens=3, dim=8, vocab=5), {
        "attention": (3,), "logits": (5,), "catastrophe": ()}),
]


@pytest.mark.parametrize("name,options,sites", CASES, ids=lambda v: str(v)[:48])
def test_model_sites_and_exact_answers(name, options, sites):
    built = models.get_model(name, **options)
    assert built.name == name and built.catastrophe == "catastrophe"
    assert set(built.exact) <= set(sites)
    r = handlers.sample(
        built.model, num_samples=1 << 15, rng_key=jax.random.PRNGKey(7), keep_draws=0,
        progress_bar=False,
    )(*built.args, **built.kwargs)
    assert set(r) == set(sites)
    for site, shape in sites.items():
        assert np.shape(r[site].value) == shape, site
    assert r["catastrophe"].is_probability
    for site, exact in built.exact.items():
        assert_matches_exact(r[site], exact, z_max=4.5 if np.ndim(exact) else 4.0)


def test_exact_answers_are_given_where_documented():
    assert set(models.get_model("whestbench", width=8, depth=2).exact) == {"layer_1"}
    assert set(models.get_model("arc-mlp", width=8, hidden_layers=1).exact) == {"hidden_1"}
    assert set(models.get_model("halfspaces", k=2).exact) == {"margins", "catastrophe"}
    assert set(models.get_model("halfspaces", k=3).exact) == {"margins"}
    assert set(models.get_model("kcnf", n=8, m=4).exact) == {"clauses", "catastrophe"}
    assert set(models.get_model("kcnf", n=23, m=10).exact) == {"clauses"}
    assert set(models.get_model("linear-gaussian").exact) == {"y", "score", "catastrophe", "both"}
    # The kcnf sampled case is not rare: the comparison above is informative.
    assert 0.05 < models.get_model("kcnf", n=12, m=12, k=3, seed=1).exact["catastrophe"] < 0.5


def test_parameters_are_array_arguments():
    # Weights and thresholds travel as arrays (jit arguments, differentiable);
    # structure (indices, activation names) as static keywords.
    built = models.get_model("whestbench", width=8, depth=2)
    weights, threshold, conjunction = built.args
    assert all(isinstance(w, jax.Array) for w in weights)
    assert isinstance(threshold, jax.Array) and conjunction.shape == (3,)
    assert built.kwargs == dict(layer=2, unit=0, conjunction_units=(0, 1, 2))


# --- WhestBench weights -------------------------------------------------------------------


def test_whestbench_weights_match_the_spec_bit_for_bit():
    width, depth, seed = 24, 3, 1234
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[0])
    expected = [
        (rng.standard_normal((width, width)) * np.sqrt(2 / width)).astype(np.float32)
        for _ in range(depth)
    ]
    got = models.whestbench_weights(width, depth, seed)
    assert len(got) == depth
    for w, e in zip(got, expected, strict=True):
        assert w.dtype == np.float32 and w.shape == (width, width)
        assert w.tobytes() == e.tobytes()
    built = models.get_model("whestbench", width=width, depth=depth, seed=seed)
    for w, e in zip(built.args[0], expected, strict=True):
        assert np.asarray(w).tobytes() == e.tobytes()


def test_whestbench_index_selects_a_dataset_mlp():
    # WhestBench datasets give MLP i the stream SeedSequence(seed).spawn(3 n)[3 i].
    streams = np.random.SeedSequence(7).spawn(3 * 4)
    rng = np.random.default_rng(streams[3 * 2])
    expected = (rng.standard_normal((8, 8)) * np.sqrt(2 / 8)).astype(np.float32)
    got = models.whestbench_weights(8, 1, 7, index=2)[0]
    assert got.tobytes() == expected.tobytes()


def test_whestbench_forward_pass_is_relu_of_x_at_w():
    built = models.get_model("whestbench", width=8, depth=2, threshold=0.5)
    r = handlers.sample(built.model, num_samples=4, rng_key=jax.random.PRNGKey(0), keep_draws=4,
                        progress_bar=False)(*built.args, **built.kwargs)
    draws = {k: r[k].diagnostics["draws"] for k in r}
    w1, w2 = (np.asarray(w) for w in built.args[0])
    np.testing.assert_allclose(draws["layer_2"], np.maximum(draws["layer_1"] @ w2, 0), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(draws["catastrophe"], draws["layer_2"][:, 0] > 0.5)
    assert w1.shape == (8, 8)


def test_default_threshold_rule_is_sigmas_above_the_pilot():
    wb = models.whestbench
    h = wb.pilot_inputs(16).astype(np.float64)
    w1, w2 = (w.astype(np.float64) for w in wb.whestbench_weights(16, 2, 0))
    pre = (np.maximum(h @ w1, 0.0) @ w2)[:, 0]
    built = models.get_model("whestbench", width=16, depth=2, sigmas=3.0)
    expected = pre.mean() + 3.0 * pre.std()
    assert float(built.args[1]) == pytest.approx(expected, rel=1e-3)


# --- exact answers ------------------------------------------------------------------------


def test_bivariate_normal_upper_exact_maths():
    # Through the origin: Sheppard's formula, for any rho.
    for rho in (-0.9, -0.2, 0.0, 0.5, 0.99):
        expected = 0.25 + math.asin(rho) / (2 * math.pi)
        assert models.bivariate_normal_upper(0.0, 0.0, rho) == pytest.approx(expected, rel=1e-14)
        assert models.bivariate_normal_upper(1e-9, 0.0, rho) == pytest.approx(expected, rel=1e-8)
    # Independent coordinates, far in the tail: a product of 1-D tails.
    for b1, b2 in ((3.0, 4.0), (6.0, 5.0), (8.0, -1.0)):
        expected = special.ndtr(-b1) * special.ndtr(-b2)
        assert models.bivariate_normal_upper(b1, b2, 0.0) == pytest.approx(expected, rel=1e-9)
    # Moderate probabilities: agrees with scipy's bivariate CDF.
    for b1, b2, rho in ((1.0, 0.5, 0.3), (2.0, 2.5, -0.4), (-0.5, 1.0, 0.8)):
        cov = [[1.0, rho], [rho, 1.0]]
        expected = multivariate_normal(mean=[0, 0], cov=cov).cdf([-b1, -b2])
        assert models.bivariate_normal_upper(b1, b2, rho) == pytest.approx(expected, rel=1e-6)
    # Degenerate correlations.
    assert models.bivariate_normal_upper(1.0, 2.0, 1.0) == pytest.approx(special.ndtr(-2.0))
    assert models.bivariate_normal_upper(-1.0, -1.0, -1.0) == pytest.approx(
        special.ndtr(1.0) - special.ndtr(-1.0))


def test_halfspaces_exact_probabilities():
    built = models.get_model("halfspaces", n=16, k=1, offset=5.0, seed=3)
    assert built.exact["catastrophe"] == pytest.approx(special.ndtr(-5.0), rel=1e-6)
    built = models.get_model("halfspaces", n=16, k=2, offset=0.0, seed=3)
    a = np.asarray(built.args[0], np.float64)
    rho = a[0] @ a[1] / np.linalg.norm(a[0]) / np.linalg.norm(a[1])
    assert built.exact["catastrophe"] == pytest.approx(0.25 + np.arcsin(rho) / (2 * np.pi),
                                                       rel=1e-12)
    assert "catastrophe" not in models.get_model("halfspaces", k=3).exact
    assert models.get_model("halfspaces").exact["catastrophe"] == pytest.approx(9.0e-7, rel=0.01)


def test_linear_gaussian_threshold_rule():
    built = models.get_model("linear-gaussian", sigmas=3.0)
    assert built.exact["catastrophe"] == pytest.approx(special.ndtr(-3.0), rel=1e-5)


def test_arc_he_variance():
    he_weight_variance = models.arc_mlp.he_weight_variance
    assert he_weight_variance("relu") == pytest.approx(2.0, rel=1e-12)
    # E[tanh(Z)^2] at zero bias is 0.394294...; the quadrature must reproduce it.
    assert 1 / he_weight_variance("tanh") == pytest.approx(0.3942944903978, rel=1e-9)


def test_kcnf_enumeration_counts_satisfying_assignments():
    n, clauses = 6, models.kcnf.random_kcnf(6, 9, 3, seed=5)
    naive = 0
    for bits in itertools.product([0, 1], repeat=n):
        naive += all(any((bits[abs(v) - 1] == 1) == (v > 0) for v in c) for c in clauses)
    assert models.kcnf.count_satisfying(n, clauses) == naive
    assert models.kcnf.count_satisfying(n, clauses, chunk_bits=2) == naive


def test_kcnf_default_is_rare():
    assert models.get_model("kcnf").exact["catastrophe"] == 3 / 2**20


def test_gradients_reach_the_weights_through_jit():
    built = models.get_model("whestbench", width=8, depth=2)
    weights, threshold, conjunction = built.args
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8))

    def mean_last_layer(weights):
        def one(x):
            model = numpyro.handlers.substitute(built.model, data={"x": x})
            trace = numpyro.handlers.trace(model).get_trace(weights, threshold, conjunction,
                                                            **built.kwargs)
            return trace["layer_2"]["value"].sum()

        return jax.vmap(one)(x).mean()

    grads = jax.jit(jax.grad(mean_last_layer))(weights)
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert all(np.any(np.asarray(g) != 0) for g in grads)
