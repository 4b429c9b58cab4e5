"""Numba kernels for 2D max and average pooling (the ``direct`` strategy's pooling).

The four public functions have the strategy signatures; ``loop.py`` defines
the semantics, which are PyTorch's: padding never wins a max, ``v > best or
isnan(v)`` replaces the best (NaN propagates, the last NaN's index is kept),
the best starts at the window's first in-image element (the same as starting
at ``-inf`` with that element's index), and the average divides by PyTorch's
divisor, which the strategy functions take from
:func:`fastconv.geometry.avg_pool_divisors` (one ``(oH, oW)`` array, flat, in
the data's dtype: ``count_include_pad``, ``ceil_mode`` and ``divisor_override``
are all in it). Every path below visits a window's taps in row-major order, so
values *and* indices match PyTorch exactly.

Layout. The kernels take flat views of the ``P = N*C`` planes and index them
with integer offsets. Inner loops index with unsigned offsets (:data:`_U`),
which lets LLVM drop Numba's negative-index wrap-around and vectorise.
Inside the parallel loop nothing makes array views, and the helpers it calls
make no calls themselves: Numba keeps reference counts (atomics on the array
shared by all threads) on the arrays of any function that slices or calls,
which cost more than the pooling when paid per row.

Forward work. One ``prange`` over runs of ``rows_per_item`` output rows of
the ``P*oH`` (plane-major): a run holds a few hundred outputs, so a batch of
small planes and one large image both split over the cores. Within a run,
rows go one of three ways:

* fixed window: (kW, sW) = (2, 2), (3, 2), (3, 1), (3, 3) or (4, 4), dilation
  1 along the row, a square window (any row dilation) or a one-row window (1D pooling),
  on the rows whose window rows are all in-image. Window width and stride
  are literals, so the taps unroll; on the interior columns the window stays
  in registers and LLVM vectorises across outputs (for stride 1 "same"
  pooling one vector run crosses all rows of the plane), and the few border
  columns skip their out-of-image taps one by one;
* tap-major, any other geometry on rows of at least
  :data:`_TAP_MAJOR_MIN_WIDTH` outputs: per tap, one strided compare-select
  (or add) pass over the output row, vectorised across outputs, each tap
  limited to the outputs for which it is in-image;
* window-major, narrower rows (global pooling): one window at a time; an
  average over whole rows sums one contiguous run.

Backward:

* max: ``grad_x`` is zeroed in parallel chunks, then one thread per plane
  scatter-adds the plane's gradients in output order (only the indices are
  known here, and windows may overlap);
* avg: a gather, parallel over runs of input rows: ``grad / divisor`` is
  computed once per output, then each input row adds the values of the
  windows covering it, in output row-major order (PyTorch's order of
  additions, so the result is bit-identical to PyTorch's).

Each output element is written by one thread in a fixed order: results do
not depend on the thread count.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import prange

from .. import _jit
from .._jit import covering_outputs, kernel, output_span
from .. import geometry
from ..geometry import avg_pool_divisors

__all__ = ["avg_pool2d", "avg_pool2d_backward", "max_pool2d", "max_pool2d_backward"]

#: Offsets in inner loops are unsigned: Numba then skips its negative-index wrap-around,
#: whose per-element select otherwise hides the consecutive loads from LLVM's vectoriser.
_U = np.uint64

#: Narrower output rows are computed window-major: a tap-major pass costs a
#: loop setup per tap, which a row of a few outputs does not amortise.
_TAP_MAJOR_MIN_WIDTH = 8
#: Outputs (backward: input elements) per ``prange`` item, about: keeps the
#: per-item overhead small next to the work.
_OUTPUTS_PER_ITEM = 512
#: Work items wanted at least, so one big image still splits over the cores.
#: (On the 2-core AVX-512 Xeon these were measured on: 128..8192 outputs and
#: 8..128 items all gave the benchmark shapes' times within about 5%.)
_MIN_ITEMS = 32

#: The (window width, stride) pairs with a fixed-window path. ``_fixed_ranges`` admits exactly
#: these (with column dilation 1, and square or one-row windows), and the forward kernels pass
#: them to ``_max_fixed`` / ``_avg_fixed`` as literals, which unroll the taps: each pair is a
#: specialisation of the kernel of its own, compiled on first use (:func:`_fixed_pair`).
#: :func:`_check_fixed_windows` (run at import) fails if the rule and these pairs disagree. (3, 3) and (4, 4) are 1D pooling's usual
#: non-overlapping windows: with a literal stride LLVM turns the row's loads into wide vector
#: loads and shuffles; with a runtime one (the tap-major path) only gathers.
FIXED_WIDTH_STRIDES = ((2, 2), (3, 2), (3, 1), (3, 3), (4, 4))


# --------------------------------------------------------------------------- what the kernels take
#
# Every field is a plain int (or an int64 array), so Numba types each record as a homogeneous
# tuple and one compiled signature serves every geometry. Records a ``prange`` body uses are
# either kernel arguments or built by calling the class in the parallel kernel itself: Numba's
# parfor lowering cannot rebuild a NamedTuple another kernel returned. So the table helpers
# return their fields in order and the kernels name them (``AxisTables(*_axis_tables(...))``).


class PlaneShape(NamedTuple):
    """``planes`` (``P = N*C``) planes of ``height x width``, pooled to ``out_height x out_width``."""

    planes: int
    height: int
    width: int
    out_height: int
    out_width: int


class Window(NamedTuple):
    """The pooling window per axis: size, stride, dilation and padding (on each side)."""

    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    padding_h: int
    padding_w: int


class AxisTables(NamedTuple):
    """Per output position along one axis: its window's ``start`` and in-image taps ``[tap_lo, tap_hi)``."""

    start: np.ndarray
    tap_lo: np.ndarray
    tap_hi: np.ndarray


