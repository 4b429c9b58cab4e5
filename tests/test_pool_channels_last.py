"""Channels-last memory for 2D max and average pooling, forward and backward.

* ``max_pool2d`` / ``avg_pool2d`` on ``(N, C, H, W)`` arrays over ``N, H, W, C`` memory (and unbatched
  ``(C, H, W)`` over ``H, W, C``): the NCHW call's values and max indices (bit for bit for the max,
  to tolerance for the average), results in channels-last memory (their strides), the input
  unchanged and never written (it is read-only), for every strategy;
* direct (``auto``'s choice) reads the input in place with the channels-last kernels
  (``fastconv.strategies._pool_last``); NCHW and other layouts never reach them;
* ``max_pool2d_backward`` / ``avg_pool2d_backward`` on a channels-last ``grad_output``: the NCHW
  backward's values, ``grad_input`` in channels-last memory;
* PyTorch with ``memory_format=torch.channels_last``: values, indices and autograd;
* NaN and ties (PyTorch's rule: ties keep the first element, NaN wins with its last index).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import FAST_METHODS, ORACLE, assert_close
from geometries import pool_cases
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import dispatch, measure
from fastconv.geometry import first_taps_inside
from fastconv.strategies import _pool_last

#: Every strategy: the oracle and the fast ones.
METHODS = (ORACLE,) + FAST_METHODS
# Hypothesis: at most 30 examples per property (fewer under the boundscheck profile, see conftest),
# no deadline (the first examples compile kernels).
HYPOTHESIS = settings(max_examples=min(30, settings.default.max_examples), deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# --------------------------------------------------------------------------- helpers


def channels_last(a):
    """``a`` (``(N, C, H, W)`` or ``(C, H, W)``) with the same values over channels-last memory, read-only:
    what ``a_nhwc.transpose(0, 3, 1, 2)`` gives, whose base no path can write into."""
    base = np.moveaxis(a, -3, -1).copy(order="C")
    base.flags.writeable = False
    view = np.moveaxis(base, -1, -3)
    assert view.base is base and not view.flags.c_contiguous
    return view


def assert_channels_last(y):
    """``y``'s strides are channels-last: ``(H*W*C, 1, W*C, C)`` elements (unbatched: ``(1, W*C, C)``)."""
    C, H, W = y.shape[-3:]
    expected = ((H * W * C,) if y.ndim == 4 else ()) + (1, W * C, C)
    assert y.strides == tuple(s * y.itemsize for s in expected), (y.shape, y.strides)


def on(case, x):
    """``case`` with another input."""
    return dataclasses.replace(case, x=x)


def batched(a):
    return a if a.ndim == 4 else a[None]


@st.composite
def last_cases(draw, dtype=None, max_channels=40, special_values=True):
    """A 2D pooling problem over channels-last memory: :func:`geometries.pool_cases`' window (kernel,
    stride, padding, dilation, ceil_mode, count_include_pad) with a divisor_override or not, batch
    1-3 or unbatched, 2..max_channels channels (one channel, or a 1x1 image, is C-contiguous and
    channels-last at once: not the case under test); values normal, small integers (ties
    everywhere) or distinct, with NaN and infinities sometimes. ``x`` is C-contiguous: tests take
    its :func:`channels_last` copy."""
    case = draw(pool_cases(nd=2, dtype=dtype, special_values=False))
    H, W = case.x.shape[-2:]
    assume(H * W >= 2)
    channels = draw(st.integers(2, max_channels) | st.sampled_from((2, 8, 16, 17, 33)).filter(
        lambda c: c <= max_channels))
    batch = draw(st.sampled_from((None, 1, 2, 3)))
    shape = ((batch,) if batch else ()) + (channels, H, W)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(("normal", "ties", "distinct")))
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "ties":
        x = rng.integers(-2, 3, shape)
    else:
        x = rng.permutation(int(np.prod(shape))).reshape(shape)
    x = x.astype(case.x.dtype)
    if special_values and draw(st.booleans()):
        flat = x.reshape(-1)
        for value in draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), min_size=1, max_size=4)):
            flat[rng.integers(flat.size)] = value
    divisor_override = draw(st.none() | st.integers(-20, 20).filter(lambda d: d != 0))
    return dataclasses.replace(case, x=x, divisor_override=divisor_override)


