"""Order K = 4 nonlinear step: every diagram of total cost <= 3, by enumeration.

The input message (after a linear step) has mean mu, covariance S, a dense third cumulant
k3 and a factored fourth cumulant k4 (:class:`FactoredFourth`). As at K = 3 (see
``_nonlinear.py``), the density is expanded around the product Gaussian with the exact
means and variances, and a *power cumulant* ``pK(x_u^{p_u}, u = 1..d)`` of distinct units
is a sum over diagrams: multisets of blocks (a block is one input-cumulant entry; its leg
vector v says how many legs sit on each unit), connected on the units, each block
weighted ``k_v / prod_u v_u!``, each repeated block ``1/m!``, and each unit u touched by
k legs contributing ``c_u(k, p_u) = E_G[d^k f(z_u)^p_u]``.

Power counting (ARC, eq. (14)): ``cost(v) = |v| - 1 - [all v even]``; K = 4 keeps the
diagrams with total cost <= 3. The blocks that can occur are the off-diagonal covariance
(cost 1), every slice of k3 (cost 2) and the slices (4), (2,2) (cost 2) and (3,1), (2,1,1),
(1,1,1,1) (cost 3) of k4; k5 and beyond would cost >= 4 and are not tracked (ARC's SIMPLE
term set for even K has no radial parts).

Here the diagrams are *enumerated* (``diagram_classes``, at trace time, cached) rather than
written out by hand, for every slice pattern of degree <= 4 on at most three distinct units
(these are dense: n, n^2 or n^3 numbers). The all-distinct fourth-cumulant slice cannot be
dense (n^4); its diagrams of cost <= 3 are exactly the trees -- the input k4 block, the
covariance path i-j-k-l, the star and the k3-plus-edge -- and each is ``p_i q_j B_kl``
summed over a hub unit r = j, so they are appended to the factored form (R grows by n).
The power cumulants are turned into ordinary cumulants slice by slice with the
Leonov–Shiryaev formula; the repeated-index slices of the new factored k4 are then fixed up
exactly by a correction term ``Sym(sum_r e_r (x) e_r (x) C_r)`` (R grows by another n).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from collections.abc import Callable

import jax.numpy as jnp
from jax import Array

from ._message import CumulantMessage, FactoredFourth

BUDGET = 3
"""Total diagram cost kept at K = 4."""

Block = tuple[int, ...]
DENSE_PATTERNS: tuple[tuple[int, ...], ...] = (
    (1,), (2,), (3,), (4,), (1, 1), (2, 1), (3, 1), (2, 2), (1, 1, 1), (2, 1, 1),
)
"""Slice patterns (legs per distinct unit, non-increasing) computed densely."""


# --- diagram enumeration (static, at trace time) -------------------------------------------


def block_cost(v: Block) -> int:
    """Power-counting cost of a block with leg vector v (ARC eq. (14))."""
    return sum(v) - 1 - int(all(x % 2 == 0 for x in v))


def _pattern(v: Block) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(pattern, units)``: the block's non-zero leg counts, non-increasing, and their units."""
    units = tuple(sorted((u for u in range(len(v)) if v[u]), key=lambda u: (-v[u], u)))
    return tuple(v[u] for u in units), units


def _connected(blocks: tuple[Block, ...], d: int) -> bool:
    if d == 1:
        return True
    parent = list(range(d))

    def find(u: int) -> int:
        while parent[u] != u:
            u = parent[u]
        return u

    touched = set()
    for v in blocks:
        units = [u for u in range(d) if v[u]]
        touched.update(units)
        for u in units[1:]:
            parent[find(u)] = find(units[0])
    return len(touched) == d and len({find(u) for u in range(d)}) == 1


