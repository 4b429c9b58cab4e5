"""Max and average pooling, 1D, 2D and 3D: validate, resolve the geometry, dispatch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _validate as v
from ._typing import Array, ArrayLike, IntOrTuple
from . import _dask, dispatch, strategies
from .conv import _channels_last
from .geometry import _SPATIAL, UNCACHEABLE, _as_int, key_part, pool_problem, scatter_problem

__all__ = [
    "avg_pool1d", "avg_pool1d_backward", "avg_pool2d", "avg_pool2d_backward", "avg_pool3d", "avg_pool3d_backward",
    "max_pool1d", "max_pool1d_backward", "max_pool2d", "max_pool2d_backward", "max_pool3d", "max_pool3d_backward",
]


#: (function, shape, dtype, arguments) -> (problem, result shape, dtype): a repeated call with the same
#: shape and arguments skips the checks and the geometry (they depend on nothing else).
_problems: dict = {}
_PROBLEMS_MAX = 4096

#: Repeated calls (C-contiguous x, plain arguments): see :class:`fastconv.dispatch.Calls`.
_calls = dispatch.Calls()


def _max_pool_call(user_shape, dtype, return_indices, run):
    """The repeated-call function of a max pooling problem (see :data:`_calls`)."""
    def call(x):
        out = np.empty(user_shape, dtype)
        indices = np.empty(user_shape, np.int64) if return_indices else None
        if out.size:
            run(x, out, indices)
        return (out, indices) if return_indices else out
    return call


def _avg_pool_call(user_shape, dtype, run):
    """The repeated-call function of an average pooling problem (see :data:`_calls`)."""
    def call(x):
        out = np.empty(user_shape, dtype)
        if out.size:
            run(x, out)
        return out
    return call


def _checked_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode, count_include_pad,
                  divisor_override=None):
    """Check every argument: ``x`` as an array (any memory layout), the problem, the user's result shape, the dtype."""
    x = v.as_array(x, "x", fn)
    if (type(kernel_size) is int and (stride is None or type(stride) is int) and type(padding) is int
            and type(dilation) is int and type(ceil_mode) is bool and type(count_include_pad) is bool
            and (divisor_override is None or type(divisor_override) is int)):
        # the common call, all plain ints and bools: keyed as it is ("plain" keeps it apart from
        # the tagged keys below, where True and 1 must differ)
        key = (fn, "plain", x.shape, x.dtype, kernel_size, stride, padding, dilation, ceil_mode,
               count_include_pad, divisor_override)
    else:
        args = tuple(key_part(a) for a in (kernel_size, stride, padding, dilation, ceil_mode, count_include_pad,
                                           divisor_override))
        key = (fn, "tagged", x.shape, x.dtype) + args if UNCACHEABLE not in args else None
    hit = None if key is None else _problems.get(key)
    if hit is None:
        spatial = _SPATIAL[nd]
        v.check_ndim(x, "x", fn, (nd + 1, nd + 2), f"(N, C, {spatial}) or unbatched (C, {spatial})")
        dtype = v.result_dtype(x)
        geom, user_shape = pool_problem(fn, nd, x.shape, kernel_size, stride, padding, dilation, ceil_mode,
                                        count_include_pad, dtype, divisor_override)
        hit = (geom, user_shape, dtype)
        if key is not None:
            if len(_problems) >= _PROBLEMS_MAX:
                _problems.clear()
            _problems[key] = hit
    geom, user_shape, dtype = hit
    return x, geom, user_shape, dtype


# Channels-last memory (rank 2): (N, C, H, W) arrays whose memory is N, H, W, C (PyTorch's
# channels_last), or unbatched (C, H, W) over H, W, C. Results come back in that memory too; a
# strategy that reads it in place (Strategy.channels_last) gets the arrays as they are, any other
# C-contiguous copies, and its results are converted (as fastconv.conv does for convolution).


def _as_channels_last(a, dtype, shape):
    """``a`` (``(N, C, H, W)`` or ``(C, H, W)``) in ``dtype`` over channels-last memory, reshaped to ``shape``:
    ``a`` itself when it is one already."""
    return np.moveaxis(v.contiguous(np.moveaxis(a, -3, -1), dtype), -1, -3).reshape(shape)


def _new_channels_last(shape, dtype, new=np.empty):
    """A new ``(N, C, H, W)`` array over ``N, H, W, C`` memory (``new``: ``np.empty`` or ``np.zeros``)."""
    N, C, H, W = shape
    return new((N, H, W, C), dtype).transpose(0, 3, 1, 2)


