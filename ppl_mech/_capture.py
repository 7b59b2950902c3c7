"""Capture: turn a NumPyro model into a program over its random inputs.

The latent sample sites of a model are the input distribution D; everything
the model computes from them (``numpyro.deterministic`` sites and the return
value) is a pure function of those inputs, which we trace once with
``jax.make_jaxpr``. Estimators then work on that function (sampling, importance
sampling) or on its jaxpr (the mechanistic interpreter).

The capture is a NumPyro :class:`~numpyro.primitives.Messenger`, so it composes
with NumPyro's own handlers: a site fixed by ``substitute`` or ``condition``
inside it is a constant of the program, not an input; ``scope`` prefixes names;
``seed`` is not needed (capture draws nothing but one example value per site).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Var
from numpyro.distributions import Distribution
from numpyro.primitives import Messenger

from ._errors import ModelError

RETURN_SITE = "_return"
"""Name under which a model's return value is reported."""


@dataclasses.dataclass(frozen=True)
class LatentSite:
    """A random input of the program: one latent ``numpyro.sample`` site.

    Attributes:
        name: the site's name (after any ``scope`` prefix).
        distribution: the site's distribution object as the model built it (its
            parameters may be tracers of an outer ``jit``/``grad``).
        shape: the value's shape, ``sample_shape + batch_shape + event_shape``
            (plates included).
        sample_shape: the ``sample_shape`` passed to ``numpyro.sample``.
        event_dim: number of trailing event dimensions.
        dtype: the value's dtype.
        plates: names of the plates the site sits in.
    """

    name: str
    distribution: Distribution
    shape: tuple[int, ...]
    sample_shape: tuple[int, ...]
    event_dim: int
    dtype: Any
    plates: tuple[str, ...]

    @property
    def is_discrete(self) -> bool:
        return bool(getattr(self.distribution, "is_discrete", False))


@dataclasses.dataclass(frozen=True)
class OutputSite:
    """A named output of the program (a deterministic site or the return value)."""

    name: str
    shape: tuple[int, ...]
    dtype: Any

    @property
    def is_boolean(self) -> bool:
        return jnp.dtype(self.dtype) == jnp.bool_


class capture(Messenger):
    """Record the sites of one run of a model; optionally feed latent values in.

    Used by every estimator; users rarely need it directly::

        with capture() as cap:
            model(params)
        cap.latents, cap.outputs

    Args:
        fn: the model (or ``None`` to use this as a context manager/decorator).
        values: latent site name -> value to use instead of drawing one. Sites
            missing from ``values`` get an example draw from ``rng_key``.
        rng_key: key for example draws of latent sites not in ``values``.
    """

    def __init__(
        self,
        fn: Callable | None = None,
        values: Mapping[str, Any] | None = None,
        *,
        rng_key: jax.Array | None = None,
    ):
        self.values = dict(values or {})
        self.rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
        self.latents: dict[str, LatentSite] = {}
        self.outputs: dict[str, Any] = {}
        self.observed: dict[str, dict] = {}
        self.uses_prng_key = False
        super().__init__(fn)

    def __enter__(self):
        self.latents, self.outputs, self.observed = {}, {}, {}
        self.uses_prng_key = False
        return super().__enter__() or self

    def process_message(self, msg):
        kind = msg["type"]
        name = msg.get("name")
        if kind == "sample":
            if msg.get("is_observed"):
                self.observed[name] = msg
                return
            if msg.get("value") is not None:
                # Fixed by an inner `substitute`: a constant of the program.
                return
            _check_not_subsampled(msg)
            fn = msg["fn"]
            sample_shape = tuple(msg["kwargs"].get("sample_shape", ()))
            shape = sample_shape + tuple(fn.batch_shape) + tuple(fn.event_shape)
            if name in self.values:
                value = jnp.asarray(self.values[name])
                if value.shape != shape:
                    raise ModelError(
                        f"value for site {name!r} has shape {value.shape}, the site has shape "
                        f"{shape}"
                    )
            else:
                self.rng_key, key = jax.random.split(self.rng_key)
                value = fn(rng_key=key, sample_shape=sample_shape)
            msg["value"] = value
            self.latents[name] = LatentSite(
                name=name,
                distribution=fn,
                shape=shape,
                sample_shape=sample_shape,
                event_dim=fn.event_dim,
                dtype=jnp.result_type(value),
                plates=tuple(f.name for f in msg.get("cond_indep_stack", ())),
            )
        elif kind == "prng_key":
            # Randomness outside sample sites: supplied here so that sampling works,
            # flagged so that estimators that need every random input refuse it.
            self.uses_prng_key = True
            if msg.get("value") is None:
                self.rng_key, msg["value"] = jax.random.split(self.rng_key)
        elif kind == "plate":
            size, subsample_size = msg["args"][:2]
            if subsample_size is not None and subsample_size != size:
                raise ModelError(
                    f"plate {name!r} is subsampled ({subsample_size} of {size}); estimators need "
                    "the whole plate (drop subsample_size)"
                )
        elif kind == "control_flow":
            raise ModelError(
                f"site {name!r} is a numpyro control-flow primitive (scan/cond); capture does "
                "not enter it. Write the loop with jax.lax inside the model instead."
            )

    def postprocess_message(self, msg):
        if msg["type"] == "deterministic":
            self.outputs[msg["name"]] = msg["value"]


