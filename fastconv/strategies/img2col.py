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

Design (measured on the 2-core Xeon of the benchmarks, AVX-512, NumPy's
OpenBLAS 0.3.31, 2 threads; times are fp32 forward / backward):

* Work goes in chunks, one column buffer reused across the chunk loop. Images
  are batched up to :data:`CHUNK_TARGET_BYTES` of columns; a larger image is
  cut into bands of output rows of about that size, and no buffer exceeds
  the package's workspace cap (:func:`fastconv.workspace.get_workspace_limit`,
  1 GiB by default; only a single output row of a single image that needs
  more is allowed past it). Batching small images matters (LeNet conv1:
  0.19 ms batched vs 0.33 ms one image at a time: fewer calls into BLAS and
  the kernels), while big ones are best alone: batch8_3x3_56 takes 12.3 ms
  one image (7 MB) at a time vs 22 ms with all eight (58 MB, fresh memory on
  every call). Targets of 1, 2, 4 and 8 MB were compared; 8 MB was best or
  within noise everywhere (resnet_3x3_28: 1.04 / 2.15 ms vs 1.37 / 2.91 at 1 MB).
* Inside a chunk the buffer is ``(C_in*kH*kW, B, width)``: each row of ``X̂``
  holds the chunk's images side by side. The forward pass multiplies image by
  image (one batched ``np.matmul`` per group, straight into ``out``). The
  weight gradient is one GEMM per group over all the chunk's images when its
  output is big enough (:data:`DW_ONE_GEMM_MIN_OUTPUT`), else one per image.
* A 1x1 convolution with stride 1 and no padding needs no im2col: the input,
  reshaped, is the matrix. With stride > 1 im2col (``kH = kW = 1``) is just the
  strided gather.
* GEMMs are ``np.matmul`` from Python, not ``np.dot`` inside Numba: Numba's
  ``np.dot`` calls SciPy's OpenBLAS (a second BLAS with its own thread pool,
  and SciPy as a dependency) and measured no faster (np.dot vs np.matmul):
  1.06 vs 1.05 ms on the resnet_3x3_56 GEMM, 1.04 vs 0.86 ms on
  resnet_3x3_28's, 80 vs 78 us for LeNet conv1's 32 small GEMMs (NumPy's
  batched matmul already loops over them in C).
* The kernels are written for ``prange`` (im2col over rows of ``X̂``, col2im
  over input rows, each element written by one iteration in a fixed order, so
  race-free and independent of the thread count) but compiled serial, see
  :data:`PARALLEL_KERNELS`: next to multithreaded BLAS on the same cores a
  parallel im2col loses more to the two thread pools than it gains.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from .. import _jit
from .._jit import kernel, output_span
from ..geometry import avg_pool_divisors
from ..threads import gemm_calls
from ..workspace import get_workspace_limit
from . import Strategy, _depth

__all__ = [
    "CHUNK_TARGET_BYTES",
    "DW_ONE_GEMM_MIN_OUTPUT",
    "PARALLEL_KERNELS",
    "avg_pool2d",
    "avg_pool2d_backward",
    "col2im_into",
    "conv2d",
    "conv2d_backward",
    "im2col_into",
    "max_pool2d",
    "max_pool2d_backward",
    "workspace_bytes",
]

#: Images are batched into one chunk until the next would pass this many bytes of
#: columns; an image with more is cut into bands of output rows of about this size
#: (see the module notes; tuned on the 2-core machine of the benchmarks).
CHUNK_TARGET_BYTES = 8 << 20

#: Whether the kernels are compiled parallel. They are written race-free with ``prange``
#: (each output element is written by one iteration, in a fixed order) but compiled
#: serial: the columns feed multithreaded BLAS, and two thread pools on the same cores
#: hurt more than a parallel im2col gains. Measured with 2 cores (fwd / bwd ms):
#: resnet_3x3_56 1.40 / 2.72 serial vs 1.56-1.91 / 3.3 parallel with OMP_WAIT_POLICY=passive
#: and 7.7 / 6.0 parallel under the default OpenMP spin-wait; batch8_3x3_56 11.3 / 22.6 vs
#: 16.0 / 27.0; lenet_conv1 0.19 / 0.43 vs 0.30 / 0.57. (In isolation parallel im2col
#: is only 1.2x faster: it is memory-bound.)
PARALLEL_KERNELS = False