def _run_channels_last(op, fn, method, geom, dtype, inputs, outputs):
    """Run ``op`` (arguments ``*inputs, problem, *outputs``) on channels-last arrays; an output may be None.

    ``geom`` is the channels-first problem: a strategy that reads channels-last memory gets the
    arrays with ``geom.channels_last()``; any other (and measure mode, which times on them) gets
    C-contiguous copies with ``geom``, and its results are copied into ``outputs``.
    """
    last = geom.channels_last()
    name, run = dispatch.resolve(method, op, last, dtype, fn)
    if run is not None and strategies.strategy(name).channels_last:
        run(*inputs, last, *outputs)
        return
    # zeros: max pooling's backward only adds into its gradient
    firsts = tuple(None if o is None else np.zeros(o.shape, o.dtype) for o in outputs)
    args = tuple(np.ascontiguousarray(a) for a in inputs) + (geom,) + firsts
    if run is None:  # measure mode times on the C-contiguous arrays
        dispatch.run(method, op, geom, dtype, fn, args)
    else:
        run(*args)
    for o, first in zip(outputs, firsts):
        if o is not None:
            o[...] = first


def _max_pool_channels_last(fn, x, geom, user_shape, dtype, return_indices, method):
    """Max pooling of a channels-last ``x``: the result (and indices) in channels-last memory."""
    out = _new_channels_last(geom.output_shape, dtype)
    indices = _new_channels_last(geom.output_shape, np.int64) if return_indices else None
    _run_channels_last("max_pool", fn, method, geom, dtype, (_as_channels_last(x, dtype, geom.input_shape),),
                       (out, indices))
    if len(user_shape) == 3:
        out, indices = out[0], None if indices is None else indices[0]
    return (out, indices) if return_indices else out


def _avg_pool_channels_last(fn, x, geom, user_shape, dtype, method):
    """Average pooling of a channels-last ``x``: the result in channels-last memory."""
    out = _new_channels_last(geom.output_shape, dtype)
    _run_channels_last("avg_pool", fn, method, geom, dtype, (_as_channels_last(x, dtype, geom.input_shape),),
                       (out,))
    return out if len(user_shape) == 4 else out[0]


def _max_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, method):
    key = None
    if (type(x) is np.ndarray and x.flags.c_contiguous and type(method) is str
            and dispatch.plain((kernel_size, stride, padding, dilation), (ceil_mode, return_indices))):
        key = dispatch.repeat_key(fn, x.shape, x.dtype, kernel_size, stride, padding, dilation, ceil_mode,
                                  return_indices, method)
        call = _calls.get(key)
        if call is not None:
            return call(x)
    if not isinstance(x, np.ndarray) and _dask.is_dask(x):  # a lazy result, chunk by chunk
        return _dask.max_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, method)
    x, geom, user_shape, dtype = _checked_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode, True)
    if key is not None and x.dtype == dtype:
        run = dispatch.bound(method, "max_pool", geom, dtype, fn)
        if run is not None:
            return _calls.remember(key, _max_pool_call(user_shape, dtype, return_indices, run))(x)
    if nd == 2 and not x.flags.c_contiguous and _channels_last(x, nd):
        return _max_pool_channels_last(fn, x, geom, user_shape, dtype, return_indices, method)
    x4 = v.contiguous(x, dtype).reshape(geom.input_shape)
    _, run = dispatch.resolve(method, "max_pool", geom, x4.dtype, fn)
    out = np.empty(user_shape, dtype=x4.dtype)
    indices = np.empty(user_shape, dtype=np.int64) if return_indices else None
    if out.size:
        i4 = None if indices is None else indices.reshape(geom.output_shape)
        args = (x4, geom, out.reshape(geom.output_shape), i4)
        if run is None:  # measure mode times on the real arrays
            dispatch.run(method, "max_pool", geom, x4.dtype, fn, args)
        else:
            run(*args)
    return (out, indices) if return_indices else out


