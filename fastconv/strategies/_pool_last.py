"""Numba kernels for 2D max and average pooling over channels-last memory (the ``direct`` strategy's).

The arrays are ``(N, C, H, W)`` whose memory is ``N, H, W, C`` (PyTorch's ``channels_last``,
what ``x_nhwc.transpose(0, 3, 1, 2)`` gives); the kernels take flat views of that memory, where
element ``(n, c, h, w)`` lies at ``((n*H + h)*W + w)*C + c``. The semantics are those of
:mod:`._pool_kernels` (PyTorch's), and so are the results, bit for bit where the order of
operations is the same:

* max: the best starts at the window's first in-image element, ``v > best or isnan(v)``
  replaces it (ties keep the first, NaN wins with its last index), the index is the flat
  position ``h*W + w`` in the input plane, per channel;
* average: the window's in-image taps summed from zero in row-major order, divided by PyTorch's
  divisor (:func:`fastconv.geometry.avg_pool_divisors`, flat ``(oH, oW)`` in the data's dtype);
* max backward: each channel's gradients added at its indices in output row-major order;
* average backward: each input element sums ``grad / divisor`` of the windows holding it, in
  output row-major order (the NCHW kernel's and PyTorch's order of additions).

Work. Channels are the contiguous axis, so every step of every kernel is a pass over the ``C``
channels of one position: the inner loop runs over ``c`` with unit stride in every array it
touches (no gathers), and LLVM vectorises it. The forward kernels run one ``prange`` over runs of
(image, output row) pairs; for each output column they visit the window's in-image taps in
row-major order, updating the output's vector of ``C`` channels in place (compare-select, or
add), then divide (average). The backward passes: max zeroes ``grad_x`` in parallel chunks, then
scatters in parallel over (image, block of channels) (a block's elements never meet another
block's, and within one the outputs are visited in order); average computes ``grad / divisor``
once per output, then gathers, parallel over runs of (image, input row) pairs.

As in :mod:`._pool_kernels`, inner loops index with unsigned offsets (:data:`_U`), and the
``prange`` bodies make no array views and call nothing (reference counts on shared arrays).
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
from ._pool_kernels import _MIN_ITEMS, _ZERO_CHUNK, _axis_tables, _covering_rows, _divisors, _rows_per_item, _window

__all__ = ["avg_pool2d", "avg_pool2d_backward", "max_pool2d", "max_pool2d_backward"]

#: Offsets in inner loops are unsigned (see :mod:`._pool_kernels`).
_U = np.uint64

#: Channels per ``prange`` item of the max-pooling scatter, at least (more if that still gives
#: ``_pool_kernels._MIN_ITEMS`` items): 16 float32 gradients are one cache line, which a smaller
#: block would share with another thread's. (Not measured: a choice by that reasoning.)
_SCATTER_MIN_CHANNELS = 16


class ImageShape(NamedTuple):
    """``images`` images of ``channels`` channels, ``height x width``, pooled to ``out_height x out_width``."""

    images: int
    channels: int
    height: int
    width: int
    out_height: int
    out_width: int


# --------------------------------------------------------------------------- forward


@kernel
def _max_pool_kernel(x, out, indices, shape, window, rows_per_item):
    """Max pooling of flat ``N, H, W, C`` memory into flat ``N, oH, oW, C`` (and indices, unless None)."""
    N, C = shape.images, shape.channels
    H, W = shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    dH, dW = window.dilation_h, window.dilation_w
    row_start, row_lo, row_hi = _axis_tables(oH, H, window.kernel_h, window.stride_h, dH, window.padding_h)
    col_start, col_lo, col_hi = _axis_tables(oW, W, window.kernel_w, window.stride_w, dW, window.padding_w)
    lanes = _U(C)
    n_rows = N * oH
    for item in prange((n_rows + rows_per_item - 1) // rows_per_item):
        for t in range(item * rows_per_item, min((item + 1) * rows_per_item, n_rows)):
            n = t // oH
            i = t - n * oH
            image = n * H * W
            a_first, a_end, r0 = row_lo[i], row_hi[i], row_start[i]
            for j in range(oW):
                b_first, b_end, c0 = col_lo[j], col_hi[j], col_start[j]
                dst = _U((t * oW + j) * C)
                # Start from the window's first in-image element (what -inf would give, up to NaN and index).
                first = (r0 + a_first * dH) * W + c0 + b_first * dW
                src = _U((image + first) * C)
                for k in range(lanes):
                    out[dst + k] = x[src + k]
                if indices is not None:
                    for k in range(lanes):
                        indices[dst + k] = first
                for a in range(a_first, a_end):
                    r = r0 + a * dH
                    for b in range(b_first, b_end):
                        if a == a_first and b == b_first:
                            continue  # the start
                        pos = r * W + c0 + b * dW
                        src = _U((image + pos) * C)
                        if indices is None:
                            for k in range(lanes):
                                v = x[src + k]
                                best = out[dst + k]
                                out[dst + k] = v if (v > best) | (v != v) else best
                        else:
                            for k in range(lanes):
                                v = x[src + k]
                                best = out[dst + k]
                                wins = (v > best) | (v != v)
                                out[dst + k] = v if wins else best
                                held = indices[dst + k]
                                indices[dst + k] = pos if wins else held


@kernel
def _avg_pool_kernel(x, out, shape, window, divisor, rows_per_item):
    """Average pooling of flat ``N, H, W, C`` memory into flat ``N, oH, oW, C``; ``divisor`` is flat ``(oH, oW)``."""
    N, C = shape.images, shape.channels
    H, W = shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    row_start, row_lo, row_hi = _axis_tables(oH, H, window.kernel_h, window.stride_h, 1, window.padding_h)
    col_start, col_lo, col_hi = _axis_tables(oW, W, window.kernel_w, window.stride_w, 1, window.padding_w)
    lanes = _U(C)
    n_rows = N * oH
    for item in prange((n_rows + rows_per_item - 1) // rows_per_item):
        for t in range(item * rows_per_item, min((item + 1) * rows_per_item, n_rows)):
            n = t // oH
            i = t - n * oH
            r_first, r_end = row_start[i] + row_lo[i], row_start[i] + row_hi[i]
            for j in range(oW):
                dst = _U((t * oW + j) * C)
                for k in range(lanes):
                    out[dst + k] = 0
                c_first, c_end = col_start[j] + col_lo[j], col_start[j] + col_hi[j]
                for r in range(r_first, r_end):
                    for c in range(c_first, c_end):
                        src = _U(((n * H + r) * W + c) * C)
                        for k in range(lanes):
                            out[dst + k] += x[src + k]
                d = divisor[i * oW + j]
                for k in range(lanes):
                    out[dst + k] = out[dst + k] / d


# --------------------------------------------------------------------------- backward


@kernel
def _max_pool_backward_kernel(grad_out, indices, grad_x, shape, channels_per_item):
    """Zero ``grad_x`` (in parallel chunks), then scatter-add the gradients at their indices.

    Parallel over (image, block of ``channels_per_item`` channels): windows may overlap, so two
    outputs of one channel may add to one element; a block keeps its channels' additions in one
    thread, in output order (PyTorch's).
    """
    N, C = shape.images, shape.channels
    plane, n_out = shape.height * shape.width, shape.out_height * shape.out_width
    size = N * plane * C
    for chunk in prange((size + _ZERO_CHUNK - 1) // _ZERO_CHUNK):
        first = _U(chunk * _ZERO_CHUNK)
        for k in range(_U(min(_ZERO_CHUNK, size - chunk * _ZERO_CHUNK))):
            grad_x[first + k] = 0
    blocks = (C + channels_per_item - 1) // channels_per_item
    for item in prange(N * blocks):
        n = item // blocks
        c_begin = (item - n * blocks) * channels_per_item
        c_end = min(c_begin + channels_per_item, C)
        for p in range(n_out):
            o = _U((n * n_out + p) * C)
            for c in range(_U(c_begin), _U(c_end)):
                grad_x[_U((n * plane + indices[o + c]) * C) + c] += grad_out[o + c]


@kernel
def _avg_pool_backward_kernel(grad_out, grad_x, shape, window, divisor, out_rows_per_item, rows_per_item):
    """Average pooling's input gradient: a gather, parallel over runs of (image, input row) pairs (race-free).

    ``divisor`` is flat ``(oH, oW)``, in ``grad_out``'s dtype.
    """
    N, C = shape.images, shape.channels
    H, W = shape.height, shape.width
    oH, oW = shape.out_height, shape.out_width
    row_begin, row_end = _covering_rows(H, oH, window.kernel_h, window.stride_h, window.padding_h)
    col_begin, col_end = _covering_rows(W, oW, window.kernel_w, window.stride_w, window.padding_w)
    lanes = _U(C)
    # grad / divisor, once per output (PyTorch divides each contribution the same way).
    scaled = np.empty(N * oH * oW * C, grad_out.dtype)
    n_out_rows = N * oH
    for item in prange((n_out_rows + out_rows_per_item - 1) // out_rows_per_item):
        for t in range(item * out_rows_per_item, min((item + 1) * out_rows_per_item, n_out_rows)):
            i = t % oH
            for j in range(oW):
                d = divisor[i * oW + j]
                at = _U((t * oW + j) * C)
                for k in range(lanes):
                    scaled[at + k] = grad_out[at + k] / d
    n_rows = N * H
    for item in prange((n_rows + rows_per_item - 1) // rows_per_item):
        for t in range(item * rows_per_item, min((item + 1) * rows_per_item, n_rows)):
            n = t // H
            r = t - n * H
            for w in range(W):
                dst = _U((t * W + w) * C)
                for k in range(lanes):
                    grad_x[dst + k] = 0
                for i in range(row_begin[r], row_end[r]):
                    for j in range(col_begin[w], col_end[w]):
                        src = _U(((n * oH + i) * oW + j) * C)
                        for k in range(lanes):
                            grad_x[dst + k] += scaled[src + k]


# --------------------------------------------------------------------------- strategy functions


def _flat(a):
    """The channels-last memory of ``a`` (``(N, C, H, W)`` over ``N, H, W, C``) as a flat view, never a copy."""
    nhwc = a.transpose(0, 2, 3, 1)
    if not nhwc.flags.c_contiguous:
        raise ValueError(f"channels-last pooling kernels: an array of shape {a.shape} and strides {a.strides} "
                         "is not in channels-last memory")
    return nhwc.reshape(-1)


def _image_shape(geom):
    """The :class:`ImageShape` of ``geom``, in plain ints."""
    (H, W), (oH, oW) = geom.in_size, geom.out_size
    return ImageShape(images=int(geom.batch), channels=int(geom.channels), height=int(H), width=int(W),
                      out_height=int(oH), out_width=int(oW))


@functools.lru_cache(maxsize=256)
def _launch(geom):
    """``(ImageShape, Window, output rows per item, input rows per item)`` for ``geom``, once per problem."""
    shape = _image_shape(geom)
    N, C = shape.images, shape.channels
    return (shape, _window(geom), _rows_per_item(N, shape.out_height, shape.out_width * C),
            _rows_per_item(N, shape.height, shape.width * C))


def max_pool2d(x, geom, out, indices):
    """Max pooling of a channels-last ``x`` into channels-last ``out`` (and ``indices``, unless None)."""
    shape, window, rows, _ = _launch(geom)
    flat_indices = None if indices is None else _flat(indices)
    with _jit.launch():
        _max_pool_kernel(_flat(x), _flat(out), flat_indices, shape, window, rows)


def avg_pool2d(x, geom, out):
    """Average pooling of a channels-last ``x`` into channels-last ``out``, PyTorch's divisor."""
    shape, window, rows, _ = _launch(geom)
    with _jit.launch():
        _avg_pool_kernel(_flat(x), _flat(out), shape, window, _divisors(geom, x.dtype), rows)


def max_pool2d_backward(grad_out, indices, geom, grad_x):
    """Scatter-add a channels-last ``grad_out`` at ``indices`` into a (zeroed here) channels-last ``grad_x``."""
    N, C, H, W = grad_x.shape
    oH, oW = grad_out.shape[2:]
    shape = ImageShape(images=int(N), channels=int(C), height=int(H), width=int(W), out_height=int(oH),
                       out_width=int(oW))
    per_item = int(min(C, max(_SCATTER_MIN_CHANNELS, -(-N * C // _MIN_ITEMS))))
    with _jit.launch():
        _max_pool_backward_kernel(_flat(grad_out), _flat(indices), _flat(grad_x), shape, per_item)


def avg_pool2d_backward(grad_out, geom, grad_x):
    """Each output's ``grad / divisor`` added to its window's in-image elements, channels-last in and out."""
    shape, window, out_rows, rows = _launch(geom)
    with _jit.launch():
        _avg_pool_backward_kernel(_flat(grad_out), _flat(grad_x), shape, window, _divisors(geom, grad_out.dtype),
                                  out_rows, rows)
