"""handlers.importance: unbiasedness on closed forms, rare events, diagnostics, clear errors.

Monte Carlo checks use tolerances from the reported standard errors (4 of
them, seeded); the ESS and k-hat helpers are checked exactly against their
formula and against ArviZ.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from ppl_mech.models import get_model

from ppl_mech import (
    ModelError,
    UnsupportedDistributionError,
    UnsupportedPrimitiveError,
    capture_program,
    handlers,
)
from ppl_mech._arviz import import_arviz, to_inference_data
from ppl_mech.importance import effective_sample_size, margin_function, pareto_khat

KEY = jax.random.PRNGKey(0)

# ---------------------------------------------------------------- test models

TOKEN_PROBS = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
TOKEN_LENGTH = 8


def token_model(threshold):
    """Eight Categorical tokens with values 0..5; catastrophe: their sum >= threshold."""
    probs = jnp.asarray(TOKEN_PROBS)
    t = numpyro.sample("t", dist.Categorical(probs=probs).expand([TOKEN_LENGTH]).to_event(1))
    total = numpyro.deterministic("total", jnp.arange(6.0)[t].sum())
    numpyro.deterministic("catastrophe", total >= threshold - 0.5)


def token_probability(threshold: int) -> float:
    """Exact P[sum >= threshold] by convolving the token distribution (dynamic programming)."""
    law = np.zeros(6 * TOKEN_LENGTH + 1)
    law[0] = 1.0
    for _ in range(TOKEN_LENGTH):
        new = np.zeros_like(law)
        for v, p in enumerate(TOKEN_PROBS):
            new[v:] += p * law[: law.size - v]
        law = new
    return float(law[threshold:].sum())


def uniform_model():
    """x ~ Uniform(0, 1)^2; catastrophe: x0 + x1 > 1.9, exact P = 0.1^2 / 2 = 0.005."""
    x = numpyro.sample("u", dist.Uniform(0.0, 1.0).expand([2]).to_event(1))
    numpyro.deterministic("catastrophe", x.sum() > 1.9)


def _within(result, exact, k=4.0):
    value, stderr = float(result.value), float(result.stderr)
    assert stderr > 0
    assert abs(value - exact) <= k * stderr, (value, stderr, exact)


# ---------------------------------------------------------------- ESS and k-hat


def test_effective_sample_size_is_kish_formula():
    rng = np.random.default_rng(0)
    log_w = rng.normal(size=500) * 2.0 - 30.0
    w = np.exp(log_w)
    assert effective_sample_size(log_w) == pytest.approx(w.sum() ** 2 / np.sum(w**2), rel=1e-10)
    assert effective_sample_size(np.zeros(17)) == pytest.approx(17.0)
    # zero weights (log w = -inf) count as zero
    assert effective_sample_size(np.r_[np.zeros(10), -np.inf]) == pytest.approx(10.0)


def test_pareto_khat_matches_arviz():
    az = import_arviz()
    rng = np.random.default_rng(1)
    for log_w in (rng.normal(size=2000), np.log(rng.pareto(1.5, size=2000) + 1.0)):
        _, expected = az.psislw(log_w - log_w.max(), reff=1.0)
        assert pareto_khat(log_w) == pytest.approx(float(expected), abs=1e-10)
    assert math.isnan(pareto_khat(np.zeros(5)))


def test_reported_ess_and_khat_are_those_of_the_log_weights():
    built = get_model("linear-gaussian", diagonal=True)
    loc, scale = built.args[:2]
    q = dist.Normal(loc, 1.6 * scale).to_event(1)  # wider than p: finite-variance weights
    n = 2048
    r = handlers.importance(built.model, proposal={"x": q}, num_samples=n, rng_key=KEY, keep_draws=n,
                            sites=["catastrophe", "score"])(*built.args, **built.kwargs)
    d = r["catastrophe"].diagnostics
    log_w = d["log_weights"]
    assert log_w.shape == (n,)
    w = np.exp(log_w - log_w.max())
    assert d["ess"] == pytest.approx(w.sum() ** 2 / np.sum(w**2), rel=1e-6)
    assert d["khat"] == pytest.approx(pareto_khat(log_w), abs=1e-9)
    # the estimate is the weighted mean of the draws
    draws = np.asarray(d["draws"], np.float64)
    expected = np.mean(np.exp(log_w) * draws)
    assert float(r["catastrophe"].value) == pytest.approx(expected, rel=1e-4)
    _within(r["catastrophe"], built.exact["catastrophe"])
    _within(r["score"], built.exact["score"])
    idata = to_inference_data(r)
    assert "log_weight" in idata.sample_stats
    assert "catastrophe" in idata.posterior


# ---------------------------------------------------------------- unbiased on closed forms


@pytest.mark.parametrize("proposal", ["tilted", "cross-entropy", "itgis", "mhis", "ams"])
def test_unbiased_on_linear_gaussian(proposal):
    """P = 1.35e-3 (dense MVN input); mean over repeats within 4 standard errors of the exact value."""
    built = get_model("linear-gaussian")
    exact = built.exact["catastrophe"]
    values, variances = [], []
    for seed in range(2):
        r = handlers.importance(built.model, proposal=proposal, num_samples=2**12,
                                rng_key=jax.random.PRNGKey(seed), sites=["catastrophe"])(*built.args,
                                                                                           **built.kwargs)
        c = r["catastrophe"]
        values.append(float(c.value))
        variances.append(float(c.stderr) ** 2)
        assert c.cost.evaluations >= 2**11 and c.cost.flops > 0 and c.cost.seconds > 0
        assert c.method == f"importance[{proposal}]"
    mean, stderr = np.mean(values), math.sqrt(sum(variances)) / len(values)
    assert abs(mean - exact) <= 4 * stderr, (values, exact)
    assert stderr < 0.25 * exact  # better than sampling: 2^12 draws give a relative error of 43%


@pytest.mark.parametrize("proposal", ["cross-entropy", "itgis", "mhis", "ams"])
def test_unbiased_on_categorical_tokens(proposal):
    """Categorical latent sites (token choices): P[sum >= 24] = 1.73e-3, exact by convolution."""
    exact = token_probability(24)
    r = handlers.importance(token_model, proposal=proposal, num_samples=2**12, rng_key=KEY)(24.0)
    _within(r["catastrophe"], exact)
    assert float(r["catastrophe"].stderr) < 0.5 * exact


def test_uniform_input_in_standard_coordinates():
    """A Uniform site is proposed through icdf(Phi(z)): support matched by construction."""
    r = handlers.importance(uniform_model, proposal="cross-entropy", num_samples=2**12, rng_key=KEY)()
    _within(r["catastrophe"], 0.005)


@pytest.mark.parametrize(
    "make, threshold, exact",
    [
        (lambda: dist.Exponential(2.0), 10.0, math.exp(-20.0)),  # 2.1e-9
        (lambda: dist.Laplace(1.0, 0.5), 11.0, 0.5 * math.exp(-20.0)),
        (lambda: dist.Pareto(1.0, 3.0), 1000.0, 1e-9),
    ],
    ids=["exponential", "laplace", "pareto"],
)
def test_non_gaussian_tail_rarer_than_float32_phi(make, threshold, exact):
    """Upper tails at ~1e-9, where Phi(z) rounds to 1 in float32 (z ~ 6): the site map keeps them."""

    def model():
        x = numpyro.sample("x", make())
        numpyro.deterministic("catastrophe", x > threshold)

    r = handlers.importance(model, proposal="cross-entropy", num_samples=2**12, rng_key=KEY)()
    _within(r["catastrophe"], exact)
    assert float(r["catastrophe"].stderr) < 0.2 * exact


# ---------------------------------------------------------------- rare events


def test_rare_events_within_factor_two_where_sampling_sees_nothing():
    """P = 9.0e-7 (two halfspaces) and P = 9.9e-10 (linear-Gaussian at 6 sigma), 2^12 evaluations."""
    halfspaces = get_model("halfspaces")
    rare = get_model("linear-gaussian", sigmas=6.0)
    assert rare.exact["catastrophe"] == pytest.approx(9.87e-10, rel=1e-2)
    for built, proposals in ((halfspaces, ["tilted", "itgis"]), (rare, ["cross-entropy", "itgis"])):
        exact = built.exact["catastrophe"]
        plain = handlers.sample(built.model, num_samples=2**12, rng_key=KEY,
                                sites=["catastrophe"])(*built.args, **built.kwargs)
        assert float(plain["catastrophe"].value) == 0.0
        for proposal in proposals:
            r = handlers.importance(built.model, proposal=proposal, num_samples=2**12, rng_key=KEY,
                                    sites=["catastrophe"])(*built.args, **built.kwargs)
            value = float(r["catastrophe"].value)
            assert exact / 2 <= value <= 2 * exact, (built.name, proposal, value, exact)
            assert r["catastrophe"].diagnostics["events"] > 100


# ---------------------------------------------------------------- scores


def test_inferred_margins():
    built = get_model("halfspaces")
    program = capture_program(built.model, built.args)
    f = margin_function(program, "catastrophe")
    normals, offsets = (np.asarray(a) for a in built.args)
    for x in (np.zeros(16), normals.sum(0) * 5.0, normals[0] * 4.0):
        c, m = f({"x": jnp.asarray(x, jnp.float32)})
        margins = normals @ x - offsets
        expected = margins.min() if np.all(margins > 0) else np.minimum(margins, 0).sum()
        assert bool(c) == bool(np.all(margins >= 0))
        assert float(m) == pytest.approx(expected, abs=1e-4)

    def argmax_model():
        y = numpyro.sample("y", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        numpyro.deterministic("catastrophe", (jnp.argmax(y) == 2) | ~(y[0] < 3.0))

    program = capture_program(argmax_model)
    f = margin_function(program, "catastrophe")
    y = jnp.array([0.5, 1.0, 0.2, -1.0])
    c, m = f({"y": y})
    assert not bool(c)
    assert float(m) == pytest.approx(max(0.2 - 1.0, 0.5 - 3.0))


def test_user_score_site_and_unknown_margin():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.deterministic("score", x.sum() - 6.0)
        numpyro.deterministic("catastrophe", jnp.isfinite(x).all() & (jnp.round(x.sum()) >= 6.0))

    with pytest.raises(UnsupportedPrimitiveError, match="catastrophe.*score="):
        handlers.importance(model, proposal="itgis", num_samples=256, rng_key=KEY)()
    r = handlers.importance(model, proposal="itgis", score="score", num_samples=2**12, rng_key=KEY)()
    exact = float(0.5 * math.erfc(5.5 / math.sqrt(3) / math.sqrt(2)))  # round(S) >= 6 iff S >= 5.5
    _within(r["catastrophe"], exact)


def test_sites_the_proposal_was_not_fitted_to_say_so():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        numpyro.deterministic("catastrophe", x[0] > 4.0)
        numpyro.deterministic("other", x[1] > 4.0)

    r = handlers.importance(model, proposal="itgis", num_samples=2**10, rng_key=KEY)()
    assert not any("not to this site" in n for n in r["catastrophe"].notes)
    assert any("fitted to 'catastrophe', not to this site" in n for n in r["other"].notes)
    given = handlers.importance(model, proposal={"x": dist.Normal(0.0, 2.0).expand([2]).to_event(1)},
                                num_samples=2**10, rng_key=KEY)()
    assert not any("not to this site" in n for n in given["other"].notes)


# ---------------------------------------------------------------- errors


def test_proposals_that_cannot_work_get_clear_errors():
    built = get_model("linear-gaussian", diagonal=True)
    run = lambda q: handlers.importance(  # noqa: E731
        built.model, proposal=q, num_samples=64, rng_key=KEY)(*built.args, **built.kwargs)
    # numpyro rejects concrete bad scales itself unless validation is off
    with pytest.raises(ModelError, match="'x'.*scale"):
        run({"x": dist.Normal(0.0, 0.0, validate_args=False).expand([4]).to_event(1)})
    with pytest.raises(ModelError, match="'x'.*scale"):
        run({"x": dist.Normal(0.0, -1.0, validate_args=False).expand([4]).to_event(1)})
    with pytest.raises(ModelError, match="'x'.*variance"):
        run({"x": dist.Delta(jnp.zeros(4), event_dim=1)})
    with pytest.raises(ModelError, match="'x'.*shape"):
        run({"x": dist.Normal(0.0, 1.0).expand([3]).to_event(1)})
    with pytest.raises(ModelError, match="'x'.*zero density"):
        run({"x": dist.Uniform(-1.0, 1.0).expand([4]).to_event(1)})
    with pytest.raises(ModelError, match="'x'.*discrete"):
        run({"x": dist.Bernoulli(0.5).expand([4]).to_event(1)})
    with pytest.raises(ModelError, match="'y'"):
        run({"y": dist.Normal(0.0, 1.0)})

    def tokens_run(q):
        return handlers.importance(token_model, proposal=q, num_samples=64, rng_key=KEY)(24.0)

    with pytest.raises(ModelError, match="'t'.*continuous"):
        tokens_run({"t": dist.Normal(0.0, 1.0).expand([8]).to_event(1)})
    with pytest.raises(ModelError, match="'t'.*probability 0"):
        tokens_run({"t": dist.Categorical(probs=jnp.array([0.5, 0.5, 0, 0, 0, 0])).expand([8]).to_event(1)})
    with pytest.raises(UnsupportedDistributionError, match="'t'.*discrete"):
        tokens_run("tilted")
    with pytest.raises(UnsupportedDistributionError, match="'u'.*Uniform"):
        handlers.importance(uniform_model, proposal="tilted", num_samples=64, rng_key=KEY)()
    with pytest.raises(ValueError, match="unknown proposal"):
        run("nonsense")
    with pytest.raises(TypeError, match="no option.*'temprature'.*temperature"):
        handlers.importance(built.model, proposal="itgis", num_samples=64, rng_key=KEY,
                            temprature=1.0)(*built.args, **built.kwargs)
    with pytest.raises(ModelError, match="target"):
        handlers.importance(built.model, proposal="itgis", num_samples=64, rng_key=KEY,
                            target="y")(*built.args, **built.kwargs)


def test_wider_proposal_than_support_is_fine():
    """q = Normal for a Uniform site: draws outside (0, 1) get weight 0, the estimate stays unbiased."""
    q = dist.Normal(0.9, 0.15).expand([2]).to_event(1)
    r = handlers.importance(uniform_model, proposal={"u": q}, num_samples=2**13, rng_key=KEY)()
    _within(r["catastrophe"], 0.005)


def test_dependent_latent_sites_are_rejected():
    def model():
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        b = numpyro.sample("b", dist.Normal(a, 1.0))
        numpyro.deterministic("catastrophe", b > 3.0)

    with pytest.raises(ModelError, match="'b'.*depends"):
        handlers.importance(model, proposal="itgis", num_samples=64, rng_key=KEY)()


def test_registered_methods():
    from ppl_mech._methods import MethodOptions, make_estimator, method_names

    for variant in ("tilted", "cross-entropy", "itgis", "mhis", "ams"):
        assert f"importance:{variant}" in method_names()
    estimator = make_estimator("importance:itgis", token_model, MethodOptions(num_samples=128))
    assert isinstance(estimator, handlers.importance)


def test_splitting_sizes_itself_to_the_budget():
    """Without num_particles, a pilot measures log(1/P) and the whole run costs about num_samples."""
    built = get_model("halfspaces")
    r = handlers.importance(built.model, proposal="ams", num_samples=2**14, rng_key=KEY,
                            sites=["catastrophe"])(*built.args, **built.kwargs)["catastrophe"]
    assert 0.6 * 2**14 <= r.cost.evaluations <= 1.4 * 2**14, r.cost.evaluations
    assert any("pilot" in note for note in r.notes)
    assert r.diagnostics["num_particles"] >= 32
    assert not any("spent" in note for note in r.notes)


def test_a_run_that_spends_far_more_than_num_samples_says_so():
    """Splitting's pilot and its floor of 32 particles per replica cost more than a tiny budget."""
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        numpyro.deterministic("catastrophe", x[0] > 3.0)

    r = handlers.importance(model, proposal="ams", num_samples=64, rng_key=KEY)()["catastrophe"]
    assert r.cost.evaluations > 128
    assert any(f"spent {r.cost.evaluations} model evaluations for num_samples=64" in n for n in r.notes)


