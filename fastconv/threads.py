"""How many threads fastconv uses, and how it shares the cores with BLAS, PyTorch and dask.

fastconv runs inside NumPy programs whose other calls (``@``, ``np.linalg``, PyTorch) keep
thread pools of their own. A pool that *spins* after its work steals the cores fastconv's
Numba pool needs next, and the reverse. Measured on a 2-core AMD EPYC (Zen 4, AVX-512,
OpenBLAS 0.3.31, Numba's ``omp`` layer, 2026-12-05): a 64x56x56 3x3 layer took 1.3 ms alone and
5-8 ms right after a 256x256 ``np.matmul``; a 512x512 3x3 filter 0.11 ms alone and 4-8 ms after
it; a small NumPy CNN step (two convolutions, two poolings, one ``@``) 20-22 ms in
``fastconv bench --mixed`` (37-38 ms in a first ad-hoc script) instead of 12-13.

The policy, applied once at ``import fastconv`` (see :func:`policy` for what it did here):

1. **BLAS's idle threads stop spinning soon.** OpenBLAS's threads busy-wait about 2**28
   cycles (~0.1 s) after each call. fastconv sets ``OPENBLAS_THREAD_TIMEOUT=16`` (2**16 cycles,
   ~25 us) for every OpenBLAS loaded now or later: the ones already loaded re-read it and
   restart their (idle) pool, exactly as OpenBLAS does after a ``fork``. Thread *counts* are
   never changed. Measured (one process, settings alternated): the step above 12.0 ms (20.6 ms
   with OpenBLAS's default), the layer right after a matmul 1.0x its time alone; back-to-back
   128x128 matmuls unchanged (31.4 us; the shortest setting, 2**4, made them 46.9 us), a
   2048x2048 one unchanged. Left alone when the user set ``OPENBLAS_THREAD_TIMEOUT``
   themselves, with ``FASTCONV_BLAS_IDLE=spin``, and (for pools already running) when other
   Python threads exist at import time (restarting a pool another thread may be using is not
   safe): call :func:`share_cores` later, from a quiet moment, or set the variable before
   importing NumPy.
2. **GNU OpenMP threads spin briefly.** ``GOMP_SPINCOUNT=10000`` (set in :mod:`fastconv._jit`)
   for Numba's ``omp`` layer and for a PyTorch imported after fastconv, so fastconv's own
   pool does not steal the cores from the ``@`` that follows it.
3. **fastconv's thread count is its own.** :func:`set_num_threads` sets Numba's pool; the
   GEMMs fastconv itself calls (img2col, vectorized) run with at most that many BLAS threads,
   limited for the duration of the call only (:func:`blas_threads`). BLAS's process-wide count,
   and any limit a user set with ``threadpoolctl``, stay as they are.
4. **No grain size.** A tiny call (1x1x8x8, 3x3) took 16.9 us on 2 threads and 16.6 us on one:
   with spinning pools out of the way a parallel launch costs little, so small problems are
   not sent to one thread.

Numba's thread count is per calling thread: a value set here applies to calls made from
this Python thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
import os
import threading

import numba
import numpy as np

from . import _jit  # noqa: F401  (sets GOMP_SPINCOUNT before any OpenMP pool starts)

__all__ = ["blas_threads", "get_num_threads", "num_threads", "numpy_blas", "policy", "set_num_threads", "share_cores"]

#: The environment variable that opts out of rule 1 (``spin`` keeps BLAS's default).
IDLE_ENV = "FASTCONV_BLAS_IDLE"
#: OpenBLAS's own variable, and the value fastconv gives it: idle threads spin 2**16 cycles (about
#: 25 us) instead of 2**28 (about 0.1 s), then sleep. Measured in one process, 2-core AMD EPYC
#: (Zen 4), 2026-12-05: back-to-back 128x128 matmuls 31.4 us with 2**16 or 2**28 and 46.9 us with
#: 2**4 (OpenBLAS's minimum: every call must wake its threads); the mixed NumPy CNN step
#: (fastconv.mixed) 12.0 ms with 2**16, 12.2 ms with 2**4, 20.6 ms with 2**28.
TIMEOUT_ENV = "OPENBLAS_THREAD_TIMEOUT"
SLEEP_TIMEOUT = "16"
_SETTING = f"spin 2**{SLEEP_TIMEOUT} cycles (~25 us), then sleep (fastconv's setting)"

_USER_TIMEOUT = os.environ.get(TIMEOUT_ENV)  # read before fastconv sets it
_USER_GOMP_SPINCOUNT = _jit.USER_GOMP_SPINCOUNT


@dataclasses.dataclass(frozen=True)
class Policy:
    """What fastconv did about the process's thread pools (``str()`` reads well)."""

    numba_threads: int
    threading_layer: str
    blas: tuple  # one dict per BLAS library: file, api, threads, idle
    gomp_spincount: str | None
    notes: tuple

    def __str__(self) -> str:
        lines = [f"numba: {self.numba_threads} thread(s), threading layer {self.threading_layer}; "
                 f"GOMP_SPINCOUNT={self.gomp_spincount}"]
        for lib in self.blas:
            lines.append(f"blas: {lib['internal_api']} {lib.get('version') or ''} ({lib['threading_layer']}), "
                         f"{lib['num_threads']} thread(s); idle threads {lib['idle']}")
        if not self.blas:
            lines.append("blas: none found (threadpoolctl sees no BLAS library)")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


