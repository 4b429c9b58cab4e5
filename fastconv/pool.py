"""Max and average pooling, 1D and 2D: validate, resolve the geometry, dispatch."""

from __future__ import annotations

import numpy as np

from . import _validate as v
from . import dispatch
from .geometry import PoolGeometry, _as_int, _pool_output_size, normalize_tuple

__all__ = [
    "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
    "max_pool1d_backward", "max_pool2d_backward", "avg_pool1d_backward", "avg_pool2d_backward",
]


def _windows_touch_input(n, k, s, p, d, o):
    """True if each of the ``o`` windows (start ``i*s - p``, taps ``d`` apart) reads an input element."""
    for i in range(o):
        start = i * s - p
        first = start if start >= 0 else start - (start // d) * d  # first tap at or after 0
        if not (first < n and first <= start + d * (k - 1)):
            return False
    return True


def _pool_geometry(fn, nd, shape, kernel_size, stride, padding, dilation, ceil_mode, count_include_pad):
    """Check the pooling arguments for an input of ``shape``; return the geometry and the user's output shape."""
    batched = len(shape) == nd + 2
    N, C = ((shape[0],) if batched else (1,)) + (shape[-nd - 1],)
    in_size = tuple(shape[-nd:])
    kernel = normalize_tuple(kernel_size, nd, "kernel_size", fn)
    stride = kernel if stride is None else normalize_tuple(stride, nd, "stride", fn)
    dilation = normalize_tuple(dilation, nd, "dilation", fn)
    if isinstance(padding, str):
        raise ValueError(f"{fn}: padding must be an int or one int per spatial dimension, got {padding!r}")
    pads = normalize_tuple(padding, nd, "padding", fn, minimum=0)
    for p, k in zip(pads, kernel):
        if p > k // 2:
            raise ValueError(
                f"{fn}: padding must be at most half the kernel size, got padding={padding!r} "
                f"for kernel_size={kernel_size!r}"
            )
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"{fn}: ceil_mode must be a bool, got {ceil_mode!r}")
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"{fn}: count_include_pad must be a bool, got {count_include_pad!r}")
    out_size = tuple(
        _pool_output_size(n, k, s, p, d, bool(ceil_mode))
        for n, k, s, p, d in zip(in_size, kernel, stride, pads, dilation)
    )
    if min(out_size) < 1:
        raise ValueError(
            f"{fn}: padded input {tuple(n + 2 * p for n, p in zip(in_size, pads))} is smaller than the "
            f"(dilated) window {tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))}; "
            "the output would be empty"
        )
    for n, k, s, p, d, o in zip(in_size, kernel, stride, pads, dilation, out_size):
        if d > 1 and not _windows_touch_input(n, k, s, p, d, o):
            raise ValueError(
                f"{fn}: with dilation {d} and padding {p}, a window over an input of size {n} holds "
                "only padding; its maximum and index would be meaningless"
            )
    if nd == 1:  # a 1D problem is a 2D problem of height 1
        in_size, kernel, out_size = (1,) + in_size, (1,) + kernel, (1,) + out_size
        stride, dilation, pads = (1,) + stride, (1,) + dilation, (0,) + pads
    geom = PoolGeometry(
        batch=N, channels=C, in_size=tuple(in_size), kernel=tuple(kernel), stride=tuple(stride),
        dilation=tuple(dilation), padding=tuple(pads), out_size=tuple(out_size),
        ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad),
    )
    user_shape = ((N,) if batched else ()) + (C,) + geom.out_size[2 - nd:]
    return geom, user_shape


def _prepare_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode, count_include_pad):
    """Check every argument; return the 4D contiguous input, the geometry and the user's output shape."""
    x = v.as_array(x, "x", fn)
    spatial = "L" if nd == 1 else "H, W"
    v.check_ndim(x, "x", fn, (nd + 1, nd + 2), f"(N, C, {spatial}) or unbatched (C, {spatial})")
    geom, user_shape = _pool_geometry(fn, nd, x.shape, kernel_size, stride, padding, dilation, ceil_mode,
                                      count_include_pad)
    x4 = v.contiguous(x, v.result_dtype(x)).reshape((geom.batch, geom.channels) + geom.in_size)
    return x4, geom, user_shape


def _max_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, method):
    dispatch.check_method(method, fn)
    x4, geom, user_shape = _prepare_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode, True)
    out = np.empty(user_shape, dtype=x4.dtype)
    indices = np.empty(user_shape, dtype=np.int64) if return_indices else None
    if out.size:
        i4 = None if indices is None else indices.reshape(geom.output_shape)
        dispatch.run(method, "max_pool2d", geom, x4.dtype, fn, (x4, geom, out.reshape(geom.output_shape), i4))
    return (out, indices) if return_indices else out


