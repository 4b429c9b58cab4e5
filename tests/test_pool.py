"""max_pool / avg_pool: every strategy against the loop oracle and against PyTorch."""

import numpy as np
import pytest
from hypothesis import given

import fastconv
from conftest import FAST_METHODS, assert_close
from geometries import pool_cases

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
    out = fn(x, case.kernel_size, stride, case.padding, case.ceil_mode, case.count_include_pad).numpy()
    return out[0] if unbatched else out


@pytest.mark.torch
@pytest.mark.parametrize("method", ("loop",) + FAST_METHODS)
@given(case=pool_cases())
def test_matches_pytorch(torch, method, case):
    if case.x.shape[0] == 0 and case.x.ndim == case.nd + 2:
        return  # PyTorch refuses empty batches for pooling; fastconv returns an empty result
    out, idx = case.max(method)
    ref, ref_idx = _torch_pool(torch, case, "max")
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(idx, ref_idx)
    avg = case.avg(method)
    assert_close(avg, _torch_pool(torch, case, "avg"), avg.dtype)


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
