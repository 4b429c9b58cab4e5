"""``warmup()``: compile (or load from Numba's disk cache) the kernels ahead of the first call."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from . import adaptive as _adaptive
from . import conv as _conv
from . import pool as _pool
from . import transpose as _transpose
from . import strategies

__all__ = ["warmup"]


def warmup(dtypes: Sequence = ("float32",), methods: Sequence[str] | None = None) -> float:
    """Compile (or load from the disk cache) every kernel the strategies use, ahead of time.

    The first call of each Numba kernel in a process otherwise pays its compile time (or
    its load from the cache). Every operation runs once per strategy and dtype on small
    arrays chosen to reach every kernel path (a test checks each kernel has been compiled).

    Parameters
    ----------
    dtypes : sequence of dtype
        float32 and/or float64.
    methods : sequence of str, optional
        Strategies to warm up; default: every registered strategy ``auto`` may choose.

    Returns
    -------
    float
        Seconds it took: measured on the 2-core AMD EPYC (Zen 4), 2026-12-05, about 0.6 s
        from the cache and 106 s for float32 on a cold cache.

    Examples
    --------
    >>> import fastconv
    >>> fastconv.warmup(methods=["vectorized"]) >= 0
    True
    """
    if methods is None:
        methods = [n for n in strategies.names() if strategies.strategy(n).automatic]
    start = time.perf_counter()
    general = [m for m in methods if _general(strategies.strategy(m))]
    for dtype in dtypes:
        for method in methods:
            if method not in general:  # a strategy of some problems only: its convolution, if it runs one here
                _warm_partial(method, dtype)
        methods_here = general
        # Big enough that every call's work reaches _jit.SERIAL_WORK: the parallel kernels are the
        # ones to compile ahead (tiny problems run serial twins, compiled on their first use).
        x = np.ones((2, 4, 64, 64), dtype)
        # direct's in-place row kernel (_conv_rows) runs only for < 4 output channels per group and
        # output rows of at least direct.ROWS_MIN_WIDTH (96) columns: one 2x128 plane reaches it.
        wide = np.ones((1, 1, 2, 128), dtype)
        for method in methods_here:
            for kw in (dict(padding=1), dict(padding="same", stride=2, dilation=2), dict(groups=4)):
                w = np.ones((4, 4 // kw.get("groups", 1), 3, 3), dtype)
                y = _conv.conv2d(x, w, np.ones(4, dtype), **kw, method=method)
                _conv.conv2d_backward(y, x, w, **kw, method=method)
            _conv.conv2d(wide, np.ones((1, 1, 3, 3), dtype), padding=1, method=method)  # (direct: _depthwise3x3)
            _conv.conv2d(wide, np.ones((1, 1, 3, 3), dtype), padding=(1, 2), dilation=(1, 2), method=method)
            # the register-tiled kernels run for enough channels (direct: _simd_direct.planar_supports)
            many = np.ones((1, 16, 6, 6), dtype)
            _conv.conv2d(many, np.ones((16, 16, 3, 3), dtype), padding=1, method=method)
            # a 1D transposed convolution with 4 taps, stride 2 (direct: its phases merged into one product)
            # and its bias (added in place by a kernel of its own)
            _transpose.conv_transpose1d(np.ones((4, 16, 1024), dtype), np.ones((16, 8, 4), dtype), np.ones(8, dtype),
                                        stride=2, padding=1, method=method)
            # windows that tile the image (kernel == stride): direct's dL/dx is one product, then depth to space
            _conv.conv2d_backward(np.ones((1, 32, 8, 8), dtype), np.ones((1, 8, 16, 16), dtype),
                                  np.ones((32, 8, 2, 2), dtype), stride=2, method=method, output_mask=(True, False, False))
            # ... and for channels-last memory (read in place by direct; a copy for the others)
            wide_channels = np.ones((1, 6, 6, 32), dtype).transpose(0, 3, 1, 2)
            _conv.conv2d(wide_channels, np.ones((32, 32, 3, 3), dtype), padding=1, method=method)
            for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=1)):
                y, idx = _pool.max_pool2d(x, **kw, return_indices=True, method=method)
                _pool.max_pool2d(x, **kw, method=method)
                _pool.max_pool2d_backward(y, idx, x.shape, method=method)
                a = _pool.avg_pool2d(x, **kw, method=method)
                _pool.avg_pool2d_backward(a, x.shape, **kw, method=method)
            # pooling over channels-last memory: read in place by direct (_pool_last), a copy for the others
            x_last = np.ones((2, 9, 9, 4), dtype).transpose(0, 3, 1, 2)
            y, idx = _pool.max_pool2d(x_last, 3, 2, 1, return_indices=True, method=method)
            _pool.max_pool2d(x_last, 3, 2, 1, method=method)
            _pool.max_pool2d_backward(y, idx, x_last.shape, method=method)  # y is channels-last too
            a = _pool.avg_pool2d(x_last, 3, 2, 1, method=method)
            _pool.avg_pool2d_backward(a, x_last.shape, 3, 2, 1, method=method)
            # global average pooling's backward is a fill of its own; 3D max pooling has a depth step
            _pool.avg_pool2d(x, 64, method=method)
            _pool.avg_pool2d_backward(np.ones((2, 4, 1, 1), dtype), x.shape, 64, method=method)
            volume = np.ones((1, 4, 4, 64, 64), dtype)
            y, idx = _pool.max_pool3d(volume, 2, return_indices=True, method=method)
            _pool.max_pool3d(volume, 2, method=method)
            if "adaptive_max_pool" in strategies.strategy(method).ops:
                # adaptive pooling: one kernel per op for ranks 2 and 3 (the max with and without indices)
                y, idx = _adaptive.adaptive_max_pool2d(x, (4, 5), return_indices=True, method=method)
                _adaptive.adaptive_max_pool2d(x, (4, 5), method=method)
                _adaptive.adaptive_max_pool2d_backward(y, idx, x.shape, method=method)
                a = _adaptive.adaptive_avg_pool2d(x, (4, 5), method=method)
                _adaptive.adaptive_avg_pool2d_backward(a, x.shape, method=method)
    return time.perf_counter() - start


_BASIC_OPS = {"conv", "conv_backward", "max_pool", "max_pool_backward", "avg_pool", "avg_pool_backward"}


def _general(record) -> bool:
    """Whether a strategy computes every problem of the six basic ops (warmup runs all of them)."""
    return _BASIC_OPS <= set(record.ops) and record.supports is strategies.Strategy.supports


def _warm_partial(method, dtype):
    """Warm a strategy that computes only some problems on each of a few layers it runs: 3x3 at 28x28
    (Winograd's float32 F(4x4) kernel, and its channels-last reading) and at 8x8 (F(2x2)), 5x5 (FFT),
    a 4x4 stride-2 layer and its dL/dx (Winograd's F(4x4, 2x2)) and a 1D layer with 3 taps (F(6, 3))."""
    from .geometry import conv_problem

    record = strategies.strategy(method)
    for size, k in ((28, 3), (8, 3), (24, 5)):
        w = np.ones((32, 16, k, k), dtype)
        x = np.ones((1, 16, size, size), dtype)
        geom, _ = conv_problem("warmup", 2, x.shape, w.shape, None, 1, k // 2, 1, 1, np.dtype(dtype).name)
        if not record.can_run("conv", geom):
            continue
        _conv.conv2d(x, w, np.ones(32, dtype), padding=k // 2, method=method)
        if record.channels_last and size == 28:
            x_last = np.ones((1, size, size, 16), dtype).transpose(0, 3, 1, 2)
            _conv.conv2d(x_last, w, np.ones(32, dtype), padding=k // 2, method=method)
    # dL/dx of a 4x4 stride-2 layer (a transposed convolution's forward): Winograd's 2x2-kernel phases
    w = np.ones((32, 16, 4, 4), dtype)
    x = np.ones((1, 16, 16, 16), dtype)
    geom, _ = conv_problem("warmup", 2, x.shape, w.shape, None, 2, 1, 1, 1, np.dtype(dtype).name)
    if record.can_run("conv_backward", geom):
        _conv.conv2d_backward(np.ones(geom.output_shape, dtype), x, w, stride=2, padding=1, method=method,
                              output_mask=(True, False, False))
    if record.can_run("conv", geom):  # and its forward pass (Winograd: space to depth)
        _conv.conv2d(x, w, stride=2, padding=1, method=method)
    # a 1D layer with 3 taps (Winograd's F(6, 3) along rows) and its dL/dx
    x = np.ones((1, 16, 200), dtype)
    w = np.ones((32, 16, 3), dtype)
    geom, _ = conv_problem("warmup", 1, x.shape, w.shape, None, 1, 1, 1, 1, np.dtype(dtype).name)
    if record.can_run("conv", geom):
        y = _conv.conv1d(x, w, padding=1, method=method)
        _conv.conv1d_backward(y, x, w, padding=1, method=method, output_mask=(True, False, False))
    # a 3D layer with 5x5x5 kernels (FFT: the full form's per-frequency products; 2D layers of one image
    # run its rows form)
    w = np.ones((4, 4, 5, 5, 5), dtype)
    x = np.ones((1, 4, 12, 12, 12), dtype)
    geom, _ = conv_problem("warmup", 3, x.shape, w.shape, None, 1, 2, 1, 1, np.dtype(dtype).name)
    if record.can_run("conv", geom):
        _conv.conv3d(x, w, padding=2, method=method)
