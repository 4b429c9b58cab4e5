"""``warmup()``: compile (or load from Numba's disk cache) the kernels ahead of the first call."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from . import _jit
from . import adaptive as _adaptive
from . import conv as _conv
from . import pool as _pool
from . import transpose as _transpose
from . import strategies

__all__ = ["warmup"]

#: Most processes :func:`warmup` compiles in (memory: each holds its own LLVM).
MAX_PROCESSES = 4
#: Helpers start once warmup has run this long (seconds): from a warm cache it is done in ~0.6 s, and
#: a helper's start-up would cost more than it saves.
SHARE_AFTER = 1.0
#: What a helper process writes when a job is done (its other output is not read).
_DONE = "fastconv-warmup-done"


def warmup(dtypes: Sequence = ("float32",), methods: Sequence[str] | None = None,
           processes: int | None = None) -> float:
    """Compile (or load from the disk cache) every kernel the strategies use, ahead of time.

    The first call of each Numba kernel in a process otherwise pays its compile time (or
    its load from the cache). Every operation runs once per strategy and dtype on small
    arrays chosen to reach every kernel path (a test checks each kernel has been compiled).

    Numba compiles on one core. With the disk cache on, the calls are shared out as jobs
    between this process and ``processes - 1`` helper processes (``python -c``, never your
    script), which compile into the cache; this process then loads their kernels. A helper
    that fails only costs time: its jobs are compiled here.

    Parameters
    ----------
    dtypes : sequence of dtype
        float32 and/or float64.
    methods : sequence of str, optional
        Strategies to warm up; default: every registered strategy ``auto`` may choose.
    processes : int, optional
        Processes to compile in, this one included; default: the cores this process may use, at most
        :data:`MAX_PROCESSES` (1 when Numba's disk cache is off: helpers could not hand their
        kernels over).

    Returns
    -------
    float
        Seconds it took: measured on the 2-core AMD EPYC (Zen 4), 2026-12-05, about 0.6 s
        from the cache; for float32 on a cold cache 113 s in one process, 66-67 s in two (kernels that
        several jobs share are compiled in each process that needs them).

    Examples
    --------
    >>> import fastconv
    >>> fastconv.warmup(methods=["vectorized"]) >= 0
    True
    """
    if methods is None:
        methods = [n for n in strategies.names() if strategies.strategy(n).automatic]
    if isinstance(dtypes, (str, np.dtype, type)) or isinstance(methods, str):
        raise TypeError("warmup: dtypes and methods must be sequences (e.g. dtypes=('float32',), "
                        f"methods=('direct',)), got dtypes={dtypes!r}, methods={methods!r}")
    try:
        dtypes = [np.dtype(d).name for d in dtypes]
    except TypeError:
        raise TypeError(f"warmup: dtypes must name float32 and/or float64, got {dtypes!r}") from None
    if not set(dtypes) <= {"float32", "float64"}:
        raise ValueError(f"warmup: dtypes must be float32 and/or float64, got {dtypes!r}")
    methods = list(methods)
    for method in methods:
        strategies.strategy(method)  # an unknown name: ValueError naming the strategies there are
    if processes is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        processes = min(cores, MAX_PROCESSES) if _compiles_to_cache() else 1
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"warmup: processes must be a positive int, got {processes!r}")
    start = time.perf_counter()
    jobs = _jobs(dtypes, methods)
    lock = threading.Lock()
    queue = iter(range(len(jobs)))

    def take():
        with lock:
            return next(queue, None)

    feeders = []
    here = set()
    try:
        while (i := take()) is not None:
            jobs[i]()
            here.add(i)
            if not feeders and processes > 1 and time.perf_counter() - start > SHARE_AFTER:  # compiling: share
                feeders = [threading.Thread(target=_feed, args=(take, dtypes, methods), daemon=True)
                           for _ in range(processes - 1)]
                for t in feeders:
                    t.start()
    finally:  # also after an error here: the helpers get no more jobs
        with lock:
            queue = iter(())
        for t in feeders:
            t.join()
    for i, job in enumerate(jobs):  # the helpers' jobs: loaded from the cache they filled
        if i not in here:
            job()
    return time.perf_counter() - start


def _compiles_to_cache() -> bool:
    """Whether helper processes can compile for this one: the JIT on, with its disk cache, and a Python to start."""
    from numba.core import config

    # (a frozen application's sys.executable is the application itself, not a Python to run ``-c`` with)
    return _jit.CACHE and not config.DISABLE_JIT and not getattr(sys, "frozen", False)


def _feed(take, dtypes, methods) -> None:
    """Start a helper process and hand it jobs from ``take()`` one at a time until there are none left.

    The helper reads job indices on stdin and writes :data:`_DONE` after each; one that cannot start,
    dies or stops answering gets no more jobs (its last one is then run by :func:`warmup` itself).
    """
    args = json.dumps({"dtypes": dtypes, "methods": methods})
    code = "import sys; from fastconv.warmup import _serve; _serve(sys.argv[1])"
    try:
        helper = subprocess.Popen([sys.executable, "-c", code, args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return
    try:
        while (i := take()) is not None:
            helper.stdin.write(f"{i}\n")
            helper.stdin.flush()
            line = helper.stdout.readline()
            while line and not line.startswith(_DONE):
                line = helper.stdout.readline()
            if not line:
                break
    except OSError:
        pass
    finally:
        try:
            helper.stdin.close()
        except OSError:
            pass
        helper.wait()


def _serve(args: str) -> None:
    """A helper process of :func:`warmup`: run the jobs whose indices arrive on stdin."""
    found = json.loads(args)
    jobs = _jobs(found["dtypes"], found["methods"])
    for line in sys.stdin:
        jobs[int(line)]()
        print(_DONE, flush=True)


def _jobs(dtypes, methods) -> list[Callable[[], None]]:
    """The calls of :func:`warmup` in a fixed order, cut into jobs of one or a few kernels' compilation
    each (a helper process rebuilds the same list and runs the jobs by index)."""
    general = [m for m in methods if _general(strategies.strategy(m))]
    jobs = []
    for dtype in dtypes:
        for method in [m for m in methods if m not in general] + general:
            parts = _GENERAL if method in general else _PARTIAL  # (partial: its layers it runs)
            jobs += [functools.partial(part, method, dtype) for part in parts]
    return jobs


# --------------------------------------------------------------------------- the calls, strategy by strategy
# Big enough that every call's work reaches _jit.SERIAL_WORK: the parallel kernels are the ones to
# compile ahead (tiny problems run serial twins, compiled on their first use).


def _conv_layers(method, dtype):
    x = np.ones((2, 4, 64, 64), dtype)
    for kw in (dict(padding=1), dict(padding="same", stride=2, dilation=2), dict(groups=4)):
        w = np.ones((4, 4 // kw.get("groups", 1), 3, 3), dtype)
        y = _conv.conv2d(x, w, np.ones(4, dtype), **kw, method=method)
        _conv.conv2d_backward(y, x, w, **kw, method=method)


def _conv_rows(method, dtype):
    # direct's in-place row kernel (_conv_rows) runs only for < 4 output channels per group and
    # output rows of at least direct.ROWS_MIN_WIDTH (96) columns: one 2x128 plane reaches it.
    wide = np.ones((1, 1, 2, 128), dtype)
    _conv.conv2d(wide, np.ones((1, 1, 3, 3), dtype), padding=1, method=method)  # (direct: _depthwise3x3)
    _conv.conv2d(wide, np.ones((1, 1, 3, 3), dtype), padding=(1, 2), dilation=(1, 2), method=method)


def _conv_tiles(method, dtype):
    # the register-tiled kernels run for enough channels (direct: _simd_direct.planar_supports)
    many = np.ones((1, 16, 6, 6), dtype)
    _conv.conv2d(many, np.ones((16, 16, 3, 3), dtype), padding=1, method=method)
    # ... and for channels-last memory (read in place by direct; a copy for the others)
    wide_channels = np.ones((1, 6, 6, 32), dtype).transpose(0, 3, 1, 2)
    _conv.conv2d(wide_channels, np.ones((32, 32, 3, 3), dtype), padding=1, method=method)


def _transposed(method, dtype):
    # a 1D transposed convolution with 4 taps, stride 2 (direct: its phases merged into one product)
    # and its bias (added in place by a kernel of its own)
    _transpose.conv_transpose1d(np.ones((4, 16, 1024), dtype), np.ones((16, 8, 4), dtype), np.ones(8, dtype),
                                stride=2, padding=1, method=method)
    # windows that tile the image (kernel == stride): direct's dL/dx is one product, then depth to space
    _conv.conv2d_backward(np.ones((1, 32, 8, 8), dtype), np.ones((1, 8, 16, 16), dtype),
                          np.ones((32, 8, 2, 2), dtype), stride=2, method=method, output_mask=(True, False, False))


def _pooling(method, dtype, kw):
    x = np.ones((2, 4, 64, 64), dtype)
    y, idx = _pool.max_pool2d(x, **kw, return_indices=True, method=method)
    _pool.max_pool2d(x, **kw, method=method)
    _pool.max_pool2d_backward(y, idx, x.shape, method=method)
    a = _pool.avg_pool2d(x, **kw, method=method)
    _pool.avg_pool2d_backward(a, x.shape, **kw, method=method)


def _pooling_more(method, dtype):
    # pooling over channels-last memory: read in place by direct (_pool_last), a copy for the others
    x_last = np.ones((2, 9, 9, 4), dtype).transpose(0, 3, 1, 2)
    y, idx = _pool.max_pool2d(x_last, 3, 2, 1, return_indices=True, method=method)
    _pool.max_pool2d(x_last, 3, 2, 1, method=method)
    _pool.max_pool2d_backward(y, idx, x_last.shape, method=method)  # y is channels-last too
    a = _pool.avg_pool2d(x_last, 3, 2, 1, method=method)
    _pool.avg_pool2d_backward(a, x_last.shape, 3, 2, 1, method=method)
    # global average pooling's backward is a fill of its own; 3D max pooling has a depth step
    x = np.ones((2, 4, 64, 64), dtype)
    _pool.avg_pool2d(x, 64, method=method)
    _pool.avg_pool2d_backward(np.ones((2, 4, 1, 1), dtype), x.shape, 64, method=method)
    volume = np.ones((1, 4, 4, 64, 64), dtype)
    y, idx = _pool.max_pool3d(volume, 2, return_indices=True, method=method)
    _pool.max_pool3d(volume, 2, method=method)


def _adaptive_pooling(method, dtype):
    if "adaptive_max_pool" in strategies.strategy(method).ops:
        # adaptive pooling: one kernel per op for ranks 2 and 3 (the max with and without indices)
        x = np.ones((2, 4, 64, 64), dtype)
        y, idx = _adaptive.adaptive_max_pool2d(x, (4, 5), return_indices=True, method=method)
        _adaptive.adaptive_max_pool2d(x, (4, 5), method=method)
        _adaptive.adaptive_max_pool2d_backward(y, idx, x.shape, method=method)
        a = _adaptive.adaptive_avg_pool2d(x, (4, 5), method=method)
        _adaptive.adaptive_avg_pool2d_backward(a, x.shape, method=method)


#: The jobs of a strategy that computes every problem of the basic ops, in order (each a callable of
#: ``(method, dtype)``). Jobs that share kernels would compile them once in each process that runs one,
#: so the jobs are coarse: splitting the convolutions by layer and pooling into max and average made
#: warmup slower on 2 processes (70 s against 65).
_GENERAL = ((_conv_layers, _conv_rows, _conv_tiles, _transposed)
            + tuple(functools.partial(_pooling, kw=kw) for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                                                 dict(kernel_size=3, stride=1)))
            + (_pooling_more, _adaptive_pooling))


_BASIC_OPS = {"conv", "conv_backward", "max_pool", "max_pool_backward", "avg_pool", "avg_pool_backward"}


def _general(record) -> bool:
    """Whether a strategy computes every problem of the six basic ops (warmup runs all of them)."""
    return _BASIC_OPS <= set(record.ops) and record.supports is strategies.Strategy.supports


# A strategy that computes only some problems warms the layers of these jobs it runs: 3x3 at 28x28
# (Winograd's float32 F(4x4) kernel, and its channels-last reading) and at 8x8 (F(2x2)), 5x5 (FFT),
# a 4x4 stride-2 layer and its dL/dx (Winograd's F(4x4, 2x2)), a 1D layer with 3 taps (F(6, 3)) and a
# 3D layer with 5x5x5 kernels.


def _problem(rank, x, w, stride, padding, dtype):
    from .geometry import conv_problem

    return conv_problem("warmup", rank, x.shape, w.shape, None, stride, padding, 1, 1, np.dtype(dtype).name)[0]


def _square(method, dtype, size, k):
    record = strategies.strategy(method)
    w = np.ones((32, 16, k, k), dtype)
    x = np.ones((1, 16, size, size), dtype)
    if record.can_run("conv", _problem(2, x, w, 1, k // 2, dtype)):
        _conv.conv2d(x, w, np.ones(32, dtype), padding=k // 2, method=method)
        if record.channels_last and size == 28:
            x_last = np.ones((1, size, size, 16), dtype).transpose(0, 3, 1, 2)
            _conv.conv2d(x_last, w, np.ones(32, dtype), padding=k // 2, method=method)


def _stride_2(method, dtype):
    # dL/dx of a 4x4 stride-2 layer (a transposed convolution's forward): Winograd's 2x2-kernel phases
    record = strategies.strategy(method)
    w = np.ones((32, 16, 4, 4), dtype)
    x = np.ones((1, 16, 16, 16), dtype)
    geom = _problem(2, x, w, 2, 1, dtype)
    if record.can_run("conv_backward", geom):
        _conv.conv2d_backward(np.ones(geom.output_shape, dtype), x, w, stride=2, padding=1, method=method,
                              output_mask=(True, False, False))
    if record.can_run("conv", geom):  # and its forward pass (Winograd: space to depth)
        _conv.conv2d(x, w, stride=2, padding=1, method=method)


def _taps_3_1d(method, dtype):
    # a 1D layer with 3 taps (Winograd's F(6, 3) along rows) and its dL/dx
    x = np.ones((1, 16, 200), dtype)
    w = np.ones((32, 16, 3), dtype)
    if strategies.strategy(method).can_run("conv", _problem(1, x, w, 1, 1, dtype)):
        y = _conv.conv1d(x, w, padding=1, method=method)
        _conv.conv1d_backward(y, x, w, padding=1, method=method, output_mask=(True, False, False))


def _volume_5(method, dtype):
    # a 3D layer with 5x5x5 kernels (FFT: the full form's per-frequency products; 2D layers of one image
    # run its rows form)
    w = np.ones((4, 4, 5, 5, 5), dtype)
    x = np.ones((1, 4, 12, 12, 12), dtype)
    if strategies.strategy(method).can_run("conv", _problem(3, x, w, 1, 2, dtype)):
        _conv.conv3d(x, w, padding=2, method=method)


#: The jobs of a strategy that computes only some problems, in order.
_PARTIAL = (functools.partial(_square, size=28, k=3), functools.partial(_square, size=8, k=3),
            functools.partial(_square, size=24, k=5), _stride_2, _taps_3_1d, _volume_5)
