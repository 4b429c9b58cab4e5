"""The lecture's img2col matrix and its adjoint, as public functions.

:func:`im2col` turns every receptive field of an image into a column: for one
image of ``C`` channels the matrix has ``C*kH*kW`` rows (ordered channel,
kernel row, kernel column) and ``oH*oW`` columns (output positions,
row-major), so a convolution is ``W.reshape(C_out, -1) @ im2col(x, ...)``.
:func:`col2im` is its adjoint: it adds every column back into the image
positions it was read from (overlapping windows are summed, padding is
dropped), which is how the gradient of the input flows back through img2col.

Both run the Numba kernels of :mod:`fastconv.strategies.img2col`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _validate as v
from ._typing import Array, ArrayLike, IntOrTuple, Padding
from . import strategies
from .geometry import conv_problem
from .geometry import _as_int, normalize_tuple

__all__ = ["col2im", "im2col"]


def _geometry(fn, in_size, kernel_size, stride, padding, dilation):
    """Check the window arguments (as conv2d would); return kernel, stride, dilation, padding pairs, ``(oH, oW)``."""
    kernel = normalize_tuple(kernel_size, 2, "kernel_size", fn)
    geom, _ = conv_problem(fn, 2, (1, 1) + tuple(in_size), (1, 1) + kernel, None, stride, padding, dilation, 1)
    return geom.kernel, geom.stride, geom.dilation, geom.padding, geom.out_size


def _kernels_and_layout(kernel, stride, dilation, pads, out_size):
    """The img2col strategy module (imported on first use) and the layout tuple its kernels take."""
    kernels = strategies.get("img2col")
    return kernels, kernels._layout(kernel, stride, dilation, pads[0][0], pads[1][0], out_size[1])


def im2col(x: ArrayLike, kernel_size: IntOrTuple, stride: IntOrTuple = 1, padding: Padding = 0,
           dilation: IntOrTuple = 1) -> Array:
    """The img2col matrix of every image: one column per receptive field.

    ``cols[n, (c*kH + a)*kW + b, i*oW + j] = x_pad[n, c, i*sH + a*dH, j*sW + b*dW]``,
    where ``x_pad`` is ``x`` with zeros around it. A convolution is then
    ``weight.reshape(C_out, -1) @ cols`` (with ``groups``, each group's rows).

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
        Input images (unbatched input gives an unbatched result).
    kernel_size : int or (int, int)
        Window size ``(kH, kW)``.
    stride, dilation : int or (int, int)
        Step between windows; spacing of the window's taps.
    padding : int, (int, int), ((top, bottom), (left, right)), 'valid' or 'same'
        Zeros around the image, as :func:`fastconv.conv2d` accepts it ('same'
        is TensorFlow's rule for any stride).

    Returns
    -------
    ndarray, shape (N, C*kH*kW, oH*oW) or (C*kH*kW, oH*oW)
        Rows ordered (channel, kernel row, kernel column); columns are the
        output positions in row-major order. float32 or float64:
        ``np.result_type(x, np.float32)``.

    See Also
    --------
    col2im : the adjoint, adding columns back into images.

    Examples
    --------
    The lecture's example: two 4x6 feature maps, a 2x2 kernel and stride 2
    give 2x3 windows, so the matrix has ``2*2*2 = 8`` rows and ``2*3 = 6``
    columns. The first column is the top-left 2x2 window of each map:

    >>> import numpy as np, fastconv
    >>> x = np.arange(48.).reshape(2, 4, 6)
    >>> cols = fastconv.im2col(x, 2, stride=2)
    >>> cols.shape
    (8, 6)
    >>> cols[:, 0]
    array([ 0.,  1.,  6.,  7., 24., 25., 30., 31.])

    Multiplying by the flattened kernels is the convolution:

    >>> w = np.ones((3, 2, 2, 2))
    >>> y = (w.reshape(3, -1) @ cols).reshape(3, 2, 3)
    >>> np.allclose(y, fastconv.conv2d(x, w, stride=2))
    True
    """
    fn = "im2col"
    x = v.as_array(x, "x", fn)
    v.check_ndim(x, "x", fn, (3, 4), "(N, C, H, W) or unbatched (C, H, W)")
    batched = x.ndim == 4
    xb = x if batched else x[None]
    N, C, H, W = xb.shape
    kernel, stride, dilation, pads, out_size = _geometry(fn, (H, W), kernel_size, stride, padding, dilation)
    dtype = v.result_dtype(x)
    cols = np.empty((N, C * kernel[0] * kernel[1], out_size[0] * out_size[1]), dtype=dtype)
    if cols.size:
        kernels, layout = _kernels_and_layout(kernel, stride, dilation, pads, out_size)
        kernels.im2col_into(v.contiguous(xb, dtype), layout, cols)
    return cols if batched else cols[0]


def col2im(cols: ArrayLike, input_shape: Sequence[int], kernel_size: IntOrTuple, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1) -> Array:
    """The adjoint of :func:`im2col`: add every column back into the image it was read from.

    ``x[n, c, r, q] = sum of cols[n, (c*kH + a)*kW + b, i*oW + j]`` over every
    ``(a, b, i, j)`` with ``r = i*sH + a*dH - top`` and ``q = j*sW + b*dW - left``.
    Entries of overlapping windows are summed; entries that fall in the padding
    are dropped; input positions no window reads are 0. So
    ``np.vdot(col2im(c, ...), x) == np.vdot(c, im2col(x, ...))`` for every
    ``x`` and ``c``, and ``col2im`` of a convolution's column gradient
    ``Wᵀ·dY`` is the gradient of its input.

    Parameters
    ----------
    cols : array_like, shape (N, C*kH*kW, oH*oW) or (C*kH*kW, oH*oW)
        Columns as :func:`im2col` lays them out (the unbatched form goes with
        a 3-D ``input_shape``).
    input_shape : tuple of int
        Shape of the image(s) to rebuild: ``(N, C, H, W)`` or ``(C, H, W)``.
    kernel_size, stride, padding, dilation
        As given to :func:`im2col`.

    Returns
    -------
    ndarray, shape input_shape
        float32 or float64: ``np.result_type(cols, np.float32)``.

    See Also
    --------
    im2col : the columns this function adds back.

    Examples
    --------
    Adding back columns of ones counts how many windows read each pixel
    (3x3 windows, padding 1):

    >>> import numpy as np, fastconv
    >>> ones = np.ones((9, 16))
    >>> fastconv.col2im(ones, (1, 4, 4), 3, padding=1)
    array([[[4., 6., 6., 4.],
            [6., 9., 9., 6.],
            [6., 9., 9., 6.],
            [4., 6., 6., 4.]]])

    With the lecture's stride-2 windows nothing overlaps, so col2im undoes im2col:

    >>> x = np.arange(48.).reshape(2, 4, 6)
    >>> np.array_equal(fastconv.col2im(fastconv.im2col(x, 2, stride=2), x.shape, 2, stride=2), x)
    True
    """
    fn = "col2im"
    cols = v.as_array(cols, "cols", fn)
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__"):
        raise TypeError(f"{fn}: input_shape must be a tuple (N, C, H, W) or (C, H, W), got {input_shape!r}")
    shape = tuple(_as_int(s, "input_shape", fn) for s in input_shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"{fn}: input_shape must be (N, C, H, W) or (C, H, W), got {shape!r}")
    if min(shape) < 0 or min(shape[-2:]) < 1:
        raise ValueError(f"{fn}: input_shape must have sizes >= 0 and H, W >= 1, got {shape!r}")
    batched = len(shape) == 4
    N, C, H, W = shape if batched else (1,) + shape
    kernel, stride, dilation, pads, out_size = _geometry(fn, (H, W), kernel_size, stride, padding, dilation)
    rows, width = C * kernel[0] * kernel[1], out_size[0] * out_size[1]
    expected = (N, rows, width) if batched else (rows, width)
    if cols.shape != expected:
        what = "(N, C*kH*kW, oH*oW)" if batched else "(C*kH*kW, oH*oW)"
        raise ValueError(
            f"{fn}: cols must have shape {what} = {expected} for input_shape {shape!r} and these "
            f"window arguments, got {cols.shape}"
        )
    dtype = v.result_dtype(cols)
    x = np.empty((N, C, H, W), dtype=dtype)
    if x.size:
        cols3 = v.contiguous(cols, dtype).reshape(N, rows, width)
        kernels, layout = _kernels_and_layout(kernel, stride, dilation, pads, out_size)
        kernels.col2im_into(cols3, layout, x)
    return x.reshape(shape)
