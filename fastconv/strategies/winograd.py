"""The ``winograd`` strategy: 3x3, stride-1 convolutions with fewer multiplications.

Winograd's minimal filtering (Lavin & Gray, 2016): an ``m x m`` tile of outputs of a 3x3
correlation is ``A^T [(G g G^T) o (B^T d B)] A`` for the ``(m+2) x (m+2)`` input tile ``d``;
summed over input channels in the transformed domain, a layer becomes ``(m+2)^2`` independent
matrix products of (tiles x C_in) by (C_in x C_out). F(4x4, 3x3) does 36 multiplications where a
direct convolution does 144 (4x fewer); F(2x2, 3x3) 16 for 36 (2.25x). float32 uses F(4x4) where a
call has enough 4x4 tiles (:data:`F4_MIN_TILES`) and F(2x2) on smaller maps; float64 F(2x2)
(F(4x4)'s transforms cost float64 more digits than its speed is worth there). float32 1D layers with 3
taps (1 x 3 kernels, lifted to height 1; also 2D layers with such kernels, row by row) run F(6, 3) along
rows: 8 multiplications for 6 outputs where direct does 18 (:func:`_row_kernel`).

The price is rounding: the transforms mix values of different sizes. Measured against a
float64 reference (``ERROR_BOUND``), float32 F(4x4) errs by up to ~1.5e-5 of the output's scale
(direct: ~4e-6 on the same data), so ``auto`` and ``measure`` consider this strategy only under
the precision setting ``"high"`` (the default; :func:`fastconv.set_precision`), and
``method="winograd"`` always runs it. A NaN or infinity in the input reaches every output of the
tiles whose input patch holds it (the transforms mix the whole patch), not only the outputs whose
windows hold it; under ``"highest"`` ``auto`` never runs this strategy.

Layouts (one call): the input is packed into a zero-padded channels-last copy ``xp[n, h, w, c]``
(channels padded to whole vectors, rows and columns to whole tiles); the weights are transformed
into ``u[cb, xi, c, k]`` (blocks of 2 vectors of output channels, padded with zeros). The fused
kernels (``tools/gen_winograd.py`` writes them) then run per item: an image, a group of R tiles
(R = the register tile's rows), a chunk of output-channel blocks. Channels-last input is packed
pixel by pixel (no transposition) and its result stored as vectors of channels. dL/dx of the
backward is the same kernel on ``dy`` with the flipped, transposed weights; 3D layers run as one
2D problem whose channels are (channel, depth tap) pairs (:mod:`._depth`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from .. import _jit, _simd
from .._jit import kernel, output_span
from .._prepared import kept, prepared
from ..workspace import get_workspace_limit, scratch
from ..geometry import phase_problems
from . import Strategy, _depth, _winograd_kernels

#: Measured error bound, max |y - y64| / max |y64| (y64: the float64 direct result on the same
#: rounded inputs), per dtype: 60 random layers (1-512 input and 1-128 output channels, 3x3 to
#: 60x60 maps; normal, uniform and offset data) gave at most 1.5e-5 for float32 F(4x4) and 7.2e-15
#: for float64 F(2x2), against direct's 4.1e-6 and 0 (Zen 4, 2026-12-05); these leave 3x headroom.
#: tests/test_winograd.py holds the kernels to them. The error is relative to the summed terms: where a
#: handful of outputs cancel to near zero (one 1x1 output of 14 channels' sums) it is measured against
#: the terms' scale (the same sums of absolute values), as any rounding bound is.
ERROR_BOUND = {"float32": 5e-5, "float64": 2e-14}

#: float32 uses F(4x4, 3x3) from this many 4x4 output tiles per call (over the batch), F(2x2, 3x3)
#: below (16 tiles fill a 14-tile register tile badly: resnet_3x3_14 ran 0.6x PyTorch with F(4x4));
#: float64 always F(2x2, 3x3).
F4_MIN_TILES = 49

#: Items per thread the kernel aims at (an item is an image x a group of tiles x a chunk of
#: output-channel blocks; chunks are split only as far as this needs).
ITEMS_PER_THREAD = 4


class WinogradLayout(NamedTuple):
    """What the fused kernel needs to know of a call (all ints)."""

    images: int
    channels: int        # input channels, padded to whole vectors
    in_h: int            # rows of the padded copy: tiles_h * m + r - 1 (or more, shared by several problems)
    in_w: int            # columns of the padded copy: tiles_w * m + r - 1 (or more)
    row0: int            # the copy's row and column of this problem's first input tile
    col0: int
    tiles_h: int
    tiles_w: int
    co_blocks: int       # blocks of 2 vectors of output channels
    chunk_blocks: int    # blocks per work item
    co_chunks: int       # chunks of blocks
    out_channels: int
    out_h: int
    out_w: int
    out_image: int       # element strides of the result: (n, c, i, j) is at
    out_channel: int     # n*out_image + c*out_channel + i*out_row + j*out_col
    out_row: int         # (out_channel == 1: channels-last memory, stored as vectors)
    out_col: int
    work_len: int        # scratch per thread: V (a^2 x R x channels), M (a^2 x R x block), a tile, a transform


def tile(geom) -> int:
    """The output tile ``m`` of F(m x m, r x r) for the rank-2 problem ``geom``: for 3x3 kernels see
    :data:`F4_MIN_TILES`; 2x2 kernels F(4x4, 2x2) in float32, F(3x3, 2x2) in float64; 1 x 3 kernels
    (:func:`_row_kernel`) :data:`ROW_TILE` outputs along the row."""
    if _row_kernel(geom):
        return ROW_TILE
    if geom.kernel[-1] == 2:
        return 4 if geom.dtype == "float32" else 3
    if geom.dtype != "float32":
        return 2
    oH, oW = geom.out_size[-2:]
    return 4 if geom.batch * -(-oH // 4) * -(-oW // 4) >= F4_MIN_TILES else 2


def _variant(dtype, m, r, row=False):
    """``(name, kernel, lanes, rows)`` of the generated F(m x m, r x r) kernel for ``dtype`` on this CPU (with
    ``row``: F(m, r) along rows, for 1 x r kernels)."""
    name = f"_winograd_{'f32' if np.dtype(dtype) == np.float32 else 'f64'}_m{m}_k{'1x' if row else ''}{r}_{_simd.ISA}"
    _, lanes, _, _, rows = _winograd_kernels.KERNELS[name]
    return name, getattr(_winograd_kernels, name), lanes, rows


#: Kernel sizes the generated kernels transform (square, in the last two axes).
KERNEL_SIZES = (2, 3)


def _square(geom) -> bool:
    """A stride-1, dilation-1 problem with a 3x3 or 2x2 kernel in the last two axes."""
    plane = slice(-2, None)
    kH, kW = geom.kernel[plane]
    return (kH == kW and kH in KERNEL_SIZES and tuple(geom.stride[plane]) == (1, 1)
            and tuple(geom.dilation[plane]) == (1, 1))


#: F(m, 3) along rows (1D layers, 1 x 3 kernels; float32): 6 outputs per tile, 8 multiplications where
#: direct does 18.
ROW_TILE = 6


def _row_kernel(geom) -> bool:
    """A float32 rank-2 problem with a 1 x 3 kernel, stride 1, dilation 1 and no row padding: a 1D layer
    (lifted to height 1) or a 2D one whose rows are independent 1D problems."""
    return (geom.rank == 2 and geom.dtype == "float32" and tuple(geom.kernel) == (1, 3)
            and tuple(geom.stride) == (1, 1) and tuple(geom.dilation) == (1, 1) and tuple(geom.padding[0]) == (0, 0))


def _plane(geom) -> bool:
    """A problem the fused kernels run as it is: :func:`_square` or :func:`_row_kernel`."""
    return _square(geom) or _row_kernel(geom)


def supports(op, geom) -> bool:
    """``conv`` and ``conv_backward`` with 3x3 or 2x2 kernels, stride 1 and dilation 1 (in the last two
    axes for rank 3: the depth taps become channels, :mod:`._depth`); ``conv_backward`` of rank 2 also
    with strides whose phases of dL/dx are such problems (:func:`_input_gradient_problems`: a 4x4
    kernel with stride 2, a transposed convolution's usual up-sampling); one group, float32/float64,
    with the SIMD layer on."""
    if (op not in ("conv", "conv_backward") or geom.groups != 1 or geom.dtype not in ("float32", "float64")
            or not _simd.AVAILABLE):
        return False
    if _plane(geom) or (op == "conv" and _strided(geom)):
        return True
    return op == "conv_backward" and geom.rank == 2 and _input_gradient_problems(geom) is not None


@functools.lru_cache(maxsize=64)
def _layout(geom, threads, m):
    r, row = geom.kernel[-1], _row_kernel(geom)
    _, _, lanes, rows = _variant(geom.dtype, m, r, row)
    oH, oW = geom.out_size
    tiles_h, tiles_w = (oH if row else -(-oH // m)), -(-oW // m)
    block = 2 * lanes
    co_blocks = -(-geom.out_channels // block)
    groups = -(-(geom.batch * tiles_h * tiles_w) // rows)  # tile groups span images
    chunks = min(co_blocks, max(1, -(-ITEMS_PER_THREAD * threads // groups)))
    chunk_blocks = -(-co_blocks // chunks)
    channels = -(-geom.in_channels // lanes) * lanes
    a2 = _points(m, r, row)
    C = geom.out_channels
    if geom.layout == "channels_last":
        strides = dict(out_image=oH * oW * C, out_channel=1, out_row=oW * C, out_col=C)
    else:
        strides = dict(out_image=C * oH * oW, out_channel=oH * oW, out_row=oW, out_col=1)
    return WinogradLayout(images=geom.batch, channels=channels, in_h=tiles_h if row else tiles_h * m + r - 1,
                          in_w=tiles_w * m + r - 1,
                          row0=0, col0=0, tiles_h=tiles_h, tiles_w=tiles_w,
                          co_blocks=co_blocks, chunk_blocks=chunk_blocks, co_chunks=-(-co_blocks // chunk_blocks),
                          out_channels=C, out_h=oH, out_w=oW, **strides,
                          work_len=a2 * rows * (channels + block) + m * m * lanes + a2 * lanes)


def _points(m, r, row=False) -> int:
    """Transformed points per tile: ``(m + r - 1)^2``, or ``m + r - 1`` along rows."""
    return (m + r - 1) if row else (m + r - 1) ** 2


def transform_weights(weight_io, dtype, m):
    """``u[cb, xi, c, k]``: ``G g G^T`` of F(m x m, r x r) for every (output, input) channel pair, in the
    kernel's blocks.

    ``weight_io`` is ``(C_in, C_out, r, r)`` in ``dtype``, any strides (the forward weights
    transposed, or a stride phase's taps read in place); output channels padded with zeros to whole
    blocks of 2 vectors, input channels to whole vectors. A per-thread scratch buffer: use it
    before the thread's next call.
    """
    r = weight_io.shape[-1]
    row = weight_io.shape[-2] == 1
    name, _, lanes, _ = _variant(dtype, m, r, row)
    block = 2 * lanes
    C_in, C_out = weight_io.shape[:2]
    channels = -(-C_in // lanes) * lanes
    u = scratch(-(-C_out // block) * _points(m, r, row) * channels * block, dtype, "winograd-weights")
    with _jit.launch():
        getattr(_winograd_kernels, name + "_weights")(weight_io, channels, u)
    return u


@kernel
def _pack_input(x, top, left, xp):
    """``xp[n, u, v, c] = x[n, u - top, v - left, c]``, zero outside ``x`` and for the padded channels
    (``top``/``left`` may be negative: ``x`` cropped).

    ``x`` is an ``(N, H, W, C)`` view: of channels-last memory (whole pixels copied; with the blocked
    loop instead, resnet_3x3_56 in NHWC memory ran 1.09x faster than in NCHW rather than 1.47x, Zen 4)
    or, transposed, of NCHW memory (16-channel blocks keep the transposition's reads and writes in cache).
    """
    N, H, W, C = x.shape
    _, in_h, in_w, channels = xp.shape
    for item in prange(N * in_h):
        n = item // in_h
        u = item - n * in_h
        row = u - top
        if row < 0 or row >= H:
            xp[n, u, :, :] = 0
            continue
        v0 = max(0, min(left, in_w))
        v1 = max(v0, min(in_w, left + W))
        xp[n, u, :v0, :] = 0
        xp[n, u, v1:, :] = 0
        if x.strides[3] == x.itemsize:  # channels-last memory: whole pixels
            for v in range(v0, v1):
                xp[n, u, v, :C] = x[n, row, v - left, :]
        else:  # NCHW memory: a transposition, in blocks of 16 channels
            for c0 in range(0, C, 16):
                for v in range(v0, v1):
                    for c in range(c0, min(C, c0 + 16)):
                        xp[n, u, v, c] = x[n, row, v - left, c]
        if channels > C:
            xp[n, u, v0:v1, C:] = 0


@kernel
def _pack_space_to_depth(x, stride, top, left, xp):
    """``xp[n, u, v, (c*s + ph)*s + pw] = x[n, s*u + ph - top, s*v + pw - left, c]`` (``s = stride``), zero
    outside ``x`` and for the padded channels: a stride-s convolution with ``s*r`` taps per axis is a
    stride-1 one with ``r`` taps over these ``s*s`` times as many channels (space to depth).

    ``x`` is an ``(N, H, W, C)`` view of channels-last or (transposed) NCHW memory.
    """
    N, H, W, C = x.shape
    _, in_h, in_w, _ = xp.shape
    s = stride
    last = x.strides[3] == x.itemsize
    for item in prange(N * in_h):
        n = item // in_h
        u = item - n * in_h
        xp[n, u, :, :] = 0
        for ph in range(s):
            row = s * u + ph - top
            if row < 0 or row >= H:
                continue
            for pw in range(s):
                v0, v1 = output_span(W, pw - left, s, in_w)  # columns s*v + pw - left inside x
                if last:  # channels-last memory: a pixel's channels in order
                    for v in range(v0, v1):
                        for c in range(C):
                            xp[n, u, v, (c * s + ph) * s + pw] = x[n, row, s * v + pw - left, c]
                else:  # NCHW memory: along each row of each channel
                    for c in range(C):
                        for v in range(v0, v1):
                            xp[n, u, v, (c * s + ph) * s + pw] = x[n, row, s * v + pw - left, c]


@kernel
def _space_to_depth_weights(weight, stride, packed):
    """``packed[o, (c*s + ph)*s + pw, j, l] = weight[o, c, j*s + ph, l*s + pw]`` (``s = stride``): the
    weights of :func:`_space_to_depth`'s problem (NumPy's copy of the 6-D transposed view took 1.0 ms
    for a 256 x 128 x 4 x 4 kernel on Zen 4)."""
    C_out, C_in, kH, kW = weight.shape
    s = stride
    r_h, r_w = kH // s, kW // s
    for o in prange(C_out):
        for c in range(C_in):
            for ph in range(s):
                for pw in range(s):
                    for j in range(r_h):
                        for l in range(r_w):
                            packed[o, (c * s + ph) * s + pw, j, l] = weight[o, c, j * s + ph, l * s + pw]


def _space_to_depth(geom):
    """The stride-1 problem a stride-s layer with ``s*r`` taps per axis becomes over the packed copy of
    :func:`_pack_space_to_depth` (``s*s`` times the channels, ``r`` taps, the padding in the copy)."""
    s = geom.stride[-1]
    r = geom.kernel[-1] // s
    oH, oW = geom.out_size
    return dataclasses.replace(geom, in_channels=geom.in_channels * s * s, in_size=(oH + r - 1, oW + r - 1),
                               kernel=(r, r), stride=(1, 1), padding=((0, 0), (0, 0)))


def _strided(geom) -> bool:
    """A stride-s (s >= 2, both axes) layer with ``s*r`` taps per axis (r: 2 or 3), dilation 1: it runs as
    :func:`_space_to_depth`'s stride-1 problem (a 4x4 stride-2 layer, a DCGAN discriminator's)."""
    plane = slice(-2, None)
    sH, sW = geom.stride[plane]
    kH, kW = geom.kernel[plane]
    return (sH == sW >= 2 and kH == kW and kH % sH == 0 and kH // sH in KERNEL_SIZES
            and tuple(geom.dilation[plane]) == (1, 1))


def _weights_len(geom, layout, m) -> int:
    """Elements of the transformed weights ``u`` of ``geom``."""
    r, row = geom.kernel[-1], _row_kernel(geom)
    return layout.co_blocks * layout.channels * _points(m, r, row) * (2 * _variant(geom.dtype, m, r, row)[2])


class _Pass(NamedTuple):
    """One convolution of a call's input: its weights, its problem, and where its result goes in the
    flat output (first element, element strides of image, channel, row, column).

    ``weights()`` gives them as ``(C_in, C_out, r, r)`` (any strides), derived from the user's
    ``source`` array as ``key`` says: the transformed form is kept by a layer's store
    (:mod:`fastconv._prepared`) while ``source`` is unchanged."""

    weights: object   # () -> (C_in, C_out, r, r) view or array
    source: np.ndarray
    key: tuple
    geom: object
    offset: int
    strides: tuple | None   # None: the problem's own (NCHW or channels-last, :func:`_layout`)


class _Shared(NamedTuple):
    """The packed copy that several problems over the same input read (the stride phases of dL/dx)."""

    m: int
    top: int        # padding of the copy: the largest of the problems'
    left: int
    in_h: int
    in_w: int
    images: int     # images per chunk of the copy
    layouts: tuple  # each problem's layout for the whole batch, placed in the copy


@functools.lru_cache(maxsize=64)
def _shared(geoms, threads, itemsize, limit):
    """How problems that differ only in padding and output size share one packed copy of the input
    (chunked so that it, the largest transformed weights and the threads' buffers fit ``limit``)."""
    m = max(tile(g) for g in geoms)
    top = max(g.padding[0][0] for g in geoms)
    left = max(g.padding[1][0] for g in geoms)
    layouts = [_layout(g, threads, m) for g in geoms]
    in_h = max(top - g.padding[0][0] + lay.in_h for g, lay in zip(geoms, layouts))
    in_w = max(left - g.padding[1][0] + lay.in_w for g, lay in zip(geoms, layouts))
    placed = tuple(lay._replace(in_h=in_h, in_w=in_w, row0=top - g.padding[0][0], col0=left - g.padding[1][0])
                   for g, lay in zip(geoms, layouts))
    fixed = max(_weights_len(g, lay, m) + threads * lay.work_len for g, lay in zip(geoms, layouts)) * itemsize
    per_image = in_h * in_w * layouts[0].channels * itemsize
    images = max(1, min(geoms[0].batch, (limit - fixed) // per_image))
    return _Shared(m=m, top=top, left=left, in_h=in_h, in_w=in_w, images=images, layouts=placed)


def workspace_bytes(op, geom, itemsize) -> int:
    """The padded channels-last copy of a chunk of images, the transformed weights, the threads' buffers."""
    if not supports(op, geom):
        return 0
    if op == "conv" and _strided(geom):  # plus the reordered weights (as many as the layer's)
        return (_workspace_of((_space_to_depth(geom),), itemsize)
                + geom.out_channels * geom.in_channels * int(np.prod(geom.kernel[-2:])) * itemsize)
    return _workspace_of((geom,), itemsize)


def _workspace_of(geoms, itemsize) -> int:
    threads = numba.get_num_threads()
    plan = _shared(tuple(geoms), threads, itemsize, get_workspace_limit())
    packed = plan.images * plan.in_h * plan.in_w * plan.layouts[0].channels
    return (packed + max(_weights_len(g, lay, plan.m) + threads * lay.work_len
                         for g, lay in zip(geoms, plan.layouts))) * itemsize


def conv2d(x, weight, bias, geom, out):
    """Winograd F(m x m, r x r) convolution of ``x`` (N, C_in, H, W) into ``out`` (N, C_out, oH, oW); a
    strided layer through :func:`_space_to_depth`."""
    flat = (out.transpose(0, 2, 3, 1) if geom.layout == "channels_last" else out).reshape(-1)  # the layout's strides
    if geom.stride == (1, 1):
        _run(x, (_Pass(lambda: weight.transpose(1, 0, 2, 3), weight, ("forward",), geom, 0, None),), bias, flat)
        return
    s, (top, _), (left, _) = geom.stride[0], *geom.padding

    def space_to_depth():
        r = geom.kernel[0] // s
        C_out, C_in = weight.shape[:2]
        packed = scratch(C_out * C_in * s * s * r * r, weight.dtype, "winograd-strided").reshape(
            C_out, C_in * s * s, r, r)
        with _jit.launch():
            _space_to_depth_weights(weight, s, packed)
        return packed.transpose(1, 0, 2, 3)

    _run(x, (_Pass(space_to_depth, weight, ("space-to-depth", s), _space_to_depth(geom), 0, None),), bias, flat,
         pack=(s, top, left))


def _run(x, passes, bias, out, pack=None):
    """Every pass over one packed copy of ``x`` (N, C_in, H, W) per chunk of images, into the flat ``out``.

    The passes' problems differ at most in padding and output size. Each pass transforms its
    weights once per chunk (one chunk unless the input outgrows the workspace cap). ``pack``, if
    given, is ``(stride, top, left)``: the copy is :func:`_pack_space_to_depth`'s.
    """
    geoms = tuple(p.geom for p in passes)
    threads = numba.get_num_threads()
    plan = _shared(geoms, threads, x.itemsize, get_workspace_limit())
    r = geoms[0].kernel[-1]
    _, fused, lanes, _ = _variant(x.dtype, plan.m, r, _row_kernel(geoms[0]))
    batch = geoms[0].batch
    work = scratch(threads * max(lay.work_len for lay in plan.layouts), x.dtype, "winograd-work")
    channels = plan.layouts[0].channels
    padded_bias = np.zeros(plan.layouts[0].co_blocks * 2 * lanes, dtype=x.dtype)  # every pass has the same outputs
    if bias is not None:
        padded_bias[: geoms[0].out_channels] = bias
    for n0 in range(0, batch, plan.images):
        n1 = min(batch, n0 + plan.images)
        xp = scratch((n1 - n0) * plan.in_h * plan.in_w * channels, x.dtype, "winograd-input")
        packed = xp.reshape(n1 - n0, plan.in_h, plan.in_w, channels)
        with _jit.launch():
            if pack is None:  # x as (N, H, W, C): a view of channels-last memory or of NCHW memory
                _pack_input(x[n0:n1].transpose(0, 2, 3, 1), plan.top, plan.left, packed)
            else:
                _pack_space_to_depth(x[n0:n1].transpose(0, 2, 3, 1), *pack, packed)
        for p, layout in zip(passes, plan.layouts):
            chunk = layout if n1 - n0 == batch else _layout(dataclasses.replace(p.geom, batch=n1 - n0), threads,
                                                            plan.m)
            image, channel, row, col = p.strides or (layout.out_image, layout.out_channel, layout.out_row,
                                                     layout.out_col)
            chunk = chunk._replace(in_h=layout.in_h, in_w=layout.in_w, row0=layout.row0, col0=layout.col0,
                                   out_image=image, out_channel=channel, out_row=row, out_col=col)
            u = prepared("winograd", p.source, p.key + (plan.m,),
                         lambda owned: kept(owned, transform_weights(p.weights(), x.dtype, plan.m)))
            with _jit.launch():
                fused(xp, u, padded_bias, chunk, out[p.offset + n0 * image:], work)


@functools.lru_cache(maxsize=64)
def _input_gradient_problems(geom):
    """dL/dx of the rank-2 convolution ``geom`` as stride-1 convolutions of ``dy`` that this strategy
    runs, one per stride phase (:func:`fastconv.geometry.phase_problems`), or None.

    Every phase that some tap reaches must have the same square 3x3 or 2x2 kernel at dilation 1:
    stride 1 with a 3x3 or 2x2 kernel (the flipped kernel, padding ``k - 1 - lo``), or stride s with
    a kernel of s*r taps per axis (4x4 with stride 2: four 2x2 phases). Phase paddings may be
    negative (``dy`` cropped).
    """
    if geom.rank != 2 or geom.groups != 1:
        return None
    problems = phase_problems(geom)
    sizes = {phase.kernel for *_, phase in problems if phase is not None}
    if len(sizes) != 1 or not all(phase is None or _plane(phase) for *_, phase in problems):
        return None
    return problems


def _taps(taps):
    """The descending, evenly spaced kernel indices ``taps`` as a slice (a view, not a copy)."""
    step = taps[1] - taps[0] if len(taps) > 1 else -1
    return slice(taps[0], taps[-1] + step if taps[-1] + step >= 0 else None, step)


def _input_gradient(grad_out, weight, geom, grad_x):
    """dL/dx of ``geom`` into ``grad_x`` (C-contiguous NCHW): each stride phase's convolution of ``dy``
    with its taps of the flipped, transposed weights (read in place), written in place through the
    phase's strides; the phases share one packed copy of ``dy``."""
    sH, sW = geom.stride
    N, C, H, W = grad_x.shape
    passes = []
    for rh, rw, taps_h, taps_w, phase in _input_gradient_problems(geom):
        if phase is None:  # no tap reaches this phase
            grad_x[:, :, rh::sH, rw::sW] = 0
        else:
            view = weight[:, :, _taps(taps_h), _taps(taps_w)]
            passes.append(_Pass(lambda view=view: view, weight, ("input-gradient", geom.stride, taps_h, taps_w),
                                phase, rh * W + rw, (C * H * W, H * W, sH * W, sW)))
    _run(grad_out, tuple(passes), None, grad_x.reshape(-1))


def conv2d_backward(grad_out, x, weight, geom, grad_x, grad_w, grad_b):
    """dL/dx through Winograd (the forward kernel on ``dy`` with the flipped, transposed weights, per
    stride phase); dL/dW and dL/db by the exact-order direct kernels (a reduction over positions,
    where Winograd saves nothing at these sizes)."""
    if grad_w is not None or grad_b is not None:
        from . import direct

        direct.conv2d_backward(grad_out, x, weight, geom, None, grad_w, grad_b)
    if grad_x is not None:
        _input_gradient(grad_out, weight, geom, grad_x)


def _workspace(op, geom, itemsize):
    if geom.rank == 3:
        return _depth.workspace_bytes(geom, itemsize, lambda plane: _workspace(op, plane, itemsize))
    if op == "conv_backward":
        phases = [phase for *_, phase in _input_gradient_problems(geom) or [] if phase is not None]
        return _workspace_of(phases, itemsize) if phases else 0
    return workspace_bytes(op, geom, itemsize)


STRATEGY = Strategy(
    name="winograd",
    summary=("Winograd F(4x4, 3x3) / F(4x4, 2x2) (float32), F(2x2, 3x3) / F(3x3, 2x2) (float64): 3x3 and 2x2 "
             "stride-1 layers and dL/dx of 4x4 stride-2 ones (a transposed convolution's forward); F(6, 3) for "
             "float32 1D layers with 3 taps; fewer multiplications"),
    ranks=(2, 3),
    ops={"conv": _depth.conv(conv2d), "conv_backward": _depth.conv_backward(conv2d_backward)},
    channels_last=True,  # its rank-2 conv reads and writes channels-last memory in place
    supports=supports,
    workspace_bytes=_workspace,
    tolerance={"float32": (2e-3, 2e-3), "float64": (1e-9, 1e-9)},
    error_bound=ERROR_BOUND,
)
