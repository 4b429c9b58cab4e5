"""Measuring the strategies side by side: the engine of ``fastconv bench`` and ``benchmarks/``.

Every figure that matters is a ratio measured in one process, same threads,
same dtype, same inputs, after a warm-up call (so JIT compile time is
excluded): vs PyTorch (when installed), vs fastconv's own loop and vectorized
strategies, and as a fraction of ``np.matmul``'s GFLOP/s on a square problem
of similar FLOPs. The loop strategy is timed on a shrunken copy of the problem
and extrapolated by FLOP count (it would take minutes to hours on the real one).

Other libraries' idle threads are kept out of each method's way (:func:`isolation`): each
method is timed in a block of calls, after a pause that lets the pools used by the previous
block (BLAS's, PyTorch's OpenMP, Numba's) go idle and a few untimed calls of its own; BLAS's
idle threads stop spinning after ~25 us under fastconv's thread policy (:mod:`fastconv.threads`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import statistics
import time

import numpy as np

from . import strategies
from .shapes import Problem
from .threads import num_threads


@contextlib.contextmanager
def pinned_threads(threads: int):
    """fastconv, BLAS and PyTorch (if installed) on ``threads`` threads inside the block, restored after."""
    import threadpoolctl

    torch = torch_or_none()
    saved_torch = torch.get_num_threads() if torch is not None else None
    with num_threads(threads), threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
        if torch is not None:
            torch.set_num_threads(threads)
        try:
            yield threads
        finally:
            if torch is not None:
                torch.set_num_threads(saved_torch)

#: The comparisons a report adds after fastconv's strategies and "auto": "torch" is PyTorch and
#: "scipy" ``scipy.signal.correlate`` where installed (scipy only for single-channel 2D
#: convolutions, the one case it computes); "copyto" (pooling only) is ``np.copyto`` of the
#: input: the memory bandwidth a memory-bound pooling kernel is judged against.
EXTERNAL = ("torch", "scipy", "copyto")


def report_methods() -> tuple:
    """Every row a report can have, in order: the registered strategies, 'auto', then :data:`EXTERNAL`."""
    from . import strategies

    return strategies.names() + ("auto",) + EXTERNAL


def _is_reference(method: str) -> bool:
    """Whether ``method`` is a registered reference strategy (slow: timed on a shrunken copy)."""
    from . import strategies

    return method in strategies.names() and strategies.strategy(method).reference


def torch_or_none():
    """PyTorch if it can be imported, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch


#: Untimed calls before each timed block.
WARMUP_CALLS = 3


@functools.lru_cache(maxsize=1)
def settle_seconds() -> float:
    """Pause before each timed block: longer than any pool here spins after its work.

    0.02 s under fastconv's thread policy (OpenBLAS spins 2**16 cycles, GNU OpenMP with
    GOMP_SPINCOUNT=10000 about 10 us); 0.25 s if an OpenBLAS was left spinning ~0.1 s.
    """
    from .threads import policy

    long_spin = any(b["internal_api"] == "openblas" and "2**28" in b["idle"] for b in policy().blas)
    return 0.25 if long_spin else 0.02


def isolation() -> str:
    """What the report header says about keeping other libraries' idle threads out of the way."""
    return (f"each method timed in a block after a {settle_seconds() * 1e3:.0f} ms pause (longer than any "
            f"pool here spins) and {WARMUP_CALLS} untimed calls")


def median_time(fn, min_repeats: int = 5, min_seconds: float = 0.3, max_repeats: int = 200,
                warmup: int = WARMUP_CALLS) -> float:
    """Median wall time of ``fn()`` in seconds: a pause, ``warmup`` untimed calls, then a block of timed ones."""
    time.sleep(settle_seconds())
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fastconv_function(problem: Problem, backward: bool):
    import fastconv

    return getattr(fastconv, problem.op + ("_backward" if backward else ""))


def make_call(problem: Problem, method: str, dtype=np.float32, backward: bool = False):
    """A zero-argument callable running ``problem`` with fastconv's ``method``."""
    arrays = problem.arrays(dtype)
    fn = _fastconv_function(problem, backward)
    kw = problem.kwargs()
    if problem.is_conv:
        x, w, b = arrays
        if not backward:
            out = np.empty((problem.batch, problem.out_channels) + problem.output_spatial(), dtype)
            return lambda: fn(x, w, b, method=method, out=out, **kw)
        gy = np.random.default_rng(1).standard_normal((problem.batch, problem.out_channels) + problem.output_spatial()).astype(dtype)
        return lambda: fn(gy, x, w, method=method, **kw)
    (x,) = arrays
    if not backward:
        return lambda: fn(x, method=method, **kw)
    gy = np.ones((problem.batch, problem.in_channels) + problem.output_spatial(), dtype)
    if "max_pool" in problem.op:
        _, idx = _fastconv_function(problem, False)(x, return_indices=True, **kw)
        return lambda: fn(gy, idx, x.shape, method=method)
    if problem.is_adaptive:
        return lambda: fn(gy, x.shape, method=method)
    return lambda: fn(gy, x.shape, method=method, **kw)


