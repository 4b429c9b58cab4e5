"""Backward pass of the direct strategy: convolution gradients from sliding-window loops, no im2col.

For ``Y[n, l, i, j] = b[l] + sum_{d, a, b} Xpad[n, g*Cg + d, i*sH + a*dH, j*sW + b*dW] * W[l, d, a, b]``::

    grad_b[l]          = sum_{n, i, j} dY[n, l, i, j]
    grad_w[l, d, a, b] = sum_{n, i, j} dY[n, l, i, j] * Xpad[n, g*Cg + d, i*sH + a*dH, j*sW + b*dW]
    grad_x[n, c, r, q] = sum of dY[n, l, i, j] * W[l, d, a, b] over the windows that read Xpad[n, c, r, q]

Layout
------
Strides are removed by splitting the padded input into ``sH*sW`` *phase planes*
(``Xpad[u*sH + rh, v*sW + rw]`` for each phase ``(rh, rw)``): tap ``(a, b)``
reads phase ``(a*dH % sH, b*dW % sW)`` at the stride-1 offset
``(a*dH // sH, b*dW // sW)``. Operands are copied with the images innermost
(``[channel][row][column][image]``), so that a batch of small images makes
long unit-stride rows: ``gop`` holds dY, ``xq`` one input channel's phase
planes, and the ``grad_x`` tiles are phase-plane rows. Every gradient is then a
set of unit-stride loops that LLVM turns into ``vfmadd...ps`` on ``ymm``.

* ``grad_w``: dot products of dY rows with input rows shifted by each tap,
  register-blocked 4 output channels x 4 taps (16 vector accumulators, 8 loads
  per 16 FMAs).
* ``grad_x``: the transposed convolution as a gather: a tile of phase-plane
  rows accumulates ``W * dY`` shifted by each tap, 4 input channels x 4
  (output channel, tap) terms per pass (12 loads and 4 stores per 16 FMAs),
  then is scattered to ``(N, C, H, W)``.

Rows of ``N * oW`` elements are long enough for both loops to run row by row
over dY's own elements, and ``gop`` is dY alone. Shorter rows (one image,
narrow planes) would spend their time in loop ends, so instead ``gop`` gets a
zero border and the same row width as ``xq``, and the loops run over whole
planes: ``grad_w``'s dot products include border columns (their dY is 0) and
``grad_x``'s gather reads the border where a window leaves dY (as the forward
pass reads padding). Where that would turn 0 * inf into NaN -- an inf/NaN in
the input channel, or in the weights of a ``grad_x`` task -- those tasks use
the row-by-row loops, so inf and NaN propagate exactly as in the sums above.

Parallelism and determinism
---------------------------
Every output element is owned by one prange iteration and summed in a fixed
order: ``grad_b`` and ``gop`` per output channel; ``grad_w`` per (group, block
of up to 4 input channels, chunk of the output channels), each iteration
packing its own input channels and summing over the whole batch; ``grad_x``
per (group, block of 4 input channels, phase, tile). No iteration writes
another's elements, and which iteration computes an element does not change
how it is summed (the block sizes depend on the problem only, never on the
thread count), so the results do not depend on the thread count.

Workspace (:func:`backward_workspace_bytes`): ``gop`` (about the size of dY,
plus a border for short rows), and per running iteration a block of input
channels' phase planes (``grad_w``) or a tile (``grad_x``). Batches whose
``gop`` would exceed the workspace cap are processed in chunks of images.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from .. import _jit, _simd
from ..geometry import phase_split
from .._jit import kernel, output_span
from ..workspace import get_workspace_limit

__all__ = ["backward_workspace_bytes", "conv2d_backward"]

#: Elements per channel of a grad_x tile, and per pass of a grad_w dot product.
#: Tuned on the 2-core Xeon (Sapphire Rapids, 48 KiB L1d, 2 MiB L2) this was
#: written on: 1024-4096 were within noise on the benchmark shapes, 512 and
#: below lost up to 30% to per-call overhead on the grad_x side.
TILE = 2048

#: Rows shorter than this (images x output columns) are summed over whole planes,
#: border included, instead of row by row: each row-by-row pass ends in 16
#: horizontal reductions (grad_w) or pays a call (grad_x), which short rows
#: cannot amortise.
MIN_ROW = 128

#: grad_w tasks wanted before blocks of input channels share a task: a block shares each dY
#: load among its channels and fills the 4 x 4 kernels, but fewer tasks balance worse. A fixed
#: number, not the thread count: the block size decides which loop sums each element.
MIN_WEIGHT_TASKS = 8


# ----------------------------------------------------------------------------------------------
# Layout


class _BackwardDims(NamedTuple):
    """The numbers the backward kernels read: the problem and its scratch layout, for a chunk of images.

    Plain ints only, so that Numba types it as a homogeneous int64 tuple (one compiled signature
    for every problem) and the kernels read each number by name.
    """

    images: int       # N: images in the chunk
    groups: int
    out_h: int        # oH
    out_w: int        # oW
    stride_h: int     # sH
    stride_w: int     # sW
    top: int          # rows of zero padding above the input
    left: int         # columns of zero padding left of the input
    plane_width: int  # columns of a phase-plane row of xq and of the grad_x tiles (and of gop's with whole_planes)
    x_rows: int       # rows of each phase plane of xq
    gx_rows: int      # phase-plane rows holding any input row (the rows grad_x tiles cover)
    gx_row0: int      # phase-plane row of input row 0 (for its phase)
    gx_col0: int      # phase-plane column of input column 0 (for its phase)
    tile_rows: int    # phase-plane rows per grad_x tile
    row_tiles: int    # grad_x tiles down a phase plane
    tile_cols: int    # phase-plane columns per grad_x tile
    col_tiles: int    # grad_x tiles across a phase plane
    go_width: int     # columns of a gop row (oW, or plane_width with a zero border)
    go_rows: int      # rows of a gop plane
    go_top: int       # zero rows above dY in gop
    go_left: int      # zero columns left of dY in gop


class _Layout(NamedTuple):
    """Scratch layout of one problem for chunks of ``n`` images."""

    n: int              # images per chunk
    go_size: int        # elements of gop
    blocks: int         # blocks of 4 output channels per group
    per_task: int       # input channels per grad_w task
    whole_planes: bool  # short rows: sums over whole planes, gop with a zero border
    dims: _BackwardDims  # the numbers the kernels read
    tap_row: np.ndarray     # (kH*kW,) stride-1 row offset a*dH // sH of each tap
    tap_col: np.ndarray     # (kH*kW,) stride-1 column offset b*dW // sW
    pair_offset: np.ndarray   # (per_task*kH*kW,) offset of (channel i, tap t) from the input under dY[.., 0, 0]
    phase_start: np.ndarray   # (phases + 1,) taps of phase f: phase_taps[phase_start[f]:phase_start[f+1]]
    phase_taps: np.ndarray    # tap indices a*kW + b ordered by phase


class _Axis(NamedTuple):
    """The phase-plane layout along one axis (see :func:`_axis`), in rows (or columns)."""

    offsets: list   # stride-1 offset a*d // s of each tap a
    phases: list    # phase a*d % s of each tap a
    first: int      # phase-plane row of input row 0 (for its phase)
    rows: int       # phase-plane rows holding any input row
    border: int     # zero rows of dY needed above row 0


def _axis(n, k, s, d, lo):
    """One axis: tap offsets and phases, first phase-plane row of the input, its row count, dY's border."""
    phases, offsets = (list(values) for values in phase_split(k, s, d))
    first = lo // s                       # phase-plane row of input row 0 (for its phase)
    rows = (lo + n - 1) // s - first + 1  # phase-plane rows holding any input row
    border = max(0, max(offsets) - first)  # zero rows of dY needed above row 0
    return _Axis(offsets=offsets, phases=phases, first=first, rows=rows, border=border)


