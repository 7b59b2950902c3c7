"""Predicted against sampled moments by site (ppl_mech._layer_moments) and ``ppl-mech layers``."""

import jax
import numpy as np
import pytest
from ppl_mech.models import get_model

from ppl_mech import handlers, layer_moments
from ppl_mech.cli import main


@pytest.fixture(scope="module")
def small_net():
    b = get_model("whestbench", width=32, depth=3)
    sampled = handlers.sample(b.model, num_samples=20_000, rng_key=jax.random.PRNGKey(0))(*b.args, **b.kwargs)
    return b, sampled


def test_exact_family_agrees_with_sampling_within_noise(x64):
    b = get_model("linear-gaussian")
    mech = handlers.mechanize(b.model)(*b.args, **b.kwargs)
    mc = handlers.sample(b.model, num_samples=50_000, rng_key=jax.random.PRNGKey(3))(*b.args, **b.kwargs)
    diag = layer_moments(mech, mc)
    for row in diag.table().itertuples():
        # exact means: the error is sampling noise, so the mean of z^2 is 1 +- sqrt(2 / units)
        assert row.mean_rms_z**2 < 1 + 5 * np.sqrt(2 / row.units), row
        assert abs(row.mean_excess_mse) < 5 * row.sampling_noise, row
        assert row.variance_rel_error_median < 5 * row.variance_noise, row


def test_one_row_per_layer_and_families_rank_as_expected(small_net):
    b, sampled = small_net
    rows = {}
    for family in ("diagonal", "gaussian"):
        mech = handlers.mechanize(b.model, family=family)(*b.args, **b.kwargs)
        table = layer_moments(mech, sampled).table()
        assert list(table.index) == ["layer_1", "layer_2", "layer_3"]
        rows[family] = table
    # layer 1 is exact in both families (independent inputs); the gaussian family keeps
    # the correlations that the diagonal one drops, so it is better at the last layer
    for family in rows:
        assert rows[family].loc["layer_1", "mean_rms_z"] ** 2 < 1 + 5 * np.sqrt(2 / 32)
    assert rows["gaussian"].loc["layer_3", "mean_mse"] < rows["diagonal"].loc["layer_3", "mean_mse"]


def test_arviz_export_and_plot(small_net, tmp_path):
    b, sampled = small_net
    diag = layer_moments(handlers.mechanize(b.model)(*b.args, **b.kwargs), sampled)
    idata = diag.to_inference_data()
    assert {"predicted", "sampled"} <= set(idata.groups())
    np.testing.assert_allclose(idata.sampled["layer_2.mean"].values, np.asarray(sampled["layer_2"].value))
    assert idata.predicted["layer_3.variance"].shape == (32,)
    fig = diag.plot()
    fig.savefig(tmp_path / "layers.png")
    assert (tmp_path / "layers.png").stat().st_size > 0


def test_detector_sites_are_refused(small_net):
    b, sampled = small_net
    mech = handlers.mechanize(b.model)(*b.args, **b.kwargs)
    with pytest.raises(ValueError, match="detector"):
        layer_moments(mech, sampled, sites=["catastrophe"])
    with pytest.raises(KeyError, match="nope"):
        layer_moments(mech, sampled, sites=["nope"])


def test_cli_layers_writes_plot_and_netcdf(tmp_path, capsys):
    code = main(["layers", "whestbench", "-o", "width=16", "-o", "depth=2", "-n", "2000",
                 "--methods", "mechanize:gaussian,mechanize:diagonal",
                 "--plot", str(tmp_path / "l.png"), "--netcdf", str(tmp_path / "l.nc")])
    assert code == 0
    out = capsys.readouterr().out
    assert "layer_2" in out and "mean_mse" in out
    for method in ("mechanize-gaussian", "mechanize-diagonal"):
        assert (tmp_path / f"l-{method}.png").exists() and (tmp_path / f"l-{method}.nc").exists()
