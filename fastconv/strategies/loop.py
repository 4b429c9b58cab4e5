"""The pure-Python loop strategy: the readable definition and the test oracle, for every rank.

Each function is the lecture's formula written out as loops, one output value at a time,
over any number of spatial axes (``itertools.product`` walks the output positions and the
kernel taps in row-major order). It is slow (about a microsecond per multiply-add) and is
meant for reading and for checking the fast strategies on small problems, not for use.

Arrays are validated, C-contiguous ``(N, C, *spatial)`` of one float dtype; ``geom`` is the
resolved problem (:mod:`fastconv.geometry`): per-axis ``in_size``, ``kernel``, ``stride``,
``dilation``, ``padding`` and ``out_size`` (adaptive pooling: ``in_size`` and ``out_size``, the
windows following from them). Sums are kept in Python floats (float64).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..geometry import adaptive_window
from . import Strategy


def _positions(sizes):
    """Every index tuple of an array of ``sizes``, row-major."""
    return itertools.product(*(range(n) for n in sizes))


def _conv_taps(o, geom):
    """``[(tap, input position)]`` for output position ``o``: the taps that read inside the input."""
    taps = []
    for tap in _positions(geom.kernel):
        pos = tuple(oi * s + t * d - lo for oi, t, s, d, (lo, _) in
                    zip(o, tap, geom.stride, geom.dilation, geom.padding))
        if all(0 <= p < n for p, n in zip(pos, geom.in_size)):
            taps.append((tap, pos))
    return taps


def conv(x, weight, bias, geom, out):
    """Cross-correlation, as in the lecture, summed over each group's channels.

    ``Y[n, l, o] = b[l] + sum_{d, t} X[n, g*C_in/groups + d, o*s + t*dil - lo] * W[l, d, t]``
    for every output position ``o`` and kernel tap ``t`` (tuples, one entry per axis), where
    ``g`` is output channel ``l``'s group and positions outside the input read as zero.
    """
    N = x.shape[0]
    C_out, C_per_group = weight.shape[:2]
    out_per_group = C_out // geom.groups
    for n in range(N):
        for o in _positions(geom.out_size):
            taps = _conv_taps(o, geom)
            for l in range(C_out):
                first_channel = (l // out_per_group) * C_per_group
                total = 0.0 if bias is None else float(bias[l])
                for d in range(C_per_group):
                    for tap, pos in taps:
                        total += float(x[(n, first_channel + d) + pos]) * float(weight[(l, d) + tap])
                out[(n, l) + o] = total


def conv_backward(grad_out, x, weight, geom, grad_x, grad_w, grad_b):
    """Gradients of :func:`conv`, following each output's contributions back.

    For every output ``Y[n, l, o]`` with upstream gradient ``g``: ``dL/db[l] += g``; for every
    tap that reads an in-image input element, ``dL/dW[l, d, t] += g * X[...]`` and
    ``dL/dX[...] += g * W[l, d, t]`` (the lecture's ``dL/dW = dL/dY X̂ᵀ`` and
    ``dL/dX̂ = Wᵀ dL/dY`` + col2im, one element at a time).
    """
    N = x.shape[0]
    C_out, C_per_group = weight.shape[:2]
    out_per_group = C_out // geom.groups
    gx = np.zeros(x.shape)
    gw = np.zeros(weight.shape)
    gb = [0.0] * C_out
    for n in range(N):
        for o in _positions(geom.out_size):
            taps = _conv_taps(o, geom)
            for l in range(C_out):
                first_channel = (l // out_per_group) * C_per_group
                g = float(grad_out[(n, l) + o])
                gb[l] += g
                for d in range(C_per_group):
                    for tap, pos in taps:
                        gw[(l, d) + tap] += g * float(x[(n, first_channel + d) + pos])
                        gx[(n, first_channel + d) + pos] += g * float(weight[(l, d) + tap])
    if grad_x is not None:
        grad_x[...] = gx
    if grad_w is not None:
        grad_w[...] = gw
    if grad_b is not None:
        grad_b[...] = gb


def _pool_window(o, geom):
    """The in-input positions of output ``o``'s window, in row-major tap order."""
    positions = []
    for tap in _positions(geom.kernel):
        pos = tuple(oi * s + t * d - p for oi, t, s, d, p in zip(o, tap, geom.stride, geom.dilation, geom.padding))
        if all(0 <= q < n for q, n in zip(pos, geom.in_size)):
            positions.append(pos)
    return positions


def _window_max(plane, window):
    """``(maximum, its position)`` over the positions ``window`` of ``plane``, by PyTorch's rule.

    A value replaces the best if it is greater or NaN: ties keep the first position (row-major),
    a NaN wins (the last NaN's position is kept), and a window of only -inf reports its first
    position.
    """
    best = -math.inf
    best_at = window[0]
    for pos in window:
        v = float(plane[pos])
        if v > best or math.isnan(v):
            best, best_at = v, pos
    return best, best_at


def max_pool(x, geom, out, indices):
    """Maximum over each window; ``indices`` (or None) gets the flat index of the maximum in its input plane.

    Padding never wins; otherwise :func:`_window_max`'s rule, PyTorch's.
    """
    N, C = x.shape[:2]
    for n in range(N):
        for c in range(C):
            for o in _positions(geom.out_size):
                best, best_at = _window_max(x[n, c], _pool_window(o, geom))
                out[(n, c) + o] = best
                if indices is not None:
                    indices[(n, c) + o] = np.ravel_multi_index(best_at, geom.in_size)