def _symmetries(powers: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Permutations of the units that keep every unit's power."""
    d = len(powers)
    return [pi for pi in itertools.permutations(range(d))
            if all(powers[pi[u]] == powers[u] for u in range(d))]


def _permute(v: Block, pi: tuple[int, ...]) -> Block:
    out = [0] * len(v)
    for u, x in enumerate(v):
        out[pi[u]] = x
    return tuple(out)


@functools.cache
def diagram_classes(
    powers: tuple[int, ...], budget: int = BUDGET, max_degree: int = 4
) -> tuple[tuple[tuple[Block, ...], int], ...]:
    """Connected diagrams of ``pK(x_u^powers[u])`` with total cost <= budget, up to symmetry.

    Returns ``(representative blocks, number of labelled diagrams in its class)`` pairs.
    Blocks are input-cumulant entries of degree 2..max_degree; degree-2 blocks on a single
    unit are excluded (the expansion is around the Gaussian with the exact variances).
    """
    d = len(powers)
    candidates = []
    for v in itertools.product(range(max_degree + 1), repeat=d):
        size = sum(v)
        if size < 2 or size > max_degree or (size == 2 and max(v) == 2):
            continue
        if block_cost(v) <= budget:
            candidates.append(v)
    group = _symmetries(powers)
    classes: Counter = Counter()
    for m in range(budget + 1):
        for combo in itertools.combinations_with_replacement(candidates, m):
            if sum(block_cost(v) for v in combo) > budget or not _connected(combo, d):
                continue
            key = min(tuple(sorted(_permute(v, pi) for v in combo)) for pi in group)
            classes[key] += 1
    return tuple(sorted(classes.items()))


def diagram_weight(blocks: tuple[Block, ...]) -> float:
    """``1 / (prod_blocks prod_u v_u! * prod_distinct-blocks multiplicity!)``."""
    weight = 1.0
    for v in blocks:
        weight /= math.prod(math.factorial(x) for x in v)
    for mult in Counter(blocks).values():
        weight /= math.factorial(mult)
    return weight


# --- dense slices -----------------------------------------------------------------------------


def _place(t: Array, units: tuple[int, ...], d: int, n: int) -> Array:
    """Broadcastable d-dim view of ``t`` whose axes belong to ``units`` (in that order)."""
    order = sorted(range(len(units)), key=lambda a: units[a])
    t = jnp.transpose(t, order) if len(units) > 1 else t
    shape = [1] * d
    for u in units:
        shape[u] = n
    return jnp.reshape(t, shape)


def _distinct_mask(d: int, n: int, dtype) -> Array:
    if d == 1:
        return jnp.ones((n,), dtype)
    eye = jnp.eye(n, dtype=dtype)
    if d == 2:
        return 1.0 - eye
    off = 1.0 - eye
    return off[:, :, None] * off[:, None, :] * off[None, :, :]


def _symmetrize(t: Array, group: list[tuple[int, ...]]) -> Array:
    if len(group) == 1:
        return t
    return sum(jnp.transpose(t, pi) for pi in group) / len(group)


def factored_fourth_slices(fourth: FactoredFourth) -> dict[tuple[int, ...], Array]:
    """Repeated-index slices (4), (3,1), (2,2), (2,1,1) of ``Sym(sum_r p_r q_r B_r)``.

    With ``A_ijr = (p_ir q_jr + q_ir p_jr)/2`` and ``B`` symmetric, the 4!/multiplicity leg
    assignments give (ARC, ``factor_k4._factored_get_dslice``):
    ``[iiii] = A_ii B_ii``; ``[iiij] = (A_ii B_ij + A_ij B_ii)/2``;
    ``[iijj] = 2/3 A_ij B_ij + (A_ii B_jj + A_jj B_ii)/6``;
    ``[iijk] = (A_ii B_jk + A_jk B_ii)/6 + (A_ij B_ik + A_ik B_ij)/3`` (sums over r).
    Values on further repeated indices (e.g. [iiij] at j = i) are not meaningful.
    FLOPs O(n^3 R).
    """
    p, q, b = fourth
    pq = p * q  # A_iir
    bd = jnp.einsum("iir->ir", b)  # B_iir
    s4 = jnp.sum(pq * bd, axis=1)
    a_bd = 0.5 * ((p * bd) @ q.T + (q * bd) @ p.T)  # sum_r A_ijr B_iir
    s31 = 0.5 * jnp.einsum("ir,ijr->ij", pq, b) + 0.5 * a_bd
    x = jnp.einsum("ir,jr,ijr->ij", p, q, b)
    ab = 0.5 * (x + x.T)  # sum_r A_ijr B_ijr
    s22 = (2.0 / 3.0) * ab + (pq @ bd.T + bd @ pq.T) / 6.0
    t_ii_jk = jnp.einsum("ir,jkr->ijk", pq, b)
    t_jk_ii = 0.5 * (jnp.einsum("jr,kr,ir->ijk", p, q, bd) + jnp.einsum("jr,kr,ir->ijk", q, p, bd))
    y = 0.5 * (jnp.einsum("ir,jr,ikr->ijk", p, q, b) + jnp.einsum("ir,jr,ikr->ijk", q, p, b))
    s211 = (t_ii_jk + t_jk_ii) / 6.0 + (y + jnp.transpose(y, (0, 2, 1))) / 3.0
    return {(4,): s4, (3, 1): s31, (2, 2): s22, (2, 1, 1): s211}


def correction_fourth(slices: dict[tuple[int, ...], Array], n: int, dtype) -> FactoredFourth:
    """``Sym(sum_r e_r (x) e_r (x) C_r)`` whose repeated-index slices are ``slices`` and whose
    all-distinct slice is zero (ARC's ``FactoredTensor4.from_dstensor``).

    ``slices[(3, 1)]``, ``[(2, 2)]``, ``[(2, 1, 1)]`` must vanish on repeated indices.
    """
    eye = jnp.eye(n, dtype=dtype)
    # C[k, l, r] (r: the doubled unit): C[r,r,r] = s4; C[j,r,r] = 4 s31[r,j];
    # C[j,j,r] = 3 s22[r,j]; C[j,k,r] = 6 s211[r,j,k]; then symmetrised in (k, l).
    c = eye[:, :, None] * eye[:, None, :] * slices[(4,)][None, None, :]
    c = c + 4.0 * jnp.transpose(slices[(3, 1)])[:, None, :] * eye[None, :, :]
    c = c + 3.0 * eye[:, :, None] * jnp.transpose(slices[(2, 2)])[:, None, :]
    c = c + 6.0 * jnp.transpose(slices[(2, 1, 1)], (1, 2, 0))
    c = 0.5 * (c + jnp.transpose(c, (1, 0, 2)))
    return FactoredFourth(eye, eye, c)


def concat_fourth(*parts: FactoredFourth) -> FactoredFourth:
    return FactoredFourth(*(jnp.concatenate(fields, axis=-1) for fields in zip(*parts, strict=True)))


# --- power cumulants -> cumulants (Leonov–Shiryaev) ------------------------------------------


def _set_partitions(items: list[int]):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]
        yield [[first]] + part


