"""Hypothesis strategies drawing random, valid convolution and pooling problems."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import assume, strategies as st

import fastconv
from fastconv.geometry import _windows_touch_input


@dataclass
class ConvCase:
    nd: int
    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple
    padding: object
    dilation: tuple
    groups: int

    @property
    def fn(self):
        return fastconv.conv1d if self.nd == 1 else fastconv.conv2d

    def kwargs(self):
        return dict(bias=self.bias, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, groups=self.groups)

    def run(self, method, **extra):
        return self.fn(self.x, self.weight, method=method, **self.kwargs(), **extra)

    def pads(self):
        """The padding resolved to ``(lo, hi)`` pairs."""
        spatial = self.x.shape[-self.nd:]
        return fastconv.resolve_padding(self.padding, spatial, self.weight.shape[2:], self.stride, self.dilation)


def _values(draw, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(dtype)


@st.composite
def conv_cases(draw, nd=None, dtype=None, max_size=9, max_batch=2, allow_unbatched=True):
    nd = draw(st.sampled_from([1, 2])) if nd is None else nd
    dtype = draw(st.sampled_from([np.float32, np.float64])) if dtype is None else dtype
    depthwise = draw(st.booleans()) and draw(st.booleans())
    if depthwise:
        groups = draw(st.integers(1, 4))
        c_in = groups
        c_out = groups * draw(st.sampled_from([1, 1, 2]))
    else:
        groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
        c_in = groups * draw(st.integers(1, 3))
        c_out = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding_kind = draw(st.sampled_from(["int", "pairs", "same", "valid"]))
    if padding_kind == "int":
        padding = draw(st.integers(0, 2))
        pads = [(padding, padding)] * nd
    elif padding_kind == "pairs":
        pads = [(draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(nd)]
        padding = tuple(pads)
    else:
        padding = padding_kind
        pads = [(0, 0)] * nd  # 'same' only adds; 'valid' needs the full span
    size = []
    for k, d, (lo, hi) in zip(kernel, dilation, pads):
        span = d * (k - 1) + 1
        low = max(1, span - lo - hi) if padding_kind != "same" else 1
        size.append(draw(st.integers(low, max(low, max_size))))
    batch = draw(st.integers(0 if max_batch > 0 else 1, max_batch))
    unbatched = allow_unbatched and draw(st.booleans()) and batch == 1
    shape = ((c_in,) if unbatched else (batch, c_in)) + tuple(size)
    seed = draw(st.integers(0, 2**32 - 1))
    x = _values(draw, shape, dtype, seed)
    weight = _values(draw, (c_out, c_in // groups) + kernel, dtype, seed + 1)
    bias = _values(draw, (c_out,), dtype, seed + 2) if draw(st.booleans()) else None
    return ConvCase(nd, x, weight, bias, stride, padding, dilation, groups)


@dataclass
class PoolCase:
    nd: int
    x: np.ndarray
    kernel_size: tuple
    stride: tuple | None
    padding: tuple
    dilation: tuple
    ceil_mode: bool
    count_include_pad: bool
    divisor_override: int | None = None  # only 2D: avg_pool1d has none (as in PyTorch)

    def max(self, method, return_indices=True):
        fn = fastconv.max_pool1d if self.nd == 1 else fastconv.max_pool2d
        return fn(self.x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                  return_indices, method=method)

    def avg(self, method):
        fn = fastconv.avg_pool1d if self.nd == 1 else fastconv.avg_pool2d
        extra = {} if self.divisor_override is None else dict(divisor_override=self.divisor_override)
        return fn(self.x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                  self.count_include_pad, method=method, **extra)

    def avg_backward(self, grad_output, method):
        """:meth:`avg`'s input gradient for ``grad_output``."""
        fn = fastconv.avg_pool1d_backward if self.nd == 1 else fastconv.avg_pool2d_backward
        extra = {} if self.divisor_override is None else dict(divisor_override=self.divisor_override)
        return fn(grad_output, self.x.shape, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                  self.count_include_pad, method=method, **extra)


@st.composite
def pool_cases(draw, nd=None, dtype=None, max_size=10, special_values=True, distinct=False):
    nd = draw(st.sampled_from([1, 2])) if nd is None else nd
    dtype = draw(st.sampled_from([np.float32, np.float64])) if dtype is None else dtype
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = None if draw(st.booleans()) else tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    size = []
    for k, d, p in zip(kernel, dilation, padding):
        low = max(1, d * (k - 1) + 1 - 2 * p)
        size.append(draw(st.integers(low, max(low, max_size))))
    ceil_mode = draw(st.booleans())
    for n, k, s, p, d in zip(size, kernel, stride or kernel, padding, dilation):
        # Dilated windows can miss the input entirely; fastconv refuses those (tested separately).
        o = fastconv.pool_output_size(n, k, s, p, d, ceil_mode)
        assume(_windows_touch_input(n, k, s, p, d, o))
    batch = draw(st.integers(0, 2))
    channels = draw(st.integers(1, 3))
    unbatched = batch == 1 and draw(st.booleans())
    shape = ((channels,) if unbatched else (batch, channels)) + tuple(size)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if distinct:
        x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(dtype)
    else:
        x = rng.standard_normal(shape).astype(dtype)
    if special_values and x.size and draw(st.booleans()):
        flat = x.reshape(-1)
        for value in draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), min_size=1, max_size=3)):
            flat[rng.integers(flat.size)] = value
    return PoolCase(nd, x, kernel, stride, padding, dilation, ceil_mode, draw(st.booleans()))


@st.composite
def divisor_override_cases(draw, dtype=None, **kwargs):
    """A 2D :func:`pool_cases` problem with a ``divisor_override``: any non-zero int, either sign (as PyTorch)."""
    case = draw(pool_cases(nd=2, dtype=dtype, **kwargs))
    case.divisor_override = draw(st.integers(-20, 20).filter(lambda d: d != 0))
    return case
