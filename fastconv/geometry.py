"""Shape arithmetic for convolution and pooling: one definition, used everywhere.

All formulas are per spatial dimension, with input length ``n``, kernel length
``k``, stride ``s``, dilation ``d`` and padding ``(lo, hi)``. The dilated
kernel covers ``d*(k-1) + 1`` input elements.

Convolution (and pooling with ``ceil_mode=False``)::

    o = floor((n + lo + hi - d*(k-1) - 1) / s) + 1

'valid' padding is ``(0, 0)``. 'same' padding follows TensorFlow's rule, which
the lecture derives and which holds for every stride::

    o  = ceil(n / s)
    p  = max(s*(o-1) + d*(k-1) + 1 - n, 0)
    lo = floor(p / 2),  hi = p - lo

At stride 1 this is PyTorch's ``padding='same'``.

Pooling with ``ceil_mode=True`` rounds up instead, but (as in PyTorch) a last
window that would start in the right padding is dropped::

    o = ceil((n + 2p - d*(k-1) - 1) / s) + 1
    if (o - 1) * s >= n + p:  o -= 1

The kernels in ``fastconv.strategies`` see every problem as 2D: a 1D problem
of length ``L`` is a 2D problem of height 1. :class:`ConvGeometry` and
:class:`PoolGeometry` carry the resolved 2D numbers to them.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

__all__ = [
    "ConvGeometry",
    "PoolGeometry",
    "conv_output_size",
    "pool_output_size",
    "resolve_padding",
    "same_padding",
]


def _as_int(value, name: str, fn: str) -> int:
    """``operator.index(value)`` with an error that names the argument."""
    if isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{fn}: {name} must be an integer, got {type(value).__name__} {value!r}"
        ) from None


def normalize_tuple(value, ndim: int, name: str, fn: str, *, minimum: int = 1) -> tuple:
    """Turn an int or a sequence of ``ndim`` ints into a tuple, checking ``>= minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != ndim:
            raise ValueError(
                f"{fn}: {name} must be an int or a sequence of {ndim} ints, "
                f"got {len(value)} values {tuple(value)!r}"
            )
        values = tuple(_as_int(v, name, fn) for v in value)
    else:
        values = (_as_int(value, name, fn),) * ndim
    for v in values:
        if v < minimum:
            raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value!r}")
    return values


def _check_axis(fn: str, n, k, stride, dilation, pads) -> None:
    """Raise unless ``n >= 0``, ``k, stride, dilation >= 1`` and every padding ``>= 0`` (all integers)."""
    for name, value, minimum in (("n", n, 0), ("k", k, 1), ("stride", stride, 1), ("dilation", dilation, 1)):
        if _as_int(value, name, fn) < minimum:
            raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value!r}")
    for value in pads:
        if _as_int(value, "padding", fn) < 0:
            raise ValueError(f"{fn}: padding must be >= 0, got {value!r}")


def conv_output_size(n: int, k: int, stride: int = 1, padding=(0, 0), dilation: int = 1) -> int:
    """Output length of a convolution along one dimension.

    ``o = floor((n + lo + hi - d*(k-1) - 1) / s) + 1``. ``padding`` is an int
    (both sides) or a ``(lo, hi)`` pair. The result is 0 when the padded
    input is shorter than the dilated kernel.

    Examples
    --------
    >>> conv_output_size(6, 3)                 # the lecture's 'valid' example
    4
    >>> conv_output_size(6, 3, stride=2, padding=(0, 1))
    3
    """
    lo, hi = (padding, padding) if not isinstance(padding, (tuple, list)) else padding
    _check_axis("conv_output_size", n, k, stride, dilation, (lo, hi))
    return _conv_output_size(n, k, stride, lo, hi, dilation)


def _conv_output_size(n, k, stride, lo, hi, dilation):
    """:func:`conv_output_size` on arguments already checked (the library's own calls)."""
    span = dilation * (k - 1) + 1
    padded = n + lo + hi
    if padded < span:
        return 0
    return (padded - span) // stride + 1


