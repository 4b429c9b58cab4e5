"""Max and average pooling, 1D and 2D: validate, resolve the geometry, dispatch."""

from __future__ import annotations

import numpy as np

from . import _validate as v
from . import dispatch
from .geometry import PoolGeometry, normalize_tuple, pool_output_size

__all__ = ["max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d"]


def _prepare_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode, count_include_pad):
    """Check every argument; return the 4D contiguous input, the geometry and the user's output shape."""
    x = v.as_array(x, "x", fn)
    spatial = "L" if nd == 1 else "H, W"
    v.check_ndim(x, "x", fn, (nd + 1, nd + 2), f"(N, C, {spatial}) or unbatched (C, {spatial})")
    batched = x.ndim == nd + 2
    xb = x if batched else x[None]
    N, C = xb.shape[:2]
    in_size = xb.shape[2:]
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
        pool_output_size(n, k, s, p, d, bool(ceil_mode))
        for n, k, s, p, d in zip(in_size, kernel, stride, pads, dilation)
    )
    if min(out_size) < 1:
        raise ValueError(
            f"{fn}: padded input {tuple(n + 2 * p for n, p in zip(in_size, pads))} is smaller than the "
            f"(dilated) window {tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))}; "
            "the output would be empty"
        )
    dtype = v.result_dtype(x)
    if nd == 1:
        in_size, kernel, out_size = (1,) + in_size, (1,) + kernel, (1,) + out_size
        stride, dilation, pads = (1,) + stride, (1,) + dilation, (0,) + pads
    geom = PoolGeometry(
        batch=N, channels=C, in_size=tuple(in_size), kernel=tuple(kernel), stride=tuple(stride),
        dilation=tuple(dilation), padding=tuple(pads), out_size=tuple(out_size),
        ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad),
    )
    x4 = v.contiguous(xb, dtype).reshape((N, C) + geom.in_size)
    user_shape = ((N,) if batched else ()) + (C,) + geom.out_size[2 - nd:]
    return x4, geom, user_shape


def _max_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, method):
    dispatch.check_method(method, fn)
    x4, geom, user_shape = _prepare_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode, True)
    out = np.empty(user_shape, dtype=x4.dtype)
    indices = np.empty(user_shape, dtype=np.int64) if return_indices else None
    if out.size:
        strategy = dispatch.resolve(method, "max_pool2d", geom, x4.dtype, fn)
        strategy.max_pool2d(
            x4, geom, out.reshape(geom.output_shape),
            None if indices is None else indices.reshape(geom.output_shape),
        )
    return (out, indices) if return_indices else out


def _avg_pool(fn, nd, x, kernel_size, stride, padding, ceil_mode, count_include_pad, method):
    dispatch.check_method(method, fn)
    x4, geom, user_shape = _prepare_pool(fn, nd, x, kernel_size, stride, padding, 1, ceil_mode, count_include_pad)
    out = np.empty(user_shape, dtype=x4.dtype)
    if out.size:
        strategy = dispatch.resolve(method, "avg_pool2d", geom, x4.dtype, fn)
        strategy.avg_pool2d(x4, geom, out.reshape(geom.output_shape))
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


for _f in (max_pool2d, avg_pool2d):
    _f.__doc__ = _f.__doc__.replace("    {params}", _POOL_PARAMS.strip("\n"))
del _f
