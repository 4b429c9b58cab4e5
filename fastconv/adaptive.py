"""Adaptive max and average pooling, 1D, 2D and 3D: validate, resolve the geometry, dispatch.

The caller names the output size and the windows follow: output ``i`` of ``o`` along an axis of
``n`` inputs pools ``[floor(i*n/o), ceil((i+1)*n/o))`` (:func:`fastconv.geometry.adaptive_window`),
as ``torch.nn.functional.adaptive_*_pool*d`` do. Windows differ in size by at most one from
output to output and neighbours may share an element; ``output_size=1`` is global pooling, and an
output larger than the input repeats input elements.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Optional, Union

import numpy as np

from . import _dask, dispatch
from . import _validate as v
from ._typing import Array, ArrayLike
from .geometry import _SPATIAL, UNCACHEABLE, adaptive_pool_problem, key_part

__all__ = [
    "adaptive_avg_pool1d", "adaptive_avg_pool1d_backward", "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward",
    "adaptive_avg_pool3d", "adaptive_avg_pool3d_backward", "adaptive_max_pool1d", "adaptive_max_pool1d_backward",
    "adaptive_max_pool2d", "adaptive_max_pool2d_backward", "adaptive_max_pool3d", "adaptive_max_pool3d_backward",
]

#: An int for every axis, or one entry per axis: an int, or None to keep that axis's input size.
OutputSize = Union[int, Sequence[Optional[int]]]

#: (function, shape, dtype, output_size) -> (problem, result shape, dtype): a repeated call with the same
#: shape and output size skips the checks and the geometry (they depend on nothing else).
_problems: dict = {}
_PROBLEMS_MAX = 4096


def _prepare(fn, nd, input, output_size):
    """Check every argument; return the contiguous input of the problem's rank, the problem and the user's shape."""
    x = v.as_array(input, "input", fn)
    size_key = key_part(output_size)
    key = None if size_key is UNCACHEABLE else (fn, x.shape, x.dtype, size_key)
    hit = None if key is None else _problems.get(key)
    if hit is None:
        dtype = v.result_dtype(x)
        geom, user_shape = adaptive_pool_problem(fn, nd, x.shape, output_size, dtype)
        hit = (geom, user_shape, dtype)
        if key is not None:
            if len(_problems) >= _PROBLEMS_MAX:
                _problems.clear()
            _problems[key] = hit
    geom, user_shape, dtype = hit
    return v.contiguous(x, dtype).reshape(geom.input_shape), geom, user_shape


def _run(method, op, geom, dtype, fn, run, args):
    """``run(*args)``, or in measure mode (``run`` None) time the candidates on these arrays first."""
    if run is None:
        dispatch.run(method, op, geom, dtype, fn, args)
    else:
        run(*args)


def _adaptive_max(fn, nd, input, output_size, return_indices, method):
    if not isinstance(input, np.ndarray) and _dask.is_dask(input):  # lazy, batch chunk by batch chunk
        dispatch.check_method(method, fn)
        public = functools.partial(globals()[fn], method=method)
        return _dask.adaptive_pool(fn, nd, public, input, output_size, return_indices)
    x, geom, user_shape = _prepare(fn, nd, input, output_size)
    _, run = dispatch.resolve(method, "adaptive_max_pool", geom, x.dtype, fn)
    out = np.empty(user_shape, dtype=x.dtype)
    indices = np.empty(user_shape, dtype=np.int64) if return_indices else None
    if out.size:
        i4 = None if indices is None else indices.reshape(geom.output_shape)
        _run(method, "adaptive_max_pool", geom, x.dtype, fn, run, (x, geom, out.reshape(geom.output_shape), i4))
    return (out, indices) if return_indices else out


def _adaptive_avg(fn, nd, input, output_size, method):
    if not isinstance(input, np.ndarray) and _dask.is_dask(input):  # lazy, batch chunk by batch chunk
        dispatch.check_method(method, fn)
        public = functools.partial(globals()[fn], method=method)
        return _dask.adaptive_pool(fn, nd, public, input, output_size, False)
    x, geom, user_shape = _prepare(fn, nd, input, output_size)
    _, run = dispatch.resolve(method, "adaptive_avg_pool", geom, x.dtype, fn)
    out = np.empty(user_shape, dtype=x.dtype)
    if out.size:
        _run(method, "adaptive_avg_pool", geom, x.dtype, fn, run, (x, geom, out.reshape(geom.output_shape)))
    return out


def _backward_problem(fn, nd, grad_output, input_shape):
    """``(problem, input shape, dtype)`` of a backward call: ``input_shape`` pooled to ``grad_output``'s size."""
    spatial = _SPATIAL[nd]
    out_spatial = ", ".join(f"{axis}_out" for axis in spatial.split(", "))
    v.check_ndim(grad_output, "grad_output", fn, (nd + 1, nd + 2),
                 f"(N, C, {out_spatial}) or unbatched (C, {out_spatial})")
    if min(grad_output.shape[-nd:]) < 1:
        raise ValueError(f"{fn}: grad_output must have at least one output along every spatial axis, "
                         f"got shape {grad_output.shape}")
    dtype = v.result_dtype(grad_output)
    geom, user_shape = adaptive_pool_problem(fn, nd, input_shape, grad_output.shape[-nd:], dtype,
                                             name="input_shape")
    if grad_output.shape != user_shape:
        shape = user_shape[:-nd] + geom.in_size[len(geom.in_size) - nd:]
        raise ValueError(f"{fn}: grad_output must be the pooled output of an input of shape {shape} "
                         f"(same leading dimensions), got shape {grad_output.shape}")
    return geom, user_shape[:-nd] + geom.in_size[len(geom.in_size) - nd:], dtype


