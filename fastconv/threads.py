"""How many threads fastconv's kernels use, and keeping BLAS from fighting Numba for them.

The img2col strategy calls BLAS (NumPy's ``matmul``) right after a parallel
Numba kernel; if both pools are sized to the machine, busy-waiting BLAS threads
steal cycles from Numba's. :func:`set_num_threads` sizes both pools the same.
BLAS threads are controlled through ``threadpoolctl`` when it is installed
(``pip install fastconv[threads]``); without it only Numba's pool is set.

Numba's thread count is per calling thread: a value set here applies to calls
made from this Python thread.
"""

from __future__ import annotations

import contextlib
import operator

import numba
import numpy as np

__all__ = ["get_num_threads", "set_num_threads", "num_threads"]


def _blas_limits():
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


def _get_blas_threads():
    tpc = _blas_limits()
    if tpc is None:
        return None
    info = [p for p in tpc.threadpool_info() if p.get("user_api") == "blas"]
    return info[0]["num_threads"] if info else None


def _set_blas_threads(n):
    tpc = _blas_limits()
    if tpc is not None and n is not None:
        tpc.threadpool_limits(limits=int(n), user_api="blas")


def get_num_threads() -> int:
    """The number of threads fastconv's parallel kernels use (from this Python thread)."""
    return numba.get_num_threads()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for Numba kernels and for BLAS (when ``threadpoolctl`` is installed).

    ``n`` is between 1 and ``numba.config.NUMBA_NUM_THREADS`` (the cores Numba
    started with).
    """
    if isinstance(n, (bool, np.bool_)):
        raise TypeError(f"set_num_threads: n must be an int, got {n!r}")
    try:
        n = operator.index(n)  # int or a NumPy integer
    except TypeError:
        raise TypeError(f"set_num_threads: n must be an int, got {n!r}") from None
    top = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= top:
        raise ValueError(f"set_num_threads: n must be between 1 and {top}, got {n}")
    numba.set_num_threads(n)
    _set_blas_threads(n)


@contextlib.contextmanager
def num_threads(n: int):
    """Context manager: use ``n`` threads inside the block, then restore the previous counts.

    Examples
    --------
    >>> import fastconv
    >>> with fastconv.num_threads(1):
    ...     fastconv.get_num_threads()
    1
    """
    saved_numba = numba.get_num_threads()
    saved_blas = _get_blas_threads()
    set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(saved_numba)
        _set_blas_threads(saved_blas)
