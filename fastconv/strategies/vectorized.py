"""The NumPy-vectorized strategy: the best plain NumPy we know how to write.

Convolution is the lecture's img2col: a strided *view* of the padded input
holds every receptive field, one copy turns it into the ``(C_in*kH*kW, oH*oW)``
matrix, and one batched ``matmul`` per group applies all kernels at once.
When each output channel reads a single input channel (depthwise, or a
single-channel filter) the matrix product degenerates, and shift-and-accumulate
over the kernel taps (``kH*kW`` whole-array multiply-adds) is faster.

Pooling is shift-and-compare / shift-and-add over the ``kH*kW`` taps on
strided slices of the padded input, which keeps every pass contiguous.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..geometry import avg_pool_divisors, first_taps_inside
from . import Strategy, _depth
from ..threads import gemm_calls
from ..workspace import chunk_size, get_workspace_limit


def _pad(x, pads, value=0.0):
    """``x`` padded by ``((top, bottom), (left, right))`` on its last two axes (no copy if zero)."""
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _windows(xp, geom):
    """Read-only view ``(N, C, kH, kW, oH, oW)`` of every receptive field of ``xp``."""
    N, C = xp.shape[:2]
    kH, kW = geom.kernel
    sH, sW = geom.stride
    dH, dW = geom.dilation
    oH, oW = geom.out_size
    s = xp.strides
    return as_strided(
        xp,
        shape=(N, C, kH, kW, oH, oW),
        strides=(s[0], s[1], dH * s[2], dW * s[3], sH * s[2], sW * s[3]),
        writeable=False,
    )


def _tap(xp, geom, a, b):
    """Strided slice of ``xp``: the input value under kernel tap ``(a, b)`` for every output."""
    sH, sW = geom.stride
    dH, dW = geom.dilation
    oH, oW = geom.out_size
    r, c = a * dH, b * dW
    return xp[:, :, r : r + sH * (oH - 1) + 1 : sH, c : c + sW * (oW - 1) + 1 : sW]


def im2col(x, geom):
    """The lecture's img2col: ``(N, C*kH*kW, oH*oW)``, rows ordered channel, kernel row, kernel column."""
    N, C = x.shape[:2]
    kH, kW = geom.kernel
    oH, oW = geom.out_size
    xp = _pad(x, geom.padding)
    return _windows(xp, geom).reshape(N, C * kH * kW, oH * oW)


@np.errstate(invalid="ignore", over="ignore")  # inf - inf is NaN, silently, as in the JIT kernels
def _column_chunks(geom, itemsize):
    """Split the batch (and if need be the output rows) so each chunk's columns fit the workspace cap.

    Yields ``(n0, n1, r0, r1, sub)``: images ``n0:n1``, output rows ``r0:r1``, and
    the geometry of that chunk (its input starts at padded row ``r0 * sH``).
    """
    N = geom.batch
    oH, oW = geom.out_size
    kH, kW = geom.kernel
    per_row = geom.in_channels * kH * kW * oW * itemsize
    if per_row * oH <= get_workspace_limit():
        images, rows = chunk_size(per_row * oH, N), oH
    else:
        images, rows = 1, chunk_size(per_row, oH)
    for n0 in range(0, N, images):
        for r0 in range(0, oH, rows):
            r1 = min(r0 + rows, oH)
            yield n0, min(n0 + images, N), r0, r1, dataclasses.replace(geom, out_size=(r1 - r0, oW))


