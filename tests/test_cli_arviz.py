"""The CLI (exit codes, one-line errors) and the ArviZ bridge."""

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

from ppl_mech import handlers
from ppl_mech._arviz import comparison_table, import_arviz, plot_estimates, to_inference_data
from ppl_mech.cli import main


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("whestbench-256x8", "halfspaces", "kcnf", "trained-mlp", "arc-mlp"):
        assert name in out


def test_compare_runs_and_writes(tmp_path, capsys):
    csv = tmp_path / "table.csv"
    code = main(["compare", "halfspaces", "--methods", "sample,mechanize:gaussian", "-n", "2000",
                 "--csv", str(csv), "--plot", str(tmp_path / "p.png")])
    assert code == 0
    out = capsys.readouterr().out
    assert "mechanize[gaussian]" in out and "exact" in out
    assert csv.exists() and (tmp_path / "p.png").exists()


def test_user_model_from_a_file(tmp_path, capsys):
    path = tmp_path / "m.py"
    path.write_text(
        "import numpyro, numpyro.distributions as dist\n"
        "def model():\n"
        "    x = numpyro.sample('x', dist.Normal(0., 1.))\n"
        "    numpyro.deterministic('catastrophe', x > 1.0)\n"
    )
    assert main(["estimate", f"{path}:model", "--method", "mechanize", "-n", "10"]) == 0
    assert "0.1587" in capsys.readouterr().out


def test_bad_arguments_exit_2_with_one_line(capsys):
    for argv in (["estimate", "nope"], ["compare", "halfspaces", "--methods", "bogus"],
                 ["estimate", "halfspaces", "-o", "width"], ["estimate", "halfspaces", "-n", "0"],
                 ["frobnicate"], ["bench", "nope"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("ppl-mech: error:") and "\n" not in err, err


def model():
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    numpyro.deterministic("s", x.sum())
    numpyro.deterministic("tail", x[0] > 1.0)


def test_inference_data_works_with_arviz():
    az = import_arviz()
    r = handlers.sample(model, num_samples=4000, rng_key=jax.random.PRNGKey(0), keep_draws=400)()
    idata = to_inference_data(r)
    summary = az.summary(idata, var_names=["s"])
    assert abs(summary["mean"].iloc[0]) < 0.5
    assert np.all(np.asarray(az.ess(idata)["s"]) > 100)
    az.plot_forest(idata, var_names=["s"])
    assert "estimates" in idata.groups()
    np.testing.assert_allclose(idata.estimates["tail.value"].values, r["tail"].value)


def test_comparison_table_and_plot():
    runs = {
        "sample": handlers.sample(model, num_samples=4000, rng_key=jax.random.PRNGKey(0))(),
        "gaussian": handlers.mechanize(model)(),
    }
    table = comparison_table(runs, "tail", reference=0.15865525)
    assert list(table.index) == ["sample", "gaussian"]
    assert table.loc["gaussian", "rel_error"] < 1e-5
    assert table.loc["sample", "evaluations"] == 4000
    plot_estimates(runs, "tail", reference=0.15865525)
