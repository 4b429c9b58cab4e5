"""The ``winograd`` strategy: 3x3, stride-1 convolutions with fewer multiplications.

Winograd's minimal filtering (Lavin & Gray, 2016): an ``m x m`` tile of outputs of a 3x3
correlation is ``A^T [(G g G^T) o (B^T d B)] A`` for the ``(m+2) x (m+2)`` input tile ``d``;
summed over input channels in the transformed domain, a layer becomes ``(m+2)^2`` independent
matrix products of (tiles x C_in) by (C_in x C_out). F(4x4, 3x3) does 36 multiplications where a
direct convolution does 144 (4x fewer); F(2x2, 3x3) 16 for 36 (2.25x). float32 uses F(4x4) where a
call has enough 4x4 tiles (:data:`F4_MIN_TILES`) and F(2x2) on smaller maps; float64 F(2x2)
(F(4x4)'s transforms cost float64 more digits than its speed is worth there).

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
from .._jit import kernel
from ..workspace import get_workspace_limit, scratch
from ..geometry import ConvGeometry
from . import Strategy, _depth, _winograd_kernels

#: Measured error bound, max |y - y64| / max |y64| (y64: the float64 direct result on the same
#: rounded inputs), per dtype: 60 random layers (1-512 input and 1-128 output channels, 3x3 to
#: 60x60 maps; normal, uniform and offset data) gave at most 1.5e-5 for float32 F(4x4) and 7.2e-15
#: for float64 F(2x2), against direct's 4.1e-6 and 0 (Zen 4, 2026-12-05); these leave 3x headroom.
#: tests/test_winograd.py holds the kernels to them.
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
    in_h: int            # rows of the padded copy: tiles_h * m + 2
    in_w: int            # columns of the padded copy: tiles_w * m + 2
    tiles_h: int
    tiles_w: int
    co_blocks: int       # blocks of 2 vectors of output channels
    chunk_blocks: int    # blocks per work item
    co_chunks: int       # chunks of blocks
    out_channels: int
    out_h: int
    out_w: int
    out_last: int        # 1: the result is channels-last (N, oH, oW, C_out) memory; 0: NCHW
    work_len: int        # scratch per thread: V (a^2 x R x channels), M (a^2 x R x block), a tile, a transform


def tile(geom) -> int:
    """The output tile ``m`` of F(m x m, 3x3) for the rank-2 problem ``geom`` (see :data:`F4_MIN_TILES`)."""
    if geom.dtype != "float32":
        return 2
    oH, oW = geom.out_size[-2:]
    return 4 if geom.batch * -(-oH // 4) * -(-oW // 4) >= F4_MIN_TILES else 2


def _variant(dtype, m):
    """``(name, kernel, lanes, rows)`` of the generated F(m x m, 3x3) kernel for ``dtype`` on this CPU."""
    name = f"_winograd_{'f32' if np.dtype(dtype) == np.float32 else 'f64'}_{m}x{m}_{_simd.ISA}"
    _, lanes, _, rows = _winograd_kernels.KERNELS[name]
    return name, getattr(_winograd_kernels, name), lanes, rows


def supports(op, geom) -> bool:
    """``conv`` and ``conv_backward`` with 3x3 kernels (3x3 in the last two axes for rank 3: the depth
    taps become channels, :mod:`._depth`), stride 1 and dilation 1 there, one group, float32/float64,
    with the SIMD layer on."""
    plane = slice(-2, None)
    return (op in ("conv", "conv_backward") and tuple(geom.kernel[plane]) == (3, 3)
            and tuple(geom.stride[plane]) == (1, 1) and tuple(geom.dilation[plane]) == (1, 1) and geom.groups == 1
            and geom.dtype in ("float32", "float64") and _simd.AVAILABLE)


@functools.lru_cache(maxsize=64)
def _layout(geom, threads, m):
    _, _, lanes, rows = _variant(geom.dtype, m)
    oH, oW = geom.out_size
    tiles_h, tiles_w = -(-oH // m), -(-oW // m)
    block = 2 * lanes
    co_blocks = -(-geom.out_channels // block)
    groups = -(-(tiles_h * tiles_w) // rows)
    per_thread = geom.batch * groups
    chunks = min(co_blocks, max(1, -(-ITEMS_PER_THREAD * threads // per_thread)))
    chunk_blocks = -(-co_blocks // chunks)
    channels = -(-geom.in_channels // lanes) * lanes
    a2 = (m + 2) ** 2
    return WinogradLayout(images=geom.batch, channels=channels,
                          in_h=tiles_h * m + 2, in_w=tiles_w * m + 2, tiles_h=tiles_h, tiles_w=tiles_w,
                          co_blocks=co_blocks, chunk_blocks=chunk_blocks, co_chunks=-(-co_blocks // chunk_blocks),
                          out_channels=geom.out_channels, out_h=oH, out_w=oW,
                          out_last=int(geom.layout == "channels_last"),
                          work_len=a2 * rows * (channels + block) + m * m * lanes + a2 * lanes)


def transform_weights(weight, dtype, m):
    """``u[cb, xi, c, k]``: ``G g G^T`` of F(m x m, 3x3) for every (output, input) channel pair, in the
    kernel's blocks.

    ``weight`` is ``(C_out, C_in, 3, 3)`` in ``dtype``; output channels padded with zeros to whole
    blocks of 2 vectors, input channels to whole vectors. A per-thread scratch buffer: use it
    before the thread's next call.
    """
    name, _, lanes, _ = _variant(dtype, m)
    block = 2 * lanes
    C_out, C_in = weight.shape[:2]
    channels = -(-C_in // lanes) * lanes
    u = scratch(-(-C_out // block) * (m + 2) ** 2 * channels * block, dtype, "winograd-weights")
    with _jit.launch():
        getattr(_winograd_kernels, name + "_weights")(weight, channels, u)
    return u


@kernel
def _pack_input(x, top, left, xp):
    """``xp[n, u, v, c] = x[n, u - top, v - left, c]``, zero outside ``x`` and for the padded channels.

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
        v0 = min(left, in_w)
        v1 = min(in_w, left + W)
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


