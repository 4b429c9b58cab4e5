"""``conv1d`` and ``conv2d``: validate, resolve the geometry, dispatch to a strategy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _validate as v
from ._typing import Array, ArrayLike, Gradients, IntOrTuple, Padding
from . import _dask, dispatch, strategies
from .geometry import UNCACHEABLE, conv_problem, key_part

__all__ = ["conv1d", "conv1d_backward", "conv2d", "conv2d_backward", "conv3d", "conv3d_backward"]


#: (function, shapes, dtypes, arguments) -> (problem, result shape, dtype): a repeated call with the
#: same shapes and arguments skips the checks and the geometry (they depend on nothing else).
_problems: dict = {}
_PROBLEMS_MAX = 4096


def _problem(fn, nd, x, weight, bias, stride, padding, dilation, groups):
    """The checked problem of a call, from the cache when the same shapes and arguments were seen."""
    if type(stride) is int and type(padding) is int and type(dilation) is int and type(groups) is int:
        args = ("plain", stride, padding, dilation, groups)  # the common call, keyed as it is
    else:
        args = ("tagged", key_part(stride), key_part(padding), key_part(dilation), key_part(groups))
    key = None
    if UNCACHEABLE not in args:
        key = (fn, x.shape, x.dtype, weight.shape, weight.dtype,
               None if bias is None else (bias.shape, bias.dtype)) + args
        hit = _problems.get(key)
        if hit is not None:
            return hit
    dtype = v.result_dtype(x, weight)  # np.result_type(x, weight, np.float32); the bias is cast to it
    geom, user_shape = conv_problem(fn, nd, x.shape, weight.shape, None if bias is None else bias.shape,
                                    stride, padding, dilation, groups, dtype)
    hit = (geom, user_shape, dtype)
    if key is not None:
        if len(_problems) >= _PROBLEMS_MAX:
            _problems.clear()
        _problems[key] = hit
    return hit


def _checked(fn, nd, x, weight, bias, stride, padding, dilation, groups):
    """Check every argument: ``x`` as an array (any memory layout), the weight and bias as contiguous
    arrays of the problem's rank and dtype, the problem, the user's result shape, the dtype and the
    caller's arrays by name (for ``out``'s overlap check)."""
    x = v.as_array(x, "x", fn)
    weight = v.as_array(weight, "weight", fn)
    if bias is not None:
        bias = v.as_array(bias, "bias", fn)
    geom, user_shape, dtype = _problem(fn, nd, x, weight, bias, stride, padding, dilation, groups)
    w4 = v.contiguous(weight, dtype).reshape(geom.weight_shape)
    b = None if bias is None else v.contiguous(bias, dtype)
    return x, w4, b, geom, user_shape, dtype, (("x", x), ("weight", weight), ("bias", bias))


def _prepare_conv(fn, nd, x, weight, bias, stride, padding, dilation, groups):
    """Check every argument; return contiguous arrays of the problem's rank, the problem and the user's shape."""
    x, w4, b, geom, user_shape, dtype, inputs = _checked(fn, nd, x, weight, bias, stride, padding, dilation, groups)
    return v.contiguous(x, dtype).reshape(geom.input_shape), w4, b, geom, user_shape, inputs


def _channels_last(x, nd) -> bool:
    """Whether a 2D input is in channels-last memory: ``(N, C, H, W)`` (or ``(C, H, W)``) whose memory is
    ``N, H, W, C``, what ``x_nhwc.transpose(0, 3, 1, 2)`` gives (PyTorch's ``channels_last``)."""
    if nd != 2 or x.ndim not in (3, 4) or x.flags.c_contiguous:
        return False
    return np.moveaxis(x, -3, -1).flags.c_contiguous


def _conv_channels_last(fn, nd, x, weight, bias, stride, padding, dilation, groups, method):
    """A channels-last input without ``out``: the result comes back in channels-last memory too.

    A strategy that reads that memory in place (``Strategy.channels_last``) gets ``x`` as it is and
    writes into a channels-last result; any other gets a C-contiguous copy of ``x``, and its result
    is converted.
    """
    x, w4, b, geom, user_shape, dtype, _ = _checked(fn, nd, x, weight, bias, stride, padding, dilation, groups)
    geom = geom.channels_last()
    name, run = dispatch.resolve(method, "conv", geom, dtype, fn)
    x_last = np.moveaxis(v.contiguous(np.moveaxis(x, -3, -1), dtype), -1, -3).reshape(geom.input_shape)
    N, C_out, oH, oW = geom.output_shape
    result = np.empty((N, oH, oW, C_out), dtype=dtype).transpose(0, 3, 1, 2)
    if result.size:
        if run is not None and strategies.strategy(name).channels_last:
            run(x_last, w4, b, geom, result)
        else:
            first = np.empty(geom.output_shape, dtype=dtype)
            if run is None:  # measure mode times on the real arrays
                dispatch.run(method, "conv", geom, dtype, fn, (np.ascontiguousarray(x_last), w4, b, geom, first))
            else:
                run(np.ascontiguousarray(x_last), w4, b, geom, first)
            result[...] = first
    return result if len(user_shape) == 4 else result[0]


#: Repeated calls (C-contiguous arrays, plain arguments, no ``out``): see :class:`fastconv.dispatch.Calls`.
_calls = dispatch.Calls()


def _conv_call(user_shape, dtype, run):
    """The repeated-call function of a convolution problem (see :data:`_calls`)."""
    def call(x, weight, bias):
        out = np.empty(user_shape, dtype)
        if out.size:
            run(x, weight, bias, out)
        return out
    return call


def _conv(fn, nd, x, weight, bias, stride, padding, dilation, groups, method, out):
    key = None
    if (out is None and type(x) is np.ndarray and type(weight) is np.ndarray and x.flags.c_contiguous
            and weight.flags.c_contiguous and type(method) is str and (type(padding) is int or type(padding) is str)
            and dispatch.plain((stride, dilation, groups))
            and (bias is None or (type(bias) is np.ndarray and bias.flags.c_contiguous))):
        key = dispatch.repeat_key(fn, x.shape, x.dtype, weight.shape, weight.dtype,
                                  None if bias is None else (bias.shape, bias.dtype), stride, padding, dilation,
                                  groups, method)
        call = _calls.get(key)
        if call is not None:
            return call(x, weight, bias)
    if not isinstance(x, np.ndarray) and _dask.is_dask(x):  # a lazy result, chunk by chunk
        return _dask.conv(fn, nd, x, weight, bias, stride, padding, dilation, groups, method, out)
    if out is None and isinstance(x, np.ndarray) and _channels_last(x, nd):
        return _conv_channels_last(fn, nd, x, weight, bias, stride, padding, dilation, groups, method)
    x4, w4, b, geom, user_shape, inputs = _prepare_conv(fn, nd, x, weight, bias, stride, padding, dilation, groups)
    if key is not None and x.dtype == weight.dtype == x4.dtype and (bias is None or bias.dtype == x4.dtype):
        run = dispatch.bound(method, "conv", geom, x4.dtype, fn)
        if run is not None:
            return _calls.remember(key, _conv_call(user_shape, x4.dtype, run))(x, weight, bias)
    _, run = dispatch.resolve(method, "conv", geom, x4.dtype, fn)
    if out is None:
        out = np.empty(user_shape, dtype=x4.dtype)
    else:
        v.check_out(out, user_shape, x4.dtype, fn, inputs)
    if out.size:
        if run is None:  # measure mode times on the real arrays
            dispatch.run(method, "conv", geom, x4.dtype, fn, (x4, w4, b, geom, out.reshape(geom.output_shape)))
        else:
            run(x4, w4, b, geom, out.reshape(geom.output_shape))
    return out


def conv1d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1, *, method: str = "auto",
           out: Array | None = None) -> Array:
    """1D convolution (cross-correlation) over ``(N, C_in, L)`` inputs.

    ``y[n, l, t] = bias[l] + sum_{d, i} x_pad[n, g*C_in/groups + d, t*stride + i*dilation] * weight[l, d, i]``
    where ``g`` is output channel ``l``'s group.

    Parameters
    ----------
    input : array_like, shape (N, C_in, L) or (C_in, L)
        Input signals (unbatched input gives an unbatched result); PyTorch's parameter
        name, messages call it ``x``.
    weight : array_like, shape (C_out, C_in/groups, k)
        The kernels.
    bias : array_like, shape (C_out,), optional
        Added to every output of each channel.
    stride, dilation : int or (int,)
        Step between receptive fields; spacing of the kernel taps.
    padding : int, (int,), ((lo, hi),), 'valid' or 'same'
        Zeros added at each end. 'same' is TensorFlow's rule for any stride:
        ``ceil(L / stride)`` outputs, the odd element of padding on the right.
    groups : int
        Input and output channels are split into ``groups`` independent
        convolutions; ``groups == C_in`` is depthwise.
    method : str
        'auto' (default), 'measure', or a registered strategy (``fastconv.strategies.names()``): 'loop',
        'vectorized', 'direct', 'img2col', and for the problems they compute 'winograd' (3x3, stride 1)
        and 'fft' (large kernels); the precision setting decides whether 'auto' may pick those two.
    out : ndarray, optional
        C-contiguous array of the result's shape and dtype to write into.

    Returns
    -------
    ndarray, shape (N, C_out, L_out) or (C_out, L_out)
        float32 or float64: ``np.result_type(input, weight, np.float32)``.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.conv1d(np.array([[1., 0, 2, 2, 3, 1]]), np.array([[[3., 2, 2]]]))
    array([[ 7.,  8., 16., 14.]])
    """
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups, method, out)


