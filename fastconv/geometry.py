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

Adaptive pooling names the output size ``o`` instead of a window; output ``i`` pools the
input range (PyTorch's rule, :func:`adaptive_window`)::

    start = floor(i*n / o),  end = ceil((i+1)*n / o)

The resolved problem records, :class:`ConvGeometry`, :class:`PoolGeometry` and
:class:`AdaptivePoolGeometry`, are N-d: per-axis tuples of rank 1, 2 or 3.
:func:`conv_problem`, :func:`pool_problem` and :func:`adaptive_pool_problem` check a call's
shapes and arguments and build them; this is the one place where a 1D problem is lifted to
the kernels' rank (2D of height 1). 3D problems keep rank 3; the Numba strategies
compute them as sums of 2D problems over the depth taps (:mod:`fastconv.strategies._depth`),
except adaptive pooling, whose kernels take rank 3 directly.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields, replace

import numpy as np

__all__ = [
    "AdaptivePoolGeometry",
    "ConvGeometry",
    "PoolGeometry",
    "ScatterGeometry",
    "adaptive_pool_problem",
    "adaptive_window",
    "adaptive_windows",
    "conv_problem",
    "pool_problem",
    "scatter_problem",
    "conv_output_size",
    "pool_output_size",
    "resolve_padding",
    "phase_split",
    "same_padding",
    "tap_output_range",
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

    ``o = floor((n + lo + hi - d*(k-1) - 1) / s) + 1``. The result is 0 when the padded
    input is shorter than the dilated kernel.

    Parameters
    ----------
    n, k : int
        Input length (>= 0) and kernel length (>= 1).
    stride, dilation : int
        At least 1.
    padding : int or (int, int)
        Zeros on both sides, or ``(lo, hi)``.

    Returns
    -------
    int

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

    Parameters
    ----------
    n, k, stride, dilation : int
        Input length, kernel length, stride and dilation of the axis.

    Returns
    -------
    (int, int)
        ``(lo, hi)``; the odd element goes to ``hi``.

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


def output_span(n, offset, stride, count):
    """The outputs ``o`` in ``[0, count)`` with ``0 <= o*stride + offset < n``, as ``(start, stop)``, ``start <= stop``.

    The one in-input range rule: the kernels call it compiled (``fastconv._jit.output_span``)
    for the columns a tap reads inside the image, :func:`tap_output_range` in Python.
    Plain integer arithmetic, so Numba compiles it as it is.
    """
    start = 0 if offset >= 0 else (-offset + stride - 1) // stride
    stop = (n - 1 - offset) // stride + 1 if n - 1 - offset >= 0 else 0
    start = min(start, count)
    return start, max(start, min(count, stop))


def covering_outputs(position, stride, lo, extent, count):
    """The outputs ``o`` in ``[0, count)`` whose window ``[o*stride - lo, o*stride - lo + extent)`` holds
    input ``position``, as ``(begin, end)``, ``begin <= end``: the inverse of a window (a pooling
    gradient gathers from them). Plain integer arithmetic, compiled for the kernels
    (``fastconv._jit.covering_outputs``) like :func:`output_span`.
    """
    begin = max(0, -((extent - 1 - position - lo) // stride))  # ceil((position + lo - extent + 1) / stride)
    begin = min(begin, count)
    return begin, max(begin, min(count, (position + lo) // stride + 1))


def tap_output_range(n: int, tap: int, stride: int, dilation: int, lo: int, first: int = 0, last: int | None = None):
    """The outputs ``o`` in ``[first, last)`` whose tap ``tap`` reads inside the input, as ``(start, stop)``.

    Output ``o`` reads input position ``o*stride + tap*dilation - lo``; it is in the input when
    ``0 <= o*stride + tap*dilation - lo < n``.

    Parameters
    ----------
    n, tap, stride, dilation, lo : int
        Input length, kernel tap, stride, dilation and leading padding of the axis.
    first, last : int
        The outputs considered (``last`` None: all).

    Returns
    -------
    (int, int)
        ``(start, stop)``; ``start == stop`` when no output's tap is inside.

    Examples
    --------
    >>> tap_output_range(5, 0, 1, 1, 1, 0, 5)   # 'same' 3-tap window over 5: tap 0 misses output 0
    (1, 5)
    """
    offset = tap * dilation - lo
    count = max(0, (n - 1 - offset) // stride + 1) if last is None else last  # None: every in-input output
    start, stop = output_span(n, offset, stride, count)
    start = max(start, first)
    return start, max(start, stop)


def phase_plane_len(out_len: int, k: int, stride: int, dilation: int) -> int:
    """Positions of one phase plane along an axis (see :func:`phase_split`): what ``out_len`` outputs
    read, ``(out_len - 1)*stride + (k - 1)*dilation + 1`` padded positions, split into ``stride``
    planes of ``ceil(that / stride)``."""
    return -(-((out_len - 1) * stride + (k - 1) * dilation + 1) // stride)


def phase_split(k: int, stride: int, dilation: int):
    """Each tap's phase and stride-1 offset along one axis: ``(phases, offsets)``.

    Tap ``a`` reads input position ``o*stride + a*dilation - lo``; splitting the input into
    ``stride`` phase planes (positions ``p*stride + r``), it reads phase ``a*dilation % stride``
    at plane position ``o + a*dilation // stride``. The direct kernels pack the input by phase so
    every tap reads at stride 1 (forward and backward).

    Parameters
    ----------
    k, stride, dilation : int
        Kernel length, stride and dilation of the axis.

    Returns
    -------
    (tuple of int, tuple of int)
        ``phases[a]`` and ``offsets[a]`` for each tap ``a``.

    Examples
    --------
    >>> phase_split(3, 2, 1)
    ((0, 1, 0), (0, 0, 1))
    """
    return (tuple(a * dilation % stride for a in range(k)), tuple(a * dilation // stride for a in range(k)))


def input_gradient_phases(n_in: int, n_out: int, k: int, stride: int, dilation: int, lo: int):
    """dL/dx of one axis as stride-1 correlations of ``dy``, one per stride phase.

    Per phase ``r`` (``dx[u*stride + r]``, ``count = ceil((n_in - r) / stride)`` positions), a tuple
    ``(r, taps, (lo_r, hi_r), dilation_r, count)``: ``dx[u*s + r] = sum_j dy[u + e_0 + j*d_r] * W[a_j]``
    over the taps ``a_j`` (descending) with ``(r + lo - a*d) % s == 0`` and ``e_j = (r + lo - a_j*d) // s``;
    that is a stride-1 correlation of ``dy`` with those taps, dilation ``d_r = e_1 - e_0`` and padding
    ``lo_r = -e_0`` (negative: ``dy`` is cropped), ``hi_r`` what makes ``count`` outputs. ``(lo_r, hi_r)``
    is None where no tap reaches the phase (its ``dx`` is zero). Stride 1 has one phase: the flipped
    kernel, padding ``d*(k-1) - lo``. A transposed convolution's forward pass is this dL/dx.

    Examples
    --------
    >>> [(r, taps, pads) for r, taps, pads, _, _ in input_gradient_phases(8, 4, 4, 2, 1, 1)]  # k=4, s=2, p=1
    [(0, (3, 1), (1, 0)), (1, (2, 0), (0, 1))]
    """
    phases = []
    for r in range(stride):
        count = len(range(r, n_in, stride))
        taps = tuple(a for a in range(k - 1, -1, -1) if (r + lo - a * dilation) % stride == 0)
        if not taps or not count:
            phases.append((r, taps, None, 1, count))
            continue
        e0 = (r + lo - taps[0] * dilation) // stride
        dr = (taps[1] - taps[0]) * -dilation // stride if len(taps) > 1 else 1
        lo_r = -e0
        hi_r = count - n_out - lo_r + dr * (len(taps) - 1)
        phases.append((r, taps, (lo_r, hi_r), dr, count))
    return phases


def phase_problems(geom):
    """dL/dx of the rank-2 convolution ``geom`` as stride-1 convolutions of ``dy``, one per stride phase.

    A list of ``(rh, rw, taps_h, taps_w, problem)``: phase ``(rh, rw)`` of ``dx``
    (``dx[:, :, rh::sH, rw::sW]``) is the convolution ``problem`` of ``dy`` with the kernel
    ``W[:, :, taps_h][:, :, :, taps_w]`` (channels swapped per group), or zero where ``problem`` is
    None (no tap reaches that phase); see :func:`input_gradient_phases`.
    """
    axes = [input_gradient_phases(n, o, k, s, d, lo) for n, o, k, s, d, (lo, _) in
            zip(geom.in_size, geom.out_size, geom.kernel, geom.stride, geom.dilation, geom.padding)]
    problems = []
    for rh, taps_h, pad_h, dil_h, count_h in axes[0]:
        for rw, taps_w, pad_w, dil_w, count_w in axes[1]:
            if pad_h is None or pad_w is None:
                problems.append((rh, rw, taps_h, taps_w, None))
                continue
            phase = ConvGeometry(batch=geom.batch, in_channels=geom.out_channels, out_channels=geom.in_channels,
                                 groups=geom.groups, in_size=geom.out_size, kernel=(len(taps_h), len(taps_w)),
                                 stride=(1, 1), dilation=(dil_h, dil_w), padding=(pad_h, pad_w),
                                 out_size=(count_h, count_w), dtype=geom.dtype)
            problems.append((rh, rw, taps_h, taps_w, phase))
    return problems


def pool_output_size(n: int, k: int, stride: int, padding: int, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """Output length of a pooling window along one dimension (PyTorch's rule).

    Parameters
    ----------
    n, k, stride : int
        Input length, window length and stride of the axis.
    padding : int
        On both sides (at most ``k // 2`` for the pooling functions).
    dilation : int
        Spacing of the window's elements.
    ceil_mode : bool
        Round up, never starting a window in the right padding.

    Returns
    -------
    int

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


#: What :func:`key_part` returns for an argument no cache should be keyed on.
UNCACHEABLE = object()


def key_part(value):
    """``value`` as part of a cache key, or :data:`UNCACHEABLE`.

    Plain ints, strs, None and (nested) tuples of ints are keys as they are; bools are tagged
    (``True == 1``, and the checks treat them differently); anything else (lists, NumPy
    integers, floats) is left to the uncached path, which checks it every time.
    """
    kind = type(value)
    if kind is int or kind is str or value is None:
        return value
    if kind is bool:
        return ("bool", value)
    if kind is tuple:
        for item in value:
            if type(item) is not int and (type(item) is not tuple or key_part(item) is UNCACHEABLE):
                return UNCACHEABLE
        return value
    return UNCACHEABLE


def _cached_hash(record) -> int:
    """The hash of a frozen record, computed once: records key the dispatcher's and kernels' caches."""
    value = record.__dict__.get("_hash")
    if value is None:
        value = hash(tuple(getattr(record, f.name) for f in fields(record)))
        object.__setattr__(record, "_hash", value)
    return value


_CHANNELS_LAST: dict = {}


class _Record:
    """What the problem records share: a hash computed once, the rank, the channels-last twin."""

    def __hash__(self) -> int:
        return _cached_hash(self)

    @property
    def rank(self) -> int:
        """Number of spatial axes the strategies see (2 or 3)."""
        return len(self.in_size)

    def channels_last(self):
        """The same problem over channels-last memory (cached: a call path asks for it every time)."""
        found = _CHANNELS_LAST.get(self)
        if found is None:
            found = _CHANNELS_LAST[self] = replace(self, layout="channels_last")
        return found


class _PlaneRecord(_Record):
    """The pooling records' shapes: ``batch`` images of ``channels`` planes, ``in_size`` -> ``out_size``."""

    @property
    def input_shape(self) -> tuple:
        """``(N, C, *in_size)`` (for max pooling's backward: the gradient's shape)."""
        return (self.batch, self.channels) + tuple(self.in_size)

    @property
    def output_shape(self) -> tuple:
        """``(N, C, *out_size)`` (for max pooling's backward: grad_output's and the indices' shape)."""
        return (self.batch, self.channels) + tuple(self.out_size)


@dataclass(frozen=True, eq=True)
class ConvGeometry(_Record):
    """The resolved problem of one convolution: channels, groups and per-axis sizes.

    Every spatial field is a tuple with one entry per axis (rank 2 or 3; a 1D problem is
    lifted to rank 2, height 1): ``in_size`` ``(H, W)`` or ``(D, H, W)``, ``kernel``,
    ``stride``, ``dilation``, ``out_size``, and ``padding`` as ``(lo, hi)`` pairs.
    ``dtype`` is the computation's dtype and ``layout`` the memory layout of the arrays the
    strategies receive (``"channels_first"``: ``(N, C, *spatial)``, C-contiguous;
    ``"channels_last"``: the same shape over ``(N, *spatial, C)`` memory).
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
    dtype: str = "float32"
    layout: str = "channels_first"

    op = "conv"
    __hash__ = _Record.__hash__  # the dataclass would generate an uncached one

    @property
    def flops(self) -> int:
        """``2 * N * C_out * (C_in/groups) * prod(kernel) * prod(out_size)``."""
        return (2 * self.batch * self.out_channels * (self.in_channels // self.groups)
                * math.prod(self.kernel) * math.prod(self.out_size))

    @property
    def input_shape(self) -> tuple:
        """``(N, C_in, *in_size)``."""
        return (self.batch, self.in_channels) + tuple(self.in_size)

    @property
    def weight_shape(self) -> tuple:
        """``(C_out, C_in/groups, *kernel)``."""
        return (self.out_channels, self.in_channels // self.groups) + tuple(self.kernel)

    @property
    def output_shape(self) -> tuple:
        """``(N, C_out, *out_size)``."""
        return (self.batch, self.out_channels) + tuple(self.out_size)

    @property
    def is_depthwise(self) -> bool:
        return self.groups == self.in_channels and self.groups > 1


@dataclass(frozen=True, eq=True)
class PoolGeometry(_PlaneRecord):
    """The resolved problem of one pooling: channels and per-axis sizes (rank 2 or 3, as
    :class:`ConvGeometry`; a 1D problem is lifted to height 1).

    ``padding`` is symmetric per axis, as in PyTorch: ``(pH, pW)``. ``layout`` is the memory
    layout of the arrays the strategies receive, as in :class:`ConvGeometry` (``"channels_last"``
    for rank-2 problems only).
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
    dtype: str = "float32"
    layout: str = "channels_first"
    divisor_override: int | None = None  # average pooling: every window's divisor, if set (never 0)

    op = "pool"
    __hash__ = _Record.__hash__  # the dataclass would generate an uncached one

    @property
    def window_elements(self) -> int:
        """Elements a window reads per output (for cost accounting)."""
        return math.prod(self.kernel)


@dataclass(frozen=True, eq=True)
class ScatterGeometry(_PlaneRecord):
    """The resolved problem of max pooling's backward: each output's gradient added at the input
    position its index names (flat in its plane). The windows are in the indices, so the record
    holds planes and sizes only (rank 2 or 3 as :class:`PoolGeometry`; 1D lifted to height 1).
    """

    batch: int
    channels: int
    in_size: tuple      # (H, W) or (D, H, W): the forward's input
    out_size: tuple     # the forward's output (grad_output's and the indices' spatial shape)
    dtype: str = "float32"
    layout: str = "channels_first"

    op = "max_pool_backward"
    __hash__ = _Record.__hash__  # the dataclass would generate an uncached one


def scatter_problem(fn, nd, input_shape, grad_shape, dtype="float32"):
    """Check max pooling's backward shapes; return its :class:`ScatterGeometry` and the gradient's shape.

    ``input_shape`` is the forward input's ``(N, C, *spatial)`` or ``(C, *spatial)`` (ints >= 0),
    ``grad_shape`` grad_output's shape: the same leading dimensions, ``nd`` spatial ones.
    """
    try:
        shape = tuple(_as_int(n, "input_shape", fn) for n in input_shape)
    except TypeError:
        raise TypeError(f"{fn}: input_shape must be a tuple of ints, got {input_shape!r}") from None
    if len(shape) not in (nd + 1, nd + 2) or min(shape) < 0:
        raise ValueError(f"{fn}: input_shape must be (N, C, {_SPATIAL[nd]}) or (C, {_SPATIAL[nd]}), "
                         f"got {input_shape!r}")
    grad_shape = tuple(grad_shape)
    if len(grad_shape) != len(shape) or grad_shape[:-nd] != shape[:-nd]:
        raise ValueError(f"{fn}: grad_output must be the pooled output of an input of shape {shape} "
                         f"(same leading dimensions), got shape {grad_shape}")
    batched = len(shape) == nd + 2
    lift = (1,) if nd == 1 else ()
    geom = ScatterGeometry(batch=shape[0] if batched else 1, channels=shape[-nd - 1],
                           in_size=lift + shape[-nd:], out_size=lift + grad_shape[-nd:],
                           dtype=np.dtype(dtype).name)
    return geom, shape


def avg_pool_divisors(geom: PoolGeometry):
    """PyTorch's average-pooling divisor for every output position, an int array of ``out_size``.

    Per axis the window ``[start, start + k)`` is clipped to the padded input
    ``[-p, n + p)``; with ``count_include_pad`` the divisor is the clipped window's
    size (padding counts, ``ceil_mode``'s overhang does not), otherwise the number of
    input elements in it. The N-d divisor is the product over the axes. With
    ``geom.divisor_override`` set (PyTorch's ``divisor_override``), every divisor is that value.
    """
    import numpy as np

    if geom.divisor_override is not None:
        return np.full(tuple(geom.out_size), geom.divisor_override, dtype=np.int64)
    counts = []
    for n, k, s, p, o in zip(geom.in_size, geom.kernel, geom.stride, geom.padding, geom.out_size):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)
        if geom.count_include_pad:
            counts.append(end - start)
        else:
            counts.append(np.minimum(end, n) - np.maximum(start, 0))
    divisor = counts[0]
    for axis in counts[1:]:
        divisor = np.multiply.outer(divisor, axis)
    return divisor


@dataclass(frozen=True, eq=True)
class AdaptivePoolGeometry(_PlaneRecord):
    """The resolved problem of one adaptive pooling: planes and per-axis sizes (rank 2 or 3, as
    :class:`PoolGeometry`; a 1D problem is lifted to height 1, one output row over one input row).

    The windows follow from the sizes alone (:func:`adaptive_window` per axis, :func:`adaptive_windows`
    for a whole axis), so there is no kernel, stride or padding to hold.
    """

    batch: int
    channels: int
    in_size: tuple      # (H, W) or (D, H, W), every entry >= 1
    out_size: tuple     # (oH, oW) or (oD, oH, oW), every entry >= 1
    dtype: str = "float32"
    layout: str = "channels_first"

    op = "adaptive_pool"
    __hash__ = _Record.__hash__  # the dataclass would generate an uncached one


def adaptive_window(i: int, n: int, o: int) -> tuple[int, int]:
    """The input range ``[start, end)`` adaptive pooling reads for output ``i`` of ``o`` along an axis of ``n``.

    ``start = floor(i*n/o)``, ``end = ceil((i+1)*n/o)`` (PyTorch's rule). For ``n, o >= 1`` every
    window holds at least one element, together they cover ``[0, n)``, and neighbours share at
    most one element (``end(i) - start(i+1)`` is ``ceil - floor`` of the same number). With
    ``o > n`` windows of one element repeat.

    Parameters
    ----------
    i : int
        The output position, ``0 <= i < o``.
    n, o : int
        Input and output length of the axis (>= 1).

    Returns
    -------
    (int, int)

    Examples
    --------
    >>> [adaptive_window(i, 5, 3) for i in range(3)]
    [(0, 2), (1, 4), (3, 5)]
    """
    return (i * n) // o, -(-((i + 1) * n) // o)


def adaptive_windows(n: int, o: int):
    """:func:`adaptive_window` for every output of an axis: ``(start, end)``, two int64 arrays of length ``o``."""
    bounds = np.array([adaptive_window(i, n, o) for i in range(o)], dtype=np.int64).reshape(o, 2)
    return np.ascontiguousarray(bounds[:, 0]), np.ascontiguousarray(bounds[:, 1])


_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}
_KERNEL_DIMS = {1: "k", 2: "kH, kW", 3: "kD, kH, kW"}


def _np_bool():
    import numpy as np

    return np.bool_


def conv_problem(fn, nd, x_shape, weight_shape, bias_shape, stride, padding, dilation, groups, dtype="float32"):
    """Check a convolution's shapes and arguments; return its :class:`ConvGeometry` and the result's shape.

    ``nd`` is the spatial rank of the call (1, 2 or 3); a 1D problem is lifted to 2D (height 1)
    here, the one place it happens. Raises ValueError/TypeError naming ``fn`` and the argument.
    """
    spatial = _SPATIAL[nd]
    if len(x_shape) not in (nd + 1, nd + 2):
        raise ValueError(f"{fn}: x must be (N, C_in, {spatial}) or unbatched (C_in, {spatial}), "
                         f"got a {len(x_shape)}-D array of shape {tuple(x_shape)}")
    if len(weight_shape) != nd + 2:
        kernel_dims = _KERNEL_DIMS[nd]
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
        kernel=kernel, stride=stride, dilation=dilation, padding=pads, out_size=out_size, dtype=np.dtype(dtype).name,
    )
    user_shape = ((N,) if batched else ()) + (C_out,) + geom.out_size[len(geom.out_size) - nd:]
    return geom, user_shape


def first_taps_inside(o, stride, padding, dilation):
    """The first in-input position each of ``o`` windows reads, an int array.

    Window ``i`` starts at ``i*stride - padding`` and reads every ``dilation``-th position; a
    window starting in the padding first reads inside at the first tap at or after 0 (PyTorch's
    pooling steps past the padding this way). Whether that position is still inside the window
    and the input is for the caller to check (:func:`_windows_touch_input`).
    """
    import numpy as np

    start = np.arange(o) * stride - padding
    return np.where(start < 0, start + ((-start + dilation - 1) // dilation) * dilation, start)


def _windows_touch_input(n, k, s, p, d, o):
    """True if each of the ``o`` windows (start ``i*s - p``, taps ``d`` apart) reads an input element."""
    import numpy as np

    first = first_taps_inside(o, s, p, d)
    last_tap = np.arange(o) * s - p + d * (k - 1)
    return bool(np.all((first < n) & (first <= last_tap)))


def pool_problem(fn, nd, shape, kernel_size, stride, padding, dilation, ceil_mode, count_include_pad, dtype="float32",
                 divisor_override=None):
    """Check the pooling arguments for an input of ``shape``; return its :class:`PoolGeometry` and the result's shape.

    ``nd`` is the spatial rank of the call (1, 2 or 3); a 1D problem is lifted to 2D (height 1) here.
    """
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
    if not isinstance(ceil_mode, (bool, _np_bool())):
        raise TypeError(f"{fn}: ceil_mode must be a bool, got {ceil_mode!r}")
    if not isinstance(count_include_pad, (bool, _np_bool())):
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
        ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad), dtype=np.dtype(dtype).name,
        divisor_override=_divisor_override(fn, divisor_override),
    )
    user_shape = ((N,) if batched else ()) + (C,) + geom.out_size[len(geom.out_size) - nd:]
    return geom, user_shape


def _divisor_override(fn, divisor_override):
    """``divisor_override`` checked: None, or a non-zero int (negative allowed, as in PyTorch)."""
    if divisor_override is None:
        return None
    divisor = _as_int(divisor_override, "divisor_override", fn)
    if divisor == 0:
        raise ValueError(f"{fn}: divisor_override must be a non-zero integer or None, got {divisor_override!r}")
    return divisor


def adaptive_pool_problem(fn, nd, shape, output_size, dtype="float32", *, name="input"):
    """Check an adaptive pooling's input ``shape`` and ``output_size``; return its :class:`AdaptivePoolGeometry`
    and the result's shape.

    ``nd`` is the spatial rank of the call (1, 2 or 3); ``shape`` is ``(N, C, *spatial)`` or unbatched
    ``(C, *spatial)``, every spatial size at least 1 (an empty axis has no windows). ``output_size`` is an
    int (every axis) or a tuple of ``nd`` entries, each an int >= 1 or None (keep that axis's input
    size), as in PyTorch. ``name`` is what messages call ``shape`` (``input``, or ``input_shape`` for
    the backward functions). A 1D problem is lifted to 2D (height 1) here.
    """
    spatial = _SPATIAL[nd]
    try:
        if isinstance(shape, (str, bytes)):
            raise TypeError
        dims = tuple(_as_int(n, name, fn) for n in shape)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be a tuple of ints, got {shape!r}") from None
    if len(dims) not in (nd + 1, nd + 2):
        raise ValueError(f"{fn}: {name} must be (N, C, {spatial}) or unbatched (C, {spatial}), "
                         f"got {len(dims)} dimensions, shape {dims}")
    if min(dims) < 0:
        raise ValueError(f"{fn}: {name} must not have negative sizes, got shape {dims}")
    batched = len(dims) == nd + 2
    N, C = ((dims[0],) if batched else (1,)) + (dims[-nd - 1],)
    in_size = dims[-nd:]
    if min(in_size) < 1:
        raise ValueError(f"{fn}: {name} must have at least one element along every spatial axis "
                         f"({spatial}), got shape {dims}")
    expected = f"an int or a tuple of {nd} ints or Nones"
    if output_size is None:
        raise TypeError(f"{fn}: output_size must be {expected}, got None")
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != nd:
            raise ValueError(f"{fn}: output_size must be {expected} (one per spatial axis), "
                             f"got {len(output_size)} values {tuple(output_size)!r}")
        out_size = tuple(n if o is None else _as_int(o, "output_size", fn) for o, n in zip(output_size, in_size))
    else:
        out_size = (_as_int(output_size, "output_size", fn),) * nd
    if min(out_size) < 1:
        raise ValueError(f"{fn}: output_size must be >= 1 on every axis (None keeps the input's size), "
                         f"got {output_size!r}")
    if nd == 1:  # a 1D problem is a 2D problem of height 1
        in_size, out_size = (1,) + in_size, (1,) + out_size
    geom = AdaptivePoolGeometry(batch=N, channels=C, in_size=in_size, out_size=out_size, dtype=np.dtype(dtype).name)
    user_shape = ((N,) if batched else ()) + (C,) + out_size[len(out_size) - nd:]
    return geom, user_shape
