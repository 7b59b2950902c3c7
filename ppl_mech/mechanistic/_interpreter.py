"""The interpreter: walk a jaxpr, applying each primitive's rule to messages.

Values are either concrete arrays (weights, constants: evaluated as JAX would)
or :class:`Handle` s (random). Each equation with a random operand goes to the
rule for its primitive; sub-jaxprs (``pjit``, ``closed_call``,
``custom_jvp_call``, ``custom_vjp_call``, ``remat``) are entered. A primitive
without a rule raises :class:`UnsupportedPrimitiveError` naming it and where
it was traced from. Handles are reference counted over variable lifetimes so
that the ``gaussian`` family keeps cross-covariances only between values that
are still needed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from ppl_mech._bind import bind_eqn
from ppl_mech._errors import UnsupportedPrimitiveError

from . import _categorical as categorical
from . import _deferred as deferred
from . import _events as events
from ._data_movement import STRUCTURAL, joint_moved_units, movable_chain_units, moved_units, rebased_chain
from ._elementwise import (
    compose,
    force,
    is_elementwise,
    level_set_chain,
    monotone_chain,
    monotone_crossing,
)
from ._gamma_closure import GAMMA_NOTE, gamma_chain, keeps_nonnegative, reads_as_gamma
from ._level_sets import SLOTS as LEVEL_SET_SLOTS
from ._level_sets import interval_probability, level_set_intervals
from ._linear import LINEAR_PRIMITIVES, affine_image, bind_with, is_affine, linear_rule
from ._predicates import BOOLEAN_COMBINERS, predicate_only_vars, same_shape
from ._state import Handle, State, boolean_law, variance_of
from ._thresholds import ReluPreimage, flat_affine, relu_preimage, threshold_margin

CALL_JAXPR_PARAMS = {
    "pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr",
}
COMPARISONS = {"gt": 1, "ge": 1, "lt": -1, "le": -1}

ARG_EXTREMA = ("argmax", "argmin")
RANDOM_INDEX_PRIMITIVES = {"dynamic_slice", "dynamic_update_slice", "gather", "scatter", "scatter-add",
                           "scatter_add"}


def _forced_copy(state: State, h: Handle) -> Handle:
    """A lazy chain's moments as a new handle; ``h`` stays lazy."""
    copy = Handle(h.shape, h.dtype, "lazy", dict(h.data), h.origin)
    copy.at = h.at
    return force(state, copy)


def _keeps_its_rule_forced(h: Handle) -> bool:
    """An affine chain (its Gaussian is exact) or a ReLU (its preimage keeps the threshold rule)."""
    structure = h.data["structure"]
    return structure[0] == "affine" or (structure[0] == "closed" and structure[2] == "relu")


EXTREMA = {"reduce_max": "reduce_max", "reduce_min": "reduce_min",
           "reduce_window_max": "reduce_max", "reduce_window_min": "reduce_min"}
"""Reductions whose threshold is any/all of their units' thresholds, and which of max/min each is."""

PAIRWISE_EXTREMA = {"max": "reduce_max", "min": "reduce_min"}
"""Elementwise ``max(a, b)`` / ``min(a, b)``: a threshold of one is any/all of the pair's."""


def extremum_groups(eqn, shape) -> np.ndarray | None:
    """Flat source units of each output unit of a max/min, shape ``out_shape + (group,)``.

    ``None`` for a window the rule cannot enumerate (base dilation, or a window of padding only).
    """
    units = np.arange(math.prod(shape)).reshape(shape)
    if "axes" in eqn.params:
        axes = tuple(eqn.params["axes"])
        moved = np.moveaxis(units, axes, tuple(range(len(shape) - len(axes), len(shape))))
        group = math.prod(shape[a] for a in axes)
        return moved.reshape(moved.shape[: len(shape) - len(axes)] + (group,))
    p = eqn.params
    if any(d != 1 for d in p["base_dilation"]):
        return None
    coords, valid = [], []
    for d, size in enumerate(shape):
        window, stride, dilation = p["window_dimensions"][d], p["window_strides"][d], p["window_dilation"][d]
        lo, hi = p["padding"][d]
        out = (size + lo + hi - (window - 1) * dilation - 1) // stride + 1
        c = np.arange(out)[:, None] * stride + np.arange(window)[None, :] * dilation - lo
        coords.append(c)
        valid.append((c >= 0) & (c < size))
    n = len(shape)
    out_shape = tuple(c.shape[0] for c in coords)
    window_shape = tuple(c.shape[1] for c in coords)
    full = out_shape + window_shape

    def spread(arr, d):  # (out_d, window_d) -> broadcastable over out dims then window dims
        index = [1] * (2 * n)
        index[d], index[n + d] = arr.shape
        return arr.reshape(index)

    ok = np.ones(full, bool)
    flat = np.zeros(full, np.int64)
    for d in range(n):
        ok = ok & spread(valid[d], d)
        flat = flat * shape[d] + np.clip(spread(coords[d], d), 0, shape[d] - 1)
    ok = ok.reshape(out_shape + (-1,))
    flat = flat.reshape(out_shape + (-1,))
    if not ok.any(axis=-1).all():
        return None
    first = np.take_along_axis(flat, np.argmax(ok, axis=-1)[..., None], axis=-1)
    return np.where(ok, flat, first)  # padding is never the max: repeat a real unit instead


_ENCLOSING_CALLS: list[str] = []  # "'name' at file:line" of the calls being interpreted


def _location(eqn) -> str:
    try:
        from jax._src import source_info_util

        return source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - best effort
        return ""


def describe(eqn) -> str:
    """``primitive 'p' at file:line (fn)``; inside a library call, the user's call site instead."""
    where = _location(eqn)
    if not where.strip(" :") and _ENCLOSING_CALLS:
        return f"primitive {eqn.primitive.name!r} inside {_ENCLOSING_CALLS[-1]}"
    return f"primitive {eqn.primitive.name!r} at {where or '?'}"


@contextlib.contextmanager
def inside_call(eqn):
    """Name ``eqn`` (a call: ``jit`` of ``jnp.where``, ``custom_jvp_call``, ...) while its body runs."""
    label = eqn.params.get("name") or eqn.primitive.name
    where = _location(eqn)
    _ENCLOSING_CALLS.append(f"{label!r} called at {where}" if where.strip(" :") else
                            (_ENCLOSING_CALLS[-1] if _ENCLOSING_CALLS else f"{label!r}"))
    try:
        yield
    finally:
        _ENCLOSING_CALLS.pop()


PREIMAGE_LOST = (
    "{where}: the ReLU pre-activation does not follow this primitive ({why}); a detector "
    "on its output is decided on the moment-matched ReLU output, not on the Gaussian "
    "pre-activation"
)

def same_value(a: Handle, b: Handle) -> bool:
    """Whether two handles are one value: the same handle, or the same units of one value
    (``x[0]`` sliced twice; ``units_of``)."""
    if a is b:
        return True
    ua, ub = a.data.get("units_of"), b.data.get("units_of")
    return ua is not None and ub is not None and ua[0] == ub[0] and np.array_equal(ua[1], ub[1]) \
        and tuple(a.shape) == tuple(b.shape)


class _Synthetic:
    """An equation-like record for rules called on a rewritten operation (``max(x) > t`` -> ``any``)."""

    def __init__(self, name: str, shape, dtype, **params):
        self.primitive = type("Primitive", (), {"name": name})()
        self.outvars = [type("Var", (), {"aval": jax.core.ShapedArray(tuple(shape), dtype)})()]
        self.params = params
        self.invars = []