#: The weight gradient of a chunk of several images is one GEMM over all of them
#: when each group's dW has at least this many entries (C_out/groups * C_in/groups*kH*kW),
#: else one GEMM per image plus a sum: OpenBLAS is slow on tiny outputs with a long
#: inner dimension (LeNet conv1, 8x25 from 18432: 300 us as one GEMM, 90 us per image).
DW_ONE_GEMM_MIN_OUTPUT = 1024


# --------------------------------------------------------------------------- kernels
#
# ``layout`` is a :class:`ColumnLayout`: the geometry a kernel needs to map a column
# entry (channel, kernel row a, kernel column b, output row i, output column j) to
# the input element (channel, i*sH + a*dH - top, j*sW + b*dW - left).
#
# Column buffers are 3-D and C-contiguous: (rows, images, width) inside the
# strategy, or (images, rows, width) when ``images_first`` (the public
# fastconv.im2col layout); ``width`` covers a band of output rows starting at
# ``row_start``, and image b of the buffer is image ``first_image + b`` of x.
#
# The kernels index flat views through ``_u`` (a cast to unsigned): Numba then
# skips its negative-index wraparound, which otherwise keeps LLVM from
# vectorising the copy loops (measured: im2col 2-3x faster). Every index is
# non-negative by construction.

_u = np.uint64


class ColumnLayout(NamedTuple):
    """Where column entry (channel, a, b, i, j) of im2col reads in the image.

    The input element ``(channel, i*stride_h + a*dilation_h - top, j*stride_w + b*dilation_w - left)``;
    ``a``, ``b`` are the kernel row and column, ``i``, ``j`` the output row and
    column (``j < out_width``). Plain ints, so Numba types it as one homogeneous
    tuple and every geometry shares one compiled signature.
    """

    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    top: int
    left: int
    out_width: int


# Columns of _im2col's per-tap table (one row per kernel tap a*kW + b).
_TAP_FIRST_ROW = 0  # the input row the band's first output row reads through the tap
_TAP_COL_OFFSET = 1  # the input column output column 0 reads through the tap
_TAP_J_LO = 2  # the output columns [j_lo, j_hi) that read inside the image
_TAP_J_HI = 3
_TAP_TABLE_COLUMNS = 4

# Columns of _col2im's per-kernel-column table: output columns [j_lo, j_hi) reading inside the image.
_J_LO = 0
_J_HI = 1


@kernel(parallel=PARALLEL_KERNELS)
def _im2col(x, first_image, row_start, fill, layout, images_first, cols):
    """Fill the column buffer ``cols`` from ``x`` (N, C, H, W); ``fill`` where a window leaves the image."""
    kernel_h, kernel_w = layout.kernel_h, layout.kernel_w
    stride_h, stride_w = layout.stride_h, layout.stride_w
    dil_h, dil_w = layout.dilation_h, layout.dilation_w
    top, left, out_w = layout.top, layout.left, layout.out_width
    if images_first:
        images, n_rows, width = cols.shape
    else:
        n_rows, images, width = cols.shape
    channels, height, in_w = x.shape[1], x.shape[2], x.shape[3]
    taps = kernel_h * kernel_w
    out_rows = width // out_w
    x_flat = x.reshape(-1)
    cols_flat = cols.reshape(-1)
    # per kernel tap (a, b): the input row read by the band's first output row, the input
    # column read by output column 0, and the output columns [j_lo, j_hi) that read inside
    tap_table = np.empty((taps, _TAP_TABLE_COLUMNS), dtype=np.int64)
    for tap in range(taps):
        a = tap // kernel_w
        col_offset = (tap - a * kernel_w) * dil_w - left
        j_lo, j_hi = output_span(in_w, col_offset, stride_w, out_w)
        tap_table[tap, _TAP_FIRST_ROW] = row_start * stride_h + a * dil_h - top
        tap_table[tap, _TAP_COL_OFFSET] = col_offset
        tap_table[tap, _TAP_J_LO] = j_lo
        tap_table[tap, _TAP_J_HI] = j_hi
    for item in prange(n_rows * images):  # one (row of X̂, image) pair
        row = item // images
        b = item - row * images
        channel = row // taps
        tap = row - channel * taps
        first_r, col_offset = tap_table[tap, _TAP_FIRST_ROW], tap_table[tap, _TAP_COL_OFFSET]
        j_lo, j_hi = tap_table[tap, _TAP_J_LO], tap_table[tap, _TAP_J_HI]
        plane = ((first_image + b) * channels + channel) * height * in_w
        dst = ((b * n_rows + row) if images_first else item) * width
        for i in range(out_rows):
            r = first_r + i * stride_h
            if r < 0 or r >= height:
                for j in range(out_w):
                    cols_flat[_u(dst + j)] = fill
            else:
                src = plane + r * in_w + col_offset
                for j in range(j_lo):
                    cols_flat[_u(dst + j)] = fill
                if stride_w == 1:
                    for j in range(j_lo, j_hi):
                        cols_flat[_u(dst + j)] = x_flat[_u(src + j)]
                else:
                    for j in range(j_lo, j_hi):
                        cols_flat[_u(dst + j)] = x_flat[_u(src + j * stride_w)]
                for j in range(j_hi, out_w):
                    cols_flat[_u(dst + j)] = fill
            dst += out_w


