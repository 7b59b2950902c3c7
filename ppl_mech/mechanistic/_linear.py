"""Affine images of random values: exact for means, covariances and variances.

Every primitive here is affine in its random operands once the other operands
(weights, biases, indices, predicates) are constants. For the ``gaussian``
family one rule serves them all: the output's cross-covariance with each live
handle is the primitive's JVP at the mean applied column by column, so
``dot_general``, ``reshape``, ``gather`` with constant indices, ``pad`` or
``conv`` need no rule of their own. The independence families need the
variance image, ``sum_j l_ij^2 v_j``, which for these primitives is the same
primitive applied to variances with multiplicative constants squared and
additive constants set to zero (``sub`` adds variances; ``neg`` keeps them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from ppl_mech._bind import bind_eqn
from ppl_mech._errors import UnsupportedPrimitiveError

from ._state import Handle, State, variance_of

# operands that must be constants (indices, predicates), by primitive
INDEX_OPERANDS = {
    "select_n": (0,),
    "gather": (1,),
    "dynamic_slice": None,  # all but the first
    "dynamic_update_slice": None,  # all but the first two
}
# constant operands that multiply the random one (squared in the variance image)
MULTIPLICATIVE = {"mul", "div", "dot_general", "conv_general_dilated"}
ADDITIVE = {"add", "sub", "add_any", "select_n", "concatenate", "stack", "pad", "dynamic_update_slice"}
PASS_THROUGH = {
    "reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice", "rev",
    "copy", "copy_p", "gather", "dynamic_slice", "reduce_sum", "cumsum", "convert_element_type",
    "reduce_precision", "neg",
}
LINEAR_PRIMITIVES = MULTIPLICATIVE | ADDITIVE | PASS_THROUGH
ELEMENTWISE_AFFINE = {"add", "sub", "mul", "div", "neg", "convert_element_type", "add_any", "copy",
                      "copy_p", "select_n", "reduce_precision"}


def index_positions(name: str, num_operands: int) -> tuple[int, ...]:
    spec = INDEX_OPERANDS.get(name, ())
    if spec is None:
        first = 1 if name == "dynamic_slice" else 2
        return tuple(range(first, num_operands))
    return spec


def check_affine(eqn, random_positions: Sequence[int], where: str) -> None:
    """Raise unless ``eqn`` is affine in the operands at ``random_positions``."""
    name = eqn.primitive.name
    n = len(eqn.invars)
    if name not in LINEAR_PRIMITIVES:
        raise UnsupportedPrimitiveError(f"{where}: no linear rule for {name!r}")
    bad = set(index_positions(name, n)) & set(random_positions)
    if bad:
        raise UnsupportedPrimitiveError(
            f"{where}: {name!r} with a random {'predicate' if name == 'select_n' else 'index'} "
            "operand has no rule (it would be a mixture)"
        )
    if name in MULTIPLICATIVE and len(random_positions) > 1:
        raise UnsupportedPrimitiveError(f"{where}: {name!r} of two random operands is not affine")
    if name == "div" and random_positions != [0]:
        raise UnsupportedPrimitiveError(f"{where}: division by a random value has no rule")
    if name == "convert_element_type" and not jnp.issubdtype(eqn.params["new_dtype"], jnp.floating):
        raise UnsupportedPrimitiveError(
            f"{where}: converting a random value to {eqn.params['new_dtype']} has no rule"
        )


def is_affine(eqn, random_positions: Sequence[int]) -> bool:
    """Whether ``eqn`` is affine in the operands at ``random_positions`` (see :func:`check_affine`)."""
    try:
        check_affine(eqn, random_positions, "")
    except UnsupportedPrimitiveError:
        return False
    return True


SAME_DTYPE_OPERANDS = {"add", "add_any", "sub", "mul", "div", "max", "min", "rem", "pow", "clamp",
                       "nextafter", "atan2", "gt", "ge", "lt", "le", "eq", "ne"}


def bind_with(eqn, values: list, random_positions: Sequence[int]) -> Callable:
    """``fn(*random_values)``: the equation with its constant operands closed over.

    A random integer value (a count of Bernoulli draws) is held as a real message, so
    integer constants of an arithmetic op on it (``count * 2``) are cast to its real dtype.
    """
    name = eqn.primitive.name

    def fn(*random_values):
        operands = list(values)
        for pos, value in zip(random_positions, random_values, strict=True):
            operands[pos] = value
        real = [jnp.result_type(v) for v in random_values if jnp.issubdtype(jnp.result_type(v), jnp.floating)]
        if real and name in SAME_DTYPE_OPERANDS:
            operands = [jnp.asarray(o, real[0]) if i not in random_positions and
                        jnp.issubdtype(jnp.result_type(o), jnp.integer) else o
                        for i, o in enumerate(operands)]
        return bind_eqn(eqn, operands)[0]

    return fn


def affine_image(
    state: State,
    fn: Callable,
    inputs: Sequence[Handle],
    origin: str,
    variance_fn: Callable | None = None,
) -> Handle:
    """The handle of ``fn(*inputs)`` for ``fn`` affine in its arguments.

    Args:
        fn: affine in every argument (constants closed over).
        inputs: ``moments`` handles.
        variance_fn: ``variance_fn(*variances)``, the variance image (independence
            families); required unless the family is ``gaussian`` or ``mean``.
    """
    means = [h.data["mean"] for h in inputs]
    mean = fn(*means)
    h = Handle(mean.shape, mean.dtype, "moments", {"mean": mean}, origin)
    if any(x.data.get("closure") for x in inputs):
        h.data["closure"] = True
    if state.family == "gaussian":
        def linear_part(*cols):
            tangents = [c.astype(m.dtype) for c, m in zip(cols, means, strict=True)]
            return jax.jvp(fn, means, tangents)[1]

        apply_columns = jax.vmap(linear_part, in_axes=-1, out_axes=-1)

        def image_of(blocks, other_size):
            cols = [jnp.reshape(b, x.shape + (other_size,)) for b, x in zip(blocks, inputs, strict=True)]
            return jnp.reshape(apply_columns(*cols), (h.size, other_size))

        for u in list(state.active.values()):
            state.set_cov(h, u, image_of([state.get_cov(x, u) for x in inputs], u.size))
        # covariance with the inputs themselves (they may be inactive already)
        cross = {x.id: None for x in inputs}
        for x in inputs:
            if x.id not in state.active:
                cross[x.id] = image_of([state.get_cov(z, x) for z in inputs], x.size)
            else:
                cross[x.id] = state.get_cov(h, x)
        own = image_of([cross[x.id].T for x in inputs], h.size)
        state.set_cov(h, h, 0.5 * (own + own.T))
        state.activate(h)
    elif state.family == "diagonal":
        if variance_fn is None:
            raise AssertionError("the diagonal family needs a variance image")
        h.data["var"] = variance_fn(*[variance_of(state, x) for x in inputs])
    return h


def variance_image(eqn, values: list, random_positions: Sequence[int]) -> Callable:
    """``variance_fn`` for one affine equation (see the module docstring)."""
    name = eqn.primitive.name
    keep = set(index_positions(name, len(values)))
    squared = list(values)
    for i, v in enumerate(values):
        if i in random_positions or i in keep:
            continue
        if name in MULTIPLICATIVE:
            squared[i] = jnp.square(v)
        elif name in ADDITIVE:
            squared[i] = jnp.zeros_like(v)
    if name == "sub":
        return lambda *vs: bind_with(_ADD_EQN(eqn), squared, random_positions)(*vs)
    if name == "neg":
        return lambda v: v
    return bind_with(eqn, squared, random_positions)


class _ADD_EQN:
    """``eqn`` with its primitive replaced by ``add`` (the variance image of ``sub``)."""

    def __init__(self, eqn):
        self.primitive = jax.lax.add_p
        self.params = eqn.params


def linear_rule(state: State, eqn, values: list, random_positions: list[int], where: str) -> Handle:
    check_affine(eqn, random_positions, where)
    fn = bind_with(eqn, values, random_positions)
    inputs = [values[i] for i in random_positions]
    var_fn = variance_image(eqn, values, random_positions) if state.family == "diagonal" else None
    return affine_image(state, fn, inputs, where, var_fn)