def conv2d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1, *, method: str = "auto",
           out: Array | None = None) -> Array:
    """2D convolution (cross-correlation) over ``(N, C_in, H, W)`` inputs.

    ``Y[n, l, i, j] = b[l] + sum_{d, a, b} X_pad[n, g*C_in/groups + d, i*sH + a*dH, j*sW + b*dW] * W[l, d, a, b]``
    where ``g`` is output channel ``l``'s group.

    Parameters
    ----------
    input : array_like, shape (N, C_in, H, W) or (C_in, H, W)
        Input images (unbatched input gives an unbatched result); PyTorch's parameter
        name, messages call it ``x``.
    weight : array_like, shape (C_out, C_in/groups, kH, kW)
        The kernels.
    bias : array_like, shape (C_out,), optional
        Added to every output of each channel.
    stride, dilation : int or (int, int)
        Step between receptive fields; spacing of the kernel taps.
    padding : int, (int, int), ((top, bottom), (left, right)), 'valid' or 'same'
        Zeros around the image. 'same' is TensorFlow's rule for any stride:
        ``ceil(H / sH) x ceil(W / sW)`` outputs, the odd row/column of padding
        at the bottom/right.
    groups : int
        Input and output channels are split into ``groups`` independent
        convolutions; ``groups == C_in`` is depthwise.
    method : str
        'auto' (default), 'measure', or a registered strategy (``fastconv.strategies.names()``): 'loop',
        'vectorized', 'direct', 'img2col', and for the problems they compute 'winograd' (3x3, stride 1)
        and 'fft' (large kernels); the precision setting decides whether 'auto' may pick those two.
    out : ndarray, optional
        C-contiguous array of the result's shape and dtype to write into.

    Returns
    -------
    ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        float32 or float64: ``np.result_type(input, weight, np.float32)``.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.array([[[1., 2, 3, 2], [2, 3, 2, 5], [1, 2, 2, 1], [0, 2, 1, 2]]])
    >>> fastconv.conv2d(x, np.array([[[[-1., 1], [-1, 1]]]]))
    array([[[ 2.,  0.,  2.],
            [ 2., -1.,  2.],
            [ 3., -1.,  0.]]])
    """
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups, method, out)


