"""Numba kernels for adaptive average and max pooling (the ``direct`` strategy's adaptive ops).

The four public functions have the strategy signatures; ``loop.py`` defines the semantics,
which are PyTorch's: output ``i`` of ``o`` along an axis of ``n`` inputs pools
``[floor(i*n/o), ceil((i+1)*n/o))`` (:func:`fastconv.geometry.adaptive_window`, tabulated per
axis by :func:`fastconv.geometry.adaptive_windows`: the kernels never re-derive a bound). The
average divides a window's sum by the number of elements it holds. The max visits the window
row-major and replaces the best when ``v > best or isnan(v)``, starting at the window's first
element: ties keep the first position, a NaN wins (the last NaN's position is kept), an all
-inf window reports its first element; indices are flat positions ``(d*H + h)*W + w`` in the
input plane. Values and indices match PyTorch's exactly.

Ranks. One kernel per op computes rank 2 and rank 3: a rank-2 problem is a rank-3 one of
depth 1 (the depth loop runs once). The depth split of :mod:`._depth` (2D pooling of every
depth plane, then a pass over depth windows) would need a temporary of ``D`` pooled planes and
index bookkeeping; adaptive windows have no stride or padding to exploit, so a window loop
over three axes is simpler and reads the input once. Nor does the fixed-window machinery of
:mod:`._pool_kernels` carry over: window sizes change by one from output to output.

Layout. Flat views of the ``P = N*C`` volumes ``(D, H, W)``; inner loops index with unsigned
offsets (:data:`_U`: no negative-index wrap-around, so LLVM can vectorise the sums). As in
:mod:`._pool_kernels`, the parallel loops make no array views and call nothing (Numba would
count references on the shared arrays, atomics every thread contends for).

Work:

* forward: one ``prange`` over the ``P*oD*oH`` output rows; each row computes its ``oW``
  windows one at a time, a window row being one unit-stride run (a window spanning whole input
  rows, e.g. global pooling, is one run per depth plane);
* average backward: a gather, one ``prange`` over the ``P*D*H`` input rows (race-free, as
  windows overlap): a row is zeroed, then gets ``grad / window size`` of every output whose
  window covers it (per axis a contiguous range of outputs, :class:`AxisCover`), in output
  row-major order: PyTorch's order of additions;
* max backward: max pooling's scatter (``_pool_kernels._max_pool_backward_kernel``): the flat
  indices are all it needs, one thread per plane.

Each output element is written by one thread in a fixed order: results do not depend on the
thread count.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import prange

from .. import _jit
from .._jit import kernel
from ..geometry import PoolGeometry, adaptive_windows
from ._pool_kernels import PlaneShape, _max_pool_backward_kernel

__all__ = ["adaptive_avg_pool", "adaptive_avg_pool_backward", "adaptive_max_pool", "adaptive_max_pool_backward"]

#: Offsets in inner loops are unsigned: Numba then skips its negative-index wrap-around.
_U = np.uint64


# --------------------------------------------------------------------------- what the kernels take
# Plain ints and int64 arrays, so Numba types each record as a homogeneous tuple and one compiled
# signature serves every problem; the kernels read them by name.


class VolumeShape(NamedTuple):
    """``planes`` (``P = N*C``) volumes of ``depth x height x width``, pooled to ``out_depth x ... x out_width``."""

    planes: int
    depth: int
    height: int
    width: int
    out_depth: int
    out_height: int
    out_width: int


class AxisWindows(NamedTuple):
    """Per output position along one axis: its window ``[start, end)`` in the input."""

    start: np.ndarray
    end: np.ndarray


class AxisCover(NamedTuple):
    """Per input position along one axis: the outputs ``[first, end)`` whose windows hold it."""

    first: np.ndarray
    end: np.ndarray


# --------------------------------------------------------------------------- forward


@kernel
def _adaptive_avg_kernel(x, out, shape, depth, rows, cols):
    """Adaptive average pooling of flat ``(P, D, H, W)`` volumes into flat ``(P, oD, oH, oW)``."""
    D, H, W = shape.depth, shape.height, shape.width
    oD, oH, oW = shape.out_depth, shape.out_height, shape.out_width
    d_start, d_end = depth.start, depth.end
    h_start, h_end = rows.start, rows.end
    w_start, w_end = cols.start, cols.end
    per_plane = oD * oH
    for t in prange(shape.planes * per_plane):
        plane = t // per_plane
        od = (t - plane * per_plane) // oH
        oh = t - plane * per_plane - od * oH
        d0, d1 = d_start[od], d_end[od]
        h0, h1 = h_start[oh], h_end[oh]
        for ow in range(oW):
            w0 = w_start[ow]
            width = w_end[ow] - w0
            runs, run_length = h1 - h0, width
            if width == W:  # whole input rows: one contiguous run per depth plane
                runs, run_length = 1, width * (h1 - h0)
            total = x.dtype.type(0)
            for d in range(d0, d1):
                for run in range(runs):
                    at = _U(((plane * D + d) * H + h0 + run) * W + w0)
                    for k in range(_U(run_length)):
                        total += x[at + k]
            out[t * oW + ow] = total / x.dtype.type((d1 - d0) * (h1 - h0) * width)


@kernel
def _adaptive_max_kernel(x, out, indices, shape, depth, rows, cols):
    """Adaptive max pooling of flat ``(P, D, H, W)`` volumes into flat ``(P, oD, oH, oW)`` (indices unless None)."""
    D, H, W = shape.depth, shape.height, shape.width
    oD, oH, oW = shape.out_depth, shape.out_height, shape.out_width
    d_start, d_end = depth.start, depth.end
    h_start, h_end = rows.start, rows.end
    w_start, w_end = cols.start, cols.end
    per_plane = oD * oH
    for t in prange(shape.planes * per_plane):
        plane = t // per_plane
        od = (t - plane * per_plane) // oH
        oh = t - plane * per_plane - od * oH
        d0, d1 = d_start[od], d_end[od]
        h0, h1 = h_start[oh], h_end[oh]
        x_plane = plane * D * H * W
        for ow in range(oW):
            w0, w1 = w_start[ow], w_end[ow]
            # Start from the window's first element (what -inf would give, up to NaN and index).
            pos = (d0 * H + h0) * W + w0
            best = x[x_plane + pos]
            for d in range(d0, d1):
                for h in range(h0, h1):
                    row = (d * H + h) * W
                    for w in range(w0, w1):
                        v = x[x_plane + row + w]
                        if (v > best) | (v != v):
                            best = v
                            pos = row + w
            out[t * oW + ow] = best
            if indices is not None:
                indices[t * oW + ow] = pos


# --------------------------------------------------------------------------- backward


@kernel
def _adaptive_avg_backward_kernel(grad_out, grad_x, shape, depth, rows, cols, depth_cover, row_cover):
    """Adaptive average pooling's input gradient: a gather, parallel over the ``P*D*H`` input rows (race-free)."""
    D, H, W = shape.depth, shape.height, shape.width
    oD, oH, oW = shape.out_depth, shape.out_height, shape.out_width
    d_start, d_end = depth.start, depth.end
    h_start, h_end = rows.start, rows.end
    w_start, w_end = cols.start, cols.end
    d_first, d_last = depth_cover.first, depth_cover.end
    h_first, h_last = row_cover.first, row_cover.end
    per_plane = D * H
    for t in prange(shape.planes * per_plane):
        plane = t // per_plane
        d = (t - plane * per_plane) // H
        h = t - plane * per_plane - d * H
        g_row = _U(t * W)
        for k in range(_U(W)):
            grad_x[g_row + k] = 0
        for od in range(d_first[d], d_last[d]):
            for oh in range(h_first[h], h_last[h]):
                o_row = ((plane * oD + od) * oH + oh) * oW
                rows_held = (d_end[od] - d_start[od]) * (h_end[oh] - h_start[oh])
                for ow in range(oW):
                    w0 = w_start[ow]
                    width = w_end[ow] - w0
                    g = grad_out[o_row + ow] / grad_out.dtype.type(rows_held * width)
                    at = g_row + _U(w0)
                    for k in range(_U(width)):
                        grad_x[at + k] += g