def _avg_pool(fn, nd, x, kernel_size, stride, padding, ceil_mode, count_include_pad, method):
    dispatch.check_method(method, fn)
    x4, geom, user_shape = _prepare_pool(fn, nd, x, kernel_size, stride, padding, 1, ceil_mode, count_include_pad)
    out = np.empty(user_shape, dtype=x4.dtype)
    if out.size:
        dispatch.run(method, "avg_pool2d", geom, x4.dtype, fn, (x4, geom, out.reshape(geom.output_shape)))
    return out


_POOL_PARAMS = """
    kernel_size : int or tuple of int
        Window size, one value per spatial dimension or one for all.
    stride : int or tuple of int, optional
        Step between windows; defaults to ``kernel_size``.
    padding : int or tuple of int
        Implicit padding on both sides, at most half the kernel size (PyTorch's rule)."""


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, method="auto"):
    """Max pooling over ``(N, C, L)`` or ``(C, L)`` inputs; see :func:`max_pool2d`."""
    return _max_pool("max_pool1d", 1, x, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices, method)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, method="auto"):
    """Max pooling over ``(N, C, H, W)`` or ``(C, H, W)`` inputs, as ``torch.nn.functional.max_pool2d``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
    {params}
    dilation : int or tuple of int
        Spacing of the window's elements.
    ceil_mode : bool
        Round the output size up (a last, partial window), never starting a
        window in the right padding.
    return_indices : bool
        Also return, for each output, the flat index ``row * W + col`` of the
        maximum in its input plane (what ``max_pool2d_backward`` needs).
    method : str
        'auto', 'loop', 'vectorized', 'direct' or 'img2col'.

    Returns
    -------
    out : ndarray, shape (N, C, H_out, W_out) or (C, H_out, W_out)
    indices : ndarray of int64, same shape (only with ``return_indices``)

    Padding never wins. A window holding NaN returns NaN, as in PyTorch.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.max_pool2d(np.arange(16.).reshape(1, 4, 4), 2)
    array([[[ 5.,  7.],
            [13., 15.]]])
    """
    return _max_pool("max_pool2d", 2, x, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices, method)


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               *, method="auto"):
    """Average pooling over ``(N, C, L)`` or ``(C, L)`` inputs; see :func:`avg_pool2d`."""
    return _avg_pool("avg_pool1d", 1, x, kernel_size, stride, padding, ceil_mode, count_include_pad, method)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               *, method="auto"):
    """Average pooling over ``(N, C, H, W)`` or ``(C, H, W)`` inputs, as ``torch.nn.functional.avg_pool2d``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
    {params}
    ceil_mode : bool
        Round the output size up (a last, partial window).
    count_include_pad : bool
        Divide by the window size including zero padding (default), or by the
        number of input elements in the window.
    method : str
        'auto', 'loop', 'vectorized', 'direct' or 'img2col'.

    Returns
    -------
    ndarray, shape (N, C, H_out, W_out) or (C, H_out, W_out)

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.avg_pool2d(np.arange(16.).reshape(1, 4, 4), 2)
    array([[[ 2.5,  4.5],
            [10.5, 12.5]]])
    """
    return _avg_pool("avg_pool2d", 2, x, kernel_size, stride, padding, ceil_mode, count_include_pad, method)


def _input_shape(fn, nd, input_shape):
    """``input_shape`` as a tuple of non-negative ints of length nd+1 or nd+2."""
    try:
        shape = tuple(_as_int(n, "input_shape", fn) for n in input_shape)
    except TypeError:
        raise TypeError(f"{fn}: input_shape must be a tuple of ints, got {input_shape!r}") from None
    if len(shape) not in (nd + 1, nd + 2) or min(shape) < 0:
        spatial = "L" if nd == 1 else "H, W"
        raise ValueError(f"{fn}: input_shape must be (N, C, {spatial}) or (C, {spatial}), got {input_shape!r}")
    return shape


def _grad_output(fn, grad_output, expected_shape):
    grad_output = v.as_array(grad_output, "grad_output", fn)
    if grad_output.shape != tuple(expected_shape):
        raise ValueError(
            f"{fn}: grad_output must have the forward output's shape {tuple(expected_shape)}, "
            f"got {grad_output.shape}"
        )
    return grad_output