def _avg_pool(fn, nd, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, method):
    key = None
    if (type(x) is np.ndarray and x.flags.c_contiguous and type(method) is str
            and dispatch.plain((kernel_size, stride, padding, divisor_override), (ceil_mode, count_include_pad))):
        key = dispatch.repeat_key(fn, x.shape, x.dtype, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                  divisor_override, method)
        call = _calls.get(key)
        if call is not None:
            return call(x)
    if not isinstance(x, np.ndarray) and _dask.is_dask(x):  # a lazy result, chunk by chunk
        return _dask.avg_pool(fn, nd, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override, method)
    x, geom, user_shape, dtype = _checked_pool(fn, nd, x, kernel_size, stride, padding, 1, ceil_mode,
                                               count_include_pad, divisor_override)
    if key is not None and x.dtype == dtype:
        run = dispatch.bound(method, "avg_pool", geom, dtype, fn)
        if run is not None:
            return _calls.remember(key, _avg_pool_call(user_shape, dtype, run))(x)
    if nd == 2 and not x.flags.c_contiguous and _channels_last(x, nd):
        return _avg_pool_channels_last(fn, x, geom, user_shape, dtype, method)
    x4 = v.contiguous(x, dtype).reshape(geom.input_shape)
    _, run = dispatch.resolve(method, "avg_pool", geom, x4.dtype, fn)
    out = np.empty(user_shape, dtype=x4.dtype)
    if out.size:
        args = (x4, geom, out.reshape(geom.output_shape))
        if run is None:  # measure mode times on the real arrays
            dispatch.run(method, "avg_pool", geom, x4.dtype, fn, args)
        else:
            run(*args)
    return out


_POOL_PARAMS = """
    kernel_size : int or tuple of int
        Window size, one value per spatial dimension or one for all.
    stride : int or tuple of int, optional
        Step between windows; defaults to ``kernel_size``.
    padding : int or tuple of int
        Implicit padding on both sides, at most half the kernel size (PyTorch's rule)."""


def max_pool1d(input: ArrayLike, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
               padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False,
               return_indices: bool = False, *, method: str = "auto") -> Array | tuple[Array, Array]:
    """Max pooling over ``(N, C, L)`` or ``(C, L)`` inputs, as ``torch.nn.functional.max_pool1d``.

    Parameters
    ----------
    input : array_like, shape (N, C, L) or (C, L)
    kernel_size, stride, padding, dilation, ceil_mode
        As in :func:`max_pool2d`, one value (or a 1-tuple) each.
    return_indices : bool
        Also return the index of each maximum in its input row (what :func:`max_pool1d_backward` needs).
    method : str
        'auto', 'measure' or a registered strategy (``fastconv.strategies.names()``).

    Returns
    -------
    ndarray, shape (N, C, L_out) or (C, L_out); and the int64 indices if asked

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.max_pool1d(np.array([[1., 3, 2, 5, 4]]), 2)
    array([[3., 5.]])
    """
    return _max_pool("max_pool1d", 1, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices, method)


def max_pool2d(input: ArrayLike, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
               padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False,
               return_indices: bool = False, *, method: str = "auto") -> Array | tuple[Array, Array]:
    """Max pooling over ``(N, C, H, W)`` or ``(C, H, W)`` inputs, as ``torch.nn.functional.max_pool2d``.

    Parameters
    ----------
    input : array_like, shape (N, C, H, W) or (C, H, W)
        The input (PyTorch's parameter name; messages call it ``x``).
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
        'auto', 'measure', or a registered strategy (``fastconv.strategies.names()``).

    Returns
    -------
    out : ndarray, shape (N, C, H_out, W_out) or (C, H_out, W_out)
    indices : ndarray of int64, same shape (only with ``return_indices``)

    Padding never wins. A window holding NaN returns NaN, as in PyTorch. An input in channels-last
    memory (``N, H, W, C``, what ``x_nhwc.transpose(0, 3, 1, 2)`` gives: PyTorch's ``channels_last``;
    unbatched ``H, W, C``) is read in place and the result and indices come back in that memory.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.max_pool2d(np.arange(16.).reshape(1, 4, 4), 2)
    array([[[ 5.,  7.],
            [13., 15.]]])
    """
    return _max_pool("max_pool2d", 2, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices, method)


def avg_pool1d(input: ArrayLike, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
               padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True, *,
               method: str = "auto") -> Array:
    """Average pooling over ``(N, C, L)`` or ``(C, L)`` inputs, as ``torch.nn.functional.avg_pool1d``.

    Parameters
    ----------
    input : array_like, shape (N, C, L) or (C, L)
    kernel_size, stride, padding, ceil_mode, count_include_pad
        As in :func:`avg_pool2d`, one value (or a 1-tuple) each (no ``divisor_override``: PyTorch's
        ``avg_pool1d`` has none).
    method : str
        'auto', 'measure' or a registered strategy (``fastconv.strategies.names()``).

    Returns
    -------
    ndarray, shape (N, C, L_out) or (C, L_out)

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.avg_pool1d(np.array([[1., 3, 2, 6]]), 2)
    array([[2., 4.]])
    """
    return _avg_pool("avg_pool1d", 1, input, kernel_size, stride, padding, ceil_mode, count_include_pad, None, method)


