"""``conv1d`` and ``conv2d``: validate, resolve the geometry, dispatch to a strategy."""

from __future__ import annotations

import numpy as np

from . import _validate as v
from . import dispatch
from .geometry import ConvGeometry, _as_int, _conv_output_size, _resolve_padding, normalize_tuple

__all__ = ["conv1d", "conv2d", "conv1d_backward", "conv2d_backward"]


def conv_geometry(fn, nd, x_shape, weight_shape, bias_shape, stride, padding, dilation, groups):
    """Check a convolution's shapes and arguments; return its :class:`ConvGeometry` and the result's shape."""
    spatial = "L" if nd == 1 else "H, W"
    if len(x_shape) not in (nd + 1, nd + 2):
        raise ValueError(f"{fn}: x must be (N, C_in, {spatial}) or unbatched (C_in, {spatial}), "
                         f"got a {len(x_shape)}-D array of shape {tuple(x_shape)}")
    if len(weight_shape) != nd + 2:
        kernel_dims = "k" if nd == 1 else "kH, kW"
        raise ValueError(f"{fn}: weight must be (C_out, C_in/groups, {kernel_dims}), "
                         f"got a {len(weight_shape)}-D array of shape {tuple(weight_shape)}")
    batched = len(x_shape) == nd + 2
    N, C_in = ((x_shape[0],) if batched else (1,)) + (x_shape[-nd - 1],)
    C_out, C_per_group = weight_shape[:2]
    kernel = tuple(weight_shape[2:])
    groups = _as_int(groups, "groups", fn)
    if groups < 1:
        raise ValueError(f"{fn}: groups must be >= 1, got {groups}")
    if C_in % groups:
        raise ValueError(f"{fn}: groups={groups} does not divide the {C_in} input channels")
    if C_out % groups:
        raise ValueError(f"{fn}: groups={groups} does not divide the {C_out} output channels (weight.shape[0])")
    if C_per_group * groups != C_in:
        raise ValueError(
            f"{fn}: input has {C_in} channels but weight.shape[1] * groups is "
            f"{C_per_group} * {groups} = {C_per_group * groups}"
        )
    if C_per_group == 0 or min(kernel) == 0:
        raise ValueError(f"{fn}: weight must not be empty, got shape {tuple(weight_shape)}")
    if bias_shape is not None and tuple(bias_shape) != (C_out,):
        raise ValueError(f"{fn}: bias must have shape ({C_out},) (C_out), got {tuple(bias_shape)}")

    stride = normalize_tuple(stride, nd, "stride", fn)
    dilation = normalize_tuple(dilation, nd, "dilation", fn)
    in_size = tuple(x_shape[-nd:])
    pads = _resolve_padding(padding, in_size, kernel, stride, dilation, fn)
    out_size = tuple(
        _conv_output_size(n, k, s, lo, hi, d) for n, k, s, (lo, hi), d in zip(in_size, kernel, stride, pads, dilation)
    )
    if min(out_size) < 1:
        raise ValueError(
            f"{fn}: padded input {tuple(n + lo + hi for n, (lo, hi) in zip(in_size, pads))} is smaller "
            f"than the dilated kernel {tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))}; "
            "the output would be empty"
        )
    if nd == 1:  # a 1D problem is a 2D problem of height 1
        in_size, kernel, out_size = (1,) + in_size, (1,) + kernel, (1,) + out_size
        stride, dilation, pads = (1,) + stride, (1,) + dilation, ((0, 0),) + pads
    geom = ConvGeometry(
        batch=N, in_channels=C_in, out_channels=C_out, groups=groups, in_size=in_size,
        kernel=kernel, stride=stride, dilation=dilation, padding=pads, out_size=out_size,
    )
    user_shape = ((N,) if batched else ()) + (C_out,) + geom.out_size[2 - nd:]
    return geom, user_shape


def _prepare_conv(fn, nd, x, weight, bias, stride, padding, dilation, groups):
    """Check every argument; return 4D contiguous arrays, the geometry and the user's output shape."""
    x = v.as_array(x, "x", fn)
    weight = v.as_array(weight, "weight", fn)
    if bias is not None:
        bias = v.as_array(bias, "bias", fn)
    geom, user_shape = conv_geometry(fn, nd, x.shape, weight.shape, None if bias is None else bias.shape,
                                     stride, padding, dilation, groups)
    dtype = v.result_dtype(x, weight)  # np.result_type(x, weight, np.float32); the bias is cast to it
    x4 = v.contiguous(x, dtype).reshape((geom.batch, geom.in_channels) + geom.in_size)
    w4 = v.contiguous(weight, dtype).reshape(weight.shape[:2] + geom.kernel)
    b = None if bias is None else v.contiguous(bias, dtype)
    return x4, w4, b, geom, user_shape, (("x", x), ("weight", weight), ("bias", bias))