# --------------------------------------------------------------------------- strategy functions


def _covering(windows: AxisWindows, n: int) -> AxisCover:
    """Per input position ``p`` of an axis of ``n``: the outputs ``i`` with ``start[i] <= p < end[i]``.

    Starts and ends never decrease with ``i``, so those outputs are one range: from the first
    whose end is past ``p`` to the last whose start is at or before it.
    """
    positions = np.arange(n)
    return AxisCover(first=np.searchsorted(windows.end, positions, side="right").astype(np.int64),
                     end=np.searchsorted(windows.start, positions, side="right").astype(np.int64))


@functools.lru_cache(maxsize=256)
def _tables(geom):
    """``(VolumeShape, (depth, row, column) AxisWindows, (depth, row) AxisCover)`` of ``geom``, once per problem.

    A rank-2 problem gets depth 1 (one window ``[0, 1)``). The arrays are read, never written.
    """
    lift = (1,) * (3 - geom.rank)
    in_size, out_size = lift + tuple(geom.in_size), lift + tuple(geom.out_size)
    shape = VolumeShape(int(geom.batch * geom.channels), *(int(n) for n in in_size), *(int(o) for o in out_size))
    windows = tuple(AxisWindows(*adaptive_windows(n, o)) for n, o in zip(in_size, out_size))
    cover = tuple(_covering(w, n) for w, n in zip(windows[:2], in_size[:2]))
    for table in windows + cover:
        for array in table:
            array.flags.writeable = False
    return shape, windows, cover


