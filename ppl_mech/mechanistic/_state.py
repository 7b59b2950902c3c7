"""The interpreter's state: which jaxpr values are random, and their messages.

A random value is a :class:`Handle`; the family's messages about it live in
:class:`State`. Under the ``gaussian`` family the state holds the *joint*
covariance of every handle that a later equation still uses (blocks
``cov[a, b]``), so that ops combining two random values (residual adds, a
detector over two layers) see their correlation. Handles whose only remaining
use is to be reported (outputs) are *finalized*: they keep their mean and
own covariance and stop growing cross blocks, so a deep network's per-layer
output sites cost nothing extra.

Handle kinds:
    ``moments``     a real-valued Gaussian-closed value (mean, variance or covariance)
    ``two_point``   independence families: each unit is ``lo`` w.p. ``1-p`` and ``hi`` w.p. ``p``
                    (exact for Bernoulli inputs, booleans and their elementwise images)
    ``events``      gaussian family: booleans as unions of polytopes over Gaussian margins
    ``categorical`` an integer site with known probabilities (one-hot / embedding lookups)
    ``argmax``      the argmax over an axis of a ``moments`` value (for ``argmax == k`` detectors)
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._notes import NoteBook

_ids = itertools.count()


class Handle:
    """Identity of one random array in the program (shared by aliases across sub-jaxprs)."""

    __slots__ = ("id", "shape", "dtype", "kind", "data", "origin", "at")

    def __init__(self, shape, dtype, kind: str, data: dict[str, Any], origin: str):
        self.id = next(_ids)
        self.shape = tuple(shape)
        self.dtype = dtype
        self.kind = kind
        self.data = data  # kind-specific arrays (mean, var, lo, hi, p, probs, events...)
        self.origin = origin  # the site or equation that made it, for error messages
        self.at = None  # the top-level equation or input that made it, for notes (``_notes``)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return f"Handle#{self.id}({self.kind}, {self.shape}, from {self.origin})"


def boolean_law(shape, p, origin: str) -> Handle:
    """A boolean ``two_point`` handle: each unit is ``True`` with probability ``p``."""
    zero = jnp.zeros(shape, jnp.bool_)
    return Handle(shape, jnp.bool_, "two_point", {"lo": zero, "hi": ~zero, "p": p}, origin)


class State:
    """Messages of the live random handles, plus bookkeeping of what is still needed.

    Attributes:
        family: ``"mean"``, ``"diagonal"`` or ``"gaussian"``.
        cov: ``(id_a, id_b) -> (size_a, size_b)`` blocks (``gaussian`` only), stored
            once per unordered pair.
        active: ids of handles a later equation still uses (cross blocks are kept
            between these only).
        notebook: approximations made, each filed where it was made (``_notes``).
    """

    def __init__(self, family: str, relu: str = "exact"):
        self.family = family
        self.relu = relu  # "exact" (Phi_2 closed form) or "hermite" (Mehler series) covariances
        self.cov: dict[tuple[int, int], Any] = {}
        self.active: dict[int, Handle] = {}
        self.notebook = NoteBook()
        self.numbers: dict[str, Any] = {}
        self.categorical_roots: dict[str, Handle] = {}

    # --- covariance blocks (gaussian family) ---------------------------------------
    def get_cov(self, a: Handle, b: Handle):
        if (a.id, b.id) in self.cov:
            return self.cov[(a.id, b.id)]
        if (b.id, a.id) in self.cov:
            return self.cov[(b.id, a.id)].T
        raise KeyError(f"no covariance between {a} and {b}")

    def set_cov(self, a: Handle, b: Handle, block) -> None:
        self.cov.pop((b.id, a.id), None)
        self.cov[(a.id, b.id)] = block

    def activate(self, handle: Handle) -> None:
        self.active[handle.id] = handle

    def retire(self, handle: Handle) -> None:
        """The handle is no longer used by any later equation: drop its cross blocks."""
        self.active.pop(handle.id, None)
        for key in [k for k in self.cov if handle.id in k and k != (handle.id, handle.id)]:
            del self.cov[key]

    def forget(self, handle: Handle) -> None:
        self.retire(handle)
        self.cov.pop((handle.id, handle.id), None)

    def become(self, handle: Handle, new: Handle) -> None:
        """Make ``handle`` (an existing identity, e.g. a lazy value) carry ``new``'s message."""
        handle.kind, handle.data, handle.dtype = "moments", new.data, new.dtype
        if self.family != "gaussian":
            return
        for key in [k for k in self.cov if new.id in k]:
            block = self.cov.pop(key)
            a, b = key
            self.cov[(handle.id if a == new.id else a, handle.id if b == new.id else b)] = block
        self.active.pop(new.id, None)
        self.activate(handle)

    def record(self, key: str, value) -> None:
        """Keep the worst (largest) value of a numeric diagnostic."""
        self.numbers[key] = value if key not in self.numbers else jnp.maximum(self.numbers[key], value)

    def note(self, text: str, at=None) -> None:
        """Record an approximation, made here or (``at``) where the value it concerns was made."""
        self.notebook.add(text, at)


def flat(x) -> Any:
    return jnp.reshape(x, (-1,))


def variance_of(state: State, h: Handle):
    """Per-unit variance of a ``moments`` handle (shape ``h.shape``)."""
    if state.family == "gaussian":
        return jnp.reshape(jnp.diagonal(state.get_cov(h, h)), h.shape)
    return h.data.get("var", jnp.zeros(h.shape, h.data["mean"].dtype))


def unit_index(shape) -> np.ndarray:
    return np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