def same_padding(n: int, k: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same' padding ``(lo, hi)`` for one dimension.

    ``o = ceil(n/s)``, ``p = max(s*(o-1) + d*(k-1) + 1 - n, 0)``, ``lo = p // 2``.

    Examples
    --------
    >>> same_padding(13, 6, stride=5)          # the lecture's 2-minute quiz
    (1, 2)
    """
    _check_axis("same_padding", n, k, stride, dilation, ())
    return _same_padding(n, k, stride, dilation)


def _same_padding(n, k, stride, dilation):
    """:func:`same_padding` on arguments already checked."""
    o = -(-n // stride)
    p = max(stride * (o - 1) + dilation * (k - 1) + 1 - n, 0)
    return (p // 2, p - p // 2)


def resolve_padding(padding, input_size, kernel_size, stride, dilation, *, fn: str = "resolve_padding"):
    """Resolve a ``padding`` argument to one ``(lo, hi)`` pair per spatial dim.

    Parameters
    ----------
    padding : int, str, or sequence
        An int (all sides), one int per dim, one ``(lo, hi)`` pair per dim,
        ``'valid'`` or ``'same'`` (TensorFlow's rule, any stride).
    input_size, kernel_size, stride, dilation : sequence of int
        One value per spatial dim.

    Returns
    -------
    tuple of (int, int)
        ``((lo, hi), ...)``, one pair per spatial dim.

    Examples
    --------
    >>> resolve_padding("same", (13,), (6,), (5,), (1,))
    ((1, 2),)
    >>> resolve_padding(1, (4, 4), (3, 3), (1, 1), (1, 1))
    ((1, 1), (1, 1))
    """
    ndim = len(input_size)
    for name, values in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if len(values) != ndim:
            raise ValueError(f"{fn}: {name} must have one entry per spatial dimension of input_size "
                             f"({ndim}), got {tuple(values)!r}")
    for n, k, s, d in zip(input_size, kernel_size, stride, dilation):
        _check_axis(fn, n, k, s, d, ())
    return _resolve_padding(padding, input_size, kernel_size, stride, dilation, fn)


def _resolve_padding(padding, input_size, kernel_size, stride, dilation, fn):
    """:func:`resolve_padding` for sizes already checked (the library's own calls); checks ``padding``."""
    ndim = len(input_size)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0),) * ndim
        if mode == "same":
            return tuple(
                _same_padding(n, k, s, d)
                for n, k, s, d in zip(input_size, kernel_size, stride, dilation)
            )
        raise ValueError(
            f"{fn}: padding must be an int, a tuple, 'valid' or 'same', got {padding!r}"
        )
    if isinstance(padding, (tuple, list)):
        if len(padding) != ndim:
            raise ValueError(
                f"{fn}: padding must have one entry per spatial dimension ({ndim}), "
                f"got {len(padding)} in {padding!r}"
            )
        pairs = []
        for p in padding:
            if isinstance(p, (tuple, list)):
                if len(p) != 2:
                    raise ValueError(
                        f"{fn}: each padding pair must be (lo, hi), got {tuple(p)!r}"
                    )
                pairs.append((_as_int(p[0], "padding", fn), _as_int(p[1], "padding", fn)))
            else:
                v = _as_int(p, "padding", fn)
                pairs.append((v, v))
    else:
        v = _as_int(padding, "padding", fn)
        pairs = [(v, v)] * ndim
    for lo, hi in pairs:
        if lo < 0 or hi < 0:
            raise ValueError(f"{fn}: padding must be >= 0, got {padding!r}")
    return tuple(pairs)


def pool_output_size(n: int, k: int, stride: int, padding: int, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """Output length of a pooling window along one dimension (PyTorch's rule).

    Examples
    --------
    >>> pool_output_size(112, 3, 2, 1)
    56
    >>> pool_output_size(5, 2, 2, 0, ceil_mode=True)
    3
    """
    _check_axis("pool_output_size", n, k, stride, dilation, (padding,))
    return _pool_output_size(n, k, stride, padding, dilation, ceil_mode)


def _pool_output_size(n, k, stride, padding, dilation, ceil_mode):
    """:func:`pool_output_size` on arguments already checked."""
    span = dilation * (k - 1) + 1
    num = n + 2 * padding - span
    if num < 0:
        return 0
    if ceil_mode:
        o = -(-num // stride) + 1
        if (o - 1) * stride >= n + padding:
            o -= 1
    else:
        o = num // stride + 1
    return o


@dataclass(frozen=True)
class ConvGeometry:
    """Resolved 2D geometry of one convolution (1D problems have height 1).

    Every field is a plain int or a pair of ints ``(height, width)``;
    ``padding`` is ``((top, bottom), (left, right))``.
    """

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    in_size: tuple      # (H, W)
    kernel: tuple       # (kH, kW)
    stride: tuple       # (sH, sW)
    dilation: tuple     # (dH, dW)
    padding: tuple      # ((top, bottom), (left, right))
    out_size: tuple     # (oH, oW)

    @property
    def flops(self) -> int:
        """``2 * N * C_out * (C_in/groups) * kH*kW * oH*oW``."""
        kh, kw = self.kernel
        oh, ow = self.out_size
        return 2 * self.batch * self.out_channels * (self.in_channels // self.groups) * kh * kw * oh * ow

    @property
    def output_shape(self) -> tuple:
        """``(N, C_out, oH, oW)``."""
        return (self.batch, self.out_channels) + tuple(self.out_size)

    @property
    def is_depthwise(self) -> bool:
        return self.groups == self.in_channels and self.groups > 1


@dataclass(frozen=True)
class PoolGeometry:
    """Resolved 2D geometry of one pooling (1D problems have height 1).

    ``padding`` is symmetric per dim, as in PyTorch: ``(pH, pW)``.
    """

    batch: int
    channels: int
    in_size: tuple      # (H, W)
    kernel: tuple       # (kH, kW)
    stride: tuple       # (sH, sW)
    dilation: tuple     # (dH, dW)
    padding: tuple      # (pH, pW)
    out_size: tuple     # (oH, oW)
    ceil_mode: bool = False
    count_include_pad: bool = True

    @property
    def output_shape(self) -> tuple:
        """``(N, C, oH, oW)``."""
        return (self.batch, self.channels) + tuple(self.out_size)


def avg_pool_divisors(geom: PoolGeometry):
    """PyTorch's average-pooling divisor for every output position, an int array ``(oH, oW)``.

    Per dimension the window ``[start, start + k)`` is clipped to the padded input
    ``[-p, n + p)``; with ``count_include_pad`` the divisor is the clipped window's
    size (padding counts, ``ceil_mode``'s overhang does not), otherwise the number of
    input elements in it. The 2D divisor is the product of the two.
    """
    import numpy as np

    counts = []
    for n, k, s, p, o in zip(geom.in_size, geom.kernel, geom.stride, geom.padding, geom.out_size):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)
        if geom.count_include_pad:
            counts.append(end - start)
        else:
            counts.append(np.minimum(end, n) - np.maximum(start, 0))
    return counts[0][:, None] * counts[1][None, :]

