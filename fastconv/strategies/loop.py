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


def conv2d_backward(grad_out, x, weight, geom, grad_x, grad_w, grad_b):
    """Gradients of :func:`conv2d`, following each output's contributions back.

    For every output ``Y[n, l, i, j]`` with upstream gradient ``g``:
    ``dL/db[l] += g``; for every tap that reads an in-image input element,
    ``dL/dW[l, d, a, b] += g * X[...]`` and ``dL/dX[...] += g * W[l, d, a, b]``.
    (The lecture's ``dL/dW = dL/dY X̂ᵀ`` and ``dL/dX̂ = Wᵀ dL/dY`` + col2im, one
    element at a time.) Sums are kept in float64 and stored at the end.
    """
    N, C_in, H, W = x.shape
    C_out, C_per_group, kH, kW = weight.shape
    out_per_group = C_out // geom.groups
    sH, sW = geom.stride
    dH, dW = geom.dilation
    (top, _), (left, _) = geom.padding
    oH, oW = geom.out_size
    gx = [[[[0.0] * W for _ in range(H)] for _ in range(C_in)] for _ in range(N)]
    gw = [[[[0.0] * kW for _ in range(kH)] for _ in range(C_per_group)] for _ in range(C_out)]
    gb = [0.0] * C_out
    for n in range(N):
        for l in range(C_out):
            first_channel = (l // out_per_group) * C_per_group
            for i in range(oH):
                for j in range(oW):
                    g = float(grad_out[n, l, i, j])
                    gb[l] += g
                    for d in range(C_per_group):
                        for a in range(kH):
                            row = i * sH + a * dH - top
                            if row < 0 or row >= H:
                                continue
                            for b in range(kW):
                                col = j * sW + b * dW - left
                                if col < 0 or col >= W:
                                    continue
                                gw[l][d][a][b] += g * float(x[n, first_channel + d, row, col])
                                gx[n][first_channel + d][row][col] += g * float(weight[l, d, a, b])
    if grad_x is not None:
        grad_x[...] = gx
    if grad_w is not None:
        grad_w[...] = gw
    if grad_b is not None:
        grad_b[...] = gb


def max_pool2d_backward(grad_out, indices, geom, grad_x):
    """Each output's gradient goes to the input element its max came from (summed where windows share it)."""
    N, C, oH, oW = grad_out.shape
    H, W = geom.in_size
    gx = [[[0.0] * (H * W) for _ in range(C)] for _ in range(N)]
    for n in range(N):
        for c in range(C):
            for i in range(oH):
                for j in range(oW):
                    gx[n][c][int(indices[n, c, i, j])] += float(grad_out[n, c, i, j])
    grad_x[...] = [[[row[r * W : (r + 1) * W] for r in range(H)] for row in plane] for plane in gx]


def avg_pool2d_backward(grad_out, geom, grad_x):
    """Each output's gradient, divided by its divisor, goes to every input element of its window."""
    N, C, H, W = grad_x.shape
    kH, kW = geom.kernel
    sH, sW = geom.stride
    pH, pW = geom.padding
    oH, oW = geom.out_size
    gx = [[[[0.0] * W for _ in range(H)] for _ in range(C)] for _ in range(N)]
    for n in range(N):
        for c in range(C):
            for i in range(oH):
                r0 = i * sH - pH
                r1 = min(r0 + kH, H + pH)
                for j in range(oW):
                    q0 = j * sW - pW
                    q1 = min(q0 + kW, W + pW)
                    rows = range(max(r0, 0), min(r1, H))
                    cols = range(max(q0, 0), min(q1, W))
                    divisor = (r1 - r0) * (q1 - q0) if geom.count_include_pad else len(rows) * len(cols)
                    g = float(grad_out[n, c, i, j]) / divisor
                    for r in rows:
                        for q in cols:
                            gx[n][c][r][q] += g
    grad_x[...] = gx