def _check_forward(case, method, reference):
    """``method`` on ``case.x`` in channels-last memory against ``reference`` (an NCHW call on the same values)."""
    x_last = channels_last(case.x)
    last = on(case, x_last)
    y, idx = last.max(method)
    ref, ref_idx = on(case, reference[0]).max(reference[1])
    assert y.dtype == case.x.dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(y, ref)  # a max is exact; NaN where the NCHW call has NaN
    np.testing.assert_array_equal(idx, ref_idx)
    assert_channels_last(y)
    assert_channels_last(idx)
    y = last.max(method, return_indices=False)
    np.testing.assert_array_equal(y, ref)
    assert_channels_last(y)
    with np.errstate(invalid="ignore", over="ignore"):
        avg = last.avg(method)
        expected = on(case, reference[0]).avg(reference[1])
    assert avg.dtype == case.x.dtype
    assert_close(avg, expected, case.x.dtype, method if method in METHODS else None)
    assert_channels_last(avg)
    np.testing.assert_array_equal(x_last, case.x)  # unchanged (and read-only: never written)


# --------------------------------------------------------------------------- forward


@HYPOTHESIS
@given(case=last_cases())
def test_forward_equals_nchw_path(case):
    """direct and auto on channels-last input give the NCHW call's values and indices bit for bit (the
    average to tolerance), in channels-last memory; the input is unchanged."""
    for method in ("direct", "auto"):
        _check_forward(case, method, (np.ascontiguousarray(case.x), method))


@HYPOTHESIS
@given(case=last_cases(max_channels=5))
def test_every_strategy_on_channels_last_input(case):
    """Every strategy (the ones that cannot read channels-last memory get a copy) matches the loop
    oracle on the NCHW input; the results are channels-last."""
    for method in METHODS:
        _check_forward(case, method, (np.ascontiguousarray(case.x), ORACLE))


def test_direct_reads_channels_last_memory_in_place(monkeypatch, rng):
    """direct and auto hand the caller's channels-last input (no copy) to the channels-last kernels and
    return the arrays those kernels wrote; the backward functions likewise for grad_output."""
    calls = []
    for name in ("max_pool2d", "avg_pool2d", "max_pool2d_backward", "avg_pool2d_backward"):
        def spy(*args, _real=getattr(_pool_last, name), _name=name):
            calls.append((_name, args))
            return _real(*args)

        monkeypatch.setattr(_pool_last, name, spy)
    x = channels_last(rng.standard_normal((2, 12, 9, 10)).astype(np.float32))
    for method in ("direct", "auto"):
        calls.clear()
        y, idx = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True, method=method)
        avg = fastconv.avg_pool2d(x, 3, 2, 1, method=method)
        gy = channels_last(np.ones(y.shape, np.float32))
        gx_max = fastconv.max_pool2d_backward(gy, idx, x.shape, method=method)
        gx_avg = fastconv.avg_pool2d_backward(gy, x.shape, 3, 2, 1, method=method)
        assert [name for name, _ in calls] == ["max_pool2d", "avg_pool2d", "max_pool2d_backward",
                                               "avg_pool2d_backward"]
        (_, (x_in, _, out, indices)), (_, (x_avg, _, out_avg)) = calls[:2]
        assert np.shares_memory(x_in, x) and np.shares_memory(x_avg, x)
        assert np.shares_memory(out, y) and np.shares_memory(indices, idx) and np.shares_memory(out_avg, avg)
        (_, (g_max, i_max, _, gx_in_max)), (_, (g_avg, _, gx_in_avg)) = calls[2:]
        assert np.shares_memory(g_max, gy) and np.shares_memory(i_max, idx) and np.shares_memory(g_avg, gy)
        assert np.shares_memory(gx_in_max, gx_max) and np.shares_memory(gx_in_avg, gx_avg)
    # NCHW input, and other memory layouts, take the NCHW path: C-contiguous results, no channels-last kernel
    calls.clear()
    nchw = np.ascontiguousarray(x)
    for other in (nchw, np.asfortranarray(nchw), nchw[:, :, ::2], nchw[:, ::2]):
        y, idx = fastconv.max_pool2d(other, 3, 2, 1, return_indices=True, method="direct")
        avg = fastconv.avg_pool2d(other, 3, 2, 1, method="direct")
        assert y.flags.c_contiguous and idx.flags.c_contiguous and avg.flags.c_contiguous
        gx = fastconv.max_pool2d_backward(np.ones(y.shape, np.float32), idx, other.shape, method="direct")
        assert gx.flags.c_contiguous
    assert calls == []