def test_splitting_flags_a_replica_that_dominates_the_mean():
    """Heavy-tailed replicas (one holds most of the total) get a note; agreeing replicas do not."""
    from ppl_mech.importance._ams import dominant_replica_note, largest_replica_share

    agreeing = np.array([1.0, 1.2, 0.9, 1.1])
    assert dominant_replica_note(agreeing) is None
    assert largest_replica_share(agreeing) == pytest.approx(1.2 / 4.2)
    heavy = np.array([0.1, 0.2, 9.0, 0.1])
    assert "96%" in dominant_replica_note(heavy)  # 9.0 / 9.4
    assert dominant_replica_note(np.array([0.0, 5.0])) is None  # two replicas: no verdict
    assert np.isnan(largest_replica_share(np.zeros(4)))


def test_annealed_mhis_flags_a_run_that_dominates():
    """One run holding most of the total: the SE across runs is not to be trusted."""
    from ppl_mech.importance._mhis import collapse_notes

    assert collapse_notes(np.array([[1.0], [1.1], [0.9], [1.0]])) == ()
    notes = collapse_notes(np.array([[0.1], [0.2], [3.0], [0.1]]))
    assert len(notes) == 1 and notes[0].startswith("mhis: one replica holds 88%")


def test_annealed_mhis_refuses_to_claim_precision_when_a_tempering_step_collapses():
    """A margin of exponential scale, exp(x0 + x1) - 2390: the ladder's first steps put all the
    weight on one particle; the run returned 3e-217 with interval [0, 1.4e-216] (truth 1.9e-8)."""

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        numpyro.deterministic("catastrophe", jnp.exp(x[0] + x[1]) > math.exp(5.5 * math.sqrt(2)))

    r = handlers.importance(model, proposal="mhis", num_samples=2**13, rng_key=KEY)()["catastrophe"]
    assert r.diagnostics["min_level_ess"] * r.diagnostics["num_samples"] / 4 < 2  # particles per run
    assert tuple(float(b) for b in r.interval) == (0.0, 1.0)
    assert any("tempering step kept" in n for n in r.notes)


