"""Transposed convolution (``conv_transpose1d/2d/3d``) and its backward, as PyTorch defines them.

A transposed convolution is the input-gradient of a convolution: each input value times the
kernel, scattered into the output. With ``y = conv_transpose(x, W)`` and the convolution ``c``
that maps a ``y``-shaped input to an ``x``-shaped output with the same weight, stride, padding,
dilation and groups::

    y          = dc/dinput applied to x          (the strategies' conv_backward, grad_input only)
    dL/dx      = c(dL/dy)                         (a forward convolution)
    dL/dW      = dc/dweight(grad_out=x, input=dL/dy)
    dL/dbias   = sum of dL/dy over images and positions

so every strategy that computes convolutions computes transposed ones, through the registry and
the dispatcher; the loop strategy's input-gradient is the readable definition (every input
value times the kernel, added into the output positions it reaches). Weight layout
``(C_in, C_out/groups, k...)`` as in PyTorch; output size per axis
``(n - 1)*s - (lo + hi) + d*(k - 1) + output_padding + 1``.

Padding is an int, one int per axis, or one ``(lo, hi)`` pair per axis (``lo``/``hi`` are
cropped from the start/end of the full output). 'same' and 'valid' are refused: PyTorch defines
neither for transposed convolution, and the usual meanings (output = input x stride, or no
cropping) are one ``padding``/``output_padding`` choice away.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _dask, _jit, dispatch
from . import _validate as v
from ._typing import Array, ArrayLike, Gradients, IntOrTuple
from .geometry import _SPATIAL, _as_int, _resolve_padding, conv_problem, normalize_tuple

__all__ = [
    "conv_transpose1d", "conv_transpose1d_backward", "conv_transpose2d", "conv_transpose2d_backward",
    "conv_transpose3d", "conv_transpose3d_backward",
]


def transpose_problem(fn, nd, x_shape, weight_shape, bias_shape, stride, padding, output_padding, groups,
                      dilation, dtype):
    """Check a transposed convolution; return the convolution problem it is the transpose of and the shape.

    Returns ``(conv, user_shape)``: ``conv`` maps a y-shaped input (``conv.input_shape``,
    N x C_out x *out) to an x-shaped output; ``user_shape`` is the result's shape as the user
    sees it (unbatched kept).
    """
    spatial = _SPATIAL[nd]
    if len(x_shape) not in (nd + 1, nd + 2):
        raise ValueError(f"{fn}: x must be (N, C_in, {spatial}) or unbatched (C_in, {spatial}), "
                         f"got a {len(x_shape)}-D array of shape {tuple(x_shape)}")
    if len(weight_shape) != nd + 2:
        raise ValueError(f"{fn}: weight must be (C_in, C_out/groups, {'k' if nd == 1 else 'k...'}), "
                         f"got a {len(weight_shape)}-D array of shape {tuple(weight_shape)}")
    batched = len(x_shape) == nd + 2
    N, C_in = (x_shape[0] if batched else 1), x_shape[-nd - 1]
    groups = _as_int(groups, "groups", fn)
    if groups < 1:
        raise ValueError(f"{fn}: groups must be >= 1, got {groups}")
    if weight_shape[0] != C_in:
        raise ValueError(f"{fn}: input has {C_in} channels but weight.shape[0] (C_in) is {weight_shape[0]}")
    if C_in % groups:
        raise ValueError(f"{fn}: groups={groups} does not divide the {C_in} input channels")
    C_out = weight_shape[1] * groups
    kernel = tuple(weight_shape[2:])
    if C_out == 0 or min(kernel) == 0:
        raise ValueError(f"{fn}: weight must not be empty, got shape {tuple(weight_shape)}")
    if bias_shape is not None and tuple(bias_shape) != (C_out,):
        raise ValueError(f"{fn}: bias must have shape ({C_out},) (weight.shape[1] * groups), got {tuple(bias_shape)}")
    stride = normalize_tuple(stride, nd, "stride", fn)
    dilation = normalize_tuple(dilation, nd, "dilation", fn)
    if isinstance(padding, str):
        raise ValueError(f"{fn}: padding must be an int, one int per axis or (lo, hi) pairs; {padding!r} is not "
                         "defined for transposed convolution (PyTorch has no 'same'/'valid' here either)")
    in_size = tuple(x_shape[-nd:])
    pads = _resolve_padding(padding, in_size, kernel, stride, dilation, fn)
    output_padding = normalize_tuple(output_padding, nd, "output_padding", fn, minimum=0)
    for op, s, d in zip(output_padding, stride, dilation):
        if op >= s and op >= d:
            raise ValueError(f"{fn}: output_padding must be smaller than either stride or dilation, "
                             f"got output_padding={op} with stride={s} and dilation={d}")
    out = tuple((n - 1) * s - (lo + hi) + d * (k - 1) + op + 1
                for n, s, (lo, hi), d, k, op in zip(in_size, stride, pads, dilation, kernel, output_padding))
    if min(out) < 1 or min(in_size) < 1:
        raise ValueError(f"{fn}: the output would be empty: size {out} for an input of size {in_size} "
                         f"(padding {pads} crops more than the full output)")
    conv, _ = conv_problem(fn, nd, (N, C_out) + out, tuple(weight_shape), None, stride, pads, dilation, groups, dtype)
    # The convolution maps y back to x's size, or (when output_padding >= stride, allowed because it
    # is < dilation) to a few more positions at the end, which x does not have: they read as zeros.
    user_shape = ((N,) if batched else ()) + (C_out,) + out
    return conv, user_shape


def _extended(x, conv, nd):
    """``x`` (of spatial rank ``nd``) as the convolution's output: lifted to its rank, and zero-extended
    at the end of an axis where the convolution maps ``y`` to more positions than ``x`` has."""
    shape = conv.output_shape
    core = x.reshape(shape[:2] + (1,) * (len(shape) - 2 - nd) + x.shape[x.ndim - nd:])
    if core.shape == shape:
        return core
    wider = np.zeros(shape, dtype=x.dtype)
    wider[tuple(slice(0, n) for n in core.shape)] = core
    return wider


def _prepare(fn, nd, x, weight, bias, stride, padding, output_padding, groups, dilation):
    x = v.as_array(x, "x", fn)
    weight = v.as_array(weight, "weight", fn)
    if bias is not None:
        bias = v.as_array(bias, "bias", fn)
    dtype = v.result_dtype(x, weight)
    conv, user_shape = transpose_problem(fn, nd, x.shape, weight.shape, None if bias is None else bias.shape,
                                         stride, padding, output_padding, groups, dilation, dtype)
    x4 = _extended(v.contiguous(x, dtype), conv, nd)  # x is the convolution's output side
    w4 = v.contiguous(weight, dtype).reshape(conv.weight_shape)
    b = None if bias is None else v.contiguous(bias, dtype)
    return x4, w4, b, conv, user_shape, (("x", x), ("weight", weight), ("bias", bias))


def _transpose(fn, nd, x, weight, bias, stride, padding, output_padding, groups, dilation, method, out):
    if _dask.is_dask(x):  # a lazy result, chunk by chunk
        return _dask.conv_transpose(fn, nd, x, weight, bias, stride, padding, output_padding, groups, dilation,
                                    method, out)
    dispatch.check_method(method, fn)
    x4, w4, b, conv, user_shape, inputs = _prepare(fn, nd, x, weight, bias, stride, padding, output_padding,
                                                    groups, dilation)
    if out is None:
        out = np.empty(user_shape, dtype=x4.dtype)
    else:
        v.check_out(out, user_shape, x4.dtype, fn, inputs)
    y = out.reshape(conv.input_shape)
    if conv.batch == 0:
        return out
    # The strategies' input-gradient: y = (dconv/dinput)(x). Its "input" argument is only read for
    # the weight gradient, which is not asked for: zeros (calloc'd, never touched) stand in.
    unused = np.zeros(conv.input_shape, dtype=x4.dtype)
    dispatch.run(method, "conv_backward", conv, x4.dtype, fn, (x4, unused, w4, conv, y, None, None))
    if b is not None:
        from .strategies.direct import add_bias

        with _jit.launch():
            _jit.sized(add_bias, y.size)(y.reshape(y.shape[0], y.shape[1], -1), b)
    return out


def _transpose_backward(fn, nd, grad_output, x, weight, stride, padding, output_padding, groups, dilation, method,
                        output_mask):
    if _dask.is_dask(x) or _dask.is_dask(grad_output):  # lazy gradients, batch chunk by batch chunk
        return _dask.conv_transpose_backward(fn, nd, grad_output, x, weight, stride, padding, output_padding,
                                             groups, dilation, method, output_mask)
    dispatch.check_method(method, fn)
    want_x, want_w, want_b = v.output_mask(output_mask, fn)
    x4, w4, _, conv, user_shape, _ = _prepare(fn, nd, x, weight, None, stride, padding, output_padding, groups,
                                              dilation)
    grad_output = v.grad_output(grad_output, user_shape, fn)
    dtype = v.result_dtype(grad_output, x4, w4)
    x4, w4 = x4.astype(dtype, copy=False), w4.astype(dtype, copy=False)
    dy = v.contiguous(grad_output, dtype).reshape(conv.input_shape)
    grad_x = np.zeros(x4.shape, dtype) if want_x else None  # x4's shape: x's, lifted (and extended)
    grad_w = np.zeros(w4.shape, dtype) if want_w else None
    grad_b = dy.sum(axis=(0,) + tuple(range(2, dy.ndim))).astype(dtype) if want_b else None
    if conv.batch:
        if want_x:  # dL/dx = conv(dL/dy, W)
            dispatch.run(method, "conv", conv, dtype, fn, (dy, w4, None, conv, grad_x))
        if want_w:  # dL/dW = dconv/dweight with x as the gradient and dL/dy as the input
            dispatch.run(method, "conv_backward", conv, dtype, fn, (x4, dy, w4, conv, None, grad_w, None))
    if grad_x is not None:
        lifted = (conv.batch, x4.shape[1]) + (1,) * (conv.rank - nd) + np.shape(x)[np.ndim(x) - nd:]
        grad_x = grad_x[tuple(slice(0, n) for n in lifted)]  # drop the zero-extended positions
    return (None if grad_x is None else np.ascontiguousarray(grad_x).reshape(np.shape(x)),
            None if grad_w is None else grad_w.reshape(np.shape(weight)), grad_b)


_DOC = """{nd}D transposed convolution over ``(N, C_in, {spatial})`` inputs, as ``torch.nn.functional.conv_transpose{nd}d``.

    Each input value times the kernel, added into the output positions it reaches (the
    input-gradient of :func:`conv{nd}d` with the same weight and geometry).

    Parameters
    ----------
    input : array_like, shape (N, C_in, {spatial}) or unbatched (C_in, {spatial})
        Error messages call it ``x``.
    weight : array_like, shape (C_in, C_out/groups, {kernel})
    bias : array_like, shape (C_out,), optional
    stride, dilation : int or tuple of int
    padding : int, one int per axis, or one (lo, hi) pair per axis
        Cropped from the start/end of the full output ('same'/'valid' are refused).
    output_padding : int or tuple of int
        Added to the end of each axis of the output; smaller than stride or dilation.
    groups : int
    method : str
        'auto', 'measure' or a registered strategy (``fastconv.strategies.names()``).
    out : ndarray, optional
        C-contiguous array of the result's shape and dtype to write into.

    Returns
    -------
    ndarray, shape (N, C_out, *out)
        ``out = (n - 1)*stride - (lo + hi) + dilation*(k - 1) + output_padding + 1`` per axis.
    """

_BACKWARD_DOC = """Gradients of :func:`conv_transpose{nd}d` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_output : array_like, the forward output's shape
        dL/dY.
    x, weight, stride, padding, output_padding, groups, dilation
        As given to the forward call.
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