def conv3d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1, *, method: str = "auto",
           out: Array | None = None) -> Array:
    """3D convolution (cross-correlation) over ``(N, C_in, D, H, W)`` inputs (volumes, video).

    ``Y[n, l, i, j, k] = b[l] + sum_{d, a, b, c} X_pad[n, g*C_in/groups + d, i*sD + a*dD, j*sH + b*dH,
    k*sW + c*dW] * W[l, d, a, b, c]`` where ``g`` is output channel ``l``'s group.

    Parameters
    ----------
    input : array_like, shape (N, C_in, D, H, W) or (C_in, D, H, W)
        Input volumes (unbatched input gives an unbatched result); error messages call it ``x``.
    weight : array_like, shape (C_out, C_in/groups, kD, kH, kW)
        The kernels.
    bias : array_like, shape (C_out,), optional
        Added to every output of each channel.
    stride, dilation : int or (int, int, int)
        Step between receptive fields; spacing of the kernel taps.
    padding : int, (int, int, int), ((lo, hi), (lo, hi), (lo, hi)), 'valid' or 'same'
        Zeros around the volume; 'same' is TensorFlow's rule for any stride.
    groups : int
        Input and output channels are split into ``groups`` independent convolutions.
    method : str
        'auto' (default), 'measure' or a registered strategy (``fastconv.strategies.names()``).
    out : ndarray, optional
        C-contiguous array of the result's shape and dtype to write into.

    Returns
    -------
    ndarray, shape (N, C_out, D_out, H_out, W_out) or (C_out, D_out, H_out, W_out)
        float32 or float64: ``np.result_type(x, weight, np.float32)``.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.conv3d(np.ones((1, 1, 3, 3, 3)), np.ones((1, 1, 2, 2, 2))).shape
    (1, 1, 2, 2, 2)
    """
    return _conv("conv3d", 3, input, weight, bias, stride, padding, dilation, groups, method, out)