def _adaptive_max_backward(fn, nd, grad_output, indices, input_shape, method):
    dispatch.check_method(method, fn)
    grad_output = v.as_array(grad_output, "grad_output", fn)
    geom, shape, dtype = _backward_problem(fn, nd, grad_output, input_shape)
    indices = v.pool_indices(indices, grad_output.shape, shape[-nd:], fn)
    grad_x = np.zeros(shape, dtype)
    if grad_x.size:
        args = (v.contiguous(grad_output, dtype).reshape(geom.output_shape),
                v.contiguous(indices, np.int64).reshape(geom.output_shape), geom, grad_x.reshape(geom.input_shape))
        dispatch.run(method, "adaptive_max_pool_backward", geom, dtype, fn, args)
    return grad_x


def _adaptive_avg_backward(fn, nd, grad_output, input_shape, method):
    dispatch.check_method(method, fn)
    grad_output = v.as_array(grad_output, "grad_output", fn)
    geom, shape, dtype = _backward_problem(fn, nd, grad_output, input_shape)
    grad_x = np.zeros(shape, dtype)
    if grad_x.size:
        g = v.contiguous(grad_output, dtype).reshape(geom.output_shape)
        dispatch.run(method, "adaptive_avg_pool_backward", geom, dtype, fn, (g, geom, grad_x.reshape(geom.input_shape)))
    return grad_x


# --------------------------------------------------------------------------- forward


def adaptive_avg_pool1d(input: ArrayLike, output_size: OutputSize, *, method: str = "auto") -> Array:
    """Adaptive average pooling over ``(N, C, L)`` or ``(C, L)`` inputs, as ``torch.nn.functional.adaptive_avg_pool1d``.

    Parameters
    ----------
    input : array_like, shape (N, C, L) or (C, L)
        Real numbers; integers and bools are computed in floating point (float32, or float64 for
        64-bit integers, as NumPy promotes).
    output_size : int or tuple of (int or None)
        ``L_out`` (>= 1), or a 1-tuple; None keeps ``L``.
    method : str
        'auto', 'measure' or a registered strategy implementing it (``fastconv.strategies.names()``).

    Returns
    -------
    ndarray, shape (N, C, L_out) or (C, L_out)
        Output ``i`` is the mean of ``input[..., floor(i*L/L_out) : ceil((i+1)*L/L_out)]``.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.adaptive_avg_pool1d(np.array([[1., 2, 3, 4, 5]]), 3)
    array([[1.5, 3. , 4.5]])
    """
    return _adaptive_avg("adaptive_avg_pool1d", 1, input, output_size, method)