def _avg_window(o, geom):
    """``(in-input positions, divisor)`` of output ``o``: PyTorch's rule.

    Per axis the window ``[o*s - p, o*s - p + k)`` is clipped to the padded input
    ``[-p, n + p)``; with ``count_include_pad`` the divisor is the clipped window's size
    (padding counts, the overhang that ``ceil_mode`` adds does not), otherwise the number of
    input elements in it. ``geom.divisor_override``, when set, is every window's divisor.
    """
    ranges, padded_size = [], 1
    for oi, k, s, p, n in zip(o, geom.kernel, geom.stride, geom.padding, geom.in_size):
        lo = oi * s - p
        hi = min(lo + k, n + p)
        padded_size *= hi - lo
        ranges.append(range(max(lo, 0), min(hi, n)))
    positions = list(itertools.product(*ranges))
    if geom.divisor_override is not None:
        divisor = geom.divisor_override
    else:
        divisor = padded_size if geom.count_include_pad else len(positions)
    return positions, divisor


def avg_pool(x, geom, out):
    """Mean over each window, with PyTorch's divisor (see :func:`_avg_window`)."""
    N, C = x.shape[:2]
    for n in range(N):
        for c in range(C):
            for o in _positions(geom.out_size):
                positions, divisor = _avg_window(o, geom)
                total = sum(float(x[(n, c) + pos]) for pos in positions)
                out[(n, c) + o] = total / divisor if divisor != 0 else 0.0


def max_pool_backward(grad_out, indices, geom, grad_x):
    """Each output's gradient goes to the input element its max came from (summed where windows share it)."""
    N, C = grad_out.shape[:2]
    gx = np.zeros(grad_x.shape)
    for n in range(N):
        for c in range(C):
            for o in _positions(grad_out.shape[2:]):
                pos = np.unravel_index(int(indices[(n, c) + o]), geom.in_size)
                gx[(n, c) + tuple(pos)] += float(grad_out[(n, c) + o])
    grad_x[...] = gx


def avg_pool_backward(grad_out, geom, grad_x):
    """Each output's gradient, divided by its divisor, goes to every input element of its window."""
    N, C = grad_x.shape[:2]
    gx = np.zeros(grad_x.shape)
    for n in range(N):
        for c in range(C):
            for o in _positions(geom.out_size):
                positions, divisor = _avg_window(o, geom)
                g = float(grad_out[(n, c) + o]) / divisor
                for pos in positions:
                    gx[(n, c) + pos] += g
    grad_x[...] = gx


def _adaptive_window(o, geom):
    """The input positions of output ``o``'s adaptive window, row-major: per axis
    ``[floor(i*n/o), ceil((i+1)*n/o))`` (:func:`~fastconv.geometry.adaptive_window`)."""
    return list(itertools.product(*(range(*adaptive_window(i, n, m))
                                    for i, n, m in zip(o, geom.in_size, geom.out_size))))


def adaptive_max_pool(x, geom, out, indices):
    """Maximum over each adaptive window (:func:`_window_max`'s rule); ``indices`` (or None) as in :func:`max_pool`."""
    N, C = x.shape[:2]
    for n in range(N):
        for c in range(C):
            for o in _positions(geom.out_size):
                best, best_at = _window_max(x[n, c], _adaptive_window(o, geom))
                out[(n, c) + o] = best
                if indices is not None:
                    indices[(n, c) + o] = np.ravel_multi_index(best_at, geom.in_size)


def adaptive_avg_pool(x, geom, out):
    """Mean over each adaptive window: its sum divided by the number of elements it holds."""
    N, C = x.shape[:2]
    for n in range(N):
        for c in range(C):
            for o in _positions(geom.out_size):
                window = _adaptive_window(o, geom)
                out[(n, c) + o] = sum(float(x[(n, c) + pos]) for pos in window) / len(window)


def adaptive_avg_pool_backward(grad_out, geom, grad_x):
    """Each output's gradient, divided by its window's size, goes to every element of the window."""
    N, C = grad_x.shape[:2]
    gx = np.zeros(grad_x.shape)
    for n in range(N):
        for c in range(C):
            for o in _positions(geom.out_size):
                window = _adaptive_window(o, geom)
                g = float(grad_out[(n, c) + o]) / len(window)
                for pos in window:
                    gx[(n, c) + pos] += g
    grad_x[...] = gx


STRATEGY = Strategy(
    name="loop",
    summary="pure Python, one output at a time: the definition and the test oracle (slow)",
    automatic=False,
    reference=True,
    ranks=(2, 3),
    ops={"conv": conv, "conv_backward": conv_backward, "max_pool": max_pool,
         "max_pool_backward": max_pool_backward, "avg_pool": avg_pool, "avg_pool_backward": avg_pool_backward,
         "adaptive_max_pool": adaptive_max_pool, "adaptive_avg_pool": adaptive_avg_pool,
         # the indices say where each gradient goes, whatever the windows were
         "adaptive_max_pool_backward": max_pool_backward, "adaptive_avg_pool_backward": adaptive_avg_pool_backward},
)