def avg_pool2d(input: ArrayLike, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
               padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None, *, method: str = "auto") -> Array:
    """Average pooling over ``(N, C, H, W)`` or ``(C, H, W)`` inputs, as ``torch.nn.functional.avg_pool2d``.

    Parameters
    ----------
    input : array_like, shape (N, C, H, W) or (C, H, W)
        The input (PyTorch's parameter name; messages call it ``x``).
    {params}
    ceil_mode : bool
        Round the output size up (a last, partial window).
    count_include_pad : bool
        Divide by the window size including zero padding (default), or by the
        number of input elements in the window.
    divisor_override : int, optional
        If given, every output is its window's sum divided by this (non-zero,
        possibly negative) integer, whatever ``count_include_pad`` and
        ``ceil_mode`` say. None (default): the divisor described above.
    method : str
        'auto', 'measure', or a registered strategy (``fastconv.strategies.names()``).

    Returns
    -------
    ndarray, shape (N, C, H_out, W_out) or (C, H_out, W_out)
        In channels-last memory if the input is (as :func:`max_pool2d`).

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.avg_pool2d(np.arange(16.).reshape(1, 4, 4), 2)
    array([[[ 2.5,  4.5],
            [10.5, 12.5]]])
    """
    return _avg_pool("avg_pool2d", 2, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, method)


def _input_shape(fn, nd, input_shape):
    """``input_shape`` as a tuple of non-negative ints of length nd+1 or nd+2."""
    try:
        shape = tuple(_as_int(n, "input_shape", fn) for n in input_shape)
    except TypeError:
        raise TypeError(f"{fn}: input_shape must be a tuple of ints, got {input_shape!r}") from None
    if len(shape) not in (nd + 1, nd + 2) or min(shape) < 0:
        spatial = _SPATIAL[nd]
        raise ValueError(f"{fn}: input_shape must be (N, C, {spatial}) or (C, {spatial}), got {input_shape!r}")
    return shape


def _max_pool_backward(fn, nd, grad_output, indices, input_shape, method):
    if _dask.is_dask(grad_output) or _dask.is_dask(indices):  # lazy, batch chunk by batch chunk
        public = globals()[fn]
        return _dask.pool_backward(fn, nd, public, grad_output, [indices], input_shape, {"method": method})
    dispatch.check_method(method, fn)
    grad_output = v.as_array(grad_output, "grad_output", fn)
    dtype = v.result_dtype(grad_output)
    geom, shape = scatter_problem(fn, nd, input_shape, grad_output.shape, dtype)
    indices = v.pool_indices(indices, grad_output.shape, shape[-nd:], fn)
    batched = len(shape) == nd + 2
    if nd == 2 and not grad_output.flags.c_contiguous and _channels_last(grad_output, nd):
        grad_x = _new_channels_last(geom.input_shape, dtype, np.zeros)
        if grad_x.size:
            g4 = _as_channels_last(grad_output, dtype, geom.output_shape)
            i4 = _as_channels_last(indices, np.int64, geom.output_shape)
            _run_channels_last("max_pool_backward", fn, method, geom, dtype, (g4, i4), (grad_x,))
        return grad_x if batched else grad_x[0]
    grad_x = np.zeros(shape, dtype)
    if grad_x.size and grad_output.size:
        g4 = v.contiguous(grad_output, dtype).reshape(geom.output_shape)
        i4 = v.contiguous(indices, np.int64).reshape(geom.output_shape)
        dispatch.run(method, "max_pool_backward", geom, dtype, fn, (g4, i4, geom, grad_x.reshape(geom.input_shape)))
    return grad_x