def adaptive_avg_pool2d(input: ArrayLike, output_size: OutputSize, *, method: str = "auto") -> Array:
    """Adaptive average pooling over ``(N, C, H, W)`` or ``(C, H, W)`` inputs, as
    ``torch.nn.functional.adaptive_avg_pool2d``.

    Parameters
    ----------
    input : array_like, shape (N, C, H, W) or (C, H, W)
        Real numbers; integers and bools are computed in floating point.
    output_size : int or tuple of (int or None)
        ``(H_out, W_out)``, or one int for both (>= 1); a None entry keeps that input size.
    method : str
        'auto', 'measure' or a registered strategy implementing it (``fastconv.strategies.names()``).

    Returns
    -------
    ndarray, shape (N, C, H_out, W_out) or (C, H_out, W_out)
        Output ``(i, j)`` is the mean of rows ``[floor(i*H/H_out), ceil((i+1)*H/H_out))`` and
        columns ``[floor(j*W/W_out), ceil((j+1)*W/W_out))``. ``output_size=1`` is global average pooling.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.arange(16.).reshape(1, 4, 4)
    >>> fastconv.adaptive_avg_pool2d(x, 2)
    array([[[ 2.5,  4.5],
            [10.5, 12.5]]])
    >>> fastconv.adaptive_avg_pool2d(x, (None, 1))[0, :, 0]    # the mean of each row
    array([ 1.5,  5.5,  9.5, 13.5])
    """
    return _adaptive_avg("adaptive_avg_pool2d", 2, input, output_size, method)


def adaptive_avg_pool3d(input: ArrayLike, output_size: OutputSize, *, method: str = "auto") -> Array:
    """Adaptive average pooling over ``(N, C, D, H, W)`` or ``(C, D, H, W)`` inputs, as
    ``torch.nn.functional.adaptive_avg_pool3d``.

    Parameters
    ----------
    input : array_like, shape (N, C, D, H, W) or (C, D, H, W)
        Real numbers; integers and bools are computed in floating point.
    output_size : int or tuple of (int or None)
        ``(D_out, H_out, W_out)``, or one int for all three (>= 1); a None entry keeps that input size.
    method : str
        'auto', 'measure' or a registered strategy implementing it (``fastconv.strategies.names()``).

    Returns
    -------
    ndarray, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
        The mean of each window (per axis as in :func:`adaptive_avg_pool2d`).

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.adaptive_avg_pool3d(np.arange(8.).reshape(1, 2, 2, 2), 1)
    array([[[[3.5]]]])
    """
    return _adaptive_avg("adaptive_avg_pool3d", 3, input, output_size, method)


def adaptive_max_pool1d(input: ArrayLike, output_size: OutputSize, return_indices: bool = False, *,
                        method: str = "auto") -> Array | tuple[Array, Array]:
    """Adaptive max pooling over ``(N, C, L)`` or ``(C, L)`` inputs, as ``torch.nn.functional.adaptive_max_pool1d``.

    Parameters
    ----------
    input : array_like, shape (N, C, L) or (C, L)
        Real numbers; integers and bools are computed in floating point.
    output_size : int or tuple of (int or None)
        ``L_out`` (>= 1), or a 1-tuple; None keeps ``L``.
    return_indices : bool
        Also return the position of each maximum in its input row (what
        :func:`adaptive_max_pool1d_backward` needs).
    method : str
        'auto', 'measure' or a registered strategy implementing it (``fastconv.strategies.names()``).

    Returns
    -------
    out : ndarray, shape (N, C, L_out) or (C, L_out)
    indices : ndarray of int64, same shape (only with ``return_indices``)

    As in PyTorch, a window holding NaN returns NaN (the index of its last NaN), and of equal
    maxima the first wins.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.adaptive_max_pool1d(np.array([[1., 5, 2, 4, 3]]), 3, return_indices=True)
    (array([[5., 5., 4.]]), array([[1, 1, 3]]))
    """
    return _adaptive_max("adaptive_max_pool1d", 1, input, output_size, return_indices, method)


def adaptive_max_pool2d(input: ArrayLike, output_size: OutputSize, return_indices: bool = False, *,
                        method: str = "auto") -> Array | tuple[Array, Array]:
    """Adaptive max pooling over ``(N, C, H, W)`` or ``(C, H, W)`` inputs, as
    ``torch.nn.functional.adaptive_max_pool2d``.

    Parameters
    ----------
    input : array_like, shape (N, C, H, W) or (C, H, W)
        Real numbers; integers and bools are computed in floating point.
    output_size : int or tuple of (int or None)
        ``(H_out, W_out)``, or one int for both (>= 1); a None entry keeps that input size.
    return_indices : bool
        Also return, for each output, the flat index ``row * W + col`` of the maximum in its input
        plane (what :func:`adaptive_max_pool2d_backward` needs).
    method : str
        'auto', 'measure' or a registered strategy implementing it (``fastconv.strategies.names()``).

    Returns
    -------
    out : ndarray, shape (N, C, H_out, W_out) or (C, H_out, W_out)
        The maximum of each window (windows as in :func:`adaptive_avg_pool2d`).
    indices : ndarray of int64, same shape (only with ``return_indices``)

    As in PyTorch, a window holding NaN returns NaN (the index of its last NaN in row-major
    order), and of equal maxima the first in row-major order wins.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> out, idx = fastconv.adaptive_max_pool2d(np.arange(16.).reshape(1, 4, 4), 2, return_indices=True)
    >>> out
    array([[[ 5.,  7.],
            [13., 15.]]])
    >>> idx
    array([[[ 5,  7],
            [13, 15]]])
    """
    return _adaptive_max("adaptive_max_pool2d", 2, input, output_size, return_indices, method)


