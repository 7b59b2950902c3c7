"""Detectors as geometry: comparisons are halfspaces, and/or/not/all/any build polytopes.

Under the ``gaussian`` family a boolean unit is a union of conjunctions
(disjunctive normal form) of literals ``sign * m[i] > 0``, where ``m`` is a
Gaussian *margin* (e.g. ``x - t`` for ``x > t``) tracked jointly with every
other value, so that the probability of a conjunction is a Gaussian polytope
probability with the correlations the message knows: exact 1-D and 2-D
formulas, minimax tilting (Botev 2017) beyond. Never an independence
assumption.

Literals on one scalar: a margin made as ``sigma * (x - c)`` from a value ``x``
(``x > t``, ``t > x``, a monotone chain's crossing, a level set's interval
ends) remembers ``x`` and ``c`` (its ``shift``). Literals of one unit of one
``x`` are then one coordinate with lower and upper bounds: a detector on a
single scalar (``abs(y) > t``, a band ``(y > a) & (y < b)``) is an exact union
of normal intervals, and a conjunction is a box on distinct coordinates,
instead of a degenerate polytope (perfectly correlated rows) whose gradient
is NaN.

Under the independence families a boolean unit is a two-point law (``p`` of
being true): ``and`` multiplies, ``or`` complements the product of
complements, ``all``/``any`` reduce likewise, and the result says so.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from ppl_mech._errors import UnsupportedPrimitiveError

from ._state import Handle, State

MAX_CONJUNCTIONS = 256
MAX_DISJOINT_LITERALS = 64
"""An or/any of up to this many single literals is split into disjoint orthants (exact gradient)."""
TRUE = ((),)
FALSE = ()


def shift_of(source: Handle, sigma: int, offset) -> tuple[int, np.ndarray, int, object]:
    """The ``shift`` tag of a margin ``sigma * (source - offset)`` (offset: the margin's shape).

    ``source`` is named by the value and units it was sliced from (``units_of``), so that
    literals on two slices of one unit share their scalar.
    """
    root, units = source.data.get("units_of", (source.id, np.arange(source.size)))
    return root, units, int(sigma), jnp.reshape(jnp.asarray(offset), (-1,))


def literal_events(margin: Handle, sign: int) -> np.ndarray:
    """One literal per unit: ``sign * margin[i] > 0``."""
    out = np.empty(margin.shape, dtype=object)
    for i, idx in enumerate(np.ndindex(*margin.shape)):
        out[idx] = (((margin.id, i, sign),),)
    return out


def constant_events(values) -> np.ndarray:
    values = np.asarray(values, dtype=bool)
    out = np.empty(values.shape, dtype=object)
    for idx in np.ndindex(*values.shape):
        out[idx] = TRUE if values[idx] else FALSE
    return out


def _simplify(dnf):
    unique = []
    for conj in dnf:
        conj = tuple(sorted(set(conj)))
        if any(lit[:2] == other[:2] and lit[2] != other[2] for lit in conj for other in conj):
            continue  # m > 0 and m < 0: empty
        if conj not in unique:
            unique.append(conj)
    if () in unique:
        return TRUE
    return tuple(unique)


def dnf_and(a, b, where: str):
    out = _simplify([x + y for x, y in itertools.product(a, b)])
    if len(out) > MAX_CONJUNCTIONS:
        raise UnsupportedPrimitiveError(
            f"{where}: the detector expands to more than {MAX_CONJUNCTIONS} polytopes"
        )
    return out


def dnf_or(a, b, where: str):
    out = _simplify(list(a) + list(b))
    if len(out) > MAX_CONJUNCTIONS:
        raise UnsupportedPrimitiveError(
            f"{where}: the detector expands to more than {MAX_CONJUNCTIONS} polytopes"
        )
    return out


def dnf_not(a, where: str):
    out = TRUE
    for conj in a:  # not (c1 or c2 ...) = and_i (not c_i) = and_i (or_l not l)
        out = dnf_and(out, tuple(((m, i, -s),) for (m, i, s) in conj), where)
    return out


def elementwise(op, a: np.ndarray, b: np.ndarray | None, where: str) -> np.ndarray:
    if b is None:
        out = np.empty(a.shape, dtype=object)
        for idx in np.ndindex(*a.shape):
            out[idx] = op(a[idx], where)
        return out
    a, b = np.broadcast_arrays(a, b)
    out = np.empty(a.shape, dtype=object)
    for idx in np.ndindex(*a.shape):
        out[idx] = op(a[idx], b[idx], where)
    return out


def reduce(op, a: np.ndarray, axes, where: str) -> np.ndarray:
    moved = np.moveaxis(a, axes, tuple(range(-len(axes), 0)))
    keep = moved.shape[: moved.ndim - len(axes)]
    flat = moved.reshape(keep + (-1,))
    out = np.empty(keep, dtype=object)
    for idx in np.ndindex(*keep):
        acc = TRUE if op is dnf_and else FALSE
        for item in flat[idx]:
            acc = op(acc, item, where)
        out[idx] = acc
    return out


def _joint_moments(state: State, atoms, margins: dict[int, Handle]):
    """Mean and covariance of the atoms' margins, one gather per pair of margin handles.

    (Element-by-element indexing would trace O(atoms^2) slices: minutes of compilation
    for a 100-halfspace polytope.)
    """
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for k, (m, i) in enumerate(atoms):
        positions, indices = groups.setdefault(m, ([], []))
        positions.append(k)
        indices.append(i)
    dtype = jnp.result_type(*(margins[m].data["mean"] for m in groups))
    n = len(atoms)
    mean = jnp.zeros(n, dtype)
    cov = jnp.zeros((n, n), dtype)
    for m1, (k1, i1) in groups.items():
        mean = mean.at[np.asarray(k1)].set(jnp.reshape(margins[m1].data["mean"], (-1,))[np.asarray(i1)])
        for m2, (k2, i2) in groups.items():
            block = state.get_cov(margins[m1], margins[m2])[np.ix_(np.asarray(i1), np.asarray(i2))]
            cov = cov.at[np.ix_(np.asarray(k1), np.asarray(k2))].set(block.astype(dtype))
    return mean, cov


UNION_GRADIENT_NOTE = (
    "a union of {count} polytopes (an or/any/max of detectors), estimated by mixture importance "
    "sampling: the value is unbiased, but its jax.grad is biased (by 5-17% in a gradient sweep): the "
    "weights jump where the reparameterised draws cross the other polytopes' faces, which the pathwise "
    "derivative misses"
)


def _union(state: State, polytopes, mean, cov, *, key, num_samples: int):
    from ppl_mech._gaussian_polytope import gaussian_union_probability

    state.note(UNION_GRADIENT_NOTE.format(count=len(polytopes)))
    r = gaussian_union_probability(polytopes, mean, cov, key=key, num_samples=num_samples)
    return r.probability, r.stderr


def probability(state: State, dnf, margins: dict[int, Handle], *, key, num_samples: int):
    """``(P, stderr)`` of one DNF under the joint Gaussian of its margins."""
    from ppl_mech._gaussian_polytope import gaussian_orthant_probability

    if dnf == FALSE:
        return jnp.zeros(()), jnp.zeros(())
    if dnf == TRUE:
        return jnp.ones(()), jnp.zeros(())
    scalars = _scalars(dnf, margins)
    if len({scalar for scalar, _, _ in scalars.values()}) < len(scalars):  # literals sharing a scalar
        return _bounded_probability(state, dnf, margins, scalars, key=key, num_samples=num_samples)
    atoms = sorted({(m, i) for conj in dnf for (m, i, _) in conj})
    position = {a: k for k, a in enumerate(atoms)}
    mean, cov = _joint_moments(state, atoms, margins)
    if len(dnf) == 1 and len(dnf[0]) == 1:
        (m, i, s), = dnf[0]
        std = jnp.sqrt(cov[0, 0])
        p = jax.scipy.special.ndtr(s * mean[0] / jnp.where(std > 0, std, 1.0))
        return jnp.where(std > 0, p, (s * mean[0] > 0).astype(mean.dtype)), jnp.zeros(())

    def conjunction(conj, key):
        signs = jnp.asarray([s for (_, _, s) in conj], mean.dtype)
        rows = [position[(m, i)] for (m, i, _) in conj]
        z_mean = signs * mean[jnp.asarray(rows)]
        z_cov = signs[:, None] * cov[jnp.ix_(jnp.asarray(rows), jnp.asarray(rows))] * signs[None, :]
        lower = jnp.zeros_like(z_mean)
        upper = jnp.full_like(z_mean, jnp.inf)
        r = gaussian_orthant_probability(lower, upper, z_mean, z_cov, key=key, num_samples=num_samples)
        return r.probability, r.stderr

    if len(dnf) == 1:
        return conjunction(dnf[0], key)
    if all(len(conj) == 1 for conj in dnf) and len(dnf) <= MAX_DISJOINT_LITERALS:
        # l_1 or ... or l_K  =  disjoint union of (l_k and not l_1 ... not l_{k-1}): K orthants,
        # each with relative precision in the far tail and an unbiased pathwise gradient
        literals = [conj[0] for conj in dnf]
        parts = [conjunction(tuple(dict.fromkeys([lit] + [(m, i, -s) for (m, i, s) in literals[:k]])),
                             jax.random.fold_in(key, k)) for k, lit in enumerate(literals[:2])]
        if len(literals) > 2:
            parts.append(_disjoint_tilted_parts(literals, position, mean, cov, key, num_samples))
        return sum(p for p, _ in parts), jnp.sqrt(sum(se**2 for _, se in parts))
    polytopes = []
    for conj in dnf:
        a = np.zeros((len(conj), len(atoms)))
        for row, (m, i, s) in enumerate(conj):
            a[row, position[(m, i)]] = -s
        polytopes.append((jnp.asarray(a, mean.dtype), jnp.zeros(len(conj), mean.dtype)))
    return _union(state, polytopes, mean, cov, key=key, num_samples=num_samples)


def _disjoint_tilted_parts(literals, position, mean, cov, key, num_samples: int):
    """``(sum_k P_k, sqrt(sum_k se_k^2))`` over ``P_k = P[l_k and not l_1 .. not l_(k-1)]``, k >= 3.

    Every part is padded to all ``K`` literals (the later ones unconstrained: bounds
    ``(-inf, inf)``) so that one minimax tilting is vmapped over the parts: unrolled, each
    part's own tilting compiled separately (about 3 s per literal; an ``any`` over 24 units
    took minutes to compile).
    """
    from ppl_mech._minimax_tilting import minimax_tilting

    count = len(literals)
    rows = np.asarray([position[(m, i)] for (m, i, _) in literals])
    signs = np.asarray([s for (_, _, s) in literals], np.float64)
    ks = np.arange(2, count)
    j = np.arange(count)
    part_signs = np.where(j[None, :] < ks[:, None], -signs[None, :], signs[None, :])  # (parts, K)
    lower = np.where(j[None, :] <= ks[:, None], 0.0, -np.inf)
    sub_mean, sub_cov = mean[rows], cov[np.ix_(rows, rows)]

    def part(sign, low, k):
        sign = sign.astype(mean.dtype)
        est = minimax_tilting(low - sign * sub_mean, jnp.full(count, jnp.inf, mean.dtype),
                              sign[:, None] * sub_cov * sign[None, :], key=jax.random.fold_in(key, k),
                              num_samples=num_samples)
        return est.probability, est.stderr

    p, se = jax.vmap(part)(jnp.asarray(part_signs), jnp.asarray(lower, mean.dtype), jnp.asarray(ks))
    return jnp.sum(p), jnp.sqrt(jnp.sum(se**2))


def _scalars(dnf, margins: dict[int, Handle]) -> dict:
    """Per atom ``(m, i)``: ``(scalar, sigma, offset)`` with ``margin = sigma * (scalar - offset)``.

    ``scalar`` is ``(source id, unit)`` for a shift-tagged margin, else the atom itself
    (``sigma = 1``, ``offset = 0``).
    """
    out = {}
    for conj in dnf:
        for m, i, _ in conj:
            shift = margins[m].data.get("shift")
            if shift is None:
                out[(m, i)] = ((m, i), 1, 0.0)
            else:
                root, units, sigma, offset = shift
                out[(m, i)] = ((root, int(units[i])), sigma, offset[i])
    return out


def _bounded_probability(state: State, dnf, margins, scalars, *, key, num_samples: int):
    """``(P, stderr)`` of a DNF some of whose literals share a scalar: bounds on coordinates.

    Coordinate ``z`` is represented by one of its atoms ``r`` (``z = sigma_r * m_r + c_r``);
    a literal ``s * sigma * (z - c) > 0`` is ``z > c`` or ``z < c``.
    """
    from ppl_mech._gaussian_polytope import gaussian_orthant_probability

    representative = {}
    for atom, (scalar, _, _) in sorted(scalars.items()):
        representative.setdefault(scalar, atom)
    coords = sorted(representative)
    atoms = [representative[c] for c in coords]
    m_mean, m_cov = _joint_moments(state, atoms, margins)
    sig = jnp.asarray([scalars[a][1] for a in atoms], m_mean.dtype)
    off = jnp.stack([jnp.asarray(scalars[a][2], m_mean.dtype) for a in atoms])
    mean = sig * m_mean + off
    cov = sig[:, None] * m_cov * sig[None, :]
    dtype = mean.dtype

    def box(conj):  # per coordinate: bounds, and (static) which of them the literals set
        lower = [jnp.asarray(-jnp.inf, dtype)] * len(coords)
        upper = [jnp.asarray(jnp.inf, dtype)] * len(coords)
        has_lower, has_upper = [False] * len(coords), [False] * len(coords)
        for m, i, s in conj:
            scalar, sigma, c = scalars[(m, i)]
            k = coords.index(scalar)
            c = jnp.asarray(c, dtype)
            if s * sigma > 0:
                lower[k], has_lower[k] = jnp.maximum(lower[k], c), True
            else:
                upper[k], has_upper[k] = jnp.minimum(upper[k], c), True
        return jnp.stack(lower), jnp.stack(upper), has_lower, has_upper

    boxes = [box(conj) for conj in dnf]
    if len(coords) == 1:
        lower = jnp.stack([b[0][0] for b in boxes])
        upper = jnp.stack([b[1][0] for b in boxes])
        return interval_union_probability(lower, upper, mean[0], cov[0, 0]), jnp.zeros((), dtype)
    if len(boxes) == 1:
        lower, upper = boxes[0][:2]
        r = gaussian_orthant_probability(lower, jnp.maximum(upper, lower), mean, cov, key=key,
                                         num_samples=num_samples)
        return r.probability, r.stderr
    polytopes = []
    eye = np.eye(len(coords))
    for lower, upper, has_lower, has_upper in boxes:  # A x <= b, one row per bound a literal set
        rows = [(-eye[k], -lower[k]) for k in range(len(coords)) if has_lower[k]]
        rows += [(eye[k], upper[k]) for k in range(len(coords)) if has_upper[k]]
        a = jnp.asarray(np.stack([r for r, _ in rows]), dtype)
        polytopes.append((a, jnp.stack([b for _, b in rows])))
    return _union(state, polytopes, mean, cov, key=key, num_samples=num_samples)


def interval_union_probability(lower, upper, mean, variance):
    """``P[z in union_k (lower_k, upper_k)]`` for ``z ~ N(mean, variance)``; the intervals may overlap.

    Exact: sorted by lower end, each interval adds the part beyond every earlier interval's
    upper end. Upper tails are used above the mean so far-tail intervals keep their digits.
    """
    sd = jnp.sqrt(jnp.maximum(variance, 0.0))
    safe = jnp.where(sd > 0, sd, 1.0)
    upper = jnp.maximum(upper, lower)  # an empty interval adds nothing
    order = jnp.argsort(lower)
    lower, upper = lower[order], upper[order]
    reach = jnp.concatenate([jnp.full((1,), -jnp.inf, lower.dtype), jax.lax.cummax(upper)[:-1]])

    def standardized(end):  # infinite ends stay infinite, without an inf * 0 in the gradient
        finite = jnp.isfinite(end)
        return jnp.where(finite, (jnp.where(finite, end, 0.0) - mean) / safe, end)

    a, b = standardized(jnp.maximum(lower, reach)), standardized(jnp.maximum(upper, reach))
    cdf = jax.scipy.special.ndtr
    p = jnp.sum(jnp.where(a > 0, cdf(-a) - cdf(-b), cdf(b) - cdf(a)))
    at_mean = jnp.any((lower < mean) & (mean < upper)).astype(lower.dtype)
    return jnp.where(sd > 0, jnp.clip(p, 0.0, 1.0), at_mean)
