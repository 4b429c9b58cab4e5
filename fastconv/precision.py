"""The precision setting: may ``auto`` and ``measure`` choose algorithms that round differently?

In the spirit of ``torch.set_float32_matmul_precision``. Direct and im2col convolutions sum each
output's products in some fixed order: their error is that of the sum itself (~1e-7 of the
output's scale in float32). Faster algorithms transform the data first: Winograd's F(4x4, 3x3)
errs by up to ~2e-5 of the output's scale in float32 (each strategy states its measured bound,
``Strategy.error_bound``). The setting decides which of them ``method="auto"`` and
``method="measure"`` may pick:

* ``"highest"``: exact-order algorithms only (direct, img2col, vectorized);
* ``"high"`` (the default): also those whose measured bound is at most :data:`HIGH_BOUND`
  (1e-4 of the output's scale) for the problem's dtype.

A forced ``method=`` is always honoured, whatever the setting. The default comes from the
environment variable ``FASTCONV_PRECISION`` when set. :func:`set_precision` changes it for the
process; :func:`precision` is a context manager that overrides it for the current thread only
and restores it on exit (so concurrent threads never see each other's temporary settings).
"""

from __future__ import annotations

import contextlib
import os
import threading

__all__ = ["HIGH_BOUND", "LEVELS", "get_precision", "precision", "set_precision"]

#: The settings, strictest first.
LEVELS = ("highest", "high")

#: The largest error bound (relative to the output's scale) "high" accepts.
HIGH_BOUND = 1e-4

_lock = threading.Lock()
_local = threading.local()


def _checked(level, where: str) -> str:
    if not isinstance(level, str) or level not in LEVELS:
        raise ValueError(f"{where} must be one of {', '.join(repr(v) for v in LEVELS)}, got {level!r}")
    return level


_default = None  # read from the environment on first use


def get_precision() -> str:
    """The setting in force in this thread: a :func:`precision` block's, else the process's.

    Returns
    -------
    str
        ``"highest"`` or ``"high"``.
    """
    level = getattr(_local, "level", None)
    if level is not None:
        return level
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = _checked(os.environ.get("FASTCONV_PRECISION", "high").strip() or "high",
                                    "FASTCONV_PRECISION")
    return _default


def set_precision(level: str) -> None:
    """Set the process's precision setting (see the module docstring).

    Parameters
    ----------
    level : {"highest", "high"}
        ``"highest"`` keeps ``auto`` and ``measure`` on exact-order algorithms; ``"high"`` lets
        them pick Winograd where its measured error bound is at most 1e-4.

    Examples
    --------
    >>> import fastconv
    >>> fastconv.set_precision("highest"); fastconv.get_precision()
    'highest'
    >>> fastconv.set_precision("high")
    """
    global _default
    level = _checked(level, "set_precision: level")
    with _lock:
        _default = level


@contextlib.contextmanager
def precision(level: str):
    """Use the precision setting ``level`` in this thread for the block, then restore the previous one.

    Parameters
    ----------
    level : {"highest", "high"}

    Examples
    --------
    >>> import fastconv
    >>> with fastconv.precision("highest"):
    ...     fastconv.get_precision()
    'highest'
    """
    level = _checked(level, "precision: level")
    previous = getattr(_local, "level", None)
    _local.level = level
    try:
        yield level
    finally:
        _local.level = previous


def allows(bound, dtype_name: str, level: str | None = None) -> bool:
    """Whether a strategy with error ``bound`` (None: exact order; else a mapping dtype name -> bound)
    may be chosen automatically under ``level`` (default: the current setting)."""
    if bound is None:
        return True
    if (level or get_precision()) == "highest":
        return False
    value = bound.get(dtype_name)
    return value is not None and value <= HIGH_BOUND