@pytest.mark.parametrize("method", METHODS)
def test_dtype_conversion_and_unbatched(method):
    """An integer channels-last input is computed in float32 and comes back channels-last; an unbatched
    (C, H, W) input over H, W, C memory gives an unbatched channels-last result."""
    x = np.arange(2 * 5 * 6 * 7).reshape(2, 5, 6, 7) % 11
    x_last = channels_last(x.astype(np.int16))
    y, idx = fastconv.max_pool2d(x_last, 2, return_indices=True, method=method)
    ref, ref_idx = fastconv.max_pool2d(x.astype(np.float32), 2, return_indices=True, method=ORACLE)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(idx, ref_idx)
    assert_channels_last(y)
    single = channels_last(x[1].astype(np.float64))
    avg = fastconv.avg_pool2d(single, 3, 2, 1, ceil_mode=True, method=method)
    assert avg.shape == (5, 4, 4) and avg.dtype == np.float64
    assert_close(avg, fastconv.avg_pool2d(x[1].astype(np.float64), 3, 2, 1, ceil_mode=True, method=ORACLE),
                 np.float64)
    assert_channels_last(avg)


def test_measure_mode_on_channels_last_input(tmp_path, monkeypatch, rng):
    """method='measure' times the candidates on C-contiguous copies and still returns channels-last results."""
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    measure.clear_memory()
    try:
        x = rng.standard_normal((2, 6, 8, 8))
        y, idx = fastconv.max_pool2d(channels_last(x), 3, 2, 1, return_indices=True, method="measure")
        ref, ref_idx = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True, method=ORACLE)
        np.testing.assert_array_equal(y, ref)
        np.testing.assert_array_equal(idx, ref_idx)
        assert_channels_last(y)
        avg = fastconv.avg_pool2d(channels_last(x), 3, 2, 1, method="measure")
        assert_close(avg, fastconv.avg_pool2d(x, 3, 2, 1, method=ORACLE), np.float64)
        assert_channels_last(avg)
    finally:
        measure.clear_memory()


def test_problem_record_and_dispatch():
    """The problem record of a channels-last call says so (one cached record per problem), and auto sends
    every channels-last pooling op to a strategy that reads that memory in place: direct."""
    geom = fastconv.explain("max_pool2d", (2, 8, 9, 9), kernel_size=3, stride=2, padding=1).geometry
    last = geom.channels_last()
    assert geom.layout == "channels_first" and last.layout == "channels_last"
    assert last is geom.channels_last() and last == dataclasses.replace(geom, layout="channels_last")
    for op in ("max_pool", "avg_pool", "max_pool_backward", "avg_pool_backward"):
        method, reason, _ = dispatch.decide(op, last, np.float32, threads=2)
        assert method == "direct" and "channels-last" in reason, (op, method, reason)
        chosen = fastconv.strategies.strategy(method)
        assert chosen.channels_last and chosen.can_run(op, last)
        assert "channels-last" not in dispatch.decide(op, geom, np.float32, threads=2)[1]


# --------------------------------------------------------------------------- backward


