"""``ppl-mech bench rare``: cases carry the right truth, runs are scored honestly, truths are cached."""

from __future__ import annotations

import json
import math

import jax
import pytest

from ppl_mech.bench import rare
from ppl_mech.bench.rare_cases import kcnf_case, mlp_threshold_case, polytope_case


def test_polytope_truth_is_the_quadrature_and_matches_the_model():
    """The exact P of a polytope case is that of the model it builds (checked by sampling at P ~ 0.1)."""
    from ppl_mech.handlers import sample

    case = polytope_case(3, 0.3)
    r = sample(case.model, num_samples=2**16, rng_key=jax.random.PRNGKey(0),
               sites=["catastrophe"])(*case.args, **case.kwargs)["catastrophe"]
    assert abs(float(r.value) - case.exact) <= 4 * float(r.stderr)


def test_runs_are_scored_against_the_truth_and_inapplicable_methods_listed():
    cases = [polytope_case(10, 2.5), kcnf_case(12, 40, 0)]
    config = rare.Config(cases=cases, methods=["sample", "importance:itgis", "importance:tilted"],
                         num_samples=2**11, verbose=False)
    rows = rare.run(config)["rows"]
    assert len(rows) == 6
    by = {(r["case"], r["method"]): r for r in rows}
    itgis = by[("polytope-10d-2.5", "importance:itgis")]
    assert itgis["status"] == "ok" and itgis["truth_source"] == "exact"
    assert itgis["abs_log10_error"] == pytest.approx(abs(math.log10(itgis["estimate"] / itgis["truth"])))
    assert itgis["abs_log10_error"] < 0.3 and itgis["evaluations"] == 2**11
    assert by[("polytope-10d-2.5", "sample")]["abs_log10_error"] == math.inf  # P = 3.4e-6: no event seen
    tilted = by[("kcnf-12v-40c-s0", "importance:tilted")]
    assert tilted["status"].startswith("not applicable") and "discrete" in tilted["status"]
    summary = {s["method"]: s for s in rare.summarize(rows, suite="polytope")}
    assert summary["sample"]["median_abs_log10_error"] == math.inf
    assert summary["importance:itgis"]["within_factor_2"] == 1.0
    kcnf = {s["method"]: s for s in rare.summarize(rows, suite="kcnf")}
    assert kcnf["importance:tilted"]["applicable"] == 0


def test_acceptance_picks_the_best_method_and_compares_with_the_rivals():
    def row(method, error):
        return {"suite": "mlp-threshold", "case": f"c{error}", "method": method, "truth": 1e-7,
                "status": "ok", "abs_log10_error": error, "within_factor_2": error < 0.3, "covered": True,
                "seconds": 1.0, "wall": 2.0, "evaluations": 10}

    rows = [row("importance:ams", 0.04), row("importance:itgis", 0.5), row("importance:mhis", 0.2),
            row("importance:cross-entropy", math.inf)]
    [line] = rare.acceptance(rows)
    assert "best importance:ams" in line and line.endswith("PASS")
    rows[0]["abs_log10_error"] = 0.06
    assert rare.acceptance(rows)[0].endswith("FAIL")


@pytest.mark.slow  # ~30 s: two rounds of 8-replica splitting
def test_splitting_truth_is_cached_and_extended(tmp_path, monkeypatch):
    monkeypatch.setenv("PPL_MECH_RESULTS", str(tmp_path))
    case = mlp_threshold_case(8, 1, 2.0)
    config = rare.Config(cases=[case], truth_round=2**11, truth_max=2**12, verbose=False)
    first = rare.truth_for(case, config)
    assert first["source"] == "ams" and first["p"] > 0 and len(first["estimates"]) >= 8
    [path] = (tmp_path / "rare_truth").glob("*.json")
    assert json.loads(path.read_text())["p"] == first["p"]
    again = rare.truth_for(case, config)
    assert again["estimates"] == first["estimates"]  # read back, not recomputed
    config.truth_max = first["evaluations"] + 2**11
    if first["se"] > rare.TRUTH_RELATIVE_SE * first["p"]:
        longer = rare.truth_for(case, config)
        assert longer["estimates"][: len(first["estimates"])] == first["estimates"]
        assert longer["evaluations"] > first["evaluations"]


def test_bad_arguments_exit_with_code_2():
    for argv in (["--suites", "nope"], ["--methods", "importance:nope"], ["--seeds", "x"]):
        with pytest.raises(SystemExit) as e:
            rare.main(argv)
        assert e.value.code == 2