def adaptive_max_pool3d(input: ArrayLike, output_size: OutputSize, return_indices: bool = False, *,
                        method: str = "auto") -> Array | tuple[Array, Array]:
    """Adaptive max pooling over ``(N, C, D, H, W)`` or ``(C, D, H, W)`` inputs, as
    ``torch.nn.functional.adaptive_max_pool3d``.

    Parameters
    ----------
    input : array_like, shape (N, C, D, H, W) or (C, D, H, W)
        Real numbers; integers and bools are computed in floating point.
    output_size : int or tuple of (int or None)
        ``(D_out, H_out, W_out)``, or one int for all three (>= 1); a None entry keeps that input size.
    return_indices : bool
        Also return, for each output, the flat index ``(d * H + h) * W + w`` of the maximum in its
        input volume (what :func:`adaptive_max_pool3d_backward` needs), as PyTorch does.
    method : str
        'auto', 'measure' or a registered strategy implementing it (``fastconv.strategies.names()``).

    Returns
    -------
    out : ndarray, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
    indices : ndarray of int64, same shape (only with ``return_indices``)

    NaN and ties as in :func:`adaptive_max_pool2d`.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.adaptive_max_pool3d(np.arange(8.).reshape(1, 2, 2, 2), 1, return_indices=True)
    (array([[[[7.]]]]), array([[[[7]]]]))
    """
    return _adaptive_max("adaptive_max_pool3d", 3, input, output_size, return_indices, method)


# --------------------------------------------------------------------------- backward


def adaptive_avg_pool1d_backward(grad_output: ArrayLike, input_shape: Sequence[int], *,
                                 method: str = "auto") -> Array:
    """Gradient of :func:`adaptive_avg_pool1d` with respect to its input.

    Parameters
    ----------
    grad_output : array_like, shape (N, C, L_out) or (C, L_out)
        dL/dY; its length is the forward call's output size.
    input_shape : tuple of int
        The forward input's shape, (N, C, L) or (C, L).
    method : str
        'auto', 'measure' or a registered strategy implementing it.

    Returns
    -------
    ndarray of ``input_shape``
        Each output's gradient, divided by its window's size, added to every element of the window.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.adaptive_avg_pool1d_backward(np.array([[1., 1]]), (1, 3))
    array([[0.5, 1. , 0.5]])
    """
    return _adaptive_avg_backward("adaptive_avg_pool1d_backward", 1, grad_output, input_shape, method)


def adaptive_avg_pool2d_backward(grad_output: ArrayLike, input_shape: Sequence[int], *,
                                 method: str = "auto") -> Array:
    """Gradient of :func:`adaptive_avg_pool2d` with respect to its input.

    Parameters
    ----------
    grad_output : array_like, shape (N, C, H_out, W_out) or (C, H_out, W_out)
        dL/dY; its spatial shape is the forward call's output size.
    input_shape : tuple of int
        The forward input's shape, (N, C, H, W) or (C, H, W).
    method : str
        'auto', 'measure' or a registered strategy implementing it.

    Returns
    -------
    ndarray of ``input_shape``
        Each output's gradient, divided by its window's size, added to every element of the window.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.adaptive_avg_pool2d_backward(np.ones((1, 1, 1)), (1, 2, 2))
    array([[[0.25, 0.25],
            [0.25, 0.25]]])
    """
    return _adaptive_avg_backward("adaptive_avg_pool2d_backward", 2, grad_output, input_shape, method)


