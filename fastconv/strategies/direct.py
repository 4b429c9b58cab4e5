"""The direct strategy: Numba sliding-window kernels, no im2col.

Forward convolution
-------------------
``Y[n, l, i, j] = b[l] + sum_{d, a, b} Xpad[n, g*Cg + d, i*sH + a*dH, j*sW + b*dW] * W[l, d, a, b]``
is computed as a sum over the ``R = Cg*kH*kW`` kernel taps of *shifted
contiguous rows*: for a fixed tap, the input values that neighbouring output
positions read lie next to each other in memory once the input has the right
layout, so every inner loop is a unit-stride multiply-add
``acc[j] += w * xrow[j]`` that LLVM turns into ``vfmadd231ps`` on ``ymm``
registers (Numba's LLVM prefers 256-bit vectors, also on AVX-512 machines).

Two kernels, chosen from the geometry alone (:func:`conv2d`):

* :func:`_conv_tiles`, the general one. A cheap padded copy of the input
  (:func:`_pack_phases`) removes the stride: it is split into *phase planes*
  ``Xpad[u*sH + rh, v*sW + rw]``, one per phase ``(rh, rw)`` some tap reads,
  and tap ``(a, b)`` then reads phase ``(a*dH % sH, b*dW % sW)`` at the
  stride-1 offset ``(a*dH // sH, b*dW // sW)``. A plane's rows are ``Wq``
  wide (the output width plus the kernel's overhang), so output ``(i, j)`` is
  the flat position ``p = i*Wq + j`` and tap ``t`` reads ``plane[p + offset[t]]``:
  one long unit-stride loop over the whole output plane, whatever the stride,
  dilation or padding. The ``Wq - oW`` extra columns of each row are computed
  and dropped. With stride 1 and no padding the input itself has this layout
  and is read in place (no copy).
  Work is split into tiles of :data:`TILE` positions x blocks of
  :data:`CO_BLOCK` = 8 output channels. A tile's accumulators (8 x 256, 8 KB
  in float32) stay in L1; each pass over the tile applies :data:`TAP_BLOCK` =
  4 taps to the 8 channels, so each loaded input vector feeds 8 FMAs: 32 FMAs
  per 4 input loads + 8 accumulator loads and 8 stores. Channel blocks of 4
  or fewer (depthwise, 1-4 channels per group) run one channel at a time,
  4 taps per pass.
* :func:`_conv_rows`, for convolutions with fewer than 4 output channels per
  group, few taps, long output rows and stride 1 along the width (3x3
  depthwise on large maps, single-channel image filters, 1D depthwise). There
  the padded copy would cost as much as the convolution, so this kernel reads
  the input in place: taps are grouped by the range of output columns they
  reach inside the image (the padding clips it), kernel rows outside the image
  are skipped, and each output row accumulates in place, up to 4 taps per pass.

Parallelism and determinism
---------------------------
Every kernel ``prange``s over independent items: (image, group, tile, channel
block), (image, channel, block of rows) or, for the copy, (image, channel,
phase, block of rows). Each output element is summed by one item in a fixed
order (taps in order, 4 per pass), so results are bitwise the same for every
thread count and for an image alone or within a batch.

Workspace: the padded phase copy, about the size of the padded input (only
the phases that some tap reads: a strided 1x1 convolution copies
``1/(sH*sW)`` of the input). When it would exceed
:func:`fastconv.workspace.get_workspace_limit` the batch is processed in chunks
of images, and a single image too large for the cap in slices of input
channels: each later slice is computed into a temporary of one image's output
and added.

Tuned on the 2-core machine this was written on (Xeon with AVX-512, Numba 0.68,
LLVM 22); the notes at each constant say what was measured.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import prange

from .. import _jit
from .._jit import kernel, output_span
from ..geometry import phase_plane_len, phase_split
from ..workspace import get_workspace_limit
from . import Strategy, _depth

#: Output channels computed together: each loaded input vector feeds this many
#: accumulators. 8 channels x 4 taps (32 broadcast weights; LLVM keeps most in
#: the 32 ymm registers of AVX-512VL and reads the rest as memory operands) was
#: 5-30% faster than 4 x 4 on every benchmark shape that has 8+ channels per group.
#: Re-checked on an AMD EPYC (Zen 3, AVX2: 16 ymm registers), 2026-12-02: LLVM keeps 10 of the
#: 32 broadcast weights in registers and reads 22 as FMA memory operands from the stack (the
#: hot loop: 4 input loads, 8 accumulator loads and stores, 32 ``vfmadd231ps`` on ymm). A
#: register-fitting 4 channels x 3 taps block measured 1.02x / 1.05x / 1.10x / 1.08x / 1.21x
#: the time of 8 x 4 on resnet_3x3_56 / _28 / batch8 / lenet_conv2 / lenet_conv1 and 0.84x on
#: resnet_conv1; 6 x 2 was slower everywhere. 8 x 4 stays.
CO_BLOCK = 8
#: Taps applied per pass over an accumulator tile (the unrolled code in the kernels).
#: 8 taps per pass (with 4 channels) gained nothing over 4.
TAP_BLOCK = 4
#: Flat output positions per tile. 256 (32 ymm vectors per pass) was ~10% faster
#: than 128 (pass setup amortised); 512 was within +-5%.
TILE = 256
#: Slack after each packed channel so that tiles can be rounded up to whole
#: vectors (a plane's positions are rounded up to a multiple of this).
VECTOR = 8
#: Elements a :func:`_pack_phases` iteration copies (about): with one row per
#: iteration, packing the 0.2 MB input of a 512x7x7 layer took 80 us of
#: per-iteration overhead; 4096 (16 KB of float32) halved that.
PACK_ITEM = 4096
#: Output rows per :func:`_conv_rows` iteration (amortises its index arithmetic).
ROWS_PER_ITEM = 8
#: When :func:`_conv_rows` beats a padded copy + :func:`_conv_tiles` (for fewer
#: than 4 output channels per group, stride 1 along the width): rows at least
#: this long and at most this many taps per output. Measured: 3x3 depthwise at
#: 112x112 1.15x faster in rows, 1x512x512 3x3 2.0x, 1D depthwise k=3 L=4000
#: 2.1x; but 3x3 depthwise at 56x56 / 80x80 1.35x / 1.08x slower, 5x5 depthwise
#: 1.45x slower and 16 channels per group 1.2x slower (per-row overhead and
#: more passes).
ROWS_MIN_WIDTH = 96
ROWS_MAX_TAPS = 12

# CO_BLOCK and TAP_BLOCK are facts about the code, not knobs: the hot block of _conv_tiles is
# unrolled by hand for 8 output channels (acc rows a0..a7, weight rows w0..w7) x 4 taps (input
# rows xa..xd, weights w.a..w.d), and its 1-4 channel path for 4 taps. Changing either number
# without rewriting that block would compute wrong sums (or read past the weight padding).
if CO_BLOCK != 8 or TAP_BLOCK != 4:
    raise AssertionError(
        f"fastconv.strategies.direct: _conv_tiles is hand-unrolled for CO_BLOCK = 8 output channels x "
        f"TAP_BLOCK = 4 taps per pass, but CO_BLOCK = {CO_BLOCK} and TAP_BLOCK = {TAP_BLOCK}; "
        f"rewrite the unrolled block before changing them")


# --------------------------------------------------------------------------- kernel arguments
# Numbers a kernel reads are passed as NamedTuples of plain ints (built with int() in the
# wrappers): Numba types each as a homogeneous int64 tuple, so one compiled signature serves
# every call, and the kernels read them by name.


class _PackLayout(NamedTuple):
    """What :func:`_pack_phases` needs to know of the padded input and its phase planes."""

    top: int            # rows of zero padding above the input
    left: int           # columns of zero padding left of the input
    stride_h: int
    stride_w: int
    plane_h: int        # rows of one phase plane
    plane_w: int        # columns of one phase plane (the row pitch of the flat positions)
    rows_per_item: int  # plane rows one prange iteration fills


class _TilesLayout(NamedTuple):
    """What :func:`_conv_tiles` (and :func:`_store_tile`) need to know of the packed input and the output."""

    n_channels: int     # packed channels per image (G*Cg')
    channel_len: int    # elements per packed channel
    groups: int
    row_pitch: int      # flat position p is output (p // row_pitch, p % row_pitch)
    n_positions: int    # flat positions computed per image
    tile_len: int       # flat positions per tile (at most TILE)
    out_h: int          # output rows (oH)
    out_w: int          # output columns (oW); flat columns >= out_w are dropped


class _RowsLayout(NamedTuple):
    """What :func:`_conv_rows` needs besides its tap tables."""

    groups: int
    stride_h: int
    top: int            # rows of zero padding above the input


# --------------------------------------------------------------------------- kernels


@_jit.inlined
def row_pairs(x, row0, col0, layout, row_phases, planes, block):
    """Rows ``block*rows_per_item ..`` of the phase planes of stride 2 along the row, column phases ``rw``
    and ``rw + 1``, of ``row_phases`` (1 or 2) consecutive row phases: ``planes`` holds them one after the
    other (row phase, then column phase). Each input row (``row0 + u*stride_h + j`` of the 2D ``x``) is
    read once, in order, and its even and odd elements dealt out in one vectorised pass: measured on
    ct_stem_3d's 128 input planes, cold caches, Zen 4, 0.5 ms against 1.5 for one pass per phase plane
    (0.9 with one pass per row phase). ``col0``: the input column of plane column 0 of the first plane."""
    H, W = x.shape
    plane_h, plane_w, rows_per_item = layout.plane_h, layout.plane_w, layout.rows_per_item
    plane = plane_h * plane_w
    # plane columns v whose two elements col0 + 2v and col0 + 2v + 1 are both inside the row
    va = min(plane_w, max(0, (1 - col0) // 2))
    vb = max(va, min(plane_w, (W - col0) // 2))
    for u in range(block * rows_per_item, min(plane_h, (block + 1) * rows_per_item)):
        for j in range(row_phases):
            d0 = planes[2 * j * plane + u * plane_w:2 * j * plane + (u + 1) * plane_w]
            d1 = planes[(2 * j + 1) * plane + u * plane_w:(2 * j + 1) * plane + (u + 1) * plane_w]
            row = row0 + u * layout.stride_h + j
            if row < 0 or row >= H:
                d0[:] = 0
                d1[:] = 0
                continue
            src = x[row]
            for v in range(va):  # the columns by the left edge, then those by the right edge
                col = col0 + 2 * v
                d0[v] = src[col] if 0 <= col < W else 0
                d1[v] = src[col + 1] if 0 <= col + 1 < W else 0
            for v in range(vb, plane_w):
                col = col0 + 2 * v
                d0[v] = src[col] if 0 <= col < W else 0
                d1[v] = src[col + 1] if 0 <= col + 1 < W else 0
            pairs = src[col0 + 2 * va:]
            even = d0[va:vb]
            odd = d1[va:vb]
            for v in range(vb - va):
                even[v] = pairs[2 * v]
                odd[v] = pairs[2 * v + 1]


@kernel
def _pack_phases(x, channel_start, groups, layout, phase_h, phase_w, xs):
    """``xs[n, k, s*plane + u*plane_w + v] = Xpad[n, c, u*sH + phase_h[s], v*sW + phase_w[s]]`` (zero outside ``x``).

    ``layout`` is a :class:`_PackLayout`. Packed channel
    ``k`` is input channel ``channel_start + k % width`` of group ``k // width``
    (``width = xs.shape[1] // groups``); the tail of each channel after its phase
    planes is zeroed. One iteration fills ``rows_per_item`` rows of one phase plane.
    """
    top, left = layout.top, layout.left
    stride_h, stride_w = layout.stride_h, layout.stride_w
    plane_h, plane_w = layout.plane_h, layout.plane_w
    rows_per_item = layout.rows_per_item
    C_in, H, W = x.shape[1], x.shape[2], x.shape[3]
    n_images, n_channels, channel_len = xs.shape
    n_phases = phase_h.shape[0]
    plane = plane_h * plane_w
    width = n_channels // groups
    blocks = (plane_h + rows_per_item - 1) // rows_per_item
    for item in prange(n_images * n_channels * n_phases * blocks):
        block = item % blocks
        r1 = item // blocks
        s = r1 % n_phases
        r2 = r1 // n_phases
        k = r2 % n_channels
        n = r2 // n_channels
        c = (k // width) * (C_in // groups) + channel_start + k % width
        if s == n_phases - 1 and block == blocks - 1:
            for v in range(n_phases * plane, channel_len):
                xs[n, k, v] = 0
        rw = phase_w[s]
        if stride_w == 2:  # whole input rows dealt out to two (or, stride 2 x 2, all four) phase planes
            both_rows = stride_h == 2 and n_phases == 4  # phases (0, 0), (0, 1), (1, 0), (1, 1)
            if both_rows or (s + 1 < n_phases and phase_h[s + 1] == phase_h[s] and phase_w[s + 1] == rw + 1):
                if both_rows and s > 0:
                    continue  # phase 0's item fills this plane's rows
                row_pairs(x[n, c], phase_h[s] - top, rw - left, layout, 2 if both_rows else 1,
                          xs[n, k, s * plane:(s + (4 if both_rows else 2)) * plane], block)
                continue
            if s > 0 and phase_h[s - 1] == phase_h[s] and phase_w[s - 1] == rw - 1:
                continue  # the previous phase's item filled this plane's rows
        # plane columns v with 0 <= v*sW + rw - left < W
        v0, v1 = output_span(W, rw - left, stride_w, plane_w)
        first = v0 * stride_w + rw - left
        for u in range(block * rows_per_item, min(plane_h, (block + 1) * rows_per_item)):
            dst = xs[n, k, s * plane + u * plane_w : s * plane + (u + 1) * plane_w]
            row = u * stride_h + phase_h[s] - top
            if row < 0 or row >= H:
                for v in range(plane_w):
                    dst[v] = 0
                continue
            for v in range(v0):
                dst[v] = 0
            for v in range(v1, plane_w):
                dst[v] = 0
            src = x[n, c, row, first:]
            copy = dst[v0:v1]
            if stride_w == 1:
                for v in range(v1 - v0):
                    copy[v] = src[v]
            elif stride_w == 2:  # a constant stride lets LLVM vectorise the gather
                # blocks of 16 with a constant trip count (a short row would otherwise run in the scalar
                # remainder of a loop vectorised 16 wide and unrolled 4 times), then the last few
                whole = (v1 - v0) // 16 * 16
                for b in range(0, whole, 16):
                    for v in range(16):
                        copy[b + v] = src[2 * (b + v)]
                for v in range(whole, v1 - v0):
                    copy[v] = src[2 * v]
            else:
                for v in range(v1 - v0):
                    copy[v] = src[v * stride_w]


@kernel
def _conv_tiles(xs, weight, bias, tap_offset, layout, out):
    """Forward conv over a phase-packed input, one (image, group, tile, channel block) per iteration.

    ``xs`` is the flat ``(N, G*Cg', channel_len)`` packed input, described by
    ``layout`` (a :class:`_TilesLayout`);
    ``tap_offset[d*kH*kW + a*kW + b]`` is tap ``(d, a, b)``'s flat offset from its
    group's first channel; ``weight`` is ``(C_out', Cg'*kH*kW)``, with 8 zero rows
    appended when a block of 5-7 channels can end the array (a block reads 8 rows
    and drops the sums it does not own). ``out`` is ``(N, C_out, oH*oW)``; flat position
    ``p`` is output ``(p // row_pitch, p % row_pitch)`` and columns ``>= oW`` are dropped.
    """
    n_channels, channel_len, groups = layout.n_channels, layout.channel_len, layout.groups
    n_positions, tile_len = layout.n_positions, layout.tile_len
    n_images, C_out = out.shape[0], out.shape[1]
    R = weight.shape[1]
    per_group = n_channels // groups
    out_per_group = C_out // groups
    blocks = (out_per_group + CO_BLOCK - 1) // CO_BLOCK
    tiles = (n_positions + tile_len - 1) // tile_len
    for item in prange(n_images * groups * tiles * blocks):
        block = item % blocks
        r1 = item // blocks
        tile = r1 % tiles
        r2 = r1 // tiles
        g = r2 % groups
        n = r2 // groups
        co = g * out_per_group + block * CO_BLOCK
        count = min(CO_BLOCK, (g + 1) * out_per_group - co)
        p0 = tile * tile_len
        length = min(tile_len, n_positions - p0)
        acc = np.empty((CO_BLOCK, TILE), dtype=xs.dtype)
        for q in range(count):
            b = bias[co + q] if bias.shape[0] > 0 else 0
            for j in range(length):
                acc[q, j] = b
        base = (n * n_channels + g * per_group) * channel_len + p0
        if count > CO_BLOCK // 2:
            # 8 output channels x 4 taps per pass: 32 FMAs per 4 input loads + 8 accumulator loads/stores
            a0 = acc[0]
            a1 = acc[1]
            a2 = acc[2]
            a3 = acc[3]
            a4 = acc[4]
            a5 = acc[5]
            a6 = acc[6]
            a7 = acc[7]
            w0 = weight[co]
            w1 = weight[co + 1]
            w2 = weight[co + 2]
            w3 = weight[co + 3]
            w4 = weight[co + 4]
            w5 = weight[co + 5]
            w6 = weight[co + 6]
            w7 = weight[co + 7]
            for t in range(0, R - TAP_BLOCK + 1, TAP_BLOCK):
                o = base + tap_offset[t]
                xa = xs[o : o + length]
                o = base + tap_offset[t + 1]
                xb = xs[o : o + length]
                o = base + tap_offset[t + 2]
                xc = xs[o : o + length]
                o = base + tap_offset[t + 3]
                xd = xs[o : o + length]
                w0a, w0b, w0c, w0d = w0[t], w0[t + 1], w0[t + 2], w0[t + 3]
                w1a, w1b, w1c, w1d = w1[t], w1[t + 1], w1[t + 2], w1[t + 3]
                w2a, w2b, w2c, w2d = w2[t], w2[t + 1], w2[t + 2], w2[t + 3]
                w3a, w3b, w3c, w3d = w3[t], w3[t + 1], w3[t + 2], w3[t + 3]
                w4a, w4b, w4c, w4d = w4[t], w4[t + 1], w4[t + 2], w4[t + 3]
                w5a, w5b, w5c, w5d = w5[t], w5[t + 1], w5[t + 2], w5[t + 3]
                w6a, w6b, w6c, w6d = w6[t], w6[t + 1], w6[t + 2], w6[t + 3]
                w7a, w7b, w7c, w7d = w7[t], w7[t + 1], w7[t + 2], w7[t + 3]
                for j in range(length):
                    va = xa[j]
                    vb = xb[j]
                    vc = xc[j]
                    vd = xd[j]
                    a0[j] += w0a * va + w0b * vb + w0c * vc + w0d * vd
                    a1[j] += w1a * va + w1b * vb + w1c * vc + w1d * vd
                    a2[j] += w2a * va + w2b * vb + w2c * vc + w2d * vd
                    a3[j] += w3a * va + w3b * vb + w3c * vc + w3d * vd
                    a4[j] += w4a * va + w4b * vb + w4c * vc + w4d * vd
                    a5[j] += w5a * va + w5b * vb + w5c * vc + w5d * vd
                    a6[j] += w6a * va + w6b * vb + w6c * vc + w6d * vd
                    a7[j] += w7a * va + w7b * vb + w7c * vc + w7d * vd
            for t in range(R - R % TAP_BLOCK, R):
                o = base + tap_offset[t]
                xa = xs[o : o + length]
                w0a, w1a, w2a, w3a = w0[t], w1[t], w2[t], w3[t]
                w4a, w5a, w6a, w7a = w4[t], w5[t], w6[t], w7[t]
                for j in range(length):
                    va = xa[j]
                    a0[j] += w0a * va
                    a1[j] += w1a * va
                    a2[j] += w2a * va
                    a3[j] += w3a * va
                    a4[j] += w4a * va
                    a5[j] += w5a * va
                    a6[j] += w6a * va
                    a7[j] += w7a * va
        else:
            # blocks of 1-4 channels, one channel at a time (8-channel passes with
            # dropped rows were 12% slower at 4 channels), 4 taps per pass
            for q in range(count):
                a0 = acc[q]
                w0 = weight[co + q]
                for t in range(0, R - TAP_BLOCK + 1, TAP_BLOCK):
                    o = base + tap_offset[t]
                    xa = xs[o : o + length]
                    o = base + tap_offset[t + 1]
                    xb = xs[o : o + length]
                    o = base + tap_offset[t + 2]
                    xc = xs[o : o + length]
                    o = base + tap_offset[t + 3]
                    xd = xs[o : o + length]
                    w0a, w0b, w0c, w0d = w0[t], w0[t + 1], w0[t + 2], w0[t + 3]
                    for j in range(length):
                        a0[j] += w0a * xa[j] + w0b * xb[j] + w0c * xc[j] + w0d * xd[j]
                for t in range(R - R % TAP_BLOCK, R):
                    o = base + tap_offset[t]
                    xa = xs[o : o + length]
                    w0a = w0[t]
                    for j in range(length):
                        a0[j] += w0a * xa[j]
        _store_tile(acc, count, p0, length, layout, out, n, co)


@kernel(parallel=False)
def _store_tile(acc, count, p0, length, layout, out, n, co):
    """Write the valid columns of an accumulator tile (flat positions ``p0 ..``) to ``out[n, co:co+count]``.

    ``out`` is ``(N, C_out, oH*oW)``; position ``p`` is output ``(p // row_pitch, p % row_pitch)``
    (``layout`` is a :class:`_TilesLayout`).
    """
    row_pitch = layout.row_pitch
    oH, oW = layout.out_h, layout.out_w
    i = p0 // row_pitch
    j = p0 - i * row_pitch
    t = 0
    while t < length and i < oH:
        seg = min(row_pitch - j, length - t)
        valid = min(seg, oW - j)
        if valid > 0:
            for q in range(count):
                src = acc[q, t : t + valid]
                dst = out[n, co + q, i * oW + j : i * oW + j + valid]
                for k in range(valid):
                    dst[k] = src[k]
        t += seg
        i += 1
        j = 0


@kernel(parallel=False)
def _row_taps(y, x, count, oa, ob, oc, od, wa, wb, wc, wd):
    """``y[j] += wa * x[oa + j] + wb * x[ob + j] + ...`` over the first ``count`` (1-4) taps, in one pass.

    A function of its own because LLVM left the 1-3 tap loops scalar when they
    were written inline in :func:`_conv_rows`; compiled separately, every one is
    vectorised.
    """
    length = y.shape[0]
    xa = x[oa : oa + length]
    if count == 4:
        xb = x[ob : ob + length]
        xc = x[oc : oc + length]
        xd = x[od : od + length]
        for j in range(length):
            y[j] += wa * xa[j] + wb * xb[j] + wc * xc[j] + wd * xd[j]
    elif count == 3:
        xb = x[ob : ob + length]
        xc = x[oc : oc + length]
        for j in range(length):
            y[j] += wa * xa[j] + wb * xb[j] + wc * xc[j]
    elif count == 2:
        xb = x[ob : ob + length]
        for j in range(length):
            y[j] += wa * xa[j] + wb * xb[j]
    else:
        for j in range(length):
            y[j] += wa * xa[j]


@kernel
def _conv_rows(x, tap_weight, bias, layout, span_lo, span_len, row_class, class_start, class_taps, tap_shift, out):
    """Forward conv in place, stride 1 along the width: :data:`ROWS_PER_ITEM` output rows of one channel per iteration.

    ``layout`` is a :class:`_RowsLayout`. Taps are grouped into *spans* that reach the
    same output columns ``[span_lo, span_lo + span_len)``. Output row ``i``
    applies, for span ``s``, the taps ``class_taps[class_start[c, s] : class_start[c, s + 1]]``
    with ``c = row_class[i]`` (the taps whose kernel row lies inside the image), 4
    per pass. Tap ``t`` reads flat offset ``tap_shift[t]`` (channel, row and column
    shift) from the row's origin in ``x``, with weight ``tap_weight[l, t]``.
    """
    groups, stride_h, top = layout.groups, layout.stride_h, layout.top
    N, C_in, H, W = x.shape
    C_out, oH = out.shape[1], out.shape[2]
    blocks = (oH + ROWS_PER_ITEM - 1) // ROWS_PER_ITEM
    flat = x.reshape(-1)
    for item in prange(N * C_out * blocks):
        block = item % blocks
        r1 = item // blocks
        co = r1 % C_out
        n = r1 // C_out
        b = bias[co] if bias.shape[0] > 0 else 0
        w = tap_weight[co]
        plane = (n * C_in + (co // (C_out // groups)) * (C_in // groups)) * H * W
        for i in range(block * ROWS_PER_ITEM, min(oH, (block + 1) * ROWS_PER_ITEM)):
            origin = plane + (i * stride_h - top) * W
            y = out[n, co, i]
            for j in range(y.shape[0]):
                y[j] = b
            c = row_class[i]
            for s in range(span_lo.shape[0]):
                ys = y[span_lo[s] : span_lo[s] + span_len[s]]
                base = origin + span_lo[s]
                first = class_start[c, s]
                last = class_start[c, s + 1] - 1
                for k in range(first, last + 1, 4):
                    ta = class_taps[k]
                    tb = class_taps[min(k + 1, last)]
                    tc = class_taps[min(k + 2, last)]
                    td = class_taps[min(k + 3, last)]
                    _row_taps(ys, flat, min(4, last + 1 - k), base + tap_shift[ta], base + tap_shift[tb],
                              base + tap_shift[tc], base + tap_shift[td], w[ta], w[tb], w[tc], w[td])


@kernel
def _depthwise3x3(x, weight, bias, top, left, out):
    """Depthwise 3x3 convolution (one input channel per output channel), stride 1, dilation 1: each
    output row in one vectorised pass of its nine taps (the rows kernel makes three passes, one per
    kernel column, each reading and writing the row).

    ``weight`` is ``(C, 1, 3, 3)``, ``bias`` ``(C,)`` (zeros for none); input rows outside the image read a row of zeros, and the
    columns whose taps leave the image (at most two on each side) are summed one by one.
    """
    N, C, H, W = x.shape
    oH, oW = out.shape[2], out.shape[3]
    lo = min(max(left, 0), oW)          # outputs [lo, hi) read columns j - left .. j - left + 2, all inside
    hi = max(lo, min(oW, W - 2 + left))
    blocks = (oH + ROWS_PER_ITEM - 1) // ROWS_PER_ITEM  # items of a few rows: one plane keeps both cores busy
    for item in prange(N * C * blocks):
        block = item % blocks
        n = item // (C * blocks)
        c = item // blocks - n * C
        k = weight[c, 0]
        k00, k01, k02, k10, k11, k12, k20, k21, k22 = (k[0, 0], k[0, 1], k[0, 2], k[1, 0], k[1, 1], k[1, 2],
                                                       k[2, 0], k[2, 1], k[2, 2])
        b = bias[c]
        zero = np.zeros(W, dtype=x.dtype)
        plane = x[n, c]
        for i in range(block * ROWS_PER_ITEM, min(oH, (block + 1) * ROWS_PER_ITEM)):
            r = i - top
            ra = plane[r] if 0 <= r < H else zero
            rb = plane[r + 1] if 0 <= r + 1 < H else zero
            rc = plane[r + 2] if 0 <= r + 2 < H else zero
            y = out[n, c, i, lo:hi]
            a0, a1, a2 = ra[lo - left:hi - left], ra[lo - left + 1:hi - left + 1], ra[lo - left + 2:hi - left + 2]
            b0, b1, b2 = rb[lo - left:hi - left], rb[lo - left + 1:hi - left + 1], rb[lo - left + 2:hi - left + 2]
            c0, c1, c2 = rc[lo - left:hi - left], rc[lo - left + 1:hi - left + 1], rc[lo - left + 2:hi - left + 2]
            for j in range(hi - lo):
                y[j] = (b + k00 * a0[j] + k01 * a1[j] + k02 * a2[j] + k10 * b0[j] + k11 * b1[j] + k12 * b2[j]
                        + k20 * c0[j] + k21 * c1[j] + k22 * c2[j])
            y = out[n, c, i]
            for edge in range(2):  # the edge columns [0, lo) and [hi, oW) (looping over all with a skip cost 4x)
                for j in range(0 if edge == 0 else hi, lo if edge == 0 else oW):
                    acc = b
                    for t in range(3):
                        q = j - left + t
                        if 0 <= q < W:
                            acc += k[0, t] * ra[q] + k[1, t] * rb[q] + k[2, t] * rc[q]
                    y[j] = acc


@kernel
def add_bias(y, bias):
    """``y[n, c, :] += bias[c]`` for ``y`` (N, C, positions), C-contiguous: one (image, channel) row per
    iteration, vectorised (NumPy's broadcast add took 88 us for upsample1d's 2 MB result on Zen 4,
    single-threaded; the transposed convolutions add their bias so)."""
    N, C, P = y.shape
    for item in prange(N * C):
        row = y[item // C, item % C]
        b = bias[item % C]
        for j in range(P):
            row[j] += b


def _uses_depthwise3x3(geom):
    """:func:`_depthwise3x3` for depthwise 3x3 layers (one channel per group, in and out), stride and dilation 1."""
    return (geom.groups == geom.in_channels == geom.out_channels and geom.kernel == (3, 3)
            and geom.stride == (1, 1) and geom.dilation == (1, 1))


# --------------------------------------------------------------------------- planning


def _uses_rows_kernel(geom):
    """:func:`_conv_rows` for unblockable channels (< 4 per group), stride 1 along the width, long rows, few taps."""
    out_per_group = geom.out_channels // geom.groups
    taps = geom.in_channels // geom.groups * geom.kernel[0] * geom.kernel[1]
    return (geom.stride[1] == 1 and out_per_group < CO_BLOCK // 2 and geom.out_size[1] >= ROWS_MIN_WIDTH
            and taps <= ROWS_MAX_TAPS)


class _RowsPlan(NamedTuple):
    """The tap tables of :func:`_conv_rows` for one geometry (see :func:`_row_plan`); int64 arrays."""

    span_lo: np.ndarray       # (spans,) first output column a span's taps reach
    span_len: np.ndarray      # (spans,) output columns they reach
    row_class: np.ndarray     # (oH,) row class of each output row
    class_start: np.ndarray   # (classes, spans + 1): class c's taps of span s start at class_start[c, s]
    class_taps: np.ndarray    # tap indices, by class then span
    tap_shift: np.ndarray     # (taps,) flat offset of a tap's input from the row's origin
    tap_channel: np.ndarray   # (taps,) input channel d of each tap in its group: the weight is W[:, d, a, b]
    tap_row: np.ndarray       # (taps,) kernel row a
    tap_col: np.ndarray       # (taps,) kernel column b


@functools.lru_cache(maxsize=64)
def _row_plan(geom):
    """Tap tables of :func:`_conv_rows` (see its docstring) as a :class:`_RowsPlan`.

    Taps are ordered by span (kernel columns reaching the same output columns),
    then kernel column, channel, kernel row. Output rows whose kernel rows fall
    inside the image in the same way share a *row class* and a list of taps.
    """
    per_group = geom.in_channels // geom.groups
    kH, kW = geom.kernel
    sH = geom.stride[0]
    dH, dW = geom.dilation
    top, left = geom.padding[0][0], geom.padding[1][0]
    H, W = geom.in_size
    oH, oW = geom.out_size
    by_range = {}
    for b in range(kW):
        shift = b * dW - left
        lo, hi = max(0, -shift), min(oW, W - shift)
        if hi > lo:
            by_range.setdefault((lo, hi), []).append(b)
    span_lo = np.array([lo for lo, _ in by_range], dtype=np.int64)
    span_len = np.array([hi - lo for lo, hi in by_range], dtype=np.int64)
    taps = [(s, d, a, b) for s, cols in enumerate(by_range.values()) for b in cols for d in range(per_group)
            for a in range(kH)]
    span, d, a, b = (np.array([t[k] for t in taps], dtype=np.int64).reshape(-1) for k in range(4))
    tap_shift = d * H * W + a * dH * W + b * dW - left
    rows = np.arange(oH)[:, None] * sH - top + np.arange(kH)[None, :] * dH
    inside, row_class = np.unique((rows >= 0) & (rows < H), axis=0, return_inverse=True)
    class_start = np.zeros((len(inside), len(span_lo) + 1), dtype=np.int64)
    class_taps = []
    for c, rows_in in enumerate(inside):
        class_start[c, 0] = len(class_taps)
        for s in range(len(span_lo)):
            class_taps += [t for t in range(len(taps)) if span[t] == s and rows_in[a[t]]]
            class_start[c, s + 1] = len(class_taps)
    return _RowsPlan(span_lo=span_lo, span_len=span_len, row_class=row_class.reshape(-1).astype(np.int64),
                     class_start=class_start, class_taps=np.array(class_taps, dtype=np.int64), tap_shift=tap_shift,
                     tap_channel=d, tap_row=a, tap_col=b)


class _Phases(NamedTuple):
    """The phase planes the taps of one geometry read (see :func:`_phase_layout`)."""

    phase_h: np.ndarray       # (phases,) row phase rh of each plane
    phase_w: np.ndarray       # (phases,) column phase rw of each plane
    plane_h: int              # rows of one phase plane
    plane_w: int              # columns of one phase plane
    tap_in_plane: np.ndarray  # (kH*kW,) offset of tap (a, b) inside one packed channel, at a*kW + b


@functools.lru_cache(maxsize=64)
def _phase_layout(geom):
    """Phase planes the taps read, as :class:`_Phases`.

    ``tap_in_plane[a*kW + b]`` is tap ``(a, b)``'s offset inside one packed channel.
    """
    kH, kW = geom.kernel
    sH, sW = geom.stride
    dH, dW = geom.dilation
    oH, oW = geom.out_size
    plane_h, plane_w = phase_plane_len(oH, kH, sH, dH), phase_plane_len(oW, kW, sW, dW)
    phase_a, offset_a = phase_split(kH, sH, dH)
    phase_b, offset_b = phase_split(kW, sW, dW)
    phases = [(rh, rw) for rh in sorted(set(phase_a)) for rw in sorted(set(phase_b))]
    slot = {p: k for k, p in enumerate(phases)}
    plane = plane_h * plane_w
    tap = np.empty(kH * kW, dtype=np.int64)
    for a in range(kH):
        for b in range(kW):
            tap[a * kW + b] = slot[(phase_a[a], phase_b[b])] * plane + offset_a[a] * plane_w + offset_b[b]
    phase_h = np.array([p[0] for p in phases], dtype=np.int64)
    phase_w = np.array([p[1] for p in phases], dtype=np.int64)
    return _Phases(phase_h=phase_h, phase_w=phase_w, plane_h=plane_h, plane_w=plane_w, tap_in_plane=tap)


@functools.lru_cache(maxsize=64)
def _in_place_phases(geom):
    """The input itself as the one phase plane (stride 1, no padding): ``H x W``, tap ``(a, b)`` at ``a*dH*W + b*dW``."""
    kH, kW = geom.kernel
    dH, dW = geom.dilation
    H, W = geom.in_size
    zero = np.zeros(1, dtype=np.int64)
    return _Phases(phase_h=zero, phase_w=zero, plane_h=H, plane_w=W,
                   tap_in_plane=(np.arange(kH)[:, None] * dH * W + np.arange(kW)[None, :] * dW).reshape(-1))


def _tap_offsets(tap_in_plane, channels, channel_len):
    """Flat offset of tap ``(d, a, b)`` from a group's first channel, ``d`` in ``range(channels)``."""
    return (np.arange(channels, dtype=np.int64)[:, None] * channel_len + tap_in_plane[None, :]).reshape(-1)


class _TilesPlan(NamedTuple):
    """How :func:`conv2d` runs :func:`_conv_tiles` for one geometry (see :func:`_tiles_plan`)."""

    packed: bool            # False: the input is read in place
    phase_h: np.ndarray     # phases of the packed copy
    phase_w: np.ndarray
    plane_h: int
    plane_w: int            # row pitch of the flat positions
    channel_len: int        # elements per packed channel
    n_positions: int        # flat positions computed per image
    tile_len: int
    offsets: np.ndarray     # tap offsets for a slice of `width` channels
    images: int             # images per chunk of the packed copy
    width: int              # input channels per group per slice
    rows_per_item: int      # rows per iteration of the packing kernel


@functools.lru_cache(maxsize=64)
def _tiles_plan(geom, itemsize, limit):
    """Layout, tiling and chunking of :func:`_conv_tiles` for ``geom`` (a pure function of its arguments)."""
    H, W = geom.in_size
    oH, oW = geom.out_size
    per_group = geom.in_channels // geom.groups
    if geom.stride == (1, 1) and geom.padding == ((0, 0), (0, 0)):
        # The input already has the layout: one phase, rows of width W, read in place.
        phases = _in_place_phases(geom)
        taps, phase_h, phase_w = phases.tap_in_plane, phases.phase_h, phases.phase_w
        packed, plane_h, plane_w, channel_len = False, H, W, H * W
        n_positions = (oH - 1) * W + oW
        images, width = geom.batch, per_group
    else:
        phases = _phase_layout(geom)
        phase_h, phase_w, plane_h, plane_w, taps = (phases.phase_h, phases.phase_w, phases.plane_h, phases.plane_w,
                                                    phases.tap_in_plane)
        packed = True
        channel_len = phase_h.size * plane_h * plane_w + VECTOR
        n_positions = -(-((oH - 1) * plane_w + oW) // VECTOR) * VECTOR
        per_image = geom.in_channels * channel_len * itemsize
        if per_image <= limit:
            images, width = max(1, min(geom.batch, limit // per_image)), per_group
        else:
            images, width = 1, max(1, min(per_group, limit // (geom.groups * channel_len * itemsize)))
    tiles = -(-n_positions // TILE)
    tile_len = min(TILE, -(-n_positions // (tiles * VECTOR)) * VECTOR)
    return _TilesPlan(packed=packed, phase_h=phase_h, phase_w=phase_w, plane_h=plane_h, plane_w=plane_w,
                      channel_len=channel_len, n_positions=n_positions, tile_len=tile_len,
                      offsets=_tap_offsets(taps, width, channel_len), images=images, width=width,
                      rows_per_item=max(1, PACK_ITEM // plane_w))


#: The empty bias the kernels take for "no bias", per dtype (read, never written).
_NO_BIAS = {np.dtype(t).char: np.empty(0, dtype=t) for t in (np.float32, np.float64)}


@functools.lru_cache(maxsize=256)
def _tiles_layout(n_channels, channel_len, groups, row_pitch, n_positions, tile_len, out_h, out_w):
    """The :class:`_TilesLayout` of a launch, built once per distinct launch shape."""
    return _TilesLayout(n_channels=int(n_channels), channel_len=int(channel_len), groups=int(groups),
                        row_pitch=int(row_pitch), n_positions=int(n_positions), tile_len=int(tile_len),
                        out_h=int(out_h), out_w=int(out_w))


def _run_tiles(xs, weight, bias, offsets, groups, plan, out):
    """Launch :func:`_conv_tiles` on ``xs`` (N, G*Cg', channel_len) into ``out`` (N, C_out, oH, oW)."""
    if (weight.shape[0] // groups) % CO_BLOCK > CO_BLOCK // 2:
        # blocks of 5-7 channels read 8 weight rows: give the last block rows to read
        weight = np.concatenate([weight, np.zeros((CO_BLOCK, weight.shape[1]), dtype=weight.dtype)])
    layout = _tiles_layout(xs.shape[1], xs.shape[2], groups, plan.plane_w, plan.n_positions, plan.tile_len,
                           out.shape[2], out.shape[3])
    work = out.size * offsets.size  # multiply-adds: each output sums one tap per offset
    with _jit.launch():
        _jit.sized(_conv_tiles, work)(xs.reshape(-1), weight, bias, offsets, layout,
                                      out.reshape(out.shape[0], out.shape[1], -1))


# --------------------------------------------------------------------------- public


def conv2d(x, weight, bias, geom, out):
    """Direct sliding-window convolution into ``out`` (see the module docstring for the method)."""
    N, C_in, H, W = x.shape
    C_out, per_group, kH, kW = weight.shape
    G = geom.groups
    (top, _), (left, _) = geom.padding
    sH, sW = geom.stride
    if not x.flags.c_contiguous:  # channels-last memory (fastconv.conv: Strategy.channels_last)
        if not (_simd_direct.supports(geom) and _simd_direct.guarded(_simd_direct.conv2d, x, weight, bias, geom,
                                                                      out)):
            first = np.empty(out.shape, dtype=out.dtype)  # a layer the channels-last kernel does not run
            conv2d(np.ascontiguousarray(x), weight, bias, geom, first)
            out[...] = first
        return
    if _simd_direct.planar_supports(geom) and _simd_direct.guarded(_simd_direct.conv2d_planar, x, weight, bias,
                                                                   geom, out):
        return
    if bias is None:
        bias = _NO_BIAS[x.dtype.char]
    if _uses_depthwise3x3(geom):
        b = bias if bias.shape[0] else np.zeros(C_out, dtype=x.dtype)  # (a float64 zero would widen the sums)
        with _jit.launch():
            _jit.sized(_depthwise3x3, geom.flops // 2)(x, weight, b, int(top), int(left), out)
        return
    if _uses_rows_kernel(geom):
        rows = _row_plan(geom)
        tap_weight = np.ascontiguousarray(weight[:, rows.tap_channel, rows.tap_row, rows.tap_col])
        layout = _RowsLayout(groups=int(G), stride_h=int(sH), top=int(top))
        with _jit.launch():
            _conv_rows(x, tap_weight, bias, layout, rows.span_lo, rows.span_len, rows.row_class, rows.class_start,
                       rows.class_taps, rows.tap_shift, out)
        return
    plan = _tiles_plan(geom, x.itemsize, get_workspace_limit())
    if not plan.packed:
        _run_tiles(x.reshape(N, C_in, H * W), weight.reshape(C_out, -1), bias, plan.offsets, G, plan, out)
        return
    layout = _PackLayout(top=int(top), left=int(left), stride_h=int(sH), stride_w=int(sW), plane_h=int(plan.plane_h),
                         plane_w=int(plan.plane_w), rows_per_item=int(plan.rows_per_item))
    buffer = np.empty(plan.images * G * plan.width * plan.channel_len, dtype=x.dtype)
    for n0 in range(0, N, plan.images):
        n1 = min(N, n0 + plan.images)
        for d0 in range(0, per_group, plan.width):
            d1 = min(per_group, d0 + plan.width)
            xs = buffer[: (n1 - n0) * G * (d1 - d0) * plan.channel_len].reshape(n1 - n0, -1, plan.channel_len)
            with _jit.launch():
                _jit.sized(_pack_phases, xs.size)(x[n0:n1], d0, G, layout, plan.phase_h, plan.phase_w, xs)
            w = (weight if d1 - d0 == per_group else np.ascontiguousarray(weight[:, d0:d1])).reshape(C_out, -1)
            offsets = plan.offsets[: (d1 - d0) * kH * kW]
            if d0 == 0:
                _run_tiles(xs, w, bias, offsets, G, plan, out[n0:n1])
            else:  # a later slice of input channels: add its part of the sum
                part = np.empty_like(out[n0:n1])
                _run_tiles(xs, w, np.empty(0, dtype=x.dtype), offsets, G, plan, part)
                out[n0:n1] += part


def workspace_bytes(geom, itemsize):
    """Scratch bytes :func:`conv2d` allocates for ``geom``: the packed phase copy (0 when it reads in place)."""
    if geom.layout == "channels_last" and _simd_direct.supports(geom):
        return _simd_direct.workspace_bytes(geom, itemsize)
    if _simd_direct.planar_supports(geom):
        return _simd_direct.planar_workspace_bytes(geom, itemsize)
    if _uses_depthwise3x3(geom) or _uses_rows_kernel(geom):
        return 0
    plan = _tiles_plan(geom, itemsize, get_workspace_limit())
    if not plan.packed:
        return 0
    return plan.images * geom.groups * plan.width * plan.channel_len * itemsize


# pooling and backward kernels are imported at the bottom
from . import _direct_backward, _simd_direct  # noqa: E402


def conv2d_backward(grad_out, x, weight, geom, grad_x, grad_w, grad_b):
    """Gradients of :func:`conv2d`: dL/dx of a stride-1 convolution on the register-tiled kernel (a
    convolution of ``grad_out`` with the flipped kernel) where it applies, a depthwise 3x3 layer's on
    :func:`_depthwise3x3` (the same flip), the rest in :mod:`._direct_backward`."""
    if grad_x is not None and geom.batch and _uses_depthwise3x3(geom):
        (top, _), (left, _) = geom.padding
        flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1])
        with _jit.launch():
            _jit.sized(_depthwise3x3, geom.flops // 2)(grad_out, flipped, np.zeros(geom.in_channels, grad_x.dtype),
                                                        2 - int(top), 2 - int(left), grad_x)
        grad_x = None
    if grad_x is not None and geom.batch and _simd_direct.input_gradient(grad_out, weight, geom, grad_x):
        grad_x = None
    _direct_backward.conv2d_backward(grad_out, x, weight, geom, grad_x, grad_w, grad_b)


from . import _pool_kernels, _pool_last  # noqa: E402
from ._pool_kernels import depth_max  # noqa: E402


# Pooling reads either memory in place: NCHW with the kernels of _pool_kernels, channels-last
# (Strategy.channels_last) with those of _pool_last. The problem's layout says which
# (fastconv.pool gives channels-last arrays a channels-last problem, copies a channels-first one).


def max_pool2d(x, geom, out, indices):
    """Max pooling (:mod:`._pool_kernels`; over channels-last memory :mod:`._pool_last`)."""
    if geom.layout == "channels_last":
        _pool_last.max_pool2d(x, geom, out, indices)
    else:
        _pool_kernels.max_pool2d(x, geom, out, indices)


def avg_pool2d(x, geom, out):
    """Average pooling (:mod:`._pool_kernels`; over channels-last memory :mod:`._pool_last`)."""
    if geom.layout == "channels_last":
        _pool_last.avg_pool2d(x, geom, out)
    else:
        _pool_kernels.avg_pool2d(x, geom, out)


def max_pool2d_backward(grad_out, indices, geom, grad_x):
    """Max pooling's scatter (:mod:`._pool_kernels`; over channels-last memory :mod:`._pool_last`)."""
    if geom.layout == "channels_last":
        _pool_last.max_pool2d_backward(grad_out, indices, geom, grad_x)
    else:
        _pool_kernels.max_pool2d_backward(grad_out, indices, geom, grad_x)


def avg_pool2d_backward(grad_out, geom, grad_x):
    """Average pooling's gather (:mod:`._pool_kernels`; over channels-last memory :mod:`._pool_last`)."""
    if geom.layout == "channels_last":
        _pool_last.avg_pool2d_backward(grad_out, geom, grad_x)
    else:
        _pool_kernels.avg_pool2d_backward(grad_out, geom, grad_x)


from ._adaptive_kernels import (  # noqa: E402
    adaptive_avg_pool, adaptive_avg_pool_backward, adaptive_max_pool, adaptive_max_pool_backward)



def _bind_conv(geom, dtype):
    """:func:`conv2d` on a problem it runs on :func:`_depthwise3x3`, or a small one it runs on
    :func:`_conv_tiles` in place (stride 1, no padding, no register-tiled kernel), as a function of
    the arrays (``Strategy.bind``), on the kernel's serial twin where the work is small
    (:func:`fastconv._jit.pick`); None for any other problem."""
    if _simd_direct.planar_supports(geom):
        return None
    if _uses_depthwise3x3(geom):  # (single-channel 3x3 filters too: the per-call benchmark's layer)
        depthwise = _jit.pick(_depthwise3x3, geom.flops // 2)
        zeros = np.zeros(geom.out_channels, dtype=dtype)
        (top, _), (left, _) = geom.padding

        def run_depthwise(x, weight, bias, out):
            depthwise(x, weight, zeros if bias is None else bias, top, left, out)
        return run_depthwise
    if _uses_rows_kernel(geom):
        return None
    plan = _tiles_plan(geom, dtype.itemsize, get_workspace_limit())
    if plan.packed:
        return None
    N, C_in, H, W = geom.input_shape
    C_out, G = geom.out_channels, geom.groups
    oH, oW = geom.out_size
    layout = _tiles_layout(C_in, H * W, G, plan.plane_w, plan.n_positions, plan.tile_len, oH, oW)
    kernel = _jit.pick(_conv_tiles, geom.flops // 2)
    no_bias, offsets = _NO_BIAS[dtype.char], plan.offsets
    padded = (C_out // G) % CO_BLOCK > CO_BLOCK // 2  # as _run_tiles: the last block reads 8 weight rows

    def run(x, weight, bias, out):
        w = weight.reshape(C_out, -1)
        if padded:
            w = np.concatenate([w, np.zeros((CO_BLOCK, w.shape[1]), dtype=w.dtype)])
        kernel(x.reshape(-1), w, no_bias if bias is None else bias, offsets, layout, out.reshape(N, C_out, -1))
    return run


def _bind(op, geom, dtype):
    """``Strategy.bind``: rank-2 channels-first problems' forward ops with their plans looked up once."""
    if geom.rank != 2 or geom.layout != "channels_first":
        return None
    if op == "max_pool":
        return _pool_kernels.bind_max_pool2d(geom, dtype)
    if op == "avg_pool":
        return _pool_kernels.bind_avg_pool2d(geom, dtype)
    if op == "conv":
        return _bind_conv(geom, dtype)
    return None


_depth_conv = _depth.conv(conv2d)


def _conv_any_rank(x, weight, bias, geom, out):
    """Rank 2 as :func:`conv2d`; rank 3 on the planar tile kernel with the depth taps as its steps where it runs
    (:func:`._simd_direct.conv3d_planar`), else as 2D problems over a gathered copy of the depth taps
    (:mod:`._depth`)."""
    if (geom.rank == 3 and x.flags.c_contiguous and out.flags.c_contiguous and _simd_direct.planar3d_supports(geom)
            and _simd_direct.guarded(_simd_direct.conv3d_planar, x, weight, bias, geom, out)):
        return None
    return _depth_conv(x, weight, bias, geom, out)


def _workspace(op, geom, itemsize):
    if geom.rank == 3 and op == "conv" and _simd_direct.planar3d_supports(geom):
        return _simd_direct.planar3d_workspace_bytes(geom, itemsize)
    if geom.rank == 3 and op.startswith("conv"):
        return _depth.workspace_bytes(geom, itemsize, lambda plane: _workspace(op, plane, itemsize))
    if op == "conv":
        return workspace_bytes(geom, itemsize)
    if op == "conv_backward":
        from ._direct_backward import backward_workspace_bytes

        return backward_workspace_bytes(geom, itemsize)
    return 0


STRATEGY = Strategy(
    name="direct",
    summary="Numba kernels computing each output row in place, no im2col buffer",
    ranks=(2, 3),
    ops={**_depth.ops(conv2d, conv2d_backward, max_pool2d, max_pool2d_backward, avg_pool2d, avg_pool2d_backward),
         "conv": _conv_any_rank,
         "max_pool": _depth.max_pool(max_pool2d, depth_max),  # 3D: the depth step compiled too
         # adaptive pooling: one kernel per op for ranks 2 and 3 (see _adaptive_kernels)
         "adaptive_max_pool": adaptive_max_pool, "adaptive_max_pool_backward": adaptive_max_pool_backward,
         "adaptive_avg_pool": adaptive_avg_pool, "adaptive_avg_pool_backward": adaptive_avg_pool_backward},
    workspace_bytes=_workspace,
    channels_last=True,
    bind=_bind,
)