class TapSpans(NamedTuple):
    """Per tap along one axis: the output positions ``[first, end)`` for which the tap is in-image."""

    first: np.ndarray
    end: np.ndarray


class FixedArea(NamedTuple):
    """The output rows and columns the fixed-window path computes.

    Rows ``[row_begin, row_end)`` of every plane, columns ``[col_begin, col_end)``;
    the row range is empty if the geometry has no fixed-window path.
    """

    row_begin: int
    row_end: int
    col_begin: int
    col_end: int


class CoveringRows(NamedTuple):
    """Per input row: the output rows ``[begin, end)`` whose windows hold it."""

    begin: np.ndarray
    end: np.ndarray


# --------------------------------------------------------------------------- geometry tables


@kernel(parallel=False)
def _axis_tables(out_len, in_len, size, stride, dilation, padding):
    """Per output position along one axis: the fields of :class:`AxisTables`, ``(start, tap_lo, tap_hi)``."""
    start = np.empty(out_len, np.int64)
    tap_lo = np.empty(out_len, np.int64)
    tap_hi = np.empty(out_len, np.int64)
    for o in range(out_len):
        s = o * stride - padding
        start[o] = s
        # the taps t of the window with 0 <= s + t*dilation < in_len
        tap_lo[o], tap_hi[o] = output_span(in_len, s, dilation, size)
    return start, tap_lo, tap_hi


@kernel(parallel=False)
def _tap_spans(out_len, in_len, size, stride, dilation, padding):
    """Per tap along one axis: the fields of :class:`TapSpans`, ``(first, end)``."""
    first = np.empty(size, np.int64)
    end = np.empty(size, np.int64)
    for b in range(size):
        first[b], end[b] = output_span(in_len, b * dilation - padding, stride, out_len)
    return first, end


@kernel(parallel=False)
def _fixed_ranges(window, shape, row_taps, col_taps):
    """The fields of :class:`FixedArea`: the output rows and columns the fixed-window path computes.

    The rows are those whose window rows are all in-image and the columns
    those whose window columns are, for the windows with a fixed-window path:
    (kW, sW) in :data:`FIXED_WIDTH_STRIDES`, column dilation 1, and square
    (``kH == kW``, any row dilation) or one row high (1D pooling). For any
    other geometry the row range is empty.
    """
    kH, kW = window.kernel_h, window.kernel_w
    sW, dW = window.stride_w, window.dilation_w
    oH, oW = shape.out_height, shape.out_width
    width_stride = (kW == 2 and sW == 2) or (kW == 3 and 1 <= sW <= 3) or (kW == 4 and sW == 4)
    fixed = width_stride and dW == 1 and (kH == 1 or kH == kW)
    i0 = row_taps.first[0]
    i1 = max(row_taps.end[kH - 1], i0)
    j0 = col_taps.first[0]
    j1 = max(col_taps.end[kW - 1], j0)
    if not fixed or j1 == j0:
        return oH, oH, oW, oW
    return i0, i1, j0, j1


@kernel(parallel=False)
def _next_fixed_rows(t, t_end, out_rows, fixed):
    """The next rows ``[begin, end)`` of the run ``[t, t_end)`` that take the fixed-window path.

    ``fixed.row_begin``, ``fixed.row_end`` are the fixed-window rows of every plane (empty if
    the geometry has no such path: then the whole run is returned as general).
    """
    begin, end = fixed.row_begin, fixed.row_end
    if end <= begin:
        return t_end, t_end
    plane_row = t - t % out_rows
    if t < plane_row + end:
        return min(max(t, plane_row + begin), t_end), min(plane_row + end, t_end)
    return min(plane_row + out_rows + begin, t_end), min(plane_row + out_rows + end, t_end)


# --------------------------------------------------------------------------- max pooling, forward
#
# Helpers compute a run ``[t_begin, t_end)`` of the P*oH output rows (plane-major);
# output row t is row ``t % oH`` of plane ``t // oH``.