@functools.lru_cache(maxsize=128)
def _layout(geom, n):
    """The scratch layout of ``geom`` for chunks of ``n`` images."""
    H, W = geom.in_size
    kH, kW = geom.kernel
    sH, sW = geom.stride
    dH, dW = geom.dilation
    (top, _), (left, _) = geom.padding
    oH, oW = geom.out_size
    down, across = _axis(H, kH, sH, dH, top), _axis(W, kW, sW, dW, left)
    row_off, row_ph, gx_row0, gx_rows, top_rows = down.offsets, down.phases, down.first, down.rows, down.border
    col_off, col_ph, gx_col0, gx_cols, left_cols = (across.offsets, across.phases, across.first, across.rows,
                                                    across.border)
    # Row width of xq and the grad_x tiles: a tap's operand never wraps into the next row
    # for a valid output (oW + max offset), every input column fits, and so does dY with
    # its left border (the whole-plane sums need the same width in gop).
    width = max(oW + max(col_off), gx_col0 + gx_cols, left_cols + oW)
    x_rows = oH + max(row_off)
    whole_planes = oW * n < MIN_ROW
    # grad_x tiles of about TILE elements per channel: several rows, or part of one long row
    # (whole-plane sums have short rows); equal sizes, for balance
    col_tiles = 1 if whole_planes else -(-width * n // TILE)
    tile_cols = -(-width // col_tiles)
    row_tiles = -(-gx_rows // max(1, min(gx_rows, TILE // (tile_cols * n))))
    tile_rows = -(-gx_rows // row_tiles)
    if whole_planes:
        # dY inside a zero border, rows as wide as xq's; +1 row: reads wrapping past a row end find zeros
        go_width, go_rows, go_top, go_left = width, top_rows + max(oH, gx_row0 + gx_rows) + 1, top_rows, left_cols
    else:
        go_width, go_rows, go_top, go_left = oW, oH, 0, 0  # only dY's own elements are ever read
    dims = _BackwardDims(
        images=int(n), groups=int(geom.groups), out_h=int(oH), out_w=int(oW), stride_h=int(sH), stride_w=int(sW),
        top=int(top), left=int(left), plane_width=int(width), x_rows=int(x_rows), gx_rows=int(gx_rows),
        gx_row0=int(gx_row0), gx_col0=int(gx_col0), tile_rows=int(tile_rows), row_tiles=int(row_tiles),
        tile_cols=int(tile_cols), col_tiles=int(col_tiles), go_width=int(go_width), go_rows=int(go_rows),
        go_top=int(go_top), go_left=int(go_left))
    taps = [(a, b) for a in range(kH) for b in range(kW)]
    tap_phase = np.array([row_ph[a] * sW + col_ph[b] for a, b in taps], dtype=np.int64)
    tap_row = np.array([row_off[a] for a, _ in taps], dtype=np.int64)
    tap_col = np.array([col_off[b] for _, b in taps], dtype=np.int64)
    x_plane = x_rows * width * n
    tap_x_offset = tap_phase * x_plane + (tap_row * width + tap_col) * n
    # input channels per grad_w task, and (channel i of such a block, tap t) -> offset in its buffer
    Cg = geom.in_channels // geom.groups
    per_task = next(d for d in (4, 2, 1) if d == 1 or geom.groups * -(-Cg // d) >= MIN_WEIGHT_TASKS)
    pair_offset = (np.arange(per_task)[:, None] * (sH * sW * x_plane) + tap_x_offset[None, :]).reshape(-1)
    order = np.argsort(tap_phase, kind="stable").astype(np.int64)
    phase_start = np.searchsorted(tap_phase[order], np.arange(sH * sW + 1)).astype(np.int64)
    return _Layout(n=n, go_size=geom.out_channels * go_rows * go_width * n,
                   blocks=-(-(geom.out_channels // geom.groups) // 4), per_task=per_task,
                   whole_planes=whole_planes, dims=dims,
                   tap_row=tap_row, tap_col=tap_col, pair_offset=pair_offset, phase_start=phase_start,
                   phase_taps=order)


# ----------------------------------------------------------------------------------------------
# Packing dY (and grad_b) and the input


@kernel(parallel=False)
def _fill_zero(a, start, stop):
    """``a[start:stop] = 0``."""
    view = a[start:stop]  # indexed from 0: no negative-index check, so LLVM vectorises
    for p in range(view.shape[0]):
        view[p] = 0


@kernel
def _pack_grad_out(grad_out, dims, gop, grad_b, accumulate):
    """Fill ``gop`` (skipped when empty) and ``grad_b`` (skipped when empty; += if ``accumulate``), per output channel.

    ``gop[l, go_top+i, go_left+j, n] = dY[n, l, i, j]``, zeros around it.
    """
    N, oH, oW = dims.images, dims.out_h, dims.out_w
    go_width, go_rows, go_top, go_left = dims.go_width, dims.go_rows, dims.go_top, dims.go_left
    C_out = grad_out.shape[1]
    go_plane = go_rows * go_width * N
    flat_grad_out = grad_out.reshape(grad_out.size)
    for l in prange(C_out):
        if gop.shape[0] > 0:
            base = l * go_plane
            _fill_zero(gop, base, base + (go_top * go_width + go_left) * N)
            for i in range(oH):
                row = base + ((go_top + i) * go_width + go_left) * N
                dst = gop[row:row + oW * N]
                if N == 1:  # unit stride on both sides
                    src = grad_out[0, l, i]
                    for j in range(oW):
                        dst[j] = src[j]
                else:
                    for n in range(N):
                        src = grad_out[n, l, i]
                        for j in range(oW):
                            dst[j * N + n] = src[j]
                _fill_zero(gop, row + oW * N, row + go_width * N)  # up to the next row's dY
            _fill_zero(gop, base + ((go_top + oH) * go_width + go_left) * N, base + go_plane)
        if grad_b.shape[0] > 0:
            total = 0.0
            for n in range(N):
                plane = flat_grad_out[(n * C_out + l) * oH * oW:(n * C_out + l + 1) * oH * oW]
                for p in range(oH * oW):
                    total += plane[p]
            grad_b[l] = grad_b[l] + total if accumulate else total


@kernel(parallel=False)
def _pack_input_channel(x, c, dims, xq, count_nonfinite):
    """``xq[phase, u, v, n] = Xpad[n, c, u*sH + rh, v*sW + rw]`` (phase = rh*sW + rw), zeros outside the image.

    Returns the number of inf/NaN elements if ``count_nonfinite``, else 0.
    """
    N = dims.images
    stride_h, stride_w, top, left = dims.stride_h, dims.stride_w, dims.top, dims.left
    width, x_rows = dims.plane_width, dims.x_rows
    H, W = x.shape[2], x.shape[3]
    row_len = width * N
    bad = 0
    for phase in range(stride_h * stride_w):
        rh = phase // stride_w
        rw = phase % stride_w
        base = phase * x_rows * row_len
        # phase-plane columns v holding input columns q = v*sW + rw - left in [0, W)
        v_lo, v_hi = output_span(W, rw - left, stride_w, width)
        q0 = v_lo * stride_w + rw - left
        for u in range(x_rows):
            r = u * stride_h + rh - top
            row = base + u * row_len
            if r < 0 or r >= H:
                _fill_zero(xq, row, row + row_len)
                continue
            _fill_zero(xq, row, row + v_lo * N)
            _fill_zero(xq, row + v_hi * N, row + row_len)
            dst = xq[row + v_lo * N:row + v_hi * N]
            if N == 1 and stride_w == 1:  # unit stride on both sides
                src = x[0, c, r, q0:q0 + v_hi - v_lo]
                for v in range(v_hi - v_lo):
                    dst[v] = src[v]
            else:
                for n in range(N):
                    src = x[n, c, r, q0:]
                    for v in range(v_hi - v_lo):
                        dst[v * N + n] = src[v * stride_w]
            if count_nonfinite:
                for p in range(dst.shape[0]):
                    bad += not math.isfinite(dst[p])
    return bad


# ----------------------------------------------------------------------------------------------
# grad_w: dot products, 4 output channels x 4 taps per pass


@kernel(parallel=False)
def _grad_weight_span(gop, g, go_plane, rows, xq, x, x_offset, length, grad_w, l0, col):
    """``grad_w[l0+i, col+t] += gop[g + i*go_plane:][:length] . xq[x + x_offset[t]:][:length]``, i < rows, every t.

    Register-blocked dot products (each accumulator becomes a vector of partial sums):
    4 output channels x 4 (input channel, tap) pairs (16 accumulators, 8 loads per 16 FMAs) and 4 x 1 for the last
    pairs, with 32 vector registers (AVX-512); with 16, twice 2 x 6 (12 accumulators, 8 loads per 12 FMAs) and
    2 x 1; with fewer than 4 output channels, one channel x 8 pairs and 1 x 1.
    """
    z = gop.dtype.type(0)
    taps = x_offset.shape[0]
    if rows == 4 and _simd.REGISTERS < 32:
        # 16 vector registers: 2 output channels x 6 pairs (12 accumulators, 2 dY vectors, one input vector;
        # 4 x 4 needs 24 and spilled 12 per pass), for each half of the block
        for half in range(2):
            ga = gop[g + 2 * half * go_plane:g + 2 * half * go_plane + length]
            gb = gop[g + (2 * half + 1) * go_plane:g + (2 * half + 1) * go_plane + length]
            la = l0 + 2 * half
            t = 0
            while t + 6 <= taps:
                x0 = xq[x + x_offset[t]:x + x_offset[t] + length]
                x1 = xq[x + x_offset[t + 1]:x + x_offset[t + 1] + length]
                x2 = xq[x + x_offset[t + 2]:x + x_offset[t + 2] + length]
                x3 = xq[x + x_offset[t + 3]:x + x_offset[t + 3] + length]
                x4 = xq[x + x_offset[t + 4]:x + x_offset[t + 4] + length]
                x5 = xq[x + x_offset[t + 5]:x + x_offset[t + 5] + length]
                s00 = s01 = s02 = s03 = s04 = s05 = s10 = s11 = s12 = s13 = s14 = s15 = z
                for p in range(length):
                    a0, a1 = ga[p], gb[p]
                    b = x0[p]
                    s00 += a0 * b
                    s10 += a1 * b
                    b = x1[p]
                    s01 += a0 * b
                    s11 += a1 * b
                    b = x2[p]
                    s02 += a0 * b
                    s12 += a1 * b
                    b = x3[p]
                    s03 += a0 * b
                    s13 += a1 * b
                    b = x4[p]
                    s04 += a0 * b
                    s14 += a1 * b
                    b = x5[p]
                    s05 += a0 * b
                    s15 += a1 * b
                grad_w[la, col + t] += s00
                grad_w[la, col + t + 1] += s01
                grad_w[la, col + t + 2] += s02
                grad_w[la, col + t + 3] += s03
                grad_w[la, col + t + 4] += s04
                grad_w[la, col + t + 5] += s05
                grad_w[la + 1, col + t] += s10
                grad_w[la + 1, col + t + 1] += s11
                grad_w[la + 1, col + t + 2] += s12
                grad_w[la + 1, col + t + 3] += s13
                grad_w[la + 1, col + t + 4] += s14
                grad_w[la + 1, col + t + 5] += s15
                t += 6
            while t < taps:
                x0 = xq[x + x_offset[t]:x + x_offset[t] + length]
                s0 = s1 = z
                for p in range(length):
                    b = x0[p]
                    s0 += ga[p] * b
                    s1 += gb[p] * b
                grad_w[la, col + t] += s0
                grad_w[la + 1, col + t] += s1
                t += 1
        return
    if rows == 4:
        g0 = gop[g:g + length]
        g1 = gop[g + go_plane:g + go_plane + length]
        g2 = gop[g + 2 * go_plane:g + 2 * go_plane + length]
        g3 = gop[g + 3 * go_plane:g + 3 * go_plane + length]
        t = 0
        while t + 4 <= taps:
            x0 = xq[x + x_offset[t]:x + x_offset[t] + length]
            x1 = xq[x + x_offset[t + 1]:x + x_offset[t + 1] + length]
            x2 = xq[x + x_offset[t + 2]:x + x_offset[t + 2] + length]
            x3 = xq[x + x_offset[t + 3]:x + x_offset[t + 3] + length]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = z
            for p in range(length):
                a0, a1, a2, a3 = g0[p], g1[p], g2[p], g3[p]
                b0, b1, b2, b3 = x0[p], x1[p], x2[p], x3[p]
                s00 += a0 * b0
                s01 += a0 * b1
                s02 += a0 * b2
                s03 += a0 * b3
                s10 += a1 * b0
                s11 += a1 * b1
                s12 += a1 * b2
                s13 += a1 * b3
                s20 += a2 * b0
                s21 += a2 * b1
                s22 += a2 * b2
                s23 += a2 * b3
                s30 += a3 * b0
                s31 += a3 * b1
                s32 += a3 * b2
                s33 += a3 * b3
            grad_w[l0, col + t] += s00
            grad_w[l0, col + t + 1] += s01
            grad_w[l0, col + t + 2] += s02
            grad_w[l0, col + t + 3] += s03
            grad_w[l0 + 1, col + t] += s10
            grad_w[l0 + 1, col + t + 1] += s11
            grad_w[l0 + 1, col + t + 2] += s12
            grad_w[l0 + 1, col + t + 3] += s13
            grad_w[l0 + 2, col + t] += s20
            grad_w[l0 + 2, col + t + 1] += s21
            grad_w[l0 + 2, col + t + 2] += s22
            grad_w[l0 + 2, col + t + 3] += s23
            grad_w[l0 + 3, col + t] += s30
            grad_w[l0 + 3, col + t + 1] += s31
            grad_w[l0 + 3, col + t + 2] += s32
            grad_w[l0 + 3, col + t + 3] += s33
            t += 4
        while t < taps:
            x0 = xq[x + x_offset[t]:x + x_offset[t] + length]
            s0 = s1 = s2 = s3 = z
            for p in range(length):
                b0 = x0[p]
                s0 += g0[p] * b0
                s1 += g1[p] * b0
                s2 += g2[p] * b0
                s3 += g3[p] * b0
            grad_w[l0, col + t] += s0
            grad_w[l0 + 1, col + t] += s1
            grad_w[l0 + 2, col + t] += s2
            grad_w[l0 + 3, col + t] += s3
            t += 1
        return
    for i in range(rows):
        g0 = gop[g + i * go_plane:g + i * go_plane + length]
        t = 0
        while t + 8 <= taps:
            x0 = xq[x + x_offset[t]:x + x_offset[t] + length]
            x1 = xq[x + x_offset[t + 1]:x + x_offset[t + 1] + length]
            x2 = xq[x + x_offset[t + 2]:x + x_offset[t + 2] + length]
            x3 = xq[x + x_offset[t + 3]:x + x_offset[t + 3] + length]
            x4 = xq[x + x_offset[t + 4]:x + x_offset[t + 4] + length]
            x5 = xq[x + x_offset[t + 5]:x + x_offset[t + 5] + length]
            x6 = xq[x + x_offset[t + 6]:x + x_offset[t + 6] + length]
            x7 = xq[x + x_offset[t + 7]:x + x_offset[t + 7] + length]
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = z
            for p in range(length):
                a0 = g0[p]
                s0 += a0 * x0[p]
                s1 += a0 * x1[p]
                s2 += a0 * x2[p]
                s3 += a0 * x3[p]
                s4 += a0 * x4[p]
                s5 += a0 * x5[p]
                s6 += a0 * x6[p]
                s7 += a0 * x7[p]
            grad_w[l0 + i, col + t] += s0
            grad_w[l0 + i, col + t + 1] += s1
            grad_w[l0 + i, col + t + 2] += s2
            grad_w[l0 + i, col + t + 3] += s3
            grad_w[l0 + i, col + t + 4] += s4
            grad_w[l0 + i, col + t + 5] += s5
            grad_w[l0 + i, col + t + 6] += s6
            grad_w[l0 + i, col + t + 7] += s7
            t += 8
        while t < taps:
            x0 = xq[x + x_offset[t]:x + x_offset[t] + length]
            s0 = z
            for p in range(length):
                s0 += g0[p] * x0[p]
            grad_w[l0 + i, col + t] += s0
            t += 1


@kernel
def _grad_weight(x, gop, dims, pair_offset, per_task, chunks, whole_planes, accumulate, grad_w):
    """``grad_w`` (viewed ``(C_out, Cg*kH*kW)``; += if ``accumulate``) from ``x`` and ``gop``.

    One prange iteration per (group, block of ``per_task`` input channels, chunk of the group's
    blocks of 4 output channels): it packs its input channels into a private buffer, then
    owns ``grad_w[l, d, :]`` for those channels, summing over the whole batch itself. The
    (input channel, tap) pairs of a block are consecutive columns of ``grad_w`` and
    ``pair_offset[k]`` is pair k's offset in the buffer. With ``whole_planes`` (and finite input)
    the dot products run over whole planes in TILE-sized spans, gop's zero border included;
    otherwise row by row over dY's elements only.
    """
    N, groups, oH, oW = dims.images, dims.groups, dims.out_h, dims.out_w
    stride_h, stride_w = dims.stride_h, dims.stride_w
    width, x_rows = dims.plane_width, dims.x_rows
    go_width, go_rows, go_top, go_left = dims.go_width, dims.go_rows, dims.go_top, dims.go_left
    C_out = grad_w.shape[0]
    Cg = x.shape[1] // groups
    taps = grad_w.shape[1] // Cg
    out_per_group = C_out // groups
    blocks = (out_per_group + 3) // 4
    in_blocks = (Cg + per_task - 1) // per_task
    channel = stride_h * stride_w * x_rows * width * N  # one input channel's phase planes
    go_plane = go_rows * go_width * N
    first = (go_top * go_width + go_left) * N      # gop index of dY[0, l, 0, 0] in its plane
    last = first + ((oH - 1) * go_width + oW) * N  # (whole planes: go_width == width)
    for task in prange(groups * in_blocks * chunks):
        chunk = task % chunks
        d0 = per_task * ((task // chunks) % in_blocks)
        group = task // (chunks * in_blocks)
        channels = min(per_task, Cg - d0)
        xq = np.empty(channels * channel, dtype=x.dtype)
        nonfinite = 0
        for i in range(channels):
            nonfinite += _pack_input_channel(x, group * Cg + d0 + i, dims, xq[i * channel:(i + 1) * channel],
                                             whole_planes)
        exact = not whole_planes or nonfinite > 0
        pairs = pair_offset[:channels * taps]
        for block in range(chunk * blocks // chunks, (chunk + 1) * blocks // chunks):
            l0 = group * out_per_group + 4 * block
            rows = min(4, (group + 1) * out_per_group - l0)
            if not accumulate:
                for i in range(rows):
                    for k in range(channels * taps):
                        grad_w[l0 + i, d0 * taps + k] = 0
            # spans of at most TILE elements (rows, or pieces of long rows), each summed over every
            # pair while its operands are in L1
            pieces = (oW * N + TILE - 1) // TILE
            for span in range(oH * pieces if exact else (last - first + TILE - 1) // TILE):
                if exact:
                    i, piece = span // pieces, span % pieces
                    g = first + i * go_width * N + piece * TILE
                    xs = i * width * N + piece * TILE
                    length = min(TILE, oW * N - piece * TILE)
                else:
                    g = first + span * TILE
                    xs = span * TILE
                    length = min(TILE, last - g)
                _grad_weight_span(gop, l0 * go_plane + g, go_plane, rows, xq, xs, pairs, length, grad_w, l0,
                                  d0 * taps)


# ----------------------------------------------------------------------------------------------
# grad_x: gather, 4 input channels x 4 (output channel, tap) terms per pass


@kernel(parallel=False)
def _grad_input_terms(tile, o, o_stride, channels, gop, g_offset, shift, weights, k0, k1, length):
    """``tile[o + i*o_stride + p] += sum_k weights[i, k] * gop[g_offset[k] + shift + p]``, i < channels, k0 <= k < k1, p < length.

    Blocked multi-term updates: 4 tile rows x 4 terms (12 loads and 4 stores per 16 FMAs) and 4 x 1
    for the last terms; with fewer than 4 channels, one row x 8 terms and 1 x 1.
    """
    if channels == 4:
        t0 = tile[o:o + length]
        t1 = tile[o + o_stride:o + o_stride + length]
        t2 = tile[o + 2 * o_stride:o + 2 * o_stride + length]
        t3 = tile[o + 3 * o_stride:o + 3 * o_stride + length]
        k = k0
        while k + 4 <= k1:
            y0 = gop[g_offset[k] + shift:g_offset[k] + shift + length]
            y1 = gop[g_offset[k + 1] + shift:g_offset[k + 1] + shift + length]
            y2 = gop[g_offset[k + 2] + shift:g_offset[k + 2] + shift + length]
            y3 = gop[g_offset[k + 3] + shift:g_offset[k + 3] + shift + length]
            w00, w01, w02, w03 = weights[0, k], weights[0, k + 1], weights[0, k + 2], weights[0, k + 3]
            w10, w11, w12, w13 = weights[1, k], weights[1, k + 1], weights[1, k + 2], weights[1, k + 3]
            w20, w21, w22, w23 = weights[2, k], weights[2, k + 1], weights[2, k + 2], weights[2, k + 3]
            w30, w31, w32, w33 = weights[3, k], weights[3, k + 1], weights[3, k + 2], weights[3, k + 3]
            for p in range(length):
                a0, a1, a2, a3 = y0[p], y1[p], y2[p], y3[p]
                t0[p] += w00 * a0 + w01 * a1 + w02 * a2 + w03 * a3
                t1[p] += w10 * a0 + w11 * a1 + w12 * a2 + w13 * a3
                t2[p] += w20 * a0 + w21 * a1 + w22 * a2 + w23 * a3
                t3[p] += w30 * a0 + w31 * a1 + w32 * a2 + w33 * a3
            k += 4
        while k < k1:
            y0 = gop[g_offset[k] + shift:g_offset[k] + shift + length]
            w0, w1, w2, w3 = weights[0, k], weights[1, k], weights[2, k], weights[3, k]
            for p in range(length):
                a0 = y0[p]
                t0[p] += w0 * a0
                t1[p] += w1 * a0
                t2[p] += w2 * a0
                t3[p] += w3 * a0
            k += 1
        return
    for i in range(channels):
        t0 = tile[o + i * o_stride:o + i * o_stride + length]
        k = k0
        while k + 8 <= k1:
            y0 = gop[g_offset[k] + shift:g_offset[k] + shift + length]
            y1 = gop[g_offset[k + 1] + shift:g_offset[k + 1] + shift + length]
            y2 = gop[g_offset[k + 2] + shift:g_offset[k + 2] + shift + length]
            y3 = gop[g_offset[k + 3] + shift:g_offset[k + 3] + shift + length]
            y4 = gop[g_offset[k + 4] + shift:g_offset[k + 4] + shift + length]
            y5 = gop[g_offset[k + 5] + shift:g_offset[k + 5] + shift + length]
            y6 = gop[g_offset[k + 6] + shift:g_offset[k + 6] + shift + length]
            y7 = gop[g_offset[k + 7] + shift:g_offset[k + 7] + shift + length]
            w0, w1, w2, w3 = weights[i, k], weights[i, k + 1], weights[i, k + 2], weights[i, k + 3]
            w4, w5, w6, w7 = weights[i, k + 4], weights[i, k + 5], weights[i, k + 6], weights[i, k + 7]
            for p in range(length):
                t0[p] += (w0 * y0[p] + w1 * y1[p] + w2 * y2[p] + w3 * y3[p]
                          + w4 * y4[p] + w5 * y5[p] + w6 * y6[p] + w7 * y7[p])
            k += 8
        while k < k1:
            y0 = gop[g_offset[k] + shift:g_offset[k] + shift + length]
            w0 = weights[i, k]
            for p in range(length):
                t0[p] += w0 * y0[p]
            k += 1


@kernel
def _grad_input(gop, weight, dims, tap_row, tap_col, phase_start, phase_taps, exact, grad_x):
    """``grad_x`` from ``gop``: one prange iteration per (group, block of 4 input channels, phase, tile of rows).

    Each iteration gathers into an L1-sized tile of phase-plane rows, then scatters the tile to
    ``grad_x``. With ``exact`` (or inf/NaN weights) each term is summed only where its window
    lies inside dY; otherwise over the whole tile, reading gop's zero border.
    """
    N, groups, oH, oW = dims.images, dims.groups, dims.out_h, dims.out_w
    stride_h, stride_w, top, left = dims.stride_h, dims.stride_w, dims.top, dims.left
    width, gx_rows, gx_row0, gx_col0 = dims.plane_width, dims.gx_rows, dims.gx_row0, dims.gx_col0
    tile_rows, row_tiles, tile_cols, col_tiles = dims.tile_rows, dims.row_tiles, dims.tile_cols, dims.col_tiles
    go_width, go_rows, go_top, go_left = dims.go_width, dims.go_rows, dims.go_top, dims.go_left
    H, W = grad_x.shape[2], grad_x.shape[3]
    C_out, Cg, kH, kW = weight.shape
    out_per_group = C_out // groups
    phases = stride_h * stride_w
    blocks = (Cg + 3) // 4
    go_plane = go_rows * go_width * N
    tiles = row_tiles * col_tiles
    for task in prange(groups * blocks * phases * tiles):
        tile_index = task % tiles
        phase = (task // tiles) % phases
        d0 = 4 * ((task // (tiles * phases)) % blocks)
        group = task // (tiles * phases * blocks)
        channels = min(4, Cg - d0)
        # the tile: rows u0..u1, columns c0..c1 of this phase plane, input channels d0..d0+channels
        u0 = (tile_index // col_tiles) * tile_rows
        u1 = min(gx_rows, u0 + tile_rows)
        c0 = (tile_index % col_tiles) * tile_cols
        c1 = min(width, c0 + tile_cols)
        rows = u1 - u0
        row_len = (c1 - c0) * N
        length = rows * row_len
        tile = np.zeros(channels * length, dtype=grad_x.dtype)
        # terms k = (tap j of this phase) * out_per_group + (output channel in the group): their
        # weights, and the gop index of the dY element under tile element (u0, 0) (may lie outside dY)
        first_tap = phase_start[phase]
        phase_taps_n = phase_start[phase + 1] - first_tap
        terms = out_per_group * phase_taps_n
        weights = np.empty((4, max(terms, 1)), dtype=weight.dtype)
        g_offset = np.empty(max(terms, 1), dtype=np.int64)
        nonfinite = 0
        for j in range(phase_taps_n):
            t = phase_taps[first_tap + j]
            a, b = t // kW, t % kW
            under = ((u0 + gx_row0 - tap_row[t] + go_top) * go_width + gx_col0 - tap_col[t] + go_left) * N
            for m in range(out_per_group):
                k = j * out_per_group + m
                l = group * out_per_group + m
                g_offset[k] = l * go_plane + under
                for i in range(channels):
                    value = weight[l, d0 + i, a, b]
                    weights[i, k] = value
                    nonfinite += not math.isfinite(value)
        restrict = exact or nonfinite > 0
        for item in range(phase_taps_n * rows if restrict else 1):
            if restrict:
                # tap j on tile row u: the columns whose window position is inside dY
                j = item // rows
                u = u0 + item % rows
                t = phase_taps[first_tap + j]
                if u < tap_row[t] - gx_row0 or u >= tap_row[t] - gx_row0 + oH:
                    continue
                v_lo = max(c0, tap_col[t] - gx_col0)
                v_hi = min(c1, tap_col[t] - gx_col0 + oW)
                if v_hi <= v_lo:
                    continue
                o = (u - u0) * row_len + (v_lo - c0) * N
                shift = ((u - u0) * go_width + v_lo) * N
                k0, k1, span = j * out_per_group, (j + 1) * out_per_group, (v_hi - v_lo) * N
            else:
                o, shift, k0, k1, span = 0, 0, 0, terms, length  # one column tile; gop rows as wide as its
            _grad_input_terms(tile, o, length, channels, gop, g_offset, shift, weights, k0, k1, span)
        # scatter: phase-plane (u, v) is input (u*sH + rh - top, v*sW + rw - left)
        rh = phase // stride_w
        rw = phase % stride_w
        v_lo = max(c0, (left - rw + stride_w - 1) // stride_w - gx_col0)
        v_hi = min(c1, (left + W - 1 - rw) // stride_w - gx_col0 + 1)
        q0 = (v_lo + gx_col0) * stride_w + rw - left
        count = max(0, v_hi - v_lo)
        for u in range(u0, u1):
            r = (u + gx_row0) * stride_h + rh - top
            if r < 0 or r >= H:
                continue
            for i in range(channels):
                start = i * length + (u - u0) * row_len + (v_lo - c0) * N
                src = tile[start:start + count * N]
                if N == 1 and stride_w == 1:  # unit stride on both sides
                    dst = grad_x[0, group * Cg + d0 + i, r, q0:q0 + count]
                    for v in range(count):
                        dst[v] = src[v]
                else:
                    for n in range(N):
                        dst = grad_x[n, group * Cg + d0 + i, r, q0:]
                        for v in range(count):
                            dst[v * stride_w] = src[v * N + n]


# ----------------------------------------------------------------------------------------------
# Entry point


def conv2d_backward(grad_out, x, weight, geom, grad_x, grad_w, grad_b):
    """Gradients of the convolution with respect to its input, weight and bias (any may be None).

    ``grad_out`` (N, C_out, oH, oW); ``grad_x`` like ``x``; ``grad_w`` like ``weight``; ``grad_b`` (C_out,).
    The given gradient arrays are uninitialised and are fully written.
    """
    N = geom.batch
    if grad_x is None and grad_w is None and grad_b is None:
        return
    if N == 0:
        if grad_w is not None:
            grad_w[...] = 0
        if grad_b is not None:
            grad_b[...] = 0
        return
    none = np.empty(0, x.dtype)
    grad_b = none if grad_b is None else grad_b
    if grad_x is None and grad_w is None:
        with _jit.launch():
            _pack_grad_out(grad_out, _layout(geom, N).dims, none, grad_b, False)
        return
    chunk = _images_per_chunk(geom, x.dtype.itemsize, get_workspace_limit())
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        _backward_images(grad_out[n0:n1], x[n0:n1], weight, _layout(geom, n1 - n0),
                         None if grad_x is None else grad_x[n0:n1], grad_w, grad_b, n0 > 0)


def backward_workspace_bytes(geom, itemsize):
    """Scratch bytes :func:`conv2d_backward` allocates for ``geom`` with the current thread count.

    ``gop`` for one chunk of images, plus, per thread, the private buffers of a running
    iteration: a block of input channels' phase planes (grad_w) or a 4-channel tile (grad_x).
    """
    if geom.batch == 0:
        return 0
    lay = _layout(geom, _images_per_chunk(geom, itemsize, get_workspace_limit()))
    d = lay.dims
    channel = d.stride_h * d.stride_w * d.x_rows * d.plane_width * lay.n  # one input channel's phase planes
    tile = 4 * d.tile_rows * d.tile_cols * lay.n                           # a tile of 4 input channels
    return int(lay.go_size + numba.get_num_threads() * max(lay.per_task * channel, tile)) * itemsize


@functools.lru_cache(maxsize=128)
def _images_per_chunk(geom, itemsize, limit):
    """Images per chunk so that ``gop`` stays under ``limit`` bytes."""
    return max(1, min(geom.batch, limit // max(1, _layout(geom, 1).go_size * itemsize)))


def _backward_images(grad_out, x, weight, lay, grad_x, grad_w, grad_b, accumulate):
    """Gradients from one chunk of images; ``accumulate`` adds into ``grad_w`` and ``grad_b``."""
    gop = np.empty(lay.go_size, x.dtype)
    with _jit.launch():
        _pack_grad_out(grad_out, lay.dims, gop, grad_b, accumulate)
        if grad_w is not None:
            # Split each block of input channels' output channels into chunks when there are fewer
            # blocks than two tasks per thread: each chunk packs the channels once more, far less
            # work than its dot products. (Which task computes an element never changes its sum.)
            in_blocks = lay.dims.groups * -(-weight.shape[1] // lay.per_task)  # groups x blocks of input channels
            chunks = min(lay.blocks, max(1, -(-2 * numba.get_num_threads() // in_blocks)))
            _grad_weight(x, gop, lay.dims, lay.pair_offset, lay.per_task, chunks, lay.whole_planes, accumulate,
                         grad_w.reshape(weight.shape[0], -1))
        if grad_x is not None:
            _grad_input(gop, weight, lay.dims, lay.tap_row, lay.tap_col, lay.phase_start, lay.phase_taps,
                        not lay.whole_planes, grad_x)
