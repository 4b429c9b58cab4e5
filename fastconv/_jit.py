"""Every Numba option fastconv uses, in one place.

Kernels are declared with :func:`kernel` and never pass ``fastmath=``,
``cache=`` or ``parallel=`` themselves (a test checks this), so the whole
library's JIT behaviour can be read and changed here.

* ``FASTMATH`` allows FMA contraction and reassociation (so LLVM can emit
  ``vfmadd`` and vectorise sums) but never ``nnan``/``ninf``: NaN and inf must
  propagate exactly as IEEE arithmetic says.
* ``CACHE``: compiled kernels are written to Numba's cache, so only the first
  process on a machine pays the compile time. ``FASTCONV_JIT_CACHE=0`` turns
  it off.
* Bounds checking follows ``NUMBA_BOUNDSCHECK`` (CI runs the kernel tests with
  it on, in a separate ``NUMBA_CACHE_DIR``). Numba does not check accesses
  inside a parallel ``prange`` loop (numba issue #9380), so with bounds
  checking on every kernel is compiled serial (``prange`` runs as ``range``)
  and every access is checked.
"""

from __future__ import annotations

import contextlib
import os
import threading

# GNU OpenMP threads (Numba's "omp" threading layer) spin for ~300k iterations after each
# parallel region by default; the spinning thread then steals a core from the BLAS call
# that follows (img2col's GEMM). Measured on the 2-core dev machine: max_pool2d (direct)
# followed by conv2d (img2col) 8.0 ms by default, 1.9 ms with GOMP_SPINCOUNT=10000, 2.5 ms
# with OMP_WAIT_POLICY=passive (which slowed a 40 us pooling call to 73 us; 10000 did not).
# Must be set before libgomp starts, i.e. before the first parallel kernel; a user's own
# setting wins.
USER_GOMP_SPINCOUNT = os.environ.get("GOMP_SPINCOUNT")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import numba  # noqa: E402

#: LLVM fast-math flags for every kernel: FMA + reassociation, NaN/inf-safe.
FASTMATH = frozenset({"contract", "reassoc", "nsz"})

#: Whether kernels run in parallel: always, except under bounds checking (see above).
PARALLEL = not numba.config.BOUNDSCHECK

#: Whether compiled kernels are cached on disk.
CACHE = os.environ.get("FASTCONV_JIT_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def kernel(fn=None, *, parallel: bool = True):
    """Compile ``fn`` with fastconv's options (``nopython``, ``nogil``, cached, parallel by default)."""

    def wrap(f):
        return numba.njit(
            f,
            parallel=parallel and PARALLEL,
            fastmath=set(FASTMATH),
            cache=CACHE,
            nogil=True,
            error_model="numpy",
        )

    return wrap if fn is None else wrap(fn)


from .geometry import output_span as _output_span  # noqa: E402

#: :func:`fastconv.geometry.output_span` compiled, for the kernels: the one in-input range rule.
output_span = kernel(_output_span, parallel=False)

_launch_lock = threading.Lock()
_unguarded = contextlib.nullcontext()
_threadsafe = False  # becomes True once the layer is known to allow concurrent launches


def _threadsafe_layer() -> bool:
    """True once Numba runs a threading layer that allows concurrent parallel launches."""
    try:
        return numba.threading_layer() in ("omp", "tbb")
    except ValueError:  # no parallel region has run yet, so the layer is not chosen yet
        return False


def launch():
    """A context manager guarding a call into a parallel kernel.

    Numba's ``workqueue`` threading layer aborts the process when two Python
    threads launch parallel kernels at once; ``omp`` and ``tbb`` do not. Under
    ``workqueue`` (or before the layer is known) launches are serialised (the lock);
    each launch already uses every core, so little is lost. The layer never changes
    once chosen, so after the first answer this costs an attribute read.
    """
    global _threadsafe
    if _threadsafe:
        return _unguarded
    if _threadsafe_layer():
        _threadsafe = True
        return _unguarded
    return _launch_lock