def make_copy_call(problem: Problem, dtype=np.float32):
    """``np.copyto`` of a pooling problem's input, and the bytes it moves (read + written)."""
    (x,) = problem.arrays(dtype)
    dst = np.empty_like(x)
    return functools.partial(np.copyto, dst, x), 2 * x.nbytes


def make_torch_call(problem: Problem, dtype=np.float32, backward: bool = False):
    """The same problem in PyTorch (``torch.nn.functional``; autograd for backward), or None."""
    torch = torch_or_none()
    if torch is None:
        return None
    F = torch.nn.functional
    arrays = [torch.from_numpy(a) for a in problem.arrays(dtype)]
    kw = problem.kwargs()
    if problem.is_conv:
        fn = getattr(F, problem.op)
        x, w, b = arrays
        if not backward:
            def call():
                with torch.no_grad():
                    return fn(x, w, b, **kw)
            return call
        x = x.clone().requires_grad_(True)
        w = w.clone().requires_grad_(True)
        gy = torch.from_numpy(np.random.default_rng(1).standard_normal(
            (problem.batch, problem.out_channels) + problem.output_spatial()).astype(dtype))

        def call():
            x.grad = w.grad = None
            fn(x, w, None, **kw).backward(gy)
        return call
    fn = getattr(F, problem.op)
    (x,) = arrays
    if not backward:
        def call():
            with torch.no_grad():
                return fn(x, **kw)
        return call
    x = x.clone().requires_grad_(True)

    def call():
        x.grad = None
        fn(x, **kw).sum().backward()
    return call


def make_scipy_call(problem: Problem, dtype=np.float32, backward: bool = False):
    """``scipy.signal.correlate`` per image for a single-channel, stride-1 2D convolution, or None."""
    if backward or problem.op != "conv2d" or problem.in_channels != 1 or problem.out_channels != 1 \
            or problem.stride != 1:
        return None
    try:
        from scipy import signal
    except ImportError:
        return None
    x, w, b = problem.arrays(dtype)
    p = problem.padding
    xp = np.pad(x[:, 0], ((0, 0), (p, p), (p, p)))
    k = w[0, 0]

    def call():
        return [signal.correlate(image, k, mode="valid", method="auto") + b[0] for image in xp]
    return call