def _max_pool_backward(fn, nd, grad_output, indices, input_shape, method):
    dispatch.check_method(method, fn)
    shape = _input_shape(fn, nd, input_shape)
    grad_output = v.as_array(grad_output, "grad_output", fn)
    if grad_output.ndim != len(shape) or grad_output.shape[:-nd] != shape[:-nd]:
        raise ValueError(
            f"{fn}: grad_output must be the pooled output of an input of shape {shape} "
            f"(same leading dimensions), got shape {grad_output.shape}"
        )
    indices = v.as_array(indices, "indices", fn)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{fn}: indices must be integers (from return_indices=True), got dtype {indices.dtype}")
    if indices.shape != grad_output.shape:
        raise ValueError(f"{fn}: indices must have grad_output's shape {grad_output.shape}, got {indices.shape}")
    plane = int(np.prod(shape[-nd:]))
    if indices.size and (indices.min() < 0 or indices.max() >= plane):
        raise ValueError(
            f"{fn}: indices must lie in [0, {plane}) (flat positions in an input plane of shape "
            f"{shape[-nd:]}), got values from {indices.min()} to {indices.max()}"
        )
    dtype = v.result_dtype(grad_output)
    batched = len(shape) == nd + 2
    N, C = (shape[0] if batched else 1), shape[-nd - 1]
    in_size = ((1,) if nd == 1 else ()) + shape[-nd:]
    out_size = ((1,) if nd == 1 else ()) + grad_output.shape[-nd:]
    # Max-pooling's backward only needs the planes and their sizes; the window is in the indices.
    geom = PoolGeometry(batch=N, channels=C, in_size=in_size, kernel=(1, 1), stride=(1, 1),
                        dilation=(1, 1), padding=(0, 0), out_size=out_size)
    grad_x = np.zeros(shape, dtype)
    if grad_x.size and grad_output.size:
        g4 = v.contiguous(grad_output, dtype).reshape(geom.output_shape)
        i4 = v.contiguous(indices, np.int64).reshape(geom.output_shape)
        dispatch.run(method, "max_pool2d_backward", geom, dtype, fn, (g4, i4, geom, grad_x.reshape((N, C) + in_size)))
    return grad_x


def _avg_pool_backward(fn, nd, grad_output, input_shape, kernel_size, stride, padding, ceil_mode,
                       count_include_pad, method):
    dispatch.check_method(method, fn)
    shape = _input_shape(fn, nd, input_shape)
    geom, user_shape = _pool_geometry(fn, nd, shape, kernel_size, stride, padding, 1, ceil_mode,
                                      count_include_pad)
    grad_output = _grad_output(fn, grad_output, user_shape)
    dtype = v.result_dtype(grad_output)
    grad_x = np.empty(shape, dtype)
    if grad_x.size:
        g4 = v.contiguous(grad_output, dtype).reshape(geom.output_shape)
        gx4 = grad_x.reshape((geom.batch, geom.channels) + geom.in_size)
        dispatch.run(method, "avg_pool2d_backward", geom, dtype, fn, (g4, geom, gx4))
    return grad_x


def max_pool1d_backward(grad_output, indices, input_shape, *, method="auto"):
    """Gradient of :func:`max_pool1d`; see :func:`max_pool2d_backward`."""
    return _max_pool_backward("max_pool1d_backward", 1, grad_output, indices, input_shape, method)


def max_pool2d_backward(grad_output, indices, input_shape, *, method="auto"):
    """Gradient of :func:`max_pool2d` with respect to its input.

    Parameters
    ----------
    grad_output : array_like, shape (N, C, H_out, W_out) or (C, H_out, W_out)
        dL/dY.
    indices : array_like of int, same shape
        From ``max_pool2d(..., return_indices=True)``: flat positions ``row * W + col``.
    input_shape : tuple of int
        The forward input's shape, (N, C, H, W) or (C, H, W).

    Returns
    -------
    ndarray of ``input_shape``
        Each output's gradient added at the input element its maximum came from.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> y, idx = fastconv.max_pool2d(np.arange(16.).reshape(1, 4, 4), 2, return_indices=True)
    >>> fastconv.max_pool2d_backward(np.ones_like(y), idx, (1, 4, 4))[0]
    array([[0., 0., 0., 0.],
           [0., 1., 0., 1.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]])
    """
    return _max_pool_backward("max_pool2d_backward", 2, grad_output, indices, input_shape, method)


def avg_pool1d_backward(grad_output, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, *, method="auto"):
    """Gradient of :func:`avg_pool1d`; see :func:`avg_pool2d_backward`."""
    return _avg_pool_backward("avg_pool1d_backward", 1, grad_output, input_shape, kernel_size, stride,
                              padding, ceil_mode, count_include_pad, method)


def avg_pool2d_backward(grad_output, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, *, method="auto"):
    """Gradient of :func:`avg_pool2d` with respect to its input.

    ``grad_output`` is dL/dY (the forward output's shape); ``input_shape`` and the
    other arguments are those of the forward call. Each output's gradient,
    divided by its window's divisor, is added to every input element of the window.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.avg_pool2d_backward(np.ones((1, 1, 2, 2)), (1, 1, 4, 4), 2)[0, 0]
    array([[0.25, 0.25, 0.25, 0.25],
           [0.25, 0.25, 0.25, 0.25],
           [0.25, 0.25, 0.25, 0.25],
           [0.25, 0.25, 0.25, 0.25]])
    """
    return _avg_pool_backward("avg_pool2d_backward", 2, grad_output, input_shape, kernel_size, stride,
                              padding, ceil_mode, count_include_pad, method)


for _f in (max_pool2d, avg_pool2d):
    _f.__doc__ = _f.__doc__.replace("    {params}", _POOL_PARAMS.strip("\n"))
del _f
