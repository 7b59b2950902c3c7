"""The model registry: :class:`BuiltModel`, :class:`ModelSpec`, :data:`MODELS`, :func:`get_model`.

Each model module calls :func:`register` at import time; ``ppl_mech.models``
imports them all, so ``MODELS`` is complete as soon as the package is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class BuiltModel:
    """A model ready to run: ``model(*args, **kwargs)`` is a NumPyro model.

    Attributes:
        name: registry name (a preset's name for presets).
        model: a plain NumPyro model function; its random input is the latent
            site ``"x"``, its network is ordinary ``jnp`` code, and it records a
            boolean ``numpyro.deterministic`` detector site (``catastrophe``).
        args: positional arguments: weights, biases and thresholds as arrays, so
            they are ``jit`` arguments and gradients reach them.
        kwargs: keyword arguments: structure (layer/unit indices, activation
            names, clause lists) that is static under ``jit``.
        exact: site name -> exact answer where one is known (a probability for a
            boolean site, a mean for a real site, a per-unit array for a vector
            site). Each model's docstring says how its answers were obtained.
        description: one line.
        catastrophe: name of the main boolean detector site.
    """

    name: str
    model: Callable
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    exact: dict[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    catastrophe: str = "catastrophe"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registry entry: ``build(**options)`` makes a :class:`BuiltModel`.

    Attributes:
        name: registry name, e.g. ``"whestbench-256x8"``.
        build: ``build(**options)``; every option is a keyword with a default.
        description: one line, shown by ``ppl-mech models``.
        defaults: the options and their defaults (what ``build()`` uses).
    """

    name: str
    build: Callable[..., BuiltModel]
    description: str
    defaults: dict


MODELS: dict[str, ModelSpec] = {}
"""Registry name -> :class:`ModelSpec`, in registration order."""


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to :data:`MODELS` (a name may be registered once)."""
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def option_defaults(build: Callable, **fixed: Any) -> dict[str, Any]:
    """The keyword options of ``build`` and their defaults, leaving out ``fixed`` ones."""
    defaults = {}
    for name, parameter in inspect.signature(build).parameters.items():
        if name in fixed or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is parameter.empty:
            raise TypeError(f"option {name!r} of {build.__name__} has no default")
        defaults[name] = parameter.default
    return defaults


def get_model(name: str, **options: Any) -> BuiltModel:
    """Build the registered model ``name`` with ``options`` (keyword options, all defaulted).

    Raises:
        ValueError: for an unknown model name (the message lists the known names).
        TypeError: for an unknown option (the message names it and lists the valid ones).
    """
    spec = MODELS.get(name)
    if spec is None:
        close = difflib.get_close_matches(str(name), MODELS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint}; the known models are: {', '.join(MODELS)}"
        )
    unknown = [k for k in options if k not in spec.defaults]
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items()) or "(none)"
        raise TypeError(
            f"model {name!r} has no option(s) {', '.join(map(repr, unknown))}; "
            f"its options are: {valid}"
        )
    return spec.build(**{**spec.defaults, **options})


def list_models() -> list[ModelSpec]:
    """All registered models, in registration order."""
    return list(MODELS.values())


def preset(spec_name: str, build: Callable[..., BuiltModel], description: str, *,
           fixed: dict[str, Any], defaults: dict[str, Any] | None = None) -> ModelSpec:
    """A :class:`ModelSpec` that is ``build`` with options ``fixed`` (no longer options) and
    other ``defaults`` changed (still options)."""
    options = option_defaults(build, **fixed)
    unknown = [k for k in (defaults or {}) if k not in options]
    if unknown:
        raise TypeError(f"{build.__name__} has no option(s) {unknown}")
    options.update(defaults or {})

    def build_preset(**chosen: Any) -> BuiltModel:
        return dataclasses.replace(build(**fixed, **chosen), name=spec_name)

    build_preset.__name__ = f"build_{spec_name.replace('-', '_')}"
    build_preset.__doc__ = f"``{build.__name__}`` with {fixed}."
    return ModelSpec(spec_name, build_preset, description, options)
