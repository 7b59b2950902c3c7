"""Notes (approximations made) attributed to the output sites they affect.

An interpreter records each note with the place it was made: a top-level
equation of the jaxpr (its index), a latent input (``("input", k)``), the
reporting of one output (``("output", name)``), or nowhere in particular
(``None``: a family-wide presumption). A note made while forcing a lazy value
is filed under the equation that made that value, not the one that happened to
force it, so every site that reads the value gets it. An output site carries
the notes of the equations and inputs it depends on, its own, and the
family-wide ones; a model's other sites no longer lend it their warnings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jax.extend.core import Literal


class NoteBook:
    def __init__(self):
        self.at: Any = None  # where the interpreter is now
        self._notes: dict[str, set] = {}  # text -> the places it was made

    def add(self, text: str, at: Any = None) -> None:
        self._notes.setdefault(text, set()).add(self.at if at is None else at)

    def texts(self) -> list[str]:
        return list(self._notes)

    def for_outputs(self, jaxpr, names: Sequence[str]) -> dict[str, list[str]]:
        """``{name: notes}`` for the outputs of ``jaxpr`` (a ``Jaxpr``), in recording order."""
        depends = _dependencies(jaxpr)
        out = {}
        for name, var in zip(names, jaxpr.outvars, strict=True):
            mask = 0 if isinstance(var, Literal) else depends.get(var, 0)
            out[name] = [text for text, places in self._notes.items()
                         if any(_reaches(place, name, mask, len(jaxpr.eqns)) for place in places)]
        return out


def _reaches(place, name: str, mask: int, equations: int) -> bool:
    if place is None:
        return True
    if isinstance(place, int):
        return bool(mask >> place & 1)
    kind, key = place
    if kind == "input":
        return bool(mask >> (equations + key) & 1)
    return kind == "output" and key == name


def _dependencies(jaxpr) -> dict:
    """Per variable, a bit mask of the top-level equations (bit i) and inputs (bit E + k) it reads."""
    equations = len(jaxpr.eqns)
    depends: dict = {v: 1 << (equations + k) for k, v in enumerate(jaxpr.invars)}
    for i, eqn in enumerate(jaxpr.eqns):
        mask = 1 << i
        for v in eqn.invars:
            if not isinstance(v, Literal):
                mask |= depends.get(v, 0)
        for v in eqn.outvars:
            depends[v] = mask
    return depends
