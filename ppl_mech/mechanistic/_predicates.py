"""Comparisons that only choose between branches: ``jnp.where(x > 0, x, a * x)``.

A comparison of a random value is normally a detector event. When its result
is used *only* as the predicate of ``select_n`` (directly or through calls such
as the ``pjit`` that ``jnp.where`` and ``jax.nn.leaky_relu`` trace to), it is part
of an elementwise function instead: ``where(x > 0, x, 0.1 x)`` is leaky ReLU of
``x``. The interpreters compose such comparisons into the lazy elementwise
chain of their operand, so the whole piecewise function is integrated against
the Gaussian like any other activation.
"""

from __future__ import annotations

from collections import defaultdict

import jax.numpy as jnp
from jax.extend.core import Literal

BOOLEAN_COMBINERS = {"and", "or", "not", "xor", "ne", "eq"}


def predicate_only_vars(jaxpr, call_params: dict[str, str]) -> set:
    """The variables of ``jaxpr`` (not its outputs) used only as ``select_n`` predicates, directly or
    through boolean combinations (and/or/not/xor/eq/ne of booleans) that are themselves only that."""
    uses: dict = defaultdict(list)
    for eqn in jaxpr.eqns:
        for position, v in enumerate(eqn.invars):
            if not isinstance(v, Literal):
                uses[v].append((eqn, position))
    outputs = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
    inner_cache: dict = {}

    def inner_only(eqn, position) -> bool:
        name = eqn.primitive.name
        if name not in call_params:
            return False
        inner = eqn.params[call_params[name]]
        sub = inner.jaxpr if hasattr(inner, "jaxpr") else inner
        if id(sub) not in inner_cache:
            inner_cache[id(sub)] = predicate_only_vars(sub, call_params)
        return position < len(sub.invars) and sub.invars[position] in inner_cache[id(sub)]

    def predicate_use(eqn, position, found) -> bool:
        name = eqn.primitive.name
        if name in BOOLEAN_COMBINERS and eqn.outvars[0] in found and \
                all(getattr(v.aval, "dtype", None) == jnp.bool_ for v in eqn.invars) and \
                all(v in found for v in eqn.invars if not isinstance(v, Literal)):
            # combined with other predicates only: jnp.mod's (r != 0) & ((r < 0) != (d < 0)); not
            # ev & (x > 0) with ev a reported detector, where x > 0 stays an event
            return True
        return (name == "select_n" and position == 0) or inner_only(eqn, position)

    # the largest set closed under "every use is a predicate use": shrink from every candidate
    found = {v for v in uses if v not in outputs}
    while True:
        kept = {v for v in found if all(predicate_use(eqn, position, found) for eqn, position in uses[v])}
        if kept == found:
            return found
        found = kept


def same_shape(eqn) -> bool:
    """Every operand has the output's shape or is a scalar (an elementwise comparison)."""
    shape = eqn.outvars[0].aval.shape
    return all(getattr(v.aval, "shape", ()) in (shape, ()) for v in eqn.invars)
