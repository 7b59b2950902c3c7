"""Pure data movement (slices, reshapes, transposes, gathers with constant indices).

Elementwise chains commute with data movement: ``act(y)[0]`` is ``act(y[0])``. The
families use this to keep a moved chain a chain on the moved units of its base, so that
``relu(z)[i] > t`` stays a threshold of ``z[i]`` (exact) rather than one of a
moment-matched ``relu(z)[i]``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ._linear import bind_with, index_positions

STRUCTURAL = {"reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice", "rev",
              "copy", "copy_p", "gather", "dynamic_slice", "concatenate", "stack", "select_n", "pad",
              "dynamic_update_slice", "convert_element_type"}


def moved_units(eqn, values, position: int) -> np.ndarray | None:
    """For a data-movement primitive: the flat operand unit of each output unit (else None).

    None when the primitive is not pure data movement of its one random operand (it mixes
    in constants, converts to a non-float, or its indices are traced).
    """
    name = eqn.primitive.name
    if name == "reduce_sum" and len(values) == 1 and \
            math.prod(values[0].shape[a] for a in eqn.params["axes"]) == 1:
        return np.arange(values[0].size, dtype=np.int64)  # a sum of one unit (x[1:2].sum()) moves it
    if name not in STRUCTURAL:
        return None
    constants = set(range(len(values))) - {position}
    if not constants <= set(index_positions(name, len(eqn.invars))) or \
            any(isinstance(values[i], jax.core.Tracer) for i in constants):
        return None
    if name == "convert_element_type" and not jnp.issubdtype(eqn.params["new_dtype"], jnp.floating):
        return None
    source = values[position]
    with jax.ensure_compile_time_eval():
        units = jnp.arange(source.size, dtype=source.dtype).reshape(source.shape)
        moved = bind_with(eqn, values, [position])(units)
        return np.asarray(jnp.reshape(moved, (-1,))).astype(np.int64)


def joint_moved_units(move, operands) -> np.ndarray:
    """For data movement of several random operands (``jnp.stack([a, b])``, a concatenation):
    each output unit's index into the operands' flat units laid end to end.

    ``move(*arrays)`` is the movement with its constant operands closed over.
    """
    with jax.ensure_compile_time_eval():
        offsets = np.cumsum([0] + [h.size for h in operands])
        units = [jnp.arange(o, o + h.size, dtype=jnp.float32).reshape(h.shape)
                 for o, h in zip(offsets, operands, strict=False)]
        return np.asarray(jnp.reshape(move(*units), (-1,))).astype(np.int64)


def movable_chain_units(eqn, values, position: int) -> np.ndarray | None:
    """:func:`moved_units` of ``eqn`` when it moves a non-affine lazy chain unit for unit (its base
    has its shape, no unit repeats); else None (nothing to keep lazy: an affine chain is exact
    either way, a broadcast repeats units)."""
    h = values[position]
    if h.kind != "lazy" or h.data["structure"][0] == "affine" or \
            tuple(h.data["base"].shape) != tuple(h.shape):
        return None
    units = moved_units(eqn, values, position)
    if units is None or np.unique(units).size != units.size:
        return None
    return units


def rebased_chain(data: dict, units: np.ndarray, in_shape, out_shape, fill) -> dict:
    """A lazy chain's data (``fn``, ``structure``, jumps...) re-based on the moved units of its base.

    ``f'(z') = f(base with z' put back at units)[units]``; ``fill`` (the base's mean, flat)
    fills the other units so that nothing undefined is evaluated there.
    """
    fill = jnp.reshape(fill, (-1,))

    def rebased(f):
        def g(z):
            full = fill.astype(z.dtype).at[units].set(jnp.reshape(z, (-1,)))
            return jnp.reshape(jnp.reshape(f(jnp.reshape(full, in_shape)), (-1,))[units], out_shape)
        return g

    structure = data["structure"]
    if structure[0] == "closed":  # keep the closed form (relu, exp, square): its pre/post move too
        structure = ("closed", rebased(structure[1]), structure[2], rebased(structure[3]))
    return {
        "fn": rebased(data["fn"]), "structure": structure,
        "monotone": data.get("monotone", 0),
        "jumps": tuple(rebased(j) for j in data.get("jumps", ())),
        "soft": tuple((rebased(g), d, c) for g, d, c in data.get("soft", ())),
        "stairs": data.get("stairs", False),
        "domain": data.get("domain", False),
        "nonnegative": data.get("nonnegative", False),
        "gamma": data.get("gamma", False),
    }
