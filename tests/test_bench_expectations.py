"""``ppl-mech bench expectations`` on a tiny configuration: files written, numbers sane, truth cached."""

import csv
import math

import pytest
from ppl_mech.models import get_model

from ppl_mech.bench import expectations
from ppl_mech.bench.expectations import Config, Network

TINY = (
    Network("whestbench-16x2", "whestbench", dict(width=16, depth=2), "layer_2"),
    Network("arc-16-relu", "arc-mlp", dict(width=16, hidden_layers=2, activation="relu"), "output"),
)


def tiny_config(out):
    return Config(networks=TINY, seeds=(0,), budgets=(1e5, 1e6), mechanize=("diagonal", "gaussian"),
                  hybrid_bases=("diagonal",), mc_samples=2**10, truth_min=2**14, truth_max=2**17,
                  out=out, verbose=False)


def test_tiny_run_writes_csv_png_and_sane_numbers(tmp_path):
    paths = expectations.run(tiny_config(tmp_path))
    assert paths["png"].stat().st_size > 10_000
    rows = list(csv.DictReader(paths["csv"].open()))
    assert {r["network"] for r in rows} == {n.label for n in TINY}
    families = {r["family"] for r in rows}
    assert {"mechanize:diagonal", "mechanize:gaussian", "hybrid:diagonal", "sample"} <= families
    for r in rows:
        flops, seconds, mse = float(r["flops"]), float(r["seconds"]), float(r["mse"])
        assert flops > 0 and seconds > 0 and math.isfinite(mse), r
        assert float(r["mc_mse_at_flops"]) > 0 and float(r["truth_se2"]) > 0
        # one forward pass is about depth * w * (2w - 1) FLOPs (plus random numbers and ReLUs)
        per_sample = float(r["mc_flops_per_sample"])
        assert 2 * 16 * 31 <= per_sample <= 20 * 2 * 16 * 31, per_sample
        if r["family"] == "sample":  # measured MC agrees with the variance formula (one draw: loose)
            assert 0.1 < float(r["gain_at_flops"]) < 10, r
        if r["family"] == "hybrid:diagonal":  # never much worse than sampling at its budget
            assert float(r["gain_at_flops"]) > 0.5, r
    summary = list(csv.DictReader(paths["summary"].open()))
    assert any(s["estimator"] == "CROSSOVER" for s in summary)
    truth_files = sorted((tmp_path / "expectations_truth").glob("*.npz"))
    assert len(truth_files) == 2
    stamps = [f.stat().st_mtime_ns for f in truth_files]
    have = int(rows[0]["truth_evaluations"])
    built = get_model("whestbench", width=16, depth=2, seed=0)
    again = expectations.ground_truth(built, TINY[0], 0, have, 0.0, tiny_config(tmp_path))
    assert int(again["evaluations"]) == have  # cached, not recomputed
    assert [f.stat().st_mtime_ns for f in truth_files] == stamps


def test_bad_arguments_exit_with_code_2():
    for argv in (["--seeds", "x"], ["--networks", "nope"], ["--budgets", "-1"], ["--mechanize", "bogus"]):
        with pytest.raises(SystemExit) as info:
            expectations.main(argv)
        assert info.value.code == 2
