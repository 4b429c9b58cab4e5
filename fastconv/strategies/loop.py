"""The pure-Python loop strategy: the readable definition and the test oracle.

Each function is the lecture's formula written out as loops, one output value
at a time. It is slow (about a microsecond per multiply-add) and is meant for
reading and for checking the fast strategies on small problems, not for use.

Every strategy module has the same functions with the same signatures:
``conv2d(x, weight, bias, geom, out)``, ``max_pool2d(x, geom, out, indices)``,
``avg_pool2d(x, geom, out)`` (and the backward functions). Inputs are
validated, C-contiguous, 4D ``(N, C, H, W)`` arrays of one float dtype; the
function writes every element of ``out``.
"""

from __future__ import annotations

import math


def conv2d(x, weight, bias, geom, out):
    """Cross-correlation, as in the lecture, summed over each group's channels.

    ``Y[n, l, i, j] = b[l] + sum_{d, a, b} X[n, d, i*sH + a*dH - top, j*sW + b*dW - left] * W[l, d, a, b]``
    where ``d`` runs over the input channels of ``l``'s group and input
    positions outside the image read as zero (the padding).
    """
    N, C_in, H, W = x.shape
    C_out, C_per_group, kH, kW = weight.shape
    out_per_group = C_out // geom.groups
    sH, sW = geom.stride
    dH, dW = geom.dilation
    (top, _), (left, _) = geom.padding
    oH, oW = geom.out_size
    for n in range(N):
        for l in range(C_out):
            first_channel = (l // out_per_group) * C_per_group
            for i in range(oH):
                for j in range(oW):
                    total = 0.0 if bias is None else float(bias[l])
                    for d in range(C_per_group):
                        for a in range(kH):
                            row = i * sH + a * dH - top
                            if row < 0 or row >= H:
                                continue
                            for b in range(kW):
                                col = j * sW + b * dW - left
                                if col < 0 or col >= W:
                                    continue
                                total += float(x[n, first_channel + d, row, col]) * float(weight[l, d, a, b])
                    out[n, l, i, j] = total


def max_pool2d(x, geom, out, indices):
    """Maximum over each window; ``indices`` (or None) gets the flat index ``row*W + col``.

    Padding never wins. A NaN in the window wins (and the last NaN's index is
    kept), as in PyTorch; a window of only -inf reports its first input element.
    """
    N, C, H, W = x.shape
    kH, kW = geom.kernel
    sH, sW = geom.stride
    dH, dW = geom.dilation
    pH, pW = geom.padding
    oH, oW = geom.out_size
    for n in range(N):
        for c in range(C):
            for i in range(oH):
                rows = [i * sH - pH + a * dH for a in range(kH)]
                rows = [r for r in rows if 0 <= r < H]
                for j in range(oW):
                    cols = [j * sW - pW + b * dW for b in range(kW)]
                    cols = [q for q in cols if 0 <= q < W]
                    best = -math.inf
                    best_index = rows[0] * W + cols[0]
                    for r in rows:
                        for q in cols:
                            v = float(x[n, c, r, q])
                            if v > best or math.isnan(v):
                                best = v
                                best_index = r * W + q
                    out[n, c, i, j] = best
                    if indices is not None:
                        indices[n, c, i, j] = best_index


def avg_pool2d(x, geom, out):
    """Mean over each window, with PyTorch's divisor.

    The window is clipped to the padded input; with ``count_include_pad`` the
    divisor is the clipped window's size (padding counts, the overhang that
    ``ceil_mode`` adds does not), otherwise the number of input elements in it.
    """
    N, C, H, W = x.shape
    kH, kW = geom.kernel
    sH, sW = geom.stride
    pH, pW = geom.padding
    oH, oW = geom.out_size
    for n in range(N):
        for c in range(C):
            for i in range(oH):
                r0 = i * sH - pH
                r1 = min(r0 + kH, H + pH)
                for j in range(oW):
                    q0 = j * sW - pW
                    q1 = min(q0 + kW, W + pW)
                    padded_size = (r1 - r0) * (q1 - q0)
                    rows = range(max(r0, 0), min(r1, H))
                    cols = range(max(q0, 0), min(q1, W))
                    total = 0.0
                    for r in rows:
                        for q in cols:
                            total += float(x[n, c, r, q])
                    divisor = padded_size if geom.count_include_pad else len(rows) * len(cols)
                    out[n, c, i, j] = total / divisor if divisor > 0 else 0.0