@pytest.mark.parametrize("proposal", ["cross-entropy", "itgis", "ams"])
def test_detector_through_custom_jvp_activation(proposal):
    """``jax.nn.relu`` is a ``custom_jvp_call``: the score interpreter binds it with its sub-functions."""

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        numpyro.deterministic("catastrophe", jax.nn.relu(x).sum() > 4.0)

    r = handlers.importance(model, proposal=proposal, num_samples=4096, rng_key=KEY)()["catastrophe"]
    # P[sum relu(x_i) > 4] = 0.0373 (2^20 samples); each proposal is within its interval's reach
    assert 0.025 < float(r.value) < 0.05, float(r.value)


def _tail_model():
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.deterministic("catastrophe", x > 2.5)


def test_zero_events_under_the_proposal_give_an_uninformative_interval():
    """A proposal that never reaches the event says nothing: interval [0, 1] and a note, not [0, 0]."""
    r = handlers.importance(_tail_model, proposal={"x": dist.Normal(-5.0, 0.5)}, num_samples=2048,
                            rng_key=KEY)()["catastrophe"]
    assert float(r.value) == 0.0 and r.diagnostics["events"] == 0
    assert r.interval == (0.0, 1.0)
    assert any("no event" in note for note in r.notes)


def test_heavy_tailed_weights_get_a_khat_note():
    """A proposal narrower than p has unbounded weights (k = 1 - 0.15^2 here): the result says so."""
    narrow = handlers.importance(_tail_model, proposal={"x": dist.Normal(2.6, 0.15)}, num_samples=4096,
                                 rng_key=KEY)()["catastrophe"]
    assert narrow.diagnostics["khat_site"] > 0.7
    assert any("k-hat" in note for note in narrow.notes)
    wide = handlers.importance(_tail_model, proposal={"x": dist.Normal(2.7, 1.0)}, num_samples=4096,
                               rng_key=KEY)()["catastrophe"]
    assert wide.diagnostics["khat_site"] < 0.7
    assert not any("k-hat" in note for note in wide.notes)


