"""max_pool / avg_pool: every strategy against the loop oracle and against PyTorch."""

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import fastconv
from conftest import FAST_METHODS, assert_close
from geometries import divisor_override_cases, pool_cases

@pytest.mark.parametrize("method", FAST_METHODS)
@given(case=pool_cases())
def test_max_matches_loop(method, case):
    out, idx = case.max(method)
    ref, ref_idx = case.max("loop")
    assert out.dtype == case.x.dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(out, ref)  # a max is exact
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(case.max(method, return_indices=False), ref)


@pytest.mark.parametrize("method", FAST_METHODS)
@given(case=pool_cases())
def test_avg_matches_loop(method, case):
    out = case.avg(method)
    ref = case.avg("loop")
    with np.errstate(invalid="ignore"):
        assert_close(out, ref, out.dtype)


def _torch_pool(torch, case, op):
    F = torch.nn.functional
    x = torch.from_numpy(case.x)
    unbatched = case.x.ndim == case.nd + 1
    if unbatched:
        x = x[None]
    stride = case.stride if case.stride is not None else case.kernel_size
    if op == "max":
        fn = F.max_pool1d if case.nd == 1 else F.max_pool2d
        out, idx = fn(x, case.kernel_size, stride, case.padding, case.dilation, case.ceil_mode, True)
        out, idx = out.numpy(), idx.numpy()
        return (out[0], idx[0]) if unbatched else (out, idx)
    fn = F.avg_pool1d if case.nd == 1 else F.avg_pool2d
    extra = () if case.divisor_override is None else (case.divisor_override,)
    out = fn(x, case.kernel_size, stride, case.padding, case.ceil_mode, case.count_include_pad, *extra).numpy()
    return out[0] if unbatched else out


@pytest.mark.torch
@pytest.mark.parametrize("method", ("loop",) + FAST_METHODS)
@given(case=pool_cases())
def test_matches_pytorch(torch, method, case):
    assume(case.x.size > 0)  # empty batches: test_empty_batch_forward_and_backward
    out, idx = case.max(method)
    ref, ref_idx = _torch_pool(torch, case, "max")
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(idx, ref_idx)
    avg = case.avg(method)
    assert_close(avg, _torch_pool(torch, case, "avg"), avg.dtype)


# divisor_override (avg_pool2d only, as in PyTorch): every output is its window's sum divided by it,
# whatever count_include_pad and ceil_mode say.


