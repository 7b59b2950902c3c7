"""From a model and a proposal name (or a dict of distributions) to :class:`Results`."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from ppl_mech._capture import ModelArgs, capture_program, check_independent_latents
from ppl_mech._errors import ModelError
from ppl_mech._result import Results

from ._engine import Context
from ._space import LatentSpace


def _proposals() -> dict[str, Callable]:
    from ._ams import run_ams
    from ._cross_entropy import run_cross_entropy
    from ._itgis import run_itgis
    from ._mhis import run_mhis
    from ._tilted import run_tilted

    return {
        "tilted": run_tilted,
        "cross-entropy": run_cross_entropy,
        "itgis": run_itgis,
        "mhis": run_mhis,
        "ams": run_ams,
    }


PROPOSALS = ("tilted", "cross-entropy", "itgis", "mhis", "ams")
"""The proposal names ``handlers.importance`` accepts (besides a dict of distributions)."""


def default_target(program) -> str:
    """``"catastrophe"`` if the model has it, else its only scalar boolean site."""
    outputs = program.outputs
    if "catastrophe" in outputs and outputs["catastrophe"].is_boolean:
        return "catastrophe"
    scalars = [n for n, s in outputs.items() if s.is_boolean and s.shape == ()]
    if len(scalars) == 1:
        return scalars[0]
    raise ModelError(
        "cannot tell which site is the catastrophe: pass target= naming a scalar boolean site "
        f"(the model's scalar boolean sites are {scalars})"
    )


def importance_estimate(
    model: Callable,
    args: Sequence = (),
    kwargs: Mapping | None = None,
    *,
    proposal: str | Mapping[str, Any],
    num_samples: int,
    rng_key: jax.Array,
    target: str | None = None,
    score: str | Callable | None = None,
    sites: Sequence[str] | None = None,
    keep_draws: int = 1000,
    level: float = 0.95,
    chunk_size: int | None = None,
    **options: Any,
) -> Results:
    """See ``handlers.importance``."""
    kwargs = dict(kwargs or {})
    if int(num_samples) < 2:
        raise ValueError(f"num_samples must be an integer >= 2 (a standard error needs two draws), "
                         f"got {num_samples!r}")
    program = capture_program(model, args, kwargs)
    LatentSpace.from_program(program)  # unsupported distributions fail here, naming the site
    check_independent_latents(model, args, kwargs, program,
                              "importance proposals replace each site's distribution on its own, so they "
                              "need independent latent sites")
    if not program.outputs:
        raise ModelError("the model has no output site: add numpyro.deterministic sites or return a value")
    wanted = list(program.outputs) if sites is None else list(sites)
    program.check_outputs(wanted)
    if target is None:
        target = default_target(program)
    program.check_outputs([target])
    if not program.outputs[target].is_boolean or program.outputs[target].shape != ():
        raise ModelError(
            f"target site {target!r} must be a scalar boolean (shape {program.outputs[target].shape}, "
            f"dtype {program.outputs[target].dtype}); add a deterministic site for one unit"
        )
    layout, dynamic = ModelArgs.split(args, kwargs)
    ctx = Context(
        model=model, layout=layout, dynamic=dynamic, target=target, score=score,
        sites={n: program.outputs[n] for n in wanted}, rng_key=rng_key, level=level,
        keep_draws=int(keep_draws), chunk_size=chunk_size,
    )
    if isinstance(proposal, Mapping):
        from ._given import run_given

        if options:
            raise TypeError(f"options {sorted(options)} apply to named proposals, not to a dict of them")
        results = run_given(ctx, proposal, num_samples=int(num_samples))
        name = "given"
    else:
        runners = _proposals()
        if proposal not in runners:
            raise ValueError(
                f"unknown proposal {proposal!r}; choose one of {', '.join(runners)} or pass a dict "
                "{site: numpyro distribution}"
            )
        runner = runners[proposal]
        accepted = [p for p in inspect.signature(runner).parameters if p not in ("ctx", "num_samples")]
        unknown = [k for k in options if k not in accepted]
        if unknown:
            raise TypeError(
                f"proposal {proposal!r} has no option(s) {', '.join(map(repr, unknown))}; its options "
                f"are {', '.join(accepted)}"
            )
        results = runner(ctx, num_samples=int(num_samples), **options)
        name = proposal
    return Results(_note_overspending(results, int(num_samples), name), method=f"importance[{name}]")


OVERSPENDING = 2.0  # a note when a run costs this many times num_samples or more


def _note_overspending(results: dict, num_samples: int, name: str) -> dict:
    """Say so on every site when the run spent far more evaluations than ``num_samples``.

    Splitting and MHIS size themselves (a pilot, a floor on particles per replica, levels
    that grow with ``log(1/P)``), so a small ``num_samples`` is a request, not a cap; a
    comparison at equal cost must read ``cost.evaluations``.
    """
    spent = max((int(r.cost.evaluations) for r in results.values()), default=0)
    if spent < OVERSPENDING * num_samples:
        return results
    note = (f"{name}: spent {spent} model evaluations for num_samples={num_samples} (its pilot, minimum "
            "population and number of levels set the cost); compare estimators by cost.evaluations")
    return {site: dataclasses.replace(r, notes=r.notes + (note,)) for site, r in results.items()}