# ---------------------------------------------------------------- found by a generality sweep (session 7)

def test_ideal_splitting_variance_is_the_last_particle_limit():
    from ppl_mech.importance._ams import ideal_relative_variance

    p, n = 1e-8, 200
    assert ideal_relative_variance(p, n, 1e-4) == pytest.approx(math.log(1 / p) / n, rel=1e-3)
    assert ideal_relative_variance(p, n, 0.1) > ideal_relative_variance(p, n, 1e-4)
    assert ideal_relative_variance(0.0, n, 0.1) == 0.0


def test_splitting_standard_error_is_never_below_the_ideal_one():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        numpyro.deterministic("catastrophe", x[0] > 4.0)

    r = handlers.importance(model, proposal="ams", num_samples=2**12, rng_key=KEY)()["catastrophe"]
    d = r.diagnostics
    assert float(r.stderr) == pytest.approx(max(d["replica_stderr"], d["ideal_stderr"]))
    assert d["ideal_stderr"] > 0


@pytest.mark.parametrize("proposal", ["itgis", "cross-entropy"])
@pytest.mark.parametrize("detector, union", [
    (lambda x: (x[0] > 3.0) | (x[1] > 3.0), True),
    (lambda x: jnp.abs(x[0] + x[1]) > 4.0, True),  # two-sided: was 0.0099 for 0.0131, no note
    (lambda x: (lambda y: y * y)(x[0] - x[1]) > 9.0, True),
    (lambda x: jnp.maximum(x[0], x[1]) > 3.0, True),  # was half of P at z = -46..-97, no note
    (lambda x: ~((x[0] <= 3.0) & (x[1] <= 3.0)), True),
    (lambda x: x[0] + 2.0 * x[1] > 6.0, False),
    (lambda x: x[0] * x[1] > 9.0, True),  # both positive or both negative: ITGIS gave half of P
    (lambda x: x[0] * jax.nn.sigmoid(x[1]) > 3.0, False),  # a gate cannot change sign
    (lambda x: jax.nn.gelu(x @ jnp.array([[1.0, -0.5], [0.3, 2.0]]))[0] > 3.0, False),
    (lambda x: jnp.maximum(x, jnp.array([0.5, -0.5])).sum() > 4.0, False),  # max with constants
], ids=["or", "abs", "square", "max", "de-morgan", "one-sided", "product", "gate", "gelu", "max-const"])
def test_single_gaussian_proposal_on_a_union_gets_a_note(proposal, detector, union):
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        numpyro.deterministic("catastrophe", detector(x))

    r = handlers.importance(model, proposal=proposal, num_samples=2**12, rng_key=KEY)()["catastrophe"]
    assert any("the detector is (or may be) a union" in n for n in r.notes) == union


