"""3D convolution and pooling (and their backward): every strategy against the loop oracle, PyTorch
and central differences, over random geometries; the nn 3D layers against PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastconv
from conftest import FAST_METHODS, ORACLE, assert_close, central_difference, torch_pad_list
from fastconv.geometry import _windows_touch_input

METHODS = (ORACLE,) + FAST_METHODS


@st.composite
def conv3d_cases(draw, dtype=None):
    dtype = draw(st.sampled_from([np.float32, np.float64])) if dtype is None else dtype
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(3))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(3))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(3))
    kind = draw(st.sampled_from(["pairs", "same", "valid", "int"]))
    if kind == "pairs":
        padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(3))
    elif kind == "int":
        padding = draw(st.integers(0, 1))
    else:
        padding = kind
    pads = padding if kind == "pairs" else [(padding, padding)] * 3 if kind == "int" else [(0, 0)] * 3
    size = []
    for k, d, (lo, hi) in zip(kernel, dilation, pads):
        low = 1 if kind == "same" else max(1, d * (k - 1) + 1 - lo - hi)
        size.append(draw(st.integers(low, low + 3)))
    batch = draw(st.integers(1, 2))
    unbatched = batch == 1 and draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = ((c_in,) if unbatched else (batch, c_in)) + tuple(size)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((c_out, c_in // groups) + kernel).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if draw(st.booleans()) else None
    return dict(x=x, weight=w, bias=b, stride=stride, padding=padding, dilation=dilation, groups=groups)


@st.composite
def pool3d_cases(draw, dtype=None):
    dtype = draw(st.sampled_from([np.float32, np.float64])) if dtype is None else dtype
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(3))
    stride = None if draw(st.booleans()) else tuple(draw(st.integers(1, 2)) for _ in range(3))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(3))
    ceil_mode = draw(st.booleans())
    size = []
    for k, d, p in zip(kernel, dilation, padding):
        low = max(1, d * (k - 1) + 1 - 2 * p)
        size.append(draw(st.integers(low, low + 3)))
    for n, k, s, p, d in zip(size, kernel, stride or kernel, padding, dilation):
        o = fastconv.pool_output_size(n, k, s, p, d, ceil_mode)
        assume(_windows_touch_input(n, k, s, p, d, o))
    batch = draw(st.integers(1, 2))
    unbatched = batch == 1 and draw(st.booleans())
    shape = ((2,) if unbatched else (batch, 2)) + tuple(size)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # distinct values (ties cannot flip an argmax), sometimes a NaN
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(dtype) / 7
    if draw(st.booleans()):
        x.flat[draw(st.integers(0, x.size - 1))] = np.nan
    divisor = draw(st.sampled_from([None, None, 3, -2]))
    return dict(x=x, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode,
                count_include_pad=draw(st.booleans()), divisor_override=divisor)


def _conv(case, method):
    """conv3d of a drawn case (its input is called ``input``, as in PyTorch)."""
    kw = {k: v for k, v in case.items() if k != "x"}
    return fastconv.conv3d(case["x"], **kw, method=method)


def _max_kw(case):
    return {k: case[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}


def _avg_kw(case):
    return {k: case[k] for k in ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                 "divisor_override")}


@pytest.mark.parametrize("method", FAST_METHODS)
@given(case=conv3d_cases())
def test_conv3d_matches_loop(method, case):
    ref = _conv(case, ORACLE)
    out = _conv(case, method)
    assert out.dtype == case["x"].dtype
    assert_close(out, ref, method=method)
    g = np.random.default_rng(0).standard_normal(ref.shape).astype(ref.dtype)
    kw = {k: v for k, v in case.items() if k != "bias"}
    for got, want in zip(fastconv.conv3d_backward(g, **kw, method=method),
                         fastconv.conv3d_backward(g, **kw, method=ORACLE)):
        assert_close(got, want, method=method)


@pytest.mark.torch
@pytest.mark.parametrize("method", METHODS)
@given(case=conv3d_cases())
def test_conv3d_matches_pytorch(torch, method, case):
    F = torch.nn.functional
    x = torch.from_numpy(case["x"]).requires_grad_(True)
    w = torch.from_numpy(case["weight"]).requires_grad_(True)
    b = None if case["bias"] is None else torch.from_numpy(case["bias"]).requires_grad_(True)
    spatial = case["x"].shape[-3:]
    pads = fastconv.resolve_padding(case["padding"], spatial, case["weight"].shape[2:], case["stride"],
                                    case["dilation"])
    xp = F.pad(x, torch_pad_list(pads))
    ref = F.conv3d(xp, w, b, stride=case["stride"], dilation=case["dilation"], groups=case["groups"])
    out = _conv(case, method)
    assert_close(out, ref.detach().numpy(), method=method)
    g = np.random.default_rng(1).standard_normal(out.shape).astype(out.dtype)
    ref.backward(torch.from_numpy(g))
    kw = {k: v for k, v in case.items() if k != "bias"}
    gx, gw, gb = fastconv.conv3d_backward(g, **kw, method=method)
    assert_close(gx, x.grad.numpy(), method=method)
    assert_close(gw, w.grad.numpy(), method=method)
    if b is not None:
        assert_close(gb, b.grad.numpy(), method=method)


@pytest.mark.parametrize("method", FAST_METHODS)
@given(case=pool3d_cases())
def test_pool3d_matches_loop(method, case):
    out, idx = fastconv.max_pool3d(case["x"], **_max_kw(case), return_indices=True, method=method)
    ref, ref_idx = fastconv.max_pool3d(case["x"], **_max_kw(case), return_indices=True, method=ORACLE)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(idx, ref_idx)
    avg = fastconv.avg_pool3d(case["x"], **_avg_kw(case), method=method)
    with np.errstate(invalid="ignore"):
        assert_close(avg, fastconv.avg_pool3d(case["x"], **_avg_kw(case), method=ORACLE), method=method)
    g = np.random.default_rng(2).standard_normal(out.shape).astype(out.dtype)
    assert_close(fastconv.max_pool3d_backward(g, idx, case["x"].shape, method=method),
                 fastconv.max_pool3d_backward(g, ref_idx, case["x"].shape, method=ORACLE), method=method)
    g = np.random.default_rng(2).standard_normal(avg.shape).astype(avg.dtype)
    assert_close(fastconv.avg_pool3d_backward(g, case["x"].shape, **_avg_kw(case), method=method),
                 fastconv.avg_pool3d_backward(g, case["x"].shape, **_avg_kw(case), method=ORACLE), method=method)


@pytest.mark.torch
@pytest.mark.parametrize("method", METHODS)
@given(case=pool3d_cases())
def test_pool3d_matches_pytorch(torch, method, case):
    # PyTorch's 3D pooling refuses an input smaller than the window even when padding covers it
    assume(all(n >= k for n, k in zip(case["x"].shape[-3:], case["kernel_size"])))
    F = torch.nn.functional
    x = torch.from_numpy(case["x"]).requires_grad_(True)
    out, idx = fastconv.max_pool3d(case["x"], **_max_kw(case), return_indices=True, method=method)
    ref, ref_idx = F.max_pool3d(x, **_max_kw(case), return_indices=True)
    np.testing.assert_array_equal(out, ref.detach().numpy())
    np.testing.assert_array_equal(idx, ref_idx.numpy())
    g = np.random.default_rng(3).standard_normal(out.shape).astype(out.dtype)
    ref.backward(torch.from_numpy(g))
    assert_close(fastconv.max_pool3d_backward(g, idx, case["x"].shape, method=method), x.grad.numpy(),
                 method=method)
    x.grad = None
    avg_ref = F.avg_pool3d(x, **_avg_kw(case))
    avg = fastconv.avg_pool3d(case["x"], **_avg_kw(case), method=method)
    with np.errstate(invalid="ignore"):
        assert_close(avg, avg_ref.detach().numpy(), method=method)
    g = np.random.default_rng(3).standard_normal(avg.shape).astype(avg.dtype)
    avg_ref.backward(torch.from_numpy(g))
    assert_close(fastconv.avg_pool3d_backward(g, case["x"].shape, **_avg_kw(case), method=method),
                 x.grad.numpy(), method=method)


@pytest.mark.parametrize("method", METHODS)
def test_conv3d_backward_matches_central_differences(method):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 3, 4, 3))
    w = rng.standard_normal((2, 1, 2, 2, 2))
    b = rng.standard_normal(2)
    kw = dict(stride=(1, 2, 1), padding=((1, 0), (0, 1), (1, 1)), dilation=(2, 1, 1), groups=2)
    g = rng.standard_normal(fastconv.conv3d(x, w, b, **kw).shape)

    def loss():
        return float((fastconv.conv3d(x, w, b, **kw, method=method) * g).sum())

    gx, gw, gb = fastconv.conv3d_backward(g, x, w, **kw, method=method)
    np.testing.assert_allclose(gx, central_difference(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, central_difference(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, central_difference(loss, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_avg_pool3d_backward_matches_central_differences(method):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 4, 3, 5))
    kw = dict(kernel_size=(2, 3, 2), stride=(1, 2, 2), padding=(1, 1, 0), ceil_mode=True, count_include_pad=False)
    g = rng.standard_normal(fastconv.avg_pool3d(x, **kw).shape)
    numeric = central_difference(lambda: float((fastconv.avg_pool3d(x, **kw, method=method) * g).sum()), x)
    np.testing.assert_allclose(fastconv.avg_pool3d_backward(g, x.shape, **kw, method=method), numeric,
                               rtol=1e-6, atol=1e-7)


@pytest.mark.torch
@pytest.mark.parametrize("name, args, kwargs", [
    ("Conv3d", (4, 6, 3), dict(stride=2, padding=1, groups=2)),
    ("Conv3d", (2, 3, (1, 2, 3)), dict(dilation=(1, 2, 1), bias=False)),
    ("MaxPool3d", (2,), dict(stride=1, padding=1)),
    ("AvgPool3d", (3,), dict(stride=2, padding=1, count_include_pad=False)),
    ("AvgPool3d", (2,), dict(divisor_override=3)),
])
def test_nn_3d_layers_match_pytorch(torch, name, args, kwargs):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4 if name == "Conv3d" and args[0] == 4 else 2, 5, 6, 7))
    layer = getattr(fastconv.nn, name)(*args, **kwargs, **({"dtype": np.float64, "rng": 0} if name == "Conv3d" else {}))
    ref = getattr(torch.nn, name)(*args, **kwargs).double()
    if name == "Conv3d":
        with torch.no_grad():
            ref.weight.copy_(torch.from_numpy(layer.weight))
            if layer.bias is not None:
                ref.bias.copy_(torch.from_numpy(layer.bias))
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = ref(tx)
    y = layer(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    g = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_allclose(layer.backward(g), tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    if name == "Conv3d":
        np.testing.assert_allclose(layer.grads["weight"], ref.weight.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_conv3d_default_initialisation_matches_pytorchs_bound():
    layer = fastconv.nn.Conv3d(3, 4, (2, 3, 3), rng=0)
    bound = 1 / np.sqrt(3 * 2 * 3 * 3)
    assert layer.weight.shape == (4, 3, 2, 3, 3)
    assert np.abs(layer.weight).max() <= bound and np.abs(layer.weight).max() > 0.8 * bound


@pytest.mark.parametrize("method", METHODS)
def test_empty_batch_3d(method):
    x = np.zeros((0, 2, 4, 4, 4), np.float32)
    assert fastconv.conv3d(x, np.ones((3, 2, 3, 3, 3), np.float32), method=method).shape == (0, 3, 2, 2, 2)
    assert fastconv.max_pool3d(x, 2, method=method).shape == (0, 2, 2, 2, 2)
    assert fastconv.avg_pool3d(x, 2, method=method).shape == (0, 2, 2, 2, 2)


@given(n=st.integers(1, 2), c_in=st.integers(1, 5), c_out=st.integers(8, 20), kernel=st.tuples(*[st.integers(1, 5)] * 3),
       stride=st.tuples(*[st.integers(1, 3)] * 3), dilation=st.tuples(*[st.integers(1, 2)] * 3),
       pads=st.tuples(*[st.tuples(st.integers(0, 2), st.integers(0, 2))] * 3), extra=st.tuples(*[st.integers(0, 6)] * 3),
       dtype=st.sampled_from([np.float32, np.float64]), with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_direct_3d_on_the_planar_tile_kernel(n, c_in, c_out, kernel, stride, dilation, pads, extra, dtype, with_bias,
                                              seed):
    """3D layers direct runs on its planar tile kernel (depth taps as steps, every padded depth plane packed
    once, output planes written in place): against the float64 img2col reference; a workspace cap that splits
    the depth into chunks, and one thread, give the same bits."""
    from fastconv.strategies import _simd_direct

    spatial = tuple(d * (k - 1) + 1 - lo - hi + e for k, d, (lo, hi), e in zip(kernel, dilation, pads, extra))
    assume(all(s >= 1 for s in spatial))
    kw = dict(stride=stride, dilation=dilation, padding=list(pads))
    geom = fastconv.explain("conv3d", (n, c_in) + spatial, (c_out, c_in) + kernel, **kw).geometry
    assume(_simd_direct.planar3d_supports(geom))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in) + spatial).astype(dtype)
    w = rng.standard_normal((c_out, c_in) + kernel).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if with_bias else None
    y = fastconv.conv3d(x, w, b, method="direct", **kw)
    ref = fastconv.conv3d(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
                          method="img2col", **kw)
    assert_close(y, ref, dtype)
    limit = fastconv.get_workspace_limit()
    plan = _simd_direct._planar3d_plan(geom, limit)
    one_plane = _simd_direct._planar3d_chunk_inputs(geom, 1) * c_in * plan.channel_len * x.itemsize
    try:  # room for about one output plane's packed input per chunk: the same path, in chunks of depth
        fastconv.set_workspace_limit(max(2 * one_plane, 4096))
        assert _simd_direct.planar3d_supports(geom)
        np.testing.assert_array_equal(fastconv.conv3d(x, w, b, method="direct", **kw), y)
    finally:
        fastconv.set_workspace_limit(limit)
    with fastconv.num_threads(1):
        np.testing.assert_array_equal(fastconv.conv3d(x, w, b, method="direct", **kw), y)


def test_ct_stem_runs_on_the_planar_tile_kernel():
    from fastconv.strategies import _simd_direct

    geom = fastconv.explain("conv3d", (1, 1, 128, 128, 128), (16, 1, 5, 5, 5), stride=2, padding=2).geometry
    assert _simd_direct.planar3d_supports(geom) == fastconv._simd.AVAILABLE
