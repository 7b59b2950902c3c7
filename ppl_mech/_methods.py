"""Estimators by name, for the CLI and benchmarks: ``"sample"``, ``"mechanize:gaussian"``, ...

A method string is ``handler`` or ``handler:variant``; the variant is the
handler's main choice (the message family of ``mechanize``, the proposal of
``importance``). Handlers register here when they exist, so the CLI lists
exactly what is implemented.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """Options the CLI passes to every method; each uses what applies to it."""

    num_samples: int = 2**16
    seed: int = 0
    sites: tuple[str, ...] | None = None
    progress_bar: bool | None = None


MethodFactory = Callable[[Callable, str | None, MethodOptions], object]
METHODS: dict[str, tuple[MethodFactory, tuple[str, ...], str]] = {}


def register_method(name: str, variants: tuple[str, ...], description: str):
    """Register ``factory(model, variant, options) -> Estimator`` under ``name``."""

    def decorate(factory: MethodFactory) -> MethodFactory:
        METHODS[name] = (factory, variants, description)
        return factory

    return decorate


def parse_method(spec: str) -> tuple[str, str | None]:
    name, _, variant = spec.partition(":")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
    variants = METHODS[name][1]
    if variant and variant not in variants:
        raise ValueError(
            f"method {name!r} has no variant {variant!r}; choose one of {', '.join(variants)}"
        )
    return name, variant or (variants[0] if variants else None)


def method_names() -> list[str]:
    names = []
    for name, (_, variants, _) in METHODS.items():
        names += [name] + [f"{name}:{v}" for v in variants]
    return names


def make_estimator(spec: str, model: Callable, options: MethodOptions):
    name, variant = parse_method(spec)
    return METHODS[name][0](model, variant, options)


@register_method("sample", (), "plain Monte Carlo (the baseline)")
def _sample(model, variant, options: MethodOptions):
    from ppl_mech.handlers import sample

    return sample(
        model,
        num_samples=options.num_samples,
        rng_key=jax.random.PRNGKey(options.seed),
        sites=options.sites,
        progress_bar=options.progress_bar,
    )


@register_method("mechanize", ("gaussian", "diagonal", "mean"), "message propagation, no sampling")
def _mechanize(model, variant, options: MethodOptions):
    from ppl_mech.handlers import mechanize

    return mechanize(
        model, family=variant, sites=options.sites, rng_key=jax.random.PRNGKey(options.seed)
    )
