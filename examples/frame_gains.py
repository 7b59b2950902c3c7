"""How much antithetic orthogonal frames cut the variance of Monte Carlo means, per model evaluation.

For each built-in network, the mean over the final site's units of the variance of
one i.i.d. draw, against ``2 m`` times the variance of the mean over one frame of
``2 m`` draws (``ppl_mech._frames``): the gain per evaluation (> 1: frames are
better). ``m = 1`` is an antithetic pair; ``m = 256`` a full frame at width 256.

    python examples/frame_gains.py [--frames 300] [--seed 0]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from ppl_mech.models import get_model

from ppl_mech import capture_program, handlers
from ppl_mech._frames import frame_layout, frame_outputs

NETWORKS = (
    ("whestbench 256x2", "whestbench", dict(width=256, depth=2), "layer_2"),
    ("whestbench 256x8", "whestbench", dict(width=256, depth=8), "layer_8"),
    ("whestbench 256x32", "whestbench", dict(width=256, depth=32), "layer_32"),
    ("arc 256x4 relu", "arc-mlp", dict(width=256, hidden_layers=4, activation="relu"), "output"),
    ("arc 256x4 gelu", "arc-mlp", dict(width=256, hidden_layers=4, activation="gelu"), "output"),
)
SIZES = (1, 32, 128, 256)


def frame_mean_variance(program, layout, site: str, size: int, keys) -> float:
    """Variance of the mean over one frame of ``2 size`` draws, averaged over the site's units."""
    mean = jax.jit(lambda key: frame_outputs(program, layout, key, size)[site].mean(axis=0))
    means = np.array([np.asarray(mean(k), np.float64) for k in keys])
    return float(np.mean(means.var(axis=0, ddof=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| network | " + " | ".join(f"m = {m}" for m in SIZES) + " |")
    print("|---|" + "---|" * len(SIZES))
    for label, name, options, site in NETWORKS:
        built = get_model(name, **options)
        iid = handlers.sample(built.model, num_samples=2**15, rng_key=jax.random.PRNGKey(args.seed),
                              sites=[site])(*built.args, **built.kwargs)[site]
        per_draw = float(np.mean(np.asarray(iid.diagnostics["variance"], np.float64)))
        program = capture_program(built.model, built.args, built.kwargs)
        layout = frame_layout(built.model, built.args, built.kwargs, program)
        keys = jax.random.split(jax.random.PRNGKey(args.seed + 1), args.frames)
        gains = [per_draw / (2 * m * frame_mean_variance(program, layout, site, m, keys)) for m in SIZES]
        print(f"| {label} | " + " | ".join(f"{g:.2f}x" for g in gains) + " |", flush=True)


if __name__ == "__main__":
    main()