@HYPOTHESIS
@given(case=last_cases(special_values=False), data=st.data())
def test_backward_equals_nchw_path(case, data):
    """max_pool2d_backward and avg_pool2d_backward on a channels-last grad_output (and channels-last or NCHW
    indices) give the NCHW backward's values bit for bit, in channels-last memory, for direct and auto."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    _, idx = case.max("direct")
    pooled = case.avg("direct").shape  # the max's unless dilated
    assume(min(idx.shape[-2] * idx.shape[-1], pooled[-2] * pooled[-1]) >= 2)  # see test_one_output_per_plane
    gy = rng.standard_normal(idx.shape).astype(case.x.dtype)
    gy_avg = rng.standard_normal(pooled).astype(case.x.dtype)
    gy_last, idx_last, gy_avg_last = channels_last(gy), channels_last(idx), channels_last(gy_avg)
    for method in ("direct", "auto"):
        ref = fastconv.max_pool2d_backward(gy, idx, case.x.shape, method=method)
        for indices in (idx_last, idx):
            gx = fastconv.max_pool2d_backward(gy_last, indices, case.x.shape, method=method)
            assert gx.dtype == case.x.dtype
            np.testing.assert_array_equal(gx, ref)
            assert_channels_last(gx)
        ref = case.avg_backward(gy_avg, method)
        gx = case.avg_backward(gy_avg_last, method)
        assert gx.dtype == case.x.dtype
        np.testing.assert_array_equal(gx, ref)
        assert_channels_last(gx)
    np.testing.assert_array_equal(gy_last, gy)
    np.testing.assert_array_equal(gy_avg_last, gy_avg)


@HYPOTHESIS
@given(case=last_cases(max_channels=5, special_values=False))
def test_every_strategy_backward_on_channels_last(case):
    """Every strategy's backward on channels-last grad_output matches the loop oracle's NCHW backward."""
    _, idx = case.max(ORACLE)
    pooled = case.avg(ORACLE).shape  # the max's unless dilated
    assume(min(idx.shape[-2] * idx.shape[-1], pooled[-2] * pooled[-1]) >= 2)  # see test_one_output_per_plane
    rng = np.random.default_rng(0)
    gy = rng.standard_normal(idx.shape).astype(case.x.dtype)
    gy_avg = rng.standard_normal(pooled).astype(case.x.dtype)
    gy_last, idx_last, gy_avg_last = channels_last(gy), channels_last(idx), channels_last(gy_avg)
    ref_max = fastconv.max_pool2d_backward(gy, idx, case.x.shape, method=ORACLE)
    ref_avg = case.avg_backward(gy_avg, ORACLE)
    for method in METHODS:
        gx = fastconv.max_pool2d_backward(gy_last, idx_last, case.x.shape, method=method)
        assert_close(gx, ref_max, case.x.dtype, method)
        assert_channels_last(gx)
        gx = case.avg_backward(gy_avg_last, method)
        assert_close(gx, ref_avg, case.x.dtype, method)
        assert_channels_last(gx)


def test_one_output_per_plane(rng):
    """Global pooling's output (N, C, 1, 1) is C-contiguous and channels-last at once: the forward on
    channels-last input returns it in channels-last strides, but its gradient cannot say which memory
    the input had, so the backward functions return C-contiguous grad_input for it (the NCHW path)."""
    x = channels_last(rng.standard_normal((2, 6, 5, 7)))
    y, idx = fastconv.max_pool2d(x, (5, 7), return_indices=True)
    avg = fastconv.avg_pool2d(x, (5, 7))
    assert_channels_last(y)
    assert_channels_last(avg)
    assert y.flags.c_contiguous and avg.flags.c_contiguous
    gx = fastconv.max_pool2d_backward(np.ones_like(y), idx, x.shape)
    assert gx.flags.c_contiguous
    np.testing.assert_array_equal(gx, fastconv.max_pool2d_backward(np.ones_like(y), idx, x.shape, method=ORACLE))
    gx = fastconv.avg_pool2d_backward(avg, x.shape, (5, 7))
    assert gx.flags.c_contiguous
    assert_close(gx, fastconv.avg_pool2d_backward(avg, x.shape, (5, 7), method=ORACLE), np.float64)


# --------------------------------------------------------------------------- PyTorch


def _torch_forward(torch, case, x):
    """PyTorch's max (values, indices) and average of ``case`` on the tensor ``x`` (batched)."""
    F = torch.nn.functional
    stride = case.stride if case.stride is not None else case.kernel_size
    out, idx = F.max_pool2d(x, case.kernel_size, stride, case.padding, case.dilation, case.ceil_mode, True)
    extra = () if case.divisor_override is None else (case.divisor_override,)
    avg = F.avg_pool2d(x, case.kernel_size, stride, case.padding, case.ceil_mode, case.count_include_pad, *extra)
    return out, idx, avg


@pytest.mark.torch
@HYPOTHESIS
@given(case=last_cases())
def test_matches_pytorch_channels_last(torch, case):
    """Against PyTorch on the same tensor in torch.channels_last memory: the max and its indices exactly,
    the average to tolerance; both libraries return channels-last memory."""
    xt = torch.from_numpy(batched(case.x)).contiguous(memory_format=torch.channels_last)
    out, idx, avg = _torch_forward(torch, case, xt)
    assert out.is_contiguous(memory_format=torch.channels_last)
    last = on(case, channels_last(case.x))
    unbatch = (lambda a: a) if case.x.ndim == 4 else (lambda a: a[0])
    y, i = last.max("auto")
    np.testing.assert_array_equal(y, unbatch(out.numpy()))
    np.testing.assert_array_equal(i, unbatch(idx.numpy()))
    with np.errstate(invalid="ignore", over="ignore"):
        a = last.avg("auto")
    assert_close(a, unbatch(avg.numpy()), case.x.dtype)
    assert_channels_last(y)
    assert_channels_last(a)