@kernel(parallel=False)
def _max_fixed(x, out, indices, shape, window, rows, cols, t_begin, t_end, fixed, kw, sw):
    """Full rows ``[t_begin, t_end)`` of one plane (every window row in-image), ``kw`` and ``sw`` literal.

    The window is square (``kH == kw``) or one row high (1D pooling). On the
    interior columns its taps unroll, the window stays in registers and LLVM
    vectorises across outputs; the few border columns then skip their
    out-of-image taps one by one.
    """
    H, W = shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    kH, sH, dH = window.kernel_h, window.stride_h, window.dilation_h
    j0, j1 = fixed.col_begin, fixed.col_end
    row_start = rows.start
    col_start = cols.start
    plane = t_begin // oH
    x_plane = plane * H * W
    i_begin = t_begin - plane * oH
    runs = t_end - t_begin
    count = j1 - j0
    if sH * W == sw * oW:
        # Output rows are as far apart in the input as sw*oW outputs (stride 1, same size):
        # one vector run crosses all rows. The border outputs it passes over are rewritten below.
        count += (runs - 1) * oW
        runs = 1
    for run in range(runs):
        corner = row_start[i_begin + run] * W + col_start[j0]  # in-plane index of output j0's corner
        dst = _U((t_begin + run) * oW + j0)
        first = _U(x_plane + corner)
        pitch = _U(dH * W)
        if kH == 1:
            # One window row (1D pooling).
            for k in range(_U(count)):
                at = first + _U(sw) * k
                best = x[at]
                pos = 0
                for b in range(1, kw):
                    v = x[at + _U(b)]
                    wins = (v > best) | (v != v)
                    best = v if wins else best
                    pos = b if wins else pos
                out[dst + k] = best
                if indices is not None:
                    indices[dst + k] = corner + sw * np.int64(k) + pos
        else:
            # Square window (every common 2D case): the whole window in registers.
            for k in range(_U(count)):
                at = first + _U(sw) * k
                best = x[at]
                pos = 0
                for a in range(kw):
                    for b in range(kw):
                        v = x[at + _U(a) * pitch + _U(b)]
                        wins = (v > best) | (v != v)
                        best = v if wins else best
                        pos = a * dH * W + b if wins else pos
                out[dst + k] = best
                if indices is not None:
                    indices[dst + k] = corner + sw * np.int64(k) + pos
    for t in range(t_begin, t_end):
        r0 = row_start[t - plane * oH]
        for part in range(2):
            for j in range(0 if part == 0 else j1, j0 if part == 0 else oW):
                c0 = col_start[j]
                pos = r0 * W + max(c0, 0)
                best = x[x_plane + pos]
                for a in range(kw):  # kH is kw or 1: a literal bound unrolls the loop
                    for b in range(kw):
                        if a < kH and 0 <= c0 + b < W:
                            at = (r0 + a * dH) * W + c0 + b
                            v = x[x_plane + at]
                            if (v > best) | (v != v):
                                best = v
                                pos = at
                out[t * oW + j] = best
                if indices is not None:
                    indices[t * oW + j] = pos


@kernel(parallel=False)
def _max_windows(x, out, indices, shape, window, rows, cols, t_begin, t_end):
    """One window at a time (any geometry): for rows too narrow for tap-major passes."""
    H, W = shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    dH, dW = window.dilation_h, window.dilation_w
    row_start, row_lo, row_hi = rows.start, rows.tap_lo, rows.tap_hi
    col_start, col_lo, col_hi = cols.start, cols.tap_lo, cols.tap_hi
    plane = t_begin // oH
    i = t_begin - plane * oH
    for t in range(t_begin, t_end):
        x_plane = plane * H * W
        for j in range(oW):
            pos = (row_start[i] + row_lo[i] * dH) * W + col_start[j] + col_lo[j] * dW
            best = x[x_plane + pos]
            # (No range() with a runtime step: its zero-step raise path keeps Numba's
            # reference counts on the arrays, atomics the threads then contend for.)
            for a in range(row_lo[i], row_hi[i]):
                r = row_start[i] + a * dH
                for b in range(col_lo[j], col_hi[j]):
                    c = col_start[j] + b * dW
                    v = x[x_plane + r * W + c]
                    if (v > best) | (v != v):
                        best = v
                        pos = r * W + c
            out[t * oW + j] = best
            if indices is not None:
                indices[t * oW + j] = pos
        i += 1
        if i == oH:
            i = 0
            plane += 1


@kernel(parallel=False)
def _max_taps(x, out, indices, shape, window, rows, cols, col_taps, t_begin, t_end):
    """Tap by tap (any geometry): each tap is one strided compare-select pass over an output row."""
    H, W = shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    kW, sW = window.kernel_w, window.stride_w
    dH, dW = window.dilation_h, window.dilation_w
    row_start, row_lo, row_hi = rows.start, rows.tap_lo, rows.tap_hi
    col_start, col_lo = cols.start, cols.tap_lo
    tap_first, tap_end = col_taps.first, col_taps.end
    step = _U(sW)
    plane = t_begin // oH
    i = t_begin - plane * oH
    for t in range(t_begin, t_end):
        x_plane = plane * H * W
        o_row = t * oW
        # Start from each window's first in-image element (what -inf would give, up to NaN and index).
        r_first = row_start[i] + row_lo[i] * dH
        for j in range(oW):
            pos = r_first * W + col_start[j] + col_lo[j] * dW
            out[o_row + j] = x[x_plane + pos]
            if indices is not None:
                indices[o_row + j] = pos
        for a in range(row_lo[i], row_hi[i]):
            r = row_start[i] + a * dH
            for b in range(kW):
                j0 = tap_first[b]
                pos = r * W + col_start[j0] + b * dW  # the tap's input position for output j0
                src = _U(x_plane + pos)
                dst = _U(o_row + j0)
                # x[src + sW*k] competes for out[dst + k].
                for k in range(_U(max(tap_end[b] - j0, 0))):
                    v = x[src + step * k]
                    best = out[dst + k]
                    wins = (v > best) | (v != v)
                    out[dst + k] = v if wins else best
                    if indices is not None:
                        held_index = indices[dst + k]
                        indices[dst + k] = pos + sW * np.int64(k) if wins else held_index
        i += 1
        if i == oH:
            i = 0
            plane += 1