def _chunk_images(geom, itemsize, limit, threads) -> int:
    """Images per chunk of the packed copy so that it, the transformed weights and the threads'
    buffers stay within ``limit`` (at least one image)."""
    m = tile(geom)
    layout = _layout(geom, threads, m)
    _, _, lanes, _ = _variant(geom.dtype, m)
    fixed = (layout.co_blocks * 2 * lanes * layout.channels * (m + 2) ** 2 + threads * layout.work_len) * itemsize
    per_image = layout.in_h * layout.in_w * layout.channels * itemsize
    return max(1, min(geom.batch, (limit - fixed) // per_image))


def workspace_bytes(op, geom, itemsize) -> int:
    """The padded channels-last copy of a chunk of images, the transformed weights, the threads' buffers."""
    if not supports(op, geom):
        return 0
    threads = numba.get_num_threads()
    m = tile(geom)
    layout = _layout(geom, threads, m)
    _, _, lanes, _ = _variant(geom.dtype, m)
    images = _chunk_images(geom, itemsize, get_workspace_limit(), threads)
    packed = images * layout.in_h * layout.in_w * layout.channels
    weights = layout.co_blocks * 2 * lanes * layout.channels * (m + 2) ** 2
    return (packed + weights + threads * layout.work_len) * itemsize


def conv2d(x, weight, bias, geom, out):
    """Winograd F(m x m, 3x3) convolution of ``x`` (N, C_in, H, W) into ``out`` (N, C_out, oH, oW).

    Images go through in chunks whose packed copy fits the workspace cap with the transformed
    weights (transformed once per call).
    """
    m = tile(geom)
    last = geom.layout == "channels_last"
    _, fused, lanes, _ = _variant(x.dtype, m)
    threads = numba.get_num_threads()
    images = _chunk_images(geom, x.itemsize, get_workspace_limit(), threads)
    (top, _), (left, _) = geom.padding
    u = transform_weights(weight, x.dtype, m)
    layout = _layout(geom, threads, m)
    padded_bias = np.zeros(layout.co_blocks * 2 * lanes, dtype=x.dtype)
    if bias is not None:
        padded_bias[: geom.out_channels] = bias
    work = scratch(threads * layout.work_len, x.dtype, "winograd-work")
    for n0 in range(0, geom.batch, images):
        n1 = min(geom.batch, n0 + images)
        chunk = layout if n1 - n0 == geom.batch else _layout(dataclasses.replace(geom, batch=n1 - n0), threads, m)
        xp = scratch(chunk.images * chunk.in_h * chunk.in_w * chunk.channels, x.dtype, "winograd-input")
        packed = xp.reshape(chunk.images, chunk.in_h, chunk.in_w, chunk.channels)
        with _jit.launch():
            _pack_input(x[n0:n1].transpose(0, 2, 3, 1), int(top), int(left), packed)  # channels-last or not
            fused(xp, u, padded_bias, chunk, (out[n0:n1].transpose(0, 2, 3, 1) if last else out[n0:n1]).reshape(-1),
                  work)


def _input_gradient_problem(geom):
    """dL/dx of the stride-1 3x3 convolution ``geom`` as a convolution of ``dy`` with the flipped,
    transposed kernel: padding ``2 - lo`` and ``2 - hi`` per axis; None if a padding exceeds 2 (that
    would crop ``dy``)."""
    pads = tuple((2 - lo, 2 - hi) for lo, hi in geom.padding)
    if any(p < 0 for pair in pads for p in pair):
        return None
    return ConvGeometry(batch=geom.batch, in_channels=geom.out_channels, out_channels=geom.in_channels, groups=1,
                        in_size=geom.out_size, kernel=(3, 3), stride=(1, 1), dilation=(1, 1), padding=pads,
                        out_size=geom.in_size, dtype=geom.dtype)


def conv2d_backward(grad_out, x, weight, geom, grad_x, grad_w, grad_b):
    """dL/dx through Winograd (the forward kernel on ``dy`` with the flipped, transposed weights);
    dL/dW and dL/db by the exact-order direct kernels (a reduction over positions, where Winograd saves
    nothing at these sizes)."""
    if grad_w is not None or grad_b is not None:
        from . import direct

        direct.conv2d_backward(grad_out, x, weight, geom, None, grad_w, grad_b)
    if grad_x is None:
        return
    problem = _input_gradient_problem(geom)
    if problem is None:  # padding above 2: the exact kernels
        from . import direct

        direct.conv2d_backward(grad_out, x, weight, geom, grad_x, None, None)
        return
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    conv2d(grad_out, flipped, None, problem, grad_x)


def _workspace(op, geom, itemsize):
    if geom.rank == 3:
        return _depth.workspace_bytes(geom, itemsize, lambda plane: _workspace(op, plane, itemsize))
    if op == "conv_backward":
        problem = _input_gradient_problem(geom)
        return 0 if problem is None else workspace_bytes("conv", problem, itemsize)
    return workspace_bytes(op, geom, itemsize)


STRATEGY = Strategy(
    name="winograd",
    summary="Winograd F(4x4, 3x3) (float32) / F(2x2, 3x3) (float64): 3x3 stride-1 layers, fewer multiplications",
    ranks=(2, 3),
    ops={"conv": _depth.conv(conv2d), "conv_backward": _depth.conv_backward(conv2d_backward)},
    channels_last=True,  # its rank-2 conv reads and writes channels-last memory in place
    supports=supports,
    workspace_bytes=_workspace,
    tolerance={"float32": (2e-3, 2e-3), "float64": (1e-9, 1e-9)},
    error_bound=ERROR_BOUND,
)