def test_distribution_whose_icdf_needs_tfp_is_refused_by_name():
    def model():
        g = numpyro.sample("g", dist.Gamma(2.0, 1.0).expand([3]).to_event(1))
        numpyro.deterministic("catastrophe", g.sum() > 20.0)

    with pytest.raises(UnsupportedDistributionError, match="site 'g'"):
        handlers.importance(model, proposal="ams", num_samples=2**10, rng_key=KEY)()


def test_splitting_and_annealing_without_a_final_event_say_so():
    """0 +- 0 with interval [0, 0] and no note was what MHIS and AMS gave before (sweep, session 8)."""

    def exponential(t):
        x = numpyro.sample("x", dist.Exponential(1.0))
        numpyro.deterministic("catastrophe", x < t)

    r = handlers.importance(exponential, proposal="mhis", num_samples=2**12, rng_key=KEY)(1e-7)["catastrophe"]
    assert r.diagnostics["events"] == 0  # this seed's runs do not reach P = 1e-7
    assert r.interval[1] == 1.0 and any("no event among the final particles" in n for n in r.notes)

    probs = 0.2 ** np.arange(10)

    def ordinal(k):
        tok = numpyro.sample("tok", dist.Categorical(jnp.asarray(probs / probs.sum(), jnp.float32)))
        numpyro.deterministic("catastrophe", tok >= k)

    r = handlers.importance(ordinal, proposal="ams", num_samples=2**12, rng_key=KEY)(9)["catastrophe"]
    assert r.diagnostics["events"] == 0  # ties of the score stall splitting on one token
    assert r.interval[1] == 1.0 and any("no event among the final particles" in n for n in r.notes)