@pytest.mark.torch
@HYPOTHESIS
@given(case=last_cases(dtype=np.float64, special_values=False))
def test_backward_matches_torch_autograd(torch, case):
    """dL/dx of max and average pooling on channels-last memory against PyTorch's autograd (float64)."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(batched(case.x)).contiguous(memory_format=torch.channels_last).requires_grad_()
    out, _, avg = _torch_forward(torch, case, x)
    assume(min(out.shape[-2] * out.shape[-1], avg.shape[-2] * avg.shape[-1]) >= 2)  # test_one_output_per_plane
    g_max = rng.standard_normal(tuple(out.shape))
    g_avg = rng.standard_normal(tuple(avg.shape))
    (out * torch.from_numpy(g_max)).sum().backward()
    expected_max = x.grad.numpy().copy()
    x.grad = None
    (avg * torch.from_numpy(g_avg)).sum().backward()
    expected_avg = x.grad.numpy()
    if case.x.ndim == 3:
        g_max, g_avg, expected_max, expected_avg = g_max[0], g_avg[0], expected_max[0], expected_avg[0]
    last = on(case, channels_last(case.x))
    _, idx = last.max("auto")
    gx = fastconv.max_pool2d_backward(channels_last(g_max), idx, case.x.shape)
    assert_close(gx, expected_max, np.float64)
    assert_channels_last(gx)
    gx = last.avg_backward(channels_last(g_avg), "auto")
    assert_close(gx, expected_avg, np.float64)
    assert_channels_last(gx)


# --------------------------------------------------------------------------- NaN and ties


NAN_TIES = [  # (kernel_size, stride, padding, dilation, ceil_mode): overlapping, strided, dilated, partial windows
    (3, 1, 1, 1, False),
    (3, 2, 1, 1, True),
    (2, 2, 0, 1, True),
    ((3, 2), (2, 1), (1, 0), (2, 1), False),
    (4, 3, 2, 1, True),
]


@pytest.mark.parametrize("channels", (3, 16, 19))
@pytest.mark.parametrize("window", NAN_TIES)
@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_nan_and_ties(window, channels, dtype):
    """Small integers (ties in every window), NaN (several in some windows, one at a window's first
    element) and all -inf windows: every strategy's values and indices on channels-last input equal
    the loop oracle's (the definition of PyTorch's rule) on NCHW input; the indices point at the
    values, and an all -inf window reports its first in-image element."""
    kernel_size, stride, padding, dilation, ceil_mode = window
    rng = np.random.default_rng(channels)
    x = rng.integers(-1, 2, (2, channels, 9, 11)).astype(dtype)
    x[0, :, 0:4, 0:4] = -np.inf
    x[1, 0, 2, 3] = x[1, 0, 2, 4] = x[1, 0, 3, 3] = np.nan  # one window of several NaN
    x[1, -1, 0, 0] = np.nan  # at the first element of a window
    x.reshape(-1)[rng.choice(x.size, 6, replace=False)] = np.nan
    ref, ref_idx = fastconv.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, True, method=ORACLE)
    for method in METHODS:
        y, idx = fastconv.max_pool2d(channels_last(x), kernel_size, stride, padding, dilation, ceil_mode, True,
                                     method=method)
        np.testing.assert_array_equal(y, ref)
        np.testing.assert_array_equal(idx, ref_idx)
        assert_channels_last(y)
    # On direct's channels-last result: each index points at the reported value, and output (0, 0) of
    # image 0 (a window of -inf only, ties throughout) reports its window's first in-image element.
    y, idx = fastconv.max_pool2d(channels_last(x), kernel_size, stride, padding, dilation, ceil_mode, True,
                                 method="direct")
    planes = x.reshape(2, channels, -1)
    picked = np.take_along_axis(planes, idx.reshape(2, channels, -1), axis=2).reshape(y.shape)
    np.testing.assert_array_equal(picked, y)
    assert np.isnan(y).any()
    (sH, sW), (pH, pW), (dH, dW) = (np.broadcast_to(v, 2) for v in (stride, padding, dilation))
    row, col = first_taps_inside(1, sH, pH, dH)[0], first_taps_inside(1, sW, pW, dW)[0]
    assert (y[0, :, 0, 0] == -np.inf).all()
    assert (idx[0, :, 0, 0] == row * x.shape[3] + col).all(), (idx[0, :, 0, 0], row, col)


@pytest.mark.torch
@pytest.mark.parametrize("window", NAN_TIES)
def test_nan_and_ties_match_pytorch(torch, window):
    """The same inputs in torch.channels_last memory: PyTorch's values and indices."""
    kernel_size, stride, padding, dilation, ceil_mode = window
    rng = np.random.default_rng(5)
    x = rng.integers(-1, 2, (2, 19, 9, 11)).astype(np.float32)
    x[0, :, 0:4, 0:4] = -np.inf
    x.reshape(-1)[rng.choice(x.size, 40, replace=False)] = np.nan
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    out, idx = torch.nn.functional.max_pool2d(xt, kernel_size, stride, padding, dilation, ceil_mode, True)
    y, i = fastconv.max_pool2d(channels_last(x), kernel_size, stride, padding, dilation, ceil_mode, True)
    np.testing.assert_array_equal(y, out.numpy())
    np.testing.assert_array_equal(i, idx.numpy())
