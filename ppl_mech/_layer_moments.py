"""Where does an approximation break? Predicted against sampled moments, site by site.

A mechanistic estimate predicts the mean (and, except for the ``mean`` family,
the variance) of every real-valued site: each layer of a network when the
model names its layers with ``numpyro.deterministic``. Comparing those
predictions with a Monte Carlo run, layer by layer, shows at which depth the
presumptions of a message family stop holding.

    >>> mech = handlers.mechanize(model, family="gaussian")(*args)
    >>> mc = handlers.sample(model, num_samples=2**16, rng_key=key)(*args)
    >>> diag = layer_moments(mech, mc)
    >>> diag.table()                     # one row per site
    >>> diag.plot().savefig("layers.png")
    >>> diag.to_inference_data()         # ArviZ: groups ``predicted`` and ``sampled``

The sampled moments have their own noise: the table reports it (the mean's
squared standard error, averaged over units), and ``mean_excess_mse`` is the
mean squared error of the prediction with that noise subtracted (an unbiased
estimate of the squared error against the true means).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._result import Results


@dataclasses.dataclass(frozen=True)
class SiteMoments:
    """Predicted and sampled moments of one real-valued site (arrays over its units)."""

    site: str
    predicted_mean: np.ndarray
    predicted_variance: np.ndarray | None
    sampled_mean: np.ndarray
    sampled_variance: np.ndarray
    sampled_stderr: np.ndarray
    num_samples: int

    def summary(self) -> dict[str, float]:
        err = self.predicted_mean - self.sampled_mean
        noise = float(np.mean(self.sampled_stderr**2))
        out = {
            "units": int(self.sampled_mean.size),
            "mean_mse": float(np.mean(err**2)),
            "sampling_noise": noise,
            "mean_excess_mse": float(np.mean(err**2)) - noise,
            "mean_rms_z": float(np.sqrt(np.mean((err / np.where(self.sampled_stderr > 0,
                                                                 self.sampled_stderr, np.inf)) ** 2))),
        }
        if self.predicted_variance is not None:
            sampled = self.sampled_variance
            ratio = np.where(sampled > 0, self.predicted_variance / np.where(sampled > 0, sampled, 1), np.nan)
            out["variance_ratio_median"] = float(np.nanmedian(ratio))
            out["variance_rel_error_median"] = float(np.nanmedian(np.abs(ratio - 1)))
            # the relative standard error of a sampled variance is about sqrt(2 / n) (Gaussian)
            out["variance_noise"] = float(np.sqrt(2.0 / max(self.num_samples - 1, 1)))
        return out


@dataclasses.dataclass(frozen=True)
class LayerMoments:
    """The comparison of one mechanistic run with one sampled run, site by site."""

    method: str
    sites: tuple[SiteMoments, ...]

    def __getitem__(self, site: str) -> SiteMoments:
        for s in self.sites:
            if s.site == site:
                return s
        raise KeyError(f"no site {site!r}; sites are {[s.site for s in self.sites]}")

    def table(self):
        """A ``pandas.DataFrame``, one row per site in the model's order."""
        import pandas as pd

        return pd.DataFrame([{"site": s.site, **s.summary()} for s in self.sites]).set_index("site")

    def to_inference_data(self) -> Any:
        """ArviZ ``InferenceData`` with groups ``predicted`` and ``sampled``.

        Each holds ``{site}.mean`` and ``{site}.variance`` over the site's units
        (``sampled`` also ``{site}.stderr``).
        """
        import xarray as xr

        from ._arviz import import_arviz

        az = import_arviz()
        predicted, sampled = {}, {}
        for s in self.sites:
            dims = [f"{s.site}_dim_{i}" for i in range(s.sampled_mean.ndim)]
            predicted[f"{s.site}.mean"] = (dims, s.predicted_mean)
            if s.predicted_variance is not None:
                predicted[f"{s.site}.variance"] = (dims, s.predicted_variance)
            sampled[f"{s.site}.mean"] = (dims, s.sampled_mean)
            sampled[f"{s.site}.variance"] = (dims, s.sampled_variance)
            sampled[f"{s.site}.stderr"] = (dims, s.sampled_stderr)
        idata = az.InferenceData()
        idata.add_groups({
            "predicted": xr.Dataset(predicted, attrs={"method": self.method}),
            "sampled": xr.Dataset(sampled, attrs={"method": "sample"}),
        })
        return idata

    def plot(self, *, max_points: int = 2000):
        """Predicted against sampled means and variances (one colour per site), and the
        error by site: mean MSE next to its sampling noise, variance ratio."""
        import matplotlib.pyplot as plt

        has_var = any(s.predicted_variance is not None for s in self.sites)
        fig, axes = plt.subplots(1, 3 if has_var else 2, figsize=(13 if has_var else 9, 4))
        cmap = plt.get_cmap("viridis")
        colours = [cmap(i / max(len(self.sites) - 1, 1)) for i in range(len(self.sites))]
        rng = np.random.default_rng(0)
        panels = [("mean", axes[0])] + ([("variance", axes[1])] if has_var else [])
        for field, ax in panels:
            lo, hi = np.inf, -np.inf
            for s, colour in zip(self.sites, colours, strict=True):
                pred = s.predicted_mean if field == "mean" else s.predicted_variance
                if pred is None:
                    continue
                true = s.sampled_mean if field == "mean" else s.sampled_variance
                pick = rng.permutation(true.size)[:max_points]
                x, y = true.ravel()[pick], np.asarray(pred).ravel()[pick]
                ax.scatter(x, y, s=4, color=colour, label=s.site, alpha=0.6)
                lo, hi = min(lo, x.min(), y.min()), max(hi, x.max(), y.max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xlabel(f"sampled {field}")
            ax.set_ylabel(f"predicted {field}")
            ax.set_title(f"{field} per unit")
        axes[0].legend(fontsize=7, markerscale=3, loc="best")
        ax = axes[-1]
        rows = [s.summary() for s in self.sites]
        names = [s.site for s in self.sites]
        at = np.arange(len(names))
        ax.semilogy(at, [max(r["mean_mse"], 1e-300) for r in rows], "o-", label="MSE of mean")
        ax.semilogy(at, [r["sampling_noise"] for r in rows], "k:", label="sampling noise")
        if has_var:
            ax.semilogy(at, [r.get("variance_rel_error_median", np.nan) for r in rows], "s-",
                        label="median |var ratio - 1|")
        ax.set_xticks(at, names, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"error by site ({self.method})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig


def layer_moments(predicted: Results, sampled: Results, sites: Sequence[str] | None = None) -> LayerMoments:
    """Compare a mechanistic run's predicted moments with a sampled run's, site by site.

    Args:
        predicted: results of ``handlers.mechanize`` (any family).
        sampled: results of ``handlers.sample`` on the same model and arguments.
        sites: the sites to compare (default: every real-valued site both runs have,
            in the order of ``predicted``).
    """
    if sites is None:
        sites = [name for name, r in predicted.items() if not r.is_probability and name in sampled]
    out = []
    for name in sites:
        p, s = _site(predicted, name, "predicted"), _site(sampled, name, "sampled")
        if p.is_probability or s.is_probability:
            raise ValueError(f"site {name!r} is a detector (boolean); compare moments of real sites")
        if "variance" not in s.diagnostics:
            raise ValueError(f"sampled results of site {name!r} have no variance; use handlers.sample")
        n = int(s.diagnostics.get("num_samples", 0))
        var = p.diagnostics.get("variance")
        out.append(SiteMoments(
            name,
            predicted_mean=np.asarray(p.value, np.float64),
            predicted_variance=None if var is None else np.asarray(var, np.float64),
            sampled_mean=np.asarray(s.value, np.float64),
            sampled_variance=np.asarray(s.diagnostics["variance"], np.float64),
            sampled_stderr=np.asarray(s.stderr, np.float64),
            num_samples=n,
        ))
    if not out:
        raise ValueError("no real-valued sites in common to compare")
    return LayerMoments(predicted.method, tuple(out))


def _site(results: Mapping, name: str, which: str):
    try:
        return results[name]
    except KeyError:
        raise KeyError(f"site {name!r} is not in the {which} results; it has {list(results)}") from None