def _conv_backward(fn, nd, grad_output, x, weight, stride, padding, dilation, groups, method, output_mask):
    if _dask.is_dask(x) or _dask.is_dask(grad_output):  # lazy gradients, batch chunk by batch chunk
        return _dask.conv_backward(fn, nd, grad_output, x, weight, stride, padding, dilation, groups, method,
                                   output_mask)
    dispatch.check_method(method, fn)
    want_x, want_w, want_b = v.output_mask(output_mask, fn)
    x4, w4, _, geom, user_shape, _ = _prepare_conv(fn, nd, x, weight, None, stride, padding, dilation, groups)
    grad_output = v.grad_output(grad_output, user_shape, fn)
    dtype = v.result_dtype(grad_output, x4, w4)
    if dtype != x4.dtype:  # grad_output is wider than x and weight: compute in its precision
        x4, w4 = x4.astype(dtype), w4.astype(dtype)
    g4 = v.contiguous(grad_output, dtype).reshape(geom.output_shape)
    grad_x = np.empty(x4.shape, dtype) if want_x else None
    grad_w = np.empty(w4.shape, dtype) if want_w else None
    grad_b = np.empty(w4.shape[0], dtype) if want_b else None
    if geom.batch == 0 or 0 in geom.output_shape:
        for g in (grad_x, grad_w, grad_b):
            if g is not None:
                g[...] = 0
    else:
        dispatch.run(method, "conv_backward", geom, dtype, fn, (g4, x4, w4, geom, grad_x, grad_w, grad_b))
    x_shape = np.shape(x)
    return (
        None if grad_x is None else grad_x.reshape(x_shape),
        None if grad_w is None else grad_w.reshape(np.shape(weight)),
        grad_b,
    )


