"""From a model to mechanistic estimates: capture, build input messages, interpret."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import scipy.stats

from ppl_mech._capture import ModelArgs
from ppl_mech._cost import compile_with_cost, is_traced
from ppl_mech._result import Cost, Results, SiteResult

from ._cumulant_family import DEFAULT_ORDER, check_order, propagate_cumulants
from ._inputs import input_handle
from ._interpreter import Interpreter
from ._program import mechanized_program
from ._state import State

FAMILIES = ("mean", "diagonal", "gaussian")
RELU_COVARIANCES = ("exact", "hermite")
INDEPENDENCE_NOTE = "independence presumption: units treated as independent ({family} family)"


def propagate(model: Callable, args: Sequence, kwargs: Mapping, *, family: str,
              sites: Sequence[str] | None, key, num_samples: int, relu: str = "exact"):
    """Traceable core: ``({site: {'value', 'stderr', ...}}, {site: notes}, booleans)``."""
    program, wanted = mechanized_program(model, args, kwargs, sites)
    jaxpr = program.make_jaxpr(wanted)
    state = State(family, relu=relu)
    if family != "gaussian":
        state.note(INDEPENDENCE_NOTE.format(family=family))
    inputs = []
    for k, site in enumerate(program.latents.values()):
        state.notebook.at = ("input", k)
        inputs.append(input_handle(site, state))
        inputs[-1].at = ("input", k)
    if family == "gaussian":  # latent sites are independent of each other
        gaussian = [h for h in inputs if h.kind == "moments"]
        for i, a in enumerate(gaussian):
            for b in gaussian[:i]:
                state.set_cov(a, b, jnp.zeros((a.size, b.size), a.data["mean"].dtype))
    interpreter = Interpreter(state, key=key, num_samples=num_samples)
    outs = interpreter.run(jaxpr.jaxpr, jaxpr.consts, inputs, top_level=True)
    estimates = {}
    for name, value in zip(wanted, outs, strict=True):
        state.notebook.at = ("output", name)
        estimates[name] = interpreter.output(value, f"output site {name!r}")
    for est in estimates.values():
        for key_, number in state.numbers.items():
            est[key_] = number
    booleans = {name: program.outputs[name].is_boolean for name in wanted}
    return estimates, state.notebook.for_outputs(jaxpr.jaxpr, wanted), booleans


def mechanistic_estimate(
    model: Callable,
    args: Sequence = (),
    kwargs: Mapping | None = None,
    *,
    family: str = "gaussian",
    sites: Sequence[str] | None = None,
    rng_key: jax.Array | None = None,
    num_samples: int = 10_000,
    level: float = 0.95,
    order: int | None = None,
    relu: str = "exact",
) -> Results:
    """See ``handlers.mechanize``."""
    if relu not in RELU_COVARIANCES:
        raise ValueError(f"relu={relu!r}: choose one of {RELU_COVARIANCES}")
    if family not in FAMILIES and family != "cumulant":
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES} (or 'cumulant')")
    if family == "cumulant":
        order = check_order(DEFAULT_ORDER if order is None else order)
    elif order is not None:
        raise ValueError(f"order={order!r} applies to family='cumulant' only (family is {family!r})")
    kwargs = dict(kwargs or {})
    key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    layout, dynamic = ModelArgs.split(args, kwargs)
    side: dict[str, Any] = {}

    def run(dyn, key):
        a, k = layout.merge(dyn)
        if family == "cumulant":
            estimates, notes, booleans = propagate_cumulants(model, a, k, order=order, sites=sites)
        else:
            estimates, notes, booleans = propagate(
                model, a, k, family=family, sites=sites, key=key, num_samples=num_samples, relu=relu
            )
        side["notes"], side["booleans"] = notes, booleans
        return estimates

    if is_traced((dynamic, key)):
        estimates, cost = run(dynamic, key), Cost()
    else:
        compiled, flops, compile_seconds = compile_with_cost(run, dynamic, key)
        start = time.perf_counter()
        estimates = jax.block_until_ready(compiled(dynamic, key))
        cost = Cost(flops=flops, seconds=time.perf_counter() - start, evaluations=0,
                    compile_seconds=compile_seconds)
    z = float(scipy.stats.norm.ppf(0.5 + level / 2))
    method = f"mechanize[{family}{order if family == 'cumulant' else ''}]"
    if relu != "exact" and family == "gaussian":
        method = f"mechanize[{family},relu={relu}]"
    results = {}
    for name, est in estimates.items():
        value, stderr = est["value"], est["stderr"]
        is_probability = side["booleans"][name]
        lo, hi = value - z * stderr, value + z * stderr
        if is_probability:
            lo, hi = jnp.clip(lo, 0, 1), jnp.clip(hi, 0, 1)
        diagnostics = {k: v for k, v in est.items() if k not in ("value", "stderr")}
        results[name] = SiteResult(value, stderr, (lo, hi), diagnostics, cost, method,
                                   is_probability, tuple(side["notes"][name]))
    return Results(results, method=method)
