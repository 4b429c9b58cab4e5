"""The img2col strategy: Numba im2col / col2im kernels around a BLAS matrix product.

Convolution is the lecture's img2col. For one image the receptive fields
become the columns of a matrix ``X̂`` with ``C_in*kH*kW`` rows (ordered input
channel, kernel row, kernel column) and ``oH*oW`` columns (output positions,
row-major), so that each group's output is one GEMM, ``Y_g = W_g · X̂_g``,
computed by NumPy's ``matmul`` (BLAS). The backward pass is the lecture's too:
``dW_g = Σ_n dY_g · X̂_gᵀ``, ``dX̂_g = W_gᵀ · dY_g`` followed by col2im (the
adjoint of im2col, which adds every column back into the image), and ``db``
the sum of ``dY``.

Pooling uses the same columns: each window is a column, and a Numba kernel
reduces along the ``kH*kW`` taps (max with PyTorch's NaN and index rules, or a
sum with PyTorch's divisor). The avg-pool gradient is spread into columns and
added back with col2im; the max-pool gradient is scattered to its indices.

Design, measured on the 2-core machine this was tuned on (Xeon, AVX-512,
NumPy's OpenBLAS 0.3.31, 2 threads; see the notes at each constant):

* The column buffer is capped at :data:`WORKSPACE_LIMIT_BYTES` and reused
  across a loop over chunks of images (and, when one image's columns alone
  exceed the cap, over bands of output rows). Chunks aim at
  :data:`_CHUNK_TARGET_BYTES`, which keeps the columns warm in cache between
  im2col and the GEMM that reads them.
* A 1x1 convolution with stride 1 and no padding needs no im2col: the input,
  reshaped, is the matrix. With stride > 1 im2col (``kH = kW = 1``) is just the
  strided gather.
* Each chunk's GEMM is one batched ``np.matmul`` call per group writing
  straight into ``out`` (NumPy loops over the images in C and calls BLAS
  for each).
* im2col is parallel over the rows of ``X̂`` and copies contiguous runs along
  the output columns (a slice copy when the stride is 1). col2im is parallel
  over input rows: each input row is owned by one thread, which adds its
  contributions in a fixed order, so the result is race-free and the same for
  every thread count.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .. import _jit
from .._jit import kernel

__all__ = [
    "WORKSPACE_LIMIT_BYTES",
    "avg_pool2d",
    "avg_pool2d_backward",
    "col2im_into",
    "conv2d",
    "conv2d_backward",
    "im2col_into",
    "max_pool2d",
    "max_pool2d_backward",
]

#: Hard cap on the column buffer one call allocates. A chunk is never larger,
#: except when a single output row of a single image is (then that row is the chunk).
WORKSPACE_LIMIT_BYTES = 1 << 30

#: Size a chunk of columns aims at (images are batched until the next image
#: would pass it). Measured: batching lenet-sized images matters (Python and
#: launch overhead per GEMM), while for 56x56x64 images one image at a time
#: (7 MB of columns) is as fast as eight at once, so a few MB is enough.
_CHUNK_TARGET_BYTES = 8 << 20


# --------------------------------------------------------------------------- kernels
#
# ``layout`` is the tuple (kH, kW, sH, sW, dH, dW, top, left, oW): the geometry a
# kernel needs to map a column entry (channel, kernel row a, kernel column b,
# output row i, output column j) to the input element
# (channel, i*sH + a*dH - top, j*sW + b*dW - left).


@kernel
def _im2col(x, first_image, row_start, fill, layout, cols):
    """Fill ``cols`` (B, C*kH*kW, rows*oW) with images ``first_image..`` and output rows ``row_start..``; ``fill`` outside."""
    kernel_h, kernel_w, stride_h, stride_w, dil_h, dil_w, top, left, out_w = layout
    images, n_rows, width = cols.shape
    height, in_w = x.shape[2], x.shape[3]
    taps = kernel_h * kernel_w
    out_rows = width // out_w
    for item in prange(images * n_rows):
        b = item // n_rows
        row = item - b * n_rows
        channel = row // taps
        tap = row - channel * taps
        a = tap // kernel_w
        col_offset = (tap - a * kernel_w) * dil_w - left
        n = first_image + b
        # output columns j whose input column j*sW + col_offset lies in [0, in_w)
        j_lo = min(out_w, max(0, (stride_w - 1 - col_offset) // stride_w))
        j_hi = max(j_lo, min(out_w, (in_w - 1 - col_offset) // stride_w + 1))
        for i in range(out_rows):
            base = i * out_w
            r = (row_start + i) * stride_h + a * dil_h - top
            if r < 0 or r >= height:
                for j in range(out_w):
                    cols[b, row, base + j] = fill
                continue
            for j in range(j_lo):
                cols[b, row, base + j] = fill
            if stride_w == 1:
                for j in range(j_lo, j_hi):
                    cols[b, row, base + j] = x[n, channel, r, j + col_offset]
            else:
                for j in range(j_lo, j_hi):
                    cols[b, row, base + j] = x[n, channel, r, j * stride_w + col_offset]
            for j in range(j_hi, out_w):
                cols[b, row, base + j] = fill


@kernel
def _col2im(cols, first_image, row_start, accumulate, layout, x):
    """Add ``cols`` (B, C*kH*kW, rows*oW) back into ``x``'s images ``first_image..`` (zeroed first unless ``accumulate``)."""
    kernel_h, kernel_w, stride_h, stride_w, dil_h, dil_w, top, left, out_w = layout
    images, n_rows, width = cols.shape
    channels, height, in_w = x.shape[1], x.shape[2], x.shape[3]
    row_stop = row_start + width // out_w
    for item in prange(images * channels * height):
        b = item // (channels * height)
        rest = item - b * (channels * height)
        channel = rest // height
        r = rest - channel * height
        n = first_image + b
        if not accumulate:
            for q in range(in_w):
                x[n, channel, r, q] = 0.0
        for a in range(kernel_h):
            # the one output row i that reads input row r through kernel row a, if any
            reach = r + top - a * dil_h
            if reach < 0 or reach % stride_h != 0:
                continue
            i = reach // stride_h
            if i < row_start or i >= row_stop:
                continue
            base = (i - row_start) * out_w
            for tap_w in range(kernel_w):
                row = (channel * kernel_h + a) * kernel_w + tap_w
                col_offset = tap_w * dil_w - left
                j_lo = min(out_w, max(0, (stride_w - 1 - col_offset) // stride_w))
                j_hi = max(j_lo, min(out_w, (in_w - 1 - col_offset) // stride_w + 1))
                if stride_w == 1:
                    for j in range(j_lo, j_hi):
                        x[n, channel, r, j + col_offset] += cols[b, row, base + j]
                else:
                    for j in range(j_lo, j_hi):
                        x[n, channel, r, j * stride_w + col_offset] += cols[b, row, base + j]


@kernel
def _max_pool_columns(cols, first_image, row_start, layout, in_w, with_indices, out, indices):
    """Max over each window's column (PyTorch's rule: ``v > best or isnan(v)``), with flat indices ``row*W + col``."""
    kernel_h, kernel_w, stride_h, stride_w, dil_h, dil_w, top, left, out_w = layout
    images, n_rows, width = cols.shape
    channels = out.shape[1]
    out_rows = width // out_w
    for item in prange(images * channels * out_rows):
        b = item // (channels * out_rows)
        rest = item - b * (channels * out_rows)
        channel = rest // out_rows
        i = rest - channel * out_rows
        n = first_image + b
        oi = row_start + i
        r0 = oi * stride_h - top
        r_first = r0 if r0 >= 0 else r0 + ((-r0 + dil_h - 1) // dil_h) * dil_h
        base = i * out_w
        for j in range(out_w):
            q0 = j * stride_w - left
            q_first = q0 if q0 >= 0 else q0 + ((-q0 + dil_w - 1) // dil_w) * dil_w
            out[n, channel, oi, j] = -np.inf
            if with_indices:
                indices[n, channel, oi, j] = r_first * in_w + q_first
        for a in range(kernel_h):
            r = r0 + a * dil_h
            for tap_w in range(kernel_w):
                row = (channel * kernel_h + a) * kernel_w + tap_w
                for j in range(out_w):
                    v = cols[b, row, base + j]
                    if v > out[n, channel, oi, j] or np.isnan(v):
                        out[n, channel, oi, j] = v
                        if with_indices:
                            indices[n, channel, oi, j] = r * in_w + j * stride_w - left + tap_w * dil_w


@kernel
def _avg_pool_columns(cols, first_image, row_start, taps, divisor, out):
    """Sum over each window's column (zeros outside the image), divided by ``divisor`` (oH, oW); 0 where it is 0."""
    images, n_rows, width = cols.shape
    channels, out_w = out.shape[1], out.shape[3]
    out_rows = width // out_w
    for item in prange(images * channels * out_rows):
        b = item // (channels * out_rows)
        rest = item - b * (channels * out_rows)
        channel = rest // out_rows
        i = rest - channel * out_rows
        n = first_image + b
        oi = row_start + i
        base = i * out_w
        for j in range(out_w):
            out[n, channel, oi, j] = 0.0
        for t in range(taps):
            row = channel * taps + t
            for j in range(out_w):
                out[n, channel, oi, j] += cols[b, row, base + j]
        for j in range(out_w):
            d = divisor[oi, j]
            out[n, channel, oi, j] = out[n, channel, oi, j] / d if d != 0.0 else 0.0


@kernel
def _max_pool_scatter(grad_out, indices, grad_x):
    """``grad_x`` = 0, then each plane's ``grad_out`` added at its flat ``indices`` (one thread per plane)."""
    batch, channels, out_h, out_w = grad_out.shape
    height, in_w = grad_x.shape[2], grad_x.shape[3]
    for plane in prange(batch * channels):
        n = plane // channels
        channel = plane - n * channels
        for r in range(height):
            for q in range(in_w):
                grad_x[n, channel, r, q] = 0.0
        for i in range(out_h):
            for j in range(out_w):
                k = indices[n, channel, i, j]
                r = k // in_w
                grad_x[n, channel, r, k - r * in_w] += grad_out[n, channel, i, j]


# --------------------------------------------------------------------------- planning


def _layout(kernel, stride, dilation, top, left, out_w):
    kH, kW = kernel
    sH, sW = stride
    dH, dW = dilation
    return (int(kH), int(kW), int(sH), int(sW), int(dH), int(dW), int(top), int(left), int(out_w))


def _chunks(batch, out_h, out_w, rows_of_columns, itemsize):
    """Chunks ``(first_image, n_images, row_start, row_stop)`` covering every image and output row, and the buffer size.

    A chunk batches whole images up to :data:`_CHUNK_TARGET_BYTES` (at least
    one); an image whose columns exceed :data:`WORKSPACE_LIMIT_BYTES` is split
    into bands of output rows (at least one row each).
    """
    row_bytes = rows_of_columns * out_w * itemsize
    image_bytes = row_bytes * out_h
    if image_bytes <= WORKSPACE_LIMIT_BYTES:
        per_chunk = max(1, min(batch, _CHUNK_TARGET_BYTES // max(image_bytes, 1)))
        chunks = [(n, min(per_chunk, batch - n), 0, out_h) for n in range(0, batch, per_chunk)]
        return chunks, per_chunk * rows_of_columns * out_h * out_w
    band = max(1, WORKSPACE_LIMIT_BYTES // row_bytes)
    chunks = [(n, 1, r, min(r + band, out_h)) for n in range(batch) for r in range(0, out_h, band)]
    return chunks, rows_of_columns * band * out_w


def _columns(buffer, n_images, n_rows, width):
    """A ``(n_images, n_rows, width)`` C-contiguous view at the start of ``buffer``."""
    return buffer[: n_images * n_rows * width].reshape(n_images, n_rows, width)


def _is_pointwise(geom):
    """1x1 kernel, stride 1, no padding: the input reshaped is the column matrix."""
    return (
        tuple(geom.kernel) == (1, 1)
        and tuple(geom.stride) == (1, 1)
        and geom.padding == ((0, 0), (0, 0))
    )


# --------------------------------------------------------------------------- public building blocks


def im2col_into(x, geom_layout, cols, first_image=0, row_start=0, fill=0.0):
    """Run the im2col kernel: ``cols`` (B, C*kH*kW, rows*oW) from ``x`` (N, C, H, W).

    ``geom_layout`` is ``(kH, kW, sH, sW, dH, dW, top, left, oW)``. Inputs must be
    valid and C-contiguous (see :func:`fastconv.im2col` for the checked version).
    """
    with _jit.launch():
        _im2col(x, first_image, row_start, fill, geom_layout, cols)


def col2im_into(cols, geom_layout, x, first_image=0, row_start=0, accumulate=False):
    """Run the col2im kernel: add ``cols`` (B, C*kH*kW, rows*oW) into ``x`` (N, C, H, W), zeroing it first unless ``accumulate``."""
    with _jit.launch():
        _col2im(cols, first_image, row_start, accumulate, geom_layout, x)


# --------------------------------------------------------------------------- convolution


def conv2d(x, weight, bias, geom, out):
    """img2col + one batched ``np.matmul`` per group and chunk, written straight into ``out``."""
    N, C_in, H, W = x.shape
    C_out, C_per_group, kH, kW = weight.shape
    G = geom.groups
    out_per_group = C_out // G
    K = C_per_group * kH * kW
    oH, oW = geom.out_size
    P = oH * oW
    w = weight.reshape(G, out_per_group, K)
    y = out.reshape(N, G, out_per_group, P)
    if _is_pointwise(geom):
        xs = x.reshape(N, G, C_per_group, P)
        for g in range(G):
            np.matmul(w[g], xs[:, g], out=y[:, g])
        if bias is not None:
            out += bias.reshape(C_out, 1, 1)
        return
    (top, _), (left, _) = geom.padding
    layout = _layout(geom.kernel, geom.stride, geom.dilation, top, left, oW)
    chunks, size = _chunks(N, oH, oW, C_in * kH * kW, x.itemsize)
    buffer = np.empty(size, dtype=x.dtype)
    bias3 = None if bias is None else bias.reshape(G, out_per_group, 1)
    for n0, B, r0, r1 in chunks:
        cols = _columns(buffer, B, C_in * kH * kW, (r1 - r0) * oW)
        with _jit.launch():
            _im2col(x, n0, r0, 0.0, layout, cols)
        cols_g = cols.reshape(B, G, K, (r1 - r0) * oW)
        y_chunk = y[n0 : n0 + B, :, :, r0 * oW : r1 * oW]
        for g in range(G):
            np.matmul(w[g], cols_g[:, g], out=y_chunk[:, g])
        if bias3 is not None:
            y_chunk += bias3


def conv2d_backward(grad_out, x, weight, geom, grad_x, grad_w, grad_b):
    """The lecture's backward: ``dW = Σ dY·X̂ᵀ``, ``dX̂ = Wᵀ·dY`` then col2im, ``db = Σ dY``."""
    N, C_in, H, W = x.shape
    C_out, C_per_group, kH, kW = weight.shape
    G = geom.groups
    out_per_group = C_out // G
    K = C_per_group * kH * kW
    oH, oW = geom.out_size
    P = oH * oW
    if grad_b is not None:
        np.sum(grad_out, axis=(0, 2, 3), out=grad_b)
    if grad_x is None and grad_w is None:
        return
    dy = grad_out.reshape(N, G, out_per_group, P)
    w = weight.reshape(G, out_per_group, K)
    gw = None if grad_w is None else grad_w.reshape(G, out_per_group, K)
    if _is_pointwise(geom):
        xs = x.reshape(N, G, C_per_group, P)
        if gw is not None:
            partial = np.empty((N, out_per_group, K), dtype=x.dtype)
            for g in range(G):
                np.matmul(dy[:, g], xs[:, g].transpose(0, 2, 1), out=partial)
                np.sum(partial, axis=0, out=gw[g])
        if grad_x is not None:
            gx = grad_x.reshape(N, G, C_per_group, P)
            for g in range(G):
                np.matmul(w[g].T, dy[:, g], out=gx[:, g])
        return
    (top, _), (left, _) = geom.padding
    layout = _layout(geom.kernel, geom.stride, geom.dilation, top, left, oW)
    chunks, size = _chunks(N, oH, oW, C_in * kH * kW, x.itemsize)
    buffer = np.empty(size, dtype=x.dtype)
    partial = None
    if gw is not None:
        partial = np.empty((chunks[0][1], out_per_group, K), dtype=x.dtype)
        part_sum = np.empty((out_per_group, K), dtype=x.dtype)
    for index, (n0, B, r0, r1) in enumerate(chunks):
        width = (r1 - r0) * oW
        cols = _columns(buffer, B, C_in * kH * kW, width)
        cols_g = cols.reshape(B, G, K, width)
        dy_chunk = dy[n0 : n0 + B, :, :, r0 * oW : r1 * oW]
        if gw is not None:
            with _jit.launch():
                _im2col(x, n0, r0, 0.0, layout, cols)
            for g in range(G):
                np.matmul(dy_chunk[:, g], cols_g[:, g].transpose(0, 2, 1), out=partial[:B])
                if index == 0:
                    np.sum(partial[:B], axis=0, out=gw[g])
                else:
                    np.sum(partial[:B], axis=0, out=part_sum)
                    gw[g] += part_sum
        if grad_x is not None:
            for g in range(G):
                np.matmul(w[g].T, dy_chunk[:, g], out=cols_g[:, g])
            with _jit.launch():
                _col2im(cols, n0, r0, r0 > 0, layout, grad_x)


# --------------------------------------------------------------------------- pooling


def _pool_layout(geom):
    pH, pW = geom.padding
    return _layout(geom.kernel, geom.stride, geom.dilation, pH, pW, geom.out_size[1])


def _avg_divisor(geom, dtype):
    """PyTorch's avg-pool divisor for every output position, shape ``(oH, oW)``."""
    counts = []
    for n, k, s, p, o in zip(geom.in_size, geom.kernel, geom.stride, geom.padding, geom.out_size):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)
        if geom.count_include_pad:
            counts.append(end - start)
        else:
            counts.append(np.minimum(end, n) - np.maximum(start, 0))
    return (counts[0][:, None] * counts[1][None, :]).astype(dtype)


def _pool_chunks(geom, itemsize):
    kH, kW = geom.kernel
    oH, oW = geom.out_size
    return _chunks(geom.batch, oH, oW, geom.channels * kH * kW, itemsize)


def max_pool2d(x, geom, out, indices):
    """Windows as columns (padding read as -inf), reduced along the taps with PyTorch's NaN and index rules."""
    kH, kW = geom.kernel
    layout = _pool_layout(geom)
    chunks, size = _pool_chunks(geom, x.itemsize)
    buffer = np.empty(size, dtype=x.dtype)
    with_indices = indices is not None
    idx = indices if with_indices else np.empty((1, 1, 1, 1), dtype=np.int64)
    for n0, B, r0, r1 in chunks:
        cols = _columns(buffer, B, geom.channels * kH * kW, (r1 - r0) * geom.out_size[1])
        with _jit.launch():
            _im2col(x, n0, r0, -np.inf, layout, cols)
            _max_pool_columns(cols, n0, r0, layout, geom.in_size[1], with_indices, out, idx)


def avg_pool2d(x, geom, out):
    """Windows as columns (padding read as 0), summed along the taps and divided by PyTorch's divisor."""
    kH, kW = geom.kernel
    layout = _pool_layout(geom)
    divisor = _avg_divisor(geom, x.dtype)
    chunks, size = _pool_chunks(geom, x.itemsize)
    buffer = np.empty(size, dtype=x.dtype)
    for n0, B, r0, r1 in chunks:
        cols = _columns(buffer, B, geom.channels * kH * kW, (r1 - r0) * geom.out_size[1])
        with _jit.launch():
            _im2col(x, n0, r0, 0.0, layout, cols)
            _avg_pool_columns(cols, n0, r0, kH * kW, divisor, out)


def max_pool2d_backward(grad_out, indices, geom, grad_x):
    """Scatter-add each plane's ``grad_out`` into ``grad_x`` at ``indices`` (one thread per plane)."""
    with _jit.launch():
        _max_pool_scatter(grad_out, indices, grad_x)


def avg_pool2d_backward(grad_out, geom, grad_x):
    """Spread ``grad_out / divisor`` over each window's taps as columns, then col2im (padding drops out)."""
    kH, kW = geom.kernel
    oH, oW = geom.out_size
    C = geom.channels
    layout = _pool_layout(geom)
    scaled = grad_out / _avg_divisor(geom, grad_out.dtype)
    chunks, size = _pool_chunks(geom, grad_out.itemsize)
    buffer = np.empty(size, dtype=grad_out.dtype)
    for n0, B, r0, r1 in chunks:
        width = (r1 - r0) * oW
        cols = _columns(buffer, B, C * kH * kW, width)
        cols.reshape(B, C, kH * kW, width)[...] = scaled[n0 : n0 + B, :, None, r0:r1, :].reshape(B, C, 1, width)
        with _jit.launch():
            _col2im(cols, n0, r0, r0 > 0, layout, grad_x)
