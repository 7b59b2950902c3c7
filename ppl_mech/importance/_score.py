"""A continuous score for a boolean detector: its margin, read off the detector's jaxpr.

Splitting, cross-entropy levels, ITGIS and MHIS need a real-valued ``s(x)``
that grows towards the catastrophe. A detector is almost always built from
comparisons (``y > t``), ``&``, ``|``, ``~``, ``all``, ``any`` and
``argmax == k``; :func:`margin_function` evaluates the detector's jaxpr and, for
every boolean value, carries a *margin* ``m`` with ``value == (m > 0)`` (up to
ties at 0):

* ``a > b``, ``a >= b``: ``a - b`` (for integers ``a - b - 1/2``, ``a - b + 1/2``);
  ``<``/``<=`` mirrored; ``a == b``: ``-|a - b|`` (integers: ``1/2 - |a - b|``);
* ``argmax(y) == k``: ``y[k] - max_{j != k} y[j]``;
* ``not``: ``-m``; ``or``/``any``: ``max``;
* ``and``/``all``: ``min(m)`` when every operand holds, else the sum of the
  negative parts ``sum(min(m_i, 0))`` -- same sign as ``min``, but it counts how
  much of the conjunction is violated (for a CNF, the unsatisfied clauses), so
  the score and its gradient see all violated constraints, not just the worst;
* shape primitives (reshape, slice, gather, concatenate, select_n, ...) move
  margins as they move booleans; boolean constants have margins ``+-inf``.

A boolean made by any other primitive has no margin, and a detector that needs
one raises an error naming the primitive: pass ``score=`` (a real deterministic
site with ``catastrophe => score >= 0``) instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from ppl_mech._bind import bind_eqn, sub_jaxpr
from ppl_mech._capture import Program
from ppl_mech._errors import ModelError, UnsupportedPrimitiveError

from ._bounds import WHOLE_LINE, random_values_and_bounds, straddles_zero

CALL_PRIMITIVES = {"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint",
                   "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"}
SHAPE_PRIMITIVES = {"broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose", "slice",
                    "dynamic_slice", "dynamic_update_slice", "concatenate", "stack", "gather", "rev", "copy",
                    "copy_p", "pad", "select_n"}


def _is_bool(aval) -> bool:
    try:
        return np.dtype(aval.dtype) == np.bool_
    except TypeError:  # extended dtypes (PRNG keys)
        return False


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _float(x):
    return jnp.asarray(x, jnp.promote_types(jnp.result_type(x), jnp.float32)) if _is_float(x) \
        else jnp.asarray(x, jnp.float32)


def _and_margin(margins: list, axes=None):
    """``min`` where all hold, else the sum of the negative parts (see the module docstring)."""
    if axes is None:
        stacked = jnp.stack(jnp.broadcast_arrays(*margins))
        axes = (0,)
    else:
        stacked = margins[0]
    holds = jnp.all(stacked > 0, axis=axes)
    return jnp.where(holds, jnp.min(stacked, axis=axes), jnp.sum(jnp.minimum(stacked, 0.0), axis=axes))


def _sub_jaxpr(eqn):
    found = sub_jaxpr(eqn)
    if found is None:
        raise UnsupportedPrimitiveError(f"score: cannot enter call primitive {eqn.primitive.name}")
    return found


class _MarginEvaluator:
    """Evaluate a jaxpr, carrying a margin for every boolean value (``None`` = unknown)."""

    def __init__(self):
        self.argmax_of: dict[int, tuple[Any, int]] = {}

    def run(self, jaxpr, consts, args, margins):
        env, menv = {}, {}

        def read(v):
            return v.val if isinstance(v, Literal) else env[id(v)]

        def read_margin(v):
            if isinstance(v, Literal):
                return _const_margin(v.val) if _is_bool(v.aval) else None
            return menv.get(id(v))

        for v, x in zip(jaxpr.constvars, consts, strict=True):
            env[id(v)] = x
            if _is_bool(v.aval):
                menv[id(v)] = _const_margin(x)
        for v, x, m in zip(jaxpr.invars, args, margins, strict=True):
            env[id(v)] = x
            if _is_bool(v.aval):
                menv[id(v)] = m if m is not None else jnp.where(x, 0.5, -0.5)
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            inmargins = [read_margin(v) for v in eqn.invars]
            wants_margin = any(_is_bool(v.aval) for v in eqn.outvars)
            name = eqn.primitive.name
            if name in CALL_PRIMITIVES and wants_margin:
                sub, sub_consts = _sub_jaxpr(eqn)
                outs, out_margins = self.run(sub, sub_consts, invals, inmargins)
            else:
                outs = bind_eqn(eqn, invals)
                out_margins = [None] * len(outs)
                if wants_margin:
                    out_margins = [self.rule(eqn, invals, inmargins)]
            for v, x, m in zip(eqn.outvars, outs, out_margins, strict=True):
                env[id(v)] = x
                if m is not None:
                    menv[id(v)] = m
                if name in ("argmax", "argmin"):  # argmin(x) == k is argmax(-x) == k
                    operand = invals[0] if name == "argmax" else -_float(invals[0])
                    self.argmax_of[id(v)] = (operand, eqn.params["axes"][0])
        outs = [read(v) for v in jaxpr.outvars]
        out_margins = [read_margin(v) for v in jaxpr.outvars]
        return outs, out_margins

    def rule(self, eqn, invals, inmargins):
        name = eqn.primitive.name
        if name in ("gt", "ge", "lt", "le", "eq", "ne"):
            return self.comparison(eqn, invals)
        bools = [_is_bool(v.aval) for v in eqn.invars]
        if any(b and m is None for b, m in zip(bools, inmargins, strict=True)):
            return None
        if name == "not":
            return -inmargins[0]
        if name == "and":
            return _and_margin(inmargins)
        if name == "or":
            return jnp.maximum(*inmargins)
        if name == "xor":
            a, b = inmargins
            return jnp.maximum(_and_margin([a, -b]), _and_margin([-a, b]))
        if name == "reduce_and":
            return _and_margin([inmargins[0]], axes=tuple(eqn.params["axes"]))
        if name == "reduce_or":
            return jnp.max(inmargins[0], axis=tuple(eqn.params["axes"]))
        if name == "convert_element_type" and bools[0]:
            return inmargins[0]
        if name in SHAPE_PRIMITIVES:
            if name == "select_n" and bools[0]:
                # A boolean predicate choosing between booleans: (p & a) | (~p & b) for two cases.
                if len(invals) != 3:
                    return None
                p, a, b = inmargins
                return jnp.maximum(_and_margin([-p, a]), _and_margin([p, b]))
            args = [m if b else x for b, m, x in zip(bools, inmargins, invals, strict=True)]
            params = dict(eqn.params)
            if name == "gather" and params.get("fill_value") is not None:
                params["fill_value"] = -jnp.inf
            return eqn.primitive.bind(*args, **params)
        return None

    def comparison(self, eqn, invals):
        name = eqn.primitive.name
        a, b = invals
        if name in ("eq", "ne"):
            for this, other in ((eqn.invars[0], b), (eqn.invars[1], a)):
                key = None if isinstance(this, Literal) else id(this)
                if key is not None and key in self.argmax_of:
                    operand, axis = self.argmax_of[key]
                    m = _argmax_margin(operand, axis, other)
                    return m if name == "eq" else -m
            if _is_float(a) or _is_float(b):
                m = -jnp.abs(_float(a) - _float(b))
            else:
                m = 0.5 - jnp.abs(_float(a) - _float(b))
            return m if name == "eq" else -m
        if name in ("lt", "le"):
            a, b = b, a
        diff = _float(a) - _float(b)
        if not (_is_float(invals[0]) or _is_float(invals[1])):
            diff = diff + (0.5 if name in ("ge", "le") else -0.5)
        return diff


def _argmax_margin(operand, axis, k):
    operand = jnp.moveaxis(_float(operand), axis, -1)
    k = jnp.asarray(k, jnp.int32)
    onehot = jnp.arange(operand.shape[-1]) == k[..., None]
    chosen = jnp.sum(jnp.where(onehot, operand, 0.0), axis=-1)
    others = jnp.max(jnp.where(onehot, -jnp.inf, operand), axis=-1)
    return chosen - others


def _const_margin(x):
    return jnp.where(jnp.asarray(x), jnp.inf, -jnp.inf).astype(jnp.float32)


def margin_function(program: Program, target: str, outputs: Sequence[str] = ()):
    """``f(latent_values) -> (detector value, margin)`` for the boolean output site ``target``.

    With ``outputs``: ``f(values) -> (detector, margin, {site: value})``, all from
    one evaluation of the program.

    Raises:
        ModelError: when ``target`` is not a boolean site.
        UnsupportedPrimitiveError: naming the primitive whose boolean has no margin rule.
    """
    program.check_outputs([target])
    if not program.outputs[target].is_boolean:
        raise ModelError(f"site {target!r} is not boolean; a score is inferred for boolean detectors")
    names = list(program.latents)
    extra = [n for n in outputs if n != target]
    closed = program.make_jaxpr([target] + extra)
    _check_margin_known(closed, target)

    def f(values):
        leaves = [values[n] for n in names]
        outs, margins = _MarginEvaluator().run(closed.jaxpr, closed.consts, leaves, [None] * len(leaves))
        if not outputs:
            return outs[0], margins[0]
        named = dict(zip([target] + extra, outs, strict=True))
        return outs[0], margins[0], {n: named[n] for n in outputs}

    return f


def _check_margin_known(closed, target: str) -> None:
    """Trace the margin once abstractly and name the primitive that loses it."""
    lost: list[str] = []

    class Checking(_MarginEvaluator):
        def rule(self, eqn, invals, inmargins):
            m = super().rule(eqn, invals, inmargins)
            if m is None:
                lost.append(eqn.primitive.name)
            return m

    margin = _trace_margins(closed, Checking())[0]
    if margin is None:
        where = f" (primitive {lost[-1]!r} has no margin rule)" if lost else ""
        raise UnsupportedPrimitiveError(
            f"cannot infer a score for site {target!r} from its jaxpr{where}; pass score= "
            "naming a real deterministic site that is >= 0 whenever the detector fires"
        )


UNION_PRIMITIVES = {"or", "reduce_or", "xor"}


def is_union(program: Program, target: str) -> bool:
    """Whether the detector ``target`` joins events with or / any / xor (or a boolean ``select_n``),
    or may split its event otherwise (:func:`_splits_the_event`)."""
    closed = program.make_jaxpr([target])
    found: list[str] = []

    class Spotting(_MarginEvaluator):
        def rule(self, eqn, invals, inmargins):
            name = eqn.primitive.name
            if name in UNION_PRIMITIVES or (name == "select_n" and _is_bool(eqn.invars[0].aval)
                                             and not isinstance(eqn.invars[0], Literal)):
                found.append(name)
            return super().rule(eqn, invals, inmargins)

    _trace_margins(closed, Spotting())
    equations = list(_all_equations(closed.jaxpr))
    producer = {v: eqn.primitive.name for eqn in equations for v in eqn.outvars}
    random, bounds = random_values_and_bounds(closed)
    return bool(found) or any(_splits_the_event(eqn, producer, random, bounds) for eqn in equations)


def _all_equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs nested in its equations' parameters."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _all_equations(inner)


def _splits_the_event(eqn, producer: dict, random: set, bounds: dict) -> bool:
    """An equation after which a threshold can be a union of separate regions.

    Even functions (``abs``, ``x**2``, ``x * x``, ``cosh``: ``abs(y) > t`` is two
    halfspaces), a max or min of two random values (``max(x0, x1) > t`` is an or), a
    product of two random values that can both change sign (``x0 * x1 > t``: both
    positive or both negative; a gate ``x * sigmoid(y)`` and gelu cannot, by
    :mod:`._bounds`), and De Morgan's ``~(a & b)``. Found anywhere in the detector's
    jaxpr: it may sit inside a network.
    """
    name = eqn.primitive.name
    # a variable the bounds pass did not reach (a while/cond body) counts as random, unbounded
    operands = [v for v in eqn.invars if not isinstance(v, Literal) and (v in random or v not in bounds)]
    if name in ("abs", "square", "cosh", "reduce_max", "reduce_min"):
        return bool(operands)
    if name == "integer_pow":
        return bool(operands) and eqn.params["y"] % 2 == 0
    if name in ("max", "min"):
        return len(operands) == 2
    if name == "mul" and len(operands) == 2:
        return operands[0] is operands[1] or all(straddles_zero(bounds.get(v, WHOLE_LINE)) for v in operands)
    if name == "not" and operands:
        return producer.get(operands[0]) in ("and", "reduce_and")
    return False


def _trace_margins(closed, evaluator: _MarginEvaluator):
    """Run ``evaluator`` over ``closed`` abstractly (shapes only); its output margins."""
    def trace(*leaves):
        return evaluator.run(closed.jaxpr, closed.consts, list(leaves), [None] * len(leaves))[1]

    shapes = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
    return jax.eval_shape(trace, *shapes)


def union_note(program: Program, target: str, proposal: str) -> tuple[str, ...]:
    """A note for a single-Gaussian proposal on a union-shaped detector (empty otherwise)."""
    if not is_union(program, target):
        return ()
    return (f"{target}: the detector is (or may be) a union (or / any, a threshold of abs or max, "
            "a product of two values that can change sign, ~(a & b)); "
            f"a single-Gaussian {proposal} proposal can "
            "cover one part of it and miss the others, which no weight diagnostic (ESS, k-hat) shows: "
            "the estimate may be low; check it with proposal='ams' or 'mhis'",)


def score_function(program: Program, target: str, score: str | Callable | None = None,
                   outputs: Sequence[str] = ()):
    """``f(latent_values) -> (detector value, score[, outputs])``: the inferred margin or the user's.

    ``score`` may name a real scalar output site, or be a function of the
    outputs dict; either way the detector must imply ``score >= 0``. With
    ``outputs``, the named output sites come back too (one evaluation).
    """
    if score is None:
        return margin_function(program, target, outputs)
    if isinstance(score, str):
        program.check_outputs([score])
        site = program.outputs[score]
        if site.shape != () or site.is_boolean:
            raise ModelError(
                f"score site {score!r} must be a real scalar, got shape {site.shape} dtype {site.dtype}"
            )

        def pick(out):
            return out[score]
    elif callable(score):
        pick = score
    else:
        raise TypeError(f"score must be a site name or a function of the outputs, got {score!r}")

    def f(values):
        out = program.fn(values)
        if not outputs:
            return out[target], _float(pick(out))
        return out[target], _float(pick(out)), {n: out[n] for n in outputs}

    return f


def check_score_implies(detector: np.ndarray, scores: np.ndarray, target: str) -> None:
    """Raise when a draw fires the detector with a negative score (the score is inconsistent)."""
    bad = np.asarray(detector, bool) & (np.asarray(scores) < 0)
    if np.any(bad):
        raise ModelError(
            f"the score is negative at {int(bad.sum())} draw(s) where site {target!r} is true; "
            "splitting needs catastrophe => score >= 0"
        )
