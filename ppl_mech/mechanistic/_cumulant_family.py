"""The ``cumulant`` family: walk the jaxpr with cumulant messages of order K (1..4).

After ARC, *Estimating the expected output of wide random MLPs more efficiently than
sampling* (see ``docs/cumulant_propagation.md`` and :mod:`ppl_mech.cumulants`). All latent
sites (Gaussian) form one input *message*: the joint cumulants of a flat vector of units.
A random value of the program is then one of

* ``affine``: ``fn(u)`` for the units ``u`` of one message, ``fn`` affine, composed from
  the linear equations met so far (``dot_general`` with a constant matrix, adds of
  constants, reshapes, slices, ...). Two affine values of the *same* message combine
  exactly (``x[:n] + x[n:]``); values of different messages (e.g. a residual connection
  around a nonlinearity) have unknown joint cumulants and raise an error.
* ``lazy``: an elementwise chain ``f(base)`` of one affine value (``relu`` is ``max(z, 0)``,
  ``gelu`` traces to erf or tanh arithmetic), fused into one scalar function, exactly as
  the other families do (:func:`ppl_mech.mechanistic._elementwise.compose`).

A value is *materialised* into a message when something needs its cumulants: an
elementwise chain meets a non-elementwise equation (the chain's base is mapped through
its affine ``fn`` -- :func:`ppl_mech.cumulants.linear_map`, the JVP applied to every
cumulant leg -- and then through :func:`ppl_mech.cumulants.elementwise`, ReLU by closed
forms, anything else by Gauss–Hermite quadrature), or an output site is reported (mean
and covariance only). At K = 1 (variances only) the variance image is composed equation
by equation, as the ``diagonal`` family does.

A *threshold detector* ``y > t`` (``>=``, ``<``, ``<=``; ``t`` not random) of a random
value is reported as ``P[y_i > t_i]`` per unit from that unit's own cumulants ``k1..kK``
(:func:`ppl_mech.cumulants.marginal_cumulants`): the exact normal tail for K <= 2, the
Lugannani-Rice saddlepoint of the polynomial CGF for K = 3, 4
(:func:`ppl_mech.tails.saddlepoint_tail_from_cumulants`). The diagnostics carry its
``log_probability`` (no underflow below 1e-38) and ``tail_status`` (0: no problem; see
:mod:`ppl_mech.tails` for the flags, e.g. cumulants that no distribution has). A threshold
is a 1-D tail: combining detectors (``&``, ``all``, ``any``) is refused with an error
naming the primitive -- the ``gaussian`` family handles conjunctions.

Everything is pure JAX on the traced program: it runs under ``jax.jit`` and ``jax.grad``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.extend.core import Literal

from ppl_mech import cumulants
from ppl_mech._bind import bind_eqn
from ppl_mech._capture import LatentSite, live_equation_indices
from ppl_mech._errors import UnsupportedDistributionError, UnsupportedPrimitiveError

from ._data_movement import movable_chain_units, rebased_chain
from ._elementwise import (
    CLOSURE_INPUT_NOTE,
    STAIRS_NOTE,
    _affine_of,
    compose,
    is_elementwise,
    level_set_chain,
    monotone_chain,
    monotone_crossing,
    quadrature_rule,
)
from ._inputs import _full_covariance, _unwrap
from ._interpreter import CALL_JAXPR_PARAMS, COMPARISONS, describe, inside_call
from ._level_sets import SLOTS as LEVEL_SET_SLOTS
from ._level_sets import interval_probability, level_set_intervals
from ._linear import LINEAR_PRIMITIVES, bind_with, check_affine, variance_image
from ._notes import NoteBook
from ._predicates import BOOLEAN_COMBINERS, predicate_only_vars, same_shape
from ._program import mechanized_program
from ._state import Handle


@dataclasses.dataclass
class Threshold:
    """A detector ``y > t`` (``upper``) or ``y < t`` per unit of a random value ``y``."""

    handle: Handle
    threshold: Any
    upper: bool
    shape: tuple[int, ...]
    probability: Any = None  # decided exactly already (intervals of a Gaussian base)
    dropped_intervals: Any = None  # with ``probability``: intervals beyond the slots, per unit at most


COMBINED_DETECTOR_ERROR = (
    "the cumulant family reports P[y > t] of a threshold per unit (a 1-D saddlepoint tail "
    "from that unit's cumulants); combining or transforming detectors has no rule here: use "
    "family='gaussian' for conjunctions and other events"
)
PASS_THROUGH = {"convert_element_type", "copy", "copy_p"}

ORDERS = cumulants.ORDERS
DEFAULT_ORDER = 3
DETECTOR_ERROR = (
    "use family='gaussian' for such detectors, or pass sites=[...] naming other sites"
)


def check_order(order) -> int:
    """Validate the cumulant order K (an int in 1..4)."""
    if isinstance(order, bool) or not isinstance(order, int) or order not in ORDERS:
        raise ValueError(f"family='cumulant' needs order in {ORDERS} (an int), got order={order!r}")
    return order


class Node:
    """One materialised message: the joint cumulants of a flat vector of units.

    ``nonlinear``: the message came out of a nonlinear step (so it is not Gaussian, and at
    order <= 2 the next nonlinearity reads its Gaussian closure).
    """

    __slots__ = ("message", "nonlinear")

    def __init__(self, message: cumulants.CumulantMessage, nonlinear: bool = False):
        self.message = message
        self.nonlinear = nonlinear


def _affine(node: Node, shape, dtype, fn, var_fn, origin: str, identity: bool = False) -> Handle:
    return Handle(shape, dtype, "affine",
                  {"node": node, "fn": fn, "var_fn": var_fn, "identity": identity}, origin)


def _reshaper(shape):
    return lambda u: jnp.reshape(u, shape)


def _live_equations(jaxpr) -> list:
    """``(index, equation)`` of the equations that the outputs depend on (dead code, e.g. an
    unrequested detector, is skipped so that it cannot raise)."""
    return [(i, jaxpr.eqns[i]) for i in live_equation_indices(jaxpr)]


class CumulantInterpreter:
    def __init__(self, order: int):
        self.order = check_order(order)
        self.notebook = NoteBook()
        self.predicate_only: set = set()

    def note(self, text: str, at=None) -> None:
        """Record an approximation, made here or (``at``) where the value it concerns was made."""
        self.notebook.add(text, at)

    # --- inputs ---------------------------------------------------------------------------
    def inputs(self, latents: dict[str, LatentSite]) -> list[Handle]:
        """One joint Gaussian message for all latent sites; each site an affine view of it."""
        means, covs, variances, sizes = [], [], [], []
        for site in latents.values():
            mean, cov, var = self._site_gaussian(site)
            means.append(mean)
            covs.append(cov)
            variances.append(var)
            sizes.append(mean.size)
        dtype = jnp.result_type(*means)
        mean = jnp.concatenate([m.astype(dtype) for m in means])
        if self.order == 1:
            second = jnp.concatenate([v.astype(dtype) for v in variances])
        else:
            second = jax.scipy.linalg.block_diag(*[c.astype(dtype) for c in covs])
        node = Node(cumulants.gaussian_input(mean, second, self.order))
        handles, offset = [], 0
        for site, size in zip(latents.values(), sizes, strict=True):
            lo, hi, shape = offset, offset + size, site.shape

            def view(u, lo=lo, hi=hi, shape=shape):
                return jnp.reshape(u[lo:hi], shape)

            handles.append(_affine(node, shape, dtype, view, view, f"site {site.name!r}",
                                   identity=len(latents) == 1))
            offset = hi
        return handles

    def _site_gaussian(self, site: LatentSite):
        fn, shape = site.distribution, site.shape
        base = _unwrap(fn)
        if isinstance(base, dist.Normal):
            mean = jnp.broadcast_to(jnp.asarray(fn.mean, jnp.result_type(float)), shape)
            var = jnp.broadcast_to(fn.variance, shape).reshape(-1)
            return mean.reshape(-1), (jnp.diag(var) if self.order > 1 else None), var
        if isinstance(base, dist.MultivariateNormal | dist.LowRankMultivariateNormal):
            if isinstance(fn, dist.Independent):
                raise UnsupportedDistributionError(
                    f"site {site.name!r}: a multivariate normal with extra event dimensions "
                    "(to_event on top) is not supported; reshape the model"
                )
            mean = jnp.broadcast_to(jnp.asarray(fn.mean, jnp.result_type(float)), shape).reshape(-1)
            var = jnp.broadcast_to(fn.variance, shape).reshape(-1)
            if self.order == 1:
                self.note(f"site {site.name!r}: correlations between units dropped (order 1 "
                          "keeps variances only)")
                return mean, None, var
            return mean, _full_covariance(base.covariance_matrix, shape), var
        raise UnsupportedDistributionError(
            f"site {site.name!r}: family='cumulant' needs Gaussian inputs (Normal, "
            f"MultivariateNormal, LowRankMultivariateNormal), got {type(base).__name__}; "
            "family='gaussian' or 'diagonal' moment-match the inputs they have messages for (Uniform, "
            "Bernoulli, Categorical, ...; not every distribution), and handlers.sample or "
            "handlers.importance take any"
        )

    # --- the walk -------------------------------------------------------------------------
    def run(self, jaxpr, consts, args, *, top_level: bool = False) -> list:
        env: dict[Any, Any] = {}
        self.predicate_only |= predicate_only_vars(jaxpr, CALL_JAXPR_PARAMS)
        for var, value in zip(jaxpr.constvars, consts, strict=True):
            env[var] = value
        for var, value in zip(jaxpr.invars, args, strict=True):
            env[var] = value

        def read(v):
            return v.val if isinstance(v, Literal) else env[v]

        for i, eqn in _live_equations(jaxpr):
            values = [read(v) for v in eqn.invars]
            if top_level:
                self.notebook.at = i
            if not any(isinstance(x, Handle | Threshold) for x in values):
                if any(isinstance(x, jax.core.Tracer) for x in values):
                    outs = bind_eqn(eqn, values)
                else:  # constants stay concrete: a slope passed into jax.nn.leaky_relu keeps its sign
                    with jax.ensure_compile_time_eval():
                        outs = bind_eqn(eqn, values)
            elif eqn.primitive.name in CALL_JAXPR_PARAMS:
                inner = eqn.params[CALL_JAXPR_PARAMS[eqn.primitive.name]]
                sub, sub_consts = (inner.jaxpr, inner.consts) if hasattr(inner, "jaxpr") else (inner, [])
                if len(sub.invars) != len(values):
                    raise UnsupportedPrimitiveError(
                        f"{describe(eqn)}: its sub-jaxpr takes {len(sub.invars)} operands, got "
                        f"{len(values)}"
                    )
                with inside_call(eqn):
                    outs = self.run(sub, sub_consts, values)
            else:
                outs = [self.apply(eqn, values)]
            for var, value in zip(eqn.outvars, outs, strict=True):
                if top_level and isinstance(value, Handle) and value.at is None:
                    value.at = i
                env[var] = value
        return [read(v) for v in jaxpr.outvars]

    def apply(self, eqn, values: list) -> Handle:
        name = eqn.primitive.name
        where = describe(eqn)
        random = [i for i, x in enumerate(values) if isinstance(x, Handle)]
        aval = eqn.outvars[0].aval
        if eqn.primitive.multiple_results:
            raise UnsupportedPrimitiveError(f"{where}: no cumulant-family rule for {name!r}")
        thresholds = [x for x in values if isinstance(x, Threshold)]
        if thresholds:
            t = thresholds[0]
            if (name in PASS_THROUGH and len(values) == 1 and aval.dtype == jnp.bool_
                    and tuple(aval.shape) == t.shape):
                return t
            raise UnsupportedPrimitiveError(f"{where}: {name!r} of a detector: {COMBINED_DETECTOR_ERROR}")
        if name in ("eq", "ne") and len(values) == 2 and values[0] is values[1]:
            # ``x != x`` is the NaN test (softplus, logaddexp): a message's values are never NaN
            return jnp.full(aval.shape, name == "eq")
        if eqn.outvars[0] in self.predicate_only and same_shape(eqn) and (
                name in COMPARISONS or name in ("eq", "ne")
                or (name in BOOLEAN_COMBINERS and all(values[i].kind == "lazy" for i in random))):
            # a branch choice (leaky ReLU; jnp.mod's combined comparisons)
            chained = self.compose_on_one_base(eqn, values, random, where)
            if chained is not None:
                return chained
        if name in COMPARISONS:
            return self._threshold(eqn, values, random, where)
        if aval.dtype == jnp.bool_ or name in ("eq", "ne"):
            raise UnsupportedPrimitiveError(
                f"{where}: {name!r} of a random value makes a detector the cumulant family has no "
                f"rule for (it reports thresholds y > t); {DETECTOR_ERROR}"
            )
        if not jnp.issubdtype(aval.dtype, jnp.floating):
            raise UnsupportedPrimitiveError(
                f"{where}: {name!r} turns a random value into {aval.dtype}; the cumulant family "
                "propagates real values only"
            )
        shape = tuple(aval.shape)
        if is_elementwise(eqn) and all(values[i].shape == shape for i in random):
            chained = self.compose_on_one_base(eqn, values, random, where)
            if chained is not None and chained.kind == "lazy" and chained.data["structure"][0] == "affine" \
                    and not chained.data.get("monotone"):
                # An affine map whose sign is unknown while tracing (a traced scale a * x): it becomes
                # the base itself (free: the same node), so a monotone function of it, tanh(a * x) > t,
                # keeps its direction and is decided on it exactly.
                return self.force(chained)
            if chained is not None:
                return chained
        if name in LINEAR_PRIMITIVES and len(random) == 1:
            moved = self._move_chain(eqn, values, random[0], where)
            if moved is not None:
                return moved
        values = [self.force(x) if isinstance(x, Handle) else x for x in values]
        if name not in LINEAR_PRIMITIVES:
            raise UnsupportedPrimitiveError(
                f"{where}: no cumulant-family rule for {name!r} with random operands (it is "
                "neither affine nor an elementwise function of one random value); family='gaussian' "
                "or 'diagonal' estimates such blocks (softmax, layer norm, sort) by statistical "
                "linearization"
            )
        check_affine(eqn, random, where)
        if len({id(values[i].data["node"]) for i in random}) > 1:
            raise UnsupportedPrimitiveError(
                f"{where}: {name!r} combines random values from different messages (e.g. a "
                "residual connection around a nonlinearity); the cumulant family tracks the "
                "joint cumulants of one message at a time, so this has no exact rule"
            )
        if self.order == 1 and len(random) > 1:
            # Exact when the operands depend on disjoint units (e.g. two sites); otherwise
            # the independence presumption of order 1, as the 'diagonal' family does.
            self.note(f"order 1: random operands of {name!r} treated as independent "
                      "(exact when they depend on disjoint units)")
        return self._affine_step(eqn, values, random, where)

    def _move_chain(self, eqn, values, position: int, where: str) -> Handle | None:
        """A slice/reshape/transpose of a lazy elementwise chain, kept lazy on the moved base.

        So ``relu(z)[i] > t`` stays a threshold of ``z[i]`` (exact) instead of one decided on
        the cumulants of ``relu(z)[i]``. Forcing the moved chain, or a chain composed on it,
        forces the unmoved one and replays the steps on its message (:meth:`_replay`), so a
        layer sliced into parts that meet again (``h[:5] @ a + h[5:] @ b``) keeps one joint
        message.
        """
        units = movable_chain_units(eqn, values, position)
        if units is None:
            return None
        h = values[position]
        base = h.data["base"]
        moved_values = list(values)
        moved_values[position] = base
        moved_base = self._affine_step(eqn, moved_values, [position], where)
        fill = base.data["fn"](base.data["node"].message.mean)
        data = rebased_chain(h.data, units, base.shape, moved_base.shape, fill)
        return Handle(moved_base.shape, h.dtype, "lazy",
                      {"base": moved_base, **data, "replay": ("move", eqn, values)}, where)

    def _replay(self, h: Handle) -> Handle:
        """``h`` (a chain on a moved chain) rebuilt on the unmoved chain's forced message."""
        kind, eqn, values = h.data["replay"]
        values = list(values)
        if kind == "move":
            position = next(i for i, x in enumerate(values) if isinstance(x, Handle))
            values[position] = self.force(values[position])
            return self._affine_step(eqn, values, [position], h.origin)
        values = [self._replay(x) if isinstance(x, Handle) and "replay" in x.data else x for x in values]
        return self.apply(eqn, values)

    def _threshold(self, eqn, values, random, where) -> Threshold:
        name = eqn.primitive.name
        if len(random) != 1:
            raise UnsupportedPrimitiveError(
                f"{where}: {name!r} compares two random values; write it as a threshold of their "
                "difference, (a - b) > 0, so that the cumulants of a - b are propagated"
            )
        shape = tuple(eqn.outvars[0].aval.shape)
        y = values[random[0]]
        if tuple(y.shape) != shape:
            raise UnsupportedPrimitiveError(
                f"{where}: {name!r} broadcasts the random operand of shape {tuple(y.shape)} to "
                f"{shape}; compare values of the detector's shape"
            )
        threshold = jnp.broadcast_to(jnp.asarray(values[1 - random[0]]), shape)
        upper = (COMPARISONS[name] > 0) == (random[0] == 0)  # y > t, or t < y
        if monotone_chain(y, shape):
            # f(z) > t for a monotone chain f is a threshold of z itself: its tail, not f's
            base, direction = self.base_of(y), y.data["monotone"]
            marginal = cumulants.marginal_cumulants(self.message(base, through=2))
            mean = jnp.reshape(marginal[:, 0], shape)
            crossing = monotone_crossing(y.data["fn"], threshold.astype(mean.dtype), direction, mean,
                                         jnp.reshape(marginal[:, 1], shape))
            self.note(f"{where}: a comparison of a monotone elementwise function, decided on its input "
                      "by inverting the threshold")
            return Threshold(base, crossing, upper == (direction > 0), shape)
        if level_set_chain(y, shape) and not self.base_of(y).data["node"].nonlinear:
            return self._level_set_threshold(y, threshold, upper, name in ("gt", "lt"), shape, where)
        if level_set_chain(y, shape):
            self.note(f"{where}: a threshold of a non-monotone elementwise function (abs, square, gelu "
                      "below its minimum...) is decided on the tail of that function's own cumulants, "
                      "which can be far off (abs(y) > 4 for Gaussian y: 13x low); family='gaussian' or "
                      "'diagonal' decides it exactly, as intervals of its input")
        return Threshold(self.force(y), threshold, upper, shape)

    def _level_set_threshold(self, y: Handle, threshold, upper: bool, strict: bool, shape,
                             where: str) -> Threshold:
        """``f(z) > t`` for a chain ``f`` of unknown direction (non-monotone, or scaled by a traced
        factor) on a Gaussian base ``z``: a union of intervals of ``z``, exactly as the gaussian
        family decides it."""
        base = self.base_of(y)
        message = self.message(base, through=2)
        mean = jnp.reshape(message.mean, shape)
        var = jnp.reshape(cumulants.variance(message), shape)
        sign = 1 if upper else -1
        margin = sign * (y.data["fn"](mean) - threshold)
        at_mean = margin > 0 if strict else margin >= 0
        lower, upper_ends, dropped = level_set_intervals(y.data["fn"], threshold, sign, mean, var,
                                                         strict=strict)
        self.note(f"{where}: a comparison of an elementwise function of unknown direction, decided on its "
                  f"Gaussian input as up to {LEVEL_SET_SLOTS} intervals per unit (diagnostics["
                  "'level_set_dropped_intervals'] counts any beyond)")
        probability = interval_probability(lower, upper_ends, mean, var, at_mean)
        return Threshold(base, threshold, upper, shape, probability=probability, dropped_intervals=dropped)

    def _tail(self, detector: Threshold) -> dict[str, Any]:
        from ppl_mech.tails import saddlepoint_tail_from_cumulants

        if detector.probability is not None:
            p = detector.probability
            return {"value": p, "stderr": jnp.zeros_like(p), "log_probability": jnp.log(p),
                    "tail_status": jnp.zeros(detector.shape, jnp.int32),
                    "level_set_dropped_intervals": detector.dropped_intervals}

        message = self.message(detector.handle, through=max(self.order, 2))
        k = max(self.order, 2)
        marginal = cumulants.marginal_cumulants(message)[:, :k]
        t = jnp.reshape(detector.threshold, (-1,)).astype(marginal.dtype)
        tail = saddlepoint_tail_from_cumulants(t, marginal, lower=not detector.upper)
        if k <= 2:
            self.note("thresholds: the normal tail of each unit's mean and variance (exact for linear "
                      "maps of Gaussian inputs; after nonlinearities far tails can be far off: "
                      "norm(x) > sqrt(40) gave 1.1e-5 for 7.8e-4; check rare events with "
                      "handlers.importance)")
        else:
            self.note(f"thresholds: saddlepoint (Lugannani-Rice) tail of each unit's first {k} "
                      "cumulants; see diagnostics 'tail_status' (0 = no problem detected; a unit whose "
                      "truncated CGF has no saddlepoint is NaN, not a guess); tails beyond the "
                      "cumulants' reach can be far off")
        shape = detector.shape
        return {
            "value": jnp.reshape(tail.probability, shape),
            "stderr": jnp.zeros(shape, marginal.dtype),
            "log_probability": jnp.reshape(tail.log_probability, shape),
            "tail_status": jnp.reshape(tail.status, shape),
            "cumulants": jnp.reshape(marginal, shape + (k,)),
        }

    def _affine_step(self, eqn, values, random, where) -> Handle:
        step = bind_with(eqn, values, random)
        fns = [values[i].data["fn"] for i in random]

        def fn(u):
            return step(*[f(u) for f in fns])

        var_fn = None
        if self.order == 1:
            image = variance_image(eqn, values, random)
            var_fns = [values[i].data["var_fn"] for i in random]

            def var_fn(v):
                return image(*[g(v) for g in var_fns])

        aval = eqn.outvars[0].aval
        return _affine(values[random[0]].data["node"], aval.shape, aval.dtype, fn, var_fn, where)

    def compose_on_one_base(self, eqn, values, random, where) -> Handle | None:
        """The lazy chain of an elementwise ``eqn`` whose random operands share one base, else None."""
        if len({id(self.base_of(values[i])) for i in random}) != 1:
            return None
        chained = compose(eqn, values, {i: values[i] for i in random}, self.base_of(values[random[0]]),
                          where)
        if chained is not None and any("replay" in values[i].data for i in random):
            chained.data["replay"] = ("compose", eqn, values)
        return chained

    @staticmethod
    def base_of(h: Handle) -> Handle:
        return h.data["base"] if h.kind == "lazy" else h

    # --- materialising --------------------------------------------------------------------
    def message(self, h: Handle, through: int = 4) -> cumulants.CumulantMessage:
        """The message of an affine handle over its flat units (cached).

        ``through=2``: mean and covariance only (enough to report an output).
        """
        if h.data["identity"]:
            return h.data["node"].message
        key = "message" if through > 2 else "message2"
        if "message" in h.data:
            return h.data["message"]
        if key in h.data:
            return h.data[key]
        source = h.data["node"].message
        fn = h.data["fn"]
        mean, lin = jax.linearize(lambda u: jnp.reshape(fn(u), (-1,)), source.mean)
        variance = None
        if self.order == 1:
            variance = jnp.reshape(h.data["var_fn"](source.cov), (-1,))
        out = cumulants.linear_map(source, lin, mean, variance, through=through)
        h.data[key] = out
        return out

    def force(self, h: Handle) -> Handle:
        """An affine handle for ``h``: lazy elementwise chains go through the nonlinear step."""
        if h.kind != "lazy":
            return h
        if "forced" in h.data:
            return h.data["forced"]
        base, fn, structure = h.data["base"], h.data["fn"], h.data["structure"]
        dtype = jnp.result_type(h.dtype)
        if "replay" in h.data:  # on a moved chain: the unmoved chain's message, moved
            new = self.force(self._replay(h))
        elif structure[0] == "affine":
            scale, _ = _affine_of(fn, base.shape, dtype)
            base_fn, base_var = base.data["fn"], base.data["var_fn"]

            def composed(u):
                return fn(base_fn(u))

            var_fn = None
            if self.order == 1:
                def var_fn(v):
                    return jnp.square(scale) * base_var(v)

            new = _affine(base.data["node"], h.shape, h.dtype, composed, var_fn, h.origin)
        else:
            message = self.message(base)
            shape = base.shape
            if base.data["node"].nonlinear and self.order <= 2:
                self.note(CLOSURE_INPUT_NOTE, at=h.at)
            if structure[0] == "closed" and structure[2] == "relu":
                _, pre, _, post = structure
                message = self._diagonal_affine(message, pre, shape, dtype)
                message = cumulants.elementwise(message, "relu", self.order)
                message = self._diagonal_affine(message, post, shape, dtype)
            else:
                def flat(z):
                    return jnp.reshape(fn(jnp.reshape(z, shape)), (-1,))

                def columns(z):  # quadrature nodes on the trailing axis
                    return jax.vmap(flat, in_axes=1, out_axes=1)(z)

                columns.__name__ = f"fused elementwise chain at {h.origin}"
                rule = _cut_rule(h.data.get("jumps", ()), h.data.get("soft", ()), shape)
                if h.data.get("stairs"):
                    self.note(STAIRS_NOTE, at=h.at)
                if h.data.get("domain"):
                    self.note("a function undefined on part of the line (sqrt, log, a division, ...): "
                              "its Gauss–Hermite nodes reach where it is undefined, so the result can "
                              "be NaN (a norm or a standard deviation); use family='gaussian', which "
                              "integrates it where it is finite", at=h.at)
                if self.order > 1:
                    self.note(
                        "elementwise chains other than ReLU: Wick coefficients by Gauss–Hermite "
                        "quadrature (80 nodes), Gaussian covariance by Mehler's series (degree 16)",
                        at=h.at,
                    )
                activation = cumulants.Activation(columns, power_rule=rule)
                message = cumulants.elementwise(message, activation, self.order)
            view = _reshaper(shape)
            node = Node(message, nonlinear=True)
            new = _affine(node, h.shape, h.dtype, view, view, h.origin, identity=True)
        h.data["forced"] = new
        return new

    def _diagonal_affine(self, message, affine_fn, shape, dtype):
        """Message of ``a * x + b`` for an elementwise affine ``affine_fn`` (a, b per unit)."""
        a, b = _affine_of(affine_fn, shape, dtype)
        a, b = jnp.reshape(a, (-1,)), jnp.reshape(b, (-1,))
        variance = a * a * message.cov if self.order == 1 else None
        return cumulants.linear_map(message, lambda v: a * v, a * message.mean + b, variance)

    # --- outputs --------------------------------------------------------------------------
    def output(self, value) -> dict[str, Any]:
        """``{'value', 'stderr', 'variance'}`` of one output (a probability for a threshold)."""
        if isinstance(value, Threshold):
            return self._tail(value)
        if not isinstance(value, Handle):
            v = jnp.asarray(value)
            return {"value": v, "stderr": jnp.zeros(v.shape), "variance": jnp.zeros(v.shape)}
        h = self.force(value)
        message = self.message(h, through=2)
        var = cumulants.variance(message)
        return {
            "value": jnp.reshape(message.mean, h.shape),
            "stderr": jnp.zeros(h.shape, message.mean.dtype),
            "variance": jnp.reshape(var, h.shape),
        }