class Interpreter:
    def __init__(self, state: State, *, key, num_samples: int):
        self.state = state
        self.predicate_only: set = set()
        self.refs: dict[int, int] = {}
        self.keep: set[int] = set()
        self.ending: set[int] = set()  # handles whose last binding is read by the current equation
        self.margins: dict[int, Handle] = {}
        self.key = key
        self.num_samples = num_samples
        self.linearizations = 0

    # --- reference counting -------------------------------------------------------------
    # A handle's count is the number of variable bindings that a later equation (or a
    # pending return from a sub-jaxpr) still reads. At zero, its cross-covariances are
    # dropped; its own message too, unless it is a reported output or a detector margin.
    def hold(self, value) -> None:
        if isinstance(value, Handle):
            self.refs[value.id] = self.refs.get(value.id, 0) + 1

    def release(self, value) -> None:
        if not isinstance(value, Handle):
            return
        self.refs[value.id] = self.refs.get(value.id, 0) - 1
        if self.refs[value.id] <= 0:
            self.drop(value)

    def drop(self, value: Handle) -> None:
        if value.kind in ("lazy", "deferred") and value.id in self.keep:
            return  # a reported output: forced (and its base released) when reported
        if value.kind == "lazy":
            value.kind = "dropped-lazy"
            self.release(value.data["base"])
        elif value.kind == "argmax":
            value.kind = "dropped-argmax"
            self.release(value.data["source"])
        elif value.kind == "moments" and "preimage" in value.data:
            self.release(value.data.pop("preimage").base)
        elif value.kind == "deferred":
            value.kind = "dropped-deferred"
            self.release_roots(value.data["roots"])
            if "extremum" in value.data:
                self.release_sources(value.data.pop("extremum")[1])
        if value.kind == "moments" and "provenance" in value.data:
            self.release_provenance(value.data.pop("provenance"))
        view = value.data.pop("view", None)  # a separate forced view (lazy, deferred, categorical)
        if view is not None:
            self.state.forget(view)
        if value.id in self.margins:
            return
        if value.id in self.keep:
            self.state.retire(value)
        else:
            self.state.forget(value)

    # --- the walk -----------------------------------------------------------------------
    def run(self, jaxpr, consts, args, *, top_level: bool = False) -> list:
        """Interpret ``jaxpr``; a sub-jaxpr's results stay held until the caller binds them."""
        env: dict[Any, Any] = {}
        self.predicate_only |= predicate_only_vars(jaxpr, CALL_JAXPR_PARAMS)
        last_use: dict[Any, int] = {}
        for i, eqn in enumerate(jaxpr.eqns):
            for v in eqn.invars:
                if not isinstance(v, Literal):
                    last_use[v] = i
        end = len(jaxpr.eqns)
        outvars = [v for v in jaxpr.outvars if not isinstance(v, Literal)]
        if not top_level:
            for v in outvars:
                last_use[v] = end
        dying: dict[int, list] = {}
        for v, i in last_use.items():
            dying.setdefault(i, []).append(v)

        def bind(var, value, index):
            env[var] = value
            if not isinstance(value, Handle):
                return
            if top_level and var in outvars:
                self.keep.add(value.id)
            if last_use.get(var, -1) > index:
                self.hold(value)
            elif self.refs.get(value.id, 0) <= 0:
                if value.kind in ("lazy", "deferred") and top_level and var in outvars:
                    return  # forced when reported
                self.drop(value)

        for var, value in zip(jaxpr.constvars, consts, strict=True):
            bind(var, value, -1)
        for var, value in zip(jaxpr.invars, args, strict=True):
            bind(var, value, -1)

        def read(v):
            return v.val if isinstance(v, Literal) else env[v]

        outer_ending = self.ending
        for i, eqn in enumerate(jaxpr.eqns):
            values = [read(v) for v in eqn.invars]
            pending: list = []
            self.ending = {env[v].id for v in dying.get(i, ()) if isinstance(env.get(v), Handle)}
            if top_level:
                self.state.notebook.at = i
            if any(isinstance(x, Handle) for x in values):
                if eqn.primitive.name in CALL_JAXPR_PARAMS:
                    outs, pending = self.call(eqn, values)
                else:
                    outs = self.apply(eqn, values)
            elif any(isinstance(x, jax.core.Tracer) for x in values):
                outs = bind_eqn(eqn, values)
            else:  # constants stay concrete (indices must be known while tracing)
                with jax.ensure_compile_time_eval():
                    outs = bind_eqn(eqn, values)
            for var, value in zip(eqn.outvars, outs, strict=True):
                if top_level and isinstance(value, Handle) and value.at is None:
                    value.at = i
                bind(var, value, i)
            for value in pending:
                self.release(value)
            for var in dying.get(i, ()):
                if isinstance(env.get(var), Handle):
                    self.release(env[var])
        self.ending = outer_ending
        return [read(v) for v in jaxpr.outvars]

    @staticmethod
    def refuse_random_control(eqn, values, random, where: str) -> None:
        """Name the two ways a random real value can steer integer code, which no family integrates."""
        name = eqn.primitive.name
        if name in RANDOM_INDEX_PRIMITIVES and 0 in random and any(i > 0 for i in random):
            raise UnsupportedPrimitiveError(
                f"{where}: {name!r} of a random array at a random index (x[t], t a sampled token) has "
                "no rule; write the pick as a one-hot product, jnp.sum(jax.nn.one_hot(t, K) * x, -1), "
                "which the gaussian family integrates exactly"
            )
        if name == "cond" and 0 in random:
            raise UnsupportedPrimitiveError(
                f"{where}: jax.lax.cond with a random predicate picks a branch per draw; write it with "
                "jnp.where (both branches computed, the choice integrated) or use handlers.sample"
            )
        if name == "convert_element_type" and random and \
                jnp.issubdtype(eqn.params["new_dtype"], jnp.integer) and \
                jnp.issubdtype(eqn.invars[0].aval.dtype, jnp.floating):
            raise UnsupportedPrimitiveError(
                f"{where}: a random real value cast to {eqn.params['new_dtype']} (a staircase, "
                "round-toward-zero): compare the real value instead (y >= 2.0, not int(y) >= 2), or "
                "use handlers.sample"
            )

    def call(self, eqn, values) -> tuple[list, list]:
        inner = eqn.params[CALL_JAXPR_PARAMS[eqn.primitive.name]]
        jaxpr, consts = (inner.jaxpr, inner.consts) if hasattr(inner, "jaxpr") else (inner, [])
        if len(jaxpr.invars) != len(values):
            raise UnsupportedPrimitiveError(
                f"{describe(eqn)}: its sub-jaxpr takes {len(jaxpr.invars)} operands, got {len(values)}"
            )
        with inside_call(eqn):
            outs = self.run(jaxpr, consts, values)
        return outs, [x for x in outs if isinstance(x, Handle)]

    # --- dispatch -----------------------------------------------------------------------
    def apply(self, eqn, values: list) -> list:
        name = eqn.primitive.name
        where = describe(eqn)
        random = [i for i, x in enumerate(values) if isinstance(x, Handle)]
        kinds = {values[i].kind for i in random}
        self.refuse_random_control(eqn, values, random, where)
        out_aval = eqn.outvars[0].aval
        is_bool = out_aval.dtype == jnp.bool_

        if "deferred" in kinds:
            if name in COMPARISONS and len(random) == 1 and "extremum" in values[random[0]].data \
                    and eqn.outvars[0] not in self.predicate_only:
                return [self.compare_extremum(eqn, values, random[0], where)]
            if self.joins_deferred(eqn, values, random, kinds):
                return self.defer(eqn, values, random, where, note=False)
            values = [self.moments(x, where) if isinstance(x, Handle) and x.kind == "deferred" else x
                      for x in values]
            kinds = {values[i].kind for i in random}
        if "categorical" in kinds:
            if kinds == {"categorical"} and categorical.is_exact_op(eqn, values, random):
                return [categorical.apply(eqn, values, random, where)]
            elementwise = name in categorical.ELEMENTWISE
            if (kinds == {"categorical"} and elementwise and is_bool and len(random) == 2
                    and same_shape(eqn) and categorical.unit_tokens(values, random, out_aval.shape)[2]):
                p = categorical.pair_probability(eqn, values, random)
                return [boolean_law(out_aval.shape, p, where)]
            reduction = name in ("reduce_and", "reduce_or", "reduce_max", "reduce_min") and is_bool
            independent = kinds == {"categorical"} and (
                (elementwise and categorical.unit_tokens(values, random, out_aval.shape)[2])
                or (reduction and categorical.reduction_is_independent(values[random[0]],
                                                                       eqn.params["axes"])))
            values = [self.leave_categorical(x, where, independent) for x in values]
            kinds = {values[i].kind for i in random}
            if kinds == {"two_point"}:  # booleans of independent tokens: exact product rules
                return [self.discrete(eqn, values, random, where, independent=independent)]
        extremum = self.choice_of_the_larger(eqn, values, random)
        if extremum is not None:  # jnp.where(a > b, a, b) is max(a, b)
            return self.apply(extremum, [values[1], values[2]])
        if kinds & {"events", "argmax"} or (kinds == {"two_point"} and self.state.family != "gaussian"):
            return [self.discrete(eqn, values, random, where)]
        if (name == "select_n" and 0 in random and values[0].kind == "two_point"
                and len(values) == 3 and self.state.family != "gaussian"):
            return [self.two_point_choice(values, random, where)]
        if name in ("eq", "ne") and len(values) == 2 and values[0] is values[1]:
            # ``x != x`` is the NaN test (softplus, logaddexp): a message's values are never NaN
            return [jnp.full(out_aval.shape, name == "eq")]
        if self.chains_a_predicate(eqn, values, random):
            chained = self.compose_on_one_base(eqn, values, random, where)  # a branch choice (leaky ReLU)
            if chained is not None:
                return [chained]
        if name in COMPARISONS or name in ("eq", "ne"):
            out = self.compare(eqn, values, random, where)
            if name in COMPARISONS and len(random) == 2 and eqn.outvars[0] in self.predicate_only:
                out.data["compared"] = (name, values[0], values[1])  # read by choice_of_the_larger
            return [out]
        if name in ARG_EXTREMA:
            x = self.moments(values[0], where)
            self.hold(x)  # released when the argmax handle is dropped
            sign = 1 if name == "argmax" else -1  # argmin(x) is argmax(-x)
            return [Handle(out_aval.shape, out_aval.dtype, "argmax",
                           {"source": x, "axis": eqn.params["axes"][0], "sign": sign}, where)]
        if is_bool and "two_point" in kinds and self.state.family != "gaussian":
            raise UnsupportedPrimitiveError(
                f"{where}: {name!r} combines a boolean (a two-point law) with a random value that is not "
                f"one ({sorted(kinds - {'two_point'})}); the {self.state.family} family has no rule for "
                "it; estimate this model with handlers.sample or handlers.importance"
            )
        if is_bool and "two_point" in kinds:
            raise UnsupportedPrimitiveError(
                f"{where}: {name!r} combines two-point booleans (detectors on discrete sites); the "
                f"{self.state.family} family has no joint law of them (use family='diagonal', which "
                "presumes independence, or handlers.sample / handlers.importance)"
            )
        if is_bool:
            raise UnsupportedPrimitiveError(f"{where}: no rule for boolean {name!r} of a real value")
        if "two_point" in kinds:  # mixed with real values: use the two-point law's moments
            self.state.note(f"{where}: a two-point (discrete) value mixed with real values is replaced by "
                            "a Gaussian of its mean and variance; nonlinearities and thresholds "
                            "downstream can be far off (relu(3 b + x - 2), b ~ Bernoulli(0.3): 0.265 for "
                            "0.331)")
            values = [self.moments(x, where) if isinstance(x, Handle) else x for x in values]
            kinds = {values[i].kind for i in random}
        # decided before forcing: forcing mutates lazy handles in place, and a block reads their bases
        if self.has_no_rule(eqn, values, random) and self.deferrable(values, random):
            return self.defer(eqn, values, random, where)
        if is_elementwise(eqn):
            chained = self.compose_on_one_base(eqn, values, random, where)
            if chained is not None:
                return [chained]
        if name in LINEAR_PRIMITIVES and len(random) == 1:
            moved = self.move_chain(eqn, values, random[0], where)
            if moved is not None:
                return [moved]
        shadow = self.provenance_of(eqn, values, random, where)  # taken (roots held) before forcing
        values = [self.moments(x, where) if isinstance(x, Handle) else x for x in values]
        if name == "mul" and len(random) == 2:
            self.release_provenance(shadow)
            return [self.product(values[random[0]], values[random[1]], where)]
        if name in LINEAR_PRIMITIVES:
            out = linear_rule(self.state, eqn, values, random, where)
            moved = moved_units(eqn, values, random[0]) if len(random) == 1 else None
            self.carry_preimage(eqn, values, random, out, moved)
            if len(random) > 1 and name in STRUCTURAL and \
                    set(range(len(values))) - set(random) <= set(self._index_ops(eqn)):
                operands = [values[i] for i in random]
                self.carry_joint_preimage(bind_with(eqn, values, random), operands, out, where)
            self.carry_units(values, random, out, moved)
            if keeps_nonnegative(eqn, values, random):
                out.data["nonnegative"] = True
            if shadow is not None:
                out.data["provenance"] = shadow
            return [out]
        self.release_provenance(shadow)
        raise UnsupportedPrimitiveError(
            f"{where}: no propagation rule for {name!r} with random operands "
            f"(family {self.state.family!r})"
        )

    def chains_a_predicate(self, eqn, values, random) -> bool:
        """Whether ``eqn`` only builds a branch choice of an elementwise chain (see _predicates):
        a comparison, or a boolean combination of chains' comparisons (jnp.mod's), used only to
        pick between branches."""
        name = eqn.primitive.name
        if eqn.outvars[0] not in self.predicate_only or not same_shape(eqn):
            return False
        if name in COMPARISONS or name in ("eq", "ne"):
            return True
        return name in BOOLEAN_COMBINERS and all(values[i].kind == "lazy" for i in random)

    # --- deferred blocks (see _deferred) -------------------------------------------------
    def deferrable(self, values, random) -> bool:
        kinds = {values[i].kind for i in random}
        return kinds <= {"moments", "lazy", "deferred"} and \
            deferred.root_size(values, random) <= deferred.MAX_ROOT_SIZE

    def has_no_rule(self, eqn, values, random) -> bool:
        """``eqn`` has no Gaussian rule whatever its operands' messages (decided before forcing them).

        Rules: an elementwise chain on one base composes; a product of two Gaussians is Isserlis';
        an affine map is exact. Anything else (a division by a random value, a random
        predicate, ``max`` of two values, ``reduce_max``, ``sort``) has none.
        """
        name = eqn.primitive.name
        if eqn.outvars[0].aval.dtype == jnp.bool_ or name in CALL_JAXPR_PARAMS or name in ARG_EXTREMA:
            return False
        if is_elementwise(eqn) and len({id(self.base_of(values[i])) for i in random}) == 1:
            return False
        if name == "mul" and len(random) == 2:
            # x * rsqrt(var(x)) (a broadcast), a gate x * sigmoid(y): not a product of two Gaussians
            return len({tuple(values[i].shape) for i in random}) > 1 or \
                any(self.reads_nonlinear(values[i]) for i in random)
        return not is_affine(eqn, random)

    @staticmethod
    def reads_nonlinear(h: Handle) -> bool:
        """A non-affine elementwise chain, or a small reduction that remembers one (provenance)."""
        return (h.kind == "lazy" and h.data["structure"][0] != "affine") or "provenance" in h.data

    def provenance_of(self, eqn, values, random, where) -> dict | None:
        """For a small linear reduction of an elementwise chain: its exact function of the roots."""
        if eqn.primitive.name not in LINEAR_PRIMITIVES or eqn.primitive.name in deferred.UNIT_MIXING or \
                self.state.family == "mean" or \
                eqn.outvars[0].aval.dtype == jnp.bool_ or len(eqn.outvars) != 1:
            return None
        if math.prod(eqn.outvars[0].aval.shape) > deferred.PROVENANCE_MAX_SIZE:
            return None
        if not any(self.reads_nonlinear(values[i]) for i in random):
            return None  # affine chains of Gaussian values are Gaussian: their closure is exact
        if not self.deferrable(values, random):
            return None
        shadow = deferred.defer(eqn, values, random, where)[0]
        for root in shadow.data["roots"]:
            self.hold(root)
        return {"roots": shadow.data["roots"], "fn": shadow.data["fn"]}

    def release_provenance(self, provenance: dict | None) -> None:
        if provenance is not None:
            self.release_roots(provenance["roots"])

    def release_roots(self, roots) -> None:
        for root in roots:
            self.release(root)

    def joins_deferred(self, eqn, values, random, kinds) -> bool:
        """Whether ``eqn`` (with a deferred operand) composes into the deferred block."""
        name = eqn.primitive.name
        if name in ARG_EXTREMA or name in CALL_JAXPR_PARAMS:
            return False  # argmax has its own rule on the forced value
        if name in deferred.UNIT_MIXING and len(random) == 1:
            return False  # a matmul with constant weights: the Gaussian closure's own ground
        if (name in COMPARISONS or name in ("eq", "ne")) and eqn.outvars[0] not in self.predicate_only:
            return False
        return self.deferrable(values, random)

    def defer(self, eqn, values, random, where, *, note: bool = True) -> list[Handle]:
        outs = deferred.defer(eqn, values, random, where)
        name = eqn.primitive.name
        if name in EXTREMA and len(random) == 1 and values[random[0]].kind in ("moments", "lazy"):
            # max(x) > t is any(x > t): kept exact if a comparison reads the max (or units of it)
            source = values[random[0]]
            groups = extremum_groups(eqn, source.shape)
            if groups is not None:
                self.hold(source)
                axes = tuple(eqn.params["axes"]) if "axes" in eqn.params else None
                outs[0].data["extremum"] = (EXTREMA[name], source, axes, groups)
        elif name in PAIRWISE_EXTREMA and self.compares_like_a_reduction(eqn, values, random):
            # max(a, b) > t is (a > t) | (b > t): the pair is kept, stacked when compared
            pair = tuple(values[i] for i in random)
            for h in pair:
                self.hold(h)
            shape = tuple(outs[0].shape)
            groups = np.arange(2 * math.prod(shape)).reshape(shape + (2,))
            outs[0].data["extremum"] = (PAIRWISE_EXTREMA[name], pair, None, groups)
        elif name in STRUCTURAL and len(random) == 1 and "extremum" in values[random[0]].data:
            self.carry_extremum(eqn, values, random[0], outs[0])
        if note:
            self.state.note(deferred.DEFER_NOTE.format(where=where, name=eqn.primitive.name,
                                                       points=deferred.LINEARIZATION_POINTS))
            if self.state.family != "gaussian":
                self.state.note(deferred.INDEPENDENT_ROOTS_NOTE.format(where=where, family=self.state.family))
        for out in outs:
            for root in out.data["roots"]:
                self.hold(root)
        return outs

    def force_deferred(self, h: Handle, where: str) -> Handle:
        """The block's statistical linearization; while a later equation still reads the block,
        a separate view (:meth:`view_for_later_readers`), so that those readers keep the block."""
        view = self.view_for_later_readers(h, lambda: self.linearized(h))
        if view is not None:
            return view
        roots = h.data["roots"]
        extremum = h.data.get("extremum")
        new = h.data.pop("view") if "view" in h.data else self.linearized(h)
        self.state.become(h, new)
        self.release_roots(roots)
        if extremum is not None:
            self.release_sources(extremum[1])
        return h

    def linearized(self, h: Handle) -> Handle:
        """A deferred block's statistical linearization (a fresh key per block)."""
        key = jax.random.fold_in(self.key, 1_000_000 + self.linearizations)
        self.linearizations += 1
        return deferred.linearize(self.state, h, key)

    def move_chain(self, eqn, values, position: int, where: str) -> Handle | None:
        """A slice/reshape/transpose of a lazy elementwise chain, kept lazy on the moved base.

        ``act(y)[0] > t`` must stay a threshold of ``act`` of ``y[0]`` (exact), not of a
        moment-matched ``act(y)``. Elementwise chains commute with pure data movement, so
        the chain is re-based on the moved units: ``f'(z') = f(base with z' put back)[units]``.
        Not for ReLU chains (their preimage follows data movement already), affine chains
        (exact either way) or movement that repeats units (a broadcast).
        """
        h = values[position]
        if h.kind == "lazy" and h.data["structure"][0] == "closed" and h.data["structure"][2] == "relu":
            return None
        units = movable_chain_units(eqn, values, position)
        if units is None:
            return None
        base = h.data["base"]
        moved_values = list(values)
        moved_values[position] = base
        moved_base = self.apply(eqn, moved_values)[0]
        self.hold(moved_base)
        data = rebased_chain(h.data, units, base.shape, moved_base.shape, base.data["mean"])
        return Handle(moved_base.shape, h.dtype, "lazy", {"base": moved_base, **data}, where)

    def carry_units(self, values, random, out: Handle, index: np.ndarray | None) -> None:
        """Remember which units of which value a slice/reshape/gather output is (``units_of``).

        ``index``: :func:`moved_units` of the equation. Comparisons use it to see that
        ``o[0] > a`` and ``o[0] < b`` (two slices) are one scalar.
        """
        if index is None:
            return
        source = values[random[0]]
        root, units = source.data.get("units_of", (source.id, np.arange(source.size)))
        out.data["units_of"] = (root, units[index])

    @staticmethod
    def compares_like_a_reduction(eqn, values, random) -> bool:
        """``max(a, b)`` / ``min(a, b)`` of two random arrays of the output's shape, messages or chains."""
        shape = tuple(eqn.outvars[0].aval.shape)
        return len(random) == 2 and all(
            values[i].kind in ("moments", "lazy") and tuple(values[i].shape) == shape for i in random)

    def release_sources(self, sources) -> None:
        """Release an extremum's source: one handle, or the pair of a binary max/min."""
        for h in sources if isinstance(sources, tuple) else (sources,):
            self.release(h)

    def stacked_pair(self, pair: tuple[Handle, Handle], where: str) -> Handle:
        """``jnp.stack([a, b], -1)`` of a binary max/min's operands, as one message."""
        a, b = (self.moments(h, where) for h in pair)

        def stack(u, v):
            return jnp.stack([u, v], axis=-1)

        out = affine_image(self.state, stack, [a, b], where, stack)
        self.refs[out.id] = 1
        self.carry_joint_preimage(stack, [a, b], out, where)
        return out

    @staticmethod
    def choice_of_the_larger(eqn, values, random):
        """A ``max``/``min`` equation for ``select_n(a > b, ...)`` that picks ``a`` or ``b`` themselves.

        ``jnp.where(a > b, a, b)`` is ``max(a, b)`` and ``jnp.where(a > b, b, a)`` is ``min(a, b)``
        (likewise for ``<``, ``>=``, ``<=``); the comparison left a record of its operands.
        ``None`` for any other choice.
        """
        if eqn.primitive.name != "select_n" or len(values) != 3 or random != [0, 1, 2]:
            return None
        compared = values[0].data.get("compared")
        if compared is None or any(values[i].kind not in ("moments", "lazy") for i in (1, 2)):
            return None
        name, x, y = compared
        larger, smaller = (x, y) if name in ("gt", "ge") else (y, x)  # the larger one where True
        if same_value(values[2], larger) and same_value(values[1], smaller):
            primitive = jax.lax.max
        elif same_value(values[2], smaller) and same_value(values[1], larger):
            primitive = jax.lax.min
        else:
            return None
        avals = [jax.core.ShapedArray(tuple(values[i].shape), values[i].dtype) for i in (1, 2)]
        if avals[0] != avals[1] or avals[0].shape != tuple(eqn.outvars[0].aval.shape):
            return None
        return jax.make_jaxpr(primitive)(*avals).eqns[0].replace(source_info=eqn.source_info)

    def carry_extremum(self, eqn, values, position: int, out: Handle) -> None:
        """Let a data-movement primitive on a max/min carry which source units each output unit maxes."""
        kind, source, _, groups = values[position].data["extremum"]
        index = moved_units(eqn, values, position)
        if index is None:
            return  # mixes in constants, or indices not known while tracing: the max stays a closure
        flat = groups.reshape(-1, groups.shape[-1])[index]
        for h in source if isinstance(source, tuple) else (source,):
            self.hold(h)
        out.data["extremum"] = (kind, source, None, flat.reshape(tuple(out.shape) + (groups.shape[-1],)))

    def compare_extremum(self, eqn, values, position: int, where: str) -> Handle:
        """``max(x) > t`` as ``any(x > t)`` (``< t``: ``all``; ``min`` the other way round).

        The max may be a reduction over axes, a pooling window (``reduce_window_max``), or
        units of either moved by slices and reshapes: each output unit knows its group of
        source units.
        """
        name = eqn.primitive.name
        kind, source, axes, groups = values[position].data["extremum"]
        out_aval = eqn.outvars[0].aval
        upper = COMPARISONS[name] * (1 if position == 0 else -1) > 0  # extremum > t
        flipped = {"gt": "lt", "lt": "gt", "ge": "le", "le": "ge"}[name]
        unit_name = name if position == 0 else flipped  # written as ``x <op> t``
        reduce = "reduce_or" if (kind == "reduce_max") == upper else "reduce_and"
        self.state.note(f"{where}: a threshold of a max/min, decided unit by unit (any/all)")
        t = jnp.broadcast_to(jnp.asarray(values[1 - position]), out_aval.shape)
        if axes is not None:  # the reduction itself: compare the source as it is (chain rules apply)
            t = jnp.broadcast_to(jnp.expand_dims(t, axes), source.shape) if axes else t
            per_unit = self.compare(_Synthetic(unit_name, source.shape, jnp.bool_), [source, t], [0], where)
            return self.discrete(_Synthetic(reduce, out_aval.shape, jnp.bool_, axes=axes), [per_unit], [0],
                                 where)
        if isinstance(source, tuple):  # max(a, b): its groups index jnp.stack([a, b], -1)
            stacked = self.stacked_pair(source, where)
            gathered = self.gather_units(stacked, groups, where)
            self.release(stacked)
        else:
            gathered = self.gather_units(source, groups, where)
        t = jnp.broadcast_to(t[..., None], groups.shape)
        per_unit = self.compare(_Synthetic(unit_name, groups.shape, jnp.bool_), [gathered, t], [0], where)
        self.release(gathered)
        last = (len(groups.shape) - 1,)
        return self.discrete(_Synthetic(reduce, out_aval.shape, jnp.bool_, axes=last), [per_unit], [0], where)

    def gather_units(self, source: Handle, groups: np.ndarray, where: str) -> Handle:
        """``source.ravel()[groups]`` as a message (a ReLU preimage follows the units)."""
        src = self.moments(source, where)
        flat = groups.reshape(-1)

        def take(z):
            return jnp.reshape(jnp.reshape(z, (-1,))[flat], groups.shape)

        out = affine_image(self.state, take, [src], where, take)
        self.refs[out.id] = 1
        if "preimage" in src.data:
            out.data["preimage"] = src.data["preimage"].select(flat)
            self.hold(out.data["preimage"].base)
        return out

    def leave_categorical(self, x, where: str, independent: bool = False):
        """A categorical operand of an op that mixes tokens: exact moments, or a two-point law.

        ``independent``: the op's categorical operands read different tokens in every unit,
        so a boolean may become a two-point law without a presumption.
        """
        if not isinstance(x, Handle) or x.kind != "categorical":
            return x
        if x.dtype != jnp.bool_:
            return categorical.to_moments(self.state, x, where)
        if self.state.family == "gaussian" and not independent:
            raise UnsupportedPrimitiveError(
                f"{where}: a detector on categorical site {x.data['site']!r} combined with other "
                "random values: the gaussian family has no joint law of tokens and Gaussian events "
                "(use an independence family, or handlers.sample)"
            )
        p = categorical.expectation(x)
        if not independent:
            self.state.note(f"detector on categorical site {x.data['site']!r}: independence presumption")
        return boolean_law(x.shape, p, where)

    def compose_on_one_base(self, eqn, values, random, where) -> Handle | None:
        """The lazy chain of an elementwise ``eqn`` whose random operands share one base, else None.

        A random operand that the op broadcasts (``tanh(x * w)`` for a scalar ``x`` and a
        vector ``w``) is first broadcast to the output's shape, exactly (an affine map), so a
        chain's base always has the chain's shape (the quadrature rules need one unit per unit).
        """
        out_shape = tuple(eqn.outvars[0].aval.shape)
        if any(tuple(values[i].shape) != out_shape for i in random):
            values = list(values)
            for i in random:
                if tuple(values[i].shape) != out_shape:
                    source = self.moments(values[i], where)
                    values[i] = affine_image(self.state, lambda z: jnp.broadcast_to(z, out_shape), [source],
                                             where, lambda v: jnp.broadcast_to(v, out_shape))
        if len({id(self.base_of(values[i])) for i in random}) != 1:
            return None
        base = self.base_of(values[random[0]])
        new = compose(eqn, values, {i: values[i] for i in random}, base, where)
        if new.data["structure"][0] != "affine" and any(self.needs_gamma_view(values[i]) for i in random):
            values = list(values)
            for i in random:
                if self.needs_gamma_view(values[i]):
                    values[i] = self.gamma_view(values[i], where)
            new = compose(eqn, values, {i: values[i] for i in random}, base, where)
        self.hold(base)
        return new

    def reads_as_gamma(self, h: Handle) -> bool:
        """``h`` is a nonnegative closure that its readers should see through its Gamma law."""
        return self.state.family != "mean" and reads_as_gamma(h)

    def needs_gamma_view(self, h: Handle) -> bool:
        """``h`` is a nonnegative closure, or a chain on one not yet read through its Gamma law."""
        return h.kind in ("moments", "lazy") and not h.data.get("gamma") and \
            self.reads_as_gamma(self.base_of(h))

    def gamma_view(self, h: Handle, where: str) -> Handle:
        """``h`` (a nonnegative closure, or a chain on one) read through the closure's Gamma law."""
        base = self.base_of(h)
        self.state.note(f"{where}: {GAMMA_NOTE}")
        return gamma_chain(h, base, variance_of(self.state, base))

    def base_of(self, h: Handle) -> Handle:
        return h.data["base"] if h.kind == "lazy" else h

    def compare_two_point_laws(self, eqn, values, random, where: str, independent: bool) -> Handle:
        """``a == b``, ``a < b``, ... of two two-point laws: the four value pairs, weighted.

        Exact when ``a`` and ``b`` are independent (different units of a site, or sites);
        presumed (and noted) otherwise.
        """
        a, b = (values[i] for i in random)
        op = bind_with(eqn, values, random)
        p = jnp.zeros(eqn.outvars[0].aval.shape, jnp.result_type(a.data["p"], b.data["p"], float))
        for va, pa in ((a.data["lo"], 1 - a.data["p"]), (a.data["hi"], a.data["p"])):
            for vb, pb in ((b.data["lo"], 1 - b.data["p"]), (b.data["hi"], b.data["p"])):
                p = p + jnp.where(op(va, vb), pa * pb, 0.0)
        if not independent:
            self.state.note(f"{where}: a comparison of two discrete (two-point) values: independence "
                            "presumption (exact for different units or sites)")
        return boolean_law(eqn.outvars[0].aval.shape, p, where)

    def two_point_choice(self, values, random, where: str) -> Handle:
        """``where(b, x, y)`` with a two-point (discrete) ``b``: the mixture of ``y`` and ``x``.

        Its mean ``p E x + (1 - p) E y`` and variance ``p E x^2 + (1 - p) E y^2 - mean^2`` are
        exact when ``b`` is independent of the branches (a gate on another site); in the
        independence families that is presumed, and said.
        """
        b = values[0]
        index_hi = b.data["hi"].astype(jnp.int32)
        p = b.data["p"]
        cases = [self.moments(values[i], where) if i in random else values[i] for i in (1, 2)]
        means = [c.data["mean"] if isinstance(c, Handle) else jnp.asarray(c) for c in cases]
        variances = [variance_of(self.state, c) if isinstance(c, Handle) and self.state.family != "mean"
                     else jnp.zeros_like(jnp.asarray(m, float)) for c, m in zip(cases, means, strict=True)]
        # select_n picks cases[index]: the two-point law is at its hi value with probability p
        p_second = jnp.where(index_hi == 1, p, 1 - p)
        dtype = jnp.result_type(means[0], means[1], float)
        m0, m1 = (jnp.asarray(m, dtype) for m in means)
        mean = (1 - p_second) * m0 + p_second * m1
        new = Handle(jnp.shape(mean), dtype, "moments", {"mean": mean, "closure": True}, where)
        if self.state.family != "mean":
            second = (1 - p_second) * (variances[0] + m0**2) + p_second * (variances[1] + m1**2)
            new.data["var"] = jnp.maximum(second - mean**2, 0.0)
        self.state.note(f"{where}: a choice by a discrete (two-point) value: the mixture of its "
                        "branches, presumed independent of the choice; nonlinearities and thresholds "
                        "downstream read its Gaussian closure")
        return new

    def view_for_later_readers(self, h: Handle, make: Callable[[], Handle]) -> Handle | None:
        """``h``'s forced message as a separate handle while a later equation still reads ``h``
        (made once, by ``make``); None at its last reader.

        Forcing in place turned a lazy chain or a deferred block into its moment-matched
        Gaussian for every later reader too: with ``y = h.sum()`` before ``h[0] > 0.9``
        (``h = tanh(...)``) the threshold was decided on the closure (0.204 for 0.466), and
        ``log(softmax(x)[1])`` after ``p @ V`` read the block's closure (-1.40 for -1.72).
        The view is kept in ``h.data['view']``: ``h`` keeps its base or roots for the
        readers after; the last reader makes the view ``h``'s own message, and a dropped
        ``h`` forgets it.
        """
        if not self.read_later(h):
            return None
        if "view" not in h.data:
            h.data["view"] = make()
        return h.data["view"]

    def read_later(self, h: Handle) -> bool:
        """Whether a later equation (or the report) still reads ``h`` after the current one."""
        return not (h.id in self.ending and self.refs.get(h.id, 0) <= 1)

    def moments(self, h: Handle, where: str) -> Handle:
        if h.kind == "lazy" and not _keeps_its_rule_forced(h):
            view = self.view_for_later_readers(h, lambda: _forced_copy(self.state, h))
            if view is not None:
                return view
            if "view" in h.data:  # its last reader: the view's message becomes the value's own
                view, base = h.data.pop("view"), h.data["base"]
                self.state.become(h, view)
                self.release(base)
                return h
        if h.kind == "lazy":
            base, structure = h.data["base"], h.data["structure"]
            fn = h.data["fn"]
            force(self.state, h)
            if "preimage" in h.data:
                return h  # the lazy handle's hold on ``base`` passes to the preimage
            if structure[0] == "affine" and "preimage" in base.data:
                scale, shift = flat_affine(fn, base.shape, base.data["mean"].dtype)
                h.data["preimage"] = base.data["preimage"].then_affine(scale, shift)
                self.hold(h.data["preimage"].base)
            self.release(base)
            return h
        if h.kind == "moments":
            return h
        if h.kind == "deferred":
            return self.force_deferred(h, where)
        if h.kind == "categorical":
            return self.leave_categorical(h, where)
        if h.kind == "two_point":
            lo, hi, p = h.data["lo"], h.data["hi"], h.data["p"]
            lo, hi = lo.astype(p.dtype), hi.astype(p.dtype)
            h2 = Handle(h.shape, p.dtype, "moments",
                        {"mean": lo + p * (hi - lo), "var": p * (1 - p) * jnp.square(hi - lo),
                         "closure": True}, h.origin)
            return h2
        raise UnsupportedPrimitiveError(f"{where}: a {h.kind} value cannot be used as a number here")

    # --- ReLU preimages (see _thresholds) ------------------------------------------------
    def carry_preimage(self, eqn, values, random, out: Handle, index: np.ndarray | None) -> None:
        """Let a data-movement primitive carry its operand's ReLU preimage to ``out``.

        ``index``: :func:`moved_units` of the equation (``None`` when it is not pure data movement).
        """
        if len(random) != 1 or (eqn.primitive.name not in STRUCTURAL and index is None):
            return
        source = values[random[0]]
        if "preimage" not in source.data:
            return
        if index is None:  # say why, where the user could have kept it
            constants = set(range(len(values))) - set(random)
            if not constants <= set(self._index_ops(eqn)):
                # e.g. concatenated with constants: those units have no preimage
                self.state.note(PREIMAGE_LOST.format(where=describe(eqn), why="it mixes in constant values"))
            elif any(isinstance(values[i], jax.core.Tracer) for i in constants):
                # indices computed from traced arguments: not known while tracing
                self.state.note(PREIMAGE_LOST.format(where=describe(eqn), why="its indices are traced"))
            return
        out.data["preimage"] = source.data["preimage"].select(index)
        self.hold(out.data["preimage"].base)

    def carry_joint_preimage(self, move, operands: list[Handle], out: Handle, where: str) -> None:
        """ReLU preimages through data movement of several values (``jnp.stack([relu(a), relu(b)])``).

        The preimages' bases become one message (their concatenation, cross-covariances
        included) and each output unit points into it. Nothing is carried unless every
        operand has a preimage.
        """
        preimages = [h.data.get("preimage") for h in operands]
        if any(p is None for p in preimages):
            if any(p is not None for p in preimages):
                why = "it joins ReLU units with other values"
                self.state.note(PREIMAGE_LOST.format(where=where, why=why))
            return
        bases = list({id(p.base): p.base for p in preimages}.values())
        if len(bases) == 1:
            base = bases[0]
            self.hold(base)
        else:
            flat = [self.moments(b, where) for b in bases]

            def join(*zs):
                return jnp.concatenate([jnp.reshape(z, (-1,)) for z in zs])

            base = affine_image(self.state, join, flat, where, join)
            self.refs[base.id] = 1  # held by the preimage
        offsets = dict(zip((id(b) for b in bases), np.cumsum([0] + [b.size for b in bases]), strict=False))
        joined = ReluPreimage(
            base, np.concatenate([offsets[id(p.base)] + p.index for p in preimages]),
            *(jnp.concatenate([jnp.reshape(getattr(p, f), (-1,)) for p in preimages])
              for f in ("pre_scale", "pre_shift", "post_scale", "post_shift")))
        out.data["preimage"] = joined.select(joint_moved_units(move, operands))

    def preimage_of(self, h: Handle) -> ReluPreimage | None:
        """``h`` as ``post(relu(pre(base)))`` per unit, if it is one (else ``None``)."""
        if h.kind == "moments":
            return h.data.get("preimage")
        if h.kind != "lazy":
            return None
        base, structure = h.data["base"], h.data["structure"]
        if structure[0] == "closed" and structure[2] == "relu" and "preimage" not in base.data:
            return relu_preimage(base, structure[1], structure[3])
        if structure[0] == "affine" and "preimage" in base.data:
            scale, shift = flat_affine(h.data["fn"], base.shape, base.data["mean"].dtype)
            return base.data["preimage"].then_affine(scale, shift)
        return None

    def compare_preimage(self, eqn, values, position: int, pre: ReluPreimage, where: str) -> Handle:
        """``relu``-output ``>``/``<`` constant, decided on the Gaussian pre-activation."""
        name = eqn.primitive.name
        shape = eqn.outvars[0].aval.shape
        h = values[position]
        sign = COMPARISONS[name] * (1 if position == 0 else -1)
        dtype = pre.base.data["mean"].dtype
        units = np.broadcast_to(np.arange(h.size).reshape(h.shape), shape).ravel()
        pre = pre.select(units)
        threshold = jnp.reshape(jnp.broadcast_to(jnp.asarray(values[1 - position], dtype), shape), (-1,))
        self.note_closure(pre.base, where)
        fn, var_fn = threshold_margin(pre, threshold, sign, strict=name in ("gt", "lt"))
        m = affine_image(self.state, lambda z: jnp.reshape(fn(z), shape), [pre.base], where,
                         lambda v: jnp.reshape(var_fn(v), shape))
        return self.margin_event(m, 1, shape, where)

    def compare_monotone(self, eqn, values, position: int, h: Handle, where: str) -> Handle:
        """``f(z) > t`` for a monotone elementwise chain ``f``: ``z > f^-1(t)`` on the Gaussian base."""
        name = eqn.primitive.name
        shape = eqn.outvars[0].aval.shape
        base, fn, direction = h.data["base"], h.data["fn"], h.data["monotone"]
        base = self.moments(base, where)
        self.note_closure(base, where)
        threshold = jnp.broadcast_to(jnp.asarray(values[1 - position], base.data["mean"].dtype), shape)
        crossing = monotone_crossing(fn, threshold, direction, base.data["mean"],
                                     variance_of(self.state, base))
        # f(z) > t  <=>  z > crossing (direction > 0) or z < crossing (direction < 0), per unit
        sign = COMPARISONS[name] * (1 if position == 0 else -1) * direction
        m = affine_image(self.state, lambda z: z - crossing, [base], where, lambda v: v)
        m.data["shift"] = events.shift_of(base, 1, crossing)
        self.state.note(f"{where}: a comparison of a monotone elementwise function, decided on its "
                        "Gaussian input by inverting the threshold")
        return self.margin_event(m, sign, shape, where)

    def compare_level_set(self, eqn, values, position: int, h: Handle, where: str) -> Handle:
        """``f(z) > t`` for a non-monotone elementwise chain: a union of intervals of the Gaussian ``z``.

        Also ``f(z) == t`` / ``!=``, which has probability only where ``f`` is flat at ``t`` (a
        staircase: ``round(3 y) == 2``); for a continuous ``f`` it is 0 (no interval).
        """
        name = eqn.primitive.name
        shape = eqn.outvars[0].aval.shape
        fn = h.data["fn"]
        base = self.moments(h.data["base"], where)
        self.note_closure(base, where)
        mean, var = base.data["mean"], variance_of(self.state, base)
        threshold = jnp.broadcast_to(jnp.asarray(values[1 - position], mean.dtype), shape)
        if name in ("eq", "ne"):  # f == t as -|f - t| >= 0: intervals where a staircase sits at t
            fn = lambda z, f=fn, t=threshold: -jnp.abs(f(z) - t)  # noqa: E731
            threshold = jnp.zeros_like(threshold)
            sign, strict = (1, False) if name == "eq" else (-1, True)
        else:
            sign = COMPARISONS[name] * (1 if position == 0 else -1)
            strict = name in ("gt", "lt")
        margin = sign * (fn(mean) - threshold)
        at_mean = margin > 0 if strict else margin >= 0
        if self.state.family == "mean":  # the base is a point
            return boolean_law(shape, at_mean.astype(mean.dtype), where)
        lower, upper, dropped = level_set_intervals(fn, threshold, sign, mean, var, strict=strict)
        self.state.record("level_set_dropped_intervals", dropped)
        self.state.note(f"{where}: a comparison of a non-monotone elementwise function, decided on its "
                        f"Gaussian input as up to {LEVEL_SET_SLOTS} intervals per unit "
                        "(diagnostics['level_set_dropped_intervals'] counts any beyond)")
        if self.state.family == "gaussian":
            union = None
            for k in range(LEVEL_SET_SLOTS):
                above = affine_image(self.state, lambda z, c=lower[k]: z - c, [base], where, lambda v: v)
                below = affine_image(self.state, lambda z, c=upper[k]: z - c, [base], where, lambda v: v)
                above.data["shift"] = events.shift_of(base, 1, lower[k])
                below.data["shift"] = events.shift_of(base, 1, upper[k])
                lower_event = self.margin_event(above, 1, shape, where).data["events"]
                upper_event = self.margin_event(below, -1, shape, where).data["events"]
                inside = events.elementwise(events.dnf_and, lower_event, upper_event, where)
                union = inside if union is None else events.elementwise(events.dnf_or, union, inside, where)
            return Handle(shape, jnp.bool_, "events", {"events": union}, where)
        return boolean_law(shape, interval_probability(lower, upper, mean, var, at_mean), where)

    # --- rules --------------------------------------------------------------------------
    def product(self, a: Handle, b: Handle, where: str) -> Handle:
        """Elementwise product of two random values: exact mean; Isserlis for covariances."""
        state = self.state
        if a.shape != b.shape:
            raise UnsupportedPrimitiveError(f"{where}: product of random values of different shapes")
        ma, mb = a.data["mean"], b.data["mean"]
        if state.family == "gaussian":
            cab = state.get_cov(a, b)
            mean = ma * mb + jnp.reshape(jnp.diagonal(cab), a.shape)
            h = Handle(a.shape, mean.dtype, "moments", {"mean": mean, "closure": True}, where)
            fa, fb = jnp.reshape(ma, (-1, 1)), jnp.reshape(mb, (-1, 1))
            for u in list(state.active.values()):
                state.set_cov(h, u, fa * state.get_cov(b, u) + fb * state.get_cov(a, u))
            caa, cbb = state.get_cov(a, a), state.get_cov(b, b)
            own = (fa * fa.T * cbb + fa * fb.T * cab.T + fb * fa.T * cab + fb * fb.T * caa
                   + caa * cbb + cab * cab.T)
            state.set_cov(h, h, own)
            state.activate(h)
            return h
        if state.family == "diagonal":
            va, vb = variance_of(state, a), variance_of(state, b)
            state.note("products of random values: independence presumption")
            return Handle(a.shape, ma.dtype, "moments",
                          {"mean": ma * mb, "var": va * vb + va * mb**2 + vb * ma**2, "closure": True}, where)
        return Handle(a.shape, ma.dtype, "moments", {"mean": ma * mb}, where)

    def margin(self, eqn, values, random, where) -> tuple[Handle, int]:
        """``x - t`` (or ``x - y``) as a Gaussian handle, with the comparison's sign."""
        name = eqn.primitive.name
        sign = COMPARISONS[name]
        vals = [self.moments(x, where) if isinstance(x, Handle) else x for x in values]
        inputs = [vals[i] for i in random]
        shape = eqn.outvars[0].aval.shape
        dtype = inputs[0].data["mean"].dtype

        def diff(*xs):
            operands = list(vals)
            for pos, x in zip(random, xs, strict=True):
                operands[pos] = x
            lhs = jnp.broadcast_to(jnp.asarray(operands[0], dtype), shape)
            rhs = jnp.broadcast_to(jnp.asarray(operands[1], dtype), shape)
            return lhs - rhs

        def var_fn(*vs):
            out = jnp.zeros(shape, dtype)
            for v in vs:
                out = out + jnp.broadcast_to(v, shape)
            return out

        m = affine_image(self.state, diff, inputs, where, var_fn)
        source = inputs[0]
        if len(random) == 1 and tuple(source.shape) == tuple(shape):  # x - t or t - x, unit by unit
            constant = jnp.broadcast_to(jnp.asarray(vals[1 - random[0]], dtype), shape)
            m.data["shift"] = events.shift_of(source, 1 if random[0] == 0 else -1, constant)
        return m, sign

    def compare(self, eqn, values, random, where) -> Handle:
        name = eqn.primitive.name
        shape = eqn.outvars[0].aval.shape
        if name in ("eq", "ne") and len(random) == 1 and level_set_chain(values[random[0]], shape):
            return self.compare_level_set(eqn, values, random[0], values[random[0]], where)  # round(y) == 2
        if name in ("eq", "ne"):
            raise UnsupportedPrimitiveError(
                f"{where}: {name!r} of random real values has no rule (a continuous value equals a "
                "constant or another with probability 0; a staircase equals a constant on intervals, "
                "which is supported, but two staircases, round(x0) == round(x1), need their joint "
                "law); compare with a threshold instead (values of a discrete site can be compared "
                "exactly while each unit reads one token, or two different tokens, of one site; "
                "jnp.remainder and jnp.mod emit such a test: use jax.lax.rem for a random dividend)"
            )
        if len(random) == 1 and self.needs_gamma_view(values[random[0]]):
            values = list(values)
            values[random[0]] = self.gamma_view(values[random[0]], where)
        if len(random) == 1 and level_set_chain(values[random[0]], shape) and \
                self.preimage_of(values[random[0]].data["base"]) is not None:
            # f(relu(z)[i]) > t: the chain on the ReLU unit, re-based on its pre-activation (exact)
            chain = self.chain_through_preimage(values[random[0]], where)
            return self.compare_level_set(eqn, values, random[0], chain, where)
        if len(random) == 1:
            pre = self.preimage_of(values[random[0]])
            if pre is not None:
                return self.compare_preimage(eqn, values, random[0], pre, where)
            if monotone_chain(values[random[0]], shape):
                return self.compare_monotone(eqn, values, random[0], values[random[0]], where)
            if level_set_chain(values[random[0]], shape):
                return self.compare_level_set(eqn, values, random[0], values[random[0]], where)
        m, sign = self.margin(eqn, values, random, where)
        self.note_closure(m, where)
        return self.margin_event(m, sign, shape, where, independent=len(random) > 1)

    def chain_through_preimage(self, h: Handle, where: str) -> Handle:
        """A chain ``f(v)`` on a ReLU output ``v = post(relu(pre(z[index])))`` as a chain on the units of
        the Gaussian ``z`` (``tanh(s * relu(z)[2]) > t``, where the ReLU chain was forced by the slice).
        Its direction is not needed: :meth:`compare_level_set` decides it as intervals of ``z``."""
        pre = self.preimage_of(h.data["base"])
        index, shape = pre.index, tuple(h.shape)
        def gather(z):
            return jnp.reshape(jnp.reshape(z, (-1,))[index], shape)

        units = affine_image(self.state, gather, [pre.base], where, gather)
        fn = h.data["fn"]

        def through(u):  # u: units of z, the chain's shape
            relu = jax.nn.relu(pre.pre_scale.reshape(shape) * u + pre.pre_shift.reshape(shape))
            return fn(pre.post_scale.reshape(shape) * relu + pre.post_shift.reshape(shape))

        return Handle(h.shape, h.dtype, "lazy", {"base": units, "fn": through, "structure": ("generic",),
                                                 "monotone": 0, "jumps": (), "soft": ()}, where)

    def note_closure(self, h: Handle, where: str) -> None:
        """Say so when a comparison is decided on a moment-matched Gaussian of a non-Gaussian value."""
        if h.data.get("closure") and self.state.family != "mean" and not self.reads_as_gamma(h):
            self.state.note(f"{where}: decided on the Gaussian closure (moment matching) of a non-Gaussian "
                            "value; its tail probabilities can be far off (check rare events with "
                            "handlers.importance)")

    def margin_event(self, m: Handle, sign: int, shape, where: str, independent: bool = False) -> Handle:
        """The boolean ``sign * m > 0`` per unit: events (gaussian) or two-point laws."""
        state = self.state
        if state.family == "gaussian":
            state.activate(m)
            self.margins[m.id] = m
            self.hold(m)
            return Handle(shape, jnp.bool_, "events", {"events": events.literal_events(m, sign)}, where)
        mean = sign * m.data["mean"]
        if state.family == "mean":
            p = (mean > 0).astype(mean.dtype)
        else:
            std = jnp.sqrt(m.data["var"])
            p = jnp.where(std > 0, jax.scipy.special.ndtr(mean / jnp.where(std > 0, std, 1)),
                          (mean > 0).astype(mean.dtype))
            if independent:
                state.note("comparison of two random values: independence presumption")
        return boolean_law(shape, p, where)

    def discrete(self, eqn, values, random, where, independent: bool = False) -> Handle:
        """Rules for booleans (events / two-point laws) and argmax comparisons.

        ``independent``: the operands are known to be independent (no presumption).
        """
        name = eqn.primitive.name
        aval = eqn.outvars[0].aval
        kinds = {values[i].kind for i in random}
        if "argmax" in kinds:
            return self.argmax_event(eqn, values, random, where)
        if "events" in kinds:
            return self.events_rule(eqn, values, random, where)
        # independence families: two-point laws
        if len(random) == 1 and (is_elementwise(eqn) or name in COMPARISONS or name in ("eq", "ne")):
            h = values[random[0]]
            lo = bind_with(eqn, values, random)(h.data["lo"])
            hi = bind_with(eqn, values, random)(h.data["hi"])
            return Handle(aval.shape, aval.dtype, "two_point", {"lo": lo, "hi": hi, "p": h.data["p"]}, where)
        if (len(random) == 2 and aval.dtype == jnp.bool_ and (name in COMPARISONS or name in ("eq", "ne"))
                and all(values[i].kind == "two_point" for i in random)):
            return self.compare_two_point_laws(eqn, values, random, where, independent)
        if aval.dtype == jnp.bool_ and name in ("and", "or", "reduce_and", "reduce_or", "not", "reduce_max",
                                                 "reduce_min"):
            p = [self.probability_true(x) for x in values]
            if not independent and name != "not":
                self.state.note("and/or/all/any: independence presumption")
            if name == "not":
                q = 1 - p[0]
            elif name == "and":
                q = p[0] * p[1]
            elif name == "or":  # 1 - (1 - a)(1 - b) without the cancellation that zeroes 1e-8 in float32
                q = p[0] + p[1] - p[0] * p[1]
            elif name in ("reduce_and", "reduce_min"):
                q = jnp.prod(p[0], axis=eqn.params["axes"])
            else:
                q = -jnp.expm1(jnp.sum(jnp.log1p(-p[0]), axis=eqn.params["axes"]))
            return boolean_law(aval.shape, q, where)
        if name in STRUCTURAL:
            fields = {}
            for field in ("lo", "hi", "p"):
                operands = [
                    x.data[field] if isinstance(x, Handle)
                    else (jnp.zeros(jnp.shape(x), float) if field == "p" and i not in self._index_ops(eqn)
                          else x)
                    for i, x in enumerate(values)
                ]
                if field == "p":
                    operands = [jnp.asarray(o, float) if i in random or i not in self._index_ops(eqn)
                                else o for i, o in enumerate(operands)]
                    sub = eqn.replace(params={**eqn.params, "new_dtype": jnp.dtype(float)}) \
                        if name == "convert_element_type" else eqn
                    fields[field] = bind_with(sub, operands, [])()
                else:
                    fields[field] = bind_with(eqn, operands, [])()
            return Handle(aval.shape, aval.dtype, "two_point", fields, where)
        values = [self.moments(x, where) if isinstance(x, Handle) else x for x in values]
        return self.apply(eqn, values)[0]

    @staticmethod
    def probability_true(x):
        """P[unit is True] of a boolean two-point law (or a constant)."""
        if not isinstance(x, Handle):
            return jnp.asarray(x, float)
        lo, hi, p = (x.data[k] for k in ("lo", "hi", "p"))
        return jnp.where(hi, p, 0.0) + jnp.where(lo, 1 - p, 0.0)

    @staticmethod
    def _index_ops(eqn) -> tuple:
        from ._linear import index_positions

        return index_positions(eqn.primitive.name, len(eqn.invars))

    def events_rule(self, eqn, values, random, where) -> Handle:
        name = eqn.primitive.name
        aval = eqn.outvars[0].aval
        if any(isinstance(x, Handle) and x.kind != "events" for x in values):
            raise UnsupportedPrimitiveError(
                f"{where}: {name!r} chooses between random real values by a random predicate "
                "(jnp.where(x0 > x1, a, b), or jnp.where(event, x, y) where the event is also "
                "reported): a choice is a rule only when its predicate compares the one input that the "
                "branches are elementwise functions of (jnp.where(y > 0, y, 0.1 * y)); any other random "
                "choice makes a mixture, which the gaussian family does not propagate (the diagonal "
                "family presumes the choice independent of the branches); estimate this model with "
                "handlers.sample or handlers.importance"
            )
        arrays = [x.data["events"] if isinstance(x, Handle) and x.kind == "events"
                  else events.constant_events(x) for x in values]
        if name == "and":
            out = events.elementwise(events.dnf_and, arrays[0], arrays[1], where)
        elif name == "or":
            out = events.elementwise(events.dnf_or, arrays[0], arrays[1], where)
        elif name == "not":
            out = events.elementwise(events.dnf_not, arrays[0], None, where)
        elif name in ("reduce_and", "reduce_min"):
            out = events.reduce(events.dnf_and, arrays[0], eqn.params["axes"], where)
        elif name in ("reduce_or", "reduce_max"):
            out = events.reduce(events.dnf_or, arrays[0], eqn.params["axes"], where)
        elif name in STRUCTURAL and aval.dtype == jnp.bool_:
            out = self._restructure(eqn, values, arrays)
        else:
            raise UnsupportedPrimitiveError(
                f"{where}: no rule for {name!r} of a detector event under family 'gaussian' "
                "(events combine with and/or/not/all/any and structural ops; a comparison turned "
                "into a number -- a count, or the index of a jax.lax.cond -- has none)"
            )
        return Handle(aval.shape, aval.dtype, "events", {"events": out}, where)

    def _restructure(self, eqn, values, arrays) -> np.ndarray:
        """Apply a data-movement primitive to object arrays via unit indices."""
        index_ops = self._index_ops(eqn)
        pool, operands, offset = [], [], 0
        for i, (x, arr) in enumerate(zip(values, arrays, strict=True)):
            if i in index_ops:
                operands.append(x)
                continue
            pool.extend(arr.ravel().tolist())
            operands.append(np.arange(offset, offset + arr.size, dtype=np.int32).reshape(arr.shape))
            offset += arr.size
        sub = eqn
        if eqn.primitive.name == "convert_element_type":
            return arrays[0]
        with jax.ensure_compile_time_eval():  # unit indices are constants, even inside jit
            ids = np.asarray(bind_with(sub, operands, [])())
        out = np.empty(ids.shape, dtype=object)
        for idx in np.ndindex(*ids.shape):
            out[idx] = pool[int(ids[idx])]
        return out

    def argmax_event(self, eqn, values, random, where) -> Handle:
        name = eqn.primitive.name
        if name not in ("eq", "ne") or len(random) != 1:
            raise UnsupportedPrimitiveError(
                f"{where}: an argmax can only be compared for equality with a constant class"
            )
        h = values[random[0]]
        k = int(np.asarray(values[1 - random[0]]))
        source, axis, sign = h.data["source"], h.data["axis"], h.data["sign"]
        self.note_closure(source, where)  # argmax == k is a polytope of the source's units
        if len(source.shape) != 1 or axis != 0:
            raise UnsupportedPrimitiveError(f"{where}: argmax == k is supported for vectors only")
        n = source.shape[0]
        others = [j for j in range(n) if j != k]
        state = self.state
        if state.family == "gaussian":
            sel = jnp.asarray(others)
            m = affine_image(state, lambda x: sign * (x[k] - x[sel]), [source], where)
            state.activate(m)
            self.margins[m.id] = m
            self.hold(m)
            dnf = (tuple((m.id, i, 1) for i in range(len(others))),)
            ev = np.empty((), dtype=object)
            ev[()] = dnf if name == "eq" else events.dnf_not(dnf, where)
            return Handle((), jnp.bool_, "events", {"events": ev}, where)
        mean = sign * source.data["mean"]
        if state.family == "mean":
            p = (jnp.argmax(mean) == k).astype(mean.dtype)
        else:
            from ppl_mech.rules.gauss_hermite import gauss_hermite_rule

            std = jnp.sqrt(jnp.maximum(variance_of(state, source), 1e-30))
            nodes, weights = gauss_hermite_rule(64, mean.dtype)
            z = mean[k] + std[k] * nodes
            sel = jnp.asarray(others)
            cdf = jax.scipy.special.ndtr((z[:, None] - mean[sel][None, :]) / std[sel][None, :])
            p = jnp.sum(weights * jnp.prod(cdf, axis=1))
            state.note("argmax == k: independence presumption")
        p = p if name == "eq" else 1 - p
        return boolean_law((), p, where)

    # --- outputs -------------------------------------------------------------------------
    def output(self, value, where: str) -> dict[str, Any]:
        """``{'value', 'stderr', 'variance'?}`` for one output of the program."""
        if not isinstance(value, Handle):
            v = jnp.asarray(value)
            return {"value": v.astype(float) if v.dtype == jnp.bool_ else v, "stderr": jnp.zeros(v.shape)}
        if value.kind in ("lazy", "deferred"):
            self.ending = {value.id}  # reported: no equation reads it any more
            self.moments(value, where)
        if value.kind == "categorical":
            mean = categorical.expectation(value)
            out = {"value": mean, "stderr": jnp.zeros(value.shape)}
            if value.dtype != jnp.bool_ and self.state.family != "mean":
                out["variance"] = jnp.reshape(jnp.diagonal(categorical.covariance(value, value)), value.shape)
            return out
        if value.kind == "moments":
            var = variance_of(self.state, value) if self.state.family != "mean" else None
            out = {"value": value.data["mean"], "stderr": jnp.zeros(value.shape)}
            if var is not None:
                out["variance"] = var
            return out
        if value.kind == "two_point":
            lo, hi, p = (value.data[k] for k in ("lo", "hi", "p"))
            lo, hi = lo.astype(p.dtype), hi.astype(p.dtype)
            return {"value": lo + p * (hi - lo), "stderr": jnp.zeros(value.shape)}
        if value.kind == "events":
            return self.event_probabilities(value)
        if value.kind in ("argmax", "dropped-argmax"):
            raise UnsupportedPrimitiveError(
                f"{where}: the index of a random argmax/argmin has no expectation rule in the "
                f"{self.state.family} family; report an event of it instead (jnp.argmax(o) == k, "
                "decided exactly as a polytope), or estimate it with handlers.sample"
            )
        raise UnsupportedPrimitiveError(f"{where}: cannot report a {value.kind} value")

    def event_probabilities(self, h: Handle) -> dict[str, Any]:
        arr = h.data["events"]
        flat = arr.ravel()
        single = all(len(d) == 1 and len(d[0]) == 1 for d in flat)
        if single and flat.size:
            ids = {d[0][0][0] for d in flat}
            if len(ids) == 1:
                m = self.margins[ids.pop()]
                idx = jnp.asarray([d[0][0][1] for d in flat])
                sign = jnp.asarray([d[0][0][2] for d in flat], m.data["mean"].dtype)
                mean = jnp.reshape(m.data["mean"], (-1,))[idx] * sign
                std = jnp.sqrt(jnp.diagonal(self.state.get_cov(m, m))[idx])
                p = jnp.where(std > 0, jax.scipy.special.ndtr(mean / jnp.where(std > 0, std, 1)),
                              (mean > 0).astype(mean.dtype))
                return {"value": jnp.reshape(p, h.shape), "stderr": jnp.zeros(h.shape)}
        values, errors = [], []
        for i, dnf in enumerate(flat):
            key = jax.random.fold_in(self.key, i)
            p, se = events.probability(self.state, dnf, self.margins, key=key,
                                       num_samples=self.num_samples)
            values.append(p)
            errors.append(se)
        return {"value": jnp.reshape(jnp.stack(values), h.shape),
                "stderr": jnp.reshape(jnp.stack(errors), h.shape)}