def conv1d_backward(grad_output: ArrayLike, x: ArrayLike, weight: ArrayLike, stride: IntOrTuple = 1,
                    padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1, *, method: str = "auto",
                    output_mask: Sequence[bool] = (True, True, True)) -> Gradients:
    """Gradients of :func:`conv1d` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_output : array_like, shape (N, C_out, L_out) or (C_out, L_out)
        dL/dY, the shape of the forward output.
    x, weight, stride, padding, dilation, groups
        As given to the forward :func:`conv1d`.
    method : str
        'auto', 'measure' or a registered strategy.
    output_mask : (bool, bool, bool)
        Which of (grad_input, grad_weight, grad_bias) to compute; the others are None.

    Returns
    -------
    grad_input : ndarray, x's shape, or None
    grad_weight : ndarray, weight's shape, or None
    grad_bias : ndarray, shape (C_out,), or None
    """
    return _conv_backward("conv1d_backward", 1, grad_output, x, weight, stride, padding, dilation, groups,
                          method, output_mask)


def conv2d_backward(grad_output: ArrayLike, x: ArrayLike, weight: ArrayLike, stride: IntOrTuple = 1,
                    padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1, *, method: str = "auto",
                    output_mask: Sequence[bool] = (True, True, True)) -> Gradients:
    """Gradients of :func:`conv2d` with respect to its input, weight and bias.

    The lecture's backward: ``dL/dW = dL/dY · X̂ᵀ``, ``dL/dX̂ = Wᵀ · dL/dY``
    followed by col2im, ``dL/db`` the sum of ``dL/dY`` over images and
    positions. Input elements no window reads (stride > 1 leftovers) get 0.

    Parameters
    ----------
    grad_output : array_like, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        dL/dY, the shape of the forward output.
    x, weight, stride, padding, dilation, groups
        As given to the forward :func:`conv2d`.
    method : str
        'auto', 'measure', or a registered strategy (``fastconv.strategies.names()``).
    output_mask : (bool, bool, bool)
        Which of (grad_input, grad_weight, grad_bias) to compute; the others are None.

    Returns
    -------
    grad_input : ndarray, x's shape, or None
    grad_weight : ndarray, weight's shape, or None
    grad_bias : ndarray, shape (C_out,), or None

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.arange(16.).reshape(1, 1, 4, 4); w = np.ones((1, 1, 2, 2))
    >>> gx, gw, gb = fastconv.conv2d_backward(np.ones((1, 1, 3, 3)), x, w)
    >>> gx[0, 0]
    array([[1., 2., 2., 1.],
           [2., 4., 4., 2.],
           [2., 4., 4., 2.],
           [1., 2., 2., 1.]])
    >>> gb
    array([9.])
    """
    return _conv_backward("conv2d_backward", 2, grad_output, x, weight, stride, padding, dilation, groups,
                          method, output_mask)


def conv3d_backward(grad_output: ArrayLike, x: ArrayLike, weight: ArrayLike, stride: IntOrTuple = 1,
                    padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1, *, method: str = "auto",
                    output_mask: Sequence[bool] = (True, True, True)) -> Gradients:
    """Gradients of :func:`conv3d` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_output : array_like, shape (N, C_out, D_out, H_out, W_out) or unbatched
        dL/dY, the shape of the forward output.
    x, weight, stride, padding, dilation, groups
        As given to the forward :func:`conv3d`.
    method : str
        'auto', 'measure' or a registered strategy.
    output_mask : (bool, bool, bool)
        Which of (grad_input, grad_weight, grad_bias) to compute; the others are None.

    Returns
    -------
    grad_input : ndarray, x's shape, or None
    grad_weight : ndarray, weight's shape, or None
    grad_bias : ndarray, shape (C_out,), or None
    """
    return _conv_backward("conv3d_backward", 3, grad_output, x, weight, stride, padding, dilation, groups,
                          method, output_mask)
