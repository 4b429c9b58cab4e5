"""3D problems as sums of 2D problems over the depth taps, for strategies whose kernels are 2D.

A 3D convolution's output plane ``od`` is the sum over the depth taps ``a`` of 2D
convolutions of the input planes ``d = od*sD + a*dD - lo`` (zero outside the volume) with the
weight slices ``W[:, :, a]``. Stacking those planes as channels ``(c, a)``::

    Xg[n*oD + od, c*kD + a] = X[n, c, od*sD + a*dD - lo]        (the depth im2col)
    W2[l, c*kD + a]         = W[l, c, a]                        (a reshape, no copy)

turns the whole 3D problem into one 2D problem of batch ``N*oD`` and ``C_in*kD`` input
channels (groups stay contiguous), so any 2D strategy computes it; for img2col, the 2D
im2col of ``Xg`` is exactly the 3D im2col. The backward runs the 2D backward on the same
stack and adds ``dXg`` back into the depth planes it was gathered from. Pooling is separable:
2D pooling of every depth plane, then a max (or sum) over each depth window.

This is where the Numba strategies get 3D until they have 3D kernels of their own (the SIMD
kernels): correct for every option (stride, dilation, asymmetric padding, groups), with a
gathered copy of ``kD/sD`` times the input, built in chunks of output planes under the
workspace cap.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..geometry import ConvGeometry, PoolGeometry, avg_pool_divisors, tap_output_range
from ..workspace import get_workspace_limit

__all__ = ["avg_pool", "avg_pool_backward", "conv", "conv_backward", "max_pool", "max_pool_backward", "ops",
           "workspace_bytes"]


def _plane_problem(geom: ConvGeometry, planes: int) -> ConvGeometry:
    """The 2D problem of ``planes`` stacked output planes (batch ``N*chunk``, channels ``C_in*kD``)."""
    return ConvGeometry(
        batch=planes, in_channels=geom.in_channels * geom.kernel[0], out_channels=geom.out_channels,
        groups=geom.groups, in_size=geom.in_size[1:], kernel=geom.kernel[1:], stride=geom.stride[1:],
        dilation=geom.dilation[1:], padding=geom.padding[1:], out_size=geom.out_size[1:], dtype=geom.dtype,
        layout=geom.layout,
    )


def _chunk_planes(geom: ConvGeometry, itemsize: int) -> int:
    """Output depth planes per chunk: the gathered stack of one chunk stays under half the cap."""
    N, C = geom.batch, geom.in_channels
    per_plane = max(1, N * C * geom.kernel[0] * geom.in_size[1] * geom.in_size[2] * itemsize)
    return max(1, min(geom.out_size[0], (get_workspace_limit() // 2) // per_plane))


def _chunks(geom, itemsize):
    step = _chunk_planes(geom, itemsize)
    return [(o0, min(o0 + step, geom.out_size[0])) for o0 in range(0, geom.out_size[0], step)]


def workspace_bytes(geom: ConvGeometry, itemsize: int, plane_workspace=None) -> int:
    """The gathered stack and 2D output of one chunk, plus ``plane_workspace(problem_2d)``: the 2D
    strategy's own scratch on the stacked problem."""
    m = _chunk_planes(geom, itemsize)
    stack = geom.batch * m * geom.in_channels * geom.kernel[0] * geom.in_size[1] * geom.in_size[2]
    out = geom.batch * m * geom.out_channels * geom.out_size[1] * geom.out_size[2]
    own = 0 if plane_workspace is None else plane_workspace(_plane_problem(geom, geom.batch * m))
    return (stack + out) * itemsize + own


def _gather(x, geom: ConvGeometry, o0: int, o1: int):
    """``Xg`` for output planes ``o0:o1``: shape ``(N*(o1-o0), C*kD, H, W)``, zeros outside the volume."""
    N, C, D, H, W = x.shape
    kD, sD, dD, (lo, _) = geom.kernel[0], geom.stride[0], geom.dilation[0], geom.padding[0]
    stack = np.zeros((N, o1 - o0, C, kD, H, W), dtype=x.dtype)
    for a in range(kD):
        first, last = tap_output_range(D, a, sD, dD, lo, o0, o1)
        if first < last:
            d = first * sD + a * dD - lo
            planes = x[:, :, d : d + (last - first - 1) * sD + 1 : sD]
            stack[:, first - o0 : last - o0, :, a] = planes.transpose(0, 2, 1, 3, 4)
    return stack.reshape(N * (o1 - o0), C * kD, H, W)


def _scatter(stack, geom: ConvGeometry, o0: int, o1: int, grad_x):
    """Add the gradient of a gathered stack back into the depth planes it came from."""
    N, C, D, H, W = grad_x.shape
    kD, sD, dD, (lo, _) = geom.kernel[0], geom.stride[0], geom.dilation[0], geom.padding[0]
    stack = stack.reshape(N, o1 - o0, C, kD, H, W)
    for a in range(kD):
        first, last = tap_output_range(D, a, sD, dD, lo, o0, o1)
        if first < last:
            d = first * sD + a * dD - lo
            grad_x[:, :, d : d + (last - first - 1) * sD + 1 : sD] += stack[:, first - o0 : last - o0, :, a].transpose(
                0, 2, 1, 3, 4)


