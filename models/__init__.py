"""The built-in model zoo: NumPyro models of a network and a catastrophe detector.

Every model draws its input as the latent site ``"x"``, computes the network with
ordinary ``jnp`` code (intermediate layers as ``numpyro.deterministic`` sites) and
records a boolean detector site (``"catastrophe"``)::

    from ppl_mech import handlers, models

    built = models.get_model("whestbench-256x8")
    r = handlers.sample(built.model, num_samples=2**16, rng_key=key)(*built.args, **built.kwargs)
    r[built.catastrophe].value, built.exact

Registered models (``ppl-mech models`` lists them with their options):

* ``whestbench`` (+ presets ``whestbench-256x8``, ``-256x32``, ``-1024x16``): the
  WhestBench 2026 random ReLU MLPs, weights bit-for-bit from a seed.
* ``arc-mlp``: ARC-style random MLP (cumulant-propagation paper), linear readout.
* ``halfspaces``: intersection of random halfspaces (exact for ``k <= 2``).
* ``trained-mlp``: a small MLP trained with optax on a synthetic regression.
* ``kcnf``: random k-CNF satisfied by uniform random bits (exact by enumeration).
* ``linear-gaussian``: a linear map of a Gaussian (every site exact).
* ``tiny-transformer``: one pre-LN transformer block (softmax attention, layer
  norms) on Gaussian token embeddings.
"""

from ._registry import MODELS as MODELS
from ._registry import BuiltModel as BuiltModel
from ._registry import ModelSpec as ModelSpec
from ._registry import get_model as get_model
from ._registry import list_models as list_models
from ._registry import register as register

# Importing a model module registers it; the order here is the listing order.
from .whestbench import whestbench_model as whestbench_model  # isort: skip
from .whestbench import whestbench_weights as whestbench_weights  # isort: skip
from .arc_mlp import arc_mlp_model as arc_mlp_model  # isort: skip
from .halfspaces import bivariate_normal_upper as bivariate_normal_upper  # isort: skip
from .halfspaces import halfspaces_model as halfspaces_model  # isort: skip
from .trained_mlp import trained_mlp_model as trained_mlp_model  # isort: skip
from .kcnf import kcnf_model as kcnf_model  # isort: skip
from .linear_gaussian import linear_gaussian_model as linear_gaussian_model  # isort: skip
from .tiny_transformer import tiny_transformer_model as tiny_transformer_model  # isort: skip

__all__ = [
    "MODELS",
    "BuiltModel",
    "ModelSpec",
    "arc_mlp_model",
    "bivariate_normal_upper",
    "get_model",
    "halfspaces_model",
    "kcnf_model",
    "linear_gaussian_model",
    "list_models",
    "register",
    "tiny_transformer_model",
    "trained_mlp_model",
    "whestbench_model",
    "whestbench_weights",
]