def _avg_pool_backward(fn, nd, grad_output, input_shape, kernel_size, stride, padding, ceil_mode,
                       count_include_pad, divisor_override, method):
    if _dask.is_dask(grad_output):  # lazy, batch chunk by batch chunk
        arguments = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                         count_include_pad=count_include_pad, method=method)
        if divisor_override is not None:  # avg_pool1d_backward has no such argument
            arguments["divisor_override"] = divisor_override
        return _dask.pool_backward(fn, nd, globals()[fn], grad_output, [], input_shape, arguments)
    dispatch.check_method(method, fn)
    shape = _input_shape(fn, nd, input_shape)
    geom, user_shape = pool_problem(fn, nd, shape, kernel_size, stride, padding, 1, ceil_mode,
                                    count_include_pad, divisor_override=divisor_override)
    grad_output = v.grad_output(grad_output, user_shape, fn)
    dtype = v.result_dtype(grad_output)
    if nd == 2 and not grad_output.flags.c_contiguous and _channels_last(grad_output, nd):
        grad_x = _new_channels_last(geom.input_shape, dtype)
        if grad_x.size:
            g4 = _as_channels_last(grad_output, dtype, geom.output_shape)
            _run_channels_last("avg_pool_backward", fn, method, geom, dtype, (g4,), (grad_x,))
        return grad_x if len(shape) == 4 else grad_x[0]
    grad_x = np.empty(shape, dtype)
    if grad_x.size:
        g4 = v.contiguous(grad_output, dtype).reshape(geom.output_shape)
        gx4 = grad_x.reshape((geom.batch, geom.channels) + geom.in_size)
        dispatch.run(method, "avg_pool_backward", geom, dtype, fn, (g4, geom, gx4))
    return grad_x


def max_pool1d_backward(grad_output: ArrayLike, indices: ArrayLike, input_shape: Sequence[int], *,
                        method: str = "auto") -> Array:
    """Gradient of :func:`max_pool1d` with respect to its input.

    Parameters
    ----------
    grad_output : array_like, the forward output's shape
        dL/dY.
    indices : array_like of int
        From ``max_pool1d(..., return_indices=True)``.
    input_shape : tuple of int
        The forward input's shape, (N, C, L) or (C, L).
    method : str
        'auto', 'measure' or a registered strategy.

    Returns
    -------
    ndarray of ``input_shape``
        Each output's gradient added at the input element its maximum came from.
    """
    return _max_pool_backward("max_pool1d_backward", 1, grad_output, indices, input_shape, method)


def max_pool2d_backward(grad_output: ArrayLike, indices: ArrayLike, input_shape: Sequence[int], *,
                        method: str = "auto") -> Array:
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
        Each output's gradient added at the input element its maximum came from; in channels-last
        memory if ``grad_output`` is (as :func:`max_pool2d`).

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


def avg_pool1d_backward(grad_output: ArrayLike, input_shape: Sequence[int], kernel_size: IntOrTuple,
                        stride: IntOrTuple | None = None, padding: IntOrTuple = 0, ceil_mode: bool = False,
                        count_include_pad: bool = True, *, method: str = "auto") -> Array:
    """Gradient of :func:`avg_pool1d` with respect to its input.

    Parameters
    ----------
    grad_output : array_like, the forward output's shape
        dL/dY.
    input_shape : tuple of int
        The forward input's shape, (N, C, L) or (C, L).
    kernel_size, stride, padding, ceil_mode, count_include_pad
        As in :func:`avg_pool1d`.
    method : str
        'auto', 'measure' or a registered strategy.

    Returns
    -------
    ndarray of ``input_shape``
        Each output's gradient, divided by its window's divisor, added to the window's elements.
    """
    return _avg_pool_backward("avg_pool1d_backward", 1, grad_output, input_shape, kernel_size, stride,
                              padding, ceil_mode, count_include_pad, None, method)