_notes: list[str] = []
_tamed: dict[str, str] = {}  # BLAS library file -> how its idle threads behave


def _controllers(user_api: str | None = "blas"):
    """threadpoolctl's controllers for the loaded libraries (``user_api`` ones only)."""
    import threadpoolctl

    found = threadpoolctl.ThreadpoolController().lib_controllers
    return [c for c in found if user_api is None or c.user_api == user_api]


def _idle(lib) -> str:
    if lib.internal_api != "openblas":
        if lib.internal_api == "mkl":
            return "spin for KMP_BLOCKTIME (200 ms unless set before NumPy is imported)"
        return "as the library decides"
    if getattr(lib, "threading_layer", None) == "openmp":
        return "follow OpenMP (GOMP_SPINCOUNT / OMP_WAIT_POLICY)"
    try:
        exponent = int(lib.dynlib.openblas_thread_timeout())  # what the pool was (re)started with
    except AttributeError:
        return _tamed.get(lib.filepath, "spin (this OpenBLAS does not say how long)")
    if exponent <= 0:
        return "spin ~2**28 cycles (OpenBLAS's default)"
    exponent = min(max(exponent, 4), 30)
    return _SETTING if exponent == int(SLEEP_TIMEOUT) else f"spin ~2**{exponent} cycles, then sleep"


def share_cores() -> Policy:
    """Apply rule 1 of the module's policy now (``import fastconv`` already did) and report.

    Makes every loaded OpenBLAS (pthreads build) put its idle threads to sleep after
    ~25 us rather than ~0.1 s of spinning, by setting ``OPENBLAS_THREAD_TIMEOUT`` and restarting its idle
    pool. Call it from one thread while no other thread is inside BLAS (for example
    after importing a library that brings its own OpenBLAS while other threads ran).
    Does nothing when the user set ``OPENBLAS_THREAD_TIMEOUT`` or ``FASTCONV_BLAS_IDLE=spin``.

    Returns
    -------
    Policy
        What the process's thread pools now do (as :func:`policy`).
    """
    _apply(force=True)
    return policy()


def _apply(force: bool, libs=None) -> None:
    """Rule 1 of the policy on ``libs`` (the loaded BLAS libraries; looked up when None)."""
    _notes.clear()
    if os.environ.get(IDLE_ENV, "sleep").strip().lower() == "spin":
        _notes.append(f"{IDLE_ENV}=spin: BLAS's idle threads left to spin")
        return
    if _USER_TIMEOUT is not None:
        _notes.append(f"{TIMEOUT_ENV}={_USER_TIMEOUT} set by the user: left as it is")
        return
    os.environ[TIMEOUT_ENV] = SLEEP_TIMEOUT  # every OpenBLAS loaded from now on reads it
    try:
        libs = _controllers() if libs is None else libs
    except ImportError:  # threadpoolctl is a dependency; a broken install should not break import
        _notes.append("threadpoolctl missing: BLAS libraries already loaded keep spinning")
        return
    if _OPENMP_BEFORE and _USER_GOMP_SPINCOUNT is None:
        _notes.append(f"an OpenMP runtime was loaded before fastconv ({_OPENMP_BEFORE[0]}): it keeps its default "
                      "spinning, and Numba's 'omp' layer may share it; import fastconv first or set "
                      "GOMP_SPINCOUNT=10000 in the environment")
    others = threading.active_count() - 1
    for lib in libs:
        if lib.internal_api != "openblas" or getattr(lib, "threading_layer", None) == "openmp":
            continue
        if lib.filepath in _tamed:
            continue
        if others and not force:
            _notes.append(f"{others} other Python thread(s) at import: {lib.filepath} left spinning "
                          "(call fastconv.share_cores() when no thread is inside BLAS)")
            continue
        try:
            lib.dynlib.openblas_read_env()  # re-read OPENBLAS_THREAD_TIMEOUT
            lib.dynlib.blas_thread_shutdown_()  # idle pool stopped; the next call starts it anew
        except AttributeError:
            _notes.append(f"{lib.filepath}: this OpenBLAS cannot re-read its settings; set "
                          f"{TIMEOUT_ENV}={SLEEP_TIMEOUT} before importing NumPy")
            continue
        _tamed[lib.filepath] = _SETTING