@kernel(parallel=PARALLEL_KERNELS)
def _col2im(cols, first_image, row_start, accumulate, layout, images_first, x):
    """Add the column buffer ``cols`` into ``x`` (N, C, H, W), zeroing x's rows first unless ``accumulate``."""
    kernel_h, kernel_w = layout.kernel_h, layout.kernel_w
    stride_h, stride_w = layout.stride_h, layout.stride_w
    dil_h, dil_w = layout.dilation_h, layout.dilation_w
    top, left, out_w = layout.top, layout.left, layout.out_width
    if images_first:
        images, n_rows, width = cols.shape
    else:
        n_rows, images, width = cols.shape
    channels, height, in_w = x.shape[1], x.shape[2], x.shape[3]
    row_stop = row_start + width // out_w
    row_step = width if images_first else images * width  # from one row of X̂ to the next
    x_flat = x.reshape(-1)
    cols_flat = cols.reshape(-1)
    # per kernel column: the output columns [j_lo, j_hi) whose input column lies in the image
    j_range = np.empty((kernel_w, 2), dtype=np.int64)
    for tap_w in range(kernel_w):
        col_offset = tap_w * dil_w - left
        j_range[tap_w, _J_LO], j_range[tap_w, _J_HI] = output_span(in_w, col_offset, stride_w, out_w)
    # Windows that do not overlap (kernel <= stride, no dilation or padding, none past the edge: a U-Net's 2x2
    # stride-2 transposed convolution, a strided 1x1 layer): every input element comes from at most one column
    # entry, so rows are written, not zeroed and added, and the gaps between windows zeroed (unet_up's dX,
    # 64 x 128 x 128: 1.4 -> 0.18 ms on Zen 4).
    tiles = (kernel_h <= stride_h and kernel_w <= stride_w and dil_h == 1 and dil_w == 1 and top == 0
             and left == 0 and out_w * stride_w <= in_w and row_stop * stride_h <= height)  # (ceil_mode pools: not)
    tiled_w = out_w * stride_w if tiles else 0
    for item in prange(images * channels * height):  # one input row, owned by one thread
        b = item // (channels * height)
        rest = item - b * (channels * height)
        channel = rest // height
        r = rest - channel * height
        dst = (first_image * channels * height + item) * in_w
        first_row = channel * kernel_h * kernel_w
        channel_src = ((b * n_rows + first_row) * width) if images_first else ((first_row * images + b) * width)
        if tiles:
            i = r // stride_h
            if i < row_start or i >= row_stop:  # no window of this chunk reads the row
                if not accumulate:
                    for q in range(in_w):
                        x_flat[_u(dst + q)] = 0.0
                continue
            a = r - i * stride_h
            if a >= kernel_h:  # a row between windows
                if not accumulate:
                    for q in range(in_w):
                        x_flat[_u(dst + q)] = 0.0
                continue
            src = channel_src + a * kernel_w * row_step + (i - row_start) * out_w
            if stride_w == 2 and kernel_w == 2:  # interleaving two column rows: LLVM vectorises the pair
                for j in range(out_w):
                    x_flat[_u(dst + 2 * j)] = cols_flat[_u(src + j)]
                    x_flat[_u(dst + 2 * j + 1)] = cols_flat[_u(src + row_step + j)]
            else:
                if kernel_w < stride_w and not accumulate:  # the columns between windows
                    for q in range(tiled_w):
                        x_flat[_u(dst + q)] = 0.0
                for tap_w in range(kernel_w):
                    for j in range(out_w):
                        x_flat[_u(dst + j * stride_w + tap_w)] = cols_flat[_u(src + tap_w * row_step + j)]
            for q in range(tiled_w, in_w):  # columns past the last window
                x_flat[_u(dst + q)] = 0.0
            continue
        if not accumulate:
            for q in range(in_w):
                x_flat[_u(dst + q)] = 0.0
        for a in range(kernel_h):
            # the one output row i that reads input row r through kernel row a, if any
            reach = r + top - a * dil_h
            if reach < 0:
                break  # larger a reach further up
            i = reach // stride_h
            if i * stride_h != reach or i < row_start or i >= row_stop:
                continue
            for tap_w in range(kernel_w):
                src = channel_src + (a * kernel_w + tap_w) * row_step + (i - row_start) * out_w
                col_offset = tap_w * dil_w - left
                if stride_w == 1:
                    for j in range(j_range[tap_w, _J_LO], j_range[tap_w, _J_HI]):
                        x_flat[_u(dst + col_offset + j)] += cols_flat[_u(src + j)]
                else:
                    for j in range(j_range[tap_w, _J_LO], j_range[tap_w, _J_HI]):
                        x_flat[_u(dst + col_offset + j * stride_w)] += cols_flat[_u(src + j)]