def conv(conv2d):
    """The ``conv`` op of a strategy whose 2D function is ``conv2d``: rank 2 as is, rank 3 by depth."""

    def run(x, weight, bias, geom, out):
        if geom.rank == 2:
            return conv2d(x, weight, bias, geom, out)
        N, C_out = geom.batch, geom.out_channels
        oH, oW = geom.out_size[1:]
        w2 = weight.reshape((C_out, -1) + tuple(geom.kernel[1:]))
        for o0, o1 in _chunks(geom, x.itemsize):
            m = o1 - o0
            stack = _gather(x, geom, o0, o1)
            planes = np.empty((N * m, C_out, oH, oW), dtype=out.dtype)
            conv2d(stack, w2, bias, _plane_problem(geom, N * m), planes)
            out[:, :, o0:o1] = planes.reshape(N, m, C_out, oH, oW).transpose(0, 2, 1, 3, 4)
        return None

    run.__doc__ = f"{conv2d.__doc__ or ''}\n\nRank 3 by depth taps (:mod:`fastconv.strategies._depth`)."
    return run


def conv_backward(conv2d_backward):
    """The ``conv_backward`` op for a 2D ``conv2d_backward``: rank 3 by depth taps."""

    def run(grad_out, x, weight, geom, grad_x, grad_w, grad_b):
        if geom.rank == 2:
            return conv2d_backward(grad_out, x, weight, geom, grad_x, grad_w, grad_b)
        N, C_out = geom.batch, geom.out_channels
        w2 = weight.reshape((C_out, -1) + tuple(geom.kernel[1:]))
        if grad_x is not None:
            grad_x[...] = 0
        if grad_w is not None:
            grad_w[...] = 0
        if grad_b is not None:
            grad_b[...] = 0
        gw2 = None if grad_w is None else grad_w.reshape(w2.shape)
        for o0, o1 in _chunks(geom, x.itemsize):
            m = o1 - o0
            stack = _gather(x, geom, o0, o1)
            dy = np.ascontiguousarray(grad_out[:, :, o0:o1].transpose(0, 2, 1, 3, 4)).reshape(
                (N * m, C_out) + tuple(geom.out_size[1:]))
            g_stack = None if grad_x is None else np.empty_like(stack)
            g_w = None if grad_w is None else np.empty_like(w2)
            g_b = None if grad_b is None else np.empty(C_out, dtype=grad_out.dtype)
            conv2d_backward(dy, stack, w2, _plane_problem(geom, N * m), g_stack, g_w, g_b)
            if g_stack is not None:
                _scatter(g_stack, geom, o0, o1, grad_x)
            if g_w is not None:
                gw2 += g_w
            if g_b is not None:
                grad_b += g_b
        return None

    return run


def _plane_pool(geom: PoolGeometry, **changes) -> PoolGeometry:
    """The 2D pooling of every depth plane: channels ``C*D``, the (H, W) window."""
    fields = dict(batch=geom.batch, channels=geom.channels * geom.in_size[0], in_size=geom.in_size[1:],
                  kernel=geom.kernel[1:], stride=geom.stride[1:], dilation=geom.dilation[1:],
                  padding=geom.padding[1:], out_size=geom.out_size[1:], ceil_mode=geom.ceil_mode,
                  count_include_pad=geom.count_include_pad, dtype=geom.dtype, layout=geom.layout)
    fields.update(changes)
    return PoolGeometry(**fields)


def _depth_taps(geom: PoolGeometry):
    """``(a, first, last, d)`` per depth tap: output planes ``first:last`` read input plane ``d + (o-first)*sD``."""
    D = geom.in_size[0]
    kD, sD, dD, p = geom.kernel[0], geom.stride[0], geom.dilation[0], geom.padding[0]
    taps = []
    for a in range(kD):
        first, last = tap_output_range(D, a, sD, dD, p, 0, geom.out_size[0])
        if first < last:
            taps.append((a, first, last, first * sD + a * dD - p))
    return taps