def shrink(problem: Problem) -> Problem:
    """A copy of ``problem`` small enough for the pure-Python loop (same kernel, stride, padding)."""
    groups = min(problem.groups, 2)
    in_ch = groups * max(1, min(problem.in_channels // problem.groups, 4))
    out_ch = groups * max(1, min(problem.out_channels // problem.groups, 4)) if problem.is_conv else in_ch
    limit = 96 if problem.nd == 1 else 14
    spatial = tuple(max(min(n, limit), k + 2 * problem.stride) for n, k in zip(problem.spatial, problem.kernel))
    if problem.nd == 1:
        spatial = (max(spatial[0], problem.kernel[0] + 4 * problem.stride),)
    return dataclasses.replace(problem, name=problem.name + "/loop", batch=1, in_channels=in_ch,
                               out_channels=out_ch, spatial=spatial, groups=groups)


def gemm_gflops(flops: float, dtype=np.float32) -> float:
    """np.matmul's GFLOP/s on a square ``dtype`` problem of about ``flops`` FLOPs (BLAS, current threads).

    The side is rounded to a multiple of 64 (128 to 2048) and measured once per process.
    """
    n = int(round((flops / 2) ** (1 / 3) / 64)) * 64
    return _square_gemm_gflops(max(128, min(n, 2048)), np.dtype(dtype).str)


@functools.lru_cache(maxsize=None)
def _square_gemm_gflops(n: int, dtype: str) -> float:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype)
    t = median_time(lambda: np.matmul(a, b, out=out))
    return 2 * n**3 / t / 1e9


@dataclasses.dataclass
class Row:
    """One measured (problem, method) pair."""

    op: str
    shape: str
    method: str
    ms: float
    gflops: float
    gbps: float
    flops: int
    extrapolated: bool = False
    speedup_vs_torch: float | None = None
    speedup_vs_vectorized: float | None = None
    speedup_vs_loop: float | None = None
    fraction_of_gemm: float | None = None
    gemm_gflops: float | None = None
    fraction_of_copy: float | None = None
    chosen: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def implements(method: str, op: str, problem: Problem | None = None, dtype=np.float32) -> bool:
    """Whether ``method`` (a strategy, or auto / measure) computes the public function ``op`` (registry
    ops) and, given the benchmark ``problem``, that problem (``Strategy.can_run``: a strategy of some
    problems only, such as winograd, gets no row elsewhere)."""
    if method in ("auto", "measure"):
        return True
    from .explain import PUBLIC_OPS

    record = strategies.strategy(method)
    if PUBLIC_OPS[op][0] not in record.ops:
        return False
    if problem is None:
        return True
    from .explain import explain

    kw = problem.kwargs()
    shapes = (problem.input_shape, problem.weight_shape) if problem.is_conv else (problem.input_shape,)
    geom = explain(op, *shapes, dtype=dtype, **kw).geometry
    if op.startswith("conv_transpose") and op.endswith("_backward"):  # dL/dx a convolution, dL/dW a conv_backward
        return record.can_run("conv", geom) and record.can_run("conv_backward", geom)
    return record.can_run(PUBLIC_OPS[op][0], geom)


def measure(problem: Problem, methods=None, threads: int = 2, dtype=np.float32, backward: bool = False,
            gemm: bool = True, repeats: int = 1) -> list[Row]:
    """Time ``problem`` with each of ``methods`` and return one :class:`Row` each, with ratios filled in.

    With ``gemm``, convolutions also get ``fraction_of_gemm``: their GFLOP/s over np.matmul's
    on a square problem of similar FLOPs, measured with the same threads. With ``repeats`` > 1
    the methods are timed in ``repeats`` interleaved rounds and each keeps its best median: on a
    shared machine a slow spell then hits one round, not one method (the loop, timed once on a
    shrunken copy, is not repeated).
    """
    methods = report_methods() if methods is None else methods
    flops = problem.flops() * (2 if backward and problem.is_conv else 1)
    nbytes = problem.bytes_moved(np.dtype(dtype).itemsize) * (2 if backward else 1)
    op = problem.op + ("_backward" if backward else "")
    with pinned_threads(threads):
        gemm = gemm_gflops(flops, dtype) if gemm and problem.is_conv else None
        timers = {}  # method -> (call, bytes moved, FLOP scale of the timed problem)
        for method in methods:
            if method == "copyto":
                if problem.is_conv or backward:
                    continue
                call, copied = make_copy_call(problem, dtype)
                timers[method] = (call, copied, 1.0)
            elif method in ("torch", "scipy"):
                call = (make_torch_call if method == "torch" else make_scipy_call)(problem, dtype, backward)
                if call is not None:
                    timers[method] = (call, nbytes, 1.0)
            elif _is_reference(method) and implements(method, op, problem, dtype):
                small = shrink(problem)
                small_flops = small.flops() * (2 if backward and small.is_conv else 1)
                timers[method] = (make_call(small, method, dtype, backward), nbytes, flops / small_flops)
            elif implements(method, op, problem, dtype):
                timers[method] = (make_call(problem, method, dtype, backward), nbytes, 1.0)
        best = {}
        for round_ in range(max(1, int(repeats))):
            for method, (call, _, scale) in timers.items():
                if _is_reference(method):
                    if round_ == 0:
                        best[method] = scale * median_time(call, min_repeats=1, min_seconds=0.0, max_repeats=1,
                                                           warmup=1)
                    continue
                best[method] = min(best.get(method, float("inf")), median_time(call))
    rows = []
    for method, (_, row_bytes, _) in timers.items():
        seconds = best[method]
        chosen = None
        if method == "auto":
            chosen = auto_method_for(problem, dtype, backward)
        rows.append(Row(op, problem.name, method, seconds * 1e3, flops / seconds / 1e9,
                        row_bytes / seconds / 1e9, flops, _is_reference(method), chosen=chosen))
    by_method = {r.method: r for r in rows}
    for r in rows:
        if "torch" in by_method:
            r.speedup_vs_torch = by_method["torch"].ms / r.ms
        if "vectorized" in by_method:
            r.speedup_vs_vectorized = by_method["vectorized"].ms / r.ms
        reference = next((m for m in by_method if _is_reference(m)), None)
        if reference is not None:
            r.speedup_vs_loop = by_method[reference].ms / r.ms
        if gemm:
            r.fraction_of_gemm = r.gflops / gemm
            r.gemm_gflops = gemm
        if "copyto" in by_method:
            r.fraction_of_copy = r.gbps / by_method["copyto"].gbps
    return rows


def auto_method_for(problem: Problem, dtype, backward: bool = False) -> str:
    """The strategy ``method="auto"`` runs for a benchmark :class:`~fastconv.shapes.Problem`."""
    from .explain import explain

    op = problem.op + ("_backward" if backward else "")
    kw = problem.kwargs()
    if problem.is_conv:
        return explain(op, problem.input_shape, problem.weight_shape, dtype=dtype, **kw).method
    return explain(op, problem.input_shape, dtype=dtype, **kw).method
