"""Choosing a strategy for ``method="auto"``, and checking forced method names."""

from __future__ import annotations

from . import strategies

#: What ``method=`` accepts.
METHODS = ("auto",) + strategies.NAMES


def check_method(method, fn: str) -> str:
    """Return ``method`` if it is a known name, else raise naming the valid ones."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(
            f"{fn}: method must be one of {', '.join(repr(m) for m in METHODS)}, got {method!r}"
        )
    return method


def choose(op: str, geom, dtype) -> str:
    """The strategy ``method="auto"`` runs for ``op`` on this geometry and dtype."""
    return "vectorized"


def resolve(method: str, op: str, geom, dtype, fn: str):
    """The strategy module to run: the forced one, or the dispatcher's choice."""
    method = check_method(method, fn)
    if method == "auto":
        method = choose(op, geom, dtype)
    return strategies.get(method)


def auto_method_for(problem, dtype, backward: bool = False) -> str:
    """The strategy ``method="auto"`` runs for a :class:`fastconv.shapes.Problem` (for reports)."""
    return "vectorized"
