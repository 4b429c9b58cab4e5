"""Direct convolution on explicit vector registers (the :mod:`fastconv._simd` layer).

The method (oneDNN's and BLIS's, after Zhang et al., ICML 2018): a *register tile* of
accumulators stays in vector registers while the kernel runs over every (input channel, tap)
step; each step loads a few vectors and broadcasts a few scalars, and nothing else touches
memory in the inner loop. ``tools/gen_simd_tiles.py`` writes the kernels (one per dtype and
instruction set, the tile shapes are explained there). Two families:

**Planar** (the NCHW path, :func:`conv2d_planar`): a tile of ``R`` output channels x ``B``
vectors of ``V`` consecutive output positions. The input is the phase-plane copy of
:mod:`fastconv.strategies.direct` (stride removed, padding zeroed; read in place for stride 1
and no padding): output ``(i, j)`` is flat position ``p = i*row_pitch + j`` and step ``s`` reads
``xs[channel + p + tap_offset[s]]``, so a tile's ``B`` input vectors are consecutive. The
weights are read where they are: step ``s`` of output channel ``k`` is
``weight[g*weight_group + k*weight_row + weight_step[s]]``, ``R`` broadcasts per step. The
``row_pitch - oW`` columns past each output row are computed and dropped (masked stores, one
per row a vector reaches). The same kernel computes dL/dx (:func:`input_gradient`): one
stride-1 convolution of ``dy`` per stride phase, with a step table that reads the forward
weights flipped and transposed.

**Channels-last** (:func:`conv2d`, for ``(N, C, H, W)`` arrays over ``N, H, W, C`` memory): a
tile of ``R`` output positions x ``B`` vectors of output channels. The input is packed into
channels-last phase planes ``xp[n, g, pixel, c]`` (read in place for stride 1, no padding, one
group): consecutive positions are pixels ``Cg`` elements apart, ``R`` broadcasts per step.
The weights are packed per call into ``wp[g, cb, c, t, k]`` (output channels padded to whole
blocks), ``B`` vector loads per step; results are stored as vectors of channels.

Both: threads split (image, group, channel tile, block of positions); each output is summed
by one tile in one fixed order, so results do not depend on the thread count. A tile that
would run past the last position (or the group's last channel, in the planar family) is
moved back to end there: its overlap is recomputed, never written twice.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np
from numba import prange
from numba.core.errors import NumbaError

from .. import _jit, _simd
from .._jit import kernel, output_span
from .._prepared import kept, prepared
from ..geometry import ConvGeometry, input_gradient_phases, phase_problems
from ..workspace import get_workspace_limit, scratch
from . import _depth, _simd_tiles
from .direct import _in_place_phases, _pack_phases, _PackLayout, _phase_layout, _tap_offsets

#: Tiles per work item at most (a block of positions): 8 tiles of 14 positions keep a
#: 56x56 map's work in ~58 items per channel pair at batch 1.
BLOCK_TILES = 8
#: Channels copied together by :func:`_pack_channels_last` (one 64-byte line of float32 per pixel).
PACK_CHANNELS = 16
#: (channel, tap) pairs :func:`_pack_weights` moves at a time: 64 rows of a 32-channel block
#: (8 KB of float32) stay in L1 while every channel writes its lane. Measured on Zen 4 for
#: 512x512x3x3 (9.4 MB): 1.0 ms, against 1.2 ms row by row, 2.0 ms gathering each row across
#: channels, 0.26 ms for a plain copy of the same bytes (a scalar transpose: room left).
PACK_WEIGHTS = 64


class SimdLayout(NamedTuple):
    """What a channels-last register-tiled kernel needs to know of the packed input and the ``(N, oH, oW, C_out)`` output."""

    images: int
    groups: int
    in_per_group: int    # Cg: channels of a pixel in the packed input
    pixels: int          # packed pixels per (image, group)
    out_per_group: int   # Cog
    co_blocks: int       # blocks of B*V output channels per group
    positions: int       # flat output positions per image: (oH - 1)*row_pitch + oW
    block_len: int       # positions per work item (a multiple of the tile's rows)
    row_pitch: int       # plane_w: flat position p is output (p // row_pitch, p % row_pitch)
    out_h: int
    out_w: int


class PackLayout(NamedTuple):
    """What :func:`_pack_channels_last` needs to know of the padding and the phase planes."""

    top: int
    left: int
    stride_h: int
    stride_w: int
    plane_h: int
    plane_w: int
    in_per_group: int


@kernel
def _pack_channels_last(x, layout, phase_h, phase_w, xp):
    """``xp[n, g, s*plane + u*plane_w + v, c] = Xpad[n, g*Cg + c, u*sH + phase_h[s], v*sW + phase_w[s]]``.

    ``x`` is ``(N, C, H, W)``; ``xp`` is ``(N, G, pixels, Cg)`` with zeros where the padded
    position is outside ``x``. One iteration fills one row of one phase plane of one group.
    """
    top, left, stride_h, stride_w = layout.top, layout.left, layout.stride_h, layout.stride_w
    plane_h, plane_w, cg = layout.plane_h, layout.plane_w, layout.in_per_group
    H, W = x.shape[2], x.shape[3]
    n_images, groups = xp.shape[0], xp.shape[1]
    n_phases = phase_h.shape[0]
    plane = plane_h * plane_w
    for item in prange(n_images * groups * n_phases * plane_h):
        u = item % plane_h
        s = (item // plane_h) % n_phases
        g = (item // (plane_h * n_phases)) % groups
        n = item // (plane_h * n_phases * groups)
        dst = xp[n, g, s * plane + u * plane_w:s * plane + (u + 1) * plane_w]
        row = u * stride_h + phase_h[s] - top
        if row < 0 or row >= H:
            dst[:] = 0
            continue
        rw = phase_w[s]
        v0, v1 = output_span(W, rw - left, stride_w, plane_w)
        dst[:v0] = 0
        dst[v1:] = 0
        first = v0 * stride_w + rw - left
        for c0 in range(0, cg, PACK_CHANNELS):
            c1 = min(cg, c0 + PACK_CHANNELS)
            for v in range(v1 - v0):
                col = first + v * stride_w
                for c in range(c0, c1):
                    dst[v0 + v, c] = x[n, g * cg + c, row, col]


def guarded(fn, *args) -> bool:
    """Run ``fn(*args)``; True if it ran. If a vector kernel fails to *compile* (another llvmlite or
    LLVM than the layer was tested with), the layer is switched off for the process with one
    warning (:func:`fastconv._simd.disable`) and False returned: the caller runs its portable kernel."""
    try:
        fn(*args)
        return True
    except (NumbaError, RuntimeError) as exc:
        compiled = any(k.signatures for k in _simd_kernels())
        if compiled:  # the layer works here: this is a real error
            raise
        _simd.disable(f"a vector kernel failed to compile: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return False


def _simd_kernels():
    return [getattr(_simd_tiles, name) for name in _simd_tiles.TILES]


def _tiles(family, dtype):
    """``(kernel, lanes, rows, vectors)`` of the generated kernel of ``family`` for ``dtype`` on this CPU, or None."""
    if not _simd.AVAILABLE:
        return None
    name = f"_{family}_{'f32' if np.dtype(dtype) == np.float32 else 'f64'}_{_simd.ISA}"
    _, lanes, rows, vectors = _simd_tiles.TILES[name]
    return getattr(_simd_tiles, name), lanes, rows, vectors


def tile_kernel(dtype):
    """The channels-last tile kernel and its (lanes, rows, vectors) for ``dtype`` on this CPU, or None."""
    return _tiles("conv", dtype)


class _Plan(NamedTuple):
    phase_h: np.ndarray
    phase_w: np.ndarray
    tap_pixel: np.ndarray
    pack: PackLayout
    pixels: int
    block: int          # output channels per block (B*V)
    co_blocks: int
    positions: int
    block_len: int
    images: int         # images packed at once
    slack: int          # elements past the packed images a last short tile may read
    in_place: bool      # the channels-last input is read as it is (no packing)


@functools.lru_cache(maxsize=64)
def _plan(geom, limit):
    _, lanes, rows, vectors = tile_kernel(geom.dtype)
    (top, _), (left, _) = geom.padding
    sH, sW = geom.stride
    G = geom.groups
    cg = geom.in_channels // G
    cog = geom.out_channels // G
    block = lanes * vectors
    co_blocks = -(-cog // block)
    oH, oW = geom.out_size
    H, W = geom.in_size
    in_place = (geom.stride == (1, 1) and geom.padding == ((0, 0), (0, 0)) and G == 1
                and (oH - 1) * W + oW >= rows)
    phases = _in_place_phases(geom) if in_place else _phase_layout(geom)
    pixels = phases.phase_h.size * phases.plane_h * phases.plane_w
    positions = (oH - 1) * phases.plane_w + oW
    tiles = -(-positions // rows)
    block_tiles = max(1, min(BLOCK_TILES, -(-tiles * geom.batch * G * co_blocks // 32)))
    per_image = G * pixels * cg * np.dtype(geom.dtype).itemsize
    images = max(1, min(geom.batch, limit // max(1, per_image)))
    pack = PackLayout(top=int(top), left=int(left), stride_h=int(sH), stride_w=int(sW),
                      plane_h=int(phases.plane_h), plane_w=int(phases.plane_w), in_per_group=int(cg))
    return _Plan(phase_h=phases.phase_h, phase_w=phases.phase_w, tap_pixel=phases.tap_in_plane, pack=pack,
                 pixels=int(pixels), block=int(block), co_blocks=int(co_blocks), positions=int(positions),
                 block_len=int(block_tiles * rows), images=int(images), slack=int(rows * cg), in_place=in_place)


def supports(geom) -> bool:
    """Whether the channels-last tile kernel runs ``geom``: the layer is on, rank 2, at least half a
    block of output channels per group and :data:`MIN_STEPS` steps per output, and one packed image
    fits the workspace cap."""
    if not _simd.AVAILABLE or geom.rank != 2 or np.dtype(geom.dtype) not in (np.float32, np.float64):
        return False
    _, lanes, rows, vectors = tile_kernel(geom.dtype)
    if (geom.out_channels // geom.groups < lanes * vectors // 2
            or geom.in_channels // geom.groups * int(np.prod(geom.kernel)) < MIN_STEPS):
        return False
    plan = _plan(geom, get_workspace_limit())
    return plan.in_place or geom.in_channels * plan.pixels * np.dtype(geom.dtype).itemsize <= get_workspace_limit()


def workspace_bytes(geom, itemsize):
    """The packed input of one chunk of images (plus the slack a short last tile reads), and the packed weights."""
    plan = _plan(geom, get_workspace_limit())
    weights = geom.groups * plan.co_blocks * plan.block * (geom.in_channels // geom.groups) * int(np.prod(geom.kernel))
    packed = 0 if plan.in_place else plan.images * geom.groups * plan.pixels * geom.in_channels // geom.groups + plan.slack
    return (packed + weights) * itemsize


@kernel
def _pack_weights(w, block, wp):
    """``wp[g, cb, c, t, k] = w[g, cb*block + k, c, t]``, zero for channels past the group's ``Cog``.

    ``w`` is ``(G, Cog, Cg, taps)``; ``wp`` is flat. One iteration fills one block.
    """
    groups, cog, cg, taps = w.shape
    co_blocks = (cog + block - 1) // block
    for item in prange(groups * co_blocks):
        g = item // co_blocks
        cb = item % co_blocks
        dst = wp[item * taps * cg * block:(item + 1) * taps * cg * block]
        valid = min(block, cog - cb * block)
        rows = w[g].reshape(cog, cg * taps)
        for i0 in range(0, cg * taps, PACK_WEIGHTS):  # a chunk of (c, t) pairs: its writes stay in L1
            i1 = min(cg * taps, i0 + PACK_WEIGHTS)
            for k in range(valid):  # channel k's row, read in order, written `block` apart
                src = rows[cb * block + k]
                for i in range(i0, i1):
                    dst[i * block + k] = src[i]
            for i in range(i0, i1):
                for k in range(valid, block):
                    dst[i * block + k] = 0


def pack_weights(weight, groups, block):
    """The weights of ``(C_out, Cg, *kernel)`` as ``wp[g, cb, c, t, k] = W[g*Cog + cb*block + k, c, t]``, flat.

    In the thread's reusable scratch buffer (slot "weights"; a fresh 9 MB buffer cost more in page
    faults than the packing): valid until the thread's next call.
    """
    C_out, cg = weight.shape[:2]
    cog = C_out // groups
    taps = weight.size // (C_out * cg)
    wp = scratch(groups * -(-cog // block) * block * cg * taps, weight.dtype, "weights")
    with _jit.launch():
        _pack_weights(weight.reshape(groups, cog, cg, taps), block, wp)
    return wp


def pack_bias(bias, groups, out_channels, block, dtype):
    """The bias per group padded to whole blocks (zeros for no bias), flat."""
    cog = out_channels // groups
    co_blocks = -(-cog // block)
    bp = np.zeros((groups, co_blocks * block), dtype=dtype)
    if bias is not None:
        bp[:, :cog] = bias.reshape(groups, cog)
    return bp.reshape(-1)


def conv2d(x, weight, bias, geom, out):
    """Register-tiled direct convolution of ``x`` into ``out``, both ``(N, C, H, W)`` in channels-last memory."""
    kern = tile_kernel(x.dtype)[0]
    plan = _plan(geom, get_workspace_limit())
    N = x.shape[0]
    G = geom.groups
    cg = geom.in_channels // G
    wp = prepared("direct", weight, (G, plan.block), lambda owned: kept(owned, pack_weights(weight, G, plan.block)))
    bp = pack_bias(bias, G, geom.out_channels, plan.block, x.dtype)
    oH, oW = geom.out_size
    out_last = out.transpose(0, 2, 3, 1)  # C-contiguous: the memory the result is written in
    layout = SimdLayout(images=int(plan.images), groups=int(G), in_per_group=int(cg), pixels=plan.pixels,
                        out_per_group=int(geom.out_channels // G), co_blocks=plan.co_blocks,
                        positions=plan.positions, block_len=plan.block_len, row_pitch=plan.pack.plane_w,
                        out_h=int(oH), out_w=int(oW))
    if plan.in_place:  # stride 1, no padding, one group: the input's own memory is the packed layout
        with _jit.launch():
            kern(x.transpose(0, 2, 3, 1).reshape(-1), wp, bp, plan.tap_pixel, layout._replace(images=int(N)),
                 out_last.reshape(-1))
        return
    buffer = scratch(plan.images * G * plan.pixels * cg + plan.slack, x.dtype)
    buffer[buffer.size - plan.slack:] = 0
    for n0 in range(0, N, plan.images):
        n1 = min(N, n0 + plan.images)
        xp = buffer[:(n1 - n0) * G * plan.pixels * cg].reshape(n1 - n0, G, plan.pixels, cg)
        with _jit.launch():
            _pack_channels_last(x[n0:n1], plan.pack, plan.phase_h, plan.phase_w, xp)
            kern(buffer, wp, bp, plan.tap_pixel, layout._replace(images=n1 - n0), out_last[n0:n1].reshape(-1))


# --------------------------------------------------------------------------- planar (N, C, H, W) memory


class PlanarLayout(NamedTuple):
    """What a planar register-tiled kernel needs to know of the packed input and the output."""

    images: int
    groups: int
    in_per_group: int    # Cg
    channel_len: int     # elements per packed channel
    out_per_group: int   # Cog (at least the tile's rows)
    co_tiles: int        # tiles of R output channels per group (the last one moved back to end at Cog)
    positions: int       # flat output positions per image: (oH - 1)*row_pitch + oW
    block_len: int       # positions per work item (a multiple of the tile's span)
    row_pitch: int
    out_h: int
    out_w: int
    weight_row: int      # weight elements between consecutive output channels (see the kernel)
    weight_group: int    # weight elements per group
    in_image: int        # packed elements between consecutive images (2D: groups * Cg * channel_len)
    in_group: int        # packed elements between consecutive groups (2D: Cg * channel_len)
    out_image: int       # output elements between consecutive images (2D: C_out * oH * oW)
    out_channel: int     # output elements between consecutive channels (2D: oH * oW)


class _PlanarPlan(NamedTuple):
    packed: bool
    pack: _PackLayout | None
    phase_h: np.ndarray
    phase_w: np.ndarray
    tap_offset: np.ndarray
    step_table: np.ndarray   # (tap offset, weight step) per step, interleaved (see the kernels)
    channel_len: int
    layout: PlanarLayout   # with images = the images of one chunk


def planar_kernel(dtype):
    """The planar tile kernel and its (lanes, rows, vectors) for ``dtype`` on this CPU, or None."""
    return _tiles("planar", dtype)


def _phase_packing(geom, span):
    """``(phases, pack, channel_len)`` of ``geom``'s stride phases for :func:`_pack_phases` (a 2D problem): the
    phase planes, the packing layout, and one packed channel's length (its planes, then ``span`` elements of
    slack that the last tile's vector loads may reach)."""
    phases = _phase_layout(geom)
    (top, _), (left, _) = geom.padding
    pack = _PackLayout(top=int(top), left=int(left), stride_h=int(geom.stride[0]), stride_w=int(geom.stride[1]),
                       plane_h=int(phases.plane_h), plane_w=int(phases.plane_w),
                       rows_per_item=max(1, 4096 // int(phases.plane_w)))
    return phases, pack, int(phases.phase_h.size * phases.plane_h * phases.plane_w + span)


def _block_len(positions, span, parallel_tiles):
    """Positions per work item of a planar kernel: whole spans, enough items for ``parallel_tiles`` (images x
    groups x channel tiles) to give both cores work, at most :data:`BLOCK_TILES` spans."""
    spans = -(-positions // span)
    return max(1, min(BLOCK_TILES, -(-spans * parallel_tiles // 32))) * span


@functools.lru_cache(maxsize=64)
def _planar_plan(geom, limit):
    _, lanes, rows, vectors = planar_kernel(geom.dtype)
    span = lanes * vectors
    G = geom.groups
    cg = geom.in_channels // G
    cog = geom.out_channels // G
    H, W = geom.in_size
    oH, oW = geom.out_size
    kH, kW = geom.kernel
    in_place = geom.stride == (1, 1) and geom.padding == ((0, 0), (0, 0)) and (oH - 1) * W + oW >= span
    if in_place:  # the input already has the layout: one phase, rows of width W
        taps = _in_place_phases(geom).tap_in_plane
        pack, phase_h, phase_w, row_pitch, channel_len = None, None, None, W, H * W
        images = geom.batch
    else:
        phases, pack, channel_len = _phase_packing(geom, span)
        taps, phase_h, phase_w, row_pitch = phases.tap_in_plane, phases.phase_h, phases.phase_w, phases.plane_w
        images = max(1, min(geom.batch, limit // max(1, geom.in_channels * channel_len * np.dtype(geom.dtype).itemsize)))
    positions = (oH - 1) * row_pitch + oW
    co_tiles = -(-cog // rows)
    layout = PlanarLayout(images=int(images), groups=int(G), in_per_group=int(cg), channel_len=int(channel_len),
                          out_per_group=int(cog), co_tiles=int(co_tiles), positions=int(positions),
                          block_len=int(_block_len(positions, span, geom.batch * G * co_tiles)), row_pitch=int(row_pitch), out_h=int(oH), out_w=int(oW),
                          weight_row=int(cg * kH * kW), weight_group=int(cog * cg * kH * kW),
                          in_image=int(G * cg * channel_len), in_group=int(cg * channel_len),
                          out_image=int(G * cog * oH * oW), out_channel=int(oH * oW))
    tap_offset = _tap_offsets(np.asarray(taps, dtype=np.int64), cg, channel_len)
    return _PlanarPlan(packed=not in_place, pack=pack, phase_h=phase_h, phase_w=phase_w, tap_offset=tap_offset,
                       step_table=_step_table(tap_offset, np.arange(cg * kH * kW, dtype=np.int64)),
                       channel_len=int(channel_len), layout=layout)


def _step_table(tap_offset, weight_step):
    """``[tap_offset[0], weight_step[0], tap_offset[1], ...]``: what step ``i`` of a planar kernel reads."""
    return np.stack([tap_offset, weight_step], axis=1).reshape(-1)


#: Fewest (input channel, tap) steps per output for which the planar tile kernel is used: each
#: tile's stores cost about as much as ~30 steps. Measured on Zen 4 (2026-12-05) against the
#: portable kernel: lenet_conv1 (25 steps) 0.77x, lenet_conv2 (200) 1.8x, audio_frontend (80) 1.1x.
MIN_STEPS = 32


def planar_supports(geom) -> bool:
    """Whether the planar tile kernel runs ``geom``: layer on, rank 2, a group has at least a tile's
    rows of output channels and :data:`MIN_STEPS` steps per output, and one packed image fits the
    workspace cap."""
    if not _simd.AVAILABLE or geom.rank != 2 or np.dtype(geom.dtype) not in (np.float32, np.float64):
        return False
    _, lanes, rows, vectors = planar_kernel(geom.dtype)
    if geom.out_channels // geom.groups < rows or geom.in_channels // geom.groups * int(np.prod(geom.kernel)) < MIN_STEPS:
        return False
    plan = _planar_plan(geom, get_workspace_limit())
    return not plan.packed or geom.in_channels * plan.channel_len * np.dtype(geom.dtype).itemsize <= get_workspace_limit()


def planar_workspace_bytes(geom, itemsize):
    """The packed copy of one chunk of images (0 when the input is read in place)."""
    plan = _planar_plan(geom, get_workspace_limit())
    return plan.layout.images * geom.in_channels * plan.channel_len * itemsize if plan.packed else 0




def conv2d_planar(x, weight, bias, geom, out, weights=None):
    """Register-tiled direct convolution of ``x`` (N, C_in, H, W) into ``out`` (N, C_out, oH, oW), both C-contiguous.

    ``weights``, if given, is ``(weight_step, weight_row, weight_group)``: how the kernel finds
    the weights of ``geom`` in ``weight`` (the input gradient reads the forward weights so).
    """
    kern = planar_kernel(x.dtype)[0]
    plan = _planar_plan(geom, get_workspace_limit())
    table = plan.step_table
    layout = plan.layout
    if weights is not None:
        weight_step, w_row, w_group = weights
        table = _step_table(plan.tap_offset, weight_step)
        layout = layout._replace(weight_row=w_row, weight_group=w_group)
    N = x.shape[0]
    w = weight.reshape(-1)
    b = np.zeros(geom.out_channels, dtype=x.dtype) if bias is None else bias
    if not plan.packed:
        with _jit.launch():
            kern(x.reshape(-1), w, table, layout, b, out.reshape(-1))
        return
    step = layout.images
    buffer = scratch(step * geom.in_channels * plan.channel_len, x.dtype)
    for n0 in range(0, N, step):
        n1 = min(N, n0 + step)
        xs = buffer[:(n1 - n0) * geom.in_channels * plan.channel_len].reshape(n1 - n0, geom.in_channels,
                                                                             plan.channel_len)
        chunk = layout if n1 - n0 == step else layout._replace(images=n1 - n0)
        with _jit.launch():
            _pack_phases(x[n0:n1], 0, geom.groups, plan.pack, plan.phase_h, plan.phase_w, xs)
            kern(buffer, w, table, chunk, b, out[n0:n1].reshape(-1))


# --------------------------------------------------------------------------- 3D layers


class _Planar3d(NamedTuple):
    """How :func:`conv3d_planar` runs a 3D layer (see there)."""

    plane: ConvGeometry      # one depth plane's 2D problem (C_in channels, the layer's last two axes)
    pack: _PackLayout
    phase_h: np.ndarray
    phase_w: np.ndarray
    channel_len: int         # packed elements of one channel of one padded depth plane
    planes_per_chunk: int    # output depth planes per chunk (the packed planes of a chunk fit half the cap)
    tap_in_plane: np.ndarray  # (kH*kW,) offsets inside one packed plane


def _planar3d_chunk_inputs(geom, outputs: int) -> int:
    """Padded input depth planes the outputs ``o .. o + outputs - 1`` read."""
    return (outputs - 1) * geom.stride[0] + (geom.kernel[0] - 1) * geom.dilation[0] + 1


@functools.lru_cache(maxsize=32)
def _planar3d_plan(geom, limit):
    C = geom.in_channels
    plane = dataclasses.replace(_depth._plane_problem(geom, 1), in_channels=C)
    _, lanes, rows, vectors = planar_kernel(geom.dtype)
    phases, pack, channel_len = _phase_packing(plane, lanes * vectors)
    per_input_plane = C * channel_len * np.dtype(geom.dtype).itemsize
    m = geom.out_size[0]
    while m > 1 and _planar3d_chunk_inputs(geom, m) * per_input_plane > limit // 2:
        m = (m + 1) // 2
    return _Planar3d(plane=plane, pack=pack, phase_h=phases.phase_h, phase_w=phases.phase_w,
                     channel_len=int(channel_len), planes_per_chunk=int(m), tap_in_plane=phases.tap_in_plane)


def planar3d_supports(geom) -> bool:
    """Whether :func:`conv3d_planar` runs ``geom``: a channels-first 3D layer whose depth planes' 2D problem
    (the depth taps as extra steps) the planar tile kernel runs, one output plane's packed input under the cap."""
    if geom.rank != 3 or geom.layout != "channels_first" or not _simd.AVAILABLE:
        return False
    if geom.groups != 1 or not planar_supports(_depth._plane_problem(geom, geom.batch)):
        return False
    plan = _planar3d_plan(geom, get_workspace_limit())
    return (_planar3d_chunk_inputs(geom, 1) * geom.in_channels * plan.channel_len * np.dtype(geom.dtype).itemsize
            <= get_workspace_limit())


def planar3d_workspace_bytes(geom, itemsize) -> int:
    """The packed depth planes of one chunk."""
    plan = _planar3d_plan(geom, get_workspace_limit())
    return _planar3d_chunk_inputs(geom, plan.planes_per_chunk) * geom.in_channels * plan.channel_len * itemsize


def conv3d_planar(x, weight, bias, geom, out):
    """A 3D layer on the planar tile kernel, without a gathered copy of the depth taps: every padded input depth
    plane is packed once (its stride phases, as for a 2D layer; channel-major: ``xs[c, d, :]``), the output depth
    planes are the kernel's images (image ``o`` starts ``o*stride_d`` packed planes in), the depth taps are steps
    of the step table (``a*dilation_d`` planes further), and the kernel writes each output plane in place
    (image stride ``oH*oW``, channel stride ``oD*oH*oW``). ``x`` and ``out`` C-contiguous, one group."""
    kern = planar_kernel(x.dtype)[0]
    plan = _planar3d_plan(geom, get_workspace_limit())
    N, C, D = x.shape[:3]
    C_out = geom.out_channels
    kD, kH, kW = geom.kernel
    sD, dD, lo = geom.stride[0], geom.dilation[0], geom.padding[0][0]
    oD, oH, oW = geom.out_size
    P = oH * oW
    L = plan.channel_len
    _, lanes, rows, vectors = planar_kernel(geom.dtype)
    span = lanes * vectors
    row_pitch = plan.pack.plane_w
    positions = (oH - 1) * row_pitch + oW
    co_tiles = -(-C_out // rows)
    w = weight.reshape(-1)
    b = np.zeros(C_out, dtype=x.dtype) if bias is None else bias
    steps = np.arange(C * kD * kH * kW, dtype=np.int64)  # weights (C_out, C, kD, kH, kW): step (c, a, t)
    for o0 in range(0, oD, plan.planes_per_chunk):
        o1 = min(oD, o0 + plan.planes_per_chunk)
        q0 = o0 * sD                          # first padded input plane of the chunk
        depth = _planar3d_chunk_inputs(geom, o1 - o0)
        offsets = (np.arange(C, dtype=np.int64)[:, None, None] * depth * L
                   + np.arange(kD, dtype=np.int64)[None, :, None] * dD * L
                   + plan.tap_in_plane[None, None, :]).reshape(-1)
        table = _step_table(offsets, steps)
        layout = PlanarLayout(images=int(o1 - o0), groups=1, in_per_group=int(C), channel_len=int(L),
                              out_per_group=int(C_out), co_tiles=int(co_tiles), positions=int(positions),
                              block_len=int(_block_len(positions, span, (o1 - o0) * co_tiles)), row_pitch=int(row_pitch), out_h=int(oH), out_w=int(oW),
                              weight_row=int(C * kD * kH * kW), weight_group=int(C_out * C * kD * kH * kW),
                              in_image=int(sD * L), in_group=0, out_image=int(P), out_channel=int(oD * P))
        buffer = scratch(C * depth * L, x.dtype).reshape(C, depth, L)
        d0, d1 = max(0, q0 - lo), min(D, q0 + depth - lo)  # the input planes the chunk reads
        buffer[:, :max(0, d0 + lo - q0)] = 0  # padding planes before and after the volume (no image writes them)
        buffer[:, max(0, d1 + lo - q0):] = 0
        for n in range(N):
            for c in range(C):
                if d1 > d0:
                    with _jit.launch():
                        _pack_phases(x[n, c, d0:d1].reshape(d1 - d0, 1, x.shape[3], x.shape[4]), 0, 1, plan.pack,
                                     plan.phase_h, plan.phase_w,
                                     buffer[c, d0 + lo - q0:d1 + lo - q0].reshape(d1 - d0, 1, L))
            with _jit.launch():
                kern(buffer.reshape(-1), w, table, layout, b, out[n].reshape(-1)[o0 * P:])


# --------------------------------------------------------------------------- the input gradient


#: The input gradient runs on the planar tile kernel from this many input channels per group (its
#: output channels) on: with 8, lenet_conv2's dL/dx (16 -> 8 channels, 5x5, 12x12) took 0.26 ms
#: against 0.15-0.20 ms on the portable kernel (Zen 4, 2026-12-05); with 128 and more (ResNet
#: layers) the tile kernel was 1.2-2.9x faster.
INPUT_GRADIENT_MIN_CHANNELS = 16


@functools.lru_cache(maxsize=64)
def input_gradient_problems(geom):
    """dL/dx of the convolution ``geom`` as stride-1 convolutions of ``dy``, one per phase
    (:func:`fastconv.geometry.phase_problems`), or None when a phase's problem is not one the planar
    tile kernel runs."""
    if geom.rank != 2 or geom.in_channels // geom.groups < INPUT_GRADIENT_MIN_CHANNELS:
        return None
    problems = phase_problems(geom)
    if any(phase is not None and not planar_supports(phase) for *_, phase in problems):
        return None
    return problems


@functools.lru_cache(maxsize=64)
def _phase_weights(geom, taps_h, taps_w):
    """How a phase's kernel reads the forward weights ``W (C_out, Cg, kH, kW)`` in place:
    ``(weight_step, weight_row, weight_group)`` for :func:`conv2d_planar`.

    The phase problem's output channel ``c`` (an input channel of ``geom``) and step
    ``(o, j, l)`` read ``W[g*Cog + o, c, taps_h[j], taps_w[l]]``.
    """
    cg = geom.in_channels // geom.groups
    cog = geom.out_channels // geom.groups
    kH, kW = geom.kernel
    taps = kH * kW
    tap = (np.asarray(taps_h, dtype=np.int64)[:, None] * kW + np.asarray(taps_w, dtype=np.int64)[None, :]).reshape(-1)
    step = (np.arange(cog, dtype=np.int64)[:, None] * (cg * taps) + tap[None, :]).reshape(-1)
    return step, int(taps), int(cog * cg * taps)


@kernel
def _depth_to_space(z, stride, x):
    """``x[n, c, i*s + a, j*s + b] = z[n, c*s*s + a*s + b, i*oW + j]`` (``s = stride``; ``x``'s rows and columns
    past ``oH*s``, ``oW*s`` are zero): the stride phases of a layer whose windows tile the image, from
    one pointwise product, into place. One iteration per (image, channel, output row)."""
    N, C, H, W = x.shape
    s = stride
    oW = W // s
    oH = z.shape[2] // oW
    for item in prange(N * C * H):
        r = item % H
        c = (item // H) % C
        n = item // (H * C)
        row = x[n, c, r]
        i = r // s
        if i >= oH:
            row[:] = 0
            continue
        a = r - i * s
        first = c * s * s + a * s
        if s == 2:  # interleaving two rows: LLVM vectorises the pair
            z0 = z[n, first, i * oW:(i + 1) * oW]
            z1 = z[n, first + 1, i * oW:(i + 1) * oW]
            for j in range(oW):
                row[2 * j] = z0[j]
                row[2 * j + 1] = z1[j]
        else:
            for b in range(s):
                zb = z[n, first + b, i * oW:(i + 1) * oW]
                for j in range(oW):
                    row[j * s + b] = zb[j]
        row[oW * s:] = 0


@functools.lru_cache(maxsize=64)
def _tiling_problem(geom):
    """dL/dx of a layer whose windows tile the image (kernel == stride, dilation 1, no padding, one group)
    as ONE pointwise convolution of ``dy`` with ``C_in * s*s`` outputs (output ``c*s*s + a*s + b`` is
    tap ``(a, b)`` of input channel ``c``), or None. One product instead of s*s phases, then
    :func:`_depth_to_space` (a U-Net's 2x2 stride-2 transposed convolution)."""
    s = geom.stride[0]
    if (geom.rank != 2 or geom.groups != 1 or geom.kernel != (s, s) or geom.stride != (s, s) or s < 2
            or geom.dilation != (1, 1) or geom.padding != ((0, 0), (0, 0))):
        return None
    problem = ConvGeometry(batch=geom.batch, in_channels=geom.out_channels, out_channels=geom.in_channels * s * s,
                           groups=1, in_size=geom.out_size, kernel=(1, 1), stride=(1, 1), dilation=(1, 1),
                           padding=((0, 0), (0, 0)), out_size=geom.out_size, dtype=geom.dtype)
    return problem if planar_supports(problem) else None


def _tiling_weights(geom):
    """The planar kernel's view of the forward weights ``(C_out, C_in, s, s)`` for :func:`_tiling_problem`:
    its output ``c*s*s + t`` and input ``o`` read ``W[o, c, t]``, at flat ``o*C_in*s*s + c*s*s + t``."""
    per_out = geom.in_channels * geom.kernel[0] * geom.kernel[1]
    return np.arange(geom.out_channels, dtype=np.int64) * per_out, 1, geom.out_channels * per_out


class _Merged(NamedTuple):
    """dL/dx's stride phases as one convolution (see :func:`_merged_problem`)."""

    problem: ConvGeometry
    taps_h: np.ndarray    # (sH, rh) kernel rows of each row phase
    taps_w: np.ndarray    # (sW, rw)
    shift_h: np.ndarray   # (sH,) the merged output row of phase row 0
    shift_w: np.ndarray
    count_h: np.ndarray   # (sH,) rows of each row phase
    count_w: np.ndarray


#: The merged problem may compute at most this share more outputs than the phases need (its origins
#: cover every phase's; 1D layers waste one position, small 2D maps a row and a column per phase).
MERGED_MAX_WASTE = 0.05


@functools.lru_cache(maxsize=64)
def _merged_problem(geom):
    """dL/dx of a strided layer whose stride phases all have ``r`` taps at dilation 1 (a kernel of stride x r
    taps, e.g. a 1D transposed convolution with 4 taps and stride 2) as ONE stride-1 convolution of ``dy``
    with ``C_in * sH * sW`` outputs: output ``(c*sH + ph)*sW + pw`` at ``(u + shift_h[ph], v + shift_w[pw])``
    is ``dx[c, u*sH + ph, v*sW + pw]``. One packed copy and one launch instead of one per phase; None
    if it does not apply, wastes more than :data:`MERGED_MAX_WASTE`, or the planar kernel does not run it."""
    if geom.rank != 2 or geom.groups != 1 or geom.stride == (1, 1):
        return None
    axes = []
    for n, o, k, st, d, (lo, _) in zip(geom.in_size, geom.out_size, geom.kernel, geom.stride, geom.dilation,
                                       geom.padding):
        phases = input_gradient_phases(n, o, k, st, d, lo)
        if any(pads is None or dr != 1 or len(taps) != len(phases[0][1]) for _, taps, pads, dr, _ in phases):
            return None
        lo_max = max(pads[0] for _, _, pads, _, _ in phases)
        shifts = [lo_max - pads[0] for _, _, pads, _, _ in phases]
        size = max(count + shift for (_, _, _, _, count), shift in zip(phases, shifts))
        r = len(phases[0][1])
        axes.append((phases, lo_max, shifts, size, size - o - lo_max + r - 1, r))
    (ph_h, lo_h, sh_h, out_h, hi_h, rh), (ph_w, lo_w, sh_w, out_w, hi_w, rw) = axes
    needed = sum(ch * cw for (*_, ch) in ph_h for (*_, cw) in ph_w)
    if out_h * out_w * len(ph_h) * len(ph_w) > (1 + MERGED_MAX_WASTE) * needed:
        return None
    problem = ConvGeometry(batch=geom.batch, in_channels=geom.out_channels,
                           out_channels=geom.in_channels * len(ph_h) * len(ph_w), groups=1, in_size=geom.out_size,
                           kernel=(rh, rw), stride=(1, 1), dilation=(1, 1), padding=((lo_h, hi_h), (lo_w, hi_w)),
                           out_size=(out_h, out_w), dtype=geom.dtype)
    if not planar_supports(problem):
        return None
    ints = functools.partial(np.array, dtype=np.int64)
    return _Merged(problem=problem, taps_h=ints([taps for _, taps, *_ in ph_h]), taps_w=ints([taps for _, taps, *_ in ph_w]),
                   shift_h=ints(sh_h), shift_w=ints(sh_w), count_h=ints([c for *_, c in ph_h]),
                   count_w=ints([c for *_, c in ph_w]))


def _merged_weights(weight, merged):
    """``W'[(c*sH + ph)*sW + pw, o, j, l] = W[o, c, taps_h[ph, j], taps_w[pw, l]]``: the merged problem's weights."""
    picked = weight[:, :, merged.taps_h[:, :, None, None], merged.taps_w[None, None, :, :]]  # (O, C, sH, rh, sW, rw)
    O, C, sH, rh, sW, rw = picked.shape
    return np.ascontiguousarray(picked.transpose(1, 2, 4, 0, 3, 5)).reshape(C * sH * sW, O, rh, rw)


@kernel
def _phases_to_space(z, merged_shift_h, merged_shift_w, count_w, x):
    """``x[n, c, u*sH + ph, v*sW + pw] = z[n, (c*sH + ph)*sW + pw, u + shift_h[ph], v + shift_w[pw]]``: each
    stride phase of the merged result into place. One iteration per (image, channel, row of ``x``)."""
    N, C, H, W = x.shape
    sH, sW = merged_shift_h.shape[0], merged_shift_w.shape[0]
    for item in prange(N * C * H):
        r = item % H
        c = (item // H) % C
        n = item // (H * C)
        ph = r % sH
        u = r // sH + merged_shift_h[ph]
        row = x[n, c, r]
        first = 0
        if sW == 2:  # the common stride 2: both phases in one interleaving pass LLVM vectorises
            z0 = z[n, (c * sH + ph) * 2, u, merged_shift_w[0]:]
            z1 = z[n, (c * sH + ph) * 2 + 1, u, merged_shift_w[1]:]
            first = min(count_w[0], count_w[1])
            for v in range(first):
                row[2 * v] = z0[v]
                row[2 * v + 1] = z1[v]
        for pw in range(sW):  # the rest (other strides; the longer phase's last column)
            zr = z[n, (c * sH + ph) * sW + pw, u]
            s0 = merged_shift_w[pw]
            for v in range(first, count_w[pw]):
                row[v * sW + pw] = zr[s0 + v]


def input_gradient(grad_out, weight, geom, grad_x) -> bool:
    """dL/dx of ``geom`` into ``grad_x`` on the planar tile kernel; False if it does not apply."""
    tiling = _tiling_problem(geom)
    if tiling is not None:  # one pointwise product for every phase, then depth to space
        z = scratch(int(np.prod(tiling.output_shape)), grad_x.dtype, "phase").reshape(
            tiling.batch, tiling.out_channels, -1)
        if not guarded(conv2d_planar, grad_out, weight, None, tiling, z.reshape(tiling.output_shape),
                       _tiling_weights(geom)):
            return False
        with _jit.launch():
            _depth_to_space(z, int(geom.stride[0]), grad_x)
        return True
    merged = _merged_problem(geom)
    if merged is not None:  # one convolution for every phase, then each phase into place
        problem = merged.problem
        z = scratch(int(np.prod(problem.output_shape)), grad_x.dtype, "phase").reshape(problem.output_shape)
        w = prepared("direct-merged", weight, (geom.stride, geom.padding, geom.kernel),
                     lambda owned: _merged_weights(weight, merged))
        if not guarded(conv2d_planar, grad_out, w, None, problem, z):
            return False
        with _jit.launch():
            _phases_to_space(z, merged.shift_h, merged.shift_w, merged.count_w, grad_x)
        return True
    problems = input_gradient_problems(geom)
    if problems is None:
        return False
    sH, sW = geom.stride
    single = len(problems) == 1
    for rh, rw, taps_h, taps_w, phase in problems:
        target = grad_x[:, :, rh::sH, rw::sW]
        if phase is None:
            target[...] = 0
            continue
        result = grad_x if single else scratch(int(np.prod(phase.output_shape)), grad_x.dtype,
                                               "phase").reshape(phase.output_shape)
        if not guarded(conv2d_planar, grad_out, weight, None, phase, result, _phase_weights(geom, taps_h, taps_w)):
            return False
        if not single:
            target[...] = result
    return True