def avg_pool2d_backward(grad_output: ArrayLike, input_shape: Sequence[int], kernel_size: IntOrTuple,
                        stride: IntOrTuple | None = None, padding: IntOrTuple = 0, ceil_mode: bool = False,
                        count_include_pad: bool = True, divisor_override: int | None = None, *,
                        method: str = "auto") -> Array:
    """Gradient of :func:`avg_pool2d` with respect to its input.

    ``grad_output`` is dL/dY (the forward output's shape); ``input_shape`` and the
    other arguments are those of the forward call. Each output's gradient,
    divided by its window's divisor, is added to every input element of the window.

    Parameters
    ----------
    grad_output : array_like, shape (N, C, H_out, W_out) or (C, H_out, W_out)
        dL/dY.
    input_shape : tuple of int
        The forward input's shape, (N, C, H, W) or (C, H, W).
    kernel_size, stride, padding, ceil_mode, count_include_pad
        As in :func:`avg_pool2d`.
    divisor_override : int, optional
        As in :func:`avg_pool2d`: if given, every window's divisor.
    method : str
        'auto', 'measure', or a registered strategy (``fastconv.strategies.names()``).

    Returns
    -------
    ndarray of ``input_shape``
        In channels-last memory if ``grad_output`` is (as :func:`max_pool2d`).

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
                              padding, ceil_mode, count_include_pad, divisor_override, method)


for _f in (max_pool2d, avg_pool2d):
    _f.__doc__ = _f.__doc__.replace("    {params}", _POOL_PARAMS.strip("\n"))
del _f


def max_pool3d(input: ArrayLike, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
               padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False,
               return_indices: bool = False, *, method: str = "auto") -> Array | tuple[Array, Array]:
    """Max pooling over ``(N, C, D, H, W)`` or ``(C, D, H, W)`` inputs, as ``torch.nn.functional.max_pool3d``.

    Parameters
    ----------
    input : array_like, shape (N, C, D, H, W) or (C, D, H, W)
    kernel_size, stride, padding, dilation, ceil_mode
        As in :func:`max_pool2d`, one value per axis or one for all three.
    return_indices : bool
        Also return, for each output, the flat index ``(d * H + h) * W + w`` of the maximum
        in its input volume (what :func:`max_pool3d_backward` needs), as PyTorch does.
    method : str
        'auto', 'measure' or a registered strategy (``fastconv.strategies.names()``).

    Returns
    -------
    ndarray, shape (N, C, D_out, H_out, W_out) or unbatched; and the int64 indices if asked

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.max_pool3d(np.arange(8.).reshape(1, 1, 2, 2, 2), 2)
    array([[[[[7.]]]]])
    """
    return _max_pool("max_pool3d", 3, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices, method)


def avg_pool3d(input: ArrayLike, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
               padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None, *, method: str = "auto") -> Array:
    """Average pooling over ``(N, C, D, H, W)`` or ``(C, D, H, W)`` inputs, as ``torch.nn.functional.avg_pool3d``.

    Parameters
    ----------
    input : array_like, shape (N, C, D, H, W) or (C, D, H, W)
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        As in :func:`avg_pool2d`, one value per axis or one for all three.
    method : str
        'auto', 'measure' or a registered strategy (``fastconv.strategies.names()``).

    Returns
    -------
    ndarray, shape (N, C, D_out, H_out, W_out) or unbatched

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.avg_pool3d(np.arange(8.).reshape(1, 1, 2, 2, 2), 2)
    array([[[[[3.5]]]]])
    """
    return _avg_pool("avg_pool3d", 3, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, method)


def max_pool3d_backward(grad_output: ArrayLike, indices: ArrayLike, input_shape: Sequence[int], *,
                        method: str = "auto") -> Array:
    """Gradient of :func:`max_pool3d` with respect to its input.

    Parameters
    ----------
    grad_output : array_like, the forward output's shape
        dL/dY.
    indices : array_like of int
        From ``max_pool3d(..., return_indices=True)``.
    input_shape : tuple of int
        The forward input's shape, (N, C, D, H, W) or (C, D, H, W).
    method : str
        'auto', 'measure' or a registered strategy.

    Returns
    -------
    ndarray of ``input_shape``
        Each output's gradient added at the input element its maximum came from.
    """
    return _max_pool_backward("max_pool3d_backward", 3, grad_output, indices, input_shape, method)


def avg_pool3d_backward(grad_output: ArrayLike, input_shape: Sequence[int], kernel_size: IntOrTuple,
                        stride: IntOrTuple | None = None, padding: IntOrTuple = 0, ceil_mode: bool = False,
                        count_include_pad: bool = True, divisor_override: int | None = None, *,
                        method: str = "auto") -> Array:
    """Gradient of :func:`avg_pool3d` with respect to its input.

    Parameters
    ----------
    grad_output : array_like, the forward output's shape
        dL/dY.
    input_shape : tuple of int
        The forward input's shape, (N, C, D, H, W) or (C, D, H, W).
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        As in :func:`avg_pool3d`.
    method : str
        'auto', 'measure' or a registered strategy.

    Returns
    -------
    ndarray of ``input_shape``
        Each output's gradient, divided by its window's divisor, added to every input element
        of the window.
    """
    return _avg_pool_backward("avg_pool3d_backward", 3, grad_output, input_shape, kernel_size, stride, padding,
                              ceil_mode, count_include_pad, divisor_override, method)
