"""First-order score changes for discrete inputs: ARC's token gradients, for any jaxpr.

ITGIS and MHIS (ARC, "Estimating the probabilities of rare outputs in language
models", 2024) score a token ``v`` at position ``i`` by the gradient of the
score with respect to the token's embedding, dotted with the embedding of
``v``: the first-order change of the score when token ``i`` becomes ``v``.

Here the model is any jaxpr. A discrete input ``x`` (integer values) reaches
the real-valued part of the program through a *boundary*: the first real values
computed from integers that depend on ``x`` (an embedding lookup, a one-hot, a
cast). With ``h`` the boundary values, ``g = d score / d h`` (one backward pass)
and ``h(x_i <- v)`` the boundary recomputed with element ``i`` set to ``v``
(only the cheap part of the program that produces ``h``), the score change is

    score_change[i, v] = < g, h(x_i <- v) - h(x) >,

which is exactly ARC's ``grad . (W_E[v] - W_E[x_i])`` for a transformer. With
``exact=True`` the change is the true ``score(x_i <- v) - score(x)`` instead,
one full evaluation per element and value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Literal
from jax.interpreters import partial_eval as pe

from ppl_mech._bind import bind_eqn


def _is_floating(aval) -> bool:
    try:
        return jnp.issubdtype(aval.dtype, jnp.floating)
    except TypeError:
        return False


class DiscreteRelaxation:
    """Score changes of single-element changes of the discrete inputs of ``score_flat``.

    Args:
        score_flat: ``score_flat(*leaves) -> scalar`` over the latent values in order.
        examples: example leaves (shapes and dtypes).
        discrete: indices of the discrete leaves.
    """

    def __init__(self, score_flat: Callable, examples: Sequence[Any], discrete: Sequence[int]):
        closed = jax.make_jaxpr(score_flat)(*examples)
        jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars), instantiate=True)
        self.closed = jax.extend.core.ClosedJaxpr(jaxpr, closed.consts)
        self.discrete = tuple(discrete)
        discrete_vars = {id(jaxpr.invars[i]) for i in self.discrete}
        tainted_int = set()  # non-real values depending on a discrete input
        boundary = []
        for i in self.discrete:
            v = jaxpr.invars[i]
            if _is_floating(v.aval):
                boundary.append(v)
            else:
                tainted_int.add(id(v))
        for eqn in jaxpr.eqns:
            hit = any(not isinstance(v, Literal) and id(v) in tainted_int for v in eqn.invars)
            if not hit:
                continue
            for v in eqn.outvars:
                if _is_floating(v.aval):
                    boundary.append(v)
                else:
                    tainted_int.add(id(v))
        self.boundary = boundary
        self._boundary_ids = [id(v) for v in boundary]
        # The eqns needed to compute the boundary (backward slice).
        needed_vars = {id(v) for v in boundary if id(v) not in discrete_vars}
        needed = []
        for index in range(len(jaxpr.eqns) - 1, -1, -1):
            eqn = jaxpr.eqns[index]
            if any(id(v) in needed_vars for v in eqn.outvars):
                needed.append(index)
                needed_vars.update(id(v) for v in eqn.invars if not isinstance(v, Literal))
        self._boundary_eqns = sorted(needed)

    def _evaluate(self, leaves, *, eqns=None, perturb=None, outputs=None):
        jaxpr = self.closed.jaxpr
        env = {}

        def read(v):
            return v.val if isinstance(v, Literal) else env[id(v)]

        for v, x in zip(jaxpr.constvars, self.closed.consts, strict=True):
            env[id(v)] = x
        for v, x in zip(jaxpr.invars, leaves, strict=True):
            env[id(v)] = x + perturb[id(v)] if perturb and id(v) in perturb else x
        chosen = range(len(jaxpr.eqns)) if eqns is None else eqns
        for index in chosen:
            eqn = jaxpr.eqns[index]
            outs = bind_eqn(eqn, [read(v) for v in eqn.invars])
            for v, x in zip(eqn.outvars, outs, strict=True):
                env[id(v)] = x + perturb[id(v)] if perturb and id(v) in perturb else x
        return [read(v) for v in (jaxpr.outvars if outputs is None else outputs)]

    def boundary_values(self, leaves) -> list:
        return self._evaluate(leaves, eqns=self._boundary_eqns, outputs=self.boundary)

    def boundary_gradient(self, leaves) -> tuple[Any, list]:
        """``(score, d score / d boundary)`` at ``leaves``."""
        zeros = [jnp.zeros(v.aval.shape, v.aval.dtype) for v in self.boundary]

        def f(deltas):
            perturb = dict(zip(self._boundary_ids, deltas, strict=True))
            return self._evaluate(leaves, perturb=perturb)[0]

        return jax.value_and_grad(f)(zeros)

    def changes_at(self, leaves, leaf: int, position, support, grads, base) -> jax.Array:
        """First-order score changes ``(K,)`` of setting flat element ``position`` of leaf ``leaf``."""
        shape = leaves[leaf].shape

        def one(value):
            flat = jnp.reshape(leaves[leaf], (-1,)).at[position].set(value.astype(leaves[leaf].dtype))
            changed = list(leaves)
            changed[leaf] = jnp.reshape(flat, shape)
            h = self.boundary_values(changed)
            return sum(jnp.sum(g * (a - b)) for g, a, b in zip(grads, h, base, strict=True))

        return jax.vmap(one)(support)

    def changes(self, leaves, leaf: int, support) -> jax.Array:
        """First-order score changes for every element of leaf ``leaf``: ``shape + (K,)``."""
        _, grads = self.boundary_gradient(leaves)
        base = self.boundary_values(leaves)
        size = leaves[leaf].size
        out = jax.lax.map(
            lambda j: self.changes_at(leaves, leaf, j, support, grads, base), jnp.arange(size)
        )
        return jnp.reshape(out, leaves[leaf].shape + (support.shape[0],))


def exact_changes_at(score_flat: Callable, leaves, leaf: int, position, support, base=None) -> jax.Array:
    """True score changes ``score(x_i <- v) - score(x)`` of one flat element ``i``, every ``v``."""
    shape = leaves[leaf].shape
    base = score_flat(*leaves) if base is None else base

    def one(value):
        flat = jnp.reshape(leaves[leaf], (-1,)).at[position].set(value.astype(leaves[leaf].dtype))
        changed = list(leaves)
        changed[leaf] = jnp.reshape(flat, shape)
        return score_flat(*changed) - base

    return jax.vmap(one)(support)


def exact_changes(score_flat: Callable, leaves, leaf: int, support) -> jax.Array:
    """True score changes ``score(x_i <- v) - score(x)`` for every element ``i`` and value ``v``."""
    base = score_flat(*leaves)
    out = jax.lax.map(lambda position: exact_changes_at(score_flat, leaves, leaf, position, support, base),
                      jnp.arange(leaves[leaf].size))
    return jnp.reshape(out, leaves[leaf].shape + (support.shape[0],))
