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
import types

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


def inlined(fn):
    """A kernel body shared by several kernels: inlined into each caller at Numba's IR level (its loops,
    ``prange`` included, and literal arguments become the caller's), never called from Python."""
    return numba.njit(fn, inline="always", fastmath=set(FASTMATH), nogil=True, error_model="numpy")


#: Work (multiply-adds, or window elements read) below which a problem runs on a kernel's serial
#: twin (:func:`small`): a parallel launch costs ~3-4 us of thread start-up and hand-over on the
#: 2-core dev machine (Zen 4, GNU OpenMP), more than such a problem's arithmetic; a serial loop
#: does 32k multiply-adds in ~3-5 us. Tiny convolutions and poolings are called in loops (per-sample
#: code, teaching frameworks): their cost is the call.
SERIAL_WORK = 1 << 15

_twins: dict = {}
_twins_lock = threading.Lock()


def serial(dispatcher):
    """``dispatcher``'s serial twin: the same Python function compiled without ``parallel``
    (``prange`` runs as ``range``), created on first use. It is cached on disk under its own name
    (``<name>__serial``), so it never shares a cache entry with the parallel build."""
    twin = _twins.get(dispatcher)
    if twin is None:
        with _twins_lock:
            twin = _twins.get(dispatcher)
            if twin is None:
                f = dispatcher.py_func
                copy = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "__serial", f.__defaults__,
                                          f.__closure__)
                copy.__qualname__ = f.__qualname__ + "__serial"
                copy.__module__, copy.__doc__ = f.__module__, f.__doc__
                twin = _twins[dispatcher] = kernel(copy, parallel=False)
    return twin


class SmallCall:
    """A kernel's serial twin for one launch shape, called through its compiled entry point.

    The first call goes through Numba's dispatcher (it compiles or loads the twin and types the
    arguments); later calls go straight to that compiled function, skipping the per-call typing
    (~0.5 us per NamedTuple argument, more than a tiny kernel's work). So every call must pass
    arguments of the same Numba types as the first: hold a SmallCall in a plan cached by
    everything that fixes them (problem, dtype, which optional arrays are given), and pass
    C-contiguous arrays. Under ``NUMBA_BOUNDSCHECK`` every call checks that it does.
    """

    __slots__ = ("kernel", "entry", "types")

    def __init__(self, dispatcher):
        self.kernel = serial(dispatcher)
        self.entry = None
        self.types = None

    def __call__(self, *args):
        entry = self.entry
        if entry is not None:
            if numba.config.BOUNDSCHECK:
                self._check(args)
            entry(*args)
            return
        self.kernel(*args)
        typed = tuple(self.kernel.typeof_pyval(a) for a in args)
        self.entry = self.kernel.get_overload(typed)
        self.types = self._writable(typed)

    @staticmethod
    def _writable(typed):
        # A read-only input array (read, never written by a kernel) passes for a writable one.
        return tuple(t.copy(readonly=False) if isinstance(t, numba.types.Array) else t for t in typed)

    def _check(self, args):
        got = self._writable(tuple(self.kernel.typeof_pyval(a) for a in args))
        if got != self.types:
            raise TypeError(f"{self.kernel.__name__}: a SmallCall typed {self.types} was called with {got}")


def sized(dispatcher, work: int):
    """``dispatcher``, or its serial twin when ``work`` is below :data:`SERIAL_WORK`: for a launch
    that is not part of a cached plan (Numba's dispatcher types the arguments on every call)."""
    return serial(dispatcher) if work < SERIAL_WORK and PARALLEL else dispatcher


class ParallelCall:
    """A parallel kernel called under :func:`launch` (what :func:`pick` gives for large work)."""

    __slots__ = ("kernel",)

    def __init__(self, dispatcher):
        self.kernel = dispatcher

    def __call__(self, *args):
        with launch():
            self.kernel(*args)


def pick(dispatcher, work: int):
    """The callable that runs ``dispatcher`` on a problem of ``work`` (see :data:`SERIAL_WORK`):
    a new :class:`SmallCall` for small work, else a :class:`ParallelCall`. Call it once per
    cached plan (a SmallCall's argument types are fixed by its first call); call what it gives
    without :func:`launch` (a serial kernel needs no guard, a ParallelCall takes it)."""
    return SmallCall(dispatcher) if work < SERIAL_WORK else ParallelCall(dispatcher)


from .geometry import covering_outputs as _covering_outputs  # noqa: E402
from .geometry import output_span as _output_span  # noqa: E402

#: :func:`fastconv.geometry.output_span` compiled, for the kernels: the one in-input range rule.
output_span = kernel(_output_span, parallel=False)
#: :func:`fastconv.geometry.covering_outputs` compiled: the outputs whose windows hold an input.
covering_outputs = kernel(_covering_outputs, parallel=False)

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