def _conv(fn, nd, x, weight, bias, stride, padding, dilation, groups, method, out):
    dispatch.check_method(method, fn)
    x4, w4, b, geom, user_shape, inputs = _prepare_conv(fn, nd, x, weight, bias, stride, padding, dilation, groups)
    if out is None:
        out = np.empty(user_shape, dtype=x4.dtype)
    else:
        v.check_out(out, user_shape, x4.dtype, fn, inputs)
    if out.size:
        dispatch.run(method, "conv2d", geom, x4.dtype, fn, (x4, w4, b, geom, out.reshape(geom.output_shape)))
    return out


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, method="auto", out=None):
    """1D convolution (cross-correlation) over ``(N, C_in, L)`` inputs.

    ``y[n, l, t] = bias[l] + sum_{d, i} x_pad[n, g*C_in/groups + d, t*stride + i*dilation] * weight[l, d, i]``
    where ``g`` is output channel ``l``'s group.

    Parameters
    ----------
    x : array_like, shape (N, C_in, L) or (C_in, L)
        Input signals (unbatched input gives an unbatched result).
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
        'auto' (default), 'loop', 'vectorized', 'direct' or 'img2col'.
    out : ndarray, optional
        C-contiguous array of the result's shape and dtype to write into.

    Returns
    -------
    ndarray, shape (N, C_out, L_out) or (C_out, L_out)
        float32 or float64: ``np.result_type(x, weight, np.float32)``.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.conv1d(np.array([[1., 0, 2, 2, 3, 1]]), np.array([[[3., 2, 2]]]))
    array([[ 7.,  8., 16., 14.]])
    """
    return _conv("conv1d", 1, x, weight, bias, stride, padding, dilation, groups, method, out)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, method="auto", out=None):
    """2D convolution (cross-correlation) over ``(N, C_in, H, W)`` inputs.

    ``Y[n, l, i, j] = b[l] + sum_{d, a, b} X_pad[n, g*C_in/groups + d, i*sH + a*dH, j*sW + b*dW] * W[l, d, a, b]``
    where ``g`` is output channel ``l``'s group.

    Parameters
    ----------
    x : array_like, shape (N, C_in, H, W) or (C_in, H, W)
        Input images (unbatched input gives an unbatched result).
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
        'auto' (default), 'loop', 'vectorized', 'direct' or 'img2col'.
    out : ndarray, optional
        C-contiguous array of the result's shape and dtype to write into.

    Returns
    -------
    ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        float32 or float64: ``np.result_type(x, weight, np.float32)``.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.array([[[1., 2, 3, 2], [2, 3, 2, 5], [1, 2, 2, 1], [0, 2, 1, 2]]])
    >>> fastconv.conv2d(x, np.array([[[[-1., 1], [-1, 1]]]]))
    array([[[ 2.,  0.,  2.],
            [ 2., -1.,  2.],
            [ 3., -1.,  0.]]])
    """
    return _conv("conv2d", 2, x, weight, bias, stride, padding, dilation, groups, method, out)


def _conv_backward(fn, nd, grad_output, x, weight, stride, padding, dilation, groups, method, output_mask):
    dispatch.check_method(method, fn)
    if not isinstance(output_mask, (tuple, list)) or len(output_mask) != 3:
        raise ValueError(f"{fn}: output_mask must be three bools (input, weight, bias), got {output_mask!r}")
    x4, w4, _, geom, user_shape, _ = _prepare_conv(fn, nd, x, weight, None, stride, padding, dilation, groups)
    grad_output = v.as_array(grad_output, "grad_output", fn)
    if grad_output.shape != tuple(user_shape):
        raise ValueError(
            f"{fn}: grad_output must have the forward output's shape {tuple(user_shape)}, "
            f"got {grad_output.shape}"
        )
    dtype = v.result_dtype(grad_output, x4, w4)
    if dtype != x4.dtype:  # grad_output is wider than x and weight: compute in its precision
        x4, w4 = x4.astype(dtype), w4.astype(dtype)
    g4 = v.contiguous(grad_output, dtype).reshape(geom.output_shape)
    want_x, want_w, want_b = (bool(m) for m in output_mask)
    grad_x = np.empty(x4.shape, dtype) if want_x else None
    grad_w = np.empty(w4.shape, dtype) if want_w else None
    grad_b = np.empty(w4.shape[0], dtype) if want_b else None
    if geom.batch == 0 or 0 in geom.output_shape:
        for g in (grad_x, grad_w, grad_b):
            if g is not None:
                g[...] = 0
    else:
        dispatch.run(method, "conv2d_backward", geom, dtype, fn, (g4, x4, w4, geom, grad_x, grad_w, grad_b))
    x_shape = np.shape(x)
    return (
        None if grad_x is None else grad_x.reshape(x_shape),
        None if grad_w is None else grad_w.reshape(np.shape(weight)),
        grad_b,
    )


def conv1d_backward(grad_output, x, weight, stride=1, padding=0, dilation=1, groups=1, *,
                    method="auto", output_mask=(True, True, True)):
    """Gradients of :func:`conv1d` with respect to its input, weight and bias.

    Takes the forward call's ``x``, ``weight`` and geometry, and ``grad_output``
    (dL/dy, the forward output's shape). See :func:`conv2d_backward`.

    Returns
    -------
    grad_input : ndarray, x's shape, or None
    grad_weight : ndarray, weight's shape, or None
    grad_bias : ndarray, shape (C_out,), or None
    """
    return _conv_backward("conv1d_backward", 1, grad_output, x, weight, stride, padding, dilation, groups,
                          method, output_mask)


def conv2d_backward(grad_output, x, weight, stride=1, padding=0, dilation=1, groups=1, *,
                    method="auto", output_mask=(True, True, True)):
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
        'auto', 'loop', 'vectorized', 'direct' or 'img2col'.
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