def policy() -> Policy:
    """What fastconv did about the process's thread pools: Numba's, BLAS's, OpenMP's.

    Returns
    -------
    Policy
        Numba's thread count and threading layer, each BLAS library with its thread count
        and what its idle threads do, ``GOMP_SPINCOUNT``, and notes on anything not applied.

    Examples
    --------
    >>> import fastconv
    >>> print(fastconv.threads.policy())  # doctest: +ELLIPSIS
    numba: ... thread(s), threading layer ...
    """
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not chosen yet (chosen at the first parallel kernel)"
    try:
        libs = _controllers()
    except ImportError:
        libs = []
    blas = tuple({"filepath": c.filepath, "internal_api": c.internal_api, "version": c.version,
                  "threading_layer": getattr(c, "threading_layer", None), "num_threads": c.num_threads,
                  "idle": _idle(c)} for c in libs)
    return Policy(numba.get_num_threads(), layer, blas, os.environ.get("GOMP_SPINCOUNT"), tuple(_notes))


def numpy_blas(libs=None) -> list:
    """threadpoolctl's controller(s) of the BLAS that NumPy's ``matmul`` calls.

    The one shipped inside NumPy's wheel (``numpy.libs``, ``numpy/.dylibs``) when there is
    one, else every BLAS loaded (a system or conda NumPy links the process's BLAS).
    """
    libs = _controllers() if libs is None else libs
    here = os.path.dirname(os.path.abspath(np.__file__))
    wheel_dirs = (here + ".libs", os.path.join(here, ".dylibs"), here)
    mine = [c for c in libs if os.path.dirname(os.path.abspath(c.filepath)) in wheel_dirs]
    return mine or list(libs)


@functools.lru_cache(maxsize=1)
def _blas_handles():
    """``(get, set)`` thread-count functions of NumPy's BLAS, resolved once."""
    try:
        return tuple((c.get_num_threads, c.set_num_threads) for c in numpy_blas())
    except ImportError:
        return ()


@contextlib.contextmanager
def blas_threads(n: int | None = None):
    """Context manager: NumPy's BLAS uses at most ``n`` threads inside the block (default: fastconv's count).

    Lowers the thread count of the BLAS ``np.matmul`` calls (:func:`numpy_blas`) only if it is above ``n`` and restores it after,
    so a user's own smaller limit is kept. Used around the GEMMs fastconv calls itself. The
    count is process-wide for the block's duration (BLAS has no per-thread setting).

    Parameters
    ----------
    n : int, optional
        The most threads BLAS may use inside the block.

    Examples
    --------
    >>> import fastconv
    >>> with fastconv.threads.blas_threads(1):
    ...     pass
    """
    n = numba.get_num_threads() if n is None else n
    lowered = []
    for get, set_ in _blas_handles():
        current = get()
        if current is not None and current > n:
            set_(n)
            lowered.append((set_, current))
    try:
        yield n
    finally:
        for set_, current in lowered:
            set_(current)


def gemm_calls(fn):
    """Mark a strategy function that calls BLAS: its GEMMs run under :func:`blas_threads`."""

    @functools.wraps(fn)
    def limited(*args, **kwargs):
        with blas_threads():
            return fn(*args, **kwargs)

    return limited


def get_num_threads() -> int:
    """The number of threads fastconv's kernels use, from this Python thread.

    Returns
    -------
    int
        Numba's thread count; fastconv's own GEMMs use at most as many BLAS threads.
    """
    return numba.get_num_threads()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for fastconv's kernels (and at most ``n`` BLAS threads in its own GEMMs).

    BLAS's process-wide thread count (what ``@`` uses) is not changed; set it with
    ``threadpoolctl`` if you want to.

    Parameters
    ----------
    n : int
        Between 1 and ``numba.config.NUMBA_NUM_THREADS`` (the cores Numba started with).
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


@contextlib.contextmanager
def num_threads(n: int):
    """Context manager: fastconv uses ``n`` threads inside the block, then the previous count.

    Parameters
    ----------
    n : int
        As for :func:`set_num_threads`.

    Examples
    --------
    >>> import fastconv
    >>> with fastconv.num_threads(1):
    ...     fastconv.get_num_threads()
    1
    """
    saved = numba.get_num_threads()
    set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(saved)


try:  # one look at the loaded libraries serves the import's two questions
    _LOADED = _controllers(None)
except ImportError:
    _LOADED = None
#: OpenMP runtimes loaded before fastconv (not Numba's: it loads its layer at the first parallel kernel).
_OPENMP_BEFORE = [c.filepath for c in _LOADED or () if c.user_api == "openmp"]
_apply(force=False, libs=None if _LOADED is None else [c for c in _LOADED if c.user_api == "blas"])