def conv_transpose1d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, stride: IntOrTuple = 1,
                     padding: IntOrTuple = 0, output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1, *, method: str = "auto", out: Array | None = None) -> Array:
    return _transpose("conv_transpose1d", 1, input, weight, bias, stride, padding, output_padding, groups, dilation,
                      method, out)


def conv_transpose2d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, stride: IntOrTuple = 1,
                     padding: IntOrTuple = 0, output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1, *, method: str = "auto", out: Array | None = None) -> Array:
    return _transpose("conv_transpose2d", 2, input, weight, bias, stride, padding, output_padding, groups, dilation,
                      method, out)


def conv_transpose3d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, stride: IntOrTuple = 1,
                     padding: IntOrTuple = 0, output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1, *, method: str = "auto", out: Array | None = None) -> Array:
    return _transpose("conv_transpose3d", 3, input, weight, bias, stride, padding, output_padding, groups, dilation,
                      method, out)


def conv_transpose1d_backward(grad_output: ArrayLike, x: ArrayLike, weight: ArrayLike, stride: IntOrTuple = 1,
                              padding: IntOrTuple = 0, output_padding: IntOrTuple = 0, groups: int = 1,
                              dilation: IntOrTuple = 1, *, method: str = "auto",
                              output_mask: Sequence[bool] = (True, True, True)) -> Gradients:
    return _transpose_backward("conv_transpose1d_backward", 1, grad_output, x, weight, stride, padding,
                               output_padding, groups, dilation, method, output_mask)


