"""Evaluating one jaxpr equation on concrete or traced operands.

``eqn.primitive.bind(*operands, **eqn.params)`` is not enough for primitives that
carry sub-functions in their parameters (``custom_jvp_call`` from ``jax.nn.relu``
and friends, ``custom_vjp_call``, ``pjit``): their bind parameters differ from
their jaxpr parameters, as ``jax.core.eval_jaxpr`` knows. Every interpreter in
the package evaluates equations through :func:`bind_eqn`.
"""

from __future__ import annotations

from collections.abc import Sequence


def bind_eqn(eqn, operands: Sequence) -> list:
    """The outputs (always a list) of ``eqn`` applied to ``operands``."""
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns: list = []
    if isinstance(params, tuple):  # jax returns (subfuns, params)
        subfuns, params = params
    out = eqn.primitive.bind(*subfuns, *operands, **params)
    return out if eqn.primitive.multiple_results else [out]


SUB_JAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def sub_jaxpr(eqn):
    """``(jaxpr, consts)`` of the sub-jaxpr that a call-like equation carries in its parameters
    (``pjit``, ``closed_call``, ``custom_jvp_call``, ...), or None."""
    for key in SUB_JAXPR_PARAMS:
        if key in eqn.params:
            sub = eqn.params[key]
            return (sub.jaxpr, sub.consts) if hasattr(sub, "jaxpr") else (sub, ())
    return None