def _cut_rule(jumps, soft, shape):
    """The piecewise quadrature of a chain with jumps or soft steps (``quadrature_rule``), on flat
    units, or None."""
    if not jumps and not soft:
        return None

    def flat_gap(gap):
        return lambda z: jnp.reshape(gap(jnp.reshape(z, shape)), z.shape)

    flat_jumps = tuple(flat_gap(g) for g in jumps)
    flat_soft = tuple((flat_gap(g), direction, scale) for g, direction, scale in soft)

    def rule(mean, std):
        nodes, weights = quadrature_rule(mean, std, flat_jumps, flat_soft)  # nodes on the leading axis
        return jnp.moveaxis(nodes, 0, -1), jnp.moveaxis(weights, 0, -1)

    return rule


def propagate_cumulants(model, args, kwargs, *, order: int, sites=None):
    """Traceable core: ``({site: {'value', 'stderr', 'variance'}}, notes, booleans)``."""
    order = check_order(order)
    program, wanted = mechanized_program(model, args, kwargs, sites)
    jaxpr = program.make_jaxpr(wanted)
    interpreter = CumulantInterpreter(order)
    if order == 1:
        interpreter.note("cumulant propagation of order 1 (mean field): units treated as "
                         "independent, variances only")
    else:
        interpreter.note(
            f"cumulant propagation of order {order}: diagrams of total cost <= {order - 1} kept, "
            "two-unit Gaussian covariance resummed exactly (power counting for wide random "
            "networks; exact for linear maps of Gaussians)"
        )
    inputs = interpreter.inputs(program.latents)
    for k, h in enumerate(inputs):
        h.at = ("input", k)
    outs = interpreter.run(jaxpr.jaxpr, jaxpr.consts, inputs, top_level=True)
    estimates = {}
    for name, value in zip(wanted, outs, strict=True):
        interpreter.notebook.at = ("output", name)
        estimates[name] = interpreter.output(value)
    booleans = {name: program.outputs[name].is_boolean for name in wanted}
    for name, value in zip(wanted, outs, strict=True):
        if booleans[name] and not isinstance(value, Threshold) and isinstance(value, Handle):
            raise UnsupportedPrimitiveError(f"site {name!r}: {COMBINED_DETECTOR_ERROR}")
    return estimates, interpreter.notebook.for_outputs(jaxpr.jaxpr, wanted), booleans
