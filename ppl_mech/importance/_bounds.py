"""Which values of a detector's jaxpr are random, and an interval each is sure to lie in.

A coarse forward interval analysis, for the union check of single-Gaussian
proposals (:func:`ppl_mech.importance._score.is_union`): ``x0 * x1 > t`` is two
separate regions when both factors can change sign, but a gate ``x * sigmoid(y)``
or gelu's ``x * 0.5 (1 + tanh(...))`` is not. Unknown primitives give the whole
line; every rule is an outer bound, so "cannot be negative" is never claimed
wrongly (it may be missed).
"""

from __future__ import annotations

import math

import numpy as np
from jax.extend.core import Literal

from ppl_mech._bind import sub_jaxpr

WHOLE_LINE = (-math.inf, math.inf)

INCREASING = {
    "tanh": math.tanh, "erf": math.erf, "atan": math.atan, "exp": math.exp,
    "logistic": lambda v: 1.0 / (1.0 + math.exp(-v)) if v > -700 else 0.0,
    "log1p": lambda v: math.log1p(v) if v > -1 else -math.inf,
    "log": lambda v: math.log(v) if v > 0 else -math.inf,
    "sqrt": lambda v: math.sqrt(v) if v > 0 else 0.0,
}
SAME = {"convert_element_type", "copy", "copy_p", "reduce_precision", "broadcast_in_dim", "reshape",
        "squeeze", "expand_dims", "transpose", "slice", "dynamic_slice", "gather", "rev",
        "reduce_max", "reduce_min", "sort", "cummax", "cummin"}


def random_values_and_bounds(closed) -> tuple[set, dict]:
    """``(random, bounds)`` for every variable of ``closed`` (a ``ClosedJaxpr``) and its sub-jaxprs.

    ``random``: the variables that depend on the jaxpr's inputs (the latent values);
    constants captured by the model are not random. ``bounds[v] = (lo, hi)``.
    """
    random: set = set()
    bounds: dict = {}
    jaxpr = closed.jaxpr
    for v, c in zip(jaxpr.constvars, closed.consts, strict=True):
        bounds[v] = _array_bounds(c)
    for v in jaxpr.invars:
        random.add(v)
        bounds[v] = WHOLE_LINE
    _walk(jaxpr, random, bounds)
    return random, bounds


def _array_bounds(value) -> tuple[float, float]:
    try:
        a = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        return WHOLE_LINE
    if a.size == 0 or not np.all(np.isfinite(a)):
        return WHOLE_LINE
    return float(a.min()), float(a.max())


def _walk(jaxpr, random: set, bounds: dict) -> None:
    def read(v):
        return _array_bounds(v.val) if isinstance(v, Literal) else bounds.get(v, WHOLE_LINE)

    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        is_random = any(not isinstance(v, Literal) and v in random for v in eqn.invars)
        sub = sub_jaxpr(eqn)
        if sub is not None:
            inner, consts = sub
            for v, b in zip(inner.invars, ins, strict=False):
                bounds[v] = b
                if is_random:
                    random.add(v)
            for v, c in zip(inner.constvars, consts, strict=False):
                bounds[v] = _array_bounds(c)
            _walk(inner, random, bounds)
            outs = [read(v) for v in inner.outvars]
            outs_random = [not isinstance(v, Literal) and v in random for v in inner.outvars]
        else:
            outs = [_rule(eqn, ins)] * len(eqn.outvars)
            outs_random = [is_random] * len(eqn.outvars)
        for v, b, r in zip(eqn.outvars, outs, outs_random, strict=False):
            bounds[v] = b
            if r:
                random.add(v)


def _rule(eqn, ins) -> tuple[float, float]:
    name = eqn.primitive.name
    if name in SAME:
        return ins[0]
    if name in INCREASING:
        f = INCREASING[name]
        return _safe(f, ins[0][0], -math.inf), _safe(f, ins[0][1], math.inf)
    if name == "erfc":
        return _safe(math.erfc, ins[0][1], 0.0), _safe(math.erfc, ins[0][0], 2.0)
    if name == "neg":
        return -ins[0][1], -ins[0][0]
    if name == "abs":
        lo, hi = ins[0]
        if lo >= 0:
            return lo, hi
        if hi <= 0:
            return -hi, -lo
        return 0.0, max(-lo, hi)
    if name in ("square", "integer_pow"):
        y = 2 if name == "square" else int(eqn.params["y"])
        lo, hi = ins[0]
        if y % 2 == 1 and y > 0:
            return _power(lo, y), _power(hi, y)
        if y % 2 == 0 and y > 0:
            top = max(_power(lo, y), _power(hi, y))
            return (0.0 if lo <= 0 <= hi else min(_power(lo, y), _power(hi, y))), top
        return WHOLE_LINE
    if name in ("add", "add_any"):
        return ins[0][0] + ins[1][0], ins[0][1] + ins[1][1]
    if name == "sub":
        return ins[0][0] - ins[1][1], ins[0][1] - ins[1][0]
    if name == "mul":
        return _product(ins[0], ins[1])
    if name == "div":
        lo, hi = ins[1]
        if lo > 0 or hi < 0:
            return _product(ins[0], (1.0 / hi if hi != 0 else -math.inf, 1.0 / lo if lo != 0 else math.inf))
        return WHOLE_LINE
    if name == "max":
        return max(ins[0][0], ins[1][0]), max(ins[0][1], ins[1][1])
    if name == "min":
        return min(ins[0][0], ins[1][0]), min(ins[0][1], ins[1][1])
    if name == "clamp":
        return max(ins[0][0], min(ins[1][0], ins[2][1])), min(ins[2][1], max(ins[1][1], ins[0][0]))
    if name in ("select_n", "concatenate", "stack"):
        cases = ins[1:] if name == "select_n" else ins
        return min(c[0] for c in cases), max(c[1] for c in cases)
    return WHOLE_LINE


def _safe(f, v, fallback):
    if math.isinf(v):
        try:
            return f(math.copysign(1e300, v))
        except (OverflowError, ValueError):
            return fallback
    try:
        return f(v)
    except (OverflowError, ValueError):
        return fallback


def _power(v, y):
    try:
        return v**y
    except OverflowError:
        return math.copysign(math.inf, v) if y % 2 else math.inf


def _product(a, b) -> tuple[float, float]:
    corners = [_times(x, y) for x in a for y in b]
    return min(corners), max(corners)


def _times(x, y):
    return 0.0 if x == 0 or y == 0 else x * y


def straddles_zero(bound) -> bool:
    """Whether a value in ``bound`` can be both negative and positive."""
    return bound[0] < 0 < bound[1]