def conv_transpose2d_backward(grad_output: ArrayLike, x: ArrayLike, weight: ArrayLike, stride: IntOrTuple = 1,
                              padding: IntOrTuple = 0, output_padding: IntOrTuple = 0, groups: int = 1,
                              dilation: IntOrTuple = 1, *, method: str = "auto",
                              output_mask: Sequence[bool] = (True, True, True)) -> Gradients:
    return _transpose_backward("conv_transpose2d_backward", 2, grad_output, x, weight, stride, padding,
                               output_padding, groups, dilation, method, output_mask)


def conv_transpose3d_backward(grad_output: ArrayLike, x: ArrayLike, weight: ArrayLike, stride: IntOrTuple = 1,
                              padding: IntOrTuple = 0, output_padding: IntOrTuple = 0, groups: int = 1,
                              dilation: IntOrTuple = 1, *, method: str = "auto",
                              output_mask: Sequence[bool] = (True, True, True)) -> Gradients:
    return _transpose_backward("conv_transpose3d_backward", 3, grad_output, x, weight, stride, padding,
                               output_padding, groups, dilation, method, output_mask)


for _nd in (1, 2, 3):
    _kernel = {1: "k", 2: "kH, kW", 3: "kD, kH, kW"}[_nd]
    globals()[f"conv_transpose{_nd}d"].__doc__ = _DOC.format(nd=_nd, spatial=_SPATIAL[_nd], kernel=_kernel)
    globals()[f"conv_transpose{_nd}d_backward"].__doc__ = _BACKWARD_DOC.format(nd=_nd)