def _check_not_subsampled(msg) -> None:
    for frame in msg.get("cond_indep_stack", ()):
        size, subsample = getattr(frame, "size", None), getattr(frame, "subsample_size", None)
        if subsample is not None and size is not None and subsample != size:
            raise ModelError(
                f"site {msg['name']!r} sits in plate {frame.name!r} subsampled to "
                f"{subsample} of {size}; estimators need the whole plate (drop subsample_size)."
            )


def _return_outputs(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    leaves = jax.tree_util.tree_leaves_with_path(value)
    if len(leaves) == 1 and not leaves[0][0]:
        return {RETURN_SITE: leaves[0][1]}
    return {RETURN_SITE + jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def _is_dynamic(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    """A model's ``(args, kwargs)`` split into array leaves (dynamic) and the rest (static).

    Array leaves are passed through ``jax.jit`` as arguments (so weights are not
    baked into the compiled program and gradients reach them); everything else
    (ints, strings, functions, Python floats) is closed over.
    """

    treedef: Any
    static: tuple
    dynamic_index: tuple[int, ...]

    @classmethod
    def split(cls, args: Sequence, kwargs: Mapping) -> tuple[ModelArgs, list]:
        leaves, treedef = jax.tree_util.tree_flatten((tuple(args), dict(kwargs)))
        dynamic_index = tuple(i for i, x in enumerate(leaves) if _is_dynamic(x))
        static = tuple(None if i in dynamic_index else x for i, x in enumerate(leaves))
        return cls(treedef, static, dynamic_index), [leaves[i] for i in dynamic_index]

    def merge(self, dynamic: Sequence) -> tuple[tuple, dict]:
        leaves = list(self.static)
        for i, x in zip(self.dynamic_index, dynamic, strict=True):
            leaves[i] = x
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


@dataclasses.dataclass(frozen=True)
class Program:
    """A model as a program: latent sites in, named output sites out.

    Attributes:
        latents: the random inputs, in the model's order.
        outputs: the named outputs (deterministic sites, then the return value).
        observed: names of observed sites (constants; see :func:`capture_program`).
        fn: ``fn(latent_values: dict) -> dict`` of output values; pure, so it can
            be ``vmap``-ed, ``jit``-ed and traced.
        uses_prng_key: the model draws randomness outside sample sites
            (``numpyro.prng_key()``), invisible to the program's inputs.
    """

    latents: dict[str, LatentSite]
    outputs: dict[str, OutputSite]
    observed: tuple[str, ...]
    fn: Callable[[dict[str, Any]], dict[str, Any]]
    uses_prng_key: bool = False

    def example_latents(self) -> dict[str, jax.ShapeDtypeStruct]:
        return {n: jax.ShapeDtypeStruct(s.shape, s.dtype) for n, s in self.latents.items()}

    def make_jaxpr(self, outputs: Sequence[str] | None = None) -> ClosedJaxpr:
        """Trace ``fn`` once; invars are the latent leaves in ``self.latents`` order."""
        names = list(self.latents)
        wanted = list(self.outputs) if outputs is None else list(outputs)
        self.check_outputs(wanted)

        def flat(*values):
            out = self.fn(dict(zip(names, values, strict=True)))
            return [out[n] for n in wanted]

        return drop_unused_equations(jax.make_jaxpr(flat)(*self.example_latents().values()))

    def check_outputs(self, wanted: Sequence[str]) -> None:
        missing = [n for n in wanted if n not in self.outputs]
        if missing:
            raise ModelError(
                f"the model has no output site(s) {missing}; its outputs are "
                f"{list(self.outputs)} (numpyro.deterministic sites and the return value)"
            )


def drop_unused_equations(closed: ClosedJaxpr) -> ClosedJaxpr:
    """``closed`` without the top-level equations no output needs (sites that were not asked for).

    ``make_jaxpr`` keeps every equation the model traced; an interpreter that must
    understand each one would otherwise fail on a site nobody asked about.
    Equations with effects are kept.
    """
    jaxpr = closed.jaxpr
    kept = live_equation_indices(jaxpr)
    if len(kept) == len(jaxpr.eqns):
        return closed
    return ClosedJaxpr(jaxpr.replace(eqns=[jaxpr.eqns[i] for i in kept]), closed.consts)


def live_equation_indices(jaxpr) -> list[int]:
    """Indices, in order, of the equations of ``jaxpr`` its outputs need (or that have effects)."""
    live = {v for v in jaxpr.outvars if isinstance(v, Var)}
    kept = []
    for i in reversed(range(len(jaxpr.eqns))):
        eqn = jaxpr.eqns[i]
        if eqn.effects or any(v in live for v in eqn.outvars):
            kept.append(i)
            live.update(v for v in eqn.invars if isinstance(v, Var))
    return kept[::-1]


def capture_program(model: Callable, args: Sequence = (), kwargs: Mapping | None = None,
                    *, rng_key: jax.Array | None = None) -> Program:
    """Run ``model(*args, **kwargs)`` once and return it as a :class:`Program`.

    Raises:
        ModelError: naming the site, when the model has no latent site, when an
            observed site's distribution depends on a latent site (that would be
            conditioning, which needs likelihood weighting), when a latent site's
            distribution depends on another latent site in a way estimators that
            need independent inputs cannot use (reported by those estimators), or
            when the model uses numpyro control flow or a subsampled plate.
    """
    kwargs = dict(kwargs or {})
    recorder = capture(rng_key=rng_key)
    with recorder:
        returned = model(*args, **kwargs)
    latents = dict(recorder.latents)
    if not latents:
        raise ModelError(
            "the model has no latent numpyro.sample site, so there is nothing random to "
            "estimate over (observed and substituted sites are constants)"
        )
    example_outputs = {**recorder.outputs, **_return_outputs(returned)}
    outputs = {
        n: OutputSite(n, tuple(jnp.shape(v)), jnp.result_type(v)) for n, v in example_outputs.items()
    }
    observed = tuple(recorder.observed)

    def fn(values: Mapping[str, Any]) -> dict[str, Any]:
        feeder = capture(values=values, rng_key=jax.random.PRNGKey(0))
        with feeder:
            ret = model(*args, **kwargs)
        return {**feeder.outputs, **_return_outputs(ret)}

    program = Program(latents, outputs, observed, fn, recorder.uses_prng_key)
    _check_observed_sites_are_constant(program, recorder.observed, model, args, kwargs)
    return program


def _check_observed_sites_are_constant(program, observed_msgs, model, args, kwargs) -> None:
    """Observed sites are fine as constants unless their distribution depends on a latent.

    ``condition(model, {"x": v})`` on an input site just fixes it. But an observed
    site whose distribution depends on latent sites would make the target a
    conditional expectation (needs likelihood weighting), which no estimator here
    does silently.
    """
    if not observed_msgs:
        return
    names = list(program.latents)

    def observed_log_prob(*values):
        feeder = capture(values=dict(zip(names, values, strict=True)))
        with feeder:
            model(*args, **kwargs)
        return [
            jnp.sum(m["fn"].log_prob(m["value"])) for m in feeder.observed.values()
        ]

    jaxpr = jax.make_jaxpr(observed_log_prob)(*program.example_latents().values())
    depends = outputs_depending_on_inputs(jaxpr.jaxpr)
    for name, dep in zip(observed_msgs, depends, strict=True):
        if dep:
            raise ModelError(
                f"observed site {name!r} has a distribution that depends on latent sites; "
                "ppl_mech estimates expectations under the model's input distribution and does "
                "not condition on observations. Remove obs= (or substitute the latent sites); a "
                "numpyro.factor is such an observed site: make its term a deterministic site instead."
            )


def outputs_depending_on_inputs(jaxpr) -> list[bool]:
    """For each outvar of ``jaxpr``: does it depend on any invar? (A forward dataflow pass.)"""
    from jax.extend.core import Literal

    tainted = set(id(v) for v in jaxpr.invars)
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, Literal) and id(v) in tainted for v in eqn.invars):
            tainted.update(id(v) for v in eqn.outvars)
    return [not isinstance(v, Literal) and id(v) in tainted for v in jaxpr.outvars]


def check_independent_latents(model: Callable, args, kwargs, program: Program, who: str) -> None:
    """Raise :class:`ModelError` naming a latent site whose distribution depends on another one.

    ``who``: what needs independent sites and why (a clause, for the message).
    """
    names = list(program.latents)
    if len(names) < 2:
        return

    def parameters(*values):
        feeder = capture(values=dict(zip(names, values, strict=True)))
        with feeder:
            model(*args, **kwargs)
        return [jax.tree_util.tree_leaves(site.distribution) for site in feeder.latents.values()]

    shapes = program.example_latents().values()
    leaves_per_site = jax.eval_shape(parameters, *shapes)
    jaxpr = jax.make_jaxpr(lambda *v: jax.tree_util.tree_leaves(parameters(*v)))(*shapes)
    depends = outputs_depending_on_inputs(jaxpr.jaxpr)
    start = 0
    for name, leaves in zip(names, leaves_per_site, strict=True):
        if any(depends[start:start + len(leaves)]):
            raise ModelError(
                f"latent site {name!r} has a distribution that depends on other latent sites; "
                f"{who} (write the dependence as deterministic "
                "code: x = loc(z) + scale(z) * eps with eps a standard sample site)"
            )
        start += len(leaves)