@kernel(parallel=PARALLEL_KERNELS)
def _max_pool_columns(cols, first_image, row_start, layout, in_w, with_indices, out, indices):
    """Max over each window's column (PyTorch's ``v > best or isnan(v)``) and its flat index ``row*W + col``."""
    kernel_h, kernel_w = layout.kernel_h, layout.kernel_w
    stride_h, stride_w = layout.stride_h, layout.stride_w
    dil_h, dil_w = layout.dilation_h, layout.dilation_w
    top, left, out_w = layout.top, layout.left, layout.out_width
    n_rows, images, width = cols.shape
    channels, out_h = out.shape[1], out.shape[2]
    taps = kernel_h * kernel_w
    out_rows = width // out_w
    cols_flat = cols.reshape(-1)
    out_flat = out.reshape(-1)
    indices_flat = indices.reshape(-1)
    for item in prange(images * channels * out_rows):  # one output row
        b = item // (channels * out_rows)
        rest = item - b * (channels * out_rows)
        channel = rest // out_rows
        i = rest - channel * out_rows
        dst = (((first_image + b) * channels + channel) * out_h + row_start + i) * out_w
        r0 = (row_start + i) * stride_h - top
        r_first = r0 if r0 >= 0 else r0 + ((dil_h - 1 - r0) // dil_h) * dil_h
        for j in range(out_w):
            out_flat[_u(dst + j)] = -np.inf
            if with_indices:
                q0 = j * stride_w - left
                q_first = q0 if q0 >= 0 else q0 + ((dil_w - 1 - q0) // dil_w) * dil_w
                indices_flat[_u(dst + j)] = r_first * in_w + q_first
        for a in range(kernel_h):
            for tap_w in range(kernel_w):
                src = ((channel * taps + a * kernel_w + tap_w) * images + b) * width + i * out_w
                flat_index = (r0 + a * dil_h) * in_w + tap_w * dil_w - left
                for j in range(out_w):
                    v = cols_flat[_u(src + j)]
                    if v > out_flat[_u(dst + j)] or np.isnan(v):
                        out_flat[_u(dst + j)] = v
                        if with_indices:
                            indices_flat[_u(dst + j)] = flat_index + j * stride_w


@kernel(parallel=PARALLEL_KERNELS)
def _avg_pool_columns(cols, first_image, row_start, taps, divisor, out):
    """Sum over each window's column (zeros outside the image) divided by ``divisor`` (oH, oW), 0 where it is 0."""
    n_rows, images, width = cols.shape
    channels, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    out_rows = width // out_w
    cols_flat = cols.reshape(-1)
    out_flat = out.reshape(-1)
    divisor_flat = divisor.reshape(-1)
    for item in prange(images * channels * out_rows):  # one output row
        b = item // (channels * out_rows)
        rest = item - b * (channels * out_rows)
        channel = rest // out_rows
        i = rest - channel * out_rows
        dst = (((first_image + b) * channels + channel) * out_h + row_start + i) * out_w
        for j in range(out_w):
            out_flat[_u(dst + j)] = 0.0
        for t in range(taps):
            src = ((channel * taps + t) * images + b) * width + i * out_w
            for j in range(out_w):
                out_flat[_u(dst + j)] += cols_flat[_u(src + j)]
        for j in range(out_w):
            d = divisor_flat[_u((row_start + i) * out_w + j)]
            out_flat[_u(dst + j)] = out_flat[_u(dst + j)] / d if d != 0.0 else 0.0


@kernel(parallel=PARALLEL_KERNELS)
def _max_pool_scatter(grad_out, indices, grad_x):
    """``grad_x`` = 0, then each plane's ``grad_out`` added at its flat ``indices`` (one thread per plane)."""
    batch, channels, out_h, out_w = grad_out.shape
    plane_size = grad_x.shape[2] * grad_x.shape[3]
    out_size = out_h * out_w
    grad_flat = grad_out.reshape(-1)
    indices_flat = indices.reshape(-1)
    grad_x_flat = grad_x.reshape(-1)
    for plane in prange(batch * channels):
        dst = plane * plane_size
        for q in range(plane_size):
            grad_x_flat[_u(dst + q)] = 0.0
        for p in range(plane * out_size, (plane + 1) * out_size):
            grad_x_flat[_u(dst + indices_flat[p])] += grad_flat[p]


# --------------------------------------------------------------------------- building blocks


def _layout(kernel, stride, dilation, top, left, out_w):
    """The :class:`ColumnLayout` the kernels take, in plain ints."""
    kH, kW = kernel
    sH, sW = stride
    dH, dW = dilation
    return ColumnLayout(kernel_h=int(kH), kernel_w=int(kW), stride_h=int(sH), stride_w=int(sW),
                        dilation_h=int(dH), dilation_w=int(dW), top=int(top), left=int(left), out_width=int(out_w))


def im2col_into(x, layout, cols, images_first=True, first_image=0, row_start=0, fill=0.0):
    """Run the im2col kernel: fill ``cols`` from ``x`` (N, C, H, W), both valid and C-contiguous.

    ``cols`` is ``(B, C*kH*kW, rows*oW)`` if ``images_first`` else
    ``(C*kH*kW, B, rows*oW)``; ``layout`` is a :class:`ColumnLayout` (see :func:`_layout`).
    :func:`fastconv.im2col` is the checked public version.
    """
    with _jit.launch():
        _im2col(x, first_image, row_start, fill, layout, images_first, cols)


def col2im_into(cols, layout, x, images_first=True, first_image=0, row_start=0, accumulate=False):
    """Run the col2im kernel: add ``cols`` into ``x`` (N, C, H, W), zeroing x's images first unless ``accumulate``.

    Layouts as in :func:`im2col_into`; :func:`fastconv.col2im` is the checked public version.
    """
    with _jit.launch():
        _col2im(cols, first_image, row_start, accumulate, layout, images_first, x)


class _Chunks:
    """How a call walks its images: chunks of whole images, or bands of output rows of one image.

    Iterating gives ``(first_image, n_images, row_start, row_stop)``. Every chunk fits
    in ``rows * capacity`` elements, the one column buffer :meth:`buffer` allocates.
    """

    def __init__(self, batch, out_h, out_w, rows, itemsize):
        row_bytes = rows * out_w * itemsize
        image_bytes = row_bytes * out_h
        target = min(CHUNK_TARGET_BYTES, get_workspace_limit())
        if image_bytes <= target:
            per_chunk = max(1, min(batch, target // max(image_bytes, 1)))
            self.chunks = [(n, min(per_chunk, batch - n), 0, out_h) for n in range(0, batch, per_chunk)]
            self.capacity = per_chunk * out_h * out_w
        else:  # bands of output rows of one image (at least one row, even if that is too big)
            band = max(1, target // row_bytes)
            self.chunks = [(n, 1, r, min(r + band, out_h)) for n in range(batch) for r in range(0, out_h, band)]
            self.capacity = band * out_w
        self.max_images = max((c[1] for c in self.chunks), default=0)

    def __iter__(self):
        return iter(self.chunks)

    def buffer(self, rows, dtype):
        return np.empty(rows * self.capacity, dtype=dtype)


def _columns(buffer, rows, n_images, width):
    """A ``(rows, n_images, width)`` C-contiguous view at the start of ``buffer``."""
    return buffer[: rows * n_images * width].reshape(rows, n_images, width)


def _is_pointwise(geom):
    """1x1 kernel, stride 1, no padding: the input reshaped is the column matrix."""
    return tuple(geom.kernel) == (1, 1) and tuple(geom.stride) == (1, 1) and geom.padding == ((0, 0), (0, 0))


def workspace_bytes(geom, itemsize, op="conv2d"):
    """Bytes of scratch ``op`` allocates for ``geom``: the column buffer (0 when a 1x1 needs none).

    ``op`` is 'conv2d', 'conv2d_backward', 'max_pool2d' or 'avg_pool2d'. An upper
    bound: it counts the row of ones a bias may add and, for the backward, the
    copy of dY with a chunk's images side by side (its one-GEMM products); buffers of the
    weights' size are left out.
    """
    oH, oW = geom.out_size
    taps = geom.kernel[0] * geom.kernel[1]
    if op in ("max_pool2d", "avg_pool2d"):
        rows = geom.channels * taps
        return _Chunks(geom.batch, oH, oW, rows, itemsize).capacity * rows * itemsize
    rows = geom.in_channels * taps
    if op == "conv2d_backward":
        if _is_pointwise(geom):
            return 0
        chunks = _Chunks(geom.batch, oH, oW, rows, itemsize)
        dy_copy = geom.out_channels * chunks.capacity if chunks.max_images > 1 else 0  # images side by side
        return (rows * chunks.capacity + dy_copy) * itemsize
    if _is_pointwise(geom) and not (geom.groups == 1 and geom.in_channels < geom.out_channels):
        return 0
    rows += 1 if geom.groups == 1 else 0
    return _Chunks(geom.batch, oH, oW, rows, itemsize).capacity * rows * itemsize


# --------------------------------------------------------------------------- convolution


@gemm_calls
def conv2d(x, weight, bias, geom, out):
    """im2col per chunk of images, then one batched ``np.matmul`` per group straight into ``out``."""
    N, C_in = x.shape[:2]
    C_out, C_per_group, kH, kW = weight.shape
    G = geom.groups
    out_per_group = C_out // G
    K = C_per_group * kH * kW
    oH, oW = geom.out_size
    y = out.reshape(N, G, out_per_group, oH * oW)
    # The bias rides in the GEMM as one more column of W against a row of ones in X̂ when
    # that is cheaper than a pass over the output (measured: resnet_3x3_56 1.02 ms vs
    # 1.10 with the add; pointwise_expand 0.46 vs 0.62, paying for a copy of x).
    fold_bias = bias is not None and G == 1 and K + 1 <= N * oH * oW
    if _is_pointwise(geom) and not (fold_bias and C_in < C_out):
        w = weight.reshape(G, out_per_group, K)
        xs = x.reshape(N, G, C_per_group, oH * oW)
        for g in range(G):
            np.matmul(w[g], xs[:, g], out=y[:, g])
        if bias is not None:
            y += bias.reshape(G, out_per_group, 1)
        return
    if fold_bias:  # [W | b], against X̂ with a last row of ones
        w = np.empty((1, C_out, K + 1), dtype=x.dtype)
        w[0, :, :K] = weight.reshape(C_out, K)
        w[0, :, K] = bias
    else:
        w = weight.reshape(G, out_per_group, K)
    w_cols = w.shape[2]  # K, or K + 1 with the bias
    rows = G * K + (1 if fold_bias else 0)
    (top, _), (left, _) = geom.padding
    layout = _layout(geom.kernel, geom.stride, geom.dilation, top, left, oW)
    chunks = _Chunks(N, oH, oW, rows, x.itemsize)
    buffer = chunks.buffer(rows, x.dtype)
    for n0, B, r0, r1 in chunks:
        width = (r1 - r0) * oW
        cols = _columns(buffer, rows, B, width)
        with _jit.launch():
            _im2col(x, n0, r0, 0.0, layout, False, cols[: G * K])
        if fold_bias:
            cols[K] = 1.0
        y_chunk = y[n0 : n0 + B, :, :, r0 * oW : r1 * oW]
        for g in range(G):
            # image b's matrix is cols[g*K : g*K + w_cols, b]: a view with row stride B*width
            np.matmul(w[g], cols[g * K : g * K + w_cols].transpose(1, 0, 2), out=y_chunk[:, g])
        if bias is not None and not fold_bias:
            y_chunk += bias.reshape(G, out_per_group, 1)


@gemm_calls
def conv2d_backward(grad_out, x, weight, geom, grad_x, grad_w, grad_b):
    """The lecture's backward: ``dW = Σ dY·X̂ᵀ``, ``dX̂ = Wᵀ·dY`` then col2im, ``db = Σ dY``."""
    N = x.shape[0]
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
    w = weight.reshape(G, out_per_group, K)
    gw = None if grad_w is None else grad_w.reshape(G, out_per_group, K)
    if _is_pointwise(geom):
        _pointwise_backward(grad_out, x, w, G, grad_x, gw)
        return
    (top, _), (left, _) = geom.padding
    layout = _layout(geom.kernel, geom.stride, geom.dilation, top, left, oW)
    chunks = _Chunks(N, oH, oW, G * K, x.itemsize)
    buffer = chunks.buffer(G * K, x.dtype)
    dy = grad_out.reshape(N, G, out_per_group, P)
    one_gemm = out_per_group * K >= DW_ONE_GEMM_MIN_OUTPUT
    if gw is not None:
        dw_work = _DwWork(chunks, out_per_group, K, one_gemm, x.dtype)
    # dY with a chunk's images side by side, (G, C_out/G, B, width): one GEMM per group over all
    # of them (dX̂ always; dW when one_gemm) instead of B thin ones (dcgan_up's dX̂: 7.2 -> 5.8 ms)
    sides = np.empty(C_out * chunks.capacity, dtype=x.dtype) if chunks.max_images > 1 else None
    for index, (n0, B, r0, r1) in enumerate(chunks):
        width = (r1 - r0) * oW
        cols = _columns(buffer, G * K, B, width)
        dy_chunk = dy[n0 : n0 + B, :, :, r0 * oW : r1 * oW]  # (B, G, C_out/G, width)
        if B == 1:
            dy_side = dy_chunk[0]  # (G, C_out/G, width)
        else:
            dy_side = sides[: G * out_per_group * B * width].reshape(G, out_per_group, B * width)
            np.copyto(dy_side.reshape(G, out_per_group, B, width), dy_chunk.transpose(1, 2, 0, 3))
        if gw is not None:
            with _jit.launch():
                _im2col(x, n0, r0, 0.0, layout, False, cols)
            dw_work.accumulate(index == 0, dy_chunk, dy_side, cols, gw)
        if grad_x is not None:
            for g in range(G):
                np.matmul(w[g].T, dy_side[g], out=cols[g * K : (g + 1) * K].reshape(K, B * width))
            with _jit.launch():
                _col2im(cols, n0, r0, r0 > 0, layout, False, grad_x)


class _DwWork:
    """``dW_g += dY_g · X̂_gᵀ`` for one chunk, either as one GEMM over all its images or one GEMM per image.

    One GEMM needs dY with the images side by side, ``(C_out, B*width)`` (a copy when
    ``B > 1``); per image, NumPy's batched matmul writes ``B`` partial products that
    are then summed in order.
    """

    def __init__(self, chunks, out_per_group, K, one_gemm, dtype):
        self.one_gemm = one_gemm or chunks.max_images == 1
        self.out_per_group, self.K = out_per_group, K
        if self.one_gemm:
            self.partial = np.empty((1, out_per_group, K), dtype=dtype)
        else:
            self.partial = np.empty((chunks.max_images, out_per_group, K), dtype=dtype)
        self.partial_sum = np.empty((out_per_group, K), dtype=dtype)

    def accumulate(self, first, dy_chunk, dy_side, cols, gw):
        """Add the chunk's part; ``dy_side`` is ``dy_chunk`` with its images side by side, (G, C_out/G, B*width)."""
        B, G, out_per_group, width = dy_chunk.shape
        K = self.K
        for g in range(G):
            cols_g = cols[g * K : (g + 1) * K]  # (K, B, width)
            if self.one_gemm:
                product = gw[g] if first else self.partial[0]
                np.matmul(dy_side[g], cols_g.reshape(K, B * width).T, out=product)
                if not first:
                    gw[g] += product
            else:
                np.matmul(dy_chunk[:, g], cols_g.transpose(1, 2, 0), out=self.partial[:B])
                np.sum(self.partial[:B], axis=0, out=gw[g] if first else self.partial_sum)
                if not first:
                    gw[g] += self.partial_sum


def _pointwise_backward(grad_out, x, w, G, grad_x, gw):
    """Backward of a 1x1, stride-1, unpadded convolution: the input is its own column matrix."""
    N, C_in = x.shape[:2]
    C_out = grad_out.shape[1]
    P = x.shape[2] * x.shape[3]
    out_per_group, C_per_group = C_out // G, C_in // G
    dy = grad_out.reshape(N, G, out_per_group, P)
    xs = x.reshape(N, G, C_per_group, P)
    if gw is not None:
        partial = np.empty((N, out_per_group, C_per_group), dtype=x.dtype)
        for g in range(G):
            np.matmul(dy[:, g], xs[:, g].transpose(0, 2, 1), out=partial)
            np.sum(partial, axis=0, out=gw[g])
    if grad_x is not None:
        gx = grad_x.reshape(N, G, C_per_group, P)
        for g in range(G):
            np.matmul(w[g].T, dy[:, g], out=gx[:, g])


# --------------------------------------------------------------------------- pooling


def _pool_layout(geom):
    pH, pW = geom.padding
    return _layout(geom.kernel, geom.stride, geom.dilation, pH, pW, geom.out_size[1])


def _pool_chunks(geom, itemsize):
    kH, kW = geom.kernel
    oH, oW = geom.out_size
    return _Chunks(geom.batch, oH, oW, geom.channels * kH * kW, itemsize)


def max_pool2d(x, geom, out, indices):
    """Windows as columns (outside the image reads -inf), reduced over the taps with PyTorch's NaN/index rules."""
    rows = geom.channels * geom.kernel[0] * geom.kernel[1]
    layout = _pool_layout(geom)
    chunks = _pool_chunks(geom, x.itemsize)
    buffer = chunks.buffer(rows, x.dtype)
    with_indices = indices is not None
    index_out = indices if with_indices else np.empty((1, 1, 1, 1), dtype=np.int64)
    for n0, B, r0, r1 in chunks:
        cols = _columns(buffer, rows, B, (r1 - r0) * geom.out_size[1])
        with _jit.launch():
            _im2col(x, n0, r0, -np.inf, layout, False, cols)
            _max_pool_columns(cols, n0, r0, layout, geom.in_size[1], with_indices, out, index_out)


def avg_pool2d(x, geom, out):
    """Windows as columns (outside the image reads 0), summed along the taps and divided by PyTorch's divisor."""
    kH, kW = geom.kernel
    rows = geom.channels * kH * kW
    layout = _pool_layout(geom)
    divisor = avg_pool_divisors(geom).astype(x.dtype)
    chunks = _pool_chunks(geom, x.itemsize)
    buffer = chunks.buffer(rows, x.dtype)
    for n0, B, r0, r1 in chunks:
        cols = _columns(buffer, rows, B, (r1 - r0) * geom.out_size[1])
        with _jit.launch():
            _im2col(x, n0, r0, 0.0, layout, False, cols)
            _avg_pool_columns(cols, n0, r0, kH * kW, divisor, out)


def max_pool2d_backward(grad_out, indices, geom, grad_x):
    """Scatter-add each plane's ``grad_out`` into ``grad_x`` at ``indices`` (one thread per plane)."""
    with _jit.launch():
        _max_pool_scatter(grad_out, indices, grad_x)


def avg_pool2d_backward(grad_out, geom, grad_x):
    """Spread ``grad_out / divisor`` over each window's taps as columns, then col2im (padding drops out)."""
    C = geom.channels
    kH, kW = geom.kernel
    oW = geom.out_size[1]
    layout = _pool_layout(geom)
    divisor = avg_pool_divisors(geom).astype(grad_out.dtype)
    scaled = np.divide(grad_out, divisor, out=np.zeros_like(grad_out), where=divisor != 0)
    chunks = _pool_chunks(geom, grad_out.itemsize)
    buffer = chunks.buffer(C * kH * kW, grad_out.dtype)
    for n0, B, r0, r1 in chunks:
        width = (r1 - r0) * oW
        cols = _columns(buffer, C * kH * kW, B, width)
        spread = scaled[n0 : n0 + B, :, r0:r1].reshape(B, C, width).transpose(1, 0, 2)
        cols.reshape(C, kH * kW, B, width)[...] = spread[:, None]
        with _jit.launch():
            _col2im(cols, n0, r0, r0 > 0, layout, False, grad_x)



_OP_NAMES = {"conv": "conv2d", "conv_backward": "conv2d_backward", "max_pool": "max_pool2d", "avg_pool": "avg_pool2d"}


def _workspace(op, geom, itemsize):
    if geom.rank == 3 and op.startswith("conv"):
        return _depth.workspace_bytes(geom, itemsize, lambda plane: _workspace(op, plane, itemsize))
    if op not in _OP_NAMES or geom.rank == 3:
        return 0
    return workspace_bytes(geom, itemsize, _OP_NAMES[op])


STRATEGY = Strategy(
    name="img2col",
    summary="Numba im2col (the lecture's layout) + BLAS GEMM",
    ranks=(2, 3),
    ops=_depth.ops(conv2d, conv2d_backward, max_pool2d, max_pool2d_backward, avg_pool2d, avg_pool2d_backward),
    workspace_bytes=_workspace,
)