@functools.lru_cache(maxsize=256)
def as_fixed_pool(geom):
    """The ordinary pooling ``geom`` is, when every input size is a multiple of its output size, else None.

    Then output ``i`` pools ``[i*n/o, (i+1)*n/o)``: windows of ``k = n/o`` at stride ``k``, no
    padding, divisor ``k`` per axis, the same visiting order: the fixed-window kernels of
    :mod:`._pool_kernels` compute it (``(1, 512, 14, 14)`` to 7x7 is 2x2 pooling at stride 2),
    bit for bit and with the same indices.
    """
    if any(n % o for n, o in zip(geom.in_size, geom.out_size)):
        return None
    kernel = tuple(n // o for n, o in zip(geom.in_size, geom.out_size))
    return PoolGeometry(batch=geom.batch, channels=geom.channels, in_size=tuple(geom.in_size), kernel=kernel,
                        stride=kernel, dilation=(1,) * geom.rank, padding=(0,) * geom.rank,
                        out_size=tuple(geom.out_size), dtype=geom.dtype)


def _fixed_op(name):
    """The direct strategy's ordinary pooling op ``name`` (imported late: direct imports this module)."""
    from . import direct

    return direct.STRATEGY.ops[name]


def adaptive_avg_pool(x, geom, out):
    """Mean over each adaptive window."""
    fixed = as_fixed_pool(geom)
    if fixed is not None:
        return _fixed_op("avg_pool")(x, fixed, out)
    shape, (depth, rows, cols), _ = _tables(geom)
    with _jit.launch():
        _adaptive_avg_kernel(x.reshape(-1), out.reshape(-1), shape, depth, rows, cols)


def adaptive_max_pool(x, geom, out, indices):
    """Maximum over each adaptive window (NaN wins, ties keep the first); ``indices`` may be None."""
    fixed = as_fixed_pool(geom)
    if fixed is not None:
        return _fixed_op("max_pool")(x, fixed, out, indices)
    shape, (depth, rows, cols), _ = _tables(geom)
    flat_indices = None if indices is None else indices.reshape(-1)
    with _jit.launch():
        _adaptive_max_kernel(x.reshape(-1), out.reshape(-1), flat_indices, shape, depth, rows, cols)


def adaptive_avg_pool_backward(grad_out, geom, grad_x):
    """Each output's ``grad / window size`` added to its window (gathered per input row)."""
    fixed = as_fixed_pool(geom)
    if fixed is not None:
        return _fixed_op("avg_pool_backward")(grad_out, fixed, grad_x)
    shape, (depth, rows, cols), (depth_cover, row_cover) = _tables(geom)
    with _jit.launch():
        _adaptive_avg_backward_kernel(grad_out.reshape(-1), grad_x.reshape(-1), shape, depth, rows, cols,
                                      depth_cover, row_cover)


def adaptive_max_pool_backward(grad_out, indices, geom, grad_x):
    """Scatter-add ``grad_out`` into a zeroed ``grad_x`` at ``indices``: max pooling's kernel, volumes as planes
    of ``D*H`` rows."""
    shape = _tables(geom)[0]
    planes = PlaneShape(planes=shape.planes, height=shape.depth * shape.height, width=shape.width,
                        out_height=shape.out_depth * shape.out_height, out_width=shape.out_width)
    with _jit.launch():
        _max_pool_backward_kernel(grad_out.reshape(-1), indices.reshape(-1), grad_x.reshape(-1), planes)