@kernel
def _max_pool_kernel(x, out, indices, shape, window, rows_per_item, width_marker, stride_marker):
    """Max pooling of flat ``(P, H, W)`` planes into flat ``(P, oH, oW)`` (and indices, unless None).

    ``width_marker`` and ``stride_marker`` are tuples whose lengths are the fixed-window path's
    (kW, sW) (:func:`_fixed_pair`): literals to Numba, one specialisation per pair, compiled on
    first use.
    """
    kw, sw = len(width_marker), len(stride_marker)
    P, H, W = shape.planes, shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    kH, kW = window.kernel_h, window.kernel_w
    sH, sW = window.stride_h, window.stride_w
    dH, dW = window.dilation_h, window.dilation_w
    pH, pW = window.padding_h, window.padding_w
    rows = AxisTables(*_axis_tables(oH, H, kH, sH, dH, pH))
    cols = AxisTables(*_axis_tables(oW, W, kW, sW, dW, pW))
    col_taps = TapSpans(*_tap_spans(oW, W, kW, sW, dW, pW))
    fixed = FixedArea(*_fixed_ranges(window, shape, TapSpans(*_tap_spans(oH, H, kH, sH, dH, pH)), col_taps))
    n_rows = P * oH
    # One item is a run of rows_per_item output rows. Helpers are called a few times per run,
    # never per row: a call costs reference-count atomics on shared arrays unless the helper
    # makes no calls itself (all of these are written so).
    for item in prange((n_rows + rows_per_item - 1) // rows_per_item):
        t = item * rows_per_item
        t_end = min(t + rows_per_item, n_rows)
        while t < t_end:
            # [t, fixed_begin) takes a general path, [fixed_begin, fixed_end) the fixed-window one.
            fixed_begin, fixed_end = _next_fixed_rows(t, t_end, oH, fixed)
            if fixed_begin > t:
                if oW >= _TAP_MAJOR_MIN_WIDTH:
                    _max_taps(x, out, indices, shape, window, rows, cols, col_taps, t, fixed_begin)
                else:
                    _max_windows(x, out, indices, shape, window, rows, cols, t, fixed_begin)
            if fixed_end > fixed_begin:
                _max_fixed(x, out, indices, shape, window, rows, cols, fixed_begin, fixed_end, fixed, kw, sw)
            t = fixed_end


# --------------------------------------------------------------------------- average pooling, forward


@kernel(parallel=False)
def _avg_fixed(x, out, shape, window, rows, cols, divisor, t_begin, t_end, fixed, kw, sw):
    """Full rows of one plane, ``kw`` and ``sw`` literal: sums of unrolled taps; see ``_max_fixed``."""
    H, W = shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    kH, sH = window.kernel_h, window.stride_h
    j0, j1 = fixed.col_begin, fixed.col_end
    row_start = rows.start
    col_start = cols.start
    plane = t_begin // oH
    x_plane = plane * H * W
    i_begin = t_begin - plane * oH
    # Interior windows lie wholly in the image, so they all share one divisor (kH*kW, or the override).
    interior_divisor = divisor[i_begin * oW + j0]
    runs = t_end - t_begin
    count = j1 - j0
    if sH * W == sw * oW:
        count += (runs - 1) * oW
        runs = 1
    for run in range(runs):
        corner = row_start[i_begin + run] * W + col_start[j0]
        dst = _U((t_begin + run) * oW + j0)
        first = _U(x_plane + corner)
        pitch = _U(W)
        if kH == 1:
            for k in range(_U(count)):
                at = first + _U(sw) * k
                total = x[at]
                for b in range(1, kw):
                    total += x[at + _U(b)]
                out[dst + k] = total / interior_divisor
        else:
            for k in range(_U(count)):
                at = first + _U(sw) * k
                total = x.dtype.type(0)
                for a in range(kw):
                    for b in range(kw):
                        total += x[at + _U(a) * pitch + _U(b)]
                out[dst + k] = total / interior_divisor
    for t in range(t_begin, t_end):
        i = t - plane * oH
        for part in range(2):
            for j in range(0 if part == 0 else j1, j0 if part == 0 else oW):
                c0 = col_start[j]
                total = x.dtype.type(0)
                for a in range(kw):  # kH is kw or 1: a literal bound unrolls the loop
                    for b in range(kw):
                        if a < kH and 0 <= c0 + b < W:
                            total += x[x_plane + (row_start[i] + a) * W + c0 + b]
                out[t * oW + j] = total / divisor[i * oW + j]


@kernel(parallel=False)
def _avg_windows(x, out, shape, rows, cols, divisor, t_begin, t_end):
    """One window at a time: for rows too narrow for tap-major passes (e.g. global pooling)."""
    H, W = shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    row_start, row_lo, row_hi = rows.start, rows.tap_lo, rows.tap_hi
    col_start, col_lo, col_hi = cols.start, cols.tap_lo, cols.tap_hi
    plane = t_begin // oH
    i = t_begin - plane * oH
    for t in range(t_begin, t_end):
        r_first = row_start[i] + row_lo[i]
        for j in range(oW):
            c_first = col_start[j] + col_lo[j]
            runs = row_hi[i] - row_lo[i]
            run_length = col_hi[j] - col_lo[j]
            if run_length == W:
                # The window spans whole rows (global pooling): one contiguous run.
                run_length *= runs
                runs = 1
            total = x.dtype.type(0)
            for run in range(runs):
                at = _U(plane * H * W + (r_first + run) * W + c_first)
                for c in range(_U(run_length)):
                    total += x[at + c]
            out[t * oW + j] = total / divisor[i * oW + j]
        i += 1
        if i == oH:
            i = 0
            plane += 1


@kernel(parallel=False)
def _avg_taps(x, out, shape, window, rows, cols, divisor, col_taps, t_begin, t_end):
    """Tap by tap: each tap is one strided add pass over an output row, then the divisors."""
    H, W = shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    kW, sW = window.kernel_w, window.stride_w
    row_start, row_lo, row_hi = rows.start, rows.tap_lo, rows.tap_hi
    col_start = cols.start
    tap_first, tap_end = col_taps.first, col_taps.end
    step = _U(sW)
    plane = t_begin // oH
    i = t_begin - plane * oH
    for t in range(t_begin, t_end):
        o_row = t * oW
        for j in range(oW):
            out[o_row + j] = 0
        for r in range(row_start[i] + row_lo[i], row_start[i] + row_hi[i]):
            for b in range(kW):
                j0 = tap_first[b]
                src = _U(plane * H * W + r * W + col_start[j0] + b)
                dst = _U(o_row + j0)
                for k in range(_U(max(tap_end[b] - j0, 0))):
                    out[dst + k] += x[src + step * k]
        for j in range(oW):
            out[o_row + j] = out[o_row + j] / divisor[i * oW + j]
        i += 1
        if i == oH:
            i = 0
            plane += 1


@kernel
def _avg_pool_kernel(x, out, shape, window, divisor, rows_per_item, width_marker, stride_marker):
    """Average pooling of flat ``(P, H, W)`` planes into flat ``(P, oH, oW)``; ``divisor`` is flat ``(oH, oW)``.

    ``width_marker``, ``stride_marker``: as for :func:`_max_pool_kernel`.
    """
    kw, sw = len(width_marker), len(stride_marker)
    P, H, W = shape.planes, shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    kH, kW = window.kernel_h, window.kernel_w
    sH, sW = window.stride_h, window.stride_w
    pH, pW = window.padding_h, window.padding_w
    rows = AxisTables(*_axis_tables(oH, H, kH, sH, 1, pH))
    cols = AxisTables(*_axis_tables(oW, W, kW, sW, 1, pW))
    col_taps = TapSpans(*_tap_spans(oW, W, kW, sW, 1, pW))
    fixed = FixedArea(*_fixed_ranges(window, shape, TapSpans(*_tap_spans(oH, H, kH, sH, 1, pH)), col_taps))
    n_rows = P * oH
    for item in prange((n_rows + rows_per_item - 1) // rows_per_item):
        t = item * rows_per_item
        t_end = min(t + rows_per_item, n_rows)
        while t < t_end:
            fixed_begin, fixed_end = _next_fixed_rows(t, t_end, oH, fixed)
            if fixed_begin > t:
                if oW >= _TAP_MAJOR_MIN_WIDTH:
                    _avg_taps(x, out, shape, window, rows, cols, divisor, col_taps, t, fixed_begin)
                else:
                    _avg_windows(x, out, shape, rows, cols, divisor, t, fixed_begin)
            if fixed_end > fixed_begin:
                _avg_fixed(x, out, shape, window, rows, cols, divisor, fixed_begin, fixed_end, fixed, kw, sw)
            t = fixed_end


# --------------------------------------------------------------------------- backward

#: Elements zeroed per ``prange`` item in the max-pooling backward pass.
_ZERO_CHUNK = 1 << 15


@kernel
def _max_pool_backward_kernel(grad_out, indices, grad_x, shape):
    """Zero ``grad_x`` (in parallel chunks), then scatter-add each plane's gradients at its indices.

    One thread per plane for the scatter: windows may overlap and the indices
    are all we know of them, so a plane's additions stay in one thread, in
    output order (PyTorch's).
    """
    P, H, W = shape.planes, shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    size = P * H * W
    for chunk in prange((size + _ZERO_CHUNK - 1) // _ZERO_CHUNK):
        first = _U(chunk * _ZERO_CHUNK)
        for k in range(_U(min(_ZERO_CHUNK, size - chunk * _ZERO_CHUNK))):
            grad_x[first + k] = 0
    for plane in prange(P):
        x_at = plane * H * W
        o_at = _U(plane * oH * oW)
        for k in range(_U(oH * oW)):
            grad_x[_U(x_at + indices[o_at + k])] += grad_out[o_at + k]


@kernel(parallel=False)
def _covering_rows(in_len, out_len, size, stride, padding):
    """Per input row ``r``: the fields of :class:`CoveringRows` (output rows whose windows hold ``r``).

    Output row ``i``'s window is ``[i*s - p, i*s-p+k)``.
    """
    begin = np.empty(in_len, np.int64)
    end = np.empty(in_len, np.int64)
    for r in range(in_len):
        begin[r], end[r] = covering_outputs(r, stride, padding, size, out_len)
    return begin, end


@kernel(parallel=False)
def _avg_backward_rows(scaled, grad_x, shape, window, cols, col_taps, covering, t_begin, t_end):
    """Input rows ``[t_begin, t_end)`` of the P*H: each element sums the scaled gradients covering it."""
    H, W = shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    kW, sW = window.kernel_w, window.stride_w
    col_start, col_lo, col_hi = cols.start, cols.tap_lo, cols.tap_hi
    tap_first, tap_end = col_taps.first, col_taps.end
    cover_begin, cover_end = covering.begin, covering.end
    step = _U(sW)
    plane = t_begin // H
    r = t_begin - plane * H
    for t in range(t_begin, t_end):
        g_row = _U(t * W)
        for c in range(_U(W)):
            grad_x[g_row + c] = 0
        for i in range(cover_begin[r], cover_end[r]):
            s_row = (plane * oH + i) * oW
            if oW >= _TAP_MAJOR_MIN_WIDTH:
                # Taps right to left, so each element receives its windows left to right:
                # PyTorch's (row-major) order of additions.
                for b in range(kW - 1, -1, -1):
                    j0 = tap_first[b]
                    src = _U(s_row + j0)
                    dst = g_row + _U(col_start[j0] + b)
                    for k in range(_U(max(tap_end[b] - j0, 0))):
                        grad_x[dst + step * k] += scaled[src + k]
            else:
                for j in range(oW):
                    g = scaled[s_row + j]
                    for c in range(col_start[j] + col_lo[j], col_start[j] + col_hi[j]):
                        grad_x[g_row + _U(c)] += g
        r += 1
        if r == H:
            r = 0
            plane += 1


@kernel
def _avg_pool_backward_kernel(grad_out, grad_x, shape, window, divisor, rows_per_item):
    """Average pooling's input gradient: a gather, parallel over runs of input rows (race-free).

    ``divisor`` is flat ``(oH, oW)``, in ``grad_out``'s dtype.
    """
    P, H, W = shape.planes, shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    kH, kW = window.kernel_h, window.kernel_w
    sH, sW = window.stride_h, window.stride_w
    pH, pW = window.padding_h, window.padding_w
    cols = AxisTables(*_axis_tables(oW, W, kW, sW, 1, pW))
    col_taps = TapSpans(*_tap_spans(oW, W, kW, sW, 1, pW))
    covering = CoveringRows(*_covering_rows(H, oH, kH, sH, pH))
    # grad / divisor, once per output (PyTorch divides each contribution the same way).
    scaled = np.empty(P * oH * oW, grad_out.dtype)
    n_out = P * oH
    for item in prange((n_out + rows_per_item - 1) // rows_per_item):
        for t in range(item * rows_per_item, min((item + 1) * rows_per_item, n_out)):
            i = t % oH
            for j in range(oW):
                scaled[t * oW + j] = grad_out[t * oW + j] / divisor[i * oW + j]
    n_rows = P * H
    for item in prange((n_rows + rows_per_item - 1) // rows_per_item):
        t = item * rows_per_item
        t_end = min(t + rows_per_item, n_rows)
        _avg_backward_rows(scaled, grad_x, shape, window, cols, col_taps, covering, t, t_end)


@kernel
def _global_avg_kernel(x, out, plane_len, divisor, planes_per_item):
    """Global average pooling: ``out[p]`` is the sum of plane ``p`` (one contiguous run) over ``divisor``."""
    P = out.shape[0]
    for item in prange((P + planes_per_item - 1) // planes_per_item):
        for p in range(item * planes_per_item, min((item + 1) * planes_per_item, P)):
            at = _U(p * plane_len)
            total = x.dtype.type(0)
            for k in range(_U(plane_len)):
                total += x[at + k]
            out[p] = total / divisor


@kernel
def _global_avg_backward_kernel(grad_out, grad_x, plane_len, divisor, planes_per_item):
    """Global average pooling's input gradient: every element of plane ``p`` gets ``grad_out[p] / divisor``."""
    P = grad_out.shape[0]
    for item in prange((P + planes_per_item - 1) // planes_per_item):
        for p in range(item * planes_per_item, min((item + 1) * planes_per_item, P)):
            value = grad_out[p] / divisor
            at = _U(p * plane_len)
            for k in range(_U(plane_len)):
                grad_x[at + k] = value


def _is_global(geom) -> bool:
    """One window over each whole plane (no padding): global pooling."""
    return (tuple(geom.out_size) == (1, 1) and tuple(geom.kernel) == tuple(geom.in_size)
            and not any(geom.padding))


# --------------------------------------------------------------------------- 3D max pooling: the depth step


class DepthTaps(NamedTuple):
    """Per depth tap ``a`` (in window order): output planes ``[first, last)`` read input plane ``d0 + (o - first)*stride``."""

    first: np.ndarray
    last: np.ndarray
    d0: np.ndarray


class Volume(NamedTuple):
    """``planes`` (``N*C``) volumes: ``depth`` input planes pooled (2D) to ``plane_out`` values each, ``out_depth``
    output planes, ``plane_in`` elements per input plane (for the indices), depth stride ``stride``."""

    planes: int
    depth: int
    out_depth: int
    plane_out: int
    plane_in: int
    stride: int


@kernel
def _depth_max_kernel(p_out, p_idx, out, indices, volume, taps):
    """The depth step of 3D max pooling over the 2D-pooled planes ``p_out`` (and their indices ``p_idx``).

    Each output plane starts from its first in-volume depth tap, then a later tap's value replaces
    it if greater or NaN (PyTorch's rule): ties keep the first (d, h, w) and a NaN window its last
    NaN, as a scan of the whole window would. Indices become flat ``(d*H + h)*W + w``.
    """
    P, D, oD = volume.planes, volume.depth, volume.out_depth
    n, plane_in, sD = volume.plane_out, volume.plane_in, volume.stride
    for item in prange(P * oD):
        p = item // oD
        od = item - p * oD
        dst = _U(item * n)
        started = False
        for a in range(taps.first.shape[0]):
            if od < taps.first[a] or od >= taps.last[a]:
                continue
            d = taps.d0[a] + (od - taps.first[a]) * sD
            src = _U((p * D + d) * n)
            shift = d * plane_in
            if not started:
                for k in range(_U(n)):
                    out[dst + k] = p_out[src + k]
                if indices is not None:
                    for k in range(_U(n)):
                        indices[dst + k] = p_idx[src + k] + shift
                started = True
            elif indices is None:
                for k in range(_U(n)):
                    v = p_out[src + k]
                    best = out[dst + k]
                    out[dst + k] = v if (v > best) | (v != v) else best
            else:
                for k in range(_U(n)):
                    v = p_out[src + k]
                    best = out[dst + k]
                    wins = (v > best) | (v != v)
                    out[dst + k] = v if wins else best
                    held = indices[dst + k]
                    indices[dst + k] = p_idx[src + k] + shift if wins else held


def depth_max(p_out, p_idx, geom, taps, out, indices):
    """The depth step of :func:`._depth.max_pool` (see :func:`_depth_max_kernel`); ``p_idx`` and ``indices`` may be None.

    ``p_out`` is ``(N, C*D, oH, oW)``, ``taps`` ``(a, first, last, d0)`` per in-volume depth tap.
    """
    N, C = geom.batch, geom.channels
    D, H, W = geom.in_size
    oD, oH, oW = geom.out_size
    volume = Volume(planes=int(N * C), depth=int(D), out_depth=int(oD), plane_out=int(oH * oW),
                    plane_in=int(H * W), stride=int(geom.stride[0]))
    table = DepthTaps(*(np.array([t[i] for t in taps], dtype=np.int64) for i in (1, 2, 3)))
    with _jit.launch():
        _depth_max_kernel(p_out.reshape(-1), None if p_idx is None else p_idx.reshape(-1), out.reshape(-1),
                          None if indices is None else indices.reshape(-1), volume, table)


# --------------------------------------------------------------------------- strategy functions


def _window(geom):
    """The :class:`Window` of ``geom``, in plain ints."""
    (kH, kW), (sH, sW), (dH, dW), (pH, pW) = geom.kernel, geom.stride, geom.dilation, geom.padding
    return Window(kernel_h=int(kH), kernel_w=int(kW), stride_h=int(sH), stride_w=int(sW),
                  dilation_h=int(dH), dilation_w=int(dW), padding_h=int(pH), padding_w=int(pW))


def _shape(planes, in_size, out_size):
    """The :class:`PlaneShape` of ``planes`` planes of ``in_size`` pooled to ``out_size``, in plain ints."""
    return PlaneShape(planes=int(planes), height=int(in_size[0]), width=int(in_size[1]),
                      out_height=int(out_size[0]), out_width=int(out_size[1]))


def _check_fixed_windows():
    """Fail loudly if ``_fixed_ranges`` admits other (kW, sW) pairs than :data:`FIXED_WIDTH_STRIDES`.

    Runs the rule itself (its Python function) over small unpadded windows. (The kernels get the
    pair itself as literals: :func:`_fixed_pair`.)
    """
    fixed_ranges = getattr(_fixed_ranges, "py_func", _fixed_ranges)

    def tap_spans(out_len, in_len, size, stride, dilation, padding):  # _tap_spans in Python (no compile at import)
        spans = [geometry.output_span(in_len, b * dilation - padding, stride, out_len) for b in range(size)]
        return np.array([f for f, _ in spans]), np.array([e for _, e in spans])
    size = 16
    admitted = set()
    for kW in range(1, 6):
        for sW in range(1, 5):
            for dW in (1, 2):
                for kH in (1, kW, kW + 1):
                    window = Window(kernel_h=kH, kernel_w=kW, stride_h=1, stride_w=sW,
                                    dilation_h=1, dilation_w=dW, padding_h=0, padding_w=0)
                    oH, oW = size - (kH - 1), (size - dW * (kW - 1) - 1) // sW + 1
                    shape = PlaneShape(planes=1, height=size, width=size, out_height=oH, out_width=oW)
                    area = FixedArea(*fixed_ranges(window, shape, TapSpans(*tap_spans(oH, size, kH, 1, 1, 0)),
                                                   TapSpans(*tap_spans(oW, size, kW, sW, dW, 0))))
                    if area.row_begin < area.row_end:
                        if dW != 1 or kH not in (1, kW):
                            raise AssertionError(f"_fixed_ranges admits {window}: the fixed-window helpers "
                                                 "unroll only square or one-row windows with column dilation 1")
                        admitted.add((kW, sW))
    if admitted != set(FIXED_WIDTH_STRIDES):
        raise AssertionError(f"_fixed_ranges admits (kW, sW) in {sorted(admitted)}, but the fixed-window "
                             f"helpers are unrolled for FIXED_WIDTH_STRIDES = {FIXED_WIDTH_STRIDES}")


_check_fixed_windows()


def _rows_per_item(planes, rows, width):
    """Rows per ``prange`` item: about :data:`_OUTPUTS_PER_ITEM` values, at least :data:`_MIN_ITEMS` items."""
    per_item = -(-_OUTPUTS_PER_ITEM // max(width, 1))
    return max(1, min(per_item, -(-(planes * rows) // _MIN_ITEMS)))


@functools.lru_cache(maxsize=256)
def _launch(geom):
    """``(PlaneShape, Window, rows per item, backward rows per item)`` for ``geom``, once per problem."""
    planes = geom.batch * geom.channels
    (H, W), (oH, oW) = geom.in_size, geom.out_size
    return (_shape(planes, (H, W), (oH, oW)), _window(geom), _rows_per_item(planes, oH, oW),
            _rows_per_item(planes, H, W))


@functools.lru_cache(maxsize=256)
def _fixed_pair(geom):
    """The forward kernels' ``(width_marker, stride_marker)``: tuples of lengths (kW, sW) for a pair of
    :data:`FIXED_WIDTH_STRIDES`, else of (2, 2) (no row takes the fixed path then: any pair serves,
    and (2, 2) is the one most problems compile anyway).

    A tuple's length is a literal to Numba: each pair is its own specialisation of the kernel,
    compiled (or loaded from the cache) the first time a problem needs it, so a first 2x2 pooling
    compiles one fixed-window path, not all of them.
    """
    pair = (geom.kernel[-1], geom.stride[-1])
    kw, sw = pair if pair in FIXED_WIDTH_STRIDES else (2, 2)
    return (0,) * kw, (0,) * sw


def _work(geom):
    """Window elements a forward pass reads: what :func:`fastconv._jit.pick` weighs."""
    return math.prod(geom.output_shape) * math.prod(geom.kernel)


@functools.lru_cache(maxsize=256)
def _forward_plan(kernel, geom, dtype, with_indices):
    """``(callable, the launch's fixed arguments)`` of a forward kernel on ``geom``: the serial twin
    for small problems (its argument types fixed by ``dtype`` and ``with_indices``)."""
    shape, window, rows, _ = _launch(geom)
    return _jit.pick(kernel, _work(geom)), (shape, window, rows, *_fixed_pair(geom))


def max_pool2d(x, geom, out, indices):
    """Max pooling with PyTorch's rules (NaN wins, padding never does); ``indices`` may be None."""
    run, fixed = _forward_plan(_max_pool_kernel, geom, x.dtype.char, indices is not None)
    run(x.reshape(-1), out.reshape(-1), None if indices is None else indices.reshape(-1), *fixed)


def bind_max_pool2d(geom, dtype):
    """:func:`max_pool2d` on ``geom`` as a function of C-contiguous ``(x, out, indices)`` of any shape
    (``Strategy.bind``): the launch plans looked up once."""
    (plain, fixed), (indexed, _) = (_forward_plan(_max_pool_kernel, geom, dtype.char, False),
                                    _forward_plan(_max_pool_kernel, geom, dtype.char, True))

    def run(x, out, indices):
        if indices is None:
            plain(x.reshape(-1), out.reshape(-1), None, *fixed)
        else:
            indexed(x.reshape(-1), out.reshape(-1), indices.reshape(-1), *fixed)
    return run


def bind_avg_pool2d(geom, dtype):
    """:func:`avg_pool2d` on ``geom`` as a function of C-contiguous ``(x, out)`` (``Strategy.bind``);
    None for global pooling (its own kernel)."""
    if _is_global(geom):
        return None
    kernel, (shape, window, rows, *pair) = _forward_plan(_avg_pool_kernel, geom, dtype.char, False)
    divisors = _divisors(geom, dtype)
    return lambda x, out: kernel(x.reshape(-1), out.reshape(-1), shape, window, divisors, rows, *pair)


@functools.lru_cache(maxsize=256)
def _divisors(geom, dtype):
    """:func:`~fastconv.geometry.avg_pool_divisors` flat, in ``dtype``, once per problem (read, never written)."""
    return avg_pool_divisors(geom).astype(dtype).reshape(-1)


def avg_pool2d(x, geom, out):
    """Average pooling with PyTorch's divisor (:func:`~fastconv.geometry.avg_pool_divisors`)."""
    if _is_global(geom):  # one reduction per plane, without the window tables
        shape = _launch(geom)[0]
        plane_len = shape.height * shape.width
        with _jit.launch():
            _global_avg_kernel(x.reshape(-1), out.reshape(-1), plane_len, _divisors(geom, x.dtype)[0],
                               max(1, -(-_OUTPUTS_PER_ITEM * 8 // plane_len)))
        return
    run, (shape, window, rows, *pair) = _forward_plan(_avg_pool_kernel, geom, x.dtype.char, False)
    run(x.reshape(-1), out.reshape(-1), shape, window, _divisors(geom, x.dtype), rows, *pair)


def max_pool2d_backward(grad_out, indices, geom, grad_x):
    """Scatter-add ``grad_out`` into a zeroed ``grad_x`` at ``indices``, plane by plane."""
    N, C, H, W = grad_x.shape
    oH, oW = grad_out.shape[2:]
    with _jit.launch():
        _max_pool_backward_kernel(grad_out.reshape(-1), indices.reshape(-1), grad_x.reshape(-1),
                                  _shape(N * C, (H, W), (oH, oW)))


def avg_pool2d_backward(grad_out, geom, grad_x):
    """Each output's ``grad / divisor`` added to its window's in-image elements (gathered per input row)."""
    shape, window, _, rows = _launch(geom)
    if _is_global(geom):  # a fill, plane by plane: the gather's per-row work is all overhead here
        plane_len = shape.height * shape.width
        with _jit.launch():
            _global_avg_backward_kernel(grad_out.reshape(-1), grad_x.reshape(-1), plane_len,
                                        _divisors(geom, grad_out.dtype)[0],
                                        max(1, -(-_OUTPUTS_PER_ITEM * 8 // plane_len)))
        return
    with _jit.launch():
        _avg_pool_backward_kernel(grad_out.reshape(-1), grad_x.reshape(-1), shape, window,
                                  _divisors(geom, grad_out.dtype), rows)