def test_too_few_samples_for_a_standard_error_are_refused():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.deterministic("catastrophe", x > 4.0)

    with pytest.raises(ValueError, match="num_samples must be an integer >= 2"):
        handlers.importance(model, proposal="tilted", num_samples=1, rng_key=KEY)()


def test_bounds_of_a_detector_jaxpr_are_outer_bounds_and_constants_are_not_random():
    from ppl_mech.importance._bounds import random_values_and_bounds

    w = jnp.array([2.0, -3.0])

    def f(x):
        gate = 0.5 * (1.0 + jnp.tanh(x[0]))
        return gate, jnp.exp(x[1]) * w, jnp.abs(x[0] - 1.0) + jax.nn.sigmoid(x[1]), x[0] * w[0]

    closed = jax.make_jaxpr(f)(jnp.zeros(2))
    random, bounds = random_values_and_bounds(closed)
    outs = closed.jaxpr.outvars
    assert bounds[outs[0]] == (0.0, 1.0)
    lo, hi = bounds[outs[1]]
    assert lo == -math.inf and hi == math.inf  # exp(x) in [0, inf) times [-3, 2]
    assert bounds[outs[2]][0] == 0.0 and bounds[outs[2]][1] == math.inf
    assert all(v in random for v in outs)
    assert not any(v in random for v in closed.jaxpr.constvars)
