"""Layers with forward and backward, for NumPy training loops and teaching frameworks.

Each layer follows the lecture's contract: ``forward(x)`` computes the output and
keeps what the gradient needs; ``backward(grad_output)`` returns dL/dx and stores
the parameter gradients. Parameters and gradients are plain dicts of NumPy
arrays (``layer.params``, ``layer.grads``, keys ``"weight"`` and ``"bias"``), so
any optimiser can update them in place::

    conv = fastconv.nn.Conv2d(1, 8, 3, padding=1, rng=0)
    y = conv(x)                       # forward
    gx = conv.backward(gy)            # backward: conv.grads["weight"], conv.grads["bias"]
    for k in conv.params:
        conv.params[k] -= lr * conv.grads[k]

Constructors mirror ``torch.nn``; weights get PyTorch's default initialisation
(Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and
the same bound for the bias) from a seedable generator.
"""

from __future__ import annotations

import math

import numpy as np

from . import adaptive as _adaptive
from . import conv as _conv
from . import pool as _pool
from . import transpose as _transpose
from ._prepared import WeightCache
from ._validate import as_array

__all__ = ["AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
           "AdaptiveMaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
           "ConvTranspose3d", "Layer", "MaxPool1d", "MaxPool2d", "MaxPool3d"]


class Layer:
    """Base class: ``__call__`` is ``forward``; ``params``/``grads`` are dicts of arrays (empty for pooling)."""

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self._saved = None

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad_output):  # pragma: no cover - abstract
        raise NotImplementedError

    def _need_forward(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward: run forward(x) first")
        return self._saved

    def zero_grad(self):
        """Set every stored gradient to zero."""
        for g in self.grads.values():
            g[...] = 0


def _generator(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


class _ConvNd(Layer):
    _nd = 2
    _module, _prefix = _conv, "conv"  # forward: <_prefix><nd>d, backward: <_prefix><nd>d_backward

    def _function(self, suffix=""):
        return getattr(self._module, f"{self._prefix}{self._nd}d{suffix}")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, rng=None, method="auto"):
        super().__init__()
        name = type(self).__name__
        if padding_mode != "zeros":
            raise ValueError(f"{name}: only padding_mode='zeros' is supported, got {padding_mode!r}")
        if device not in (None, "cpu"):
            raise ValueError(f"{name}: fastconv computes on the CPU; device must be None or 'cpu', got {device!r}")
        dtype = np.float32 if dtype is None else dtype
        kernel = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * self._nd
        if len(kernel) != self._nd or any(not isinstance(k, (int, np.integer)) or k < 1 for k in kernel):
            raise ValueError(f"{name}: kernel_size must be a positive int or {self._nd} of them, got {kernel_size!r}")
        for label, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: {label} must be a positive int, got {value!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: dtype must be float32 or float64, got {dtype}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.method = method
        # what the strategies derive from the weights (Winograd's transforms, FFT spectra, packed
        # weights), kept while params["weight"] is unchanged (compared bit for bit on every call)
        self._prepared = WeightCache()
        fan_in = (in_channels // groups) * math.prod(kernel)
        bound = 1.0 / math.sqrt(fan_in)
        gen = _generator(rng)
        shape = (out_channels, in_channels // groups) + kernel
        self.params["weight"] = gen.uniform(-bound, bound, shape).astype(dtype)
        self.grads["weight"] = np.zeros(shape, dtype)
        if bias:
            self.params["bias"] = gen.uniform(-bound, bound, out_channels).astype(dtype)
            self.grads["bias"] = np.zeros(out_channels, dtype)

    @property
    def weight(self):
        return self.params["weight"]

    @property
    def bias(self):
        return self.params.get("bias")

    def _geometry(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def forward(self, x):
        """``conv(x)``; keeps ``x`` for backward."""
        x = as_array(x, "x", f"{type(self).__name__}.forward")
        with self._prepared:
            y = self._function()(x, self.weight, self.bias, method=self.method, **self._geometry())
        self._saved = x
        return y

    def backward(self, grad_output):
        """dL/dx for the last forward's input; stores dL/dW (and dL/db) in ``grads``."""
        x = self._need_forward()
        with self._prepared:
            gx, gw, gb = self._function("_backward")(grad_output, x, self.weight, method=self.method,
                                                     output_mask=(True, True, "bias" in self.params),
                                                     **self._geometry())
        self.grads["weight"][...] = gw
        if gb is not None:
            self.grads["bias"][...] = gb
        return gx

    def __repr__(self):
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={'bias' in self.params}, dtype={self.weight.dtype})")


class Conv1d(_ConvNd):
    """1D convolution layer, constructed like ``torch.nn.Conv1d`` (plus ``dtype``, ``rng``, ``method``)."""

    _nd = 1


class Conv2d(_ConvNd):
    """2D convolution layer, constructed like ``torch.nn.Conv2d`` (plus ``dtype``, ``rng``, ``method``).

    Examples
    --------
    >>> import numpy as np, fastconv.nn as nn
    >>> conv = nn.Conv2d(1, 4, 3, padding=1, rng=0)
    >>> y = conv(np.ones((2, 1, 8, 8), np.float32))
    >>> gx = conv.backward(np.ones_like(y))
    >>> y.shape, gx.shape, conv.grads["weight"].shape
    ((2, 4, 8, 8), (2, 1, 8, 8), (4, 1, 3, 3))
    """

    _nd = 2


class Conv3d(_ConvNd):
    """3D convolution layer, constructed like ``torch.nn.Conv3d`` (plus ``dtype``, ``rng``, ``method``)."""

    _nd = 3


class _ConvTransposeNd(_ConvNd):
    """Transposed convolution layers: weight ``(C_in, C_out/groups, k...)``, PyTorch's initialisation
    (the bound uses ``fan_in = C_out/groups * prod(k)``, the weight's second dimension, as torch does)."""

    _module, _prefix = _transpose, "conv_transpose"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None, *, rng=None, method="auto"):
        # _ConvNd draws a (C_out, C_in/groups, k...) weight with fan_in C_in/groups * prod(k); the
        # transposed layer's weight is (C_in, C_out/groups, k...) with fan_in C_out/groups * prod(k):
        # the same draw with the channel roles swapped.
        super().__init__(out_channels, in_channels, kernel_size, stride, padding, dilation, groups, False,
                         padding_mode, device, dtype, rng=rng, method=method)
        self.in_channels, self.out_channels, self.output_padding = in_channels, out_channels, output_padding
        if bias:
            dtype = self.weight.dtype
            bound = 1.0 / math.sqrt((out_channels // groups) * math.prod(self.kernel_size))
            gen = _generator(rng)
            self.params["bias"] = gen.uniform(-bound, bound, out_channels).astype(dtype)
            self.grads["bias"] = np.zeros(out_channels, dtype)

    def _geometry(self):
        return dict(stride=self.stride, padding=self.padding, output_padding=self.output_padding,
                    groups=self.groups, dilation=self.dilation)

    def __repr__(self):
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, output_padding={self.output_padding}, "
                f"groups={self.groups}, dilation={self.dilation}, bias={'bias' in self.params}, "
                f"dtype={self.weight.dtype})")


class ConvTranspose1d(_ConvTransposeNd):
    """1D transposed convolution layer, constructed like ``torch.nn.ConvTranspose1d``."""

    _nd = 1


class ConvTranspose2d(_ConvTransposeNd):
    """2D transposed convolution layer, constructed like ``torch.nn.ConvTranspose2d``.

    Examples
    --------
    >>> import numpy as np, fastconv.nn as nn
    >>> up = nn.ConvTranspose2d(4, 2, 2, stride=2, rng=0)
    >>> up(np.ones((1, 4, 8, 8), np.float32)).shape
    (1, 2, 16, 16)
    """

    _nd = 2


class ConvTranspose3d(_ConvTransposeNd):
    """3D transposed convolution layer, constructed like ``torch.nn.ConvTranspose3d``."""

    _nd = 3


class _MaxPoolNd(Layer):
    _nd = 2

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False, *,
                 method="auto"):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.return_indices, self.ceil_mode, self.method = dilation, return_indices, ceil_mode, method

    def forward(self, x):
        """Max pooling; keeps the argmax indices and the input's shape for backward.

        Returns the pooled array, and the indices too when the layer was built with
        ``return_indices=True`` (as ``torch.nn.MaxPool2d``).
        """
        x = as_array(x, "x", f"{type(self).__name__}.forward")
        fn = getattr(_pool, f"max_pool{self._nd}d")
        y, idx = fn(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                    return_indices=True, method=self.method)
        self._saved = (idx, x.shape)
        return (y, idx) if self.return_indices else y

    def backward(self, grad_output):
        """dL/dx: each output's gradient to the input element its maximum came from."""
        idx, shape = self._need_forward()
        fn = getattr(_pool, f"max_pool{self._nd}d_backward")
        return fn(grad_output, idx, shape, method=self.method)


class MaxPool1d(_MaxPoolNd):
    """1D max pooling layer, constructed like ``torch.nn.MaxPool1d``."""

    _nd = 1


class MaxPool2d(_MaxPoolNd):
    """2D max pooling layer, constructed like ``torch.nn.MaxPool2d``."""

    _nd = 2


class MaxPool3d(_MaxPoolNd):
    """3D max pooling layer, constructed like ``torch.nn.MaxPool3d``."""

    _nd = 3


class _AvgPoolNd(Layer):
    _nd = 2

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, *,
                 method="auto"):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad, self.method = ceil_mode, count_include_pad, method

    def _args(self):
        """The pooling arguments shared by the forward and backward functions, positionally."""
        return (self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def forward(self, x):
        """Average pooling; keeps the input's shape for backward."""
        x = as_array(x, "x", f"{type(self).__name__}.forward")
        fn = getattr(_pool, f"avg_pool{self._nd}d")
        y = fn(x, *self._args(), method=self.method)
        self._saved = x.shape
        return y

    def backward(self, grad_output):
        """dL/dx: each output's gradient spread evenly over its window."""
        shape = self._need_forward()
        fn = getattr(_pool, f"avg_pool{self._nd}d_backward")
        return fn(grad_output, shape, *self._args(), method=self.method)


class AvgPool1d(_AvgPoolNd):
    """1D average pooling layer, constructed like ``torch.nn.AvgPool1d``."""

    _nd = 1


class AvgPool2d(_AvgPoolNd):
    """2D average pooling layer, constructed like ``torch.nn.AvgPool2d``.

    ``divisor_override`` (a non-zero int or None) is passed to :func:`fastconv.avg_pool2d`.
    """

    _nd = 2

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, *, method="auto"):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, method=method)
        self.divisor_override = divisor_override

    def _args(self):
        return super()._args() + (self.divisor_override,)


class AvgPool3d(AvgPool2d):
    """3D average pooling layer, constructed like ``torch.nn.AvgPool3d`` (``divisor_override`` included)."""

    _nd = 3


class _AdaptiveMaxPoolNd(Layer):
    _nd = 2

    def __init__(self, output_size, return_indices=False, *, method="auto"):
        super().__init__()
        self.output_size, self.return_indices, self.method = output_size, return_indices, method

    def forward(self, x):
        """Adaptive max pooling; keeps the argmax indices and the input's shape for backward.

        Returns the pooled array, and the indices too when the layer was built with
        ``return_indices=True`` (as ``torch.nn.AdaptiveMaxPool2d``).
        """
        x = as_array(x, "x", f"{type(self).__name__}.forward")
        fn = getattr(_adaptive, f"adaptive_max_pool{self._nd}d")
        y, idx = fn(x, self.output_size, return_indices=True, method=self.method)
        self._saved = (idx, x.shape)
        return (y, idx) if self.return_indices else y

    def backward(self, grad_output):
        """dL/dx: each output's gradient to the input element its maximum came from."""
        idx, shape = self._need_forward()
        fn = getattr(_adaptive, f"adaptive_max_pool{self._nd}d_backward")
        return fn(grad_output, idx, shape, method=self.method)


class AdaptiveMaxPool1d(_AdaptiveMaxPoolNd):
    """1D adaptive max pooling layer, constructed like ``torch.nn.AdaptiveMaxPool1d``."""

    _nd = 1


class AdaptiveMaxPool2d(_AdaptiveMaxPoolNd):
    """2D adaptive max pooling layer, constructed like ``torch.nn.AdaptiveMaxPool2d``."""

    _nd = 2


class AdaptiveMaxPool3d(_AdaptiveMaxPoolNd):
    """3D adaptive max pooling layer, constructed like ``torch.nn.AdaptiveMaxPool3d``."""

    _nd = 3


class _AdaptiveAvgPoolNd(Layer):
    _nd = 2

    def __init__(self, output_size, *, method="auto"):
        super().__init__()
        self.output_size, self.method = output_size, method

    def forward(self, x):
        """Adaptive average pooling; keeps the input's shape for backward."""
        x = as_array(x, "x", f"{type(self).__name__}.forward")
        fn = getattr(_adaptive, f"adaptive_avg_pool{self._nd}d")
        y = fn(x, self.output_size, method=self.method)
        self._saved = x.shape
        return y

    def backward(self, grad_output):
        """dL/dx: each output's gradient spread evenly over its window."""
        shape = self._need_forward()
        fn = getattr(_adaptive, f"adaptive_avg_pool{self._nd}d_backward")
        return fn(grad_output, shape, method=self.method)


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    """1D adaptive average pooling layer, constructed like ``torch.nn.AdaptiveAvgPool1d``."""

    _nd = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    """2D adaptive average pooling layer, constructed like ``torch.nn.AdaptiveAvgPool2d``."""

    _nd = 2


class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd):
    """3D adaptive average pooling layer, constructed like ``torch.nn.AdaptiveAvgPool3d``."""

    _nd = 3