@functools.cache
def leonov_shiryaev_terms(pattern: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Terms of ``pK(pattern) - K(pattern)``: each a tuple of leg vectors (one per block).

    ``pK(x_0^{m_0}, x_1^{m_1}, ...) = sum over partitions pi of the legs that connect all
    units of prod_{b in pi} K(b)``; the term pi = {all legs} is ``K(pattern)`` itself.
    """
    d = len(pattern)
    legs = [u for u in range(d) for _ in range(pattern[u])]
    terms = []
    for part in _set_partitions(list(range(len(legs)))):
        if len(part) == 1:
            continue
        vectors = tuple(tuple(sum(1 for a in block if legs[a] == u) for u in range(d)) for block in part)
        if _connected(vectors, d):
            terms.append(vectors)
    return tuple(terms)


# --- the step ---------------------------------------------------------------------------------


def fourth_order_step(
    message: CumulantMessage,
    cov_in: Array,
    gauss_cov: Array,
    c: Callable[[int, int], Array],
) -> CumulantMessage:
    """K = 4: diagrams of total cost <= 3 (module docstring)."""
    mean = message.mean
    n, dtype = mean.shape[0], mean.dtype
    eye = jnp.eye(n, dtype=dtype)
    off = 1.0 - eye
    sig = cov_in * off

    # Input blocks by slice pattern (dense); absent ones are zero.
    blocks: dict[tuple[int, ...], Array] = {(1, 1): sig}
    third = message.third
    if third is not None:
        blocks[(3,)] = jnp.einsum("iii->i", third)
        blocks[(2, 1)] = jnp.einsum("iij->ij", third)
        blocks[(1, 1, 1)] = third
    fourth = message.fourth
    has_fourth = fourth is not None and fourth.p.shape[1] > 0
    if has_fourth:
        fourth_slices = factored_fourth_slices(fourth)
        blocks.update(fourth_slices)

    placed: dict[tuple, Array] = {}

    def place(array_key, units: tuple[int, ...], d: int, source) -> Array:
        key = (array_key, units, d)
        if key not in placed:
            placed[key] = _place(source(), units, d, n)
        return placed[key]

    def dense_power_cumulant(powers: tuple[int, ...]) -> tuple[Array, Array]:
        """``(pK, its pure-covariance diagrams)`` on distinct units, dense."""
        d = len(powers)
        # Group the diagrams by the legs on each unit: one Wick product per group.
        groups: dict[tuple[int, ...], list] = {}
        for diagram, count in diagram_classes(powers):
            if any(_pattern(v)[0] not in blocks for v in diagram):
                continue
            legs = tuple(sum(v[u] for v in diagram) for u in range(d))
            groups.setdefault(legs, []).append((diagram, count))
        total = gaussian = jnp.zeros((n,) * d, dtype)
        for legs, members in groups.items():
            inner = inner_gaussian = 0.0
            for diagram, count in members:
                factors = [
                    place(pattern, units, d, lambda pattern=pattern: blocks[pattern])
                    for pattern, units in map(_pattern, diagram)
                ]
                term = count * diagram_weight(diagram) * functools.reduce(jnp.multiply, factors, 1.0)
                inner = inner + term
                if diagram and all(sum(v) == 2 for v in diagram):
                    inner_gaussian = inner_gaussian + term
            wick = functools.reduce(jnp.multiply, [
                place(("c", k, powers[u]), (u,), d, lambda k=k, p=powers[u]: c(k, p))
                for u, k in enumerate(legs)
            ])
            total = total + wick * inner
            if not isinstance(inner_gaussian, float):
                gaussian = gaussian + wick * inner_gaussian
        group, mask = _symmetries(powers), _distinct_mask(d, n, dtype)
        return _symmetrize(total, group) * mask, _symmetrize(gaussian, group) * mask

    power, pair_gaussian = {}, None
    for pattern in DENSE_PATTERNS:
        power[pattern], gaussian_part = dense_power_cumulant(pattern)
        if pattern == (1, 1):
            pair_gaussian = gaussian_part

    # Ordinary cumulants, slice by slice, lowest degree first.
    kappa: dict[tuple[int, ...], Array] = {}
    for pattern in sorted(DENSE_PATTERNS, key=sum):
        d = len(pattern)
        value = power[pattern]
        for term in leonov_shiryaev_terms(pattern):
            factors = []
            for v in term:
                sub, units = _pattern(v)
                factors.append(_place(kappa[sub], units, d, n))
            value = value - functools.reduce(jnp.multiply, factors)
        kappa[pattern] = value * _distinct_mask(d, n, dtype)

    # Covariance: the exact Gaussian two-unit part (all multi-edges) plus the non-Gaussian
    # diagrams of cost <= 3.
    non_gaussian_pair = power[(1, 1)] - pair_gaussian
    cov = jnp.diag(kappa[(2,)]) + off * gauss_cov + non_gaussian_pair

    # Dense third cumulant from its three slice types.
    k21 = kappa[(2, 1)]  # [i, i, j]
    third_out = (
        kappa[(1, 1, 1)]
        + eye[:, :, None] * k21[:, None, :]
        + eye[:, None, :] * k21[:, :, None]
        + eye[None, :, :] * jnp.transpose(k21)[:, :, None]
        + eye[:, :, None] * eye[:, None, :] * kappa[(3,)][:, None, None]
    )

    # Fourth cumulant, all-distinct slice, factored: the input k4 with c(1,1) on each leg,
    # plus the trees hanging off an edge (i, r): p = c1 sig, q = I, B[k, l, r] = paths
    # (12 labelled) + stars (4) + k3-plus-edge (12).
    c1, c2, c3 = c(1, 1), c(2, 1), c(3, 1)
    sig_c1 = sig * c1[None, :]
    b_edge = 12.0 * (c2[:, None] * sig * c2[None, :]).T[:, None, :] * sig_c1[:, :, None]
    star = jnp.transpose(sig_c1)  # [k, r] = S_rk c1_k
    b_edge = b_edge + 4.0 * c3[None, None, :] * star[:, None, :] * star[None, :, :]
    if third is not None:
        distinct3 = third * _distinct_mask(3, n, dtype)
        b_edge = b_edge + 12.0 * jnp.transpose(distinct3, (1, 2, 0)) * (
            c1[:, None, None] * c1[None, :, None] * c2[None, None, :]
        )
    b_edge = 0.5 * (b_edge + jnp.transpose(b_edge, (1, 0, 2)))
    edge = FactoredFourth(c1[:, None] * sig, eye, b_edge)
    have = factored_fourth_slices(edge)
    parts = [edge]
    if has_fourth:
        p, q, b = fourth
        propagated = FactoredFourth(
            c1[:, None] * p, c1[:, None] * q, c1[:, None, None] * c1[None, :, None] * b
        )
        parts.insert(0, propagated)
        scale = {
            (4,): c1**4,
            (3, 1): (c1**3)[:, None] * c1[None, :],
            (2, 2): (c1 * c1)[:, None] * (c1 * c1)[None, :],
            (2, 1, 1): (c1 * c1)[:, None, None] * c1[None, :, None] * c1[None, None, :],
        }
        have = {key: have[key] + scale[key] * fourth_slices[key] for key in have}
    missing = {
        key: (kappa[key] - have[key]) * _distinct_mask(len(key), n, dtype)
        for key in ((4,), (3, 1), (2, 2), (2, 1, 1))
    }
    parts.append(correction_fourth(missing, n, dtype))
    return CumulantMessage(kappa[(1,)], cov, third_out, concat_fourth(*parts))