@np.errstate(invalid="ignore", over="ignore")  # inf - inf is NaN, silently, as in the JIT kernels
@gemm_calls
def conv2d(x, weight, bias, geom, out):
    """img2col + one batched matmul per group, or shift-and-accumulate for 1-channel groups.

    The column matrix is built and multiplied in chunks of images (or output
    rows) that fit the workspace cap (:mod:`fastconv.workspace`).
    """
    C_out, C_per_group, kH, kW = weight.shape
    G = geom.groups
    oW = geom.out_size[1]
    sH = geom.stride[0]
    xp = _pad(x, geom.padding)
    if C_per_group == 1 and C_out == G:
        # Every output channel reads one input channel: depthwise or a single-channel filter.
        out[...] = 0
        for a in range(kH):
            for b in range(kW):
                out += _tap(xp, geom, a, b) * weight[None, :, 0, a, b, None, None]
    else:
        w = weight.reshape(G, C_out // G, C_per_group * kH * kW)
        for n0, n1, r0, r1, sub in _column_chunks(geom, x.itemsize):
            cols = _windows(xp[n0:n1, :, r0 * sH :], sub).reshape(n1 - n0, G, C_per_group * kH * kW, (r1 - r0) * oW)
            target = out[n0:n1, :, r0:r1]
            if target.flags.c_contiguous:
                np.matmul(w, cols, out=target.reshape(n1 - n0, G, C_out // G, (r1 - r0) * oW))
            else:
                target[...] = np.matmul(w, cols).reshape(target.shape)
    if bias is not None:
        out += bias[None, :, None, None]


def _pool_pads(geom):
    """Pooling's ``(lo, hi)`` pads, with room on the right for ``ceil_mode``'s last window."""
    pads = []
    for n, k, s, d, p, o in zip(geom.in_size, geom.kernel, geom.stride, geom.dilation, geom.padding, geom.out_size):
        need = (o - 1) * s + d * (k - 1) + 1
        pads.append((p, max(need - n - p, 0)))
    return tuple(pads)


def _pool_input(x, geom, value):
    """``x`` padded for pooling with ``value``."""
    return _pad(x, _pool_pads(geom), value)


def max_pool2d(x, geom, out, indices):
    """Running maximum over the ``kH*kW`` taps, PyTorch's rule: ``v > best or isnan(v)`` wins."""
    H, W = geom.in_size
    kH, kW = geom.kernel
    sH, sW = geom.stride
    dH, dW = geom.dilation
    pH, pW = geom.padding
    oH, oW = geom.out_size
    xp = _pool_input(x, geom, -np.inf)
    out[...] = -np.inf
    if indices is not None:
        rows0 = first_taps_inside(oH, sH, pH, dH)
        cols0 = first_taps_inside(oW, sW, pW, dW)
        indices[...] = rows0[:, None] * W + cols0[None, :]
        rows = np.arange(oH) * sH - pH
        cols = np.arange(oW) * sW - pW
    for a in range(kH):
        for b in range(kW):
            v = _tap(xp, geom, a, b)
            wins = (v > out) | np.isnan(v)
            np.copyto(out, v, where=wins)
            if indices is not None:
                flat = (rows[:, None] + a * dH) * W + (cols[None, :] + b * dW)
                np.copyto(indices, np.broadcast_to(flat, indices.shape), where=wins)


@np.errstate(invalid="ignore", over="ignore")
def avg_pool2d(x, geom, out):
    """Sum of the ``kH*kW`` shifted slices, divided by PyTorch's divisor."""
    kH, kW = geom.kernel
    xp = _pool_input(x, geom, 0.0)
    out[...] = 0
    for a in range(kH):
        for b in range(kW):
            out += _tap(xp, geom, a, b)
    out /= avg_pool_divisors(geom).astype(out.dtype)


def _add_taps(grad_xp, contributions, geom):
    """col2im by taps: ``grad_xp[tap (a, b) slice] += contributions(a, b)`` for every kernel tap."""
    kH, kW = geom.kernel
    for a in range(kH):
        for b in range(kW):
            _tap(grad_xp, geom, a, b)[...] += contributions(a, b)


def _grad_on_padded(grad_x, pads, fill):
    """Accumulate a gradient on a zero padded buffer with ``fill(buffer)``, then store its in-image part."""
    (top, bottom), (left, right) = pads
    N, C, H, W = grad_x.shape
    grad_xp = np.zeros((N, C, H + top + bottom, W + left + right), grad_x.dtype)
    fill(grad_xp)
    grad_x[...] = grad_xp[:, :, top : top + H, left : left + W]


@np.errstate(invalid="ignore", over="ignore")
@gemm_calls
def conv2d_backward(grad_out, x, weight, geom, grad_x, grad_w, grad_b):
    """The lecture's backward: ``dW = dY X̂ᵀ``, ``dX̂ = Wᵀ dY`` then col2im (by taps), in workspace-capped chunks."""
    C_out, C_per_group, kH, kW = weight.shape
    G = geom.groups
    oW = geom.out_size[1]
    sH = geom.stride[0]
    K = C_per_group * kH * kW
    if grad_b is not None:
        grad_b[...] = grad_out.sum(axis=(0, 2, 3))
    if C_per_group == 1 and C_out == G:  # one input channel per output channel: by taps
        if grad_w is not None:
            xp = _pad(x, geom.padding)
            for a in range(kH):
                for b in range(kW):
                    grad_w[:, 0, a, b] = np.einsum("nchw,nchw->c", grad_out, _tap(xp, geom, a, b))
        if grad_x is not None:
            _grad_on_padded(grad_x, geom.padding, lambda buf: _add_taps(
                buf, lambda a, b: grad_out * weight[None, :, 0, a, b, None, None], geom))
        return
    w = weight.reshape(G, C_out // G, K)
    xp = _pad(x, geom.padding) if grad_w is not None else None
    gw = np.zeros((G, C_out // G, K), x.dtype) if grad_w is not None else None

    def backward_chunks(grad_xp):
        for n0, n1, r0, r1, sub in _column_chunks(geom, x.itemsize):
            dy = grad_out[n0:n1, :, r0:r1].reshape(n1 - n0, G, C_out // G, (r1 - r0) * oW)
            if gw is not None:
                cols = _windows(xp[n0:n1, :, r0 * sH :], sub).reshape(n1 - n0, G, K, (r1 - r0) * oW)
                for g in range(G):
                    gw[g] += np.tensordot(dy[:, g], cols[:, g], axes=([0, 2], [0, 2]))
            if grad_xp is not None:
                dcols = np.matmul(w.transpose(0, 2, 1), dy).reshape(n1 - n0, G * C_per_group, kH, kW, r1 - r0, oW)
                _add_taps(grad_xp[n0:n1, :, r0 * sH :], lambda a, b: dcols[:, :, a, b], sub)

    if grad_x is not None:
        _grad_on_padded(grad_x, geom.padding, backward_chunks)
    else:
        backward_chunks(None)
    if grad_w is not None:
        grad_w[...] = gw.reshape(grad_w.shape)


def max_pool2d_backward(grad_out, indices, geom, grad_x):
    """Scatter-add with one ``bincount``: plane ``p``'s indices are offset by ``p * H * W``."""
    N, C, H, W = grad_x.shape
    planes = np.arange(N * C, dtype=np.int64).reshape(N, C, 1, 1) * (H * W)
    grad_x.reshape(-1)[...] = np.bincount(
        (indices + planes).ravel(), weights=grad_out.ravel(), minlength=N * C * H * W
    )


def avg_pool2d_backward(grad_out, geom, grad_x):
    """Each output's ``grad / divisor`` added to its window's taps on the padded input, then cropped."""
    scaled = grad_out / avg_pool_divisors(geom).astype(grad_out.dtype)
    _grad_on_padded(grad_x, _pool_pads(geom), lambda buf: _add_taps(buf, lambda a, b: scaled, geom))


def workspace_bytes(op, geom, itemsize):
    """Scratch bytes: a padded copy plus one tap product (depthwise) or capped im2col columns (convolution)."""
    if not op.startswith("conv"):
        return 0
    if geom.rank == 3:
        return _depth.workspace_bytes(geom, itemsize, lambda plane: workspace_bytes(op, plane, itemsize))
    padded = math.prod(n + lo + hi for n, (lo, hi) in zip(geom.in_size, geom.padding))
    padded = 0 if padded == math.prod(geom.in_size) else geom.batch * geom.in_channels * padded * itemsize
    out_plane = math.prod(geom.out_size)
    if geom.in_channels == geom.groups and geom.out_channels == geom.groups:
        return padded + geom.batch * geom.out_channels * out_plane * itemsize
    per_row = geom.in_channels * math.prod(geom.kernel) * geom.out_size[-1] * itemsize
    rows = out_plane // geom.out_size[-1]
    return padded + min(per_row * rows * geom.batch, max(get_workspace_limit(), per_row))


STRATEGY = Strategy(
    name="vectorized",
    summary="NumPy only: im2col as a strided view + one batched matmul per group; shift-and-accumulate "
            "for depthwise and pooling",
    ranks=(2, 3),
    ops=_depth.ops(conv2d, conv2d_backward, max_pool2d, max_pool2d_backward, avg_pool2d, avg_pool2d_backward),
    workspace_bytes=workspace_bytes,
)