def adaptive_avg_pool3d_backward(grad_output: ArrayLike, input_shape: Sequence[int], *,
                                 method: str = "auto") -> Array:
    """Gradient of :func:`adaptive_avg_pool3d` with respect to its input.

    Parameters
    ----------
    grad_output : array_like, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
        dL/dY; its spatial shape is the forward call's output size.
    input_shape : tuple of int
        The forward input's shape, (N, C, D, H, W) or (C, D, H, W).
    method : str
        'auto', 'measure' or a registered strategy implementing it.

    Returns
    -------
    ndarray of ``input_shape``
        Each output's gradient, divided by its window's size, added to every element of the window.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.adaptive_avg_pool3d_backward(np.full((1, 1, 1, 1), 8.), (1, 2, 2, 2)).ravel()
    array([1., 1., 1., 1., 1., 1., 1., 1.])
    """
    return _adaptive_avg_backward("adaptive_avg_pool3d_backward", 3, grad_output, input_shape, method)


def adaptive_max_pool1d_backward(grad_output: ArrayLike, indices: ArrayLike, input_shape: Sequence[int], *,
                                 method: str = "auto") -> Array:
    """Gradient of :func:`adaptive_max_pool1d` with respect to its input.

    Parameters
    ----------
    grad_output : array_like, shape (N, C, L_out) or (C, L_out)
        dL/dY.
    indices : array_like of int, same shape
        From ``adaptive_max_pool1d(..., return_indices=True)``.
    input_shape : tuple of int
        The forward input's shape, (N, C, L) or (C, L).
    method : str
        'auto', 'measure' or a registered strategy implementing it.

    Returns
    -------
    ndarray of ``input_shape``
        Each output's gradient added at the input element its maximum came from (summed where
        windows share it).

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> y, idx = fastconv.adaptive_max_pool1d(np.array([[1., 5, 2, 4, 3]]), 3, return_indices=True)
    >>> fastconv.adaptive_max_pool1d_backward(np.ones_like(y), idx, (1, 5))
    array([[0., 2., 0., 1., 0.]])
    """
    return _adaptive_max_backward("adaptive_max_pool1d_backward", 1, grad_output, indices, input_shape, method)


def adaptive_max_pool2d_backward(grad_output: ArrayLike, indices: ArrayLike, input_shape: Sequence[int], *,
                                 method: str = "auto") -> Array:
    """Gradient of :func:`adaptive_max_pool2d` with respect to its input.

    Parameters
    ----------
    grad_output : array_like, shape (N, C, H_out, W_out) or (C, H_out, W_out)
        dL/dY.
    indices : array_like of int, same shape
        From ``adaptive_max_pool2d(..., return_indices=True)``: flat positions ``row * W + col``.
    input_shape : tuple of int
        The forward input's shape, (N, C, H, W) or (C, H, W).
    method : str
        'auto', 'measure' or a registered strategy implementing it.

    Returns
    -------
    ndarray of ``input_shape``
        Each output's gradient added at the input element its maximum came from.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> y, idx = fastconv.adaptive_max_pool2d(np.arange(9.).reshape(1, 3, 3), 2, return_indices=True)
    >>> fastconv.adaptive_max_pool2d_backward(np.ones_like(y), idx, (1, 3, 3))[0]
    array([[0., 0., 0.],
           [0., 1., 1.],
           [0., 1., 1.]])
    """
    return _adaptive_max_backward("adaptive_max_pool2d_backward", 2, grad_output, indices, input_shape, method)


def adaptive_max_pool3d_backward(grad_output: ArrayLike, indices: ArrayLike, input_shape: Sequence[int], *,
                                 method: str = "auto") -> Array:
    """Gradient of :func:`adaptive_max_pool3d` with respect to its input.

    Parameters
    ----------
    grad_output : array_like, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
        dL/dY.
    indices : array_like of int, same shape
        From ``adaptive_max_pool3d(..., return_indices=True)``: flat positions ``(d * H + h) * W + w``.
    input_shape : tuple of int
        The forward input's shape, (N, C, D, H, W) or (C, D, H, W).
    method : str
        'auto', 'measure' or a registered strategy implementing it.

    Returns
    -------
    ndarray of ``input_shape``
        Each output's gradient added at the input element its maximum came from.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> y, idx = fastconv.adaptive_max_pool3d(np.arange(8.).reshape(1, 2, 2, 2), 1, return_indices=True)
    >>> fastconv.adaptive_max_pool3d_backward(np.ones_like(y), idx, (1, 2, 2, 2)).ravel()
    array([0., 0., 0., 0., 0., 0., 0., 1.])
    """
    return _adaptive_max_backward("adaptive_max_pool3d_backward", 3, grad_output, indices, input_shape, method)
