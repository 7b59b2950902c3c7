"""Categorical inputs, exactly: tokens as finite mixtures until they meet a linear map.

A ``Categorical`` site with batch shape ``B`` and ``K`` classes is ``prod(B)``
independent *tokens*. A ``categorical`` handle describes a value each of whose
units is a function of **one** token (or a constant): per unit it stores the
token it depends on (``token``, ``-1`` for constants) and the unit's value
under each of the token's ``K`` classes (``support``, shape ``(units, K)``).
That representation is closed, and exact, under

* elementwise ops of values that depend on the same tokens unit by unit (the
  ``x < 0 ? x + K : x`` index normalisation, ``one_hot``'s ``eq`` with an iota,
  ``convert_element_type``), evaluated class by class;
* a boolean op of two operands that read different tokens in every unit
  (``t[0] == t[1]``, ``t[:-1] < t[1:]``): its probability, over the class pairs;
* data movement (reshape, broadcast, slice, transpose, concatenate with
  constants, gather with constant indices), which moves units and their tokens;
* lookups ``table[x]`` (``gather``/``dynamic_slice`` with the token as index):
  embedding rows and one-hot columns are read class by class.

When a categorical value meets anything else (a matmul mixing tokens, another
random value, a reduction across tokens) it becomes a ``moments`` message with
its *exact* mean and covariance: ``E[v_u] = sum_k p_tk s_uk`` and, for units of
the same token, ``Cov(v_u, v_w) = sum_k p_tk s_uk s_wk - E[v_u] E[v_w]`` (units of
different tokens are independent). The ``gaussian`` family then continues with
a Gaussian of those moments (noted in the result). A boolean categorical value
reports its probability exactly, ``sum_k p_tk s_uk``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ppl_mech._errors import UnsupportedPrimitiveError

from ._linear import affine_image, bind_with, index_positions
from ._state import Handle, State

ELEMENTWISE = {
    "add", "sub", "mul", "div", "rem", "neg", "max", "min", "abs", "sign", "select_n", "clamp",
    "convert_element_type", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor",
    "shift_left", "shift_right_logical", "shift_right_arithmetic", "integer_pow", "square",
    "exp", "log", "tanh", "logistic", "sqrt", "copy", "copy_p", "floor", "ceil", "round",
    "nextafter", "pow", "sin", "cos", "erf",
}
MOVEMENT = {"reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice", "rev",
            "concatenate", "stack", "pad", "gather", "dynamic_slice"}
CONSTANT = -1
MOMENTS_NOTE = "categorical site {site!r}: exact mean and covariance, then a Gaussian ({family} family)"


def categorical_input(name: str, probs, shape, dtype) -> Handle:
    """The handle of a ``Categorical`` site of ``shape`` (its batch shape) with ``probs (*shape, K)``."""
    probs = jnp.broadcast_to(probs, tuple(shape) + probs.shape[-1:])
    k = probs.shape[-1]
    size = math.prod(shape)
    support = jnp.broadcast_to(jnp.arange(k, dtype=dtype), (size, k))
    return Handle(shape, dtype, "categorical", {
        "site": name, "probs": jnp.reshape(probs, (size, k)), "token": np.arange(size),
        "support": support,
    }, f"site {name!r}")


def _with_support(h: Handle, shape, dtype, token: np.ndarray, support, where: str) -> Handle:
    return Handle(shape, dtype, "categorical", {
        "site": h.data["site"], "probs": h.data["probs"], "token": token, "support": support,
    }, where)


def is_exact_op(eqn, values, random) -> bool:
    """Whether ``eqn`` keeps its categorical operands categorical."""
    name = eqn.primitive.name
    if name in ELEMENTWISE:
        shape = eqn.outvars[0].aval.shape
        try:  # lax broadcasts size-1 dimensions implicitly in some ops (one_hot's eq)
            same_shape = all(np.broadcast_shapes(getattr(v.aval, "shape", ()), shape) == shape
                             for v in eqn.invars)
        except ValueError:
            return False
        return same_shape and not unit_tokens(values, random, shape)[1]
    if name not in MOVEMENT:
        return False
    index_ops = set(index_positions(name, len(values)))
    if set(random) <= index_ops:
        return name in ("gather", "dynamic_slice")  # a lookup
    return not (set(random) & index_ops)  # moving tokens with constant indices


def apply(eqn, values, random, where: str) -> Handle:
    """The categorical handle of ``eqn`` (see :func:`is_exact_op`)."""
    handles = [values[i] for i in random]
    sites = {h.data["site"] for h in handles}
    if len(sites) > 1:
        raise UnsupportedPrimitiveError(
            f"{where}: combines values of different categorical sites {sorted(sites)} element by "
            "element; only one site's tokens can be enumerated"
        )
    name = eqn.primitive.name
    if name in ELEMENTWISE:
        return _elementwise(eqn, values, random, where)
    if set(random) <= set(index_positions(name, len(values))):
        return _lookup(eqn, values, random, where)
    return _movement(eqn, values, random, where)


def _class_by_class(eqn, values, random, supports):
    """Evaluate ``eqn`` once per class: random operands given as ``(*shape, K)`` supports."""
    fn = bind_with(eqn, values, random)
    return jax.vmap(fn, in_axes=-1, out_axes=-1)(*supports)


def unit_tokens(values, random, shape) -> tuple[np.ndarray, bool, bool]:
    """``(tokens, clash, disjoint)`` of an elementwise op's categorical operands, per output unit.

    ``clash``: some unit reads different tokens from different operands (no single
    token to enumerate); ``disjoint``: every unit reads pairwise different tokens (so the
    operands are independent unit by unit).
    """
    tokens, clash, disjoint = None, False, True
    for i in random:
        h = values[i]
        t = np.broadcast_to(h.data["token"].reshape(h.shape), shape)
        if tokens is None:
            tokens = t.copy()
            continue
        both = (tokens != CONSTANT) & (t != CONSTANT)
        clash |= bool((both & (tokens != t)).any())
        disjoint &= not bool((both & (tokens == t)).any())
        tokens = np.where(tokens == CONSTANT, t, tokens)
    return tokens, clash, disjoint and len(random) > 1


def reduction_is_independent(h: Handle, axes) -> bool:
    """Whether every group that a reduction over ``axes`` combines reads pairwise different tokens."""
    tokens = np.asarray(h.data["token"]).reshape(h.shape)
    axes = tuple(a % tokens.ndim for a in axes)
    kept = [a for a in range(tokens.ndim) if a not in axes]
    size = math.prod(tokens.shape[a] for a in axes)
    groups = np.sort(np.transpose(tokens, kept + list(axes)).reshape(-1, size), axis=1)
    repeated = (groups[:, 1:] == groups[:, :-1]) & (groups[:, 1:] != CONSTANT)
    return not repeated.any()


def _elementwise(eqn, values, random, where: str) -> Handle:
    aval = eqn.outvars[0].aval
    shape = aval.shape
    tokens, clash, _ = unit_tokens(values, random, shape)
    if clash:
        raise AssertionError("is_exact_op refuses clashing tokens")
    supports = [jnp.reshape(values[i].data["support"], values[i].shape + (-1,)) for i in random]
    out = _class_by_class(eqn, values, random, supports)
    out = jnp.broadcast_to(out, shape + out.shape[-1:])
    h = values[random[0]]
    return _with_support(h, shape, aval.dtype, tokens.ravel(), jnp.reshape(out, (-1, out.shape[-1])), where)


def pair_probability(eqn, values, random):
    """``P[eqn(a, b)]`` per unit for a boolean op of two categorical operands of different tokens.

    Exact: the tokens are independent, so each unit's law is the product of its two
    tokens' class probabilities, and the op is evaluated on all ``K x L`` class pairs.
    """
    shape = eqn.outvars[0].aval.shape

    def per_unit(h: Handle, key: str):
        table = _unit_probs(h) if key == "probs" else h.data["support"]
        return jnp.broadcast_to(jnp.reshape(table, h.shape + (-1,)), shape + table.shape[-1:])

    a, b = (values[i] for i in random)
    fn = bind_with(eqn, values, random)
    pairs = jax.vmap(jax.vmap(fn, in_axes=(None, -1), out_axes=-1), in_axes=(-1, None), out_axes=-2)(
        per_unit(a, "support"), per_unit(b, "support"))  # (*shape, K, L)
    pa, pb = per_unit(a, "probs"), per_unit(b, "probs")
    return jnp.einsum("...k,...l,...kl->...", pa, pb, pairs.astype(pa.dtype))


def _movement(eqn, values, random, where: str) -> Handle:
    """Data movement: tokens move with their units (found by moving unit ids)."""
    aval = eqn.outvars[0].aval
    index_ops = set(index_positions(eqn.primitive.name, len(values)))
    if any(isinstance(values[i], jax.core.Tracer) for i in index_ops):
        raise UnsupportedPrimitiveError(f"{where}: indices computed from traced arguments")
    with jax.ensure_compile_time_eval():
        ids, pool, offset = list(values), [np.asarray([CONSTANT])], 1
        for i, v in enumerate(values):
            if i in index_ops:
                continue
            if isinstance(v, Handle):
                pool.append(v.data["token"])
                ids[i] = jnp.arange(offset, offset + v.size, dtype=jnp.int32).reshape(v.shape)
                offset += v.size
            else:
                ids[i] = jnp.zeros(jnp.shape(v), jnp.int32)  # constants map to the CONSTANT entry
        moved = eqn.replace(params={**eqn.params, "new_dtype": jnp.int32}) \
            if eqn.primitive.name == "convert_element_type" else eqn
        if eqn.primitive.name == "pad":
            ids[1] = jnp.zeros((), jnp.int32)
        unit = np.asarray(bind_with(moved, ids, [])()).ravel()
    token = np.concatenate(pool)[unit]
    supports = []
    for i in random:
        h = values[i]
        supports.append(jnp.reshape(h.data["support"], h.shape + (-1,)))
    k = supports[0].shape[-1]
    constants = [i for i in range(len(values)) if i not in random and i not in index_ops]
    operands = list(values)
    for i in constants:  # constants are the same under every class
        operands[i] = jnp.broadcast_to(jnp.asarray(values[i])[..., None], jnp.shape(values[i]) + (k,))
    out = _class_by_class(eqn, operands, random + constants,
                          supports + [operands[i] for i in constants])
    return _with_support(values[random[0]], aval.shape, aval.dtype, token,
                         jnp.reshape(out, (-1, k)), where)


def _lookup(eqn, values, random, where: str) -> Handle:
    """``table[token]``: the indices are categorical, the table constant."""
    aval = eqn.outvars[0].aval
    name = eqn.primitive.name
    handles = [values[i] for i in random]
    supports = [jnp.reshape(h.data["support"], h.shape + (-1,)) for h in handles]
    out = _class_by_class(eqn, values, random, supports)
    k = out.shape[-1]
    if name == "dynamic_slice":
        tokens = {int(t) for h in handles for t in h.data["token"] if t != CONSTANT}
        if len(tokens) > 1:
            raise UnsupportedPrimitiveError(f"{where}: a slice whose start depends on several tokens")
        token = np.full(math.prod(aval.shape), tokens.pop() if tokens else CONSTANT)
    else:
        token = _gather_tokens(eqn, handles[0], aval.shape, where)
    return _with_support(handles[0], aval.shape, aval.dtype, token, jnp.reshape(out, (-1, k)), where)


def _gather_tokens(eqn, indices: Handle, out_shape, where: str) -> np.ndarray:
    """The token each output unit of a gather reads: that of its row of the indices."""
    dn = eqn.params["dimension_numbers"]
    if getattr(dn, "operand_batching_dims", ()):
        raise UnsupportedPrimitiveError(f"{where}: batched gathers with categorical indices")
    tok = indices.data["token"].reshape(indices.shape)  # (..., index_vector)
    rows = tok.reshape(tok.shape[:-1] + (-1,))
    per_row = np.full(rows.shape[:-1], CONSTANT)
    for j in range(rows.shape[-1]):
        t = rows[..., j]
        clash = (per_row != CONSTANT) & (t != CONSTANT) & (per_row != t)
        if clash.any():
            raise UnsupportedPrimitiveError(f"{where}: one lookup indexed by several tokens")
        per_row = np.where(per_row == CONSTANT, t, per_row)
    batch_dims = [d for d in range(len(out_shape)) if d not in dn.offset_dims]
    grid = np.indices(out_shape)
    rows_of_units = tuple(grid[d] for d in batch_dims)
    return per_row[rows_of_units].ravel() if batch_dims else np.full(math.prod(out_shape), per_row.item())


# --- leaving the categorical representation ------------------------------------------------
def expectation(h: Handle):
    """``E[v_u]`` per unit (a probability for booleans), exact."""
    support = h.data["support"].astype(h.data["probs"].dtype)
    token = h.data["token"]
    probs = _unit_probs(h)
    return jnp.reshape(jnp.where(token == CONSTANT, support[:, 0], jnp.sum(probs * support, axis=-1)),
                       h.shape)


def _unit_probs(h: Handle):
    token = np.where(h.data["token"] == CONSTANT, 0, h.data["token"])
    return h.data["probs"][token]


def covariance(a: Handle, b: Handle):
    """``Cov(a_u, b_w)``, exact: nonzero only where both units read the same token."""
    pa = _unit_probs(a)
    sa = a.data["support"].astype(pa.dtype)
    sb = b.data["support"].astype(pa.dtype)
    ma, mb = jnp.reshape(expectation(a), (-1,)), jnp.reshape(expectation(b), (-1,))
    same = (a.data["token"][:, None] == b.data["token"][None, :]) & (a.data["token"][:, None] != CONSTANT)
    joint = jnp.einsum("uk,wk,uk->uw", sa, sb, pa)
    return jnp.where(same, joint - ma[:, None] * mb[None, :], 0.0)


def to_moments(state: State, h: Handle, where: str) -> Handle:
    """The exact mean and covariance of a categorical value as a new ``moments`` handle.

    ``h`` itself stays categorical, so its other uses keep the exact law (it used to be
    converted in place, and a Bernoulli read by a matmul was a Gaussian for every later
    use: ``relu(x[0] - 0.5)`` after ``x @ w`` gave 0.0525 for 0.1, exact in the other
    order). The view is made once and kept in ``h.data['view']`` (the interpreter
    forgets it with ``h``).

    Under the ``gaussian`` family every categorical value is an exact linear image of
    its site's one-hot encoding (``v_u = sum_k s_uk onehot[t_u, k]``): the one-hot
    (``tokens * K`` units, mean ``p``, covariance ``diag(p) - p p^T`` per token) is
    kept for the whole program, so values reaching the network along separate paths
    keep their exact correlation.
    """
    if "view" in h.data:
        return h.data["view"]
    site = h.data["site"]
    state.note(MOMENTS_NOTE.format(site=site, family=state.family), at=h.at)
    support = h.data["support"]
    dtype = h.data["probs"].dtype
    support = support.astype(dtype)
    token = h.data["token"]
    if state.family == "gaussian":
        root = _one_hot_root(state, h)
        k = support.shape[-1]
        rows = np.where(token == CONSTANT, 0, token)
        constant = jnp.asarray(token == CONSTANT)

        def fn(onehot):
            picked = jnp.reshape(onehot, (-1, k))[rows]
            return jnp.reshape(jnp.where(constant, support[:, 0], jnp.sum(support * picked, axis=-1)),
                               h.shape)

        view = affine_image(state, fn, [root], where)
    else:
        mean = expectation(h)
        var = jnp.reshape(jnp.diagonal(covariance(h, h)), h.shape)
        view = Handle(h.shape, mean.dtype, "moments", {"mean": mean, "var": var}, where)
    view.at = h.at
    h.data["view"] = view
    return view


def _one_hot_root(state: State, h: Handle) -> Handle:
    site = h.data["site"]
    if site not in state.categorical_roots:
        probs = h.data["probs"]
        t, k = probs.shape
        blocks = jax.vmap(lambda p: jnp.diag(p) - jnp.outer(p, p))(probs)  # (t, k, k)
        cov = jnp.einsum("ij,iab->iajb", jnp.eye(t, dtype=probs.dtype), blocks).reshape(t * k, t * k)
        root = Handle((t * k,), probs.dtype, "moments", {"mean": jnp.reshape(probs, (-1,)), "closure": True},
                      f"one-hot of categorical site {site!r}")
        state.set_cov(root, root, cov)
        # every value already in the Gaussian state came from other sites (a value of
        # this site enters only through this root), so it is independent of the root
        for other in state.active.values():
            state.set_cov(root, other, jnp.zeros((root.size, other.size), probs.dtype))
        state.activate(root)  # never retired: later values of the site are linear in it
        state.categorical_roots[site] = root
    return state.categorical_roots[site]
