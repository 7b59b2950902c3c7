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


@register_method("mechanize", ("gaussian", "gaussian-hermite", "diagonal", "mean", "cumulant1", "cumulant2",
                               "cumulant3", "cumulant4"), "message propagation, no sampling")
def _mechanize(model, variant, options: MethodOptions):
    from ppl_mech.handlers import mechanize

    family, order, relu = variant, None, "exact"
    if variant.startswith("cumulant"):  # cumulantK: family "cumulant" of order K
        family, order = "cumulant", int(variant[len("cumulant"):])
    if variant == "gaussian-hermite":  # ReLU covariances by the Mehler series
        family, relu = "gaussian", "hermite"
    return mechanize(
        model, family=family, order=order, sites=options.sites,
        rng_key=jax.random.PRNGKey(options.seed), relu=relu,
    )


@register_method("hybrid", METHODS["mechanize"][1],
                 "mechanize (the variant) + a sampled correction, empirical-Bayes combined")
def _hybrid(model, variant, options: MethodOptions):
    from ppl_mech.handlers import hybrid

    return hybrid(
        model, base=variant, num_samples=options.num_samples,
        rng_key=jax.random.PRNGKey(options.seed), sites=options.sites,
    )


@register_method("importance", ("tilted", "cross-entropy", "itgis", "mhis", "ams"),
                 "importance sampling from a proposal fitted to the catastrophe")
def _importance(model, variant, options: MethodOptions):
    from ppl_mech.handlers import importance

    return importance(
        model, proposal=variant, num_samples=options.num_samples,
        rng_key=jax.random.PRNGKey(options.seed), sites=options.sites,
    )
