"""Backward passes: every strategy against float64 central differences and torch.autograd."""

import numpy as np
import pytest
from hypothesis import assume, given

import fastconv
from conftest import FAST_METHODS, assert_close, torch_pad_list
from geometries import conv_cases, pool_cases

ALL = ("loop",) + FAST_METHODS


def numerical_gradient(f, a, eps=1e-6):
    """Central differences of the scalar ``f()`` with respect to every element of ``a`` (modified in place, restored)."""
    grad = np.zeros_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + eps
        up = f()
        flat[i] = keep - eps
        down = f()
        flat[i] = keep
        gflat[i] = (up - down) / (2 * eps)
    return grad


CONV_GEOMETRIES = [
    dict(stride=1, padding=0, dilation=1, groups=1),
    dict(stride=2, padding=((1, 0), (0, 2)), dilation=1, groups=2),
    dict(stride=(2, 3), padding="same", dilation=(1, 2), groups=1),
    dict(stride=1, padding=1, dilation=2, groups=4),  # depthwise
    dict(stride=3, padding=0, dilation=1, groups=1),  # stride leftovers: the last input rows are never read
]


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_conv2d_backward_central_differences(method, geometry):
    rng = np.random.default_rng(7)
    groups = geometry["groups"]
    x = rng.standard_normal((2, 4, 7, 8))
    w = rng.standard_normal((4, 4 // groups, 3, 2))
    b = rng.standard_normal(4)
    y = fastconv.conv2d(x, w, b, **geometry, method="vectorized")
    upstream = rng.standard_normal(y.shape)

    def loss():
        return float((fastconv.conv2d(x, w, b, **geometry, method="vectorized") * upstream).sum())

    gx, gw, gb = fastconv.conv2d_backward(upstream, x, w, **geometry, method=method)
    np.testing.assert_allclose(gx, numerical_gradient(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, numerical_gradient(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, numerical_gradient(loss, b), rtol=1e-6, atol=1e-7)
    if geometry["stride"] == 3:
        assert (gx[:, :, 6:, :] == 0).all()  # rows 6.. are read by no window


@pytest.mark.parametrize("method", ALL)
def test_conv1d_backward_central_differences(method):
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 3, 11)), rng.standard_normal((2, 3, 4))
    upstream = rng.standard_normal((2, 2, 6))  # ceil(11 / 2) outputs

    def loss():
        return float((fastconv.conv1d(x, w, stride=2, padding="same", dilation=2, method="vectorized") * upstream).sum())

    gx, gw, gb = fastconv.conv1d_backward(upstream, x, w, stride=2, padding="same", dilation=2, method=method)
    np.testing.assert_allclose(gx, numerical_gradient(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, numerical_gradient(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, upstream.sum(axis=(0, 2)), rtol=1e-12)


@pytest.mark.parametrize("method", ALL)
def test_pool_backward_central_differences(method):
    rng = np.random.default_rng(5)
    x = rng.permutation(2 * 3 * 7 * 7).reshape(2, 3, 7, 7) / 10.0  # distinct: no ties move the argmax
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    upstream = rng.standard_normal(y.shape)
    gx = fastconv.max_pool2d_backward(upstream, idx, x.shape, method=method)
    numeric = numerical_gradient(lambda: float((fastconv.max_pool2d(x, **kw) * upstream).sum()), x, eps=1e-4)
    np.testing.assert_allclose(gx, numeric, rtol=1e-6, atol=1e-7)
    for include in (True, False):
        a = fastconv.avg_pool2d(x, **kw, count_include_pad=include)
        ga = fastconv.avg_pool2d_backward(upstream, x.shape, **kw, count_include_pad=include, method=method)
        numeric = numerical_gradient(
            lambda: float((fastconv.avg_pool2d(x, **kw, count_include_pad=include) * upstream).sum()), x)
        assert ga.shape == x.shape and a.shape == upstream.shape
        np.testing.assert_allclose(ga, numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.torch
@pytest.mark.parametrize("method", ALL)
@given(case=conv_cases(max_batch=2))
def test_conv_backward_matches_torch_autograd(torch, method, case):
    F = torch.nn.functional
    unbatched = case.x.ndim == case.nd + 1
    xt = torch.tensor(case.x.astype(np.float64), requires_grad=True)
    wt = torch.tensor(case.weight.astype(np.float64), requires_grad=True)
    xb = xt[None] if unbatched else xt
    conv = F.conv1d if case.nd == 1 else F.conv2d
    y = conv(F.pad(xb, torch_pad_list(case.pads())), wt, None, case.stride, 0, case.dilation, case.groups)
    if unbatched:
        y = y[0]
    upstream = np.random.default_rng(1).standard_normal(tuple(y.shape)).astype(case.x.dtype)
    y.backward(torch.from_numpy(upstream.astype(np.float64)))
    backward = fastconv.conv1d_backward if case.nd == 1 else fastconv.conv2d_backward
    gx, gw, gb = backward(upstream, case.x, case.weight, case.stride, case.padding, case.dilation, case.groups,
                          method=method)
    dtype = case.x.dtype
    assert gx.dtype == gw.dtype == gb.dtype == dtype
    assert_close(gx, xt.grad.numpy().astype(dtype), dtype)
    assert_close(gw, wt.grad.numpy().astype(dtype), dtype)
    assert_close(gb, upstream.astype(np.float64).sum(axis=tuple(i for i in range(upstream.ndim) if i != upstream.ndim - case.nd - 1)).astype(dtype), dtype)


@pytest.mark.torch
@pytest.mark.parametrize("method", ALL)
@given(case=pool_cases(special_values=False, distinct=True))
def test_pool_backward_matches_torch_autograd(torch, method, case):
    assume(case.x.size > 0)  # empty batches: test_pool.py::test_empty_batch_forward_and_backward
    F = torch.nn.functional
    unbatched = case.x.ndim == case.nd + 1
    stride = case.stride if case.stride is not None else case.kernel_size
    xt = torch.tensor(case.x.astype(np.float64), requires_grad=True)
    xb = xt[None] if unbatched else xt
    mp = F.max_pool1d if case.nd == 1 else F.max_pool2d
    ap = F.avg_pool1d if case.nd == 1 else F.avg_pool2d
    y = mp(xb, case.kernel_size, stride, case.padding, case.dilation, case.ceil_mode)
    a = ap(xb, case.kernel_size, stride, case.padding, case.ceil_mode, case.count_include_pad)
    rng = np.random.default_rng(0)
    gy = rng.standard_normal(tuple(y.shape[1:] if unbatched else y.shape))
    ga = rng.standard_normal(tuple(a.shape[1:] if unbatched else a.shape))
    ((y[0] if unbatched else y) * torch.from_numpy(gy)).sum().add(
        ((a[0] if unbatched else a) * torch.from_numpy(ga)).sum()).backward()
    _, idx = case.max(method)
    mb = fastconv.max_pool1d_backward if case.nd == 1 else fastconv.max_pool2d_backward
    ab = fastconv.avg_pool1d_backward if case.nd == 1 else fastconv.avg_pool2d_backward
    dtype = case.x.dtype
    gx = mb(gy.astype(dtype), idx, case.x.shape, method=method)
    gx = gx + ab(ga.astype(dtype), case.x.shape, case.kernel_size, case.stride, case.padding, case.ceil_mode,
                 case.count_include_pad, method=method)
    assert gx.dtype == dtype
    assert_close(gx, xt.grad.numpy().astype(dtype), dtype)


def test_output_mask_skips_gradients():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3))
    gy = rng.standard_normal((1, 3, 4, 4))
    for method in ALL:
        gx, gw, gb = fastconv.conv2d_backward(gy, x, w, method=method, output_mask=(False, True, False))
        assert gx is None and gb is None
        np.testing.assert_allclose(gw, fastconv.conv2d_backward(gy, x, w, method="loop")[1], rtol=1e-10)


@pytest.mark.parametrize("method", FAST_METHODS)
def test_backward_empty_batch(method):
    gx, gw, gb = fastconv.conv2d_backward(np.zeros((0, 3, 4, 4)), np.zeros((0, 2, 6, 6)), np.ones((3, 2, 3, 3)),
                                          method=method)
    assert gx.shape == (0, 2, 6, 6) and (gw == 0).all() and (gb == 0).all()


def test_backward_rejects_bad_input():
    x, w = np.zeros((1, 2, 6, 6)), np.zeros((3, 2, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d_backward: grad_output must have the forward output's shape "
                                         r"\(1, 3, 4, 4\), got \(1, 3, 5, 5\)"):
        fastconv.conv2d_backward(np.zeros((1, 3, 5, 5)), x, w)
    with pytest.raises(ValueError, match=r"conv2d_backward: input has 2 channels"):
        fastconv.conv2d_backward(np.zeros((1, 3, 4, 4)), x, np.zeros((3, 1, 3, 3)))
    with pytest.raises(ValueError, match=r"avg_pool2d_backward: grad_output must have the forward output's shape"):
        fastconv.avg_pool2d_backward(np.zeros((1, 2, 2, 2)), (1, 2, 6, 6), 2)
    with pytest.raises(ValueError, match=r"max_pool2d_backward: indices must lie in \[0, 36\)"):
        fastconv.max_pool2d_backward(np.zeros((1, 2, 3, 3)), np.full((1, 2, 3, 3), 36), (1, 2, 6, 6))
    with pytest.raises(ValueError, match=r"max_pool2d_backward: indices must have grad_output's shape"):
        fastconv.max_pool2d_backward(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 2), int), (1, 2, 6, 6))
    with pytest.raises(TypeError, match=r"max_pool2d_backward: indices must be integers"):
        fastconv.max_pool2d_backward(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 3)), (1, 2, 6, 6))
    with pytest.raises(ValueError, match=r"max_pool2d_backward: input_shape must be \(N, C, H, W\) or \(C, H, W\)"):
        fastconv.max_pool2d_backward(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 3), int), (6, 6))
    with pytest.raises(ValueError, match=r"max_pool2d_backward: grad_output must be the pooled output"):
        fastconv.max_pool2d_backward(np.zeros((1, 3, 3, 3)), np.zeros((1, 3, 3, 3), int), (1, 2, 6, 6))
    for mask in ((True,), None, "yes"):
        with pytest.raises(ValueError, match=r"conv2d_backward: output_mask must be three bools"):
            fastconv.conv2d_backward(np.zeros((1, 3, 4, 4)), x, w, output_mask=mask)