def max_pool(max_pool2d, depth_max=None):
    """The ``max_pool`` op for a 2D ``max_pool2d``: rank 3 as 2D pooling of each plane, then a max over depth.

    The depth step keeps PyTorch's rule (a value replaces the running maximum if it is greater
    or NaN), so ties keep the first (d, h, w) and a NaN window reports its last NaN, as a
    3D scan would. ``depth_max(p_out, p_idx, geom, taps, out, indices)``, if given, does that
    step (a compiled kernel; ``p_idx`` and ``indices`` None when no indices are wanted); else
    NumPy does it here.
    """

    def run(x, geom, out, indices):
        if geom.rank == 2:
            return max_pool2d(x, geom, out, indices)
        N, C, D, H, W = x.shape
        oD, oH, oW = geom.out_size
        planes = _plane_pool(geom)
        p_out = np.empty((N, C * D, oH, oW), dtype=x.dtype)
        if depth_max is not None:
            p_idx = None if indices is None else np.empty((N, C * D, oH, oW), dtype=np.int64)
            max_pool2d(x.reshape(N, C * D, H, W), planes, p_out, p_idx)
            depth_max(p_out, p_idx, geom, _depth_taps(geom), out, indices)
            return None
        p_idx = np.empty((N, C * D, oH, oW), dtype=np.int64)
        max_pool2d(x.reshape(N, C * D, H, W), planes, p_out, p_idx)
        p_out = p_out.reshape(N, C, D, oH, oW)
        p_idx = p_idx.reshape(N, C, D, oH, oW)
        best = np.full((N, C, oD, oH, oW), -np.inf, dtype=x.dtype)
        where = np.zeros((N, C, oD, oH, oW), dtype=np.int64)
        seen = np.zeros(oD, dtype=bool)
        sD = geom.stride[0]
        for _, first, last, d in _depth_taps(geom):
            stop = d + (last - first - 1) * sD + 1
            value, index = p_out[:, :, d:stop:sD], p_idx[:, :, d:stop:sD] + np.arange(d, stop, sD)[:, None, None] * H * W
            fresh = ~seen[first:last]  # the first in-volume tap of each window sets the reported index
            where[:, :, first:last][..., fresh, :, :] = index[..., fresh, :, :]
            seen[first:last] = True
            take = (value > best[:, :, first:last]) | np.isnan(value)
            best[:, :, first:last] = np.where(take, value, best[:, :, first:last])
            where[:, :, first:last] = np.where(take, index, where[:, :, first:last])
        out[...] = best
        if indices is not None:
            indices[...] = where
        return None

    return run


def avg_pool(avg_pool2d):
    """The ``avg_pool`` op for a 2D ``avg_pool2d``: rank 3 as window sums of each plane, summed over depth."""

    def run(x, geom, out):
        if geom.rank == 2:
            return avg_pool2d(x, geom, out)
        N, C, D, H, W = x.shape
        oD, oH, oW = geom.out_size
        sums = np.empty((N, C * D, oH, oW), dtype=x.dtype)
        avg_pool2d(x.reshape(N, C * D, H, W), _plane_pool(geom, divisor_override=1), sums)
        sums = sums.reshape(N, C, D, oH, oW)
        total = np.zeros((N, C, oD, oH, oW), dtype=x.dtype)
        sD = geom.stride[0]
        for _, first, last, d in _depth_taps(geom):
            total[:, :, first:last] += sums[:, :, d : d + (last - first - 1) * sD + 1 : sD]
        np.divide(total, avg_pool_divisors(geom).astype(x.dtype), out=out)
        return None

    return run


def avg_pool_backward(avg_pool2d_backward):
    """The ``avg_pool_backward`` op for a 2D one: spread over depth windows, then the planes' 2D backward."""

    def run(grad_out, geom, grad_x):
        if geom.rank == 2:
            return avg_pool2d_backward(grad_out, geom, grad_x)
        N, C, D, H, W = grad_x.shape
        oD, oH, oW = geom.out_size
        scaled = grad_out / avg_pool_divisors(geom).astype(grad_out.dtype)
        per_plane = np.zeros((N, C, D, oH, oW), dtype=grad_out.dtype)
        sD = geom.stride[0]
        for _, first, last, d in _depth_taps(geom):
            per_plane[:, :, d : d + (last - first - 1) * sD + 1 : sD] += scaled[:, :, first:last]
        avg_pool2d_backward(per_plane.reshape(N, C * D, oH, oW), _plane_pool(geom, divisor_override=1),
                            grad_x.reshape(N, C * D, H, W))
        return None

    return run


def max_pool_backward(max_pool2d_backward):
    """The ``max_pool_backward`` op: the 2D scatter on planes of ``D*H`` rows (the indices are flat)."""

    def run(grad_out, indices, geom, grad_x):
        if geom.rank == 2:
            return max_pool2d_backward(grad_out, indices, geom, grad_x)
        N, C, D, H, W = grad_x.shape
        flat = dataclasses.replace(geom, in_size=(D * H, W), out_size=(geom.out_size[0] * geom.out_size[1],
                                                                       geom.out_size[2]))
        shape = (N, C) + flat.out_size
        return max_pool2d_backward(grad_out.reshape(shape), indices.reshape(shape), flat, grad_x.reshape(N, C, D * H, W))

    return run


def ops(conv2d, conv2d_backward, max_pool2d, max_pool2d_backward, avg_pool2d, avg_pool2d_backward) -> dict:
    """A strategy's ``ops`` from its six 2D functions: rank 2 as they are, rank 3 by depth."""
    return {"conv": conv(conv2d), "conv_backward": conv_backward(conv2d_backward),
            "max_pool": max_pool(max_pool2d), "max_pool_backward": max_pool_backward(max_pool2d_backward),
            "avg_pool": avg_pool(avg_pool2d), "avg_pool_backward": avg_pool_backward(avg_pool2d_backward)}