@pytest.mark.parametrize("method", FAST_METHODS)
@given(case=divisor_override_cases())
def test_avg_divisor_override_matches_loop(method, case):
    out = case.avg(method)
    assert out.dtype == case.x.dtype
    with np.errstate(invalid="ignore"):
        assert_close(out, case.avg("loop"), out.dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", ("loop",) + FAST_METHODS)
@given(data=st.data())
def test_avg_divisor_override_matches_pytorch(torch, method, dtype, data):
    case = data.draw(divisor_override_cases(dtype=dtype))
    if case.x.shape[0] == 0 and case.x.ndim == 4:
        return  # PyTorch refuses empty batches for pooling
    out = case.avg(method)
    assert out.dtype == dtype
    assert_close(out, _torch_pool(torch, case, "avg"), dtype)


@pytest.mark.torch
@pytest.mark.parametrize("method", ("loop",) + FAST_METHODS)
@given(case=divisor_override_cases(dtype=np.float64, special_values=False))
def test_avg_divisor_override_backward_matches_torch_autograd(torch, method, case):
    if case.x.size == 0:
        return
    unbatched = case.x.ndim == 3
    stride = case.stride if case.stride is not None else case.kernel_size
    xt = torch.tensor(case.x, requires_grad=True)
    y = torch.nn.functional.avg_pool2d(xt[None] if unbatched else xt, case.kernel_size, stride, case.padding,
                                       case.ceil_mode, case.count_include_pad, case.divisor_override)
    gy = np.random.default_rng(0).standard_normal(tuple(y.shape[1:] if unbatched else y.shape))
    ((y[0] if unbatched else y) * torch.from_numpy(gy)).sum().backward()
    gx = case.avg_backward(gy, method)
    assert gx.dtype == np.float64
    assert_close(gx, xt.grad.numpy(), np.float64)


@pytest.mark.parametrize("method", ("loop",) + FAST_METHODS)
def test_avg_divisor_override_by_hand(method):
    # 3x3 windows, stride 2, padding 1 over a 6x6 plane of ones: per axis the windows start at -1, 1, 3
    # (and 5, ceil_mode's overhang) and hold 2, 3, 3 (and 1) input elements; a window's sum is the product.
    x = np.ones((1, 6, 6))
    held = np.array([2.0, 3, 3, 1])
    for include in (True, False):
        out = fastconv.avg_pool2d(x, 3, 2, 1, True, include, 2, method=method)
        np.testing.assert_array_equal(out[0], np.outer(held, held) / 2)
    out = fastconv.avg_pool2d(x, 3, 2, 1, divisor_override=-4, method=method)
    np.testing.assert_array_equal(out[0], -np.outer(held[:3], held[:3]) / 4)
    # Backward: each input element gets 1/-2 from every window holding it (1 or 2 per axis).
    gx = fastconv.avg_pool2d_backward(np.ones((1, 3, 3)), (1, 6, 6), 3, 2, 1, divisor_override=-2, method=method)
    covering = np.array([1.0, 2, 1, 2, 1, 1])
    np.testing.assert_array_equal(gx[0], -np.outer(covering, covering) / 2)


@pytest.mark.parametrize("method", FAST_METHODS)
def test_nan_wins_max_pooling(method):
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0] = np.nan
    out, idx = fastconv.max_pool2d(x, 2, return_indices=True, method=method)
    assert np.isnan(out[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 0
    np.testing.assert_array_equal(out[0, 0].ravel()[1:], [7, 13, 15])


@pytest.mark.parametrize("method", FAST_METHODS)
def test_all_minus_inf_window_reports_first_input_element(method):
    x = np.full((1, 1, 4, 4), -np.inf)
    out, idx = fastconv.max_pool2d(x, 3, stride=2, padding=1, return_indices=True, method=method)
    assert (out == -np.inf).all()
    np.testing.assert_array_equal(idx[0, 0], [[0, 1], [4, 5]])


@pytest.mark.parametrize("method", FAST_METHODS)
def test_pool_inputs_not_modified_and_layouts(method, rng):
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    keep = x.copy()
    expected = fastconv.max_pool2d(x, 3, 2, 1, method=method)
    np.testing.assert_array_equal(x, keep)
    for xl in (np.asfortranarray(x), x[..., ::-1].copy()[..., ::-1], x.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)):
        np.testing.assert_array_equal(fastconv.max_pool2d(xl, 3, 2, 1, method=method), expected)
    x.flags.writeable = False
    fastconv.avg_pool2d(x, 3, 2, 1, method=method)


@pytest.mark.parametrize("method", FAST_METHODS)
def test_pool_empty_batch(method):
    out, idx = fastconv.max_pool2d(np.zeros((0, 2, 6, 6)), 2, return_indices=True, method=method)
    assert out.shape == idx.shape == (0, 2, 3, 3)
    assert fastconv.avg_pool1d(np.zeros((0, 2, 7)), 3, method=method).shape == (0, 2, 2)


def test_pool_dtype_promotion():
    x = np.arange(32, dtype=np.int16).reshape(2, 16)
    assert fastconv.max_pool1d(x, 4).dtype == np.float32
    assert fastconv.avg_pool1d(x.astype(np.int64), 4).dtype == np.float64
    np.testing.assert_allclose(fastconv.avg_pool1d(x, 4)[0], [1.5, 5.5, 9.5, 13.5])


# Empty batches (N = 0), which the hypothesis tests leave out: every strategy returns empty results of
# the right shape and dtype, forward and backward. (input shape, window, pooled shape); the pooled
# shapes are PyTorch's (test_empty_batch_shapes_match_pytorch).
EMPTY_BATCHES = [
    ((0, 2, 6, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (0, 2, 4, 4)),
    ((0, 2, 5, 7), dict(kernel_size=(2, 3), stride=(1, 2)), (0, 2, 4, 3)),
    ((0, 3, 7), dict(kernel_size=2), (0, 3, 3)),
    ((0, 3, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (0, 3, 5)),
]


def _pool_functions(shape):
    nd = len(shape) - 2
    return [getattr(fastconv, f"{op}_pool{nd}d{part}") for op in ("max", "avg") for part in ("", "_backward")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", ("loop",) + FAST_METHODS)
@pytest.mark.parametrize("shape, window, pooled", EMPTY_BATCHES)
def test_empty_batch_forward_and_backward(shape, window, pooled, method, dtype):
    max_pool, max_backward, avg_pool, avg_backward = _pool_functions(shape)
    x = np.zeros(shape, dtype)
    out, idx = max_pool(x, **window, return_indices=True, method=method)
    assert (out.shape, out.dtype, idx.shape, idx.dtype) == (pooled, dtype, pooled, np.int64)
    out = max_pool(x, **window, method=method)
    assert (out.shape, out.dtype) == (pooled, dtype)
    out = avg_pool(x, **window, method=method)
    assert (out.shape, out.dtype) == (pooled, dtype)
    grad = np.zeros(pooled, dtype)
    gx = max_backward(grad, idx, shape, method=method)
    assert (gx.shape, gx.dtype) == (shape, dtype)
    gx = avg_backward(grad, shape, **window, method=method)
    assert (gx.shape, gx.dtype) == (shape, dtype)


@pytest.mark.torch
@pytest.mark.parametrize("shape, window, pooled", EMPTY_BATCHES)
def test_empty_batch_shapes_match_pytorch(torch, shape, window, pooled):
    F = torch.nn.functional
    nd = len(shape) - 2
    x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    out, idx = getattr(F, f"max_pool{nd}d")(x, **window, return_indices=True)
    avg = getattr(F, f"avg_pool{nd}d")(x, **window)
    (out.sum() + avg.sum()).backward()
    assert tuple(out.shape) == tuple(idx.shape) == tuple(avg.shape) == pooled
    assert tuple(x.grad.shape) == shape


FIXED_PAIRS = [  # (nd, kernel, stride): every (kW, sW) of _pool_kernels.FIXED_WIDTH_STRIDES, 1D and 2D
    (nd, k, s) for k, s in ((2, 2), (3, 2), (3, 1), (3, 3), (4, 4)) for nd in (1, 2)]


@pytest.mark.parametrize("nd, k, s", FIXED_PAIRS)
@pytest.mark.parametrize("padding", [0, 1])
def test_fixed_window_paths_match_loop(nd, k, s, padding):
    """Rows long enough for the fixed-window paths (literal width and stride), with NaN, ties and borders."""
    from fastconv.strategies import _pool_kernels

    assert (k, s) in _pool_kernels.FIXED_WIDTH_STRIDES
    rng = np.random.default_rng(k * 10 + s)
    shape = (2, 3, 67) if nd == 1 else (2, 3, 13, 41)
    x = rng.integers(-4, 5, shape).astype(np.float32)  # small integers: ties everywhere
    x.reshape(-1)[rng.choice(x.size, 5, replace=False)] = np.nan
    max_pool, avg_pool = (fastconv.max_pool1d, fastconv.avg_pool1d) if nd == 1 else (
        fastconv.max_pool2d, fastconv.avg_pool2d)
    for ceil_mode in (False, True):
        out, idx = max_pool(x, k, s, padding, return_indices=True, ceil_mode=ceil_mode, method="direct")
        ref, ref_idx = max_pool(x, k, s, padding, return_indices=True, ceil_mode=ceil_mode, method="loop")
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(idx, ref_idx)
        y = np.nan_to_num(x)
        for count_include_pad in (False, True):
            assert_close(avg_pool(y, k, s, padding, ceil_mode, count_include_pad, method="direct"),
                         avg_pool(y, k, s, padding, ceil_mode, count_include_pad, method="loop"), np.float32)


@pytest.mark.parametrize("shape", [(3, 5, 7, 7), (1, 2, 1, 9), (2, 1, 6, 4)])
@pytest.mark.parametrize("divisor_override", [None, 5])
def test_global_average_pooling_matches_loop(shape, divisor_override):
    """One window over each whole plane: one reduction per plane forward, a fill backward (kernels of their own)."""
    from fastconv.strategies import _pool_kernels

    geom = fastconv.explain("avg_pool2d_backward", shape, kernel_size=shape[2:]).geometry
    assert _pool_kernels._is_global(geom)
    g = np.random.default_rng(0).standard_normal(shape[:2] + (1, 1)).astype(np.float32)
    got = fastconv.avg_pool2d_backward(g, shape, shape[2:], divisor_override=divisor_override, method="direct")
    ref = fastconv.avg_pool2d_backward(g, shape, shape[2:], divisor_override=divisor_override, method="loop")
    np.testing.assert_array_equal(got, ref)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    assert_close(fastconv.avg_pool2d(x, shape[2:], divisor_override=divisor_override, method="direct"),
                 fastconv.avg_pool2d(x, shape[2:], divisor_override=divisor_override, method="loop"), np.float32)


def test_max_pool3d_depth_step_keeps_pytorchs_ties_and_nan():
    """3D max pooling: 2D pooling of each depth plane, then the compiled depth step (ties: first (d, h, w))."""
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, (2, 3, 7, 6, 8)).astype(np.float32)
    x.reshape(-1)[rng.choice(x.size, 6, replace=False)] = np.nan
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
               dict(kernel_size=(3, 2, 2), stride=1, dilation=(2, 1, 1))):
        out, idx = fastconv.max_pool3d(x, **kw, return_indices=True, method="direct")
        ref, ref_idx = fastconv.max_pool3d(x, **kw, return_indices=True, method="loop")
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(fastconv.max_pool3d(x, **kw, method="direct"), ref)
